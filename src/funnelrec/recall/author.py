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

import scipy.sparse as sp

from funnelrec.core.errors import ConfigError
from funnelrec.core.registry import RECALL_CHANNELS
from funnelrec.data.dataset import TrainData
from funnelrec.recall._common import UserHistory
from funnelrec.recall.hot import train_popularity
from funnelrec.recall.itemcf import itemcf_neighbours
from funnelrec.recall.tag import AttributeRecall, user_value_weights


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
        self.history_ = UserHistory(data.csr)
        self.fitted_ = True
        return self

    def _user_weights(self, H: sp.csr_matrix) -> sp.csr_matrix:
        W = user_value_weights(H, self.forward_.matrix, self.n_values_kept_)
        if self.similar_ is not None:
            W = sp.csr_matrix(W + self.config.similar_weight * (W @ self.similar_))
        return W
