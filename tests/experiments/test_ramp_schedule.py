"""Scheduled ramp-ups on a fake clock: the exact traffic share at each step (buckets worked out
by hand from the documented hash), monotone exposure, the guardrail's always-valid look against
hand-typed formulas, a planted harmful treatment rolled back while a neutral one keeps ramping,
the service advancing with no restart, and `funnelrec experiments status`."""

import json
import math

import numpy as np
import pytest
import xxhash

from funnelrec.core.config import from_dict
from funnelrec.core.errors import ConfigError, DataError
from funnelrec.experiments import ExperimentPlatform, ExperimentsConfig
from funnelrec.experiments.config import GuardrailConfig
from funnelrec.experiments.schedule import guardrail_look, parse_at
from funnelrec.pipeline.eventlog import EventLog, FeedbackEvent

T0 = 1_796_169_600.0  # 2026-12-02T00:00:00Z
H = 3600.0
USERS = [f"u{i}" for i in range(20_000)]
STEPS = [{"at": "+0", "percent": 1}, {"at": "+2h", "percent": 5}, {"at": "+1d", "percent": 20}]


class FakeClock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def experiment(name, buckets, ramp=STEPS, guardrail=None, params=None):
    e = {"name": name, "layer": "rank", "buckets": buckets, "ramp": ramp,
         "variants": [{"name": "control"}, {"name": "b", "params": params or {"rank.model": "x"}}]}
    if guardrail is not None:
        e["guardrail"] = guardrail
    return e


def platform(experiments, clock, known=("rank.model", "rank.depth")):
    cfg = from_dict(ExperimentsConfig, {"layers": [{"name": "rank"}], "experiments": experiments})
    return ExperimentPlatform(cfg, set(known), clock=clock)


def by_hand(users, lo, hi, live_per_arm, salt="rank"):
    """Arm of each user worked out from the documented rule: bucket = xxh64("rank:<id>") mod 1000;
    the experiment's range [lo, hi) halves into control and b; a step keeps the first
    `live_per_arm` buckets of each half."""
    half = (hi - lo) // 2
    out = {}
    for u in users:
        b = xxhash.xxh64(f"{salt}:{u}".encode()).intdigest() % 1000
        if lo <= b < lo + live_per_arm:
            out[u] = "control"
        elif lo + half <= b < lo + half + live_per_arm:
            out[u] = "b"
    return out


def assigned(p, users):
    rec = {u: p.assign(u).record["rank"] for u in users}
    return {u: r["variant"] for u, r in rec.items() if r["experiment"] is not None}


def test_steps_follow_the_clock_with_the_exact_share_and_exposure_is_monotone():
    clock = FakeClock(T0)
    # reserves 40 % of the layer: control [0, 200), b [200, 400); 1 % of 1000 buckets = 5 per arm
    p = platform([experiment("e", [0, 400])], clock)
    seen = []
    for t, percent in [(T0, 1), (T0 + 2 * H - 1, 1), (T0 + 2 * H, 5), (T0 + 23 * H, 5), (T0 + 24 * H, 20),
                       (T0 + 1000 * H, 20)]:
        clock.t = t
        p.tick()
        live = 1000 * percent // 100 // 2  # buckets per arm: 5, 25, 100
        want = by_hand(USERS, 0, 400, live)
        got = assigned(p, USERS)
        assert got == want, f"at +{(t - T0) / H:.0f}h"
        codes = p.assign_layer_many("rank", USERS)  # the vectorised path agrees
        assert [USERS[i] for i in np.flatnonzero(codes >= 0)] == sorted(want, key=USERS.index)
        assert p.traffic_shares("e") == {"control": live / 1000, "b": live / 1000}
        assert p.ramps["e"].traffic == percent / 100
        seen.append(got)
    for small, big in zip(seen, seen[1:]):  # whoever was in stays in, in the same arm
        assert all(big.get(u) == v for u, v in small.items())
    assert len(seen[0]) < len(seen[2]) < len(seen[4])
    assert [s["state"] for s in p.ramps["e"].steps()] == ["done", "done", "current"]
    assert p.ramps["e"].status == "completed"


