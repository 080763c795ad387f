import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.metrics import ndcg_score, roc_auc_score

from funnelrec.core.types import PAD
from funnelrec.eval.metrics import (
    auc,
    average_popularity,
    full_ranking_topk,
    gauc,
    item_coverage,
    logloss,
    ranking_metrics,
)


@pytest.fixture
def scored():
    rng = np.random.default_rng(7)
    y = rng.integers(0, 2, 2000)
    s = np.round(rng.random(2000) + 0.3 * y, 2)  # ties on purpose
    u = rng.integers(0, 40, 2000)
    return u, y, s


def _pairwise_auc(y, s, w=None):
    """P(score of a positive > score of a negative) + ½ P(tie), by counting all pairs."""
    w = np.ones(len(y)) if w is None else np.asarray(w, float)
    pos, neg = y == 1, y == 0
    gt = (s[pos][:, None] > s[neg][None, :]) + 0.5 * (s[pos][:, None] == s[neg][None, :])
    ww = w[pos][:, None] * w[neg][None, :]
    return (gt * ww).sum() / ww.sum()


def test_auc_hand_computed_with_a_tie():
    # positives 0.5, 0.9, 0.2 against negatives 0.1, 0.5: 1 + ½ + 1 + 1 + 1 + 0 = 4.5 of 6 pairs
    assert auc([0, 0, 1, 1, 1], [0.1, 0.5, 0.5, 0.9, 0.2]) == pytest.approx(0.75)


def test_auc_equals_the_pair_count_with_ties(scored):
    _, y, s = scored
    assert auc(y, s) == pytest.approx(_pairwise_auc(y, s), abs=1e-12)


def test_weighted_auc_counts_weighted_pairs_and_equals_repeated_rows(scored):
    _, y, s = scored
    w = np.random.default_rng(3).integers(1, 4, y.size)
    assert auc(y, s, sample_weight=w) == pytest.approx(_pairwise_auc(y, s, w), abs=1e-12)
    assert auc(y, s, sample_weight=w) == pytest.approx(auc(np.repeat(y, w), np.repeat(s, w)), abs=1e-12)


def test_auc_binarises_labels_at_one_half():
    assert auc([0.0, 0.2, 0.9, 1.0], [0.1, 0.2, 0.3, 0.4]) == 1.0


@pytest.mark.filterwarnings("error")  # NaN by design, without scikit-learn's warning per group
@pytest.mark.parametrize("y", [[1, 1, 1], [0, 0, 0]])
def test_auc_single_class_is_nan(y):
    assert np.isnan(auc(y, [0.1, 0.2, 0.3]))


def test_auc_length_mismatch_is_an_error():
    with pytest.raises(ValueError, match="y_true has 2 values, y_score 3"):
        auc([0, 1], [0.1, 0.2, 0.3])


def test_logloss_hand_computed_and_clipped():
    assert logloss([1, 0], [0.9, 0.2]) == pytest.approx(-(np.log(0.9) + np.log(0.8)) / 2, rel=1e-12)
    # a certain miss is clipped to eps instead of +inf; one class alone is a valid input
    assert logloss([1], [0.0]) == pytest.approx(-np.log(1e-7), rel=1e-9)
    assert logloss([1, 1], [0.5, 0.5], sample_weight=[1, 3]) == pytest.approx(np.log(2))
    w = np.array([1.0, 3.0])
    assert logloss([1, 0], [0.9, 0.2], sample_weight=w) == pytest.approx(
        -(np.log(0.9) + 3 * np.log(0.8)) / 4, rel=1e-12)


@pytest.mark.parametrize("weight", ["impressions", "uniform"])
def test_gauc_is_weighted_mean_of_per_user_sklearn_auc(scored, weight):
    u, y, s = scored
    y = y.copy()
    y[u == 3] = 1  # a user with one class only must be skipped
    vals, ws = [], []
    for user in np.unique(u):
        m = u == user
        if len(np.unique(y[m])) < 2:
            continue
        vals.append(roc_auc_score(y[m], s[m]))
        ws.append(m.sum() if weight == "impressions" else 1)
    expected = np.average(vals, weights=ws)
    assert gauc(u, y, s, weight=weight) == pytest.approx(expected, abs=1e-12)


