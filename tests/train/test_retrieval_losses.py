"""Retrieval losses against hand-computed values on tiny tensors."""

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import log_loss

from funnelrec.train.retrieval_losses import bpr_loss, pointwise_bce_loss, sampled_softmax_loss


def approx(x):
    return pytest.approx(x, rel=1e-6, abs=1e-7)


def _sig(x):
    return 1.0 / (1.0 + math.exp(-x))


def test_bpr_is_minus_log_sigmoid_of_differences():
    pos = torch.tensor([1.0, 0.5])
    neg = torch.tensor([[0.0, 2.0], [0.5, -1.0]])
    diffs = [1.0, -1.0, 0.0, 1.5]
    expect = np.mean([-math.log(_sig(d)) for d in diffs])
    assert float(bpr_loss(pos, neg)) == approx(expect)


def test_pointwise_equals_sklearn_log_loss():
    pos = torch.tensor([2.0, -0.3, 0.7])
    neg = torch.tensor([[0.1, -2.0, 1.5], [0.0, 0.4, -0.2], [3.0, -1.0, 0.2]])
    p = torch.sigmoid(torch.cat([pos, neg.reshape(-1)])).numpy()
    y = np.r_[np.ones(3), np.zeros(9)]
    assert float(pointwise_bce_loss(pos, neg)) == approx(log_loss(y, p))


def _manual_softmax_loss(logits: np.ndarray) -> float:
    out = []
    for b in range(logits.shape[0]):
        row = logits[b]
        m = row.max()
        lse = m + math.log(np.exp(row - m).sum())
        out.append(lse - logits[b, b])
    return float(np.mean(out))


def test_infonce_with_logq_equals_manual_log_softmax_of_s_minus_logq():
    rng = np.random.default_rng(0)
    u = torch.nn.functional.normalize(torch.tensor(rng.normal(size=(4, 3)), dtype=torch.float64), dim=1)
    v = torch.nn.functional.normalize(torch.tensor(rng.normal(size=(4, 3)), dtype=torch.float64), dim=1)
    q = np.array([0.1, 0.4, 0.2, 0.3])
    tau = 0.2
    got = float(sampled_softmax_loss(u, v, tau, torch.tensor(np.log(q))))
    s = (u.numpy() @ v.numpy().T) / tau - np.log(q)[None, :]
    assert got == approx(_manual_softmax_loss(s))
    # without logQ it is plain in-batch softmax cross-entropy
    s0 = (u.numpy() @ v.numpy().T) / tau
    assert float(sampled_softmax_loss(u, v, tau)) == approx(_manual_softmax_loss(s0))


def test_accidental_hits_are_masked_and_extra_negatives_appended():
    rng = np.random.default_rng(1)
    u = torch.tensor(rng.normal(size=(3, 2)))
    v = torch.tensor(rng.normal(size=(3, 2)))
    ids = torch.tensor([7, 9, 7])  # rows 0 and 2 hold the same item
    neg = torch.tensor(rng.normal(size=(3, 2, 2)))
    neg_lq = torch.tensor([[0.1, 0.2], [0.3, 0.0], [-0.5, 0.4]])
    got = float(sampled_softmax_loss(u, v, 1.0, None, ids, neg, neg_lq))
    s = u.numpy() @ v.numpy().T
    s[0, 2] = s[2, 0] = -np.inf
    extra = np.einsum("bd,bnd->bn", u.numpy(), neg.numpy()) - neg_lq.numpy()
    full = np.concatenate([s, extra], axis=1)
    losses = []
    for b in range(3):
        row = full[b][np.isfinite(full[b])]
        losses.append(math.log(np.exp(row).sum()) - full[b, b])
    assert got == approx(np.mean(losses))

