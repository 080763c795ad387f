"""Cache recall: the user's previous ranked results, handed in with the request.

The service keeps each user's last ranked list (the ranked-but-unshown tail included) in its
result store and passes it as `RequestState.cached` (through `RecallContext.state`); the
channel returns it minus the items the user has seen (training history + fresh history) and
items outside the catalogue, best first. The channel itself holds only the fitted history:
nothing it owns changes during a request, so a saved channel has no per-user cache in it.
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
        self.fitted_ = True
        return self

    def _recall(self, users: np.ndarray, n: int, context: RecallContext | None) -> CandidateBatch:
        items = np.full((len(users), n), PAD, np.int64)
        scores = np.full((len(users), n), -np.inf, np.float32)
        cached = None if context is None or context.state is None else context.state.cached
        if cached is None:
            return CandidateBatch(self.name, items, scores)
        if len(cached) != len(users):
            raise DataError(f"cache channel: request state has {len(cached)} cached rows for {len(users)} users")
        _, seen = self.history_.rows(users, context)
        n_items = self.history_.n_items
        for r, got in enumerate(cached):
            if got is None or (users[r] < 0 and seen.ptr[r + 1] == seen.ptr[r]):
                continue  # an unknown user is served from its cache only once it has fresh history
            it = np.asarray(got[0], np.int64).reshape(-1)
            sc = np.asarray(got[1], np.float32).reshape(-1)
            if it.shape != sc.shape:
                raise DataError(f"cache channel: {it.size} cached items but {sc.size} scores")
            ok = (it >= 0) & (it < n_items) & np.isfinite(sc)
            ok &= ~np.isin(it, seen.idx[seen.ptr[r]:seen.ptr[r + 1]])
            it, sc = it[ok], sc[ok]
            it, first = np.unique(it, return_index=True)  # a repeated item keeps its first score
            sc = sc[first]
            order = np.lexsort((it, -sc))[: min(n, self.config.max_items)]
            items[r, : len(order)] = it[order]
            scores[r, : len(order)] = sc[order]
        return CandidateBatch(self.name, items, scores)
