"""The durable event log: every feedback event, appended before the feedback call returns.

It is the input of online learning and of experiment metrics, so an acknowledged event must
never be lost. The log is one SQLite file in WAL mode:

- synchronous="FULL" (default): every `append` commits in its own transaction and the commit
  fsyncs the WAL before `append` returns, so an acknowledged event survives the process being
  killed (SIGKILL) *and* an OS crash or power loss.
- synchronous="NORMAL": the commit is written to the WAL file (in the OS page cache) but not
  fsynced; it survives SIGKILL of the server, not a power loss. Faster; opt-in.

Rows are never updated; `seq` is the append order and is never reused. With `retention_s` the
log keeps the events of the last that many seconds (of `received_at`, the server's clock when it
stored them — not the event's own `ts`, which a client or a replay sets): every `trim_every_s` an
append also deletes the oldest prefix of older rows, at most `trim_rows` per append, and records
the newest seq it deleted (`trimmed_up_to`), so a reader whose offset lies before it knows it lost
those events (online/source.py `EventLogSource.gap`). SQLite reuses the freed pages, so the file
stops growing at about the retention's worth of events. A retried event id older than the
retention is stored again. Without `retention_s` (the default) nothing is ever deleted: the log
is then the full record of feedback (experiments, refits), and it grows with the traffic. An
event may carry
an `event_id` (the client's idempotency key, or one the service derives from request id, item,
type and ts): a repeat of a stored id is acknowledged but not stored again (a unique index), so a
client retrying after a timeout never double-counts; events without an id are always stored.

    >>> import tempfile
    >>> tmp = tempfile.TemporaryDirectory()
    >>> log = EventLog(Path(tmp.name) / "events.db")
    >>> log.append([FeedbackEvent("r1", "196", "242", "click", 1.0, 881250949)])
    1
    >>> log.read().columns
    ['seq', 'request_id', 'user_id', 'item_id', 'type', 'value', 'ts', 'received_at', 'experiments', 'event_id']
    >>> log.close(); tmp.cleanup()
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from funnelrec.core.errors import ArtifactError, ConfigError, DataError, FunnelrecError
from funnelrec.core.sqlite import enable_wal

#: the kinds of feedback the funnel understands. "impression" is exposure only (never a negative
#: for recall); "follow"/"unfollow" carry an author id in `item_id` (the follow graph, #16)
EVENT_TYPES = ("impression", "click", "like", "watch_time", "cart", "purchase", "follow", "unfollow")
#: the events that enter a user's real-time history (a consumption of the item); watch_time only
#: when its value (seconds watched) is > 0
POSITIVE_TYPES = ("click", "like", "watch_time", "cart", "purchase")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id  TEXT,
    user_id     TEXT NOT NULL,
    item_id     TEXT NOT NULL,
    type        TEXT NOT NULL,
    value       REAL NOT NULL,
    ts          INTEGER NOT NULL,
    received_at REAL NOT NULL,
    experiments TEXT,
    event_id    TEXT
);
"""
# an index, not a column constraint: a log written before event ids existed gets it too
_EVENT_ID_INDEX = "CREATE UNIQUE INDEX IF NOT EXISTS events_event_id ON events (event_id)"

_log = logging.getLogger(__name__)

_POLARS_SCHEMA = {
    "seq": pl.Int64, "request_id": pl.Utf8, "user_id": pl.Utf8, "item_id": pl.Utf8, "type": pl.Utf8,
    "value": pl.Float64, "ts": pl.Int64, "received_at": pl.Float64, "experiments": pl.Utf8, "event_id": pl.Utf8,
}


#: the largest event time accepted, in unix seconds (the year 5138): a larger value is a
#: millisecond timestamp or garbage, and beyond 2^63 SQLite cannot even store it
MAX_TS = 100_000_000_000


@dataclass(frozen=True)
class FeedbackEvent:
    """One user action on one item. Ids are kept as strings (the external ids, whatever their
    type in the dataset); `experiments` is the JSON of the request's experiment assignment."""

    request_id: str | None
    user_id: str
    item_id: str
    type: str
    value: float
    ts: int
    experiments: str | None = None
    event_id: str | None = None  # idempotency key: a repeat is not stored twice

    def __post_init__(self) -> None:
        if self.type not in EVENT_TYPES:
            raise DataError(f"event type must be one of {', '.join(EVENT_TYPES)}, got {self.type!r}")
        if not 0 <= self.ts <= MAX_TS:
            hint = " (milliseconds? ts is unix seconds)" if MAX_TS < self.ts < MAX_TS * 10_000 else ""
            raise DataError(f"event ts must be unix seconds in [0, {MAX_TS}], got {self.ts}{hint}")
        if self.value != self.value or self.value in (float("inf"), float("-inf")):
            raise DataError(f"event value must be a finite number, got {self.value}")
        if self.type == "watch_time" and self.value < 0:
            raise DataError(f"watch_time value (seconds watched) must be ≥ 0, got {self.value}")


