"""The funnel itself, HTTP-free: recall channels → snake merge → seen/exposure filter → rank →
top-K. Offline evaluation and serving call this same object, so they cannot drift.

    funnel = Funnel(FunnelConfig()).fit(dataset, split.train, labels=split.valid)
    funnel.recommend(user_id=196, k=10)           # one request, with attribution
    funnel.recommend_batch(users, k=10)            # all users at once, for evaluation
"""

from __future__ import annotations

import pickle
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import scipy.sparse as sp

from funnelrec.core.config import from_dict
from funnelrec.core.errors import ArtifactError, NotFittedError
from funnelrec.core.registry import RECALL_CHANNELS
from funnelrec.core.types import PAD, CandidateBatch, MergedCandidates
from funnelrec.data.dataset import Dataset, TrainData, interactions_csr
from funnelrec.pipeline.config import ChannelSpec, FunnelConfig
from funnelrec.recall.base import RecallChannel, RecallContext
from funnelrec.train.candidate_ranker import CandidateRanker, CandidateRankerConfig

_MAGIC = b"funnelrec-funnel-v1\n"


def build_channel(spec: ChannelSpec) -> RecallChannel:
    import funnelrec.recall  # noqa: F401  (registers every channel)

    cls = RECALL_CHANNELS.get(spec.kind)
    cfg_cls = getattr(cls, "config_class", None)
    if cfg_cls is not None:
        return cls(from_dict(cfg_cls, dict(spec.params), f"recall channel {spec.name!r} params"), name=spec.name)
    return cls(name=spec.name, **spec.params)


@dataclass
class Recommendation:
    """One answer: items with scores, the channels that recalled each, and how it was made."""

    user_idx: int
    items: np.ndarray  # dense item indices, best first
    scores: np.ndarray
    channels: list[list[str]]
    cold_start: bool
    timings_ms: dict[str, float] = field(default_factory=dict)
    debug: dict[str, Any] = field(default_factory=dict)
    recall_scores: np.ndarray | None = None  # (k, C) each channel's recall score, NaN = not recalled
    recall_channels: list[str] = field(default_factory=list)  # the C channel names of recall_scores