def test_ranking_metrics_hand_computed():
    # user 0: positives {1, 5}; list [5, 2, 1] → hits at ranks 1 and 3
    # user 1: positives {9};    list [3, 4, 0] → no hit
    # user 2: no positives → excluded from every average
    pos = sp.csr_matrix(([1, 1, 1], ([0, 0, 1], [1, 5, 9])), shape=(3, 10))
    topk = np.array([[5, 2, 1], [3, 4, 0], [1, 2, 3]])
    m = ranking_metrics(topk, pos, ks=(1, 3))
    assert m["users"] == 2
    assert m["recall@3"] == pytest.approx((2 / 2 + 0) / 2)
    assert m["recall@1"] == pytest.approx((1 / 2 + 0) / 2)
    assert m["precision@3"] == pytest.approx((2 / 3 + 0) / 2)
    assert m["hit@3"] == pytest.approx(0.5)
    assert m["mrr@3"] == pytest.approx((1 + 0) / 2)
    dcg = 1 / np.log2(2) + 1 / np.log2(4)
    idcg = 1 / np.log2(2) + 1 / np.log2(3)
    assert m["ndcg@3"] == pytest.approx((dcg / idcg + 0) / 2)


def test_ndcg_matches_sklearn_for_binary_relevance():
    rng = np.random.default_rng(1)
    n_users, n_items, k = 30, 50, 10
    rel = (rng.random((n_users, n_items)) < 0.15).astype(float)
    rel[rel.sum(1) == 0, 0] = 1
    scores = rng.random((n_users, n_items))
    topk = np.argsort(-scores, axis=1)[:, :k]
    m = ranking_metrics(topk, sp.csr_matrix(rel), ks=(k,))
    assert m["ndcg@10"] == pytest.approx(ndcg_score(rel, scores, k=k), abs=1e-9)


def test_pad_never_hits():
    pos = sp.csr_matrix(([1], ([0], [0])), shape=(1, 4))
    m = ranking_metrics(np.array([[-1, -1, 0]]), pos, ks=(2, 3))
    assert m["hit@2"] == 0 and m["hit@3"] == 1 and m["mrr@3"] == pytest.approx(1 / 3)


def test_full_ranking_excludes_training_items_and_sorts():
    scores = np.array([[0.9, 0.8, 0.1, 0.5], [0.1, 0.2, 0.3, 0.4]])
    exclude = sp.csr_matrix(([1], ([0], [0])), shape=(2, 4))
    top = full_ranking_topk(lambda u: scores[u], np.array([0, 1]), k=2, exclude=exclude, block=1)
    np.testing.assert_array_equal(top, [[1, 3], [3, 2]])


def test_full_ranking_pads_users_with_fewer_allowed_items_than_k():
    # user 0: items 0, 2, 3 excluded → only item 1 left; user 1: everything excluded;
    # user 2: nothing excluded, scored in the same block as user 1
    scores = np.array([[0.9, 0.8, 0.1, 0.5], [0.1, 0.2, 0.3, 0.4], [0.3, 0.1, 0.4, 0.2]])
    rows, cols = [0, 0, 0, 1, 1, 1, 1], [0, 2, 3, 0, 1, 2, 3]
    exclude = sp.csr_matrix((np.ones(7), (rows, cols)), shape=(3, 4))
    top = full_ranking_topk(lambda u: scores[u], np.array([0, 1, 2]), k=3, exclude=exclude, block=2)
    np.testing.assert_array_equal(top, [[1, PAD, PAD], [PAD, PAD, PAD], [2, 0, 3]])


def test_ranking_metrics_reads_each_users_row_of_positives():
    # positives by row: 0 → {1, 5}, 1 → {9}, 2 → {3}, 3 → none; the 3 ranked users are rows 2, 0, 3
    pos = sp.csr_matrix(([1, 1, 1, 1], ([0, 0, 1, 2], [1, 5, 9, 3])), shape=(4, 10))
    topk = np.array([[4, 3, 0],   # row 2: hit at rank 2
                     [5, 2, 1],   # row 0: hits at ranks 1 and 3
                     [3, 1, 5]])  # row 3: no positives → not averaged
    m = ranking_metrics(topk, pos, ks=(1, 3), rows=np.array([2, 0, 3]))
    assert m["users"] == 2
    assert m["recall@3"] == pytest.approx((1 / 1 + 2 / 2) / 2)
    assert m["recall@1"] == pytest.approx((0 + 1 / 2) / 2)
    assert m["precision@3"] == pytest.approx((1 / 3 + 2 / 3) / 2)
    assert m["hit@1"] == pytest.approx(0.5) and m["hit@3"] == pytest.approx(1.0)
    assert m["mrr@3"] == pytest.approx((1 / 2 + 1) / 2)
    ndcg_row2 = (1 / np.log2(3)) / 1.0
    ndcg_row0 = (1 + 1 / np.log2(4)) / (1 + 1 / np.log2(3))
    assert m["ndcg@3"] == pytest.approx((ndcg_row2 + ndcg_row0) / 2)


def test_coverage_and_popularity():
    topk = np.array([[0, 1], [1, -1]])
    assert item_coverage(topk, 4) == 0.5
    assert average_popularity(topk, np.array([10, 20, 30, 40])) == pytest.approx((10 + 20 + 20) / 3)
