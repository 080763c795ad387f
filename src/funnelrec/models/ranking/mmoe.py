"""MMoE: multi-gate mixture-of-experts multi-task ranker (Ma et al., KDD 2018).

    x     = [E(sparse) flattened, dense]                                     (B, F·D + Dn)
    y^k   = Σ_i Dropout(softmax(W_k x))_i · Expert_i(x)                      (B, H) per task
    logit^k = Tower_k(y^k)                                                   (B,) per task

Returns one logit per task of `FeatureSpec.tasks`, e.g. {"click": …, "like": …}.

    >>> import torch
    >>> from funnelrec.models.ranking.base import FeatureSpec
    >>> from funnelrec.models.ranking.din import toy_batch
    >>> spec = FeatureSpec(n_embeddings=50, n_fields=3, tasks=("click", "like"))
    >>> m = MMoE(spec, MMoEConfig(embedding_dim=4, expert_hidden=(8,), tower_hidden=(4,)))
    >>> {k: v.shape for k, v in m(toy_batch(spec)).items()}
    {'click': torch.Size([8]), 'like': torch.Size([8])}
"""

from __future__ import annotations

from dataclasses import dataclass

from funnelrec.core.errors import ConfigError
from funnelrec.core.registry import RANKERS
from funnelrec.models.ranking.din import CheckedConfig, SharedBottomRanker
from funnelrec.nn import experts


@dataclass(frozen=True)
class MMoEConfig(CheckedConfig):
    embedding_dim: int = 16
    n_experts: int = 4
    expert_hidden: tuple[int, ...] = (128, 64)
    gate_dropout: float = 0.1  # dropout on the gates' softmax output
    tower_hidden: tuple[int, ...] = (32,)
    activation: str = "relu"

    def check(self) -> None:
        if self.n_experts < 1 or not self.expert_hidden:
            raise ConfigError("MMoEConfig needs n_experts ≥ 1 and at least one expert_hidden width")
        if not 0 <= self.gate_dropout < 1:
            raise ConfigError(f"MMoEConfig.gate_dropout must be in [0, 1), got {self.gate_dropout}")


@RANKERS.register("mmoe")
class MMoE(SharedBottomRanker):
    Config = MMoEConfig
    expert_net = "mmoe"

    def build_experts(self, cfg: MMoEConfig, input_width: int, n_tasks: int) -> experts.MMoE:
        return experts.MMoE(input_width, cfg.n_experts, n_tasks, cfg.expert_hidden, cfg.gate_dropout, cfg.activation)
