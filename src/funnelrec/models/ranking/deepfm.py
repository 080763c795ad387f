"""DeepFM (Guo et al. 2017): logit = linear + FM(V) + MLP(x), V = field embeddings (B, F', D)
shared by the FM and the deep part.

- `dense_as_fields: true` (the paper's form): each dense feature x_j is a field x_j·v_j, so
  V is (B, G + Dn, D) and x = flatten(V);
- `dense_as_fields: false`: V holds the G sparse fields only and the dense features enter raw,
  x = [flatten(V), dense] of width G·D + Dn (as DCNv2's option), plus their linear term a·x.
  With 30 dense features this cuts the FM and the first MLP layer from 37 fields to 7.

Multi-valued columns (`spec.pool_multi`) are one field, the mean of their non-padding rows,
computed with the lookup in one autograd node (nn.embedding.gather_pool). When V holds only
sparse fields (no dense-as-fields) on a float32 CPU model, lookup + pooling + FM + the sparse
linear term (and the raw dense columns' concat and linear term) run as one numba kernel pair
(nn.fused_fm, `fused: true`, the default): same formulas, ~30 fewer eager ops per step; the
MLP then skips the raw dense columns' input gradient.

    >>> import torch
    >>> spec = FeatureSpec(n_embeddings=10, n_fields=2)
    >>> DeepFM(spec)({"sparse": torch.tensor([[1, 2]])})["ctr"].shape
    torch.Size([1])
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from funnelrec.core.errors import DataError
from funnelrec.core.registry import RANKERS
from funnelrec.models.ranking.base import FeatureSpec, RankingModel
from funnelrec.nn.embedding import DenseFields, FieldEmbedding, LinearTerm, PooledFieldEmbedding, field_groups
from funnelrec.nn.fused_fm import can_fuse, fused_fm_block
from funnelrec.nn.fused_fm import prepare as prepare_fused
from funnelrec.nn.interaction import FactorizationMachine
from funnelrec.nn.mlp import MLP


@dataclass(frozen=True)
class DeepFMConfig:
    embedding_dim: int = 10
    hidden: tuple[int, ...] = (256, 256)
    dropout: float = 0.0
    batch_norm: bool = False
    dense_as_fields: bool = True  # False: dense features raw into the MLP (and linear term), FM over sparse fields
    fused: bool = True  # numba kernels for lookup + pooling + FM + linear when V has sparse fields only


@RANKERS.register("deepfm")
class DeepFM(RankingModel):
    Config = DeepFMConfig

    def __init__(self, spec: FeatureSpec, config: DeepFMConfig | None = None) -> None:
        super().__init__(spec)
        self.config = cfg = config or DeepFMConfig()
        d = cfg.embedding_dim
        self.linear = LinearTerm(spec.n_embeddings, spec.n_dense)
        groups = field_groups(spec.field_names) if spec.pool_multi and len(spec.field_names) == spec.n_fields else []
        if groups and groups[-1] + 1 < spec.n_fields:
            self.embedding: FieldEmbedding = PooledFieldEmbedding(spec.n_embeddings, d, groups)
            n_sparse = groups[-1] + 1
        else:
            self.embedding = FieldEmbedding(spec.n_embeddings, d)
            n_sparse = spec.n_fields
        as_fields = spec.n_dense if cfg.dense_as_fields else 0
        self.dense_fields = DenseFields(as_fields, d) if as_fields else None
        self.raw_dense = spec.n_dense - as_fields
        self.n_fields = n_sparse + as_fields
        self.register_buffer("field_group", torch.tensor(groups or list(range(spec.n_fields)), dtype=torch.long),
                             persistent=False)
        self.n_sparse = n_sparse
        self.fm = FactorizationMachine()
        self.deep = MLP(self.n_fields * d + self.raw_dense, cfg.hidden, cfg.dropout, cfg.batch_norm, out_dim=1,
                        fused=cfg.fused)
        if cfg.fused and self.dense_fields is None:
            prepare_fused(d)  # the kernel pair for this D, compiled or loaded now rather than in the first step

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        sparse, dense = batch["sparse"], batch.get("dense")
        if self.spec.n_dense and dense is None:
            raise DataError("model was built with dense features but the batch has no 'dense'")
        if self.config.fused and self.dense_fields is None and can_fuse(self.embedding.embedding.weight, sparse):
            raw = dense if self.raw_dense else None
            x, fm, lin = fused_fm_block(self.embedding.embedding.weight, self.linear.weight.weight, sparse,
                                        self.field_group, self.n_sparse, raw,
                                        self.linear.dense.weight if self.raw_dense else None)  # (B, G·D + Dn), (B,), (B,)
            # the raw dense columns' gradient is not wanted (unless dense itself needs one)
            grad_cols = (self.n_sparse * self.config.embedding_dim or None) if raw is not None and not raw.requires_grad else None
            return {"ctr": lin + self.linear.bias + fm + self.deep(x, grad_cols).squeeze(-1)}
        v = self.embedding(sparse)  # (B, G, D)
        if self.dense_fields is not None:
            v = torch.cat([v, self.dense_fields(dense)], dim=1)  # (B, G + Dn, D)
        x = v.flatten(1)
        if self.raw_dense:
            x = torch.cat([x, dense], dim=1)  # (B, G·D + Dn)
        logit = self.linear(sparse, dense) + self.fm(v) + self.deep(x).squeeze(-1)
        return {"ctr": logit}
