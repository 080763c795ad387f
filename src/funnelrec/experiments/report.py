"""Experiment reports: per-metric lift table (terminal text) and an offline HTML report.

Input: a polars table with one row per user (or per user and day) carrying `user_id`,
`variant`, the metric columns, optionally a `day` column and pre-period covariate columns.
Rows of one user are aggregated first (users are the randomisation unit):

- kind "mean":       per-user sum of `column`; Welch t-test ("welch"), CUPED ("cuped") when
                      `covariate` is set;
- kind "proportion": per-user max of a 0/1 `column` (did the user convert); two-proportion z-test ("z");
- kind "ratio":      per-user sums of `numerator` and `denominator`; delta-method z-test ("delta").

The names are entries of `stats.STATISTICS`; a metric may pick another test whose inputs fit
(`MetricSpec(test="welch")` on a proportion), and the config picks the sequential test
(`sequential_test`, "msprt") and the multiple-testing correction (`multiple_testing`, "bh").

A row's `value` is the arm's estimate the test uses (the CUPED-adjusted mean when a covariate is
set). Every treatment arm is compared with the control arm; p-values are adjusted over all
(metric, arm) pairs by Benjamini–Hochberg (q-values); arm sizes get a sample-ratio-mismatch
χ² check. With a day column, each day's cumulative data gets the same test and an always-valid
mSPRT p-value (mixing sd τ = `msprt_tau` × |control value|), so looking daily is safe.

    >>> import polars as pl
    >>> df = pl.DataFrame({"user_id": [1, 2, 3, 4], "variant": ["control", "control", "b", "b"],
    ...                    "clicks": [1.0, 3.0, 2.0, 6.0]})
    >>> rep = build_report(df, ReportConfig(metrics=(MetricSpec("clicks"),)))
    >>> rep.rows[1].rel_lift
    1.0
"""

from __future__ import annotations

import base64
import html
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl

from funnelrec.core.errors import DataError
from funnelrec.core.registry import STATISTICS
from funnelrec.experiments import stats
from funnelrec.experiments.stats import SRMResult, Statistic, TestResult

__all__ = ["MetricSpec", "ReportConfig", "ReportRow", "Report", "build_report", "analyze_metric"]


@dataclass(frozen=True)
class MetricSpec:
    """One metric of the report; `column` defaults to `name` for kinds mean and proportion."""

    name: str
    kind: Literal["mean", "proportion", "ratio"] = "mean"
    column: str | None = None
    numerator: str | None = None
    denominator: str | None = None
    covariate: str | None = None  # pre-period column for CUPED (kind "mean" only)
    higher_is_better: bool = True
    test: str | None = None  # a two-sample entry of STATISTICS; default by kind (module doc)

    def __post_init__(self) -> None:
        if self.kind == "ratio" and not (self.numerator and self.denominator):
            raise ValueError(f"ratio metric {self.name!r} needs numerator and denominator columns")
        if self.kind != "ratio" and (self.numerator or self.denominator):
            raise ValueError(f"metric {self.name!r}: numerator/denominator are for kind 'ratio'")
        if self.covariate and self.kind != "mean":
            raise ValueError(f"metric {self.name!r}: CUPED covariate is supported for kind 'mean' only")
        stat = self.statistic  # an unknown name raises here, listing the known ones
        if stat.role != "two_sample":
            raise ValueError(f"metric {self.name!r}: test {self.test_name!r} is a {stat.role} statistic, not a two-sample test")
        if stat.inputs != self.inputs:
            raise ValueError(f"metric {self.name!r}: test {self.test_name!r} takes {', '.join(stat.inputs)} per user, "
                             f"the metric gives {', '.join(self.inputs)}")
        if stat.binary and self.kind != "proportion":
            raise ValueError(f"metric {self.name!r}: test {self.test_name!r} needs kind 'proportion'")

    @property
    def columns(self) -> list[str]:
        if self.kind == "ratio":
            return [self.numerator, self.denominator]  # type: ignore[list-item]
        return [self.column or self.name]

    @property
    def inputs(self) -> tuple[str, ...]:
        """What the metric hands its test per user, in order (see `stats.Statistic`)."""
        if self.kind == "ratio":
            return ("numerator", "denominator")
        return ("value", "covariate") if self.covariate else ("value",)

    @property
    def test_name(self) -> str:
        if self.test:
            return self.test
        return {"proportion": "z", "ratio": "delta"}.get(self.kind, "cuped" if self.covariate else "welch")

    @property
    def statistic(self) -> Statistic:
        return STATISTICS.get(self.test_name)


