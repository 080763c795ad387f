"""STAR: star-topology adaptive recommender for multi-domain CTR (Sheng et al., CIKM 2021).

    x  = PartitionedNorm([E(sparse) flattened, dense], d)                      (B, F·D + Dn)
    h  = act(StarFC_l(h, d)) for each hidden layer;  y = x (W_s ⊙ W_d) + b_s + b_d per layer
    logit = StarFC_out(h, d) + Aux([E_domain(d), x])                           (B,)

The auxiliary network sees the domain id directly, so domain differences reach the logit even
where the star layers share most of their weights. Needs batch key "domain" (B,) in
[0, FeatureSpec.n_domains).

    >>> import torch
    >>> from funnelrec.models.ranking.din import toy_batch
    >>> spec = FeatureSpec(n_embeddings=50, n_fields=3, n_domains=3)
    >>> m = STAR(spec, STARConfig(embedding_dim=4, hidden=(8,), aux_hidden=(4,)))
    >>> m(toy_batch(spec))["ctr"].shape
    torch.Size([8])
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from funnelrec.core.errors import ConfigError, DataError
from funnelrec.core.registry import RANKERS
from funnelrec.models.ranking.base import FeatureSpec
from funnelrec.models.ranking.din import CheckedConfig, SharedTableRanker
from funnelrec.nn.attention import LastAxis, activation, feedforward
from funnelrec.nn.experts import PartitionedNorm, StarFC


@dataclass(frozen=True)
class STARConfig(CheckedConfig):
    embedding_dim: int = 16
    hidden: tuple[int, ...] = (128, 64)
    activation: str = "relu"
    dropout: float = 0.0
    domain_embedding_dim: int = 8
    aux_hidden: tuple[int, ...] = (32,)

    def check(self) -> None:
        if not self.hidden:
            raise ConfigError("STARConfig.hidden needs at least one width")


def domain_ids(batch: dict[str, torch.Tensor], n_domains: int, model: str) -> torch.Tensor:
    """The batch's domain ids (B,); DataError when absent while n_domains > 1."""
    d = batch.get("domain")
    if d is None:
        if n_domains > 1:
            raise DataError(f"{model} needs batch key 'domain' (FeatureSpec.n_domains = {n_domains})")
        return torch.zeros(batch["sparse"].shape[0], dtype=torch.int64, device=batch["sparse"].device)
    return d.long()


@RANKERS.register("star")
class STAR(SharedTableRanker):
    Config = STARConfig

    def __init__(self, spec: FeatureSpec, config: STARConfig | None = None) -> None:
        super().__init__(spec, config)
        cfg, n_dom, width = self.config, spec.n_domains, self.input_width
        self.norm = PartitionedNorm(width, n_dom)
        self.layers = nn.ModuleList()
        self.acts = nn.ModuleList()
        d = width
        for h in cfg.hidden:
            self.layers.append(StarFC(d, h, n_dom))
            self.acts.append(LastAxis(activation(cfg.activation, h)))
            d = h
        self.dropout = nn.Dropout(cfg.dropout)
        self.out = StarFC(d, 1, n_dom)
        self.domain_embedding = nn.Embedding(n_dom, cfg.domain_embedding_dim)
        self.aux = feedforward(width + cfg.domain_embedding_dim, cfg.aux_hidden, cfg.activation, out_dim=1)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = self.inputs(batch)
        dom = domain_ids(batch, self.spec.n_domains, "STAR")
        x = self.norm(x, dom)
        h = x
        for layer, act in zip(self.layers, self.acts, strict=True):
            h = self.dropout(act(layer(h, dom)))
        aux = self.aux(torch.cat([self.domain_embedding(dom), x], dim=1))
        return {"ctr": (self.out(h, dom) + aux).squeeze(-1)}
