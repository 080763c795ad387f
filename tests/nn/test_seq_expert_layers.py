"""Sequence, attention and expert layers checked against hand-computed values and torch's own
reference layers (nn.GRUCell, nn.Linear, softmax), never against themselves."""

import numpy as np
import pytest
import torch
from torch import nn

from funnelrec.models.ranking.esmm import product_logit
from funnelrec.nn.attention import AUGRU, AUGRUCell, BilinearAttention, Dice, DINAttention
from funnelrec.nn.experts import CGC, EPNet, GateNU, MMoE, ParallelLinear, PartitionedNorm, StarFC
from funnelrec.nn.sequence import compact_sequence, gather_steps, hard_search, interest_auxiliary_loss


def _mask(rows):
    return torch.tensor(rows, dtype=torch.bool)


def test_din_attention_matches_hand_formula_and_is_not_softmax():
    torch.manual_seed(0)
    att = DINAttention(dim=2, hidden=())  # score = v · [q, k, q − k, q ⊙ k] + c
    v = torch.tensor([0.3, -0.2, 0.5, 0.1, 0.4, 0.0, -0.7, 0.2])
    with torch.no_grad():
        att.score[0].weight.copy_(v.view(1, 8))
        att.score[0].bias.fill_(0.25)
    q = torch.tensor([[1.0, 2.0]])
    k = torch.tensor([[[0.5, -1.0], [2.0, 0.0], [9.0, 9.0]]])
    mask = _mask([[True, True, False]])
    qn, kn, vn = q.numpy()[0], k.numpy()[0], v.numpy()
    want_w = [float(vn @ np.concatenate([qn, kl, qn - kl, qn * kl]) + 0.25) for kl in kn[:2]] + [0.0]
    w = att.weights(q, k, mask)[0]
    np.testing.assert_allclose(w.detach().numpy(), want_w, rtol=1e-5)
    assert abs(float(w.detach().sum()) - 1.0) > 0.1  # unnormalized: weights need not sum to 1
    pooled = att(q, k, mask)[0].detach().numpy()
    np.testing.assert_allclose(pooled, want_w[0] * kn[0] + want_w[1] * kn[1], rtol=1e-5)


def test_din_attention_weights_scale_with_history_length():
    att = DINAttention(dim=3, hidden=(4,))
    with torch.no_grad():
        att.score[-1].weight.zero_()
        att.score[-1].bias.fill_(0.5)  # every real behaviour gets weight 0.5
    q, k = torch.randn(2, 3), torch.randn(2, 4, 3)
    mask = _mask([[1, 1, 1, 1], [1, 0, 0, 0]])
    assert att.weights(q, k, mask).sum(1).tolist() == [2.0, 0.5]


def test_augru_cell_with_full_attention_is_a_gru_cell():
    torch.manual_seed(1)
    cell, ref = AUGRUCell(3, 4), nn.GRUCell(3, 4)
    H = 4
    with torch.no_grad():
        ref.bias_hh.zero_()
        w_ih, w_hh, b_ih = ref.weight_ih.clone(), ref.weight_hh.clone(), ref.bias_ih.clone()
        # torch: h' = (1 − z) n + z h;  AUGRU: h' = (1 − u) h + u h̃  ⇒  u = 1 − z = σ(−z-preactivation)
        w_ih[H : 2 * H] *= -1
        w_hh[H : 2 * H] *= -1
        b_ih[H : 2 * H] *= -1
        cell.x2h.weight.copy_(w_ih)
        cell.x2h.bias.copy_(b_ih)
        cell.h2h.weight.copy_(w_hh)
    x, h = torch.randn(5, 3), torch.randn(5, 4)
    torch.testing.assert_close(cell(x, h, torch.ones(5)), ref(x, h), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(cell(x, h, torch.zeros(5)), h)  # a = 0 ⇒ state passes through


def test_augru_ignores_padding_wherever_it_sits():
    torch.manual_seed(2)
    g = AUGRU(3, 4)
    x, a = torch.randn(1, 2, 3), torch.rand(1, 2)
    ref = g(x, a, _mask([[1, 1]]))
    left = g(torch.cat([torch.randn(1, 2, 3), x], 1), torch.cat([torch.rand(1, 2), a], 1), _mask([[0, 0, 1, 1]]))
    right = g(torch.cat([x, torch.randn(1, 1, 3)], 1), torch.cat([a, torch.rand(1, 1)], 1), _mask([[1, 1, 0]]))
    torch.testing.assert_close(left, ref)
    torch.testing.assert_close(right, ref)


def test_bilinear_attention_softmax_over_real_positions_only():
    att = BilinearAttention(2, 2)
    with torch.no_grad():
        att.proj.weight.copy_(torch.eye(2))
    states = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [5.0, 5.0]], [[1.0, 1.0], [1.0, 1.0], [1.0, 1.0]]])
    target = torch.tensor([[1.0, 1.0], [1.0, 1.0]])
    a = att(states, target, _mask([[1, 1, 0], [0, 0, 0]]))
    e = np.exp([1.0, 2.0])
    np.testing.assert_allclose(a[0].detach().numpy(), [e[0] / e.sum(), e[1] / e.sum(), 0.0], rtol=1e-6)
    assert a[1].tolist() == [0.0, 0.0, 0.0]  # empty history: zeros, not NaN


