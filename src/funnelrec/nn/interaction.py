"""Pairwise field interactions.

`FactorizationMachine` (Rendle 2010): y = Σ_{i<j} ⟨v_i, v_j⟩ = ½ Σ_d [(Σ_i v_id)² − Σ_i v_id²];
    (B, F, D) → (B,), or the bi-interaction vector (B, D) with `reduce_sum=False` (NFM).
`FieldAwareFM` (Juan et al. 2016): y = Σ_{i<j} ⟨v_{i,f_j}, v_{j,f_i}⟩; input (B, F, F, D) where
    [:, i, f] is feature i's embedding towards field f → (B,).
`InnerProducts`: all pairwise ⟨v_i, v_j⟩, i<j: (B, F, D) → (B, F(F−1)/2).

    >>> import torch
    >>> v = torch.tensor([[[1., 0.], [2., 1.], [0., 3.]]])
    >>> FactorizationMachine()(v).tolist()        # 1·2 + 0 + (2·0 + 1·3) = 5
    [5.0]
    >>> InnerProducts(3)(v).tolist()
    [[2.0, 0.0, 3.0]]
"""

from __future__ import annotations

import torch
from torch import nn


class FactorizationMachine(nn.Module):
    def __init__(self, reduce_sum: bool = True) -> None:
        super().__init__()
        self.reduce_sum = reduce_sum

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        """v (B, F, D) → (B,) if reduce_sum else (B, D)."""
        s = v.sum(dim=1)
        out = 0.5 * (s * s - (v * v).sum(dim=1))
        return out.sum(dim=1) if self.reduce_sum else out


class FieldPairs(nn.Module):
    """Base of the pairwise layers: the P = F(F−1)/2 field pairs (i, j), i<j in row-major
    order, as buffers `i`, `j` (P,) int64 (not saved: they follow from n_fields)."""

    def __init__(self, n_fields: int) -> None:
        super().__init__()
        i, j = torch.triu_indices(n_fields, n_fields, offset=1)
        self.register_buffer("i", i, persistent=False)
        self.register_buffer("j", j, persistent=False)


class InnerProducts(FieldPairs):
    def forward(self, v: torch.Tensor) -> torch.Tensor:
        """v (B, F, D) → (B, F(F−1)/2) of ⟨v_i, v_j⟩ in row-major (i<j) order."""
        return (v[:, self.i] * v[:, self.j]).sum(-1)


class FieldAwareFM(FieldPairs):
    def forward(self, v: torch.Tensor) -> torch.Tensor:
        """v (B, F, F, D): v[:, i, f] = feature i's vector for field f → (B,)."""
        a = v[:, self.i, self.j]  # v_{i, f_j}: (B, P, D)
        b = v[:, self.j, self.i]  # v_{j, f_i}
        return (a * b).sum(dim=(1, 2))
