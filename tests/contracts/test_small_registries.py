"""Contracts over names() of the small registries: MERGE_STRATEGIES, RERANKERS, STATISTICS.
A newly registered entry runs these the day it is registered; an entry of a kind the contract
does not know fails, so it cannot pass silently."""

import numpy as np
import pytest
import scipy.sparse as sp

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
    elif name == "mmr":
        assert out[0] == order[0]  # relevance alone decides the first pick
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
