"""Shared value types that cross stage boundaries.

Items and users are addressed by *dense indices* (0..n_items-1, 0..n_users-1) inside the
funnel; the original ids live in the dataset tables and are mapped at the edges (loaders,
HTTP). A recall result is a fixed-width batch so that a whole evaluation (all users) and one
request (batch of one) run through the same vectorized code.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

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
