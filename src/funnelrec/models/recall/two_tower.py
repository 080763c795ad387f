"""Two-tower retrieval model (YouTubeDNN-style user tower, attribute-aware item tower).

Item tower:  x_i = [E_id(i) ; pool(E_attr(a_i,1)) ; … ; pool(E_attr(a_i,F))]  → MLP → v_i / ‖v_i‖
User tower:  x_u = [E_prof(p_u,1) ; … ; E_prof(p_u,P) ; pool_{j ∈ hist(u)} E_hist(j)] → MLP → u / ‖u‖
Score:       s(u, i) = ⟨u, v_i⟩ / τ          (cosine over temperature τ)

Shapes (B batch, F item attribute fields, A values per field, P profile fields, L history, D dim):
    item: (B,) int64 item index 0..I-1            item_attrs: (B, F, A) int64 rows (0 = pad)
    profile: (B, P) int64 rows (0 = unknown)      hist: (B, L) int64 item indices (PAD = -1)
Outputs are (B, D_out) L2-normalized; the ANN index stores item vectors and is searched by inner
product, which ranks exactly as s(u, i) for any τ > 0.

Gradients of the four embedding tables: dense by default (a full (rows, D) tensor per table and
step); with `sparse_grad=True` (the tables' `nn.Embedding.sparse` flag) they are row-sparse COO
tensors holding only the rows a batch looked up, for a row-wise optimizer such as
`torch.optim.SparseAdam` (lazy Adam: untouched rows and their moments stay as they are). At a
million items a batch touches ~10⁵ of the 2·10⁶ id/history rows; the dense gradient plus a dense
Adam over all rows cost ~1 s per step there. Forward values are identical either way.

    >>> import torch
    >>> spec = TwoTowerSpec(n_items=5, n_attr_rows=4, n_item_fields=1, n_profile_rows=3, n_profile_fields=2)
    >>> m = TwoTowerModel(spec, TwoTowerConfig(embedding_dim=8, user_hidden=(16,), item_hidden=(16,), output_dim=8))
    >>> v = m.item_tower(torch.tensor([0, 4]), torch.tensor([[[1, 2]], [[3, 0]]]))
    >>> u = m.user_tower(torch.tensor([[1, 2]]), torch.tensor([[0, 3, -1]]))
    >>> tuple(v.shape), tuple(u.shape), round(float(v.norm(dim=1)[0]), 4)
    ((2, 8), (1, 8), 1.0)

The model only computes: feature tensors are built by the caller (recall/vector.py), losses live
in train/retrieval_losses.py and the loop in train/trainer.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn

from funnelrec.core.errors import ConfigError
from funnelrec.core.persist import record_init
from funnelrec.core.registry import RECALL_MODELS


@dataclass(frozen=True)
class TwoTowerConfig:
    embedding_dim: int = 64
    user_hidden: tuple[int, ...] = (256,)
    item_hidden: tuple[int, ...] = (256,)
    output_dim: int = 64
    temperature: float = 0.05
    pooling: str = "mean"  # history pooling: "mean" | "sum"
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.pooling not in ("mean", "sum"):
            raise ConfigError(f"unknown pooling {self.pooling!r}; known: mean, sum")
        if self.temperature <= 0:
            raise ConfigError(f"temperature must be > 0, got {self.temperature}")
        if self.embedding_dim < 1 or self.output_dim < 1:
            raise ConfigError("embedding_dim and output_dim must be ≥ 1")


@dataclass(frozen=True)
class TwoTowerSpec:
    """Sizes of the inputs, known after feature building."""

    n_items: int
    n_attr_rows: int  # rows of the item-attribute table, incl. row 0 = padding
    n_item_fields: int  # F
    n_profile_rows: int  # rows of the profile table, incl. row 0 = unknown
    n_profile_fields: int  # P


def _mlp(d_in: int, hidden: tuple[int, ...], d_out: int, dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for h in hidden:
        layers += [nn.Linear(d_in, h), nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        d_in = h
    layers.append(nn.Linear(d_in, d_out))
    return nn.Sequential(*layers)


def _lookups(rows: torch.Tensor, w: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The bag's nonzero lookups as (table row, weight, bag index) arrays."""
    N, A = rows.shape
    r = rows.reshape(-1).numpy()
    v = w.reshape(-1).numpy()
    keep = v != 0
    return r[keep], v[keep], np.repeat(np.arange(N), A)[keep]


