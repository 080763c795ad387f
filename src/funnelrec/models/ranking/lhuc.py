"""LHUC ranker: an MLP whose hidden layers are gated by personal features.

    V = field embeddings (B, F', D);  p = [V_f for f in gate fields] (stop-gradient optional)
    logit = linear + LHUCMLP(flatten V, flatten p)

Gate fields: the spec's fields named in `gate_fields` (default: those whose name starts with
"user" — user_id, user_* counts); if the spec has no names, the first field.

    >>> import torch
    >>> spec = FeatureSpec(n_embeddings=10, n_fields=2, field_names=("user_id", "item_id"))
    >>> LHUC(spec)({"sparse": torch.tensor([[1, 2]])})["ctr"].shape
    torch.Size([1])
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from funnelrec.core.errors import ConfigError
from funnelrec.core.registry import RANKERS
from funnelrec.models.ranking.base import FeatureSpec, RankingModel
from funnelrec.models.ranking.common import FieldEmbedder
from funnelrec.nn.embedding import LinearTerm
from funnelrec.nn.lhuc import LHUCMLP


@dataclass(frozen=True)
class LHUCConfig:
    embedding_dim: int = 10
    hidden: tuple[int, ...] = (256, 256)
    gate_fields: tuple[str, ...] = ()
    gate_hidden: int = 64
    detach_gate: bool = True  # gate does not push gradients into the shared embeddings
    dropout: float = 0.0


def gate_columns(spec: FeatureSpec, names: tuple[str, ...]) -> list[int]:
    if names:
        missing = [n for n in names if n not in spec.field_names]
        if missing:
            raise ConfigError(f"gate fields {missing} not among the spec's fields {list(spec.field_names)}")
        return [k for k, n in enumerate(spec.field_names) if n in names]
    cols = [k for k, n in enumerate(spec.field_names) if n.startswith("user")]
    return cols or [0]


@RANKERS.register("lhuc")
class LHUC(RankingModel):
    Config = LHUCConfig

    def __init__(self, spec: FeatureSpec, config: LHUCConfig | None = None) -> None:
        super().__init__(spec)
        self.config = cfg = config or LHUCConfig()
        self.linear = LinearTerm(spec.n_embeddings, spec.n_dense)
        self.embed = FieldEmbedder(spec, cfg.embedding_dim)
        self.register_buffer("gate_cols", torch.tensor(gate_columns(spec, cfg.gate_fields)), persistent=False)
        D = cfg.embedding_dim
        self.mlp = LHUCMLP(self.embed.n_fields * D, len(self.gate_cols) * D, cfg.hidden, cfg.dropout, cfg.gate_hidden)
        self.out = torch.nn.Linear(self.mlp.out_dim, 1)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        v = self.embed(batch)
        p = v[:, self.gate_cols].flatten(1)
        if self.config.detach_gate:
            p = p.detach()
        deep = self.out(self.mlp(v.flatten(1), p)).squeeze(-1)
        return {"ctr": self.linear(batch["sparse"], batch.get("dense")) + deep}
