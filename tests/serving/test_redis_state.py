"""The service's state behind one interface, run on every backend: in-memory, SQLite (the
embedded default) and Redis (a real redis-server on a free loopback port; skipped without it)."""

from __future__ import annotations

import time
import uuid

import httpx
import numpy as np
import pytest

from funnelrec.pipeline.service import (
    MemoryResultCache,
    RecommenderService,
    RedisResultCache,
    ServiceConfig,
    SQLiteResultCache,
    item_key,
)
from funnelrec.serving.app import create_app

BACKENDS = ["memory", "sqlite", pytest.param("redis", marks=pytest.mark.redis)]


@pytest.fixture(params=BACKENDS)
def make_service(request, fitted_funnel, tmp_path):
    """make_service(worker) → a service on this test's shared state; two calls = two workers
    (or a restart) over the same exposure filters and cached results."""
    backend = request.param
    prefix = f"test:{uuid.uuid4().hex}:"
    made = []

    def make(worker: int = 0) -> RecommenderService:
        if backend == "memory":
            cfg = ServiceConfig()
        elif backend == "sqlite":
            cfg = ServiceConfig(state_dir=str(tmp_path / "state"))
        else:
            cfg = ServiceConfig(state_dir=str(tmp_path / f"worker{worker}"), redis_url=request.getfixturevalue("redis_url"),
                                redis_prefix=prefix)
        svc = RecommenderService(fitted_funnel, cfg)
        made.append(svc)
        return svc

    make.backend = backend
    yield make
    for svc in made:
        svc.close()


def test_acknowledged_impressions_filter_on_this_and_every_later_worker(make_service):
    now = int(time.time())
    a = make_service(0)
    first = a.recommend("196", k=6, context={"time": now})
    shown = first.item_ids[:4]
    a.feedback(first.request_id, "196", [{"item_id": i, "type": "impression", "ts": now} for i in shown])
    again = a.recommend("196", k=6, context={"time": now}, debug=True)
    assert not set(shown) & set(again.item_ids) and set(shown) <= set(again.filtered_ids)
    # the items shown but not impressed are still eligible
    assert set(first.item_ids[4:]) - set(again.filtered_ids) == set(first.item_ids[4:])
    if make_service.backend == "memory":
        return
    a.close()
    b = make_service(1)  # a restart (sqlite) or another worker (redis)
    other = b.recommend("196", k=6, context={"time": now}, debug=True)
    assert not set(shown) & set(other.item_ids) and set(shown) <= set(other.filtered_ids)
    assert b.exposure.filter("196", np.array([item_key(i) for i in shown]), now).all()
    # a user without feedback is not filtered
    assert not b.exposure.filter("1", np.array([item_key(i) for i in shown]), now).any()


def test_fine_ranked_results_are_cached_for_the_cache_channel(make_service):
    svc = make_service(0)
    out = svc.recommend("42", k=20)
    # the ranked-but-unshown tail (tests/pipeline/test_cache_tail.py checks it by hand)
    keys, scores = svc.results.get("42")
    tail_ids = svc.current.item_ids[out.rec.tail_items].tolist()
    assert 0 < len(tail_ids) <= svc.config.cache_n and not set(tail_ids) & set(out.item_ids)
    assert keys.tolist() == [item_key(i) for i in tail_ids]
    np.testing.assert_array_equal(scores, out.rec.tail_scores.astype(np.float32))
    assert svc.results.get("never-recommended") is None
    cold = svc.recommend("unknown-user-z", k=5)
    assert cold.rec.cold_start and svc.results.get("unknown-user-z") is None  # nothing personal to cache


def test_result_cache_backends_round_trip(tmp_path, request):
    caches = [MemoryResultCache(), SQLiteResultCache(tmp_path / "r.db")]
    try:  # redis when redis-server is there
        caches.append(RedisResultCache(request.getfixturevalue("redis_url"), prefix=f"t:{uuid.uuid4().hex}:"))
    except pytest.skip.Exception:
        pass
    keys = np.array([5, -(1 << 62), 7], np.int64)
    scores = np.array([0.5, -1.25, np.inf], np.float32)
    for c in caches:
        c.put("u", keys, scores)
        c.put("v", keys[:1], scores[:1])
        got_k, got_s = c.get("u")
        assert got_k.tolist() == keys.tolist() and got_s.tolist() == scores.tolist()
        assert c.get("v")[0].tolist() == [5] and c.get("w") is None
        c.close()


@pytest.mark.redis
def test_http_feedback_through_redis_state(fitted_funnel, redis_url, serve, tmp_path):
    cfg = ServiceConfig(state_dir=str(tmp_path), redis_url=redis_url, redis_prefix=f"test:{uuid.uuid4().hex}:")
    svc = RecommenderService(fitted_funnel, cfg)
    with serve(create_app(svc)) as base:
        first = httpx.post(f"{base}/recommend", json={"user_id": "7", "k": 3}).json()
        ids = [it["item_id"] for it in first["items"]]
        r = httpx.post(f"{base}/feedback", json={"request_id": first["request_id"], "user_id": "7",
                                                 "events": [{"item_id": i, "type": "impression"} for i in ids]})
        assert r.status_code == 200
        again = httpx.post(f"{base}/recommend", json={"user_id": "7", "k": 3, "debug": True}).json()
        assert not set(ids) & {it["item_id"] for it in again["items"]} and set(ids) <= set(again["debug"]["filtered"])
    assert len(svc.events.read()) == 3
    svc.close()
