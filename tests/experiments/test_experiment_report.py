"""The report's numbers are the estimators' numbers on hand-aggregated per-user data."""

import base64

import numpy as np
import polars as pl
import pytest
from statsmodels.stats.multitest import multipletests

from funnelrec.core.errors import DataError
from funnelrec.experiments import stats as st
from funnelrec.experiments.report import MetricSpec, ReportConfig, build_report

METRICS = (
    MetricSpec("ctr", kind="ratio", numerator="clicks", denominator="impressions"),
    MetricSpec("watch", covariate="pre_watch"),
    MetricSpec("converted", kind="proportion", column="clicked"),
)


@pytest.fixture(scope="module")
def events():
    rng = np.random.default_rng(0)
    n, days = 600, 4
    users = np.arange(n)
    arm = np.array(["control", "b", "c"])[rng.integers(0, 3, n)]
    pre = rng.gamma(2.0, 2.0, n)
    frames = []
    for d in range(1, days + 1):
        imp = rng.poisson(4, n) + 1
        clicks = rng.binomial(imp, np.where(arm == "b", 0.13, 0.10))
        frames.append(pl.DataFrame({
            "user_id": users, "variant": arm, "day": d, "impressions": imp, "clicks": clicks,
            "clicked": (clicks > 0).astype(np.int64), "watch": pre * 0.4 + rng.normal(0, 1, n), "pre_watch": pre,
        }))
    return pl.concat(frames)


def per_user_arrays(events, arm):
    """Sums (max for 0/1 `clicked`) over each user's days, with numpy only."""
    e = events.filter(pl.col("variant") == arm)
    uid = e["user_id"].to_numpy()
    users = np.unique(uid)
    out = {c: np.bincount(uid, weights=e[c].to_numpy().astype(float))[users] for c in ("clicks", "impressions", "watch")}
    out["clicked"] = (np.bincount(uid, weights=e["clicked"].to_numpy())[users] > 0).astype(float)
    days = e["day"].to_numpy()
    out["pre_watch"] = np.bincount(uid, weights=e["pre_watch"].to_numpy() * (days == 1))[users]
    return out


def test_table_numbers_equal_the_estimators(events):
    rep = build_report(events, ReportConfig(metrics=METRICS))
    a = per_user_arrays(events, "control")
    expected_p = []
    for arm in ("b", "c"):
        b = per_user_arrays(events, arm)
        ctr = st.delta_method_ratio_test(a["clicks"], a["impressions"], b["clicks"], b["impressions"])
        watch = st.cuped_ttest(a["watch"], a["pre_watch"], b["watch"], b["pre_watch"])
        conv = st.two_proportion_ztest(a["clicked"].sum(), a["clicked"].size, b["clicked"].sum(), b["clicked"].size)
        for name, ref in (("ctr", ctr), ("watch", watch), ("converted", conv)):
            row = next(r for r in rep.rows if r.metric == name and r.variant == arm)
            assert row.users == b["clicks"].size
            assert row.value == pytest.approx(ref.treatment)
            assert row.abs_lift == pytest.approx(ref.abs_lift)
            assert row.abs_ci == pytest.approx(ref.abs_ci)
            assert row.rel_ci == pytest.approx(ref.rel_ci)
            assert row.p_value == pytest.approx(ref.p_value)
            expected_p.append((name, arm, ref.p_value))
    q = multipletests([p for *_, p in expected_p], method="fdr_bh")[1]
    for (name, arm, _), qv in zip(expected_p, q):
        assert next(r for r in rep.rows if r.metric == name and r.variant == arm).q_value == pytest.approx(qv)
    assert rep.srm.counts == tuple(int((events.filter(pl.col("day") == 1)["variant"] == v).sum()) for v in ("control", "b", "c"))


