"""Estimators against hand-computed cases, closed forms, scipy/statsmodels where our code does
not call them, and seeded simulations (a wrong formula changes a false-positive rate)."""

import math

import numpy as np
import pytest
from scipy import stats as sps
from statsmodels.stats.proportion import confint_proportions_2indep

from funnelrec.core.errors import DataError
from funnelrec.experiments import stats as st


def _normal_two_sided_p(z):
    return math.erfc(abs(z) / math.sqrt(2))


@pytest.mark.parametrize("xa,na,xb,nb", [(100, 1000, 130, 1000), (40, 500, 31, 700), (5, 60, 9, 45)])
def test_two_proportion_ztest_hand_computed(xa, na, xb, nb):
    r = st.two_proportion_ztest(xa, na, xb, nb)
    pooled = (xa + xb) / (na + nb)
    z = (xb / nb - xa / na) / math.sqrt(pooled * (1 - pooled) * (1 / na + 1 / nb))
    assert r.statistic == pytest.approx(z, rel=1e-10)
    assert r.p_value == pytest.approx(_normal_two_sided_p(z), rel=1e-10)
    # the CI is ours (unpooled Wald); statsmodels computes it independently
    lo, hi = confint_proportions_2indep(xb, nb, xa, na, method="wald", compare="diff")
    assert r.abs_ci == pytest.approx((lo, hi), rel=1e-9)
    assert r.abs_lift == pytest.approx(xb / nb - xa / na)


def test_two_proportion_ztest_first_case_by_hand():
    # p̄ = 230/2000 = 0.115, se = sqrt(0.115·0.885·2/1000) = 0.0142671, z = 0.03/se = 2.10274
    r = st.two_proportion_ztest(100, 1000, 130, 1000)
    assert r.statistic == pytest.approx(2.10274, abs=1e-5)
    assert r.p_value == pytest.approx(0.035485, abs=1e-5)


def test_ztest_false_positive_rate_under_h0():
    rng = np.random.default_rng(11)
    n, rate = 3000, 0.08
    xa, xb = rng.binomial(n, rate, 2000), rng.binomial(n, rate, 2000)
    p = np.array([st.two_proportion_ztest(a, n, b, n).p_value for a, b in zip(xa, xb)])
    assert 0.03 <= (p < 0.05).mean() <= 0.07
    assert 0.07 <= (p < 0.10).mean() <= 0.13  # and the p-value is uniform further out, not just at 5 %


def test_ztest_with_no_success_in_either_arm_tests_nothing():
    r = st.two_proportion_ztest(0, 100, 0, 120)
    assert (r.statistic, r.p_value, r.abs_lift) == (0.0, 1.0, 0.0)


def test_welch_matches_scipy():
    rng = np.random.default_rng(1)
    a, b = rng.normal(0, 1, 40), rng.normal(0.4, 3, 75)
    r = st.welch_ttest(a, b)
    ref = sps.ttest_ind(b, a, equal_var=False)
    assert r.statistic == pytest.approx(ref.statistic, rel=1e-10)
    assert r.p_value == pytest.approx(ref.pvalue, rel=1e-10)
    assert r.df == pytest.approx(ref.df, rel=1e-10)
    ci = ref.confidence_interval(0.95)
    assert r.abs_ci == pytest.approx((ci.low, ci.high), rel=1e-9)


def test_welch_false_positive_rate_under_h0_with_unequal_variances():
    # pooled-variance t would be off here (small arm with the large sd); Welch holds its level
    rng = np.random.default_rng(12)
    p = np.array([st.welch_ttest(rng.normal(0, 1, 200), rng.normal(0, 4, 20)).p_value for _ in range(2000)])
    assert 0.03 <= (p < 0.05).mean() <= 0.07


def test_welch_on_constant_arms():
    same = st.welch_ttest([2.0, 2.0, 2.0], [2.0, 2.0])
    assert (same.statistic, same.p_value, same.df) == (0.0, 1.0, 3.0)
    differ = st.welch_ttest([0.0, 0.0], [1.0, 1.0])
    assert differ.statistic == math.inf and differ.p_value == 0.0


