"""Hot recall: the catalogue's time-decayed popularity, minus what the user has seen.

    hot(i) = Σ_{(u, i, t) ∈ train} exp(−(now − t) / τ)        (τ = tau_days · 86400 s; τ = 0 → count)

Not personalized: unknown users (-1) get the global list as it is (the cold-start path).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from funnelrec.core.errors import ConfigError, NotFittedError
from funnelrec.core.registry import RECALL_CHANNELS
from funnelrec.core.types import CandidateBatch
from funnelrec.data.dataset import TrainData
from funnelrec.recall._common import UserHistory, take_unseen_rows
from funnelrec.recall.base import RecallChannel, RecallContext


@dataclass(frozen=True)
class HotConfig:
    tau_days: float = 30.0  # decay time constant in days; 0 = plain interaction count
    max_items: int = 5000  # length of the ranked list kept after fit

    def __post_init__(self) -> None:
        if self.tau_days < 0 or self.max_items < 1:
            raise ConfigError(f"HotConfig: tau_days must be ≥ 0 and max_items ≥ 1, got {self}")


def decayed_counts(item_idx: np.ndarray, timestamps: np.ndarray, now: int, tau_days: float,
                   n_items: int) -> np.ndarray:
    """(I,) Σ exp(−(now − t)/τ) per item; τ = 0 gives the plain count."""
    if tau_days <= 0:
        w = np.ones(len(item_idx))
    else:
        w = np.exp(-(now - timestamps.astype(np.float64)) / (tau_days * 86400.0))
    return np.bincount(item_idx, weights=w, minlength=n_items)


def train_popularity(data: TrainData, tau_days: float, scale_to_max: bool = False) -> np.ndarray:
    """(I,) `decayed_counts` of the training interactions at `data.now`; with `scale_to_max`
    divided by the largest, so the most popular item scores 1."""
    inter = data.interactions
    pop = decayed_counts(inter["item_idx"].to_numpy(), inter["timestamp"].to_numpy(), data.now, tau_days,
                         data.n_items)
    return pop / max(pop.max(initial=0.0), 1e-12) if scale_to_max else pop


def ranked_list(scores: np.ndarray, max_items: int) -> tuple[np.ndarray, np.ndarray]:
    """Items with score > 0, best first (ties → lower index), at most max_items."""
    order = np.lexsort((np.arange(len(scores)), -scores))
    order = order[scores[order] > 0][:max_items]
    return order.astype(np.int64), scores[order].astype(np.float32)


@RECALL_CHANNELS.register("hot")
class HotRecall(RecallChannel):
    personalized = False
    config_class = HotConfig

    def __init__(self, config: HotConfig | None = None, name: str | None = None) -> None:
        super().__init__(name)
        self.config = config or HotConfig()

    def fit(self, data: TrainData) -> HotRecall:
        pop = train_popularity(data, self.config.tau_days)
        self.popularity_ = pop  # (I,) hot(i) at now_, all items: what `update` decays and adds to
        self.now_ = int(data.now)
        self.items_, self.scores_ = ranked_list(pop, self.config.max_items)
        self.history_ = UserHistory(data.csr)
        self.fitted_ = True
        return self

    def update(self, users: np.ndarray, items: np.ndarray, ts: np.ndarray,
               n_users: int | None = None, n_items: int | None = None) -> HotRecall:
        """A copy with the interactions (users[k], items[k], ts[k]) counted, at the new present
        now' = max(now, max ts):

            hot'(i) = hot(i) · exp(−(now' − now)/τ) + Σ_{new (i, t)} exp(−(now' − t)/τ)

        which equals `fit` on the training data plus these interactions (each old term
        exp(−(now − t)/τ) times exp(−(now' − now)/τ) is exp(−(now' − t)/τ)); τ = 0 adds counts.
        Touches only the popularity vector and the ranked list. A channel saved before
        `popularity_` existed starts from its ranked list (exact when every item with a
        positive score is in it). This channel is unchanged."""
        import copy

        if not getattr(self, "fitted_", False):
            raise NotFittedError(f"recall channel {self.name!r} is not fitted; update() needs fit() or load()")
        users = np.asarray(users, np.int64).reshape(-1)
        items = np.asarray(items, np.int64).reshape(-1)
        ts = np.asarray(ts, np.int64).reshape(-1)
        history = self.history_.with_interactions(users, items, n_users, n_items)
        I = history.n_items
        pop = getattr(self, "popularity_", None)
        if pop is None:
            pop = np.zeros(self.history_.n_items)
            pop[self.items_] = self.scores_
        now = int(getattr(self, "now_", 0) or 0)
        now_new = max(now, int(ts.max(initial=now)))
        tau = self.config.tau_days * 86400.0
        out = np.zeros(I)
        out[: len(pop)] = pop * (np.exp(-(now_new - now) / tau) if tau > 0 else 1.0)
        out += decayed_counts(items, ts, now_new, self.config.tau_days, I)
        new = copy.copy(self)
        new.popularity_, new.now_, new.history_ = out, now_new, history
        new.items_, new.scores_ = ranked_list(out, self.config.max_items)
        return new

    def _recall(self, users: np.ndarray, n: int, context: RecallContext | None) -> CandidateBatch:
        _, seen = self.history_.rows(users, context)
        groups = np.zeros(len(users), np.int64)
        indptr = np.array([0, len(self.items_)], np.int64)
        return take_unseen_rows(indptr, self.items_, self.scores_, groups, seen, n, self.history_.n_items, self.name)
