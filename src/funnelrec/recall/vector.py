"""Vector recall: a two-tower model trained on the positives, item vectors in an ANN index.

fit: build feature tensors (item attributes, user profile, recent history) → train the towers
through the one `Trainer` with the configured loss and negative sampler → embed every item and
add the vectors to a `funnelrec.index.VectorIndex` (factory string, "Flat" by default).
recall: compute each requested user's vector from profile + history (the same tower as in
training; nothing per user is precomputed, so a history update changes the next request),
search the index for n + |seen| items, drop the seen ones, keep the top n.

    >>> ch = RECALL_CHANNELS.build("vector", VectorRecallConfig(loss="softmax"))  # doctest: +SKIP
    >>> ch.fit(train).recall(np.array([0, 1]), n=200)                             # doctest: +SKIP

Losses: "pointwise" (BCE, n_negatives per positive), "bpr", "softmax" (in-batch sampled
softmax with logQ correction, plus n_negatives sampled ones if > 0). Samplers: "uniform",
"pop075" (count^0.75), "mixed_hard" (half hard negatives mined from the model's own ranks
`hard_ranks` after `hard_warmup_epochs`, half uniform). When `label_column` is set, rows below
`positive_min` are exposures without a click: never positives, never sampled as negatives.

Optimizers: with `sparse_embeddings` (default) the embedding tables get row-sparse gradients and
lazy Adam (`train.row_sparse_adam.RowSparseAdam`: torch.optim.SparseAdam's update in half the
passes), as TF's LazyAdam and TorchRec's fused row-wise optimizers do: a step updates only the
rows the batch looked up, and an untouched row's moments do not decay — while the MLPs keep
dense (fused) Adam. Off: one dense Adam over every parameter, i.e. all
~1.3·10⁸ embedding weights at a million items, every step.
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import scipy.sparse as sp
import torch

from funnelrec.core.errors import ConfigError, DataError
from funnelrec.core.registry import RECALL_CHANNELS
from funnelrec.core.types import PAD, CandidateBatch
from funnelrec.data.dataset import TrainData, interactions_csr
from funnelrec.index import VectorIndex
from funnelrec.models.recall.two_tower import TwoTowerConfig, TwoTowerModel, TwoTowerSpec
from funnelrec.recall.attributes import ForwardIndex
from funnelrec.recall.base import RecallChannel, RecallContext
from funnelrec.train.retrieval_losses import LOSSES, bpr_loss, pointwise_bce_loss, sampled_softmax_loss
from funnelrec.train.row_sparse_adam import RowSparseAdam
from funnelrec.train.samplers import (
    SAMPLERS,
    ForbiddenPairs,
    MixedHardSampler,
    build_sampler,
    subsample_positives,
)
from funnelrec.train.trainer import Trainer, TrainerConfig, TrainResult, seed_everything


@dataclass(frozen=True)
class VectorRecallConfig:
    model: TwoTowerConfig = field(default_factory=TwoTowerConfig)
    loss: str = "softmax"  # "pointwise" | "bpr" | "softmax"
    negative_sampler: str = "uniform"  # "uniform" | "pop075" | "mixed_hard"
    n_negatives: int = 3  # per positive (pointwise 1:n, bpr pairs); extra sampled ones for softmax
    logq_correction: bool = True  # softmax only
    epochs: int = 20
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 2048
    patience: int = 3  # early stopping on the validation NDCG@10 when fit gets `valid`
    # validation scores each sampled user against every item each epoch: at 1M items × 100k users
    # that is 10¹¹ dot products, so at most this many validation users (seeded sample; 0 = all)
    max_valid_users: int = 5000
    history_len: int = 100  # most recent training positives fed to the user tower
    # the attribute columns of the item and user towers; None = every categorical / multi column
    # of the schema's items / users table that is an attribute, not an identifier (`attribute_columns`)
    item_columns: tuple[str, ...] | None = None
    user_columns: tuple[str, ...] | None = None
    max_attr_values: int = 8  # values kept per multi-valued attribute
    hot_subsample: float = 0.0  # word2vec threshold t for down-sampling hot positives; 0 = off
    label_column: str | None = None  # None: every interaction is a positive
    positive_min: float = 1.0  # label ≥ this is a positive; the rest are exposed-not-clicked
    hard_ratio: float = 0.5
    hard_ranks: tuple[int, int] = (50, 200)  # rank window the hard negatives are mined from
    hard_warmup_epochs: int = 1
    sparse_embeddings: bool = True  # row-sparse embedding gradients + SparseAdam (lazy Adam)
    index_factory: str = "Flat"
    # search-time knobs of the index, e.g. {nprobe: 8} for IVF, {efSearch: 128} for HNSW: at 1M
    # items a 1-epoch two-tower's IVF1024 lists are so uneven that nprobe 1 filled 8 % of 400 slots
    index_params: dict[str, int] = field(default_factory=dict)
    num_threads: int = 2  # torch threads; 1 is faster when the cores are oversubscribed
    seed: int = 2020

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ConfigError(f"unknown loss {self.loss!r}; known: {', '.join(LOSSES)}")
        if self.negative_sampler not in SAMPLERS:
            raise ConfigError(f"unknown negative sampler {self.negative_sampler!r}; known: {', '.join(SAMPLERS)}")
        if self.loss != "softmax" and self.n_negatives < 1:
            raise ConfigError(f"loss {self.loss!r} needs n_negatives ≥ 1, got {self.n_negatives}")
        if self.n_negatives < 0 or self.history_len < 1 or self.max_attr_values < 1:
            raise ConfigError("n_negatives ≥ 0, history_len ≥ 1 and max_attr_values ≥ 1 are required")
        lo, hi = self.hard_ranks
        if not 0 <= lo < hi:
            raise ConfigError(f"hard_ranks must be (lo, hi) with 0 ≤ lo < hi, got {self.hard_ranks}")
        if self.sparse_embeddings and self.weight_decay > 0:
            raise ConfigError("weight_decay > 0 needs sparse_embeddings=False (SparseAdam has no weight decay)")


@dataclass
class TwoTowerFeatures:
    """Dense feature tensors, row = dense index.

    item_attrs: (I, F, A) int64 rows of the attribute table (0 = pad)
    profile:    (U, P) int64 rows of the profile table (0 = unknown)
    hist:       (U, L) int64 item indices of the user's most recent positives (PAD = -1)
    """

    item_attrs: torch.Tensor
    profile: torch.Tensor
    hist: torch.Tensor
    n_attr_rows: int
    n_profile_rows: int

    def spec(self) -> TwoTowerSpec:
        return TwoTowerSpec(
            n_items=self.item_attrs.shape[0], n_attr_rows=self.n_attr_rows, n_item_fields=self.item_attrs.shape[1],
            n_profile_rows=self.n_profile_rows, n_profile_fields=self.profile.shape[1],
        )

    def user_inputs(self, users: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(profile (B, P), hist (B, L)) for dense user indices; -1 = unknown user (no features)."""
        known = users >= 0
        safe = users.clamp_min(0)
        profile = self.profile[safe] * known.unsqueeze(1)
        hist = torch.where(known.unsqueeze(1), self.hist[safe], torch.full_like(self.hist[safe], PAD))
        return profile, hist


