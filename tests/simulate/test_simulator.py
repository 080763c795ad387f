"""Closed-loop simulator: a tiny world, hot-only (control) vs itemCF + hot, through the real
service, experiment assignment and exposure filter."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
import scipy.stats
import xxhash
from typer.testing import CliRunner

from funnelrec.core.errors import ConfigError
from funnelrec.data import load_dataset
from funnelrec.simulate import SimConfig, Simulator, funnel_key, position_bias
from funnelrec.simulate.simulator import _Fatigue

ITEMCF_CHANNELS = [{"name": "itemcf", "n": 100}, {"name": "hot", "n": 50}]


def sim_config(**changes) -> SimConfig:
    base = {
        "funnel": {"recall": {"channels": [{"name": "hot", "n": 150}], "merge": {"total": 150}}, "k": 10},
        "experiments": {
            "layers": [{"name": "recall", "owns": ["recall."]}],
            "experiments": [{"name": "ab", "layer": "recall", "buckets": [0, 1000], "variants": [
                {"name": "control"}, {"name": "itemcf", "params": {"recall.channels": ITEMCF_CHANNELS}}]}],
        },
        "experiment": "ab",
        "days": 3,
        "seed": 3,
        "traffic": {"users_per_day": 250},
    }
    base.update(changes)
    return SimConfig.from_dict(base)


@pytest.fixture(scope="module")
def world():
    return load_dataset("synthetic", n_users=500, n_items=300, n_interactions=10_000, seed=5)


@pytest.fixture(scope="module")
def result(world):
    return Simulator(sim_config(), dataset=world).run()


def expected_variant(user_id: str) -> str:
    """Hand-computed assignment: layer salt "recall", 1,000 buckets, control owns [0, 500)."""
    return "control" if xxhash.xxh64_intdigest(f"recall:{user_id}".encode()) % 1000 < 500 else "itemcf"


def test_every_user_is_served_by_their_variants_funnel(result):
    imp = result.impressions
    assert imp.height == 3 * 250 * 10
    users = imp.select("user_id", "variant", "funnel").unique()
    assert users["variant"].to_list() == [expected_variant(u) for u in users["user_id"].to_list()]
    want = {"control": funnel_key({}), "itemcf": funnel_key({"recall.channels": ITEMCF_CHANNELS})}
    assert users["funnel"].to_list() == [want[v] for v in users["variant"].to_list()]
    assert result.funnels[want["itemcf"]] == {"recall.channels": ITEMCF_CHANNELS}
    # the service logged each request's assignment with its feedback: the same variant
    ev = result.events.unique("request_id")
    logged = [json.loads(e)["recall"]["variant"] for e in ev["experiments"].to_list()]
    assert logged == [expected_variant(u) for u in ev["user_id"].to_list()]


def test_exposure_filter_never_shows_an_item_twice_within_the_window(result):
    imp = result.impressions
    assert imp.select("user_id", "item_idx").is_unique().all()
    # users really came back (otherwise the check above is vacuous)
    assert imp.select("user_id", "day").unique().group_by("user_id").len()["len"].max() >= 2


def test_clicks_only_on_shown_items_and_labels_consistent(result):
    imp, ev = result.impressions, result.events
    assert ((imp["like"] <= imp["click"]) & ((imp["watch_time"] > 0) == (imp["click"] == 1))).all()
    shown = ev.filter(pl.col("type") == "impression").select("request_id", "item_id")
    clicks = ev.filter(pl.col("type") == "click").select("request_id", "item_id")
    assert clicks.height == int(imp["click"].sum()) > 0
    assert clicks.join(shown, on=["request_id", "item_id"], how="anti").height == 0
    assert ev.filter(pl.col("type") == "impression").height == imp.height


def hand_click_probability(world, imp: pl.DataFrame, beh) -> np.ndarray:
    """P(click) of every impression from the world's exposed ground truth, written out from the
    formulas (data/synthetic.py and simulate/config.py docstrings), not the simulator's code:

        σ(b_c + w_s·⟨u, v⟩ + w_p·ρ_i + w_f·exp(−max(0, t − publish_i)/τ)) · (1 + pos)^(−e)
            · item_fatigue^n_ui · author_fatigue^a

    ρ_i = 1 − (rank_i − 1)/N with rank 1 the most popular item; n_ui the user's earlier
    impressions of the item; a = Σ over the user's earlier impressions of the same author of
    0.5^(Δt / half-life). "Earlier" = an earlier request (a request's own items do not count)."""
    c = world.config
    u = imp["user_idx"].to_numpy()
    i = imp["item_idx"].to_numpy()
    t = imp["ts"].to_numpy().astype(float)
    s = np.einsum("nd,nd->n", world.user_vectors[u].astype(np.float64), world.item_vectors[i].astype(np.float64))
    rank = scipy.stats.rankdata(-world.popularity, method="ordinal")  # 1 = most popular
    rho = 1.0 - (rank[i] - 1) / len(rank)
    fresh = np.exp(-np.maximum(0.0, t - world.publish_time[i]) / (c.freshness_days * 86400))
    logit = c.click_bias + c.affinity_weight * s + c.popularity_weight * rho + c.freshness_weight * fresh
    p = 1.0 / (1.0 + np.exp(-logit)) * (1.0 + imp["position"].to_numpy()) ** (-c.position_exponent)
    author = world.item_author[i]
    half_life = beh.fatigue_half_life_days * 86400
    n_item = np.zeros(len(u))
    n_author = np.zeros(len(u))
    # impressions are in serving order; one request = one (user, ts, request) triple
    for rows in imp.with_row_index("_r").group_by("user_idx", maintain_order=True).agg("_r")["_r"].to_list():
        rows = np.asarray(rows)
        for k, r in enumerate(rows):
            earlier = rows[:k][t[rows[:k]] < t[r]]
            n_item[r] = (i[earlier] == i[r]).sum()
            same = earlier[author[earlier] == author[r]]
            n_author[r] = (0.5 ** ((t[r] - t[same]) / half_life)).sum()
    return p * beh.item_fatigue**n_item * beh.author_fatigue**n_author, n_author


def test_realized_clicks_match_the_click_model(result, world):
    """The logged P(click) equals the hand computation from the world's truth, and the realized
    clicks follow it: in total and in each fifth of impressions sorted by P, within 4 sd of the
    Poisson-binomial count."""
    imp = result.impressions
    truth = world.extras["world"]
    p, n_author = hand_click_probability(truth, imp, sim_config().behaviour)
    np.testing.assert_allclose(imp["p_click"].to_numpy(), p, rtol=1e-5)
    click = imp["click"].to_numpy()
    # position bias and author fatigue both act in this run (else the hand formula is untested there)
    assert imp["position"].max() == 9 and (n_author > 0).mean() > 0.1
    for part in [np.arange(len(p)), *np.array_split(np.argsort(p), 5)]:
        q = p[part]
        sd = np.sqrt((q * (1 - q)).sum())
        assert abs(click[part].sum() - q.sum()) < 4 * sd, (click[part].sum(), q.sum(), sd)
    # scipy's binomial test on the top slot at the mean hand P (conservative: clicks with unequal
    # P vary less than a binomial count at their mean)
    first = imp["position"].to_numpy() == 0
    rate = p[first].mean()
    assert scipy.stats.binomtest(int(click[first].sum()), int(first.sum()), rate).pvalue > 1e-4


def test_stronger_funnel_wins(result):
    by = result.impressions.group_by("variant").agg(pl.col("p_click").mean(), pl.col("click").mean())
    d = {r["variant"]: r for r in by.iter_rows(named=True)}
    assert d["itemcf"]["p_click"] > 1.2 * d["control"]["p_click"]
    assert d["itemcf"]["click"] > d["control"]["click"]


def test_report_rows_and_html(result, tmp_path):
    rep = result.report
    assert [(r.metric, r.variant) for r in rep.rows] == [
        (m, v) for m in ("ctr", "clicks_per_user", "watch_time_per_user", "likes_per_user", "clicking_users")
        for v in ("control", "itemcf")]
    n_users = result.user_days["user_id"].n_unique()
    assert sum(rep.srm.counts) == n_users and not rep.srm.mismatch
    ctr = rep.results[("ctr", "itemcf")]
    ud = result.user_days
    for variant, value in (("control", ctr.control), ("itemcf", ctr.treatment)):
        rows = ud.filter(pl.col("variant") == variant)
        assert value == pytest.approx(rows["clicks"].sum() / rows["impressions"].sum())
    paths = result.write(tmp_path)
    assert "<img" in paths["report_html"].read_text()
    assert pl.read_parquet(paths["user_days"]).equals(ud)


def test_deterministic_with_seed_and_refit_swaps_models(world):
    cfg = sim_config(days=2, refit_every=1, traffic={"users_per_day": 80})
    a = Simulator(cfg, dataset=world).run()
    b = Simulator(cfg, dataset=world).run()
    assert a.impressions.equals(b.impressions)
    assert all("day1" in v for v in a.model_versions.values())
    c = Simulator(cfg.replace(seed=4), dataset=world).run(days=1)  # one day is enough to differ
    assert not c.impressions.equals(a.impressions.filter(pl.col("day") == 0))


def test_position_bias_and_fatigue_hand_computed():
    assert position_bias(np.array([0, 1, 3]), "world", 0.6) == pytest.approx([1.0, 2 ** -0.6, 4 ** -0.6])
    assert position_bias(np.array([0, 2]), "log2", 0.0) == pytest.approx([1.0, 0.5])
    f = _Fatigue(n_items=5, n_authors=3, half_life_s=100.0)
    f.add(7, np.array([1, 2]), np.array([0, 0]), t=0)
    n_item, n_author = f.counts(7, np.array([1, 3]), np.array([0, 2]), t=100)
    assert n_item.tolist() == [1.0, 0.0]
    assert n_author.tolist() == [1.0, 0.0]  # two impressions of author 0, one half-life ago


def test_bad_configs_raise_one_line_errors(world):
    bad = sim_config()
    exps = json.loads(json.dumps(bad.experiments))
    exps["experiments"][0]["variants"][1]["params"] = {"recall.chanels": []}
    with pytest.raises(ConfigError, match="unknown parameter 'recall.chanels'"):
        Simulator(sim_config(experiments=exps), dataset=world).run()
    with pytest.raises(ConfigError, match="users_per_day"):
        Simulator(sim_config(traffic={"users_per_day": 501}), dataset=world).run()
    with pytest.raises(ConfigError, match="unknown experiment 'nope'"):
        Simulator(sim_config(experiment="nope"), dataset=world).run()
    with pytest.raises(ConfigError, match=r"alpha must be in \(0, 1\), got 5.0"):
        sim_config(alpha=5)


def test_cli_report_reads_the_written_table(result, tmp_path):
    import typer

    from funnelrec.cli_experiments import register

    app = typer.Typer()
    app.command("noop")(lambda: None)
    register(app)
    paths = result.write(tmp_path, html=False)
    cfg = tmp_path / "report.yaml"
    cfg.write_text("control: control\nwhere: {experiment: ab}\nmetrics:\n"
                   "  - {name: ctr, kind: ratio, numerator: clicks, denominator: impressions}\n")
    out = CliRunner().invoke(app, ["experiments", "report", "--events", str(paths["user_days"]),
                                   "--config", str(cfg), "--html", str(tmp_path / "r.html")])
    assert out.exit_code == 0, out.output
    p = result.report.results[("ctr", "itemcf")].p_value
    assert f"{p:.4f}" in out.output and (tmp_path / "r.html").exists()
    missing = CliRunner().invoke(app, ["experiments", "report", "--events", str(tmp_path / "no.parquet"),
                                       "--config", str(cfg)])
    assert isinstance(missing.exception, Exception) and "not found" in str(missing.exception)


def test_user_days_are_the_impressions_totals_and_the_pre_period_covariates(result, world):
    """Every (user, day) row re-summed by hand from the impressions; the CUPED covariates are the
    user's clicks and watch time over the world log's last `pre_days` (config docstring); and the
    per-user metrics of each arm (sum over days, then the arm's mean) with Welch's p from scipy."""
    imp, ud = result.impressions, result.user_days
    want: dict[tuple[str, int], list[float]] = {}
    for r in imp.iter_rows(named=True):
        acc = want.setdefault((r["user_id"], r["day"]), [0.0, 0.0, 0.0, 0.0, 0.0])
        for k, v in enumerate((1, r["click"], r["like"], r["watch_time"], r["p_click"])):
            acc[k] += v
    assert ud.height == len(want)
    end = world.extras["world"].config.end_time
    log = world.interactions.filter((pl.col("click") == 1) & (pl.col("timestamp") >= end - 14 * 86400))
    pre = {u: (float(n), float(w)) for u, n, w in log.group_by("user_idx").agg(
        pl.len(), pl.col("watch_time").sum()).iter_rows()}
    assert sum(n for n, _ in pre.values()) > 0
    for r in ud.iter_rows(named=True):
        imps, clicks, likes, watch, expected = want[(r["user_id"], r["day"])]
        assert (r["impressions"], r["clicks"], r["likes"], r["clicked"]) == (imps, clicks, likes, int(clicks > 0))
        assert r["watch_time"] == pytest.approx(watch) and r["expected_clicks"] == pytest.approx(expected)
        n, w = pre.get(r["user_idx"], (0.0, 0.0))
        assert r["pre_clicks"] == n and r["pre_watch_time"] == pytest.approx(w)
    # the arms: likes differ from clicks here, so a metric read off the wrong column shows
    assert (ud["likes"] != ud["clicks"]).any()
    per_user = {}
    for (u, _), (_, clicks, likes, _, _) in want.items():
        acc = per_user.setdefault(u, [0.0, 0.0])
        acc[0] += likes
        acc[1] = max(acc[1], float(clicks > 0))
    arm = {u: expected_variant(u) for u in per_user}
    likes = {v: np.array([per_user[u][0] for u in per_user if arm[u] == v]) for v in ("control", "itemcf")}
    clicked = {v: np.array([per_user[u][1] for u in per_user if arm[u] == v]) for v in ("control", "itemcf")}
    lk, cu = result.report.results[("likes_per_user", "itemcf")], result.report.results[("clicking_users", "itemcf")]
    assert (lk.control, lk.treatment) == (pytest.approx(likes["control"].mean()), pytest.approx(likes["itemcf"].mean()))
    assert (cu.control, cu.treatment) == (pytest.approx(clicked["control"].mean()), pytest.approx(clicked["itemcf"].mean()))
    welch = scipy.stats.ttest_ind(likes["itemcf"], likes["control"], equal_var=False).pvalue
    assert lk.p_value == pytest.approx(welch, rel=1e-2, abs=1e-6)
