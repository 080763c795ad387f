"""SIM: Search-based user Interest Modeling (Pi et al., CIKM 2020), hard or soft search.

General search unit, `search: hard` (the default): keep the history items whose category
equals the candidate's category, the K most recent of them. `search: soft`: keep the K items
whose embedding [E(item), E(category)] has the largest inner product with the candidate's
(nn/sequence.py `soft_search`; the paper's soft search, here on the ranker's own embeddings).
Exact search unit: DIN target attention over the kept ones.

    idx, found = hard_search(seq_cat, seq_mask, target_cat, K)               (B, K)
               | soft_search([E(seq), E(seq_cat)], seq_mask, q, K)
    e_k = [E(seq_idx_k), E(seq_cat_idx_k)],  q = [E(target), E(target_cat)]  (B, K, 2D), (B, 2D)
    v   = Σ_k w(q, e_k) e_k                    (DINAttention, unnormalized)
    logit = MLP([E(sparse) flattened, dense, q, v, log(1 + #found)])         (B,)

    >>> import torch
    >>> from funnelrec.models.ranking.din import toy_batch
    >>> spec = FeatureSpec(n_embeddings=50, n_fields=3, seq_len=5)
    >>> m = SIM(spec, SIMConfig(embedding_dim=4, top_k=3, attention_hidden=(8,), mlp_hidden=(8,)))
    >>> m(toy_batch(spec))["ctr"].shape
    torch.Size([8])
    >>> SIM(spec, SIMConfig(embedding_dim=4, top_k=3, search="soft", attention_hidden=(8,),
    ...                     mlp_hidden=(8,)))(toy_batch(spec))["ctr"].shape
    torch.Size([8])
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from funnelrec.core.errors import ConfigError
from funnelrec.core.registry import RANKERS
from funnelrec.models.ranking.base import FeatureSpec  # noqa: F401 (the doctest)
from funnelrec.models.ranking.din import DIN, CheckedConfig, require
from funnelrec.nn.sequence import gather_steps, hard_search, soft_search

SEARCH_MODES = ("hard", "soft")


@dataclass(frozen=True)
class SIMConfig(CheckedConfig):
    embedding_dim: int = 16
    top_k: int = 20  # K behaviours kept by the search
    search: str = "hard"  # "hard": same category, most recent; "soft": top inner product with the candidate
    attention_hidden: tuple[int, ...] = (80, 40)
    attention_activation: str = "prelu"
    mlp_hidden: tuple[int, ...] = (200, 80)
    activation: str = "prelu"
    dropout: float = 0.0

    at_least = {"top_k": 1}

    def check(self) -> None:
        if self.search not in SEARCH_MODES:
            raise ConfigError(f"SIMConfig.search {self.search!r}; known: {', '.join(SEARCH_MODES)}")


@RANKERS.register("sim")
class SIM(DIN):
    """DIN over the behaviours the search keeps, plus log(1 + #found) as an MLP input."""

    Config = SIMConfig
    n_extra_features = 1

    def search(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Hard search: positions (B, K) of the retrieved behaviours and their mask (B, K)."""
        mask = batch["seq_mask"].bool()
        return hard_search(batch["seq_cat"], mask, batch["target_cat"], self.config.top_k)

    def behaviours(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The searched behaviours: keys (B, K, 2D), target query (B, 2D), found mask (B, K)."""
        require(batch, self._keys, "SIM")
        query = torch.cat([self.embedding(batch["target"]), self.embedding(batch["target_cat"])], dim=-1)
        if self.config.search == "soft":
            keys = torch.cat([self.embedding(batch["seq"]), self.embedding(batch["seq_cat"])], dim=-1)
            idx, found = soft_search(keys, batch["seq_mask"].bool(), query, self.config.top_k)
            return gather_steps(keys, idx), query, found
        idx, found = self.search(batch)
        seq, seq_cat = gather_steps(batch["seq"], idx), gather_steps(batch["seq_cat"], idx)
        keys = torch.cat([self.embedding(seq), self.embedding(seq_cat)], dim=-1)
        return keys, query, found

    def extra_features(self, mask: torch.Tensor, interest: torch.Tensor) -> list[torch.Tensor]:
        """log(1 + #found) (B, 1): how much of the history matched the candidate's category."""
        return [torch.log1p(mask.sum(1, keepdim=True).to(interest.dtype))]
