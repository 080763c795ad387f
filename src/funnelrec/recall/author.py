"""Author recall: the followed authors' fresh items first, then items by the authors the user
consumed, and by similar authors.

Consumption (every user; the whole channel when nobody follows anyone):

    a(u, x)      = share of the user's history by author x, top `n_authors` kept
    a'(u, ·)     = a(u, ·) + β · a(u, ·) · sim
    c(u, i)      = Σ_x a'(u, x) · pop(i) / max pop       over the inverted index author → items

Follows (a user with a followed author, from the dataset's follows table — edges with ts ≤ the
training time — and the request's live `RequestState.follows`, which add and remove edges):

    f(u, x)      = 1 if u follows x
    fresh(i)     = (t_i − t_min + 1) / (t_max − t_min + 1) ∈ (0, 1]   (item time column; without
                   one, pop(i) / max pop); the index keeps each author's `items_per_author` freshest
    g(u, i)      = Σ_x f(u, x) · fresh(i)
    score(u, i)  = max_j c(u, j) + 1 + g(u, i)   for the followed authors' items (they come first,
                   freshest first), then the c(u, ·) list without them

Similar authors: sim(x, y) = |F_x ∩ F_y| / sqrt(|F_x| · |F_y|), the cosine of the authors'
follower sets F_x = {u : f(u, x) = 1} (co-following), top `k_similar` per author; when the data
has no follows, F_x = {u : u consumed an item by x} (co-consumption). sim(x, x) is not kept.

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
    column: str = "directors"
    n_authors: int = 10
    items_per_author: int = 200
    k_similar: int = 10  # similar authors kept per author; 0 = no expansion
    similar_weight: float = 0.5  # β
    tau_days: float = 0.0
    use_follows: bool = True  # read the dataset's follows table and the request's live follows
    time_column: str | None = None  # item time for fresh(i); None = the schema's first items time column

    def __post_init__(self) -> None:
        if self.n_authors < 1 or self.items_per_author < 1 or self.k_similar < 0 or self.similar_weight < 0:
            raise ConfigError(f"AuthorConfig: bad values {self}")


@RECALL_CHANNELS.register("author")
class AuthorRecall(AttributeRecall):
    config_class = AuthorConfig

    def __init__(self, config: AuthorConfig | None = None, name: str | None = None) -> None:
        super().__init__(name)
        self.config = config or AuthorConfig()

    def fit(self, data: TrainData) -> AuthorRecall:
        cfg = self.config
        pop = train_popularity(data, cfg.tau_days, scale_to_max=True)
        self._fit_index(data, cfg.column, pop, cfg.items_per_author, cfg.n_authors)
        self.fresh_ = self._freshness(data, pop)
        self.fresh_items_ = InvertedIndex.build(self.forward_, self.fresh_, cfg.items_per_author).matrix(data.n_items)
        self.follows_ = self._follow_matrix(data) if cfg.use_follows else None
        if cfg.k_similar > 0 and self.forward_.n_values > 1:
            if self.follows_ is not None and self.follows_.nnz:
                UA = self.follows_  # (U, A) co-following
            else:
                UA = sp.csr_matrix(data.csr @ self.forward_.matrix)  # (U, A) co-consumption counts
                UA.data[:] = 1.0
            self.similar_ = itemcf_neighbours(UA, cfg.k_similar, "cosine")
        else:
            self.similar_ = None
        self.expansion_ = None if self.similar_ is None else self._build_expansion()
        self.history_ = UserHistory(data.csr)
        self.fitted_ = True
        return self

    def _freshness(self, data: TrainData, pop: np.ndarray) -> np.ndarray:
        """(I,) fresh(i) of the module doc, float64."""
        items, col = data.dataset.items, self.config.time_column
        if col is None:
            col = next((c for c in data.dataset.schema.columns("items", "time") if c in items.columns), None)
        elif col not in items.columns:
            raise ConfigError(f"author: time_column {col!r} not in the items table: {', '.join(items.columns)}")
        if col is None:
            return np.asarray(pop, np.float64)
        t = items[col].cast(pl.Float64).to_numpy()
        lo = np.nanmin(t) if np.isfinite(t).any() else 0.0
        t = np.where(np.isfinite(t), t, lo)
        return (t - lo + 1.0) / (t.max() - lo + 1.0)

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
        base = spmm_topn(self._user_weights(H), self.value_items_, n, self.name, exclude=seen)
        F = self._follow_rows(users, context)
        if F is None or not F.idx.size or getattr(self, "fresh_items_", None) is None:
            return base
        followed = spmm_topn(F, self.fresh_items_, n, self.name, exclude=seen)
        return followed_first(followed, base, n, self.name)

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
        if getattr(self, "fresh_", None) is not None:  # a new item is the freshest there is
            fresh = np.ones(items.height, np.float64)
            fresh[: len(self.fresh_)] = self.fresh_
            new.fresh_ = fresh
            new.fresh_items_ = InvertedIndex.build(new.forward_, fresh, self.config.items_per_author).matrix(items.height)
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

    def _user_weights(self, H: Rows) -> Rows:
        W = super()._user_weights(H)
        if self.similar_ is None:
            return W
        E, width = self._expansion()
        out = spmm_topn(W, E, width, self.name)  # every positive entry of W·E (width bounds the row)
        return Rows.from_padded(out.items, out.scores)


def followed_first(followed: CandidateBatch, base: CandidateBatch, n: int, channel: str) -> CandidateBatch:
    """Per row: the followed authors' items (score m_u + 1 + g, m_u = the row's best consumption
    score, so they rank first), then the consumption list without them, cut to n. (U, n)."""
    U = base.n_users
    items = np.full((U, n), PAD, np.int64)
    scores = np.full((U, n), -np.inf, np.float32)
    for r in range(U):
        fi, fs = followed.row(r)
        bi, bs = base.row(r)
        top = float(bs[0]) if len(bs) else 0.0
        rest = ~np.isin(bi, fi)
        row_i = np.concatenate([fi, bi[rest]])[:n]
        row_s = np.concatenate([fs.astype(np.float64) + max(top, 0.0) + 1.0, bs[rest]])[:n]
        items[r, : len(row_i)] = row_i
        scores[r, : len(row_s)] = row_s
    return CandidateBatch(channel, items, scores)
