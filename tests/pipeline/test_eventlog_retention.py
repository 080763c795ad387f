"""The event log's retention (pipeline/eventlog.py): with `retention_s` the log keeps the last that
many seconds of events by the server's clock, trims the oldest prefix as feedback arrives, records
how far it trimmed, and its readers (online/source.py) learn what they lost."""

from __future__ import annotations

import sqlite3

import pytest

from funnelrec.core.errors import ConfigError
from funnelrec.online.source import EventLogSource
from funnelrec.pipeline.eventlog import EventLog, FeedbackEvent


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _events(n: int, user: str = "u1", start: int = 0) -> list[FeedbackEvent]:
    return [FeedbackEvent(f"r{start + k}", user, f"i{start + k}", "click", 1.0, 1_000_000 + start + k) for k in range(n)]


def test_the_oldest_prefix_past_the_retention_is_deleted_and_recorded(tmp_path):
    clock = Clock(1000.0)
    log = EventLog(tmp_path / "events.db", retention_s=500, trim_every_s=0, clock=clock)
    log.append(_events(5))                 # seq 1–5 received at 1000
    clock.t = 1400.0
    log.append(_events(3, start=5))        # seq 6–8 at 1400: 1000 is 400 s old, kept
    assert len(log) == 8 and log.trimmed_up_to() == 0
    clock.t = 1600.0                       # cutoff 1100: seq 1–5 are older
    log.append(_events(1, start=8))        # seq 9; the append trims after its commit
    assert log.read()["seq"].to_list() == [6, 7, 8, 9]
    assert log.trimmed_up_to() == 5
    clock.t = 2000.0                       # cutoff 1500: seq 6–8 go, 9 (at 1600) stays
    assert log.trim() == 3 and log.read()["seq"].to_list() == [9] and log.trimmed_up_to() == 8
    assert log.trim() == 0                 # nothing more is due
    # seq is never reused after a trim
    log.append(_events(1, start=9))
    assert log.read()["seq"].to_list() == [9, 10]
    log.close()


def test_the_event_time_does_not_decide_what_is_kept(tmp_path):
    """A replay appends events from 1997; they were received now, so they are kept."""
    clock = Clock(10_000.0)
    log = EventLog(tmp_path / "events.db", retention_s=60, trim_every_s=0, clock=clock)
    log.append([FeedbackEvent("r", "u", "i", "click", 1.0, 881_250_949)])
    log.append(_events(1))
    assert len(log) == 2
    log.close()


def test_a_head_received_in_the_future_does_not_stall_the_trim(tmp_path):
    """A clock stepped back after the first append: its row looks young, but everything appended
    after it is past the retention, so by append order it is older still and goes with them."""
    clock = Clock(10_000.0)
    log = EventLog(tmp_path / "events.db", retention_s=100, trim_every_s=0, clock=clock)
    log.append(_events(1))                 # seq 1 "at 10,000"
    clock.t = 0.0
    log.append(_events(2, start=1))        # seq 2–3 at 0
    clock.t = 200.0
    log.append(_events(1, start=3))        # seq 4 at 200: the trim cuts 1–3
    assert log.read()["seq"].to_list() == [4] and log.trimmed_up_to() == 3
    log.close()


def test_a_trim_is_bounded_per_append_and_catches_up_on_the_next(tmp_path):
    clock = Clock(0.0)
    log = EventLog(tmp_path / "events.db", retention_s=10, trim_every_s=3600, trim_rows=4, clock=clock)
    log.append(_events(10))                # seq 1–10 at t 0 (its trim finds nothing due: next in an hour)
    clock.t = 4000.0
    log.append(_events(1, start=10))       # trims 4 (a full chunk: the next append trims again)
    assert len(log) == 7 and log.trimmed_up_to() == 4
    log.append(_events(1, start=11))       # 4 more, although trim_every_s has not passed
    assert len(log) == 4 and log.trimmed_up_to() == 8
    log.append(_events(1, start=12))       # the last 2 old ones; a partial chunk: done for an hour
    assert log.read()["seq"].to_list() == [11, 12, 13] and log.trimmed_up_to() == 10
    clock.t = 4100.0                       # 11–13 are past the retention now, but the hour is not over
    log.append(_events(1, start=13))
    assert len(log) == 4
    clock.t = 7600.0
    log.append(_events(1, start=14))       # the hour is over: 11–14 go
    assert log.read()["seq"].to_list() == [15]
    log.close()


def test_with_a_retention_the_file_stops_growing(tmp_path):
    """SQLite reuses the pages the trim frees: 20 'days' of traffic at one day's retention leave
    the file near the size one or two days made, where without retention it grows twentyfold."""
    def run(retention: float | None) -> list[int]:
        path = tmp_path / f"events-{retention}.db"
        clock = Clock(0.0)
        log = EventLog(path, synchronous="NORMAL", retention_s=retention, trim_every_s=0, trim_rows=100_000,
                       clock=clock)
        sizes = []
        for day in range(20):
            clock.t = day * 86_400.0
            for batch in range(10):
                log.append(_events(200, user=f"u{day}", start=batch * 200))
            log._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            sizes.append(path.stat().st_size)
        log.close()
        return sizes

    kept = run(86_400.0)
    grown = run(None)
    assert grown[-1] > 15 * grown[0]
    assert kept[-1] <= 2 * kept[2], kept
    assert kept[-1] < grown[-1] / 5


