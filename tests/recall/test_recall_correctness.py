"""Per-channel correctness against hand-computed cases and scikit-learn/scipy references."""

import numpy as np
import polars as pl
import pytest
import scipy.sparse as sp
from sklearn.metrics import pairwise_distances
from sklearn.metrics.pairwise import cosine_similarity

from funnelrec.core.errors import ConfigError
from funnelrec.core.types import PAD
from funnelrec.data.dataset import Dataset, TrainData
from funnelrec.data.schema import Schema
from funnelrec.recall._common import cap_rows, csr_topn
from funnelrec.recall.hot import HotConfig, HotRecall
from funnelrec.recall.itemcf import ItemCFConfig, ItemCFRecall, itemcf_neighbours

DAY = 86400


def train_from_pairs(pairs, times=None, n_items=None) -> TrainData:
    u = [p[0] for p in pairs]
    i = [p[1] for p in pairs]
    t = times if times is not None else [0] * len(pairs)
    inter = pl.DataFrame({"user_id": u, "item_id": i, "timestamp": t, "rating": [1.0] * len(pairs)})
    items = pl.DataFrame({"item_id": list(range(n_items or (max(i) + 1)))})
    schema = Schema(interactions={"user_id": "categorical", "item_id": "categorical", "timestamp": "time",
                                  "rating": "label"})
    ds = Dataset.build("pairs", inter, schema, users=pl.DataFrame({"user_id": sorted(set(u))}), items=items)
    return TrainData(ds, ds.interactions)


def random_binary(seed, U=25, I=15, p=0.3):
    rng = np.random.default_rng(seed)
    A = (rng.random((U, I)) < p).astype(np.float32)
    A[:, 0] = 1  # one very popular item
    return A


def test_csr_topn_matches_numpy_sort_with_ties_to_lower_index():
    rng = np.random.default_rng(0)
    D = rng.integers(0, 4, (20, 30)).astype(np.float64)  # many ties and zeros
    ex = sp.csr_matrix((rng.random((20, 30)) < 0.2).astype(np.float32))
    b = csr_topn(sp.csr_matrix(D), 7, "t", ex)
    for r in range(20):
        cand = [(-D[r, c], c) for c in range(30) if D[r, c] > 0 and ex[r, c] == 0]
        want = [c for _, c in sorted(cand)[:7]]
        got = b.items[r][b.items[r] != PAD].tolist()
        assert got == want
        np.testing.assert_array_equal(b.scores[r][: len(want)], D[r, want])


def test_cap_rows_keeps_at_most_cap_and_only_existing_entries():
    m = sp.csr_matrix(random_binary(1, 30, 40, 0.5))
    c = cap_rows(m, 5, seed=3)
    assert np.diff(c.indptr).max() <= 5
    assert (np.diff(c.indptr) == np.minimum(np.diff(m.indptr), 5)).all()
    assert (c.multiply(m) != c).nnz == 0  # every kept entry existed
    np.testing.assert_array_equal(cap_rows(m, 5, seed=3).indices, c.indices)
    assert not np.array_equal(cap_rows(m, 5, seed=4).indices, c.indices)  # the seed matters
    # uniform sample: one row of 10 entries capped at 5 keeps each column with probability 1/2;
    # over 2,000 seeds the rate's sd is sqrt(0.25/2000) = 0.011, so ±0.04 is > 3.5 sd
    row = sp.csr_matrix(np.arange(1, 11, dtype=np.float32)[None, :])
    kept = np.zeros(10)
    for seed in range(2000):
        r = cap_rows(row, 5, seed=seed)
        assert r.nnz == 5 and (r.data == r.indices + 1).all()  # kept values stay with their columns
        kept[r.indices] += 1
    np.testing.assert_allclose(kept / 2000, 0.5, atol=0.04)


def test_hot_is_time_decayed_count():
    # item 0: two old plays, item 1: one new play, item 2: one play 1 day old
    pairs = [(0, 0), (1, 0), (0, 1), (1, 2)]
    now = 100 * DAY
    times = [now - 10 * DAY, now - 10 * DAY, now, now - DAY]
    td = train_from_pairs(pairs, times)
    ch = HotRecall(HotConfig(tau_days=5.0)).fit(td)
    want = {0: 2 * np.exp(-2.0), 1: 1.0, 2: np.exp(-0.2)}
    np.testing.assert_allclose(ch.scores_, sorted(want.values(), reverse=True), rtol=1e-6)
    assert ch.items_.tolist() == [1, 2, 0]  # 1 > e^-0.2 = 0.82 > 2e^-2 = 0.27
    # plain count: item 0 first; user 0 saw items 0 and 1 → only item 2 left
    cnt = HotRecall(HotConfig(tau_days=0)).fit(td)
    assert cnt.items_.tolist()[0] == 0
    assert cnt.recall(np.array([0]), 3).items[0].tolist() == [2, PAD, PAD]
    with pytest.raises(ConfigError):
        HotConfig(tau_days=-1)


