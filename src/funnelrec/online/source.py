"""Where the learner reads events: the SQLite event log, or a Redis Stream (the bus every replica
writes to). Both answer the same question — the events after an offset, in append order:

    events, next_offset = source.read(after, limit)     # events: EVENT_COLUMNS + "offset"
    source.backlog(after)                               # how many events lie after `after`

- `EventLogSource(path)`: pipeline/eventlog.py's events.db; offset = `seq` (an int as a string,
  "0" = from the start). Read through its own connection, so a learner and the server (which
  appends) are two processes on one WAL file.

After each `read`, `source.gap` is the newest offset the source's retention deleted when that lies
after the offset read from (those events are lost to this reader; the learner logs it), else None.
- `RedisStreamSource(url, key)`: XRANGE over the stream the service XADDs every accepted
  feedback event to (`ServiceConfig.redis_stream`); offset = the stream id ("0-0" = from the
  start), read exclusive of `after`.

An offset is opaque text to the learner: it stores the last one it committed and hands it back.
Events are returned as they were written (strings for the ids; `type`, `value`, `ts` unchecked):
checking them is the learner's job (malformed events are quarantined there, not dropped here).
"""

from __future__ import annotations

import math
import sqlite3
from pathlib import Path
from typing import Protocol

import polars as pl

from funnelrec.core.errors import ArtifactError, ConfigError, DataError
from funnelrec.pipeline.eventlog import log_trimmed_up_to

#: columns of every source's events (as in the event log), plus "offset" (str)
EVENT_COLUMNS = ("request_id", "user_id", "item_id", "type", "value", "ts", "received_at", "experiments")
_SCHEMA = {"offset": pl.Utf8, "request_id": pl.Utf8, "user_id": pl.Utf8, "item_id": pl.Utf8, "type": pl.Utf8,
           "value": pl.Float64, "ts": pl.Int64, "received_at": pl.Float64, "experiments": pl.Utf8}


class EventSource(Protocol):
    """Events after an offset, in append order (module doc)."""

    start: str  # the offset before the first event

    def read(self, after: str, limit: int) -> tuple[pl.DataFrame, str]: ...

    def backlog(self, after: str) -> int: ...

    def close(self) -> None: ...


def empty_events() -> pl.DataFrame:
    return pl.DataFrame(schema=_SCHEMA)


