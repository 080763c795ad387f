"""Author recall: items by the authors the user consumed, and by similar authors.

    a(u, x)      = share of the user's history by author x, top `n_authors` kept
    sim(x, y)    = cosine of authors x, y over users (author co-consumption), top `k_similar` per x
    a'(u, ·)     = a(u, ·) + β · a(u, ·) · sim
    score(u, i)  = Σ_x a'(u, x) · pop(i) / max pop       over the inverted index author → items

MovieLens-100k: `items.directors` (default) or `items.authors` (directors + actors), both from
the Freebase knowledge graph.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from funnelrec.core.errors import ConfigError
from funnelrec.core.registry import RECALL_CHANNELS
from funnelrec.data.dataset import TrainData
from funnelrec.recall._common import Rows, UserHistory, spmm_topn
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
        self._fit_index(data, cfg.column, train_popularity(data, cfg.tau_days, scale_to_max=True),
                        cfg.items_per_author, cfg.n_authors)
        if cfg.k_similar > 0 and self.forward_.n_values > 1:
            UA = sp.csr_matrix(data.csr @ self.forward_.matrix)  # (U, A) co-consumption counts
            UA.data[:] = 1.0
            self.similar_ = itemcf_neighbours(UA, cfg.k_similar, "cosine")
        else:
            self.similar_ = None
        self.expansion_ = None if self.similar_ is None else self._build_expansion()
        self.history_ = UserHistory(data.csr)
        self.fitted_ = True
        return self

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
