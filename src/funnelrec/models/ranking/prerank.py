"""Two-tower pre-ranker: a cheap scorer between merge/filter and the fine ranker.

    e_u = mean of the user's field embeddings  (B, D),  u = MLP_u(e_u) ∈ R^d
    e_i = mean of the item's field embeddings  (B, D),  v = MLP_i(e_i) ∈ R^d
    score(u, i) = ⟨u, v⟩ + b_i + w · x_ui                                    (B,)

x_ui (B, Dn): the cheap recall-source features of the pair (which channels recalled it, at what
rank; features/candidates.py) — known at pre-rank time without any model.

The towers never see each other, so every item vector (and bias) is computed once and cached
(`item_table`); a request costs one user-tower pass plus a (N, d) gather and a mat-vec.
Inputs are the embedding rows of the fine ranker's `FeatureEncoder` ("user" (B, F_u) and "item"
(B, F_i) int64, 0 = padding). It is trained (train/, pipeline/stages.py) to reproduce the fine
ranker's scores — distillation, not the original labels.

    >>> import torch
    >>> m = TwoTowerPrerank(n_embeddings=20, dim=8, n_dense=2)
    >>> m({"user": torch.tensor([[1, 2]]), "item": torch.tensor([[3, 4, 0]]), "dense": torch.zeros(1, 2)})["ctr"].shape
    torch.Size([1])
"""

from __future__ import annotations

import torch
from torch import nn

from funnelrec.core.persist import record_init


class _Tower(nn.Module):
    def __init__(self, emb: nn.Embedding, dim: int, hidden: tuple[int, ...]) -> None:
        super().__init__()
        self.emb = emb
        layers: list[nn.Module] = []
        width = emb.embedding_dim
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, dim))
        self.mlp = nn.Sequential(*layers)

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        """rows (B, F) → (B, d): MLP of the masked mean of the F field embeddings."""
        mask = (rows > 0).unsqueeze(-1).float()
        e = (self.emb(rows) * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return self.mlp(e)


class TwoTowerPrerank(nn.Module):
    def __init__(self, n_embeddings: int, dim: int = 32, hidden: tuple[int, ...] = (64,), emb_dim: int = 32,
                 n_dense: int = 0) -> None:
        super().__init__()
        # rebuilt from these on load (core/persist.py): an artifact holds its weights, not the object
        record_init(self, n_embeddings, dim, tuple(hidden), emb_dim, n_dense)
        self.dense = nn.Linear(n_dense, 1, bias=False) if n_dense else None
        self.user_emb = nn.Embedding(n_embeddings, emb_dim, padding_idx=0)
        self.item_emb = nn.Embedding(n_embeddings, emb_dim, padding_idx=0)
        nn.init.normal_(self.user_emb.weight, std=0.05)
        nn.init.normal_(self.item_emb.weight, std=0.05)
        self.user_tower = _Tower(self.user_emb, dim, hidden)
        self.item_tower = _Tower(self.item_emb, dim, hidden)
        self.item_bias = nn.Linear(dim, 1)  # b_i from the item vector (also cached)

    def item_table(self, item_rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """All items at once: vectors (I, d) and biases (I,) to cache."""
        v = self.item_tower(item_rows)
        return v, self.item_bias(v).squeeze(-1)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        u = self.user_tower(batch["user"])
        v = self.item_tower(batch["item"])
        out = (u * v).sum(-1) + self.item_bias(v).squeeze(-1)
        if self.dense is not None:
            out = out + self.dense(batch["dense"]).squeeze(-1)
        return {"ctr": out}
