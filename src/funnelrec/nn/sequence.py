"""Behaviour-sequence layers: GRU interest extraction (DIEN) and SIM's hard and soft search.

Convention: along L the history runs oldest → newest; padding (mask False) may sit anywhere.
`compact_sequence` moves the real positions to the front (order kept), which recurrent layers
need so that padding never runs before real steps.

    >>> import torch
    >>> mask = torch.tensor([[False, True, True], [True, False, False]])
    >>> compact_sequence(mask)
    tensor([[1, 2, 0],
            [0, 1, 2]])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def compact_sequence(mask: torch.Tensor) -> torch.Tensor:
    """Permutation (B, L) that puts real positions first, keeping their order (stable sort)."""
    return torch.argsort((~mask).to(torch.int8), dim=1, stable=True)


def gather_steps(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x (B, L, ...) gathered along L by index (B, K) → (B, K, ...)."""
    if x.dim() == 2:
        return torch.gather(x, 1, index)
    idx = index.reshape(*index.shape, *([1] * (x.dim() - 2))).expand(*index.shape, *x.shape[2:])
    return torch.gather(x, 1, idx)


class InterestExtractor(nn.Module):
    """DIEN's interest extractor layer: a GRU over the behaviour embeddings.

    h_t = GRU(e_t, h_{t−1}),   e: (B, L, D) right-padded (real steps first) → h: (B, L, H).
    Outputs at padded steps are zeroed.

        >>> ext = InterestExtractor(4, 4)
        >>> ext(torch.randn(2, 3, 4), torch.tensor([[1, 1, 0], [1, 0, 0]]).bool()).shape
        torch.Size([2, 3, 4])
    """

    def __init__(self, input_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.gru = nn.GRU(input_dim, hidden_dim, batch_first=True)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h, _ = self.gru(x)
        return h * mask.unsqueeze(-1).to(h.dtype)


def interest_auxiliary_loss(
    states: torch.Tensor, next_pos: torch.Tensor, next_neg: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """DIEN's auxiliary loss: interest state h_t must tell the real next behaviour e_{t+1} from
    a sampled negative ê_{t+1}.

    L_aux = −mean_{t: t, t+1 real} [ log σ(h_t · e_{t+1}) + log(1 − σ(h_t · ê_{t+1})) ]

    states: (B, L, H), next_pos / next_neg: (B, L, H) embeddings of the behaviours (aligned with
    states, i.e. position t holds e_t; the shift happens here), mask: (B, L) right-padded.
    Returns a scalar (0 when no sequence has two real steps).

        >>> s = torch.zeros(1, 3, 2)
        >>> round(float(interest_auxiliary_loss(s, s, s, torch.ones(1, 3, dtype=torch.bool))), 4)
        1.3863
    """
    h = states[:, :-1]
    pos = (h * next_pos[:, 1:]).sum(-1)
    neg = (h * next_neg[:, 1:]).sum(-1)
    valid = (mask[:, :-1] & mask[:, 1:]).to(h.dtype)
    per_step = F.softplus(-pos) + F.softplus(neg)  # −log σ(p) − log(1 − σ(n))
    return (per_step * valid).sum() / valid.sum().clamp_min(1.0)


def hard_search(
    seq_cat: torch.Tensor, seq_mask: torch.Tensor, target_cat: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """SIM's general search unit, hard mode (Pi et al., 2020): keep the history items whose
    category equals the target's, the K most recent of them.

    seq_cat: (B, L) int64, seq_mask: (B, L) bool, target_cat: (B,) int64 →
    (index (B, K) positions into L, newest first; found (B, K) bool, False where fewer than K
    items matched). K = min(k, L).

        >>> idx, found = hard_search(torch.tensor([[5, 7, 5, 5]]), torch.tensor([[1, 1, 1, 0]]).bool(),
        ...                          torch.tensor([5]), 3)
        >>> idx[found].tolist()
        [2, 0]
    """
    L = seq_cat.shape[1]
    k = min(k, L)
    match = seq_mask & (seq_cat == target_cat.unsqueeze(1))
    pos = torch.arange(L, device=seq_cat.device).expand_as(seq_cat)
    score = torch.where(match, pos, torch.full_like(pos, -1))
    top, index = torch.topk(score, k, dim=1, sorted=True)
    return index, top >= 0


def soft_search(
    keys: torch.Tensor, seq_mask: torch.Tensor, query: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """SIM's general search unit, soft mode (Pi et al., 2020): keep the K history items whose
    embedding has the largest inner product with the candidate's, s_l = ⟨e_l, q⟩ — a maximum
    inner-product search over the long sequence (what an ANN index serves at scale).

    keys: (B, L, De), seq_mask: (B, L) bool, query: (B, De) →
    (index (B, K) positions into L, highest score first; found (B, K) bool, False where the
    history has fewer than K real items). K = min(k, L). The selection carries no gradient (the
    scores are detached); the kept items' embeddings do, through the attention that follows.

        >>> keys = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [3.0, 0.0], [9.0, 9.0]]])
        >>> idx, found = soft_search(keys, torch.tensor([[1, 1, 1, 0]]).bool(), torch.tensor([[1.0, 0.2]]), 2)
        >>> idx[found].tolist()
        [2, 0]
    """
    k = min(k, keys.shape[1])
    score = torch.einsum("bld,bd->bl", keys.detach(), query.detach())
    score = score.masked_fill(~seq_mask, float("-inf"))
    top, index = torch.topk(score, k, dim=1, sorted=True)
    return index, top > float("-inf")
