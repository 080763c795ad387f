"""A/B statistics. The textbook tests come from statsmodels (two-proportion z, Welch,
Benjamini–Hochberg, normal power); what it lacks is written here: the delta method for ratio
metrics, CUPED, the sample-ratio check and mSPRT always-valid p-values.

Every two-arm test compares a treatment arm (B) with a control arm (A) and returns a
`TestResult` whose lift is B − A (absolute) and B / A − 1 (relative), each with a confidence
interval, so a positive lift always means "treatment is higher".

    >>> r = two_proportion_ztest(100, 1000, 130, 1000)
    >>> round(r.abs_lift, 3), round(r.p_value, 4)
    (0.03, 0.0355)

Estimators
- two-proportion z-test (pooled variance under H0, unpooled Wald CI; statsmodels);
- Welch t-test on per-user values (Welch–Satterthwaite degrees of freedom; statsmodels);
- delta method for ratio metrics R = ΣN / ΣD aggregated per user;
- CUPED: Y' = Y − θ (X − X̄) with θ = cov(X, Y) / var(X) on a pre-period covariate X;
- sample-ratio mismatch: χ² goodness of fit of arm sizes against configured shares;
- mSPRT always-valid p-values (normal mixture, mixing variance τ²; Johari, Pekelis & Walsh 2017);
- Benjamini–Hochberg false-discovery-rate control (statsmodels);
- power, sample size and minimum detectable effect for proportions (Cohen's h) and means
  (statsmodels' NormalIndPower).

`STATISTICS` names the tests an experiment report picks: "z", "welch", "delta", "cuped"
(two-sample), "msprt" (sequential) and "bh" (multiple testing); see `Statistic`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from scipy import optimize, special, stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import NormalIndPower
from statsmodels.stats.proportion import proportion_effectsize, proportions_ztest
from statsmodels.stats.weightstats import CompareMeans, DescrStatsW

from funnelrec.core.errors import DataError
from funnelrec.core.registry import STATISTICS

__all__ = [
    "STATISTICS",
    "Statistic",
    "TestResult",
    "SRMResult",
    "difference_test",
    "two_proportion_ztest",
    "welch_ttest",
    "ratio_mean_and_variance",
    "delta_method_ratio_test",
    "cuped_theta",
    "cuped_adjust",
    "cuped_ttest",
    "srm_check",
    "msprt_pvalues",
    "msprt_confidence_interval",
    "benjamini_hochberg",
    "cohens_h",
    "power_two_proportions",
    "sample_size_two_proportions",
    "mde_two_proportions",
    "power_means",
    "sample_size_means",
    "mde_means",
]


@dataclass(frozen=True)
class TestResult:
    """Treatment (B) versus control (A).

    `abs_lift` = B − A with `abs_ci`; `rel_lift` = B / A − 1 with `rel_ci` (delta method,
    independent arms: Var(B/A) ≈ Var(B)/A² + B²·Var(A)/A⁴); `se` is the standard error the
    p-value uses (pooled under H0 for the proportion test).
    """

    __test__ = False  # not a pytest class despite the name

    control: float
    treatment: float
    abs_lift: float
    abs_ci: tuple[float, float]
    rel_lift: float
    rel_ci: tuple[float, float]
    statistic: float
    p_value: float
    se: float
    diff_variance: float  # Var(B − A) = Var(A) + Var(B) of the estimates (unpooled)
    df: float | None = None  # degrees of freedom when the reference distribution is Student t


@dataclass(frozen=True)
class SRMResult:
    counts: tuple[int, ...]
    expected: tuple[float, ...]
    statistic: float
    p_value: float
    mismatch: bool  # True when p < alpha: the split is not what was configured


def _critical(alpha: float, df: float | None) -> float:
    if not 0.0 < alpha < 1.0:
        raise DataError(f"alpha must be in (0, 1), got {alpha}")
    # scipy.special instead of scipy.stats: same functions, ~50x less call overhead in simulations
    return float(special.ndtri(1 - alpha / 2) if df is None else special.stdtrit(df, 1 - alpha / 2))


def _relative(ma: float, va: float, mb: float, vb: float, crit: float) -> tuple[float, tuple[float, float]]:
    if ma == 0.0:
        return math.nan, (math.nan, math.nan)
    rel = mb / ma - 1.0
    se = math.sqrt(vb / ma**2 + mb**2 * va / ma**4)
    return rel, (rel - crit * se, rel + crit * se)


def _result(control: float, var_control: float, treatment: float, var_treatment: float, *, statistic: float,
            p_value: float, se: float, abs_ci: tuple[float, float], crit: float, df: float | None) -> TestResult:
    rel, rel_ci = _relative(control, var_control, treatment, var_treatment, crit)
    return TestResult(
        control=float(control),
        treatment=float(treatment),
        abs_lift=float(treatment - control),
        abs_ci=(float(abs_ci[0]), float(abs_ci[1])),
        rel_lift=rel,
        rel_ci=rel_ci,
        statistic=float(statistic),
        p_value=float(p_value),
        se=float(se),
        diff_variance=float(var_control + var_treatment),
        df=None if df is None else float(df),
    )


def difference_test(
    control: float,
    var_control: float,
    treatment: float,
    var_treatment: float,
    *,
    df: float | None = None,
    null_se: float | None = None,
    alpha: float = 0.05,
) -> TestResult:
    """Test B − A = 0 for two independent estimates with variances `var_*` (of the estimates).

    statistic = (B − A) / se with se = sqrt(var_A + var_B) (or `null_se`); two-sided p from
    N(0, 1), or from Student t with `df` degrees of freedom when given. se = 0 (no variation)
    gives statistic 0 and p = 1 when B = A, ±inf and p = 0 otherwise.
    """
    diff = treatment - control
    se_alt = math.sqrt(var_control + var_treatment)
    se = se_alt if null_se is None else null_se
    stat = diff / se if se > 0 else (0.0 if diff == 0 else math.copysign(math.inf, diff))
    p = float(2 * (special.ndtr(-abs(stat)) if df is None else special.stdtr(df, -abs(stat))))
    crit = _critical(alpha, df)
    return _result(control, var_control, treatment, var_treatment, statistic=stat, p_value=p, se=se,
                   abs_ci=(diff - crit * se_alt, diff + crit * se_alt), crit=crit, df=df)


def two_proportion_ztest(
    successes_control: int,
    n_control: int,
    successes_treatment: int,
    n_treatment: int,
    *,
    alpha: float = 0.05,
) -> TestResult:
    """z = (p_B − p_A) / sqrt(p̄(1 − p̄)(1/n_A + 1/n_B)), p̄ = (x_A + x_B)/(n_A + n_B)
    (statsmodels' `proportions_ztest`).

    The CI of the difference uses the unpooled variance p(1 − p)/n of each arm. With p̄ = 0 or 1
    (no arm has a success, or every user converted) there is nothing to test: z = 0, p = 1.
    """
    for x, n, arm in ((successes_control, n_control, "control"), (successes_treatment, n_treatment, "treatment")):
        if n <= 0 or not 0 <= x <= n:
            raise DataError(f"{arm}: need 0 <= successes <= n and n > 0, got {x} of {n}")
    pa, pb = successes_control / n_control, successes_treatment / n_treatment
    va, vb = pa * (1 - pa) / n_control, pb * (1 - pb) / n_treatment
    pooled = (successes_control + successes_treatment) / (n_control + n_treatment)
    if pooled in (0.0, 1.0):
        return difference_test(pa, va, pb, vb, null_se=0.0, alpha=alpha)
    z, p = proportions_ztest([successes_treatment, successes_control], [n_treatment, n_control])
    null_se = math.sqrt(pooled * (1 - pooled) * (1 / n_control + 1 / n_treatment))
    crit = _critical(alpha, None)
    half = crit * math.sqrt(va + vb)
    return _result(pa, va, pb, vb, statistic=z, p_value=p, se=null_se, abs_ci=(pb - pa - half, pb - pa + half),
                   crit=crit, df=None)


def _as_1d(x: Sequence[float] | np.ndarray, name: str, min_len: int = 2) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64).ravel()
    if a.size < min_len:
        raise DataError(f"{name}: need at least {min_len} values, got {a.size}")
    if not np.all(np.isfinite(a)):
        raise DataError(f"{name}: contains NaN or infinite values")
    return a


def welch_ttest(control: Sequence[float] | np.ndarray, treatment: Sequence[float] | np.ndarray, *, alpha: float = 0.05) -> TestResult:
    """Welch's t-test on per-user values (statsmodels' `CompareMeans.ttest_ind(usevar="unequal")`).

    t = (Ȳ_B − Ȳ_A) / sqrt(s²_A/n_A + s²_B/n_B);
    df = (s²_A/n_A + s²_B/n_B)² / ((s²_A/n_A)²/(n_A − 1) + (s²_B/n_B)²/(n_B − 1)).
    Both arms constant (s² = 0, e.g. a metric nobody has triggered yet): t = 0 and p = 1 when the
    means agree, ±inf and p = 0 otherwise, with df = n_A + n_B − 2.
    """
    a, b = _as_1d(control, "control"), _as_1d(treatment, "treatment")
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    if va + vb == 0:
        return difference_test(float(a.mean()), 0.0, float(b.mean()), 0.0, df=float(a.size + b.size - 2), alpha=alpha)
    cm = CompareMeans(DescrStatsW(b), DescrStatsW(a))
    t, p, df = cm.ttest_ind(usevar="unequal")
    lo, hi = cm.tconfint_diff(alpha=alpha, usevar="unequal")
    return _result(float(a.mean()), va, float(b.mean()), vb, statistic=t, p_value=p, se=math.sqrt(va + vb),
                   abs_ci=(lo, hi), crit=_critical(alpha, df), df=df)


def ratio_mean_and_variance(numerator: Sequence[float] | np.ndarray, denominator: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """R = ΣN_i / ΣD_i over users i and its delta-method variance.

    Var(R) ≈ (1/n) · (s²_N/D̄² − 2·N̄·s_ND/D̄³ + N̄²·s²_D/D̄⁴), sample (co)variances with ddof = 1.
    Users, not impressions, are the independent units, so clicks of one user may correlate.
    """
    num, den = _as_1d(numerator, "numerator"), _as_1d(denominator, "denominator")
    if num.size != den.size:
        raise DataError(f"numerator and denominator lengths differ: {num.size} vs {den.size}")
    mn, md = num.mean(), den.mean()
    if md <= 0:
        raise DataError("ratio metric: the denominator sums to zero or less")
    cov = np.cov(num, den, ddof=1)
    var = (cov[0, 0] / md**2 - 2 * mn * cov[0, 1] / md**3 + mn**2 * cov[1, 1] / md**4) / num.size
    return float(mn / md), float(max(var, 0.0))


def delta_method_ratio_test(
    numerator_control: Sequence[float] | np.ndarray,
    denominator_control: Sequence[float] | np.ndarray,
    numerator_treatment: Sequence[float] | np.ndarray,
    denominator_treatment: Sequence[float] | np.ndarray,
    *,
    alpha: float = 0.05,
) -> TestResult:
    """z-test of R_B − R_A for ratio metrics (CTR = Σclicks / Σimpressions per arm)."""
    ra, va = ratio_mean_and_variance(numerator_control, denominator_control)
    rb, vb = ratio_mean_and_variance(numerator_treatment, denominator_treatment)
    return difference_test(ra, va, rb, vb, alpha=alpha)


def cuped_theta(y: Sequence[float] | np.ndarray, x: Sequence[float] | np.ndarray) -> float:
    """θ = cov(X, Y) / var(X); the variance of Y − θX is var(Y)·(1 − ρ²)."""
    yy, xx = _as_1d(y, "metric"), _as_1d(x, "covariate")
    if yy.size != xx.size:
        raise DataError(f"metric and covariate lengths differ: {yy.size} vs {xx.size}")
    vx = xx.var(ddof=1)
    if vx == 0:
        raise DataError("CUPED covariate is constant; it cannot reduce variance")
    return float(np.cov(xx, yy, ddof=1)[0, 1] / vx)


def cuped_adjust(y: np.ndarray, x: np.ndarray, theta: float, x_mean: float) -> np.ndarray:
    """Y' = Y − θ (X − E[X]); unbiased for E[Y] when X is independent of the assignment."""
    return np.asarray(y, dtype=np.float64) - theta * (np.asarray(x, dtype=np.float64) - x_mean)