def test_relative_ci_is_delta_method():
    r = st.difference_test(10.0, 0.25, 11.0, 0.36)
    se = math.sqrt(0.36 / 100 + 121 * 0.25 / 10**4)
    z = sps.norm.ppf(0.975)
    assert r.rel_lift == pytest.approx(0.1)
    assert r.rel_ci == pytest.approx((0.1 - z * se, 0.1 + z * se))


def test_delta_method_closed_forms():
    # constant denominators: Var(R) = s²_N / (n · D²)
    r, v = st.ratio_mean_and_variance([0.0, 2.0], [1.0, 1.0])
    assert (r, v) == pytest.approx((1.0, 1.0))
    # every user has the same ratio: the ratio is known exactly
    r, v = st.ratio_mean_and_variance([1.0, 3.0, 5.0], [2.0, 6.0, 10.0])
    assert r == pytest.approx(0.5) and v == pytest.approx(0.0, abs=1e-15)
    # a 3-user hand case: N = (1, 2, 6), D = (2, 3, 4): N̄ = 3, D̄ = 3, s²N = 7, s²D = 1, sND = 2.5
    _, v = st.ratio_mean_and_variance([1.0, 2.0, 6.0], [2.0, 3.0, 4.0])
    assert v == pytest.approx((7 / 9 - 2 * 3 * 2.5 / 27 + 9 * 1 / 81) / 3)


def test_delta_method_variance_matches_simulation():
    rng = np.random.default_rng(2)
    ratios, variances = [], []
    for _ in range(400):
        imp = rng.poisson(8, 300) + 1
        clicks = rng.binomial(imp, rng.beta(2, 18, 300))  # per-user CTR varies: clustered clicks
        r, v = st.ratio_mean_and_variance(clicks, imp)
        ratios.append(r)
        variances.append(v)
    # the naive binomial variance (impressions as units) would be too small by the clustering factor
    assert np.var(ratios, ddof=1) == pytest.approx(np.mean(variances), rel=0.2)


def test_cuped_theta_is_ols_slope_and_reduces_variance():
    rng = np.random.default_rng(3)
    x = rng.normal(10, 2, 20_000)
    y = 0.8 * (x - 10) / 2 + 0.6 * rng.normal(size=x.size)  # ρ = 0.8
    theta = st.cuped_theta(y, x)
    assert theta == pytest.approx(np.polyfit(x, y, 1)[0], rel=1e-9)
    adj = st.cuped_adjust(y, x, theta, x.mean())
    rho = np.corrcoef(x, y)[0, 1]
    assert adj.var() / y.var() == pytest.approx(1 - rho**2, rel=1e-6)
    assert adj.mean() == pytest.approx(y.mean())
    r_raw = st.welch_ttest(y[:10_000], y[10_000:])
    r_cup = st.cuped_ttest(y[:10_000], x[:10_000], y[10_000:], x[10_000:])
    assert r_cup.se < 0.65 * r_raw.se  # sqrt(1 - 0.64) = 0.6


def test_srm_matches_scipy_chisquare():
    counts, shares = [5050, 4800, 150], [0.5, 0.48, 0.02]
    r = st.srm_check(counts, shares)
    ref = sps.chisquare(counts, f_exp=np.array(shares) * sum(counts))
    assert r.statistic == pytest.approx(ref.statistic)
    assert r.p_value == pytest.approx(ref.pvalue)
    assert not r.mismatch
    assert st.srm_check([5200, 4800], [1, 1]).mismatch  # p ≈ 6e-5


def test_benjamini_hochberg_hand_computed():
    # sorted p: 0.005, 0.01, 0.03, 0.04 (m = 4) → m/j·p = 0.02, 0.02, 0.04, 0.04; running min from
    # the top leaves them; 0.6 (rank 5 of m = 5) → 0.6 and every earlier q ≤ its successor
    p = [0.01, 0.04, 0.6, 0.03, 0.005]
    rej, q = st.benjamini_hochberg(p, 0.045)
    np.testing.assert_allclose(q, [0.025, 0.05, 0.6, 0.05, 0.025], rtol=1e-12)
    np.testing.assert_array_equal(rej, [True, False, False, False, True])
    # the step-up: a large p-value cannot raise the q of a smaller one above its own
    _, q2 = st.benjamini_hochberg([0.04, 0.041], 0.05)
    np.testing.assert_allclose(q2, [0.041, 0.041])


