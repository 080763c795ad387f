"""The durable event log: every feedback event, appended before the feedback call returns.

It is the input of online learning and of experiment metrics, so an acknowledged event must
never be lost. The log is one SQLite file in WAL mode:

- synchronous="FULL" (default): every `append` commits in its own transaction and the commit
  fsyncs the WAL before `append` returns, so an acknowledged event survives the process being
  killed (SIGKILL) *and* an OS crash or power loss.
- synchronous="NORMAL": the commit is written to the WAL file (in the OS page cache) but not
  fsynced; it survives SIGKILL of the server, not a power loss. Faster; opt-in.

Rows are never updated or deleted (append-only); `seq` is the append order. An event may carry
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

import sqlite3
import threading
import time
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

    def __init__(self, path: str | Path, synchronous: str = "FULL") -> None:
        if synchronous not in ("FULL", "NORMAL"):
            raise ConfigError(f"event log synchronous must be 'FULL' or 'NORMAL', got {synchronous!r}")
        self.path = Path(path)
        self.synchronous = synchronous
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
        now = time.time()
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
        return stored

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
