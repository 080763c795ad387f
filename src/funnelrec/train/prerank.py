"""The pre-ranker: a two-tower scorer (models/ranking/prerank.py) with cached item vectors plus a
linear term over the recall-source features, distilled from the fine ranker: on the label
users' candidates it regresses the fine ranker's fused score centred per user,
(s_student − (t − mean_u t))², so its order follows the teacher's. The funnel builder
(pipeline/builder.py) produces the teacher's scores; `keep_positions` gives the top `keep`.
"""

from __future__ import annotations

import numpy as np
import torch

from funnelrec.core.errors import NotFittedError
from funnelrec.core.types import MergedCandidates
from funnelrec.features.candidates import candidate_features
from funnelrec.models.ranking.prerank import TwoTowerPrerank
from funnelrec.train.trainer import Trainer, TrainerConfig


class PreRanker:
    """Two-tower pre-ranker over the fine ranker's FID rows; item vectors cached at fit."""

    def __init__(self, keep: int = 300, dim: int = 32, hidden: tuple[int, ...] = (64,), epochs: int = 8,
                 lr: float = 3e-3, batch_size: int = 2048, seed: int = 2020) -> None:
        self.keep = keep
        self.dim = dim
        self.hidden = hidden
        self.epochs = epochs
        self.lr = lr
        self.batch_size = batch_size
        self.seed = seed

    def fit(self, user_rows: np.ndarray, item_rows: np.ndarray, n_embeddings: int, u: np.ndarray,
            items: np.ndarray, teacher: np.ndarray, dense: np.ndarray) -> PreRanker:
        """user_rows (U, F_u), item_rows (I, F_i): embedding rows; (u, items, teacher) (M,): the
        teacher's fused score of each training pair; dense (M, Dn) its recall-source features."""
        self.mean_, self.std_ = dense.mean(0), dense.std(0) + 1e-6
        self.user_rows_ = torch.from_numpy(np.ascontiguousarray(user_rows))
        self.item_rows_all_ = torch.from_numpy(np.ascontiguousarray(item_rows))
        # centre the teacher per user: only the order within a request matters
        sums = np.bincount(u, teacher, minlength=len(user_rows))
        cnt = np.maximum(np.bincount(u, minlength=len(user_rows)), 1)
        t = (teacher - (sums / cnt)[u]).astype(np.float32)
        self.scale_ = float(t.std() + 1e-6)
        model = TwoTowerPrerank(n_embeddings, self.dim, tuple(self.hidden), n_dense=dense.shape[1])
        data = {"user": self.user_rows_[u], "item": self.item_rows_all_[items],
                "dense": torch.from_numpy(((dense - self.mean_) / self.std_).astype(np.float32)),
                "target": torch.from_numpy(t / self.scale_)}
        mse = torch.nn.MSELoss()
        trainer = Trainer(TrainerConfig(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, seed=self.seed))
        self.train_result_ = trainer.fit(model, lambda m, b: mse(m(b)["ctr"], b["target"]), data)
        with torch.inference_mode():
            v, b = model.item_table(self.item_rows_all_)
            # the user tower reads only the user's profile rows: every user's vector is known now
            # (row 0 = "no value" in every field: the unknown user's vector)
            uv = model.user_tower(torch.cat([torch.zeros_like(self.user_rows_[:1]), self.user_rows_]))
        self.model_ = model
        self.item_vectors_ = v.numpy().astype(np.float32)  # (I, d) cached
        self.item_bias_ = b.numpy().astype(np.float32)
        self.user_vectors_ = uv.numpy().astype(np.float32)  # (U + 1, d): row 0 unknown, row u + 1 user u
        return self

    def extend_items(self, item_rows: np.ndarray) -> PreRanker:
        """A copy over the catalogue's (I', F_i) embedding rows `item_rows` (the fitted items
        first): items past the fitted ones get their cached vector and bias from the item tower
        over their rows. This pre-ranker is unchanged."""
        import copy

        I_old = self.item_vectors_.shape[0]
        if item_rows.shape[0] <= I_old:
            return self
        new = copy.copy(self)
        rows = torch.from_numpy(np.ascontiguousarray(item_rows))
        with torch.inference_mode():
            v, b = self.model_.item_table(rows[I_old:])
        new.item_rows_all_ = rows
        new.item_vectors_ = np.concatenate([self.item_vectors_, v.numpy().astype(np.float32)])
        new.item_bias_ = np.concatenate([self.item_bias_, b.numpy().astype(np.float32)])
        return new

    def extend_users(self, user_rows: np.ndarray) -> PreRanker:
        """A copy over the (U', F_u) embedding rows `user_rows` (the fitted users first): users past
        the fitted ones, and every user whose rows changed, get their cached vector from the user
        tower over their rows. This pre-ranker is unchanged."""
        import copy

        rows = torch.from_numpy(np.ascontiguousarray(user_rows))
        old = self.user_rows_
        if rows.shape == old.shape and torch.equal(rows, old):
            return self
        new = copy.copy(self)
        stored = self.__dict__.get("user_vectors_")
        new.user_rows_ = rows
        if stored is not None:
            n_old = old.shape[0]
            redo = np.arange(n_old, rows.shape[0])
            if n_old:
                diff = (rows[:n_old] != old).any(1).numpy()
                redo = np.concatenate([np.flatnonzero(diff), redo])
            vecs = np.concatenate([stored, np.zeros((rows.shape[0] - n_old, stored.shape[1]), stored.dtype)])
            if len(redo):
                with torch.inference_mode():
                    vecs[redo + 1] = self.model_.user_tower(rows[torch.from_numpy(redo)]).numpy()
            new.user_vectors_ = vecs
        return new

    def score(self, users: np.ndarray, merged: list[MergedCandidates], item_log_pop: np.ndarray,
              user_log_act: np.ndarray) -> list[np.ndarray]:
        """Pre-rank scores of each user's candidates: ⟨u, v_i⟩ + b_i (cached item table) + w · x_ui."""
        if not hasattr(self, "model_"):
            raise NotFittedError("the pre-ranker is not fitted")
        users = np.asarray(users, dtype=np.int64)
        _, _, X = candidate_features(merged, users, item_log_pop, user_log_act)
        lin = ((X - self.mean_) / self.std_).astype(np.float32) @ self.model_.dense.weight.detach().numpy()[0]
        lin = np.split(lin, np.cumsum([len(m) for m in merged])[:-1])
        stored = self.__dict__.get("user_vectors_")  # absent in pre-rankers saved before it existed
        if stored is not None:
            uv = stored[np.where(users < 0, -1, users) + 1]
        else:
            with torch.inference_mode():
                rows = self.user_rows_[np.maximum(users, 0)]
                if (users < 0).any():  # unknown user: row 0 ("no value") in every profile field
                    rows = torch.where(torch.from_numpy(users < 0)[:, None], 0, rows)
                uv = self.model_.user_tower(rows).numpy()
        return [self.item_vectors_[m.items] @ uv[r] + self.item_bias_[m.items] + lin[r] for r, m in enumerate(merged)]

    def keep_positions(self, scores: np.ndarray, keep: int | None = None) -> np.ndarray:
        """Positions of the top `keep` (default `self.keep`) scores, in their original (merge) order."""
        keep = keep or self.keep
        if len(scores) <= keep:
            return np.arange(len(scores))
        return np.sort(np.argpartition(-scores, keep - 1)[:keep])
