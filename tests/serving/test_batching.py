"""Dynamic batching of /recommend (serving/batching.py, `RecommenderService.recommend_many`): a
batch answers each request as it would be answered alone, keeps each request's error its own,
runs compatible requests as one `Funnel.run`, serves a user twice in order, and over HTTP the
requests that queue behind a running one are answered together."""

from __future__ import annotations

import http.client
import json
import time
from urllib.parse import urlsplit

import numpy as np
import pytest

from funnelrec.core.errors import DataError
from funnelrec.pipeline.service import RecommenderService, ServiceConfig
from funnelrec.serving.app import create_app

USERS = ["1", "2", "3", "4", "5", "6"]
T = 1_700_000_000


def _alone(funnel, requests, feedback=()):
    """Each request on a fresh service (given the same `feedback` first), one by one: the
    answers batching must reproduce."""
    svc = _service(funnel, feedback)
    try:
        return [svc.recommend(**r) for r in requests]
    finally:
        svc.close()


def _service(funnel, feedback=(), config=None):
    svc = RecommenderService(funnel, config)
    for user, events in feedback:
        svc.feedback(None, user, events)
    return svc


def test_a_batch_answers_each_request_as_alone_in_one_funnel_run(fitted_funnel, monkeypatch):
    some_item = _alone(fitted_funnel, [{"user_id": "2", "k": 5}])[0].item_ids[0]
    shown = _alone(fitted_funnel, [{"user_id": "4", "k": 5}])[0].item_ids
    # online state that differs per row: user 3's fresh clicks (history), user 4's impressions
    # (exposure filter), a new user's click (fresh history makes them not cold)
    feedback = [("3", [{"item_id": i, "type": "click", "ts": T - 60} for i in (50, 181)]),
                ("4", [{"item_id": i, "type": "impression", "ts": T - 60} for i in shown]),
                ("fresh-user", [{"item_id": 50, "type": "click", "ts": T - 60}])]
    requests = [{"user_id": u, "k": 5, "context": {"time": T}} for u in USERS]
    requests[1]["exclude"] = [some_item]  # the client's exclusion holds inside a batch
    requests.append({"user_id": "nobody-knows-me", "k": 5, "context": {"time": T}})  # cold start
    requests.append({"user_id": "fresh-user", "k": 5, "context": {"time": T}})
    want = _alone(fitted_funnel, requests, feedback)
    assert some_item not in want[1].item_ids
    assert not set(shown) & set(want[3].item_ids)  # the exposure filter held
    assert want[2].item_ids != _alone(fitted_funnel, [requests[2]])[0].item_ids  # the clicks changed user 3's answer
    assert want[-2].rec.cold_start and not want[-1].rec.cold_start

    calls = []
    real_run = fitted_funnel.run
    monkeypatch.setattr(fitted_funnel, "run", lambda users, *a, **kw: calls.append(len(users)) or real_run(users, *a, **kw))
    svc = _service(fitted_funnel, feedback)
    got = svc.recommend_many(requests)
    svc.close()
    assert calls == [len(requests)]  # one Funnel.run for all of them
    for g, w in zip(got, want):
        assert g.item_ids == w.item_ids
        np.testing.assert_allclose(g.rec.scores, w.rec.scores, rtol=1e-5, atol=1e-6)
        assert g.rec.cold_start == w.rec.cold_start
    assert got[-2].rec.cold_start and not got[-1].rec.cold_start and not got[0].rec.cold_start
    assert len({g.request_id for g in got}) == len(got)  # each answer is its own request


def test_requests_that_differ_run_apart_and_errors_stay_their_own(fitted_funnel, monkeypatch):
    requests = [{"user_id": "1", "k": 5, "context": {"time": T}},
                {"user_id": "2", "k": 3, "context": {"time": T}},  # another k: another batch
                {"user_id": "3", "k": 5, "filters": {"no_such_column": ["x"]}, "context": {"time": T}},
                {"user_id": "4", "k": 0},  # invalid
                {"user_id": "5", "k": 5, "context": {"time": T}}]
    calls = []
    real_run = fitted_funnel.run
    monkeypatch.setattr(fitted_funnel, "run", lambda users, *a, **kw: calls.append(len(users)) or real_run(users, *a, **kw))
    svc = RecommenderService(fitted_funnel)
    got = svc.recommend_many(requests)
    svc.close()
    assert isinstance(got[2], DataError) and "no_such_column" in str(got[2])
    assert isinstance(got[3], DataError) and "k must be" in str(got[3])
    assert sorted(calls) == [1, 2]  # users 1 and 5 together (k 5), user 2 alone (k 3)
    want = _alone(fitted_funnel, [requests[i] for i in (0, 1, 4)])
    assert [got[i].item_ids for i in (0, 1, 4)] == [w.item_ids for w in want]
    assert len(got[1].item_ids) == 3


