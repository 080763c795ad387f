"""The funnel itself, HTTP-free: recall channels → snake merge → seen/exposure filter → rank →
top-K. Offline evaluation and serving call this same object, so they cannot drift.

    funnel = Funnel(FunnelConfig()).fit(dataset, split.train, labels=split.valid)
    funnel.recommend(user_id=196, k=10)           # one request, with attribution
    funnel.recommend_batch(users, k=10)            # all users at once, for evaluation
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import scipy.sparse as sp

from funnelrec.core.artifact import load_pickle, save_pickle
from funnelrec.core.config import from_dict
from funnelrec.core.errors import ConfigError, NotFittedError
from funnelrec.core.registry import RANKERS, RECALL_CHANNELS
from funnelrec.core.types import PAD, CandidateBatch, MergedCandidates
from funnelrec.data.dataset import Dataset, TrainData, interactions_csr
from funnelrec.pipeline.config import ChannelSpec, FunnelConfig
from funnelrec.recall.base import RecallChannel, RecallContext
from funnelrec.train.candidate_ranker import CandidateRanker, LabelSet

_MAGIC = b"funnelrec-funnel-v1\n"


def build_channel(spec: ChannelSpec) -> RecallChannel:
    import funnelrec.recall  # noqa: F401  (registers every channel)

    cls = RECALL_CHANNELS.get(spec.kind)
    cfg_cls = getattr(cls, "config_class", None)
    if cfg_cls is not None:
        return cls(from_dict(cfg_cls, dict(spec.params), f"recall channel {spec.name!r} params"), name=spec.name)
    return cls(name=spec.name, **spec.params)


@dataclass
class Recommendation:
    """One answer: items with scores, the channels that recalled each, and how it was made."""

    user_idx: int
    items: np.ndarray  # dense item indices, best first
    scores: np.ndarray
    channels: list[list[str]]
    cold_start: bool
    timings_ms: dict[str, float] = field(default_factory=dict)
    debug: dict[str, Any] = field(default_factory=dict)
    recall_scores: np.ndarray | None = None  # (k, C) each channel's recall score, NaN = not recalled
    recall_channels: list[str] = field(default_factory=list)  # the C channel names of recall_scores
    task_scores: dict[str, np.ndarray] = field(default_factory=dict)  # each ranker task's logit (k,)
    prerank_scores: np.ndarray | None = None  # (k,) the pre-ranker's score, None without one
    # `scores` is the fused score Σ_t w_t · task_scores[t] (merge order without a ranker)


class Funnel:
    def __init__(self, config: FunnelConfig | None = None) -> None:
        self.config = config or FunnelConfig()

    # ------------------------------------------------------------------ fitting
    def fit(self, dataset: Dataset, train: pl.DataFrame, labels: pl.DataFrame | None = None,
            progress: bool = False) -> Funnel:
        """Fit every channel on `train`; train the ranker on the merged candidates of the users
        in `labels` (interactions after/beside train, e.g. the validation split) as positives."""
        cfg = self.config
        if labels is not None:  # an unknown ranker name fails before anything is fitted
            from funnelrec.models.ranking.common import load_all

            load_all()
            RANKERS.get(cfg.rank.model)
        self.dataset_ = dataset
        data = TrainData(dataset, train)
        self.history_ = data.csr
        n_items = dataset.n_items
        pop = np.bincount(train["item_idx"].to_numpy(), minlength=n_items)
        self.item_log_pop_ = np.log1p(pop).astype(np.float32)
        self.user_log_act_ = np.log1p(np.diff(self.history_.indptr)).astype(np.float32)
        self.channels_: dict[str, RecallChannel] = {}
        self.fit_seconds_: dict[str, float] = {}
        specs = cfg.recall.channels
        it = specs
        if progress:
            from tqdm import tqdm

            it = tqdm(specs, desc="fitting recall channels", unit="channel")
        for spec in it:
            t0 = time.perf_counter()
            self.channels_[spec.name] = build_channel(spec).fit(data)
            self.fit_seconds_[spec.name] = time.perf_counter() - t0
        self.ranker_ = None
        self.prerank_ = None
        if labels is not None and labels.height:
            t0 = time.perf_counter()
            self.ranker_ = self._fit_ranker(dataset, train, labels, progress)
            self.fit_seconds_["ranker"] = time.perf_counter() - t0
            if cfg.prerank.enabled:
                from funnelrec.pipeline.stages import fit_prerank

                t0 = time.perf_counter()
                self.prerank_ = fit_prerank(self, np.unique(labels["user_idx"].to_numpy()), cfg.prerank)
                self.fit_seconds_["prerank"] = time.perf_counter() - t0
        return self

    def _label_set(self, channels: dict[str, RecallChannel], data: TrainData, labels: pl.DataFrame) -> LabelSet:
        ds = data.dataset
        users = np.unique(labels["user_idx"].to_numpy())
        value = self.config.rank.like_value_column(labels)
        positives = interactions_csr(labels, ds.n_users, ds.n_items, value=value)
        if value is None:
            positives.data[:] = 1.0
        hist = data.csr
        pop = np.log1p(np.bincount(data.interactions["item_idx"].to_numpy(), minlength=ds.n_items)).astype(np.float32)
        act = np.log1p(np.diff(hist.indptr)).astype(np.float32)
        merged = self.merge(self._recall_with(channels, users, None))
        return LabelSet(merged, users, positives, hist, pop, act)

    def _fit_ranker(self, dataset: Dataset, train: pl.DataFrame, labels: pl.DataFrame,
                    progress: bool) -> CandidateRanker:
        """The real label set (channels on train, labels) plus `rank.label_folds` folds carved from
        train: each user's `fold_fraction` of train rows become labels, channels refit on the rest."""
        rs = self.config.rank
        sets = [self._label_set(self.channels_, TrainData(dataset, train), labels)]
        for f in range(rs.label_folds):
            rng = np.random.default_rng(rs.seed + 1 + f)
            t = train.with_columns(pl.Series("_r", rng.random(train.height)))
            t = t.with_columns(pl.col("_r").rank("ordinal").over("user_idx").alias("_k"),
                               (pl.len().over("user_idx") * rs.fold_fraction).floor().alias("_m"))
            fold_labels = t.filter(pl.col("_k") <= pl.col("_m")).drop("_r", "_k", "_m")
            rest = t.filter(pl.col("_k") > pl.col("_m")).drop("_r", "_k", "_m")
            data = TrainData(dataset, rest)
            chans = {spec.name: build_channel(spec).fit(data) for spec in self.config.recall.channels}
            sets.append(self._label_set(chans, data, fold_labels))
        return CandidateRanker(rs.ranker_config()).fit(dataset, train, sets, progress=progress)

    def _check(self) -> None:
        if not hasattr(self, "channels_"):
            raise NotFittedError("the funnel is not fitted; call fit() or Funnel.load()")

    # ------------------------------------------------------------------ stages
    def plan(self, context: RecallContext | None = None) -> RequestPlan:
        """The request plan under the experiment parameters in `context` (cached per parameter set)."""
        params = _experiment_params(context)
        cache = self.__dict__.setdefault("_plan_cache", {})
        key = repr(sorted(params.items()))
        plan = cache.get(key)
        if plan is None:
            tasks = tuple(getattr(getattr(self, "ranker_", None), "tasks_", ()))
            plan = build_plan(self.config, params, tasks)
            if len(cache) < 256:
                cache[key] = plan
        return plan

    def recall(self, users: np.ndarray, context: RecallContext | None = None,
               plan: RequestPlan | None = None) -> list[CandidateBatch]:
        self._check()
        return self._recall_with(self.channels_, users, context, (plan or self.plan(context)).channels)

    def _recall_with(self, channels: dict[str, RecallChannel], users: np.ndarray, context: RecallContext | None,
                     specs: tuple[ChannelSpec, ...] | None = None) -> list[CandidateBatch]:
        """One batch per channel in config order; a channel at n = 0 gives an empty batch, so the
        merged set keeps the channel layout the ranker's features expect."""
        users = np.asarray(users, dtype=np.int64)
        out = []
        for spec in specs or self.config.recall.channels:
            if spec.name not in channels:
                continue
            if spec.n > 0:
                out.append(channels[spec.name].recall(users, spec.n, context))
            else:
                out.append(CandidateBatch(spec.name, np.full((len(users), 1), PAD, np.int64),
                                          np.full((len(users), 1), -np.inf, np.float32)))
        return out

    def merge(self, batches: list[CandidateBatch], plan: RequestPlan | None = None) -> list[MergedCandidates]:
        from funnelrec.recall.merge import snake_merge

        m = plan.merge if plan is not None else self.config.recall.merge
        return snake_merge(batches, quotas=dict(m.quotas) or None, priority=list(m.priority) or None, total=m.total)

    def candidates(self, users: np.ndarray, context: RecallContext | None = None,
                   exclude: sp.csr_matrix | None = None) -> list[MergedCandidates]:
        """Recall → merge → filter (items in `exclude[user]` removed; seen items never recalled)."""
        users = np.asarray(users, dtype=np.int64)
        # every channel answers every user (personalized channels give unknown or history-less users
        # an empty row), so the merged set always has the full channel layout the ranker expects
        plan = self.plan(context)
        merged = self._attach(self.merge(self.recall(users, context, plan), plan), users)
        if exclude is not None:
            for row, (u, m) in enumerate(zip(users, merged)):
                if u < 0 or len(m) == 0:
                    continue
                ex = exclude.indices[exclude.indptr[u] : exclude.indptr[u + 1]]
                if ex.size:
                    keep = ~np.isin(m.items, ex)
                    merged[row] = m.subset(keep)
        return merged

    def _attach(self, merged: list[MergedCandidates], users: np.ndarray) -> list[MergedCandidates]:
        """Recall-source features on the merged lists, before any cut (as in ranker training)."""
        if getattr(self, "ranker_", None) is None and getattr(self, "prerank_", None) is None:
            return merged
        from funnelrec.features.candidates import attach_features

        return attach_features(merged, users, self.item_log_pop_, self.user_log_act_)

    def rank(self, merged: list[MergedCandidates], users: np.ndarray) -> list[np.ndarray]:
        """Scores for each user's candidates: the ranker's logit, or merge order without one."""
        return [fused for fused, _ in self.rank_tasks(merged, users)]

    def rank_tasks(self, merged: list[MergedCandidates], users: np.ndarray,
                   weights: dict[str, float] | None = None) -> list[tuple[np.ndarray, dict[str, np.ndarray]]]:
        """Per user: (fused score, {task: logit}) of its candidates. fused = Σ_t w_t · logit_t with
        the config's fusion weights, overridden by `weights`; merge order without a ranker."""
        if getattr(self, "ranker_", None) is None:
            return [(-np.arange(len(m), dtype=np.float32), {}) for m in merged]
        from funnelrec.pipeline.stages import fuse

        w = {**self.config.fusion.weights, **(weights or {})}
        tasks = self.ranker_.score_tasks(merged, users, self.item_log_pop_, self.user_log_act_)
        return [(fuse(t, w), t) for t in tasks]

    # ------------------------------------------------------------------ answers
    def prerank(self, merged: list[MergedCandidates], users: np.ndarray, keep: int | None = None
                ) -> tuple[list[MergedCandidates], list[np.ndarray | None]]:
        """Cut each user's candidates to the pre-ranker's top `keep` (default `prerank.keep`;
        merge order kept); returns the cut sets and the kept items' pre-rank scores (None
        without a pre-ranker)."""
        pre = getattr(self, "prerank_", None)
        if pre is None:
            return merged, [None] * len(merged)
        scores = pre.score(users, merged, self.item_log_pop_, self.user_log_act_)
        out, kept = [], []
        for m, s in zip(merged, scores):
            pos = pre.keep_positions(s, keep)
            out.append(m.subset(pos))
            kept.append(s[pos])
        return out, kept

    def final_order(self, m: MergedCandidates, fused: np.ndarray, k: int, rerank: Any = None) -> np.ndarray:
        """Positions of the top k: fused order, then the diversity re-rank `rerank` (a
        RerankSpec; default the config's — a request plan carries an experiment's override)."""
        from funnelrec.pipeline.stages import cap_rerank, mmr_rerank

        order = np.argsort(-fused, kind="stable")
        rr = rerank or self.config.rerank
        if rr.method == "none" or len(order) == 0:
            return order[:k]
        cats = self._categories(rr.column)
        head = order[: rr.window]
        if rr.method == "cap":
            head = cap_rerank(head, m.items, cats, rr.max_per_category, k)
        else:
            head = mmr_rerank(head, m.items, fused, cats, rr.mmr_lambda, k)
        return head[:k]

    def _categories(self, column: str) -> sp.csr_matrix:
        cache = self.__dict__.setdefault("_category_cache", {})
        if column not in cache:
            from funnelrec.pipeline.stages import category_matrix

            items = self.dataset_.items
            if column not in items.columns:
                raise ConfigError(f"rerank.column {column!r} not in the items table: {', '.join(items.columns)}")
            cache[column] = category_matrix(items[column].to_list(), self.dataset_.n_items)
        return cache[column]

    # ------------------------------------------------------------------ answers
    def recommend_batch(self, users: np.ndarray, k: int, exclude: sp.csr_matrix | None = None,
                        context: RecallContext | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(U, k) item indices (PAD-filled) and fused scores for many users: the offline path."""
        users = np.asarray(users, dtype=np.int64)
        plan = self.plan(context)
        merged = self.candidates(users, context, exclude)
        merged, _ = self.prerank(merged, users, plan.prerank_keep)
        ranked = self.rank_tasks(merged, users, plan.fusion_weights)
        items = np.full((len(users), k), PAD, np.int64)
        out_s = np.full((len(users), k), -np.inf, np.float32)
        for row, (m, (s, _)) in enumerate(zip(merged, ranked)):
            top = self.final_order(m, s, k, plan.rerank)
            items[row, : len(top)] = m.items[top]
            out_s[row, : len(top)] = s[top]
        return items, out_s

    def recommend(self, user_id: Any = None, k: int | None = None, user_idx: int | None = None,
                  context: RecallContext | None = None, debug: bool = False,
                  exposure_filter: Callable[[np.ndarray], np.ndarray] | None = None) -> Recommendation:
        """One request. An unknown user gets the non-personalized channels, flagged cold_start.

        exposure_filter(items) → bool mask of items already exposed to this user (e.g. a
        per-user Bloom filter); those are removed between merge and rank."""
        self._check()
        k = k or self.config.k
        t = {}
        t0 = time.perf_counter()
        if user_idx is None:
            user_idx = self.dataset_.user_ids.index(user_id) if user_id is not None else -1
        users = np.array([user_idx], np.int64)
        cold = user_idx < 0 or self.history_.indptr[user_idx + 1] == self.history_.indptr[user_idx]
        plan = self.plan(context)
        batches = self.recall(users, context, plan)
        t["recall"] = (time.perf_counter() - t0) * 1e3
        t1 = time.perf_counter()
        merged = self._attach(self.merge(batches, plan), users)
        t["merge"] = (time.perf_counter() - t1) * 1e3
        removed = np.empty(0, np.int64)
        if exposure_filter is not None and len(merged[0]):
            t1 = time.perf_counter()
            exposed = np.asarray(exposure_filter(merged[0].items), dtype=bool)
            removed = merged[0].items[exposed]
            merged[0] = merged[0].subset(~exposed)
            t["filter"] = (time.perf_counter() - t1) * 1e3
        n_merged = len(merged[0])
        pre_scores = None
        if getattr(self, "prerank_", None) is not None:
            t1 = time.perf_counter()
            merged, kept = self.prerank(merged, users, plan.prerank_keep)
            pre_scores = kept[0]
            t["prerank"] = (time.perf_counter() - t1) * 1e3
        t1 = time.perf_counter()
        scores, tasks = self.rank_tasks(merged, users, plan.fusion_weights)[0]
        t["rank"] = (time.perf_counter() - t1) * 1e3
        m = merged[0]
        t1 = time.perf_counter()
        top = self.final_order(m, scores, k, plan.rerank)
        t["rerank"] = (time.perf_counter() - t1) * 1e3
        t["total"] = (time.perf_counter() - t0) * 1e3
        dbg = {}
        if debug:
            dbg = {"candidates": n_merged, "per_channel": {b.channel: int((b.items[0] != PAD).sum()) for b in batches},
                   "filtered": removed.tolist(), "ranked": len(m)}
        return Recommendation(
            user_idx=int(user_idx), items=m.items[top], scores=scores[top],
            channels=[m.channels_of(int(p)) for p in top], cold_start=bool(cold), timings_ms=t, debug=dbg,
            recall_scores=m.scores[top], recall_channels=list(m.channels),
            task_scores={name: v[top] for name, v in tasks.items()},
            prerank_scores=None if pre_scores is None else pre_scores[top],
        )

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> None:
        self._check()
        save_pickle(self, path, _MAGIC)

    @staticmethod
    def load(path: str | Path) -> Funnel:
        return load_pickle(path, _MAGIC, Funnel, "funnel", hint="; train one with `funnelrec train`")


@dataclass(frozen=True)
class RequestPlan:
    """What one request runs: the funnel config's request-time parts with an experiment's
    overrides applied (fit-time parts — models, channel parameters — cannot change per request)."""

    channels: tuple[ChannelSpec, ...]  # every fitted channel, in config order; n = 0 → not run
    merge: Any  # MergeSpec
    prerank_keep: int | None
    fusion_weights: dict[str, float]
    rerank: Any  # RerankSpec


def request_params(config: FunnelConfig, tasks: tuple[str, ...] = ()) -> set[str]:
    """Dotted experiment parameters a fitted funnel applies per request (the names the
    experiment platform may use against it): merge total/quotas/priority, each channel's n
    (0 switches it off for the request), pre-rank keep (with a pre-ranker), the weights of the
    ranker's `tasks`, every re-rank field."""
    from dataclasses import fields

    from funnelrec.pipeline.config import RerankSpec

    names = [c.name for c in config.recall.channels]
    out = {"recall.merge.total", "recall.merge.priority"}
    out |= {f"recall.merge.quotas.{n}" for n in names} | {f"recall.channels.{n}.n" for n in names}
    if config.prerank.enabled:
        out.add("prerank.keep")
    out |= {f"fusion.weights.{t}" for t in tasks}  # the fitted ranker's tasks
    out |= {f"rerank.{f.name}" for f in fields(RerankSpec)}
    return out


def build_plan(config: FunnelConfig, params: dict[str, Any], tasks: tuple[str, ...] = ()) -> RequestPlan:
    """The request plan of `config` under dotted `params` (see `request_params`); a parameter the
    funnel cannot apply per request is a ConfigError naming it. The pre-dotted forms
    {"fusion_weights": {task: w}} and {"rerank": {field: value}} are accepted too."""
    from dataclasses import replace

    known = request_params(config, tasks)
    merge, rerank = config.recall.merge, config.rerank
    n_of = {c.name: c.n for c in config.recall.channels}
    quotas, weights, rr = dict(merge.quotas), dict(config.fusion.weights), {}
    keep = config.prerank.keep if config.prerank.enabled else None
    for key, value in params.items():
        if key == "fusion_weights" and isinstance(value, dict):
            weights.update({str(t): float(w) for t, w in value.items()})
        elif key == "rerank" and isinstance(value, dict):
            rr.update(value)
        elif key not in known:
            raise ConfigError(f"experiment parameter {key!r} cannot change per request (fit-time or unknown); "
                              f"per-request parameters: {', '.join(sorted(known))}")
        elif key.startswith("recall.merge.quotas."):
            quotas[key.rsplit(".", 1)[1]] = int(value)
        elif key == "recall.merge.total":
            merge = replace(merge, total=int(value))
        elif key == "recall.merge.priority":
            merge = replace(merge, priority=[str(v) for v in value])
        elif key.startswith("recall.channels."):
            n_of[key.split(".")[2]] = int(value)
        elif key == "prerank.keep":
            keep = int(value)
        elif key.startswith("fusion.weights."):
            weights[key.rsplit(".", 1)[1]] = float(value)
        else:
            rr[key.split(".", 1)[1]] = value
    if any(n < 0 for n in n_of.values()) or (keep is not None and keep < 1):
        raise ConfigError(f"experiment parameters {params}: channel n must be ≥ 0 and prerank.keep ≥ 1")
    specs = tuple(replace(c, n=n_of[c.name]) for c in config.recall.channels)
    return RequestPlan(specs, replace(merge, quotas=quotas), keep, weights, replace(rerank, **rr) if rr else rerank)


def _experiment_params(context: RecallContext | None) -> dict[str, Any]:
    if context is None:
        return {}
    p = context.extra.get("experiment_params") or {}
    return p if isinstance(p, dict) else {}

