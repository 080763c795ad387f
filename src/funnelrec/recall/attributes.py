"""Forward and inverted indexes over item (or user) attributes, shared by the attribute channels.

- `ForwardIndex`: id → attribute values, an (n_ids, V) binary CSR over a vocabulary of values,
  built from a categorical column (str) or a multi-valued one (list[str]); nulls → no value.
- `InvertedIndex`: value → ids ranked by a score (popularity, freshness), packed like CSR
  (value v owns `items[indptr[v]:indptr[v+1]]`, best first), truncated to `max_per_value`.

    >>> fwd = ForwardIndex.from_column(items, "genres")          # doctest: +SKIP
    >>> inv = InvertedIndex.build(fwd, popularity, max_per_value=500)  # doctest: +SKIP
    >>> inv.lookup("Comedy")                                      # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl
import scipy.sparse as sp

from funnelrec.core.errors import ConfigError


@dataclass
class ForwardIndex:
    column: str
    vocab: np.ndarray  # (V,) str, sorted
    matrix: sp.csr_matrix  # (n_ids, V) binary

    @classmethod
    def from_column(cls, table: pl.DataFrame, column: str) -> ForwardIndex:
        """Rows of `table` are ids 0..n-1 (the dataset's users/items tables are sorted so)."""
        if column not in table.columns:
            raise ConfigError(f"column {column!r} not found; available: {', '.join(table.columns)}")
        col = table[column]
        if isinstance(col.dtype, pl.List):
            lists = col.cast(pl.List(pl.String))
        else:  # one value per row; a null becomes an empty list
            lists = pl.select(pl.when(col.is_null()).then(pl.lit([], pl.List(pl.String)))
                              .otherwise(pl.concat_list(col.cast(pl.String)))).to_series()
        lens = lists.list.len().fill_null(0).to_numpy().astype(np.int64)
        flat = lists.explode().drop_nulls().to_numpy().astype(str) if lens.sum() else np.zeros(0, str)
        vocab, codes = np.unique(flat, return_inverse=True)
        rows = np.repeat(np.arange(table.height), lens)
        m = sp.csr_matrix((np.ones(len(codes), np.float32), (rows, codes)), shape=(table.height, len(vocab)))
        m.sum_duplicates()
        m.data[:] = 1.0
        return cls(column, vocab, m)

    @property
    def n_values(self) -> int:
        return len(self.vocab)

    def code(self, value: str) -> int:
        """Index of `value` in the vocabulary, -1 when unknown."""
        k = int(np.searchsorted(self.vocab, value))
        return k if k < len(self.vocab) and self.vocab[k] == value else -1

    def values(self, idx: int) -> list[str]:
        lo, hi = self.matrix.indptr[idx], self.matrix.indptr[idx + 1]
        return self.vocab[self.matrix.indices[lo:hi]].tolist()


@dataclass
class InvertedIndex:
    vocab: np.ndarray  # (V,) str
    indptr: np.ndarray  # (V + 1,) int64
    items: np.ndarray  # (nnz,) int64, each value's ids best first
    scores: np.ndarray  # (nnz,) float32

    @classmethod
    def build(cls, forward: ForwardIndex, score: np.ndarray, max_per_value: int = 0) -> InvertedIndex:
        """Rank each value's ids by `score` (descending, ties → lower id), drop ids with score
        ≤ 0, keep at most `max_per_value` (0 = all)."""
        m = sp.csr_matrix(forward.matrix.T)
        m.sort_indices()
        vals = np.repeat(np.arange(m.shape[0]), np.diff(m.indptr))
        ids = m.indices.astype(np.int64)
        s = np.asarray(score, np.float64)[ids]
        keep = s > 0
        vals, ids, s = vals[keep], ids[keep], s[keep]
        order = np.lexsort((ids, -s, vals))
        vals, ids, s = vals[order], ids[order], s[order]
        counts = np.bincount(vals, minlength=m.shape[0])
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        rank = np.arange(len(vals)) - starts[vals]
        if max_per_value > 0:
            keep = rank < max_per_value
            vals, ids, s = vals[keep], ids[keep], s[keep]
            counts = np.bincount(vals, minlength=m.shape[0])
        indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        return cls(forward.vocab, indptr, ids, s.astype(np.float32))

    def lookup(self, value: str) -> tuple[np.ndarray, np.ndarray]:
        k = int(np.searchsorted(self.vocab, value))
        if k >= len(self.vocab) or self.vocab[k] != value:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        lo, hi = self.indptr[k], self.indptr[k + 1]
        return self.items[lo:hi], self.scores[lo:hi]

    def matrix(self, n_ids: int) -> sp.csr_matrix:
        """(V, n_ids) CSR: row v holds v's kept ids with their scores."""
        rows = np.repeat(np.arange(len(self.vocab)), np.diff(self.indptr))
        m = sp.csr_matrix((self.scores, (rows, self.items)), shape=(len(self.vocab), n_ids))
        m.sort_indices()
        return m
