"""`rank.loss` (train/candidate_ranker.py, train/losses.py): the fine ranker's listwise and
LambdaRank losses over each (label set, user) group of samples.

- the segment log-softmax, the listwise loss and its gradient, and LambdaRank against numpy /
  scipy computations written here from the formulas;
- `pack_groups` + `group_loss` on a batch of rows equal the listwise loss of those rows;
- "pointwise" (the default) is the BCE of today's ranker, and naming it changes nothing;
- a funnel with `rank.loss: listwise` (or lambdarank) trains on whole (label set, user) groups
  (each packed group one of them, one group each), saves, loads and serves;
- bad values are ConfigErrors naming the key.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.special import log_softmax

from funnelrec.core.errors import ConfigError
from funnelrec.pipeline.builder import FunnelBuilder
from funnelrec.pipeline.config import FunnelConfig
from funnelrec.pipeline.funnel import Funnel
from funnelrec.train.candidate_ranker import CandidateRankerConfig, group_loss, pack_groups, task_loss
from funnelrec.train.losses import lambdarank_loss, listwise_softmax_loss, segment_log_softmax

# two users, rows interleaved: user 0 = rows 0, 2, 3, 5 (two positives), user 1 = rows 1, 4, 6 (one)
Z = np.array([1.5, -0.3, 0.2, 2.0, 0.7, -1.0, 0.1])
Y = np.array([1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0])
SEG = np.array([0, 1, 0, 0, 1, 0, 1])


def _cfg(**rank) -> FunnelConfig:
    from candidate_ranker_world import tiny_funnel_config

    return tiny_funnel_config(2, **rank)


def _t(a, dtype=torch.float64):
    return torch.tensor(a, dtype=dtype)


def test_segment_log_softmax_is_scipys_per_user():
    got = segment_log_softmax(_t(Z), _t(SEG, torch.int64), 2).numpy()
    want = np.empty_like(Z)
    for g in (0, 1):
        want[SEG == g] = log_softmax(Z[SEG == g])
    np.testing.assert_allclose(got, want, rtol=1e-12)
    big = segment_log_softmax(_t(Z * 1000), _t(SEG, torch.int64), 2).numpy()  # no overflow
    assert np.isfinite(big).all()


def test_listwise_loss_and_gradient_match_the_formula():
    z = _t(Z).requires_grad_()
    w = np.array([2.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0])  # user 0's first positive counts twice
    loss = listwise_softmax_loss(z, _t(Y), _t(SEG, torch.int64), 2, _t(w))
    loss.backward()
    want, grad = 0.0, np.zeros_like(Z)
    for g in (0, 1):
        m = SEG == g
        p = Y[m] * w[m] / (Y[m] * w[m]).sum()
        want += -(p * log_softmax(Z[m])).sum() / 2
        grad[m] = (np.exp(log_softmax(Z[m])) - p) / 2  # d/dz of −Σ p log softmax(z) = softmax − p
    # user 0 by hand: p = (2/3, 1/3) on rows 0 and 3
    lse0 = np.log(np.exp([1.5, 0.2, 2.0, -1.0]).sum())
    user0 = -(2 / 3 * (1.5 - lse0) + 1 / 3 * (2.0 - lse0))
    lse1 = np.log(np.exp([-0.3, 0.7, 0.1]).sum())
    assert want == pytest.approx((user0 - (0.7 - lse1)) / 2, rel=1e-12)
    assert loss.item() == pytest.approx(want, rel=1e-12)
    np.testing.assert_allclose(z.grad.numpy(), grad, rtol=1e-10, atol=1e-12)
    g = z.grad.numpy()
    assert (g[Y == 0] > 0).all() and g[0] < 0 and g[4] < 0  # negatives pushed down, the heavier positives up
    assert g[3] > 0  # user 0's lighter positive already holds more than its share p = 1/3 of the softmax
    np.testing.assert_allclose([g[SEG == 0].sum(), g[SEG == 1].sum()], 0.0, atol=1e-12)  # shift-invariant


def test_a_group_without_a_positive_adds_nothing():
    y = Y.copy()
    y[SEG == 1] = 0.0
    z = _t(Z).requires_grad_()
    loss = listwise_softmax_loss(z, _t(y), _t(SEG, torch.int64), 2)
    m = SEG == 0
    assert float(loss) == pytest.approx(-(y[m] / y[m].sum() * log_softmax(Z[m])).sum(), rel=1e-12)
    loss.backward()
    np.testing.assert_array_equal(z.grad.numpy()[SEG == 1], 0.0)
    none = listwise_softmax_loss(_t(Z), _t(np.zeros(7)), _t(SEG, torch.int64), 2)
    assert float(none) == 0.0


def _lambdarank_numpy(z, y, seg):
    """Per group: Σ over pairs with y_i > y_j of |ΔNDCG_ij| · log(1 + e^{−(z_i − z_j)}), full-list
    NDCG with gain y and discount 1/log2(2 + rank); mean over groups with a pair."""
    per = []
    for g in np.unique(seg):
        zz, yy = z[seg == g], y[seg == g]
        rank = np.empty(len(zz), int)
        rank[np.argsort(-zz, kind="stable")] = np.arange(len(zz))
        d = 1 / np.log2(rank + 2.0)
        idcg = (np.sort(yy)[::-1] / np.log2(np.arange(len(yy)) + 2.0)).sum()
        total, pairs = 0.0, 0
        for i in range(len(zz)):
            for j in range(len(zz)):
                if yy[i] > yy[j]:
                    pairs += 1
                    total += abs(yy[i] - yy[j]) * abs(d[i] - d[j]) / idcg * np.log1p(np.exp(-(zz[i] - zz[j])))
        if pairs:
            per.append(total)
    return float(np.mean(per))


def test_lambdarank_matches_a_pair_loop():
    z = _t(Z).requires_grad_()
    loss = lambdarank_loss(z, _t(Y), _t(SEG, torch.int64), 2)
    assert float(loss) == pytest.approx(_lambdarank_numpy(Z, Y, SEG), rel=1e-10)
    loss.backward()
    g = z.grad.numpy()
    assert (g[Y > 0] <= 0).all() and (g[Y == 0] >= 0).all() and np.abs(g).sum() > 0


def _rows_batch():
    x = torch.randn(7, 3, generator=torch.Generator().manual_seed(0))
    return {"x": x, "label_ctr": _t(Y, torch.float32), "user": _t(SEG, torch.int64)}


class _Linear(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.lin = torch.nn.Linear(3, 1)

    def forward(self, b):
        return {"ctr": self.lin(b["x"]).squeeze(-1)}


def test_pack_groups_keeps_each_users_rows_in_order():
    rows = _rows_batch()
    packed = pack_groups(rows, SEG)
    assert packed["group_mask"].tolist() == [[True] * 4, [True] * 3 + [False]]
    torch.testing.assert_close(packed["x"][0], rows["x"][[0, 2, 3, 5]], rtol=0, atol=0)
    torch.testing.assert_close(packed["x"][1, :3], rows["x"][[1, 4, 6]], rtol=0, atol=0)
    assert (packed["user"][packed["group_mask"]].unique().tolist() == [0, 1])


def test_group_loss_on_packed_groups_is_the_listwise_loss_of_their_rows():
    rows, model = _rows_batch(), _Linear()
    with torch.no_grad():
        z = model(rows)["ctr"].double().numpy()
    want = np.mean([-(Y[SEG == g] / Y[SEG == g].sum() * log_softmax(z[SEG == g])).sum() for g in (0, 1)])
    packed = pack_groups(rows, SEG)
    got = group_loss(("ctr",), "listwise")(model, packed)
    assert float(got) == pytest.approx(want, rel=1e-5)
    bce = -np.mean(Y * np.log(1 / (1 + np.exp(-z))) + (1 - Y) * np.log(1 - 1 / (1 + np.exp(-z))))
    mixed = group_loss(("ctr",), "listwise", bce_weight=0.3)(model, packed)
    assert float(mixed) == pytest.approx(want + 0.3 * bce, rel=1e-5)


def test_the_pointwise_loss_is_bce():
    rows, model = _rows_batch(), _Linear()
    with torch.no_grad():
        z = model(rows)["ctr"].double().numpy()
    p = 1 / (1 + np.exp(-z))
    want = -np.mean(Y * np.log(p) + (1 - Y) * np.log(1 - p))
    assert CandidateRankerConfig().loss == "pointwise"
    assert float(task_loss(("ctr",))(model, rows)) == pytest.approx(want, rel=1e-5)


PACKED: dict[str, list] = {}  # per funnel of `funnels`: what each ranker fit packed (see there)


@pytest.fixture(scope="module")
def funnels(world):
    """The four funnels, fitted while recording each ranker fit's training rows — (label set,
    user) of every row, from `_samples`, whose rows the training tensors are in order — and each
    `pack_groups` call: which of those rows every packed group holds (a row-id column rides
    through the real `pack_groups` and is taken out again: the fit trains as it would)."""
    import funnelrec.train.candidate_ranker as cr

    ds, split = world
    samples, pack = cr.CandidateRanker._samples, cr.pack_groups
    log: list = []

    def recording_samples(self, *args, **kwargs):
        out = samples(self, *args, **kwargs)
        log.append(("samples", out[0].copy(), out[6].copy()))
        return out

    def recording_pack(tensors, group):
        n = len(next(iter(tensors.values())))
        out = pack({**tensors, "_row": torch.arange(n)}, group)
        rows = out.pop("_row")
        log.append(("pack", n, [rows[g][out["group_mask"][g]].tolist() for g in range(len(rows))]))
        return out

    fit = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cr.CandidateRanker, "_samples", recording_samples)
        mp.setattr(cr, "pack_groups", recording_pack)
        for name, rank in {"default": {}, "pointwise": {"loss": "pointwise", "listwise_bce": 0.7},
                           "listwise": {"loss": "listwise", "listwise_bce": 0.1},
                           "lambdarank": {"loss": "lambdarank"}}.items():
            log.clear()
            fit[name] = FunnelBuilder(_cfg(**rank)).fit(ds, split.train, labels=split.valid)
            PACKED[name] = list(log)
    return fit


@pytest.mark.parametrize("name", ["listwise", "lambdarank"])
def test_a_listwise_ranker_trains_on_whole_user_groups(funnels, name):
    """Each packed group is one (label set, user) — all of its training rows, no other's — and
    there are as many groups as distinct (label set, user) pairs among the rows."""
    log = PACKED[name]
    assert [e[0] for e in log] == ["samples", "pack"]  # one member: one sample set, packed once
    (_, u, which), (_, n, groups) = log
    assert n == len(u) > 1000
    key = list(zip(which.tolist(), u.tolist()))
    assert sorted(r for g in groups for r in g) == list(range(n))  # every row in exactly one group
    for g in groups:
        assert len({key[r] for r in g}) == 1, [key[r] for r in g][:5]
    assert len(groups) == len(set(key)) > 50


def test_naming_pointwise_trains_the_default_ranker(funnels):
    for name in ("default", "pointwise"):  # row batches: nothing packed into groups
        assert [e[0] for e in PACKED[name]] == ["samples"]
    a, b = funnels["default"].ranker_.model_.state_dict(), funnels["pointwise"].ranker_.model_.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    lw = funnels["listwise"].ranker_.model_.state_dict()
    assert any(not torch.equal(lw[k], a[k]) for k in a)  # the listwise loss trained something else


@pytest.mark.parametrize("name", ["listwise", "lambdarank"])
def test_a_listwise_funnel_saves_loads_and_serves(funnels, name, tmp_path):
    f = funnels[name]
    assert f.config.rank.loss == name
    users = np.array([0, 5, 9, 42])
    items, scores = f.recommend_batch(users, 10)[:2]
    assert items.shape == (4, 10) and np.isfinite(scores).all()
    back = Funnel.load(f.save(tmp_path / "art"))
    assert back.config.rank.loss == name
    items2, scores2 = back.recommend_batch(users, 10)[:2]
    np.testing.assert_array_equal(items, items2)
    np.testing.assert_allclose(scores, scores2, rtol=1e-6)


@pytest.mark.parametrize(("rank", "key"), [({"loss": "softmax"}, "rank.loss"), ({"loss": 1}, "rank.loss"),
                                           ({"listwise_bce": -0.1}, "rank.listwise_bce"),
                                           ({"loss": "listwise", "tasks": ["ctr", "watch"],
                                             "task_kinds": {"watch": "watch_time"}}, "rank.loss")])
def test_a_bad_loss_names_the_key(rank, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as e:
        _cfg(**rank)
    assert "\n" not in str(e.value)
