"""core.sqlite.enable_wal: the WAL switch retried while another process switches the same new file
(SQLite answers that race with an immediate SQLITE_BUSY, whatever the busy timeout)."""

from __future__ import annotations

import multiprocessing as mp
import sqlite3

import pytest

from funnelrec.core.sqlite import enable_wal


class _Flaky:
    def __init__(self, failures: int, message: str = "database is locked"):
        self.failures, self.message, self.calls = failures, message, 0

    def execute(self, sql):
        self.calls += 1
        assert sql == "PRAGMA journal_mode=WAL"
        if self.calls <= self.failures:
            raise sqlite3.OperationalError(self.message)


def test_a_locked_switch_is_retried_until_it_goes_through():
    db = _Flaky(3)
    enable_wal(db)  # type: ignore[arg-type]
    assert db.calls == 4


def test_other_errors_and_a_lock_past_the_timeout_are_raised():
    db = _Flaky(1, "disk I/O error")
    with pytest.raises(sqlite3.OperationalError, match="disk I/O"):
        enable_wal(db)  # type: ignore[arg-type]
    assert db.calls == 1
    db = _Flaky(10**9)
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        enable_wal(db, timeout_s=0.05)  # type: ignore[arg-type]
    assert db.calls > 1


def _open(path, q):
    from funnelrec.filter.store import SQLiteKV

    try:
        kv = SQLiteKV(path, "t")
        kv.put("k", b"v")
        kv.close()
        q.put("ok")
    except Exception as e:  # noqa: BLE001 - reported to the test
        q.put(repr(e))


def test_four_processes_open_one_new_store_at_once(tmp_path):
    """What replicas starting together on one --state-dir do: every open succeeds and the file
    is in WAL mode (without the retry, 2 of 160 such opens failed 'database is locked')."""
    ctx = mp.get_context("fork")
    results = []
    for r in range(25):
        path = tmp_path / f"s{r}.db"
        q = ctx.Queue()
        procs = [ctx.Process(target=_open, args=(path, q)) for _ in range(4)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
        results += [q.get(timeout=10) for _ in procs]
        assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert results == ["ok"] * 100, [x for x in results if x != "ok"][:3]
