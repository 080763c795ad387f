"""Pieces shared by the CTR model zoo: the field embedder and the model builder.

`FieldEmbedder`: batch → (B, F', D) with F' = F sparse fields + Dn dense fields (each dense
feature x_j enters as x_j · v_j), through ONE lookup of the shared table on "sparse" (B, F).
With `spec.pool_multi` the columns of a multi-valued field (adjacent, same name) become one
field, the mean of its non-padding embeddings: e_g = Σ_{f∈g} e_f / max(1, #{f∈g: row_f > 0}),
so F' = G groups + Dn.

`build_ranker(name, spec, config)`: RANKERS lookup + strict config (`from_dict`), the one way
the CLI, evaluation and tests build a ranking model from YAML.

    >>> import torch
    >>> spec = FeatureSpec(n_embeddings=10, n_fields=3, n_dense=2)
    >>> FieldEmbedder(spec, 4)({"sparse": torch.ones(5, 3, dtype=torch.long), "dense": torch.zeros(5, 2)}).shape
    torch.Size([5, 5, 4])
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from typing import Any

import torch
from torch import nn

from funnelrec.core.config import from_dict
from funnelrec.core.errors import ConfigError, DataError
from funnelrec.core.persist import record_build
from funnelrec.core.registry import RANKERS
from funnelrec.models.ranking.base import FeatureSpec, RankingModel
from funnelrec.nn.embedding import DenseFields, FieldEmbedding


class FieldEmbedder(nn.Module):
    def __init__(self, spec: FeatureSpec, dim: int) -> None:
        super().__init__()
        if spec.n_embeddings < 2 or spec.n_fields < 1:
            raise ConfigError(f"FeatureSpec needs ≥ 2 embedding rows and ≥ 1 field, got {spec}")
        self.embedding = FieldEmbedding(spec.n_embeddings, dim)
        self.dense = DenseFields(spec.n_dense, dim) if spec.n_dense else None
        self.register_buffer("pool", None)
        n_sparse = spec.n_fields
        names = spec.field_names
        if spec.pool_multi and len(names) == spec.n_fields and len(set(names)) < len(names):
            groups = [0]
            for a, b in zip(names, names[1:]):
                groups.append(groups[-1] + (a != b))
            n_sparse = groups[-1] + 1
            assign = torch.zeros(n_sparse, spec.n_fields)
            assign[torch.tensor(groups), torch.arange(spec.n_fields)] = 1.0
            self.pool = assign  # (G, F) 0/1: field → group (a buffer: saved, moved with the model)
        self.n_fields = n_sparse + spec.n_dense
        self.dim = dim

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """batch["sparse"] (B, F) [+ batch["dense"] (B, Dn)] → (B, F' + Dn, D)."""
        sparse = batch["sparse"]
        v = self.embedding(sparse)
        if self.pool is not None:
            counts = ((sparse > 0).to(v.dtype) @ self.pool.T).clamp_min(1.0)  # (B, G)
            v = torch.matmul(self.pool, v) / counts.unsqueeze(-1)  # (G, F) @ (B, F, D) → (B, G, D)
        if self.dense is not None:
            if "dense" not in batch:
                raise DataError("model was built with dense features but the batch has no 'dense'")
            v = torch.cat([v, self.dense(batch["dense"])], dim=1)
        return v


def load_all() -> None:
    """Import every module of this package so that every model is registered."""
    import funnelrec.models.ranking as pkg

    for m in pkgutil.iter_modules(pkg.__path__):
        importlib.import_module(f"{pkg.__name__}.{m.name}")


def build_ranker(name: str, spec: FeatureSpec, config: dict[str, Any] | None = None) -> RankingModel:
    """Build registered model `name` from a plain dict config (unknown keys are errors).

    The model remembers (name, spec, its full resolved config as a dict), so an artifact
    rebuilds it through this function — the registry — and loads only its weights
    (core/persist.py); later changes of a config default do not change a saved model."""
    load_all()
    cls = RANKERS.get(name)
    cfg_cls = getattr(cls, "Config", None)
    if cfg_cls is None:
        return record_build(cls(spec), build_ranker, name, spec, dict(config or {}))
    cfg = from_dict(cfg_cls, config or {}, f"{name} config")
    return record_build(cls(spec, cfg), build_ranker, name, spec, _plain(cfg))


def _plain(cfg: Any) -> dict[str, Any]:
    """A config dataclass as the dict `from_dict` reads back into the same config."""
    return {f.name: getattr(cfg, f.name) if not dataclasses.is_dataclass(getattr(cfg, f.name))
            else _plain(getattr(cfg, f.name)) for f in dataclasses.fields(cfg) if f.init}
