"""The same contract against every registered history store (`HISTORY_STORES.names()`), each
built through its registry as the service builds it (`build_history_store`): append/recent round
trip, ts order inside one append, the history_n bound, users kept apart, nothing but
consumptions accepted, a reopened store keeps what it had (except "memory", by design), and a
stored record that is not 17 bytes raises. A newly registered backend runs these the day it is
registered; one this file does not know how to corrupt fails, so it cannot pass silently."""

from __future__ import annotations

import sqlite3
import uuid

import numpy as np
import pytest

import funnelrec.online.state  # noqa: F401  (registers the history stores)
from funnelrec.core.errors import ArtifactError, ConfigError, DataError, UnknownComponentError
from funnelrec.core.registry import EXPOSURE_STORES, HISTORY_STORES
from funnelrec.online.state import build_history_store


def _params(names):
    return [pytest.param(n, marks=pytest.mark.redis) if n == "redis" else n for n in names]


@pytest.fixture(params=_params(HISTORY_STORES.names()))
def open_store(request, tmp_path):
    """open_store(history_n) → a store of the parametrized backend; called again, the same data."""
    backend = request.param
    prefix = f"test:{uuid.uuid4().hex}:"
    redis_url = request.getfixturevalue("redis_url") if backend == "redis" else None
    opened = []

    def make(history_n: int = 5):
        s = build_history_store(backend, state_dir=tmp_path, redis_url=redis_url, prefix=prefix, history_n=history_n)
        opened.append(s)
        return s

    make.backend, make.prefix, make.dir = backend, prefix, tmp_path
    yield make
    if backend == "redis":
        import redis

        c = redis.Redis.from_url(redis_url)
        keys = list(c.scan_iter(match=prefix + "*"))
        if keys:
            c.delete(*keys)
        c.close()
    for s in opened:
        s.close()


def test_the_backends_are_those_of_the_other_state_stores():
    assert HISTORY_STORES.names() == EXPOSURE_STORES.names()  # one backend name builds all of a service's state


def test_round_trip_in_ts_order_and_bounded(open_store):
    s = open_store(history_n=5)
    assert type(s) is HISTORY_STORES.get(open_store.backend)
    assert len(s.recent("u")) == 0
    s.append("u", np.array([10, -(1 << 62), 12]), np.array([300, 100, 200]), ["click", "like", "purchase"])
    h = s.recent("u")
    assert h.keys.dtype == np.int64 and h.ts.dtype == np.int64
    assert h.keys.tolist() == [-(1 << 62), 12, 10] and h.ts.tolist() == [100, 200, 300]
    assert h.type_names() == ["like", "purchase", "click"]
    s.append("u", np.array([13, 14, 15]), np.array([400, 400, 401]), ["cart", "watch_time", "click"])
    h = s.recent("u")  # 6 events, the oldest dropped; equal ts keep their order
    assert h.keys.tolist() == [12, 10, 13, 14, 15] and h.type_names() == ["purchase", "click", "cart", "watch_time",
                                                                       "click"]
    s.append("v", np.array([99]), np.array([1]), ["click"])
    assert s.recent("v").keys.tolist() == [99] and len(s.recent("u")) == 5  # users apart
    s.append("u", np.zeros(0, np.int64), np.zeros(0, np.int64), [])  # nothing to add: unchanged
    assert s.recent("u").keys.tolist() == [12, 10, 13, 14, 15]
    # one append longer than the bound keeps its newest history_n
    s.append("w", np.arange(8), np.arange(8), ["click"] * 8)
    assert s.recent("w").keys.tolist() == [3, 4, 5, 6, 7]


def test_only_consumptions_and_clear_errors(open_store):
    s = open_store()
    with pytest.raises(DataError, match=r"history event types \['impression'\] are not consumptions"):
        s.append("u", np.array([1]), np.array([1]), ["impression"])
    with pytest.raises(DataError, match="1 keys but 2 event types"):
        s.append("u", np.array([1]), np.array([1]), ["click", "click"])
    with pytest.raises(DataError, match="history keys must be a 1-D integer array"):
        s.append("u", np.array([1.5]), np.array([1]), ["click"])
    with pytest.raises(DataError, match="user_key must be a non-empty str"):
        s.recent("")
    assert len(s.recent("u")) == 0  # nothing half-written
    with pytest.raises(ConfigError, match="history_n must be an int ≥ 1"):
        open_store(history_n=0)


def test_reopen_keeps_history_and_a_smaller_bound_cuts_it(open_store):
    if open_store.backend == "memory":
        pytest.skip("the memory store is ephemeral by design")
    s = open_store(history_n=5)
    s.append("u", np.array([1, 2, 3]), np.array([1, 2, 3]), ["click"] * 3)
    s.close()
    assert open_store(history_n=5).recent("u").keys.tolist() == [1, 2, 3]
    assert open_store(history_n=2).recent("u").keys.tolist() == [2, 3]


def test_a_torn_record_raises_artifact_error(open_store):
    if open_store.backend == "memory":
        pytest.skip("the memory store holds no record outside the process")
    s = open_store()
    s.append("u", np.array([1, 2]), np.array([1, 2]), ["click"] * 2)
    if open_store.backend == "sqlite":
        db = sqlite3.connect(open_store.dir / "history.db")
        (blob,) = db.execute("SELECT blob FROM history WHERE user_key = 'u'").fetchone()
        assert len(blob) == 34  # two 17-byte records
        db.execute("UPDATE history SET blob = ? WHERE user_key = 'u'", (bytes(blob)[:-1],))
        db.commit()
        db.close()
    elif open_store.backend == "redis":
        s._client.rpush(f"{open_store.prefix}history:u", b"short")
    else:
        pytest.fail(f"history store {open_store.backend!r} has no corruption case here: add one")
    with pytest.raises(ArtifactError, match="history of user 'u': .*17-byte records"):
        open_store().recent("u")


def test_unknown_backend_lists_the_known_ones(tmp_path):
    with pytest.raises(UnknownComponentError, match="unknown history store 'mongo'; known: memory, redis, sqlite"):
        build_history_store("mongo", state_dir=tmp_path)
    with pytest.raises(ConfigError, match="'sqlite' state backend needs state_dir"):
        build_history_store("sqlite")