@dataclass(frozen=True)
class ReportConfig:
    metrics: tuple[MetricSpec, ...]
    control: str = "control"
    user_column: str = "user_id"
    variant_column: str = "variant"
    day_column: str = "day"  # used when the table has it
    expected_shares: dict[str, float] = field(default_factory=dict)  # default: equal split
    alpha: float = 0.05
    srm_alpha: float = 0.001
    msprt_tau: float = 0.05
    sequential_test: str = "msprt"  # STATISTICS entry of role "sequential" for the daily looks
    multiple_testing: str = "bh"  # STATISTICS entry of role "multiple_testing" over (metric, arm)
    title: str = "Experiment report"

    def __post_init__(self) -> None:
        if not self.metrics:
            raise ValueError("a report needs at least one metric")
        names = [m.name for m in self.metrics]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate metric names: {names}")
        for key in ("alpha", "srm_alpha"):
            if not 0.0 < getattr(self, key) < 1.0:
                raise ValueError(f"{key} must be in (0, 1), got {getattr(self, key)}")
        if self.msprt_tau <= 0:
            raise ValueError(f"msprt_tau must be > 0, got {self.msprt_tau}")
        for key, role in (("sequential_test", "sequential"), ("multiple_testing", "multiple_testing")):
            name = getattr(self, key)
            if STATISTICS.get(name).role != role:
                raise ValueError(f"{key}: {name!r} is not a {role} statistic")


@dataclass(frozen=True)
class ReportRow:
    metric: str
    variant: str
    users: int
    value: float
    abs_lift: float | None = None
    abs_ci: tuple[float, float] | None = None
    rel_lift: float | None = None
    rel_ci: tuple[float, float] | None = None
    p_value: float | None = None
    q_value: float | None = None
    always_valid_p: float | None = None
    srm: str = ""


def _aggregations(cfg: ReportConfig) -> dict[str, str]:
    """column → how a user's rows combine: "sum", "max" (0/1 proportions) or "first" (covariates)."""
    how: dict[str, str] = {}
    for m in cfg.metrics:
        for c in m.columns:
            how[c] = "max" if m.kind == "proportion" else "sum"
        if m.covariate:
            how[m.covariate] = "first"
    return how


def _per_user(df: pl.DataFrame, cfg: ReportConfig, by: tuple[str, ...] = ()) -> pl.DataFrame:
    exprs = {c: getattr(pl.col(c), h)().cast(pl.Float64) for c, h in _aggregations(cfg).items()}
    return df.group_by(cfg.user_column, cfg.variant_column, *by).agg(**exprs)


def _cumulative_per_user(df: pl.DataFrame, cfg: ReportConfig, days: list) -> list[pl.DataFrame]:
    """Per-user totals over days ≤ d for every d, with one group-by: aggregate per user and day,
    accumulate along each user's days, then keep each user's last row with day ≤ d."""
    u, dc = cfg.user_column, cfg.day_column
    cum = {"sum": "cum_sum", "max": "cum_max", "first": "first"}
    daily = _per_user(df, cfg, (dc,)).sort(u, dc)
    daily = daily.with_columns(
        *(getattr(pl.col(c), cum[h])().over(u) for c, h in _aggregations(cfg).items()),
        pl.col(dc).shift(-1).over(u).alias("_next_day"),
    )
    nxt = pl.col("_next_day")
    return [daily.filter((pl.col(dc) <= d) & (nxt.is_null() | (nxt > d))).drop(dc, "_next_day") for d in days]