def test_absolute_times_start_and_pending():
    clock = FakeClock(T0)
    ramp = {"start": "2026-12-02T06:00:00Z", "steps": [{"at": "+0", "percent": 1},
                                                         {"at": "2026-12-02T09:00:00+00:00", "percent": 10}]}
    p = platform([experiment("e", [0, 100], ramp=ramp)], clock)
    r = p.ramps["e"]
    assert r.times == (T0 + 6 * H, T0 + 9 * H)
    p.tick()
    assert r.status == "pending" and assigned(p, USERS[:3000]) == {}  # before its first step nobody is in
    clock.t = T0 + 6 * H
    assert [d.action for d in p.tick()] == ["advanced"] and r.traffic == 0.01
    clock.t = T0 + 9 * H
    assert [d.action for d in p.tick()] == ["completed"] and r.traffic == 0.1
    assert assigned(p, USERS) == by_hand(USERS, 0, 100, 50)  # 10 % of the layer = all 100 buckets


@pytest.mark.parametrize("text, want", [("+0", ("offset", 0.0)), ("+90", ("offset", 90.0)), ("+30m", ("offset", 1800.0)),
                                        ("+2h", ("offset", 7200.0)), ("+1.5d", ("offset", 129600.0)),
                                        ("2026-12-02T00:00:00Z", ("time", T0)),
                                        ("2026-12-02T01:00:00+01:00", ("time", T0)),
                                        ("2026-12-02", ("time", T0))])
def test_parse_at(text, want):
    assert parse_at(text) == want


@pytest.mark.parametrize("ramp, match", [
    ([{"at": "tomorrow", "percent": 5}], "'tomorrow' is neither an ISO-8601 time"),
    ([{"at": "+0", "percent": 0}], r"percent must be in \(0, 100\]"),
    ([{"at": "+0", "percent": 5}, {"at": "+1h", "percent": 1}], "must increase strictly"),
    ([{"at": "+2h", "percent": 1}, {"at": "+1h", "percent": 5}], "step times must increase"),
    ([{"at": "+0", "percent": 1}, {"at": "+1h", "percent": 50}], "ramp ends at 50.0%"),
    ({"schedule": [0.01], "steps": [{"at": "+0", "percent": 1}]}, "not both"),
    ({"start": "+1h", "steps": [{"at": "+0", "percent": 1}]}, "ramp start must be an ISO time"),
])
def test_bad_schedules_are_refused_naming_the_problem(ramp, match):
    with pytest.raises(ConfigError, match=match):
        platform([experiment("e", [0, 400], ramp=ramp)], FakeClock())


def test_a_guardrail_the_log_cannot_give_is_refused():
    with pytest.raises(ConfigError, match="'watch_share'.*set numerator and denominator"):
        platform([experiment("e", [0, 400], guardrail={"metric": "watch_share", "alpha": 0.05})], FakeClock())
    with pytest.raises(ConfigError, match="guardrail goes with `ramp: \\[steps\\]`"):
        platform([{**experiment("e", [0, 400], ramp={"schedule": [0.01]}), "guardrail": {"metric": "ctr", "alpha": 0.1}}],
                 FakeClock())


