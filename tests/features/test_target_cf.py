"""Target encoding (out-of-fold / leave-one-out), neighbourhood-CF features and multi-valued
field pooling, checked against brute-force recomputation from their definitions."""

import numpy as np
import polars as pl
import pytest
import torch

from funnelrec.core.errors import ConfigError, NotFittedError
from funnelrec.data.dataset import TrainData
from funnelrec.features.cf import NeighborhoodCF
from funnelrec.features.encoder import FeatureEncoder, FeatureEncoderConfig
from funnelrec.features.target import TargetEncoder, _fold_of
from funnelrec.models.ranking.base import FeatureSpec
from funnelrec.models.ranking.common import FieldEmbedder


def _toy(seed=0, n=400, n_codes=7, width=2):
    rng = np.random.default_rng(seed)
    codes = rng.integers(-1, n_codes, size=(n, width))
    codes[:, 0] = np.abs(codes[:, 0])  # ≥ 1 code per row
    y = rng.integers(0, 2, size=(n, 2)).astype(float)
    pairs = rng.permutation(10 * n)[:n]  # unique pair keys
    return codes, y, pairs


@pytest.mark.parametrize("n_folds", [0, 4])
def test_target_encoding_equals_brute_force_out_of_block(n_folds):
    codes, y, pairs = _toy()
    m = 3.0
    te = TargetEncoder(n_folds=n_folds, smoothing=m, seed=5).fit(codes, y, pairs, n_codes=7)
    got, got_n = te.transform(codes, pairs)
    fold = _fold_of(pairs, n_folds, 5) if n_folds else None
    prior = y.mean(axis=0)
    for r in range(0, len(codes), 37):
        keep = np.ones(len(codes), bool)
        if n_folds:
            keep &= fold != fold[r]  # other folds only
        else:
            keep[r] = False  # leave the row itself out
        s, n = np.zeros(2), 0.0
        for c in codes[r][codes[r] >= 0]:
            hit = keep & (codes == c).any(axis=1)
            mult = (codes[hit] == c).sum(axis=1)  # a row may carry a code twice
            s += (y[hit] * mult[:, None]).sum(axis=0)
            n += mult.sum()
        assert np.allclose(got[r], (s + m * prior) / (n + m)) and got_n[r] == pytest.approx(n)
    # a pair never seen in training sees every training row: the full smoothed mean
    q = np.array([[codes[0, 0], -1]])
    full = (codes == codes[0, 0]).sum()
    want = ((y * (codes == codes[0, 0]).sum(1)[:, None]).sum(0) + m * prior) / (full + m)
    assert np.allclose(te.transform(q, np.array([-5]))[0][0], want)


def test_target_encoding_of_a_training_row_ignores_its_own_label():
    codes, y, pairs = _toy(1)
    a = TargetEncoder(0, 2.0).fit(codes, y, pairs, 7).transform(codes, pairs)[0]
    y2 = y.copy()
    y2[10] = 1 - y2[10]
    b = TargetEncoder(0, 2.0).fit(codes, y2, pairs, 7).transform(codes, pairs)[0]
    # row 10 only changes the global prior (through m·t̄), not its own sums: with m = 0 it is equal
    a0 = TargetEncoder(0, 0.0).fit(codes, y, pairs, 7).transform(codes[10:11], pairs[10:11])[0]
    b0 = TargetEncoder(0, 0.0).fit(codes, y2, pairs, 7).transform(codes[10:11], pairs[10:11])[0]
    assert np.allclose(a0, b0)
    assert not np.allclose(a, b)  # other rows sharing its codes do see the change
    with pytest.raises(ConfigError):
        TargetEncoder(n_folds=1)
    with pytest.raises(NotFittedError):
        TargetEncoder().transform(codes, pairs)


