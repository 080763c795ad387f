"""xDeepFM (Lian et al. 2018): logit = linear + w·CIN(V) + MLP(flatten V), V (B, F + Dn, D).

    >>> import torch
    >>> spec = FeatureSpec(n_embeddings=10, n_fields=2)
    >>> XDeepFM(spec)({"sparse": torch.tensor([[1, 2]])})["ctr"].shape
    torch.Size([1])
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from funnelrec.core.registry import RANKERS
from funnelrec.models.ranking.base import FeatureSpec, RankingModel
from funnelrec.models.ranking.common import FieldEmbedder
from funnelrec.nn.cin import CIN
from funnelrec.nn.embedding import LinearTerm
from funnelrec.nn.mlp import MLP


@dataclass(frozen=True)
class XDeepFMConfig:
    embedding_dim: int = 10
    cin_layers: tuple[int, ...] = (100, 100)
    split_half: bool = True
    hidden: tuple[int, ...] = (256, 256)
    dropout: float = 0.0
    batch_norm: bool = False


@RANKERS.register("xdeepfm")
class XDeepFM(RankingModel):
    Config = XDeepFMConfig

    def __init__(self, spec: FeatureSpec, config: XDeepFMConfig | None = None) -> None:
        super().__init__(spec)
        self.config = cfg = config or XDeepFMConfig()
        self.linear = LinearTerm(spec.n_embeddings, spec.n_dense)
        self.embed = FieldEmbedder(spec, cfg.embedding_dim)
        self.cin = CIN(self.embed.n_fields, cfg.cin_layers, cfg.split_half)
        self.cin_out = nn.Linear(self.cin.out_dim, 1)
        self.deep = MLP(self.embed.n_fields * cfg.embedding_dim, cfg.hidden, cfg.dropout, cfg.batch_norm, out_dim=1)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        v = self.embed(batch)
        logit = (self.linear(batch["sparse"], batch.get("dense")) + self.cin_out(self.cin(v)).squeeze(-1)
                 + self.deep(v.flatten(1)).squeeze(-1))
        return {"ctr": logit}
