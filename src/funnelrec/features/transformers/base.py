"""The feature-transformer contract: one feature family, defined once for training and serving.

A transformer is fitted on the TRAIN log, then maps samples (user_idx, item_idx, ts) to its
columns. The same methods run when the log is encoded for training and when a request's
(user, candidate) pairs are scored, so a feature cannot drift between the two.

A family fills any of four outputs (the others stay empty):

- entity FIDs — static per-entity tables `user_fids_` (n_users, W_u), `item_fids_` (n_items, W_i)
  (ids, attributes, count buckets); sample k takes row u[k] / row i[k];
- pair FIDs — `pair_fids(u, i, ts)` (N, W_p): FIDs of the pair or its time (crosses, hour);
- dense — `dense(u, i, ts)` (N, D) float32, already normalized (CDF, log1p, smoothed rates);
- sequences — `sequences(u, i, ts)`: {"seq": (N, L) FIDs, "seq_mask": (N, L) bool, "target": (N,)…}.

    transform(u (N,), i (N,), ts (N,) | None, vocab=None) -> FeatureColumns:
        fids (N, W_u + W_i + W_p) int64 named by fid_names_, dense (N, D) named by dense_names_,
        sequences; with `vocab`, every FID (sequence FIDs too) is replaced by its embedding row.

Slots: a family that makes FIDs takes the next free slot numbers from its `FitContext`, so the
order in which transformers are fitted fixes the slots; `FeatureEncoder` fits them in one fixed
order. Fitted objects follow scikit-learn's contract: `fit` returns self, state ends in `_`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import polars as pl

from funnelrec.core.errors import ConfigError, DataError, NotFittedError
from funnelrec.data.dataset import TrainData
from funnelrec.features.fid import PAD_FID, FidVocab

SAMPLE_COLUMNS = ("user_idx", "item_idx", "timestamp")


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


def numeric_column(table: pl.DataFrame, c: str) -> np.ndarray:
    """(n,) float64 values of a numeric column; a non-numeric column or a NaN/null → DataError."""
    col = table[c]
    if not col.dtype.is_numeric():
        raise DataError(f"column {c!r} is {col.dtype}, not numeric")
    vals = col.cast(pl.Float64).to_numpy()
    if np.isnan(vals).any():
        raise DataError(f"column {c!r}: {int(np.isnan(vals).sum())} NaN/null values in a numeric feature")
    return vals


def entity_side(dataset, column: str, what: str) -> str:
    """"user" or "item": the table that holds `column` (users first); neither → DataError."""
    if column in dataset.users.columns:
        return "user"
    if column in dataset.items.columns:
        return "item"
    raise DataError(f"{what} {column!r} is in neither the users nor the items table")


def value_lists(items: pl.DataFrame, column: str) -> list[list]:
    """Per-item value lists of an items column (a single-valued column → one value, null → none)."""
    values = items[column].to_list()
    if isinstance(items[column].dtype, pl.List):
        return values
    return [[v] if v is not None else [] for v in values]


def as_samples(user_idx, item_idx, ts, n_users: int, n_items: int):
    """(u, i, ts) as int64 arrays of one length N (ts broadcast, or None); a length mismatch or
    an index outside the fitted dataset → DataError."""
    u = np.asarray(user_idx, dtype=np.int64).reshape(-1)
    i = np.asarray(item_idx, dtype=np.int64).reshape(-1)
    if len(u) != len(i):
        raise DataError(f"user_idx ({len(u)}) and item_idx ({len(i)}) differ in length")
    if len(u) and (u.min() < 0 or u.max() >= n_users or i.min() < 0 or i.max() >= n_items):
        raise DataError(f"user/item index out of range (n_users={n_users}, n_items={n_items})")
    if ts is not None:
        ts = np.broadcast_to(np.asarray(ts, dtype=np.int64), u.shape)
    return u, i, ts


def require_known(values, known: tuple[str, ...], what: str) -> None:
    """ConfigError naming the values of a config list that are not among `known` (and listing those)."""
    bad = [v for v in values if v not in known]
    if bad:
        raise ConfigError(f"unknown {what} {bad}; known: {', '.join(known)}")


def require_ts(ts, what: str) -> np.ndarray:
    if ts is None:
        raise DataError(f"{what} need the sample time ts")
    return np.asarray(ts, dtype=np.int64)


@dataclass
class FitContext:
    """What a transformer's fit reads besides `TrainData`: the training rows as arrays, their
    0/1 labels and raw label column, the next free FID slot, and the entity FID columns fitted
    before it (name → (side, (n_entities, width) FIDs)), which crosses and sequences read."""

    user_idx: np.ndarray  # (N,) int64
    item_idx: np.ndarray  # (N,) int64
    ts: np.ndarray  # (N,) int64
    labels: np.ndarray  # (N,) float32 0/1
    ratings: np.ndarray  # (N,) float64, the raw label column (mean rating, "rating" target values)
    next_slot: int = 1
    fields: dict[str, tuple[str, np.ndarray]] = field(default_factory=dict)

    @classmethod
    def from_train(cls, train: TrainData, label_column: str = "rating",
                   label_threshold: float | None = 4.0) -> FitContext:
        inter = train.interactions
        missing = [c for c in (label_column, *SAMPLE_COLUMNS) if c not in inter.columns]
        if missing:
            raise DataError(f"feature columns {missing} not in the interactions table; it has: "
                            f"{', '.join(inter.columns)}")
        labels = binary_labels(inter[label_column].to_numpy(), label_threshold, f"label column {label_column!r}")
        return cls(inter["user_idx"].to_numpy(), inter["item_idx"].to_numpy(), inter["timestamp"].to_numpy(),
                   labels, inter[label_column].cast(pl.Float64).to_numpy())

    def take_slot(self) -> int:
        slot, self.next_slot = self.next_slot, self.next_slot + 1
        return slot


@dataclass(frozen=True)
class FeatureColumns:
    """One transformer's output for N samples (`FeatureTransformer.transform`)."""

    fids: np.ndarray  # (N, W) int64 FIDs — or embedding rows when transformed with a vocab
    fid_names: tuple[str, ...]  # (W,)
    dense: np.ndarray  # (N, D) float32
    dense_names: tuple[str, ...]  # (D,)
    sequences: dict[str, np.ndarray]  # "seq", "seq_mask", "target", "seq_cat", "target_cat"


