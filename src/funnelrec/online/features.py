"""The feature service (issue #10 item 2): windowed counters, recent categories and profiles,
defined once and computed both ways — from the event log as of a time t (what training reads)
and from the event stream at request time (what serving reads) — so that the two cannot drift.

Definitions (a `FeatureConfig` fixes every constant):

- **Windowed counts.** A window w has a span S_w and a bucket B_w (S_w a multiple of B_w,
  n_w = S_w / B_w buckets). As of time t it covers the n_w *complete* buckets before the one
  that holds t:

      lo_w(t) = (⌊t / B_w⌋ − n_w) · B_w,    hi_w(t) = ⌊t / B_w⌋ · B_w
      count_w(x, type, t) = #{events e of entity x and type: lo_w(t) ≤ e.ts < hi_w(t)}

  An event exactly at lo_w(t) counts, one exactly at hi_w(t) does not (it opens the current
  bucket). Defaults: 1h = 12 × 5 min, 1d = 24 × 1 h, 7d = 28 × 6 h.
- **Smoothed CTR** per window: ctr_w = (click_w + α · p0) / (impression_w + α), a Beta(α·p0,
  α·(1−p0)) prior's posterior mean; an item with no impressions gets p0, one with many its
  empirical CTR. (Clicks logged without impressions can push it above 1; that is the log's fact.)
- **Recent categories** of a user as of t: the last `recent_n` distinct values of the item
  column `category_column` among the user's consumptions (`state.enters_history`: click, like,
  cart, purchase, watch_time > 0 s) with e.ts ≤ t, most recent first; a value's recency is its
  latest consumption, ties broken by value, larger string first. A multi-valued column gives
  every value of the item. `category_column=None` turns it off; there is no default column.
- **Profile**: the user's row of the dataset's users table (every column but the index).

Why bucketed windows and not exact sliding ones: an exact window needs every event's time for
7 days (a popular item: millions of timestamps per item, and a Redis sorted set per item and
type); buckets need n_w counters per window and type — 64 per type per item with the defaults,
one HINCRBY per event and window to update, one HGETALL per item to read. The price is
freshness: a window advances bucket by bucket, so an event enters count_w up to B_w after it
happened (5 min for the 1h window). Counting only complete buckets is what makes the
definition usable for training: the features as of an impression at t never contain that
impression's own click (which would be a label leak), and the definition is a function of the
event set and t alone, independent of the order the events arrive in.

Exactness of the online side: every event the service is given is counted, whatever its arrival
order. Buckets older than the windows of `watermark − lateness_s` are deleted (watermark: the
latest event time seen, never later than the wall clock), so an online answer at `now` is exact
for now ≥ watermark − lateness_s; training reads the log (`offline_item_features`), never the
service. Recent categories keep each value's latest consumption, `recent_n` values per user:
exact at a `now` no earlier than the user's latest consumption (events never arrive before they
happen, so always at request time).

Backends (the same names as the other state stores, `FEATURE_BACKENDS`):
- "memory" — dicts (one process; tests);
- "sqlite" — `{state_dir}/features.db`: counters(entity, window, bucket, type, n) and
  recent(user, value, ts); an update is one transaction (UPSERT n = n + Δ, ts = max(ts, Δ));
- "redis"  — one hash per entity `{prefix}features:{entity}` with fields `{window}:{bucket}:{type}`
  (HINCRBY; a Lua script adds a batch's increments, prunes old buckets once the hash grows past
  its bound, and resets the key's TTL) plus rolling window totals `#H:{window}`, `#T:{window}:{type}`
  (a read is one HMGET per item while no window moves a bucket; see `_REDIS_SUMS`), one sorted set `{prefix}features:recent:{user}` (ZADD GT
  score = ts, trimmed to `recent_n`). Every worker sees the same counters; an entity with no
  event for max span + lateness expires without a sweep.

    >>> cfg = FeatureConfig(windows=(("1h", 3600, 600),), count_types=("impression", "click"),
    ...                     ctr_prior=0.1, ctr_strength=10.0)
    >>> fs = FeatureService(cfg)
    >>> fs.update([_Ev("u1", "7", "impression", 1.0, 0), _Ev("u1", "7", "click", 1.0, 5), _Ev("u1", "7", "click", 1.0, 600)])
    3
    >>> fs.item_features(["7"], now=601).row(0, named=True)   # the bucket [600, 1200) is not complete yet
    {'item_id': '7', 'impression_1h': 1, 'click_1h': 1, 'ctr_1h': 0.18181818181818182}
"""

from __future__ import annotations

import re
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import polars as pl

from funnelrec.core.errors import ArtifactError, ConfigError, DataError, FunnelrecError
from funnelrec.core.ids import item_key, item_keys
from funnelrec.core.registry import Registry
from funnelrec.core.sqlite import enable_wal
from funnelrec.filter.store import state_location
from funnelrec.online.state import HISTORY_TYPES, enters_history

__all__ = ["FeatureConfig", "FeatureService", "UserFeatures", "FEATURE_BACKENDS", "window_bounds",
           "offline_item_features", "offline_item_features_at", "interactions_as_events", "offline_user_features", "build_feature_service"]

HOUR, DAY = 3600, 86400
#: (name, span s, bucket s): the windows of the issue — 1 h in 5-minute buckets, 1 d in hours, 7 d in 6 h
DEFAULT_WINDOWS = (("1h", HOUR, 300), ("1d", DAY, HOUR), ("7d", 7 * DAY, 6 * HOUR))
_NAME = re.compile(r"^[A-Za-z0-9_]+$")
_EVENT_COLUMNS = ("user_id", "item_id", "type", "value", "ts")

FEATURE_BACKENDS: Registry[Any] = Registry("feature backend")


class _Ev(NamedTuple):
    """The fields of an event the features read (a `FeedbackEvent` has them too)."""

    user_id: str
    item_id: str
    type: str
    value: float
    ts: int


