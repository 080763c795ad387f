"""Cache recall: the user's previous fine-ranked results, fed back by the pipeline.

`put(user_idx, items, scores)` stores (replaces) the user's last ranked list (at most
`max_items`, best first); recall returns it minus the items the user has seen since (training
history + `context.extra["history"]`). The cache is pickled with the channel (`save`/`load`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from funnelrec.core.errors import ConfigError, DataError
from funnelrec.core.registry import RECALL_CHANNELS
from funnelrec.core.types import PAD, CandidateBatch
from funnelrec.data.dataset import TrainData
from funnelrec.recall._common import UserHistory
from funnelrec.recall.base import RecallChannel, RecallContext


@dataclass(frozen=True)
class CacheConfig:
    max_items: int = 500

    def __post_init__(self) -> None:
        if self.max_items < 1:
            raise ConfigError(f"CacheConfig.max_items must be ≥ 1, got {self.max_items}")


@RECALL_CHANNELS.register("cache")
class CacheRecall(RecallChannel):
    config_class = CacheConfig

    def __init__(self, config: CacheConfig | None = None, name: str | None = None) -> None:
        super().__init__(name)
        self.config = config or CacheConfig()

    def fit(self, data: TrainData) -> CacheRecall:
        self.history_ = UserHistory(data.csr)
        self.entries_: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self.fitted_ = True
        return self

    def put(self, user_idx: int, items: np.ndarray, scores: np.ndarray) -> None:
        """Store a user's ranked result. Items outside the catalogue are dropped."""
        items = np.asarray(items, np.int64).reshape(-1)
        scores = np.asarray(scores, np.float32).reshape(-1)
        if items.shape != scores.shape:
            raise DataError(f"cache.put: {items.size} items but {scores.size} scores")
        ok = (items >= 0) & (items < self.history_.n_items) & np.isfinite(scores)
        items, scores = items[ok], scores[ok]
        items, first = np.unique(items, return_index=True)
        scores = scores[first]
        order = np.lexsort((items, -scores))[: self.config.max_items]
        self.entries_[int(user_idx)] = (items[order], scores[order])

    def _recall(self, users: np.ndarray, n: int, context: RecallContext | None) -> CandidateBatch:
        _, seen = self.history_.rows(users, context)
        items = np.full((len(users), n), PAD, np.int64)
        scores = np.full((len(users), n), -np.inf, np.float32)
        for r, u in enumerate(users.tolist()):
            got = self.entries_.get(u) if u >= 0 else None
            if got is None:
                continue
            it, sc = got
            keep = ~np.isin(it, seen.idx[seen.ptr[r]:seen.ptr[r + 1]])
            it, sc = it[keep][:n], sc[keep][:n]
            items[r, : len(it)] = it
            scores[r, : len(it)] = sc
        return CandidateBatch(self.name, items, scores)
