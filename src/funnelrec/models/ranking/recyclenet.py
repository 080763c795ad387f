"""RecycleNet as the seed defines it ("recyclenet"), and our LHUC recycling variant
("recyclenet_lhuc").

"recyclenet" (the seed): the first tower layer reads x, gates x with what it read, and reads
the gated x again with the SAME W1, b1 (nn/recycle.py `RecycleLayer`):

    V = field embeddings (B, F', D);  x = flatten V  [+ raw dense with `dense_as_fields: false`]
    y = ReLU(W1 (x ⊙ 2σ(W2·ReLU(W1 x + b1) + b2)) + b1)              (B, H_1), H_1 = hidden[0]
    logit = linear + MLP_{hidden[1:]}(y)                              (B,)

"recyclenet_lhuc" (ours, session 2; kept under its own name with its figures in
docs/BENCHMARKS.md): an LHUC-gated MLP with recycling (nn/recycle.py `RecyclingLHUCMLP`).

    V = field embeddings (B, F', D);  p = flatten(V[:, gate fields])  (B, Dp), Dp = |gate|·D
    x = flatten V  (B, F'·D)  [+ raw dense (B, Dn) with `dense_as_fields: false`]
    pass t = 0 … T−1 (T = `n_recycles`):
        g_t = 2·σ(MLP_g([p ; stopgrad(h_{t−1})])),  h_{−1} = 0
        gates the input x and every hidden layer;  h_t = last hidden layer
    logit = linear + w·h_{T−1} + b

Training runs always T passes (`train_passes: all`, the default: valid AUC 0.7991 on ml-100k
vs 0.7979) or T' drawn uniformly from 1 … T per batch ("sample", AlphaFold 2's recycling
schedule); evaluation always runs T.
Gate fields: as LHUC (`gate_fields`; default the fields named "user*"; with pooled multi-valued
fields a gate column maps to its pooled field), p detached from the shared embeddings when
`detach_gate`.

    >>> import torch
    >>> spec = FeatureSpec(n_embeddings=10, n_fields=2, field_names=("user_id", "item_id"))
    >>> [m(spec)({"sparse": torch.tensor([[1, 2]])})["ctr"].shape for m in (RecycleNet, RecycleNetLHUC)]
    [torch.Size([1]), torch.Size([1])]
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from funnelrec.core.errors import ConfigError
from funnelrec.core.registry import RANKERS
from funnelrec.models.ranking.base import FeatureSpec, RankingModel
from funnelrec.models.ranking.common import FieldEmbedder
from funnelrec.models.ranking.interaction_nets import raw_dense
from funnelrec.models.ranking.lhuc import gate_columns
from funnelrec.nn.embedding import LinearTerm
from funnelrec.nn.mlp import MLP
from funnelrec.nn.recycle import RecycleLayer, RecyclingLHUCMLP

TRAIN_PASSES = ("sample", "all")


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


@dataclass(frozen=True)
class RecycleNetLHUCConfig:
    embedding_dim: int = 10
    hidden: tuple[int, ...] = (256, 256)
    n_recycles: int = 2  # T passes of the gated tower
    train_passes: str = "all"  # "all": always T passes; "sample": T' ~ U{1..T} per training batch
    gate_fields: tuple[str, ...] = ()
    gate_hidden: int = 64
    gate_input: bool = True  # gate the input embeddings too, not only the hidden layers
    detach_gate: bool = True
    dropout: float = 0.0
    dense_as_fields: bool = True  # False: dense features raw into the tower input

    def __post_init__(self) -> None:
        if self.train_passes not in TRAIN_PASSES:
            raise ConfigError(f"train_passes {self.train_passes!r}; known: {', '.join(TRAIN_PASSES)}")
        if self.n_recycles < 1:
            raise ConfigError(f"n_recycles must be ≥ 1, got {self.n_recycles}")


@RANKERS.register("recyclenet_lhuc")
class RecycleNetLHUC(RankingModel):
    Config = RecycleNetLHUCConfig

    def __init__(self, spec: FeatureSpec, config: RecycleNetLHUCConfig | None = None) -> None:
        super().__init__(spec)
        self.config = cfg = config or RecycleNetLHUCConfig()
        self.linear = LinearTerm(spec.n_embeddings, spec.n_dense)
        self.raw_dense = 0 if cfg.dense_as_fields else spec.n_dense
        self.embed = FieldEmbedder(replace(spec, n_dense=spec.n_dense - self.raw_dense), cfg.embedding_dim)
        cols = gate_columns(spec, cfg.gate_fields)
        if self.embed.pool is not None:  # column → its pooled field
            cols = sorted({int(self.embed.pool[:, k].argmax()) for k in cols})
        self.register_buffer("gate_cols", torch.tensor(cols), persistent=False)
        D = cfg.embedding_dim
        self.tower = RecyclingLHUCMLP(self.embed.n_fields * D + self.raw_dense, len(cols) * D, cfg.hidden,
                                      cfg.n_recycles, cfg.dropout, cfg.gate_hidden, cfg.gate_input)
        self.out = torch.nn.Linear(self.tower.out_dim, 1)

    def n_passes(self) -> int:
        """T in evaluation; in training T' ~ U{1..T} ("sample") or T ("all")."""
        T = self.config.n_recycles
        if self.training and self.config.train_passes == "sample" and T > 1:
            return int(torch.randint(1, T + 1, ()).item())
        return T

    def forward(self, batch: dict[str, torch.Tensor], n_passes: int | None = None) -> dict[str, torch.Tensor]:
        v = self.embed(batch)
        p = v[:, self.gate_cols].flatten(1)
        if self.config.detach_gate:
            p = p.detach()
        x = v.flatten(1)
        if self.raw_dense:
            x = torch.cat([x, raw_dense(batch)], dim=1)
        h = self.tower(x, p, self.n_passes() if n_passes is None else n_passes)
        deep = self.out(h).squeeze(-1)
        return {"ctr": self.linear(batch["sparse"], batch.get("dense")) + deep}
