"""Wide & Deep (Cheng et al. 2016): logit = wide(x) + deep(x).

wide = LR over all sparse fields (incl. explicit crosses from the encoder) + dense;
deep = MLP over the flattened field embeddings (B, (F + Dn)·D).
As in the paper the wide part is trained by FTRL-Proximal and the deep part by Adam:
`wide_parameters()` / `deep_parameters()` split them for `train.ftrl.FTRL` and Adam
(eval/ctr.py wires both into the Trainer).

    >>> import torch
    >>> spec = FeatureSpec(n_embeddings=10, n_fields=2)
    >>> WideDeep(spec)({"sparse": torch.tensor([[1, 2]])})["ctr"].shape
    torch.Size([1])
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from funnelrec.core.registry import RANKERS
from funnelrec.models.ranking.base import FeatureSpec, RankingModel
from funnelrec.models.ranking.common import FieldEmbedder
from funnelrec.nn.embedding import LinearTerm
from funnelrec.nn.mlp import MLP


@dataclass(frozen=True)
class WideDeepConfig:
    embedding_dim: int = 10
    hidden: tuple[int, ...] = (256, 256)
    dropout: float = 0.0
    batch_norm: bool = False


@RANKERS.register("widedeep")
class WideDeep(RankingModel):
    Config = WideDeepConfig

    def __init__(self, spec: FeatureSpec, config: WideDeepConfig | None = None) -> None:
        super().__init__(spec)
        self.config = cfg = config or WideDeepConfig()
        self.wide = LinearTerm(spec.n_embeddings, spec.n_dense)
        self.embed = FieldEmbedder(spec, cfg.embedding_dim)
        self.deep = MLP(self.embed.n_fields * cfg.embedding_dim, cfg.hidden, cfg.dropout, cfg.batch_norm, out_dim=1)

    def wide_parameters(self) -> list[torch.nn.Parameter]:
        return list(self.wide.parameters())

    def deep_parameters(self) -> list[torch.nn.Parameter]:
        return list(self.embed.parameters()) + list(self.deep.parameters())

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        deep = self.deep(self.embed(batch).flatten(1)).squeeze(-1)
        return {"ctr": self.wide(batch["sparse"], batch.get("dense")) + deep}
