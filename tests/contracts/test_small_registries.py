"""Contracts over names() of the small registries: MERGE_STRATEGIES, RERANKERS, STATISTICS.
A newly registered entry runs these the day it is registered; an entry of a kind the contract
does not know fails, so it cannot pass silently. Beyond the invariants, each entry is checked
against a hand-worked case or a brute-force version of its documented rule."""

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.stats import norm

import funnelrec.experiments.stats  # noqa: F401  (registers the statistics)
import funnelrec.pipeline.stages  # noqa: F401  (registers the re-rankers)
import funnelrec.recall.merge  # noqa: F401  (registers the merge strategies)
from funnelrec.core.registry import MERGE_STRATEGIES, RERANKERS, STATISTICS
from funnelrec.core.types import PAD, CandidateBatch
from funnelrec.pipeline.config import RerankSpec


def _batches(rng, n_users=4, n=12, n_items=30):
    out = []
    for name in ("a", "b", "c"):
        items = np.stack([rng.choice(n_items, n, replace=False) for _ in range(n_users)])
        items[:, -2:] = PAD
        scores = -np.sort(-rng.random((n_users, n)), axis=1).astype(np.float32)
        scores[:, -2:] = -np.inf
        out.append(CandidateBatch(name, items.astype(np.int64), scores))
    return out


@pytest.mark.parametrize("name", MERGE_STRATEGIES.names())
def test_merge_strategy_contract(name):
    merge = MERGE_STRATEGIES.get(name)
    batches = _batches(np.random.default_rng(0))
    quotas = {"c": 3}
    merged = merge(batches, quotas, ["b"], 20)
    for u, m in enumerate(merged):
        offered = {b.channel: set(b.items[u][b.items[u] != PAD].tolist()) for b in batches}
        assert len(m.items) == len(set(m.items.tolist())) <= 20  # deduplicated, within total
        assert set(m.items.tolist()) <= set().union(*offered.values())
        for p, item in enumerate(m.items.tolist()):  # attribution = exactly the channels that offered it
            assert set(m.channels_of(p)) == {c for c, s in offered.items() if item in s}
        # batch = one-by-one
        one = merge([CandidateBatch(b.channel, b.items[u:u + 1], b.scores[u:u + 1]) for b in batches],
                    quotas, ["b"], 20)[0]
        np.testing.assert_array_equal(one.items, m.items)
        np.testing.assert_array_equal(one.sources, m.sources)


# Channels a, b, c (input order), priority ["b"] → turns b, a, c; quotas a: 2, c: 2.
#   turn 1: b → 2, a → 1, c → 7;  turn 2: b → 5, a skips 2 (taken) → 3 (a at quota),
#   c skips 1 → 8 (c at quota);  turn 3: b → 6;  turn 4: b's list ends → stop.
# Without the quotas a would add 4 and c 9; with total 4 the merge stops after 2, 1, 7, 5.
HAND_MERGE = {"a": [1, 2, 3, 4], "b": [2, 5, 6, PAD], "c": [7, 1, 8, 9]}
HAND_MERGED = {  # strategy → {total: (items, channels of each item)}
    "snake": {8: ([2, 1, 7, 5, 3, 8, 6], [{"a", "b"}, {"a", "c"}, {"c"}, {"b"}, {"a"}, {"c"}, {"b"}]),
              4: ([2, 1, 7, 5], [{"a", "b"}, {"a", "c"}, {"c"}, {"b"}])},
}


@pytest.mark.parametrize("name", MERGE_STRATEGIES.names())
def test_merge_strategy_hand_worked_case(name):
    """A binding quota, a priority and a duplicate across channels, typed out by hand."""
    if name not in HAND_MERGED:
        pytest.fail(f"merge strategy {name!r} has no hand-worked case here: add one to HAND_MERGED")
    batches = []
    for c, items in HAND_MERGE.items():
        items = np.array([items], np.int64)
        scores = np.where(items == PAD, -np.inf, 10.0 * (ord(c) - 96) + items).astype(np.float32)  # a: 10 + item …
        batches.append(CandidateBatch(c, items, scores))
    for total, (want, channels) in HAND_MERGED[name].items():
        (m,) = MERGE_STRATEGIES.get(name)(batches, {"a": 2, "c": 2}, ["b"], total)
        assert m.items.tolist() == want, total
        assert [set(m.channels_of(p)) for p in range(len(want))] == channels
        for p, item in enumerate(want):  # each channel's score of the item, NaN where it did not recall it
            for ci, c in enumerate(HAND_MERGE):
                expect = 10.0 * (ci + 1) + item if item in HAND_MERGE[c] else np.nan
                np.testing.assert_equal(m.scores[p, ci], np.float32(expect))


def _brute_cap(order, items, cats, cap, k):
    """The documented cap rule walked one item at a time with Python sets and counts."""
    counts, head, rest = {}, [], []
    for p in order.tolist():
        values = set(cats[items[p]].indices.tolist())
        if len(head) < k and all(counts.get(v, 0) < cap for v in values):
            head.append(p)
            for v in values:
                counts[v] = counts.get(v, 0) + 1
        else:
            rest.append(p)
    return head + rest


