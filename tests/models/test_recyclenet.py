"""RecycleNet-LHUC (models/ranking/recyclenet.py, nn/recycle.py; the seed's RecycleNet: test_recycle_seed.py) and the `dense_as_fields` option of
FFM, FiBiNET and Neural Interaction, checked against hand-written formulas."""

from dataclasses import replace

import pytest
import torch

from funnelrec.core.errors import ConfigError
from funnelrec.models.ranking.common import build_ranker
from funnelrec.models.ranking.ffm import field_aware_pairs
from funnelrec.nn.lhuc import LHUCGate
from funnelrec.nn.recycle import RecyclingLHUCMLP
from zoo_cases import make_ctr_problem  # tests/models is on sys.path (rootdir import mode)


def _net(seed=0, **kw):
    torch.manual_seed(seed)
    return RecyclingLHUCMLP(6, 3, (5, 4), **kw).eval()


def _hand_recursion(net, x, p, passes):
    """h_{-1} = 0; pass t: c = [p ; h_{t-1}], a_0 = x ⊙ 2σ(gate_in(c)),
    a_l = ReLU(W_l a_{l-1} + b_l) ⊙ 2σ(gate_l(c)); h_t = a_L (the LHUC gate written out)."""

    def gate(g, c):  # LHUC form: 2·σ(W2 ReLU(W1 c + b1) + b2)
        l1, l2 = g.net[0], g.net[2]
        return 2 * torch.sigmoid(torch.relu(c @ l1.weight.T + l1.bias) @ l2.weight.T + l2.bias)

    h = torch.zeros(x.shape[0], net.layers[-1].out_features)
    for _ in range(passes):
        c = torch.cat([p, h], 1)
        a = x * gate(net.input_gate, c)
        for lin, g in zip(net.layers, net.gates):
            a = torch.relu(a @ lin.weight.T + lin.bias) * gate(g, c)
        h = a
    return h


@pytest.mark.parametrize("passes", [1, 2, 3])
def test_each_pass_count_equals_the_hand_written_recursion(passes):
    net = _net(n_recycles=2)
    x, p = torch.randn(8, 6), torch.randn(8, 3)
    with torch.no_grad():
        torch.testing.assert_close(net(x, p, n_passes=passes), _hand_recursion(net, x, p, passes))
        if passes == 2:  # recycling feeds h back: the output moves (else the recursion is not tested)
            assert (_hand_recursion(net, x, p, 2) - _hand_recursion(net, x, p, 1)).abs().max() > 1e-3
        torch.testing.assert_close(net(x, p), _hand_recursion(net, x, p, 2))  # default = n_recycles passes


def test_pass_zero_gate_is_lhuc_gate_of_p():
    net = _net(n_recycles=3)
    p = torch.randn(8, 3)
    for g in [net.input_gate, *net.gates]:
        lhuc = LHUCGate(3, g.net[2].out_features, g.net[0].out_features)
        with torch.no_grad():
            lhuc.net[0].weight.copy_(g.net[0].weight[:, :3])  # the p columns of W1
            lhuc.net[0].bias.copy_(g.net[0].bias)
            lhuc.net[2].load_state_dict(g.net[2].state_dict())
        c0 = torch.cat([p, torch.zeros(8, 4)], 1)  # h_{-1} = 0
        torch.testing.assert_close(g(c0), lhuc(p))


def test_only_the_last_pass_carries_gradients():
    net = _net(n_recycles=2).train()
    x, p = torch.randn(8, 6, requires_grad=True), torch.randn(8, 3)
    net(x, p).sum().backward()
    g2 = x.grad.clone()
    # same gradient as one pass fed the (constant) recycled h from a pass run separately
    x.grad = None
    h0 = net(x, p, n_passes=1).detach()
    net.one_pass(x, torch.cat([p, h0], 1)).sum().backward()
    torch.testing.assert_close(x.grad, g2)


def test_recyclenet_samples_passes_in_training_and_runs_all_in_eval():
    spec, batch = make_ctr_problem(n=64)
    torch.manual_seed(0)
    m = build_ranker("recyclenet_lhuc", spec, {"embedding_dim": 4, "hidden": [8], "n_recycles": 3, "gate_hidden": 4, "train_passes": "sample"})
    m.train()
    seen = {m.n_passes() for _ in range(200)}
    assert seen == {1, 2, 3}
    m.eval()
    assert m.n_passes() == 3
    with torch.inference_mode():
        full = m(batch)["ctr"]
        torch.testing.assert_close(full, m(batch, n_passes=3)["ctr"])
        assert not torch.allclose(full, m(batch, n_passes=1)["ctr"], atol=1e-6)
    always = build_ranker("recyclenet_lhuc", spec, {"n_recycles": 3, "train_passes": "all"}).train()
    assert {always.n_passes() for _ in range(20)} == {3}


