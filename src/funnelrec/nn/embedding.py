"""Embeddings over the ONE shared FID table (row 0 = padding/unknown, always zero).

`FieldEmbedding`: sparse (B, F) int64 rows → (B, F, D), one lookup for all fields.
`DenseFields`: dense (B, Dn) → (B, Dn, D), feature j scaled onto its own vector: e_j = x_j · v_j
(so continuous features join the field interactions like any sparse field).
`LinearTerm`: first-order term  Σ_f w[row_f] + Σ_j a_j x_j + b  → (B,).

    >>> import torch
    >>> emb = FieldEmbedding(10, 4)
    >>> emb(torch.tensor([[1, 0, 3]])).shape
    torch.Size([1, 3, 4])
    >>> bool(emb(torch.tensor([[0]])).abs().sum() == 0)
    True
"""

from __future__ import annotations

import torch
from torch import nn


class FieldEmbedding(nn.Module):
    def __init__(self, n_embeddings: int, dim: int, init_std: float = 1e-2) -> None:
        super().__init__()
        self.embedding = nn.Embedding(n_embeddings, dim, padding_idx=0)
        nn.init.normal_(self.embedding.weight, std=init_std)
        with torch.no_grad():
            self.embedding.weight[0].zero_()

    def forward(self, sparse: torch.Tensor) -> torch.Tensor:
        """sparse (B, F) int64 → (B, F, D)."""
        return self.embedding(sparse)


class DenseFields(nn.Module):
    def __init__(self, n_dense: int, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_dense, dim) * 1e-2)

    def forward(self, dense: torch.Tensor) -> torch.Tensor:
        """dense (B, Dn) → (B, Dn, D) with e_j = x_j · v_j."""
        return dense.unsqueeze(-1) * self.weight


class LinearTerm(nn.Module):
    def __init__(self, n_embeddings: int, n_dense: int = 0) -> None:
        super().__init__()
        self.weight = nn.Embedding(n_embeddings, 1, padding_idx=0)
        nn.init.zeros_(self.weight.weight)
        self.dense = nn.Linear(n_dense, 1, bias=False) if n_dense else None
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(self, sparse: torch.Tensor, dense: torch.Tensor | None = None) -> torch.Tensor:
        """sparse (B, F), dense (B, Dn) → (B,)  Σ_f w[row_f] + a·x + b."""
        out = self.weight(sparse).sum(dim=(1, 2)) + self.bias
        if self.dense is not None and dense is not None:
            out = out + self.dense(dense).squeeze(-1)
        return out