class Funnel:
    def __init__(self, config: FunnelConfig | None = None) -> None:
        self.config = config or FunnelConfig()

    # ------------------------------------------------------------------ fitting
    def fit(self, dataset: Dataset, train: pl.DataFrame, labels: pl.DataFrame | None = None,
            progress: bool = False) -> Funnel:
        """Fit every channel on `train`; train the ranker on the merged candidates of the users
        in `labels` (interactions after/beside train, e.g. the validation split) as positives."""
        cfg = self.config
        self.dataset_ = dataset
        data = TrainData(dataset, train)
        self.history_ = data.csr
        n_items = dataset.n_items
        pop = np.bincount(train["item_idx"].to_numpy(), minlength=n_items)
        self.item_log_pop_ = np.log1p(pop).astype(np.float32)
        self.user_log_act_ = np.log1p(np.diff(self.history_.indptr)).astype(np.float32)
        self.channels_: dict[str, RecallChannel] = {}
        self.fit_seconds_: dict[str, float] = {}
        specs = cfg.recall.channels
        it = specs
        if progress:
            from tqdm import tqdm

            it = tqdm(specs, desc="fitting recall channels", unit="channel")
        for spec in it:
            t0 = time.perf_counter()
            self.channels_[spec.name] = build_channel(spec).fit(data)
            self.fit_seconds_[spec.name] = time.perf_counter() - t0
        self.ranker_ = None
        if labels is not None and labels.height:
            users = np.unique(labels["user_idx"].to_numpy())
            positives = interactions_csr(labels, dataset.n_users, n_items)
            merged = self.candidates(users)
            rs = cfg.rank
            t0 = time.perf_counter()
            self.ranker_ = CandidateRanker(CandidateRankerConfig(
                epochs=rs.epochs, lr=rs.lr, batch_size=rs.batch_size, random_negatives=rs.random_negatives,
                seed=rs.seed)).fit(merged, users, positives, self.item_log_pop_, self.user_log_act_,
                                   self.history_, progress=progress)
            self.fit_seconds_["ranker"] = time.perf_counter() - t0
        return self

    def _check(self) -> None:
        if not hasattr(self, "channels_"):
            raise NotFittedError("the funnel is not fitted; call fit() or Funnel.load()")

    # ------------------------------------------------------------------ stages
    def recall(self, users: np.ndarray, context: RecallContext | None = None,
               channels: list[str] | None = None) -> list[CandidateBatch]:
        self._check()
        users = np.asarray(users, dtype=np.int64)
        out = []
        for spec in self.config.recall.channels:
            if channels is not None and spec.name not in channels:
                continue
            ch = self.channels_[spec.name]
            out.append(ch.recall(users, spec.n, context))
        return out

    def merge(self, batches: list[CandidateBatch]) -> list[MergedCandidates]:
        from funnelrec.recall.merge import snake_merge

        m = self.config.recall.merge
        return snake_merge(batches, quotas=dict(m.quotas) or None, priority=list(m.priority) or None, total=m.total)

    def candidates(self, users: np.ndarray, context: RecallContext | None = None,
                   exclude: sp.csr_matrix | None = None) -> list[MergedCandidates]:
        """Recall → merge → filter (items in `exclude[user]` removed; seen items never recalled)."""
        users = np.asarray(users, dtype=np.int64)
        # every channel answers every user (personalized channels give unknown or history-less users
        # an empty row), so the merged set always has the full channel layout the ranker expects
        merged = self.merge(self.recall(users, context))
        if exclude is not None:
            for row, (u, m) in enumerate(zip(users, merged)):
                if u < 0 or len(m) == 0:
                    continue
                ex = exclude.indices[exclude.indptr[u] : exclude.indptr[u + 1]]
                if ex.size:
                    keep = ~np.isin(m.items, ex)
                    merged[row] = _subset(m, keep)
        return merged

    def rank(self, merged: list[MergedCandidates], users: np.ndarray) -> list[np.ndarray]:
        """Scores for each user's candidates: the ranker's logit, or merge order without one."""
        if self.ranker_ is None:
            return [-np.arange(len(m), dtype=np.float32) for m in merged]
        return self.ranker_.score(merged, np.maximum(users, 0), self.item_log_pop_, self.user_log_act_)

    # ------------------------------------------------------------------ answers
    def recommend_batch(self, users: np.ndarray, k: int, exclude: sp.csr_matrix | None = None,
                        context: RecallContext | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(U, k) item indices (PAD-filled) and scores for many users: the offline path."""
        users = np.asarray(users, dtype=np.int64)
        merged = self.candidates(users, context, exclude)
        scores = self.rank(merged, users)
        items = np.full((len(users), k), PAD, np.int64)
        out_s = np.full((len(users), k), -np.inf, np.float32)
        for row, (m, s) in enumerate(zip(merged, scores)):
            top = np.argsort(-s, kind="stable")[:k]
            items[row, : len(top)] = m.items[top]
            out_s[row, : len(top)] = s[top]
        return items, out_s

    def recommend(self, user_id: Any = None, k: int | None = None, user_idx: int | None = None,
                  context: RecallContext | None = None, debug: bool = False,
                  exposure_filter: Callable[[np.ndarray], np.ndarray] | None = None) -> Recommendation:
        """One request. An unknown user gets the non-personalized channels, flagged cold_start.

        exposure_filter(items) → bool mask of items already exposed to this user (e.g. a
        per-user Bloom filter); those are removed between merge and rank."""
        self._check()
        k = k or self.config.k
        t = {}
        t0 = time.perf_counter()
        if user_idx is None:
            user_idx = self.dataset_.user_ids.index(user_id) if user_id is not None else -1
        users = np.array([user_idx], np.int64)
        cold = user_idx < 0 or self.history_.indptr[user_idx + 1] == self.history_.indptr[user_idx]
        batches = self.recall(users, context)
        t["recall"] = (time.perf_counter() - t0) * 1e3
        t1 = time.perf_counter()
        merged = self.merge(batches)
        t["merge"] = (time.perf_counter() - t1) * 1e3
        removed = np.empty(0, np.int64)
        if exposure_filter is not None and len(merged[0]):
            t1 = time.perf_counter()
            exposed = np.asarray(exposure_filter(merged[0].items), dtype=bool)
            removed = merged[0].items[exposed]
            merged[0] = _subset(merged[0], ~exposed)
            t["filter"] = (time.perf_counter() - t1) * 1e3
        t1 = time.perf_counter()
        scores = self.rank(merged, users)[0]
        t["rank"] = (time.perf_counter() - t1) * 1e3
        m = merged[0]
        top = np.argsort(-scores, kind="stable")[:k]
        t["total"] = (time.perf_counter() - t0) * 1e3
        dbg = {}
        if debug:
            dbg = {"candidates": len(m), "per_channel": {b.channel: int((b.items[0] != PAD).sum()) for b in batches},
                   "filtered": removed.tolist()}
        return Recommendation(
            user_idx=int(user_idx), items=m.items[top], scores=scores[top],
            channels=[m.channels_of(int(p)) for p in top], cold_start=bool(cold), timings_ms=t, debug=dbg,
            recall_scores=m.scores[top], recall_channels=list(m.channels),
        )

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> None:
        self._check()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        with open(tmp, "wb") as f:
            f.write(_MAGIC)
            pickle.dump(self, f, protocol=pickle.HIGHEST_PROTOCOL)
        tmp.replace(path)

    @staticmethod
    def load(path: str | Path) -> Funnel:
        path = Path(path)
        try:
            with open(path, "rb") as f:
                if f.read(len(_MAGIC)) != _MAGIC:
                    raise ArtifactError(f"{path}: not a funnelrec funnel file")
                obj = pickle.load(f)
        except FileNotFoundError:
            raise ArtifactError(f"{path}: funnel file not found; train one with `funnelrec train`") from None
        except (pickle.UnpicklingError, EOFError, AttributeError, ValueError) as e:
            raise ArtifactError(f"{path}: corrupt funnel file ({e})") from None
        if not isinstance(obj, Funnel):
            raise ArtifactError(f"{path}: holds a {type(obj).__name__}, not a funnel")
        return obj


def _subset(m: MergedCandidates, keep: np.ndarray) -> MergedCandidates:
    return MergedCandidates(m.items[keep], m.sources[keep], m.scores[keep], m.channels, m.meta)
