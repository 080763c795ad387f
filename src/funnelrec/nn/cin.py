"""Compressed Interaction Network (xDeepFM, Lian et al. 2018).

    X^k_{h,*} = Σ_{i=1}^{H_{k-1}} Σ_{j=1}^{m} W^{k,h}_{i,j} (X^{k-1}_{i,*} ⊙ X^0_{j,*}),  X^0 = field embeddings
    p^k = Σ_d X^k_{:, d}   (sum pooling over the embedding axis);  output = [p^1, …, p^K]

Implemented as one outer product per layer (B, H_{k-1}·m, D) and a 1×1 convolution.
With `split_half` (as in the paper) half of each hidden layer feeds the next layer, half
goes to the output. (B, F, D) → (B, Σ output sizes).

    >>> import torch
    >>> CIN(3, (4, 4))(torch.randn(2, 3, 5)).shape
    torch.Size([2, 6])
"""

from __future__ import annotations

import torch
from torch import nn


class CIN(nn.Module):
    def __init__(self, n_fields: int, layer_sizes: tuple[int, ...] = (100, 100), split_half: bool = True) -> None:
        super().__init__()
        self.split_half = split_half
        self.convs = nn.ModuleList()
        prev, self.out_dim = n_fields, 0
        for k, h in enumerate(layer_sizes):
            self.convs.append(nn.Conv1d(prev * n_fields, h, kernel_size=1))
            last = k == len(layer_sizes) - 1
            if split_half and not last:
                h //= 2
            self.out_dim += h
            prev = h

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        """x0 (B, F, D) → (B, out_dim)."""
        B, F, D = x0.shape
        x, pooled = x0, []
        for k, conv in enumerate(self.convs):
            z = (x.unsqueeze(2) * x0.unsqueeze(1)).reshape(B, -1, D)  # (B, H·F, D)
            h = torch.relu(conv(z))
            if self.split_half and k < len(self.convs) - 1:
                x, out = torch.split(h, h.shape[1] // 2, dim=1)
            else:
                x, out = h, h
            pooled.append(out.sum(-1))
        return torch.cat(pooled, dim=1)
