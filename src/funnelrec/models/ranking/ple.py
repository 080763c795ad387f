"""PLE: progressive layered extraction multi-task ranker (Tang et al., RecSys 2020).

    x = [E(sparse) flattened, dense]; CGC layers with task-specific and shared experts,
    the shared branch re-mixed between layers; logit^k = Tower_k(y^k)       (B,) per task

    >>> import torch
    >>> from funnelrec.models.ranking.base import FeatureSpec
    >>> from funnelrec.models.ranking.din import toy_batch
    >>> spec = FeatureSpec(n_embeddings=50, n_fields=3, tasks=("click", "like"))
    >>> m = PLE(spec, PLEConfig(embedding_dim=4, expert_hidden=(8,), tower_hidden=(4,)))
    >>> sorted(m(toy_batch(spec)))
    ['click', 'like']
"""

from __future__ import annotations

from dataclasses import dataclass

from funnelrec.core.errors import ConfigError
from funnelrec.core.registry import RANKERS
from funnelrec.models.ranking.din import CheckedConfig, SharedBottomRanker
from funnelrec.nn import experts


@dataclass(frozen=True)
class PLEConfig(CheckedConfig):
    embedding_dim: int = 16
    n_layers: int = 2  # CGC extraction layers
    n_specific: int = 2  # experts per task per layer
    n_shared: int = 2  # shared experts per layer
    expert_hidden: tuple[int, ...] = (64,)
    tower_hidden: tuple[int, ...] = (32,)
    activation: str = "relu"

    def check(self) -> None:
        if min(self.n_layers, self.n_specific, self.n_shared) < 1 or not self.expert_hidden:
            raise ConfigError("PLEConfig needs n_layers, n_specific, n_shared ≥ 1 and expert_hidden widths")


@RANKERS.register("ple")
class PLE(SharedBottomRanker):
    Config = PLEConfig
    expert_net = "ple"

    def build_experts(self, cfg: PLEConfig, input_width: int, n_tasks: int) -> experts.PLE:
        return experts.PLE(input_width, n_tasks, cfg.n_layers, cfg.n_specific, cfg.n_shared, cfg.expert_hidden,
                           cfg.activation)