@pytest.fixture(scope="module")
def world_funnel():
    """The tiny world (tests/tiny_world.py) with channels that read the request: fresh (its clock:
    items published by then), geo (its region) and hot; no ranker. Fits in a fraction of a second."""
    from funnelrec.pipeline.builder import FunnelBuilder
    from funnelrec.pipeline.config import FunnelConfig
    from tiny_world import make_world

    data = make_world()
    cfg = FunnelConfig.from_dict({
        "recall": {"channels": [{"name": "fresh", "n": 10, "params": {"tau_days": 5}}, {"name": "geo", "n": 10},
                                {"name": "hot", "n": 10}],
                   "merge": {"total": 20, "quotas": {"fresh": 5, "geo": 5, "hot": 10}, "priority": ["fresh", "geo", "hot"]}},
        "k": 5})
    return FunnelBuilder(cfg).fit(data.dataset, data.interactions)


def test_requests_of_another_clock_second_region_or_variant_run_apart(world_funnel, monkeypatch):
    """A batch runs on its first request's context and plan: a request whose time, region or
    experiment variant differs must run in a batch of its own, and gets its answer alone."""
    from funnelrec.core.config import from_dict
    from funnelrec.experiments import ExperimentPlatform
    from funnelrec.experiments.config import ExperimentsConfig
    from tiny_world import DAY

    exp = from_dict(ExperimentsConfig, {
        "n_buckets": 100, "layers": [{"name": "recall", "owns": ["recall."]}],
        "experiments": [{"name": "q", "layer": "recall", "buckets": [0, 100],
                         "variants": [{"name": "control"}, {"name": "no_fresh", "params": {"recall.merge.quotas.fresh": 0}}]}]},
        "experiments")

    def service(experiments=True):
        return RecommenderService(world_funnel, ServiceConfig(cache_n=0), ExperimentPlatform(exp) if experiments else None)

    late, early = 1_000_000_000 + 60 * DAY, 1_000_000_000 + 10 * DAY  # the world's clicks span days 0..100
    requests = [{"user_id": 2, "k": 5, "context": {"time": late}},
                {"user_id": 3, "k": 5, "context": {"time": early}},  # another clock second
                {"user_id": 4, "k": 5, "context": {"time": late, "region": "1"}},  # another region
                {"user_id": 5, "k": 5, "context": {"time": late}},  # another variant (no_fresh)
                {"user_id": 6, "k": 5, "context": {"time": late}}]  # as user 2's: the one batch of two
    svc = service()
    want = [svc.recommend(**r) for r in requests]
    assert [w.experiments["recall"]["variant"] for w in want] == ["control"] * 3 + ["no_fresh", "control"]
    # each difference changes that user's answer (else running it with user 2's would go unseen)
    assert want[1].item_ids != svc.recommend(3, k=5, context={"time": late}).item_ids
    assert want[2].item_ids != svc.recommend(4, k=5, context={"time": late}).item_ids
    plain = service(experiments=False)
    assert want[3].item_ids != plain.recommend(5, k=5, context={"time": late}).item_ids
    assert want[0].item_ids == plain.recommend(2, k=5, context={"time": late}).item_ids  # control = no overrides
    svc.close()
    plain.close()

    calls = []
    real_run = world_funnel.run
    monkeypatch.setattr(world_funnel, "run", lambda users, *a, **kw: calls.append(len(users)) or real_run(users, *a, **kw))
    svc = service()
    got = svc.recommend_many(requests)
    svc.close()
    assert [g.item_ids for g in got] == [w.item_ids for w in want]
    assert [g.experiments for g in got] == [w.experiments for w in want]
    assert sorted(calls) == [1, 1, 1, 2]  # users 2 and 6 did share one run


@pytest.fixture(scope="module")
def cache_funnel():
    """Hot by plain count and a cache channel merged first: a user's second answer differs from
    the first (it reads the tail the first one cached; tests/tiny_world.py, test_cache_tail.py)."""
    from tiny_world import known_order_funnel

    return known_order_funnel(priority=["cache", "hot"])