def cuped_ttest(
    y_control: Sequence[float] | np.ndarray,
    x_control: Sequence[float] | np.ndarray,
    y_treatment: Sequence[float] | np.ndarray,
    x_treatment: Sequence[float] | np.ndarray,
    *,
    alpha: float = 0.05,
) -> TestResult:
    """Welch test on CUPED-adjusted values; θ and E[X] are pooled over both arms (one θ for all)."""
    ya, xa = _as_1d(y_control, "control"), _as_1d(x_control, "control covariate")
    yb, xb = _as_1d(y_treatment, "treatment"), _as_1d(x_treatment, "treatment covariate")
    x_all = np.concatenate([xa, xb])
    theta = cuped_theta(np.concatenate([ya, yb]), x_all)
    mean_x = float(x_all.mean())
    return welch_ttest(cuped_adjust(ya, xa, theta, mean_x), cuped_adjust(yb, xb, theta, mean_x), alpha=alpha)


def srm_check(counts: Sequence[int], shares: Sequence[float], *, alpha: float = 0.001) -> SRMResult:
    """χ² = Σ (O_k − E_k)² / E_k with E_k = N · share_k / Σshare, K − 1 degrees of freedom.

    A small alpha (0.001 is the usual choice) because an SRM invalidates the whole experiment.
    """
    obs = np.asarray(counts, dtype=np.float64)
    sh = np.asarray(shares, dtype=np.float64)
    if obs.shape != sh.shape or obs.size < 2:
        raise DataError(f"SRM check needs one share per arm (>= 2 arms), got {obs.size} counts and {sh.size} shares")
    if np.any(sh <= 0) or np.any(obs < 0):
        raise DataError("SRM check: shares must be positive and counts non-negative")
    expected = obs.sum() * sh / sh.sum()
    chi2 = float(((obs - expected) ** 2 / expected).sum())
    p = float(stats.chi2.sf(chi2, obs.size - 1))
    return SRMResult(tuple(int(c) for c in obs), tuple(float(e) for e in expected), chi2, p, p < alpha)


