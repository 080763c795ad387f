"""Per-user exposure stores: "which of these candidates has this user already been shown?"

One interface, `ExposureStore`, three backends registered in `EXPOSURE_STORES`:

- "memory" — `MemoryExposureStore`: a dict of filters; tests and ephemeral embedded use.
- "sqlite" — `SQLiteExposureStore`: the embedded on-disk default (WAL mode, write-through,
  in-memory LRU cache of the per-user filters).
- "redis"  — `RedisExposureStore`: shared online state for many API workers.

Each user has a `CountingBloomFilter` (4-bit counters, time window cut into slices, see
bloom.py); the backends persist it slice by slice (`slice_to_bytes`: header + counters + xxh3
checksum), so an `add` rewrites one slice, not the user's whole window. A blob that fails its
checksum or was built with other m/k/seed raises ArtifactError.

Under the stores sit the shared key-value backends (`MemoryKV`, `SQLiteKV`, `RedisKV`: bytes
under str keys, one way to open a SQLite file or reach a Redis server). The exposure stores
keep their metadata there and run their slice tables on the same connection; the result
caches (results.py) are nothing but a key-value backend with a blob format.

    >>> store = MemoryExposureStore(CountingBloomConfig(capacity=1000, fp_rate=0.01, window_s=7 * DAY))
    >>> store.add("u1", np.array([10, 11]), ts=0)
    >>> store.filter("u1", np.array([10, 12, 11]), now=DAY).tolist()
    [True, False, True]
    >>> store.filter("u1", np.array([10]), now=9 * DAY).tolist()   # out of the 7-day window
    [False]
"""

from __future__ import annotations

import json
import sqlite3
import threading
from abc import ABC, abstractmethod
from collections import OrderedDict
from dataclasses import asdict
from pathlib import Path

import numpy as np

from funnelrec.core.errors import ArtifactError, ConfigError, DataError, FunnelrecError
from funnelrec.core.registry import EXPOSURE_STORES
from funnelrec.core.sqlite import enable_wal
from funnelrec.filter.bloom import DAY, CountingBloomConfig, CountingBloomFilter, _as_ids

#: 2,000 exposures a week per user at 1% false positives: 19,171 counters, 9.6 kB per day slice.
DEFAULT_EXPOSURE_CONFIG = CountingBloomConfig(capacity=2000, fp_rate=0.01, window_s=7 * DAY, slice_s=DAY)


def _check_user(user_key: str) -> str:
    if not isinstance(user_key, str) or not user_key:
        raise DataError(f"user_key must be a non-empty str, got {user_key!r}")
    return user_key


def state_location(value: str | Path | None, backend: str, name: str) -> str | Path:
    """`value` (a state_dir or redis_url) that state backend `backend` cannot do without."""
    if not value:
        raise ConfigError(f"the {backend!r} state backend needs {name}")
    return value