@pytest.mark.parametrize("kind", ["item", "user"])
def test_neighborhood_cf_equals_loops(kind):
    rng = np.random.default_rng(3)
    nu, ni = 9, 11
    cells = rng.permutation(nu * ni)[:50]
    u, i = cells // ni, cells % ni
    y = rng.integers(0, 2, 50).astype(float)
    r = rng.integers(1, 6, 50).astype(float)
    p, m = 2.0, 0.5
    cf = NeighborhoodCF(kind, power=p, smoothing=m).fit(u, i, y, r, nu, ni)
    M = np.zeros((nu, ni))
    M[u, i] = 1
    ubar = {k: r[u == k].mean() for k in set(u.tolist())}
    lab = {(a, b): (yy, rr - ubar[a]) for a, b, yy, rr in zip(u, i, y, r)}

    def cos(x, z):
        d = np.linalg.norm(x) * np.linalg.norm(z)
        return (x @ z / d) ** p if d else 0.0

    for a in range(nu):
        for b in range(ni):
            num, den = np.zeros(2), 0.0
            if kind == "item":
                nbrs = [((a, j), cos(M[:, b], M[:, j])) for j in range(ni) if j != b]
            else:
                nbrs = [((v, b), cos(M[a], M[v])) for v in range(nu) if v != a]
            for key, s in nbrs:
                if key in lab:
                    num += s * np.array(lab[key])
                    den += s
            want = (num + m * np.array([y.mean(), 0.0])) / (den + m)
            assert np.allclose(cf.transform([a], [b])[0], want), (a, b)


def test_encoder_target_and_cf_features_are_out_of_sample(ml100k):
    inter = ml100k.interactions.sort("timestamp")
    train, test = inter[:4000], inter[4000:4300]
    cfg = FeatureEncoderConfig(target_keys=(("user_id",), ("item_id", "gender")), target_folds=0,
                               target_smoothing=0.0, cf_features=("itemcf_label",))
    enc = FeatureEncoder(cfg).fit(TrainData(ml100k, train))
    assert enc.dense_names_ == ["te_label_user_id", "te_label_item_id*gender", "itemcf_label"]
    y = (train["rating"].to_numpy() >= 4).astype(float)
    u = train["user_idx"].to_numpy()
    # the raw (pre-CDF) value of a training row = mean label of the user's OTHER training rows
    te = enc.target_encoders_[0].transform(u[:, None], u * enc.n_items_ + train["item_idx"].to_numpy())[0][:, 0]
    for k in (0, 5, 99):
        others = (u == u[k]) & (np.arange(len(u)) != k)
        assert te[k] == pytest.approx(y[others].mean())
    # the encoded column is the training CDF of those values; unseen (test) rows use all rows
    b = enc.encode(test)
    ut = test["user_idx"].to_numpy()
    raw = enc.target_encoders_[0].transform(ut[:, None], ut * enc.n_items_ + test["item_idx"].to_numpy())[0][:, 0]
    want = np.array([y[u == x].mean() if (u == x).any() else y.mean() for x in ut])
    assert np.allclose(raw, want)
    assert np.allclose(b["dense"][:, 0].numpy(), np.searchsorted(np.sort(te), raw, side="right") / len(te), atol=1e-6)
    with pytest.raises(ConfigError):
        FeatureEncoderConfig(cf_features=("svd",))


def test_field_embedder_mean_pools_multi_valued_fields():
    spec = FeatureSpec(n_embeddings=10, n_fields=5, n_dense=1, field_names=("u", "g", "g", "g", "i"),
                       pool_multi=True)
    emb = FieldEmbedder(spec, 4)
    sparse = torch.tensor([[1, 2, 3, 0, 4], [1, 0, 0, 0, 5]])
    v = emb({"sparse": sparse, "dense": torch.ones(2, 1)})
    w = emb.embedding.embedding.weight
    assert v.shape == (2, 4, 4) and emb.n_fields == 4
    assert torch.allclose(v[0, 1], (w[2] + w[3]) / 2) and torch.allclose(v[1, 1], torch.zeros(4))
    assert torch.allclose(v[:, 2], w[torch.tensor([4, 5])])
    flat = FieldEmbedder(FeatureSpec(n_embeddings=10, n_fields=5, field_names=("u", "g", "g", "g", "i")), 4)
    assert flat.n_fields == 5  # pooling is opt-in


