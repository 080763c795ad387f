"""Interaction networks that compress many fields before or after crossing them.

- "all_interaction" — compress, then cross (the seed's N×16 construction): the N fields are
  mixed into K virtual fields (K = `n_compressed`, default 16) by a learned linear map over the
  field axis, U = Wᵀ V  (B, K, D), W (N, K); then every ORIGINAL field is crossed with every
  compressed one, Z = V Uᵀ  (B, N, K), z_{n,k} = ⟨v_n, u_k⟩ = Σ_m W_{m,k} ⟨v_n, v_m⟩, so all N²
  pairs ⟨v_n, v_m⟩ reach the model through N×K numbers at cost O(N·K·D) instead of O(N²·D).
  logit = linear + MLP([flatten V, flatten Z (, dense x)]). `dense_as_fields: false`: the
  dense features join the MLP input raw, N = sparse fields.
- "neural_interaction" — cross, then compress: all pairwise products v_i ⊙ v_j (B, P, D),
  P = F'(F'−1)/2, are compressed to K by a learned map over the pair axis (B, K, D)
  (computed as one GEMM without materializing the pairs, `compressed_pairs`).
  logit = MLP([flatten V, flatten compressed (, dense x)]).
  `dense_as_fields: false`: the Dn dense features join the MLP input raw instead of as fields,
  so P = F_sparse(F_sparse−1)/2 (21 instead of 666 with the shipped CTR features).
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

from dataclasses import dataclass, replace

import torch
from torch import nn

from funnelrec.core.errors import ConfigError, DataError
from funnelrec.core.registry import RANKERS
from funnelrec.models.ranking.base import FeatureSpec, RankingModel
from funnelrec.models.ranking.common import FieldEmbedder
from funnelrec.nn.cross import CrossNetV2, GatedCrossNet
from funnelrec.nn.embedding import LinearTerm
from funnelrec.nn.interaction import FactorizationMachine
from funnelrec.nn.mlp import MLP


@dataclass(frozen=True)
class InteractionNetConfig:
    embedding_dim: int = 10
    n_compressed: int = 16
    hidden: tuple[int, ...] = (256, 256)
    dropout: float = 0.0
    batch_norm: bool = False


@dataclass(frozen=True)
class AllInteractionConfig(InteractionNetConfig):
    # False: dense features raw into the MLP; the N×K crossing runs over sparse fields only
    dense_as_fields: bool = True


@dataclass(frozen=True)
class NeuralInteractionConfig(InteractionNetConfig):
    # False: dense features raw into the MLP; the pairwise products run over sparse fields only
    dense_as_fields: bool = True


def raw_dense(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """batch["dense"] (B, Dn), or a one-line DataError when the batch lacks it."""
    if "dense" not in batch:
        raise DataError("model was built with raw dense features but the batch has no 'dense'")
    return batch["dense"]


class FieldCompression(nn.Module):
    """(B, N, D) → (B, K, D): u_k = Σ_n W_{n,k} v_n (a learned mix over the N axis)."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_in, n_out) / n_in**0.5)

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bnd,nk->bkd", v, self.weight)


@RANKERS.register("all_interaction")
class AllInteraction(RankingModel):
    Config = AllInteractionConfig

    def __init__(self, spec: FeatureSpec, config: AllInteractionConfig | None = None) -> None:
        super().__init__(spec)
        self.config = cfg = config or AllInteractionConfig()
        self.linear = LinearTerm(spec.n_embeddings, spec.n_dense)
        self.raw_dense = 0 if cfg.dense_as_fields else spec.n_dense
        self.embed = FieldEmbedder(replace(spec, n_dense=spec.n_dense - self.raw_dense), cfg.embedding_dim)
        N, K = self.embed.n_fields, cfg.n_compressed
        self.compress = FieldCompression(N, K)
        d = N * cfg.embedding_dim + N * K + self.raw_dense
        self.deep = MLP(d, cfg.hidden, cfg.dropout, cfg.batch_norm, out_dim=1)

    def crossed(self, v: torch.Tensor) -> torch.Tensor:
        """v (B, N, D) → Z (B, N, K), z_{n,k} = ⟨v_n, u_k⟩ with U = Wᵀ V (B, K, D)."""
        return torch.bmm(v, self.compress(v).transpose(1, 2))

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        v = self.embed(batch)
        parts = [v.flatten(1), self.crossed(v).flatten(1)]
        if self.raw_dense:
            parts.append(raw_dense(batch))
        h = torch.cat(parts, dim=1)
        return {"ctr": self.linear(batch["sparse"], batch.get("dense")) + self.deep(h).squeeze(-1)}


@RANKERS.register("neural_interaction")
class NeuralInteraction(RankingModel):
    Config = NeuralInteractionConfig

    def __init__(self, spec: FeatureSpec, config: NeuralInteractionConfig | None = None) -> None:
        super().__init__(spec)
        self.config = cfg = config or NeuralInteractionConfig()
        self.linear = LinearTerm(spec.n_embeddings, spec.n_dense)
        self.raw_dense = 0 if cfg.dense_as_fields else spec.n_dense
        self.embed = FieldEmbedder(replace(spec, n_dense=spec.n_dense - self.raw_dense), cfg.embedding_dim)
        n = self.embed.n_fields
        i, j = torch.triu_indices(n, n, offset=1)
        self.register_buffer("i", i, persistent=False)
        self.register_buffer("j", j, persistent=False)
        self.compress = FieldCompression(max(len(i), 1), cfg.n_compressed)
        d = (n + cfg.n_compressed) * cfg.embedding_dim + self.raw_dense
        self.deep = MLP(d, cfg.hidden, cfg.dropout, cfg.batch_norm, out_dim=1)

    def compressed_pairs(self, v: torch.Tensor) -> torch.Tensor:
        """v (B, F, D) → u (B, K, D), u_k = Σ_{i<j} W_{(i,j),k} v_i ⊙ v_j.

        Few fields: gather the P = F(F−1)/2 pairs (index_select), one (P → K) product. Many
        fields (F > 16): u_k = Σ_i v_i ⊙ (A_k v)_i with A_k (F, F) holding W_{(i,j),k} above the
        diagonal — one GEMM (K·F, F) @ (F, B·D) and no (B, P, D) pair tensor, whose gather
        backward dominated the step (2.6× less CPU at F = 37; the gather wins at F = 7).
        """
        B, F, D = v.shape
        W = self.compress.weight[: len(self.i)]  # (P, K); P = 0 with one field → zeros
        if F <= 16:
            pairs = v.index_select(1, self.i) * v.index_select(1, self.j)  # (B, P, D)
            return torch.einsum("bpd,pk->bkd", pairs, W)
        K = W.shape[1]
        A = v.new_zeros(K, F, F)
        A[:, self.i, self.j] = W.T
        vt = v.permute(1, 0, 2).reshape(F, B * D)
        u = (A.view(K * F, F) @ vt).view(K, F, B * D)
        return (u * vt).sum(1).view(K, B, D).permute(1, 0, 2)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        v = self.embed(batch)
        parts = [v.flatten(1), self.compressed_pairs(v).flatten(1)]
        if self.raw_dense:
            parts.append(raw_dense(batch))
        h = torch.cat(parts, dim=1)
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
