"""SIM: Search-based user Interest Modeling (Pi et al., CIKM 2020), hard-search variant.

General search unit (hard): keep the history items whose category equals the candidate's
category, the K most recent of them. Exact search unit: DIN target attention over them.

    idx, found = hard_search(seq_cat, seq_mask, target_cat, K)               (B, K)
    e_k = [E(seq_idx_k), E(seq_cat_idx_k)],  q = [E(target), E(target_cat)]  (B, K, 2D), (B, 2D)
    v   = Σ_k w(q, e_k) e_k                    (DINAttention, unnormalized)
    logit = MLP([E(sparse) flattened, dense, q, v, log(1 + #found)])         (B,)

    >>> import torch
    >>> from funnelrec.models.ranking.din import toy_batch
    >>> spec = FeatureSpec(n_embeddings=50, n_fields=3, seq_len=5)
    >>> m = SIM(spec, SIMConfig(embedding_dim=4, top_k=3, attention_hidden=(8,), mlp_hidden=(8,)))
    >>> m(toy_batch(spec))["ctr"].shape
    torch.Size([8])
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from funnelrec.core.errors import ConfigError
from funnelrec.core.registry import RANKERS
from funnelrec.models.ranking.base import FeatureSpec
from funnelrec.models.ranking.din import CheckedConfig, SharedTableRanker, require, sequence_keys
from funnelrec.nn.attention import DINAttention, feedforward
from funnelrec.nn.sequence import gather_steps, hard_search


@dataclass(frozen=True)
class SIMConfig(CheckedConfig):
    embedding_dim: int = 16
    top_k: int = 20  # K behaviours kept by the hard search
    attention_hidden: tuple[int, ...] = (80, 40)
    attention_activation: str = "prelu"
    mlp_hidden: tuple[int, ...] = (200, 80)
    activation: str = "prelu"
    dropout: float = 0.0

    def check(self) -> None:
        if self.top_k < 1:
            raise ConfigError(f"SIMConfig.top_k must be ≥ 1, got {self.top_k}")


@RANKERS.register("sim")
class SIM(SharedTableRanker):
    Config = SIMConfig
    needs_sequence = True

    def __init__(self, spec: FeatureSpec, config: SIMConfig | None = None) -> None:
        super().__init__(spec, config)
        cfg = self.config
        D = cfg.embedding_dim
        self.attention = DINAttention(2 * D, cfg.attention_hidden, cfg.attention_activation)
        self.mlp = feedforward(self.input_width + 4 * D + 1, cfg.mlp_hidden, cfg.activation, cfg.dropout, 1)
        self._keys = sequence_keys(True)

    def search(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Hard search: positions (B, K) of the retrieved behaviours and their mask (B, K)."""
        mask = batch["seq_mask"].bool()
        return hard_search(batch["seq_cat"], mask, batch["target_cat"], self.config.top_k)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        require(batch, self._keys, "SIM")
        idx, found = self.search(batch)
        seq, seq_cat = gather_steps(batch["seq"], idx), gather_steps(batch["seq_cat"], idx)
        keys = torch.cat([self.embedding(seq), self.embedding(seq_cat)], dim=-1)
        query = torch.cat([self.embedding(batch["target"]), self.embedding(batch["target_cat"])], dim=-1)
        interest = self.attention(query, keys, found)
        n_found = torch.log1p(found.sum(1, keepdim=True).to(interest.dtype))
        x = torch.cat([self.inputs(batch), query, interest, n_found], dim=1)
        return {"ctr": self.mlp(x).squeeze(-1)}
