"""DIEN: Deep Interest Evolution Network (Zhou et al., AAAI 2019).

    e_t  = [E(seq_t), E(seq_cat_t)], q = [E(target), E(target_cat)]      (B, L, De), (B, De)
    h_t  = GRU(e_t, h_{t−1})                      interest extraction      (B, L, De)
    a_t  = softmax_t(h_t W q)                     attention on the target  (B, L)
    h'_L = AUGRU(h_t, a_t)                        interest evolution       (B, De)
    logit = MLP([E(sparse) flattened, dense, q, h'_L, q ⊙ h'_L])           (B,)

Auxiliary loss (training mode only): h_t must score the real next behaviour e_{t+1} above a
negative ê_{t+1}, the behaviour at the same step of another sequence in the batch (the batch
rolled by one). The model returns it, already multiplied by `aux_loss_weight`, as the scalar
output "aux_loss"; the training loss adds it to the BCE of "ctr". In eval mode only "ctr" is
returned. Sequences are compacted (real steps first) before the GRU, so left padding is fine.

    >>> import torch
    >>> from funnelrec.models.ranking.din import toy_batch
    >>> spec = FeatureSpec(n_embeddings=50, n_fields=3, seq_len=5)
    >>> m = DIEN(spec, DIENConfig(embedding_dim=4, mlp_hidden=(8,)))
    >>> sorted(m(toy_batch(spec)).keys()), sorted(m.eval()(toy_batch(spec)).keys())
    (['aux_loss', 'ctr'], ['ctr'])
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from funnelrec.core.registry import RANKERS
from funnelrec.models.ranking.base import FeatureSpec
from funnelrec.models.ranking.din import CheckedConfig, SequenceRanker
from funnelrec.nn.attention import AUGRU, BilinearAttention, feedforward
from funnelrec.nn.sequence import InterestExtractor, compact_sequence, gather_steps, interest_auxiliary_loss


@dataclass(frozen=True)
class DIENConfig(CheckedConfig):
    embedding_dim: int = 16
    mlp_hidden: tuple[int, ...] = (200, 80)
    activation: str = "prelu"
    dropout: float = 0.0
    use_category: bool = True
    aux_loss_weight: float = 1.0  # α in L = L_ctr + α·L_aux; 0 disables the auxiliary loss

    at_least = {"aux_loss_weight": 0}


@RANKERS.register("dien")
class DIEN(SequenceRanker):
    Config = DIENConfig

    def __init__(self, spec: FeatureSpec, config: DIENConfig | None = None) -> None:
        super().__init__(spec, config)
        de = self.item_dim
        self.extractor = InterestExtractor(de, de)
        self.attention = BilinearAttention(de, de)
        self.evolution = AUGRU(de, de)
        cfg = self.config
        self.mlp = feedforward(self.input_width + 3 * de, cfg.mlp_hidden, cfg.activation, cfg.dropout, 1)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        keys, query, mask = self.behaviours(batch)
        order = compact_sequence(mask)
        keys, mask = gather_steps(keys, order), gather_steps(mask, order)
        states = self.extractor(keys, mask)
        att = self.attention(states, query, mask)
        final = self.evolution(states, att, mask)
        x = torch.cat([self.inputs(batch), query, final, query * final], dim=1)
        out = {"ctr": self.mlp(x).squeeze(-1)}
        if self.training and self.config.aux_loss_weight > 0:
            neg, neg_mask = keys.roll(1, dims=0), mask.roll(1, dims=0)
            aux = interest_auxiliary_loss(states, keys, neg, mask & neg_mask)
            out["aux_loss"] = self.config.aux_loss_weight * aux
        return out
