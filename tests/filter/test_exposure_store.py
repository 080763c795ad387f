"""The same contract tests against every ExposureStore backend (memory, SQLite, Redis), plus
the SQLite durability test (writer SIGKILLed right after add returned)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from funnelrec.core.errors import ArtifactError, ConfigError, DataError
from funnelrec.core.registry import EXPOSURE_STORES
from funnelrec.filter import DAY, CountingBloomConfig, RedisExposureStore, SQLiteExposureStore

CFG = CountingBloomConfig(capacity=1000, fp_rate=0.01, window_s=7 * DAY, slice_s=DAY)
T0 = 1_700_000_000


def test_backends_are_registered():
    assert {"memory", "sqlite", "redis"} <= set(EXPOSURE_STORES.names())


def test_no_false_negatives_and_users_are_separate(store_factory):
    store = store_factory(CFG)
    rng = np.random.default_rng(0)
    seen = {u: rng.choice(1 << 30, size=50, replace=False) for u in ("alice", "bob")}
    for u, items in seen.items():
        store.add(u, items[:20], ts=T0)
        store.add(u, items[20:], ts=T0 + 2 * DAY)
    assert store.filter("alice", seen["alice"], now=T0 + 3 * DAY).all()
    assert store.filter("bob", seen["bob"], now=T0 + 3 * DAY).all()
    # 50 items in a 1000-capacity filter: false positives have probability ~1e-12
    assert not store.filter("alice", seen["bob"], now=T0 + 3 * DAY).any()
    assert not store.filter("carol", seen["bob"], now=T0 + 3 * DAY).any()  # unknown user


def test_fpr_at_capacity_within_tolerance(store_factory):
    cfg = CountingBloomConfig(capacity=2000, fp_rate=0.05, window_s=7 * DAY)
    store = store_factory(cfg)
    rng = np.random.default_rng(1)
    items = rng.choice(1 << 40, size=2000, replace=False)
    for d in range(4):  # capacity spread over 4 daily slices
        store.add("u", items[d * 500 : (d + 1) * 500], ts=T0 + d * DAY)
    now = T0 + 4 * DAY
    assert store.filter("u", items, now=now).all()
    fpr = store.filter("u", rng.integers(1 << 41, 1 << 62, size=50_000), now=now).mean()
    assert abs(fpr - 0.05) / 0.05 < 0.10, fpr  # 50k probes at 5%: sd 2.8% relative


def test_batch_filter_equals_one_by_one(store_factory):
    store = store_factory(CountingBloomConfig(capacity=100, fp_rate=0.2, window_s=7 * DAY))
    rng = np.random.default_rng(2)
    store.add("u", rng.integers(0, 300, 100), ts=T0)
    cands = rng.integers(0, 600, 200)
    batch = store.filter("u", cands, now=T0 + DAY)
    single = [bool(store.filter("u", np.array([c]), now=T0 + DAY)[0]) for c in cands.tolist()]
    assert batch.tolist() == single
    assert 0 < batch.sum() < batch.size  # high fp_rate: the comparison covers both answers


def test_remove(store_factory):
    store = store_factory(CFG)
    store.add("u", np.array([1, 2, 3]), ts=T0)
    store.add("u", np.array([3]), ts=T0 + DAY)
    store.remove("u", np.array([2, 3]))
    assert store.filter("u", np.array([1, 2, 3]), now=T0 + DAY).tolist() == [True, False, False]
    store.remove("nobody", np.array([1]))  # a user without exposures: nothing to do


def test_time_window_expiry(store_factory):
    store = store_factory(CFG)
    day0 = (T0 // DAY) * DAY
    store.add("u", np.array([10]), ts=day0 + 60)
    store.add("u", np.array([20]), ts=day0 + 5 * DAY)
    ids = np.array([10, 20])
    assert store.filter("u", ids, now=day0 + 60 + 7 * DAY).tolist() == [True, True]
    assert store.filter("u", ids, now=day0 + 8 * DAY).tolist() == [False, True]  # slice 0 left
    store.add("u", np.array([30]), ts=day0 + 30 * DAY)  # drops old slices from the backend
    assert store.filter("u", np.array([10, 20, 30]), now=day0 + 5 * DAY).tolist() == [False, False, True]


def test_reopen_keeps_exposures(store_factory, backend):
    if backend == "memory":
        pytest.skip("the memory store is ephemeral by design")
    store = store_factory(CFG)
    store.add("u", np.array([7, 8]), ts=T0)
    store.flush()
    store.close()
    again = store_factory(CFG)
    assert again.filter("u", np.array([7, 8, 9]), now=T0).tolist() == [True, True, False]
    with pytest.raises(ConfigError):  # same data, other sizing: positions would not match
        store_factory(CountingBloomConfig(capacity=500, fp_rate=0.01, window_s=7 * DAY))


def _corrupt(backend, store, user):
    if backend == "sqlite":
        db = sqlite3.connect(store.path)
        (blob,) = db.execute("SELECT blob FROM exposure_slices WHERE user_key = ?", (user,)).fetchone()
        bad = bytearray(blob)
        bad[len(bad) // 2] ^= 0xFF
        db.execute("UPDATE exposure_slices SET blob = ? WHERE user_key = ?", (bytes(bad), user))
        db.commit()
        db.close()
    else:
        key = store._key(user)
        (field,) = store._client.hkeys(key)
        blob = bytearray(store._client.hget(key, field))
        blob[len(blob) // 2] ^= 0xFF
        store._client.hset(key, field, bytes(blob))


def test_corrupt_blob_raises_artifact_error(store_factory, backend):
    if backend == "memory":
        pytest.skip("the memory store holds no serialized blobs")
    store = store_factory(CFG)
    store.add("u", np.array([1, 2]), ts=T0)
    _corrupt(backend, store, "u")
    store.close()
    again = store_factory(CFG)  # a fresh store: nothing cached
    with pytest.raises(ArtifactError):
        again.filter("u", np.array([1]), now=T0)


def test_bad_input_raises_data_error(store_factory):
    store = store_factory(CFG)
    with pytest.raises(DataError):
        store.add("", np.array([1]), ts=T0)
    with pytest.raises(DataError):
        store.add("u", np.array([1.5]), ts=T0)
    with pytest.raises(DataError):
        store.filter("u", np.array([1]), now=None)


@pytest.mark.redis
def test_redis_wrong_type_key_is_artifact_error(redis_url):
    with RedisExposureStore(redis_url, config=CFG, prefix="test:wrongtype:") as store:
        store._client.rpush(store._key("u"), b"x")
        try:
            with pytest.raises(ArtifactError):
                store.filter("u", np.array([1]), now=T0)
        finally:
            store._client.delete(store._key("u"), "test:wrongtype:meta")


def test_sqlite_file_that_is_not_a_database(tmp_path):
    path = tmp_path / "x.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(ArtifactError):
        SQLiteExposureStore(path, CFG)


def test_sqlite_two_connections_see_each_other(tmp_path):
    a = SQLiteExposureStore(tmp_path / "e.db", CFG)
    b = SQLiteExposureStore(tmp_path / "e.db", CFG)
    try:
        assert not b.filter("u", np.array([5]), now=T0).any()  # b caches an empty filter
        a.add("u", np.array([5]), ts=T0)
        assert b.filter("u", np.array([5]), now=T0).all()  # b's cache was invalidated
        b.add("u", np.array([6]), ts=T0)  # read-modify-write on top of a's slice
        assert a.filter("u", np.array([5, 6]), now=T0).all()
    finally:
        a.close()
        b.close()


def test_sqlite_add_survives_sigkill(tmp_path):
    path = tmp_path / "killed.db"
    script = textwrap.dedent(
        f"""
        import os, signal
        import numpy as np
        from funnelrec.filter import CountingBloomConfig, SQLiteExposureStore
        store = SQLiteExposureStore({str(path)!r}, CountingBloomConfig(**{CFG.__dict__!r}))
        store.add("u", np.array([101, 202, 303]), ts={T0})
        store.add("v", np.array([404]), ts={T0 + DAY})
        os.kill(os.getpid(), signal.SIGKILL)  # no close, no flush, no checkpoint
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    assert os.path.exists(str(path) + "-wal")  # the writes sit in the WAL, not checkpointed
    store = SQLiteExposureStore(path, CFG)
    try:
        assert store.filter("u", np.array([101, 202, 303, 505]), now=T0).tolist() == [True, True, True, False]
        assert store.filter("v", np.array([404]), now=T0 + DAY).tolist() == [True]
    finally:
        store.close()


