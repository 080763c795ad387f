"""MMoE: multi-gate mixture-of-experts multi-task ranker (Ma et al., KDD 2018).

    x     = [E(sparse) flattened, dense]                                     (B, F·D + Dn)
    y^k   = Σ_i Dropout(softmax(W_k x))_i · Expert_i(x)                      (B, H) per task
    logit^k = Tower_k(y^k)                                                   (B,) per task

Returns one logit per task of `FeatureSpec.tasks`, e.g. {"click": …, "like": …}.

    >>> import torch
    >>> from funnelrec.models.ranking.din import toy_batch
    >>> spec = FeatureSpec(n_embeddings=50, n_fields=3, tasks=("click", "like"))
    >>> m = MMoE(spec, MMoEConfig(embedding_dim=4, expert_hidden=(8,), tower_hidden=(4,)))
    >>> {k: v.shape for k, v in m(toy_batch(spec)).items()}
    {'click': torch.Size([8]), 'like': torch.Size([8])}
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from funnelrec.core.errors import ConfigError
from funnelrec.core.registry import RANKERS
from funnelrec.models.ranking.base import FeatureSpec, RankingModel
from funnelrec.models.ranking.din import (
    check_activation,
    field_inputs,
    field_width,
    require,
    shared_embedding,
)
from funnelrec.nn import experts


@dataclass(frozen=True)
class MMoEConfig:
    embedding_dim: int = 16
    n_experts: int = 4
    expert_hidden: tuple[int, ...] = (128, 64)
    gate_dropout: float = 0.1  # dropout on the gates' softmax output
    tower_hidden: tuple[int, ...] = (32,)
    activation: str = "relu"

    def __post_init__(self) -> None:
        check_activation(self.activation, "MMoEConfig.activation")
        if self.n_experts < 1 or not self.expert_hidden:
            raise ConfigError("MMoEConfig needs n_experts ≥ 1 and at least one expert_hidden width")
        if not 0 <= self.gate_dropout < 1:
            raise ConfigError(f"MMoEConfig.gate_dropout must be in [0, 1), got {self.gate_dropout}")


def task_logits(towers: experts.ParallelMLP, ys: list[torch.Tensor], tasks: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Per-task towers run as one ParallelMLP: T × (B, H) → {task: (B,) logit}."""
    logits = towers(torch.stack(ys, dim=1)).squeeze(-1)  # (B, T)
    return dict(zip(tasks, logits.unbind(1), strict=True))


@RANKERS.register("mmoe")
class MMoE(RankingModel):
    Config = MMoEConfig
    multi_task = True

    def __init__(self, spec: FeatureSpec, config: MMoEConfig | None = None) -> None:
        super().__init__(spec)
        self.config = cfg = config or MMoEConfig()
        T = len(spec.tasks)
        self.embedding = shared_embedding(spec, cfg.embedding_dim)
        self.mmoe = experts.MMoE(
            field_width(spec, cfg.embedding_dim), cfg.n_experts, T, cfg.expert_hidden, cfg.gate_dropout, cfg.activation
        )
        self.towers = experts.ParallelMLP(T, self.mmoe.out_dim, cfg.tower_hidden, cfg.activation, out_dim=1)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        require(batch, ("sparse",), "MMoE")
        ys = self.mmoe(field_inputs(self.embedding, batch, self.spec))
        return task_logits(self.towers, ys, self.spec.tasks)
