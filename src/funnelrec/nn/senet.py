"""FiBiNET building blocks (Huang et al. 2019).

`SENet`: field importance by squeeze-excitation:
    z_f = mean_d v_{f,d};  a = ReLU(W2 ReLU(W1 z));  v'_f = a_f · v_f.   (B, F, D) → (B, F, D)
`BilinearInteraction`: p_{ij} = (v_i W) ⊙ v_j for i<j, with W shared ("all"), per field
    ("each": W_i) or per pair ("interaction": W_ij).      (B, F, D) → (B, F(F−1)/2, D)

    >>> import torch
    >>> v = torch.randn(2, 4, 3)
    >>> SENet(4)(v).shape, BilinearInteraction(4, 3, "each")(v).shape
    (torch.Size([2, 4, 3]), torch.Size([2, 6, 3]))
"""

from __future__ import annotations

import torch
from torch import nn


class SENet(nn.Module):
    def __init__(self, n_fields: int, reduction: int = 3) -> None:
        super().__init__()
        r = max(1, n_fields // reduction)
        self.excite = nn.Sequential(nn.Linear(n_fields, r, bias=False), nn.ReLU(),
                                    nn.Linear(r, n_fields, bias=False), nn.ReLU())

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        """v (B, F, D) → (B, F, D) reweighted by the learned field importance."""
        return v * self.excite(v.mean(-1)).unsqueeze(-1)


class BilinearInteraction(nn.Module):
    def __init__(self, n_fields: int, dim: int, kind: str = "all") -> None:
        super().__init__()
        if kind not in ("all", "each", "interaction"):
            raise ValueError(f"bilinear kind {kind!r}; known: all, each, interaction")
        self.kind = kind
        i, j = torch.triu_indices(n_fields, n_fields, offset=1)
        self.register_buffer("i", i, persistent=False)
        self.register_buffer("j", j, persistent=False)
        n_w = {"all": 1, "each": n_fields, "interaction": len(i)}[kind]
        self.W = nn.Parameter(nn.init.xavier_normal_(torch.empty(n_w, dim, dim)))

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        """v (B, F, D) → (B, P, D), P = F(F−1)/2."""
        vi, vj = v[:, self.i], v[:, self.j]
        if self.kind == "all":
            return (vi @ self.W[0]) * vj
        if self.kind == "each":
            return torch.einsum("bpd,pde->bpe", vi, self.W[self.i]) * vj
        return torch.einsum("bpd,pde->bpe", vi, self.W) * vj
