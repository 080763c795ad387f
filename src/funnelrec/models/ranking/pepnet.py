"""PEPNet: parameter and embedding personalized network (Chang et al., KDD 2023).

    E     = E(sparse) flattened                                               (B, F·D)
    O_ep  = GateNU(E_domain(d) ⊕ sg(E)) ⊙ E                      EPNet        (B, F·D)
    p     = E(sparse[:, prior_fields]) flattened ⊕ sg(O_ep)       user/item prior
    h^t   ← GateNU_l(p)^t ⊙ act(W_l^t h^t + b_l^t), h^t_0 = [O_ep, dense]   PPNet, per task t
    logit^t = w^t · h^t_L + b^t                                               (B,) per task

GateNU: δ = 2·σ(W₂ ReLU(W₁ x)), so gates start near 1; sg = stop-gradient. `prior_fields`
are the columns of "sparse" holding the personal prior (user id, item id, author id …).
Returns one logit per task of `FeatureSpec.tasks`.

    >>> import torch
    >>> from funnelrec.models.ranking.din import toy_batch
    >>> spec = FeatureSpec(n_embeddings=50, n_fields=3, n_domains=2, tasks=("click", "like"))
    >>> m = PEPNet(spec, PEPNetConfig(embedding_dim=4, tower_hidden=(8,)))
    >>> {k: v.shape for k, v in m(toy_batch(spec)).items()}
    {'click': torch.Size([8]), 'like': torch.Size([8])}
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from funnelrec.core.errors import ConfigError
from funnelrec.core.registry import RANKERS
from funnelrec.models.ranking.base import FeatureSpec
from funnelrec.models.ranking.din import CheckedConfig, SharedTableRanker, require
from funnelrec.models.ranking.star import domain_ids
from funnelrec.nn.experts import EPNet, PPNet


@dataclass(frozen=True)
class PEPNetConfig(CheckedConfig):
    embedding_dim: int = 16
    domain_embedding_dim: int = 8
    prior_fields: tuple[int, ...] = (0, 1)  # columns of "sparse": user id, item id by convention
    tower_hidden: tuple[int, ...] = (128, 64)
    gate_hidden: int | None = None  # GateNU hidden width (default: its output width)
    activation: str = "relu"
    dropout: float = 0.0

    def check(self) -> None:
        if not self.tower_hidden:
            raise ConfigError("PEPNetConfig.tower_hidden needs at least one width")


@RANKERS.register("pepnet")
class PEPNet(SharedTableRanker):
    Config = PEPNetConfig
    multi_task = True

    def __init__(self, spec: FeatureSpec, config: PEPNetConfig | None = None) -> None:
        cfg = config or PEPNetConfig()
        bad = [f for f in cfg.prior_fields if not 0 <= f < spec.n_fields]
        if bad:
            raise ConfigError(f"PEPNetConfig.prior_fields {bad} out of range for {spec.n_fields} sparse fields")
        super().__init__(spec, cfg)
        D = cfg.embedding_dim
        general = spec.n_fields * D
        self.domain_embedding = nn.Embedding(spec.n_domains, cfg.domain_embedding_dim)
        self.epnet = EPNet(general, cfg.domain_embedding_dim, cfg.gate_hidden)
        self.ppnet = PPNet(
            general + spec.n_dense, len(cfg.prior_fields) * D, len(spec.tasks), cfg.tower_hidden,
            cfg.activation, cfg.dropout, gate_input_dim=general,
        )
        self.register_buffer("prior_index", torch.tensor(cfg.prior_fields, dtype=torch.int64), persistent=False)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        require(batch, ("sparse",), "PEPNet")
        dom = domain_ids(batch, self.spec.n_domains, "PEPNet")
        emb = self.embedding(batch["sparse"])  # (B, F, D)
        o_ep = self.epnet(emb.flatten(1), self.domain_embedding(dom))
        prior = emb[:, self.prior_index].flatten(1)
        x = torch.cat([o_ep, batch["dense"]], dim=1) if self.spec.n_dense else o_ep
        logits = self.ppnet(x, prior, gate_x=o_ep)
        return dict(zip(self.spec.tasks, logits.unbind(1), strict=True))