def _check_time(value: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise DataError(f"{what} must be an int unix time in seconds, got {value!r}")
    return int(value)


# ------------------------------------------------------------------ shared key-value backends


class KeyValueBackend(ABC):
    """Bytes under str keys: get(key) → bytes | None, put(key, value, ttl_s),
    put_if_absent(key, value) → the value stored after the call. Thread-safe."""

    @abstractmethod
    def get(self, key: str) -> bytes | None: ...

    @abstractmethod
    def put(self, key: str, value: bytes | str, ttl_s: int | None = None) -> None: ...

    @abstractmethod
    def put_if_absent(self, key: str, value: bytes | str) -> bytes: ...

    def close(self) -> None:
        return None


def _as_bytes(value: bytes | str | memoryview) -> bytes:
    return value.encode() if isinstance(value, str) else bytes(value)


class MemoryKV(KeyValueBackend):
    """A dict; `ttl_s` is ignored (the data lives as long as the process)."""

    def __init__(self) -> None:
        self._data: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def get(self, key: str) -> bytes | None:
        return self._data.get(key)

    def put(self, key: str, value: bytes | str, ttl_s: int | None = None) -> None:
        self._data[key] = _as_bytes(value)

    def put_if_absent(self, key: str, value: bytes | str) -> bytes:
        with self._lock:
            return self._data.setdefault(key, _as_bytes(value))

    def close(self) -> None:
        self._data.clear()


class SQLiteKV(KeyValueBackend):
    """One table `table (key_column TEXT PRIMARY KEY, value_column BLOB)` in a SQLite file in WAL
    mode. `db` (autocommit connection) and `lock` are shared with whoever keeps more tables in
    the same file (the SQLite exposure store). With synchronous="NORMAL" a returned write
    survives SIGKILL, with "FULL" also an OS crash. `ttl_s` is ignored: nothing expires.
    A file that is not a SQLite database raises ArtifactError naming `what`."""

    def __init__(self, path: str | Path, table: str, *, key_column: str = "key", value_column: str = "value",
                 synchronous: str = "NORMAL", what: str = "state file") -> None:
        if synchronous not in ("NORMAL", "FULL"):
            raise ConfigError(f"synchronous must be 'NORMAL' or 'FULL', got {synchronous!r}")
        self.path = Path(path)
        self.what = what
        self.lock = threading.RLock()
        self._get = f"SELECT {value_column} FROM {table} WHERE {key_column} = ?"
        self._put = f"INSERT OR REPLACE INTO {table} VALUES (?, ?)"
        self._insert = f"INSERT OR IGNORE INTO {table} VALUES (?, ?)"
        try:
            self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30.0)
            enable_wal(self.db)  # retried: replicas may open the same new file at once (core/sqlite.py)
            self.db.execute(f"PRAGMA synchronous={synchronous}")
            self.db.execute(f"CREATE TABLE IF NOT EXISTS {table} ({key_column} TEXT PRIMARY KEY, "
                            f"{value_column} BLOB NOT NULL) WITHOUT ROWID")
        except sqlite3.DatabaseError as e:
            raise ArtifactError(f"{what} {self.path} is not a usable SQLite database: {e}") from None

    def get(self, key: str) -> bytes | None:
        with self.lock:
            row = self.db.execute(self._get, (key,)).fetchone()
        return None if row is None else _as_bytes(row[0])

    def put(self, key: str, value: bytes | str, ttl_s: int | None = None) -> None:
        with self.lock:
            self.db.execute(self._put, (key, value))

    def put_if_absent(self, key: str, value: bytes | str) -> bytes:
        with self.lock:
            self.db.execute("BEGIN IMMEDIATE")  # other processes may race for the first write
            try:
                self.db.execute(self._insert, (key, value))
                (have,) = self.db.execute(self._get, (key,)).fetchone()
            finally:
                self.db.execute("COMMIT")
        return _as_bytes(have)

    def close(self) -> None:
        with self.lock:
            self.db.close()


class RedisKV(KeyValueBackend):
    """String keys `{prefix}{key}` on a Redis server; `client` is shared with whoever keeps other
    structures under the same prefix (the Redis exposure store). Values with `ttl_s` expire.
    A server that cannot be reached raises ConfigError naming it."""

    def __init__(self, url: str | None = None, *, host: str = "127.0.0.1", port: int = 6379, db: int = 0,
                 prefix: str = "funnelrec:") -> None:
        import redis

        self.prefix = prefix
        self.where = url or f"{host}:{port}/{db}"
        self.client = redis.Redis.from_url(url) if url else redis.Redis(host=host, port=port, db=db)
        try:
            self.client.ping()
        except redis.RedisError as e:
            raise ConfigError(f"cannot reach Redis at {self.where}: {e}") from None

    def get(self, key: str) -> bytes | None:
        return self.client.get(self.prefix + key)

    def put(self, key: str, value: bytes | str, ttl_s: int | None = None) -> None:
        self.client.set(self.prefix + key, value, ex=ttl_s)

    def put_if_absent(self, key: str, value: bytes | str) -> bytes:
        self.client.set(self.prefix + key, value, nx=True)
        return self.client.get(self.prefix + key)

    def close(self) -> None:
        self.client.close()


# ------------------------------------------------------------------ exposure stores


