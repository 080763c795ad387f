"""MIMN's memory (nn/memory.py): NTM content addressing, read and erase/add write against
numbers worked by hand, and the whole UIC + MIU recursion against a numpy re-implementation."""

import numpy as np
import pytest
import torch

from funnelrec.core.errors import ConfigError
from funnelrec.nn.memory import UserInterestMemory, content_address, memory_read, memory_write

M = np.array([[[1.0, 0.0], [0.0, 2.0], [-1.0, -1.0]]])  # (B=1, m=3, D=2)


def test_content_address_read_write_by_hand():
    key, beta = np.array([[3.0, 0.0]]), np.array([2.0])
    # cos(k, M_i) = (1, 0, −1/√2); w = softmax(2·cos)
    z = 2.0 * np.array([1.0, 0.0, -1 / np.sqrt(2)])
    w = np.exp(z) / np.exp(z).sum()
    got = content_address(torch.tensor(key), torch.tensor(beta), torch.tensor(M)).numpy()
    np.testing.assert_allclose(got[0], w, rtol=1e-6)
    np.testing.assert_allclose(w.sum(), 1.0)
    # read r = Σ w_i M_i = (w0 − w2, 2 w1 − w2)
    r = memory_read(torch.tensor(w[None]), torch.tensor(M)).numpy()
    np.testing.assert_allclose(r[0], [w[0] - w[2], 2 * w[1] - w[2]], rtol=1e-6)
    # write with w = (1, 0, 0.5), erase e = (1, 0.5), add a = (0.2, −0.4):
    #   slot 0: (1·(1 − 1), 0·(1 − 0.5)) + (0.2, −0.4)            = (0.2, −0.4)
    #   slot 1: untouched                                          = (0, 2)
    #   slot 2: (−1·(1 − 0.5), −1·(1 − 0.25)) + 0.5·(0.2, −0.4)   = (−0.4, −0.95)
    out = memory_write(torch.tensor(M), torch.tensor([[1.0, 0.0, 0.5]], dtype=torch.float64),
                       torch.tensor([[1.0, 0.5]], dtype=torch.float64), torch.tensor([[0.2, -0.4]], dtype=torch.float64))
    np.testing.assert_allclose(out.numpy()[0], [[0.2, -0.4], [0.0, 2.0], [-0.4, -0.95]], rtol=1e-12)


def _np_gru(cell, x, h):
    """torch.nn.GRUCell in numpy: r, z gates, n = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn))."""
    Wi, Wh = cell.weight_ih.detach().double().numpy(), cell.weight_hh.detach().double().numpy()
    bi, bh = cell.bias_ih.detach().double().numpy(), cell.bias_hh.detach().double().numpy()
    gi, gh = x @ Wi.T + bi, h @ Wh.T + bh
    H = h.shape[-1]
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    r, z = sig(gi[..., :H] + gh[..., :H]), sig(gi[..., H:2 * H] + gh[..., H:2 * H])
    n = np.tanh(gi[..., 2 * H:] + r * gh[..., 2 * H:])
    return (1 - z) * n + z * h


def _np_memory(uim, x, mask):
    """The UIC + MIU recursion of the module docstring, written in numpy."""
    B, L, D = x.shape
    m = uim.slots
    Wh, bh = uim.heads.weight.detach().double().numpy(), uim.heads.bias.detach().double().numpy()
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    softplus = lambda v: np.log1p(np.exp(v))  # noqa: E731

    def address(k, beta, mem):
        cos = np.einsum("bd,bmd->bm", k, mem) / np.maximum(
            np.linalg.norm(k, axis=-1, keepdims=True) * np.linalg.norm(mem, axis=-1), 1e-8)
        e = np.exp(beta[:, None] * cos - (beta[:, None] * cos).max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    mem = np.repeat(uim.initial.detach().double().numpy()[None], B, 0)
    S = np.zeros((B, m, D))
    c, r = np.zeros((B, D)), np.zeros((B, D))
    for t in range(L):
        c2 = _np_gru(uim.controller, np.concatenate([x[:, t], r], -1), c)
        h = c2 @ Wh.T + bh
        kr, kw, e, a = h[:, :D], h[:, D:2 * D], sig(h[:, 2 * D:3 * D]), np.tanh(h[:, 3 * D:4 * D])
        wr = address(kr, softplus(h[:, 4 * D]), mem)
        ww = address(kw, softplus(h[:, 4 * D + 1]), mem)
        r2 = np.einsum("bm,bmd->bd", wr, mem)
        mem2 = mem * (1 - ww[..., None] * e[:, None]) + ww[..., None] * a[:, None]
        inp = np.concatenate([mem2, np.repeat(x[:, t][:, None], m, 1)], -1)
        S_new = _np_gru(uim.induction, inp, S)
        top = np.zeros((B, m), bool)
        top[np.arange(B)[:, None], np.argsort(-wr, 1)[:, : uim.top_k]] = True
        S2 = np.where(top[..., None], S_new, S)
        k = mask[:, t][:, None]
        c, r = np.where(k, c2, c), np.where(k, r2, r)
        mem, S = np.where(k[..., None], mem2, mem), np.where(k[..., None], S2, S)
    return mem, S


def test_user_interest_memory_equals_the_numpy_recursion_and_skips_padding():
    torch.manual_seed(0)
    uim = UserInterestMemory(dim=3, slots=4, induction_top_k=2).double()
    x = torch.randn(2, 5, 3, dtype=torch.float64)
    mask = torch.tensor([[True, True, False, True, True], [False, True, True, True, False]])
    with torch.no_grad():
        got_m, got_s = uim(x, mask)
    want_m, want_s = _np_memory(uim, x.numpy(), mask.numpy())
    np.testing.assert_allclose(got_m.numpy(), want_m, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(got_s.numpy(), want_s, rtol=1e-9, atol=1e-12)
    assert np.abs(want_m - uim.initial.detach().double().numpy()[None]).max() > 1e-2  # the writes moved the memory
    assert (np.abs(want_s).sum(-1) > 0).sum(1).min() >= 2  # the MIU updated ≥ K slots per user
    # a padded step writes nothing: dropping it gives the same memories
    with torch.no_grad():
        m0, s0 = uim(x[:1, [0, 1, 3, 4]], torch.ones(1, 4, dtype=torch.bool))
    torch.testing.assert_close(m0, got_m[:1])
    torch.testing.assert_close(s0, got_s[:1])


def test_memory_config_bounds():
    with pytest.raises(ConfigError, match="induction_top_k"):
        UserInterestMemory(dim=3, slots=2, induction_top_k=3)
