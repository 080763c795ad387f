import itertools

import numpy as np
import torch

from funnelrec.nn.cin import CIN
from funnelrec.nn.cross import CrossNet, CrossNetV2, GatedCrossNet
from funnelrec.nn.embedding import FieldEmbedding, LinearTerm
from funnelrec.nn.interaction import FactorizationMachine, FieldAwareFM, InnerProducts
from funnelrec.nn.lhuc import LHUCGate
from funnelrec.nn.senet import BilinearInteraction, SENet
from funnelrec.train.ftrl import FTRL

g = torch.Generator().manual_seed(0)


def test_fm_and_inner_products_equal_pairwise_loop():
    v = torch.randn(3, 5, 4, generator=g, dtype=torch.float64)
    want = torch.stack([sum(v[b, i] @ v[b, j] for i, j in itertools.combinations(range(5), 2)) for b in range(3)])
    torch.testing.assert_close(FactorizationMachine()(v), want)
    bi = torch.stack([sum(v[b, i] * v[b, j] for i, j in itertools.combinations(range(5), 2)) for b in range(3)])
    torch.testing.assert_close(FactorizationMachine(reduce_sum=False)(v), bi)
    ip = InnerProducts(5)(v)
    torch.testing.assert_close(ip[:, 0], (v[:, 0] * v[:, 1]).sum(-1))
    torch.testing.assert_close(ip.sum(1), want)


def test_ffm_equals_loop():
    v = torch.randn(2, 4, 4, 3, generator=g, dtype=torch.float64)
    want = torch.stack([sum(v[b, i, j] @ v[b, j, i] for i, j in itertools.combinations(range(4), 2)) for b in range(2)])
    torch.testing.assert_close(FieldAwareFM(4)(v), want)


def test_cross_layers_follow_their_formulas():
    x0 = torch.randn(4, 6, generator=g)
    c = CrossNet(6, 2)
    x = x0
    for w, b in zip(c.w, c.b):
        x = torch.stack([x0[k] * (x[k] @ w) + b + x[k] for k in range(4)])
    torch.testing.assert_close(c(x0), x)
    c2 = CrossNetV2(6, 2)
    x = x0
    for lin in c2.layers:
        x = x0 * (x @ lin.weight.T + lin.bias) + x
    torch.testing.assert_close(c2(x0), x)
    # low-rank mixture with one expert and the gate ⇒ U tanh(C tanh(Vᵀx))
    lr = CrossNetV2(6, 1, rank=3, n_experts=1)
    V, C, U, b = lr.V[0][0], lr.C[0][0], lr.U[0][0], lr.b[0]
    want = x0 * (torch.tanh(torch.tanh(x0 @ V) @ C) @ U + b) + x0
    torch.testing.assert_close(lr(x0), want)
    # two layers of the one-expert fast path, and a two-expert mixture by the paper's formula
    lr2 = CrossNetV2(6, 2, rank=3, n_experts=1)
    x = x0
    for V, C, U, b in zip(lr2.V, lr2.C, lr2.U, lr2.b):
        x = x0 * (torch.tanh(torch.tanh(x @ V[0]) @ C[0]) @ U[0] + b) + x
    torch.testing.assert_close(lr2(x0), x)
    mix = CrossNetV2(6, 1, rank=3, n_experts=2)
    V, C, U, b, G = mix.V[0], mix.C[0], mix.U[0], mix.b[0], mix.gates[0].weight
    gates = torch.softmax(x0 @ G.T, dim=-1)
    want = sum(gates[:, k : k + 1] * x0 * (torch.tanh(torch.tanh(x0 @ V[k]) @ C[k]) @ U[k] + b) for k in range(2)) + x0
    torch.testing.assert_close(mix(x0), want)
    gc = GatedCrossNet(6, 1)
    w, gt = gc.w[0], gc.g[0]
    torch.testing.assert_close(gc(x0), x0 * w(x0) * torch.sigmoid(gt(x0)) + x0)


def test_cin_first_layer_equals_explicit_sum():
    x0 = torch.randn(2, 3, 4, generator=g)
    cin = CIN(3, (5,), split_half=False)
    W = cin.convs[0].weight[:, :, 0].view(5, 3, 3)  # (H, H_prev, m)
    want = torch.einsum("hij,bid,bjd->bhd", W, x0, x0) + cin.convs[0].bias[None, :, None]
    torch.testing.assert_close(cin(x0), torch.relu(want).sum(-1))


