"""A reload on one worker reaches every worker and replica: the reload record in shared state.

`/admin/reload` runs in whichever worker process accepted the connection. Before this module
the other workers kept serving the old funnel, and /health alternated between the two versions
for the rest of the run (issue #14). Now the worker that reloads writes one record under
`served_reload` in the service's state backend (a SQLite file in the state directory, or a
Redis key): `{"seq": ns, "artifact": path, "parts": [...] | null, "pid": …}`. Every worker
polls the record (`interval_s`, 1 s: one key read) and, when its `seq` is newer than the one it
applied, loads the same artifact (the same parts) through the service's ordinary swap — the
checks of `RecommenderService.reload` included, so a record cannot widen what may be loaded.

Which records count: those written after `since_ns`, the start of this server run (the
launcher's start, passed to each worker). A worker that uvicorn restarts mid-run therefore
catches up on the reload it missed, while a fresh `serve --artifact X` is not overridden by a
record an earlier run left in the same state directory. A failed load is logged, kept in
`health()` and not retried for that record; the old funnel keeps serving.

With only the in-memory backend there is one process and nothing to tell: `ReloadBroadcast`
is not built (`open_reload_broadcast` returns None).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from funnelrec.filter.store import KeyValueBackend, RedisKV, SQLiteKV

_log = logging.getLogger(__name__)

KEY = "served_reload"


class ReloadBroadcast:
    """publish(artifact, parts) after a local reload; a poll thread applies the others'."""

    def __init__(self, kv: KeyValueBackend, apply: Callable[[str, list[str] | None], Any], *,
                 since_ns: int | None = None, interval_s: float = 1.0) -> None:
        self.kv = kv
        self.apply = apply
        self.interval_s = float(interval_s)
        self.seen = int(since_ns if since_ns is not None else time.time_ns())
        self.applied: int = 0  # records applied from other workers
        self.last_error: str | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="funnelrec-reloads", daemon=True)

    def start(self) -> ReloadBroadcast:
        self._thread.start()
        return self

    def publish(self, artifact: str | Path, parts: list[str] | None) -> int:
        """Tell the others to load what this worker has just loaded; returns the record's seq."""
        with self._lock:
            seq = max(time.time_ns(), self.seen + 1)  # strictly after anything this worker applied
            self.kv.put(KEY, json.dumps({"seq": seq, "artifact": str(artifact), "parts": parts,
                                         "pid": os.getpid()}))
            self.seen = seq
        return seq

    def poll(self) -> bool:
        """One look at the record; True when it named a reload this worker then applied."""
        raw = self.kv.get(KEY)
        if raw is None:
            return False
        try:
            rec = json.loads(raw)
            seq = int(rec["seq"])
        except (ValueError, KeyError, TypeError):
            self.last_error = f"unreadable reload record {raw[:80]!r}"
            return False
        with self._lock:
            if seq <= self.seen:
                return False
            self.seen = seq  # applied or failed, a record is tried once
        if rec.get("pid") == os.getpid():
            return False
        try:
            self.apply(rec["artifact"], rec.get("parts"))
        except Exception as e:  # noqa: BLE001 — a bad record must not stop the thread or the server
            self.last_error = f"{rec.get('artifact')}: {e}"
            _log.error("reload broadcast: could not load %s: %s", rec.get("artifact"), e)
            return False
        self.applied += 1
        self.last_error = None
        return True

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.poll()
            except Exception as e:  # noqa: BLE001 — e.g. Redis away for a moment: try again next tick
                self.last_error = str(e)

    def health(self) -> dict[str, Any]:
        return {"seq": self.seen, "applied": self.applied, "last_error": self.last_error}

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self.kv.close()


def open_reload_broadcast(backend: str, apply: Callable[[str, list[str] | None], Any], *,
                          state_dir: str | Path | None = None, redis_url: str | None = None,
                          prefix: str = "funnelrec:", since_ns: int | None = None,
                          interval_s: float = 1.0) -> ReloadBroadcast | None:
    """The broadcast over a service's state backend, started; None for "memory" (one process)."""
    if backend == "sqlite":
        kv: KeyValueBackend = SQLiteKV(Path(state_dir) / "reloads.db", "reloads", what="reload record file")
    elif backend == "redis":
        kv = RedisKV(redis_url, prefix=prefix)
    else:
        return None
    return ReloadBroadcast(kv, apply, since_ns=since_ns, interval_s=interval_s).start()
