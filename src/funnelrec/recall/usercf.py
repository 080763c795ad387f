"""User-based collaborative filtering with hot-item damping.

    sim(u, v)   = Σ_{i ∈ I_u ∩ I_v} 1/log(1 + |U_i|)  /  sqrt(|I_u|·|I_v|)
    score(u, s) = Σ_{v ∈ top-k sim(u, ·)} sim(u, v) · r(v, s)

With `max_users_per_item` = m > 0 the neighbour search sees a seeded sample of at most m users
of each item (sim is then computed on that sample; |U_i| and |I_v| stay the full counts).
Similarities are computed at request time from the user's current history (training rows plus
`context.extra["history"]`) against the stored item → user matrix: one sparse product for the
whole batch, so a new click changes the next answer and a batch equals one-by-one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from funnelrec.core.errors import ConfigError
from funnelrec.core.registry import RECALL_CHANNELS
from funnelrec.core.types import CandidateBatch
from funnelrec.data.dataset import TrainData
from funnelrec.recall._common import Rows, UserHistory, cap_rows, rating_matrix, spmm_topn
from funnelrec.recall.base import RecallChannel, RecallContext


@dataclass(frozen=True)
class UserCFConfig:
    k: int = 50  # neighbour users
    hot_damping: bool = True  # weight shared items by 1/log(1 + popularity)
    use_rating: bool = False  # r(v, s) = rating instead of 1
    # neighbour search walks ≤ this many users per history item (a seeded sample; 0 = all): a hit
    # item's user list is long, costs most of the request and, damped by 1/log(1 + |U_i|), adds
    # little to sim(u, ·) — the cap industrial user-CF jobs apply (popularity weights stay exact)
    max_users_per_item: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.k < 1 or self.max_users_per_item < 0:
            raise ConfigError(f"UserCFConfig: need k ≥ 1 and max_users_per_item ≥ 0, got {self}")


@RECALL_CHANNELS.register("usercf")
class UserCFRecall(RecallChannel):
    config_class = UserCFConfig

    def __init__(self, config: UserCFConfig | None = None, name: str | None = None) -> None:
        super().__init__(name)
        self.config = config or UserCFConfig()

    def fit(self, data: TrainData) -> UserCFRecall:
        R = sp.csr_matrix(data.csr, dtype=np.float32)
        pop = np.asarray(R.getnnz(axis=0), np.float64)
        self.item_weight_ = (1.0 / np.log1p(np.maximum(pop, 1.0)) if self.config.hot_damping
                             else np.ones(R.shape[1])).astype(np.float32)
        self.user_len_ = np.asarray(R.getnnz(axis=1), np.float64)
        self.item_users_ = sp.csr_matrix(R.T)  # (I, U)
        self._precompute()
        self.ratings_ = rating_matrix(data) if self.config.use_rating else R
        self.history_ = UserHistory(data.csr)
        self.fitted_ = True
        return self

    def _precompute(self) -> None:
        """Fit-time products of the request path: diag(w_item)·(I, U) and 1/sqrt(|I_v|)."""
        W = sp.csr_matrix(sp.diags(self.item_weight_) @ self.item_users_, dtype=np.float32)
        W = cap_rows(W, self.config.max_users_per_item, self.config.seed)
        W.sort_indices()
        self.weighted_item_users_ = W
        self.inv_sqrt_len_ = 1.0 / np.sqrt(np.maximum(self.user_len_, 1.0))

    def _recall(self, users: np.ndarray, n: int, context: RecallContext | None) -> CandidateBatch:
        if "weighted_item_users_" not in self.__dict__:  # a channel saved before these existed
            self._precompute()
        H, seen = self.history_.rows(users, context)
        known = self.history_.known(users)
        me = Rows(np.concatenate([[0], np.cumsum(known)]).astype(np.int64), users[known], np.ones(known.sum(), np.float32))
        # sim(u, v) · sqrt(|I_u|): the top-k neighbours do not depend on the row constant |I_u|
        nb = spmm_topn(H, self.weighted_item_users_, self.config.k, self.name, exclude=me,
                       col_scale=self.inv_sqrt_len_)
        hl = np.maximum(np.diff(H.ptr).astype(np.float64), 1.0)
        S = Rows.from_padded(nb.items, (nb.scores / np.sqrt(hl)[:, None]).astype(np.float32))
        return spmm_topn(S, self.ratings_, n, self.name, exclude=seen)