def test_encoder_pool_multi_reaches_the_spec(ml100k):
    inter = ml100k.interactions[:2000]
    enc = FeatureEncoder(FeatureEncoderConfig(item_columns=("release_year", "genres"), pool_multi=True, multi_width=3)).fit(TrainData(ml100k, inter))
    spec = enc.spec
    assert spec.pool_multi and spec.field_names.count("genres") == 3
    assert FieldEmbedder(spec, 4).n_fields == len(dict.fromkeys(spec.field_names))
    assert isinstance(inter, pl.DataFrame)


def _centered_cf_loops(kind, u, i, y, r, nu, ni, p, m, clip=True):
    """(nu, ni, 2) [label, rating] estimates with the adjusted-cosine similarity, by loops from the
    definition: ratings centred on the user's mean (over these rows), 0 where unrated; s = the
    cosine of two items' (users') centred vectors, negatives clipped to 0, to the power p, none
    with itself; est = (Σ_nbr s · T + m · t̄) / (Σ_nbr s + m) over the rated neighbours."""
    ubar = {a: r[u == a].mean() for a in set(u.tolist())}
    C = np.zeros((nu, ni))
    for a, b, rr in zip(u, i, r):
        C[a, b] = rr - ubar[a]
    lab = {(a, b): (yy, rr - ubar[a]) for a, b, yy, rr in zip(u, i, y, r)}

    def sim(x, z):
        d = np.sqrt((x * x).sum() * (z * z).sum())
        c = x @ z / d if d else 0.0
        return max(c, 0.0) ** p if clip else abs(c) ** p * np.sign(c)

    out = np.zeros((nu, ni, 2))
    for a in range(nu):
        for b in range(ni):
            if kind == "item":
                nbrs = [((a, j), sim(C[:, b], C[:, j])) for j in range(ni) if j != b]
            else:
                nbrs = [((v, b), sim(C[a], C[v])) for v in range(nu) if v != a]
            num, den = np.zeros(2), 0.0
            for key, s in nbrs:
                if key in lab:
                    num += s * np.array(lab[key])
                    den += s
            out[a, b] = (num + m * np.array([y.mean(), 0.0])) / (den + m)
    return out


@pytest.mark.parametrize("kind", ["item", "user"])
def test_centered_cf_gives_training_pairs_out_of_fold_values(kind):
    rng = np.random.default_rng(4)
    nu, ni = 12, 10
    cells = rng.permutation(nu * ni)[:80]
    u, i = cells // ni, cells % ni
    r = rng.integers(1, 6, 80).astype(float)
    y = (r >= 4).astype(float)
    p, m = 2.0, 1.0
    cf = NeighborhoodCF(kind, power=p, smoothing=m, similarity="centered", n_folds=3).fit(u, i, y, r, nu, ni)
    fold = _fold_of(u * ni + i, 3, seed=1)
    assert np.bincount(fold, minlength=3).min() >= 15  # three real folds
    for f in range(3):
        inn, out = fold != f, fold == f
        # a training pair of fold f: the estimate of the loops over the other folds' rows alone
        want = _centered_cf_loops(kind, u[inn], i[inn], y[inn], r[inn], nu, ni, p, m)
        np.testing.assert_allclose(cf.transform(u[out], i[out]), want[u[out], i[out]], rtol=1e-9, atol=1e-12)
    # a pair outside training: the loops over every training row
    free = np.setdiff1d(np.arange(nu * ni), cells)
    want = _centered_cf_loops(kind, u, i, y, r, nu, ni, p, m)
    np.testing.assert_allclose(cf.transform(free // ni, free % ni), want[free // ni, free % ni], rtol=1e-9,
                               atol=1e-12)
    # the clip matters here (some centred cosines are negative), and centred is not binary
    unclipped = _centered_cf_loops(kind, u, i, y, r, nu, ni, p, m, clip=False)
    assert not np.allclose(unclipped[free // ni, free % ni], want[free // ni, free % ni])
    binary = NeighborhoodCF(kind, power=p, smoothing=m).fit(u, i, y, r, nu, ni)
    assert not np.allclose(binary.transform(free // ni, free % ni), cf.transform(free // ni, free % ni))
    with pytest.raises(ConfigError):
        NeighborhoodCF("item", similarity="centered", n_folds=0)
