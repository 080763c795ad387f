"""The small synthetic world the candidate-ranker tests fit funnels on (its funnel config: candidate_ranker_world.py)."""

from __future__ import annotations

import polars as pl
import pytest


@pytest.fixture(scope="module")
def world():
    from funnelrec.data import load_dataset
    from funnelrec.data.splits import random_split_by_user

    ds = load_dataset("synthetic", n_users=300, n_items=400, n_interactions=8000)
    split = random_split_by_user(ds.interactions.filter(pl.col("click") == 1), seed=2020)
    return ds, split