def test_compact_sequence_and_gather_keep_order():
    mask = _mask([[0, 0, 1, 1], [1, 0, 1, 0]])
    seq = torch.tensor([[0, 0, 7, 8], [5, 0, 6, 0]])
    order = compact_sequence(mask)
    assert gather_steps(seq, order).tolist() == [[7, 8, 0, 0], [5, 6, 0, 0]]
    assert gather_steps(mask, order).tolist() == [[True, True, False, False], [True, True, False, False]]


def test_interest_auxiliary_loss_hand_computed():
    h = torch.tensor([[[1.0, 0.0], [0.5, 0.5], [9.0, 9.0]]])
    pos = torch.tensor([[[0.0, 0.0], [2.0, 1.0], [1.0, 3.0]]])
    neg = torch.tensor([[[0.0, 0.0], [-1.0, 0.0], [0.0, 1.0]]])
    mask = _mask([[1, 1, 1]])

    def bce(p, n):
        return -np.log(1 / (1 + np.exp(-p))) - np.log(1 - 1 / (1 + np.exp(-n)))

    # steps t = 0, 1: h_0·pos_1 = 2, h_0·neg_1 = −1; h_1·pos_2 = 2, h_1·neg_2 = 0.5
    want = (bce(2.0, -1.0) + bce(2.0, 0.5)) / 2
    assert float(interest_auxiliary_loss(h, pos, neg, mask)) == pytest.approx(want, rel=1e-6)
    # with step 2 padded only t = 0 counts
    got = float(interest_auxiliary_loss(h, pos, neg, _mask([[1, 1, 0]])))
    assert got == pytest.approx(bce(2.0, -1.0), rel=1e-6)


def test_hard_search_matches_brute_force():
    rng = np.random.default_rng(0)
    cats = torch.from_numpy(rng.integers(1, 4, size=(50, 12)))
    mask = torch.from_numpy(rng.random((50, 12)) < 0.7)
    target = torch.from_numpy(rng.integers(1, 4, size=50))
    idx, found = hard_search(cats, mask, target, k=3)
    for b in range(50):
        hits = [p for p in range(12) if mask[b, p] and cats[b, p] == target[b]]
        want = sorted(hits, reverse=True)[:3]  # the 3 most recent matches, newest first
        assert idx[b][found[b]].tolist() == want


def test_parallel_linear_equals_separate_linears():
    torch.manual_seed(3)
    pl = ParallelLinear(3, 4, 2)
    x = torch.randn(5, 4)
    for i in range(3):
        lin = nn.Linear(4, 2)
        with torch.no_grad():
            lin.weight.copy_(pl.weight[i].T)
            lin.bias.copy_(pl.bias[i])
        torch.testing.assert_close(pl(x)[:, i], lin(x))


def test_mmoe_mixes_experts_by_gate_and_gate_dropout_only_in_training():
    torch.manual_seed(4)
    m = MMoE(input_dim=4, n_experts=3, n_tasks=2, expert_hidden=(5,), gate_dropout=0.5).eval()
    x = torch.randn(6, 4)
    e = m.experts(x)  # (B, E, H)
    g = torch.softmax(m.gate(x).view(6, 2, 3), dim=-1)
    ys = m(x)
    for t in range(2):
        torch.testing.assert_close(ys[t], (g[:, t, :, None] * e).sum(1))
    torch.testing.assert_close(m.gates(x).sum(-1), torch.ones(6, 2))
    m.train()
    gates = m.gates(torch.randn(200, 4))
    assert (gates == 0).any()  # dropout on the softmax output zeroes some gates