class _WeightedBagSum(torch.autograd.Function):
    """out[n] = Σ_a w[n, a] · W[rows[n, a]]  — forward by `embedding_bag`, backward by one scipy
    CSR product ∂W = Mᵀ·∂out with M[n, rows[n, a]] = w[n, a]. torch's own embedding backward
    on CPU (a sort + serial index_put) was 10–30× slower here for ~10⁵ looked-up rows."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor, rows: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(rows, w)
        ctx.n_rows = weight.shape[0]
        ctx.weight_shape = weight.shape
        return F.embedding_bag(rows, weight, per_sample_weights=w, mode="sum")

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        rows, w = ctx.saved_tensors
        r, v, n_idx = _lookups(rows, w)
        m = sp.csr_matrix((v.astype(np.float32), (r, n_idx)), shape=(ctx.n_rows, rows.shape[0]))
        grad_w = torch.from_numpy(np.asarray(m @ grad_out.detach().numpy().astype(np.float32)))
        return grad_w.to(grad_out.dtype), None, None


class _WeightedBagSumRowSparse(_WeightedBagSum):
    """The same out[n] = Σ_a w[n, a] · W[rows[n, a]]; the backward returns ∂W as a sparse COO
    tensor with one value row per distinct row with w ≠ 0 (U rows, sorted): values = M_Uᵀ·∂out,
    one scipy CSR product over (U, N) instead of (R, N). torch's `embedding_bag(sparse=True)` instead returns
    one value row per lookup (2·10⁵ at batch 4096 × history 50), which SparseAdam's coalesce then
    sorts and sums: on ml-100k's 1,683 rows that made a step 2× slower than dense Adam.
    The forward is `_WeightedBagSum`'s."""

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        rows, w = ctx.saved_tensors
        r, v, n_idx = _lookups(rows, w)
        uniq, inv = np.unique(r, return_inverse=True)
        g = grad_out.detach().numpy()
        m = sp.csr_matrix((v.astype(g.dtype), (inv.reshape(-1), n_idx)), shape=(len(uniq), rows.shape[0]))
        values = torch.from_numpy(np.ascontiguousarray(m @ g))
        grad_w = torch.sparse_coo_tensor(torch.from_numpy(uniq.astype(np.int64)).unsqueeze(0), values,
                                         ctx.weight_shape, is_coalesced=True, check_invariants=False)
        return grad_w, None, None


def bag_pool(weight: torch.Tensor, rows: torch.Tensor, mask: torch.Tensor, mean: bool = True,
             sparse: bool = False) -> torch.Tensor:
    """Masked sum/mean of embedding rows: weight (R, D), rows (..., A) int64, mask (..., A) bool
    → (..., D). mean: Σ_a mask·W[rows] / max(1, Σ_a mask); an empty bag pools to zeros.
    A lookup with mask false gets no gradient. sparse: ∂weight is a sparse COO tensor with one
    value row per distinct looked-up row instead of a dense (R, D) tensor."""
    lead = rows.shape[:-1]
    r2 = rows.reshape(-1, rows.shape[-1]).clamp_min(0)
    m2 = mask.reshape(-1, rows.shape[-1]).to(weight.dtype)
    if mean:
        m2 = m2 / m2.sum(1, keepdim=True).clamp_min(1.0)
    if torch.is_grad_enabled() and weight.requires_grad:
        out = (_WeightedBagSumRowSparse if sparse else _WeightedBagSum).apply(weight, r2, m2)
    else:
        out = F.embedding_bag(r2, weight, per_sample_weights=m2, mode="sum")
    return out.reshape(*lead, weight.shape[1])