class EventLog:
    """Append-only, durable log of feedback events in one SQLite file (see the module doc for
    the guarantee of each `synchronous` mode). Safe to share between threads (one lock); several
    processes may append to the same file (SQLite's write lock serializes them)."""

    def __init__(self, path: str | Path, synchronous: str = "FULL", retention_s: float | None = None,
                 trim_every_s: float = 1.0, trim_rows: int = 5_000, clock: Callable[[], float] = time.time) -> None:
        if synchronous not in ("FULL", "NORMAL"):
            raise ConfigError(f"event log synchronous must be 'FULL' or 'NORMAL', got {synchronous!r}")
        if retention_s is not None and not retention_s > 0:
            raise ConfigError(f"event log retention must be > 0 seconds (None = keep everything), got {retention_s}")
        if trim_rows < 1:
            raise ConfigError(f"event log trim_rows must be ≥ 1, got {trim_rows}")
        self.path = Path(path)
        self.synchronous = synchronous
        self.retention_s = retention_s
        self.trim_every_s = trim_every_s
        self.trim_rows = trim_rows
        self._clock = clock
        # clock time of the last trim (-inf: the next append trims; a restart trims at its first)
        self._last_trim = float("-inf")
        self._lock = threading.Lock()
        self._closed = False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30.0)
            enable_wal(self._db)  # retried: replicas may open the same new file at once (core/sqlite.py)
            self._db.execute(f"PRAGMA synchronous={synchronous}")
            self._db.executescript(_SCHEMA)
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(events)")}
            if "event_id" not in columns:  # a log from before event ids: add the column in place
                self._db.execute("ALTER TABLE events ADD COLUMN event_id TEXT")
            self._db.execute(_EVENT_ID_INDEX)
        except sqlite3.DatabaseError as e:
            raise ArtifactError(f"event log {self.path} is not a usable SQLite database: {e}") from None

    def _check_open(self) -> None:
        if self._closed:
            raise FunnelrecError(f"event log {self.path} is closed")

    def append(self, events: list[FeedbackEvent]) -> int:
        """Append `events` in one transaction; durable when this returns. Returns the count stored
        (an event whose `event_id` is already in the log, or earlier in `events`, is not)."""
        return len(self.append_new(events))

    def append_new(self, events: list[FeedbackEvent]) -> list[FeedbackEvent]:
        """`append`, returning the events actually stored (the repeats of a stored event id left out)."""
        if not events:
            return []
        now = self._clock()
        stored = []
        with self._lock:
            self._check_open()
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for e in events:
                    cur = self._db.execute(
                        "INSERT OR IGNORE INTO events (request_id, user_id, item_id, type, value, ts, received_at, "
                        "experiments, event_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (e.request_id, e.user_id, e.item_id, e.type, float(e.value), int(e.ts), now, e.experiments,
                         e.event_id))
                    if cur.rowcount:
                        stored.append(e)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            # due every trim_every_s, and at once when the clock stepped back past the last trim
            if self.retention_s is not None and not self._last_trim <= now < self._last_trim + self.trim_every_s:
                # after the commit: the events are durable whatever the trim does, and a trim that
                # fails (a busy or full disk) must not fail the call that stored them
                try:
                    full = self._trim(now) == self.trim_rows  # a full chunk: more is due, trim again next append
                except (sqlite3.Error, OSError) as e:
                    _log.error("event log %s: the retention's trim failed (%s); retried in %.0f s",
                               self.path, e, self.trim_every_s)
                    full = False
                self._last_trim = float("-inf") if full else now
        return stored

    def trim(self) -> int:
        """Delete the events older than the retention now (at most `trim_rows`); the count deleted.
        `append` calls it by itself every `trim_every_s`; without a retention it deletes nothing."""
        if self.retention_s is None:
            return 0
        with self._lock:
            self._check_open()
            return self._trim(self._clock())

    def _trim(self, now: float) -> int:
        cutoff = now - float(self.retention_s)  # type: ignore[arg-type]
        oldest = self._db.execute("SELECT received_at FROM events ORDER BY seq LIMIT 1").fetchone()
        # one primary-key lookup when nothing is due (the other workers' trims find that too); a
        # head "received" in the future (a clock stepped back) is looked past, not waited for
        if oldest is None or cutoff <= oldest[0] <= now:
            return 0
        # the reads and the delete in one write transaction: a trim another process commits in
        # between cannot make this one cut fresh rows
        self._db.execute("BEGIN IMMEDIATE")
        try:
            rows = self._db.execute("SELECT seq, received_at FROM events ORDER BY seq LIMIT ?",
                                    (self.trim_rows,)).fetchall()
            # seq is the append order, received_at each process's clock: the prefix up to the last
            # row past the retention is older still, whatever its own clock said (so a reader's
            # offset before `trimmed_up_to` is an exact statement of loss)
            due = [seq for seq, at in rows if at < cutoff]
            if not due:
                self._db.execute("COMMIT")
                return 0
            cut = due[-1]
            deleted = self._db.execute("DELETE FROM events WHERE seq <= ?", (cut,)).rowcount
            self._db.execute("INSERT INTO meta (key, value) VALUES ('trimmed_up_to', ?) "
                             "ON CONFLICT (key) DO UPDATE SET value = MAX(CAST(value AS INTEGER), "
                             "CAST(excluded.value AS INTEGER))", (str(cut),))
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        return deleted

    def stats(self) -> dict:
        """Rows, seq range, the received_at range (unix s), `trimmed_up_to` and the file's bytes
        (with its WAL): what `funnelrec log stats` prints."""
        with self._lock:
            self._check_open()
            rows, lo, hi = self._db.execute("SELECT COUNT(*), MIN(seq), MAX(seq) FROM events").fetchone()
            first = self._db.execute("SELECT received_at FROM events ORDER BY seq LIMIT 1").fetchone()
            last = self._db.execute("SELECT received_at FROM events ORDER BY seq DESC LIMIT 1").fetchone()
            trimmed = log_trimmed_up_to(self._db)
        size = sum(f.stat().st_size for f in (self.path, Path(f"{self.path}-wal")) if f.exists())
        return {"path": str(self.path), "rows": int(rows), "first_seq": lo, "last_seq": hi,
                "first_received_at": None if first is None else first[0],
                "last_received_at": None if last is None else last[0], "trimmed_up_to": trimmed, "bytes": size}

    def vacuum(self) -> bool:
        """Give the pages trims freed back to the file system (SQLite's VACUUM: it rewrites the
        file, needs as much free disk, and holds the write lock while it copies the kept rows —
        run it with the server stopped). Then the WAL is truncated, waiting at most 0.1 s for
        readers (a wait blocks writers too): False when a reader (a learner mid-read) kept it,
        and its space returns at a later checkpoint."""
        with self._lock:
            self._check_open()
            self._db.execute("VACUUM")
            self._db.execute("PRAGMA busy_timeout = 100")
            try:
                busy, wal_pages, done = self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            finally:
                self._db.execute("PRAGMA busy_timeout = 30000")  # the connection's (sqlite3.connect timeout=30)
        return not busy

    def trimmed_up_to(self) -> int:
        """The newest seq the retention deleted (0: none)."""
        with self._lock:
            self._check_open()
            return log_trimmed_up_to(self._db)

    def __len__(self) -> int:
        with self._lock:
            self._check_open()
            return self._db.execute("SELECT COUNT(*) FROM events").fetchone()[0]

    def read(self, since_seq: int = 0) -> pl.DataFrame:
        """Events with seq > since_seq, in append order, as a polars table (columns as in the
        module doc). Incremental readers (an online trainer) pass the last seq they saw."""
        with self._lock:
            self._check_open()
            rows = self._db.execute(
                "SELECT seq, request_id, user_id, item_id, type, value, ts, received_at, experiments, event_id "
                "FROM events WHERE seq > ? ORDER BY seq", (int(since_seq),)).fetchall()
        return pl.DataFrame(rows, schema=_POLARS_SCHEMA, orient="row")

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._db.close()
                self._closed = True

    def __enter__(self) -> EventLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def log_trimmed_up_to(db: sqlite3.Connection) -> int:
    """The newest seq a retention trim deleted from the event log on `db` (0: none, or a log
    written before retention existed, which has no meta table)."""
    try:
        row = db.execute("SELECT value FROM meta WHERE key = 'trimmed_up_to'").fetchone()
    except sqlite3.OperationalError as e:
        if "no such table" in str(e):  # an older log, opened read-only (its writer adds the table)
            return 0
        raise
    return int(row[0]) if row else 0
