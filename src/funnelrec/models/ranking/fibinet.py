"""FiBiNET (Huang et al. 2019): field importance by SENet and bilinear feature interaction.

    V (B, F', D) → V' = SENet(V);  p = Bilinear(V), q = Bilinear(V')  (B, P, D) each, P = F'(F'−1)/2
    logit = linear + MLP([flatten p, flatten q (, dense x)])

With `dense_as_fields: false` the Dn dense features skip SENet and the bilinear pairs and join
the MLP input raw (as DCNv2's x0): F' = sparse fields only, so P drops from 666 to 21 with the
shipped CTR features (37 → 7 fields) and the MLP input from 2·P·D to 2·P·D + Dn.

    >>> import torch
    >>> spec = FeatureSpec(n_embeddings=10, n_fields=3)
    >>> FiBiNET(spec)({"sparse": torch.tensor([[1, 2, 3]])})["ctr"].shape
    torch.Size([1])
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from funnelrec.core.registry import RANKERS
from funnelrec.models.ranking.base import FeatureSpec, RankingModel
from funnelrec.models.ranking.common import FieldEmbedder
from funnelrec.models.ranking.interaction_nets import raw_dense
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
    dense_as_fields: bool = True  # False: dense features raw into the MLP, not SENet/bilinear fields


@RANKERS.register("fibinet")
class FiBiNET(RankingModel):
    Config = FiBiNETConfig

    def __init__(self, spec: FeatureSpec, config: FiBiNETConfig | None = None) -> None:
        super().__init__(spec)
        self.config = cfg = config or FiBiNETConfig()
        self.linear = LinearTerm(spec.n_embeddings, spec.n_dense)
        self.raw_dense = 0 if cfg.dense_as_fields else spec.n_dense
        self.embed = FieldEmbedder(replace(spec, n_dense=spec.n_dense - self.raw_dense), cfg.embedding_dim)
        n = self.embed.n_fields
        self.senet = SENet(n, cfg.reduction)
        self.bi_raw = BilinearInteraction(n, cfg.embedding_dim, cfg.bilinear)
        self.bi_se = BilinearInteraction(n, cfg.embedding_dim, cfg.bilinear)
        pairs = n * (n - 1) // 2
        self.deep = MLP(2 * pairs * cfg.embedding_dim + self.raw_dense, cfg.hidden, cfg.dropout, cfg.batch_norm, out_dim=1)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        v = self.embed(batch)
        parts = [self.bi_raw(v).flatten(1), self.bi_se(self.senet(v)).flatten(1)]
        if self.raw_dense:
            parts.append(raw_dense(batch))
        h = torch.cat(parts, dim=1)
        return {"ctr": self.linear(batch["sparse"], batch.get("dense")) + self.deep(h).squeeze(-1)}