class FeatureTransformer:
    """Base class of one feature family; subclasses set `Config` and implement `fit` (which
    calls `_start_fit`) plus whichever of pair_fids / dense / sequences they fill."""

    Config: ClassVar[type] = type(None)
    registered_name: ClassVar[str]

    def __init__(self, config: Any = None) -> None:
        self.config = self.Config() if config is None else config

    # ------------------------------------------------------------------ fit
    def validate(self, train: TrainData) -> None:
        """Check the columns this family reads (cheap; the encoder runs every family's check
        before fitting any, so a bad config fails before the slow fits)."""

    def fit(self, train: TrainData, context: FitContext) -> FeatureTransformer:  # pragma: no cover
        raise NotImplementedError

    def _start_fit(self, train: TrainData) -> None:
        self.validate(train)
        self.n_users_, self.n_items_ = train.dataset.n_users, train.dataset.n_items
        self.user_fids_ = np.zeros((self.n_users_, 0), np.int64)
        self.item_fids_ = np.zeros((self.n_items_, 0), np.int64)
        self.user_names_: tuple[str, ...] = ()
        self.item_names_: tuple[str, ...] = ()
        self.pair_names_: tuple[str, ...] = ()
        self.dense_names_: tuple[str, ...] = ()

    def _check(self) -> None:
        if not hasattr(self, "dense_names_"):
            raise NotFittedError(f"{type(self).__name__} is not fitted; call fit(train, context) first")

    # ------------------------------------------------------------------ transform
    @property
    def fid_names_(self) -> tuple[str, ...]:
        return self.user_names_ + self.item_names_ + self.pair_names_

    def pair_fids(self, u: np.ndarray, i: np.ndarray, ts: np.ndarray | None) -> np.ndarray:
        """(N, W_p) int64 FIDs of the pairs (none by default)."""
        return np.zeros((len(u), 0), np.int64)

    def dense(self, u: np.ndarray, i: np.ndarray, ts: np.ndarray | None) -> np.ndarray:
        """(N, D) float32 dense columns (none by default)."""
        return np.zeros((len(u), 0), np.float32)

    def sequences(self, u: np.ndarray, i: np.ndarray, ts: np.ndarray | None) -> dict[str, np.ndarray]:
        """Sequence FIDs and mask (none by default); PAD_FID at padded positions."""
        return {}

    def fids(self, u: np.ndarray, i: np.ndarray, ts: np.ndarray | None) -> np.ndarray:
        """(N, W_u + W_i + W_p) int64 FIDs of the samples (before the vocabulary lookup)."""
        return np.concatenate([self.user_fids_[u], self.item_fids_[i], self.pair_fids(u, i, ts)], axis=1)

    def transform(self, user_idx, item_idx, ts=None, vocab: FidVocab | None = None) -> FeatureColumns:
        """This family's columns for samples (user_idx[k], item_idx[k]) at time ts[k] (None = now);
        with `vocab`, FIDs are mapped to embedding rows (0 = padding/unknown)."""
        self._check()
        u, i, ts = as_samples(user_idx, item_idx, ts, self.n_users_, self.n_items_)
        fids, seqs = self.fids(u, i, ts), self.sequences(u, i, ts)
        if vocab is not None:
            fids = vocab.lookup(fids)
            seqs = {k: v if v.dtype == bool else vocab.lookup(v) for k, v in seqs.items()}
        return FeatureColumns(fids, self.fid_names_, self.dense(u, i, ts), self.dense_names_, seqs)


def stack_dense(cols: list[np.ndarray], n: int) -> np.ndarray:
    """(N, len(cols)) float32 of the columns (each cast once, as the encoder always did)."""
    if not cols:
        return np.zeros((n, 0), np.float32)
    return np.stack(cols, axis=1).astype(np.float32)


__all__ = ["PAD_FID", "FeatureColumns", "FeatureTransformer", "FitContext", "as_samples", "binary_labels",
           "entity_side", "numeric_column", "require_known", "require_ts", "stack_dense", "value_lists"]
