"""The recall-channel contract.

A channel is fitted on `TrainData` and answers a *batch* of users at once with a fixed-width
`CandidateBatch` (scores descending, PAD=-1 where fewer than n). One request is a batch of one,
so offline evaluation over all users and serving share one code path. Channels never return an
item the user already consumed in the data they were fitted on (`exclude_seen=True`).

    >>> ch = RECALL_CHANNELS.build("hot")           # doctest: +SKIP
    >>> ch.fit(train).recall(np.array([0, 1]), n=50) # doctest: +SKIP
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from funnelrec.core.errors import ArtifactError, NotFittedError
from funnelrec.core.types import PAD, CandidateBatch, RequestState
from funnelrec.data.dataset import TrainData


@dataclass
class RecallContext:
    """Per-request facts a channel may use (region for geo, time for fresh, …) and the request's
    online state (`state.cached` for the cache channel; fresh history reaches channels as
    `extra["history"]`, which `Funnel.run` fills from `state.history`)."""

    time: int | None = None
    region: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    state: RequestState | None = None


class RecallChannel(ABC):
    #: False for channels that need no user history (hot, fresh, geo): the cold-start path.
    personalized: bool = True
    registered_name: str = "channel"

    def __init__(self, name: str | None = None) -> None:
        self.name = name or type(self).registered_name
        self.fitted_ = False

    @abstractmethod
    def fit(self, data: TrainData) -> RecallChannel: ...

    @abstractmethod
    def _recall(self, users: np.ndarray, n: int, context: RecallContext | None) -> CandidateBatch: ...

    def recall(self, users: np.ndarray, n: int, context: RecallContext | None = None) -> CandidateBatch:
        """Top-n candidates for each dense user index in `users` (-1 = unknown user)."""
        if not getattr(self, "fitted_", False):
            raise NotFittedError(f"recall channel {self.name!r} is not fitted; call fit() or load()")
        users = np.asarray(users, dtype=np.int64).reshape(-1)
        return self._recall(users, int(n), context)

    def save(self, path: str | Path) -> None:
        """Write the fitted channel as a state directory (core/persist.py: arrays and tables as
        files, no pickle) — the same format as its part of a funnel artifact."""
        from funnelrec.core.persist import save_state

        save_state(self, path)

    @staticmethod
    def load(path: str | Path) -> RecallChannel:
        from funnelrec.core.persist import load_state

        obj = load_state(path)
        if not isinstance(obj, RecallChannel):
            raise ArtifactError(f"{path}: holds a {type(obj).__name__}, not a recall channel")
        return obj


def topn_dense(scores: np.ndarray, n: int, channel: str, exclude: sp.csr_matrix | None = None,
               rows: np.ndarray | None = None) -> CandidateBatch:
    """Top-n of each row of a dense (U, I) score matrix; items in `exclude[rows]` and items
    with score ≤ 0 or -inf are dropped (PAD). Modifies `scores` in place."""
    scores = np.asarray(scores, dtype=np.float32)
    if exclude is not None:
        sub = exclude[rows] if rows is not None else exclude
        r, c = sub.nonzero()
        scores[r, c] = -np.inf
    U, I = scores.shape
    n_eff = min(n, I)
    if n_eff < I:
        part = np.argpartition(-scores, n_eff - 1, axis=1)[:, :n_eff]
    else:
        part = np.broadcast_to(np.arange(I), (U, I)).copy()
    top = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-top, axis=1, kind="stable")
    items = np.take_along_axis(part, order, axis=1).astype(np.int64)
    top = np.take_along_axis(top, order, axis=1)
    invalid = ~np.isfinite(top) | (top <= 0)
    items[invalid] = PAD
    top[invalid] = -np.inf
    if n_eff < n:
        pad = n - n_eff
        items = np.pad(items, ((0, 0), (0, pad)), constant_values=PAD)
        top = np.pad(top, ((0, 0), (0, pad)), constant_values=-np.inf)
    return CandidateBatch(channel, items, top.astype(np.float32))


def empty_batch(channel: str, n_users: int, n: int) -> CandidateBatch:
    return CandidateBatch(channel, np.full((n_users, n), PAD, np.int64), np.full((n_users, n), -np.inf, np.float32))
