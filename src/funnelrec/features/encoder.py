"""`FeatureEncoder`: dataset columns → the ranking batch layout (models/ranking/base.py).

A thin composition of the registered feature transformers (features/transformers/): the config
builds one transformer per family that is switched on, fitted on `TrainData` in the fixed
`FAMILY_ORDER` (FieldFids, CountFeatures, CrossFeatures, ContextFeatures, DenseColumns,
SequenceFeatures, MatchFeatures, AffinityFeatures, TargetEncodingFeatures,
NeighborhoodCFFeatures, TimeFeatures). The encoder itself owns only what they share:

- ONE `FidVocab` (admission: `min_count`) over the FIDs of all training samples → embedding rows;
- the column layout. "sparse": the user block (every family's per-user FID columns: user_id,
  user_columns, user count buckets), the item block (item_id, item_columns — a multi-valued
  column takes `multi_width` columns, its first values, padded with row 0 — item count
  buckets), then the per-pair columns (crosses, context); `spec.field_names` names every
  column. "dense": the families' dense columns in family order (`dense_names_`).
- the entity blocks looked up once at fit: `user_rows_` (n_users, F_u), `item_rows_` (n_items,
  F_i), so a request gathers rows by dense index — no dicts, no per-item Python.

Slots are numbered 1, 2, … in config order (user_id, item_id, user_columns, item_columns, count
buckets, crosses, context).

    transform(user_idx (N,), item_idx (N,), ts (N,) | None) -> {"sparse": (N, F) int64,
        "dense": (N, Dn) float32, ["seq", "seq_mask", "target", "seq_cat", "target_cat"]}
    encode(interactions) -> transform(...) + {"label": (N,) float32}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl
import torch

from funnelrec.core.errors import ConfigError, DataError, NotFittedError
from funnelrec.data.dataset import TrainData
from funnelrec.features.fid import FidVocab
from funnelrec.features.spec import FeatureSpec
from funnelrec.features.transformers import (
    FAMILY_ORDER,
    AffinityFeaturesConfig,
    ContextFeaturesConfig,
    CountFeaturesConfig,
    CrossFeaturesConfig,
    DenseColumnsConfig,
    FeatureTransformer,
    FieldFidsConfig,
    FitContext,
    MatchFeaturesConfig,
    NeighborhoodCFFeaturesConfig,
    SequenceFeaturesConfig,
    TargetEncodingFeaturesConfig,
    TimeFeaturesConfig,
)
from funnelrec.features.transformers.base import SAMPLE_COLUMNS, as_samples, binary_labels

__all__ = ["FeatureEncoder", "FeatureEncoderConfig", "binary_labels"]


@dataclass(frozen=True)
class FeatureEncoderConfig:
    """The YAML front (configs/ctr/*.yaml `features:`) that builds the transformers; each
    family's keys map onto its own config (`families`)."""

    # none by default (the ml-100k CTR protocol's are eval/ctr.py RECBOLE_FEATURES, its configs'
    # `features:` add to them); a default naming one dataset's columns fits no other
    user_columns: tuple[str, ...] = ()
    item_columns: tuple[str, ...] = ()
    include_ids: bool = True
    multi_width: int = 6  # sparse columns given to a multi-valued field (its first values)
    pool_multi: bool = False  # spec.pool_multi: models mean-pool a multi-valued field's columns
    bucketize: dict[str, int] = field(default_factory=dict)  # numeric column → quantile buckets
    dense_columns: tuple[str, ...] = ()  # numeric user/item columns, CDF-normalized
    count_features: tuple[str, ...] = ()  # subset of COUNT_FEATURES
    count_buckets: int = 0  # > 0: count features also as bucket fields
    smoothing: float = 10.0  # pseudo-count pulling rates/means to the global value
    crosses: tuple[tuple[str, str], ...] = ()  # (user column, item column)
    context: tuple[str, ...] = ()  # subset of CONTEXT_FEATURES (UTC hour, weekday of ts)
    seq_len: int = 0
    seq_tag_column: str | None = None  # item column whose first value is "seq_cat"/"target_cat"
    match_columns: tuple[str, ...] = ()  # "item_id" or item columns (positive history)
    affinity_columns: tuple[str, ...] = ()  # item columns: user's smoothed positive rate on them
    min_count: int = 1  # FID admission: seen fewer times in training → row 0
    # target encoding (features/target.py): per key — columns of users/items, "user_id",
    # "item_id", e.g. (user_id,), (item_id,), (user_id, genres), (item_id, gender) — the smoothed
    # TRAIN mean of each target value ("label": posterior CTR; "rating": the label column's raw
    # mean), out-of-fold for training rows (target_folds ≥ 2; 0 = leave-one-out)
    target_keys: tuple[tuple[str, ...], ...] = ()
    target_values: tuple[str, ...] = ("label",)
    target_folds: int = 5
    target_smoothing: float = 10.0
    target_counts: bool = False  # also log1p(Σ N'[c]) of each key
    # neighbourhood estimates of the label (features/cf.py): item-CF / user-CF over TRAIN, label
    # or user-centred rating, similarities from the binary matrix with the diagonal zeroed
    cf_features: tuple[str, ...] = ()  # subset of CF_FEATURES
    # dense features of the sample time ts (needs ts): user_time_position = share of the user's
    # TRAIN events strictly before ts; user_elapsed = log1p(hours since the user's first TRAIN
    # event); item_age = years since the item's publish_time (needs that items column)
    time_features: tuple[str, ...] = ()  # subset of TIME_FEATURES
    cf_power: float = 3.0
    cf_centered_power: float = 1.0  # for the *_centered_* features (adjusted-cosine similarity)
    cf_smoothing: float = 1.0
    label_column: str = "rating"
    label_threshold: float | None = 4.0  # label = column ≥ threshold; None: column must be 0/1

    def __post_init__(self) -> None:
        if self.multi_width < 1 or self.seq_len < 0 or self.min_count < 1:
            raise ConfigError("multi_width ≥ 1, seq_len ≥ 0 and min_count ≥ 1 are required")
        if self.seq_len and not self.include_ids:
            raise ConfigError("seq_len > 0 needs include_ids (sequence items use item-id rows)")
        if self.seq_tag_column is not None and self.seq_tag_column not in self.item_columns:
            raise ConfigError(f"seq_tag_column {self.seq_tag_column!r} must be one of item_columns")
        self.families()  # each family's config checks its own keys

    def families(self) -> list[tuple[type[FeatureTransformer], Any]]:
        """(transformer class, its config) of every family this config switches on, in
        `FAMILY_ORDER` (which fixes slots and column order)."""
        on = {
            "field_fids": FieldFidsConfig(self.user_columns, self.item_columns, self.include_ids,
                                          self.multi_width, self.bucketize),
            "counts": self.count_features and CountFeaturesConfig(self.count_features, self.count_buckets,
                                                                  self.smoothing),
            "crosses": self.crosses and CrossFeaturesConfig(self.crosses),
            "context": self.context and ContextFeaturesConfig(self.context),
            "dense_columns": self.dense_columns and DenseColumnsConfig(self.dense_columns),
            "sequence": self.seq_len and SequenceFeaturesConfig(self.seq_len, self.seq_tag_column),
            "match": self.match_columns and MatchFeaturesConfig(self.match_columns),
            "affinity": self.affinity_columns and AffinityFeaturesConfig(self.affinity_columns, self.smoothing),
            "target_encoding": TargetEncodingFeaturesConfig(self.target_keys, self.target_values, self.target_folds,
                                                            self.target_smoothing, self.target_counts),
            "neighborhood_cf": self.cf_features and NeighborhoodCFFeaturesConfig(
                self.cf_features, self.cf_power, self.cf_centered_power, self.cf_smoothing, self.target_folds or 5),
            "time": self.time_features and TimeFeaturesConfig(self.time_features),
        }
        # the target-encoding config is built even without keys: a mistyped target value is an error
        return [(cls, on[cls.registered_name]) for cls in FAMILY_ORDER
                if on[cls.registered_name] and (cls.registered_name != "target_encoding" or self.target_keys)]


class FeatureEncoder:
    def __init__(self, config: FeatureEncoderConfig | None = None) -> None:
        self.config = config or FeatureEncoderConfig()

    # ------------------------------------------------------------------ fit
    def fit(self, train: TrainData) -> FeatureEncoder:
        cfg = self.config
        context = FitContext.from_train(train, cfg.label_column, cfg.label_threshold)
        self.transformers_ = [cls(c) for cls, c in cfg.families()]
        for t in self.transformers_:  # every family's column check before any slow fit
            t.validate(train)
        for t in self.transformers_:
            t.fit(train, context)
        self.n_users_, self.n_items_ = train.dataset.n_users, train.dataset.n_items
        fams = self.transformers_
        self.collisions_ = {k: v for t in fams for k, v in getattr(t, "collisions_", {}).items()}
        # ONE vocabulary over the FIDs of the training samples (every family, every slot)
        u, i, ts = context.user_idx, context.item_idx, context.ts
        self.vocab_ = FidVocab(cfg.min_count).fit(np.concatenate([t.fids(u, i, ts) for t in fams], axis=1))
        self.user_rows_ = self.vocab_.lookup(np.concatenate([t.user_fids_ for t in fams], axis=1))
        self.item_rows_ = self.vocab_.lookup(np.concatenate([t.item_fids_ for t in fams], axis=1))
        self.field_names_ = tuple(n for side in ("user_names_", "item_names_", "pair_names_")
                                  for t in fams for n in getattr(t, side))
        self.dense_names_ = [n for t in fams for n in t.dense_names_]
        return self

    @property
    def target_encoders_(self) -> list:
        """The `TargetEncoder` of each target key (features/target.py), in key order."""
        self._check()
        return [e for t in self.transformers_ for e in getattr(t, "encoders_", [])]

    def _labels(self, inter: pl.DataFrame) -> np.ndarray:
        return binary_labels(inter[self.config.label_column].to_numpy(), self.config.label_threshold,
                             f"label column {self.config.label_column!r}")

    # ------------------------------------------------------------------ transform
    def _check(self) -> None:
        if not hasattr(self, "vocab_"):
            raise NotFittedError("FeatureEncoder is not fitted; call fit(train) first")

    def transform(self, user_idx, item_idx, ts=None) -> dict[str, torch.Tensor]:
        """Batch tensors for samples (user_idx[k], item_idx[k]) at time ts[k] (None = now:
        whole history visible). Indices must be dense indices of the fitted dataset."""
        self._check()
        u, i, ts = as_samples(user_idx, item_idx, ts, self.n_users_, self.n_items_)
        parts = [self.user_rows_[u], self.item_rows_[i]]
        pair = [t.pair_fids(u, i, ts) for t in self.transformers_ if t.pair_names_]
        if pair:
            parts.append(self.vocab_.lookup(np.concatenate(pair, axis=1)))
        out = {"sparse": torch.from_numpy(np.ascontiguousarray(np.concatenate(parts, axis=1)))}
        if self.dense_names_:
            dense = [t.dense(u, i, ts) for t in self.transformers_ if t.dense_names_]
            out["dense"] = torch.from_numpy(np.concatenate(dense, axis=1))
        for t in self.transformers_:
            for k, v in t.sequences(u, i, ts).items():
                out[k] = torch.from_numpy(v if v.dtype == bool else self.vocab_.lookup(v))
        return out

    def encode(self, interactions: pl.DataFrame, with_time: bool | None = None) -> dict[str, torch.Tensor]:
        """transform() of an interactions table plus "label" (N,) float32. Sample times are
        passed (no leakage in sequence/match features) unless with_time=False."""
        self._check()
        missing = [c for c in (self.config.label_column, *SAMPLE_COLUMNS) if c not in interactions.columns]
        if missing:
            raise DataError(f"interactions lack columns {missing}")
        y = self._labels(interactions)
        ts = interactions["timestamp"].to_numpy() if with_time is not False else None
        out = self.transform(interactions["user_idx"].to_numpy(), interactions["item_idx"].to_numpy(), ts)
        out["label"] = torch.from_numpy(y)
        return out

    @property
    def spec(self) -> FeatureSpec:
        self._check()
        return FeatureSpec(n_embeddings=self.vocab_.n_rows, n_fields=len(self.field_names_),
                           n_dense=len(self.dense_names_), seq_len=self.config.seq_len,
                           field_names=self.field_names_, pool_multi=self.config.pool_multi)
