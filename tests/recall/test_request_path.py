"""The request path of the recall channels (no scipy objects per call): `spmm_topn`,
`UserHistory.rows`, `take_unseen_rows`, checked against dense numpy references, and the
channels rewritten on them against their definitions computed densely."""

import threading

import numpy as np
import pytest
import scipy.sparse as sp

from funnelrec.core.types import PAD
from funnelrec.recall._common import Rows, UserHistory, spmm_topn, take_unseen_rows
from funnelrec.recall.base import RecallContext


def _sparse(rng, shape, p, integer=False):
    m = (rng.random(shape) < p) * (rng.integers(1, 4, shape) if integer else rng.random(shape))
    return m.astype(np.float32)


def _dense_topn(scores: np.ndarray, n: int) -> list[list[int]]:
    """Reference: per row, positive scores by (−score, column), first n columns."""
    out = []
    for row in scores:
        cols = [c for c in np.lexsort((np.arange(len(row)), -row)) if row[c] > 0][:n]
        out.append(cols)
    return out


@pytest.mark.parametrize("seed", [0, 1])
def test_spmm_topn_equals_dense_product_with_exclusion_and_column_scale(seed):
    rng = np.random.default_rng(seed)
    A = _sparse(rng, (7, 12), 0.4, integer=True)  # integers: tied products are exact ties
    B = _sparse(rng, (12, 30), 0.3, integer=True)
    A[3] = 0  # an empty row
    ex = _sparse(rng, (7, 30), 0.2) > 0
    scale = rng.integers(1, 3, 30).astype(np.float64)
    ref = (A.astype(np.float64) @ B) * scale
    ref[ex] = 0
    b = spmm_topn(Rows.from_csr(sp.csr_matrix(A)), sp.csr_matrix(B), 6, "t",
                  exclude=Rows.from_csr(sp.csr_matrix(ex.astype(np.float32))), col_scale=scale)
    want = _dense_topn(ref, 6)
    for r in range(7):
        got = b.items[r][b.items[r] != PAD].tolist()
        assert got == want[r]  # ties → lower column, like csr_topn
        np.testing.assert_allclose(b.scores[r][: len(got)], ref[r, got], rtol=1e-6)
        assert np.all(b.scores[r][len(got):] == -np.inf)
    one = [spmm_topn(Rows.from_csr(sp.csr_matrix(A[r:r + 1])), sp.csr_matrix(B), 6, "t",
                     exclude=Rows.from_csr(sp.csr_matrix(ex[r:r + 1].astype(np.float32))), col_scale=scale)
           for r in range(7)]
    np.testing.assert_array_equal(np.vstack([o.items for o in one]), b.items)  # batch = one by one
    np.testing.assert_array_equal(np.vstack([o.scores for o in one]), b.scores)


def test_scratch_buffers_are_left_clean_and_per_thread():
    rng = np.random.default_rng(3)
    A, B = _sparse(rng, (5, 8), 0.5), _sparse(rng, (8, 40), 0.4)
    first = spmm_topn(Rows.from_csr(sp.csr_matrix(A)), sp.csr_matrix(B), 5, "t",
                      exclude=Rows.from_csr(sp.csr_matrix(B[:5])))
    again = spmm_topn(Rows.from_csr(sp.csr_matrix(A)), sp.csr_matrix(B), 5, "t")  # no exclusion now
    product = A.astype(np.float64) @ B
    ref = _dense_topn(product, 5)
    excluded = np.where(B[:5] > 0, 0.0, product)  # row r excludes the columns where B[r] > 0
    assert [r[r != PAD].tolist() for r in first.items] == _dense_topn(excluded, 5) != ref
    assert [r[r != PAD].tolist() for r in again.items] == ref  # nothing stayed excluded from the first call
    results = []

    def worker():
        for _ in range(50):
            results.append(spmm_topn(Rows.from_csr(sp.csr_matrix(A)), sp.csr_matrix(B), 5, "t").items)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(np.array_equal(r, again.items) for r in results)


