"""Exposure filtering: counting Bloom filters with a time window, per-user exposure stores, and the
result caches that share the stores' key-value backends."""

from funnelrec.filter.bloom import (
    DAY,
    CountingBloomConfig,
    CountingBloomFilter,
    bloom_positions,
    bloom_size,
    expected_fp_rate,
    hash64,
)
from funnelrec.filter.results import (
    MemoryResultCache,
    RedisResultCache,
    ResultCache,
    SQLiteResultCache,
    build_state_stores,
)
from funnelrec.filter.store import (
    DEFAULT_EXPOSURE_CONFIG,
    ExposureStore,
    MemoryExposureStore,
    RedisExposureStore,
    SQLiteExposureStore,
)

__all__ = [
    "DAY",
    "DEFAULT_EXPOSURE_CONFIG",
    "CountingBloomConfig",
    "CountingBloomFilter",
    "ExposureStore",
    "MemoryExposureStore",
    "MemoryResultCache",
    "RedisExposureStore",
    "RedisResultCache",
    "ResultCache",
    "SQLiteExposureStore",
    "SQLiteResultCache",
    "bloom_positions",
    "bloom_size",
    "build_state_stores",
    "expected_fp_rate",
    "hash64",
]
