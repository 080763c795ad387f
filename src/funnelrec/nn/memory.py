"""MIMN's user interest memory (Pi et al., KDD 2019): a Neural Turing Machine read/written once
per behaviour, and the Memory Induction Unit.

Shapes: B = batch, L = sequence length, m = memory slots, D = slot width (= the behaviour
representation's width). Masks are bool (B, L), True at real steps; a padded step changes no
state, so padding may sit anywhere.

Addressing (content-based, NTM, Graves et al. 2014):
    w_i = softmax_i(β · cos(k, M_i))                key k (B, D), β (B,) ≥ 0, M (B, m, D) → w (B, m)
Read:   r = Σ_i w_i M_i                              (B, D)
Write:  M'_i = M_i ⊙ (1 − w_i e) + w_i a             erase e ∈ (0, 1)^D, add a ∈ (−1, 1)^D

`UserInterestMemory` (MIMN's UIC, one step per behaviour x_t):
    c_t = GRUCell([x_t ; r_{t−1}], c_{t−1})          controller (B, D)
    (k^r, β^r, k^w, β^w, e, a) = heads(c_t)          β = softplus(·), e = σ(·), a = tanh(·)
    r_t = read(address(k^r, β^r, M_{t−1}), M_{t−1});  M_t = write(M_{t−1}, address(k^w, β^w, M_{t−1}), e, a)
The memory starts from a learned M_0 shared by all users; after the L behaviours M_L holds
the user's interests in m slots, so serving reads m slots instead of L behaviours (the paper's
point: the memory is updated per event, not recomputed per request).

`MemoryInduction` (MIMN's MIU): a second memory S (B, m, D), S_0 = 0, that follows how each
interest evolves: at step t the top-K slots by read weight w^r_t are updated,
    S_t(i) = GRU(S_{t−1}(i), [M_t(i) ; x_t])   for i in top-K(w^r_t), else S_t(i) = S_{t−1}(i).

    >>> import torch
    >>> uim = UserInterestMemory(dim=4, slots=3)
    >>> M, S = uim(torch.randn(2, 5, 4), torch.ones(2, 5, dtype=torch.bool))
    >>> M.shape, S.shape
    (torch.Size([2, 3, 4]), torch.Size([2, 3, 4]))
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from funnelrec.core.errors import ConfigError


def content_address(key: torch.Tensor, beta: torch.Tensor, memory: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """w = softmax_i(β · cos(k, M_i)): key (B, D), beta (B,), memory (B, m, D) → (B, m)."""
    cos = torch.einsum("bd,bmd->bm", key, memory) / (
        key.norm(dim=-1, keepdim=True) * memory.norm(dim=-1)).clamp_min(eps)
    return torch.softmax(beta.unsqueeze(-1) * cos, dim=-1)


def memory_read(weights: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
    """r = Σ_i w_i M_i: weights (B, m), memory (B, m, D) → (B, D)."""
    return torch.einsum("bm,bmd->bd", weights, memory)


def memory_write(memory: torch.Tensor, weights: torch.Tensor, erase: torch.Tensor, add: torch.Tensor) -> torch.Tensor:
    """M'_i = M_i ⊙ (1 − w_i e) + w_i a: memory (B, m, D), weights (B, m), erase/add (B, D) → (B, m, D)."""
    w = weights.unsqueeze(-1)
    return memory * (1.0 - w * erase.unsqueeze(1)) + w * add.unsqueeze(1)


class UserInterestMemory(nn.Module):
    """UIC + MIU over a behaviour sequence: x (B, L, D), mask (B, L) → (M_L, S_L), each (B, m, D).

    `induction_top_k` = K slots of S updated per step (0 disables the MIU: S stays 0)."""

    def __init__(self, dim: int, slots: int = 4, induction_top_k: int = 1) -> None:
        super().__init__()
        if slots < 1 or not 0 <= induction_top_k <= slots:
            raise ConfigError(f"memory needs slots ≥ 1 and 0 ≤ induction_top_k ≤ slots, got {slots}, {induction_top_k}")
        self.dim, self.slots, self.top_k = dim, slots, induction_top_k
        self.initial = nn.Parameter(torch.randn(slots, dim) * 0.1)  # M_0, distinct slots so addressing can differ
        self.controller = nn.GRUCell(2 * dim, dim)
        self.heads = nn.Linear(dim, 4 * dim + 2)  # k^r, k^w, e, a (D each) and β^r, β^w
        self.induction = nn.GRUCell(2 * dim, dim) if induction_top_k else None

    def step(self, x: torch.Tensor, c: torch.Tensor, r: torch.Tensor, M: torch.Tensor, S: torch.Tensor):
        """One behaviour x (B, D): → (c_t, r_t, M_t, S_t)."""
        c = self.controller(torch.cat([x, r], dim=-1), c)
        D = self.dim
        h = self.heads(c)
        k_r, k_w, erase, add = h[:, :D], h[:, D : 2 * D], torch.sigmoid(h[:, 2 * D : 3 * D]), torch.tanh(h[:, 3 * D : 4 * D])
        beta_r, beta_w = F.softplus(h[:, 4 * D]), F.softplus(h[:, 4 * D + 1])
        w_r = content_address(k_r, beta_r, M)
        r = memory_read(w_r, M)
        M = memory_write(M, content_address(k_w, beta_w, M), erase, add)
        if self.induction is not None:
            B, m, _ = M.shape
            inp = torch.cat([M, x.unsqueeze(1).expand(B, m, D)], dim=-1).reshape(B * m, 2 * D)
            new = self.induction(inp, S.reshape(B * m, D)).view(B, m, D)
            top = torch.zeros_like(w_r, dtype=torch.bool).scatter_(1, w_r.topk(self.top_k, dim=1).indices, True)
            S = torch.where(top.unsqueeze(-1), new, S)
        return c, r, M, S

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, L, D = x.shape
        M = self.initial.unsqueeze(0).expand(B, -1, -1)
        S = x.new_zeros(B, self.slots, D)
        c, r = x.new_zeros(B, D), x.new_zeros(B, D)
        for t in range(L):
            c2, r2, M2, S2 = self.step(x[:, t], c, r, M, S)
            keep = mask[:, t].view(B, 1)
            c, r = torch.where(keep, c2, c), torch.where(keep, r2, r)
            M, S = torch.where(keep.unsqueeze(-1), M2, M), torch.where(keep.unsqueeze(-1), S2, S)
        return M, S
