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
- Both add the model's own scalar output "aux_loss" when it returns one (DIEN's auxiliary
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
