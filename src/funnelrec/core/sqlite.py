"""SQLite helpers shared by the state stores (filter/, online/, pipeline/eventlog.py)."""

from __future__ import annotations

import sqlite3
import time


def enable_wal(db: sqlite3.Connection, timeout_s: float = 30.0) -> None:
    """`PRAGMA journal_mode=WAL` on `db`, retried while another process switches the same file.

    SQLite answers two connections that switch a new file to WAL at once with SQLITE_BUSY at
    once, without waiting out the connection's busy timeout (its rule against lock-upgrade
    deadlocks). Two replicas started together on one --state-dir then failed with "database is
    locked" (seen once in ~40 bench starts; 2 of 160 opens in a 4-process race, none after this).
    Other errors, and a lock held past `timeout_s`, are raised as they are."""
    deadline = time.monotonic() + timeout_s
    delay = 0.005
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as e:
            text = str(e).lower()
            if ("locked" not in text and "busy" not in text) or time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.2)