def test_guardrail_look_matches_hand_typed_delta_method_and_msprt():
    g = GuardrailConfig(metric="ctr", max_degradation=0.0, alpha=0.05)
    # per user (clicks, impressions)
    na, da = np.tile([3.0, 1.0, 2.0, 4.0], 5), np.full(20, 10.0)
    nb, db = np.tile([0.0, 1.0, 1.0, 0.0, 1.0], 4), np.tile([10.0, 8.0, 12.0, 10.0, 10.0], 4)

    def ratio(n, d):  # R = Σn/Σd, Var ≈ (s²_n/d̄² − 2 n̄ s_nd/d̄³ + n̄² s²_d/d̄⁴)/N
        N, mn, md = len(n), n.mean(), d.mean()
        snn = ((n - mn) ** 2).sum() / (N - 1)
        sdd = ((d - md) ** 2).sum() / (N - 1)
        snd = ((n - mn) * (d - md)).sum() / (N - 1)
        return mn / md, (snn / md**2 - 2 * mn * snd / md**3 + mn**2 * sdd / md**4) / N

    ra, va = ratio(na, da)
    rb, vb = ratio(nb, db)
    assert ra == pytest.approx(0.25) and rb == pytest.approx(0.06)
    d, V, tau2 = rb - ra, va + vb, (0.05 * ra) ** 2
    lam = math.sqrt(V / (V + tau2)) * math.exp(tau2 * d**2 / (2 * V * (V + tau2)))
    half = math.sqrt(V * (V + tau2) / tau2 * (2 * math.log(1 / 0.05) + math.log((V + tau2) / V)))
    look = guardrail_look("e", "b", g, (na, da), (nb, db), tau=0.05)
    assert look.users == (20, 20)
    assert look.control == pytest.approx(ra) and look.treatment == pytest.approx(rb)
    assert look.always_valid_p == pytest.approx(min(1.0, 1 / lam))
    assert look.interval == pytest.approx((d - half, d + half))
    assert d + half < 0 and look.worse and look.always_valid_p < 0.05  # the whole interval is below 0
    # the threshold moves the bar: worse only when the whole interval is below −max_degradation · R_A
    loose = GuardrailConfig(metric="ctr", max_degradation=-(d + half) / ra + 0.01, alpha=0.05)
    assert not guardrail_look("e", "b", loose, (na, da), (nb, db), tau=0.05).worse
    lower = GuardrailConfig(metric="ctr", direction="lower_is_better", alpha=0.05)
    assert not guardrail_look("e", "b", lower, (na, da), (nb, db), tau=0.05).worse
    # arms swapped on a lower-is-better metric: the treatment (R = 0.25) is HIGHER than control
    # (R = 0.06), i.e. worse; with τ = 0.5 the mixing variance is τ² = (0.5 · 0.06)² = 9e-4
    d2, tau2_2 = ra - rb, (0.5 * rb) ** 2
    assert d2 == pytest.approx(0.19) and tau2_2 == pytest.approx(9e-4)
    half2 = math.sqrt(V * (V + tau2_2) / tau2_2 * (2 * math.log(1 / 0.05) + math.log((V + tau2_2) / V)))
    swapped = guardrail_look("e", "b", lower, (nb, db), (na, da), tau=0.5)
    lo2, hi2 = swapped.interval
    assert swapped.control == pytest.approx(0.06) and swapped.treatment == pytest.approx(0.25)
    assert lo2 == pytest.approx(d2 - half2, rel=1e-9) and hi2 == pytest.approx(d2 + half2, rel=1e-9)
    assert lo2 == pytest.approx(0.0901622, abs=1e-7)  # 0.19 − 0.0998378: the whole interval is above 0
    assert swapped.worse is True and swapped.state == "worse"
    # the threshold is max_degradation · |R_A| above zero: just above lo → not worse, just below → worse
    m = (d2 - half2) / rb  # lo in units of |R_A| ≈ 1.503
    lenient = GuardrailConfig(metric="ctr", direction="lower_is_better", max_degradation=m + 0.01, alpha=0.05)
    strict = GuardrailConfig(metric="ctr", direction="lower_is_better", max_degradation=m - 0.01, alpha=0.05)
    assert guardrail_look("e", "b", lenient, (nb, db), (na, da), tau=0.5).worse is False
    assert guardrail_look("e", "b", strict, (nb, db), (na, da), tau=0.5).worse is True
    # an arm with one user knows nothing
    one = guardrail_look("e", "b", g, (na, da), (nb[:1], db[:1]), tau=0.05)
    assert not one.worse and one.state == "waiting for data"


def _log_traffic(log, p, users, ctr_of, rng, ts, n_impressions=20):
    """Every user in an experiment arm gets `n_impressions` impressions and Binomial clicks at
    ctr_of(experiment, variant); the events carry the assignment JSON the service writes."""
    evs, truth = [], []
    for u in users:
        a = p.assign(u)
        r = a.record["rank"]
        if r["experiment"] is None:
            continue
        js = json.dumps(a.record, sort_keys=True)
        clicks = int(rng.binomial(n_impressions, ctr_of(r["experiment"], r["variant"])))
        evs += [FeedbackEvent("r", u, str(k), "impression", 1.0, int(ts), js) for k in range(n_impressions)]
        evs += [FeedbackEvent("r", u, str(k), "click", 1.0, int(ts), js) for k in range(clicks)]
        evs.append(FeedbackEvent("r", u, "0", "like", 1.0, int(ts), js))  # not a guardrail event: ignored
        truth.append((r["experiment"], r["variant"], u, clicks, n_impressions))
    log.append(evs)
    return truth


