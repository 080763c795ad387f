"""Field-aware FM: logit = linear + Σ_{i<j} ⟨v_{i,f_j}, v_{j,f_i}⟩.

Each embedding row holds F' vectors of size D (one per target field): one lookup of a table of
width F'·D, reshaped to (B, Fs, F', D). The fields are the spec's Fs sparse fields (multi-valued
ones mean-pooled into one field when `spec.pool_multi`), plus — with `dense_as_fields` — each
dense feature j as its own field with vectors x_j · W_j (computed without materializing them,
see `FFM`). With `dense_as_fields: false` the dense features enter the linear term only
(a_j x_j, as LR) and the pairs run over the Fs sparse fields alone.

    >>> import torch
    >>> spec = FeatureSpec(n_embeddings=10, n_fields=3)
    >>> FFM(spec, FFMConfig(embedding_dim=2))({"sparse": torch.tensor([[1, 2, 3]])})["ctr"].shape
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
from funnelrec.nn.embedding import LinearTerm


@dataclass(frozen=True)
class FFMConfig:
    embedding_dim: int = 4
    # False: dense features only in the linear term; the field-aware pairs run over the sparse
    # fields alone (F'² pair cost with F' = 7 instead of 37 under the shipped CTR features)
    dense_as_fields: bool = True


def n_sparse_fields(spec: FeatureSpec) -> int:
    """Fields FieldEmbedder yields for "sparse": adjacent same-name columns count once when pooled."""
    names = spec.field_names
    if spec.pool_multi and len(names) == spec.n_fields and len(set(names)) < len(names):
        return 1 + sum(a != b for a, b in zip(names, names[1:]))
    return spec.n_fields


class _FieldAwarePairs(torch.autograd.Function):
    """y_b = ½ (⟨v_b, v_bᵀ⟩ − Σ_i ‖v_{b,i,i}‖²) with the hand-written gradient ∂y/∂v_{i,j} = v_{j,i}
    (i ≠ j), 0 on the diagonal: one transposed copy, one batched dot, one scaled copy back."""

    @staticmethod
    def forward(ctx, v: torch.Tensor) -> torch.Tensor:
        t = v.transpose(1, 2).contiguous()
        ctx.save_for_backward(t)
        B = v.shape[0]
        full = torch.bmm(v.reshape(B, 1, -1), t.reshape(B, -1, 1)).view(B)
        diag = v.diagonal(dim1=1, dim2=2)  # (B, D, F)
        return 0.5 * (full - (diag * diag).sum(dim=(1, 2)))

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (t,) = ctx.saved_tensors
        gv = t * grad.view(-1, 1, 1, 1)
        gv.diagonal(dim1=1, dim2=2).zero_()
        return gv


def field_aware_pairs(v: torch.Tensor) -> torch.Tensor:
    """v (B, F, F, D), v[:, i, f] = feature i's vector towards field f → (B,).

    Σ_{i<j} ⟨v_{i,f_j}, v_{j,f_i}⟩ = ½ (Σ_{i,j} ⟨v_{i,j}, v_{j,i}⟩ − Σ_i ‖v_{i,i}‖²): a dense
    product with the field-transposed tensor instead of a pair gather, whose index backward
    dominated the step (2.6× less CPU per call at B = 2048, F = 37, D = 4).
    """
    return _FieldAwarePairs.apply(v.contiguous())


@RANKERS.register("ffm")
class FFM(RankingModel):
    """Dense features as fields without materializing them: sparse field i (row r_i) holds
    E_i ∈ R^{F'×D}, dense feature j the vectors x_j·W_j with W ∈ R^{Dn×F'×D}; F' = Fs + Dn. Then

        Σ_{pairs} = FFM(E[:, :, :Fs])                                   sparse × sparse (B·Fs²·D)
                  + Σ_{i,j} x_j ⟨E_i[Fs+j], W_{j,i}⟩                     sparse × dense  (B·Fs·Dn·D)
                  + ½ (xᵀ M x − Σ_j M_jj x_j²),  M_jl = ⟨W_{j,Fs+l}, W_{l,Fs+j}⟩   dense × dense (B·Dn²)

    — the same function as FFM over the (B, F', F', D) tensor, at about a third of its work and
    without the (B, Dn, F'·D) dense-field tensor.
    """

    Config = FFMConfig

    def __init__(self, spec: FeatureSpec, config: FFMConfig | None = None) -> None:
        super().__init__(spec)
        self.config = cfg = config or FFMConfig()
        self.n_sparse = n_sparse_fields(spec)
        n_dense = spec.n_dense if cfg.dense_as_fields else 0
        self.n = self.n_sparse + n_dense
        self.linear = LinearTerm(spec.n_embeddings, spec.n_dense)
        self.embed = FieldEmbedder(replace(spec, n_dense=0), self.n * cfg.embedding_dim)
        self.dense_weight = nn.Parameter(torch.randn(n_dense, self.n, cfg.embedding_dim) * 1e-2) if n_dense else None

    def pairs(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Σ_{i<j} ⟨v_{i,f_j}, v_{j,f_i}⟩ over all F' fields → (B,)."""
        Fs = self.n_sparse
        e = self.embed(batch)
        e = e.view(e.shape[0], Fs, self.n, -1)  # (B, Fs, F', D)
        y = field_aware_pairs(e[:, :, :Fs])
        if self.dense_weight is None:
            return y
        x = raw_dense(batch)  # (B, Dn)
        W = self.dense_weight  # (Dn, F', D)
        sd = (e[:, :, Fs:] * W[:, :Fs].transpose(0, 1)).sum(dim=(1, 3))  # (B, Dn): Σ_i ⟨E_i[Fs+j], W_{j,i}⟩
        Wdd = W[:, Fs:]  # (Dn, Dn, D)
        M = (Wdd * Wdd.transpose(0, 1)).sum(-1)  # (Dn, Dn), symmetric
        dd = 0.5 * (((x @ M) * x).sum(1) - (x * x) @ M.diagonal())
        return y + (sd * x).sum(1) + dd

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"ctr": self.linear(batch["sparse"], batch.get("dense")) + self.pairs(batch)}
