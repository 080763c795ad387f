"""Logistic regression: logit = Σ_f w[row_f] + a·dense + b  (B,).

    >>> import torch
    >>> spec = FeatureSpec(n_embeddings=10, n_fields=2)
    >>> LR(spec)({"sparse": torch.tensor([[1, 2]])})["ctr"].shape
    torch.Size([1])
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from funnelrec.core.registry import RANKERS
from funnelrec.models.ranking.base import FeatureSpec, RankingModel
from funnelrec.nn.embedding import LinearTerm


@dataclass(frozen=True)
class LRConfig:
    pass


@RANKERS.register("lr")
class LR(RankingModel):
    Config = LRConfig

    def __init__(self, spec: FeatureSpec, config: LRConfig | None = None) -> None:
        super().__init__(spec)
        self.config = config or LRConfig()
        self.linear = LinearTerm(spec.n_embeddings, spec.n_dense)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"ctr": self.linear(batch["sparse"], batch.get("dense"))}