def test_harmful_treatment_rolls_back_while_a_neutral_one_keeps_ramping(tmp_path):
    clock = FakeClock(T0)
    guard = {"metric": "ctr", "max_degradation": 0.0, "alpha": 0.05}
    p = platform([experiment("harm", [0, 400], guardrail=guard), experiment("neutral", [400, 800], guardrail=guard,
                                                                             params={"rank.model": "y"})], clock)
    log = EventLog(tmp_path / "events.db")
    rng = np.random.default_rng(7)
    ctr = {("harm", "control"): 0.10, ("harm", "b"): 0.05, ("neutral", "control"): 0.10, ("neutral", "b"): 0.10}
    p.tick(log)
    assert p.ramps["harm"].traffic == p.ramps["neutral"].traffic == 0.01
    truth = _log_traffic(log, p, USERS, lambda e, v: ctr[(e, v)], rng, T0 + 60)
    # the outcomes the ramp reads equal what was planted, user by user
    p.outcomes.update(log)
    for e, v in ctr:
        num, den = p.outcomes.per_user(e, v, "click", "impression")
        want = [(c, n) for ee, vv, _, c, n in truth if (ee, vv) == (e, v)]
        assert sorted(zip(num.tolist(), den.tolist())) == sorted((float(c), float(n)) for c, n in want)
    clock.t = T0 + 2 * H
    decisions = {d.step: d for d in p.tick(log)}
    harm, neutral = p.ramps["harm"], p.ramps["neutral"]
    assert harm.status == "stopped" and harm.traffic == 0.0
    assert "ctr of 'b'" in harm.failed[0] and any(d.action == "stopped" for d in decisions.values())
    assert neutral.status == "running" and neutral.traffic == 0.05
    assert [s["state"] for s in harm.steps()] == ["rolled back", "pending", "pending"]
    assert all(p.assign(u).record["rank"]["experiment"] != "harm" for u in USERS)  # everyone back to baseline
    assert assigned(p, USERS) == {u: v for u, v in by_hand(USERS, 400, 800, 25).items()}
    _log_traffic(log, p, USERS, lambda e, v: ctr[(e, v)], rng, T0 + 3 * H)
    clock.t = T0 + 24 * H
    p.tick(log)
    assert neutral.status == "completed" and neutral.traffic == 0.2
    assert harm.status == "stopped" and harm.traffic == 0.0  # a rollback is for good
    assert all(lk.state == "ok" for lk in neutral.looks)
    log.close()


def test_hold_keeps_the_step_instead_of_rolling_back(tmp_path):
    clock = FakeClock(T0)
    ramp = {"steps": STEPS, "on_breach": "hold",
            "guardrails": [{"metric": "ctr", "max_degradation": 0.0, "alpha": 0.05}]}
    p = platform([experiment("harm", [0, 400], ramp=ramp)], clock)
    log = EventLog(tmp_path / "events.db")
    p.tick(log)
    _log_traffic(log, p, USERS, lambda e, v: 0.10 if v == "control" else 0.04, np.random.default_rng(1), T0)
    clock.t = T0 + 2 * H
    assert [d.action for d in p.tick(log)] == ["held"]
    r = p.ramps["harm"]
    assert r.status == "holding" and r.traffic == 0.01 and r.steps()[0]["state"] == "held"
    assert assigned(p, USERS) == by_hand(USERS, 0, 400, 5)  # the 1 % keep their arms
    clock.t = T0 + 30 * H
    assert p.tick(log) == [] and r.traffic == 0.01  # still worse: the 5 % and 20 % steps wait
    log.close()