def test_benjamini_hochberg_controls_fdr_by_simulation():
    # 2,000 families of 20 tests, 15 null (uniform p) and 5 with a real effect: the share of false
    # discoveries among discoveries averages ≤ α·m0/m = 0.0375; no correction gives far more
    rng = np.random.default_rng(13)
    fdp, fdp_raw = [], []
    for _ in range(2000):
        z = np.r_[rng.normal(0, 1, 15), rng.normal(3, 1, 5)]
        p = 2 * sps.norm.sf(np.abs(z))
        rej, _ = st.benjamini_hochberg(p, 0.05)
        fdp.append(rej[:15].sum() / max(rej.sum(), 1))
        raw = p < 0.05
        fdp_raw.append(raw[:15].sum() / max(raw.sum(), 1))
    assert 0.025 <= np.mean(fdp) <= 0.05
    assert np.mean(fdp_raw) > 0.09


def test_power_closed_forms():
    z = sps.norm.ppf(0.975)

    def power(e, na, nb):
        s = abs(e) * math.sqrt(1 / (1 / na + 1 / nb))
        return sps.norm.sf(z - s) + sps.norm.cdf(-z - s)

    h = 2 * math.asin(math.sqrt(0.12)) - 2 * math.asin(math.sqrt(0.10))
    assert st.cohens_h(0.10, 0.12) == pytest.approx(h, rel=1e-12)
    assert st.power_two_proportions(0.10, 0.12, 2000, 3000) == pytest.approx(power(h, 2000, 3000), rel=1e-9)
    assert st.power_means(0.2, 2.0, 500) == pytest.approx(power(0.1, 500, 500), rel=1e-9)
    # the solved n reaches the power, and is close to (z_{α/2} + z_β)²·(1 + 1/ratio)/h² (one tail)
    n = st.sample_size_two_proportions(0.10, 0.12, power=0.9)
    assert power(h, n, n) == pytest.approx(0.9, abs=1e-6)
    assert n == pytest.approx((z + sps.norm.ppf(0.9)) ** 2 * 2 / h**2, rel=1e-3)
    n = st.sample_size_means(0.1, 1.0, ratio=2)
    assert power(0.1, n, 2 * n) == pytest.approx(0.8, abs=1e-6)
    # the MDE is the effect whose power is the target
    mde = st.mde_two_proportions(0.10, 5000)
    assert st.power_two_proportions(0.10, 0.10 + mde, 5000) == pytest.approx(0.8, abs=1e-9)
    d = st.mde_means(3.0, 1000, 1000)
    assert d == pytest.approx((z + sps.norm.ppf(0.8)) * 3.0 * math.sqrt(2 / 1000), rel=1e-3)
    with pytest.raises(DataError, match="no sample size reaches power"):
        st.sample_size_means(1e-12, 1.0)


def test_msprt_hand_value_and_monotone():
    d, v, tau2 = 0.3, 0.01, 0.04
    lam = math.sqrt(v / (v + tau2)) * math.exp(tau2 * d**2 / (2 * v * (v + tau2)))
    p = st.msprt_pvalues([0.0, d, 0.0], [v, v, v], tau2)
    assert p[0] == pytest.approx(1.0)
    assert p[1] == pytest.approx(1 / lam)
    assert p[2] == p[1]  # always-valid p never goes back up
    lo, hi = st.msprt_confidence_interval(d, v, tau2, alpha=p[1])
    assert lo == pytest.approx(0.0, abs=1e-9)  # the CI at level p just touches 0


def test_aa_fixed_horizon_and_msprt_peeking_false_positive_rates():
    rng = np.random.default_rng(5)
    sims, days, users_per_day, rate = 600, 14, 200, 0.1
    xa = rng.binomial(users_per_day, rate, (sims, days)).cumsum(1)
    xb = rng.binomial(users_per_day, rate, (sims, days)).cumsum(1)
    n = users_per_day * np.arange(1, days + 1)
    pa, pb = xa / n, xb / n
    var = pa * (1 - pa) / n + pb * (1 - pb) / n
    p_seq = st.msprt_pvalues(pb - pa, var, tau2=0.02**2)
    fixed = np.array([st.two_proportion_ztest(xa[s, -1], n[-1], xb[s, -1], n[-1]).p_value for s in range(sims)])
    naive_peek = np.array([min(st.two_proportion_ztest(xa[s, t], n[t], xb[s, t], n[t]).p_value for t in range(days)) for s in range(sims)])
    tol = 3 * math.sqrt(0.05 * 0.95 / sims)
    assert abs((fixed < 0.05).mean() - 0.05) < tol
    assert (p_seq[:, -1] < 0.05).mean() < 0.05 + tol
    assert (naive_peek < 0.05).mean() > 0.05 + tol  # peeking a fixed test inflates errors


