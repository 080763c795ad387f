"""Label statistics of TRAIN as features, out-of-fold for the training rows themselves.

- `TargetEncodingFeatures`: per key (user/item columns, "user_id", "item_id"; a multi-valued
  column pools its values) and target value ("label": posterior CTR; "rating": the raw label
  column's mean), TE = (Σ S'[c] + m · t̄) / (Σ N'[c] + m) (features/target.py), as its
  training-row CDF; with `counts`, also log(1 + Σ N'[c]).
- `NeighborhoodCFFeatures`: item-CF / user-CF estimates of the label or user-centred rating
  (features/cf.py), binary or centred (adjusted-cosine) similarities, as training-row CDFs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from funnelrec.core.errors import ConfigError
from funnelrec.core.registry import FEATURE_TRANSFORMERS
from funnelrec.data.dataset import TrainData
from funnelrec.features.cf import NeighborhoodCF
from funnelrec.features.target import TargetEncoder
from funnelrec.features.transformers.base import (
    FeatureTransformer,
    FitContext,
    entity_side,
    require_known,
    stack_dense,
)
from funnelrec.features.transforms import CdfNormalizer, log1p_transform

CF_FEATURES = ("itemcf_label", "itemcf_rating", "usercf_label", "usercf_rating",
               "itemcf_centered_label", "itemcf_centered_rating", "usercf_centered_label", "usercf_centered_rating")
MAX_KEY_CODES = 50_000_000
TARGET_VALUES = ("label", "rating")


def entity_codes(dataset, col: str) -> tuple[str, np.ndarray, int]:
    """(side, (n_entities, W) int64 codes with -1 = missing, cardinality) of a key column;
    codes number the distinct values in order of first appearance."""
    if col in ("user_id", "item_id"):
        n = dataset.n_users if col == "user_id" else dataset.n_items
        return col.split("_")[0], np.arange(n, dtype=np.int64)[:, None], n
    side = entity_side(dataset, col, "target key column")
    series = (dataset.users if side == "user" else dataset.items)[col]
    lists = series.to_list() if isinstance(series.dtype, pl.List) else [[v] for v in series.to_list()]
    uniq = {v: k for k, v in enumerate(dict.fromkeys(v for vs in lists if vs is not None for v in vs if v is not None))}
    w = max([len(vs) for vs in lists if vs is not None] + [1])
    out = np.full((len(lists), w), -1, dtype=np.int64)
    for r, vs in enumerate(lists):
        for j, v in enumerate(vs or []):
            if v is not None:
                out[r, j] = uniq[v]
    return side, out, max(len(uniq), 1)


@dataclass(frozen=True)
class TargetEncodingFeaturesConfig:
    keys: tuple[tuple[str, ...], ...] = ()  # e.g. (user_id,), (item_id,), (user_id, genres)
    values: tuple[str, ...] = ("label",)  # "label" and/or "rating"
    folds: int = 5  # ≥ 2: K-fold out-of-fold training values; 0: leave-one-out
    smoothing: float = 10.0  # m
    counts: bool = False  # also log1p(Σ N'[c]) of each key

    def __post_init__(self) -> None:
        require_known(self.values, TARGET_VALUES, "target values")
        if any(len(k) == 0 for k in self.keys):
            raise ConfigError("target_keys: every key needs ≥ 1 column")


@FEATURE_TRANSFORMERS.register("target_encoding")
class TargetEncodingFeatures(FeatureTransformer):
    """Smoothed TRAIN target means of each key; `encoders_[k]` is key k's `TargetEncoder`."""

    Config = TargetEncodingFeaturesConfig

    def validate(self, train: TrainData) -> None:
        for key in self.config.keys:
            for c in key:
                if c not in ("user_id", "item_id"):
                    entity_side(train.dataset, c, "target key column")

    def fit(self, train: TrainData, context: FitContext) -> TargetEncodingFeatures:
        cfg = self.config
        self._start_fit(train)
        u, i = context.user_idx, context.item_idx
        values = np.stack([context.labels.astype(np.float64) if v == "label" else context.ratings
                           for v in cfg.values], axis=1)
        pairs = u * self.n_items_ + i
        self.key_columns_: list[list[tuple[str, np.ndarray, int]]] = []
        self.encoders_: list[TargetEncoder] = []
        self.cdf_: list[list[CdfNormalizer]] = []
        names: list[str] = []
        for key in cfg.keys:
            cols = [entity_codes(train.dataset, c) for c in key]
            n_codes = int(np.prod([c[2] for c in cols], dtype=np.float64))
            if n_codes > MAX_KEY_CODES:
                raise ConfigError(f"target key {key}: {n_codes} combinations is too many to count")
            self.key_columns_.append(cols)
            codes = self.key_codes(len(self.key_columns_) - 1, u, i)
            te = TargetEncoder(cfg.folds, cfg.smoothing, seed=0).fit(codes, values, pairs, n_codes)
            self.encoders_.append(te)
            enc, _ = te.transform(codes, pairs)  # the training rows' own (out-of-fold) values
            self.cdf_.append([CdfNormalizer().fit(enc[:, j]) for j in range(len(cfg.values))])
            name = "*".join(key)
            names += [f"te_{v}_{name}" for v in cfg.values] + ([f"te_n_{name}"] if cfg.counts else [])
        self.dense_names_ = tuple(names)
        return self

    def key_codes(self, key: int, u: np.ndarray, i: np.ndarray) -> np.ndarray:
        """(N, W) combined codes of key `key` for samples (u, i): the product of the key's
        columns' codes (all value combinations of multi-valued columns); -1 = missing."""
        out = np.zeros((len(u), 1), dtype=np.int64)
        for side, codes, card in self.key_columns_[key]:
            c = codes[u if side == "user" else i]  # (N, Wc)
            comb = out[:, :, None] * card + c[:, None, :]
            comb = np.where((out[:, :, None] < 0) | (c[:, None, :] < 0), -1, comb)
            out = comb.reshape(len(u), -1)
        return out

    def dense(self, u, i, ts):
        cols = []
        pairs = u * self.n_items_ + i
        for k, (te, cdfs) in enumerate(zip(self.encoders_, self.cdf_)):
            enc, n = te.transform(self.key_codes(k, u, i), pairs)
            cols += [cdf.transform(enc[:, j]) for j, cdf in enumerate(cdfs)]
            if self.config.counts:
                cols.append(log1p_transform(n))
        return stack_dense(cols, len(u))