class ExposureStore(ABC):
    """Per-user exposure filter.

    add(user_key, item_ids (N,), ts)              record that the user was shown these items at ts
    filter(user_key, candidate_ids (N,), now)     (N,) bool, True = already exposed within the window
    remove(user_key, item_ids (N,))               forget exposures (e.g. the user asked to see again)
    flush() / close()                             make writes durable / release resources

    `filter` never answers False for an exposure added within the window (no false negatives);
    it answers True for an unseen item with probability ≈ the configured fp_rate once the user
    has `capacity` exposures in the window.
    """

    registered_name = "exposure store"

    def __init__(self, config: CountingBloomConfig | None = None) -> None:
        self.config = DEFAULT_EXPOSURE_CONFIG if config is None else config
        if not isinstance(self.config, CountingBloomConfig):
            raise ConfigError(f"exposure store config must be a CountingBloomConfig, got {type(config).__name__}")
        self._template = self.config.build()  # validates capacity, fp_rate, window, slice
        self._closed = False

    @classmethod
    def from_state(cls, *, state_dir: str | Path | None = None, redis_url: str | None = None,
                   prefix: str = "funnelrec:", config: CountingBloomConfig | None = None) -> ExposureStore:
        """The store of a service's state: `{state_dir}/exposure.db` (sqlite), keys under
        `{prefix}exposure:` (redis), or nothing (memory). See results.build_state_stores."""
        raise NotImplementedError

    def _new_filter(self) -> CountingBloomFilter:
        return self.config.build()

    def _check_open(self) -> None:
        if self._closed:
            raise FunnelrecError(f"{type(self).__name__} is closed")

    @abstractmethod
    def add(self, user_key: str, item_ids: np.ndarray, ts: int) -> None: ...

    @abstractmethod
    def filter(self, user_key: str, candidate_ids: np.ndarray, now: int) -> np.ndarray: ...

    @abstractmethod
    def remove(self, user_key: str, item_ids: np.ndarray) -> None: ...

    def flush(self) -> None:
        """Every write is durable when its call returns; backends may compact here."""
        return None

    def close(self) -> None:
        self._closed = True

    def __enter__(self) -> ExposureStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------


@EXPOSURE_STORES.register("memory")
class MemoryExposureStore(ExposureStore):
    """Filters in a dict, lost on exit; safe to share between threads (one lock)."""

    def __init__(self, config: CountingBloomConfig | None = None) -> None:
        super().__init__(config)
        self._filters: dict[str, CountingBloomFilter] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_state(cls, *, state_dir: str | Path | None = None, redis_url: str | None = None,
                   prefix: str = "funnelrec:", config: CountingBloomConfig | None = None) -> MemoryExposureStore:
        return cls(config)

    def add(self, user_key: str, item_ids: np.ndarray, ts: int) -> None:
        ids, ts = _as_ids(item_ids, "item_ids"), _check_time(ts, "ts")
        _check_user(user_key)
        with self._lock:
            self._check_open()
            f = self._filters.get(user_key)
            if f is None:
                f = self._filters[user_key] = self._new_filter()
            f.add(ids, ts)

    def filter(self, user_key: str, candidate_ids: np.ndarray, now: int) -> np.ndarray:
        ids, now = _as_ids(candidate_ids, "candidate_ids"), _check_time(now, "now")
        _check_user(user_key)
        with self._lock:
            self._check_open()
            f = self._filters.get(user_key)
            return np.zeros(ids.size, dtype=bool) if f is None else f.contains(ids, now)

    def remove(self, user_key: str, item_ids: np.ndarray) -> None:
        ids = _as_ids(item_ids, "item_ids")
        _check_user(user_key)
        with self._lock:
            self._check_open()
            f = self._filters.get(user_key)
            if f is not None:
                f.remove(ids)

    def close(self) -> None:
        self._filters.clear()
        super().close()


# ---------------------------------------------------------------------------------------------

_SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS exposure_slices (
    user_key TEXT NOT NULL,
    slice    INTEGER NOT NULL,
    blob     BLOB NOT NULL,
    PRIMARY KEY (user_key, slice)
) WITHOUT ROWID;
"""
_FORMAT = "funnelrec-exposure-v1"


@EXPOSURE_STORES.register("sqlite")
class SQLiteExposureStore(ExposureStore):
    """Exposure store in one SQLite file (WAL mode), one row per (user, time slice).

    Durability: `add`/`remove` run in their own `BEGIN IMMEDIATE … COMMIT` and return after the
    commit. With synchronous="NORMAL" (default) the commit is in the WAL file, so it survives
    the process being killed (SIGKILL) but an OS crash or power loss can lose the last commits;
    synchronous="FULL" fsyncs every commit and survives those too (slower).

    Speed: per-user filters stay in an LRU cache of at most `cache_bytes`; `filter` on a cached
    user is a pure in-memory lookup. Several processes may share the file: each call reads
    `PRAGMA data_version` and drops its cache when another connection has committed, and the
    write lock of BEGIN IMMEDIATE serializes read-modify-write of a slice, so no update is lost.
    The store is safe to share between threads (one lock).
    """

    def __init__(
        self,
        path: str | Path,
        config: CountingBloomConfig | None = None,
        cache_bytes: int = 256 << 20,
        synchronous: str = "NORMAL",
    ) -> None:
        super().__init__(config)
        self.path = Path(path)
        self.cache_bytes = cache_bytes
        self.synchronous = synchronous
        self._cache: OrderedDict[str, CountingBloomFilter] = OrderedDict()
        self._sizes: dict[str, int] = {}  # user → bytes charged for its cached filter
        self._cached_bytes = 0
        self._meta = SQLiteKV(self.path, "meta", synchronous=synchronous, what="exposure store")
        self._db, self._lock = self._meta.db, self._meta.lock
        try:
            self._db.executescript(_SQLITE_SCHEMA)
            want = json.dumps({"format": _FORMAT, **asdict(self.config)}, sort_keys=True)
            have = self._meta.put_if_absent("config", want).decode()
            self._data_version = self._read_data_version()
        except sqlite3.DatabaseError as e:
            raise ArtifactError(f"exposure store {self.path} is not a usable SQLite database: {e}") from None
        if have != want:
            self._meta.close()
            raise ConfigError(f"exposure store {self.path} was created with {have}; this store is configured with {want}")

    @classmethod
    def from_state(cls, *, state_dir: str | Path | None = None, redis_url: str | None = None,
                   prefix: str = "funnelrec:", config: CountingBloomConfig | None = None) -> SQLiteExposureStore:
        return cls(Path(state_location(state_dir, "sqlite", "state_dir")) / "exposure.db", config)

    def _read_data_version(self) -> int:
        return self._db.execute("PRAGMA data_version").fetchone()[0]

    def _sync_cache(self) -> None:
        """Drop the cache if another connection committed since we last looked."""
        version = self._read_data_version()
        if version != self._data_version:
            self._clear_cache()
            self._data_version = version

    @staticmethod
    def _footprint(f: CountingBloomFilter) -> int:
        return f.nbytes + (f.m + 7) // 8 + 512

    def _load(self, user_key: str) -> CountingBloomFilter:
        f = self._cache.get(user_key)
        if f is not None:
            self._cache.move_to_end(user_key)
        else:
            f = self._new_filter()
            rows = self._db.execute(
                "SELECT slice, blob FROM exposure_slices WHERE user_key = ?", (user_key,)
            ).fetchall()
            try:
                got = f.load_slices([blob for _, blob in rows])
            except ArtifactError as e:
                raise ArtifactError(f"exposure filter of user {user_key!r}: {e}") from None
            if got != [slice_id for slice_id, _ in rows]:
                raise ArtifactError(f"exposure filter of user {user_key!r}: rows {[r[0] for r in rows]} hold slices {got}")
            self._cache[user_key] = f
            self._account(user_key, f)
        return f

    def _account(self, user_key: str, f: CountingBloomFilter) -> None:
        """Charge the cache with `f`'s current size (it grows and shrinks with its slices), then
        evict least recently used users beyond `cache_bytes`."""
        size = self._footprint(f)
        self._cached_bytes += size - self._sizes.get(user_key, 0)
        self._sizes[user_key] = size
        while self._cached_bytes > self.cache_bytes and len(self._cache) > 1:
            old, _ = self._cache.popitem(last=False)
            self._cached_bytes -= self._sizes.pop(old)

    def _forget(self, user_key: str) -> None:
        if self._cache.pop(user_key, None) is not None:
            self._cached_bytes -= self._sizes.pop(user_key)

    def _clear_cache(self) -> None:
        self._cache.clear()
        self._sizes.clear()
        self._cached_bytes = 0

    def _write(self, user_key: str, f: CountingBloomFilter, slice_ids: list[int], first: int | None) -> None:
        self._db.executemany(
            "INSERT OR REPLACE INTO exposure_slices VALUES (?, ?, ?)",
            [(user_key, s, f.slice_to_bytes(s)) for s in slice_ids if s in f.slice_ids],
        )
        if first is not None:
            self._db.execute("DELETE FROM exposure_slices WHERE user_key = ? AND slice < ?", (user_key, first))

    def _transaction(self, user_key: str, change) -> None:
        with self._lock:
            self._check_open()
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._sync_cache()  # under the write lock: sees every earlier commit
                f = self._load(user_key)
                slice_ids, first = change(f)
                self._write(user_key, f, slice_ids, first)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                self._forget(user_key)  # its in-memory state may be ahead of the database
                raise
            self._data_version = self._read_data_version()
            self._account(user_key, f)  # the change may have added or dropped slices

    def add(self, user_key: str, item_ids: np.ndarray, ts: int) -> None:
        ids, ts = _as_ids(item_ids, "item_ids"), _check_time(ts, "ts")
        _check_user(user_key)
        if ids.size == 0:
            return

        def change(f: CountingBloomFilter) -> tuple[list[int], int | None]:
            f.add(ids, ts)
            return [f.slice_of(ts)], f.first_active_slice(ts)

        self._transaction(user_key, change)

    def remove(self, user_key: str, item_ids: np.ndarray) -> None:
        ids = _as_ids(item_ids, "item_ids")
        _check_user(user_key)
        if ids.size:
            self._transaction(user_key, lambda f: (f.remove(ids), None))

    def filter(self, user_key: str, candidate_ids: np.ndarray, now: int) -> np.ndarray:
        ids, now = _as_ids(candidate_ids, "candidate_ids"), _check_time(now, "now")
        _check_user(user_key)
        with self._lock:
            self._check_open()
            self._sync_cache()
            return self._load(user_key).contains(ids, now)

    def purge(self, now: int) -> int:
        """Delete the slices of all users that are out of the window at `now`; returns rows deleted."""
        first = self._template.first_active_slice(_check_time(now, "now"))
        if first is None:
            return 0
        with self._lock:
            self._check_open()
            n = self._db.execute("DELETE FROM exposure_slices WHERE slice < ?", (first,)).rowcount
            self._clear_cache()
            self._data_version = self._read_data_version()
            return n

    def flush(self) -> None:
        """Commits are already durable (see the class doc); this checkpoints the WAL into the file."""
        with self._lock:
            self._check_open()
            self._db.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._meta.close()
                self._clear_cache()
                self._closed = True


# ---------------------------------------------------------------------------------------------


@EXPOSURE_STORES.register("redis")
class RedisExposureStore(ExposureStore):
    """Exposure store in Redis: one hash per user, `{prefix}u:{user_key}` → {slice id: slice blob}.

    filter: one HGETALL (one round trip for any number of candidates), then the Bloom test
    runs in the client. add/remove: optimistic transaction (WATCH the user's hash, read, update
    the counters, MULTI/EXEC; retried when another worker wrote in between), so concurrent
    workers never lose an update. Every add resets the key's TTL to window_s + slice_s seconds,
    so users who stop coming back disappear without a sweep. Writes are as durable as the
    server's persistence settings (AOF/RDB) make them.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 6379,
        db: int = 0,
        config: CountingBloomConfig | None = None,
        prefix: str = "funnelrec:exposure:",
    ) -> None:
        super().__init__(config)
        import redis

        self._redis_mod = redis
        self.prefix = prefix
        self._meta = RedisKV(url, host=host, port=port, db=db, prefix=prefix)
        self._client = self._meta.client
        want = json.dumps({"format": _FORMAT, **asdict(self.config)}, sort_keys=True)
        have = self._meta.put_if_absent("meta", want).decode()
        if have != want:
            self._meta.close()
            raise ConfigError(f"exposure store at {self._meta.where}/{prefix} was created with {have}; "
                              f"this store is configured with {want}")

    @classmethod
    def from_state(cls, *, state_dir: str | Path | None = None, redis_url: str | None = None,
                   prefix: str = "funnelrec:", config: CountingBloomConfig | None = None) -> RedisExposureStore:
        return cls(state_location(redis_url, "redis", "redis_url"), config=config, prefix=prefix + "exposure:")

    def _key(self, user_key: str) -> str:
        return f"{self.prefix}u:{_check_user(user_key)}"

    def _build(self, user_key: str, fields: dict, first: int | None) -> CountingBloomFilter:
        f = self._new_filter()
        try:
            slice_ids = [int(field) for field in fields]
        except ValueError:
            raise ArtifactError(f"exposure filter of user {user_key!r} has non-slice fields {list(fields)}") from None
        wanted = [(s, blob) for s, blob in zip(slice_ids, fields.values()) if first is None or s >= first]
        try:
            got = f.load_slices([blob for _, blob in wanted])
        except ArtifactError as e:
            raise ArtifactError(f"exposure filter of user {user_key!r}: {e}") from None
        if got != [s for s, _ in wanted]:
            raise ArtifactError(f"exposure filter of user {user_key!r}: fields {[s for s, _ in wanted]} hold slices {got}")
        return f

    def _hgetall(self, client, key: str) -> dict:
        try:
            return client.hgetall(key)
        except self._redis_mod.ResponseError as e:  # WRONGTYPE: the key is not a hash
            raise ArtifactError(f"exposure filter at Redis key {key!r} is not a hash: {e}") from None

    def filter(self, user_key: str, candidate_ids: np.ndarray, now: int) -> np.ndarray:
        self._check_open()
        ids, now = _as_ids(candidate_ids, "candidate_ids"), _check_time(now, "now")
        fields = self._hgetall(self._client, self._key(user_key))
        if not fields:
            return np.zeros(ids.size, dtype=bool)
        f = self._build(user_key, fields, self._template.first_active_slice(now))
        return f.contains(ids, now)

    def _transaction(self, user_key: str, change) -> None:
        self._check_open()
        key = self._key(user_key)
        ttl = None if self.config.window_s is None else self.config.window_s + self.config.slice_s
        with self._client.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    fields = self._hgetall(pipe, key)
                    f = self._build(user_key, fields, None)
                    slice_ids = change(f)
                    kept = set(f.slice_ids)
                    gone = [fld for fld in fields if int(fld) not in kept]
                    pipe.multi()
                    for s in slice_ids:
                        if s in kept:
                            pipe.hset(key, str(s), f.slice_to_bytes(s))
                    if gone:
                        pipe.hdel(key, *gone)
                    if ttl is not None and slice_ids:
                        pipe.expire(key, ttl)
                    pipe.execute()
                    return
                except self._redis_mod.WatchError:
                    continue

    def add(self, user_key: str, item_ids: np.ndarray, ts: int) -> None:
        ids, ts = _as_ids(item_ids, "item_ids"), _check_time(ts, "ts")
        if ids.size == 0:
            return

        def change(f: CountingBloomFilter) -> list[int]:
            f.add(ids, ts)
            return [f.slice_of(ts)]

        self._transaction(user_key, change)

    def remove(self, user_key: str, item_ids: np.ndarray) -> None:
        ids = _as_ids(item_ids, "item_ids")
        if ids.size:
            self._transaction(user_key, lambda f: f.remove(ids))

    def close(self) -> None:
        if not self._closed:
            self._client.close()
        super().close()
