"""Training the funnel's ranker on what recall hands it.

Examples are the merged recall candidates of each user: label 1 when the user interacted with
the item in the label period, else 0 (recall negatives — the hard ones), plus `random_negatives`
random catalogue items per positive (easy ones). Validation AUC on a held-out 10% of users drives
early stopping in the one Trainer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from funnelrec.core.errors import DataError, NotFittedError
from funnelrec.core.types import MergedCandidates
from funnelrec.eval.metrics import auc
from funnelrec.features.candidates import candidate_features
from funnelrec.models.ranking.candidate_lr import CandidateLR
from funnelrec.train.trainer import Trainer, TrainerConfig


@dataclass(frozen=True)
class CandidateRankerConfig:
    epochs: int = 30
    lr: float = 0.01
    batch_size: int = 4096
    random_negatives: int = 4
    seed: int = 2020


class CandidateRanker:
    """scikit-learn-style: fit(...) returns self; state ends in `_`."""

    def __init__(self, config: CandidateRankerConfig | None = None) -> None:
        self.config = config or CandidateRankerConfig()

    def _examples(self, merged, users, positives, item_log_pop, user_log_act, history, rng):
        u, items, X = candidate_features(merged, users, item_log_pop, user_log_act)
        keys = positives.tocsr()
        y = np.asarray(keys[u, items]).ravel().astype(np.float32) if len(u) else np.empty(0, np.float32)
        n_pos = keys[users].nnz
        k = self.config.random_negatives * max(n_pos, 1)
        if k:
            ru = rng.choice(users, size=k)
            ri = rng.integers(0, keys.shape[1], size=k)
            seen = np.asarray(history[ru, ri]).ravel() + np.asarray(keys[ru, ri]).ravel()
            ru, ri = ru[seen == 0], ri[seen == 0]
            Xr = np.zeros((len(ru), X.shape[1]), np.float32)
            Xr[:, -3] = item_log_pop[ri]
            Xr[:, -2] = user_log_act[ru]
            u, items, X = np.r_[u, ru], np.r_[items, ri], np.vstack([X, Xr])
            y = np.r_[y, np.zeros(len(ru), np.float32)]
        return u, items, X, y

    def fit(self, merged: list[MergedCandidates], users: np.ndarray, positives: sp.csr_matrix,
            item_log_pop: np.ndarray, user_log_act: np.ndarray, history: sp.csr_matrix,
            progress: bool = False) -> CandidateRanker:
        cfg = self.config
        rng = np.random.default_rng(cfg.seed)
        users = np.asarray(users, dtype=np.int64)
        u, items, X, y = self._examples(merged, users, positives, item_log_pop, user_log_act, history, rng)
        if y.sum() == 0:
            raise DataError("ranker training: no positive among the recall candidates — check the label split")
        self.mean_ = X.mean(0)
        self.std_ = X.std(0) + 1e-6
        Xs = (X - self.mean_) / self.std_
        valid_users = rng.choice(users, size=max(1, len(users) // 10), replace=False)
        is_valid = np.isin(u, valid_users)
        t = lambda a, dt: torch.as_tensor(a, dtype=dt)  # noqa: E731
        train = {
            "dense": t(Xs[~is_valid], torch.float32),
            "sparse": t(items[~is_valid, None] + 1, torch.int64),
            "label": t(y[~is_valid], torch.float32),
        }
        vx = {"dense": t(Xs[is_valid], torch.float32), "sparse": t(items[is_valid, None] + 1, torch.int64)}
        vy = y[is_valid]
        self.n_items_ = int(positives.shape[1])
        self.model_ = CandidateLR(X.shape[1], self.n_items_)
        bce = torch.nn.BCEWithLogitsLoss()

        def loss_fn(model, batch):
            return bce(model(batch)["ctr"], batch["label"])

        def validate(model):
            return auc(vy, model(vx)["ctr"].numpy()) if 0 < vy.sum() < len(vy) else 0.0

        trainer = Trainer(TrainerConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, seed=cfg.seed,
                                        patience=3, progress=progress))
        self.train_result_ = trainer.fit(self.model_, loss_fn, train, validate=validate)
        return self

    def score(self, merged: list[MergedCandidates], users: np.ndarray, item_log_pop: np.ndarray,
              user_log_act: np.ndarray) -> list[np.ndarray]:
        """Ranker logits for each user's merged candidates (one forward pass for the batch)."""
        if not hasattr(self, "model_"):
            raise NotFittedError("the funnel ranker is not fitted")
        u, items, X = candidate_features(merged, users, item_log_pop, user_log_act)
        if len(items) == 0:
            return [np.empty(0, np.float32) for _ in merged]
        Xs = (X - self.mean_) / self.std_
        with torch.inference_mode():
            s = self.model_({"dense": torch.from_numpy(Xs.astype(np.float32)),
                             "sparse": torch.from_numpy(items[:, None] + 1)})["ctr"].numpy()
        return np.split(s, np.cumsum([len(m) for m in merged])[:-1])
