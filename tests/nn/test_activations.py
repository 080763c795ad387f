"""nn.activations.tanh_ against numpy's float64 tanh, and the low-rank cross's scoring path (which
uses it) against its training path (torch.tanh) on the same weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from funnelrec.nn.activations import tanh_
from funnelrec.nn.cross import CrossNetV2


def test_tanh_is_within_3e_7_of_float64_tanh_everywhere():
    grid = np.linspace(-12.0, 12.0, 480_001)
    special = np.array([0.0, -0.0, 1e-30, -3e-4, 4e-4, 0.4, 7.9, 8.5, -9.0, 9.5, 3e38, -3e38, 1e-45])
    x = np.concatenate([grid, special]).astype(np.float32)
    ref = np.tanh(x.astype(np.float64))
    got = tanh_(torch.from_numpy(x.copy())).numpy().astype(np.float64)
    assert np.abs(got - ref).max() <= 3e-7
    big = np.abs(x) >= 1e-30
    assert (np.abs(got - ref)[big] / np.abs(ref[big])).max() <= 3e-7  # relative, where tanh is tiny
    assert got[-3] == 1.0 and got[-2] == -1.0  # saturated beyond |x| > 9
    assert np.signbit(got[len(grid) + 1])  # tanh(-0) = -0


def test_tanh_keeps_nan_and_saturates_infinities():
    x = torch.tensor([np.nan, np.inf, -np.inf, 2.0], dtype=torch.float32)
    out = tanh_(x).numpy()
    assert np.isnan(out[0]) and out[1] == 1.0 and out[2] == -1.0
    assert out[3] == pytest.approx(np.tanh(2.0), abs=3e-7)


def test_tanh_works_in_place_on_2d_tensors_and_refuses_what_it_cannot_do():
    x = torch.randn(7, 5)
    want = np.tanh(x.numpy().astype(np.float64))
    assert tanh_(x) is x
    assert np.abs(x.numpy() - want).max() <= 3e-7
    with pytest.raises(ValueError):
        tanh_(torch.randn(4, dtype=torch.float64))
    with pytest.raises(ValueError):
        tanh_(torch.randn(4, 6).t())  # not contiguous
    with pytest.raises(ValueError):
        tanh_(torch.randn(4, requires_grad=True))


def test_low_rank_cross_scores_as_it_trains(monkeypatch):
    import funnelrec.nn.cross as cross_module

    calls = []
    real = cross_module.tanh_
    monkeypatch.setattr(cross_module, "tanh_", lambda t: calls.append(t.shape) or real(t))
    torch.manual_seed(0)
    cross = CrossNetV2(11, n_layers=3, rank=4)
    x0 = torch.randn(50, 11) * 2
    with torch.enable_grad():
        want = cross(x0)  # torch.tanh, autograd on
    assert want.requires_grad
    assert calls == []  # training: torch.tanh (autograd)
    with torch.inference_mode():
        got = cross(x0)  # the scoring path: tanh_
    assert calls == [(50, 4)] * 6  # two per layer
    torch.testing.assert_close(got, want.detach(), rtol=1e-5, atol=1e-5)
    # and it is the formula: x_{l+1} = x_l + x0 ⊙ (U tanh(C tanh(Vᵀ x_l)) + b)
    x = x0.double()
    for V, C, U, b in zip(cross.V, cross.C, cross.U, cross.b):
        x = x + x0.double() * (torch.tanh(torch.tanh(x @ V[0].double()) @ C[0].double()) @ U[0].double() + b.double())
    torch.testing.assert_close(got.double(), x.detach(), rtol=1e-5, atol=1e-5)
