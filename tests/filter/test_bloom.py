"""CountingBloomFilter against hand-computed sizes, a pure-Python reference of
the hash and positions, and measured false-positive rates."""

from __future__ import annotations

import math

import numpy as np
import pytest

from funnelrec.core.errors import ArtifactError, ConfigError, DataError
from funnelrec.filter import (
    DAY,
    CountingBloomFilter,
    bloom_positions,
    bloom_size,
    expected_fp_rate,
    hash64,
)

M64 = (1 << 64) - 1


def splitmix64_ref(state: int) -> int:
    """Reference splitmix64 (Steele, Lea, Flood 2014) on Python ints."""
    z = (state + 0x9E3779B97F4A7C15) & M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def positions_ref(item_id: int, m: int, k: int, seed: int = 0) -> list[int]:
    h = splitmix64_ref((item_id + seed * 0x9E3779B97F4A7C15) & M64)
    h1, h2 = h & 0xFFFFFFFF, h >> 32
    return [(((h1 + i * h2) & 0xFFFFFFFF) * m) >> 32 for i in range(k)]


def test_sizes_follow_the_standard_formulas():
    # n=1000, p=0.01: m = ceil(1000·4.60517/0.480453) = 9586, k = round(9.586·0.693147) = 7
    assert bloom_size(1000, 0.01) == (9586, 7)
    # n=10000, p=0.001: m = ceil(10000·6.907755/0.480453) = 143776, k = round(14.3776·0.693) = 10
    assert bloom_size(10_000, 0.001) == (143776, 10)
    assert bloom_size(1, 0.5) == (2, 1)


@pytest.mark.parametrize("capacity, fp_rate", [(0, 0.01), (-5, 0.01), (10, 0.0), (10, 1.0), (10, 1.5), (2.5, 0.1)])
def test_bad_sizes_raise_config_error(capacity, fp_rate):
    with pytest.raises(ConfigError):
        CountingBloomFilter(capacity, fp_rate)


def test_hash_is_splitmix64():
    assert int(hash64(np.array([0]))[0]) == 0xE220A8397B1DCDAF  # splitmix64's first output from 0
    ids = np.array([0, 1, -1, 2**62, 123456789, -(2**63)], dtype=np.int64)
    for seed in (0, 7):
        got = hash64(ids, seed)
        want = [splitmix64_ref((int(i) + seed * 0x9E3779B97F4A7C15) & M64) for i in ids.astype(np.uint64)]
        assert got.tolist() == want


def test_positions_are_double_hashing_of_the_reference():
    ids = np.array([3, 99, -7, 2**40], dtype=np.int64)
    m, k = 9586, 7
    pos = bloom_positions(ids, m, k, seed=3)
    assert pos.shape == (k, ids.size)
    for j, item in enumerate(ids.tolist()):
        assert pos[:, j].tolist() == positions_ref(item, m, k, seed=3)


def test_counters_set_are_exactly_the_reference_positions():
    cb = CountingBloomFilter(1000, 0.01)
    ids = np.array([5, 17, 1 << 33])
    cb.add(ids)
    want = sorted({p for i in ids.tolist() for p in positions_ref(i, cb.m, cb.k)})
    assert np.flatnonzero(cb.counters()).tolist() == want


def test_no_false_negatives_and_fpr_within_10pct_at_capacity():
    rng = np.random.default_rng(0)
    n, p = 10_000, 0.01
    f = CountingBloomFilter(n, p)
    added = rng.choice(1 << 40, size=n, replace=False)
    f.add(added)
    assert f.contains(added).all()
    probes = rng.integers(1 << 41, 1 << 62, size=200_000)  # disjoint from `added`
    fpr = f.contains(probes).mean()
    # 200k probes at p=1%: sd of the estimate is 2.2% relative, so 10% is > 4 sd
    assert abs(fpr - p) / p < 0.10, fpr
    assert abs(expected_fp_rate(f.m, f.k, n) - p) / p < 0.02


def test_batch_contains_equals_one_by_one():
    rng = np.random.default_rng(1)
    cands = rng.integers(0, 2000, 300)
    cb = CountingBloomFilter(200, 0.05, window_s=3 * DAY)
    cb.add(rng.integers(0, 1000, 100), ts=0)
    cb.add(rng.integers(0, 1000, 100), ts=DAY)
    batch = cb.contains(cands, now=2 * DAY)
    assert batch.tolist() == [bool(cb.contains(np.array([c]), now=2 * DAY)[0]) for c in cands.tolist()]


def test_bad_ids_raise_data_error():
    cb = CountingBloomFilter(10, 0.1)
    with pytest.raises(DataError):
        cb.add(np.array([1.5, 2.0]))
    with pytest.raises(DataError):
        cb.contains(np.zeros((2, 2), dtype=np.int64))
    assert cb.contains(np.array([], dtype=np.int64)).shape == (0,)