def test_control_rows_carry_the_control_arms_own_numbers(events):
    """Each metric's control row: the control arm's estimate, its user count, and no lift or test."""
    rep = build_report(events, ReportConfig(metrics=METRICS))
    ctrl = events.filter(pl.col("variant") == "control")
    n_users = ctrl["user_id"].n_unique()
    clicks, imps = ctrl["clicks"].to_numpy(), ctrl["impressions"].to_numpy()
    # converted: share of control users with a click on some day
    ever = ctrl.group_by("user_id").agg(pl.col("clicked").max())["clicked"].to_numpy()
    # watch (CUPED, θ and E[X] pooled over control and the first treatment arm "b", as the
    # table's control row pairs it): mean(Y_A) − θ(mean(X_A) − mean(X)), θ = cov(X, Y)/var(X)
    both = events.filter(pl.col("variant").is_in(["control", "b"])).group_by("user_id", "variant").agg(
        pl.col("watch").sum(), pl.col("pre_watch").first())
    x, y = both["pre_watch"].to_numpy(), both["watch"].to_numpy()
    is_a = both["variant"].to_numpy() == "control"
    theta = np.cov(x, y)[0, 1] / np.var(x, ddof=1)
    want = {"ctr": clicks.sum() / imps.sum(), "converted": ever.mean(),
            "watch": y[is_a].mean() - theta * (x[is_a].mean() - x.mean())}
    b = events.filter(pl.col("variant") == "b")
    assert b["clicks"].sum() / b["impressions"].sum() - want["ctr"] > 0.02  # planted 0.13 vs 0.10: distinguishable
    for name, value in want.items():
        rows = [r for r in rep.rows if r.metric == name and r.variant == "control"]
        assert len(rows) == 1
        row = rows[0]
        assert row.users == n_users == 188  # users drawn into control by the fixture's seed
        assert row.value == pytest.approx(value, rel=1e-12)
        assert (row.abs_lift, row.abs_ci, row.rel_lift, row.rel_ci) == (None, None, None, None)
        assert (row.p_value, row.q_value, row.always_valid_p) == (None, None, None)
        assert row.srm == "ok"
    assert [r.variant for r in rep.rows] == ["control", "b", "c"] * 3


def _delta_ratio(clicks: np.ndarray, imps: np.ndarray) -> tuple[float, float]:
    """Σclicks/Σimpressions over users and its delta-method variance (first-order Taylor of
    mean(N)/mean(D), sample moments with ddof = 1), written out here term by term."""
    n = clicks.size
    mn, md = clicks.mean(), imps.mean()
    s_nn = ((clicks - mn) ** 2).sum() / (n - 1)
    s_dd = ((imps - md) ** 2).sum() / (n - 1)
    s_nd = ((clicks - mn) * (imps - md)).sum() / (n - 1)
    return mn / md, (s_nn / md**2 - 2 * mn * s_nd / md**3 + mn**2 * s_dd / md**4) / n


