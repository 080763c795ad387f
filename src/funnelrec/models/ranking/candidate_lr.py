"""The funnel's built-in logistic-regression ranker over recall features.

    logit(u, i) = w · x(u, i) + b_i + b

x: (B, d) standardized candidate features (features/candidates.py); b_i: a learned per-item
bias (one weight per item id, i.e. LR over the one-hot item id). Uses the batch layout of
models/ranking/base.py: "dense" (B, d) and "sparse" (B, 1) = item row (item_idx + 1; 0 = unknown).

    >>> import torch
    >>> m = CandidateLR(n_dense=4, n_items=10)
    >>> m({"dense": torch.zeros(2, 4), "sparse": torch.tensor([[1], [3]])})["ctr"].shape
    torch.Size([2])
"""

from __future__ import annotations

import torch
from torch import nn


class CandidateLR(nn.Module):
    def __init__(self, n_dense: int, n_items: int) -> None:
        super().__init__()
        self.linear = nn.Linear(n_dense, 1)
        self.item_bias = nn.Embedding(n_items + 1, 1)
        nn.init.zeros_(self.item_bias.weight)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        logit = self.linear(batch["dense"]).squeeze(-1) + self.item_bias(batch["sparse"][:, 0]).squeeze(-1)
        return {"ctr": logit}
