"""The same contract tests against every registered result cache (`RESULT_CACHES.names()`),
plus `build_state_stores`, which builds a service's exposure store and result cache through the
two registries."""

from __future__ import annotations

import sqlite3
import struct

import numpy as np
import pytest

from funnelrec.core.errors import ArtifactError, ConfigError, UnknownComponentError
from funnelrec.core.registry import EXPOSURE_STORES, RESULT_CACHES
from funnelrec.filter import DAY, CountingBloomConfig, build_state_stores

KEYS = np.array([5, -(1 << 62), 7], np.int64)
SCORES = np.array([0.5, -1.25, np.inf], np.float32)


def test_every_state_backend_has_both_stores():
    assert {"memory", "sqlite", "redis"} <= set(RESULT_CACHES.names())
    assert RESULT_CACHES.names() == EXPOSURE_STORES.names()  # build_state_stores needs both


def test_put_get_round_trip_and_missing_user(cache_factory):
    cache = cache_factory()
    cache.put("u", KEYS, SCORES)
    cache.put("v", KEYS[:1], SCORES[:1])
    cache.put("empty", KEYS[:0], SCORES[:0])
    keys, scores = cache.get("u")
    assert keys.dtype == np.int64 and scores.dtype == np.float32
    assert keys.tolist() == [5, -(1 << 62), 7] and scores.tolist() == [0.5, -1.25, float("inf")]
    assert cache.get("v")[0].tolist() == [5] and cache.get("v")[1].tolist() == [0.5]
    assert cache.get("empty")[0].size == 0  # an empty answer is stored, not "missing"
    assert cache.get("w") is None


def test_put_replaces_the_previous_results(cache_factory):
    cache = cache_factory()
    cache.put("u", KEYS, SCORES)
    cache.put("u", np.array([9, 8]), np.array([2.0, 1.0]))
    keys, scores = cache.get("u")
    assert keys.tolist() == [9, 8] and scores.tolist() == [2.0, 1.0]


def test_reopen_keeps_results(cache_factory, cache_backend):
    if cache_backend == "memory":
        pytest.skip("the memory cache is ephemeral by design")
    cache = cache_factory()
    cache.put("u", KEYS, SCORES)
    cache.close()
    keys, scores = cache_factory().get("u")
    assert keys.tolist() == KEYS.tolist() and scores.tolist() == SCORES.tolist()


def _raw_blob(backend, cache, user, blob=None):
    """Read (or overwrite) the stored blob with the backend's own client, not through the cache."""
    if backend == "sqlite":
        db = sqlite3.connect(cache.path)
        if blob is not None:
            db.execute("UPDATE results SET blob = ? WHERE user_key = ?", (blob, user))
            db.commit()
        (got,) = db.execute("SELECT blob FROM results WHERE user_key = ?", (user,)).fetchone()
        db.close()
        return bytes(got)
    client, key = cache.kv.client, f"{cache.prefix}results:{user}"
    if blob is not None:
        client.set(key, blob)
    return client.get(key)


def test_blob_format_is_int64_keys_then_float32_scores(cache_factory, cache_backend):
    if cache_backend == "memory":
        pytest.skip("the memory cache holds no blob outside the process")
    cache = cache_factory()
    cache.put("u", KEYS, SCORES)
    want = struct.pack("=3q3f", 5, -(1 << 62), 7, 0.5, -1.25, float("inf"))
    assert _raw_blob(cache_backend, cache, "u") == want


def test_corrupt_blob_raises_artifact_error(cache_factory, cache_backend):
    if cache_backend == "memory":
        pytest.skip("the memory cache holds no blob outside the process")
    cache = cache_factory()
    cache.put("u", KEYS, SCORES)
    _raw_blob(cache_backend, cache, "u", blob=_raw_blob(cache_backend, cache, "u")[:-1])  # torn write
    with pytest.raises(ArtifactError, match="cached results of user 'u': .* 35 bytes is not N×"):
        cache_factory().get("u")


@pytest.mark.redis
def test_redis_results_expire_after_ttl(redis_url):
    from funnelrec.filter import RedisResultCache

    cache = RedisResultCache(redis_url, prefix="test:ttl:", ttl_s=100)
    try:
        cache.put("u", KEYS, SCORES)
        assert 0 < cache.kv.client.ttl("test:ttl:results:u") <= 100
    finally:
        cache.kv.client.delete("test:ttl:results:u")
        cache.close()


def test_build_state_stores_uses_the_registries(tmp_path):
    cfg = CountingBloomConfig(capacity=100, fp_rate=0.01, window_s=7 * DAY)
    for backend in ("memory", "sqlite"):
        exposure, results = build_state_stores(backend, state_dir=tmp_path, exposure_config=cfg)
        assert type(exposure) is EXPOSURE_STORES.get(backend) and type(results) is RESULT_CACHES.get(backend)
        assert exposure.config == cfg
        exposure.close()
        results.close()
    assert {p.name for p in tmp_path.iterdir()} >= {"exposure.db", "results.db"}
    with pytest.raises(UnknownComponentError, match="unknown exposure store 'mongo'; known: memory, redis, sqlite"):
        build_state_stores("mongo", state_dir=tmp_path)
    with pytest.raises(ConfigError, match="'sqlite' state backend needs state_dir"):
        build_state_stores("sqlite")
    with pytest.raises(ConfigError, match="'redis' state backend needs redis_url"):
        build_state_stores("redis", state_dir=tmp_path)


@pytest.mark.redis
def test_build_state_stores_on_redis_share_one_prefix(redis_url):
    exposure, results = build_state_stores("redis", redis_url=redis_url, prefix="test:share:")
    try:
        exposure.add("u", np.array([3]), ts=1_700_000_000)
        results.put("u", KEYS, SCORES)
        client = results.kv.client
        assert sorted(k.decode() for k in client.scan_iter(match="test:share:*")) == [
            "test:share:exposure:meta", "test:share:exposure:u:u", "test:share:results:u"]
    finally:
        client.delete(*client.scan_iter(match="test:share:*"))
        exposure.close()
        results.close()


def test_sqlite_file_that_is_not_a_database(tmp_path):
    from funnelrec.filter import SQLiteResultCache

    path = tmp_path / "results.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(ArtifactError, match="result cache .*results.db is not a usable SQLite database"):
        SQLiteResultCache(path)