def test_history_rows_equal_the_scipy_matrices():
    rng = np.random.default_rng(5)
    A = (rng.random((9, 12)) < 0.4).astype(np.float32)
    A[4, 0] = 1  # user 4 has item 0 at weight 0.5 and gets it again in the fresh history
    W = A * np.arange(1, 13, dtype=np.float32)[None, :] * 0.5  # weights 0.5 … 6 (some below 1)
    h = UserHistory(sp.csr_matrix(A), sp.csr_matrix(W))
    users = np.array([4, -1, 8, 9, 0, 4])
    extra = [np.array([11, 1, 0]), np.array([2, 2]), np.array([], np.int64), np.array([0]), np.array([99]),
             np.array([])]
    ctx = RecallContext(extra={"history": extra})
    H_ref, seen_ref = h.matrix(users, ctx)
    H, seen = h.rows(users, ctx)
    Hd = H.to_csr(12).toarray()
    assert W[4, 0] == 0.5 and Hd[0, 0] == 1.0 and Hd[5, 0] == 0.5  # max(weight, 1) where both, else weight
    # dense reference: stored row (zero for unknown users), then max(·, 1) at the fresh items
    ok = (users >= 0) & (users < 9)
    dense_H = np.where(ok[:, None], W[np.where(ok, users, 0)], 0)
    dense_seen = np.where(ok[:, None], A[np.where(ok, users, 0)], 0)
    for r, e in enumerate(extra):
        e = e[(e >= 0) & (e < 12)].astype(np.int64)
        dense_H[r, e] = np.maximum(dense_H[r, e], 1)
        dense_seen[r, e] = 1
    np.testing.assert_array_equal(Hd, dense_H)
    np.testing.assert_array_equal(seen.to_csr(12).toarray(), dense_seen)
    np.testing.assert_array_equal(Hd, H_ref.toarray())
    np.testing.assert_array_equal(seen.to_csr(12).toarray(), seen_ref.toarray())
    Hb, seenb = UserHistory(sp.csr_matrix(A)).rows(np.array([3, -1]), None)
    assert Hb is seenb
    np.testing.assert_array_equal(Hb.to_csr(12).toarray(), [A[3], np.zeros(12)])


def test_take_unseen_rows_skips_seen_and_ungrouped_users():
    lists = (np.array([0, 4, 6]), np.array([5, 1, 3, 2, 7, 1]), np.array([4, 3, 2, 1, 9, 8], np.float32))
    seen = Rows(np.array([0, 2, 2, 3]), np.array([1, 2, 7]), np.ones(3, np.float32))
    b = take_unseen_rows(*lists, np.array([0, 1, -1]), seen, 3, 10, "t")
    assert b.items.tolist() == [[5, 3, PAD], [7, 1, PAD], [PAD] * 3]
    # each item keeps its own score: row 1 reads list 1's scores (9, 8), not list 0's first ones
    np.testing.assert_array_equal(b.scores, [[4, 2, -np.inf], [9, 8, -np.inf], [-np.inf] * 3])
    b = take_unseen_rows(*lists, np.array([1, 0, 1]), Rows(np.array([0, 0, 1, 2]), np.array([5, 7]),
                                                           np.ones(2, np.float32)), 4, 10, "t")
    assert b.items.tolist() == [[7, 1, PAD, PAD], [1, 3, 2, PAD], [1, PAD, PAD, PAD]]
    np.testing.assert_array_equal(b.scores, [[9, 8, -np.inf, -np.inf], [3, 2, 1, -np.inf],
                                             [8, -np.inf, -np.inf, -np.inf]])