@pytest.mark.parametrize("iuf", [False, True])
def test_itemcf_cosine_matches_sklearn(iuf):
    A = random_binary(2)
    N = itemcf_neighbours(sp.csr_matrix(A), k=A.shape[1], similarity="cosine",
                          user_damping="iuf" if iuf else "none").toarray()
    if iuf:
        w = 1.0 / np.log1p(A.sum(1))
        num = A.T @ (A * w[:, None])
        n = A.sum(0)
        ref = num / np.sqrt(np.outer(n, n))
    else:
        ref = cosine_similarity(A.T)
    np.fill_diagonal(ref, 0)
    np.testing.assert_allclose(N, ref, rtol=1e-5, atol=1e-7)


def test_itemcf_asymmetric_cosine_with_inverse_damping():
    A = random_binary(6)
    N = itemcf_neighbours(sp.csr_matrix(A), k=A.shape[1], similarity="asymmetric", asymmetry=0.8,
                          user_damping="inverse").toarray()
    num = A.T @ (A / A.sum(1, keepdims=True))
    n = A.sum(0)
    ref = num / (n[:, None] ** 0.8 * n[None, :] ** 0.2)
    np.fill_diagonal(ref, 0)
    np.testing.assert_allclose(N, ref, rtol=1e-5, atol=1e-7)


def test_itemcf_jaccard_matches_sklearn_and_topk_keeps_largest():
    A = random_binary(3)
    N = itemcf_neighbours(sp.csr_matrix(A), k=A.shape[1], similarity="jaccard").toarray()
    ref = 1 - pairwise_distances(A.T.astype(bool), metric="jaccard")
    np.fill_diagonal(ref, 0)
    np.testing.assert_allclose(N, ref, rtol=1e-5, atol=1e-7)
    N3 = itemcf_neighbours(sp.csr_matrix(A), k=3, similarity="jaccard").toarray()
    for i in range(A.shape[1]):
        kept = np.flatnonzero(N3[i])
        assert len(kept) == 3 and N[i, kept].min() >= np.sort(N[i])[-3] - 1e-7


@pytest.mark.parametrize("mode", ["trigger", "target"])
def test_itemcf_user_scores_are_history_times_neighbours(mode):
    A = random_binary(4, U=12, I=10, p=0.35)
    pairs = list(zip(*np.nonzero(A)))
    td = train_from_pairs([(int(u), int(i)) for u, i in pairs], n_items=A.shape[1])
    ch = ItemCFRecall(ItemCFConfig(k=3, neighbourhood=mode, similarity="cosine", user_damping="none")).fit(td)
    full = cosine_similarity(A.T)
    np.fill_diagonal(full, 0)
    # top-3 per row, ties to lower index (stable sort)
    S = np.zeros_like(full)
    for i in range(len(full)):
        keep = np.argsort(-full[i], kind="stable")[:3]
        S[i, keep] = full[i, keep]
    scores = A @ (S if mode == "trigger" else S.T)
    b = ch.recall(np.arange(A.shape[0]), 4)
    n_isolated = 0
    for u in range(A.shape[0]):
        cand = [(-scores[u, s], s) for s in range(A.shape[1]) if scores[u, s] > 1e-9 and A[u, s] == 0]
        ranked = [s for _, s in sorted(cand)]  # every candidate, best first (ties: lower id)
        want = ranked[:4]
        got = b.items[u][b.items[u] != PAD].tolist()
        assert len(got) == len(want)
        got_scores = b.scores[u][: len(got)]
        assert np.all(np.diff(got_scores) <= 0)  # best first
        np.testing.assert_allclose(got_scores, scores[u, got], rtol=1e-5)
        np.testing.assert_allclose(scores[u, got], scores[u, want], rtol=1e-5)  # rank by rank
        ref = scores[u, ranked]
        for j in range(len(want)):  # a score apart from both neighbours (also the first one cut) fixes the item
            if all(abs(ref[j] - ref[i]) > 1e-9 for i in (j - 1, j + 1) if 0 <= i < len(ref)):
                assert got[j] == want[j], (u, j, got, want)
                n_isolated += 1
    assert n_isolated >= A.shape[0]  # the exact-order check did run on most ranks


