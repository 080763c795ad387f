"""Features of the user's TRAIN history before the sample time ts (ts = None: all of it).

Only events strictly before ts are visible, so a training row never sees itself or its future.

- `SequenceFeatures`: the user's last L positive items before ts (features/sequences.py),
  right-aligned, as item-id FIDs "seq" (N, L) with "seq_mask"; "target" = the candidate's
  item-id FID; with a tag column also "seq_cat"/"target_cat" (each item's first value).
- `MatchFeatures`: match_a(u, i, t) = Σ_{v ∈ A(i)} #{positive events (u, j, s): s < t, v ∈ A(j)}
  (features/match.py), dense as log(1 + match).
- `AffinityFeatures`: over ALL the user's earlier events (labels y), n = the match count and
  rate = (Σ y + m · ȳ) / (n + m); dense [rate, log(1 + n)] per column.
- `TimeFeatures`: user_time_position = #{user's events before ts} / #{user's events} (0.5 for a
  user without events); user_elapsed = log(1 + hours since the user's first event);
  item_age = years (365.25 d) since the item's publish_time (0 if unknown) — each as its
  training-row CDF.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from funnelrec.core.errors import ConfigError, DataError
from funnelrec.core.registry import FEATURE_TRANSFORMERS
from funnelrec.data.dataset import TrainData
from funnelrec.features.fid import PAD_FID
from funnelrec.features.match import MatchCounter
from funnelrec.features.sequences import UserHistory
from funnelrec.features.transformers.base import (
    FeatureTransformer,
    FitContext,
    require_known,
    require_ts,
    stack_dense,
    value_lists,
)
from funnelrec.features.transforms import CdfNormalizer, log1p_transform

TIME_FEATURES = ("user_time_position", "user_elapsed", "item_age")


@dataclass(frozen=True)
class SequenceFeaturesConfig:
    seq_len: int = 20  # L
    tag_column: str | None = None  # item field whose first value is "seq_cat"/"target_cat"

    def __post_init__(self) -> None:
        if self.seq_len < 1:
            raise ConfigError(f"seq_len must be ≥ 1, got {self.seq_len}")


@FEATURE_TRANSFORMERS.register("sequence")
class SequenceFeatures(FeatureTransformer):
    """The user's recent positive items; reads the item_id (and tag) FIDs from the context."""

    Config = SequenceFeaturesConfig

    def fit(self, train: TrainData, context: FitContext) -> SequenceFeatures:
        cfg = self.config
        self._start_fit(train)
        if context.fields.get("item_id", ("",))[0] != "item":
            raise ConfigError("sequence features need the item_id field (include_ids): sequence items are item ids")
        self.id_fids_ = context.fields["item_id"][1][:, 0]
        self.tag_fids_ = None
        if cfg.tag_column is not None:
            side, fids = context.fields.get(cfg.tag_column, ("", None))
            if side != "item":
                raise ConfigError(f"seq_tag_column {cfg.tag_column!r} must be an item field")
            self.tag_fids_ = fids[:, 0]
        pos = context.labels > 0
        self.history_ = UserHistory(self.n_users_).fit(context.user_idx[pos], context.item_idx[pos], context.ts[pos])
        return self

    def sequences(self, u, i, ts):
        seq_items, mask, _ = self.history_.sequences(u, self.config.seq_len, ts)
        safe = np.where(mask, seq_items, 0)
        out = {"seq": np.where(mask, self.id_fids_[safe], PAD_FID), "seq_mask": mask, "target": self.id_fids_[i]}
        if self.tag_fids_ is not None:
            out["seq_cat"] = np.where(mask, self.tag_fids_[safe], PAD_FID)
            out["target_cat"] = self.tag_fids_[i]
        return out


def _check_item_columns(train: TrainData, columns, what: str, allow_id: bool) -> None:
    for c in columns:
        if not (allow_id and c == "item_id") and c not in train.dataset.items.columns:
            raise DataError(f"{what} column {c!r} not in the items table")


@dataclass(frozen=True)
class MatchFeaturesConfig:
    columns: tuple[str, ...] = ()  # "item_id" or items columns


@FEATURE_TRANSFORMERS.register("match")
class MatchFeatures(FeatureTransformer):
    """Earlier positive events sharing the candidate's id / values, per column."""

    Config = MatchFeaturesConfig

    def validate(self, train: TrainData) -> None:
        _check_item_columns(train, self.config.columns, "match", allow_id=True)

    def fit(self, train: TrainData, context: FitContext) -> MatchFeatures:
        self._start_fit(train)
        pos = context.labels > 0
        u, i, t = context.user_idx[pos], context.item_idx[pos], context.ts[pos]
        self.counters_ = [MatchCounter(self.n_users_).fit(
            u, i, t, None if c == "item_id" else value_lists(train.dataset.items, c)) for c in self.config.columns]
        self.dense_names_ = tuple(f"match_{c}" for c in self.config.columns)
        return self

    def dense(self, u, i, ts):
        return stack_dense([log1p_transform(m.count(u, i, ts)) for m in self.counters_], len(u))


