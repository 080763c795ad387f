"""Geo recall: what is popular among users of the same region.

    geo(r, i) = Σ_{(u, i, t) ∈ train, region(u) = r} exp(−(now − t)/τ)

The region is `context.region` when given, else the user's profile column (`users.region` on
MovieLens: the first zip digit). Unknown user without a context region, or an unknown/null
region → an empty row. Needs no history (not personalized), but seen items are excluded.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from funnelrec.core.errors import ConfigError
from funnelrec.core.registry import RECALL_CHANNELS
from funnelrec.core.types import CandidateBatch
from funnelrec.data.dataset import TrainData
from funnelrec.recall._common import UserHistory, take_unseen_rows
from funnelrec.recall.attributes import ForwardIndex
from funnelrec.recall.base import RecallChannel, RecallContext
from funnelrec.recall.hot import decayed_counts, ranked_list


@dataclass(frozen=True)
class GeoConfig:
    column: str = "region"  # user column holding the region
    tau_days: float = 0.0
    items_per_region: int = 2000

    def __post_init__(self) -> None:
        if self.tau_days < 0 or self.items_per_region < 1:
            raise ConfigError(f"GeoConfig: tau_days ≥ 0 and items_per_region ≥ 1 required, got {self}")


@RECALL_CHANNELS.register("geo")
class GeoRecall(RecallChannel):
    personalized = False
    config_class = GeoConfig

    def __init__(self, config: GeoConfig | None = None, name: str | None = None) -> None:
        super().__init__(name)
        self.config = config or GeoConfig()

    def fit(self, data: TrainData) -> GeoRecall:
        cfg = self.config
        fwd = ForwardIndex.from_column(data.dataset.users, cfg.column)
        self.regions_ = fwd.vocab
        m = fwd.matrix.tocsr()
        has = np.diff(m.indptr) > 0
        self.user_region_ = np.full(data.n_users, -1, np.int64)
        self.user_region_[has] = m.indices[m.indptr[:-1][has]]  # first value if several
        inter = data.interactions
        reg = self.user_region_[inter["user_idx"].to_numpy()]
        items, times = inter["item_idx"].to_numpy(), inter["timestamp"].to_numpy()
        lists, scores, indptr = [], [], [0]
        for r in range(len(self.regions_)):
            sel = reg == r
            pop = decayed_counts(items[sel], times[sel], data.now, cfg.tau_days, data.n_items)
            it, sc = ranked_list(pop, cfg.items_per_region)
            lists.append(it)
            scores.append(sc)
            indptr.append(indptr[-1] + len(it))
        self.list_indptr_ = np.array(indptr, np.int64)
        self.list_items_ = np.concatenate(lists) if lists else np.zeros(0, np.int64)
        self.list_scores_ = np.concatenate(scores) if scores else np.zeros(0, np.float32)
        self.history_ = UserHistory(data.csr)
        self.fitted_ = True
        return self

    def _region_code(self, region: str) -> int:
        k = int(np.searchsorted(self.regions_, region))
        return k if k < len(self.regions_) and self.regions_[k] == region else -1

    def _recall(self, users: np.ndarray, n: int, context: RecallContext | None) -> CandidateBatch:
        _, seen = self.history_.rows(users, context)
        if context is not None and context.region is not None:
            groups = np.full(len(users), self._region_code(str(context.region)), np.int64)
        else:
            known = self.history_.known(users)
            groups = np.where(known, self.user_region_[np.where(known, users, 0)], -1)
        return take_unseen_rows(self.list_indptr_, self.list_items_, self.list_scores_, groups, seen, n,
                                self.history_.n_items, self.name)
