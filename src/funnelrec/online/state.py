"""Real-time user state (issue #10 item 1): each user's recent positive events, read by the next
request.

A `HistoryStore` keeps, per user (keyed by the user's *external* id), the last `history_n`
consumptions as (item key, ts, event type), newest last (append order; one `append` call's
events are sorted by ts first). Only consumptions enter it (`enters_history`: click, like, cart,
purchase, and watch_time with a positive value); an impression is exposure only and never a
history entry. Items are keyed by `core.ids.item_key` of their external id, so a history
survives a reload that re-indexes the catalogue, as the exposure filters and result caches do.

Three backends registered in `HISTORY_STORES`, the same names as the exposure stores and result
caches (filter/store.py, filter/results.py), over the same key-value layer:

- "memory" — `MemoryHistoryStore`: a `MemoryKV` (one process; tests);
- "sqlite" — `SQLiteHistoryStore`: table history(user_key, blob) in `{state_dir}/history.db`; an
  append is one `BEGIN IMMEDIATE … COMMIT` read-modify-write, so the workers of one host that
  share the file never lose an event;
- "redis"  — `RedisHistoryStore`: one list per user, `{prefix}history:{user_key}`, one record per
  element; an append is RPUSH + LTRIM in one MULTI/EXEC, so every worker and replica sees it.

A record is 17 bytes, little-endian: item key int64, ts int64, type code uint8 (its position in
`HISTORY_TYPES`; codes are stored, so the tuple is append-only). A blob whose length is not a
multiple of 17, or a code outside the tuple, raises ArtifactError naming the user.

    >>> store = MemoryHistoryStore(history_n=3)
    >>> store.append("u1", np.array([10, 11, 12, 13]), np.array([4, 1, 2, 3]), ["click"] * 4)
    >>> h = store.recent("u1")
    >>> h.keys.tolist(), h.ts.tolist()          # sorted by ts, the oldest dropped
    ([12, 13, 10], [2, 3, 4])
    >>> enters_history("impression", 1.0), enters_history("watch_time", 0.0), enters_history("like", 1.0)
    (False, False, True)
"""

from __future__ import annotations

import sqlite3
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from funnelrec.core.errors import ArtifactError, ConfigError, DataError, FunnelrecError
from funnelrec.core.registry import HISTORY_STORES
from funnelrec.filter.store import MemoryKV, RedisKV, SQLiteKV, state_location

__all__ = ["HISTORY_TYPES", "RECORD", "RecentHistory", "HistoryStore", "MemoryHistoryStore",
           "SQLiteHistoryStore", "RedisHistoryStore", "enters_history", "build_history_store"]

#: the event types a history holds, by stored code (position): append new ones at the end only.
#: The same set as pipeline/eventlog.py:POSITIVE_TYPES (tests/online/test_state.py checks it)
HISTORY_TYPES = ("click", "like", "watch_time", "cart", "purchase")
_CODE = {t: c for c, t in enumerate(HISTORY_TYPES)}
#: one stored record: item key, event time (unix s), type code — 17 bytes, no padding
RECORD = np.dtype([("key", "<i8"), ("ts", "<i8"), ("type", "u1")])
DEFAULT_HISTORY_N = 200


def enters_history(event_type: str, value: float) -> bool:
    """Does an event of `event_type` with `value` enter the user's history? A consumption does
    (click, like, cart, purchase; watch_time only when seconds watched > 0); an impression,
    follow or unfollow does not (impressions are exposure only, never a negative for recall)."""
    return event_type in _CODE and (event_type != "watch_time" or value > 0)


@dataclass(frozen=True)
class RecentHistory:
    """One user's recent history, oldest first: keys (N,) int64 item keys, ts (N,) int64 unix
    seconds, types (N,) uint8 codes into `HISTORY_TYPES`."""

    keys: np.ndarray
    ts: np.ndarray
    types: np.ndarray

    @classmethod
    def empty(cls) -> RecentHistory:
        return cls(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.uint8))

    @classmethod
    def from_records(cls, rec: np.ndarray) -> RecentHistory:
        return cls(rec["key"].astype(np.int64), rec["ts"].astype(np.int64), rec["type"].astype(np.uint8))

    def type_names(self) -> list[str]:
        return [HISTORY_TYPES[c] for c in self.types.tolist()]

    def __len__(self) -> int:
        return len(self.keys)


def _check_user(user_key: str) -> str:
    if not isinstance(user_key, str) or not user_key:
        raise DataError(f"user_key must be a non-empty str, got {user_key!r}")
    return user_key