def test_power_calculator_matches_simulated_detection_rate():
    rng = np.random.default_rng(6)
    sims, n, pa, pb = 500, 4000, 0.10, 0.12
    xa, xb = rng.binomial(n, pa, sims), rng.binomial(n, pb, sims)
    detect = np.mean([st.two_proportion_ztest(a, n, b, n).p_value < 0.05 for a, b in zip(xa, xb)])
    assert detect == pytest.approx(st.power_two_proportions(pa, pb, n), abs=0.07)


def test_bad_input_raises_data_error():
    with pytest.raises(DataError, match="successes"):
        st.two_proportion_ztest(5, 0, 1, 10)
    with pytest.raises(DataError, match="at least 2"):
        st.welch_ttest([1.0], [1.0, 2.0])
    with pytest.raises(DataError, match="tau2"):
        st.msprt_pvalues([0.1], [0.1], 0.0)
    # the power calculator names the bad argument instead of a math-domain / zero-division trace
    with pytest.raises(DataError, match="p_treatment must be a proportion"):
        st.power_two_proportions(0.1, 1.2, 1000)
    with pytest.raises(DataError, match="p_control must be a proportion"):
        st.mde_two_proportions(1.5, 1000)
    with pytest.raises(DataError, match="ratio"):
        st.sample_size_two_proportions(0.1, 0.12, ratio=0)
    with pytest.raises(DataError, match="arm sizes must be > 0"):
        st.power_means(0.1, 1.0, 0)
    with pytest.raises(DataError, match="arm sizes must be > 0"):
        st.mde_means(1.0, -5)


def test_statistics_registry_holds_what_reports_pick():
    from funnelrec.core.errors import UnknownComponentError
    from funnelrec.core.registry import STATISTICS

    assert {"z", "welch", "delta", "cuped", "msprt", "bh"} <= set(STATISTICS.names())
    a, b = np.array([0.0, 1.0, 1.0, 0.0]), np.array([1.0, 1.0, 1.0, 0.0])
    assert STATISTICS.get("z")((a,), (b,), 0.05) == st.two_proportion_ztest(2, 4, 3, 4)
    with pytest.raises(DataError, match="0/1"):
        STATISTICS.get("z")((a + 0.5,), (b,), 0.05)
    with pytest.raises(UnknownComponentError, match="known: .*welch"):
        STATISTICS.get("t-test")


def test_report_picks_a_metrics_test_by_name():
    import polars as pl

    from funnelrec.experiments.report import MetricSpec, ReportConfig, build_report

    rng = np.random.default_rng(14)
    conv = rng.integers(0, 2, 400).astype(float)
    df = pl.DataFrame({"user_id": np.arange(400), "variant": np.where(np.arange(400) < 200, "control", "b"),
                       "clicked": conv})
    rep = build_report(df, ReportConfig(metrics=(MetricSpec("z", kind="proportion", column="clicked"),
                                                 MetricSpec("w", kind="proportion", column="clicked", test="welch"))))
    assert rep.results[("z", "b")] == st.two_proportion_ztest(conv[:200].sum(), 200, conv[200:].sum(), 200)
    welch = st.welch_ttest(conv[:200], conv[200:])
    assert rep.results[("w", "b")].df == pytest.approx(welch.df, rel=1e-12)  # Student t: a df, unlike z
    assert rep.results[("w", "b")].p_value == pytest.approx(welch.p_value, rel=1e-12)
    with pytest.raises(ValueError, match="'delta' takes numerator, denominator per user"):
        MetricSpec("x", test="delta")
    with pytest.raises(ValueError, match="'msprt' is a sequential statistic"):
        MetricSpec("x", test="msprt")
    with pytest.raises(ValueError, match="multiple_testing: 'msprt' is not"):
        ReportConfig(metrics=(MetricSpec("x"),), multiple_testing="msprt")
