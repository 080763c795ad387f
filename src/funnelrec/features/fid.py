"""Feature ids (FIDs): every feature value becomes one 64-bit integer.

Layout of a FID (stored as int64, read as the same 64 bits):

    bits 63..54  slot id    (SLOT_BITS = 10 → slots 0..1023; one slot per feature field)
    bits 53..0   hash       (HASH_BITS = 54 low bits of xxhash64(value bytes, seed=0))

    fid = (slot << 54) | (xxh64(value) & (2**54 - 1))

The same value in two slots gives two different FIDs (the slot bits differ), so fields never
share an embedding row by accident. Values are hashed as bytes: str → UTF-8, int → 8 bytes
little-endian two's complement, float → 8 bytes IEEE-754, bool → int; None/null → the
padding FID 0 (maps to embedding row 0). xxhash is stable across versions and machines,
unlike polars' `hash` — FIDs written today decode the same next year.

Hashing is vectorized by hashing only the *unique* values of a column (one xxhash call each)
and mapping back with the inverse index (`np.unique(..., return_inverse=True)`), so a column
of 1M rows with 10k distinct values costs 10k hash calls.

`FidVocab` then tensorizes once: sorted unique admitted FIDs + `np.searchsorted` → dense
embedding rows (row 0 = padding/unknown), one shared table for all fields.

    >>> f = fid_column(3, np.array(["a", "b", "a"]))
    >>> slot_of(f).tolist()
    [3, 3, 3]
    >>> bool(f[0] == f[2]) and bool(f[0] != f[1])
    True
    >>> v = FidVocab().fit(f)
    >>> rows = v.lookup(f); v.n_rows, bool(rows[0] == rows[2]), sorted(set(rows.tolist()))
    (3, True, [1, 2])
"""

from __future__ import annotations

import struct

import numpy as np
import polars as pl
import xxhash

from funnelrec.core.errors import ConfigError, NotFittedError

SLOT_BITS = 10
HASH_BITS = 64 - SLOT_BITS
MAX_SLOT = (1 << SLOT_BITS) - 1
HASH_MASK = np.uint64((1 << HASH_BITS) - 1)
PAD_FID = 0  # null / missing value; maps to embedding row 0


def _value_bytes(v) -> bytes:
    if isinstance(v, bytes):
        return v
    if isinstance(v, str):
        return v.encode("utf-8")
    if isinstance(v, (bool, np.bool_)):
        return struct.pack("<q", int(v))
    if isinstance(v, (int, np.integer)):
        return struct.pack("<q", int(v))
    if isinstance(v, (float, np.floating)):
        return struct.pack("<d", float(v))
    return str(v).encode("utf-8")


def hash_values(values) -> np.ndarray:
    """(N,) uint64 xxhash64 of each value; equal values hash once (unique + inverse)."""
    arr = _as_array(values)
    if arr.size == 0:
        return np.zeros(0, dtype=np.uint64)
    uniq, inv = np.unique(arr, return_inverse=True)
    hu = np.fromiter((xxhash.xxh64_intdigest(_value_bytes(v)) for v in uniq.tolist()),
                     dtype=np.uint64, count=len(uniq))
    return hu[inv.reshape(-1)]


def _as_array(values) -> np.ndarray:
    if isinstance(values, pl.Series):
        values = values.to_numpy()
    arr = np.asarray(values)
    if arr.dtype == object:
        # mixed or str objects: unify to str so np.unique can sort them
        arr = np.array([str(v) for v in arr.tolist()])
    return arr.reshape(-1)


def make_fid(slot: int, hashes: np.ndarray, hash_bits: int = HASH_BITS) -> np.ndarray:
    """int64 FIDs = (slot << 54) | (hash & mask). `hash_bits` < 54 shrinks the hash space
    (used to measure collisions on purpose)."""
    if not 0 <= slot <= MAX_SLOT:
        raise ConfigError(f"slot {slot} out of range 0..{MAX_SLOT} ({SLOT_BITS} slot bits)")
    if not 1 <= hash_bits <= HASH_BITS:
        raise ConfigError(f"hash_bits {hash_bits} out of range 1..{HASH_BITS}")
    mask = np.uint64((1 << hash_bits) - 1)
    h = np.asarray(hashes, dtype=np.uint64) & mask
    fid = (np.uint64(slot) << np.uint64(HASH_BITS)) | h
    return fid.view(np.int64)


