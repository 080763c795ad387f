"""Scheduled ramp-ups: step times, the experiment's outcomes from the feedback log, and the
guardrail's always-valid look.

A step's `at` is an ISO-8601 time or an offset from the ramp's start (`parse_at`). The guard
reads the metric of each arm from the feedback log: every event the service logs carries the
request's assignment (`FeedbackEvent.experiments`, {layer: {"experiment", "variant"}}), so an
experiment's outcomes are the events whose assignment names it. Per user of an arm

    N_u = Σ value of the numerator events (e.g. clicks),  D_u = count of the denominator events

and the arm's metric is R = Σ N_u / Σ D_u (users are the randomisation unit; delta-method
variance, `stats.ratio_mean_and_variance`). A look compares each treatment arm with control:
θ̂ = R_B − R_A with variance V, the always-valid p-value of mSPRT (mixing variance
τ² = (tau · R_A)²) and its always-valid 1 − α interval [lo, hi]. The treatment is *worse* when
the interval lies entirely on the bad side of the threshold:

    higher_is_better:  hi < −max_degradation · |R_A|        lower_is_better:  lo > max_degradation · |R_A|

With max_degradation = 0 that is "always-valid p < α and the lift has the bad sign". The
interval is valid at every look at once (P(θ ∉ CI_n for some n) ≤ α), so checking on every
tick does not inflate the false-alarm rate the way repeated fixed-horizon tests would.

    >>> parse_at("+2h"), parse_at("+90")
    (('offset', 7200.0), ('offset', 90.0))
    >>> parse_at("2026-12-02T00:00:00Z")
    ('time', 1796169600.0)
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl

from funnelrec.core.errors import DataError

__all__ = ["parse_at", "format_time", "GuardLook", "RampOutcomes", "guardrail_look"]

_OFFSET = re.compile(r"^\+\s*(\d+(?:\.\d+)?)\s*([smhd]?)$")
_UNIT = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_at(text: str) -> tuple[Literal["time", "offset"], float]:
    """("time", unix seconds) for an ISO-8601 time (no zone = UTC), ("offset", seconds) for
    "+N[s|m|h|d]". Anything else raises ValueError naming the value."""
    t = str(text).strip()
    m = _OFFSET.match(t)
    if m:
        return "offset", float(m.group(1)) * _UNIT[m.group(2)]
    try:
        dt = datetime.fromisoformat(t)
    except ValueError:
        raise ValueError(f"ramp time {text!r} is neither an ISO-8601 time (2026-12-04T09:00:00Z) "
                         "nor an offset (+30m, +2h, +1d)") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return "time", dt.timestamp()


def format_time(ts: float) -> str:
    """Unix seconds as ISO-8601 UTC ("2026-12-02T10:00:00Z")."""
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class GuardLook:
    """One guardrail, one treatment arm, one look (see the module doc for the rule)."""

    experiment: str
    variant: str
    metric: str
    users: tuple[int, int]  # (control, treatment) users with an event of the metric
    control: float = math.nan
    treatment: float = math.nan
    rel_lift: float = math.nan
    always_valid_p: float = 1.0
    interval: tuple[float, float] = (-math.inf, math.inf)  # always-valid CI of R_B − R_A
    worse: bool = False

    @property
    def state(self) -> str:
        if self.worse:
            return "worse"
        return "ok" if min(self.users) >= 2 else "waiting for data"

    def reason(self) -> str:
        return (f"{self.metric} of {self.variant!r}: {self.treatment:.4g} vs control {self.control:.4g} "
                f"({self.rel_lift:+.2%}), always-valid p = {self.always_valid_p:.3g}")

    def line(self) -> str:
        if min(self.users) < 2:
            return f"{self.metric} · {self.variant}: users {list(self.users)} → waiting for data"
        lo, hi = self.interval
        return (f"{self.metric} · {self.variant}: users {list(self.users)}, {self.treatment:.4g} vs {self.control:.4g} "
                f"({self.rel_lift:+.2%}), always-valid CI [{lo:+.4g}, {hi:+.4g}], p = {self.always_valid_p:.3g} "
                f"→ {self.state}")


def guardrail_look(experiment: str, variant: str, guardrail: Any, control: tuple[np.ndarray, np.ndarray],
                   treatment: tuple[np.ndarray, np.ndarray], tau: float) -> GuardLook:
    """The look of one guardrail (a `GuardrailConfig`) on per-user (numerator, denominator)
    arrays of control and treatment. Fewer than two users in an arm, or no denominator events,
    is a look that knows nothing: never worse."""
    from funnelrec.experiments import stats

    users = (int(control[0].size), int(treatment[0].size))
    try:
        r = stats.delta_method_ratio_test(control[0], control[1], treatment[0], treatment[1])
    except DataError:
        return GuardLook(experiment, variant, guardrail.metric, users)
    alpha = 0.05 if guardrail.alpha is None else guardrail.alpha
    tau2 = (tau * abs(r.control)) ** 2 or 1e-12
    p = float(stats.msprt_pvalues([r.abs_lift], [r.diff_variance], tau2)[0])
    lo, hi = stats.msprt_confidence_interval(r.abs_lift, r.diff_variance, tau2, alpha)
    margin = (guardrail.max_degradation or 0.0) * abs(r.control)
    worse = hi < -margin if guardrail.direction == "higher_is_better" else lo > margin
    return GuardLook(experiment, variant, guardrail.metric, users, r.control, r.treatment, r.rel_lift, p,
                     (lo, hi), bool(worse))


class RampOutcomes:
    """Per (experiment, variant, user, event type): Σ value and count of the logged events,
    read incrementally from an `EventLog` (`update` reads only rows after the last seq seen) or
    taken whole from a polars table of the log's columns.

    `watch` maps experiment → the event types its guardrails need."""

    _SCHEMA = {"experiment": pl.Utf8, "variant": pl.Utf8, "user_id": pl.Utf8, "type": pl.Utf8,
               "value": pl.Float64, "n": pl.Int64}

    def __init__(self, watch: Mapping[str, set[str]]) -> None:
        self.watch = {e: set(t) for e, t in watch.items()}
        self.seq = 0
        self.table = pl.DataFrame(schema=self._SCHEMA)

    def update(self, events: Any) -> RampOutcomes:
        """Add new events: an EventLog (rows after the last seq read), a path to its SQLite
        file, or a polars table with the log's columns (taken as the whole log: replaces)."""
        if isinstance(events, pl.DataFrame):
            self.table = pl.DataFrame(schema=self._SCHEMA)
            new = events
        elif isinstance(events, str | Path):
            from funnelrec.pipeline.eventlog import EventLog

            if not Path(events).exists():
                raise DataError(f"feedback log not found: {events}")
            with EventLog(events) as log:
                return self.update(log)
        else:
            new = events.read(since_seq=self.seq)
        if new.height == 0:
            return self
        if "seq" in new.columns:
            self.seq = max(self.seq, int(new["seq"].max()))
        missing = {"user_id", "type", "value", "experiments"} - set(new.columns)
        if missing:
            raise DataError(f"feedback events lack columns: {', '.join(sorted(missing))}")
        types = set().union(*self.watch.values()) if self.watch else set()
        new = new.filter(pl.col("experiments").is_not_null() & pl.col("type").is_in(sorted(types)))
        pairs = []
        for js in new["experiments"].unique().to_list():
            try:
                record = json.loads(js)
            except ValueError:
                continue  # not an assignment this platform wrote; nothing to attribute
            for a in record.values() if isinstance(record, dict) else ():
                if isinstance(a, dict) and a.get("experiment") in self.watch:
                    pairs.append((js, a["experiment"], str(a.get("variant"))))
        if not pairs:
            return self
        mapping = pl.DataFrame(pairs, schema={"experiments": pl.Utf8, "experiment": pl.Utf8, "variant": pl.Utf8},
                               orient="row")
        got = (new.join(mapping, on="experiments")
               .group_by("experiment", "variant", "user_id", "type")
               .agg(value=pl.col("value").sum().cast(pl.Float64), n=pl.len().cast(pl.Int64)))
        both = pl.concat([self.table, got.select(list(self._SCHEMA))])
        self.table = both.group_by("experiment", "variant", "user_id", "type").agg(pl.col("value").sum(),
                                                                                    pl.col("n").sum())
        return self

    def per_user(self, experiment: str, variant: str, numerator: str, denominator: str
                 ) -> tuple[np.ndarray, np.ndarray]:
        """(N_u, D_u) per user of one arm, float64 (U,): Σ value of `numerator` events and the
        count of `denominator` events (users with either)."""
        t = self.table.filter((pl.col("experiment") == experiment) & (pl.col("variant") == variant)
                              & pl.col("type").is_in([numerator, denominator]))
        if t.height == 0:
            return np.empty(0), np.empty(0)
        wide = t.group_by("user_id").agg(
            num=pl.col("value").filter(pl.col("type") == numerator).sum(),
            den=pl.col("n").filter(pl.col("type") == denominator).sum())
        return wide["num"].cast(pl.Float64).to_numpy(), wide["den"].cast(pl.Float64).to_numpy()
