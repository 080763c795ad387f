"""Loss functions for the one Trainer: `loss_fn(model, batch) -> scalar`.

- `bce_loss`: mean_b w_b · BCE(σ(s_b + c), y_b), s = model(batch)[task], optional per-sample
  weights batch["weight"], constant logit offset c (negative-downsampling correction, see
  train/calibration.py).
- `watch_time_weights`: weighted LR for expected watch time (YouTube, Covington et al. 2016):
  positives weighted by their watch time T, negatives by 1. At the optimum, per feature cell,
  odds = e^s = Σ_pos T / N_neg = E[T] / (1 − p) ≈ E[T] when the click rate p is small, so
  exp(logit) estimates the expected watch time per impression.
- `multitask_bce`: Σ_t λ_t · mean BCE(s_t, y_t) with y_t = batch["label_<t>"]
  (or batch["label"] for a task named "ctr" without its own label).
- `segment_log_softmax`, `listwise_softmax_loss` (ListNet / sampled softmax) and
  `lambdarank_loss` (|ΔNDCG|-weighted pairwise logistic): losses over groups of rows — one
  user's candidates — given by a segment id per row (train/candidate_ranker.py, `rank.loss`).
- `bce_loss` and `multitask_bce` add the model's own scalar output "aux_loss" when it returns one (DIEN's auxiliary
  next-behaviour loss, already weighted by the model's config).

    >>> import torch
    >>> class M(torch.nn.Module):
    ...     def forward(self, b): return {"ctr": torch.zeros(len(b["label"]))}
    >>> round(float(bce_loss()(M(), {"label": torch.tensor([0., 1.])})), 4)   # ln 2
    0.6931
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from funnelrec.core.errors import ConfigError, DataError

Batch = dict[str, torch.Tensor]
LossFn = Callable[[nn.Module, Batch], torch.Tensor]


def _aux(out: dict[str, torch.Tensor]) -> torch.Tensor | float:
    """A model's own auxiliary loss (scalar output "aux_loss", e.g. DIEN's), else 0."""
    return out.get("aux_loss", 0.0)


def bce_loss(task: str = "ctr", label_key: str = "label", weight_key: str = "weight",
             logit_offset: float = 0.0) -> LossFn:
    def loss(model: nn.Module, batch: Batch) -> torch.Tensor:
        out = model(batch)
        s = out[task]
        if logit_offset:
            s = s + logit_offset
        w = batch.get(weight_key)
        return F.binary_cross_entropy_with_logits(s, batch[label_key], weight=w) + _aux(out)

    return loss


def watch_time_weights(labels: torch.Tensor, watch_time: torch.Tensor) -> torch.Tensor:
    """(N,) weights: watch time for positives, 1 for negatives."""
    if (watch_time < 0).any():
        raise DataError("watch time must be ≥ 0")
    return torch.where(labels > 0, watch_time.to(torch.float32), torch.ones_like(labels, dtype=torch.float32))


def multitask_bce(weights: dict[str, float]) -> LossFn:
    if not weights:
        raise ConfigError("multitask_bce needs at least one task weight")

    def loss(model: nn.Module, batch: Batch) -> torch.Tensor:
        out = model(batch)
        total = torch.zeros(())
        for task, lam in weights.items():
            key = f"label_{task}" if f"label_{task}" in batch else "label"
            if key not in batch:
                raise DataError(f"task {task!r} has no label: batch lacks 'label_{task}'")
            total = total + lam * F.binary_cross_entropy_with_logits(out[task], batch[key])
        return total + _aux(out)

    return loss


# ---------------------------------------------------------------- listwise / pairwise (per group)


def segment_log_softmax(z: torch.Tensor, seg: torch.Tensor, n_seg: int) -> torch.Tensor:
    """log softmax of the scores z (M,) within each segment: out_m = z_m − log Σ_{j: seg_j = seg_m} e^{z_j}.

    seg (M,) int64 in [0, n_seg): the group (e.g. the user) of each row; rows of a group need
    not be contiguous. The per-segment max is subtracted first (detached: log softmax does not
    change under a shift), so large scores do not overflow.

    >>> z = torch.tensor([0., 0., 1., 5.])
    >>> segment_log_softmax(z, torch.tensor([0, 0, 1, 1]), 2).exp().round(decimals=4)
    tensor([0.5000, 0.5000, 0.0180, 0.9820])
    """
    seg = seg.to(torch.int64)
    top = torch.full((n_seg,), -torch.inf, dtype=z.dtype, device=z.device)
    top = top.scatter_reduce(0, seg, z.detach(), reduce="amax", include_self=True)
    zc = z - top[seg]
    norm = torch.zeros(n_seg, dtype=z.dtype, device=z.device).index_add(0, seg, zc.exp())
    return zc - norm.log()[seg]


def listwise_softmax_loss(z: torch.Tensor, y: torch.Tensor, seg: torch.Tensor, n_seg: int,
                          weight: torch.Tensor | None = None) -> torch.Tensor:
    """ListNet / sampled-softmax cross-entropy per group, averaged over the groups with a positive:

        L = mean_{g: Σ_g y·w > 0}  −Σ_{m ∈ g} p_m · log softmax_g(z)_m,   p_m = y_m w_m / Σ_{j ∈ g} y_j w_j

    z, y (M,) scores and labels (≥ 0), seg (M,) each row's group, weight (M,) optional (1). With
    binary labels this is the mean over a group's positives of −log softmax(z)_pos (each positive
    against the whole group, the other positives included). Groups without a positive add
    nothing; no group with one: 0 (with a gradient of zeros).

    >>> z, y = torch.tensor([2., 0., 0.]), torch.tensor([1., 0., 0.])
    >>> round(float(listwise_softmax_loss(z, y, torch.zeros(3, dtype=torch.int64), 1)), 4)  # −log(e²/(e²+2))
    0.2395
    """
    t = y if weight is None else y * weight
    tot = torch.zeros(n_seg, dtype=z.dtype, device=z.device).index_add(0, seg, t.to(z.dtype))
    has = tot > 0
    if not bool(has.any()):
        return z.sum() * 0.0
    p = t / tot[seg].clamp_min(torch.finfo(z.dtype).tiny)
    per = torch.zeros(n_seg, dtype=z.dtype, device=z.device).index_add(0, seg, -p * segment_log_softmax(z, seg, n_seg))
    return per[has].mean()


def _padded(seg: torch.Tensor, n_seg: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(row of each (group, slot), valid mask), both (n_seg, L), L = the largest group."""
    counts = torch.bincount(seg, minlength=n_seg)
    L = int(counts.max()) if len(seg) else 0
    order = torch.argsort(seg, stable=True)
    start = torch.cumsum(counts, 0) - counts
    slot = torch.arange(len(seg), device=seg.device) - start[seg[order]]
    rows = torch.zeros((n_seg, L), dtype=torch.int64, device=seg.device)
    mask = torch.zeros((n_seg, L), dtype=torch.bool, device=seg.device)
    rows[seg[order], slot] = order
    mask[seg[order], slot] = True
    return rows, mask


