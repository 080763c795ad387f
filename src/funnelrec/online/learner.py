"""The online learner (issue #10 item 4): `funnelrec learn`, a long-running process beside `serve`.

One step (`OnlineLearner.run_once`):

    events after the committed offset (online/source.py: event log or Redis Stream)
      → quarantine malformed events (unknown item, bad type, bad value)
      → label join (online/labels.py): impressions + later positives inside label_window_s
      → incremental co-occurrence / counter updates (itemCF, Swing, hot, fresh: `partial_fit`;
        the ranker's count features — item popularity, user activity in `stats` — with
        `count_popularity`, the default)
      → model updaters (`Updater.update`, below), each may refuse (GuardrailRefused)
      → publish a versioned artifact (online/publish.py) → CURRENT replaced atomically
      → commit offset + pending impressions + counters' progress in one SQLite transaction

The commit comes after the published version is durable, so a kill -9 at any point neither
skips nor double-counts an event (a restart redoes the step from the last committed offset,
starting from the published version that offset belongs to).

Interface for model updaters (the fine ranker FTRL/optimizer steps, two-tower, FID
admission/eviction live in online/updates.py and are passed in as `updaters=`):

    class Updater(Protocol):
        name: str
        def update(self, funnel: Funnel, samples: pl.DataFrame,
                   holdout: pl.DataFrame) -> dict[str, object]: ...

- `funnel`: the funnel as published by the previous step, with this step's count updates
  (itemCF/Swing/hot/fresh) already applied.
- `samples`: the labelled samples whose label window closed in this step, columns
  user_id, item_id, ts, request_id, click, like, watch_time, purchase (online/samples.py
  SAMPLE_COLUMNS; ids are the external string ids; organic positives have request_id null).
- `holdout`: the latest labelled window not trained on: of the samples whose window closed in
  this step, the newest `holdout_fraction` (by ts) are held out; they are trained on in the next
  step (part of that step's `samples`), so every sample is trained on once and evaluated first.
- returns {component name → new component} (e.g. {"ranker": new_ranker}); the learner calls
  `for u in updaters: parts |= u.update(funnel, samples, holdout)` and publishes the union
  (later updaters see `funnel.with_components(**parts)` of the earlier ones).
- raises `funnelrec.core.errors.GuardrailRefused` with the reason: that updater's parts are not
  published this step (logged and shown in the step report); the rest still are.
- `LearnConfig.min_count` / `ttl_s` / `guardrail_margin` reach updaters that take them: the
  learner calls `u.configure(config)` once at construction when the updater defines it.
- any other FunnelrecError of an updater is logged and reported like a refusal (the learner
  goes on; the count updates of the step are still published).

Durable state (served_dir/learner.db, one SQLite transaction per step, after the publish):
the committed offset, the version that holds every event up to it, the watermark, the open
samples (`pending`), the carried holdout, the counters (events seen, quarantined) and the
quarantined events themselves. A restart loads that version and redoes the step after the
offset: the same events in the same batches give the same result (a version published but not
committed is left unused and pruned).

Malformed events — unknown type, a ts outside [0, MAX_TS], a non-finite value, negative
watch_time, an empty user id, an item neither the funnel's catalogue nor the live catalogue
(`catalogue=`, the server's online/catalogue.py backend) holds — are quarantined
(table `quarantine`: offset, the event as JSON, the message; logged) and the rest is learned.
Events of users outside the catalogue label samples but enter no co-occurrence or counter (the
channels' histories are indexed by catalogue users); follow/unfollow are skipped here.

"""

from __future__ import annotations

import dataclasses
import json
import logging
import sqlite3
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import polars as pl
import scipy.sparse as sp

from funnelrec.core.errors import ConfigError, FunnelrecError, GuardrailRefused
from funnelrec.core.sparse import grown
from funnelrec.core.sqlite import enable_wal
from funnelrec.online.labels import PENDING_SCHEMA, LabelJoin, empty_samples
from funnelrec.online.publish import Publisher
from funnelrec.online.served import STATUS, current_version, version_dir, write_atomic
from funnelrec.online.source import EventSource
from funnelrec.pipeline.eventlog import EVENT_TYPES, MAX_TS, POSITIVE_TYPES
from funnelrec.pipeline.funnel import Funnel

_log = logging.getLogger(__name__)