def test_daily_always_valid_p_is_msprt_of_cumulative_results(events):
    """Independent reference: per-user cumulative sums from the raw events (numpy bincount per
    day), the delta-method CTR difference and variance by hand, and the normal-mixture mSPRT of
    Johari et al. (2017). With V = n·V_n the per-user variance at look n,
        Λ_n = sqrt(V/(V + nτ²)) · exp(n²τ²θ̂²/(2V(V + nτ²)))
    (= sqrt(V_n/(V_n + τ²)) · exp(τ²θ̂²/(2V_n(V_n + τ²)))), p_n = min(1, 1/max_{k≤n} Λ_k),
    τ = 0.1 × the final control CTR."""
    rep = build_report(events, ReportConfig(metrics=METRICS[:1], msprt_tau=0.1))
    d = rep.daily[("ctr", "b")]
    assert d["day"].to_list() == [1, 2, 3, 4]

    day = events["day"].to_numpy()
    uid = events["user_id"].to_numpy()
    arm = events["variant"].to_numpy()
    clicks = events["clicks"].to_numpy().astype(float)
    imps = events["impressions"].to_numpy().astype(float)
    looks = []
    for upto in (1, 2, 3, 4):
        est = {}
        for a in ("control", "b"):
            rows = (day <= upto) & (arm == a)
            users = np.unique(uid[rows])
            c = np.bincount(uid[rows], weights=clicks[rows], minlength=uid.max() + 1)[users]
            i = np.bincount(uid[rows], weights=imps[rows], minlength=uid.max() + 1)[users]
            est[a] = _delta_ratio(c, i)
        (ra, va), (rb, vb) = est["control"], est["b"]
        n = int(((day <= upto) & (arm == "b")).sum())  # users of arm b seen so far (one row per user-day)
        looks.append((rb - ra, va + vb, n, ra))
    theta = np.array([x[0] for x in looks])
    v_n = np.array([x[1] for x in looks])
    n = np.array([x[2] for x in looks], float)
    tau2 = (0.1 * looks[-1][3]) ** 2
    V = n * v_n
    lam = np.sqrt(V / (V + n * tau2)) * np.exp(n**2 * tau2 * theta**2 / (2 * V * (V + n * tau2)))
    p_ref = np.minimum(1.0, 1.0 / np.maximum.accumulate(lam))

    np.testing.assert_allclose(d["abs_lift"].to_numpy(), theta, rtol=1e-9)
    np.testing.assert_allclose(d["variance"].to_numpy(), v_n, rtol=1e-9)
    np.testing.assert_allclose(d["always_valid_p"].to_numpy(), p_ref, rtol=1e-9)
    # evidence for the planted lift (CTR 0.13 vs 0.10) grows day by day; the always-valid p is
    # the price of looking daily: never below the fixed-horizon p of the same look
    assert p_ref[-1] < 0.5 * p_ref[0]
    assert (d["always_valid_p"].to_numpy() >= d["p_value"].to_numpy()).all()
    row = next(r for r in rep.rows if r.metric == "ctr" and r.variant == "b")
    assert row.always_valid_p == pytest.approx(p_ref[-1], rel=1e-9)
    # the always-valid interval of each look, θ̂_n ± sqrt(V_n(V_n + τ²)/τ² · (2 ln(1/α) + ln((V_n + τ²)/V_n)))
    # with α = 0.05, made a confidence sequence by intersecting it with every earlier look's,
    # and divided by that day's control CTR R_A,n for the relative bounds
    ra_n = np.array([x[3] for x in looks])
    half = np.sqrt(v_n * (v_n + tau2) / tau2 * (2 * np.log(1 / 0.05) + np.log((v_n + tau2) / v_n)))
    lo_n, hi_n = theta - half, theta + half
    run_lo = np.array([max(lo_n[: k + 1]) for k in range(4)])
    run_hi = np.array([min(hi_n[: k + 1]) for k in range(4)])
    assert (run_lo != lo_n).any() or (run_hi != hi_n).any()  # the intersection changes some day's bound
    assert (run_lo < run_hi).all()
    np.testing.assert_allclose(d["rel_lo"].to_numpy(), run_lo / ra_n, rtol=1e-9)
    np.testing.assert_allclose(d["rel_hi"].to_numpy(), run_hi / ra_n, rtol=1e-9)
    np.testing.assert_allclose(d["rel_lift"].to_numpy(), theta / ra_n, rtol=1e-9)  # R_B/R_A − 1


def test_cumulative_day_equals_report_on_data_up_to_that_day(events):
    # users skip days and join late: day d must use exactly the rows with day <= d
    sparse = events.filter(pl.Series(np.random.default_rng(9).random(events.height) < 0.4))
    rep = build_report(sparse, ReportConfig(metrics=METRICS))
    for day in (1, 2, 3):
        upto = build_report(sparse.filter(pl.col("day") <= day).drop("day"), ReportConfig(metrics=METRICS))
        for key, daily in rep.daily.items():
            assert daily["p_value"][day - 1] == pytest.approx(upto.results[key].p_value, rel=1e-9)
            assert daily["abs_lift"][day - 1] == pytest.approx(upto.results[key].abs_lift, rel=1e-9)


