"""Replicas run one ramp schedule (online/shared.py, through RecommenderService with a real
redis-server): a replica started hours after the first runs its scheduled ramp at the same step,
judges the guardrail on every replica's feedback (the stream), and one started after a rollback
keeps the rolled-back treatment off. Two services in one process stand for two replicas: all
they share is the Redis server, as two hosts would."""

from __future__ import annotations

import json
import uuid

import numpy as np
import pytest

from funnelrec.core.config import from_dict
from funnelrec.experiments import ExperimentPlatform, ExperimentsConfig
from funnelrec.online.source import stream_fields
from funnelrec.pipeline.eventlog import FeedbackEvent
from funnelrec.pipeline.service import RecommenderService, ServiceConfig

T0 = 1_796_169_600.0  # 2026-12-02T00:00:00Z
H = 3600.0
STEPS = [{"at": "+0", "percent": 1}, {"at": "+2h", "percent": 5}, {"at": "+1d", "percent": 20}]
USERS = [f"u{i}" for i in range(20_000)]


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _platform(clock: Clock, guard: bool) -> ExperimentPlatform:
    ramp = {"steps": STEPS}
    if guard:
        ramp["guardrails"] = [{"metric": "ctr", "max_degradation": 0.0, "alpha": 0.05}]
    cfg = from_dict(ExperimentsConfig, {"layers": [{"name": "recall", "owns": ["recall."]}], "experiments": [
        {"name": "harm", "layer": "recall", "buckets": [0, 400], "ramp": ramp,
         "variants": [{"name": "control"}, {"name": "b", "params": {"recall.merge.quotas.hot": 80}}]}]})
    return ExperimentPlatform(cfg, clock=clock)


@pytest.fixture
def replicas(fitted_funnel, redis_url):
    """make(clock, guard) → a service on the shared Redis under this test's own prefix."""
    prefix = f"t{uuid.uuid4().hex[:8]}:"
    made = []

    def make(clock: Clock, guard: bool = False) -> RecommenderService:
        cfg = ServiceConfig(redis_url=redis_url, redis_prefix=prefix, redis_stream=prefix + "events",
                            max_future_s=None)
        svc = RecommenderService(fitted_funnel, cfg, _platform(clock, guard))
        made.append(svc)
        return svc

    yield make
    for s in made:
        s.close()


def _traffic(svc: RecommenderService) -> float:
    return svc.experiments.ramps["harm"].traffic


def test_a_replica_started_later_runs_the_ramp_at_the_same_step(replicas):
    clock_a = Clock(T0)
    a = replicas(clock_a)
    a.experiments.tick()
    clock_b = Clock(T0 + 3 * H)  # B starts three hours later; by itself it would count from then
    b = replicas(clock_b)
    clock_a.t = T0 + 3 * H
    a.experiments.tick()
    b.experiments.tick()
    assert _traffic(a) == _traffic(b) == 0.05
    alone = _platform(Clock(T0 + 3 * H), guard=False)  # what B ran before: its own start as the anchor
    alone.tick()
    assert alone.ramps["harm"].traffic == 0.01
    users = USERS[:3000]
    assert [a.experiments.assign(u).record for u in users] == [b.experiments.assign(u).record for u in users]


def test_guardrail_reads_every_replicas_feedback_and_a_rollback_survives_a_restart(replicas, redis_url):
    import redis

    clock = Clock(T0)
    a, b = replicas(clock, guard=True), replicas(clock, guard=True)
    a.experiments.tick(a._ramp_events)
    b.experiments.tick(b._ramp_events)
    assert _traffic(a) == _traffic(b) == 0.01
    # the treatment halves CTR; the events reach the stream as either replica writes them —
    # half of the users' feedback through each (here: straight into the stream, as feedback does)
    rng = np.random.default_rng(7)
    r = redis.Redis.from_url(redis_url)
    pipe = r.pipeline(transaction=False)
    for u in USERS:
        rec = a.experiments.assign(u).record
        arm = rec["recall"]
        if arm["experiment"] is None:
            continue
        js = json.dumps(rec, sort_keys=True)
        clicks = int(rng.binomial(20, 0.10 if arm["variant"] == "control" else 0.05))
        evs = [FeedbackEvent("r", u, str(k), "impression", 1.0, int(T0), js) for k in range(20)]
        evs += [FeedbackEvent("r", u, str(k), "click", 1.0, int(T0), js) for k in range(clicks)]
        for e in evs:
            pipe.xadd(a.config.redis_stream, stream_fields(e, T0))
    pipe.execute()
    r.close()
    # each replica's own event log holds none of it: only the stream can show the breach
    assert len(a.events) == len(b.events) == 0
    clock.t = T0 + 2 * H  # the next request of each replica ticks its ramp
    a.recommend("196", k=5)
    b.recommend("196", k=5)
    assert a.experiments.ramps["harm"].status == b.experiments.ramps["harm"].status == "stopped"
    clock.t = T0 + 30 * H  # a replica (re)started a day later: the ramp stays rolled back
    c = replicas(clock, guard=True)
    assert c.experiments.ramps["harm"].status == "stopped" and _traffic(c) == 0.0
    c.experiments.tick(c._ramp_events)
    assert _traffic(c) == 0.0
    assert all(c.experiments.assign(u).record["recall"]["experiment"] is None for u in USERS[:2000])
