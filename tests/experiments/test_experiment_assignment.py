"""Bucketing, validation, precedence, holdouts and ramp-ups."""

from pathlib import Path

import numpy as np
import orjson
import pytest
import xxhash
from scipy import stats as sps

from funnelrec.core.config import from_dict
from funnelrec.core.errors import ConfigError
from funnelrec.experiments import (
    ExperimentPlatform,
    ExperimentsConfig,
    apply_params,
    bucket_of,
    buckets_of,
    flatten_params,
)
from funnelrec.experiments.stats import TestResult, difference_test

ROOT = Path(__file__).resolve().parents[2]
KNOWN = {"recall.quotas.swing", "recall.quotas.hot", "prerank.keep", "rank.model", "fusion.weights.like"}
USERS = [f"u{i}" for i in range(100_000)]


def platform(d, known=KNOWN):
    return ExperimentPlatform(from_dict(ExperimentsConfig, d), known)


def ab(name="e", layer="rank", params=None, **kw):
    return {"name": name, "layer": layer, "variants": [{"name": "control"}, {"name": "b", "params": params or {"rank.model": "dcnv2"}}], **kw}


def test_bucket_is_salted_xxh64_mod_buckets():
    assert bucket_of("rank", 42) == xxhash.xxh64(b"rank:42").intdigest() % 1000
    assert bucket_of("rank", "ü7", 10_000) == xxhash.xxh64("rank:ü7".encode()).intdigest() % 10_000
    ids = ["a", 1, "ü", 123456789]
    np.testing.assert_array_equal(buckets_of("s", ids), [bucket_of("s", u) for u in ids])


def test_buckets_are_uniform_and_layers_orthogonal():
    b1, b2 = buckets_of("recall", USERS), buckets_of("rank", USERS)
    assert sps.chisquare(np.bincount(b1, minlength=1000)).pvalue > 0.001
    # 50/50 in one layer, 20/80 in the other: the 2×2 table must be independent
    table = np.histogram2d(b1 < 500, b2 < 200, bins=2)[0]
    assert sps.chi2_contingency(table).pvalue > 0.01


def test_within_layer_split_matches_config():
    p = platform({"layers": [{"name": "rank"}], "experiments": [
        {"name": "e", "layer": "rank", "traffic": 0.3, "variants": [
            {"name": "control", "share": 0.5}, {"name": "b", "share": 0.25, "params": {"rank.model": "x"}},
            {"name": "c", "share": 0.25, "params": {"rank.model": "y"}}]}]})
    codes = p.assign_layer_many("rank", USERS)
    counts = np.array([(codes == k).sum() for k in (-1, 0, 1, 2)])
    expected = np.array([0.7, 0.15, 0.075, 0.075]) * len(USERS)
    assert sps.chisquare(counts, expected).pvalue > 0.001
    # vectorised and one-by-one assignment agree
    for u, c in zip(USERS[:300], codes[:300]):
        exp, var = p.layer_arm("rank", u)
        assert (var == "baseline") if c < 0 else (p.arms("rank")[c][:2] == (exp, var))


@pytest.mark.parametrize("cfg,message", [
    ({"layers": [{"name": "rank"}], "experiments": [ab("a", buckets=[0, 300]), ab("b", buckets=[200, 400])]},
     "experiments 'a' and 'b' overlap in layer 'rank'"),
    ({"layers": [{"name": "rank"}], "experiments": [ab("a", traffic=0.7), ab("b", traffic=0.4)]},
     "traffic over 100% in layer 'rank'"),
    ({"layers": [{"name": "rank"}], "experiments": [ab("a", traffic=0.5, params={"rank.modle": "x"})]},
     "unknown parameter 'rank.modle' .* did you mean 'rank.model'"),
    ({"layers": [{"name": "rank"}], "experiments": [ab("a", layer="rnk", traffic=0.5)]}, "unknown layer 'rnk'"),
    ({"layers": [{"name": "rank"}], "experiments": [ab("a", traffic=0.5, colour="red")]}, "unknown key 'colour'"),
    ({"layers": [{"name": "rank"}, {"name": "fusion"}], "experiments": [ab("a", traffic=0.5), ab("b", layer="fusion", traffic=0.5)]},
     "'rank.model' is changed in layers 'rank' and 'fusion'"),
    ({"layers": [{"name": "rank", "owns": ["rank."]}], "experiments": [ab("a", traffic=0.5, params={"prerank.keep": 3})]},
     "outside layer 'rank'"),
    ({"layers": [{"name": "rank"}], "experiments": [ab("a", traffic=0.1, ramp={"schedule": [0.01, 0.2]})]},
     "ramp ends at 20.0%"),
    ({"layers": [{"name": "rank"}], "experiments": [{"name": "a", "layer": "rank", "traffic": 0.2, "variants": [
        {"name": "control", "share": 0.5}, {"name": "b", "share": 0.6}]}]}, "shares sum to 1.1"),
    ({"layers": [{"name": "rank"}], "experiments": [ab("a", traffic=0.5, ramp={"schedule": [0.05, 0.01]})]},
     "must increase"),
    ({"layers": [{"name": "rank"}], "experiments": [ab("a", buckets=[0, 2000])]}, "exceeds n_buckets"),
    ({"layers": [{"name": "rank"}], "rollouts": [{"name": "r", "params": {"rank.mode": "x"}}]}, "unknown parameter 'rank.mode'"),
])
def test_invalid_configs_raise_one_line_config_error(cfg, message):
    with pytest.raises(ConfigError, match=message) as e:
        platform(cfg)
    assert "\n" not in str(e.value)