def test_a_reader_behind_the_trim_is_told_what_it_lost_once(tmp_path):
    clock = Clock(0.0)
    log = EventLog(tmp_path / "events.db", retention_s=100, trim_every_s=0, clock=clock)
    log.append(_events(6))                 # seq 1–6 at t 0
    src = EventLogSource(tmp_path / "events.db")
    frame, off = src.read("0", 2)
    assert off == "2" and src.gap is None and frame["item_id"].to_list() == ["i0", "i1"]
    clock.t = 500.0
    log.append(_events(2, start=6))        # seq 7–8; seq 1–6 trimmed
    frame, off = src.read(off, 10)
    assert src.gap == "6" and off == "8" and frame["item_id"].to_list() == ["i6", "i7"]
    frame, off2 = src.read(off, 10)
    assert src.gap is None and off2 == "8" and frame.height == 0
    # a reader whose whole unread part was trimmed moves past the gap, and hears of it once
    clock.t = 1000.0
    assert log.trim() == 2
    frame, off3 = src.read("3", 10)
    assert src.gap == "8" and off3 == "8" and frame.height == 0
    _, off4 = src.read(off3, 10)
    assert src.gap is None and off4 == "8"
    src.close()
    log.close()


class _Hooked:
    """A connection whose `execute` runs `hook` once, right after the first statement containing `after`."""

    def __init__(self, db, after: str, hook) -> None:
        self._db, self._after, self._hook = db, after, hook

    def execute(self, sql, *args):
        out = self._db.execute(sql, *args)
        if self._hook is not None and self._after in sql:
            hook, self._hook = self._hook, None
            hook()
        return out

    def __getattr__(self, name):
        return getattr(self._db, name)


def test_two_workers_trimming_at_once_never_cut_fresh_rows(tmp_path):
    """Worker B trims between worker A's cheap look at the oldest row and the rest of A's trim: A
    must then find nothing due, not cut the fresh rows B left (its reads are inside its write
    transaction)."""
    clock = Clock(0.0)
    with EventLog(tmp_path / "events.db", clock=clock) as setup:  # no retention: set up the rows
        setup.append(_events(5))           # seq 1–5 at t 0
        clock.t = 150.0
        setup.append(_events(5, start=5))  # seq 6–10 at t 150
    clock.t = 200.0                        # retention 100: 1–5 are due, 6–10 are not
    a = EventLog(tmp_path / "events.db", retention_s=100, clock=clock)
    b = EventLog(tmp_path / "events.db", retention_s=100, clock=clock)
    a._db = _Hooked(a._db, "SELECT received_at FROM", lambda: b.trim())
    assert a.trim() == 0
    assert a.read()["seq"].to_list() == [6, 7, 8, 9, 10] and a.trimmed_up_to() == 5
    a.close()
    b.close()


def test_a_trim_that_fails_does_not_fail_the_append_that_stored_the_events(tmp_path, caplog):
    import logging

    clock = Clock(0.0)
    log = EventLog(tmp_path / "events.db", retention_s=10, trim_every_s=30, clock=clock)

    def busy(now):
        raise sqlite3.OperationalError("database is locked")

    log._trim = busy
    with caplog.at_level(logging.ERROR, logger="funnelrec.pipeline.eventlog"):
        assert log.append(_events(3)) == 3
    assert len(log) == 3 and any("trim failed" in r.getMessage() for r in caplog.records)
    calls = []
    log._trim = lambda now: calls.append(now) or 0
    clock.t = 20.0
    log.append(_events(1, start=3))
    assert calls == []                     # retried after trim_every_s, not on every append
    clock.t = 31.0
    log.append(_events(1, start=4))
    assert calls == [31.0]
    log.close()


def test_a_read_is_one_snapshot_of_the_trim_mark_and_the_rows(tmp_path):
    """A trim landing between the reader's look at `trimmed_up_to` and its rows: the reader still
    gets every row of its snapshot (or a gap), never a silent hole."""
    clock = Clock(0.0)
    log = EventLog(tmp_path / "events.db", retention_s=100, trim_every_s=3600, clock=clock)
    log.append(_events(6))                 # seq 1–6 at t 0
    clock.t = 500.0
    log.append(_events(2, start=6))        # seq 7–8 at t 500 (no trim: within the hour)
    src = EventLogSource(tmp_path / "events.db")
    src._db = _Hooked(src._db, "FROM meta", lambda: log.trim())  # deletes 1–6 right after the look
    frame, off = src.read("2", 10)
    assert (frame["item_id"].to_list(), src.gap) in ((["i2", "i3", "i4", "i5", "i6", "i7"], None),
                                                     (["i6", "i7"], "6"))
    assert off == "8" and log.trimmed_up_to() == 6
    src.close()
    log.close()