def test_bilinear_and_senet():
    v = torch.randn(2, 3, 4, generator=g)
    bi = BilinearInteraction(3, 4, "interaction")
    out = bi(v)
    pairs = list(itertools.combinations(range(3), 2))
    for p, (i, j) in enumerate(pairs):
        torch.testing.assert_close(out[:, p], (v[:, i] @ bi.W[p]) * v[:, j])
    for kind in ("all", "each"):  # W shared by all pairs, or W_i of the pair's first field
        bi = BilinearInteraction(3, 4, kind)
        out = bi(v)
        for p, (i, j) in enumerate(pairs):
            torch.testing.assert_close(out[:, p], (v[:, i] @ bi.W[0 if kind == "all" else i]) * v[:, j])
    # SENet: z_f = mean_d v_{f,d}, a = ReLU(W2 ReLU(W1 z)), v'_f = a_f · v_f (the docstring, by hand)
    se = SENet(3, reduction=1)
    W1, W2 = se.excite[0].weight, se.excite[2].weight
    with torch.no_grad():
        a = torch.relu(torch.relu(v.mean(-1) @ W1.T) @ W2.T)
        torch.testing.assert_close(se(v), v * a[:, :, None])
        # a field whose excitation is cut by the outer ReLU is zeroed, not passed through
        W2[0].fill_(-1.0)
        W1.abs_()
        pos = v.abs() + 0.1  # z > 0 → W1 z > 0 → a_0 = ReLU(−Σ …) = 0
        torch.testing.assert_close(se(pos)[:, 0], torch.zeros(2, 4))


def test_embedding_padding_and_linear_term():
    emb = FieldEmbedding(5, 3)
    assert emb(torch.zeros(2, 4, dtype=torch.long)).abs().sum() == 0
    lin = LinearTerm(5, 2)
    with torch.no_grad():
        lin.weight.weight[:, 0] = torch.arange(5.0)
        lin.bias.fill_(0.5)
        lin.dense.weight.fill_(2.0)
    out = lin(torch.tensor([[1, 4], [0, 0]]), torch.tensor([[1.0, 1.0], [0.0, 0.0]]))
    assert out.tolist() == [1 + 4 + 0.5 + 4.0, 0.5]


def test_lhuc_gate_is_neutral_at_zero_logits():
    gate = LHUCGate(3, 4)
    torch.nn.init.zeros_(gate.net[2].weight)
    torch.nn.init.zeros_(gate.net[2].bias)
    assert torch.allclose(gate(torch.randn(5, 3, generator=g)), torch.ones(5, 4))


def _ftrl_reference(X, y, alpha, beta, l1, l2, epochs):
    """McMahan et al. 2013, Algorithm 1 (per-coordinate, logistic loss), numpy."""
    d = X.shape[1]
    z, n, w = np.zeros(d), np.zeros(d), np.zeros(d)
    for _ in range(epochs):
        for x, t in zip(X, y):
            w = np.where(np.abs(z) <= l1, 0.0, -(z - np.sign(z) * l1) / ((beta + np.sqrt(n)) / alpha + l2))
            p = 1 / (1 + np.exp(-(x @ w)))
            gr = (p - t) * x
            sigma = (np.sqrt(n + gr * gr) - np.sqrt(n)) / alpha
            z += gr - sigma * w
            n += gr * gr
    return np.where(np.abs(z) <= l1, 0.0, -(z - np.sign(z) * l1) / ((beta + np.sqrt(n)) / alpha + l2))


def test_ftrl_matches_reference_algorithm():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 5))
    y = (X @ np.array([1.0, -2.0, 0.0, 0.5, 0.0]) + rng.normal(size=60) > 0).astype(float)
    want = _ftrl_reference(X, y, 0.1, 1.0, 2.0, 0.1, 2)
    w = torch.nn.Parameter(torch.zeros(5, dtype=torch.float64))
    opt = FTRL([w], alpha=0.1, beta=1.0, l1=2.0, l2=0.1)
    Xt, yt = torch.tensor(X), torch.tensor(y)
    for _ in range(2):
        for k in range(60):
            opt.zero_grad()
            torch.nn.functional.binary_cross_entropy_with_logits(Xt[k] @ w, yt[k]).backward()
            opt.step()
    np.testing.assert_allclose(w.detach().numpy(), want, rtol=1e-10, atol=1e-12)
    assert (want == 0).any()  # L1 produced exact zeros


def test_gather_rows_matches_nn_embedding_with_padding():
    from funnelrec.nn.embedding import gather_rows

    torch.manual_seed(0)
    ref = torch.nn.Embedding(20, 4, padding_idx=0)
    w = torch.nn.Parameter(ref.weight.detach().clone())
    rows = torch.tensor([[0, 3, 3], [5, 0, 19]])
    g = torch.randn(2, 3, 4)
    ref(rows).backward(g)
    out = gather_rows(w, rows)
    out.backward(g)
    assert torch.equal(out, ref(rows)) and torch.allclose(w.grad, ref.weight.grad)
    assert w.grad[3].allclose(g[0, 1] + g[0, 2]) and w.grad[0].abs().sum() == 0
