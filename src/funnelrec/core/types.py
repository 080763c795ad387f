"""Shared value types that cross stage boundaries.

Items and users are addressed by *dense indices* (0..n_items-1, 0..n_users-1) inside the
funnel; the original ids live in the dataset tables and are mapped at the edges (loaders,
HTTP). A recall result is a fixed-width batch so that a whole evaluation (all users) and one
request (batch of one) run through the same vectorized code.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from funnelrec.core.errors import DataError

PAD = -1  # item index of an empty slot in a candidate batch


@dataclass
class CandidateBatch:
    """Candidates for a batch of users from one channel.

    items:  (U, N) int64 dense item indices, PAD (-1) where a user has fewer than N.
    scores: (U, N) float32, descending along each row; -inf at PAD.
    """

    channel: str
    items: np.ndarray
    scores: np.ndarray

    def __post_init__(self) -> None:
        if self.items.shape != self.scores.shape or self.items.ndim != 2:
            raise ValueError(
                f"items {self.items.shape} and scores {self.scores.shape} must be equal 2-D shapes"
            )

    @property
    def n_users(self) -> int:
        return self.items.shape[0]

    def row(self, u: int) -> tuple[np.ndarray, np.ndarray]:
        keep = self.items[u] != PAD
        return self.items[u][keep], self.scores[u][keep]


@dataclass
class MergedCandidates:
    """One user's merged candidate set with per-channel attribution.

    items:    (N,) int64 dense item indices, in merge order.
    sources:  (N,) uint64 bitmask; bit c set ⇔ channel `channels[c]` recalled the item.
    scores:   (N, C) float32 per-channel recall score (NaN where the channel did not recall it).
    features: (N, d) float32 recall-source features (features/candidates.py) computed once on the
              merged list, so later cuts (exposure filter, pre-rank) keep each item's values as
              the ranker saw them in training; None until attached.
    """

    items: np.ndarray
    sources: np.ndarray
    scores: np.ndarray
    channels: list[str]
    meta: dict = field(default_factory=dict)
    features: np.ndarray | None = None

    def subset(self, keep: np.ndarray) -> MergedCandidates:
        """The candidates at positions (or mask) `keep`, in that order, with their features."""
        f = None if self.features is None else self.features[keep]
        return MergedCandidates(self.items[keep], self.sources[keep], self.scores[keep], self.channels, self.meta, f)

    def __len__(self) -> int:
        return len(self.items)

    def channels_of(self, pos: int) -> list[str]:
        mask = int(self.sources[pos])
        return [c for i, c in enumerate(self.channels) if mask >> i & 1]


class ExposureSet(Protocol):
    """What a user was already shown: membership of int64 item keys (a Bloom filter's view)."""

    def contains(self, keys: np.ndarray) -> np.ndarray: ...


class KeySet:
    """An exact `ExposureSet` over known item keys (offline replays, tests)."""

    def __init__(self, keys: Sequence[int] | np.ndarray) -> None:
        self.keys = np.unique(np.asarray(keys, dtype=np.int64))

    def contains(self, keys: np.ndarray) -> np.ndarray:
        return np.isin(np.asarray(keys, dtype=np.int64), self.keys)


@dataclass(frozen=True)
class RequestState:
    """The online state of one request batch, passed *into* `Funnel.run` as a value (one entry
    per user of the batch, aligned with `users`; None = nothing for that user). The funnel only
    reads it: no callback into the service, nothing fitted changes during a request.

    history:  fresh item indices consumed since the fit, oldest first (the service fills it from
              its real-time history store, online/state.py): the triggers of every
              history-reading channel (itemCF, Swing, EASE, userCF, vector, tag, author), seen
              for every channel (never recalled again), and part of the ranker's match features
              (fit-time row ∪ these items, `HistoryMatch.current_rows`); a user with fresh
              history is not cold start, even one unknown at fit time (index -1)
    exclude:  item indices never to return (offline: the user's train + valid items; online:
              a client's `exclude` list, items already bought …)
    exposure: the items already shown to the user (per-user exposure filter view over item
              keys): removed between merge and pre-rank, like `exclude`
    cached:   the user's previous ranked (items, scores), read by the cache channel
    follows:  the user's live follow edges since the fit, external author id → True (follows) /
              False (unfollowed), read by the author channel on top of the fitted follows table
              (the service fills it from its follow store, online/follows.py)
    """

    history: Sequence[np.ndarray | None] | None = None
    exclude: Sequence[np.ndarray | None] | None = None
    exposure: Sequence[ExposureSet | None] | None = None
    cached: Sequence[tuple[np.ndarray, np.ndarray] | None] | None = None
    follows: Sequence[Mapping[str, bool] | None] | None = None

    def check(self, n_users: int) -> None:
        for name in ("history", "exclude", "exposure", "cached", "follows"):
            v = getattr(self, name)
            if v is not None and len(v) != n_users:
                raise DataError(f"request state {name!r} has {len(v)} rows for {n_users} users")
