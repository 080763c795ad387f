"""Fresh context history in the CF channels (the registry-wide contract over
RECALL_CHANNELS.names() is tests/contracts/test_recall_channels.py)."""

import numpy as np

import funnelrec.recall  # noqa: F401  (registers every channel)
from funnelrec.core.registry import RECALL_CHANNELS
from funnelrec.core.types import PAD
from funnelrec.recall.base import RecallContext

N = 12


def test_unknown_history_items_are_ignored(world):
    ch = RECALL_CHANNELS.build("itemcf").fit(world)
    base = ch.recall(np.array([2]), N)
    ctx = RecallContext(extra={"history": [np.array([-5, world.n_items + 3])]})
    b = ch.recall(np.array([2]), N, ctx)
    np.testing.assert_array_equal(b.items, base.items)
    np.testing.assert_array_equal(b.scores, base.scores)


def test_context_history_counts_as_seen_and_as_trigger(world):
    """An unknown user with fresh history [0, 1] gets itemCF's neighbours of items 0 and 1 —
    the same list as a known user whose only history is {0, 1} would — never 0 or 1 itself."""
    ch = RECALL_CHANNELS.build("itemcf").fit(world)
    b = ch.recall(np.array([-1]), N, RecallContext(extra={"history": [np.array([0, 1])]}))
    got = b.items[0][b.items[0] != PAD]
    # itemCF's target-mode score of that history, densely: score(s) = sim_k(s → 0) + sim_k(s → 1)
    # (neighbours_ itself is checked against the similarity's definition in test_recall_correctness)
    score = ch.neighbours_.toarray().astype(np.float64)[:, [0, 1]].sum(1)
    score[[0, 1]] = 0  # the fresh history counts as seen
    want = [i for i in np.lexsort((np.arange(len(score)), -score)) if score[i] > 0][:N]
    assert got.tolist() == want and len(want) > 2
    np.testing.assert_allclose(b.scores[0][: len(got)], score[want], rtol=1e-5)
    # every recalled item co-occurs with item 0 or 1 in some training user's history
    H = world.csr.toarray() > 0
    co = (H[:, [0]] | H[:, [1]]) & H
    assert co[:, got].any(axis=0).all()
