"""Per-entity features: id/attribute FIDs, count statistics, numeric columns.

- `FieldFids`: user_id, item_id and every user/item column → FIDs (features/fid.py), one slot
  per field; a multi-valued (list) column takes `multi_width` columns (its first values, PAD
  after); a column named in `bucketize` enters as its quantile bucket id instead of its value.
- `CountFeatures` over TRAIN interactions, smoothed towards the global value with m pseudo-counts:

      count(e)       = log(1 + n_e)
      pos_rate(e)    = (Σ_e y + m · ȳ) / (n_e + m)
      mean_rating(e) = (Σ_e r + m · r̄) / (n_e + m)

  as dense values (the empirical CDF over the training rows) and, with `buckets` > 0, also as
  quantile-bucket fields in the entity's FID block.
- `DenseColumns`: numeric user/item columns as their training-row CDF.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import polars as pl

from funnelrec.core.errors import ConfigError, DataError
from funnelrec.core.registry import FEATURE_TRANSFORMERS
from funnelrec.data.dataset import TrainData
from funnelrec.features.fid import count_collisions, fid_column, fid_multi_column
from funnelrec.features.transformers.base import (
    FeatureTransformer,
    FitContext,
    entity_side,
    numeric_column,
    require_known,
    stack_dense,
)
from funnelrec.features.transforms import CdfNormalizer, QuantileBucketizer

COUNT_FEATURES = ("user_count", "item_count", "user_pos_rate", "item_pos_rate",
                  "user_mean_rating", "item_mean_rating")


def missing_columns(train: TrainData, user_columns, item_columns) -> None:
    """DataError naming the first table that lacks one of the listed columns."""
    for what, table, cols in (("users", train.dataset.users, user_columns), ("items", train.dataset.items, item_columns)):
        missing = [c for c in cols if c not in table.columns]
        if missing:
            raise DataError(f"feature columns {missing} not in the {what} table; it has: {', '.join(table.columns)}")


class EntityFields(FeatureTransformer):
    """A family whose FIDs are static per user / per item: `_add` appends one field (next slot)."""

    def _start_fields(self, train: TrainData) -> None:
        self._start_fit(train)
        self.collisions_: dict[str, int] = {}
        self._blocks: dict[str, list[np.ndarray]] = {"user": [], "item": []}
        self._names: dict[str, list[str]] = {"user": [], "item": []}

    def _add(self, context: FitContext, side: str, name: str, col: pl.Series, multi_width: int) -> None:
        slot = context.take_slot()
        if isinstance(col.dtype, pl.List):
            mat = fid_multi_column(slot, col, multi_width)
            self.collisions_[name] = count_collisions(col.explode().drop_nulls(), slot)
        else:
            if col.dtype.is_float() and col.null_count() == 0 and col.is_nan().any():
                raise DataError(f"column {name!r}: {int(col.is_nan().sum())} NaN values in a numeric feature")
            mat = fid_column(slot, col)[:, None]
            self.collisions_[name] = count_collisions(col.drop_nulls(), slot)
        context.fields[name] = (side, mat)
        self._blocks[side].append(mat)
        self._names[side] += [name] * mat.shape[1]

    def _end_fields(self) -> None:
        for side in ("user", "item"):
            if self._blocks[side]:
                setattr(self, f"{side}_fids_", np.concatenate(self._blocks[side], axis=1))
            setattr(self, f"{side}_names_", tuple(self._names[side]))
        del self._blocks, self._names


@dataclass(frozen=True)
class FieldFidsConfig:
    # no attribute columns by default: a default naming one dataset's columns fits no other
    # (the RecBole ml-100k protocol names its own: eval/ctr.py RECBOLE_FEATURES)
    user_columns: tuple[str, ...] = ()
    item_columns: tuple[str, ...] = ()
    include_ids: bool = True  # user_id and item_id fields first
    multi_width: int = 6  # columns given to a multi-valued field (its first values)
    bucketize: dict[str, int] = field(default_factory=dict)  # numeric column → quantile buckets

    def __post_init__(self) -> None:
        if self.multi_width < 1:
            raise ConfigError(f"multi_width must be ≥ 1, got {self.multi_width}")


@FEATURE_TRANSFORMERS.register("field_fids")
class FieldFids(EntityFields):
    """Id and attribute fields. Slots in order: user_id, item_id, user columns, item columns."""

    Config = FieldFidsConfig

    def validate(self, train: TrainData) -> None:
        missing_columns(train, self.config.user_columns, self.config.item_columns)
        for c in self.config.bucketize:
            entity_side(train.dataset, c, "numeric feature")

    def fit(self, train: TrainData, context: FitContext) -> FieldFids:
        cfg = self.config
        ds = train.dataset
        self._start_fields(train)
        if cfg.include_ids:
            self._add(context, "user", "user_id", ds.users["user_id"], cfg.multi_width)
            self._add(context, "item", "item_id", ds.items["item_id"], cfg.multi_width)
        self.bucketizers_: dict[str, QuantileBucketizer] = {}
        for side, table, cols in (("user", ds.users, cfg.user_columns), ("item", ds.items, cfg.item_columns)):
            for c in cols:
                col = table[c]
                if c in cfg.bucketize:
                    vals = numeric_column(table, c)
                    self.bucketizers_[c] = QuantileBucketizer(cfg.bucketize[c]).fit(vals)
                    col = pl.Series(c, self.bucketizers_[c].transform(vals))
                self._add(context, side, c, col, cfg.multi_width)
        self._end_fields()
        return self


@dataclass(frozen=True)
class CountFeaturesConfig:
    features: tuple[str, ...] = ()  # subset of COUNT_FEATURES
    buckets: int = 0  # > 0: also as quantile-bucket fields
    smoothing: float = 10.0  # m, the pseudo-count pulling rates/means to the global value

    def __post_init__(self) -> None:
        require_known(self.features, COUNT_FEATURES, "count features")


@FEATURE_TRANSFORMERS.register("counts")
class CountFeatures(EntityFields):
    """Smoothed TRAIN counts per user / item (formulas in the module docstring); `counts_[name]`
    holds the raw (n_entities,) values behind each feature."""

    Config = CountFeaturesConfig

    def fit(self, train: TrainData, context: FitContext) -> CountFeatures:
        cfg = self.config
        self._start_fields(train)
        u, i = context.user_idx, context.item_idx
        y, r, m = context.labels.astype(np.float64), context.ratings, cfg.smoothing
        self.counts_: dict[str, np.ndarray] = {}
        for side, idx, n in (("user", u, train.n_users), ("item", i, train.n_items)):
            cnt = np.bincount(idx, minlength=n).astype(np.float64)
            self.counts_[f"{side}_count"] = np.log1p(cnt)
            self.counts_[f"{side}_pos_rate"] = (np.bincount(idx, y, n) + m * y.mean()) / (cnt + m)
            self.counts_[f"{side}_mean_rating"] = (np.bincount(idx, r, n) + m * r.mean()) / (cnt + m)
        self.bucketizers_: dict[str, QuantileBucketizer] = {}
        if cfg.buckets:
            for c in cfg.features:
                b = self.bucketizers_[c] = QuantileBucketizer(cfg.buckets).fit(self.counts_[c])
                self._add(context, c.split("_")[0], c + "_bucket", pl.Series(c, b.transform(self.counts_[c])), 1)
        self._end_fields()
        self.cdf_ = {c: CdfNormalizer().fit(self.counts_[c][u if c.startswith("user") else i]) for c in cfg.features}
        self.dense_names_ = tuple(cfg.features)
        return self

    def dense(self, u, i, ts):
        return stack_dense([self.cdf_[c].transform(self.counts_[c][u if c.startswith("user") else i])
                            for c in self.config.features], len(u))


@dataclass(frozen=True)
class DenseColumnsConfig:
    columns: tuple[str, ...] = ()  # numeric user/item columns


@FEATURE_TRANSFORMERS.register("dense_columns")
class DenseColumns(FeatureTransformer):
    """Numeric user/item columns, each as its empirical CDF over the training rows."""

    Config = DenseColumnsConfig

    def validate(self, train: TrainData) -> None:
        for c in self.config.columns:
            entity_side(train.dataset, c, "numeric feature")

    def fit(self, train: TrainData, context: FitContext) -> DenseColumns:
        self._start_fit(train)
        ds = train.dataset
        self.values_: list[tuple[str, np.ndarray, CdfNormalizer]] = []  # (side, (n,) values, training CDF)
        for c in self.config.columns:
            side = entity_side(ds, c, "numeric feature")
            vals = numeric_column(ds.users if side == "user" else ds.items, c)
            cdf = CdfNormalizer().fit(vals[context.user_idx if side == "user" else context.item_idx])
            self.values_.append((side, vals, cdf))
        self.dense_names_ = tuple(self.config.columns)
        return self

    def dense(self, u, i, ts):
        return stack_dense([cdf.transform(vals[u if side == "user" else i]) for side, vals, cdf in self.values_], len(u))