def test_recyclenet_config_errors():
    spec, _ = make_ctr_problem(n=8)
    with pytest.raises(ConfigError, match="train_passes"):
        build_ranker("recyclenet_lhuc", spec, {"train_passes": "some"})
    with pytest.raises(ConfigError, match="n_recycles"):
        build_ranker("recyclenet_lhuc", spec, {"n_recycles": 0})
    with pytest.raises(ConfigError, match="gate fields"):
        build_ranker("recyclenet_lhuc", spec, {"gate_fields": ["nope"]})


def test_field_aware_pairs_matches_the_double_loop():
    torch.manual_seed(1)
    v = torch.randn(3, 5, 5, 2)
    want = torch.stack([sum(v[b, i, j] @ v[b, j, i] for i in range(5) for j in range(i + 1, 5)) for b in range(3)])
    torch.testing.assert_close(field_aware_pairs(v), want)
    # the hand-written backward against autograd's numerical gradient
    assert torch.autograd.gradcheck(field_aware_pairs, (torch.randn(2, 4, 4, 2, dtype=torch.float64, requires_grad=True),))


def test_ffm_without_dense_fields_is_sparse_ffm_plus_linear_dense():
    spec, batch = make_ctr_problem(n=16)
    torch.manual_seed(0)
    m = build_ranker("ffm", spec, {"embedding_dim": 3, "dense_as_fields": False}).eval()
    with torch.no_grad():
        m.linear.dense.weight.normal_()  # make the dense linear weights non-trivial
    F, D = spec.n_fields, 3
    table = m.embed.embedding.embedding.weight.view(-1, F, D)  # row → (target field, D)
    with torch.inference_mode():
        got = m(batch)["ctr"]
        rows = batch["sparse"]
        ffm = torch.stack([sum(table[rows[b, i], j] @ table[rows[b, j], i] for i in range(F) for j in range(i + 1, F))
                           for b in range(16)])
        torch.testing.assert_close(got, m.linear(rows, batch["dense"]) + ffm)
        # the dense features reach the logit only through the linear term: a_j · Δx_j
        moved = dict(batch, dense=batch["dense"] + torch.tensor([1.0, 0.0]))
        torch.testing.assert_close(m(moved)["ctr"] - got, m.linear.dense.weight[0, 0].expand(16), rtol=1e-5, atol=1e-5)


