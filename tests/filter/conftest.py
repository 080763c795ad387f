"""Fixtures of the exposure-store and result-cache tests: `store_factory` and `cache_factory`
parametrized over every registered backend (`EXPOSURE_STORES.names()`, `RESULT_CACHES.names()`),
each built through its registry as the service builds it. The real redis-server is the session
fixture `redis_url` of tests/conftest.py."""

from __future__ import annotations

import uuid

import pytest

import funnelrec.filter  # noqa: F401  (registers every backend)
from funnelrec.core.registry import EXPOSURE_STORES, RESULT_CACHES


def _params(names: list[str]) -> list:
    return [pytest.param(n, marks=pytest.mark.redis) if n == "redis" else n for n in names]


@pytest.fixture(params=_params(EXPOSURE_STORES.names()))
def backend(request) -> str:
    return request.param


@pytest.fixture(params=_params(RESULT_CACHES.names()))
def cache_backend(request) -> str:
    return request.param


def _opener(registry, backend, tmp_path, request, prefix, opened):
    def make(**kwargs):
        redis_url = request.getfixturevalue("redis_url") if backend == "redis" else None
        obj = registry.get(backend).from_state(state_dir=tmp_path, redis_url=redis_url, prefix=prefix, **kwargs)
        opened.append(obj)
        return obj

    return make


def _clean_redis(request, prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(request.getfixturevalue("redis_url"))
    keys = list(client.scan_iter(match=prefix + "*"))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
def store_factory(backend, tmp_path, request):
    """store_factory(config) -> a fresh, empty store of the parametrized backend; closed after.
    Calling it again with the same config reopens the same data (sqlite file, redis prefix)."""
    opened: list = []
    prefix = f"test:{uuid.uuid4().hex}:"
    open_store = _opener(EXPOSURE_STORES, backend, tmp_path, request, prefix, opened)
    yield lambda config=None: open_store(config=config)
    if backend == "redis" and opened:
        _clean_redis(request, prefix)
    for store in opened:
        store.close()


@pytest.fixture
def cache_factory(cache_backend, tmp_path, request):
    """cache_factory() -> a result cache of the parametrized backend; closed after. Calling it
    again reopens the same data (sqlite file, redis prefix)."""
    opened: list = []
    prefix = f"test:{uuid.uuid4().hex}:"
    open_cache = _opener(RESULT_CACHES, cache_backend, tmp_path, request, prefix, opened)
    open_cache.prefix = prefix
    yield open_cache
    if cache_backend == "redis" and opened:
        _clean_redis(request, prefix)
    for cache in opened:
        cache.close()