def test_usercf_and_tag_match_their_dense_definitions(world):
    from funnelrec.recall.tag import TagConfig, TagRecall
    from funnelrec.recall.usercf import UserCFConfig, UserCFRecall

    R = world.csr.toarray().astype(np.float64)
    users = np.arange(world.n_users)
    # userCF: sim(u, v) = Σ_shared 1/log(1+|U_i|) / sqrt(|I_u||I_v|), top-k v ≠ u, score = Σ_v sim · R_v
    k = 5
    ch = UserCFRecall(UserCFConfig(k=k)).fit(world)
    w = 1 / np.log1p(np.maximum(R.sum(0), 1))
    n = np.maximum(R.sum(1), 1)
    S = (R * w) @ R.T / np.sqrt(np.outer(n, n))
    np.fill_diagonal(S, 0)
    b = ch.recall(users, 8)
    for u in users:
        keep = [v for v in np.lexsort((np.arange(len(S)), -S[u])) if S[u, v] > 0][:k]
        score = S[u, keep] @ R[keep]
        score[R[u] > 0] = 0
        got = b.items[u][b.items[u] != PAD]
        assert got.tolist() == _dense_topn(score[None, :], 8)[0][: len(got)] or np.allclose(
            np.sort(score[got]), np.sort(np.sort(score)[::-1][: len(got)]), rtol=1e-5)
        np.testing.assert_allclose(b.scores[u][: len(got)], score[got], rtol=1e-5)
        assert len(got) == min(8, int((score > 0).sum()))
    # tag: w(u, t) = share of history with tag t (top n_tags), score = Σ_t w · pop_t(i)
    tg = TagRecall(TagConfig(n_tags=2)).fit(world)
    F = tg.forward_.matrix.toarray()
    V = tg.value_items_.toarray()
    b = tg.recall(users, 6)
    for u in users:
        counts = R[u] @ F
        top = _dense_topn(counts[None, :], 2)[0]
        wts = np.zeros_like(counts)
        wts[top] = counts[top] / max(R[u].sum(), 1)
        score = wts @ V
        score[R[u] > 0] = 0
        got = b.items[u][b.items[u] != PAD]
        np.testing.assert_allclose(b.scores[u][: len(got)], score[got], rtol=1e-5)
        assert len(got) == min(6, int((score > 0).sum()))
        if len(got):
            assert b.scores[u][0] == pytest.approx(score.max(), rel=1e-5)


def test_usercf_cap_on_users_per_item_follows_its_definition(world):
    """max_users_per_item = m: each item's user list is a sample of ≤ m users, and sim(u, v) is
    the damped overlap over that sample: Σ_{i ∈ I_u, v ∈ S_i} w_i / sqrt(|I_u||I_v|)."""
    from funnelrec.recall.usercf import UserCFConfig, UserCFRecall

    R = world.csr.toarray().astype(np.float64)
    m = 2
    ch = UserCFRecall(UserCFConfig(k=4, max_users_per_item=m, seed=1)).fit(world)
    kept = (ch.weighted_item_users_.toarray() > 0).T.astype(np.float64)  # (U, I): v ∈ S_i
    assert kept.sum(0).max() == m and R.sum(0).max() > m  # the cap bites
    assert ((kept > 0) <= (R > 0)).all()
    w = 1 / np.log1p(np.maximum(R.sum(0), 1))
    n = np.maximum(R.sum(1), 1)
    S = (R * w) @ kept.T / np.sqrt(np.outer(n, n))
    np.fill_diagonal(S, 0)
    users = np.arange(world.n_users)
    b = ch.recall(users, 8)
    for u in users:
        keep = [v for v in np.lexsort((np.arange(len(S)), -S[u])) if S[u, v] > 0][:4]
        score = S[u, keep] @ R[keep]
        score[R[u] > 0] = 0
        got = b.items[u][b.items[u] != PAD]
        np.testing.assert_allclose(b.scores[u][: len(got)], score[got], rtol=1e-5)
        assert len(got) == min(8, int((score > 0).sum()))