def msprt_pvalues(diffs: Sequence[float] | np.ndarray, variances: Sequence[float] | np.ndarray, tau2: float) -> np.ndarray:
    """Always-valid p-values at successive looks (mSPRT, normal mixture θ ~ N(0, τ²)).

    At look n with estimate θ̂_n of B − A and its variance V_n:
        Λ_n = sqrt(V_n / (V_n + τ²)) · exp(τ² θ̂_n² / (2 V_n (V_n + τ²)))
        p_n = min(1, p_{n−1}, 1 / Λ_n),  p_0 = 1.
    P(p_n ≤ α for some n) ≤ α under H0, however often one looks. Shapes: (..., T) → (..., T),
    looks along the last axis (many simulated experiments at once: (S, T)).
    """
    d = np.asarray(diffs, dtype=np.float64)
    v = np.asarray(variances, dtype=np.float64)
    if d.shape != v.shape:
        raise DataError(f"msprt: diffs and variances differ in shape: {d.shape} vs {v.shape}")
    if tau2 <= 0:
        raise DataError(f"msprt: mixing variance tau2 must be > 0, got {tau2}")
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        log_lr = 0.5 * np.log(v / (v + tau2)) + tau2 * d**2 / (2 * v * (v + tau2))
        p = np.where(v > 0, np.exp(-log_lr), 1.0)
    return np.minimum.accumulate(np.minimum(p, 1.0), axis=-1)