def test_counters_are_packed_nibbles_of_position_counts():
    rng = np.random.default_rng(2)
    cb = CountingBloomFilter(50, 0.2)  # small m: many collisions and repeats
    ids = np.concatenate([rng.integers(0, 40, 60), np.full(20, 7)])  # id 7 added 20+ times: saturates
    cb.add(ids[:30])
    cb.add(ids[30:])
    counts = np.bincount(bloom_positions(ids, cb.m, cb.k).ravel().astype(np.int64), minlength=cb.m)
    assert cb.counters().tolist() == np.minimum(counts, 15).tolist()
    assert cb.nbytes == math.ceil(cb.m / 2)


def test_counting_remove():
    cb = CountingBloomFilter(1000, 0.01)
    cb.add(np.array([1, 2, 2, 3]))
    cb.remove(np.array([2]))
    assert cb.contains(np.array([1, 2, 3])).tolist() == [True, True, True]  # 2 was added twice
    cb.remove(np.array([2, 3]))
    assert cb.contains(np.array([1, 2, 3])).tolist() == [True, False, False]
    cb.remove(np.array([999_999]))  # never added: must not decrement the counters of 1
    assert cb.contains(np.array([1])).tolist() == [True]
    assert cb.counters().sum() == cb.k  # only id 1's k increments are left
    cb.remove(np.array([1]))
    assert cb.counters().sum() == 0


def test_remove_of_a_mixed_batch_leaves_the_unheld_ids_counters_alone():
    """An id the filter does not hold (some counter zero) must decrement nothing, even in the
    same batch as a held id and even where it shares a nonzero counter with held ids."""
    cb = CountingBloomFilter(50, 0.2)  # m = 168, k = 2: 40 ids leave many shared counters
    added = list(range(40))
    cb.add(np.array(added))
    counts = np.zeros(cb.m, dtype=np.int64)
    for i in added:
        for g in positions_ref(i, cb.m, cb.k):
            counts[g] += 1
    # probe: not held (a counter is zero) yet one of its counters is shared, nonzero and < 15
    probe = next(
        i for i in range(1000, 100_000)
        if (counts[positions_ref(i, cb.m, cb.k)] == 0).any()
        and ((counts[positions_ref(i, cb.m, cb.k)] > 0) & (counts[positions_ref(i, cb.m, cb.k)] < 15)).any()
    )
    assert not cb.contains(np.array([probe]))[0]
    cb.remove(np.array([5, probe]))
    want = np.zeros(cb.m, dtype=np.int64)
    for i in added:
        if i != 5:
            for g in positions_ref(i, cb.m, cb.k):
                want[g] += 1
    assert cb.counters().tolist() == np.minimum(want, 15).tolist()
    assert cb.count == 39  # only the held id counted as removed


def test_saturated_counters_never_drop():
    cb = CountingBloomFilter(100, 0.01)
    cb.add(np.full(20, 42))
    for _ in range(20):
        cb.remove(np.array([42]))
    assert cb.contains(np.array([42])).tolist() == [True]  # counters stuck at 15: no false negative


def test_remove_keeps_fpr_and_no_false_negatives():
    rng = np.random.default_rng(3)
    cb = CountingBloomFilter(5000, 0.01)
    ids = rng.choice(1 << 40, size=6000, replace=False)
    cb.add(ids)
    cb.remove(ids[5000:])
    assert cb.contains(ids[:5000]).all()
    # after removing the extra 1000 the filter holds 5000 = capacity ids: FPR back near p
    probes = rng.integers(1 << 41, 1 << 62, size=100_000)
    assert cb.contains(probes).mean() < 0.0125


def test_time_window_expiry():
    w, s = 7 * DAY, DAY
    cb = CountingBloomFilter(1000, 0.01, window_s=w, slice_s=s)
    t0 = 100 * DAY + 3600  # inside slice 100
    cb.add(np.array([10, 11]), ts=t0)
    cb.add(np.array([20]), ts=t0 + 3 * DAY)
    ids = np.array([10, 11, 20])
    assert cb.contains(ids, now=t0).tolist() == [True, True, True]
    assert cb.contains(ids, now=t0 + w).tolist() == [True, True, True]  # at least window_s
    # slice 100 ends at 101·DAY; it is inactive once now - w >= 101·DAY
    assert cb.contains(ids, now=101 * DAY + w - 1).tolist() == [True, True, True]
    assert cb.contains(ids, now=101 * DAY + w).tolist() == [False, False, True]
    assert cb.contains(ids, now=t0 + 3 * DAY + w + s).tolist() == [False, False, False]
    assert cb.slice_ids == [100, 103]
    cb.add(np.array([30]), ts=t0 + 20 * DAY)  # old slices are dropped on add
    assert cb.slice_ids == [120]
    assert cb.contains(np.array([10, 20, 30]), now=t0).tolist() == [False, False, True]


