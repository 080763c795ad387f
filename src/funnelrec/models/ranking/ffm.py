"""Field-aware FM: logit = linear + Σ_{i<j} ⟨v_{i,f_j}, v_{j,f_i}⟩.

Each embedding row holds F' vectors of size D (one per target field): one lookup of a table of
width F'·D, reshaped to (B, F', F', D).

    >>> import torch
    >>> spec = FeatureSpec(n_embeddings=10, n_fields=3)
    >>> FFM(spec, FFMConfig(embedding_dim=2))({"sparse": torch.tensor([[1, 2, 3]])})["ctr"].shape
    torch.Size([1])
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from funnelrec.core.registry import RANKERS
from funnelrec.models.ranking.base import FeatureSpec, RankingModel
from funnelrec.nn.embedding import DenseFields, FieldEmbedding, LinearTerm
from funnelrec.nn.interaction import FieldAwareFM


@dataclass(frozen=True)
class FFMConfig:
    embedding_dim: int = 4


@RANKERS.register("ffm")
class FFM(RankingModel):
    Config = FFMConfig

    def __init__(self, spec: FeatureSpec, config: FFMConfig | None = None) -> None:
        super().__init__(spec)
        self.config = cfg = config or FFMConfig()
        self.n = spec.n_fields + spec.n_dense
        self.linear = LinearTerm(spec.n_embeddings, spec.n_dense)
        self.embedding = FieldEmbedding(spec.n_embeddings, self.n * cfg.embedding_dim)
        self.dense = DenseFields(spec.n_dense, self.n * cfg.embedding_dim) if spec.n_dense else None
        self.ffm = FieldAwareFM(self.n)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        v = self.embedding(batch["sparse"])
        if self.dense is not None:
            v = torch.cat([v, self.dense(batch["dense"])], dim=1)
        v = v.view(v.shape[0], self.n, self.n, -1)
        return {"ctr": self.linear(batch["sparse"], batch.get("dense")) + self.ffm(v)}
