"""Author recall: the followed authors' fresh items first, then items by the authors the user
consumed or follows, and by similar authors.

    a(u, x)      = share of the user's history by author x, top `n_authors` kept
    f(u, x)      = 1 if u follows x (the dataset's follows table — edges with ts ≤ the training
                   time — with the request's live `RequestState.follows` adding and removing edges)
    w(u, ·)      = a(u, ·) + γ · f(u, ·) / |f(u)|                  (γ = `follow_weight`)
    w'(u, ·)     = w(u, ·) + β · w(u, ·) · sim
    c(u, i)      = Σ_x w'(u, x) · pop(i) / max pop        over the inverted index author → items

Followed-first: the followed authors' items published in the last `fresh_days` before the
request time (`context.time`; default the training time), at most `items_per_author` newest per
author, newest first, then the c(u, ·) list without them:

    score(u, i)  = max_j c(u, j) + 1 + (t_i − (now − D)) / D       D = fresh_days in seconds

A user without follows gets c(u, ·) with w = a — the channel as it is without a follows table.
Without an item time column (`time_column`, default the schema's first items time column) or
with fresh_days = 0 there is no followed-first list; follows still enter w.

Similar authors: sim(x, y) = |P_x ∩ P_y| / sqrt(|P_x| · |P_y|), the cosine of the authors'
audiences P_x = {u : f(u, x) = 1} ∪ {u : u consumed an item by x} (co-following and
co-consumption; without follows, co-consumption alone), top `k_similar` per author, sim(x, x)
not kept. (Co-following alone was tried: on the synthetic world it ranks below co-consumption
— its click log follows popularity, which a follow graph drawn from taste lacks — while the
union ranks as well as co-consumption; docs/BENCHMARKS.md, session 4.)

MovieLens-100k: `items.directors` (default) or `items.authors` (directors + actors), both from
the Freebase knowledge graph; the synthetic world: `items.author`, with follows on request.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl
import scipy.sparse as sp

from funnelrec.core.errors import ConfigError
from funnelrec.core.registry import RECALL_CHANNELS
from funnelrec.core.sparse import take_rows
from funnelrec.core.types import PAD, CandidateBatch
from funnelrec.data.dataset import TrainData
from funnelrec.recall._common import Rows, UserHistory, spmm_topn
from funnelrec.recall.attributes import InvertedIndex
from funnelrec.recall.base import RecallContext
from funnelrec.recall.hot import train_popularity
from funnelrec.recall.itemcf import itemcf_neighbours
from funnelrec.recall.tag import AttributeRecall


@dataclass(frozen=True)
class AuthorConfig:
    column: str | None = None  # None = the schema's items column named like "author", else its first multi
    n_authors: int = 10
    items_per_author: int = 200
    k_similar: int = 10  # similar authors kept per author; 0 = no expansion
    similar_weight: float = 0.5  # β
    tau_days: float = 0.0
    use_follows: bool = True  # read the dataset's follows table and the request's live follows
    follow_weight: float = 1.0  # γ: a followed author's weight next to the history shares
    fresh_days: float = 1.0  # D: followed authors' items this recent come first; 0 = no such list
    time_column: str | None = None  # item publish time; None = the schema's first items time column

    def __post_init__(self) -> None:
        if self.follow_weight < 0 or self.fresh_days < 0:
            raise ConfigError(f"AuthorConfig: follow_weight and fresh_days must be ≥ 0, got {self}")
        if self.n_authors < 1 or self.items_per_author < 1 or self.k_similar < 0 or self.similar_weight < 0:
            raise ConfigError(f"AuthorConfig: bad values {self}")


@RECALL_CHANNELS.register("author")
class AuthorRecall(AttributeRecall):
    config_class = AuthorConfig

    def __init__(self, config: AuthorConfig | None = None, name: str | None = None) -> None:
        super().__init__(name)
        self.config = config or AuthorConfig()

    def fit(self, data: TrainData) -> AuthorRecall:
        if self.config.column is None:  # resolved once, kept in the fitted config
            from dataclasses import replace

            from funnelrec.recall.columns import schema_column

            col = schema_column(data.dataset, ("categorical", "multi"), f"recall channel {self.name!r}: params.column",
                                name_hint="author")
            self.config = replace(self.config, column=col)
        cfg = self.config
        pop = train_popularity(data, cfg.tau_days, scale_to_max=True)
        self._fit_index(data, cfg.column, pop, cfg.items_per_author, cfg.n_authors)
        self.item_time_ = self._item_time(data)
        self.now_ = int(data.now)
        self.fresh_items_ = self._fresh_index(self.item_time_, data.n_items)
        self.follows_ = self._follow_matrix(data) if cfg.use_follows else None
        if cfg.k_similar > 0 and self.forward_.n_values > 1:
            UA = sp.csr_matrix(data.csr @ self.forward_.matrix)  # (U, A) co-consumption
            UA.data[:] = 1.0
            if self.follows_ is not None and self.follows_.nnz:
                UA = sp.csr_matrix(UA.maximum(self.follows_))  # audience = consumers ∪ followers
            self.similar_ = itemcf_neighbours(UA, cfg.k_similar, "cosine")
        else:
            self.similar_ = None
        self.expansion_ = None if self.similar_ is None else self._build_expansion()
        self.history_ = UserHistory(data.csr)
        self.fitted_ = True
        return self

    def _item_time(self, data: TrainData) -> np.ndarray | None:
        """(I,) float64 publish time of each item (missing → −inf: never fresh); None without a
        time column."""
        items, col = data.dataset.items, self.config.time_column
        if col is None:
            col = next((c for c in data.dataset.schema.columns("items", "time") if c in items.columns), None)
        elif col not in items.columns:
            raise ConfigError(f"author: time_column {col!r} not in the items table: {', '.join(items.columns)}")
        self.time_column_ = col
        if col is None:
            return None
        t = items[col].cast(pl.Float64).to_numpy()
        return np.where(np.isfinite(t), t, -np.inf)

    def _fresh_index(self, t: np.ndarray | None, n_items: int) -> sp.csr_matrix | None:
        """(A, I) CSR: each author's `items_per_author` newest items, scored by rank of time."""
        if t is None:
            return None
        rank = np.empty(len(t), np.float64)  # 1..I by time (newest = I): scores must be > 0
        rank[np.argsort(t, kind="stable")] = np.arange(1, len(t) + 1)
        return InvertedIndex.build(self.forward_, rank, self.config.items_per_author).matrix(n_items)

    def _follow_matrix(self, data: TrainData) -> sp.csr_matrix | None:
        """(U, A) binary f(u, x) of the dataset's follows with ts ≤ the training time (authors with
        no item in the catalogue dropped); None without a follows table."""
        f = data.dataset.follows
        if f is None:
            return None
        if data.interactions.height:
            f = f.filter(pl.col("ts") <= data.now)
        vocab = self.forward_.vocab.astype(str)
        a = f["author_id"].to_numpy().astype(str)
        code = np.minimum(np.searchsorted(vocab, a), max(len(vocab) - 1, 0))
        ok = (vocab[code] == a) if len(vocab) else np.zeros(len(a), bool)
        u = f["user_idx"].to_numpy()[ok]
        m = sp.csr_matrix((np.ones(int(ok.sum()), np.float32), (u, code[ok])), shape=(data.n_users, len(vocab)))
        m.sum_duplicates()
        m.data[:] = 1.0
        m.sort_indices()
        return m

    def _follow_rows(self, users: np.ndarray, context: RecallContext | None) -> Rows | None:
        """f(u, ·) of each user as Rows over author codes: the fitted edges, then the request's
        live follows (author id → True: follows, False: unfollowed). None when nobody has any."""
        F = getattr(self, "follows_", None) if self.config.use_follows else None
        state = None if context is None else context.state
        live = None if state is None or not self.config.use_follows else getattr(state, "follows", None)
        if live is None:
            if F is None:
                return None
            return Rows.from_csr(take_rows(F, users))
        ptr, idx = [0], []
        for r, u in enumerate(users.tolist()):
            codes = set(F.indices[F.indptr[u]:F.indptr[u + 1]].tolist()) if F is not None and 0 <= u < F.shape[0] else set()
            for author, on in (live[r] or {}).items():
                c = self.forward_.code(str(author))
                if c >= 0:
                    (codes.add if on else codes.discard)(c)
            idx.extend(sorted(codes))
            ptr.append(len(idx))
        return Rows(np.asarray(ptr, np.int64), np.asarray(idx, np.int64), np.ones(len(idx), np.float32))

    def _recall(self, users: np.ndarray, n: int, context: RecallContext | None) -> CandidateBatch:
        H, seen = self.history_.rows(users, context)
        F = self._follow_rows(users, context)
        if F is not None and not F.idx.size:
            F = None
        base = spmm_topn(self._user_weights(H, F), self.value_items_, n, self.name, exclude=seen)
        if F is None or self.config.fresh_days <= 0 or getattr(self, "fresh_items_", None) is None:
            return base
        now = float(self.now_ if context is None or context.time is None else context.time)
        return self._followed_first(F, seen, base, n, now)

    def _followed_first(self, F: Rows, seen: Rows, base: CandidateBatch, n: int, now: float) -> CandidateBatch:
        """Per user: the followed authors' items of the last D seconds, unseen, newest first
        (score max_j c(u, j) + 1 + (t_i − (now − D)) / D), then `base` without them; (U, n)."""
        D = self.config.fresh_days * 86400.0
        X, t = self.fresh_items_, self.item_time_
        U = base.n_users
        items = np.full((U, n), PAD, np.int64)
        scores = np.full((U, n), -np.inf, np.float32)
        for r in range(U):
            codes = F.idx[F.ptr[r]:F.ptr[r + 1]]
            cand = np.unique(np.concatenate([X.indices[X.indptr[c]:X.indptr[c + 1]] for c in codes])) if len(codes) \
                else np.zeros(0, np.int64)
            tc = t[cand]
            cand = cand[(tc > now - D) & (tc <= now) & ~np.isin(cand, seen.idx[seen.ptr[r]:seen.ptr[r + 1]])]
            cand = cand[np.lexsort((cand, -t[cand]))][:n]  # newest first, ties → lower index
            bi, bs = base.row(r)
            top = max(float(bs[0]), 0.0) if len(bs) else 0.0
            rest = ~np.isin(bi, cand)
            row_i = np.concatenate([cand, bi[rest]])[:n]
            row_s = np.concatenate([top + 1.0 + (t[cand] - (now - D)) / D, bs[rest]])[:n]
            items[r, : len(row_i)] = row_i
            scores[r, : len(row_s)] = row_s
        return CandidateBatch(self.name, items, scores)

    def _build_expansion(self) -> tuple[sp.csr_matrix, int]:
        """(A, A) E = I + β·sim (a' = a · E) and the widest row of a·E, built at fit time: a
        request must not touch O(A) arrays, nor write to the channel."""
        A = self.similar_.shape[0]
        E = sp.csr_matrix(sp.identity(A, np.float32, format="csr") + self.config.similar_weight * self.similar_,
                          dtype=np.float32)
        E.sort_indices()
        width = max(1, min(A, self.n_values_kept_ * int(np.diff(E.indptr).max(initial=1))))
        return E, width

    def _index_limit(self) -> int:
        return self.config.items_per_author

    def extend_items(self, items, changed: np.ndarray) -> AuthorRecall:
        """`AttributeRecall.extend_items`, with the author similarities renumbered into the
        widened vocabulary (a new author has no similar authors until the next fit)."""
        new = super().extend_items(items, changed)
        old, vocab = self.forward_.vocab.astype(str), new.forward_.vocab
        if getattr(self, "item_time_", None) is not None:  # new items: their publish time, if given
            col = getattr(self, "time_column_", None)
            t = np.full(items.height, -np.inf)
            t[: len(self.item_time_)] = self.item_time_
            if col is not None and col in items.columns:
                got = items[col].cast(pl.Float64).to_numpy()[len(self.item_time_):]
                t[len(self.item_time_):] = np.where(np.isfinite(got), got, -np.inf)
            new.item_time_ = t
            new.fresh_items_ = new._fresh_index(t, items.height)
        if getattr(self, "follows_", None) is not None and len(vocab) != len(old):
            f = sp.coo_matrix(self.follows_)
            new.follows_ = sp.csr_matrix((f.data, (f.row, np.searchsorted(vocab, old)[f.col])),
                                         shape=(f.shape[0], len(vocab)), dtype=np.float32)
            new.follows_.sort_indices()
        if self.similar_ is not None and len(vocab) != len(old):
            code = np.searchsorted(vocab, old)
            s = sp.coo_matrix(self.similar_)
            new.similar_ = sp.csr_matrix((s.data, (code[s.row], code[s.col])), shape=(len(vocab), len(vocab)),
                                         dtype=self.similar_.dtype)
            new.similar_.sort_indices()
            new.expansion_ = new._build_expansion()
        return new

    def _expansion(self) -> tuple[sp.csr_matrix, int]:
        got = self.__dict__.get("expansion_")
        return got if isinstance(got, tuple) else self._build_expansion()  # a channel saved before it existed

    def _user_weights(self, H: Rows, F: Rows | None = None) -> Rows:
        """w' of the module doc: history shares (+ γ · f / |f| with follows), expanded by sim."""
        W = super()._user_weights(H)
        if F is not None and self.config.follow_weight > 0:
            W = _add_rows(W, F, self.config.follow_weight)
        if self.similar_ is None:
            return W
        E, width = self._expansion()
        longest = int(np.diff(W.ptr).max(initial=0))
        if longest > self.n_values_kept_:  # follows widen a row beyond n_authors values
            width = max(1, min(E.shape[0], longest * int(np.diff(E.indptr).max(initial=1))))
        out = spmm_topn(W, E, width, self.name)  # every positive entry of W·E (width bounds the row)
        return Rows.from_padded(out.items, out.scores)


def _add_rows(W: Rows, F: Rows, weight: float) -> Rows:
    """W + weight · F / (row count of F), row by row (both Rows over author codes)."""
    nW, nF = np.diff(W.ptr), np.diff(F.ptr)
    rows = np.concatenate([np.repeat(np.arange(W.n_rows), nW), np.repeat(np.arange(F.n_rows), nF)])
    cols = np.concatenate([W.idx, F.idx])
    vals = np.concatenate([W.dat.astype(np.float64), weight * F.dat / np.repeat(np.maximum(nF, 1), nF)])
    key = rows * (int(cols.max(initial=0)) + 1) + cols
    uniq, inv = np.unique(key, return_inverse=True)
    dat = np.bincount(inv, weights=vals, minlength=len(uniq))
    r = uniq // (int(cols.max(initial=0)) + 1)
    ptr = np.zeros(W.n_rows + 1, np.int64)
    np.cumsum(np.bincount(r, minlength=W.n_rows), out=ptr[1:])
    return Rows(ptr, (uniq % (int(cols.max(initial=0)) + 1)).astype(np.int64), dat.astype(np.float32))
