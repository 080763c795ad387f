"""MERGE_STRATEGIES: the config picks the merge by name; an unknown name is a config error."""

import numpy as np
import pytest

from funnelrec.core.errors import ConfigError
from funnelrec.core.registry import MERGE_STRATEGIES
from funnelrec.core.types import CandidateBatch
from funnelrec.recall.merge import MergeConfig, merge_with_config, snake_merge


def _batch(name, rows):
    it = np.full((len(rows), 4), -1, np.int64)
    sc = np.full((len(rows), 4), -np.inf, np.float32)
    for u, r in enumerate(rows):
        it[u, : len(r)] = r
        sc[u, : len(r)] = np.arange(len(r), 0, -1)
    return CandidateBatch(name, it, sc)


def test_snake_is_registered_and_the_config_runs_it():
    assert MERGE_STRATEGIES.get("snake") is snake_merge
    a, b = _batch("a", [[1, 2, 3]]), _batch("b", [[2, 4]])
    m = merge_with_config([a, b], MergeConfig(total=3, quotas={"a": 1}, priority=["b"]))
    assert m[0].items.tolist() == [2, 1, 4]  # b2, a1 (a at quota), b4


def test_unknown_strategy_names_the_known_ones():
    with pytest.raises(ConfigError, match="unknown merge strategy 'round_robin'; known: .*snake"):
        MergeConfig(strategy="round_robin")