def _brute_mmr(order, items, fused, cats, lam, k):
    """Maximal marginal relevance as documented, by brute force: pick argmax over the unpicked
    of λ·rel(i) − (1−λ)·max_{j picked} Jaccard(cats(i), cats(j)) (0 before any pick), rel = the
    fused score min-max scaled over the candidates, ties to the earlier fused position; the rest
    follow in fused order."""
    cand = order.tolist()
    s = [float(fused[p]) for p in cand]
    lo, hi = min(s), max(s)
    rel = [(v - lo) / (hi - lo) for v in s]
    sets = [set(cats[items[p]].indices.tolist()) for p in cand]

    def jaccard(a, b):
        return len(a & b) / len(a | b) if a | b else 0.0

    picked = []
    for _ in range(min(k, len(cand))):
        best, best_val = None, -np.inf
        for i in range(len(cand)):
            if i in picked:
                continue
            val = lam * rel[i] - (1 - lam) * max((jaccard(sets[i], sets[j]) for j in picked), default=0.0)
            if val > best_val:
                best, best_val = i, val
        picked.append(best)
    return [cand[i] for i in picked] + [cand[i] for i in range(len(cand)) if i not in picked]


@pytest.mark.parametrize("name", RERANKERS.names())
def test_reranker_contract(name):
    """A re-ranker returns a permutation of the positions it is given, deterministically; the
    head it picks respects its own rule where one is stated."""
    rng = np.random.default_rng(1)
    n, k = 40, 10
    items = rng.choice(100, n, replace=False).astype(np.int64)
    fused = rng.random(n).astype(np.float32)
    cats = sp.random(100, 6, density=0.3, format="csr", random_state=2, dtype=np.float32)
    cats.data[:] = 1
    order = np.argsort(-fused, kind="stable")
    spec = RerankSpec(method=name, column="x", max_per_category=2)
    out = RERANKERS.get(name)(order, items, fused, cats, spec, k)
    assert sorted(np.asarray(out).tolist()) == sorted(order.tolist())
    again = RERANKERS.get(name)(order, items, fused, cats, spec, k)
    np.testing.assert_array_equal(out, again)
    if name == "none":
        np.testing.assert_array_equal(out, order)
    elif name == "cap":  # no category over the cap in the head, while enough items allow it
        counts = np.asarray(cats[items[np.asarray(out)[:k]]].sum(0)).ravel()
        assert counts.max() <= spec.max_per_category
        assert np.asarray(out).tolist() == _brute_cap(order, items, cats, spec.max_per_category, k)
        assert np.asarray(out).tolist() != order.tolist()  # the cap binds on this data
    elif name == "mmr":
        assert out[0] == order[0]  # relevance alone decides the first pick
        for lam in (spec.mmr_lambda, 0.3):
            lam_spec = RerankSpec(method=name, column="x", mmr_lambda=lam)
            got = np.asarray(RERANKERS.get(name)(order, items, fused, cats, lam_spec, k)).tolist()
            assert got == _brute_mmr(order, items, fused, cats, lam, k), lam
            assert got[:k] != order[:k].tolist(), lam  # diversity changes the head on this data
    else:
        pytest.fail(f"re-ranker {name!r} has no contract case here: add one")


@pytest.mark.parametrize("name", STATISTICS.names())
def test_statistic_contract(name):
    """Two-sample tests: identical arms give lift 0 and p = 1; a 5-σ shift gives p < 1e-4.
    Sequential: zero estimates keep p = 1 at every look. Multiple testing: nothing rejected at
    p = 1, everything at p = 0."""
    stat = STATISTICS.get(name)
    rng = np.random.default_rng(3)
    if stat.role == "two_sample":
        def arm(shift):
            cols = {"value": rng.integers(0, 2, 4000).astype(float) if stat.binary else rng.normal(1.0, 1.0, 4000),
                    "covariate": rng.normal(1.0, 1.0, 4000), "numerator": rng.poisson(3.0, 4000).astype(float),
                    "denominator": rng.poisson(10.0, 4000).astype(float) + 1.0}
            moved = "value" if "value" in stat.inputs else "numerator"  # the metric's own column
            cols[moved] = cols[moved] + shift
            return tuple(cols[i] for i in stat.inputs)

        same = arm(0.0)
        r = stat(same, same, 0.05)
        assert r.abs_lift == pytest.approx(0.0, abs=1e-12) and r.p_value == pytest.approx(1.0, abs=1e-9)
        if not stat.binary:
            shifted = stat(arm(0.0), arm(0.5), 0.05)
            assert shifted.p_value < 1e-4 and shifted.abs_lift > 0
        else:  # conversion 0.3 against 0.5 over 2000 users each: the pooled two-proportion z-test
            a = (rng.random(2000) < 0.3).astype(float)
            b = (rng.random(2000) < 0.5).astype(float)
            shifted = stat((a,), (b,), 0.05)
            pooled = (a.sum() + b.sum()) / 4000
            z = (b.mean() - a.mean()) / np.sqrt(pooled * (1 - pooled) * (2 / 2000))
            assert z > 10  # the data carry the shift
            assert shifted.abs_lift == pytest.approx(b.mean() - a.mean(), abs=1e-12)
            assert shifted.statistic == pytest.approx(z, rel=1e-9)
            assert shifted.p_value == pytest.approx(2 * norm.sf(z), rel=1e-6, abs=1e-300) and shifted.p_value < 0.01
            small = stat((a[:40],), (b[:40],), 0.05)  # the same rates on 40 users: nowhere near as sure
            assert small.p_value > shifted.p_value
    elif stat.role == "sequential":
        p = stat(np.zeros(5), np.full(5, 0.01), 0.01)
        np.testing.assert_allclose(p, 1.0)
    elif stat.role == "multiple_testing":
        reject, q = stat(np.ones(5), 0.05)
        assert not reject.any()
        reject, q = stat(np.zeros(5), 0.05)
        assert reject.all()
    else:
        pytest.fail(f"statistic {name!r} has role {stat.role!r}, which this contract does not know")