def _categorical_codes(table: pl.DataFrame, idx_col: str, columns: tuple[str, ...], width: int,
                       first_row: int) -> tuple[np.ndarray, int]:
    """(n, len(columns), width) int64 codes of each column's values (multi-valued: first `width`),
    numbered per column from `first_row`; returns the codes and the next free row."""
    n = table.height
    out = np.zeros((n, len(columns), width), np.int64)
    nxt = first_row
    for f, col in enumerate(columns):
        if col not in table.columns:
            raise ConfigError(f"column {col!r} not found; available: {', '.join(table.columns)}")
        if isinstance(table.schema[col], pl.List):
            df = table.select(idx_col, pl.col(col).list.head(width)).explode(col)
        else:
            df = table.select(idx_col, col)
        df = df.drop_nulls(col).with_columns(pl.col(col).cast(pl.Utf8))
        if not df.height:
            continue
        pos = df.select(pl.int_range(pl.len()).over(idx_col)).to_series().to_numpy()
        uniq, inv = np.unique(df[col].to_numpy().astype(str), return_inverse=True)
        out[df[idx_col].to_numpy(), f, pos] = inv + nxt
        nxt += len(uniq)
    return out, nxt


def attribute_columns(dataset: Any, table: str) -> tuple[str, ...]:
    """The default tower inputs of a `table` ("users" / "items"): its schema's categorical and
    multi columns present in the table, less the id and any column with more distinct values than
    half the table's rows — an identifier (a title, a zip code), not an attribute the tower can
    share across rows. Schema order, so a dataset always gets the same columns."""
    df = getattr(dataset, table)
    key = "user_id" if table == "users" else "item_id"
    out = []
    for col in dataset.schema.columns(table, "categorical") + dataset.schema.columns(table, "multi"):
        if col == key or col not in df.columns:
            continue
        vals = df[col].explode() if isinstance(df.schema[col], pl.List) else df[col]
        if vals.drop_nulls().n_unique() * 2 <= max(df.height, 1):
            out.append(col)
    return tuple(out)