def analyze_metric(per_user: pl.DataFrame, metric: MetricSpec, control: str, treatment: str, *,
                   variant_column: str = "variant", alpha: float = 0.05) -> TestResult:
    """The test of `metric` for one arm against control on per-user rows: `metric.statistic`
    (STATISTICS) on the arms' columns, covariate last (see module doc)."""
    cols = [*metric.columns, *([metric.covariate] if metric.covariate else [])]
    a = per_user.filter(pl.col(variant_column) == control)
    b = per_user.filter(pl.col(variant_column) == treatment)
    try:
        return metric.statistic(tuple(a[c].to_numpy() for c in cols), tuple(b[c].to_numpy() for c in cols), alpha)
    except DataError as e:
        raise DataError(f"metric {metric.name!r} ({metric.test_name}, columns {', '.join(cols)}): {e}") from e


def _fmt(x: float | None, pct: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:+.2%}" if pct else f"{x:.4g}"


def _fmt_ci(ci: tuple[float, float] | None, pct: bool = False) -> str:
    if ci is None:
        return "-"
    return f"[{_fmt(ci[0], pct)}, {_fmt(ci[1], pct)}]"


def _fmt_p(p: float | None) -> str:
    return "-" if p is None else f"{p:.4f}" if p >= 1e-4 else f"{p:.1e}"


