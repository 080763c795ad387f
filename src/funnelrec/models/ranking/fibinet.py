"""FiBiNET (Huang et al. 2019): field importance by SENet and bilinear feature interaction.

    V (B, F', D) → V' = SENet(V);  p = Bilinear(V), q = Bilinear(V')  (B, P, D) each
    logit = linear + MLP([flatten p, flatten q])

    >>> import torch
    >>> spec = FeatureSpec(n_embeddings=10, n_fields=3)
    >>> FiBiNET(spec)({"sparse": torch.tensor([[1, 2, 3]])})["ctr"].shape
    torch.Size([1])
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from funnelrec.core.registry import RANKERS
from funnelrec.models.ranking.base import FeatureSpec, RankingModel
from funnelrec.models.ranking.common import FieldEmbedder
from funnelrec.nn.embedding import LinearTerm
from funnelrec.nn.mlp import MLP
from funnelrec.nn.senet import BilinearInteraction, SENet


@dataclass(frozen=True)
class FiBiNETConfig:
    embedding_dim: int = 10
    reduction: int = 3
    bilinear: str = "all"  # "all" | "each" | "interaction"
    hidden: tuple[int, ...] = (256, 256)
    dropout: float = 0.0
    batch_norm: bool = False


@RANKERS.register("fibinet")
class FiBiNET(RankingModel):
    Config = FiBiNETConfig

    def __init__(self, spec: FeatureSpec, config: FiBiNETConfig | None = None) -> None:
        super().__init__(spec)
        self.config = cfg = config or FiBiNETConfig()
        self.linear = LinearTerm(spec.n_embeddings, spec.n_dense)
        self.embed = FieldEmbedder(spec, cfg.embedding_dim)
        n = self.embed.n_fields
        self.senet = SENet(n, cfg.reduction)
        self.bi_raw = BilinearInteraction(n, cfg.embedding_dim, cfg.bilinear)
        self.bi_se = BilinearInteraction(n, cfg.embedding_dim, cfg.bilinear)
        pairs = n * (n - 1) // 2
        self.deep = MLP(2 * pairs * cfg.embedding_dim, cfg.hidden, cfg.dropout, cfg.batch_norm, out_dim=1)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        v = self.embed(batch)
        h = torch.cat([self.bi_raw(v).flatten(1), self.bi_se(self.senet(v)).flatten(1)], dim=1)
        return {"ctr": self.linear(batch["sparse"], batch.get("dense")) + self.deep(h).squeeze(-1)}
