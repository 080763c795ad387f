"""Deep & Cross Network family over x0 = flatten(field embeddings) ∈ R^{(F+Dn)·D}.

- "dcn"   (Wang et al. 2017): CrossNet ‖ MLP (parallel), then a linear head.
- "dcnv2" (Wang et al. 2021): CrossNetV2, full rank or a low-rank mixture of experts
          (`rank` > 0, `n_experts`); `structure` "parallel" (cross ‖ MLP) or "stacked"
          (MLP on top of the cross output). `fused` (default): on float32 with dense features raw
          in x0, the step runs the pooled lookup, the full-rank cross stack and the ReLU MLP as
          one autograd node each (same formulas; docs/BENCHMARKS.md Session 5).
- "gdcn"  (Wang et al. 2023): GatedCrossNet, stacked with an MLP.

    >>> import torch
    >>> spec = FeatureSpec(n_embeddings=10, n_fields=2)
    >>> b = {"sparse": torch.tensor([[1, 2]])}
    >>> [m(b)["ctr"].shape for m in (DCN(spec), DCNv2(spec), GDCN(spec))]
    [torch.Size([1]), torch.Size([1]), torch.Size([1])]
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from funnelrec.core.errors import ConfigError
from funnelrec.core.registry import RANKERS
from funnelrec.models.ranking.base import FeatureSpec, RankingModel
from funnelrec.models.ranking.common import FieldEmbedder
from funnelrec.nn import precision
from funnelrec.nn.cross import CrossNet, CrossNetV2, GatedCrossNet
from funnelrec.nn.embedding import gather_pool
from funnelrec.nn.fused_fm import can_fuse, fused_pool
from funnelrec.nn.fused_fm import prepare as prepare_fused
from funnelrec.nn.mlp import MLP


@dataclass(frozen=True)
class DCNConfig:
    embedding_dim: int = 10
    cross_layers: int = 3
    hidden: tuple[int, ...] = (256, 256)
    dropout: float = 0.0
    batch_norm: bool = False
    structure: str = "parallel"  # "parallel" | "stacked"
    rank: int = 0  # dcnv2: 0 = full-rank W, > 0 = low-rank mixture
    n_experts: int = 1  # dcnv2 low-rank experts
    # False: dense features join x0 as raw scalars (x0 = [flatten(E), dense], width F·D + Dn, as
    # in the DCN paper) instead of as D-dim fields x_j·v_j — with many dense features the cross
    # layers' d² cost shrinks accordingly
    dense_as_fields: bool = True

    def __post_init__(self) -> None:
        if self.structure not in ("parallel", "stacked"):
            raise ConfigError(f"structure {self.structure!r}; known: parallel, stacked")


class _CrossModel(RankingModel):
    Config = DCNConfig

    def __init__(self, spec: FeatureSpec, config: DCNConfig | None = None) -> None:
        super().__init__(spec)
        self.config = cfg = config or self.Config()
        raw = spec.n_dense if not cfg.dense_as_fields else 0
        self.embed = FieldEmbedder(replace(spec, n_dense=spec.n_dense - raw), cfg.embedding_dim)
        self.raw_dense = raw
        d = self.embed.n_fields * cfg.embedding_dim + raw
        self.cross = self._cross(d, cfg)
        fused = getattr(cfg, "fused", False)  # DCNv2Config's: nn.fused_mlp (ReLU, no dropout/BN only)
        if cfg.structure == "parallel":
            self.deep = MLP(d, cfg.hidden, cfg.dropout, cfg.batch_norm, fused=fused)
            self.head = nn.Linear(d + self.deep.out_dim, 1)
        else:
            self.deep = MLP(d, cfg.hidden, cfg.dropout, cfg.batch_norm, out_dim=1, fused=fused)
            self.head = None

    def _cross(self, d: int, cfg: DCNConfig) -> nn.Module:  # pragma: no cover
        raise NotImplementedError

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x0 = self.embed(batch).flatten(1)
        if self.raw_dense:
            x0 = torch.cat([x0, batch["dense"]], dim=1)
        if self.head is not None:
            out = self.head(torch.cat([self.cross(x0), self.deep(x0)], dim=1))
        else:
            out = self.deep(self.cross(x0))
        return {"ctr": out.squeeze(-1)}


@RANKERS.register("dcn")
class DCN(_CrossModel):
    def _cross(self, d: int, cfg: DCNConfig) -> nn.Module:
        return CrossNet(d, cfg.cross_layers)


@dataclass(frozen=True)
class DCNv2Config(DCNConfig):
    # float32 CPU training step in fewer passes, same formulas and parameters: the lookup +
    # genre pooling + raw dense concat as one numba kernel pair (nn.fused_fm.fused_pool; no
    # (G, F) @ (B, F, D) broadcast matmul), the full-rank cross stack as one node
    # (nn.cross.cross_v2_stack) and the ReLU MLP through nn.fused_mlp
    fused: bool = True


@RANKERS.register("dcnv2")
class DCNv2(_CrossModel):
    Config = DCNv2Config

    def __init__(self, spec: FeatureSpec, config: DCNv2Config | None = None) -> None:
        super().__init__(spec, config)
        pool = self.embed.pool
        group = pool.argmax(0) if pool is not None else torch.arange(spec.n_fields)
        self.register_buffer("field_group", group.to(torch.long), persistent=False)
        self.n_groups = int(pool.shape[0]) if pool is not None else spec.n_fields
        if getattr(self.config, "fused", False):
            prepare_fused(self.embed.embedding.embedding.weight.shape[1])  # its kernel pair, now, not in the first step

    def _cross(self, d: int, cfg: DCNConfig) -> nn.Module:
        return CrossNetV2(d, cfg.cross_layers, cfg.rank, cfg.n_experts, fused=getattr(cfg, "fused", False))

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        weight = self.embed.embedding.embedding.weight
        if not (self.config.fused and self.embed.dense is None and weight.dtype == torch.float32):
            return super().forward(batch)
        sparse = batch["sparse"]
        raw = batch["dense"] if self.raw_dense else None
        grad_cols = None
        if can_fuse(weight, sparse):  # lookup + pooling + concat in one kernel pair (nn.fused_fm)
            x0 = fused_pool(weight, sparse, self.field_group, self.n_groups, raw)  # (B, G·D + Dn)
            # the deep part's gradient for the raw dense columns is not wanted: x0's backward drops it
            grad_cols = (x0.shape[1] - raw.shape[1] or None) if raw is not None and not raw.requires_grad else None
        else:
            x0 = gather_pool(weight, sparse, self.field_group, self.n_groups).flatten(1)  # (B, G·D)
            if raw is not None:
                x0 = torch.cat([x0, raw], dim=1)
        if self.head is None:
            return {"ctr": self.deep(self.cross(x0)).squeeze(-1)}
        # head(cat([cross, deep])) as two matrix-vector products on the halves of its weight: no
        # (B, d + H) concat forward, no split of its gradient backward
        w, d = self.head.weight[0], x0.shape[1]
        if precision.bf16_enabled():  # fit with matmul_precision bf16: no mv under oneDNN's bf16 (nn/precision.py)
            # the cross half of the head inside the cross stack's own node (nn.cross `cross_v2_dot`)
            return {"ctr": self.cross.dot(x0, w[:d]) + self.deep.forward_with_head(x0, w[d:], self.head.bias, grad_cols)}
        return {"ctr": torch.addmv(self.head.bias, self.cross(x0), w[:d]) + torch.mv(self.deep(x0, grad_cols), w[d:])}


@dataclass(frozen=True)
class GDCNConfig(DCNConfig):
    structure: str = "stacked"


@RANKERS.register("gdcn")
class GDCN(_CrossModel):
    Config = GDCNConfig

    def _cross(self, d: int, cfg: DCNConfig) -> nn.Module:
        return GatedCrossNet(d, cfg.cross_layers)