def test_a_held_ramp_resumes_when_the_looks_clear_and_then_keeps_its_schedule():
    from funnelrec.experiments.assignment import RampUp
    from funnelrec.experiments.config import RampConfig
    from funnelrec.experiments.schedule import GuardLook

    cfg = from_dict(RampConfig, {"steps": STEPS, "on_breach": "hold",
                                 "guardrails": [{"metric": "ctr", "alpha": 0.05}]})
    r = RampUp("e", cfg, start=T0)  # steps: 1 % at T0, 5 % at T0 + 2 h, 20 % at T0 + 24 h
    bad = GuardLook("e", "b", "ctr", (50, 50), 0.10, 0.04, -0.6, 1e-4, (-0.08, -0.04), worse=True)
    ok = GuardLook("e", "b", "ctr", (50, 50), 0.10, 0.10, 0.0, 0.9, (-0.02, 0.02), worse=False)
    d = r.tick(T0, [ok])
    assert (d.action, d.step, d.traffic) == ("advanced", 0, 0.01)
    d = r.tick(T0 + 1 * H, [bad])
    assert (d.action, d.step, d.traffic, r.status) == ("held", 0, 0.01, "holding")
    assert d.failed == (bad.reason(),) and r.failed == (bad.reason(),)
    assert r.tick(T0 + 2 * H, [bad]) is None and r.traffic == 0.01  # still worse: the 5 % step waits
    # the same breach on a second ramp, cleared at +1.5 h, before the 5 % step is due (+2 h):
    # "resumed" at the held step with the traffic unchanged, then the steps come at their times
    r2 = RampUp("e", cfg, start=T0)
    r2.tick(T0, [ok])
    r2.tick(T0 + 1 * H, [bad])
    d = r2.tick(T0 + 1.5 * H, [ok])
    assert (d.action, d.step, d.traffic, d.failed) == ("resumed", 0, 0.01, ())
    assert r2.status == "running" and r2.steps()[0]["state"] == "current"
    assert r2.tick(T0 + 2 * H - 1, [ok]) is None and r2.traffic == 0.01  # not due yet: nothing moves
    d = r2.tick(T0 + 2 * H, [ok])
    assert (d.action, d.step, d.traffic) == ("advanced", 1, 0.05)
    assert r2.tick(T0 + 23 * H, [ok]) is None and r2.traffic == 0.05
    d = r2.tick(T0 + 24 * H, [ok])
    assert (d.action, d.step, d.traffic, r2.status) == ("completed", 2, 0.2, "completed")
    # a ramp held past its due time resumes straight onto the step the clock says (+24 h: 20 %)
    d = r.tick(T0 + 30 * H, [ok])
    assert (d.action, d.step, d.traffic, r.status) == ("completed", 2, 0.2, "completed")


def test_guarded_ramp_does_not_step_without_a_log_and_checks_are_throttled(tmp_path):
    clock = FakeClock(T0)
    guard = {"metric": "ctr", "alpha": 0.05}
    p = platform([experiment("e", [0, 400], guardrail=guard)], clock)
    p.tick()  # no log: the guardrail cannot be checked, so the ramp does not start
    assert p.ramps["e"].status == "pending" and p.ramps["e"].traffic == 0.0
    log = EventLog(tmp_path / "events.db")
    p.tick(log)
    assert p.ramps["e"].traffic == 0.01
    seq = p.outcomes.seq
    log.append([FeedbackEvent("r", "u1", "1", "impression", 1.0, int(T0), None)])
    clock.t = T0 + 30  # within check_every (60 s) and no step due: the log is not read
    p.tick(log)
    assert p.outcomes.seq == seq
    clock.t = T0 + 61
    p.tick(log)
    assert p.outcomes.seq == seq + 1
    log.close()


# ---------------------------------------------------------------------------- through the service

@pytest.fixture(scope="module")
def tiny_funnel():
    from funnelrec.pipeline.builder import FunnelBuilder
    from funnelrec.pipeline.config import FunnelConfig
    from tiny_world import make_world

    data = make_world()
    cfg = FunnelConfig.from_dict({"recall": {"channels": [{"name": "hot", "n": 20}, {"name": "itemcf", "n": 20}],
                                             "merge": {"total": 25}}, "rank": {"epochs": 1}})
    return FunnelBuilder(cfg).fit(data.dataset, data.interactions)


def test_service_advances_by_the_clock_and_rolls_back_from_its_own_feedback(tiny_funnel):
    from funnelrec.pipeline.service import RecommenderService

    clock = FakeClock(T0)
    cfg = from_dict(ExperimentsConfig, {"layers": [{"name": "recall"}], "experiments": [{
        "name": "shallow", "layer": "recall", "buckets": [0, 400], "ramp": STEPS,
        "guardrail": {"metric": "ctr", "alpha": 0.05},
        "variants": [{"name": "control"}, {"name": "b", "params": {"recall.merge.total": 10}}]}]})
    p = ExperimentPlatform(cfg, clock=clock)
    svc = RecommenderService(tiny_funnel, experiments=p)
    users = USERS[:10_000]
    assert all(p.layer_arm("recall", u)[0] is None for u in users)  # no tick yet: nobody is in
    by5, in1 = by_hand(users, 0, 400, 25, "recall"), by_hand(users, 0, 400, 5, "recall")
    assert len(in1) >= 60
    u5 = next(u for u in by5 if u not in in1)
    assert svc.recommend(u5, k=5).experiments["recall"]["experiment"] is None  # at 1 % this user is out
    for j, (u, v) in enumerate(in1.items()):  # the harmful arm's users click nothing, control 2–7 of 10
        out = svc.recommend(u, k=10)
        assert out.experiments["recall"] == {"experiment": "shallow", "variant": v}
        evs = [{"item_id": i, "type": "impression", "ts": int(T0)} for i in out.item_ids]
        if v == "control":
            evs += [{"item_id": i, "type": "click", "ts": int(T0)} for i in out.item_ids[: 2 + j % 6]]
        svc.feedback(out.request_id, u, evs)
    clock.t = T0 + 2 * H  # the 5 % step is due: the next request looks at the log first
    assert svc.recommend(u5, k=5).experiments["recall"]["experiment"] is None
    assert p.ramps["shallow"].status == "stopped"
    assert all(svc.recommend(u, k=3).experiments["recall"]["experiment"] is None for u in list(in1)[:5])
    svc.close()


