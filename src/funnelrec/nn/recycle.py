"""RecycleNet's layer as the seed defines it.

`RecycleLayer` (the seed's RecycleNet): the first layer's weights are used twice — once to
read the input and gate it, once to map the gated input:

    h = ReLU(W1 x + b1)                         (B, H)
    g = 2·σ(W2 h + b2)                          (B, Din)   gate on the input, neutral at 1
    y = ReLU(W1 (x ⊙ g) + b1)                   (B, H)     W1, b1 reused

so the layer's own first reading of x decides which input coordinates it reads again, at the
cost of one extra (H → Din) matrix and no extra first-layer weights.

    >>> import torch
    >>> RecycleLayer(3, 4)(torch.randn(2, 3)).shape
    torch.Size([2, 4])
"""

from __future__ import annotations

import torch
from torch import nn


class RecycleLayer(nn.Module):
    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.first = nn.Linear(in_dim, out_dim)  # W1, b1 (used twice)
        self.gate = nn.Linear(out_dim, in_dim)  # W2, b2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, Din) → (B, H)."""
        g = 2.0 * torch.sigmoid(self.gate(torch.relu(self.first(x))))
        return torch.relu(self.first(x * g))