@dataclass(frozen=True)
class AffinityFeaturesConfig:
    columns: tuple[str, ...] = ()  # items columns
    smoothing: float = 10.0  # m


@FEATURE_TRANSFORMERS.register("affinity")
class AffinityFeatures(FeatureTransformer):
    """The user's smoothed positive rate on the candidate's values, and how many events it rests on."""

    Config = AffinityFeaturesConfig

    def validate(self, train: TrainData) -> None:
        _check_item_columns(train, self.config.columns, "affinity", allow_id=False)

    def fit(self, train: TrainData, context: FitContext) -> AffinityFeatures:
        self._start_fit(train)
        y = context.labels
        self.prior_ = float(y.mean()) if len(y) else 0.0  # ȳ
        self.counters_ = [MatchCounter(self.n_users_).fit(context.user_idx, context.item_idx, context.ts,
                                                          value_lists(train.dataset.items, c), weights=y)
                          for c in self.config.columns]
        self.dense_names_ = tuple(n for c in self.config.columns for n in (f"affinity_{c}", f"affinity_n_{c}"))
        return self

    def dense(self, u, i, ts):
        m, cols = self.config.smoothing, []
        for counter in self.counters_:
            n = counter.count(u, i, ts)
            cols.append((counter.count(u, i, ts, weighted=True) + m * self.prior_) / (n + m))
            cols.append(log1p_transform(n))
        return stack_dense(cols, len(u))


@dataclass(frozen=True)
class TimeFeaturesConfig:
    features: tuple[str, ...] = ()  # subset of TIME_FEATURES

    def __post_init__(self) -> None:
        require_known(self.features, TIME_FEATURES, "time features")


@FEATURE_TRANSFORMERS.register("time")
class TimeFeatures(FeatureTransformer):
    """Where the sample falls in the user's TRAIN timeline, and the item's age (needs ts)."""

    Config = TimeFeaturesConfig

    def validate(self, train: TrainData) -> None:
        if "item_age" in self.config.features and "publish_time" not in train.dataset.items.columns:
            raise DataError("time feature 'item_age' needs a 'publish_time' column in the items table")

    def fit(self, train: TrainData, context: FitContext) -> TimeFeatures:
        self._start_fit(train)
        u, ts = context.user_idx, context.ts
        order = np.lexsort((ts, u))
        self.timeline_user_, self.timeline_ts_ = u[order], ts[order].astype(np.int64)
        users = np.arange(self.n_users_)
        self.timeline_start_ = np.searchsorted(self.timeline_user_, users)
        self.timeline_end_ = np.searchsorted(self.timeline_user_, users, side="right")
        items = train.dataset.items
        self.publish_ = (items["publish_time"].cast(pl.Float64).fill_null(np.nan).to_numpy()
                         if "publish_time" in items.columns else None)
        raw = self.values(u, context.item_idx, ts)
        self.cdf_ = [CdfNormalizer().fit(raw[:, k]) for k in range(raw.shape[1])]
        self.dense_names_ = tuple(self.config.features)
        return self

    def values(self, u: np.ndarray, i: np.ndarray, ts) -> np.ndarray:
        """(N, len(features)) float64 raw time features (before the CDF)."""
        ts = require_ts(ts, "time features")
        tl_user, tl_ts = self.timeline_user_, self.timeline_ts_
        start, end = self.timeline_start_[u], self.timeline_end_[u]
        n = end - start
        # events of user u strictly before ts: one search over the (user, time)-sorted keys
        t0 = int(tl_ts.min()) if len(tl_ts) else 0
        span = (int(tl_ts.max()) - t0 + 2) if len(tl_ts) else 2
        before = np.searchsorted(tl_user * span + (tl_ts - t0), u * span + np.clip(ts - t0, 0, span - 1),
                                 side="left") - start
        first = tl_ts[np.minimum(start, len(tl_ts) - 1)]
        cols = []
        for c in self.config.features:
            if c == "user_time_position":
                cols.append(np.where(n > 0, before / np.maximum(n, 1), 0.5))
            elif c == "user_elapsed":
                cols.append(np.where(n > 0, np.log1p(np.maximum(ts - first, 0) / 3600.0), 0.0))
            else:
                age = (ts - self.publish_[i]) / (365.25 * 86400)
                cols.append(np.nan_to_num(age, nan=0.0))  # unknown publish time → age 0
        return np.stack(cols, axis=1)

    def dense(self, u, i, ts):
        raw = self.values(u, i, ts)
        return stack_dense([cdf.transform(raw[:, k]) for k, cdf in enumerate(self.cdf_)], len(u))