def test_window_fpr_holds_when_capacity_spreads_over_slices():
    rng = np.random.default_rng(4)
    n, p = 4000, 0.02
    cb = CountingBloomFilter(n, p, window_s=4 * DAY)
    ids = rng.choice(1 << 40, size=n, replace=False)
    for d in range(4):
        cb.add(ids[d * 1000 : (d + 1) * 1000], ts=d * DAY)
    assert cb.contains(ids, now=3 * DAY).all()
    fpr = cb.contains(rng.integers(1 << 41, 1 << 62, size=100_000), now=3 * DAY).mean()
    assert abs(fpr - p) / p < 0.15  # 100k probes at 2%: sd 2.2% relative
    cb.remove(ids[:1000])  # union cache is rebuilt after removal
    assert cb.contains(ids[:1000], now=3 * DAY).mean() < 0.05  # only false positives left
    assert cb.contains(ids[1000:], now=3 * DAY).all()


def test_windowed_filter_needs_times():
    cb = CountingBloomFilter(10, 0.1, window_s=DAY)
    with pytest.raises(DataError):
        cb.add(np.array([1]))
    with pytest.raises(DataError):
        cb.contains(np.array([1]), now=None)
    with pytest.raises(ConfigError):
        CountingBloomFilter(10, 0.1, window_s=0)
    with pytest.raises(ConfigError):
        CountingBloomFilter(10, 0.1, window_s=DAY, slice_s=-1)


def test_counting_round_trip_and_corruption():
    cb = CountingBloomFilter(300, 0.01, window_s=2 * DAY, seed=5)
    cb.add(np.arange(100), ts=0)
    cb.add(np.arange(100, 150), ts=DAY)
    back = CountingBloomFilter.from_bytes(cb.to_bytes())
    assert back.config == cb.config and back.slice_ids == [0, 1]
    for s in (0, 1):
        assert (back.counters(s) == cb.counters(s)).all()
    probe = np.arange(1000)
    assert (back.contains(probe, now=DAY) == cb.contains(probe, now=DAY)).all()

    blob = cb.slice_to_bytes(1)
    other = CountingBloomFilter(300, 0.01, window_s=2 * DAY, seed=5)
    assert other.load_slice(blob) == 1
    assert other.contains(np.arange(100, 150), now=DAY).all()
    bad = bytearray(blob)
    bad[-20] ^= 1
    with pytest.raises(ArtifactError):
        other.load_slice(bytes(bad))
    with pytest.raises(ArtifactError):  # built for another seed (other positions)
        CountingBloomFilter(300, 0.01, seed=6).load_slice(blob)
    with pytest.raises(ArtifactError):
        CountingBloomFilter.from_bytes(cb.to_bytes()[:-3])


def test_windowed_contains_matches_a_reference_over_random_operations():
    """The cached union must answer like the definition — all k counters nonzero in the union
    of the slices active at `now` — after any mix of add (also into past slices), remove and
    expiry. The reference keeps its own per-slice counters from `positions_ref` and the
    documented rules (add saturates at 15; remove decrements, in each slice, only the ids whose
    k counters are all nonzero there, never a counter at 15, floor 0; add at ts drops slices
    below floor((ts - w) / s)); it never reads the filter's state."""
    rng = np.random.default_rng(5)
    w, s = 3 * DAY, DAY
    cb = CountingBloomFilter(60, 0.1, window_s=w, slice_s=s)
    m, k = bloom_size(60, 0.1)
    ref: dict[int, np.ndarray] = {}  # slice id -> (m,) counters
    probe = np.arange(200)
    probe_pos = [positions_ref(i, m, k) for i in probe.tolist()]
    n_unheld_removes = 0
    for _ in range(80):
        op = rng.integers(0, 3)
        if op == 0:
            ids, ts = rng.integers(0, 200, 5), int(rng.integers(0, 12 * DAY))
            cb.add(ids, ts=ts)
            c = ref.setdefault(ts // s, np.zeros(m, dtype=np.int64))
            for i in ids.tolist():
                for g in positions_ref(i, m, k):
                    c[g] = min(c[g] + 1, 15)
            for sl in [sl for sl in ref if sl < (ts - w) // s]:
                del ref[sl]
        elif op == 1:
            ids = rng.integers(0, 200, 3)
            cb.remove(ids)
            for c in ref.values():
                held = [i for i in ids.tolist() if all(c[g] > 0 for g in positions_ref(i, m, k))]
                n_unheld_removes += len(ids) - len(held)
                delta = np.zeros(m, dtype=np.int64)
                for i in held:
                    for g in positions_ref(i, m, k):
                        delta[g] += 1
                c[:] = np.where(c == 15, 15, np.maximum(c - delta, 0))
        assert cb.slice_ids == sorted(ref)
        for sl, c in ref.items():
            assert cb.counters(sl).tolist() == c.tolist()
        now = int(rng.integers(0, 14 * DAY))
        first = (now - w) // s
        nonzero = np.zeros(m, dtype=bool)
        for sl, c in ref.items():
            if sl >= first:
                nonzero |= c > 0
        want = [all(nonzero[g] for g in pos) for pos in probe_pos]
        assert cb.contains(probe, now=now).tolist() == want
    assert n_unheld_removes > 0  # the run did exercise removing ids a slice does not hold