def msprt_confidence_interval(diff: float, variance: float, tau2: float, alpha: float = 0.05) -> tuple[float, float]:
    """Always-valid CI: the θ that mSPRT does not reject at level α at this look,
    θ̂ ± sqrt(V(V + τ²)/τ² · (2 ln(1/α) + ln((V + τ²)/V))). With V = 0 (no variation yet,
    e.g. no event observed) nothing is known: the interval is the whole line."""
    if variance <= 0:
        return -math.inf, math.inf
    half = math.sqrt(variance * (variance + tau2) / tau2 * (2 * math.log(1 / alpha) + math.log((variance + tau2) / variance)))
    return diff - half, diff + half


def benjamini_hochberg(pvalues: Sequence[float] | np.ndarray, alpha: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """q_(i) = min_{j ≥ i} (m / j) · p_(j) over the sorted p-values; reject where q ≤ α
    (statsmodels' `multipletests(method="fdr_bh")`).

    Returns (reject: bool (m,), q-values: float (m,)) in the input order.
    """
    p = np.asarray(pvalues, dtype=np.float64).ravel()
    if np.any((p < 0) | (p > 1)) or np.any(np.isnan(p)):
        raise DataError("Benjamini-Hochberg: p-values must lie in [0, 1]")
    _critical(alpha, None)
    if p.size == 0:
        return np.zeros(0, dtype=bool), np.zeros(0)
    reject, q, _, _ = multipletests(p, alpha=alpha, method="fdr_bh")
    return reject, q


# ---- power and minimum detectable effect -------------------------------------------------


def cohens_h(p_control: float, p_treatment: float) -> float:
    """h = 2·asin(sqrt(p_B)) − 2·asin(sqrt(p_A)) (variance-stabilised difference of proportions)."""
    for name, p in (("p_control", p_control), ("p_treatment", p_treatment)):
        if not 0.0 <= p <= 1.0:
            raise DataError(f"{name} must be a proportion in [0, 1], got {p}")
    return float(proportion_effectsize(p_treatment, p_control))


_POWER = NormalIndPower()


def _normal_power(effect: float, n_control: float, n_treatment: float, alpha: float) -> float:
    """Two-sided power of a z-test on a standardised effect: Φ(|e|·√ñ − z) + Φ(−|e|·√ñ − z),
    ñ = 1 / (1/n_A + 1/n_B) (both rejection tails; statsmodels' NormalIndPower)."""
    if not (n_control > 0 and n_treatment > 0):
        raise DataError(f"arm sizes must be > 0, got n_control={n_control}, n_treatment={n_treatment}")
    return float(_POWER.power(effect, n_control, alpha, ratio=n_treatment / n_control))


def _solve(what: str, **kwargs: Any) -> float:
    """NormalIndPower.solve_power for the sample size (nobs1=None); a root it cannot find (an
    effect too small for any n) is a DataError, not NaN."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # statsmodels warns, then returns NaN: we raise instead
        x = float(np.squeeze(_POWER.solve_power(**kwargs)))
    if not (math.isfinite(x) and x > 0):
        raise DataError(f"no {what} reaches power {kwargs['power']} at alpha {kwargs['alpha']}")
    return x


def _solve_effect(n_control: float, n_treatment: float, alpha: float, power: float, top: float) -> float:
    """The standardised effect whose power is `power`, by brentq to 1e-12 on statsmodels' power
    curve: solve_power(effect_size=None) stops at ~1e-5 in power, visible in an MDE table."""
    if _normal_power(top, n_control, n_treatment, alpha) < power:
        raise DataError(f"no effect below {top} reaches power {power} with these sample sizes")
    return float(optimize.brentq(lambda e: _normal_power(e, n_control, n_treatment, alpha) - power, 1e-12, top,
                                 xtol=1e-14))


def _check_power_args(alpha: float, power: float | None = None, ratio: float = 1.0) -> None:
    _critical(alpha, None)
    if power is not None and not alpha < power < 1:
        raise DataError(f"power must be in (alpha, 1), got {power}")
    if not ratio > 0:
        raise DataError(f"ratio (treatment / control users) must be > 0, got {ratio}")


def power_two_proportions(p_control: float, p_treatment: float, n_control: float, n_treatment: float | None = None, *, alpha: float = 0.05) -> float:
    """Power to detect p_A → p_B with n_A, n_B users (arcsine approximation, Cohen's h)."""
    _check_power_args(alpha)
    return _normal_power(cohens_h(p_control, p_treatment), n_control, n_treatment or n_control, alpha)


def sample_size_two_proportions(p_control: float, p_treatment: float, *, alpha: float = 0.05, power: float = 0.8, ratio: float = 1.0) -> float:
    """Users in the control arm (treatment arm = ratio × control) to reach `power`."""
    _check_power_args(alpha, power, ratio)
    h = cohens_h(p_control, p_treatment)
    if h == 0:
        raise DataError("p_control equals p_treatment: nothing to detect")
    return _solve("sample size", effect_size=abs(h), nobs1=None, alpha=alpha, power=power, ratio=ratio)


def mde_two_proportions(p_control: float, n_control: float, n_treatment: float | None = None, *, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest absolute increase p_B − p_A detectable with `power` (upward direction)."""
    _check_power_args(alpha, power)
    cohens_h(p_control, p_control)  # validates p_control
    if not n_control > 0:
        raise DataError(f"arm sizes must be > 0, got n_control={n_control}")
    nb = n_treatment or n_control
    h = _solve_effect(n_control, nb, alpha, power, math.pi)
    top = math.asin(math.sqrt(p_control)) + h / 2
    if top >= math.pi / 2:
        raise DataError("no detectable increase below p = 1 with these sample sizes")
    return math.sin(top) ** 2 - p_control


def power_means(delta: float, sd: float, n_control: float, n_treatment: float | None = None, *, alpha: float = 0.05) -> float:
    """Power of the (large-sample) mean test for a shift `delta` with per-user sd `sd` (d = delta/sd)."""
    _check_power_args(alpha)
    if sd <= 0:
        raise DataError(f"sd must be > 0, got {sd}")
    return _normal_power(delta / sd, n_control, n_treatment or n_control, alpha)


def sample_size_means(delta: float, sd: float, *, alpha: float = 0.05, power: float = 0.8, ratio: float = 1.0) -> float:
    """Users in the control arm to detect a mean shift `delta` with `power`."""
    _check_power_args(alpha, power, ratio)
    if delta == 0 or sd <= 0:
        raise DataError("need delta != 0 and sd > 0")
    return _solve("sample size", effect_size=abs(delta) / sd, nobs1=None, alpha=alpha, power=power, ratio=ratio)


def mde_means(sd: float, n_control: float, n_treatment: float | None = None, *, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest mean shift detectable with `power`; ≈ (z_{1−α/2} + z_{power})·sd·sqrt(1/n_A + 1/n_B)."""
    _check_power_args(alpha, power)
    if sd <= 0:
        raise DataError(f"sd must be > 0, got {sd}")
    if not n_control > 0 or (n_treatment is not None and not n_treatment > 0):
        raise DataError(f"arm sizes must be > 0, got n_control={n_control}, n_treatment={n_treatment}")
    nb = n_treatment or n_control
    return _solve_effect(n_control, nb, alpha, power, 1e3) * sd


# ---- the tests a report picks by name ------------------------------------------------------


@dataclass(frozen=True)
class Statistic:
    """One entry of `STATISTICS`.

    role "two_sample": `run(control, treatment, alpha)` → TestResult, where control and
        treatment are tuples of per-user arrays, one per name in `inputs`
        ("value", "covariate", "numerator", "denominator");
    role "sequential": `run(diffs, variances, tau2)` → always-valid p-values per look, and
        `interval(diff, variance, tau2, alpha)` → the always-valid CI at one look;
    role "multiple_testing": `run(pvalues, alpha)` → (reject, q-values).
    """

    role: Literal["two_sample", "sequential", "multiple_testing"]
    run: Callable[..., Any]
    inputs: tuple[str, ...] = ()
    binary: bool = False  # two-sample tests of 0/1 values per user (the z-test)
    interval: Callable[..., tuple[float, float]] | None = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.run(*args, **kwargs)


def _z_on_users(control: tuple[np.ndarray, ...], treatment: tuple[np.ndarray, ...], alpha: float) -> TestResult:
    xa, xb = (np.asarray(c[0], dtype=np.float64) for c in (control, treatment))
    if not (np.isin(xa, (0.0, 1.0)).all() and np.isin(xb, (0.0, 1.0)).all()):
        raise DataError("the z-test needs 0/1 values per user")
    return two_proportion_ztest(int(xa.sum()), xa.size, int(xb.sum()), xb.size, alpha=alpha)


STATISTICS.register("z")(Statistic("two_sample", _z_on_users, ("value",), binary=True))
STATISTICS.register("welch")(Statistic("two_sample", lambda a, b, alpha: welch_ttest(a[0], b[0], alpha=alpha), ("value",)))
STATISTICS.register("delta")(Statistic(
    "two_sample", lambda a, b, alpha: delta_method_ratio_test(a[0], a[1], b[0], b[1], alpha=alpha),
    ("numerator", "denominator")))
STATISTICS.register("cuped")(Statistic(
    "two_sample", lambda a, b, alpha: cuped_ttest(a[0], a[1], b[0], b[1], alpha=alpha), ("value", "covariate")))
STATISTICS.register("msprt")(Statistic("sequential", msprt_pvalues, interval=msprt_confidence_interval))
STATISTICS.register("bh")(Statistic("multiple_testing", benjamini_hochberg))
