"""Training the funnel's fine ranker on what recall hands it.

Examples come from one or more `LabelSet`s — a candidate set produced by recall channels fitted
on some history, plus the interactions that followed it (the labels):

- positives: the user's candidates it interacted with in the label period;
- hard negatives: the user's other recall candidates (a `hard_negative_rate` share of them);
- easy negatives: `random_negatives` random catalogue items per positive, not in the history.

The first set is the real one (channels fitted on train, labels = the validation split); extra
sets are label folds carved out of train with the channels refit on the rest (pipeline/funnel.py),
which multiplies the labels without touching the validation or test split. A `valid_fraction`
of the first set's users is held out: the model's NDCG@10 over their full candidate lists drives
early stopping in the one Trainer (tuning sees validation labels only).

Features of a (user, candidate) pair: the recall-source features (features/candidates.py), the
history-match features (`HistoryMatch`: attribute overlap, item-to-item ridge match) — both
standardized and fed as "dense" — and the user/item ids and attributes as FID embedding rows of a
`FeatureEncoder` ("sparse"). The model is any RANKERS name (`build_ranker`): "lr" by default.
Multi-task: task "ctr" is "interacted", a task "like" is "rating ≥ like_threshold"; each task's
logit gets its own BCE loss, summed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl
import scipy.sparse as sp
import torch

from funnelrec.core.errors import ConfigError, DataError, NotFittedError
from funnelrec.core.types import PAD, MergedCandidates
from funnelrec.data.dataset import Dataset, TrainData
from funnelrec.eval.metrics import ranking_metrics
from funnelrec.features.candidates import HistoryMatch, RankFeatures
from funnelrec.features.spec import FeatureSpec
from funnelrec.models.ranking.common import build_ranker, load_all
from funnelrec.models.ranking.fusion import fuse
from funnelrec.train.trainer import Trainer, TrainerConfig

TASK_LABELS = ("ctr", "like")  # ctr: interacted; like: label value ≥ like_threshold


@dataclass(frozen=True)
class CandidateRankerConfig:
    """The funnel's fine ranker: any RANKERS model over the FID fields of the user/item plus the
    dense recall-source and history-match features (the YAML `rank:` section is this class)."""

    model: str = "lr"  # any RANKERS name
    params: dict[str, Any] = field(default_factory=dict)  # the model's own config
    tasks: tuple[str, ...] = ("ctr",)
    like_threshold: float = 4.0
    epochs: int = 10
    lr: float = 0.01
    weight_decay: float = 0.0
    batch_size: int = 1024
    patience: int = 2
    random_negatives: int = 2
    hard_negative_rate: float = 0.3
    user_columns: tuple[str, ...] = ("age_band", "gender", "occupation")
    item_columns: tuple[str, ...] = ("release_year", "genres")
    include_ids: bool = True
    match_columns: tuple[str, ...] = ("genres", "directors")
    ridge_lambda: float = 500.0  # 0 = no item-to-item ridge match feature
    label_folds: int = 0  # extra label sets carved from train (channels refit on the rest)
    fold_fraction: float = 0.125  # share of each user's train rows a fold uses as labels
    valid_fraction: float = 0.1  # label users held out for early stopping
    seed: int = 2020

    def __post_init__(self) -> None:
        if self.label_folds < 0 or not 0 < self.fold_fraction < 1:
            raise ConfigError("rank: label_folds ≥ 0 and 0 < fold_fraction < 1 required")
        bad = [t for t in self.tasks if t not in TASK_LABELS]
        if bad or not self.tasks:
            raise ConfigError(f"rank.tasks {list(self.tasks)}: each must be one of {', '.join(TASK_LABELS)}")
        if not 0 <= self.hard_negative_rate <= 1 or not 0 < self.valid_fraction < 1:
            raise ConfigError("hard_negative_rate must be in [0, 1] and valid_fraction in (0, 1)")
        if self.random_negatives < 0:
            raise ConfigError(f"random_negatives must be ≥ 0, got {self.random_negatives}")

    def like_value_column(self, labels: Any) -> str | None:
        """The label column the "like" task thresholds (None when only "ctr" is asked)."""
        if "like" not in self.tasks:
            return None
        if "rating" not in labels.columns:
            raise ConfigError("rank.tasks has 'like' but the interactions have no 'rating' column")
        return "rating"


@dataclass
class LabelSet:
    """Candidates of `users` from channels fitted on `history`, labelled by `positives`.

    positives: (U, I) CSR, nonzero = interacted, value = the label value (e.g. rating)."""

    merged: list[MergedCandidates]
    users: np.ndarray
    positives: sp.csr_matrix
    history: sp.csr_matrix
    item_log_pop: np.ndarray
    user_log_act: np.ndarray
    match: HistoryMatch | None = None


class CandidateRanker:
    """The funnel's fine ranker, scikit-learn-style: fit(...) returns self; state ends in `_`.

    Features come from `RankFeatures` (features/candidates.py), samples are built here, the model
    is any RANKERS name trained by the one `Trainer`; scoring is one forward pass per batch."""

    def __init__(self, config: CandidateRankerConfig | None = None) -> None:
        self.config = config or CandidateRankerConfig()
        load_all()
        from funnelrec.core.registry import RANKERS

        RANKERS.get(self.config.model)  # unknown name → UnknownComponentError listing the known

    # ------------------------------------------------------------------ samples
    def _dense(self, s: LabelSet, merged: list[MergedCandidates], users: np.ndarray) -> tuple[np.ndarray, ...]:
        return self.features_.raw(merged, users, s.item_log_pop, s.user_log_act, s.match)

    def _random(self, s: LabelSet, n: int, rng: np.random.Generator):
        """Easy negatives: random (label user, catalogue item) pairs outside history and labels."""
        ru = rng.choice(s.users, size=n)
        ri = rng.integers(0, s.positives.shape[1], size=n)
        seen = np.asarray(s.history[ru, ri]).ravel() + np.asarray(s.positives[ru, ri]).ravel()
        ru, ri = ru[seen == 0], ri[seen == 0]
        return ru, ri, self.features_.random_pairs(ru, ri, self.n_dense_, s.item_log_pop, s.user_log_act, s.match)

    def _labels(self, pos: sp.csr_matrix, u: np.ndarray, items: np.ndarray) -> dict[str, np.ndarray]:
        v = np.asarray(pos[u, items]).ravel() if len(u) else np.empty(0)
        out = {}
        for t in self.config.tasks:
            out[t] = (v != 0).astype(np.float32) if t == "ctr" else (v >= self.config.like_threshold).astype(np.float32)
        return out

    def batch(self, u: np.ndarray, items: np.ndarray, X: np.ndarray) -> dict[str, torch.Tensor]:
        """Model input for pairs (u, items) with raw dense features X (M, d) (see `RankFeatures.batch`)."""
        return self.features_.batch(u, items, X)

    @property
    def user_rows_(self) -> np.ndarray:
        return self.features_.user_rows_

    @property
    def item_rows_(self) -> np.ndarray:
        return self.features_.item_rows_

    @property
    def match_(self):
        return self.features_.match_

    def _samples(self, sets: list[LabelSet], valid_users: np.ndarray, rng: np.random.Generator):
        """(u, items, X, {task: y}) of every label set: positives, a share of the hard (recall)
        negatives, random easy negatives; the validation users of sets[0] are left out."""
        cfg = self.config
        parts = []
        for k, s in enumerate(sets):
            users = s.users if k else np.setdiff1d(s.users, valid_users)
            rows = np.flatnonzero(np.isin(s.users, users))
            u, items, X = self._dense(s, [s.merged[r] for r in rows], s.users[rows])
            self.n_dense_ = X.shape[1]
            y = self._labels(s.positives, u, items)
            any_pos = np.asarray(s.positives[u, items]).ravel() != 0 if len(u) else np.zeros(0, bool)
            keep = any_pos | (rng.random(len(u)) < cfg.hard_negative_rate)
            u, items, X = u[keep], items[keep], X[keep]
            y = {t: v[keep] for t, v in y.items()}
            n_rand = cfg.random_negatives * int(any_pos.sum())
            if n_rand:
                ru, ri, Xr = self._random(s, n_rand, rng)
                u, items, X = np.r_[u, ru], np.r_[items, ri], np.vstack([X, Xr])
                y = {t: np.r_[v, np.zeros(len(ru), np.float32)] for t, v in y.items()}
            parts.append((u, items, X, y))
        u = np.concatenate([p[0] for p in parts])
        items = np.concatenate([p[1] for p in parts])
        X = np.vstack([p[2] for p in parts])
        y = {t: np.concatenate([p[3][t] for p in parts]) for t in cfg.tasks}
        return u, items, X, y

    # ------------------------------------------------------------------ fit
    def fit(self, dataset: Dataset, train: pl.DataFrame, sets: list[LabelSet],
            progress: bool = False) -> CandidateRanker:
        """Train on the label sets (sets[0] = the real one; its users give the validation slice)."""
        cfg = self.config
        rng = np.random.default_rng(cfg.seed)
        if not sets:
            raise DataError("ranker training: no label set")
        for s in sets:
            if s.match is None:
                s.match = HistoryMatch(cfg.match_columns, cfg.ridge_lambda).fit(s.history, dataset.items)
        self.features_ = RankFeatures(cfg.user_columns, cfg.item_columns, cfg.include_ids).fit(
            TrainData(dataset, train), sets[0].match)
        main = sets[0]
        n_valid = max(1, int(round(len(main.users) * cfg.valid_fraction)))
        valid_users = np.sort(rng.choice(main.users, size=n_valid, replace=False))
        u, items, X, y = self._samples(sets, valid_users, rng)
        if y[cfg.tasks[0]].sum() == 0:
            raise DataError("ranker training: no positive among the recall candidates — check the label split")
        self.features_.set_scale(X)
        train_t = self.batch(u, items, X)
        for t in cfg.tasks:
            train_t[f"label_{t}"] = torch.from_numpy(y[t])
        es = self.features_.spec_
        self.spec_ = FeatureSpec(n_embeddings=es.n_embeddings, n_fields=es.n_fields, n_dense=self.n_dense_,
                                 tasks=tuple(cfg.tasks), field_names=es.field_names)
        self.model_ = build_ranker(cfg.model, self.spec_, dict(cfg.params))
        self.tasks_ = tuple(cfg.tasks)
        bce = torch.nn.BCEWithLogitsLoss()

        def loss_fn(model, b):
            out = model(b)
            return sum(bce(out[t], b[f"label_{t}"]) for t in self.tasks_)

        # validation: NDCG@10 of the held-out users' full candidate lists, ranked by the fused score
        vrows = np.flatnonzero(np.isin(main.users, valid_users))
        vmerged = [main.merged[r] for r in vrows]
        vu, vi, vX = self._dense(main, vmerged, main.users[vrows])
        vb = self.batch(vu, vi, vX)
        vsizes = np.array([len(m) for m in vmerged])
        vpos = sp.csr_matrix(main.positives != 0, dtype=np.float32)
        self.valid_users_ = valid_users
        # the dense block's layout: 3 recall-source columns per channel, in this order
        self.channel_names_ = tuple(next((m.channels for m in main.merged), ()))

        def validate(model) -> float:
            if len(vu) == 0:
                return 0.0
            s = fuse({t: v.numpy() for t, v in model(vb).items()})  # equal task weights
            top = _topk_rows(vmerged, np.split(s, np.cumsum(vsizes)[:-1]), 10)
            return ranking_metrics(top, vpos, (10,), rows=main.users[vrows])["ndcg@10"]

        trainer = Trainer(TrainerConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr,
                                        weight_decay=cfg.weight_decay, seed=cfg.seed, patience=cfg.patience,
                                        progress=progress))
        self.train_result_ = trainer.fit(self.model_, loss_fn, train_t, validate=validate)
        self.model_.eval()
        self.n_examples_ = len(u)
        return self

    # ------------------------------------------------------------------ scoring
    def score_tasks(self, merged: list[MergedCandidates], users: np.ndarray, item_log_pop: np.ndarray,
                    user_log_act: np.ndarray, history: sp.csr_matrix | None = None,
                    fresh: list | None = None) -> list[dict[str, np.ndarray]]:
        """Per user: {task: logits of its candidates} — one forward pass for the whole batch. The
        match features read `history` (by user index; default the fit-time one) plus each
        user's `fresh` items consumed since (`RankFeatures.raw`)."""
        if not hasattr(self, "model_"):
            raise NotFittedError("the funnel ranker is not fitted")
        u, items, X = self.features_.raw(merged, np.asarray(users, dtype=np.int64), item_log_pop, user_log_act,
                                         history=history, fresh=fresh)
        sizes = np.cumsum([len(m) for m in merged])[:-1]
        if len(items) == 0:
            return [{t: np.empty(0, np.float32) for t in self.tasks_} for _ in merged]
        with torch.inference_mode():
            out = {t: v.numpy() for t, v in self.model_(self.batch(u, items, X)).items()}
        split = {t: np.split(v, sizes) for t, v in out.items()}
        return [{t: split[t][r] for t in self.tasks_} for r in range(len(merged))]


def _topk_rows(merged: list[MergedCandidates], scores: list[np.ndarray], k: int) -> np.ndarray:
    top = np.full((len(merged), k), PAD, np.int64)
    for r, (m, s) in enumerate(zip(merged, scores)):
        o = np.argsort(-s, kind="stable")[:k]
        top[r, : len(o)] = m.items[o]
    return top
