"""xDeepFM (Lian et al. 2018): logit = linear + w·CIN(V) + MLP(x).

- `dense_as_fields: true` (the paper's form): each dense feature x_j is a field x_j·v_j, so
  V is (B, G + Dn, D) and x = flatten(V);
- `dense_as_fields: false`: V holds the G sparse fields only, the CIN crosses those, and the
  dense features enter raw, x = [flatten(V), dense] (B, G·D + Dn), plus their linear term.
  The CIN's cost grows with fields² (H_{k−1}·m per layer): with the 30 dense features of the
  shipped CTR config this cuts m from 37 to 7 fields (docs/BENCHMARKS.md, Session 5).

The CIN (nn/cin.py) runs as one outer product and one GEMM per layer.

    >>> import torch
    >>> spec = FeatureSpec(n_embeddings=10, n_fields=2)
    >>> XDeepFM(spec)({"sparse": torch.tensor([[1, 2]])})["ctr"].shape
    torch.Size([1])
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from funnelrec.core.registry import RANKERS
from funnelrec.models.ranking.base import FeatureSpec, RankingModel
from funnelrec.models.ranking.common import FieldEmbedder
from funnelrec.models.ranking.interaction_nets import raw_dense
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
    dense_as_fields: bool = True  # False: dense features raw into the MLP (and linear term), CIN over sparse fields


@RANKERS.register("xdeepfm")
class XDeepFM(RankingModel):
    Config = XDeepFMConfig

    def __init__(self, spec: FeatureSpec, config: XDeepFMConfig | None = None) -> None:
        super().__init__(spec)
        self.config = cfg = config or XDeepFMConfig()
        self.linear = LinearTerm(spec.n_embeddings, spec.n_dense)
        self.raw_dense = 0 if cfg.dense_as_fields else spec.n_dense
        self.embed = FieldEmbedder(replace(spec, n_dense=spec.n_dense - self.raw_dense), cfg.embedding_dim)
        self.cin = CIN(self.embed.n_fields, cfg.cin_layers, cfg.split_half)
        self.cin_out = nn.Linear(self.cin.out_dim, 1)
        self.deep = MLP(self.embed.n_fields * cfg.embedding_dim + self.raw_dense, cfg.hidden, cfg.dropout,
                        cfg.batch_norm, out_dim=1)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        v = self.embed(batch)
        x = v.flatten(1)
        if self.raw_dense:
            x = torch.cat([x, raw_dense(batch)], dim=1)
        logit = (self.linear(batch["sparse"], batch.get("dense")) + self.cin_out(self.cin(v)).squeeze(-1)
                 + self.deep(x).squeeze(-1))
        return {"ctr": logit}
