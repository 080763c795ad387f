"""The seed's RecycleNet layer y = ReLU(W1(x ⊙ 2σ(W2·ReLU(W1x+b1)+b2)) + b1), W1 and b1 reused,
against the formula computed by hand in numpy on a 3-dimensional example, and the
"recyclenet" ranker against the layer + MLP + linear term written out."""

import numpy as np
import torch

from funnelrec.models.ranking.common import build_ranker
from funnelrec.nn.recycle import RecycleLayer
from zoo_cases import make_ctr_problem

W1 = np.array([[0.5, -1.0, 0.25], [1.0, 0.5, -0.5], [-0.25, 0.75, 1.0]])
B1 = np.array([0.1, -0.2, 0.3])
W2 = np.array([[1.0, 0.0, -1.0], [0.5, 0.5, 0.5], [-0.5, 1.0, 0.0]])
B2 = np.array([0.0, -0.5, 0.25])
X = np.array([[1.0, 2.0, -1.0], [0.5, -0.5, 2.0]])


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def _layer():
    layer = RecycleLayer(3, 3).double()
    with torch.no_grad():  # nn.Linear stores W (out, in): y = x Wᵀ + b
        layer.first.weight.copy_(torch.tensor(W1))
        layer.first.bias.copy_(torch.tensor(B1))
        layer.gate.weight.copy_(torch.tensor(W2))
        layer.gate.bias.copy_(torch.tensor(B2))
    return layer


def test_recycle_layer_equals_the_seed_formula_in_numpy():
    relu = lambda z: np.maximum(z, 0.0)  # noqa: E731
    h = relu(X @ W1.T + B1)
    g = 2.0 * _sigmoid(h @ W2.T + B2)
    want = relu((X * g) @ W1.T + B1)
    # first row by hand: W1x + b1 = (0.5−2−0.25+0.1, 1+1+0.5−0.2, −0.25+1.5−1+0.3) = (−1.65, 2.3, 0.55)
    np.testing.assert_allclose(X[0] @ W1.T + B1, [-1.65, 2.3, 0.55])
    np.testing.assert_allclose(h[0], [0.0, 2.3, 0.55])
    # W2 h + b2 = (0 − 0.55, 0.5·2.85 − 0.5, 2.3 + 0.25) = (−0.55, 0.925, 2.55)
    np.testing.assert_allclose(h[0] @ W2.T + B2, [-0.55, 0.925, 2.55])
    got = _layer()(torch.tensor(X)).detach().numpy()
    np.testing.assert_allclose(got, want, rtol=1e-6)
    # the gate matters (x ⊙ g ≠ x) and the second read reuses W1, b1: a layer that read x
    # ungated would give another answer
    assert np.abs(relu(X @ W1.T + B1) - want).max() > 0.1


def test_recycle_layer_has_one_first_layer_used_twice():
    layer = _layer()
    shapes = sorted((n, tuple(p.shape)) for n, p in layer.named_parameters())
    assert shapes == [("first.bias", (3,)), ("first.weight", (3, 3)), ("gate.bias", (3,)), ("gate.weight", (3, 3))]
    x = torch.tensor(X, requires_grad=True)
    layer(x).sum().backward()
    assert layer.first.weight.grad.abs().sum() > 0 and layer.gate.weight.grad.abs().sum() > 0


def test_recyclenet_ranker_is_linear_plus_mlp_of_the_recycle_layer():
    spec, batch = make_ctr_problem(n=8)
    torch.manual_seed(0)
    m = build_ranker("recyclenet", spec, {"embedding_dim": 3, "hidden": [5, 4], "dense_as_fields": False}).eval()
    E = m.embed.embedding.embedding.weight
    with torch.inference_mode():
        e, dense = E[batch["sparse"]], batch["dense"]
        x = torch.cat([e.flatten(1), dense], 1).double().numpy()
        f, g = m.recycle.first, m.recycle.gate
        w1, b1 = f.weight.double().numpy(), f.bias.double().numpy()
        w2, b2 = g.weight.double().numpy(), g.bias.double().numpy()
        h = np.maximum(x @ w1.T + b1, 0)
        y = np.maximum((x * 2 * _sigmoid(h @ w2.T + b2)) @ w1.T + b1, 0)
        l1, l2 = m.deep.net[0], m.deep.net[2]
        deep = np.maximum(y @ l1.weight.double().numpy().T + l1.bias.double().numpy(), 0) \
            @ l2.weight.double().numpy().T + l2.bias.double().numpy()
        lin = m.linear(batch["sparse"], dense).double().numpy()
        np.testing.assert_allclose(m(batch)["ctr"].double().numpy(), lin + deep[:, 0], rtol=1e-4, atol=1e-5)
