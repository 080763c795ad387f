"""Fixtures of the serving tests: artifacts of the session's fitted funnel (the uvicorn-in-a-thread
server and a real redis-server are fixtures of tests/conftest.py)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def funnel_artifacts(fitted_funnel, tmp_path_factory):
    """The fitted funnel saved twice (two versions to reload between)."""
    d = tmp_path_factory.mktemp("artifacts")
    a, b = d / "funnel-a", d / "funnel-b"
    fitted_funnel.save(a)
    fitted_funnel.save(b)
    return a, b


# redis_url: the session fixture of tests/conftest.py (one real redis-server for the suite)


# serve, port_factory: session fixtures of tests/conftest.py (a real uvicorn server in a thread)