@dataclass
class Report:
    """Result of `build_report`. `results[(metric, variant)]` is the TestResult behind each
    row; `daily[(metric, variant)]` (when the input has days) holds the cumulative analysis."""

    config: ReportConfig
    rows: list[ReportRow]
    results: dict[tuple[str, str], TestResult]
    srm: SRMResult
    daily: dict[tuple[str, str], pl.DataFrame]

    HEADER = ("metric", "variant", "users", "value", "lift", "CI", "rel lift", "rel CI", "p", "q (BH)", "always-valid p", "SRM")

    def to_polars(self) -> pl.DataFrame:
        return pl.DataFrame([
            {"metric": r.metric, "variant": r.variant, "users": r.users, "value": r.value,
             "abs_lift": r.abs_lift, "ci_low": r.abs_ci[0] if r.abs_ci else None,
             "ci_high": r.abs_ci[1] if r.abs_ci else None, "rel_lift": r.rel_lift,
             "rel_ci_low": r.rel_ci[0] if r.rel_ci else None, "rel_ci_high": r.rel_ci[1] if r.rel_ci else None,
             "p_value": r.p_value, "q_value": r.q_value, "always_valid_p": r.always_valid_p, "srm": r.srm}
            for r in self.rows
        ])

    def _cells(self) -> list[tuple[str, ...]]:
        return [
            (r.metric, r.variant, str(r.users), _fmt(r.value), _fmt(r.abs_lift), _fmt_ci(r.abs_ci),
             _fmt(r.rel_lift, True), _fmt_ci(r.rel_ci, True), _fmt_p(r.p_value), _fmt_p(r.q_value),
             _fmt_p(r.always_valid_p), r.srm)
            for r in self.rows
        ]

    def srm_line(self) -> str:
        s = self.srm
        state = "MISMATCH — do not trust the results" if s.mismatch else "ok"
        return f"sample ratio: users {list(s.counts)} vs expected {[round(e, 1) for e in s.expected]}: χ² = {s.statistic:.2f}, p = {s.p_value:.4g} → {state}"

    def to_text(self) -> str:
        """A plain-text table for the terminal."""
        cells = [self.HEADER, *self._cells()]
        widths = [max(len(row[i]) for row in cells) for i in range(len(self.HEADER))]
        line = "  ".join("-" * w for w in widths)
        out = [self.config.title, self.srm_line(), ""]
        for k, row in enumerate(cells):
            out.append("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
            if k == 0:
                out.append(line)
        return "\n".join(out)

    def figures(self) -> dict[str, str]:
        """Base64 PNGs: "lift" (relative lift with CIs per metric) and, with days, "cumulative"."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        out = {}
        keys = list(self.results)
        fig, ax = plt.subplots(figsize=(7, 0.5 * len(keys) + 1.5))
        for y, key in enumerate(keys):
            r = self.results[key]
            lo, hi = r.rel_ci
            ax.errorbar([r.rel_lift * 100], [y], xerr=[[(r.rel_lift - lo) * 100], [(hi - r.rel_lift) * 100]],
                        fmt="o", capsize=4, color="tab:green" if lo > 0 else "tab:red" if hi < 0 else "tab:gray")
        ax.axvline(0, color="black", lw=0.8)
        ax.set_yticks(range(len(keys)), [f"{m} · {v}" for m, v in keys])
        ax.set_xlabel(f"relative lift vs {self.config.control} (%), {1 - self.config.alpha:.0%} CI")
        ax.invert_yaxis()
        fig.tight_layout()
        out["lift"] = _png(fig)
        plt.close(fig)
        if self.daily:
            n = len(self.daily)
            fig, axes = plt.subplots(n, 1, figsize=(7, 2.4 * n), squeeze=False)
            for ax, (key, d) in zip(axes[:, 0], self.daily.items()):
                day = d["day"].to_numpy()
                ax.plot(day, d["rel_lift"].to_numpy() * 100, marker="o", label="cumulative lift")
                ax.fill_between(day, d["rel_lo"].to_numpy() * 100, d["rel_hi"].to_numpy() * 100, alpha=0.25,
                                label="always-valid CI")
                ax.axhline(0, color="black", lw=0.8)
                ax.set_title(f"{key[0]} · {key[1]}", fontsize=9)
                ax.set_ylabel("lift (%)")
            axes[-1, 0].set_xlabel("day")
            axes[0, 0].legend(fontsize=8)
            fig.tight_layout()
            out["cumulative"] = _png(fig)
            plt.close(fig)
        return out

    def to_html(self, path: str | Path) -> Path:
        """Write a self-contained HTML report (table + embedded PNG plots)."""
        path = Path(path)
        head = "".join(f"<th>{html.escape(h)}</th>" for h in self.HEADER)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in self._cells())
        imgs = "".join(f'<h2>{html.escape(name)}</h2><img alt="{name}" src="data:image/png;base64,{b64}"/>'
                       for name, b64 in self.figures().items())
        doc = (
            "<!doctype html><html><head><meta charset='utf-8'>"
            f"<title>{html.escape(self.config.title)}</title><style>"
            "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}</style></head><body>"
            f"<h1>{html.escape(self.config.title)}</h1><p>{html.escape(self.srm_line())}</p>"
            f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{imgs}</body></html>"
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(doc, encoding="utf-8")
        return path


def _png(fig: object) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)  # type: ignore[attr-defined]
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _check_input(df: pl.DataFrame, cfg: ReportConfig) -> list[str]:
    needed = {cfg.user_column, cfg.variant_column}
    for m in cfg.metrics:
        needed.update(m.columns)
        if m.covariate:
            needed.add(m.covariate)
    missing = sorted(needed - set(df.columns))
    if missing:
        raise DataError(f"report input lacks columns: {', '.join(missing)}")
    if df.is_empty():
        raise DataError("report input has no rows")
    for col in (cfg.user_column, cfg.variant_column):
        if df[col].null_count():
            raise DataError(f"report input: column {col!r} has {df[col].null_count()} empty values")
    per_user_arms = df.group_by(cfg.user_column).agg(pl.col(cfg.variant_column).n_unique().alias("k"))
    if per_user_arms["k"].max() > 1:  # type: ignore[operator]
        raise DataError("some users appear in more than one variant; assignment must be per user")
    variants = sorted(df[cfg.variant_column].unique().cast(pl.Utf8).to_list())
    if cfg.control not in variants:
        raise DataError(f"control variant {cfg.control!r} not in data; variants: {variants}")
    if len(variants) < 2:
        raise DataError("the data has a single variant; nothing to compare")
    return [cfg.control] + [v for v in variants if v != cfg.control]


_NO_LOOK = TestResult(control=math.nan, treatment=math.nan, abs_lift=math.nan, abs_ci=(-math.inf, math.inf),
                      rel_lift=math.nan, rel_ci=(-math.inf, math.inf), statistic=math.nan, p_value=math.nan,
                      se=math.nan, diff_variance=0.0)


def _early_look(per_user: pl.DataFrame, metric: MetricSpec, cfg: ReportConfig, treatment: str) -> TestResult:
    """The test on one cumulative day; a day with too little data to test (e.g. fewer than two
    users in an arm yet) is a look that knows nothing: NaN lift, variance 0, so its always-valid
    p-value is 1 and its interval the whole line."""
    try:
        return analyze_metric(per_user, metric, cfg.control, treatment, variant_column=cfg.variant_column,
                              alpha=cfg.alpha)
    except DataError:
        return _NO_LOOK


def build_report(df: pl.DataFrame, config: ReportConfig) -> Report:
    """Aggregate per user, test every treatment arm against control on every metric."""
    cfg = config
    variants = _check_input(df, cfg)
    df = df.with_columns(pl.col(cfg.variant_column).cast(pl.String))  # names compare as text (a CSV may hold 0/1)
    has_days = cfg.day_column in df.columns
    days = sorted(df[cfg.day_column].unique().to_list()) if has_days else []
    per_day = _cumulative_per_user(df, cfg, days) if has_days else []
    per_user = per_day[-1] if has_days else _per_user(df, cfg)  # the last cumulative day is all data
    counts = [per_user.filter(pl.col(cfg.variant_column) == v).height for v in variants]
    if cfg.expected_shares:
        unknown = set(cfg.expected_shares) ^ set(variants)
        if unknown:
            raise DataError(f"expected_shares and data variants differ: {sorted(unknown)}")
        shares = [cfg.expected_shares[v] for v in variants]
    else:
        shares = [1.0] * len(variants)
    srm = stats.srm_check(counts, shares, alpha=cfg.srm_alpha)
    srm_state = "MISMATCH" if srm.mismatch else "ok"

    results: dict[tuple[str, str], TestResult] = {}
    for m in cfg.metrics:
        for v in variants[1:]:
            results[(m.name, v)] = analyze_metric(per_user, m, cfg.control, v, variant_column=cfg.variant_column, alpha=cfg.alpha)
    _, q = STATISTICS.get(cfg.multiple_testing)([r.p_value for r in results.values()], cfg.alpha)
    qv = dict(zip(results, q.tolist()))

    daily: dict[tuple[str, str], pl.DataFrame] = {}
    if has_days:
        sequential = STATISTICS.get(cfg.sequential_test)
        for (mname, v), final in results.items():
            m = next(x for x in cfg.metrics if x.name == mname)
            tau2 = (cfg.msprt_tau * abs(final.control)) ** 2 or 1e-12
            rs = [_early_look(pu, m, cfg, v) for pu in per_day]
            diffs = np.array([r.abs_lift for r in rs])
            var = np.array([r.diff_variance for r in rs])  # 0 where a look had too little data
            pav = sequential(diffs, var, tau2)
            cis = np.array([sequential.interval(d, s, tau2, cfg.alpha) for d, s in zip(diffs, var)])
            # a confidence sequence: intersect the intervals of all looks so far
            lo, hi = np.maximum.accumulate(cis[:, 0]), np.minimum.accumulate(cis[:, 1])
            ctrl = np.array([r.control for r in rs])
            with np.errstate(divide="ignore", invalid="ignore"):
                daily[(mname, v)] = pl.DataFrame({
                    "day": days, "abs_lift": diffs, "variance": var, "p_value": [r.p_value for r in rs],
                    "always_valid_p": pav, "rel_lift": np.array([r.rel_lift for r in rs]),
                    "rel_lo": lo / ctrl, "rel_hi": hi / ctrl,
                })

    rows: list[ReportRow] = []
    for m in cfg.metrics:
        ctrl_result = results[(m.name, variants[1])]
        rows.append(ReportRow(m.name, cfg.control, counts[0], ctrl_result.control, srm=srm_state))
        for k, v in enumerate(variants[1:], start=1):
            r = results[(m.name, v)]
            d = daily.get((m.name, v))
            rows.append(ReportRow(
                m.name, v, counts[k], r.treatment, r.abs_lift, r.abs_ci, r.rel_lift, r.rel_ci, r.p_value,
                qv[(m.name, v)], None if d is None else float(d["always_valid_p"][-1]), srm_state,
            ))
    return Report(cfg, rows, results, srm, daily)
