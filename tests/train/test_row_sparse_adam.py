"""RowSparseAdam: torch.optim.SparseAdam's lazy-Adam update, step for step."""

import pytest
import torch

from funnelrec.core.errors import DataError
from funnelrec.train.row_sparse_adam import RowSparseAdam


def _grad(rows, values, shape):
    return torch.sparse_coo_tensor(torch.tensor([rows]), values, shape, check_invariants=True)


def test_matches_sparse_adam_over_steps_with_repeated_and_untouched_rows():
    g = torch.Generator().manual_seed(0)
    W0 = torch.randn(40, 3, generator=g)
    a, b = torch.nn.Parameter(W0.clone()), torch.nn.Parameter(W0.clone())
    ours = RowSparseAdam([a], lr=0.05, betas=(0.8, 0.99), eps=1e-6)
    ref = torch.optim.SparseAdam([b], lr=0.05, betas=(0.8, 0.99), eps=1e-6)
    for step in range(6):
        rows = torch.randint(0, 20, (25,), generator=g).tolist()  # rows 20..39 never touched
        if step == 3:
            rows = sorted(set(rows))  # already-unique rows: the no-coalesce branch
        grad = _grad(rows, torch.randn(len(rows), 3, generator=g), (40, 3))
        a.grad, b.grad = grad, grad.clone()
        ours.step()
        ref.step()
        torch.testing.assert_close(a.detach(), b.detach())
    assert torch.equal(a.detach()[20:], W0[20:])
    for k in ("exp_avg", "exp_avg_sq"):
        torch.testing.assert_close(ours.state[a][k], ref.state[b][k])
    assert ours.state[a]["step"] == 6


def test_rejects_dense_gradients():
    w = torch.nn.Parameter(torch.zeros(3, 2))
    w.grad = torch.ones(3, 2)
    with pytest.raises(DataError, match="row-sparse"):
        RowSparseAdam([w]).step()
