"""Result caches: each user's last fine-ranked results, fed back by the "cache" recall channel.

A `ResultCache` is a key-value backend of store.py (memory, SQLite, Redis) plus one blob format:
N item keys (int64) followed by their N scores (float32), 12·N bytes, native byte order.
Three backends registered in `RESULT_CACHES`, the same names as `EXPOSURE_STORES`, so that
`build_state_stores(backend)` builds a service's exposure store and result cache alike:

- "memory" — `MemoryResultCache`: a dict (tests, ephemeral use);
- "sqlite" — `SQLiteResultCache`: table results(user_key, blob) in `{state_dir}/results.db`;
- "redis"  — `RedisResultCache`: key `{prefix}results:{user_key}`, expiring after `ttl_s`.

    >>> cache = MemoryResultCache()
    >>> cache.put("u1", np.array([42, 7]), np.array([0.5, 0.25]))
    >>> keys, scores = cache.get("u1")
    >>> keys.tolist(), scores.tolist()
    ([42, 7], [0.5, 0.25])
    >>> cache.get("u2") is None
    True
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from funnelrec.core.errors import ArtifactError, DataError
from funnelrec.core.registry import EXPOSURE_STORES, RESULT_CACHES
from funnelrec.filter.bloom import CountingBloomConfig
from funnelrec.filter.store import (
    ExposureStore,
    KeyValueBackend,
    MemoryKV,
    RedisKV,
    SQLiteKV,
    state_location,
)

__all__ = ["ResultCache", "MemoryResultCache", "SQLiteResultCache", "RedisResultCache", "build_state_stores"]


class ResultCache:
    """Last fine-ranked results per user over a key-value backend:
    put(user_key, item keys (N,) int64, scores (N,) float32), get(user_key) → (keys, scores) or
    None. A put replaces the user's previous results. A stored blob whose length is not a
    multiple of 12 bytes raises ArtifactError naming the user."""

    registered_name = "result cache"

    def __init__(self, kv: KeyValueBackend, ttl_s: int | None = None) -> None:
        self.kv = kv
        self.ttl_s = ttl_s

    @classmethod
    def from_state(cls, *, state_dir: str | Path | None = None, redis_url: str | None = None,
                   prefix: str = "funnelrec:") -> ResultCache:
        """The cache of a service's state (see `build_state_stores`)."""
        raise NotImplementedError

    @staticmethod
    def _pack(keys: np.ndarray, scores: np.ndarray) -> bytes:
        keys, scores = np.asarray(keys, np.int64), np.asarray(scores, np.float32)
        if keys.shape != scores.shape or keys.ndim != 1:
            raise DataError(f"result cache: keys {keys.shape} and scores {scores.shape} must be the same (N,)")
        return keys.tobytes() + scores.tobytes()

    @staticmethod
    def _unpack(blob: bytes) -> tuple[np.ndarray, np.ndarray]:
        if len(blob) % 12:
            raise ArtifactError(f"cached result blob of {len(blob)} bytes is not N×(8+4)")
        n = len(blob) // 12
        return np.frombuffer(blob, np.int64, n).copy(), np.frombuffer(blob, np.float32, n, offset=8 * n).copy()

    def put(self, user_key: str, keys: np.ndarray, scores: np.ndarray) -> None:
        self.kv.put(user_key, self._pack(keys, scores), self.ttl_s)

    def get(self, user_key: str) -> tuple[np.ndarray, np.ndarray] | None:
        blob = self.kv.get(user_key)
        if blob is None:
            return None
        try:
            return self._unpack(blob)
        except ArtifactError as e:
            raise ArtifactError(f"cached results of user {user_key!r}: {e}") from None

    def close(self) -> None:
        self.kv.close()


@RESULT_CACHES.register("memory")
class MemoryResultCache(ResultCache):
    def __init__(self) -> None:
        super().__init__(MemoryKV())

    @classmethod
    def from_state(cls, *, state_dir: str | Path | None = None, redis_url: str | None = None,
                   prefix: str = "funnelrec:") -> MemoryResultCache:
        return cls()


@RESULT_CACHES.register("sqlite")
class SQLiteResultCache(ResultCache):
    """One row per user in a SQLite file (WAL, synchronous=NORMAL: survives SIGKILL)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        super().__init__(SQLiteKV(self.path, "results", key_column="user_key", value_column="blob",
                                  what="result cache"))

    @classmethod
    def from_state(cls, *, state_dir: str | Path | None = None, redis_url: str | None = None,
                   prefix: str = "funnelrec:") -> SQLiteResultCache:
        return cls(Path(state_location(state_dir, "sqlite", "state_dir")) / "results.db")


@RESULT_CACHES.register("redis")
class RedisResultCache(ResultCache):
    """One string key per user, `{prefix}results:{user_key}`, expiring after `ttl_s`."""

    def __init__(self, url: str, prefix: str = "funnelrec:", ttl_s: int = 7 * 86400) -> None:
        self.prefix = prefix
        super().__init__(RedisKV(url, prefix=prefix + "results:"), ttl_s)

    @classmethod
    def from_state(cls, *, state_dir: str | Path | None = None, redis_url: str | None = None,
                   prefix: str = "funnelrec:") -> RedisResultCache:
        return cls(state_location(redis_url, "redis", "redis_url"), prefix=prefix)


def build_state_stores(backend: str, *, state_dir: str | Path | None = None, redis_url: str | None = None,
                       prefix: str = "funnelrec:", exposure_config: CountingBloomConfig | None = None,
                       ) -> tuple[ExposureStore, ResultCache]:
    """A service's exposure store and result cache, both of `backend` ("memory", "sqlite" with
    `state_dir`, "redis" with `redis_url` and key `prefix`), built through `EXPOSURE_STORES` and
    `RESULT_CACHES`. An unknown backend raises UnknownComponentError listing the known ones."""
    exposure_cls, results_cls = EXPOSURE_STORES.get(backend), RESULT_CACHES.get(backend)
    exposure = exposure_cls.from_state(state_dir=state_dir, redis_url=redis_url, prefix=prefix, config=exposure_config)
    try:
        results = results_cls.from_state(state_dir=state_dir, redis_url=redis_url, prefix=prefix)
    except BaseException:
        exposure.close()
        raise
    return exposure, results
