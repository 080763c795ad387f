"""Fresh recall: the newest items, globally or within the user's favourite tags.

    fresh(i) = exp(−(now − publish_time_i) / τ)        for items published by `now`
    by_user_tags:  score(u, i) = Σ_t w(u, t) · fresh(i) · 1[i has tag t]   (w as in the tag channel)

`now` is the latest training timestamp, or `context.time` when given (items published after it
are not offered). Global mode is not personalized (cold start); tag mode is.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from funnelrec.core.errors import ConfigError
from funnelrec.core.registry import RECALL_CHANNELS
from funnelrec.core.types import CandidateBatch
from funnelrec.data.dataset import TrainData
from funnelrec.recall._common import UserHistory, take_unseen
from funnelrec.recall.base import RecallContext
from funnelrec.recall.tag import AttributeRecall


@dataclass(frozen=True)
class FreshConfig:
    time_column: str = "publish_time"
    tau_days: float = 365.0
    max_items: int = 5000
    by_user_tags: bool = False
    tag_column: str = "genres"
    n_tags: int = 3

    def __post_init__(self) -> None:
        if self.tau_days <= 0 or self.max_items < 1 or self.n_tags < 1:
            raise ConfigError(f"FreshConfig: tau_days > 0, max_items ≥ 1, n_tags ≥ 1 required, got {self}")


@RECALL_CHANNELS.register("fresh")
class FreshRecall(AttributeRecall):
    personalized = False
    config_class = FreshConfig

    def __init__(self, config: FreshConfig | None = None, name: str | None = None) -> None:
        super().__init__(name)
        self.config = config or FreshConfig()
        self.personalized = self.config.by_user_tags

    def fit(self, data: TrainData) -> FreshRecall:
        cfg = self.config
        items = data.dataset.items
        if cfg.time_column not in items.columns:
            raise ConfigError(f"fresh: item column {cfg.time_column!r} not found; available: {', '.join(items.columns)}")
        pub = items[cfg.time_column].cast(float).fill_null(float("nan")).to_numpy().astype(np.float64)
        self.publish_ = pub
        self.now_ = data.now
        ok = np.isfinite(pub) & (pub <= data.now)
        fresh = np.where(ok, np.exp(-(data.now - np.where(ok, pub, 0)) / (cfg.tau_days * 86400.0)), 0.0)
        fresh = np.where(ok, np.maximum(fresh, 1e-30), 0.0)  # very old items stay ranked, > 0
        order = np.lexsort((np.arange(len(pub)), -np.where(ok, pub, -np.inf)))
        order = order[ok[order]][: cfg.max_items]
        self.items_ = order.astype(np.int64)
        self.scores_ = fresh[order].astype(np.float32)
        if cfg.by_user_tags:
            self._fit_index(data, cfg.tag_column, fresh, cfg.max_items, cfg.n_tags)
        self.history_ = UserHistory(data.csr)
        self.fitted_ = True
        return self

    def _recall(self, users: np.ndarray, n: int, context: RecallContext | None) -> CandidateBatch:
        if self.config.by_user_tags:
            return super()._recall(users, n, context)
        _, seen = self.history_.matrix(users, context)
        items, scores = self.items_, self.scores_
        if context is not None and context.time is not None:
            keep = self.publish_[items] <= context.time
            items, scores = items[keep], scores[keep]
        indptr = np.array([0, len(items)], np.int64)
        return take_unseen(indptr, items, scores, np.zeros(len(users), np.int64), seen, n, self.name)