#: channels whose `update` the learner runs on each step's positives
UPDATED_CHANNELS = ("ItemCFRecall", "SwingRecall", "HotRecall", "FreshRecall")


class Updater(Protocol):
    """A model update of one step (module doc): returns new components or raises GuardrailRefused."""

    name: str

    def update(self, funnel: Funnel, samples: pl.DataFrame, holdout: pl.DataFrame) -> dict[str, object]: ...


@dataclass(frozen=True)
class LearnConfig:
    interval_s: float = 60.0  # run_forever: pause between steps when caught up
    label_window_s: int = 1800  # an impression waits this long (event time) for its positives
    batch_limit: int = 100_000  # events read per step
    min_count: int = 1  # FID admission (passed to updaters)
    ttl_s: int = 0  # FID eviction after this long unseen; 0 = never (passed to updaters)
    guardrail_margin: float = 0.01  # AUC margin (passed to updaters)
    holdout_fraction: float = 0.2  # newest share of each step's closed samples held out
    count_popularity: bool = True  # the ranker's item popularity / user activity features count the stream
    keep_versions: int = 5  # published versions kept in served_dir/versions
    served_dir: str | None = None

    def __post_init__(self) -> None:
        if self.interval_s < 0 or self.batch_limit < 1 or self.keep_versions < 2:
            raise ConfigError(f"LearnConfig: need interval_s ≥ 0, batch_limit ≥ 1, keep_versions ≥ 2; got {self}")
        if not 0.0 <= self.holdout_fraction < 1.0:
            raise ConfigError(f"LearnConfig: holdout_fraction must be in [0, 1), got {self.holdout_fraction}")
        LabelJoin(self.label_window_s)


_DB = """
CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS pending (user_id TEXT, item_id TEXT, ts INTEGER, request_id TEXT,
    click INTEGER, like INTEGER, watch_time REAL, purchase INTEGER, cart INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS holdout (user_id TEXT, item_id TEXT, ts INTEGER, request_id TEXT,
    click INTEGER, like INTEGER, watch_time REAL, purchase INTEGER, cart INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS quarantine (offset TEXT, event TEXT, message TEXT, at REAL);
"""


def stream_times(stream_ts: sp.csr_matrix | None, u: np.ndarray, i: np.ndarray, ts: np.ndarray) -> sp.csr_matrix | None:
    """`FunnelStats.stream_ts` with the consumptions (u[k], i[k]) at ts[k] in: each (user, item)'s
    latest consumption time (float64 unix s; grown to cover the new indices). None stays None
    when there is nothing to add."""
    u, i, ts = np.asarray(u, np.int64), np.asarray(i, np.int64), np.asarray(ts, np.int64)
    if not len(u):
        return stream_ts
    U = max(int(u.max()) + 1, 0 if stream_ts is None else stream_ts.shape[0])
    I = max(int(i.max()) + 1, 0 if stream_ts is None else stream_ts.shape[1])
    key = u * I + i
    order = np.lexsort((-ts, key))  # per pair the latest first
    last = order[np.r_[True, key[order][1:] != key[order][:-1]]]
    step = sp.csr_matrix((ts[last].astype(np.float64), (u[last], i[last])), shape=(U, I))
    if stream_ts is not None:
        step = step.maximum(grown(stream_ts, U, I))  # unix times are > 0: an absent entry (0) never wins
    out = sp.csr_matrix(step)
    out.sort_indices()
    return out


