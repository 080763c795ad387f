"""Live follow edges (issue #16 item 1): each user's follow / unfollow events since the fit,
read by the next request as `RequestState.follows` (author id → True: follows, False: unfollowed).

Per (user, author) the event with the latest ts wins (equal ts: the later update). The fitted
follows table stays in the author channel; this store holds only what feedback changed, so a
request reads one small mapping. Users are keyed by their external id, authors by the external
author id the `follow` / `unfollow` event carries in `item_id`.

Three backends, the same names as the other state stores (`build_follow_store`):

- "memory": a dict under a lock (one process; tests);
- "sqlite": table follows(user_key, author_id, followed, ts) in `{state_dir}/follows.db`; an
  update is one upsert per edge that keeps the newer ts (`ON CONFLICT … WHERE excluded.ts >= ts`),
  so the workers sharing the file agree;
- "redis": one hash per user, `{prefix}follows:{user_key}`, field author → "1:ts" / "0:ts",
  written by a Lua script that keeps the newer ts (atomic on the server).

    >>> store = MemoryFollowStore()
    >>> store.update("u1", [("a7", True, 10), ("a8", True, 11), ("a7", False, 12), ("a8", False, 5)])
    >>> store.get("u1")
    {'a7': False, 'a8': True}
"""

from __future__ import annotations

import sqlite3
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable
from pathlib import Path

from funnelrec.core.errors import ArtifactError, ConfigError, DataError, FunnelrecError
from funnelrec.core.sqlite import enable_wal

__all__ = ["FollowStore", "MemoryFollowStore", "SQLiteFollowStore", "RedisFollowStore", "build_follow_store"]

Edge = tuple[str, bool, int]  # (author id, follows?, ts)


def _edges(edges: Iterable[Edge]) -> list[Edge]:
    out = []
    for a, on, ts in edges:
        if not isinstance(a, str) or not a:
            raise DataError(f"follow edge: author id must be a non-empty str, got {a!r}")
        out.append((a, bool(on), int(ts)))
    return out


class FollowStore(ABC):
    """update(user_key, [(author_id, follows, ts), …]); get(user_key) → {author_id: follows}."""

    def __init__(self) -> None:
        self._closed = False

    def _check_open(self) -> None:
        if self._closed:
            raise FunnelrecError(f"{type(self).__name__} is closed")

    @abstractmethod
    def update(self, user_key: str, edges: Iterable[Edge]) -> None: ...

    @abstractmethod
    def get(self, user_key: str) -> dict[str, bool]: ...

    def close(self) -> None:
        self._closed = True


class MemoryFollowStore(FollowStore):
    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._edges: dict[str, dict[str, tuple[bool, int]]] = {}

    def update(self, user_key: str, edges: Iterable[Edge]) -> None:
        new = _edges(edges)
        with self._lock:
            self._check_open()
            row = self._edges.setdefault(str(user_key), {})
            for a, on, ts in new:
                have = row.get(a)
                if have is None or have[1] <= ts:
                    row[a] = (on, ts)

    def get(self, user_key: str) -> dict[str, bool]:
        with self._lock:
            self._check_open()
            return {a: on for a, (on, _) in sorted(self._edges.get(str(user_key), {}).items())}


class SQLiteFollowStore(FollowStore):
    _SCHEMA = ("CREATE TABLE IF NOT EXISTS follows (user_key TEXT NOT NULL, author_id TEXT NOT NULL, "
               "followed INTEGER NOT NULL, ts INTEGER NOT NULL, PRIMARY KEY (user_key, author_id)) WITHOUT ROWID")
    _UPSERT = ("INSERT INTO follows VALUES (?, ?, ?, ?) ON CONFLICT (user_key, author_id) DO UPDATE SET "
               "followed = excluded.followed, ts = excluded.ts WHERE excluded.ts >= follows.ts")

    def __init__(self, path: str | Path) -> None:
        super().__init__()
        self.path = Path(path)
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30.0)
            enable_wal(self.db)  # retried: replicas may open the same new file at once (core/sqlite.py)
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.execute(self._SCHEMA)
        except sqlite3.DatabaseError as e:
            raise ArtifactError(f"follow store {self.path} is not a usable SQLite database: {e}") from None

    def update(self, user_key: str, edges: Iterable[Edge]) -> None:
        rows = [(str(user_key), a, int(on), ts) for a, on, ts in _edges(edges)]
        with self._lock:
            self._check_open()
            self.db.execute("BEGIN IMMEDIATE")
            try:
                self.db.executemany(self._UPSERT, rows)
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise

    def get(self, user_key: str) -> dict[str, bool]:
        with self._lock:
            self._check_open()
            rows = self.db.execute("SELECT author_id, followed FROM follows WHERE user_key = ? ORDER BY author_id",
                                   (str(user_key),)).fetchall()
        return {a: bool(on) for a, on in rows}

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self.db.close()
            super().close()


class RedisFollowStore(FollowStore):
    # ARGV: author, state, ts, author, state, ts, … — keep each field's newer ts
    _LUA = """
for i = 1, #ARGV, 3 do
  local cur = redis.call('HGET', KEYS[1], ARGV[i])
  if (not cur) or tonumber(string.match(cur, ':(%-?%d+)$')) <= tonumber(ARGV[i + 2]) then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1] .. ':' .. ARGV[i + 2])
  end
end
return 0
"""

    def __init__(self, url: str, prefix: str = "funnelrec:") -> None:
        super().__init__()
        import redis

        self.prefix = prefix + "follows:"
        self.client = redis.Redis.from_url(url)
        try:
            self.client.ping()
        except redis.RedisError as e:
            raise ConfigError(f"cannot reach Redis at {url}: {e}") from None
        self._script = self.client.register_script(self._LUA)

    def update(self, user_key: str, edges: Iterable[Edge]) -> None:
        self._check_open()
        args: list[str | int] = []
        for a, on, ts in _edges(edges):
            args += [a, int(on), ts]
        if args:
            self._script(keys=[self.prefix + str(user_key)], args=args)

    def get(self, user_key: str) -> dict[str, bool]:
        self._check_open()
        raw = self.client.hgetall(self.prefix + str(user_key))
        return {k.decode(): v.split(b":", 1)[0] == b"1" for k, v in sorted(raw.items())}

    def close(self) -> None:
        if not self._closed:
            self.client.close()
        super().close()


def build_follow_store(backend: str, *, state_dir: str | Path | None = None, redis_url: str | None = None,
                       prefix: str = "funnelrec:") -> FollowStore:
    """The follow store of a service's state backend: "memory", "sqlite" (`{state_dir}/follows.db`)
    or "redis" (`redis_url`, key `prefix`)."""
    if backend == "memory":
        return MemoryFollowStore()
    if backend == "sqlite":
        if state_dir is None:
            raise ConfigError("the sqlite follow store needs a state_dir")
        return SQLiteFollowStore(Path(state_dir) / "follows.db")
    if backend == "redis":
        if not redis_url:
            raise ConfigError("the redis follow store needs a redis_url")
        return RedisFollowStore(redis_url, prefix)
    raise ConfigError(f"unknown follow store backend {backend!r}; known: memory, sqlite, redis")