def tower_columns(config: VectorRecallConfig, dataset: Any) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(item_columns, user_columns): the config's, or `attribute_columns` where it names none."""
    items = config.item_columns if config.item_columns is not None else attribute_columns(dataset, "items")
    users = config.user_columns if config.user_columns is not None else attribute_columns(dataset, "users")
    return tuple(items), tuple(users)


def build_features(data: TrainData, positives: pl.DataFrame, config: VectorRecallConfig,
                   columns: tuple[tuple[str, ...], tuple[str, ...]] | None = None) -> TwoTowerFeatures:
    """`columns`: (item_columns, user_columns) already resolved by `tower_columns` (default: resolved here)."""
    ds = data.dataset
    item_cols, user_cols = columns if columns is not None else tower_columns(config, ds)
    item_attrs, n_attr = _categorical_codes(ds.items, "item_idx", item_cols, config.max_attr_values, 1)
    prof, n_prof = _categorical_codes(ds.users, "user_idx", user_cols, 1, 1)
    L = config.history_len
    hist = np.full((ds.n_users, L), PAD, np.int64)
    if positives.height:
        recent = positives.select("user_idx", "item_idx", "timestamp").with_row_index("_r").sort(
            ["user_idx", "timestamp", "_r"], descending=[False, True, True]
        )
        rank = recent.select(pl.int_range(pl.len()).over("user_idx")).to_series().to_numpy()
        keep = rank < L
        hist[recent["user_idx"].to_numpy()[keep], rank[keep]] = recent["item_idx"].to_numpy()[keep]
    return TwoTowerFeatures(
        item_attrs=torch.from_numpy(item_attrs), profile=torch.from_numpy(prof[:, :, 0].copy()),
        hist=torch.from_numpy(hist), n_attr_rows=n_attr, n_profile_rows=n_prof,
    )


class ItemIndex:
    """The item vectors' `VectorIndex` (inner product, one factory string), made picklable so
    the channel's save/load carries it: pickled as the bytes of `VectorIndex.save`'s files,
    restored with `VectorIndex.load(mmap=False)`."""

    def __init__(self, factory: str, dim: int) -> None:
        self.index = VectorIndex(factory, dim, metric="ip")

    @property
    def factory(self) -> str:
        return self.index.factory

    def add(self, x: np.ndarray) -> None:
        self.index.add(np.ascontiguousarray(x, dtype=np.float32))

    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self.index.search(np.ascontiguousarray(q, dtype=np.float32), k)

    def __len__(self) -> int:
        return self.index.ntotal

    def __getstate__(self) -> dict:
        with tempfile.TemporaryDirectory() as d:
            self.index.save(d)
            return {"files": {f.name: f.read_bytes() for f in Path(d).iterdir()}}

    def __setstate__(self, state: dict) -> None:
        with tempfile.TemporaryDirectory() as d:
            for name, data in state["files"].items():
                (Path(d) / name).write_bytes(data)
            self.index = VectorIndex.load(d, mmap=False)


