"""Experiment metrics from the service's event log: what the console's Experiments page shows.

Each feedback event carries the JSON of its request's assignment ({layer: {"experiment",
"variant"}}, pipeline/service.py). `log_table(events, experiment)` keeps the events attributed to
one experiment and turns them into one row per event with the report's columns (impressions,
clicks, likes, clicked, watch_time, day = ts // 86400); `log_report` runs `build_report` on it —
the same per-user aggregation, tests (Welch on clicks per user, delta method on CTR, the
two-proportion z on "clicked at least once"), Benjamini–Hochberg q-values, the always-valid
mSPRT p over days, and the sample-ratio check against the variants' configured traffic shares.

Users are the units: a user counts from their first logged event in the experiment (users who
were assigned but sent no feedback are not in the log, so they are in no arm).

    >>> import json, polars as pl
    >>> rec = lambda v: json.dumps({"recall": {"experiment": "e", "variant": v}})
    >>> ev = pl.DataFrame({"user_id": ["1", "1", "2"], "type": ["impression", "click", "impression"],
    ...                    "value": [1.0, 1.0, 1.0], "ts": [0, 5, 9], "experiments": [rec("control"), rec("control"), rec("b")]})
    >>> log_table(ev, "e").select("user_id", "variant", "impressions", "clicks").rows()
    [('1', 'control', 1.0, 0.0), ('1', 'control', 0.0, 1.0), ('2', 'b', 1.0, 0.0)]
"""

from __future__ import annotations

import json
from typing import Any

import polars as pl

from funnelrec.core.errors import DataError
from funnelrec.experiments.report import MetricSpec, Report, ReportConfig, build_report

__all__ = ["LOG_METRICS", "log_table", "log_report", "experiment_users"]

#: the metrics the log gives every experiment: clicks per user (Welch), CTR = clicks/impressions
#: per user pooled (delta method), the share of users who clicked (two-proportion z)
LOG_METRICS = (
    MetricSpec("clicks"),
    MetricSpec("ctr", kind="ratio", numerator="clicks", denominator="impressions"),
    MetricSpec("clicked", kind="proportion"),
)
_TYPES = {"impressions": "impression", "clicks": "click", "likes": "like"}


def log_table(events: pl.DataFrame, experiment: str) -> pl.DataFrame:
    """The log's events attributed to `experiment`, one row each: user_id, variant, day and the
    metric columns (0/1 per event; watch_time in seconds). Empty when none."""
    missing = {"user_id", "type", "value", "ts", "experiments"} - set(events.columns)
    if missing:
        raise DataError(f"event log lacks columns: {', '.join(sorted(missing))}")
    ev = events.filter(pl.col("experiments").is_not_null())
    pairs = []
    for js in ev["experiments"].unique().to_list():
        try:
            record = json.loads(js)
        except ValueError:
            continue
        for a in record.values() if isinstance(record, dict) else ():
            if isinstance(a, dict) and a.get("experiment") == experiment:
                pairs.append((js, str(a.get("variant"))))
    schema = {"experiments": pl.Utf8, "variant": pl.Utf8}
    mapping = pl.DataFrame(pairs, schema=schema, orient="row")
    t = ev.join(mapping, on="experiments")
    return t.select(
        pl.col("user_id").cast(pl.Utf8), "variant", (pl.col("ts") // 86400).alias("day"),
        *((pl.col("type") == ty).cast(pl.Float64).alias(col) for col, ty in _TYPES.items()),
        (pl.col("type") == "click").cast(pl.Float64).alias("clicked"),
        pl.when(pl.col("type") == "watch_time").then(pl.col("value")).otherwise(0.0).cast(pl.Float64)
        .alias("watch_time"),
    )


def experiment_users(table: pl.DataFrame) -> dict[str, int]:
    """Users per variant in a `log_table`."""
    got = table.group_by("variant").agg(pl.col("user_id").n_unique().alias("n")).sort("variant")
    return dict(zip(got["variant"].to_list(), got["n"].to_list()))


def log_report(events: pl.DataFrame, experiment: str, control: str, shares: dict[str, float] | None = None,
               metrics: tuple[MetricSpec, ...] = LOG_METRICS, alpha: float = 0.05) -> tuple[Report | None, str | None]:
    """(`build_report` of the experiment's logged events, None) — or (None, why not) when the
    log cannot support a test yet (no events, one arm, fewer than two users in an arm, …).
    `shares`: the configured traffic share per variant (`ExperimentPlatform.traffic_shares`),
    the expected split of the sample-ratio check (variants without data are left out)."""
    table = log_table(events, experiment)
    if table.is_empty():
        return None, "no logged events of this experiment yet"
    users = experiment_users(table)
    expected: dict[str, Any] = {}
    if shares:
        expected = {v: shares[v] for v in users if v in shares and shares[v] > 0}
        if set(expected) != set(users):
            expected = {}  # a variant in the log that the config no longer gives traffic: equal split
    cfg = ReportConfig(metrics=metrics, control=control, expected_shares=expected, alpha=alpha,
                       title=f"experiment {experiment}")
    try:
        return build_report(table, cfg), None
    except DataError as e:
        return None, str(e)