def test_a_user_twice_in_a_batch_is_served_in_order(cache_funnel):
    seq = RecommenderService(cache_funnel, ServiceConfig(cache_n=5))
    first, second = seq.recommend(99, k=3), seq.recommend(99, k=3)
    assert first.item_ids == [1, 2, 4] and second.item_ids == [5, 1, 6]  # the second read the first's cache
    svc = RecommenderService(cache_funnel, ServiceConfig(cache_n=5))
    got = svc.recommend_many([{"user_id": 99, "k": 3}, {"user_id": 1, "k": 3}, {"user_id": 99, "k": 3}])
    assert got[0].item_ids == [1, 2, 4] and got[2].item_ids == [5, 1, 6]
    assert "cache" in got[2].rec.channels[0]


def _burst(base: str, bodies: list[dict]) -> list[tuple[int, dict]]:
    """One POST /recommend per body, each on its own keep-alive connection opened beforehand,
    written back to back (tests/serving/test_http_api.py `_post_on_open_connections`)."""
    u = urlsplit(base)
    conns = [http.client.HTTPConnection(u.hostname, u.port, timeout=60) for _ in bodies]
    for c in conns:
        c.request("GET", "/health")
        c.getresponse().read()
    for c, b in zip(conns, bodies):
        c.request("POST", "/recommend", body=json.dumps(b), headers={"Content-Type": "application/json"})
    out = []
    for c in conns:
        r = c.getresponse()
        out.append((r.status, json.loads(r.read())))
        c.close()
    return out


def _metric(text: str, name: str) -> float:
    return float(next(line.split()[-1] for line in text.splitlines() if line.startswith(name + " ")))


def test_requests_queued_behind_a_running_one_are_answered_as_one_batch(fitted_funnel, serve, monkeypatch):
    import httpx

    svc = RecommenderService(fitted_funnel)
    real_many = svc.recommend_many
    sizes = []

    def held(requests):  # the first drain holds the loop while the rest of the burst arrives
        sizes.append(len(requests))
        if len(sizes) == 1:
            time.sleep(0.5)
        return real_many(requests)

    monkeypatch.setattr(svc, "recommend_many", held)
    bodies = [{"user_id": u, "k": 4, "context": {"time": T}} for u in USERS]
    bodies.append({"user_id": "7", "k": 4, "filters": {"no_such_column": ["x"]}})  # its own 422
    with serve(create_app(svc)) as base:
        rs = _burst(base, bodies)
        text = httpx.get(f"{base}/metrics").text
    svc.close()
    assert [code for code, _ in rs] == [200] * len(USERS) + [422]
    assert "no_such_column" in rs[-1][1]["detail"]
    assert max(sizes) >= 3 and sum(sizes) == len(bodies)  # what queued behind the first ran together
    assert _metric(text, "funnelrec_recommend_batch_size_sum") == len(bodies)
    assert _metric(text, "funnelrec_recommend_batch_size_count") == len(sizes)
    want = _alone(fitted_funnel, [{k: v for k, v in b.items()} for b in bodies[:-1]])
    assert [[it["item_id"] for it in body["items"]] for _, body in rs[:-1]] == [w.item_ids for w in want]


def test_max_batch_one_answers_one_by_one(fitted_funnel, serve):
    import httpx

    svc = RecommenderService(fitted_funnel, ServiceConfig(max_batch=1))
    with serve(create_app(svc)) as base:
        rs = _burst(base, [{"user_id": u, "k": 3} for u in USERS[:3]])
        text = httpx.get(f"{base}/metrics").text
    svc.close()
    assert [code for code, _ in rs] == [200] * 3
    assert _metric(text, "funnelrec_recommend_batch_size_count") == 0


def test_max_batch_below_one_is_refused(tmp_path, capsys):
    from funnelrec.core.errors import ConfigError
    from funnelrec.serving.__main__ import ServeSettings, run

    with pytest.raises(ConfigError, match="max_batch"):
        ServiceConfig(max_batch=0)
    assert run(ServeSettings(artifact=str(tmp_path), max_batch=0)) == 2
    assert "--max-batch must be ≥ 1" in capsys.readouterr().err


