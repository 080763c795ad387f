"""DeepFM (Guo et al. 2017): logit = linear + FM(V) + MLP(flatten V), V = field embeddings
(B, F + Dn, D) shared by the FM and the deep part.

    >>> import torch
    >>> spec = FeatureSpec(n_embeddings=10, n_fields=2)
    >>> DeepFM(spec)({"sparse": torch.tensor([[1, 2]])})["ctr"].shape
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
from funnelrec.nn.mlp import MLP


@dataclass(frozen=True)
class DeepFMConfig:
    embedding_dim: int = 10
    hidden: tuple[int, ...] = (256, 256)
    dropout: float = 0.0
    batch_norm: bool = False


@RANKERS.register("deepfm")
class DeepFM(RankingModel):
    Config = DeepFMConfig

    def __init__(self, spec: FeatureSpec, config: DeepFMConfig | None = None) -> None:
        super().__init__(spec)
        self.config = cfg = config or DeepFMConfig()
        self.linear = LinearTerm(spec.n_embeddings, spec.n_dense)
        self.embed = FieldEmbedder(spec, cfg.embedding_dim)
        self.fm = FactorizationMachine()
        self.deep = MLP(self.embed.n_fields * cfg.embedding_dim, cfg.hidden, cfg.dropout, cfg.batch_norm, out_dim=1)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        v = self.embed(batch)
        logit = self.linear(batch["sparse"], batch.get("dense")) + self.fm(v) + self.deep(v.flatten(1)).squeeze(-1)
        return {"ctr": logit}
