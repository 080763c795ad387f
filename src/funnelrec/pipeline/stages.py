"""The funnel's stages after merge: pre-rank, score fusion, diversity re-rank.

- `PreRanker`: a two-tower scorer (models/ranking/prerank.py) with cached item vectors plus a
  linear term over the recall-source features, distilled
  from the fine ranker: on the label users' candidates it regresses the fine ranker's fused score
  centred per user, (s_student − (t − mean_u t))², so its order follows the teacher's.
  `keep(items, user)` → positions of the top `keep` candidates.
- `fuse(tasks, weights)`: fused = Σ_t w_t · logit_t (a task without a weight counts 1).
- `cap_rerank`: greedy walk down the fused order, skipping an item once any of its category
  values already has `max_per_category` items picked; skipped items follow in fused order.
- `mmr_rerank`: maximal marginal relevance, pick argmax λ·rel(i) − (1−λ)·max_{j∈picked} sim(i, j)
  with rel = min-max scaled fused score and sim = Jaccard of the items' category sets.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp
import torch

from funnelrec.core.errors import NotFittedError
from funnelrec.core.types import MergedCandidates
from funnelrec.features.candidates import candidate_features
from funnelrec.models.ranking.prerank import TwoTowerPrerank
from funnelrec.train.trainer import Trainer, TrainerConfig

if TYPE_CHECKING:
    from funnelrec.pipeline.config import PrerankSpec
    from funnelrec.pipeline.funnel import Funnel


def fuse(tasks: dict[str, np.ndarray], weights: dict[str, float]) -> np.ndarray:
    """Σ_t weights[t] · tasks[t] over the tasks present (missing weight = 1)."""
    out = None
    for t, v in tasks.items():
        term = float(weights.get(t, 1.0)) * np.asarray(v, dtype=np.float32)
        out = term if out is None else out + term
    return out if out is not None else np.empty(0, np.float32)


def category_matrix(values: list[list], n_items: int) -> sp.csr_matrix:
    """(I, V) binary item × category matrix of a multi-valued (or scalar) item column."""
    vocab: dict = {}
    rows, cols = [], []
    for i, vs in enumerate(values):
        for v in (vs if isinstance(vs, list | tuple) else [vs]) if vs is not None else ():
            rows.append(i)
            cols.append(vocab.setdefault(v, len(vocab)))
    return sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(n_items, max(len(vocab), 1)))


def cap_rerank(order: np.ndarray, items: np.ndarray, cats: sp.csr_matrix, max_per_category: int, k: int) -> np.ndarray:
    """Positions (into `items`) of the re-ranked list: within the first k, no category value
    appears more than `max_per_category` times (while enough items allow it)."""
    counts: dict[int, int] = {}
    picked, rest = [], []
    for p in order:
        c = cats.indices[cats.indptr[items[p]] : cats.indptr[items[p] + 1]]
        if len(picked) < k and all(counts.get(int(x), 0) < max_per_category for x in c):
            picked.append(p)
            for x in c:
                counts[int(x)] = counts.get(int(x), 0) + 1
        else:
            rest.append(p)
    return np.asarray(picked + rest, dtype=np.int64)


def mmr_rerank(order: np.ndarray, items: np.ndarray, scores: np.ndarray, cats: sp.csr_matrix,
               lam: float, k: int) -> np.ndarray:
    """Positions of the MMR order of the first k picks (then the rest in fused order)."""
    cand = np.asarray(order, dtype=np.int64)
    if len(cand) == 0:
        return cand
    s = scores[cand].astype(np.float64)
    rel = (s - s.min()) / (s.max() - s.min()) if s.max() > s.min() else np.ones_like(s)
    C = cats[items[cand]].toarray()
    inter = C @ C.T
    size = C.sum(1)
    union = size[:, None] + size[None, :] - inter
    sim = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    max_sim = np.zeros(len(cand))
    free = np.ones(len(cand), bool)
    picked = []
    for _ in range(min(k, len(cand))):
        val = np.where(free, lam * rel - (1 - lam) * max_sim, -np.inf)
        j = int(np.argmax(val))
        picked.append(j)
        free[j] = False
        max_sim = np.maximum(max_sim, sim[j])
    rest = [j for j in range(len(cand)) if free[j]]
    return cand[np.asarray(picked + rest, dtype=np.int64)]


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


def fit_prerank(funnel: Funnel, users: np.ndarray, spec: PrerankSpec) -> PreRanker:
    """Distil the funnel's fine ranker into a `PreRanker` on `users`' merged candidates (the
    ranker's validation users are left out: they are the held-out requests of `prerank_recall`)."""
    users = np.setdiff1d(users, getattr(funnel.ranker_, "valid_users_", np.empty(0, np.int64)))
    merged = funnel.candidates(users)
    fused = [f for f, _ in funnel.rank_tasks(merged, users)]
    u = np.repeat(users, [len(m) for m in merged])
    items = np.concatenate([m.items for m in merged])
    _, _, X = candidate_features(merged, users, funnel.item_log_pop_, funnel.user_log_act_)
    enc = funnel.ranker_.encoder_
    pr = PreRanker(spec.keep, spec.dim, tuple(spec.hidden), spec.epochs, spec.lr, spec.batch_size, spec.seed)
    return pr.fit(enc.user_rows_, enc.item_rows_, enc.vocab_.n_rows, u, items, np.concatenate(fused), X)


def prerank_recall(funnel: Funnel, pre: PreRanker, users: np.ndarray, top: int = 50) -> dict[str, float]:
    """How much of the fine ranker's top-`top` survives the pre-ranker's cut (mean over users),
    next to a random cut of the same size and the merge-order cut."""
    merged = funnel.candidates(users)
    fused = [f for f, _ in funnel.rank_tasks(merged, users)]
    pre_s = pre.score(users, merged, funnel.item_log_pop_, funnel.user_log_act_)
    got, rnd, mrg = [], [], []
    for f, p in zip(fused, pre_s):
        n = len(f)
        if n <= pre.keep:
            continue
        best = set(np.argsort(-f, kind="stable")[:top].tolist())
        kept = set(pre.keep_positions(p).tolist())
        got.append(len(best & kept) / len(best))
        rnd.append(pre.keep / n)
        mrg.append(len(best & set(range(pre.keep))) / len(best))
    return {f"recall_of_fine_top{top}": float(np.mean(got)) if got else 1.0,
            "random_cut": float(np.mean(rnd)) if rnd else 1.0,
            "merge_order_cut": float(np.mean(mrg)) if mrg else 1.0, "requests": len(got)}