def test_precedence_experiment_over_rollout_over_default_and_holdout():
    p = platform({"layers": [{"name": "rank"}], "experiments": [ab("e", buckets=[0, 500], params={"rank.model": "dcnv2"})],
                  "rollouts": [{"name": "r", "params": {"rank.model": "deepfm", "prerank.keep": 400}, "holdout": 0.05}]})
    seen = {"holdout": 0, "b": 0, "control": 0, "baseline": 0}
    for u in USERS[:20_000]:
        a = p.assign(u)
        held = a.record["rollout/r"]["variant"] == "holdout"
        arm = a.record["rank"]["variant"]
        seen["holdout"] += held
        seen[arm] += 1
        expected = {} if held else {"rank.model": "deepfm", "prerank.keep": 400}
        if arm == "b":
            expected["rank.model"] = "dcnv2"
        assert a.params == expected
    assert abs(seen["holdout"] / 20_000 - 0.05) < 4 * np.sqrt(0.05 * 0.95 / 20_000)
    assert abs(seen["b"] / 20_000 - 0.25) < 4 * np.sqrt(0.25 * 0.75 / 20_000)
    assert orjson.loads(orjson.dumps(p.assign("x").record)) == p.assign("x").record


def result(rel):
    return difference_test(1.0, 1e-6, 1.0 + rel, 1e-6)  # tiny variance: p ≈ 0 unless rel = 0


def test_ramp_exposure_is_monotone_and_follows_schedule():
    p = platform({"layers": [{"name": "rank"}], "experiments": [ab("e", buckets=[0, 500], ramp={
        "schedule": [0.01, 0.05, 0.2, 0.5], "guardrails": [{"metric": "watch", "max_degradation": 0.02}]})]})
    ramp = p.ramps["e"]
    previous = None
    for step, share in enumerate([0.01, 0.05, 0.2, 0.5]):
        exposed = p.assign_layer_many("rank", USERS) >= 0
        assert abs(exposed.mean() - share) < 4 * np.sqrt(share * (1 - share) / len(USERS))
        assert p.traffic_shares("e") == pytest.approx({"control": share / 2, "b": share / 2})
        if previous is not None:
            assert np.all(exposed[previous])  # in at 1% → still in at 5%
        previous = exposed
        decision = ramp.advance({"watch": result(-0.01)})  # 1% worse is within the 2% limit
        assert decision.action == ("completed" if step == 3 else "advanced")
    with pytest.raises(ConfigError, match="completed"):
        ramp.advance({"watch": result(0.0)})


def test_ramp_stops_on_failed_guardrail_and_everyone_returns_to_baseline():
    p = platform({"layers": [{"name": "rank"}], "experiments": [ab("e", buckets=[0, 500], ramp={
        "schedule": [0.01, 0.05], "guardrails": [
            {"metric": "watch", "max_degradation": 0.02},
            {"metric": "latency", "direction": "lower_is_better", "alpha": 0.05}]})]})
    ramp = p.ramps["e"]
    with pytest.raises(ConfigError, match="no result for guardrail metric 'latency'"):
        ramp.advance({"watch": result(0.0)})
    # latency 5% LOWER with a tiny variance: significantly better, so the ramp moves on to 5 %
    d = ramp.advance({"watch": result(0.01), "latency": result(-0.05)})
    assert d.action == "advanced" and d.step == 1 and d.traffic == 0.05 and d.failed == ()
    # latency 5% higher with a tiny variance: significantly worse
    d = ramp.advance({"watch": result(0.01), "latency": result(0.05)})
    assert d.action == "stopped" and d.traffic == 0.0 and "latency" in d.failed[0]
    assert "significantly worse" in d.failed[0] and len(d.failed) == 1  # watch +1 % passes
    assert np.all(p.assign_layer_many("rank", USERS[:5000]) == -1)
    assert p.assign("u1").params == {}


