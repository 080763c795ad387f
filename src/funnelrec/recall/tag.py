"""Tag recall: the user's favourite tags by history, then each tag's most popular items.

    w(u, t)  = share of the user's history carrying tag t, kept for the top `n_tags` tags
    score(u, i) = Σ_t w(u, t) · pop(i) / max pop        over the inverted index t → items

pop is the time-decayed popularity of the hot channel; each tag's list keeps `items_per_tag`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import polars as pl
import scipy.sparse as sp

from funnelrec.core.errors import ConfigError
from funnelrec.core.registry import RECALL_CHANNELS
from funnelrec.core.types import CandidateBatch
from funnelrec.data.dataset import TrainData
from funnelrec.recall._common import Rows, UserHistory, row_topk, spmm_topn
from funnelrec.recall.attributes import ForwardIndex, InvertedIndex
from funnelrec.recall.base import RecallChannel, RecallContext
from funnelrec.recall.hot import train_popularity


@dataclass(frozen=True)
class TagConfig:
    column: str | None = None  # item column holding the tags (list[str] or str); None = the schema's first multi
    n_tags: int = 3  # the user's top tags used
    items_per_tag: int = 1000
    tau_days: float = 0.0  # popularity decay; 0 = plain count

    def __post_init__(self) -> None:
        if self.n_tags < 1 or self.items_per_tag < 1 or self.tau_days < 0:
            raise ConfigError(f"TagConfig: n_tags, items_per_tag ≥ 1 and tau_days ≥ 0 required, got {self}")


def user_value_weights(H: sp.csr_matrix, item_values: sp.csr_matrix, top: int) -> sp.csr_matrix:
    """(U, V) share of each user's history carrying value v, top `top` values per user kept."""
    W = sp.csr_matrix(H @ item_values)
    W = row_topk(W, top)
    n = np.asarray(H.sum(axis=1)).ravel()
    n[n <= 0] = 1.0
    return sp.csr_matrix(sp.diags(1.0 / n) @ W)


class AttributeRecall(RecallChannel):
    """Shared recall of attribute channels: user value weights (U, V) × value→items (V, I)."""

    def _fit_index(self, data: TrainData, column: str, score: np.ndarray, max_per_value: int,
                   n_values_kept: int) -> None:
        """Forward index of item `column`, its inverted index ranked by `score` (at most
        `max_per_value` items per value), the user's top `n_values_kept` values used."""
        self.forward_ = ForwardIndex.from_column(data.dataset.items, column)
        self.inverted_ = InvertedIndex.build(self.forward_, score, max_per_value)
        self.value_items_ = self.inverted_.matrix(data.n_items)
        self.n_values_kept_ = n_values_kept

    def _user_weights(self, H: Rows) -> Rows:
        """(U, V) `user_value_weights` of the history rows, as Rows (one fused pass, no scipy)."""
        top = spmm_topn(H, self.forward_.matrix, self.n_values_kept_, self.name)
        n = H.row_sums()
        n[n <= 0] = 1.0
        return Rows.from_padded(top.items, top.scores / n[:, None].astype(np.float32))

    def _recall(self, users: np.ndarray, n: int, context: RecallContext | None) -> CandidateBatch:
        H, seen = self.history_.rows(users, context)
        return spmm_topn(self._user_weights(H), self.value_items_, n, self.name, exclude=seen)

    # ---------------------------------------------------------------- live catalogue (issue #10)
    def _index_limit(self) -> int:
        """`max_per_value` of the inverted index (the subclass's items-per-value config)."""
        return 0

    def _new_item_score(self, scores: np.ndarray) -> float:
        """The index score of an item the fit never saw: the median positive score of the fitted
        items (it counts as a typical item until its popularity is counted by the next update)."""
        pos = scores[scores > 0]
        return float(np.median(pos)) if len(pos) else 1.0

    def extend_items(self, items: pl.DataFrame, changed: np.ndarray) -> AttributeRecall:
        """A copy over the catalogue `items` (rows = dense indices; the fitted items first, new
        ones appended) whose items `changed` have new attribute values: the forward index is
        rebuilt, each fitted item keeps its index score, a new item gets `_new_item_score`.
        The vocabulary keeps every fitted value (codes of user weights stay comparable).
        This channel is not changed (requests in flight read it)."""
        new = copy.copy(self)
        I_old, I_new = self.history_.n_items, items.height
        fwd = ForwardIndex.from_column(items, self.forward_.column)
        new.forward_ = widened_forward(fwd, self.forward_.vocab)
        score = np.zeros(I_new, np.float64)
        score[self.inverted_.items] = self.inverted_.scores  # an item's score is the same in every list
        if I_new > I_old:
            score[I_old:] = self._new_item_score(score[:I_old])
        new.inverted_ = InvertedIndex.build(new.forward_, score, self._index_limit())
        new.value_items_ = new.inverted_.matrix(I_new)
        new.history_ = widened_history(self.history_, I_new)
        return new


def widened_forward(fwd: ForwardIndex, keep_vocab: np.ndarray) -> ForwardIndex:
    """`fwd` over the sorted union of its vocabulary and `keep_vocab` (its matrix's columns
    renumbered), so that every value of `keep_vocab` keeps a code."""
    vocab = np.union1d(keep_vocab.astype(str), fwd.vocab.astype(str))
    if len(vocab) == len(fwd.vocab):
        return fwd
    m = fwd.matrix.tocsr(copy=True)
    m.indices = np.searchsorted(vocab, fwd.vocab.astype(str))[m.indices].astype(m.indices.dtype)
    m = sp.csr_matrix((m.data, m.indices, m.indptr), shape=(m.shape[0], len(vocab)))
    m.sort_indices()
    return ForwardIndex(fwd.column, vocab, m)


def widened_history(h: UserHistory, n_items: int) -> UserHistory:
    """The same histories over `n_items` ≥ h.n_items columns (new items: nobody has seen them)."""
    if n_items == h.n_items:
        return h
    shape = (h.n_users, n_items)
    seen = sp.csr_matrix((h.seen.data, h.seen.indices, h.seen.indptr), shape=shape)
    weights = None if h.weights is h.seen else sp.csr_matrix((h.weights.data, h.weights.indices,
                                                              h.weights.indptr), shape=shape)
    return UserHistory(seen, weights)


@RECALL_CHANNELS.register("tag")
class TagRecall(AttributeRecall):
    config_class = TagConfig

    def __init__(self, config: TagConfig | None = None, name: str | None = None) -> None:
        super().__init__(name)
        self.config = config or TagConfig()

    def _index_limit(self) -> int:
        return self.config.items_per_tag

    def fit(self, data: TrainData) -> TagRecall:
        if self.config.column is None:  # resolved once, kept in the fitted config
            from dataclasses import replace

            from funnelrec.recall.columns import schema_column

            col = schema_column(data.dataset, ("multi", "categorical"), f"recall channel {self.name!r}: params.column")
            self.config = replace(self.config, column=col)
        cfg = self.config
        self._fit_index(data, cfg.column, train_popularity(data, cfg.tau_days, scale_to_max=True),
                        cfg.items_per_tag, cfg.n_tags)
        self.history_ = UserHistory(data.csr)
        self.fitted_ = True
        return self