def test_cgc_task_gate_picks_specific_or_shared_expert():
    torch.manual_seed(5)
    cgc = CGC(input_dim=3, n_tasks=2, n_specific=1, n_shared=1, expert_hidden=(4,), shared_output=True).eval()
    xs = [torch.randn(5, 3) for _ in range(3)]
    with torch.no_grad():
        cgc.task_gates.weight.zero_()
        cgc.task_gates.bias.copy_(torch.tensor([[50.0, -50.0], [-50.0, 50.0]]))  # task0 → own, task1 → shared
    experts_out = cgc.experts(torch.stack([xs[0], xs[1], xs[2]], dim=1))  # experts: t0, t1, shared
    y = cgc(xs)
    torch.testing.assert_close(y[0], experts_out[:, 0])
    torch.testing.assert_close(y[1], experts_out[:, 2])
    assert len(y) == 3 and y[2].shape == (5, 4)


def test_star_fc_is_shared_times_domain_weight():
    torch.manual_seed(6)
    fc = StarFC(3, 2, n_domains=3)
    with torch.no_grad():
        fc.domain_weight.normal_()
        fc.domain_bias.normal_()
        fc.shared_bias.normal_()
    x, dom = torch.randn(7, 3), torch.tensor([2, 0, 1, 2, 2, 0, 1])
    want = torch.stack([
        x[i] @ (fc.shared_weight * fc.domain_weight[d]) + fc.shared_bias + fc.domain_bias[d]
        for i, d in enumerate(dom.tolist())
    ])
    torch.testing.assert_close(fc(x, dom), want)


def test_partitioned_norm_per_domain_statistics_hand_computed_two_domains():
    """STAR's E_p/Var_p: each domain normalized by its own batch statistics in training, by its
    own running statistics at inference; a hand-computed two-domain case."""
    pn = PartitionedNorm(2, n_domains=2, eps=1e-5, momentum=0.1)
    with torch.no_grad():
        pn.gamma.copy_(torch.tensor([2.0, 1.0]))
        pn.beta.copy_(torch.tensor([0.0, 1.0]))
        pn.domain_gamma.copy_(torch.tensor([[1.0, 1.0], [3.0, -1.0]]))
        pn.domain_beta.copy_(torch.tensor([[0.0, 0.0], [10.0, 20.0]]))
    # domain 0: rows 0, 2, 3;  domain 1: rows 1, 4
    z = torch.tensor([[1.0, 0.0], [3.0, 4.0], [5.0, 8.0], [0.0, 1.0], [7.0, -2.0]])
    dom = torch.tensor([0, 1, 0, 0, 1])
    # by hand: domain 0 column 0: {1, 5, 0} mean 2, biased var (1 + 9 + 4)/3 = 14/3, unbiased 7;
    #          column 1: {0, 8, 1} mean 3, biased var (9 + 25 + 4)/3 = 38/3, unbiased 19;
    #          domain 1 column 0: {3, 7} mean 5, biased var 4, unbiased 8;
    #          column 1: {4, −2} mean 1, biased var 9, unbiased 18
    E = np.array([[2.0, 3.0], [5.0, 1.0]])
    V = np.array([[14 / 3, 38 / 3], [4.0, 9.0]])
    scale = np.array([[2.0, 1.0], [6.0, -1.0]])  # γ ⊙ γ_p
    shift = np.array([[0.0, 1.0], [10.0, 21.0]])  # β + β_p
    d = dom.numpy()
    want = (z.numpy() - E[d]) / np.sqrt(V[d] + 1e-5) * scale[d] + shift[d]
    out = pn.train()(z, dom)
    np.testing.assert_allclose(out.detach().numpy(), want, rtol=1e-5, atol=1e-5)
    # shared statistics (the old form) would give another answer: the test tells them apart
    shared = (z.numpy() - z.numpy().mean(0)) / np.sqrt(z.numpy().var(0) + 1e-5) * scale[d] + shift[d]
    assert np.abs(shared - want).max() > 0.1
    # running statistics per domain: 0.9·(0, 1) + 0.1·(E_p, unbiased Var_p)
    np.testing.assert_allclose(pn.running_mean.numpy(), 0.1 * E, rtol=1e-6)
    np.testing.assert_allclose(pn.running_var.numpy(), 0.9 + 0.1 * np.array([[7.0, 19.0], [8.0, 18.0]]), rtol=1e-6)
    # inference: one row at a time, normalized by its own domain's running statistics
    pn.eval()
    rm, rv = 0.1 * E, 0.9 + 0.1 * np.array([[7.0, 19.0], [8.0, 18.0]])
    for i in range(len(z)):
        got = pn(z[i : i + 1], dom[i : i + 1])[0].detach().numpy()
        p = d[i]
        np.testing.assert_allclose(got, (z[i].numpy() - rm[p]) / np.sqrt(rv[p] + 1e-5) * scale[p] + shift[p],
                                   rtol=1e-5, atol=1e-5)


