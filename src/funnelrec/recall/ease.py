"""EASE recall (Steck 2019, "Embarrassingly Shallow Autoencoders"): a linear item-to-item model
fitted in closed form on the binary history X (U, I),

    B = argmin ‖X − XB‖² + λ‖B‖²  s.t. diag(B) = 0   →   P = (XᵀX + λI)⁻¹,  B = I − P·diag(1/diag(P)),
    score(u, i) = Σ_{j ∈ H_u} B_ji,

and the top-n unseen items with a positive score. A request reads the user's current history
(training rows plus `context.extra["history"]`), so a new click changes the next answer. On
MovieLens-100k it is the strongest single channel (docs/BENCHMARKS.md). B is dense I × I, so the
channel refuses catalogues above `max_items` (20,000 items = 1.6 GB): use itemcf/swing there.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from funnelrec.core.errors import ConfigError, DataError
from funnelrec.core.registry import RECALL_CHANNELS
from funnelrec.core.types import CandidateBatch
from funnelrec.data.dataset import TrainData
from funnelrec.features.candidates import ease_weights
from funnelrec.recall._common import UserHistory
from funnelrec.recall.base import RecallChannel, RecallContext, topn_dense


@dataclass(frozen=True)
class EASEConfig:
    lam: float = 500.0  # λ, the ridge penalty (Steck: a few hundred on MovieLens-sized data)
    max_items: int = 20_000  # B is dense I × I float32
    dropout: float = 0.0  # p > 0: EDLAE (Steck 2020), the penalty λ + p/(1−p)·count(i) per item

    def __post_init__(self) -> None:
        if self.lam <= 0 or self.max_items < 1 or not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"EASEConfig: need lam > 0, max_items ≥ 1 and 0 ≤ dropout < 1, got {self}")


@RECALL_CHANNELS.register("ease")
class EASERecall(RecallChannel):
    config_class = EASEConfig

    def __init__(self, config: EASEConfig | None = None, name: str | None = None) -> None:
        super().__init__(name)
        self.config = config or EASEConfig()

    def fit(self, data: TrainData) -> EASERecall:
        I = data.n_items
        if I > self.config.max_items:
            raise DataError(f"ease recall: {I:,} items need a dense {I:,} × {I:,} matrix "
                            f"({I * I * 4 / 2**30:.1f} GiB; max_items = {self.config.max_items:,}); "
                            "use itemcf or swing for a catalogue this large")
        self.B_ = ease_weights(data.csr, self.config.lam, self.config.dropout)
        self.history_ = UserHistory(data.csr)
        self.fitted_ = True
        return self

    def _recall(self, users: np.ndarray, n: int, context: RecallContext | None) -> CandidateBatch:
        H, seen = self.history_.matrix(users, context)
        scores = np.asarray(H @ self.B_, dtype=np.float32)  # (U, I)
        return topn_dense(scores, n, self.name, exclude=seen)

    def similar_items(self, items: np.ndarray, n: int) -> CandidateBatch:
        """Top-n neighbours of each item (i2i): row i of B (the item-item weights; diag(B) = 0,
        so an item is never its own neighbour); only positive weights; an index outside the
        fitted catalogue gets an empty row."""
        items = np.asarray(items, dtype=np.int64).reshape(-1)
        ok = (items >= 0) & (items < self.B_.shape[0])
        scores = np.where(ok[:, None], self.B_[np.where(ok, items, 0)], -np.inf).astype(np.float32)
        scores[np.arange(len(items)), np.where(ok, items, 0)] = -np.inf
        return topn_dense(scores, n, self.name)