def test_ffm_dense_fields_decomposition_equals_the_full_field_tensor():
    spec, batch = make_ctr_problem(n=16)
    torch.manual_seed(0)
    m = build_ranker("ffm", spec, {"embedding_dim": 3}).eval()
    with torch.no_grad():
        m.embed.embedding.embedding.weight.normal_()
        m.dense_weight.normal_()
    n, D = spec.n_fields + spec.n_dense, 3
    with torch.inference_mode():
        e = m.embed(batch).view(16, spec.n_fields, n, D)
        d = batch["dense"][:, :, None, None] * m.dense_weight  # (B, Dn, F', D): x_j · W_j
        full = torch.cat([e, d], dim=1)  # (B, F', F', D) as FieldAwareFM sees it
        want = torch.stack([sum(full[b, i, j] @ full[b, j, i] for i in range(n) for j in range(i + 1, n))
                            for b in range(16)])
        torch.testing.assert_close(m.pairs(batch), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("n_fields", [4, 18])  # F' = n_fields + 2 dense: the gather and the GEMM path
def test_neural_interaction_compression_equals_the_pair_loop(n_fields):
    spec, _ = make_ctr_problem(n=8)
    spec = replace(spec, n_fields=n_fields, field_names=())
    torch.manual_seed(0)
    m = build_ranker("neural_interaction", spec, {"embedding_dim": 3, "n_compressed": 5, "hidden": [8]})
    F = n_fields + 2
    v = torch.randn(4, F, 3)
    W = m.compress.weight  # (P, K), pairs in row-major i<j order
    pairs = [(i, j) for i in range(F) for j in range(i + 1, F)]
    want = torch.stack([sum(W[p, k] * v[:, i] * v[:, j] for p, (i, j) in enumerate(pairs)) for k in range(5)], 1)
    torch.testing.assert_close(m.compressed_pairs(v), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["fibinet", "neural_interaction", "recyclenet", "recyclenet_lhuc"])
def test_raw_dense_shrinks_fields_and_feeds_the_mlp(name):
    spec, batch = make_ctr_problem(n=16)
    cfg = {"embedding_dim": 4, "hidden": [8]}
    torch.manual_seed(0)
    fields = build_ranker(name, spec, cfg)
    raw = build_ranker(name, spec, {**cfg, "dense_as_fields": False}).eval()
    assert fields.embed.n_fields == spec.n_fields + spec.n_dense
    assert raw.embed.n_fields == spec.n_fields and raw.embed.dense is None
    with torch.inference_mode():
        a = raw(batch)["ctr"]
        b = raw(dict(batch, dense=batch["dense"] * 0.5))["ctr"]
    assert not torch.allclose(a, b)  # dense still reaches the logit
    with pytest.raises(Exception, match="dense"):
        raw({"sparse": batch["sparse"]})


def test_recyclenet_raw_dense_is_appended_to_the_tower_input():
    """`dense_as_fields: false`: x = [flatten E(sparse) ; dense], p = e_user (the default gate
    field), logit = Σ_f w[row_f] + a·dense + b + w_out · h_{T−1}(x, p), rebuilt by hand."""
    spec, batch = make_ctr_problem(n=8)
    torch.manual_seed(0)
    m = build_ranker("recyclenet_lhuc", spec, {"embedding_dim": 3, "hidden": [6], "gate_hidden": 5,
                                          "dense_as_fields": False}).eval()
    E = m.embed.embedding.embedding.weight
    with torch.no_grad():
        E.normal_()
        E[0].zero_()
        m.linear.dense.weight.normal_()
    with torch.inference_mode():
        e, dense = E[batch["sparse"]], batch["dense"]
        lin = m.linear.weight.weight[batch["sparse"]].sum((1, 2)) + dense @ m.linear.dense.weight[0] + m.linear.bias
        h = _hand_recursion(m.tower, torch.cat([e.flatten(1), dense], 1), e[:, 0], m.config.n_recycles)
        torch.testing.assert_close(m(batch)["ctr"], lin + h @ m.out.weight[0] + m.out.bias, rtol=1e-4, atol=1e-5)


def test_recyclenet_gate_columns_follow_pooled_fields():
    """Fields (user_id, g, g, item_id) with g pooled: F' = 3 + 2 dense, and the gate input p is
    [e_user ; e_item] — the pooled columns 0 and 2, not the raw columns 0 and 3. The whole logit is
    rebuilt by hand: V = [e_u, mean of g's non-padding rows, e_i, x_j · v_j], x = flatten V,
    logit = Σ_f w[row_f] + a·dense + b + w_out · h_{T−1}(x, p) (the recursion written out above)."""
    spec, batch = make_ctr_problem(n=8)
    spec = replace(spec, field_names=("user_id", "g", "g", "item_id"), pool_multi=True)
    torch.manual_seed(0)
    m = build_ranker("recyclenet_lhuc", spec, {"embedding_dim": 4, "hidden": [8], "gate_fields": ["user_id", "item_id"],
                                          "gate_hidden": 6}).eval()
    assert m.embed.n_fields == 3 + spec.n_dense  # user_id, pooled g, item_id + dense fields
    assert m.gate_cols.tolist() == [0, 2]
    sparse = batch["sparse"].clone()
    sparse[:3, 2] = 0  # one g value missing: those rows pool over one embedding, not two
    batch = dict(batch, sparse=sparse)
    E = m.embed.embedding.embedding.weight
    with torch.no_grad():  # unit-scale weights, so a wrong gate column moves the logit visibly
        E.normal_()
        E[0].zero_()
        m.embed.dense.weight.normal_()
        m.linear.weight.weight.normal_()
    with torch.inference_mode():
        e = E[sparse]  # (8, 4, D)
        n_g = (sparse[:, 1:3] > 0).sum(1, keepdim=True).clamp_min(1)
        pooled_g = (e[:, 1] + e[:, 2]) / n_g
        dense_fields = batch["dense"].unsqueeze(-1) * m.embed.dense.weight  # (8, 2, D)
        V = torch.cat([torch.stack([e[:, 0], pooled_g, e[:, 3]], 1), dense_fields], 1)
        lin = m.linear.weight.weight[sparse].sum((1, 2)) + batch["dense"] @ m.linear.dense.weight[0] + m.linear.bias

        def logit(p):
            h = _hand_recursion(m.tower, V.flatten(1), p, m.config.n_recycles)
            return lin + h @ m.out.weight[0] + m.out.bias

        want = logit(torch.cat([e[:, 0], e[:, 3]], 1))
        torch.testing.assert_close(m(batch)["ctr"], want, rtol=1e-4, atol=1e-5)
        # the check is sensitive to the gate: p taken from the pooled g column gives another logit
        assert (logit(torch.cat([e[:, 0], pooled_g], 1)) - want).abs().max() > 1e-2
