"""Compressed Interaction Network (xDeepFM, Lian et al. 2018).

    X^k_{h,*} = Σ_{i=1}^{H_{k-1}} Σ_{j=1}^{m} W^{k,h}_{i,j} (X^{k-1}_{i,*} ⊙ X^0_{j,*}),  X^0 = field embeddings
    p^k = Σ_d X^k_{:, d}   (sum pooling over the embedding axis);  output = [p^1, …, p^K]

Fused: each layer is ONE outer product and ONE GEMM, no loop over fields: with the fields
leading, X^0 as (m, B·D), z = X^{k-1} ⊗ X^0 is (H_{k-1}·m, B·D) (one broadcast multiply along
the contiguous B·D axis) and X^k = ReLU(W^k z + b^k), W^k (H_k, H_{k-1}·m). The weights stay in
the 1×1-convolution layout (`convs[k].weight` (H_k, H_{k-1}·m, 1)), so checkpoints of the
convolutional form load unchanged. The cost is H_{k-1}·m·H_k multiply-adds per (sample, d):
the number of fields, not the code, sets the speed (`dense_as_fields: false` in xDeepFM).
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
        self.keep: list[int] = []  # channels of layer k that feed layer k+1
        for k, h in enumerate(layer_sizes):
            self.convs.append(nn.Conv1d(prev * n_fields, h, kernel_size=1))
            last = k == len(layer_sizes) - 1
            if split_half and not last:
                h //= 2
            self.keep.append(h)
            self.out_dim += h
            prev = h

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        """x0 (B, F, D) → (B, out_dim)."""
        B, F, D = x0.shape
        # field-major layout (F, B·D): the outer product broadcasts along the long contiguous
        # B·D axis, and each layer is one plain GEMM W (H_k, H·F) @ z (H·F, B·D)
        x0t = x0.permute(1, 0, 2).reshape(F, B * D)
        x, pooled = x0t, []
        last = len(self.convs) - 1
        for k, conv in enumerate(self.convs):
            z = (x.unsqueeze(1) * x0t.unsqueeze(0)).reshape(-1, B * D)  # (H·F, B·D), row h·F + j
            h = torch.relu(torch.addmm(conv.bias.unsqueeze(1), conv.weight.squeeze(-1), z))  # (H_k, B·D)
            if self.split_half and k < last:
                x, out = h[: self.keep[k]], h[self.keep[k]:]
            else:
                x, out = h, h
            pooled.append(out.view(-1, B, D).sum(-1))  # sum pooling over D: (H_k', B)
        return torch.cat(pooled, dim=0).t()
