"""MIMN: Multi-channel user Interest Memory Network (Pi et al., KDD 2019).

The behaviour sequence is written, one behaviour at a time, into an NTM memory of m slots (UIC)
and a memory-induction memory S (MIU) (nn/memory.py); the candidate then reads both:

    e_t = [E(seq_t), E(seq_cat_t)],  q = [E(target), E(target_cat)]          (B, L, De), (B, De)
    M_L, S_L = UserInterestMemory(e_1 … e_L)                                  (B, m, De) each
    u_M = read(content_address(W_M q, β_M, M_L), M_L)                         (B, De)
    u_S = read(content_address(W_S q, β_S, S_L), S_L)                         (B, De)
    logit = MLP([E(sparse) flattened, dense, q, u_M, u_S])                    (B,)

β_M, β_S are learned sharpness scalars (softplus). Padding may sit anywhere in the sequence (a
padded step writes nothing). MIMN's point is serving cost: M_L and S_L can be kept per user and
updated per event; here they are recomputed from the batch's sequence (the protocol of
DIN/DIEN/SIM), which gives the same numbers.

    >>> import torch
    >>> from funnelrec.models.ranking.din import toy_batch
    >>> spec = FeatureSpec(n_embeddings=50, n_fields=3, seq_len=5)
    >>> m = MIMN(spec, MIMNConfig(embedding_dim=4, memory_slots=3, mlp_hidden=(8,)))
    >>> m(toy_batch(spec))["ctr"].shape
    torch.Size([8])
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from funnelrec.core.errors import ConfigError
from funnelrec.core.registry import RANKERS
from funnelrec.models.ranking.base import FeatureSpec
from funnelrec.models.ranking.din import CheckedConfig, SequenceRanker
from funnelrec.nn.attention import feedforward
from funnelrec.nn.memory import UserInterestMemory, content_address, memory_read


@dataclass(frozen=True)
class MIMNConfig(CheckedConfig):
    embedding_dim: int = 16
    memory_slots: int = 4  # m
    induction_top_k: int = 1  # K slots of the MIU memory updated per behaviour; 0: no MIU
    mlp_hidden: tuple[int, ...] = (200, 80)
    activation: str = "prelu"
    dropout: float = 0.0
    use_category: bool = True

    at_least = {"memory_slots": 1, "induction_top_k": 0}

    def check(self) -> None:
        if self.induction_top_k > self.memory_slots:
            raise ConfigError(f"MIMNConfig.induction_top_k {self.induction_top_k} > memory_slots {self.memory_slots}")


@RANKERS.register("mimn")
class MIMN(SequenceRanker):
    Config = MIMNConfig

    def __init__(self, spec: FeatureSpec, config: MIMNConfig | None = None) -> None:
        super().__init__(spec, config)
        de, cfg = self.item_dim, self.config
        self.memory = UserInterestMemory(de, cfg.memory_slots, cfg.induction_top_k)
        self.query_memory = nn.Linear(de, de)
        self.query_induction = nn.Linear(de, de)
        self.sharpness = nn.Parameter(torch.ones(2))  # β_M, β_S before softplus
        self.mlp = feedforward(self.input_width + 3 * de, cfg.mlp_hidden, cfg.activation, cfg.dropout, 1)

    def interests(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(q, u_M, u_S), each (B, De): the candidate and what it reads from the two memories."""
        keys, query, mask = self.behaviours(batch)
        M, S = self.memory(keys, mask)
        beta = F.softplus(self.sharpness).unsqueeze(0).expand(query.shape[0], 2)
        u_m = memory_read(content_address(self.query_memory(query), beta[:, 0], M), M)
        u_s = memory_read(content_address(self.query_induction(query), beta[:, 1], S), S)
        return query, u_m, u_s

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        query, u_m, u_s = self.interests(batch)
        x = torch.cat([self.inputs(batch), query, u_m, u_s], dim=1)
        return {"ctr": self.mlp(x).squeeze(-1)}