def test_the_lean_post_route_answers_as_the_documented_one(fitted_funnel, serve):
    """POST /recommend is served by `RecommendPostLean` (no FastAPI dependency solving); with
    it removed, the documented FastAPI route answers. Both must give the same statuses, the same
    error details and the same answer for every body and content type, and the route stays in
    the OpenAPI schema."""
    import httpx

    ok = '{"user_id": "1", "k": 3, "context": {"time": 1700000000}}'
    cases = [(b, "application/json") for b in
             ['{"user_id": "1", "k": 0}', '{"user_id": "1", "k": "many"}', '{"k": 3}', '{"user_id": "1", "nope": 1}',
              '{"user_id": "\\ud800"}', '{"user_id": "1"', 'not json', '[]', '', "[" * 100_000, ok]]
    cases += [(ok, "text/plain"), (ok, None), (ok, "application/x-www-form-urlencoded"),
              (ok, "application/json; charset=utf-8"), (ok, "application/vnd.api+json"),
              (b'{"user_id": "\xff"}', "application/json")]

    def answers(app) -> list[tuple[int, object]]:
        out = []
        with serve(app) as base:
            for b, ctype in cases:
                headers = {} if ctype is None else {"content-type": ctype}
                r = httpx.post(f"{base}/recommend", content=b, headers=headers)
                got = r.json()
                if r.status_code == 200:
                    got = [it["item_id"] for it in got["items"]]
                elif isinstance(got["detail"], list):
                    got = [(tuple(e["loc"]), e["type"]) for e in got["detail"]]
                out.append((r.status_code, got))
            spec = httpx.get(f"{base}/openapi.json").json()
        assert "post" in spec["paths"]["/recommend"]
        return out

    svc = RecommenderService(fitted_funnel, ServiceConfig(max_batch=1))
    lean_app = create_app(svc)
    assert lean_app.router.routes[0].name == "recommend_post_lean"
    lean = answers(lean_app)
    documented_app = create_app(svc)
    documented_app.router.routes.pop(0)
    documented = answers(documented_app)
    svc.close()
    assert [code for code, _ in lean[:8]] == [422] * 8 and lean[10][0] == 200
    assert 400 <= lean[9][0] < 500  # nested too deep
    for a, b, case in zip(lean, documented, cases):
        assert a == b, (case[1], str(case[0])[:40], a, b)


class _Recorder:
    """A stand-in service for the batcher alone: logs each batch, answers each request with its id."""

    def __init__(self, log, short: bool = False):
        self.log, self.short = log, short

    def recommend_many(self, requests):
        self.log.append(("batch", [r["user_id"] for r in requests]))
        time.sleep(0.02)
        answers = [r["user_id"] for r in requests]
        return answers[:-1] if self.short else answers


def test_a_batch_is_answered_before_the_next_one_runs():
    import asyncio

    from funnelrec.serving.batching import RecommendBatcher

    log: list = []

    async def main():
        b = RecommendBatcher(max_batch=2)
        svc = _Recorder(log)

        async def one(i):
            got = await b.submit(svc, {"user_id": i})
            log.append(("answer", got))

        await asyncio.gather(*(one(i) for i in range(6)))

    asyncio.run(main())
    assert log == [("batch", [0, 1]), ("answer", 0), ("answer", 1), ("batch", [2, 3]), ("answer", 2),
                   ("answer", 3), ("batch", [4, 5]), ("answer", 4), ("answer", 5)]


def test_no_waiting_request_is_left_without_an_answer():
    import asyncio

    from funnelrec.serving.batching import RecommendBatcher

    async def main(batcher, svc, n):
        return await asyncio.wait_for(asyncio.gather(*(batcher.submit(svc, {"user_id": i}) for i in range(n)),
                                                     return_exceptions=True), timeout=5)

    got = asyncio.run(main(RecommendBatcher(max_batch=4), _Recorder([], short=True), 3))
    assert all(isinstance(g, RuntimeError) and "answered 2 of 3" in str(g) for g in got)

    def boom(n):
        raise ValueError("metrics down")

    got = asyncio.run(main(RecommendBatcher(max_batch=4, on_batch=boom), _Recorder([]), 2))
    assert all(isinstance(g, ValueError) for g in got)


def test_requests_a_loop_turn_or_two_behind_join_the_first_ones_batch():
    """The drain runs `rounds` (2) loop turns after the first request: a request that reaches
    `submit` one or two turns later (over HTTP: the guard's and the body read's awaits) is in the
    same batch; one arriving later still is in the next."""
    import asyncio

    from funnelrec.serving.batching import RecommendBatcher

    log: list = []

    async def main():
        b = RecommendBatcher(max_batch=8)
        svc = _Recorder(log)

        async def after(turns, i):
            for _ in range(turns):
                await asyncio.sleep(0)  # one loop turn each
            return await b.submit(svc, {"user_id": i})

        return await asyncio.gather(after(0, 0), after(1, 1), after(2, 2), after(2, 3), after(5, 4))

    assert asyncio.run(main()) == [0, 1, 2, 3, 4]
    assert log == [("batch", [0, 1, 2, 3]), ("batch", [4])]
