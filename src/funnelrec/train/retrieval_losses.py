"""Retrieval losses on user–item logits s(u, i) = ⟨u, i⟩ / τ.

- pointwise: binary cross-entropy, each positive with N sampled negatives (1:2, 1:3 …)
      L = mean over the B·(1+N) pairs of BCE(σ(s), y)
- pairwise (BPR, Rendle et al. 2009):
      L = mean_{b,n} −log σ(s⁺_b − s⁻_{b,n})
- listwise sampled softmax / InfoNCE with in-batch negatives and logQ correction (Yi et al.,
  RecSys 2019): row b's candidates are the B in-batch positives (plus optional per-row sampled
  negatives); each logit is corrected by the log of its expected count under the sampling
  process, s'(b, j) = s(b, j) − log Q(j), so the sampled softmax is an unbiased estimate of the
  full softmax over the catalogue. In-batch columns holding the same item as the row's positive
  ("accidental hits") are masked out.
      L = mean_b −log softmax_j(s'(b, ·))[b]

    >>> import torch
    >>> float(bpr_loss(torch.tensor([2.0]), torch.tensor([[0.0]])))  # −log σ(2)
    0.12692...

Every function takes logits and returns a scalar tensor; the two-tower model supplies the logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LOSSES = ("pointwise", "bpr", "softmax")


def pointwise_bce_loss(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """pos: (B,) logits of positives; neg: (B, N) logits of sampled negatives.
    Mean binary cross-entropy over all B·(1+N) labelled pairs."""
    total = F.softplus(-pos).sum() + F.softplus(neg).sum()
    return total / (pos.numel() + neg.numel())


def bpr_loss(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """pos: (B,), neg: (B, N). mean −log σ(s⁺ − s⁻) over the B·N pairs."""
    return F.softplus(-(pos.unsqueeze(1) - neg)).mean()


def sampled_softmax_loss(
    user: torch.Tensor,
    item: torch.Tensor,
    temperature: float,
    log_q: torch.Tensor | None = None,
    item_ids: torch.Tensor | None = None,
    neg: torch.Tensor | None = None,
    neg_log_q: torch.Tensor | None = None,
) -> torch.Tensor:
    """In-batch sampled softmax (InfoNCE) with logQ correction.

    user: (B, D), item: (B, D) row-aligned positive pairs (already L2-normalized for cosine).
    log_q: (B,) log expected count of each in-batch item as a negative (e.g. log(B·p_pos(j)));
        None = no correction.
    item_ids: (B,) item indices; columns j ≠ b with item_ids[j] == item_ids[b] are masked.
    neg: (B, N, D) extra per-row sampled negatives; neg_log_q: (B, N) their log expected counts.
    Returns mean_b −log softmax over [in-batch (B) | sampled (N)] logits at column b.
    """
    # (B, B) logits in one pass: τ scales the (B, D) side, and −log Q(j) and the accidental-hit
    # mask (−inf) enter as addmm's constant bias, so no (B, B) op of theirs runs in the backward.
    # At B = 4096 each (B, B) pass costs about as much as the user tower.
    u = user / temperature
    bias = None if log_q is None else -log_q.detach().to(u.dtype).unsqueeze(0)  # (1, B)
    if item_ids is not None:
        hit = item_ids.unsqueeze(0) == item_ids.unsqueeze(1)
        hit.fill_diagonal_(False)
        if bool(hit.any()):
            bias = torch.zeros((), dtype=u.dtype) if bias is None else bias
            bias = torch.where(hit, float("-inf"), bias)  # (B, B)
    logits = u @ item.T if bias is None else torch.addmm(bias, u, item.T)
    if neg is not None:
        extra = torch.einsum("bd,bnd->bn", user, neg) / temperature  # (B, N)
        if neg_log_q is not None:
            extra = extra - neg_log_q
        logits = torch.cat([logits, extra], dim=1)
    target = torch.arange(user.shape[0], device=user.device)
    return F.cross_entropy(logits, target)