class _RetrievalObjective:
    """loss_fn(model, batch) for the Trainer: gathers features by index, runs both towers and
    applies the configured retrieval loss. batch: "user" (B,), "item" (B,) [, "neg" (B, N)]."""

    def __init__(self, kind: str, feats: TwoTowerFeatures, pos_prob: np.ndarray | None,
                 neg_prob: np.ndarray | None) -> None:
        self.kind = kind
        self.feats = feats
        with np.errstate(divide="ignore"):
            self.log_pos = None if pos_prob is None else torch.from_numpy(np.log(pos_prob)).float()
            self.log_neg = None if neg_prob is None else torch.from_numpy(np.log(neg_prob)).float()

    def __call__(self, model: TwoTowerModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        f = self.feats
        u, i = batch["user"], batch["item"]
        hist = f.hist[u]
        hist = hist.masked_fill(hist == i.unsqueeze(1), PAD)  # the target is not its own history
        user = model.user_tower(f.profile[u], hist)
        item = model.item_tower(i, f.item_attrs[i])
        neg_vec = None
        if "neg" in batch:
            neg = batch["neg"]
            B, N = neg.shape
            neg_vec = model.item_tower(neg.reshape(-1), f.item_attrs[neg.reshape(-1)]).reshape(B, N, -1)
        if self.kind == "softmax":
            B = u.shape[0]
            log_q = None if self.log_pos is None else self.log_pos[i] + float(np.log(B))
            neg_log_q = None
            if neg_vec is not None and self.log_neg is not None:
                neg_log_q = self.log_neg[batch["neg"]] + float(np.log(batch["neg"].shape[1]))
            return sampled_softmax_loss(user, item, model.temperature, log_q, i, neg_vec, neg_log_q)
        pos_s = model.score(user, item)
        neg_s = model.score(user, neg_vec)
        return pointwise_bce_loss(pos_s, neg_s) if self.kind == "pointwise" else bpr_loss(pos_s, neg_s)


@dataclass
class TwoTowerTraining:
    """The parts of one vector-recall fit: `epoch_tensors(e)` gives epoch e's training tensors
    ("user", "item" [, "neg"]); `optimizers` is None for the Trainer's own dense Adam."""

    model: TwoTowerModel
    features: TwoTowerFeatures
    objective: _RetrievalObjective
    epoch_tensors: Callable[[int], dict[str, torch.Tensor]]
    validate: Callable[[TwoTowerModel], float] | None
    optimizers: list[torch.optim.Optimizer] | None


def _optimizers(model: TwoTowerModel, cfg: VectorRecallConfig) -> list[torch.optim.Optimizer] | None:
    """[lazy Adam (SparseAdam's update) over the sparse-gradient embedding tables, fused Adam over
    the rest], or None
    (the Trainer's dense Adam over everything) when no table has sparse gradients."""
    tables = [e.weight for e in model.embedding_tables() if e.sparse]
    if not tables:
        return None
    ids = {id(p) for p in tables}
    dense = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
    return [RowSparseAdam(tables, lr=cfg.lr),
            torch.optim.Adam(dense, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)]


@RECALL_CHANNELS.register("vector")
class VectorRecall(RecallChannel):
    personalized = True
    config_class = VectorRecallConfig  # so a funnel YAML can configure it (build_channel)

    def __init__(self, config: VectorRecallConfig | None = None, name: str | None = None) -> None:
        super().__init__(name)
        self.config = config or VectorRecallConfig()

    # ---------------------------------------------------------------- fit
    def fit(self, data: TrainData, valid: pl.DataFrame | None = None) -> VectorRecall:
        """Train on `data.interactions`; `valid` (interactions of held-out positives) enables
        early stopping on its NDCG@10 with the best epoch's weights restored."""
        cfg = self.config
        t = self.build_training(data, valid)
        trainer = Trainer(TrainerConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr,
                                        weight_decay=cfg.weight_decay, patience=cfg.patience, seed=cfg.seed,
                                        num_threads=cfg.num_threads))
        self.train_result_: TrainResult = trainer.fit(
            t.model, t.objective, t.epoch_tensors(0), validate=t.validate,
            on_epoch_start=lambda e: t.epoch_tensors(e) if e > 0 else None, optimizer=t.optimizers)
        model, feats, seen, I = t.model, t.features, data.csr, data.n_items
        model.eval()
        self.model_ = model
        self.features_ = feats
        self.item_vectors_ = _item_vectors(model, feats)
        self.index_ = ItemIndex(cfg.index_factory, self.item_vectors_.shape[1])
        if cfg.index_params:
            self.index_.index.set_params(**cfg.index_params)
        self.index_.add(self.item_vectors_)
        self.seen_ = ForbiddenPairs(I, seen)
        self._seen_count = np.diff(seen.indptr).astype(np.int64)
        self.user_vectors_ = self._stored_user_vectors()
        self.fitted_ = True
        return self

    def build_training(self, data: TrainData, valid: pl.DataFrame | None = None) -> TwoTowerTraining:
        """Everything `fit` hands the Trainer: features, model, loss, per-epoch tensors, the
        validation score and the optimizers (also used by bench/two_tower.py to time steps)."""
        cfg = self.config
        rng = seed_everything(cfg.seed)
        inter = data.interactions
        if cfg.label_column is not None:
            if cfg.label_column not in inter.columns:
                raise ConfigError(f"label_column {cfg.label_column!r} not in interactions: {', '.join(inter.columns)}")
            is_pos = pl.col(cfg.label_column) >= cfg.positive_min
            positives, exposed_rows = inter.filter(is_pos), inter.filter(~is_pos)
        else:
            positives, exposed_rows = inter, inter.clear()
        if not positives.height:
            raise DataError("vector recall: no positive interactions to train on")
        I = data.n_items
        pos_csr = interactions_csr(positives, data.n_users, I)
        exposed = interactions_csr(exposed_rows, data.n_users, I) if exposed_rows.height else None
        self.item_columns_, self.user_columns_ = tower_columns(cfg, data.dataset)  # resolved once
        feats = build_features(data, positives, cfg, (self.item_columns_, self.user_columns_))
        pos_u = positives["user_idx"].to_numpy().astype(np.int64)
        pos_i = positives["item_idx"].to_numpy().astype(np.int64)
        counts = np.bincount(pos_i, minlength=I).astype(np.float64)
        forbidden = ForbiddenPairs(I, pos_csr, exposed)
        sampler = build_sampler(cfg.negative_sampler, I, counts, forbidden, None, cfg.hard_ratio)
        model = TwoTowerModel(feats.spec(), cfg.model, sparse_grad=cfg.sparse_embeddings)
        need_neg = cfg.loss != "softmax" or cfg.n_negatives > 0
        pos_prob = counts / counts.sum() if (cfg.loss == "softmax" and cfg.logq_correction) else None
        neg_prob = sampler.probabilities() if (need_neg and pos_prob is not None) else None
        objective = _RetrievalObjective(cfg.loss, feats, pos_prob, neg_prob)
        seen = data.csr
        lo, hi = cfg.hard_ranks

        def epoch_tensors(epoch: int) -> dict[str, torch.Tensor]:
            keep = subsample_positives(pos_i, cfg.hot_subsample, rng)
            u, i = pos_u[keep], pos_i[keep]
            out = {"user": torch.from_numpy(u), "item": torch.from_numpy(i)}
            if need_neg:
                if isinstance(sampler, MixedHardSampler) and epoch >= cfg.hard_warmup_epochs:
                    pool = _ranked_items(model, feats, np.arange(data.n_users), seen, hi)[:, lo:hi]
                    neg = sampler.sample(u, cfg.n_negatives, rng, hard_pool=pool[u])
                else:
                    neg = sampler.sample(u, cfg.n_negatives, rng)
                out["neg"] = torch.from_numpy(neg)
            return out

        validate = None
        if valid is not None and valid.height:
            v_csr = interactions_csr(valid, data.n_users, I)
            v_users = np.unique(valid["user_idx"].to_numpy())
            if 0 < cfg.max_valid_users < len(v_users):
                v_users = np.sort(np.random.default_rng(cfg.seed).choice(v_users, cfg.max_valid_users, replace=False))
            from funnelrec.eval.metrics import ranking_metrics

            def validate(m: TwoTowerModel) -> float:
                top = _ranked_items(m, feats, v_users, seen, 10)
                return ranking_metrics(top, v_csr, (10,), rows=v_users)["ndcg@10"]

        return TwoTowerTraining(model, feats, objective, epoch_tensors, validate, _optimizers(model, cfg))

    # ---------------------------------------------------------------- recall
    def _stored_user_vectors(self, batch: int = 8192) -> np.ndarray:
        """(U, D) user vectors of the training histories, computed once at fit: a request without
        fresh history reads its row instead of running the user tower (0.8 ms at 1M items)."""
        n = self.features_.hist.shape[0]
        return np.concatenate([self._tower(np.arange(s, min(s + batch, n)), None) for s in range(0, n, batch)]
                              ) if n else np.zeros((0, self.item_vectors_.shape[1]), np.float32)

    def user_vectors(self, users: np.ndarray, histories: list[np.ndarray] | None = None) -> np.ndarray:
        """(B, D) float32 unit vectors of dense user indices from their profile and most recent
        training positives. `histories` (B arrays of item indices, oldest first) are fresher
        items put in front of the stored history. Unknown users (outside [0, U)) get an empty
        profile and only the given history."""
        stored = self.__dict__.get("user_vectors_")  # absent in channels saved before it existed
        users = np.asarray(users, np.int64)
        if histories is None and stored is not None and len(users) and users.min() >= 0 and users.max() < len(stored):
            return stored[users]
        return self._tower(users, histories)

    def _tower(self, users: np.ndarray, histories: list[np.ndarray] | None) -> np.ndarray:
        users_t = torch.as_tensor(np.asarray(users, np.int64))
        users_t = torch.where(users_t < self.features_.hist.shape[0], users_t, torch.full_like(users_t, -1))
        profile, hist = self.features_.user_inputs(users_t)
        if histories is not None:
            L = hist.shape[1]
            hist = hist.clone()
            n_fit = self.features_.item_attrs.shape[0]  # the tower has rows for the fitted items only
            for r, h in enumerate(histories):
                h = np.asarray(h, np.int64)
                h = h[h < n_fit]  # items added since the fit (`extend_items`) do not enter the tower
                if len(h):
                    fresh = torch.as_tensor(h[::-1].copy())
                    hist[r] = torch.cat([fresh, hist[r][hist[r] != PAD], torch.full((L,), PAD)])[:L]
        with torch.inference_mode():
            return self.model_.user_tower(profile, hist).numpy().astype(np.float32)

    def _context_histories(self, context: RecallContext | None, n_rows: int) -> list[np.ndarray] | None:
        extra = None if context is None else context.extra.get("history")
        if extra is None:
            return None
        if len(extra) != n_rows:
            raise DataError(f"context history has {len(extra)} rows for {n_rows} users")
        I = len(self.item_vectors_)
        arrays = [np.asarray(h, np.int64).reshape(-1) for h in extra]
        return [a[(a >= 0) & (a < I)] for a in arrays]  # out-of-catalogue items are ignored

    def similar_items(self, items: np.ndarray, n: int) -> CandidateBatch:
        """Top-n neighbours of each item by its vector (i2i): (len(items), n), inner product as score."""
        return _similar_by_vector(self, items, n)

    def _tower_columns(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """The columns the towers were fitted on (an artifact from before the defaults moved to
        the schema holds them in its config)."""
        if hasattr(self, "item_columns_"):
            return self.item_columns_, self.user_columns_
        return tuple(self.config.item_columns or ()), tuple(self.config.user_columns or ())

    # ---------------------------------------------------------------- live catalogue (issue #10)
    def attribute_vectors(self, items: pl.DataFrame, rows: np.ndarray) -> np.ndarray:
        """(len(rows), D) vectors of catalogue rows `rows` from their attributes alone — for items
        the towers were not trained on. Over the channel's `item_columns`, V = the row's values
        that at least one fitted item holds, c_v = the mean vector of the fitted items holding v:

            v = normalize( (1/|V|) Σ_{v ∈ V} c_v )        (no known value: the mean of all items)
        """
        I_fit = self.features_.item_attrs.shape[0]
        X = self.item_vectors_[:I_fit].astype(np.float64)
        sums, count = np.zeros((len(rows), X.shape[1])), np.zeros(len(rows))
        fitted = items.slice(0, I_fit)
        for col in self._tower_columns()[0]:
            if col not in items.columns:
                continue
            fwd = ForwardIndex.from_column(fitted, col)  # (I_fit, V) fitted items × values
            size = np.asarray(fwd.matrix.sum(0)).ravel()
            centroids = (fwd.matrix.T @ X) / np.maximum(size, 1)[:, None]  # (V, D)
            mine = ForwardIndex.from_column(items[np.asarray(rows, np.int64)], col)
            if not len(fwd.vocab):
                continue
            code = np.minimum(np.searchsorted(fwd.vocab, mine.vocab), len(fwd.vocab) - 1)
            known = fwd.vocab[code] == mine.vocab
            m = sp.coo_matrix(mine.matrix)
            ok = known[m.col]
            np.add.at(sums, m.row[ok], centroids[code[m.col[ok]]])
            np.add.at(count, m.row[ok], 1.0)
        mean_all = X.mean(0) if len(X) else np.zeros(X.shape[1])
        v = np.where(count[:, None] > 0, sums / np.maximum(count, 1)[:, None], mean_all)
        return (v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)).astype(np.float32)

    def extend_items(self, items: pl.DataFrame, changed: np.ndarray) -> VectorRecall:
        """A copy over the catalogue `items` (fitted rows first, new ones appended): each new item
        gets `attribute_vectors` and is added to a copy of the index (fitted items keep the
        vectors the tower learned, their attributes changed or not). This channel is unchanged."""
        I_old, I_new = len(self.item_vectors_), items.height
        if I_new == I_old:
            return self
        new = copy.copy(self)
        vecs = self.attribute_vectors(items, np.arange(I_old, I_new))
        new.item_vectors_ = np.concatenate([self.item_vectors_, vecs])
        new.index_ = copy.deepcopy(self.index_)  # its pickled files: the served index stays as it is
        new.index_.add(vecs)
        keys = self.seen_.keys
        new.seen_ = copy.copy(self.seen_)
        new.seen_.n_items = I_new
        new.seen_.keys = (keys // I_old) * I_new + keys % I_old  # u·I + i over the wider catalogue
        return new

    def extend_users(self, users: pl.DataFrame, changed: np.ndarray) -> VectorRecall:
        """A copy over the users table `users` (the fitted users first, new ones appended): a new
        or `changed` user's profile codes are read off the fitted users (value v of column c had
        code k in some fitted user's profile; 0 for a value none had), a new one has no training
        history; their stored user vectors are the user tower over that. This one is unchanged."""
        import copy

        feats = self.features_
        U_old, U_new = feats.profile.shape[0], users.height
        todo = np.union1d(np.asarray(changed, np.int64), np.arange(U_old, U_new))
        if not len(todo):
            return self
        profile = np.zeros((U_new, feats.profile.shape[1]), np.int64)
        profile[:U_old] = feats.profile.numpy()
        for f, col in enumerate(self._tower_columns()[1]):
            if col not in users.columns:
                continue
            series = users[col].list.first() if isinstance(users.schema[col], pl.List) else users[col]
            series = series.cast(pl.Utf8)  # the profile holds a list column's first value
            learned: dict = {}
            for v, code in zip(series.head(U_old).to_list(), profile[:U_old, f].tolist()):
                if v is not None and code:
                    learned.setdefault(v, code)
            vals = series.to_list()
            profile[todo, f] = [learned.get(vals[r], 0) for r in todo.tolist()]
        hist = torch.cat([feats.hist, torch.full((U_new - U_old, feats.hist.shape[1]), PAD, dtype=feats.hist.dtype)])
        new = copy.copy(self)
        new.features_ = TwoTowerFeatures(feats.item_attrs, torch.from_numpy(profile), hist, feats.n_attr_rows,
                                         feats.n_profile_rows)
        new._seen_count = np.concatenate([self._seen_count, np.zeros(U_new - U_old, np.int64)])
        stored = self.__dict__.get("user_vectors_")
        if stored is not None:
            vecs = np.concatenate([stored, np.zeros((U_new - U_old, stored.shape[1]), stored.dtype)])
            vecs[todo] = new._tower(todo, None)
            new.user_vectors_ = vecs
        return new

    def _recall(self, users: np.ndarray, n: int, context: RecallContext | None) -> CandidateBatch:
        B, I = len(users), len(self.item_vectors_)
        items = np.full((B, n), PAD, np.int64)
        scores = np.full((B, n), -np.inf, np.float32)
        histories = self._context_histories(context, B)
        known = (users >= 0) & (users < len(self._seen_count))
        active = known | (np.array([len(h) > 0 for h in histories]) if histories is not None else False)
        rows = np.nonzero(active)[0]
        if len(rows) == 0 or n <= 0:
            return CandidateBatch(self.name, items, scores)
        u = np.where(known, users, -1)[rows]
        hs = None if histories is None else [histories[r] for r in rows]
        q = self.user_vectors(u, hs)
        n_seen = self._seen_count[np.maximum(u, 0)] * (u >= 0)
        if hs is not None:
            n_seen = n_seen + np.array([len(h) for h in hs])
        k = min(I, n + int(n_seen.max()))
        _, ids = self.index_.search(q, k)
        ids = ids.astype(np.int64)
        safe = np.where(ids >= 0, ids, 0)
        ok = (ids >= 0) & ~self.seen_.contains(u[:, None], safe)
        if hs is not None:
            X = ForbiddenPairs(I, _rows_csr(hs, I))
            ok &= ~X.contains(np.arange(len(rows))[:, None], safe)
        # exact row-wise re-score: the same numbers whether a user comes alone or in a batch
        s = (self.item_vectors_[safe] * q[:, None, :]).sum(-1)
        s = np.where(ok, s, -np.inf).astype(np.float32)
        top = _order_rows(s, ids)[:, :n]
        sel_i = np.take_along_axis(ids, top, axis=1)
        sel_s = np.take_along_axis(s, top, axis=1)
        valid = np.isfinite(sel_s)
        m = top.shape[1]
        items[rows, :m] = np.where(valid, sel_i, PAD)
        scores[rows, :m] = np.where(valid, sel_s, -np.inf)
        return CandidateBatch(self.name, items, scores)


def _similar_by_vector(channel: VectorRecall, items: np.ndarray, n: int) -> CandidateBatch:
    """Top-n items by inner product with each item's own vector (i2i over the channel's index),
    the item itself left out; exact re-score as in `_recall`."""
    items = np.asarray(items, dtype=np.int64).reshape(-1)
    V = channel.item_vectors_
    out_i = np.full((len(items), n), PAD, np.int64)
    out_s = np.full((len(items), n), -np.inf, np.float32)
    ok = (items >= 0) & (items < len(V))
    rows = np.nonzero(ok)[0]
    if len(rows) == 0 or n <= 0:
        return CandidateBatch(channel.name, out_i, out_s)
    q = V[items[rows]]
    _, ids = channel.index_.search(q, min(len(V), n + 1))
    ids = ids.astype(np.int64)
    safe = np.where(ids >= 0, ids, 0)
    s = np.where((ids >= 0) & (ids != items[rows, None]), (V[safe] * q[:, None, :]).sum(-1), -np.inf)
    top = _order_rows(s.astype(np.float32), ids)[:, :n]
    sel_i, sel_s = np.take_along_axis(ids, top, 1), np.take_along_axis(s, top, 1).astype(np.float32)
    valid = np.isfinite(sel_s)
    out_i[rows, : top.shape[1]] = np.where(valid, sel_i, PAD)
    out_s[rows, : top.shape[1]] = np.where(valid, sel_s, -np.inf)
    return CandidateBatch(channel.name, out_i, out_s)


def _rows_csr(lists: list[np.ndarray], n_items: int) -> sp.csr_matrix:
    lens = np.array([len(a) for a in lists], np.int64)
    cols = np.concatenate(lists) if lists else np.zeros(0, np.int64)
    rows = np.repeat(np.arange(len(lists)), lens)
    return sp.csr_matrix((np.ones(len(cols), np.float32), (rows, cols)), shape=(len(lists), n_items))


def _order_rows(s: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Per-row order by score descending, ties by item index ascending."""
    o1 = np.argsort(ids, axis=1, kind="stable")
    s1 = np.take_along_axis(s, o1, axis=1)
    o2 = np.argsort(-s1, axis=1, kind="stable")
    return np.take_along_axis(o1, o2, axis=1)


def _item_vectors(model: TwoTowerModel, feats: TwoTowerFeatures, block: int = 65536) -> np.ndarray:
    I = feats.item_attrs.shape[0]
    out = []
    model.eval()
    with torch.inference_mode():
        for s in range(0, I, block):
            idx = torch.arange(s, min(I, s + block))
            out.append(model.item_tower(idx, feats.item_attrs[idx]).numpy())
    return np.concatenate(out).astype(np.float32)


def _ranked_items(model: TwoTowerModel, feats: TwoTowerFeatures, users: np.ndarray, seen: sp.csr_matrix,
                  k: int, block: int = 1024) -> np.ndarray:
    """(len(users), k) top items by exact scoring, seen items excluded (training-time use:
    validation and hard-negative mining)."""
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        items = torch.from_numpy(_item_vectors(model, feats))
        out = np.empty((len(users), k), np.int64)
        for s in range(0, len(users), block):
            u = torch.from_numpy(np.asarray(users[s : s + block], np.int64))
            profile, hist = feats.user_inputs(u)
            sc = model.user_tower(profile, hist) @ items.T
            sub = seen[u.numpy()]
            r, c = sub.nonzero()
            sc[torch.from_numpy(r.astype(np.int64)), torch.from_numpy(c.astype(np.int64))] = -torch.inf
            out[s : s + len(u)] = torch.topk(sc, k, dim=1).indices.numpy()
    model.train(was_training)
    return out
