"""Exposure filtering: Bloom and counting Bloom filters, per-user exposure stores."""

from funnelrec.filter.bloom import (
    DAY,
    BloomFilter,
    CountingBloomConfig,
    CountingBloomFilter,
    bloom_positions,
    bloom_size,
    expected_fp_rate,
    hash64,
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
    "BloomFilter",
    "CountingBloomConfig",
    "CountingBloomFilter",
    "ExposureStore",
    "MemoryExposureStore",
    "RedisExposureStore",
    "SQLiteExposureStore",
    "bloom_positions",
    "bloom_size",
    "expected_fp_rate",
    "hash64",
]