def test_a_log_from_before_retention_reads_without_a_gap(tmp_path):
    """A log written by an older funnelrec has no meta table; a read-only reader copes."""
    path = tmp_path / "events.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE events (seq INTEGER PRIMARY KEY AUTOINCREMENT, request_id TEXT, user_id TEXT NOT NULL, "
               "item_id TEXT NOT NULL, type TEXT NOT NULL, value REAL NOT NULL, ts INTEGER NOT NULL, "
               "received_at REAL NOT NULL, experiments TEXT, event_id TEXT)")
    db.execute("INSERT INTO events (request_id, user_id, item_id, type, value, ts, received_at) "
               "VALUES ('r', 'u', 'i', 'click', 1.0, 5, 1.0)")
    db.commit()
    db.close()
    src = EventLogSource(path)
    frame, off = src.read("0", 10)
    assert src.gap is None and off == "1" and frame.height == 1
    src.close()
    with EventLog(path, retention_s=10) as log:  # the writer adds the table to the old file
        assert log.trimmed_up_to() == 0 and len(log) == 1


@pytest.mark.parametrize("bad", [0, -5])
def test_a_retention_that_keeps_nothing_is_refused(tmp_path, bad):
    with pytest.raises(ConfigError, match="retention must be > 0 seconds"):
        EventLog(tmp_path / "events.db", retention_s=bad)


def test_the_service_trims_its_log_as_feedback_arrives(tmp_path):
    from funnelrec.pipeline.service import RecommenderService, ServiceConfig
    from tiny_world import known_order_funnel

    svc = RecommenderService(known_order_funnel(), ServiceConfig(state_dir=str(tmp_path / "state"),
                                                                 eventlog_retention_s=3600, max_future_s=None))
    clock = Clock(1_000_000.0)
    svc.events._clock = clock
    svc.feedback(None, 99, [{"item_id": 1, "type": "click", "ts": 100}])
    clock.t += 7200.0
    svc.feedback(None, 99, [{"item_id": 2, "type": "like", "ts": 200}])
    assert svc.events.read()["type"].to_list() == ["like"] and svc.events.trimmed_up_to() == 1
    svc.close()
    with pytest.raises(ConfigError, match="eventlog_retention_s must be > 0"):
        ServiceConfig(eventlog_retention_s=0)


def test_log_trim_and_stats_on_a_log_that_grew_without_retention(tmp_path):
    """`funnelrec log trim --keep-s N --vacuum`: the events older than N go and the file shrinks;
    `log stats --json` says what is left. Mistakes are one line, exit 2."""
    import json
    import time

    from typer.testing import CliRunner

    from funnelrec.cli import app

    state = tmp_path / "state"
    clock = Clock(time.time() - 10 * 86400)
    with EventLog(state / "events.db", synchronous="NORMAL", clock=clock) as log:
        for k in range(20):
            log.append(_events(500, start=500 * k))   # seq 1–10,000, ten days old
        clock.t = time.time()
        log.append(_events(3, start=10_000))          # seq 10,001–10,003, now
    r = CliRunner().invoke(app, ["log", "trim", "--keep-s", "86400", "--state-dir", str(state), "--vacuum"])
    assert r.exit_code == 0, r.output
    assert r.output.startswith("deleted 10,000 events (up to seq 10000); 3 left;"), r.output
    before, after = (float(x) for x in r.output.split(";")[-1].replace("MB", "").split("→"))
    assert after < before / 5
    r = CliRunner().invoke(app, ["log", "stats", "--state-dir", str(state), "--json"])
    st = json.loads(r.output)
    assert (st["rows"], st["first_seq"], st["last_seq"], st["trimmed_up_to"]) == (3, 10_001, 10_003, 10_000)
    import subprocess
    import sys

    for args, msg in ((["log", "trim", "--keep-s", "0", "--state-dir", str(state)], "--keep-s must be > 0"),
                      (["log", "stats", "--state-dir", str(tmp_path / "none")], "not found")):
        r = subprocess.run([sys.executable, "-m", "funnelrec.cli", *args], capture_output=True, text=True, timeout=120)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") and msg in lines[0], r.stderr


def test_vacuum_under_a_reader_says_the_wal_was_kept_and_loses_nothing(tmp_path):
    """A learner mid-read holds a snapshot: VACUUM still runs, the WAL's truncation is given up
    (it would block the server's writes waiting for that reader), and says so."""
    clock = Clock(0.0)
    log = EventLog(tmp_path / "events.db", retention_s=10, trim_every_s=0, clock=clock)
    log.append(_events(2000))
    clock.t = 100.0
    log.append(_events(3, start=2000))      # its trim deletes the 2,000 old ones
    reader = sqlite3.connect(tmp_path / "events.db", isolation_level=None)
    reader.execute("BEGIN")
    assert reader.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 3  # a snapshot is held
    assert log.vacuum() is False
    reader.execute("COMMIT")
    reader.close()
    assert log.read()["seq"].to_list() == [2001, 2002, 2003]
    assert log.vacuum() is True             # no reader: the WAL goes too
    assert not (tmp_path / "events.db-wal").exists() or (tmp_path / "events.db-wal").stat().st_size == 0
    log.close()