def test_neutral_ramp_through_the_service_reaches_the_next_step_with_no_restart(tiny_funnel):
    from funnelrec.pipeline.service import RecommenderService

    clock = FakeClock(T0)
    cfg = from_dict(ExperimentsConfig, {"layers": [{"name": "recall"}], "experiments": [{
        "name": "shallow", "layer": "recall", "buckets": [0, 400], "ramp": STEPS,
        "variants": [{"name": "control"}, {"name": "b", "params": {"recall.merge.total": 10}}]}]})
    p = ExperimentPlatform(cfg, clock=clock)
    svc = RecommenderService(tiny_funnel, experiments=p)
    by5, in1 = by_hand(USERS[:3000], 0, 400, 25, "recall"), by_hand(USERS[:3000], 0, 400, 5, "recall")
    u5 = next(u for u in by5 if u not in in1)
    assert svc.recommend(u5, k=5).experiments["recall"]["experiment"] is None
    clock.t = T0 + 2 * H
    assert svc.recommend(u5, k=5).experiments["recall"] == {"experiment": "shallow", "variant": by5[u5]}
    svc.close()


# ---------------------------------------------------------------------------- the CLI

def test_experiments_status_shows_each_step_and_the_guardrail(tmp_path):
    from typer.testing import CliRunner

    from funnelrec.cli import app

    yaml_text = f"""
layers: [{{name: rank}}]
experiments:
  - name: harm
    layer: rank
    buckets: [0, 400]
    ramp: {json.dumps([{"at": "2026-12-02T00:00:00Z", "percent": 1}, {"at": "2026-12-02T02:00:00Z", "percent": 5},
                       {"at": "2026-12-03T00:00:00Z", "percent": 20}])}
    guardrail: {{metric: ctr, alpha: 0.05}}
    variants: [{{name: control}}, {{name: b}}]
"""
    path = tmp_path / "exp.yaml"
    path.write_text(yaml_text)
    run = CliRunner().invoke
    out = run(app, ["experiments", "status", "--config", str(path), "--now", "2026-12-02T03:00:00Z"])
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    assert any("2026-12-02T00:00:00Z" in ln and "1%" in ln and "done" in ln for ln in lines)
    assert any("2026-12-02T02:00:00Z" in ln and "5%" in ln and "current" in ln for ln in lines)
    assert any("2026-12-03T00:00:00Z" in ln and "20%" in ln and "pending" in ln for ln in lines)
    assert "guardrail ctr: not checked (no --log; the steps are the clock's)" in out.output
    # with a log holding a harmful treatment, the status at that time says rolled back
    p = ExperimentPlatform.from_yaml(path, clock=FakeClock(T0))
    log = EventLog(tmp_path / "events.db")
    p.tick(log)
    _log_traffic(log, p, USERS, lambda e, v: 0.10 if v == "control" else 0.03, np.random.default_rng(3), T0)
    log.close()
    out = run(app, ["experiments", "status", "--config", str(path), "--log", str(tmp_path / "events.db"),
                    "--now", "2026-12-02T03:00:00Z"])
    assert out.exit_code == 0, out.output
    assert "stopped" in out.output and "rolled back" in out.output and "→ worse" in out.output
    out = run(app, ["experiments", "status", "--config", str(path), "--log", str(tmp_path / "nope.db")])
    assert isinstance(out.exception, DataError) and "feedback log not found" in str(out.exception)
