"""Counting Bloom filters over int64 ids with a time window, vectorized with numpy (exposure
filtering: "has this user already been shown this item?"). There is no plain Bloom filter here:
nothing needs one that cannot be removed from or expired (rbloom is the library to reach for).

Sizing, for capacity n and target false-positive rate p at n insertions:

    m = ceil(-n ln p / (ln 2)^2)  bits (counters),   k = max(1, round((m / n) ln 2))  positions
    FPR after n insertions ≈ (1 - e^(-k n / m))^k   (≈ p; the rounding of m and k moves it a little)

Hashing: one 64-bit hash per id, h = splitmix64(id + (seed + 1)·γ), γ = 0x9E3779B97F4A7C15 (the
splitmix64 generator's output for state id + seed·γ; id 0, seed 0 gives 0xE220A8397B1DCDAF). It is
computed with numpy over the whole int64 array at once — per-id `xxhash.xxh3_64` calls cost
~0.2 µs each in Python (0.2 ms for 1,000 candidates, the whole latency budget), the numpy mixer
~10 µs for the batch (bench/bloom.py measures both). The k positions come from double hashing
(Kirsch & Mitzenmacher, 2006), reduced to [0, m) by multiply-shift:

    h1 = h mod 2^32,  h2 = h >> 32,   g_i = floor(((h1 + i·h2) mod 2^32) · m / 2^32),  i = 0..k-1

so m is limited to 2^32 (512 MiB of bits; capacity ~450 M at p = 1%). A batch of N ids is one
(k, N) position matrix and one gather (docs/BENCHMARKS.md has the latencies).

    >>> cb = CountingBloomFilter(capacity=1000, fp_rate=0.01)
    >>> (cb.m, cb.k)
    (9586, 7)
    >>> cb.add(np.array([3, 5, 8]))
    >>> cb.contains(np.array([3, 4, 5])).tolist()
    [True, False, True]
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

import numpy as np
import xxhash

from funnelrec.core.errors import ArtifactError, ConfigError, DataError

_GAMMA = 0x9E3779B97F4A7C15
_MASK64 = (1 << 64) - 1
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_LOW32 = np.uint64(0xFFFFFFFF)
_MAX_M = 1 << 32
DAY = 86_400

_COUNTING_MAGIC = b"FRCB"
_SLICE_MAGIC = b"FRCS"
_VERSION = 1
# magic, version, capacity, fp_rate, window_s (-1: none), slice_s, seed, n_slices
_COUNTING_HEADER = struct.Struct("<4sHQdqqQQ")
# magic, version, m, k, seed, slice_id, count, payload_len
_SLICE_HEADER = struct.Struct("<4sHQIQqQQ")
_CHECKSUM = struct.Struct("<Q")


# ---------------------------------------------------------------------------------------------
# sizing and hashing


def bloom_size(capacity: int, fp_rate: float) -> tuple[int, int]:
    """(m, k) for `capacity` insertions at false-positive rate `fp_rate`: m = ceil(-n ln p / ln²2),
    k = max(1, round(m/n · ln 2))."""
    if isinstance(capacity, bool) or not isinstance(capacity, int | np.integer) or capacity <= 0:
        raise ConfigError(f"Bloom filter capacity must be a positive int, got {capacity!r}")
    if not isinstance(fp_rate, float | int | np.floating) or not 0.0 < float(fp_rate) < 1.0:
        raise ConfigError(f"Bloom filter fp_rate must lie in (0, 1), got {fp_rate!r}")
    n, p = int(capacity), float(fp_rate)
    m = math.ceil(-n * math.log(p) / (math.log(2) ** 2))
    if m > _MAX_M:
        raise ConfigError(
            f"Bloom filter for capacity {n} at fp_rate {p} needs {m} bits; at most 2^32 are supported"
        )
    k = max(1, round(m / n * math.log(2)))
    return m, k


def expected_fp_rate(m: int, k: int, n: int) -> float:
    """Theoretical false-positive rate (1 - e^(-k n / m))^k after n insertions."""
    return (1.0 - math.exp(-k * n / m)) ** k


def _as_ids(ids: np.ndarray, what: str = "ids") -> np.ndarray:
    a = np.asarray(ids)
    if a.ndim != 1:
        raise DataError(f"{what} must be a 1-D array, got shape {a.shape}")
    if a.dtype.kind not in "iu":
        if a.size == 0:
            return np.zeros(0, dtype=np.int64)
        raise DataError(f"{what} must be integers, got dtype {a.dtype}")
    return a.astype(np.int64, copy=False)


def hash64(ids: np.ndarray, seed: int = 0) -> np.ndarray:
    """splitmix64(id + (seed+1)·γ) of each int64 id → (N,) uint64."""
    offset = np.uint64(((seed + 1) * _GAMMA) & _MASK64)
    z = _as_ids(ids).view(np.uint64) + offset
    z ^= z >> np.uint64(30)
    z *= _M1
    z ^= z >> np.uint64(27)
    z *= _M2
    z ^= z >> np.uint64(31)
    return z


def bloom_positions(ids: np.ndarray, m: int, k: int, seed: int = 0) -> np.ndarray:
    """(k, N) uint64 positions in [0, m) by double hashing of h = hash64(ids):
    g_i = floor(((h1 + i·h2) mod 2^32) · m / 2^32), h1 = h mod 2^32, h2 = h >> 32.

    The reduction to [0, m) is Lemire's multiply-shift instead of `mod m`: same uniformity, no
    64-bit division (numpy's uint64 `%` made positions 1.5× slower). Row-major (k, N) so the
    "all k bits set" reduction runs along the long axis."""
    h32 = hash64(ids, seed).view(np.uint32).reshape(-1, 2)  # little-endian: [:, 0] low, [:, 1] high
    x = np.arange(k, dtype=np.uint32)[:, None] * h32[:, 1][None, :]  # wraps mod 2^32
    x += h32[:, 0][None, :]
    pos = x.astype(np.uint64)
    pos *= np.uint64(m)
    pos >>= np.uint64(32)
    return pos


def _checksum(data: bytes | memoryview) -> int:
    return xxhash.xxh3_64_intdigest(data)


def _split_checksum(blob: bytes, what: str) -> memoryview:
    if not isinstance(blob, bytes | bytearray | memoryview):
        raise ArtifactError(f"{what} must be bytes, got {type(blob).__name__}")
    view = memoryview(blob)
    if len(view) < _CHECKSUM.size + 4:
        raise ArtifactError(f"{what} is truncated ({len(view)} bytes)")
    body, (stored,) = view[: -_CHECKSUM.size], _CHECKSUM.unpack(view[-_CHECKSUM.size :])
    if _checksum(body) != stored:
        raise ArtifactError(f"{what} is corrupt: checksum mismatch")
    return body


def _open_blob(blob: bytes, layout: struct.Struct, magic: bytes, what: str) -> tuple[tuple, memoryview]:
    """Check a serialized blob's checksum, length, magic and version → (header fields, body)."""
    body = _split_checksum(blob, what)
    if len(body) < layout.size:
        raise ArtifactError(f"{what} is truncated")
    header = layout.unpack(body[: layout.size])
    if header[0] != magic:
        raise ArtifactError(f"{what}: bad magic {header[0]!r}, expected {magic!r}")
    if header[1] != _VERSION:
        raise ArtifactError(f"{what}: unsupported format version {header[1]}, expected {_VERSION}")
    return header, body


def _set_bits(bits: np.ndarray, pos: np.ndarray) -> None:
    """Set bit g (byte g >> 3, bit g & 7, little-endian bit order) for every g in pos."""
    pos = pos.ravel()
    np.bitwise_or.at(bits, pos >> np.uint64(3), np.left_shift(np.uint8(1), (pos & np.uint64(7)).astype(np.uint8)))


def _test_bits(bits: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """(N,) bool: all k bits set, for pos (k, N)."""
    b = bits[pos >> np.uint64(3)]
    b >>= (pos & np.uint64(7)).astype(np.uint8)
    b &= 1
    return np.logical_and.reduce(b, axis=0).astype(bool, copy=False)


# ---------------------------------------------------------------------------------------------
# counting Bloom filter with a time window


@dataclass(frozen=True)
class CountingBloomConfig:
    """Mirrors `CountingBloomFilter`'s constructor (see there)."""

    capacity: int = 2000
    fp_rate: float = 0.01
    window_s: int | None = None
    slice_s: int = DAY
    seed: int = 0

    def build(self) -> CountingBloomFilter:
        return CountingBloomFilter(self.capacity, self.fp_rate, self.window_s, self.slice_s, self.seed)


class CountingBloomFilter:
    """Counting Bloom filter with 4-bit counters and an optional time window.

    Counters: m 4-bit counters packed two per byte (position g in byte g >> 1, low nibble for
    even g, high nibble for odd g), so a slice takes ceil(m/2) bytes — half of uint8 counters,
    4× a plain Bloom filter. A counter saturates at 15 and then is never decremented (a
    decrement could then hit a counter other ids still need: a false negative).

    Time window: time is cut into slices of `slice_s` seconds (slice s = ts // slice_s), each its
    own counter array, so expiry is dropping whole arrays. Slice s is *active* at `now` while
    (s + 1)·slice_s > now - window_s: an exposure at ts keeps filtering for at least `window_s`
    and at most `window_s + slice_s` seconds. Slices out of the window are dropped on `add` (and
    by `expire(now)`). With `window_s=None` there is one slice and `ts`/`now` are ignored.

    `contains(ids, now)`: all k positions nonzero in the union of the active slices, i.e. the
    answer of a plain Bloom filter holding every id of the window — so FPR ≈ (1 - e^(-k n/m))^k
    for n ids in the window, = fp_rate at n = capacity however they spread over slices. The
    union is kept as a packed bit array (built once per set of active slices, OR-ed on `add`,
    rebuilt after `remove`/expiry), so `contains` costs one gather whatever the slice count.

    `remove(ids)` decrements, in every slice, only the ids that slice holds (all k counters
    nonzero; removing an id never added would break other ids); an id that is only a false
    positive of a slice can still decrement counters others share — the known limit of
    counting Bloom filters.
    """

    def __init__(
        self,
        capacity: int,
        fp_rate: float,
        window_s: int | None = None,
        slice_s: int = DAY,
        seed: int = 0,
    ) -> None:
        self.capacity = int(capacity) if isinstance(capacity, int | np.integer) else capacity
        self.fp_rate = fp_rate
        self.window_s = window_s
        self.slice_s = slice_s
        self.seed = seed
        self.m, self.k = bloom_size(capacity, fp_rate)
        if window_s is not None and (
            isinstance(window_s, bool) or not isinstance(window_s, int | np.integer) or window_s <= 0
        ):
            raise ConfigError(f"counting Bloom filter window_s must be a positive int or None, got {window_s!r}")
        if isinstance(slice_s, bool) or not isinstance(slice_s, int | np.integer) or slice_s <= 0:
            raise ConfigError(f"counting Bloom filter slice_s must be a positive int, got {slice_s!r}")
        self._nbytes_slice = (self.m + 1) // 2
        self._slices = np.zeros(0, dtype=np.int64)  # (S,) ascending slice ids
        self._counts = np.zeros(0, dtype=np.int64)  # (S,) ids added per slice
        self._counters = np.zeros((0, self._nbytes_slice), dtype=np.uint8)  # (S, ceil(m/2))
        # union bit array of the slices with id >= _union_from; None = not built
        self._union: np.ndarray | None = None
        self._union_from = 0

    @classmethod
    def from_config(cls, config: CountingBloomConfig) -> CountingBloomFilter:
        return config.build()

    @property
    def config(self) -> CountingBloomConfig:
        return CountingBloomConfig(self.capacity, self.fp_rate, self.window_s, self.slice_s, self.seed)

    @property
    def nbytes(self) -> int:
        """Bytes of counters (the persisted state); the union cache adds ceil(m/8)."""
        return self._counters.nbytes

    @property
    def slice_ids(self) -> list[int]:
        return self._slices.tolist()

    @property
    def count(self) -> int:
        """Ids added (with repeats) minus ids removed, over the slices kept."""
        return int(self._counts.sum())

    # -- time slices ----------------------------------------------------------------------

    def slice_of(self, ts: int | None) -> int:
        """Slice id holding an exposure at `ts` (0 when there is no window)."""
        if self.window_s is None:
            return 0
        if ts is None or isinstance(ts, bool) or not isinstance(ts, int | np.integer):
            raise DataError(f"a windowed counting Bloom filter needs an int timestamp, got {ts!r}")
        return int(ts) // self.slice_s

    def first_active_slice(self, now: int | None) -> int | None:
        """Oldest slice id still active at `now`: floor((now - window_s) / slice_s); None = all."""
        if self.window_s is None:
            return None
        if now is None or isinstance(now, bool) or not isinstance(now, int | np.integer):
            raise DataError(f"a windowed counting Bloom filter needs an int `now`, got {now!r}")
        return (int(now) - self.window_s) // self.slice_s

    def expire(self, now: int) -> list[int]:
        """Drop slices no longer active at `now`; returns the dropped slice ids."""
        first = self.first_active_slice(now)
        if first is None:
            return []
        keep = self._slices >= first
        dropped = self._slices[~keep].tolist()
        if dropped:
            self._slices, self._counts = self._slices[keep], self._counts[keep]
            self._counters = self._counters[keep]
            if self._union is not None and dropped[-1] >= self._union_from:
                self._union = None
        return dropped

    def _row(self, slice_id: int) -> int:
        i = int(np.searchsorted(self._slices, slice_id))
        if i < self._slices.size and self._slices[i] == slice_id:
            return i
        self._slices = np.insert(self._slices, i, slice_id)
        self._counts = np.insert(self._counts, i, 0)
        self._counters = np.insert(self._counters, i, 0, axis=0)
        return i

    # -- counters ---------------------------------------------------------------------------

    @staticmethod
    def _update_nibbles(row: np.ndarray, pos: np.ndarray, sign: int) -> None:
        """Add sign·(multiplicity of g in pos) to each counter g of `row`, saturating at 15
        (and, for sign < 0, leaving saturated counters alone and flooring at 0)."""
        upos, cnt = np.unique(pos, return_counts=True)
        byte = upos >> np.uint64(1)
        odd = (upos & np.uint64(1)).astype(bool)
        first = np.empty(byte.size, dtype=bool)
        first[:1] = True
        np.not_equal(byte[1:], byte[:-1], out=first[1:])
        inv = np.cumsum(first) - 1
        ubyte = byte[first]
        delta_lo = np.zeros(ubyte.size, dtype=np.int64)
        delta_hi = np.zeros(ubyte.size, dtype=np.int64)
        delta_lo[inv[~odd]] = cnt[~odd]  # upos is unique: at most one lo and one hi per byte
        delta_hi[inv[odd]] = cnt[odd]
        cur = row[ubyte].astype(np.int64)
        lo, hi = cur & 15, cur >> 4
        if sign > 0:
            lo = np.minimum(lo + delta_lo, 15)
            hi = np.minimum(hi + delta_hi, 15)
        else:
            lo = np.where(lo == 15, 15, np.maximum(lo - delta_lo, 0))
            hi = np.where(hi == 15, 15, np.maximum(hi - delta_hi, 0))
        row[ubyte] = (lo | (hi << 4)).astype(np.uint8)

    def counters(self, slice_id: int | None = None) -> np.ndarray:
        """(m,) uint8 counter values of one slice (slice 0, the only one, without a window)."""
        if slice_id is None:
            slice_id = 0
        hit = np.flatnonzero(self._slices == slice_id)
        if hit.size == 0:
            return np.zeros(self.m, dtype=np.uint8)
        row = self._counters[hit[0]]
        out = np.empty(2 * row.size, dtype=np.uint8)
        out[0::2], out[1::2] = row & 15, row >> 4
        return out[: self.m]

    def add(self, ids: np.ndarray, ts: int | None = None) -> None:
        """Count each id once more in the slice of `ts` (repeats count again), then drop
        slices that are out of the window at `ts`."""
        ids = _as_ids(ids)
        slice_id = self.slice_of(ts)
        if ids.size:
            i = self._row(slice_id)
            pos = bloom_positions(ids, self.m, self.k, self.seed)
            self._update_nibbles(self._counters[i], pos.ravel(), +1)
            self._counts[i] += ids.size
            if self._union is not None and slice_id >= self._union_from:
                _set_bits(self._union, pos)
        if self.window_s is not None:
            self.expire(int(ts))

    def remove(self, ids: np.ndarray) -> list[int]:
        """Decrement, in every slice, the counters of the ids that slice holds; returns the
        slice ids that changed."""
        ids = _as_ids(ids)
        if ids.size == 0 or self._slices.size == 0:
            return []
        pos = bloom_positions(ids, self.m, self.k, self.seed)
        nib = np.where(pos & np.uint64(1), np.uint8(0xF0), np.uint8(0x0F))  # (k, N)
        changed = []
        for i in range(self._slices.size):
            c = self._counters[i][pos >> np.uint64(1)]
            c &= nib
            held = np.logical_and.reduce(c, axis=0).astype(bool)
            if held.any():
                self._update_nibbles(self._counters[i], pos[:, held].ravel(), -1)
                self._counts[i] = max(0, int(self._counts[i]) - int(held.sum()))
                changed.append(int(self._slices[i]))
        if changed:
            self._union = None
        return changed

    def _union_bits(self, first: int | None) -> np.ndarray | None:
        """Packed bits (ceil(m/8),) of "counter nonzero in some slice with id >= first"."""
        lo = 0 if first is None else int(np.searchsorted(self._slices, first))
        if lo == self._slices.size:
            return None
        if self._union is not None and int(np.searchsorted(self._slices, self._union_from)) == lo:
            return self._union
        # a nibble is nonzero in some slice iff it is nonzero in the OR of the slices' bytes
        merged = np.bitwise_or.reduce(self._counters[lo:], axis=0)
        nonzero = np.empty(2 * merged.size, dtype=bool)
        np.not_equal(merged & 0x0F, 0, out=nonzero[0::2])
        np.not_equal(merged & 0xF0, 0, out=nonzero[1::2])
        self._union = np.packbits(nonzero[: self.m], bitorder="little")
        self._union_from = int(self._slices[lo])
        return self._union

    def contains(self, ids: np.ndarray, now: int | None = None) -> np.ndarray:
        """(N,) bool: all k counters nonzero in the union of the slices active at `now`
        (`now` is ignored without a window)."""
        ids = _as_ids(ids)
        union = self._union_bits(self.first_active_slice(now))
        if union is None:
            return np.zeros(ids.size, dtype=bool)
        return _test_bits(union, bloom_positions(ids, self.m, self.k, self.seed))

    # -- serialization ----------------------------------------------------------------------

    def slice_to_bytes(self, slice_id: int) -> bytes:
        """One slice: header (magic, version, m, k, seed, slice id, count) + counters + xxh3."""
        hit = np.flatnonzero(self._slices == slice_id)
        if hit.size == 0:
            raise DataError(f"counting Bloom filter has no slice {slice_id}; it has {self.slice_ids}")
        i = int(hit[0])
        row = self._counters[i]
        body = _SLICE_HEADER.pack(
            _SLICE_MAGIC, _VERSION, self.m, self.k, self.seed, slice_id, int(self._counts[i]), row.nbytes
        ) + row.tobytes()
        return body + _CHECKSUM.pack(_checksum(body))

    def _parse_slice(self, blob: bytes) -> tuple[int, int, np.ndarray]:
        header, body = _open_blob(blob, _SLICE_HEADER, _SLICE_MAGIC, "counting Bloom slice blob")
        _, _, m, k, seed, slice_id, count, payload_len = header
        if (m, k, seed) != (self.m, self.k, self.seed):
            raise ArtifactError(
                f"counting Bloom slice blob was built with m={m}, k={k}, seed={seed}; "
                f"this filter has m={self.m}, k={self.k}, seed={self.seed}"
            )
        payload = body[_SLICE_HEADER.size :]
        if payload_len != self._nbytes_slice or len(payload) != payload_len:
            raise ArtifactError(
                f"counting Bloom slice blob holds {len(payload)} counter bytes, expected {self._nbytes_slice}"
            )
        return slice_id, count, np.frombuffer(payload, dtype=np.uint8)

    def load_slices(self, blobs: list[bytes]) -> list[int]:
        """Insert (or replace) slices from `slice_to_bytes` outputs in one go; returns their slice
        ids. A corrupt blob or one built for other m/k/seed raises ArtifactError."""
        parsed = [self._parse_slice(b) for b in blobs]
        if not parsed:
            return []
        ids = np.array([p[0] for p in parsed], dtype=np.int64)
        if np.unique(ids).size != ids.size:
            raise ArtifactError(f"counting Bloom slice blobs repeat a slice id: {sorted(ids.tolist())}")
        keep = ~np.isin(self._slices, ids)
        slices = np.concatenate([self._slices[keep], ids])
        order = np.argsort(slices, kind="stable")
        self._slices = slices[order]
        self._counts = np.concatenate([self._counts[keep], [p[1] for p in parsed]]).astype(np.int64)[order]
        self._counters = np.concatenate([self._counters[keep], np.stack([p[2] for p in parsed])])[order]
        self._union = None
        return ids.tolist()

    def load_slice(self, blob: bytes) -> int:
        """`load_slices` of one blob."""
        return self.load_slices([blob])[0]

    def to_bytes(self) -> bytes:
        """Header (magic, version, capacity, fp_rate, window, slice, seed, #slices), then each
        slice blob length-prefixed, then an xxh3 checksum of all of it."""
        parts = [
            _COUNTING_HEADER.pack(
                _COUNTING_MAGIC, _VERSION, self.capacity, float(self.fp_rate),
                -1 if self.window_s is None else self.window_s, self.slice_s, self.seed, self._slices.size,
            )
        ]
        for s in self.slice_ids:
            blob = self.slice_to_bytes(s)
            parts += [struct.pack("<Q", len(blob)), blob]
        body = b"".join(parts)
        return body + _CHECKSUM.pack(_checksum(body))

    @classmethod
    def from_bytes(cls, blob: bytes) -> CountingBloomFilter:
        header, body = _open_blob(blob, _COUNTING_HEADER, _COUNTING_MAGIC, "counting Bloom filter blob")
        _, _, capacity, fp_rate, window_s, slice_s, seed, n_slices = header
        try:
            cbf = cls(capacity, fp_rate, None if window_s < 0 else window_s, slice_s, seed)
        except ConfigError as e:
            raise ArtifactError(f"counting Bloom filter blob has an invalid header: {e}") from None
        off = _COUNTING_HEADER.size
        for _ in range(n_slices):
            if off + 8 > len(body):
                raise ArtifactError("counting Bloom filter blob is truncated")
            (n,) = struct.unpack_from("<Q", body, off)
            if off + 8 + n > len(body):
                raise ArtifactError("counting Bloom filter blob is truncated")
            cbf.load_slice(bytes(body[off + 8 : off + 8 + n]))
            off += 8 + n
        if off != len(body):
            raise ArtifactError(f"counting Bloom filter blob has {len(body) - off} trailing bytes")
        return cbf