def test_partitioned_norm_domain_with_one_sample_uses_its_running_statistics():
    pn = PartitionedNorm(1, n_domains=3)
    with torch.no_grad():
        pn.running_mean.copy_(torch.tensor([[0.0], [4.0], [0.0]]))
        pn.running_var.copy_(torch.tensor([[1.0], [4.0], [1.0]]))
    z = torch.tensor([[1.0], [3.0], [6.0]])
    out = pn.train()(z, torch.tensor([0, 0, 1]))
    assert abs(float(out[2, 0]) - (6.0 - 4.0) / np.sqrt(4.0 + 1e-5)) < 1e-5  # domain 1: its running stats
    assert pn.running_mean[1, 0] == 4.0 and pn.running_var[1, 0] == 4.0  # and they are left unchanged
    assert pn.running_mean[2, 0] == 0.0  # an absent domain too


def test_gate_nu_range_and_epnet_stop_gradient():
    torch.manual_seed(7)
    g = GateNU(3, 5, hidden=4)
    x = torch.randn(100, 3) * 10
    d = g(x).detach()
    l1, l2 = g.net[0], g.net[2]  # δ = γ · σ(W2 ReLU(W1 x + b1) + b2), γ = 2
    torch.testing.assert_close(d, 2 * torch.sigmoid(torch.relu(x @ l1.weight.T + l1.bias) @ l2.weight.T + l2.bias))
    assert float(d.min()) < 0.2 and float(d.max()) > 1.8  # large inputs reach both ends of (0, γ)
    ep = EPNet(general_dim=4, domain_dim=2)
    e = torch.randn(3, 4, requires_grad=True)
    dom = torch.randn(3, 2)
    ep(e, dom).sum().backward()
    delta = ep.gate(torch.cat([dom, e.detach()], 1))
    torch.testing.assert_close(e.grad, delta.detach())  # gradient reaches E only as δ ⊙ ·


def test_dice_eval_formula():
    dice = Dice(2).eval()
    with torch.no_grad():
        dice.alpha.copy_(torch.tensor([0.1, 0.5]))
    x = torch.tensor([[1.0, -2.0], [-3.0, 0.5]])
    p = torch.sigmoid(x / np.sqrt(1 + 1e-8))  # fresh running stats: mean 0, var 1
    torch.testing.assert_close(dice(x), p * x + (1 - p) * torch.tensor([0.1, 0.5]) * x)


def test_esmm_product_logit_is_logit_of_product_and_finite():
    a = torch.tensor([-30.0, -2.0, 0.0, 1.5, 30.0, 40.0])
    b = torch.tensor([0.0, 3.0, 0.0, -1.0, 30.0, 40.0])
    z = product_logit(a, b)
    assert torch.isfinite(z).all()
    want = torch.sigmoid(a.double()) * torch.sigmoid(b.double())
    np.testing.assert_allclose(torch.sigmoid(z.double()).numpy()[:4], want.numpy()[:4], rtol=1e-5)
    assert float(torch.sigmoid(z[-1])) > 0.999


def test_dice_training_uses_batch_statistics_over_every_leading_axis_then_running_ones():
    """The docstring's E, Var: per channel over all of (B, L) in training (biased variance, as
    the normalization divides), running averages (momentum 0.1, unbiased) at eval — in numpy."""
    dice = Dice(2)
    with torch.no_grad():
        dice.alpha.copy_(torch.tensor([0.25, -0.5]))
    x = torch.tensor([[[1.0, -2.0], [3.0, 4.0], [-1.0, 0.5]], [[6.0, 2.0], [0.0, -3.0], [2.0, 7.0]]])
    flat = x.numpy().reshape(-1, 2).astype(np.float64)
    mean, var = flat.mean(0), flat.var(0)  # channel 0: mean 11/6; channel 1: mean 4/3
    alpha = np.array([0.25, -0.5])

    def f(v, m, s2):
        p = 1 / (1 + np.exp(-(v - m) / np.sqrt(s2 + 1e-8)))
        return p * v + (1 - p) * alpha * v

    np.testing.assert_allclose(dice.train()(x).detach().numpy(), f(x.numpy(), mean, var), rtol=1e-5, atol=1e-6)
    run_m, run_v = 0.1 * mean, 0.9 + 0.1 * flat.var(0, ddof=1)
    y = torch.tensor([[0.5, -1.0], [4.0, 2.0]])
    np.testing.assert_allclose(dice.eval()(y).detach().numpy(), f(y.numpy(), run_m, run_v), rtol=1e-5, atol=1e-6)
    assert np.abs(f(x.numpy(), 0.0, 1.0) - f(x.numpy(), mean, var)).max() > 0.1  # unnormalized would differ
