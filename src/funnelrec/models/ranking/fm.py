"""Factorization machine: logit = linear + Σ_{i<j} ⟨v_i, v_j⟩ over the F + Dn fields.

    >>> import torch
    >>> spec = FeatureSpec(n_embeddings=10, n_fields=2)
    >>> FM(spec)({"sparse": torch.tensor([[1, 2]])})["ctr"].shape
    torch.Size([1])
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from funnelrec.core.registry import RANKERS
from funnelrec.models.ranking.base import FeatureSpec, RankingModel
from funnelrec.models.ranking.common import FieldEmbedder
from funnelrec.nn.embedding import LinearTerm
from funnelrec.nn.interaction import FactorizationMachine


@dataclass(frozen=True)
class FMConfig:
    embedding_dim: int = 10


@RANKERS.register("fm")
class FM(RankingModel):
    Config = FMConfig

    def __init__(self, spec: FeatureSpec, config: FMConfig | None = None) -> None:
        super().__init__(spec)
        self.config = cfg = config or FMConfig()
        self.linear = LinearTerm(spec.n_embeddings, spec.n_dense)
        self.embed = FieldEmbedder(spec, cfg.embedding_dim)
        self.fm = FactorizationMachine()

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"ctr": self.linear(batch["sparse"], batch.get("dense")) + self.fm(self.embed(batch))}