def test_itemcf_similar_items_and_bad_config():
    A = random_binary(5)
    td = train_from_pairs([(int(u), int(i)) for u, i in zip(*np.nonzero(A))], n_items=A.shape[1])
    ch = ItemCFRecall(ItemCFConfig(k=4, similarity="cosine", user_damping="none")).fit(td)
    b = ch.similar_items(np.array([1, -1]), 4)
    ref = cosine_similarity(A.T)[1]
    ref[1] = 0
    np.testing.assert_allclose(b.scores[0], np.sort(ref)[::-1][:4], rtol=1e-5)
    assert (b.items[1] == PAD).all()
    with pytest.raises(ConfigError):
        ItemCFConfig(k=0)


def test_use_rating_weights_history_by_rating_and_needs_a_rating_column(world):
    from funnelrec.recall.usercf import UserCFConfig, UserCFRecall

    ch = ItemCFRecall(ItemCFConfig(k=5, use_rating=True)).fit(world)
    ratings = world.dataset.csr(world.interactions, value="rating").toarray()
    scores = ratings @ ch.neighbours_.toarray().T  # target mode: Σ_i r(u, i) · sim_k(s → i)
    scores[world.csr.toarray() > 0] = 0
    b = ch.recall(np.arange(world.n_users), 6)
    for u in range(world.n_users):
        got = b.items[u][b.items[u] != PAD]
        np.testing.assert_allclose(b.scores[u][: len(got)], scores[u, got], rtol=1e-5)
        assert b.scores[u][0] == pytest.approx(scores[u].max(), rel=1e-5) if len(got) else scores[u].max() <= 0
    no_rating = train_from_pairs([(0, 0), (1, 0), (1, 1)])
    no_rating = TrainData(no_rating.dataset, no_rating.interactions.drop("rating"))
    for channel in (ItemCFRecall(ItemCFConfig(use_rating=True)), UserCFRecall(UserCFConfig(use_rating=True))):
        with pytest.raises(ConfigError, match="no 'rating' column"):
            channel.fit(no_rating)


def test_user_history_rows_match_dense_reference():
    from funnelrec.recall._common import UserHistory
    from funnelrec.recall.base import RecallContext

    A = random_binary(8, U=9, I=12, p=0.4)  # column 0 is all ones
    W = A * np.arange(1, 13)[None, :] * 0.25  # weights 0.25 … 3: differ from the binary matrix, some < 1
    h = UserHistory(sp.csr_matrix(A), sp.csr_matrix(W))
    users = np.array([4, -1, 8, 9, 0, 4])  # unknown (-1) and out of range (9): empty rows
    extra = [np.array([11, 0]), np.array([2, 2]), np.array([], np.int64), np.array([0]), np.array([99]), np.array([])]
    H, seen = h.matrix(users, RecallContext(extra={"history": extra}))
    ok = (users >= 0) & (users < 9)
    ref_seen = np.where(ok[:, None], A[np.where(ok, users, 0)], 0)
    ref_H = np.where(ok[:, None], W[np.where(ok, users, 0)], 0)
    for r, e in enumerate(extra):
        e = np.asarray(e, np.int64)
        e = e[(e >= 0) & (e < 12)]
        ref_seen[r, e] = 1
        ref_H[r, e] = np.maximum(ref_H[r, e], 1)
    # user 4's item 0 (weight 0.25) is also fresh in row 0: max(0.25, 1); row 5 (no fresh) keeps 0.25
    assert W[4, 0] == 0.25 and ref_H[0, 0] == 1.0 and ref_H[5, 0] == 0.25
    np.testing.assert_array_equal(seen.toarray(), ref_seen)
    np.testing.assert_array_equal(H.toarray(), ref_H)
    Hr, seenr = h.rows(users, RecallContext(extra={"history": extra}))  # the request-path kernel
    np.testing.assert_array_equal(Hr.to_csr(12).toarray(), ref_H)
    np.testing.assert_array_equal(seenr.to_csr(12).toarray(), ref_seen)
    H, seen = UserHistory(sp.csr_matrix(A)).matrix(np.array([3, -1]), None)
    np.testing.assert_array_equal(H.toarray(), [A[3], np.zeros(12)])
    assert H.has_sorted_indices and seen.has_sorted_indices
