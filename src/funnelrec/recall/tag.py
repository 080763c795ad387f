"""Tag recall: the user's favourite tags by history, then each tag's most popular items.

    w(u, t)  = share of the user's history carrying tag t, kept for the top `n_tags` tags
    score(u, i) = Σ_t w(u, t) · pop(i) / max pop        over the inverted index t → items

pop is the time-decayed popularity of the hot channel; each tag's list keeps `items_per_tag`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from funnelrec.core.errors import ConfigError
from funnelrec.core.registry import RECALL_CHANNELS
from funnelrec.core.types import CandidateBatch
from funnelrec.data.dataset import TrainData
from funnelrec.recall._common import Rows, UserHistory, row_topk, spmm_topn
from funnelrec.recall.attributes import ForwardIndex, InvertedIndex
from funnelrec.recall.base import RecallChannel, RecallContext
from funnelrec.recall.hot import train_popularity


@dataclass(frozen=True)
class TagConfig:
    column: str = "genres"  # item column holding the tags (list[str] or str)
    n_tags: int = 3  # the user's top tags used
    items_per_tag: int = 1000
    tau_days: float = 0.0  # popularity decay; 0 = plain count

    def __post_init__(self) -> None:
        if self.n_tags < 1 or self.items_per_tag < 1 or self.tau_days < 0:
            raise ConfigError(f"TagConfig: n_tags, items_per_tag ≥ 1 and tau_days ≥ 0 required, got {self}")


def user_value_weights(H: sp.csr_matrix, item_values: sp.csr_matrix, top: int) -> sp.csr_matrix:
    """(U, V) share of each user's history carrying value v, top `top` values per user kept."""
    W = sp.csr_matrix(H @ item_values)
    W = row_topk(W, top)
    n = np.asarray(H.sum(axis=1)).ravel()
    n[n <= 0] = 1.0
    return sp.csr_matrix(sp.diags(1.0 / n) @ W)


class AttributeRecall(RecallChannel):
    """Shared recall of attribute channels: user value weights (U, V) × value→items (V, I)."""

    def _fit_index(self, data: TrainData, column: str, score: np.ndarray, max_per_value: int,
                   n_values_kept: int) -> None:
        """Forward index of item `column`, its inverted index ranked by `score` (at most
        `max_per_value` items per value), the user's top `n_values_kept` values used."""
        self.forward_ = ForwardIndex.from_column(data.dataset.items, column)
        self.inverted_ = InvertedIndex.build(self.forward_, score, max_per_value)
        self.value_items_ = self.inverted_.matrix(data.n_items)
        self.n_values_kept_ = n_values_kept

    def _user_weights(self, H: Rows) -> Rows:
        """(U, V) `user_value_weights` of the history rows, as Rows (one fused pass, no scipy)."""
        top = spmm_topn(H, self.forward_.matrix, self.n_values_kept_, self.name)
        n = H.row_sums()
        n[n <= 0] = 1.0
        return Rows.from_padded(top.items, top.scores / n[:, None].astype(np.float32))

    def _recall(self, users: np.ndarray, n: int, context: RecallContext | None) -> CandidateBatch:
        H, seen = self.history_.rows(users, context)
        return spmm_topn(self._user_weights(H), self.value_items_, n, self.name, exclude=seen)


@RECALL_CHANNELS.register("tag")
class TagRecall(AttributeRecall):
    config_class = TagConfig

    def __init__(self, config: TagConfig | None = None, name: str | None = None) -> None:
        super().__init__(name)
        self.config = config or TagConfig()

    def fit(self, data: TrainData) -> TagRecall:
        cfg = self.config
        self._fit_index(data, cfg.column, train_popularity(data, cfg.tau_days, scale_to_max=True),
                        cfg.items_per_tag, cfg.n_tags)
        self.history_ = UserHistory(data.csr)
        self.fitted_ = True
        return self