def test_guardrail_threshold_direction():
    from funnelrec.experiments.assignment import RampUp
    from funnelrec.experiments.config import GuardrailConfig

    g = GuardrailConfig("ctr", max_degradation=0.02)
    assert RampUp.check(g, result(-0.03)) and not RampUp.check(g, result(+0.03))
    g = GuardrailConfig("latency", direction="lower_is_better", max_degradation=0.02)
    assert RampUp.check(g, result(+0.03)) and not RampUp.check(g, result(-0.03))
    assert isinstance(result(0.1), TestResult)
    # the alpha test is one-sided in effect: only a significant move the BAD way stops the ramp.
    # result(±0.03): z = 0.03 / sqrt(2e-6) ≈ 21.2, so p ≈ 0 — significant either way
    assert sps.norm.sf(0.03 / np.sqrt(2e-6)) * 2 < 1e-50
    assert result(+0.03).p_value < 0.05 and result(-0.03).p_value < 0.05
    g = GuardrailConfig("ctr", alpha=0.05)
    assert RampUp.check(g, result(+0.03)) is None  # significantly better: keep ramping
    assert "significantly worse" in RampUp.check(g, result(-0.03))
    g = GuardrailConfig("latency", direction="lower_is_better", alpha=0.05)
    assert RampUp.check(g, result(-0.03)) is None  # significantly lower latency: better
    assert "significantly worse" in RampUp.check(g, result(+0.03))
    # worse but not significant: z = 0.03 / sqrt(2) ≈ 0.021, p ≈ 0.98 — no reason to stop
    noisy = difference_test(1.0, 1.0, 0.97, 1.0)
    assert noisy.p_value == pytest.approx(2 * sps.norm.sf(0.03 / np.sqrt(2)))
    assert RampUp.check(GuardrailConfig("ctr", alpha=0.05), noisy) is None
    # control value 0: no relative lift exists; the guardrail fails instead of passing silently
    zero = difference_test(0.0, 1e-6, 0.5, 1e-6)
    assert zero.rel_lift != zero.rel_lift  # NaN
    for g in (GuardrailConfig("ctr", max_degradation=0.02), GuardrailConfig("ctr", alpha=0.05)):
        assert "cannot be checked" in RampUp.check(g, zero)


def test_example_yaml_loads_and_params_helpers():
    from funnelrec.pipeline.config import FunnelConfig
    from funnelrec.pipeline.funnel import request_params

    # the example runs against the demo funnel: every parameter is one it applies per request
    demo = request_params(FunnelConfig.load(ROOT / "configs" / "funnel" / "ml100k.yaml"), ("ctr",))
    p = ExperimentPlatform.from_yaml(ROOT / "configs" / "experiments.yaml", demo)
    assert set(p.ramps) == {"genre_cap"}
    depth = {a[1]: a[2:] for a in p.arms("recall") if a[0] == "itemcf_depth"}
    assert depth == {"control": (200, 350), "n_150": (350, 425), "n_400": (425, 500)}  # first fit after [0, 200)
    with pytest.raises(ConfigError, match="unknown parameter 'rank.model'"):  # fit-time: not per request
        ExperimentPlatform(from_dict(ExperimentsConfig, {"layers": [{"name": "rank"}], "experiments": [
            {"name": "x", "layer": "rank", "traffic": 0.5, "variants": [{"name": "c"}, {"name": "t", "params": {"rank.model": "fm"}}]}]}),
            demo)
    nested = {"recall": {"quotas": {"swing": 100, "hot": 50}}, "rank": {"model": "deepfm"}}
    assert flatten_params(nested) == {"recall.quotas.swing": 100, "recall.quotas.hot": 50, "rank.model": "deepfm"}
    out = apply_params(nested, {"recall.quotas.swing": 200})
    assert out["recall"]["quotas"] == {"swing": 200, "hot": 50} and nested["recall"]["quotas"]["swing"] == 100
    with pytest.raises(ConfigError, match="not a section"):
        apply_params(nested, {"rank.model.depth": 3})