def test_sqlite_cache_charges_the_current_size_of_each_filter(tmp_path):
    """The LRU budget must track filters that grow (a new day's slice) and shrink (expiry)."""
    per_slice = (CFG.build().m + 1) // 2
    with SQLiteExposureStore(tmp_path / "c.db", CFG, cache_bytes=1 << 30) as store:
        for day in range(10):  # 10 daily slices, 7-day window: slices grow, then old ones drop
            for u in ("a", "b", "c"):
                store.add(u, np.array([day, day + 100]), ts=T0 + day * DAY)
        cached = store._cache.values()
        assert {len(f.slice_ids) for f in cached} == {8}  # slices (T0 + 2d) .. (T0 + 9d)
        true_bytes = sum(store._footprint(f) for f in cached)
        assert store._cached_bytes == true_bytes == 3 * (8 * per_slice + (CFG.build().m + 7) // 8 + 512)
    # a budget of two users' filters keeps the two most recently used
    budget = 2 * (8 * per_slice + (CFG.build().m + 7) // 8 + 512)
    with SQLiteExposureStore(tmp_path / "c.db", CFG, cache_bytes=budget) as store:
        for u in ("a", "b", "c"):
            store.filter(u, np.array([1]), now=T0 + 9 * DAY)
        assert list(store._cache) == ["b", "c"] and store._cached_bytes == budget