class OnlineLearner:
    """Tails `source`, learns, publishes into `served_dir` (module doc)."""

    def __init__(self, served_dir: str | Path | None, source: EventSource, config: LearnConfig | None = None,
                 updaters: tuple[Updater, ...] | list[Updater] = (), catalogue: Any = None) -> None:
        self.config = config or LearnConfig()
        self.catalogue = catalogue  # online/catalogue.py Catalogue of the server's state backend, optional
        served = served_dir if served_dir is not None else self.config.served_dir
        if served is None:
            raise ConfigError("OnlineLearner: no served directory (served_dir)")
        self.served_dir = Path(served)
        self.source = source
        self.updaters = list(updaters)
        for u in self.updaters:
            if hasattr(u, "configure"):
                u.configure(self.config)
        self.join = LabelJoin(self.config.label_window_s)
        self.publisher = Publisher(self.served_dir)
        if current_version(self.served_dir) is None:
            raise ConfigError(f"{self.served_dir}: no published version (CURRENT); start it from an artifact "
                              f"(`funnelrec learn --artifact DIR`)")
        self._db = sqlite3.connect(self.served_dir / "learner.db", isolation_level=None)
        enable_wal(self._db)  # retried: replicas may open the same new file at once (core/sqlite.py)
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_DB)
        for table in ("pending", "holdout"):  # a learner.db from before the cart label: its rows had no cart
            if "cart" not in {r[1] for r in self._db.execute(f"PRAGMA table_info({table})")}:
                try:
                    self._db.execute(f"ALTER TABLE {table} ADD COLUMN cart INTEGER NOT NULL DEFAULT 0")
                except sqlite3.OperationalError as e:  # another process opening it added it first
                    if "duplicate column" not in str(e):
                        raise
        st = dict(self._db.execute("SELECT key, value FROM state").fetchall())
        self.offset = st.get("offset", source.start)
        self.version = st.get("version") or current_version(self.served_dir)
        self.watermark = int(st["watermark"]) if st.get("watermark") else None
        self.events_seen = int(st.get("events_seen", 0))
        self.quarantined = int(st.get("quarantined", 0))
        self.steps = int(st.get("steps", 0))
        self.stream_gap: dict[str, Any] | None = None  # the last events the stream trimmed unread (status)
        self.pending = self._table("pending")
        self.holdout = self._table("holdout")
        path = version_dir(self.served_dir, self.version)
        self.funnel = Funnel.load(path)
        for u in self.updaters:  # a task the stream cannot label fails here, in one line, not per step
            if hasattr(u, "check"):
                u.check(self.funnel)

    def _table(self, name: str) -> pl.DataFrame:
        cols = ", ".join(PENDING_SCHEMA)
        rows = self._db.execute(f"SELECT {cols} FROM {name}").fetchall()  # noqa: S608 - fixed names
        return pl.DataFrame(rows, schema=PENDING_SCHEMA, orient="row") if rows else empty_samples()

    # ------------------------------------------------------------------ checks
    def check(self, events: pl.DataFrame, funnel: Funnel | None = None) -> tuple[pl.DataFrame, pl.DataFrame]:
        """(good events, bad events with a "message" column) — module doc lists the checks."""
        funnel = funnel or self.funnel
        known_items = funnel.dataset_.item_ids.indices(events["item_id"].fill_null("").to_list()) >= 0
        value, ts, typ = pl.col("value"), pl.col("ts"), pl.col("type")
        item_event = ~typ.is_in(["follow", "unfollow"])
        msg = (pl.when(~typ.is_in(list(EVENT_TYPES)) | typ.is_null())
               .then(pl.format("unknown event type {}; known: " + ", ".join(EVENT_TYPES), typ.fill_null("null")))
               .when(ts.is_null() | (ts < 0) | (ts > MAX_TS))
               .then(pl.format("event ts must be unix seconds in [0, {}], got {}", pl.lit(MAX_TS), ts.cast(pl.Utf8).fill_null("null")))
               .when(value.is_null() | ~value.is_finite())
               .then(pl.format("event value must be a finite number, got {}", value.cast(pl.Utf8).fill_null("null")))
               .when((typ == "watch_time") & (value < 0))
               .then(pl.format("watch_time value must be ≥ 0, got {}", value.cast(pl.Utf8)))
               .when(pl.col("user_id").is_null() | (pl.col("user_id") == ""))
               .then(pl.lit("event has no user_id"))
               .when(item_event & ~pl.col("_known"))
               .then(pl.format("unknown item {} (not in the served catalogue)", pl.col("item_id").fill_null("null")))
               .otherwise(None))
        checked = events.with_columns(pl.Series("_known", known_items)).with_columns(msg.alias("message"))
        bad = checked.filter(pl.col("message").is_not_null()).drop("_known")
        good = checked.filter(pl.col("message").is_null()).drop(["_known", "message"])
        return good, bad

    # ------------------------------------------------------------------ one step
    def run_once(self) -> dict[str, Any]:
        t0 = time.perf_counter()
        cfg = self.config
        events, nxt = self.source.read(self.offset, cfg.batch_limit)
        report: dict[str, Any] = {"events": events.height, "offset_before": self.offset, "offset": nxt,
                                  "version_before": self.version, "published": False, "parts": [],
                                  "refused": {}, "quarantined": 0, "samples": 0}
        gap = getattr(self.source, "gap", None)
        if gap is not None:  # the stream's retention outran this learner: those events are gone
            self.stream_gap = {"after": self.offset, "trimmed_up_to": gap, "at": time.time()}
            report["stream_gap"] = self.stream_gap
            _log.error("events after offset %s up to %s were trimmed from the %s before this learner read "
                       "them (lost to it): raise the server's %s or keep the learner running",
                       self.offset, gap, *getattr(self.source, "retention", ("source", "retention")))
        if not events.height:
            if nxt != self.offset:  # nothing to read but a gap's end (online/source.py): past it, once
                self._db.execute("INSERT OR REPLACE INTO state (key, value) VALUES ('offset', ?)", (nxt,))  # autocommit
                self.offset = nxt
            self._write_status(report, t0, None)
            return report
        funnel, parts = self.funnel, {}
        if self.catalogue is not None:
            funnel, parts = self._with_new_items(events)
        good, bad = self.check(events, funnel)
        for r in bad.iter_rows(named=True):
            _log.warning("quarantined event at offset %s: %s", r["offset"], r["message"])
        items = good.filter(~pl.col("type").is_in(["follow", "unfollow"]))
        closed, pending, watermark = self.join.step(items, self.pending, self.watermark)
        parts.update(self._count_updates(funnel, items))
        if parts:
            funnel = funnel.with_components(**{k.replace("/", "__"): v for k, v in parts.items()})
        train, holdout = self._split(closed)
        if self.updaters and train.height:
            for u in self.updaters:
                try:
                    got = u.update(funnel, train, holdout)
                except GuardrailRefused as e:
                    report["refused"][u.name] = str(e)
                    _log.warning("update %s refused: %s", u.name, e)
                    continue
                except FunnelrecError as e:
                    report["refused"][u.name] = f"{type(e).__name__}: {e}"
                    _log.error("update %s failed: %s", u.name, e)
                    continue
                if got:
                    parts.update(got)
                    funnel = funnel.with_components(**{k.replace("/", "__"): v for k, v in got.items()})
        version = self.version
        if parts:
            version = self.publisher.publish(self.version, parts)  # durable before the commit below
        self._commit(nxt, version, watermark, pending, holdout if closed.height else self.holdout, events, bad)
        self.funnel = funnel
        report.update(version=version, published=bool(parts), parts=sorted(parts), quarantined=bad.height,
                      samples=closed.height, trained=train.height, holdout=holdout.height, pending=pending.height,
                      watermark=watermark)
        self.publisher.prune(cfg.keep_versions, {version})
        self._write_status(report, t0, events)
        return report

    def _with_new_items(self, events: pl.DataFrame) -> tuple[Funnel, dict[str, Any]]:
        """The funnel with the live catalogue's items that this batch's events name but the funnel
        lacks (`Funnel.with_items`, as the server's live catalogue extends it), and the components
        that changed by it — so an item upserted through the API enters itemCF/Swing/hot at the
        next step instead of being quarantined as unknown. Attribute changes of known items stay
        the server's live overlay (no new version for them)."""
        from funnelrec.pipeline.service import LiveCatalogue, LoadedFunnel

        ids = events["item_id"].drop_nulls().unique().to_list()
        unknown = {i for i, k in zip(ids, self.funnel.dataset_.item_ids.indices(ids)) if k < 0}
        if not unknown:
            return self.funnel, {}
        snap = self.catalogue.snapshot()
        rows = [r for r in snap.item_rows() if str(r["item_id"]) in unknown]
        if not rows:
            return self.funnel, {}
        new = LiveCatalogue._extend(LoadedFunnel.build(self.funnel, self.version), rows, snap).funnel
        old = self.funnel.components()
        return new, {k: v for k, v in new.components().items() if old.get(k) is not v}

    def _count_updates(self, funnel: Funnel, events: pl.DataFrame) -> dict[str, Any]:
        """New itemCF/Swing/hot/fresh channels from the step's positives of catalogue users."""
        pos = events.filter(pl.col("type").is_in(list(POSITIVE_TYPES))
                            & ((pl.col("type") != "watch_time") | (pl.col("value") > 0)))
        if not pos.height:
            return {}
        ds = funnel.dataset_
        u = ds.user_ids.indices(pos["user_id"].to_list())
        i = ds.item_ids.indices(pos["item_id"].to_list())
        ok = (u >= 0) & (i >= 0)
        u, i, ts = u[ok], i[ok], pos["ts"].to_numpy()[ok]
        if not len(u):
            return {}
        # one consumption per (user, item) a step, at its first ts: a click and the like (watch,
        # purchase) of the same item are one interaction, as in the fit's interaction table —
        # counted per event, hot/fresh would weigh a liked item twice
        key = u.astype(np.int64) * max(ds.n_items, int(i.max()) + 1) + i
        order = np.lexsort((ts, key))
        head = np.r_[True, key[order][1:] != key[order][:-1]]
        latest = ts[order][np.r_[head[1:], True]]  # per (user, item) group: the step's last consumption
        first = order[head]
        latest = latest[np.argsort(first)]
        first.sort()
        u, i, ts = u[first], i[first], ts[first]
        out = {}
        # stats_.stream_ts gets each item at its latest consumption (a like after the click moves
        # it up), the order a request reads its history store in
        if self.config.count_popularity:
            out["stats"] = self._stats_update(funnel, u, i, latest)
        elif getattr(getattr(getattr(funnel.ranker_, "features_", None), "match_", None), "recent_", None) is not None:
            # no counts, but the short-term block reads the stream's order
            out["stats"] = dataclasses.replace(funnel.stats_, stream_ts=stream_times(funnel.stats_.stream_ts, u, i, latest))
        for name, ch in funnel.channels_.items():
            if type(ch).__name__ in UPDATED_CHANNELS:
                out[f"channels/{name}"] = ch.update(u, i, ts, n_users=ds.n_users, n_items=ds.n_items)
        return out

    @staticmethod
    def _stats_update(funnel: Funnel, u: np.ndarray, i: np.ndarray, ts: np.ndarray | None = None) -> Any:
        """The funnel's FunnelStats with the consumptions (u[k], i[k]) counted into the ranker's
        count features, as the fit counts them (pipeline/funnel.py `FunnelStats.of`): item
        popularity log(1 + events) gains one per consumption, user activity log(1 + distinct
        items) one per item new to the user (per the channels' histories before this step's
        updates; without one, every consumption). The training history (the match features' and
        the exposure rules' input) stays the fit's. Frozen, these features say an item released
        after the fit has no audience however many users take it; a refit on all the events
        gives the same values (tests/online/test_learner.py). With `ts` (per consumption, its
        latest time) `stream_ts` records them too (`stream_times`)."""
        from funnelrec.pipeline.funnel import FunnelStats

        st = funnel.stats_
        I, U = max(len(st.item_log_pop), int(i.max(initial=-1)) + 1), max(len(st.user_log_act), int(u.max(initial=-1)) + 1)

        def counts(log_values: np.ndarray, n: int) -> np.ndarray:  # back to integer counts: exact for any real count
            c = np.zeros(n)
            c[: len(log_values)] = np.rint(np.expm1(log_values.astype(np.float64)))
            return c

        pop = counts(st.item_log_pop, I) + np.bincount(i, minlength=I)
        new = np.ones(len(u), bool)
        hist = next((ch.history_ for n, ch in funnel.channels_.items()
                     if type(ch).__name__ in UPDATED_CHANNELS and hasattr(ch, "history_")
                     and hasattr(ch.history_, "seen")), None)
        if hist is not None:
            inside = (u < hist.seen.shape[0]) & (i < hist.seen.shape[1])
            if inside.any():
                new[inside] = np.asarray(hist.seen[u[inside], i[inside]]).ravel() == 0
        act = counts(st.user_log_act, U) + np.bincount(u[new], minlength=U)
        stream_ts = st.stream_ts if ts is None else stream_times(st.stream_ts, u, i, ts)
        return FunnelStats(st.history, np.log1p(pop).astype(np.float32)[: len(st.item_log_pop)],
                           np.log1p(act).astype(np.float32)[: len(st.user_log_act)], stream_ts)

    def _split(self, closed: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
        """(train = the carried holdout + the older closed samples, holdout = the newest share),
        the share taken of the impression samples (request_id set) and of the organic ones
        (request_id null) each: positives arrive after the impressions they label, so the newest
        share of all samples together can be organic clicks only — a holdout with one class,
        where the guardrail (which judges impressions) has no AUC."""
        if not closed.height:
            return empty_samples().head(0), self.holdout
        closed = closed.with_row_index("_pos")
        older, newest = [], []
        for part in (closed.filter(pl.col("request_id").is_not_null()), closed.filter(pl.col("request_id").is_null())):
            n_hold = int(round(self.config.holdout_fraction * part.height))
            older.append(part.head(part.height - n_hold))
            newest.append(part.tail(n_hold))

        def merged(frames: list[pl.DataFrame]) -> pl.DataFrame:  # back in the join's (ts, user, item) order
            return pl.concat(frames).sort("_pos").drop("_pos")

        return pl.concat([self.holdout, merged(older)]), merged(newest)

    def _commit(self, offset: str, version: str, watermark: int | None, pending: pl.DataFrame,
                holdout: pl.DataFrame, events: pl.DataFrame, bad: pl.DataFrame) -> None:
        """Everything a restart needs, in one transaction (after the version is durable)."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            state = {"offset": offset, "version": version, "watermark": "" if watermark is None else str(watermark),
                     "events_seen": str(self.events_seen + events.height),
                     "quarantined": str(self.quarantined + bad.height), "steps": str(self.steps + 1)}
            db.executemany("INSERT OR REPLACE INTO state (key, value) VALUES (?, ?)", list(state.items()))
            for name, frame in (("pending", pending), ("holdout", holdout)):
                db.execute(f"DELETE FROM {name}")  # noqa: S608 - a fixed table name
                db.executemany(f"INSERT INTO {name} ({', '.join(PENDING_SCHEMA)}) "  # noqa: S608 - fixed names
                               f"VALUES ({', '.join('?' * len(PENDING_SCHEMA))})", frame.select(list(PENDING_SCHEMA)).rows())
            now = time.time()
            db.executemany("INSERT INTO quarantine (offset, event, message, at) VALUES (?, ?, ?, ?)",
                           [(r["offset"], json.dumps({k: v for k, v in r.items() if k not in ("offset", "message")},
                                                     default=str), r["message"], now)
                            for r in bad.iter_rows(named=True)])
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self.offset, self.version, self.watermark = offset, version, watermark
        self.events_seen += events.height
        self.quarantined += bad.height
        self.steps += 1
        self.pending, self.holdout = pending, holdout

    def quarantine(self) -> pl.DataFrame:
        rows = self._db.execute("SELECT offset, event, message, at FROM quarantine ORDER BY rowid").fetchall()
        return pl.DataFrame(rows, schema={"offset": pl.Utf8, "event": pl.Utf8, "message": pl.Utf8, "at": pl.Float64},
                            orient="row")

    def _write_status(self, report: dict[str, Any], t0: float, events: pl.DataFrame | None) -> None:
        now = time.time()
        lag_s = None
        if events is not None and events.height and events["received_at"].is_not_null().any():
            lag_s = now - float(events["received_at"].max())  # newest event read → its version served
        status = {"version": self.version, "offset": self.offset, "events_seen": self.events_seen,
                  "quarantined": self.quarantined, "lag_events": self.source.backlog(self.offset),
                  "lag_s": lag_s, "updated_at": now, "step_s": time.perf_counter() - t0, "steps": self.steps,
                  "stream_gap": self.stream_gap, "config": asdict(self.config)}
        report["step_s"] = status["step_s"]
        write_atomic(self.served_dir / STATUS, json.dumps(status, default=str))

    def run_forever(self, max_steps: int | None = None) -> None:
        """Steps until interrupted: at once while a full batch came back, else after interval_s."""
        n = 0
        while max_steps is None or n < max_steps:
            report = self.run_once()
            n += 1
            _log.info("learn step: %s", {k: report[k] for k in ("events", "offset", "published", "parts")})
            if report["events"] < self.config.batch_limit:
                time.sleep(self.config.interval_s)

    def close(self) -> None:
        self._db.close()
        self.source.close()
        if self.catalogue is not None:
            self.catalogue.close()


__all__ = ["LearnConfig", "OnlineLearner", "Updater"]
