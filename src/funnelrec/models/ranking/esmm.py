"""ESMM: entire space multi-task model (Ma et al., SIGIR 2018).

Two towers over shared embeddings, trained on all impressions:
    a = CTR tower logit, b = CVR tower logit                               (B,), (B,)
    pCTCVR = σ(a) · σ(b)   (click and convert; the CVR tower never sees a CVR label)

`FeatureSpec.tasks` = (ctr_task, ctcvr_task), e.g. ("click", "like") where the "like" label is
1 only for clicked-and-liked impressions. Outputs are logits so the usual BCE-with-logits loss
applies to both:
    out[ctr_task]   = a
    out[ctcvr_task] = logit(pCTCVR) = log p − log(1 − p),  log p = log σ(a) + log σ(b)
computed in log space (log(1 − p) = log1mexp(log p)), with log p ≤ −1e-6 so the logit stays
finite. `cvr_logit(batch)` gives b (post-click conversion) for serving.

    >>> import torch
    >>> from funnelrec.models.ranking.din import toy_batch
    >>> spec = FeatureSpec(n_embeddings=50, n_fields=3, tasks=("click", "like"))
    >>> m = ESMM(spec, ESMMConfig(embedding_dim=4, tower_hidden=(8,)))
    >>> out = m(toy_batch(spec))
    >>> p = torch.sigmoid(out["click"]) * torch.sigmoid(m.cvr_logit(toy_batch(spec)))
    >>> bool(torch.allclose(torch.sigmoid(out["like"]), p, atol=1e-6))
    True
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from funnelrec.core.errors import ConfigError
from funnelrec.core.registry import RANKERS
from funnelrec.models.ranking.base import FeatureSpec
from funnelrec.models.ranking.din import CheckedConfig, SharedTableRanker
from funnelrec.nn import experts


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 − eˣ) for x < 0, accurate on both sides of −ln 2 (Mächler, 2012)."""
    return torch.where(x > -math.log(2.0), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def product_logit(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """logit(σ(a)·σ(b)), stable in log space."""
    log_p = (F.logsigmoid(a) + F.logsigmoid(b)).clamp(max=-1e-6)
    return log_p - log1mexp(log_p)


@dataclass(frozen=True)
class ESMMConfig(CheckedConfig):
    embedding_dim: int = 16
    tower_hidden: tuple[int, ...] = (128, 64)
    activation: str = "relu"
    dropout: float = 0.0


@RANKERS.register("esmm")
class ESMM(SharedTableRanker):
    Config = ESMMConfig
    multi_task = True
    nested_tasks = True  # tasks = (ctr, ctcvr): a ctcvr positive is always a ctr positive

    def __init__(self, spec: FeatureSpec, config: ESMMConfig | None = None) -> None:
        if len(spec.tasks) != 2:
            raise ConfigError(f"ESMM needs exactly two tasks (ctr, ctcvr), got {spec.tasks}")
        super().__init__(spec, config)
        cfg = self.config
        self.towers = experts.ParallelMLP(2, self.input_width, cfg.tower_hidden, cfg.activation, cfg.dropout, out_dim=1)

    def _logits(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        ab = self.towers(self.inputs(batch)).squeeze(-1)
        return ab[:, 0], ab[:, 1]

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        a, b = self._logits(batch)
        ctr, ctcvr = self.spec.tasks
        return {ctr: a, ctcvr: product_logit(a, b)}

    def cvr_logit(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B,) post-click conversion logit b (pCVR = σ(b))."""
        return self._logits(batch)[1]