@dataclass(frozen=True)
class NeighborhoodCFFeaturesConfig:
    features: tuple[str, ...] = ()  # subset of CF_FEATURES
    power: float = 3.0  # p of the binary similarities
    centered_power: float = 1.0  # p of the *_centered_* (adjusted-cosine) similarities
    smoothing: float = 1.0  # m
    folds: int = 5  # out-of-fold stacking of the centred similarities (≥ 2)

    def __post_init__(self) -> None:
        require_known(self.features, CF_FEATURES, "cf features")


@FEATURE_TRANSFORMERS.register("neighborhood_cf")
class NeighborhoodCFFeatures(FeatureTransformer):
    """Item-CF / user-CF label and rating estimates; one `NeighborhoodCF` per (kind, similarity)."""

    Config = NeighborhoodCFFeaturesConfig

    @staticmethod
    def kind(name: str) -> tuple[str, str]:
        """("item" | "user", "binary" | "centered") of a feature name."""
        return name.split("cf_")[0], ("centered" if "_centered_" in name else "binary")

    def fit(self, train: TrainData, context: FitContext) -> NeighborhoodCFFeatures:
        cfg = self.config
        self._start_fit(train)
        u, i = context.user_idx, context.item_idx
        self.models_: dict[tuple[str, str], NeighborhoodCF] = {}
        for c in cfg.features:
            kind, sim = self.kind(c)
            if (kind, sim) not in self.models_:
                power = cfg.power if sim == "binary" else cfg.centered_power
                self.models_[kind, sim] = NeighborhoodCF(kind, power, cfg.smoothing, sim, cfg.folds).fit(
                    u, i, context.labels, context.ratings, self.n_users_, self.n_items_)
        self.cdf_ = [CdfNormalizer().fit(self.estimate(c, u, i)) for c in cfg.features]
        self.dense_names_ = tuple(cfg.features)
        return self

    def estimate(self, name: str, u: np.ndarray, i: np.ndarray) -> np.ndarray:
        """(N,) raw estimate of feature `name` (before the CDF)."""
        return self.models_[self.kind(name)].transform(u, i)[:, 0 if name.endswith("_label") else 1]

    def dense(self, u, i, ts):
        return stack_dense([cdf.transform(self.estimate(c, u, i)) for c, cdf in zip(self.config.features, self.cdf_)],
                           len(u))