class EventLogSource:
    """The SQLite event log (`EventLog`'s events.db) as an event source; offset = seq."""

    start = "0"
    retention = ("event log", "--log-retention-s")  # what trims it, for the learner's gap message

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.gap: str | None = None  # after each `read`: as RedisStreamSource.gap (the module doc)
        if not self.path.is_file():
            raise ConfigError(f"event log {self.path} not found (the server's --state-dir holds events.db)")
        try:
            # autocommit: `read` opens its own read transaction (one snapshot per read)
            self._db = sqlite3.connect(self.path, timeout=30.0, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA query_only=1")
            self._db.execute("SELECT 1 FROM events LIMIT 1").fetchall()
        except sqlite3.DatabaseError as e:
            raise ArtifactError(f"event log {self.path} is not a usable event log: {e}") from None

    @staticmethod
    def _seq(after: str) -> int:
        try:
            return int(after)
        except (TypeError, ValueError):
            raise DataError(f"event log offset must be an integer seq, got {after!r}") from None

    def read(self, after: str, limit: int) -> tuple[pl.DataFrame, str]:
        # the trim mark and the rows from one snapshot: a trim in between would otherwise delete
        # events after `after` that neither this read nor the gap reports
        self._db.execute("BEGIN")
        try:
            trimmed = log_trimmed_up_to(self._db)  # the server's retention (pipeline/eventlog.py)
            rows = self._rows(after, limit)
        finally:
            self._db.execute("COMMIT")
        self.gap = str(trimmed) if trimmed > self._seq(after) else None
        if not rows:  # past a gap the offset moves to its end: those events are gone, reported once
            return empty_events(), after if self.gap is None else self.gap
        frame = pl.DataFrame(rows, schema=_SCHEMA, orient="row")
        return frame, rows[-1][0]

    def _rows(self, after: str, limit: int) -> list[tuple]:
        return self._db.execute(
            # a value/ts SQLite holds as text (a producer that skipped FeedbackEvent) reads as null:
            # the learner quarantines it instead of the whole batch failing to load
            "SELECT CAST(seq AS TEXT), request_id, user_id, item_id, type, "
            "CASE WHEN typeof(value) IN ('real', 'integer') THEN CAST(value AS REAL) END, "
            "CASE WHEN typeof(ts) = 'integer' THEN ts END, received_at, experiments "
            "FROM events WHERE seq > ? ORDER BY seq LIMIT ?", (self._seq(after), int(limit))).fetchall()

    def backlog(self, after: str) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM events WHERE seq > ?", (self._seq(after),)).fetchone()[0])

    def close(self) -> None:
        self._db.close()


class RedisStreamSource:
    """A Redis Stream of feedback events (fields as EVENT_COLUMNS, all text) as an event source;
    offset = the stream entry id."""

    start = "0-0"
    retention = ("stream", "--stream-retention-s")

    def __init__(self, url: str, key: str = "funnelrec:events") -> None:
        import redis

        self.key = key
        # after each `read`: the newest id the stream's retention (online/shared.py) trimmed when
        # that lies after the offset read from (events deleted before this reader got them), else None
        self.gap: str | None = None
        self._r = redis.Redis.from_url(url)
        try:
            self._r.ping()
        except redis.RedisError as e:
            raise ConfigError(f"redis {url}: cannot connect ({e})") from None

    def read(self, after: str, limit: int) -> tuple[pl.DataFrame, str]:
        self.gap = self.trimmed_past(after)
        entries = self._r.xrange(self.key, min=f"({after}", max="+", count=int(limit))
        if not entries:
            return empty_events(), after
        rows = []
        for eid, fields in entries:
            f = {k.decode(): v.decode() for k, v in fields.items()}
            rows.append({"offset": eid.decode(), "request_id": f.get("request_id") or None,
                         "user_id": f.get("user_id"), "item_id": f.get("item_id"), "type": f.get("type"),
                         "value": _number(f.get("value"), float), "ts": _number(f.get("ts"), int),
                         "received_at": _number(f.get("received_at"), float),
                         "experiments": f.get("experiments") or None})
        return pl.DataFrame(rows, schema=_SCHEMA), entries[-1][0].decode()

    def trimmed_past(self, after: str) -> str | None:
        """The newest entry id the stream's retention trimmed (`trim_marker`, written by online/shared.py) when
        it is later than `after`: events after this offset were deleted unread, lost to this
        reader. None when nothing after `after` was trimmed."""
        raw = self._r.get(trim_marker(self.key))
        if raw is None:
            return None
        trimmed = raw.decode()
        return trimmed if _stream_id(trimmed) > _stream_id(after) else None

    def backlog(self, after: str) -> int:
        # XRANGE is O(log N + M): count in pages, so a large backlog costs no single huge reply
        n, cur = 0, after
        while True:
            page = self._r.xrange(self.key, min=f"({cur}", max="+", count=10_000)
            n += len(page)
            if len(page) < 10_000:
                return n
            cur = page[-1][0].decode()

    def close(self) -> None:
        self._r.close()


def trim_marker(stream: str) -> str:
    """The key holding the id of the newest entry the retention (online/shared.py) trimmed from
    `stream`. It lives here, with the reader, so that the writer depends on the reader's module
    and not the other way round."""
    return f"{stream}:trimmed-up-to"


def _stream_id(sid: str) -> tuple[int, int]:
    """A stream entry id "ms-seq" as a comparable pair."""
    ms, _, seq = sid.partition("-")
    return int(ms), int(seq or 0)


def _number(v: str | None, kind: type) -> float | int | None:
    """A field as a number; None when it is missing or not one (the learner quarantines it)."""
    try:
        x = float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    if kind is int:
        return int(x) if math.isfinite(x) and abs(x) < 2**63 else None
    return x


def stream_fields(event: object, received_at: float) -> dict[str, str]:
    """The XADD fields of one `FeedbackEvent` (what `RedisStreamSource.read` parses back)."""
    return {"request_id": event.request_id or "", "user_id": event.user_id, "item_id": event.item_id,  # type: ignore[attr-defined]
            "type": event.type, "value": repr(float(event.value)), "ts": str(int(event.ts)),  # type: ignore[attr-defined]
            "received_at": repr(float(received_at)), "experiments": event.experiments or "",  # type: ignore[attr-defined]
            # the idempotency key (online/shared.py claims it): a stream reader can check exactly-once
            "event_id": getattr(event, "event_id", None) or ""}
