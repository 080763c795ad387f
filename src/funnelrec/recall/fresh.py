"""Fresh recall: the newest items, globally or within the user's favourite tags.

    fresh(i, t) = exp(−(t − publish_time_i) / τ)        for items published by t
    by_user_tags:  score(u, i) = Σ_v w(u, v) · fresh(i, now) · 1[i has tag v]   (w as in the tag channel)

t is the request's `context.time`, else `now` (the latest training timestamp). Items of the
catalogue dated after `now` are kept at fit time and offered by the global list once a request's
time has passed their publish time: a funnel served days after training still recalls what was
published since. Global mode is not personalized (cold start); tag mode is.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np

from funnelrec.core.errors import ConfigError, NotFittedError
from funnelrec.core.registry import RECALL_CHANNELS
from funnelrec.core.types import CandidateBatch
from funnelrec.data.dataset import TrainData
from funnelrec.recall._common import UserHistory, take_unseen_rows
from funnelrec.recall.base import RecallContext
from funnelrec.recall.tag import AttributeRecall, widened_history


@dataclass(frozen=True)
class FreshConfig:
    time_column: str = "publish_time"  # the contract's name for an item's publish time
    tau_days: float = 365.0
    max_items: int = 5000
    by_user_tags: bool = False
    tag_column: str | None = None  # with by_user_tags; None = the schema's first multi-valued items column
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
        from dataclasses import replace

        from funnelrec.recall.columns import schema_column

        if self.config.by_user_tags and self.config.tag_column is None:  # resolved once, kept in the config
            col = schema_column(data.dataset, ("multi", "categorical"), f"recall channel {self.name!r}: params.tag_column")
            self.config = replace(self.config, tag_column=col)
        cfg = self.config
        items = data.dataset.items
        if cfg.time_column not in items.columns:
            raise ConfigError(f"fresh: item column {cfg.time_column!r} not found; available: {', '.join(items.columns)}")
        pub = items[cfg.time_column].cast(float).fill_null(float("nan")).to_numpy().astype(np.float64)
        self.publish_ = pub
        self.now_ = data.now
        known = np.isfinite(pub)
        past = known & (pub <= data.now)
        order = np.lexsort((np.arange(len(pub)), -np.where(known, pub, -np.inf)))  # newest first
        order = order[known[order]]
        # the max_items newest items published by `now`, and every item dated after it
        self.items_ = order[~past[order] | (np.cumsum(past[order]) <= cfg.max_items)].astype(np.int64)
        if cfg.by_user_tags:
            fresh = np.where(past, self._freshness(np.where(past, pub, 0.0), data.now), 0.0)
            self._fit_index(data, cfg.tag_column, fresh, cfg.max_items, cfg.n_tags)
        self.history_ = UserHistory(data.csr)
        self.fitted_ = True
        return self

    def _recall(self, users: np.ndarray, n: int, context: RecallContext | None) -> CandidateBatch:
        if self.config.by_user_tags:
            return super()._recall(users, n, context)
        _, seen = self.history_.rows(users, context)
        t = self.now_ if context is None or context.time is None else context.time
        items = self.items_[self.publish_[self.items_] <= t]
        scores = self._freshness(self.publish_[items], t).astype(np.float32)
        indptr = np.array([0, len(items)], np.int64)
        return take_unseen_rows(indptr, items, scores, np.zeros(len(users), np.int64), seen, n,
                                self.history_.n_items, self.name)

    def _index_limit(self) -> int:
        return self.config.max_items

    def _new_item_score(self, scores: np.ndarray) -> float:
        return 1.0  # by-tag index scores are freshness at the fit's `now`: a new item is the freshest

    def _order_items(self) -> np.ndarray:
        """The global list (see `fit`): the `max_items` newest items published by `now_`, and
        every item dated after it, newest first."""
        pub = self.publish_
        known = np.isfinite(pub)
        past = known & (pub <= self.now_)
        order = np.lexsort((np.arange(len(pub)), -np.where(known, pub, -np.inf)))  # newest first
        order = order[known[order]]
        return order[~past[order] | (np.cumsum(past[order]) <= self.config.max_items)].astype(np.int64)

    def extend_items(self, items, changed: np.ndarray) -> FreshRecall:
        """A copy over the catalogue `items` (fitted items first, new ones appended): publish
        times re-read for every item (a changed or new item with one enters the global list at
        once: fresh(i, t) = exp(−(t − publish_i)/τ)); with `by_user_tags` the tag index as in
        `AttributeRecall.extend_items`. This channel is not changed."""
        cfg = self.config
        if self.config.by_user_tags:
            new = super().extend_items(items, changed)
        else:
            new = copy.copy(self)
            new.history_ = widened_history(self.history_, items.height)
        new.publish_ = items[cfg.time_column].cast(float).fill_null(float("nan")).to_numpy().astype(np.float64)
        new.items_ = new._order_items()
        return new

    def update(self, users: np.ndarray, items: np.ndarray, ts: np.ndarray,
               n_users: int | None = None, n_items: int | None = None) -> FreshRecall:
        """A copy advanced by the interactions (users[k], items[k], ts[k]): the present moves to
        now' = max(now, max ts) — the global list becomes the `max_items` newest items published
        by now' plus every item dated later, exactly as a fit whose latest timestamp is now' —
        and the consumed items join the users' seen items (never recalled to them again). The
        by-tag index keeps its fit-time freshness scores (a refit rebuilds it). Unchanged self."""
        import copy

        if not getattr(self, "fitted_", False):
            raise NotFittedError(f"recall channel {self.name!r} is not fitted; update() needs fit() or load()")
        ts = np.asarray(ts, np.int64).reshape(-1)
        new = copy.copy(self)
        new.history_ = self.history_.with_interactions(users, items, n_users, n_items)
        if new.history_.n_items > len(self.publish_):
            new.publish_ = np.concatenate([self.publish_, np.full(new.history_.n_items - len(self.publish_), np.nan)])
        new.now_ = max(int(self.now_), int(ts.max(initial=self.now_)))
        new.items_ = new._order_items()
        return new

    def _freshness(self, publish: np.ndarray, t: float) -> np.ndarray:
        """exp(−(t − publish)/τ) for items published by t; very old items stay ranked (> 0)."""
        return np.maximum(np.exp(-(t - publish) / (self.config.tau_days * 86400.0)), 1e-30)