def _records(keys: np.ndarray, ts: np.ndarray, types: Sequence[str]) -> np.ndarray:
    """The (N,) RECORD array of one append, sorted by ts (stable: equal times keep their order)."""
    keys, ts = np.asarray(keys), np.asarray(ts)
    if keys.ndim != 1 or keys.dtype.kind not in "iu":
        raise DataError(f"history keys must be a 1-D integer array (item keys), got {keys.dtype} {keys.shape}")
    if ts.shape != keys.shape or ts.dtype.kind not in "iu":
        raise DataError(f"history ts must be {keys.shape} integer unix seconds, got {ts.dtype} {ts.shape}")
    types = list(types)
    if len(types) != len(keys):
        raise DataError(f"history: {len(keys)} keys but {len(types)} event types")
    bad = sorted({t for t in types if t not in _CODE})
    if bad:
        raise DataError(f"history event types {bad} are not consumptions; a history holds: {', '.join(HISTORY_TYPES)}")
    rec = np.empty(len(keys), RECORD)
    rec["key"], rec["ts"] = keys.astype(np.int64), ts.astype(np.int64)
    rec["type"] = [_CODE[t] for t in types]
    return rec[np.argsort(rec["ts"], kind="stable")]


def _parse(blob: bytes, user_key: str) -> np.ndarray:
    if len(blob) % RECORD.itemsize:
        raise ArtifactError(f"history of user {user_key!r}: a blob of {len(blob)} bytes is not N × "
                            f"{RECORD.itemsize}-byte records")
    rec = np.frombuffer(blob, RECORD)
    if len(rec) and int(rec["type"].max()) >= len(HISTORY_TYPES):
        raise ArtifactError(f"history of user {user_key!r}: event type code {int(rec['type'].max())} is not one "
                            f"of the {len(HISTORY_TYPES)} known ({', '.join(HISTORY_TYPES)})")
    return rec


class HistoryStore(ABC):
    """Per-user recent history, bounded to the last `history_n` events.

    append(user_key, keys (N,), ts (N,), types (N,))  add consumptions (sorted by ts), keep the last history_n
    recent(user_key) → RecentHistory                  the user's events, oldest first (empty if none)
    close()

    Every append is visible to the next `recent` of any worker sharing the backend once it
    returns (sqlite: the same file; redis: the same server and prefix).
    """

    registered_name = "history store"

    def __init__(self, history_n: int = DEFAULT_HISTORY_N) -> None:
        if isinstance(history_n, bool) or not isinstance(history_n, int) or history_n < 1:
            raise ConfigError(f"history_n must be an int ≥ 1, got {history_n!r}")
        self.history_n = history_n
        self._closed = False

    @classmethod
    def from_state(cls, *, state_dir: str | Path | None = None, redis_url: str | None = None,
                   prefix: str = "funnelrec:", history_n: int = DEFAULT_HISTORY_N) -> HistoryStore:
        """The store of a service's state: `{state_dir}/history.db` (sqlite), lists under
        `{prefix}history:` (redis), or nothing (memory). See `build_history_store`."""
        raise NotImplementedError

    def _check_open(self) -> None:
        if self._closed:
            raise FunnelrecError(f"{type(self).__name__} is closed")

    @abstractmethod
    def append(self, user_key: str, keys: np.ndarray, ts: np.ndarray, types: Sequence[str]) -> None: ...

    @abstractmethod
    def recent(self, user_key: str) -> RecentHistory: ...

    def close(self) -> None:
        self._closed = True

    def __enter__(self) -> HistoryStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _BlobHistoryStore(HistoryStore):
    """A history per user as one blob of records under the user's key in a key-value backend;
    an append reads, extends, cuts and writes it back under `_exclusive` (≤ 17·history_n bytes)."""

    def __init__(self, kv, history_n: int) -> None:
        super().__init__(history_n)
        self.kv = kv

    def _exclusive(self):
        raise NotImplementedError

    def append(self, user_key: str, keys: np.ndarray, ts: np.ndarray, types: Sequence[str]) -> None:
        _check_user(user_key)
        rec = _records(keys, ts, types)
        if not len(rec):
            return
        with self._exclusive():
            self._check_open()
            have = self.kv.get(user_key)
            old = b"" if have is None else bytes(have)
            _parse(old, user_key)
            blob = old + rec.tobytes()
            self.kv.put(user_key, blob[-self.history_n * RECORD.itemsize:])

    def recent(self, user_key: str) -> RecentHistory:
        _check_user(user_key)
        self._check_open()
        blob = self.kv.get(user_key)
        if blob is None:
            return RecentHistory.empty()
        return RecentHistory.from_records(_parse(blob, user_key)[-self.history_n:])

    def close(self) -> None:
        if not self._closed:
            self.kv.close()
        super().close()


@HISTORY_STORES.register("memory")
class MemoryHistoryStore(_BlobHistoryStore):
    """Histories in a dict, lost on exit; safe to share between threads (one lock)."""

    def __init__(self, history_n: int = DEFAULT_HISTORY_N) -> None:
        import threading

        super().__init__(MemoryKV(), history_n)
        self._lock = threading.Lock()

    @classmethod
    def from_state(cls, *, state_dir: str | Path | None = None, redis_url: str | None = None,
                   prefix: str = "funnelrec:", history_n: int = DEFAULT_HISTORY_N) -> MemoryHistoryStore:
        return cls(history_n)

    def _exclusive(self):
        return self._lock


