"""`FeatureEncoder`: dataset columns → the ranking batch layout (models/ranking/base.py).

Fitted once on `TrainData`; everything static is tensorized at fit time:

- every user/item column becomes FIDs (features/fid.py), one slot per field, and the FIDs of
  all training samples build ONE `FidVocab` (admission: `min_count`) → embedding rows;
- per-entity row matrices `user_rows_` (n_users, F_u) and `item_rows_` (n_items, F_i), so a
  request gathers rows by dense index — no dicts, no per-item Python;
- crosses hash (user value, item value) pairs with `mix64` at transform time (vectorized);
- count features (popularity, positive rate, mean rating — TRAIN interactions only, smoothed
  towards the global mean) enter as dense CDF-normalized values and optionally as buckets;
- sequences: the user's recent positive items strictly before the sample time, as item-id
  embedding rows (+ their first tag), with mask; match features count earlier history
  events sharing the candidate's id/tag/author (log1p, dense).

Columns of "sparse": the user block (user_id, user_columns, user count buckets), the item block
(item_id, item_columns, item count buckets; a multi-valued column takes `multi_width` columns:
its first values, padded with row 0), crosses, context. `spec.field_names` names every column.
Slots are numbered 1, 2, … in config order (user_id, item_id, user_columns, item_columns, …).

    transform(user_idx (N,), item_idx (N,), ts (N,) | None) -> {"sparse": (N, F) int64,
        "dense": (N, Dn) float32, ["seq", "seq_cat", "seq_mask", "target", "target_cat"]}
    encode(interactions) -> transform(...) + {"label": (N,) float32}
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import polars as pl
import torch

from funnelrec.core.errors import ConfigError, DataError, NotFittedError
from funnelrec.data.dataset import TrainData
from funnelrec.features.cf import NeighborhoodCF
from funnelrec.features.fid import (
    PAD_FID,
    FidVocab,
    count_collisions,
    fid_column,
    fid_multi_column,
    hash_values,
    make_fid,
    mix64,
)
from funnelrec.features.match import MatchCounter
from funnelrec.features.sequences import UserHistory
from funnelrec.features.target import TargetEncoder
from funnelrec.features.transforms import CdfNormalizer, QuantileBucketizer, log1p_transform
from funnelrec.models.ranking.base import FeatureSpec

TIME_FEATURES = ("user_time_position", "user_elapsed", "item_age")
CF_FEATURES = ("itemcf_label", "itemcf_rating", "usercf_label", "usercf_rating",
               "itemcf_centered_label", "itemcf_centered_rating", "usercf_centered_label", "usercf_centered_rating")
COUNT_FEATURES = ("user_count", "item_count", "user_pos_rate", "item_pos_rate",
                  "user_mean_rating", "item_mean_rating")
CONTEXT_FEATURES = ("hour", "weekday")


@dataclass(frozen=True)
class FeatureEncoderConfig:
    user_columns: tuple[str, ...] = ("age", "gender", "occupation")
    item_columns: tuple[str, ...] = ("release_year", "genres")
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
        bad = [c for c in self.count_features if c not in COUNT_FEATURES]
        if bad:
            raise ConfigError(f"unknown count features {bad}; known: {', '.join(COUNT_FEATURES)}")
        bad = [c for c in self.context if c not in CONTEXT_FEATURES]
        if bad:
            raise ConfigError(f"unknown context features {bad}; known: {', '.join(CONTEXT_FEATURES)}")
        if self.multi_width < 1 or self.seq_len < 0 or self.min_count < 1:
            raise ConfigError("multi_width ≥ 1, seq_len ≥ 0 and min_count ≥ 1 are required")
        bad = [c for c in self.time_features if c not in TIME_FEATURES]
        if bad:
            raise ConfigError(f"unknown time features {bad}; known: {', '.join(TIME_FEATURES)}")
        bad = [c for c in self.cf_features if c not in CF_FEATURES]
        if bad:
            raise ConfigError(f"unknown cf features {bad}; known: {', '.join(CF_FEATURES)}")
        bad = [v for v in self.target_values if v not in ("label", "rating")]
        if bad:
            raise ConfigError(f"unknown target values {bad}; known: label, rating")
        if any(len(k) == 0 for k in self.target_keys):
            raise ConfigError("target_keys: every key needs ≥ 1 column")
        if self.seq_len and not self.include_ids:
            raise ConfigError("seq_len > 0 needs include_ids (sequence items use item-id rows)")


def binary_labels(values, threshold: float | None, what: str = "label") -> np.ndarray:
    """(N,) float32 0/1 labels; a column outside {0, 1} (without threshold) or with NaN → DataError."""
    y = np.asarray(values, dtype=np.float64).reshape(-1)
    if np.isnan(y).any():
        raise DataError(f"{what}: {int(np.isnan(y).sum())} NaN labels")
    if threshold is not None:
        return (y >= threshold).astype(np.float32)
    bad = ~np.isin(y, (0.0, 1.0))
    if bad.any():
        raise DataError(f"{what}: {int(bad.sum())} labels outside {{0, 1}} for a binary task "
                        f"(e.g. {y[bad][0]}); set label_threshold to binarize")
    return y.astype(np.float32)


class FeatureEncoder:
    def __init__(self, config: FeatureEncoderConfig | None = None) -> None:
        self.config = config or FeatureEncoderConfig()

    # ------------------------------------------------------------------ fit
    def fit(self, train: TrainData) -> FeatureEncoder:
        cfg = self.config
        ds = train.dataset
        users, items, inter = ds.users, ds.items, train.interactions
        self._validate_columns(users, items, inter)
        self.n_users_, self.n_items_ = ds.n_users, ds.n_items
        names: list[str] = []  # only counts slots; the column order is user block, item block
        side_names: dict[str, list[str]] = {"user": [], "item": []}
        user_fids: list[np.ndarray] = []
        item_fids: list[np.ndarray] = []
        self.collisions_: dict[str, int] = {}
        self._cols_: dict[str, tuple[str, int, int]] = {}  # name → (side, start col, width)

        def add(side: str, name: str, col: pl.Series) -> None:
            slot = len(names) + 1
            if isinstance(col.dtype, pl.List):
                mat = fid_multi_column(slot, col, cfg.multi_width)
                self.collisions_[name] = count_collisions(col.explode().drop_nulls(), slot)
                names.append(name)
                side_names[side].extend([name] * cfg.multi_width)
            else:
                if col.dtype.is_numeric() and col.null_count() == 0 and col.dtype.is_float() and col.is_nan().any():
                    raise DataError(f"column {name!r}: {int(col.is_nan().sum())} NaN values in a numeric feature")
                mat = fid_column(slot, col)[:, None]
                self.collisions_[name] = count_collisions(col.drop_nulls(), slot)
                names.append(name)
                side_names[side].append(name)
            store = user_fids if side == "user" else item_fids
            start = sum(m.shape[1] for m in store)
            self._cols_[name] = (side, start, mat.shape[1])
            store.append(mat)

        if cfg.include_ids:
            add("user", "user_id", users["user_id"])
            add("item", "item_id", items["item_id"])
        self.bucketizers_: dict[str, QuantileBucketizer] = {}
        for side, table, cols in (("user", users, cfg.user_columns), ("item", items, cfg.item_columns)):
            for c in cols:
                col = table[c]
                if c in cfg.bucketize:
                    vals = self._numeric(table, c)
                    b = QuantileBucketizer(cfg.bucketize[c]).fit(vals)
                    self.bucketizers_[c] = b
                    col = pl.Series(c, b.transform(vals))
                add(side, c, col)

        # count features from TRAIN interactions only
        self.counts_ = self._count_features(train) if cfg.count_features or cfg.count_buckets else {}
        self.count_bucketizers_: dict[str, QuantileBucketizer] = {}
        if cfg.count_buckets:
            for c in cfg.count_features:
                side = c.split("_")[0]
                vals = self.counts_[c]
                b = QuantileBucketizer(cfg.count_buckets).fit(vals)
                self.count_bucketizers_[c] = b
                add(side, c + "_bucket", pl.Series(c, b.transform(vals)))
        self.user_fids_ = np.concatenate(user_fids, axis=1) if user_fids else np.zeros((ds.n_users, 0), np.int64)
        self.item_fids_ = np.concatenate(item_fids, axis=1) if item_fids else np.zeros((ds.n_items, 0), np.int64)

        # crosses and context: slots after the entity fields
        columns = side_names["user"] + side_names["item"]
        self.cross_slots_: list[tuple[int, str, str]] = []
        for uc, ic in cfg.crosses:
            if uc not in self._cols_ or self._cols_[uc][0] != "user":
                raise ConfigError(f"cross ({uc}, {ic}): {uc!r} is not a user field of this encoder")
            if ic not in self._cols_ or self._cols_[ic][0] != "item":
                raise ConfigError(f"cross ({uc}, {ic}): {ic!r} is not an item field of this encoder")
            self.cross_slots_.append((len(names) + 1, uc, ic))
            w = self._cols_[uc][2] * self._cols_[ic][2]
            names.append(f"{uc}*{ic}")
            columns.extend([f"{uc}*{ic}"] * w)
        self.context_slots_: list[tuple[int, str]] = []
        for c in cfg.context:
            self.context_slots_.append((len(names) + 1, c))
            names.append(c)
            columns.append(c)
        self._context_hash = {"hour": hash_values(np.arange(24)), "weekday": hash_values(np.arange(7))}

        # vocabulary over the FIDs of the training samples
        u = inter["user_idx"].to_numpy()
        i = inter["item_idx"].to_numpy()
        ts = inter["timestamp"].to_numpy()
        sample_fids = self._raw_fids(u, i, ts)
        self.vocab_ = FidVocab(cfg.min_count).fit(sample_fids)
        self.user_rows_ = self.vocab_.lookup(self.user_fids_)
        self.item_rows_ = self.vocab_.lookup(self.item_fids_)
        self.field_names_ = tuple(columns)

        # dense features
        self.dense_names_: list[str] = []
        self.cdf_: dict[str, CdfNormalizer] = {}
        for c in cfg.count_features:
            side = c.split("_")[0]
            idx = u if side == "user" else i
            self.cdf_[c] = CdfNormalizer().fit(self.counts_[c][idx])
            self.dense_names_.append(c)
        self.dense_values_: dict[str, np.ndarray] = {}
        self._dense_side_: dict[str, str] = {}
        for c in cfg.dense_columns:
            side = "user" if c in users.columns else "item"
            vals = self._numeric(users if side == "user" else items, c)
            self.dense_values_[c] = vals
            self._dense_side_[c] = side
            self.cdf_[c] = CdfNormalizer().fit(vals[u if side == "user" else i])
            self.dense_names_.append(c)

        # sequences and match features: positive training events
        labels = self._labels(inter)
        pos = labels > 0
        self.history_: UserHistory | None = None
        if cfg.seq_len:
            self.history_ = UserHistory(ds.n_users).fit(u[pos], i[pos], ts[pos])
            self._tag_col = None
            if cfg.seq_tag_column is not None:
                side, start, _ = self._cols_[cfg.seq_tag_column]
                if side != "item":
                    raise ConfigError(f"seq_tag_column {cfg.seq_tag_column!r} must be an item field")
                self._tag_col = start
        self.matchers_: dict[str, MatchCounter] = {}
        for c in cfg.match_columns:
            values = None if c == "item_id" else items[c].to_list()
            if values is not None and not isinstance(items[c].dtype, pl.List):
                values = [[v] if v is not None else [] for v in values]
            self.matchers_[c] = MatchCounter(ds.n_users).fit(u[pos], i[pos], ts[pos], values)
            self.dense_names_.append(f"match_{c}")
        # affinity: the user's earlier TRAIN events sharing the candidate's values, all labels;
        # rate = (Σ labels + m·ȳ) / (count + m), strictly before the sample time (no self-leak)
        self.affinity_: dict[str, MatchCounter] = {}
        self._ybar = float(labels.mean()) if len(labels) else 0.0
        for c in cfg.affinity_columns:
            if c not in items.columns:
                raise DataError(f"affinity column {c!r} not in the items table")
            values = items[c].to_list()
            if not isinstance(items[c].dtype, pl.List):
                values = [[v] if v is not None else [] for v in values]
            self.affinity_[c] = MatchCounter(ds.n_users).fit(u, i, ts, values, weights=labels)
            self.dense_names_ += [f"affinity_{c}", f"affinity_n_{c}"]
        self._fit_target_encoding(train, u, i, labels)
        self.cf_: dict[tuple[str, str], NeighborhoodCF] = {}
        r = inter[cfg.label_column].cast(pl.Float64).to_numpy()
        for c in cfg.cf_features:
            kind, sim = self._cf_kind(c)
            if (kind, sim) not in self.cf_:
                power = cfg.cf_power if sim == "binary" else cfg.cf_centered_power
                self.cf_[kind, sim] = NeighborhoodCF(kind, power, cfg.cf_smoothing, sim, cfg.target_folds or 5).fit(
                    u, i, labels, r, ds.n_users, ds.n_items)
        for c in cfg.cf_features:
            self.cdf_[c] = CdfNormalizer().fit(self._cf_value(c, u, i))
            self.dense_names_.append(c)
        if cfg.time_features:
            if "item_age" in cfg.time_features and "publish_time" not in items.columns:
                raise DataError("time feature 'item_age' needs a 'publish_time' column in the items table")
            order = np.lexsort((ts, u))
            self._tl_user_, self._tl_ts_ = u[order], ts[order].astype(np.int64)
            self._tl_start_ = np.searchsorted(self._tl_user_, np.arange(ds.n_users))
            self._tl_end_ = np.searchsorted(self._tl_user_, np.arange(ds.n_users), side="right")
            self._publish_ = (items["publish_time"].cast(pl.Float64).fill_null(np.nan).to_numpy()
                              if "publish_time" in items.columns else None)
            tf = self._time_values(u, i, ts)
            for k, c in enumerate(cfg.time_features):
                self.cdf_[c] = CdfNormalizer().fit(tf[:, k])
                self.dense_names_.append(c)
        return self

    def _time_values(self, u: np.ndarray, i: np.ndarray, ts: np.ndarray | None) -> np.ndarray:
        """(N, len(time_features)) raw time features of samples at times ts."""
        if ts is None:
            raise DataError("time features need the sample time ts")
        ts = np.asarray(ts, dtype=np.int64)
        start, end = self._tl_start_[u], self._tl_end_[u]
        n = end - start
        # events of user u strictly before ts: one search over the (user, time)-sorted keys
        t0 = int(self._tl_ts_.min()) if len(self._tl_ts_) else 0
        span = (int(self._tl_ts_.max()) - t0 + 2) if len(self._tl_ts_) else 2
        key_u = self._tl_user_ * span + (self._tl_ts_ - t0)
        q = u * span + np.clip(ts - t0, 0, span - 1)
        before = np.searchsorted(key_u, q, side="left") - start
        first = self._tl_ts_[np.minimum(start, len(self._tl_ts_) - 1)]
        cols = []
        for c in self.config.time_features:
            if c == "user_time_position":
                cols.append(np.where(n > 0, before / np.maximum(n, 1), 0.5))
            elif c == "user_elapsed":
                cols.append(np.where(n > 0, np.log1p(np.maximum(ts - first, 0) / 3600.0), 0.0))
            else:
                age = (ts - self._publish_[i]) / (365.25 * 86400)
                cols.append(np.nan_to_num(age, nan=0.0))  # unknown publish time → age 0
        return np.stack(cols, axis=1)

    @staticmethod
    def _cf_kind(name: str) -> tuple[str, str]:
        return name.split("cf_")[0], ("centered" if "_centered_" in name else "binary")

    def _cf_value(self, name: str, u: np.ndarray, i: np.ndarray) -> np.ndarray:
        return self.cf_[self._cf_kind(name)].transform(u, i)[:, 0 if name.endswith("_label") else 1]

    # ------------------------------------------------------------------ target encoding
    def _entity_codes(self, ds, col: str) -> tuple[str, np.ndarray, int]:
        """(side, (n_entities, W) int64 codes with -1 = missing, cardinality) of a column."""
        if col in ("user_id", "item_id"):
            n = ds.n_users if col == "user_id" else ds.n_items
            return col.split("_")[0], np.arange(n, dtype=np.int64)[:, None], n
        if col in ds.users.columns:
            side, series = "user", ds.users[col]
        elif col in ds.items.columns:
            side, series = "item", ds.items[col]
        else:
            raise DataError(f"target key column {col!r} is in neither the users nor the items table")
        if isinstance(series.dtype, pl.List):
            lists = series.to_list()
            flat = [v for vs in lists if vs is not None for v in vs if v is not None]
            uniq = {v: k for k, v in enumerate(dict.fromkeys(flat))}
            w = max([len(vs) for vs in lists if vs is not None] + [1])
            out = np.full((len(lists), w), -1, dtype=np.int64)
            for r, vs in enumerate(lists):
                for j, v in enumerate(vs or []):
                    if v is not None:
                        out[r, j] = uniq[v]
            return side, out, max(len(uniq), 1)
        vals = series.to_list()
        uniq = {v: k for k, v in enumerate(dict.fromkeys(v for v in vals if v is not None))}
        return side, np.array([uniq[v] if v is not None else -1 for v in vals], dtype=np.int64)[:, None], max(len(uniq), 1)

    def _key_codes(self, key: int, u: np.ndarray, i: np.ndarray) -> np.ndarray:
        """(N, W) combined codes of target key `key` for samples (u, i); -1 = missing."""
        out = np.zeros((len(u), 1), dtype=np.int64)
        for side, codes, card in self._te_cols_[key]:
            c = codes[u if side == "user" else i]  # (N, Wc)
            comb = out[:, :, None] * card + c[:, None, :]
            comb = np.where((out[:, :, None] < 0) | (c[:, None, :] < 0), -1, comb)
            out = comb.reshape(len(u), -1)
        return out

    def _fit_target_encoding(self, train: TrainData, u: np.ndarray, i: np.ndarray, labels: np.ndarray) -> None:
        cfg = self.config
        self.target_encoders_: list[TargetEncoder] = []
        self._te_cols_: list[list[tuple[str, np.ndarray, int]]] = []
        if not cfg.target_keys:
            return
        inter = train.interactions
        vals = [labels.astype(np.float64) if v == "label" else inter[cfg.label_column].cast(pl.Float64).to_numpy()
                for v in cfg.target_values]
        values = np.stack(vals, axis=1)
        pairs = u * self.n_items_ + i
        for key in cfg.target_keys:
            cols = [self._entity_codes(train.dataset, c) for c in key]
            n_codes = int(np.prod([c[2] for c in cols], dtype=np.float64))
            if n_codes > 50_000_000:
                raise ConfigError(f"target key {key}: {n_codes} combinations is too many to count")
            self._te_cols_.append(cols)
            codes = self._key_codes(len(self._te_cols_) - 1, u, i)
            te = TargetEncoder(cfg.target_folds, cfg.target_smoothing, seed=0).fit(codes, values, pairs, n_codes)
            self.target_encoders_.append(te)
            name = "*".join(key)
            enc, n = te.transform(codes, pairs)  # the training rows' own (out-of-fold) values
            for j, v in enumerate(cfg.target_values):
                self.cdf_[f"te_{v}_{name}"] = CdfNormalizer().fit(enc[:, j])
                self.dense_names_.append(f"te_{v}_{name}")
            if cfg.target_counts:
                self.dense_names_.append(f"te_n_{name}")

    def _target_dense(self, u: np.ndarray, i: np.ndarray) -> list[np.ndarray]:
        cols = []
        pairs = u * self.n_items_ + i
        for k, (key, te) in enumerate(zip(self.config.target_keys, self.target_encoders_)):
            enc, n = te.transform(self._key_codes(k, u, i), pairs)
            name = "*".join(key)
            for j, v in enumerate(self.config.target_values):
                cols.append(self.cdf_[f"te_{v}_{name}"].transform(enc[:, j]))
            if self.config.target_counts:
                cols.append(log1p_transform(n))
        return cols

    def _validate_columns(self, users: pl.DataFrame, items: pl.DataFrame, inter: pl.DataFrame) -> None:
        cfg = self.config
        checks = [("users", users, cfg.user_columns), ("items", items, cfg.item_columns),
                  ("interactions", inter, (cfg.label_column, "user_idx", "item_idx", "timestamp"))]
        for what, table, cols in checks:
            missing = [c for c in cols if c not in table.columns]
            if missing:
                raise DataError(f"feature columns {missing} not in the {what} table; it has: {', '.join(table.columns)}")
        for c in list(cfg.dense_columns) + list(cfg.bucketize):
            if c not in users.columns and c not in items.columns:
                raise DataError(f"numeric feature {c!r} is in neither the users nor the items table")
        for c in cfg.match_columns:
            if c != "item_id" and c not in items.columns:
                raise DataError(f"match column {c!r} not in the items table")
        if cfg.seq_tag_column is not None and cfg.seq_tag_column not in cfg.item_columns:
            raise ConfigError(f"seq_tag_column {cfg.seq_tag_column!r} must be one of item_columns")
        self._labels(inter)

    def _labels(self, inter: pl.DataFrame) -> np.ndarray:
        return binary_labels(inter[self.config.label_column].to_numpy(), self.config.label_threshold,
                             f"label column {self.config.label_column!r}")

    @staticmethod
    def _numeric(table: pl.DataFrame, c: str) -> np.ndarray:
        col = table[c]
        if not col.dtype.is_numeric():
            raise DataError(f"column {c!r} is {col.dtype}, not numeric")
        vals = col.cast(pl.Float64).to_numpy()
        if np.isnan(vals).any():
            raise DataError(f"column {c!r}: {int(np.isnan(vals).sum())} NaN/null values in a numeric feature")
        return vals

    def _count_features(self, train: TrainData) -> dict[str, np.ndarray]:
        cfg = self.config
        inter = train.interactions
        u = inter["user_idx"].to_numpy()
        i = inter["item_idx"].to_numpy()
        y = self._labels(inter).astype(np.float64)
        r = inter[cfg.label_column].cast(pl.Float64).to_numpy()
        m = cfg.smoothing
        out = {}
        for side, idx, n in (("user", u, train.n_users), ("item", i, train.n_items)):
            cnt = np.bincount(idx, minlength=n).astype(np.float64)
            out[f"{side}_count"] = np.log1p(cnt)
            out[f"{side}_pos_rate"] = (np.bincount(idx, y, n) + m * y.mean()) / (cnt + m)
            out[f"{side}_mean_rating"] = (np.bincount(idx, r, n) + m * r.mean()) / (cnt + m)
        return out

    # ------------------------------------------------------------------ transform
    def _check(self) -> None:
        if not hasattr(self, "vocab_"):
            raise NotFittedError("FeatureEncoder is not fitted; call fit(train) first")

    def _raw_fids(self, u: np.ndarray, i: np.ndarray, ts: np.ndarray | None) -> np.ndarray:
        """(N, F) int64 FIDs of samples (before the vocabulary lookup)."""
        parts = [self.user_fids_[u], self.item_fids_[i]]
        parts += self._cross_context_fids(u, i, ts)
        return np.concatenate(parts, axis=1)

    def _cross_context_fids(self, u: np.ndarray, i: np.ndarray, ts: np.ndarray | None) -> list[np.ndarray]:
        parts = []
        for slot, uc, ic in self.cross_slots_:
            _, us, uw = self._cols_[uc]
            _, is_, iw = self._cols_[ic]
            hu = self.user_fids_[u, us : us + uw].view(np.uint64)[:, :, None]
            hi = self.item_fids_[i, is_ : is_ + iw].view(np.uint64)[:, None, :]
            f = make_fid(slot, mix64(hu, hi)).reshape(len(u), uw * iw)
            pad = ((hu == PAD_FID) | (hi == PAD_FID)).reshape(len(u), uw * iw)
            parts.append(np.where(pad, PAD_FID, f))
        if self.context_slots_:
            if ts is None:
                raise DataError("context features need the request time ts")
            t = np.asarray(ts, dtype=np.int64)
            for slot, c in self.context_slots_:
                v = (t // 3600) % 24 if c == "hour" else (t // 86400 + 3) % 7  # 1970-01-01 = Thursday
                parts.append(make_fid(slot, self._context_hash[c][v])[:, None])
        return parts

    def transform(self, user_idx, item_idx, ts=None) -> dict[str, torch.Tensor]:
        """Batch tensors for samples (user_idx[k], item_idx[k]) at time ts[k] (None = now:
        whole history visible). Indices must be dense indices of the fitted dataset."""
        self._check()
        u = np.asarray(user_idx, dtype=np.int64).reshape(-1)
        i = np.asarray(item_idx, dtype=np.int64).reshape(-1)
        if len(u) != len(i):
            raise DataError(f"user_idx ({len(u)}) and item_idx ({len(i)}) differ in length")
        if len(u) and (u.min() < 0 or u.max() >= self.n_users_ or i.min() < 0 or i.max() >= self.n_items_):
            raise DataError(f"user/item index out of range (n_users={self.n_users_}, n_items={self.n_items_})")
        if ts is not None:
            ts = np.broadcast_to(np.asarray(ts, dtype=np.int64), u.shape)
        parts = [self.user_rows_[u], self.item_rows_[i]]
        extra = self._cross_context_fids(u, i, ts)
        if extra:
            parts.append(self.vocab_.lookup(np.concatenate(extra, axis=1)))
        out = {"sparse": torch.from_numpy(np.ascontiguousarray(np.concatenate(parts, axis=1)))}
        if self.dense_names_:
            out["dense"] = torch.from_numpy(self._dense(u, i, ts))
        if self.history_ is not None:
            L = self.config.seq_len
            seq_items, mask, _ = self.history_.sequences(u, L, ts)
            safe = np.where(mask, seq_items, 0)
            id_col = self._cols_["item_id"][1]
            out["seq"] = torch.from_numpy(np.where(mask, self.item_rows_[safe, id_col], 0))
            out["seq_mask"] = torch.from_numpy(mask)
            out["target"] = torch.from_numpy(self.item_rows_[i, id_col].copy())
            if self._tag_col is not None:
                out["seq_cat"] = torch.from_numpy(np.where(mask, self.item_rows_[safe, self._tag_col], 0))
                out["target_cat"] = torch.from_numpy(self.item_rows_[i, self._tag_col].copy())
        return out

    def _dense(self, u: np.ndarray, i: np.ndarray, ts: np.ndarray | None) -> np.ndarray:
        cols = []
        for c in self.config.count_features:
            idx = u if c.startswith("user") else i
            cols.append(self.cdf_[c].transform(self.counts_[c][idx]))
        for c in self.config.dense_columns:
            idx = u if self._dense_side_[c] == "user" else i
            cols.append(self.cdf_[c].transform(self.dense_values_[c][idx]))
        for m in self.matchers_.values():
            cols.append(log1p_transform(m.count(u, i, ts)))
        sm = self.config.smoothing
        for m in self.affinity_.values():
            n = m.count(u, i, ts)
            cols.append((m.count(u, i, ts, weighted=True) + sm * self._ybar) / (n + sm))
            cols.append(log1p_transform(n))
        cols += self._target_dense(u, i)
        for c in self.config.cf_features:
            cols.append(self.cdf_[c].transform(self._cf_value(c, u, i)))
        if self.config.time_features:
            tf = self._time_values(u, i, ts)
            cols += [self.cdf_[c].transform(tf[:, k]) for k, c in enumerate(self.config.time_features)]
        return np.stack(cols, axis=1).astype(np.float32)

    def encode(self, interactions: pl.DataFrame, with_time: bool | None = None) -> dict[str, torch.Tensor]:
        """transform() of an interactions table plus "label" (N,) float32. Sample times are
        passed (no leakage in sequence/match features) unless with_time=False."""
        self._check()
        missing = [c for c in (self.config.label_column, "user_idx", "item_idx", "timestamp")
                   if c not in interactions.columns]
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
