"""The tiny world of tests/tiny_world.py as a fixture."""

import pytest

from funnelrec.data.dataset import TrainData
from tiny_world import make_world


@pytest.fixture(scope="session")
def world() -> TrainData:
    return make_world()
