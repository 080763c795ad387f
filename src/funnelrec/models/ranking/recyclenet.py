"""RecycleNet as the seed defines it: the first tower layer reads x, gates x with what it read,
and reads the gated x again with the SAME W1, b1 (nn/recycle.py `RecycleLayer`):

    V = field embeddings (B, F', D);  x = flatten V  [+ raw dense with `dense_as_fields: false`]
    y = ReLU(W1 (x ⊙ 2σ(W2·ReLU(W1 x + b1) + b2)) + b1)              (B, H_1), H_1 = hidden[0]
    logit = linear + MLP_{hidden[1:]}(y)                              (B,)

It replaced our session-2 variant (an LHUC-gated tower with AlphaFold-style recycling), which
scored lower on ml-100k: valid AUC 0.7991 vs 0.8014, test 0.8040 vs 0.8058
(docs/BENCHMARKS.md, Session 5).

    >>> import torch
    >>> spec = FeatureSpec(n_embeddings=10, n_fields=2, field_names=("user_id", "item_id"))
    >>> RecycleNet(spec)({"sparse": torch.tensor([[1, 2]])})["ctr"].shape
    torch.Size([1])
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from funnelrec.core.errors import ConfigError
from funnelrec.core.registry import RANKERS
from funnelrec.models.ranking.base import FeatureSpec, RankingModel
from funnelrec.models.ranking.common import FieldEmbedder
from funnelrec.models.ranking.interaction_nets import raw_dense
from funnelrec.nn.embedding import LinearTerm
from funnelrec.nn.mlp import MLP
from funnelrec.nn.recycle import RecycleLayer


@dataclass(frozen=True)
class RecycleNetConfig:
    embedding_dim: int = 10
    hidden: tuple[int, ...] = (256, 256)  # hidden[0]: the recycle layer's width H_1; the rest an MLP
    dropout: float = 0.0
    batch_norm: bool = False
    dense_as_fields: bool = True  # False: dense features raw into the tower input

    def __post_init__(self) -> None:
        if not self.hidden:
            raise ConfigError("RecycleNetConfig.hidden needs at least one width (the recycle layer's)")


@RANKERS.register("recyclenet")
class RecycleNet(RankingModel):
    Config = RecycleNetConfig

    def __init__(self, spec: FeatureSpec, config: RecycleNetConfig | None = None) -> None:
        super().__init__(spec)
        self.config = cfg = config or RecycleNetConfig()
        self.linear = LinearTerm(spec.n_embeddings, spec.n_dense)
        self.raw_dense = 0 if cfg.dense_as_fields else spec.n_dense
        self.embed = FieldEmbedder(replace(spec, n_dense=spec.n_dense - self.raw_dense), cfg.embedding_dim)
        self.recycle = RecycleLayer(self.embed.n_fields * cfg.embedding_dim + self.raw_dense, cfg.hidden[0])
        self.deep = MLP(cfg.hidden[0], tuple(cfg.hidden[1:]), cfg.dropout, cfg.batch_norm, out_dim=1)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = self.embed(batch).flatten(1)
        if self.raw_dense:
            x = torch.cat([x, raw_dense(batch)], dim=1)
        deep = self.deep(self.recycle(x)).squeeze(-1)
        return {"ctr": self.linear(batch["sparse"], batch.get("dense")) + deep}
