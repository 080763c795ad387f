"""Fixtures of the exposure-store tests: a `store_factory` parametrized over every backend (the
real redis-server is the session fixture `redis_url` of tests/conftest.py)."""

from __future__ import annotations

import uuid

import pytest

from funnelrec.filter import MemoryExposureStore, RedisExposureStore, SQLiteExposureStore

BACKENDS = ["memory", "sqlite", pytest.param("redis", marks=pytest.mark.redis)]


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    return request.param


@pytest.fixture
def store_factory(backend, tmp_path, request):
    """store_factory(config) -> a fresh, empty store of the parametrized backend; closed after.
    Calling it again with the same config reopens the same data (sqlite file, redis prefix)."""
    opened = []
    prefix = f"test:{uuid.uuid4().hex}:"

    def make(config=None):
        if backend == "memory":
            store = MemoryExposureStore(config)
        elif backend == "sqlite":
            store = SQLiteExposureStore(tmp_path / "exposure.db", config)
        else:
            url = request.getfixturevalue("redis_url")
            store = RedisExposureStore(url, config=config, prefix=prefix)
        opened.append(store)
        return store

    yield make
    if backend == "redis" and opened:
        import redis

        client = redis.Redis.from_url(request.getfixturevalue("redis_url"))
        keys = list(client.scan_iter(match=prefix + "*"))
        if keys:
            client.delete(*keys)
        client.close()
    for store in opened:
        store.close()