def fid_column(slot: int, values, hash_bits: int = HASH_BITS) -> np.ndarray:
    """(N,) int64 FIDs of a single-valued column (nulls → PAD_FID)."""
    if isinstance(values, pl.Series):
        nulls = values.is_null().to_numpy()
        out = np.zeros(values.len(), dtype=np.int64)
        if not nulls.all():
            out[~nulls] = make_fid(slot, hash_values(values.drop_nulls()), hash_bits)
        return out
    return make_fid(slot, hash_values(values), hash_bits)


def fid_multi_column(slot: int, values: pl.Series, width: int, hash_bits: int = HASH_BITS) -> np.ndarray:
    """(N, width) int64 FIDs of a multi-valued (list) column: the first `width` values of each
    row, PAD_FID where a row has fewer."""
    if width < 1:
        raise ConfigError(f"width of multi-valued column {values.name!r} must be ≥ 1")
    n = values.len()
    lengths = values.list.len().fill_null(0).to_numpy().astype(np.int64)
    flat = values.explode().drop_nulls() if n else values
    out = np.zeros((n, width), dtype=np.int64)
    if flat.len() == 0:
        return out
    fids = make_fid(slot, hash_values(flat), hash_bits)
    rows = np.repeat(np.arange(n), lengths)
    starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
    pos = np.arange(len(rows)) - starts
    keep = pos < width
    out[rows[keep], pos[keep]] = fids[keep]
    return out


def slot_of(fids: np.ndarray) -> np.ndarray:
    """(N,) int64 slot ids of FIDs."""
    return (np.asarray(fids, dtype=np.int64).view(np.uint64) >> np.uint64(HASH_BITS)).astype(np.int64)


def hash_of(fids: np.ndarray) -> np.ndarray:
    """(N,) uint64 hash bits of FIDs."""
    return np.asarray(fids, dtype=np.int64).view(np.uint64) & HASH_MASK


def mix64(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Vectorized, stable 64-bit mix of two hash arrays (splitmix64 finalizer of a·φ ⊕ b),
    used to hash feature crosses without leaving numpy."""
    with np.errstate(over="ignore"):
        x = np.asarray(a, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15) ^ np.asarray(b, dtype=np.uint64)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def count_collisions(values, slot: int = 0, hash_bits: int = HASH_BITS) -> int:
    """Number of distinct values that share a FID with another distinct value
    (= distinct values − distinct FIDs)."""
    uniq = np.unique(_as_array(values))
    return int(len(uniq) - len(np.unique(make_fid(slot, hash_values(uniq), hash_bits))))


class FidVocab:
    """FID → dense embedding row, fitted once: sorted unique admitted FIDs, `np.searchsorted`.

    Row 0 is padding/unknown: PAD_FID, FIDs never seen, and FIDs seen fewer than `min_count`
    times (admission) all map to it. `evict(min_count)` drops rare rows after more data.
    """

    def __init__(self, min_count: int = 1) -> None:
        if min_count < 1:
            raise ConfigError(f"min_count must be ≥ 1, got {min_count}")
        self.min_count = min_count

    def fit(self, fids: np.ndarray) -> FidVocab:
        f = np.asarray(fids, dtype=np.int64).reshape(-1)
        f = f[f != PAD_FID]
        uniq, counts = np.unique(f, return_counts=True)
        keep = counts >= self.min_count
        self.fids_ = uniq[keep]
        self.counts_ = counts[keep]
        self.n_rejected_ = int((~keep).sum())
        return self

    @property
    def n_rows(self) -> int:
        """Embedding rows needed: admitted FIDs + row 0."""
        self._check()
        return len(self.fids_) + 1

    def _check(self) -> None:
        if not hasattr(self, "fids_"):
            raise NotFittedError("FidVocab is not fitted; call fit(fids) first")

    def lookup(self, fids: np.ndarray) -> np.ndarray:
        """int64 rows of the same shape as `fids`; 0 for padding/unknown."""
        self._check()
        f = np.asarray(fids, dtype=np.int64)
        if len(self.fids_) == 0:
            return np.zeros(f.shape, dtype=np.int64)
        pos = np.searchsorted(self.fids_, f)
        pos_c = np.minimum(pos, len(self.fids_) - 1)
        hit = self.fids_[pos_c] == f
        return np.where(hit, pos_c + 1, 0).astype(np.int64)

    def evict(self, min_count: int) -> np.ndarray:
        """Drop FIDs seen fewer than `min_count` times; returns the evicted FIDs. Rows shift, so
        re-run `lookup` (and rebuild embeddings) afterwards."""
        self._check()
        keep = self.counts_ >= min_count
        evicted = self.fids_[~keep]
        self.fids_, self.counts_ = self.fids_[keep], self.counts_[keep]
        return evicted