def lambdarank_loss(z: torch.Tensor, y: torch.Tensor, seg: torch.Tensor, n_seg: int,
                    weight: torch.Tensor | None = None) -> torch.Tensor:
    """LambdaRank (Burges 2010): pairwise logistic loss weighted by |ΔNDCG| within each group,

        L = mean_{g with a pair}  Σ_{i, j ∈ g: r_i > r_j} |ΔNDCG_ij| · log(1 + e^{−(z_i − z_j)})

    relevance r = y·w (M,), gain r, discount 1/log2(2 + rank) with the rank of the current
    (detached) scores in the group, ΔNDCG_ij = |r_i − r_j| · |d_i − d_j| / IDCG_g (full list).

    >>> z, y = torch.tensor([0., 0.]), torch.tensor([1., 0.])   # ΔNDCG = (1 − 1/log2 3) / 1
    >>> round(float(lambdarank_loss(z, y, torch.zeros(2, dtype=torch.int64), 1)), 4)
    0.2558
    """
    r = (y if weight is None else y * weight).to(z.dtype)
    rows, mask = _padded(seg.to(torch.int64), n_seg)
    Z = torch.where(mask, z[rows], torch.full_like(rows, -1e30, dtype=z.dtype))
    R = torch.where(mask, r[rows], torch.zeros_like(Z))
    rank = torch.argsort(torch.argsort(Z.detach(), dim=1, descending=True, stable=True), dim=1)
    disc = 1.0 / torch.log2(rank.to(z.dtype) + 2.0)
    ideal = torch.sort(R, dim=1, descending=True).values
    idcg = (ideal / torch.log2(torch.arange(R.shape[1], dtype=z.dtype, device=z.device) + 2.0)).sum(1)
    pair = (R.unsqueeze(2) > R.unsqueeze(1)) & mask.unsqueeze(2) & mask.unsqueeze(1)
    if not bool(pair.any()):
        return z.sum() * 0.0
    delta = (R.unsqueeze(2) - R.unsqueeze(1)).abs() * (disc.unsqueeze(2) - disc.unsqueeze(1)).abs()
    delta = delta / idcg.clamp_min(torch.finfo(z.dtype).tiny).view(-1, 1, 1)
    logistic = F.softplus(-(Z.unsqueeze(2) - Z.unsqueeze(1)))
    per = torch.where(pair, delta * logistic, torch.zeros_like(logistic)).sum((1, 2))
    return per[pair.any((1, 2))].mean()
