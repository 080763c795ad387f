"""The ranking-model contract shared by the whole model zoo.

A ranking model is a pure `torch.nn.Module`: it computes logits from a batch of tensors and
knows nothing of optimizers, data loading or files (train/ does that).

Batch layout (every key optional except "sparse"; B = batch, F = sparse fields, L = sequence):
    "sparse":    (B, F) int64   — row indices into ONE shared embedding table (FIDs mapped to
                                  dense rows at data-prep time; 0 = padding/unknown row)
    "dense":     (B, Dn) float32 — continuous features already transformed (log1p, CDF, …)
    "seq":       (B, L) int64   — embedding rows of the user's recent positive items (0 = pad)
    "seq_cat":   (B, L) int64   — embedding rows of those items' category/tag (0 = pad)
    "seq_mask":  (B, L) bool    — True at real positions
    "target":    (B,) int64     — embedding row of the candidate item (for target attention)
    "target_cat":(B,) int64     — embedding row of the candidate's category
    "domain":    (B,) int64     — scenario/domain id (STAR, PEPNet), 0..n_domains-1
    "label", "label_<task>": (B,) float32 targets (not read by models)
    "weight":    (B,) float32 per-sample loss weights (not read by models)

forward(batch) -> dict[task name, (B,) logits]; single-task models return {"ctr": logits}.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from funnelrec.features.spec import FeatureSpec  # re-exported: models import it from here

__all__ = ["FeatureSpec", "RankingModel"]


class RankingModel(nn.Module):
    """Base class: subclasses build layers in __init__(spec, config) and implement forward."""

    # True: forward returns one logit per task of spec.tasks (MMoE, PLE, ESMM, PEPNet), so
    # evaluation trains the tasks jointly; False: only {"ctr": …}, one model per task
    multi_task: ClassVar[bool] = False

    def __init__(self, spec: FeatureSpec) -> None:
        super().__init__()
        self.spec = spec

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:  # pragma: no cover
        raise NotImplementedError