@dataclass(frozen=True)
class FeatureConfig:
    """The definition of every online feature (module doc).

    windows         ((name, span_s, bucket_s), …): span a multiple of bucket; names [A-Za-z0-9_]
    count_types     event types counted per item and per user in each window
    ctr_prior       p0 of the smoothed CTR, in [0, 1]
    ctr_strength    α > 0: pseudo-impressions of the prior
    category_column the item column of a user's recent categories; None = off
    recent_n        recent categories kept and served per user
    lateness_s      how far behind the latest event an online query may still be exact
    """

    windows: tuple[tuple[str, int, int], ...] = DEFAULT_WINDOWS
    count_types: tuple[str, ...] = ("impression", "click", "like", "purchase")
    ctr_prior: float = 0.05
    ctr_strength: float = 20.0
    category_column: str | None = None
    recent_n: int = 10
    lateness_s: int = HOUR

    def __post_init__(self) -> None:
        from funnelrec.pipeline.eventlog import EVENT_TYPES

        object.__setattr__(self, "windows", tuple(tuple(w) for w in self.windows))
        object.__setattr__(self, "count_types", tuple(self.count_types))
        if not self.windows:
            raise ConfigError("features.windows must name at least one (name, span_s, bucket_s)")
        names = set()
        for w in self.windows:
            if len(w) != 3:
                raise ConfigError(f"features.windows: each window is (name, span_s, bucket_s), got {w!r}")
            name, span, bucket = w
            if not isinstance(name, str) or not _NAME.match(name) or name in names:
                raise ConfigError(f"features.windows: name {name!r} must be unique [A-Za-z0-9_]+")
            names.add(name)
            ints = all(isinstance(v, int) and not isinstance(v, bool) for v in (span, bucket))
            if not ints or bucket < 1 or span < bucket or span % bucket:
                raise ConfigError(f"features.windows[{name}]: span_s {span!r} must be a positive int multiple "
                                  f"of bucket_s {bucket!r}")
        bad = [t for t in self.count_types if t not in EVENT_TYPES]
        if bad or not self.count_types or len(set(self.count_types)) != len(self.count_types):
            raise ConfigError(f"features.count_types must be distinct event types of {', '.join(EVENT_TYPES)}, "
                              f"got {list(self.count_types)}")
        if not 0.0 <= self.ctr_prior <= 1.0:
            raise ConfigError(f"features.ctr_prior must be in [0, 1], got {self.ctr_prior!r}")
        if not self.ctr_strength > 0:
            raise ConfigError(f"features.ctr_strength must be > 0, got {self.ctr_strength!r}")
        if self.category_column is not None and (not isinstance(self.category_column, str) or not self.category_column):
            raise ConfigError(f"features.category_column must be an item column name or None, got "
                              f"{self.category_column!r}")
        if isinstance(self.recent_n, bool) or not isinstance(self.recent_n, int) or self.recent_n < 1:
            raise ConfigError(f"features.recent_n must be an int ≥ 1, got {self.recent_n!r}")
        if isinstance(self.lateness_s, bool) or not isinstance(self.lateness_s, int) or self.lateness_s < 0:
            raise ConfigError(f"features.lateness_s must be an int ≥ 0, got {self.lateness_s!r}")

    @property
    def has_ctr(self) -> bool:
        return "impression" in self.count_types and "click" in self.count_types

    def columns(self) -> list[str]:
        """The item/user count columns, then (items) the CTR columns: `{type}_{window}`, `ctr_{window}`."""
        cols = [f"{t}_{w}" for w, _, _ in self.windows for t in self.count_types]
        return cols + ([f"ctr_{w}" for w, _, _ in self.windows] if self.has_ctr else [])

    def max_span(self) -> int:
        return max(s for _, s, _ in self.windows)

    def min_buckets(self, watermark: int) -> dict[str, int]:
        """Per window, the oldest bucket an exact answer at now ≥ watermark − lateness_s reads."""
        at = max(0, int(watermark) - self.lateness_s)
        return {w: at // b - s // b for w, s, b in self.windows}

    def bucket_bound(self) -> int:
        """The live fields of one entity: Σ_w (n_w + lateness / B_w + 2) × types — what a hash may hold
        before old buckets are pruned."""
        return sum(s // b + -(-self.lateness_s // b) + 2 for _, s, b in self.windows) * len(self.count_types)


def window_bounds(t: int, span_s: int, bucket_s: int) -> tuple[int, int]:
    """[lo, hi) of a window as of t: the span_s / bucket_s complete buckets before t's bucket."""
    hi = (int(t) // bucket_s) * bucket_s
    return hi - span_s, hi


def smoothed_ctr(clicks: np.ndarray, impressions: np.ndarray, cfg: FeatureConfig) -> np.ndarray:
    """(clicks + α·p0) / (impressions + α), float64."""
    a = float(cfg.ctr_strength)
    return (np.asarray(clicks, np.float64) + a * cfg.ctr_prior) / (np.asarray(impressions, np.float64) + a)


def _check_now(now: Any) -> int:
    if isinstance(now, bool) or not isinstance(now, int | np.integer) or now < 0:
        raise DataError(f"now must be an int unix time in seconds ≥ 0, got {now!r}")
    return int(now)


# ------------------------------------------------------------------ the catalogue lookups
class _Catalogue:
    """Item key → its category values (str), user id → profile row: from the dataset's tables."""

    def __init__(self, cfg: FeatureConfig, items: pl.DataFrame | None, users: pl.DataFrame | None) -> None:
        self.items, self.users = items, users
        self.categories: dict[int, tuple[str, ...]] = {}
        col = cfg.category_column
        if col is not None and items is not None:
            if col not in items.columns:
                known = ", ".join(c for c in items.columns if c not in ("item_id", "item_idx"))
                raise ConfigError(f"features.category_column: {col!r} is not an item column (the items table "
                                  f"has: {known})")
            for iid, v in zip(items["item_id"].to_list(), items[col].to_list()):
                vals = () if v is None else tuple(str(x) for x in v if x is not None) if isinstance(v, list) else (str(v),)
                self.categories[item_key(iid)] = tuple(dict.fromkeys(vals))
        self._profiles: dict[str, dict[str, Any]] | None = None

    def profile(self, user_id: str) -> dict[str, Any] | None:
        if self.users is None:
            return None
        if self._profiles is None:
            cols = [c for c in self.users.columns if c != "user_idx"]
            self._profiles = {str(r["user_id"]): r for r in self.users.select(cols).iter_rows(named=True)}
        return self._profiles.get(str(user_id))


def _events_frame(events: pl.DataFrame | Iterable[Any]) -> pl.DataFrame:
    """The event columns the features read (user_id, item_id, type, value, ts) of a log table or a
    list of events (FeedbackEvent or anything with those attributes)."""
    if isinstance(events, pl.DataFrame):
        missing = [c for c in _EVENT_COLUMNS if c not in events.columns]
        if missing:
            raise DataError(f"event table: missing columns {missing} (the EventLog.read() schema)")
        dtypes = {"user_id": pl.Utf8, "item_id": pl.Utf8, "type": pl.Utf8, "value": pl.Float64, "ts": pl.Int64}
        out = {}
        for c, dt in dtypes.items():
            try:
                out[c] = events[c].cast(dt, strict=True)
            except pl.exceptions.PolarsError:
                raise DataError(f"event table: column {c!r} ({events.schema[c]}) cannot be read as {dt}") from None
            if c in ("user_id", "item_id", "type", "ts") and out[c].null_count():
                raise DataError(f"event table: column {c!r} has {out[c].null_count()} nulls")
        return pl.DataFrame(out)
    rows = [(str(e.user_id), str(e.item_id), str(e.type), float(e.value), int(e.ts)) for e in events]
    return pl.DataFrame(rows, schema={"user_id": pl.Utf8, "item_id": pl.Utf8, "type": pl.Utf8,
                                      "value": pl.Float64, "ts": pl.Int64}, orient="row")


def _consumptions(ev: pl.DataFrame) -> pl.DataFrame:
    """The rows of `ev` that are consumptions (`enters_history`, vectorized)."""
    return ev.filter(pl.col("type").is_in(list(HISTORY_TYPES))
                     & ((pl.col("type") != "watch_time") | (pl.col("value") > 0)))


@dataclass(frozen=True)
class UserFeatures:
    """A user's features as of `now`: counts {`{type}_{window}`: int}, recent_categories (most
    recent first), profile (the users-table row; None for a user not in it)."""

    user_id: str
    now: int
    counts: dict[str, int]
    recent_categories: list[str] | None
    profile: dict[str, Any] | None = field(default=None)

    def to_dict(self) -> dict[str, Any]:
        return {"user_id": self.user_id, "now": self.now, "counts": self.counts,
                "recent_categories": self.recent_categories, "profile": self.profile}


def _count_columns(cfg: FeatureConfig, sums: dict[tuple[str, str], np.ndarray], n: int) -> dict[str, np.ndarray]:
    out = {}
    for w, _, _ in cfg.windows:
        for t in cfg.count_types:
            out[f"{t}_{w}"] = sums.get((w, t), np.zeros(n, np.int64))
    if cfg.has_ctr:
        for w, _, _ in cfg.windows:
            out[f"ctr_{w}"] = smoothed_ctr(out[f"click_{w}"], out[f"impression_{w}"], cfg)
    return out


def _frame(ids: list, cols: dict[str, np.ndarray], cfg: FeatureConfig) -> pl.DataFrame:
    data: dict[str, Any] = {"item_id": pl.Series("item_id", [str(i) for i in ids], pl.Utf8)}
    for c in cfg.columns():
        data[c] = pl.Series(c, cols[c], pl.Float64 if c.startswith("ctr_") else pl.Int64)
    return pl.DataFrame(data)


def _recent(pairs: Iterable[tuple[str, int]], now: int, n: int) -> list[str]:
    """The n most recent values with ts ≤ now; ties: larger value first."""
    kept = sorted(((ts, v) for v, ts in pairs if ts <= now), reverse=True)
    return [v for _, v in kept[:n]]


# ------------------------------------------------------------------ offline: from the log, as of t
def offline_item_features(events: pl.DataFrame, item_ids: Sequence[Any], t: int,
                          config: FeatureConfig | None = None) -> pl.DataFrame:
    """The item features of `item_ids` as of `t` from an event table (the schema of
    `EventLog.read()`): one row per id, columns item_id and `config.columns()` — what training
    reads, equal to `FeatureService.item_features` fed the same events."""
    cfg, t = config or FeatureConfig(), _check_now(t)
    ev = _events_frame(events)
    keys = np.fromiter((item_key(i) for i in item_ids), np.int64, len(item_ids))
    ev = ev.with_columns(pl.Series("key", item_keys(ev["item_id"].to_numpy()), pl.Int64))
    sums = _offline_sums(ev, "key", pl.Series(keys), t, cfg)
    return _frame(list(item_ids), _count_columns(cfg, sums, len(keys)), cfg)


def offline_item_features_at(events: pl.DataFrame, samples: pl.DataFrame, config: FeatureConfig | None = None
                             ) -> pl.DataFrame:
    """Point-in-time item features of training samples: `samples` has columns item_id and ts (one
    row per sample, each as of its own ts); returns item_id, ts and `config.columns()`, row r the
    features of sample r — row by row equal to `offline_item_features(events, [item_id], ts)`.

    Vectorized: events sorted by (item, type, ts) under one int64 key rank·(MAX_TS + 1) + ts, so
    each window count is the difference of two `searchsorted` (O((E + S) log E) for E events,
    S samples)."""
    from funnelrec.pipeline.eventlog import MAX_TS

    cfg = config or FeatureConfig()
    for c in ("item_id", "ts"):
        if c not in samples.columns:
            raise DataError(f"samples: missing column {c!r} (item_id, ts: one row per training sample)")
    ts = samples["ts"].cast(pl.Int64).to_numpy()
    if len(ts) and (ts.min() < 0 or ts.max() > MAX_TS):
        raise DataError(f"samples: ts must be unix seconds in [0, {MAX_TS}]")
    skeys = item_keys(samples["item_id"].cast(pl.Utf8).to_numpy())
    ev = _events_frame(events).filter(pl.col("type").is_in(list(cfg.count_types)))
    ekeys = item_keys(ev["item_id"].to_numpy())
    universe = np.unique(np.concatenate([ekeys, skeys]))
    scale = MAX_TS + 1
    types = {t: k for k, t in enumerate(cfg.count_types)}
    if (len(universe) * len(types) + len(types)) * scale >= 1 << 63:
        raise DataError(f"offline_item_features_at: {len(universe)} items × {len(types)} types is too many for one "
                        "int64 sort key; split the samples by item")
    # rank · |types| + type, then · (MAX_TS + 1) + ts: 1e7 items × 8 types × 1e11 s stays < 2^63
    erank = np.searchsorted(universe, ekeys) * len(types) + np.array([types[t] for t in ev["type"].to_list()], np.int64)
    comp = np.sort(erank * scale + ev["ts"].to_numpy())
    srank = np.searchsorted(universe, skeys) * len(types)
    sums = {}
    for w, span, bucket in cfg.windows:
        hi = (ts // bucket) * bucket
        lo = hi - span
        for typ, k in types.items():
            base = (srank + k) * scale
            sums[(w, typ)] = (np.searchsorted(comp, base + hi) - np.searchsorted(comp, base + np.maximum(lo, 0)))
    cols = _count_columns(cfg, {k: v.astype(np.int64) for k, v in sums.items()}, len(ts))
    return _frame(samples["item_id"].to_list(), cols, cfg).insert_column(1, pl.Series("ts", ts, pl.Int64))


def interactions_as_events(interactions: pl.DataFrame, event_type: str = "click") -> pl.DataFrame:
    """A dataset's interactions table (user_id, item_id, timestamp) as an event table of
    `event_type` events (value 1.0): how a training log without impressions (ml-100k's ratings)
    enters the same definitions — every counter but `event_type`'s is 0 there, so a CTR feature
    trained on it would only be the prior's rescaled click count (see the module doc)."""
    from funnelrec.pipeline.eventlog import EVENT_TYPES

    if event_type not in EVENT_TYPES:
        raise ConfigError(f"event_type must be one of {', '.join(EVENT_TYPES)}, got {event_type!r}")
    missing = [c for c in ("user_id", "item_id", "timestamp") if c not in interactions.columns]
    if missing:
        raise DataError(f"interactions: missing columns {missing}")
    return interactions.select(pl.col("user_id").cast(pl.Utf8), pl.col("item_id").cast(pl.Utf8),
                               pl.lit(event_type).alias("type"), pl.lit(1.0).alias("value"),
                               pl.col("timestamp").cast(pl.Int64).alias("ts"))


def _offline_sums(ev: pl.DataFrame, by: str, wanted: pl.Series, t: int, cfg: FeatureConfig
                  ) -> dict[tuple[str, str], np.ndarray]:
    ev = ev.filter(pl.col(by).is_in(wanted.implode()) & pl.col("type").is_in(list(cfg.count_types)))
    base = pl.DataFrame({by: wanted})
    out = {}
    for w, span, bucket in cfg.windows:
        lo, hi = window_bounds(t, span, bucket)
        got = (ev.filter((pl.col("ts") >= lo) & (pl.col("ts") < hi)).group_by(by, "type").len()
               .pivot(on="type", index=by, values="len"))
        joined = base.join(got, on=by, how="left", maintain_order="left")
        for typ in cfg.count_types:
            col = joined[typ] if typ in joined.columns else pl.Series(typ, [0] * len(wanted))
            out[(w, typ)] = col.fill_null(0).cast(pl.Int64).to_numpy()
    return out


def offline_user_features(events: pl.DataFrame, user_id: Any, t: int, config: FeatureConfig | None = None,
                          items: pl.DataFrame | None = None, users: pl.DataFrame | None = None) -> UserFeatures:
    """The features of `user_id` as of `t` from an event table (`EventLog.read()` schema): window
    counts, recent categories (needs `items` when `config.category_column` is set), profile (from
    `users`). Equal to `FeatureService.user_features` fed the same events."""
    cfg, t = config or FeatureConfig(), _check_now(t)
    cat = _Catalogue(cfg, items, users)
    uid = str(user_id)
    ev = _events_frame(events).filter(pl.col("user_id") == uid)
    sums = _offline_sums(ev, "user_id", pl.Series([uid]), t, cfg)
    counts = {f"{typ}_{w}": int(sums[(w, typ)][0]) for w, _, _ in cfg.windows for typ in cfg.count_types}
    recent = None
    if cfg.category_column is not None:
        latest: dict[str, int] = {}
        c = _consumptions(ev.filter(pl.col("ts") <= t))
        for iid, ts in zip(c["item_id"].to_list(), c["ts"].to_list()):
            for v in cat.categories.get(item_key(iid), ()):
                latest[v] = max(latest.get(v, ts), ts)
        recent = _recent(latest.items(), t, cfg.recent_n)
    return UserFeatures(uid, t, counts, recent, cat.profile(uid))


# ------------------------------------------------------------------ online: the counter backends
class CounterBackend:
    """Where the counters live. increments: {entity: {(window, bucket, type): Δ}}; recent:
    {user: {value: ts}}; min_buckets: {window: oldest bucket still needed}. Thread-safe.

    apply(increments, recent, min_buckets)   add a batch (one transaction where the store has them)
    counts(entities) → [{(window, bucket, type): n}]
    recent(user) → [(value, ts)]             the user's kept values, each at its latest consumption
    """

    registered_name = "feature backend"

    def __init__(self, cfg: FeatureConfig) -> None:
        self.cfg = cfg
        self._closed = False

    @classmethod
    def from_state(cls, cfg: FeatureConfig, *, state_dir: str | Path | None = None, redis_url: str | None = None,
                   prefix: str = "funnelrec:") -> CounterBackend:
        raise NotImplementedError

    def _check_open(self) -> None:
        if self._closed:
            raise FunnelrecError(f"{type(self).__name__} is closed")

    def apply(self, increments: dict, recent: dict, min_buckets: dict[str, int]) -> None:
        raise NotImplementedError

    def counts(self, entities: list[str]) -> list[dict[tuple[str, int, str], int]]:
        raise NotImplementedError

    def recent(self, user: str) -> list[tuple[str, int]]:
        raise NotImplementedError

    def sums(self, entities: list[str], now: int, slot: dict[tuple[str, int, str], int], n_cols: int) -> np.ndarray:
        """(E, n_cols) int64: per entity, Σ of its counters (window, bucket, type) into column
        slot[…]; counters without a slot are not read."""
        acc = np.zeros((len(entities), n_cols), np.int64)
        for i, h in enumerate(self.counts(entities)):
            row = acc[i]
            for f, c in h.items():
                j = slot.get(f)
                if j is not None:
                    row[j] += c
        return acc

    def close(self) -> None:
        self._closed = True


@FEATURE_BACKENDS.register("memory")
class MemoryCounters(CounterBackend):
    """Dicts, lost on exit; one lock."""

    def __init__(self, cfg: FeatureConfig) -> None:
        super().__init__(cfg)
        self._counts: dict[str, dict[tuple[str, int, str], int]] = {}
        self._recent: dict[str, dict[str, int]] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_state(cls, cfg: FeatureConfig, *, state_dir: str | Path | None = None, redis_url: str | None = None,
                   prefix: str = "funnelrec:") -> MemoryCounters:
        return cls(cfg)

    def apply(self, increments: dict, recent: dict, min_buckets: dict[str, int]) -> None:
        bound = self.cfg.bucket_bound()
        with self._lock:
            self._check_open()
            for ent, inc in increments.items():
                h = self._counts.setdefault(ent, {})
                for f, d in inc.items():
                    h[f] = h.get(f, 0) + d
                if len(h) > bound:  # amortized: the same pruning rule as the Redis script
                    for f in [f for f in h if f[1] < min_buckets[f[0]]]:
                        del h[f]
            for user, vals in recent.items():
                r = self._recent.setdefault(user, {})
                for v, ts in vals.items():
                    r[v] = max(r.get(v, ts), ts)
                if len(r) > self.cfg.recent_n:
                    keep = sorted(((ts, v) for v, ts in r.items()), reverse=True)[: self.cfg.recent_n]
                    self._recent[user] = {v: ts for ts, v in keep}

    def counts(self, entities: list[str]) -> list[dict[tuple[str, int, str], int]]:
        with self._lock:
            self._check_open()
            return [dict(self._counts.get(e, {})) for e in entities]

    def recent(self, user: str) -> list[tuple[str, int]]:
        with self._lock:
            self._check_open()
            return list(self._recent.get(user, {}).items())


_SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS counters (
    entity TEXT NOT NULL, window TEXT NOT NULL, bucket INTEGER NOT NULL, type TEXT NOT NULL,
    n INTEGER NOT NULL, PRIMARY KEY (entity, window, bucket, type)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS recent (
    user TEXT NOT NULL, value TEXT NOT NULL, ts INTEGER NOT NULL, PRIMARY KEY (user, value)) WITHOUT ROWID;
"""


@FEATURE_BACKENDS.register("sqlite")
class SQLiteCounters(CounterBackend):
    """Two tables in one SQLite file (WAL, synchronous=NORMAL: a returned update survives SIGKILL).
    An update is one BEGIN IMMEDIATE … COMMIT, so the workers sharing the file never lose one."""

    def __init__(self, cfg: FeatureConfig, path: str | Path) -> None:
        super().__init__(cfg)
        self.path = Path(path)
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30.0)
            enable_wal(self._db)  # retried: replicas may open the same new file at once (core/sqlite.py)
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SQLITE_SCHEMA)
        except sqlite3.DatabaseError as e:
            raise ArtifactError(f"feature store {self.path} is not a usable SQLite database: {e}") from None

    @classmethod
    def from_state(cls, cfg: FeatureConfig, *, state_dir: str | Path | None = None, redis_url: str | None = None,
                   prefix: str = "funnelrec:") -> SQLiteCounters:
        return cls(cfg, Path(state_location(state_dir, "sqlite", "state_dir")) / "features.db")

    def apply(self, increments: dict, recent: dict, min_buckets: dict[str, int]) -> None:
        rows = [(e, w, b, t, d) for e, inc in increments.items() for (w, b, t), d in inc.items()]
        prune = [(e, w, m) for e in increments for w, m in min_buckets.items()]
        rec = [(u, v, ts) for u, vals in recent.items() for v, ts in vals.items()]
        with self._lock:
            self._check_open()
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(
                    "INSERT INTO counters VALUES (?, ?, ?, ?, ?) ON CONFLICT (entity, window, bucket, type) "
                    "DO UPDATE SET n = n + excluded.n", rows)
                self._db.executemany("DELETE FROM counters WHERE entity = ? AND window = ? AND bucket < ?", prune)
                self._db.executemany("INSERT INTO recent VALUES (?, ?, ?) ON CONFLICT (user, value) "
                                     "DO UPDATE SET ts = max(ts, excluded.ts)", rec)
                self._db.executemany(
                    "DELETE FROM recent WHERE user = ?1 AND value NOT IN (SELECT value FROM recent WHERE user = ?1 "
                    "ORDER BY ts DESC, value DESC LIMIT ?2)", [(u, self.cfg.recent_n) for u in recent])
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def counts(self, entities: list[str]) -> list[dict[tuple[str, int, str], int]]:
        out: dict[str, dict] = {e: {} for e in entities}
        with self._lock:
            self._check_open()
            for i in range(0, len(entities), 500):
                chunk = entities[i:i + 500]
                q = f"SELECT entity, window, bucket, type, n FROM counters WHERE entity IN ({','.join('?' * len(chunk))})"
                for e, w, b, t, n in self._db.execute(q, chunk):
                    out[e][(w, b, t)] = n
        return [out[e] for e in entities]

    def recent(self, user: str) -> list[tuple[str, int]]:
        with self._lock:
            self._check_open()
            return [(v, ts) for v, ts in self._db.execute("SELECT value, ts FROM recent WHERE user = ?", (user,))]

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._db.close()
        super().close()


# Rolling window totals. Besides its bucket fields `{w}:{b}:{type}`, an entity's hash may hold, per
# window w, a head `#H:{w}` = h and totals `#T:{w}:{type}` = Σ of the buckets [h − n_w, h). A read
# at hi = ⌊now/B_w⌋ uses them as they are (hi = h: n_types fields, not n_w · n_types), moves them
# by the buckets that entered and left (h < hi < h + n_w), or recomputes them (no head, or a jump
# of ≥ n_w); a read in the past (hi < h) sums the buckets and leaves the totals alone. A write adds
# each increment to the totals too when its bucket lies inside [h − n_w, h) (a late event); a
# bucket ≥ h is added when the head passes it. Pruning deletes a head whose window still counts a
# pruned bucket, so a total is never moved past a bucket it can no longer subtract.

# KEYS[1] the entity's hash. ARGV: ttl, k, k × (window, bucket, type, Δ), bound, then
# (window, min bucket, n buckets) triples.
_REDIS_APPLY = """
local key = KEYS[1]
local k = tonumber(ARGV[2])
local j = 3 + 4 * k
local mins, lens, heads = {}, {}, {}
for a = j + 1, #ARGV, 3 do
  local w = ARGV[a]
  mins[w] = tonumber(ARGV[a + 1]); lens[w] = tonumber(ARGV[a + 2])
  heads[w] = tonumber(redis.call('HGET', key, '#H:' .. w))
end
for i = 0, k - 1 do
  local w, b, t, d = ARGV[3 + 4 * i], ARGV[4 + 4 * i], ARGV[5 + 4 * i], ARGV[6 + 4 * i]
  redis.call('HINCRBY', key, w .. ':' .. b .. ':' .. t, d)
  local h, nb = heads[w], tonumber(b)
  if h and h - lens[w] <= nb and nb < h then redis.call('HINCRBY', key, '#T:' .. w .. ':' .. t, d) end
end
if redis.call('HLEN', key) > tonumber(ARGV[j]) then
  for _, f in ipairs(redis.call('HKEYS', key)) do
    local w, b = string.match(f, '^([^:#]+):(%-?%d+):')
    if w and mins[w] and tonumber(b) < mins[w] then redis.call('HDEL', key, f) end
  end
  for w, h in pairs(heads) do
    if h - lens[w] < mins[w] then redis.call('HDEL', key, '#H:' .. w) end
  end
end
redis.call('EXPIRE', key, ARGV[1])
return 0
"""

# KEYS: the entities' hashes. ARGV: nw, nt, nw × (window, n buckets, hi), nt types. Returns, per
# key, per window, per type, the window's count (flattened): only the sums travel.
_REDIS_SUMS = """
local nw, nt = tonumber(ARGV[1]), tonumber(ARGV[2])
local types = {}
for t = 1, nt do types[t] = ARGV[2 + 3 * nw + t] end
local function zeros() local z = {} for t = 1, nt do z[t] = 0 end return z end
local function add_range(key, w, lo, hi, acc)
  local names = {}
  for b = lo, hi - 1 do
    local bs = string.format('%d', b)
    for t = 1, nt do names[#names + 1] = w .. ':' .. bs .. ':' .. types[t] end
  end
  for a = 1, #names, 4000 do
    local vals = redis.call('HMGET', key, unpack(names, a, math.min(a + 3999, #names)))
    for i = 1, #vals do
      if vals[i] then local t = (a + i - 2) % nt + 1; acc[t] = acc[t] + tonumber(vals[i]) end
    end
  end
end
-- one HMGET per key for every head and total: the whole read while no window moves
local names = {}
for j = 1, nw do names[j] = '#H:' .. ARGV[3 * j] end
for j = 1, nw do for t = 1, nt do names[nw + (j - 1) * nt + t] = '#T:' .. ARGV[3 * j] .. ':' .. types[t] end end
local out = {}
for k = 1, #KEYS do
  local key = KEYS[k]
  local vals = redis.call('HMGET', key, unpack(names))
  local exists = nil
  for j = 1, nw do
    local w = ARGV[3 * j]
    local n, hi = tonumber(ARGV[3 * j + 1]), tonumber(ARGV[3 * j + 2])
    local h = tonumber(vals[j])
    local tot = zeros()
    if h and h <= hi and hi - h < n then
      for t = 1, nt do tot[t] = tonumber(vals[nw + (j - 1) * nt + t]) or 0 end
      if hi > h then
        local sub = zeros()
        add_range(key, w, h, hi, tot)
        add_range(key, w, h - n, hi - n, sub)
        for t = 1, nt do tot[t] = tot[t] - sub[t] end
      end
    else
      if exists == nil then exists = redis.call('EXISTS', key) == 1 end
      if exists then add_range(key, w, hi - n, hi, tot) end
    end
    if (not h and exists) or (h and hi > h) then  -- never create a key (it would have no TTL)
      for t = 1, nt do redis.call('HSET', key, names[nw + (j - 1) * nt + t], string.format('%d', tot[t])) end
      redis.call('HSET', key, names[j], string.format('%d', hi))
    end
    for t = 1, nt do out[#out + 1] = tot[t] end
  end
end
return out
"""


@FEATURE_BACKENDS.register("redis")
class RedisCounters(CounterBackend):
    """Hashes and sorted sets in Redis (module doc): an update is one pipelined round trip (one
    script call per entity, ZADD GT + ZREMRANGEBYRANK + EXPIRE per user); a read of N items is one
    script call over rolling window totals (n_types fields per window and item while no window
    moves a bucket)."""

    def __init__(self, cfg: FeatureConfig, url: str, prefix: str = "funnelrec:") -> None:
        super().__init__(cfg)
        import redis

        self._redis_mod = redis
        self.prefix = prefix + "features:"
        self.where = url
        self._client = redis.Redis.from_url(url)
        try:
            self._client.ping()
        except redis.RedisError as e:
            raise ConfigError(f"cannot reach Redis at {url}: {e}") from None
        self._script = self._client.register_script(_REDIS_APPLY)
        self._sums = self._client.register_script(_REDIS_SUMS)
        self._parsed: dict[bytes, tuple[str, int, str]] = {}
        self.ttl_s = cfg.max_span() + max(b for _, _, b in cfg.windows) + cfg.lateness_s

    @classmethod
    def from_state(cls, cfg: FeatureConfig, *, state_dir: str | Path | None = None, redis_url: str | None = None,
                   prefix: str = "funnelrec:") -> RedisCounters:
        return cls(cfg, state_location(redis_url, "redis", "redis_url"), prefix)

    def apply(self, increments: dict, recent: dict, min_buckets: dict[str, int]) -> None:
        self._check_open()
        cfg = self.cfg
        lens = {w: span // b for w, span, b in cfg.windows}
        bound = cfg.bucket_bound() + len(cfg.windows) * (len(cfg.count_types) + 1)  # + heads and totals
        tail = [bound] + [x for w, m in min_buckets.items() for x in (w, m, lens[w])]
        try:
            with self._client.pipeline(transaction=False) as pipe:
                for ent, inc in increments.items():
                    args = [self.ttl_s, len(inc)] + [x for (w, b, t), d in inc.items() for x in (w, b, t, d)]
                    self._script(keys=[self.prefix + ent], args=args + tail, client=pipe)
                for user, vals in recent.items():
                    key = f"{self.prefix}recent:{user}"
                    pipe.zadd(key, {v: ts for v, ts in vals.items()}, gt=True)
                    pipe.zremrangebyrank(key, 0, -(self.cfg.recent_n + 1))
                    pipe.expire(key, self.ttl_s)
                pipe.execute()
        except self._redis_mod.ResponseError as e:  # WRONGTYPE: a key holds something else
            raise ArtifactError(f"feature store at {self.where}/{self.prefix}: {e}") from None

    def counts(self, entities: list[str]) -> list[dict[tuple[str, int, str], int]]:
        self._check_open()
        try:
            with self._client.pipeline(transaction=False) as pipe:
                for e in entities:
                    pipe.hgetall(self.prefix + e)
                got = pipe.execute()
        except self._redis_mod.ResponseError as e:
            raise ArtifactError(f"feature store at {self.where}/{self.prefix}: {e}") from None
        out, parsed = [], self._parsed
        if len(parsed) > 1 << 16:  # field names repeat across entities (same buckets): parse each once
            parsed.clear()
        for ent, h in zip(entities, got):
            d = {}
            for f, n in h.items():
                if f[:1] == b"#":  # a window head or total (see the scripts), not a bucket
                    continue
                key = parsed.get(f)
                if key is None:
                    try:
                        w, b, t = f.decode().split(":")
                        key = parsed[f] = (w, int(b), t)
                    except ValueError:
                        raise ArtifactError(f"feature hash {self.prefix + ent!r}: field {f!r} is not "
                                            "window:bucket:type") from None
                d[key] = int(n)
            out.append(d)
        return out

    def sums(self, entities: list[str], now: int, slot: dict[tuple[str, int, str], int], n_cols: int) -> np.ndarray:
        """One script call: the server reads each entity's rolling window totals (moving them when
        a window has moved on; see the scripts), one integer per column travels back. (A
        single-node Redis: the keys of one call need not share a cluster slot.)"""
        self._check_open()
        cfg = self.cfg
        if not entities:
            return np.zeros((0, n_cols), np.int64)
        args = [len(cfg.windows), len(cfg.count_types)]
        for w, span, b in cfg.windows:
            args += [w, span // b, now // b]
        args += list(cfg.count_types)
        try:
            got = self._sums(keys=[self.prefix + e for e in entities], args=args)
        except self._redis_mod.ResponseError as e:
            raise ArtifactError(f"feature store at {self.where}/{self.prefix}: {e}") from None
        return np.asarray(got, np.int64).reshape(len(entities), n_cols)

    def recent(self, user: str) -> list[tuple[str, int]]:
        self._check_open()
        try:
            got = self._client.zrange(f"{self.prefix}recent:{user}", 0, -1, withscores=True)
        except self._redis_mod.ResponseError as e:
            raise ArtifactError(f"feature store at {self.where}/{self.prefix}: {e}") from None
        return [(v.decode(), int(s)) for v, s in got]

    def close(self) -> None:
        if not self._closed:
            self._client.close()
        super().close()


# ------------------------------------------------------------------ the service
class FeatureService:
    """Online features over a counter backend (module doc for the definitions).

    update(events)                    add events (a list of FeedbackEvent-likes or an event table)
    item_features(item_ids, now)      → polars frame: item_id, `config.columns()` (one row per id)
    user_features(user_id, now)       → UserFeatures
    bind(items, users)                the dataset tables the categories and profiles come from
    seen_item(item_id) / seen_user(user_id)   has any counted event of it been kept?
    """

    def __init__(self, config: FeatureConfig | None = None, backend: CounterBackend | None = None,
                 items: pl.DataFrame | None = None, users: pl.DataFrame | None = None) -> None:
        self.config = config or FeatureConfig()
        self.backend = backend if backend is not None else MemoryCounters(self.config)
        self._catalogue = _Catalogue(self.config, items, users)
        self._slots: tuple[tuple[int, ...], dict] | None = None

    def bind(self, items: pl.DataFrame | None, users: pl.DataFrame | None) -> None:
        """Read categories and profiles from these tables from now on (a no-op for the same ones:
        the service calls it with the served funnel's tables on every update and read)."""
        c = self._catalogue
        if c.items is not items or c.users is not users:
            self._catalogue = _Catalogue(self.config, items, users)

    def update(self, events: pl.DataFrame | Iterable[Any]) -> int:
        """Count `events` (any order; late ones too) into the windows and users' recent
        categories. Returns the number of events counted (of a counted type or a consumption)."""
        cfg, cat = self.config, self._catalogue
        if isinstance(events, pl.DataFrame):
            ev = _events_frame(events)
            rows: Iterable[tuple] = zip(*(ev[c].to_list() for c in _EVENT_COLUMNS))
        else:
            rows = ((str(e.user_id), str(e.item_id), e.type, float(e.value), int(e.ts)) for e in events)
        counted = set(cfg.count_types)
        inc: dict[str, dict[tuple[str, int, str], int]] = {}
        recent: dict[str, dict[str, int]] = {}
        n, latest = 0, 0
        for uid, iid, typ, value, ts in rows:
            if ts < 0:
                raise DataError(f"event ts must be unix seconds ≥ 0, got {ts}")
            hit = False
            if typ in counted:
                ik, uk = f"i:{item_key(iid)}", f"u:{uid}"
                for w, _, b in cfg.windows:
                    f = (w, ts // b, typ)
                    for ent in (ik, uk):
                        d = inc.setdefault(ent, {})
                        d[f] = d.get(f, 0) + 1
                hit = True
            if cfg.category_column is not None and enters_history(typ, value):
                vals = cat.categories.get(item_key(iid), ())
                if vals:
                    r = recent.setdefault(uid, {})
                    for v in vals:
                        r[v] = max(r.get(v, ts), ts)
                hit = True
            n += hit
            latest = max(latest, ts)
        if inc or recent:
            # never prune on a time later than the clock: a bogus future ts must not wipe the counters
            self.backend.apply(inc, recent, cfg.min_buckets(min(latest, int(time.time()))))
        return n

    def _sums(self, entities: list[str], now: int) -> dict[tuple[str, str], np.ndarray]:
        cfg = self.config
        cols = [(w, t) for w, _, _ in cfg.windows for t in cfg.count_types]
        # (window, bucket, type) → column, for the buckets [⌊now/B⌋ − n, ⌊now/B⌋) of each window;
        # the same for every `now` until a window moves to its next bucket, so built once per move
        at = tuple(now // bs for _, _, bs in cfg.windows)
        cached = self._slots
        if cached is None or cached[0] != at:
            cached = self._slots = (at, {(w, b, t): cols.index((w, t)) for w, s, bs in cfg.windows
                                         for b in range(now // bs - s // bs, now // bs) for t in cfg.count_types})
        acc = self.backend.sums(entities, now, cached[1], len(cols))
        return {c: acc[:, j] for j, c in enumerate(cols)}

    def item_features(self, item_ids: Sequence[Any], now: int) -> pl.DataFrame:
        """The features of `item_ids` (external ids) at `now`: one row per id, in order."""
        now = _check_now(now)
        ents = [f"i:{item_key(i)}" for i in item_ids]
        return _frame(list(item_ids), _count_columns(self.config, self._sums(ents, now), len(ents)), self.config)

    def user_features(self, user_id: Any, now: int) -> UserFeatures:
        cfg, now, uid = self.config, _check_now(now), str(user_id)
        sums = self._sums([f"u:{uid}"], now)
        counts = {f"{t}_{w}": int(sums[(w, t)][0]) for w, _, _ in cfg.windows for t in cfg.count_types}
        recent = None if cfg.category_column is None else _recent(self.backend.recent(uid), now, cfg.recent_n)
        return UserFeatures(uid, now, counts, recent, self._catalogue.profile(uid))

    def seen_item(self, item_id: Any) -> bool:
        return bool(self.backend.counts([f"i:{item_key(item_id)}"])[0])

    def seen_user(self, user_id: Any) -> bool:
        uid = str(user_id)
        return bool(self.backend.counts([f"u:{uid}"])[0]) or bool(self.backend.recent(uid))

    def close(self) -> None:
        self.backend.close()


def build_feature_service(backend: str, config: FeatureConfig | None = None, *, state_dir: str | Path | None = None,
                          redis_url: str | None = None, prefix: str = "funnelrec:",
                          items: pl.DataFrame | None = None, users: pl.DataFrame | None = None) -> FeatureService:
    """A service's feature service of `backend` ("memory", "sqlite" with `state_dir`, "redis" with
    `redis_url`): the backend the exposure store, result cache and history use."""
    cfg = config or FeatureConfig()
    store = FEATURE_BACKENDS.get(backend).from_state(cfg, state_dir=state_dir, redis_url=redis_url, prefix=prefix)
    try:
        return FeatureService(cfg, store, items, users)
    except BaseException:
        store.close()
        raise
