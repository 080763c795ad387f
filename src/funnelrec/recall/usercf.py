"""User-based collaborative filtering with hot-item damping.

    sim(u, v)   = Σ_{i ∈ I_u ∩ I_v} 1/log(1 + |U_i|)  /  sqrt(|I_u|·|I_v|)
    score(u, s) = Σ_{v ∈ top-k sim(u, ·)} sim(u, v) · r(v, s)

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
from funnelrec.recall._common import UserHistory, csr_topn, rating_matrix, row_topk
from funnelrec.recall.base import RecallChannel, RecallContext


@dataclass(frozen=True)
class UserCFConfig:
    k: int = 50  # neighbour users
    hot_damping: bool = True  # weight shared items by 1/log(1 + popularity)
    use_rating: bool = False  # r(v, s) = rating instead of 1

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ConfigError(f"UserCFConfig.k must be ≥ 1, got {self.k}")


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
        self.ratings_ = rating_matrix(data) if self.config.use_rating else R
        self.history_ = UserHistory(data.csr)
        self.fitted_ = True
        return self

    def _recall(self, users: np.ndarray, n: int, context: RecallContext | None) -> CandidateBatch:
        H, seen = self.history_.matrix(users, context)
        S = sp.csr_matrix((H @ sp.diags(self.item_weight_)) @ self.item_users_)  # (U, n_users)
        S.sum_duplicates()
        hl = np.asarray(H.getnnz(axis=1), np.float64)
        rows = np.repeat(np.arange(S.shape[0]), np.diff(S.indptr))
        S.data /= np.sqrt(np.maximum(hl[rows], 1.0) * np.maximum(self.user_len_[S.indices], 1.0))
        known = self.history_.known(users)
        self_hit = known[rows] & (S.indices == users[rows])  # a user is not their own neighbour
        S.data[self_hit] = 0.0
        S.eliminate_zeros()
        return csr_topn(row_topk(S, self.config.k) @ self.ratings_, n, self.name, seen)
