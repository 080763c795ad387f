"""Interaction networks that compress many fields before or after crossing them.

- "all_interaction" — compress, then cross: the F' fields are mixed into K virtual fields
  (K = `n_compressed`, default 16) by a learned linear map over the field axis,
  U = Wᵀ V  (B, K, D), then all K(K−1)/2 inner products ⟨u_a, u_b⟩ are taken.
  Cost O(K²D) instead of O(F'²D), every original pair still reachable through W.
  logit = MLP([flatten V, inner products]).
- "neural_interaction" — cross, then compress: all pairwise products v_i ⊙ v_j (B, P, D),
  P = F'(F'−1)/2, are compressed to K by a learned map over the pair axis (B, K, D).
  logit = MLP([flatten V, flatten compressed]).
- "mmcn" — multi-head crossing: x0 = flatten V is projected to H heads (B, d_h) each, and each
  head is crossed its own way — "dcnv2" (x0⊙(W x + b) + x), "gated" (GDCN),
  "fm" (head viewed as (m, D) sub-fields, FM bi-interaction → (B, D)), "product" (the head's
  elementwise square with a learned mix) — heads concatenated with x0 → MLP.

    >>> import torch
    >>> spec = FeatureSpec(n_embeddings=10, n_fields=3)
    >>> b = {"sparse": torch.tensor([[1, 2, 3]])}
    >>> [m(spec)(b)["ctr"].shape for m in (AllInteraction, NeuralInteraction, MMCN)]
    [torch.Size([1]), torch.Size([1]), torch.Size([1])]
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from funnelrec.core.errors import ConfigError
from funnelrec.core.registry import RANKERS
from funnelrec.models.ranking.base import FeatureSpec, RankingModel
from funnelrec.models.ranking.common import FieldEmbedder
from funnelrec.nn.cross import CrossNetV2, GatedCrossNet
from funnelrec.nn.embedding import LinearTerm
from funnelrec.nn.interaction import FactorizationMachine, InnerProducts
from funnelrec.nn.mlp import MLP


@dataclass(frozen=True)
class InteractionNetConfig:
    embedding_dim: int = 10
    n_compressed: int = 16
    hidden: tuple[int, ...] = (256, 256)
    dropout: float = 0.0
    batch_norm: bool = False


class FieldCompression(nn.Module):
    """(B, N, D) → (B, K, D): u_k = Σ_n W_{n,k} v_n (a learned mix over the N axis)."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_in, n_out) / n_in**0.5)

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bnd,nk->bkd", v, self.weight)


@RANKERS.register("all_interaction")
class AllInteraction(RankingModel):
    Config = InteractionNetConfig

    def __init__(self, spec: FeatureSpec, config: InteractionNetConfig | None = None) -> None:
        super().__init__(spec)
        self.config = cfg = config or InteractionNetConfig()
        self.linear = LinearTerm(spec.n_embeddings, spec.n_dense)
        self.embed = FieldEmbedder(spec, cfg.embedding_dim)
        K = cfg.n_compressed
        self.compress = FieldCompression(self.embed.n_fields, K)
        self.cross = InnerProducts(K)
        d = self.embed.n_fields * cfg.embedding_dim + K * (K - 1) // 2
        self.deep = MLP(d, cfg.hidden, cfg.dropout, cfg.batch_norm, out_dim=1)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        v = self.embed(batch)
        h = torch.cat([v.flatten(1), self.cross(self.compress(v))], dim=1)
        return {"ctr": self.linear(batch["sparse"], batch.get("dense")) + self.deep(h).squeeze(-1)}


@RANKERS.register("neural_interaction")
class NeuralInteraction(RankingModel):
    Config = InteractionNetConfig

    def __init__(self, spec: FeatureSpec, config: InteractionNetConfig | None = None) -> None:
        super().__init__(spec)
        self.config = cfg = config or InteractionNetConfig()
        self.linear = LinearTerm(spec.n_embeddings, spec.n_dense)
        self.embed = FieldEmbedder(spec, cfg.embedding_dim)
        n = self.embed.n_fields
        i, j = torch.triu_indices(n, n, offset=1)
        self.register_buffer("i", i, persistent=False)
        self.register_buffer("j", j, persistent=False)
        self.compress = FieldCompression(max(len(i), 1), cfg.n_compressed)
        d = (n + cfg.n_compressed) * cfg.embedding_dim
        self.deep = MLP(d, cfg.hidden, cfg.dropout, cfg.batch_norm, out_dim=1)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        v = self.embed(batch)
        pairs = v[:, self.i] * v[:, self.j]  # (B, P, D)
        h = torch.cat([v.flatten(1), self.compress(pairs).flatten(1)], dim=1)
        return {"ctr": self.linear(batch["sparse"], batch.get("dense")) + self.deep(h).squeeze(-1)}


HEAD_KINDS = ("dcnv2", "gated", "fm", "product")


@dataclass(frozen=True)
class MMCNConfig:
    embedding_dim: int = 10
    heads: tuple[str, ...] = ("dcnv2", "gated", "fm", "product")
    head_dim: int = 60  # must be a multiple of embedding_dim for "fm" heads
    cross_layers: int = 2
    hidden: tuple[int, ...] = (256, 256)
    dropout: float = 0.0
    batch_norm: bool = False

    def __post_init__(self) -> None:
        bad = [h for h in self.heads if h not in HEAD_KINDS]
        if bad or not self.heads:
            raise ConfigError(f"mmcn heads {list(self.heads)}: unknown {bad}; known: {', '.join(HEAD_KINDS)}")
        if "fm" in self.heads and self.head_dim % self.embedding_dim:
            raise ConfigError(f"mmcn head_dim {self.head_dim} must be a multiple of embedding_dim {self.embedding_dim}")


class _ProductHead(nn.Module):
    """x ↦ W (x ⊙ x) + x : a second-order elementwise crossing of the head with itself."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.lin = nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x * x) + x


class _FMHead(nn.Module):
    """(B, m·D) viewed as m sub-fields → FM bi-interaction (B, D)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.fm = FactorizationMachine(reduce_sum=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fm(x.view(x.shape[0], -1, self.dim))


@RANKERS.register("mmcn")
class MMCN(RankingModel):
    Config = MMCNConfig

    def __init__(self, spec: FeatureSpec, config: MMCNConfig | None = None) -> None:
        super().__init__(spec)
        self.config = cfg = config or MMCNConfig()
        self.embed = FieldEmbedder(spec, cfg.embedding_dim)
        d0 = self.embed.n_fields * cfg.embedding_dim
        self.proj = nn.ModuleList([nn.Linear(d0, cfg.head_dim) for _ in cfg.heads])
        crosses, out = [], d0
        for h in cfg.heads:
            if h == "dcnv2":
                crosses.append(CrossNetV2(cfg.head_dim, cfg.cross_layers))
                out += cfg.head_dim
            elif h == "gated":
                crosses.append(GatedCrossNet(cfg.head_dim, cfg.cross_layers))
                out += cfg.head_dim
            elif h == "fm":
                crosses.append(_FMHead(cfg.embedding_dim))
                out += cfg.embedding_dim
            else:
                crosses.append(_ProductHead(cfg.head_dim))
                out += cfg.head_dim
        self.crosses = nn.ModuleList(crosses)
        self.deep = MLP(out, cfg.hidden, cfg.dropout, cfg.batch_norm, out_dim=1)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x0 = self.embed(batch).flatten(1)
        heads = [cross(proj(x0)) for proj, cross in zip(self.proj, self.crosses)]
        return {"ctr": self.deep(torch.cat([x0, *heads], dim=1)).squeeze(-1)}