class _SQLiteWrite:
    """BEGIN IMMEDIATE … COMMIT (ROLLBACK on error) under the connection's thread lock: the
    read-modify-write of one append holds SQLite's write lock, so concurrent processes queue."""

    def __init__(self, kv: SQLiteKV) -> None:
        self.kv = kv

    def __enter__(self) -> None:
        self.kv.lock.acquire()
        try:
            self.kv.db.execute("BEGIN IMMEDIATE")
        except BaseException:
            self.kv.lock.release()
            raise

    def __exit__(self, exc_type, *exc: object) -> None:
        try:
            self.kv.db.execute("ROLLBACK" if exc_type is not None else "COMMIT")
        finally:
            self.kv.lock.release()


@HISTORY_STORES.register("sqlite")
class SQLiteHistoryStore(_BlobHistoryStore):
    """One row per user in a SQLite file (WAL, synchronous=NORMAL: an append survives SIGKILL;
    "FULL" also an OS crash). Several processes may share the file."""

    def __init__(self, path: str | Path, history_n: int = DEFAULT_HISTORY_N, synchronous: str = "NORMAL") -> None:
        self.path = Path(path)
        super().__init__(SQLiteKV(self.path, "history", key_column="user_key", value_column="blob",
                                  synchronous=synchronous, what="history store"), history_n)

    @classmethod
    def from_state(cls, *, state_dir: str | Path | None = None, redis_url: str | None = None,
                   prefix: str = "funnelrec:", history_n: int = DEFAULT_HISTORY_N) -> SQLiteHistoryStore:
        return cls(Path(state_location(state_dir, "sqlite", "state_dir")) / "history.db", history_n)

    def _exclusive(self):
        return _SQLiteWrite(self.kv)

    def recent(self, user_key: str) -> RecentHistory:
        try:
            return super().recent(user_key)
        except sqlite3.DatabaseError as e:
            raise ArtifactError(f"history store {self.path}: {e}") from None


@HISTORY_STORES.register("redis")
class RedisHistoryStore(HistoryStore):
    """One Redis list per user, `{prefix}history:{user_key}`, one 17-byte record per element,
    oldest first. append: RPUSH the records + LTRIM to the last history_n in one MULTI/EXEC
    (atomic: concurrent workers interleave whole appends, none is lost); recent: one LRANGE.
    With `ttl_s` a user's list expires that long after their last append."""

    def __init__(self, url: str, prefix: str = "funnelrec:", history_n: int = DEFAULT_HISTORY_N,
                 ttl_s: int | None = None) -> None:
        super().__init__(history_n)
        import redis

        self._redis_mod = redis
        self.prefix = prefix + "history:"
        self.ttl_s = ttl_s
        self.kv = RedisKV(url, prefix=self.prefix)
        self._client = self.kv.client

    @classmethod
    def from_state(cls, *, state_dir: str | Path | None = None, redis_url: str | None = None,
                   prefix: str = "funnelrec:", history_n: int = DEFAULT_HISTORY_N) -> RedisHistoryStore:
        return cls(state_location(redis_url, "redis", "redis_url"), prefix=prefix, history_n=history_n)

    def _key(self, user_key: str) -> str:
        return self.prefix + _check_user(user_key)

    def append(self, user_key: str, keys: np.ndarray, ts: np.ndarray, types: Sequence[str]) -> None:
        self._check_open()
        key = self._key(user_key)
        rec = _records(keys, ts, types)
        if not len(rec):
            return
        with self._client.pipeline(transaction=True) as pipe:
            pipe.rpush(key, *[r.tobytes() for r in rec[-self.history_n:]])
            pipe.ltrim(key, -self.history_n, -1)
            if self.ttl_s is not None:
                pipe.expire(key, self.ttl_s)
            try:
                pipe.execute()
            except self._redis_mod.ResponseError as e:  # WRONGTYPE: the key is not a list
                raise ArtifactError(f"history at Redis key {key!r} is not a list: {e}") from None

    def recent(self, user_key: str) -> RecentHistory:
        self._check_open()
        key = self._key(user_key)
        try:
            items = self._client.lrange(key, -self.history_n, -1)
        except self._redis_mod.ResponseError as e:
            raise ArtifactError(f"history at Redis key {key!r} is not a list: {e}") from None
        if not items:
            return RecentHistory.empty()
        bad = [len(x) for x in items if len(x) != RECORD.itemsize]
        if bad:
            raise ArtifactError(f"history of user {user_key!r}: list elements of {bad[0]} bytes are not "
                                f"{RECORD.itemsize}-byte records")
        return RecentHistory.from_records(_parse(b"".join(items), user_key))

    def close(self) -> None:
        if not self._closed:
            self._client.close()
        super().close()


def build_history_store(backend: str, *, state_dir: str | Path | None = None, redis_url: str | None = None,
                        prefix: str = "funnelrec:", history_n: int = DEFAULT_HISTORY_N) -> HistoryStore:
    """A service's history store of `backend` ("memory", "sqlite" with `state_dir`, "redis" with
    `redis_url` and key `prefix`), through `HISTORY_STORES` — the backend `build_state_stores`
    uses for the exposure store and result cache. An unknown name raises UnknownComponentError
    listing the known ones."""
    return HISTORY_STORES.get(backend).from_state(state_dir=state_dir, redis_url=redis_url, prefix=prefix,
                                                  history_n=history_n)