def test_text_and_html_outputs(events, tmp_path):
    rep = build_report(events, ReportConfig(metrics=METRICS[:1], title="CTR test"))  # 2 daily plots: fast
    text = rep.to_text()
    assert "CTR test" in text and "always-valid p" in text and "sample ratio" in text
    row = next(r for r in rep.rows if r.metric == "ctr" and r.variant == "b")
    assert f"{row.rel_lift:+.2%}" in text
    path = rep.to_html(tmp_path / "r.html")
    html = path.read_text()
    chunks = html.split('src="data:image/png;base64,')[1:]
    assert len(chunks) == 2  # lift with CIs, cumulative lift by day
    for c in chunks:
        assert base64.b64decode(c.split('"')[0]).startswith(b"\x89PNG")
    assert rep.to_polars().height == len(rep.rows) == 3


def test_srm_mismatch_is_flagged():
    df = pl.DataFrame({"user_id": range(2200), "variant": ["control"] * 1000 + ["b"] * 1200, "x": [1.0, 2.0] * 1100})
    rep = build_report(df, ReportConfig(metrics=(MetricSpec("x"),), expected_shares={"control": 0.5, "b": 0.5}))
    assert rep.srm.statistic == pytest.approx(2 * 100**2 / 1100)  # χ² = 18.2, p ≈ 2e-5
    assert rep.srm.mismatch and rep.rows[1].srm == "MISMATCH" and "MISMATCH" in rep.to_text()
    ok = build_report(df, ReportConfig(metrics=(MetricSpec("x"),), expected_shares={"control": 5, "b": 6}))
    assert not ok.srm.mismatch  # the configured split was 5:6
    # variants named by numbers (as a CSV reads them) are the same report
    coded = df.with_columns(pl.col("variant").replace_strict({"control": 0, "b": 1}))
    same = build_report(coded, ReportConfig(metrics=(MetricSpec("x"),), control="0", expected_shares={"0": 5, "1": 6}))
    assert same.srm == ok.srm and same.results[("x", "1")] == ok.results[("x", "b")]


def test_bad_report_config_is_a_config_error():
    from funnelrec.core.config import from_dict
    from funnelrec.core.errors import ConfigError

    for bad in ({"alpha": 1.5}, {"srm_alpha": 0}, {"msprt_tau": -1}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            from_dict(ReportConfig, {"metrics": [{"name": "x"}], **bad})


def test_bad_input(events):
    cfg = ReportConfig(metrics=(MetricSpec("nope"),))
    with pytest.raises(DataError, match="lacks columns: nope"):
        build_report(events, cfg)
    mixed = events.with_columns(pl.when(pl.col("day") == 2).then(pl.lit("b")).otherwise(pl.col("variant")).alias("variant"))
    with pytest.raises(DataError, match="more than one variant"):
        build_report(mixed, ReportConfig(metrics=METRICS[:1]))
    unassigned = events.with_columns(pl.when(pl.col("user_id") == 5).then(None).otherwise(pl.col("variant")).alias("variant"))
    with pytest.raises(DataError, match="column 'variant' has 4 empty values"):
        build_report(unassigned, ReportConfig(metrics=METRICS[:1]))
    with pytest.raises(DataError, match="no rows"):
        build_report(events.head(0), ReportConfig(metrics=METRICS[:1]))


def test_a_day_too_early_to_test_is_an_uninformative_look():
    # arm b starts on day 2: on day 1 it has no user, so day 1 cannot be tested; the final
    # table still can, and day 1's always-valid p is 1 with an unbounded interval
    rng = np.random.default_rng(3)
    n = 200
    df = pl.DataFrame({"user_id": np.arange(n), "variant": ["control"] * 100 + ["b"] * 100,
                       "day": [1] * 100 + [2] * 100, "x": rng.normal(0, 1, n)})
    rep = build_report(df, ReportConfig(metrics=(MetricSpec("x"),)))
    d = rep.daily[("x", "b")]
    assert d["always_valid_p"][0] == 1.0 and d["variance"][0] == 0.0
    full = st.welch_ttest(df["x"][:100].to_numpy(), df["x"][100:].to_numpy())
    assert d["abs_lift"][1] == pytest.approx(full.abs_lift) and rep.rows[1].p_value == pytest.approx(full.p_value)