@RECALL_MODELS.register("two_tower")
class TwoTowerModel(nn.Module):
    """sparse_grad: the embedding tables produce row-sparse gradients (see the module docstring);
    kept in each table's `nn.Embedding.sparse`, so parameters and pickles are the same either way."""

    def __init__(self, spec: TwoTowerSpec, config: TwoTowerConfig | None = None, sparse_grad: bool = False) -> None:
        super().__init__()
        self.spec = spec
        self.config = cfg = config or TwoTowerConfig()
        record_init(self, spec, cfg, sparse_grad=sparse_grad)  # rebuilt from these on load (core/persist.py)
        D = cfg.embedding_dim
        self.item_id = nn.Embedding(spec.n_items + 1, D, padding_idx=0)  # row = item + 1
        self.item_attr = nn.Embedding(spec.n_attr_rows, D, padding_idx=0)
        self.hist_item = nn.Embedding(spec.n_items + 1, D, padding_idx=0)
        self.profile = nn.Embedding(max(spec.n_profile_rows, 1), D, padding_idx=0)
        for e in self.embedding_tables():
            nn.init.normal_(e.weight, std=0.05)
            with torch.no_grad():
                e.weight[0].zero_()
            e.sparse = sparse_grad
        self.item_mlp = _mlp(D * (1 + spec.n_item_fields), cfg.item_hidden, cfg.output_dim, cfg.dropout)
        self.user_mlp = _mlp(D * (1 + spec.n_profile_fields), cfg.user_hidden, cfg.output_dim, cfg.dropout)

    def embedding_tables(self) -> tuple[nn.Embedding, ...]:
        """The (rows, D) lookup tables: item id, item attribute, history item, user profile."""
        return (self.item_id, self.item_attr, self.hist_item, self.profile)

    @property
    def temperature(self) -> float:
        return self.config.temperature

    def item_tower(self, item: torch.Tensor, item_attrs: torch.Tensor) -> torch.Tensor:
        """item (B,), item_attrs (B, F, A) → (B, D_out) unit vectors."""
        B = item.shape[0]
        e_id = self.item_id(item + 1)  # (B, D)
        e_attr = bag_pool(self.item_attr.weight, item_attrs, item_attrs > 0, sparse=self.item_attr.sparse)  # (B, F, D)
        x = torch.cat([e_id, e_attr.reshape(B, -1)], dim=1)
        return F.normalize(self.item_mlp(x), dim=-1)

    def user_tower(self, profile: torch.Tensor, hist: torch.Tensor) -> torch.Tensor:
        """profile (B, P), hist (B, L) item indices with PAD = -1 → (B, D_out) unit vectors."""
        B = profile.shape[0]
        e_prof = self.profile(profile).reshape(B, -1)  # (B, P·D)
        e_hist = bag_pool(self.hist_item.weight, hist + 1, hist >= 0, mean=self.config.pooling == "mean",
                          sparse=self.hist_item.sparse)
        x = torch.cat([e_prof, e_hist], dim=1)
        return F.normalize(self.user_mlp(x), dim=-1)

    def score(self, user: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
        """Row-wise logits ⟨u, v⟩/τ: user (B, D), item (B, D) or (B, N, D) → (B,) or (B, N)."""
        if item.dim() == 3:
            return torch.einsum("bd,bnd->bn", user, item) / self.temperature
        return (user * item).sum(-1) / self.temperature

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """{"profile", "hist", "item", "item_attrs"} → {"user": (B, D), "item": (B, D)}."""
        return {
            "user": self.user_tower(batch["profile"], batch["hist"]),
            "item": self.item_tower(batch["item"], batch["item_attrs"]),
        }
