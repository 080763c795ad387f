"""The funnel itself, HTTP-free, serving only: one entry, `Funnel.run`, runs recall channels →
snake merge → filter (exclude + exposure) → pre-rank → rank (score → fuse → re-rank) → top-K for
a batch of users. Serving (pipeline/service.py), batch and offline evaluation (pipeline/offline.py)
and the simulator all call it, so they cannot drift. Fitting lives in pipeline/builder.py
(`FunnelBuilder`), which hands the fitted components to a `Funnel`.

    funnel = FunnelBuilder(FunnelConfig()).fit(dataset, split.train, labels=split.valid)
    [rec] = funnel.run(np.array([u]), k=10, state=RequestState(exposure=[seen_view]))
    items, scores = funnel.recommend_batch(users, k=10, exclude=valid)   # offline: (U, k)

Online state (fresh history, exclusions, exposure views, cached results) comes in as an explicit
`RequestState` value; nothing a `Funnel` holds changes during a request. `with_components`
returns a new funnel with some parts swapped (what a reload or the online learner publishes).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from funnelrec.core.errors import ArtifactError, ConfigError, DataError
from funnelrec.core.ids import item_keys
from funnelrec.core.sparse import grown
from funnelrec.core.types import PAD, CandidateBatch, MergedCandidates, RequestState
from funnelrec.data.dataset import Dataset
from funnelrec.pipeline.config import ChannelSpec, FunnelConfig
from funnelrec.pipeline.stages import category_matrix, filter_candidates, rank_stage, rerank
from funnelrec.recall.base import RecallChannel, RecallContext

ARTIFACT_FORMAT = "funnelrec-artifact"


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
    filtered: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))  # removed by the filter stage
    # `scores` is the fused score Σ_t w_t · task_scores[t] (merge order without a ranker)
    fusion_weights: dict[str, float] = field(default_factory=dict)  # the w_t this request used
    # (k,) each returned item's 0-based position in the fused order before the re-ranker (its
    # final position is its index here); computed only with `debug` (explain answers)
    fused_positions: np.ndarray | None = None
    # the ranked-but-unshown tail, computed only when `run(tail=n)` asks: positions k..k+n-1 of
    # the fused order minus the items shown (`_ranked_tail`), and their fused scores; what the
    # service keeps for the cache channel
    tail_items: np.ndarray | None = None
    tail_scores: np.ndarray | None = None
    # the request stage by stage, kept only with `debug` (the console draws it): references to
    # arrays the run made anyway, no copies (`FunnelTrace`)
    trace: FunnelTrace | None = None


@dataclass(frozen=True)
class FunnelTrace:
    """What each stage of one request held (dense item indices; the console maps them to ids):
    `recall` [(channel, items, scores)] each channel's candidates (PAD-padded rows); `merged` the
    merged list before the filter, `after_filter` after it (the exposure / exclude / catalogue
    filter), `ranked` after the pre-rank cut (= after_filter without a pre-ranker), with
    `prerank_scores` (ranked's, None without one); `fused` and `task_scores` over `ranked`;
    `top` the positions of `ranked` the re-ranker returned; `merge` the plan's MergeConfig."""

    recall: list
    merged: MergedCandidates
    after_filter: MergedCandidates
    ranked: MergedCandidates
    prerank_scores: np.ndarray | None
    fused: np.ndarray
    task_scores: dict
    top: np.ndarray
    merge: Any


def _upsert_rows(table: Any, rows: Any, kind: str, ids: Any, caller: str, what: str) -> tuple[Any, np.ndarray]:
    """`table` (the users or items table, dense index column `<kind>_idx`) with `rows` upserted:
    a known `<kind>_id` has the given non-null values replaced, an unknown one is appended as the
    next dense index (old ids keep theirs). Returns (the new table, the sorted dense indices of
    the changed and added rows). A column the table lacks, or a value of another type, is a
    DataError naming it."""
    import polars as pl

    id_col, idx_col = f"{kind}_id", f"{kind}_idx"
    if not isinstance(rows, pl.DataFrame) or id_col not in rows.columns:
        raise DataError(f"{caller}: {kind}s must be a polars DataFrame with the column {id_col}")
    bad = [c for c in rows.columns if c not in table.columns or c == idx_col]
    if bad:
        raise DataError(f"{kind} columns {bad} are not in {what}; it has: "
                        f"{', '.join(c for c in table.columns if c != idx_col)}")
    try:
        rows = rows.select(pl.col(c).cast(table.schema[c], strict=True) for c in rows.columns)
    except (pl.exceptions.PolarsError, TypeError, ValueError) as e:
        raise DataError(f"{kind}s do not fit {what}'s column types {dict(table.schema)}: "
                        f"{str(e).splitlines()[0][:200]}") from None
    rows = rows.unique(id_col, keep="last", maintain_order=True)
    idx = ids.indices(rows[id_col].to_list())
    n_old = table.height
    known = rows.filter(pl.Series(idx >= 0)).with_columns(pl.Series(idx_col, idx[idx >= 0], pl.Int64))
    fresh = rows.filter(pl.Series(idx < 0))
    full = table.update(known, on=idx_col, how="left") if known.height else table
    if fresh.height:
        fresh = fresh.with_columns(pl.Series(idx_col, np.arange(n_old, n_old + fresh.height), pl.Int64))
        fresh = fresh.select(pl.col(c) if c in fresh.columns else pl.lit(None, table.schema[c]).alias(c)
                             for c in table.columns)
        full = pl.concat([full, fresh.select(pl.col(c).cast(table.schema[c]) for c in table.columns)])
    changed = np.sort(np.concatenate([idx[idx >= 0], np.arange(n_old, full.height)])).astype(np.int64)
    return full, changed


def _fused_positions(fused: np.ndarray, top: np.ndarray) -> np.ndarray:
    """0-based position of each candidate `top[j]` in the fused order (descending score, ties by
    candidate position — the order `rerank` starts from): #{q : s_q > s_p} + #{q < p : s_q = s_p}."""
    s = np.asarray(fused)
    p = np.asarray(top, dtype=np.int64)
    if len(p) == 0:
        return np.empty(0, np.int64)
    sp_ = s[p][:, None]
    earlier = np.arange(len(s))[None, :] < p[:, None]
    return ((s[None, :] > sp_) | ((s[None, :] == sp_) & earlier)).sum(1).astype(np.int64)


def _ranked_tail(fused: np.ndarray, top: np.ndarray, k: int, n: int) -> np.ndarray:
    """Candidate positions of the ranked-but-unshown tail: positions k..k+n-1 of the fused order
    (descending fused score, ties by candidate position — the fine-ranked list the re-ranker
    starts from) minus the shown `top` (a re-ranker may lift an item from below k into the
    top k), in fused order. Items the re-ranker pushed out of the top k are not added back:
    the tail is the slice of the ranked list, as the cache channel's contract says."""
    order = np.argsort(-np.asarray(fused), kind="stable")[k : k + n]
    return order[~np.isin(order, top)]


@dataclass(frozen=True)
class FunnelStats:
    """Fit-time facts every request reads: the training history (U, I) CSR, log(1 + item
    popularity) and log(1 + user activity) over it (recall-source features)."""

    history: sp.csr_matrix
    item_log_pop: np.ndarray
    user_log_act: np.ndarray
    # the online learner's record of the stream (online/learner.py): (U, I) CSR of each (user,
    # item)'s latest consumption time since the fit; None before any. The learner's samples read
    # a user's real-time history in this order, as a request reads its history store's
    stream_ts: sp.csr_matrix | None = None

    @classmethod
    def of(cls, data: Any) -> FunnelStats:
        """From `TrainData`: popularity counts every training event (repeats included)."""
        h = data.csr
        pop = np.bincount(data.interactions["item_idx"].to_numpy(), minlength=data.n_items)
        return cls(h, np.log1p(pop).astype(np.float32), np.log1p(np.diff(h.indptr)).astype(np.float32))


class Funnel:
    """Fitted components that plan and serve requests. Built by `FunnelBuilder.fit` or
    `Funnel.load(dir)`; immutable in use (`with_components` makes a new one)."""

    def __init__(self, config: FunnelConfig, dataset: Dataset, channels: dict[str, RecallChannel],
                 stats: FunnelStats, ranker: Any = None, prerank: Any = None,
                 fit_seconds: dict[str, float] | None = None) -> None:
        _check_components(config, dataset, channels, stats, ranker, prerank)
        self.config = config
        self.dataset_ = dataset
        self.channels_ = dict(channels)
        self.stats_ = stats
        self.ranker_ = ranker
        self.prerank_ = prerank
        self.fit_seconds_ = dict(fit_seconds or {})
        # everything a request reads is built here, never during a request
        self.item_keys_ = item_keys(dataset.items["item_id"].to_numpy())
        self.tasks_ = tuple(getattr(ranker, "tasks_", ()))
        self._categories: dict[str, sp.csr_matrix] = {}
        if config.rerank.method != "none":
            self._categories[config.rerank.column] = self._category_matrix(config.rerank.column)
        self.default_plan_ = self.plan_for({})

    # compatibility names of the fit-time statistics
    @property
    def history_(self) -> sp.csr_matrix:
        return self.stats_.history

    @property
    def item_log_pop_(self) -> np.ndarray:
        return self.stats_.item_log_pop

    @property
    def user_log_act_(self) -> np.ndarray:
        return self.stats_.user_log_act

    # ------------------------------------------------------------------ components
    def components(self) -> dict[str, Any]:
        """The parts an artifact saves and a reload can swap one by one."""
        out: dict[str, Any] = {"dataset": self.dataset_, "stats": self.stats_}
        out.update({f"channels/{n}": ch for n, ch in self.channels_.items()})
        if self.ranker_ is not None:
            out["ranker"] = self.ranker_
        if self.prerank_ is not None:
            out["prerank"] = self.prerank_
        return out

    @classmethod
    def from_components(cls, config: FunnelConfig, parts: dict[str, Any]) -> Funnel:
        channels = {k.split("/", 1)[1]: v for k, v in parts.items() if k.startswith("channels/")}
        try:
            return cls(config, parts["dataset"], channels, parts["stats"], parts.get("ranker"), parts.get("prerank"))
        except KeyError as e:
            raise ArtifactError(f"funnel artifact lacks the component {e.args[0]!r}") from None

    def with_components(self, **parts: Any) -> Funnel:
        """A new funnel with some components replaced (keys as in `components()`, "/" written
        as "__": `with_components(ranker=r, channels__itemcf=ch)`); this one is unchanged."""
        cur = self.components()
        for k, v in parts.items():
            name = k.replace("__", "/")
            if name not in cur and name not in ("ranker", "prerank"):
                raise ConfigError(f"unknown funnel component {name!r}; known: {', '.join(cur)}")
            cur[name] = v
        new = Funnel.from_components(self.config, cur)
        new.fit_seconds_ = dict(self.fit_seconds_)
        return new

    def with_items(self, items: Any) -> Funnel:
        """A new funnel whose catalogue has the rows of `items` (a polars frame: item_id plus any
        of the items table's columns) upserted: an unknown id is appended as the next dense index
        (the fitted ones keep theirs), a known one has the given non-null values replaced. Every
        component that has `extend_items` is extended (fresh/tag/author indexes, vector index,
        the ranker's item rows, the pre-ranker's item table); the others (itemCF, Swing, EASE,
        hot, …) keep their fitted items and never recall a new one until they are refitted or
        updated. The training history gets empty columns, item_log_pop 0. This one is unchanged."""
        import copy


        ds, I_old = self.dataset_, self.dataset_.n_items
        table = ds.items
        full, changed = _upsert_rows(table, items, "item", ds.item_ids, "with_items", "the catalogue")
        dataset = Dataset(ds.name, ds.interactions, ds.users, full, ds.schema, ds.extras)
        st = self.stats_
        stats = replace(
            st, history=grown(st.history, cols=full.height),
            item_log_pop=np.concatenate([st.item_log_pop, np.zeros(full.height - I_old, np.float32)]),
            stream_ts=None if st.stream_ts is None else grown(st.stream_ts, cols=full.height))
        channels = {n: ch.extend_items(full, changed) if hasattr(ch, "extend_items") else ch
                    for n, ch in self.channels_.items()}
        ranker, prerank = self.ranker_, self.prerank_
        if hasattr(getattr(ranker, "features_", None), "extend_items"):
            ranker = copy.copy(ranker)
            ranker.features_ = self.ranker_.features_.extend_items(table, full, changed)
        if hasattr(prerank, "extend_items") and ranker is not None and hasattr(ranker, "item_rows_"):
            prerank = prerank.extend_items(ranker.item_rows_)
        new = Funnel(self.config, dataset, channels, stats, ranker, prerank)
        new.fit_seconds_ = dict(self.fit_seconds_)
        return new

    def with_users(self, users: Any) -> Funnel:
        """A new funnel whose users table has the rows of `users` (a polars frame: user_id plus any
        of the users table's columns) upserted, as `with_items` does for items: an unknown id is
        appended as the next dense index, a known one has the given non-null values replaced.
        A new user has no training history (empty row, log activity 0): the channels serve it as
        an unknown user plus its real-time history, except those with `extend_users` (the vector
        channel: its user tower reads the profile); the ranker and pre-ranker read its profile
        (the learned rows of its attribute values). This one is unchanged."""
        import copy


        ds, U_old = self.dataset_, self.dataset_.n_users
        table = ds.users
        full, changed = _upsert_rows(table, users, "user", ds.user_ids, "with_users", "the users table")
        dataset = Dataset(ds.name, ds.interactions, full, ds.items, ds.schema, ds.extras)
        st = self.stats_
        stats = replace(
            st, history=grown(st.history, rows=full.height),
            user_log_act=np.concatenate([st.user_log_act, np.zeros(full.height - U_old, np.float32)]),
            stream_ts=None if st.stream_ts is None else grown(st.stream_ts, rows=full.height))
        ranker, prerank = self.ranker_, self.prerank_
        if hasattr(getattr(ranker, "features_", None), "extend_users"):
            ranker = copy.copy(ranker)
            ranker.features_ = self.ranker_.features_.extend_users(table, full, changed)
        if hasattr(prerank, "extend_users") and ranker is not None and hasattr(ranker, "user_rows_"):
            prerank = prerank.extend_users(ranker.user_rows_)
        channels = {n: ch.extend_users(full, changed) if hasattr(ch, "extend_users") else ch
                    for n, ch in self.channels_.items()}
        new = Funnel(self.config, dataset, channels, stats, ranker, prerank)
        new.fit_seconds_ = dict(self.fit_seconds_)
        return new

    # ------------------------------------------------------------------ planning
    def plan(self, context: RecallContext | None = None) -> RequestPlan:
        """The request plan under the experiment parameters in `context` (the default plan,
        built with the funnel, without any)."""
        params = _experiment_params(context)
        return self.plan_for(params) if params else self.default_plan_

    def plan_for(self, params: dict[str, Any]) -> RequestPlan:
        """A new plan for experiment parameters `params`, with the re-rank category matrix its
        `rerank.column` needs (the config's own is shared). Derived from the config and the
        catalogue alone: a caller that sees the same parameters often (the service, per
        experiment variant) keeps the plan instead of asking again."""
        plan = build_plan(self.config, params, self.tasks_)
        if plan.rerank.method == "none":
            return plan
        return replace(plan, categories=self._category_matrix(plan.rerank.column))

    # ------------------------------------------------------------------ stages
    def recall(self, users: np.ndarray, context: RecallContext | None = None,
               plan: RequestPlan | None = None) -> list[CandidateBatch]:
        """One batch per channel in config order; a channel at n = 0 gives an empty batch, so the
        merged set keeps the channel layout the ranker's features expect."""
        users = np.asarray(users, dtype=np.int64)
        out = []
        for spec in (plan or self.plan(context)).channels:
            if spec.n > 0:
                out.append(self.channels_[spec.name].recall(users, spec.n, context))
            else:
                out.append(CandidateBatch(spec.name, np.full((len(users), 1), PAD, np.int64),
                                          np.full((len(users), 1), -np.inf, np.float32)))
        return out

    def merge(self, batches: list[CandidateBatch], plan: RequestPlan | None = None) -> list[MergedCandidates]:
        """The plan's merge (`recall.merge.strategy`, a MERGE_STRATEGIES name; "snake" by default)."""
        from funnelrec.recall.merge import merge_with_config

        return merge_with_config(batches, (plan or self.default_plan_).merge)

    def _attach(self, merged: list[MergedCandidates], users: np.ndarray) -> list[MergedCandidates]:
        """Recall-source features on the merged lists, before any cut (as in ranker training)."""
        if self.ranker_ is None and self.prerank_ is None:
            return merged
        from funnelrec.features.candidates import attach_features

        return attach_features(merged, users, self.stats_.item_log_pop, self.stats_.user_log_act)

    def candidates(self, users: np.ndarray, context: RecallContext | None = None,
                   state: RequestState | None = None, plan: RequestPlan | None = None) -> list[MergedCandidates]:
        """Recall → merge → filter: the candidate sets the pre-ranker and ranker see."""
        users = np.asarray(users, dtype=np.int64)
        plan = plan or self.plan(context)
        ctx = self._context(context, state, len(users))
        merged = self._attach(self.merge(self.recall(users, ctx, plan), plan), users)
        if state is not None:
            merged, _ = filter_candidates(merged, self.item_keys_, state.exclude, state.exposure)
        return merged

    def prerank(self, merged: list[MergedCandidates], users: np.ndarray, keep: int | None = None
                ) -> tuple[list[MergedCandidates], list[np.ndarray | None]]:
        """Cut each user's candidates to the pre-ranker's top `keep` (default `prerank.keep`;
        merge order kept); returns the cut sets and the kept items' pre-rank scores (None
        without a pre-ranker)."""
        pre = self.prerank_
        if pre is None:
            return merged, [None] * len(merged)
        scores = pre.score(users, merged, self.stats_.item_log_pop, self.stats_.user_log_act)
        out, kept = [], []
        for m, s in zip(merged, scores):
            pos = pre.keep_positions(s, keep)
            out.append(m.subset(pos))
            kept.append(s[pos])
        return out, kept

    def rank_tasks(self, merged: list[MergedCandidates], users: np.ndarray,
                   weights: dict[str, float] | None = None, history: Any = None,
                   ) -> list[tuple[np.ndarray, dict[str, np.ndarray]]]:
        """Per user: (fused score, {task: logit}) — the rank stage's scoring with the config's
        fusion weights overridden by `weights`. `history` (one item-index array or None per
        user, `RequestState.history`): items consumed since the fit, which the ranker's match
        features see on top of the fit-time history (`HistoryMatch.current_rows`)."""
        w = {**self.config.fusion.weights, **(weights or {})}
        return rank_stage(self.ranker_, merged, users, self.stats_.item_log_pop, self.stats_.user_log_act, w,
                          fresh=history)

    def final_order(self, m: MergedCandidates, fused: np.ndarray, k: int, plan: RequestPlan | None = None) -> np.ndarray:
        """Positions of the top k: fused order, then the plan's re-ranker."""
        plan = plan or self.default_plan_
        return rerank(m, fused, k, plan.rerank, plan.categories)

    def _category_matrix(self, column: str) -> sp.csr_matrix:
        """The (I, V) item × value matrix of a re-rank column (the config's column: built once)."""
        got = self._categories.get(column)
        if got is not None:
            return got
        items = self.dataset_.items
        if column not in items.columns:
            raise ConfigError(f"rerank.column {column!r} not in the items table: {', '.join(items.columns)}")
        return category_matrix(items[column].to_list(), self.dataset_.n_items)

    @staticmethod
    def _context(context: RecallContext | None, state: RequestState | None, n_users: int) -> RecallContext | None:
        """The channels' view of the request: the caller's facts plus the request state (fresh
        history as `extra["history"]`); a new object, the caller's is not changed."""
        if state is None:
            return context
        state.check(n_users)
        base = context or RecallContext()
        extra = dict(base.extra)
        if state.history is not None:
            extra["history"] = [np.empty(0, np.int64) if h is None else h for h in state.history]
        return RecallContext(time=base.time, region=base.region, extra=extra, state=state)

    # ------------------------------------------------------------------ the one entry
    def run(self, users: np.ndarray, k: int | None = None, *, context: RecallContext | None = None,
            state: RequestState | None = None, plan: RequestPlan | None = None,
            debug: bool = False, tail: int = 0) -> list[Recommendation]:
        """Answer a batch of users (dense indices, -1 = unknown → the non-personalized channels,
        flagged cold_start): recall → merge → filter → pre-rank → rank → fuse → re-rank → top k.
        Serving passes a batch of one; offline evaluation all test users at once. `tail` = n > 0
        also returns each answer's ranked-but-unshown tail (`Recommendation.tail_items`)."""
        k = self.config.k if k is None else k
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise DataError(f"k must be an integer ≥ 1, got {k!r}")
        if isinstance(tail, bool) or not isinstance(tail, int | np.integer) or tail < 0:
            raise DataError(f"tail must be an integer ≥ 0, got {tail!r}")
        users = np.asarray(users, dtype=np.int64).reshape(-1)
        if len(users) and (users.max() >= self.dataset_.n_users or users.min() < -1):
            raise DataError(f"user indices must be in [-1, {self.dataset_.n_users}); got {users.min()}..{users.max()}")
        plan = plan or self.plan(context)
        ctx = self._context(context, state, len(users))
        t: dict[str, float] = {}
        t0 = time.perf_counter()
        batches = self.recall(users, ctx, plan)
        t["recall"] = (time.perf_counter() - t0) * 1e3
        t1 = time.perf_counter()
        merged = self._attach(self.merge(batches, plan), users)
        t["merge"] = (time.perf_counter() - t1) * 1e3
        n_merged = [len(m) for m in merged]
        before_filter = merged  # (trace)
        removed: list[np.ndarray] = [np.empty(0, np.int64)] * len(users)
        if state is not None and (state.exclude is not None or state.exposure is not None):
            t1 = time.perf_counter()
            merged, removed = filter_candidates(merged, self.item_keys_, state.exclude, state.exposure)
            t["filter"] = (time.perf_counter() - t1) * 1e3
        pre_scores: list[np.ndarray | None] = [None] * len(users)
        after_filter = merged  # (trace)
        if self.prerank_ is not None:
            t1 = time.perf_counter()
            merged, pre_scores = self.prerank(merged, users, plan.prerank_keep)
            t["prerank"] = (time.perf_counter() - t1) * 1e3
        t1 = time.perf_counter()
        weights = {**self.config.fusion.weights, **(plan.fusion_weights or {})}
        ranked = self.rank_tasks(merged, users, plan.fusion_weights, None if state is None else state.history)
        t["rank"] = (time.perf_counter() - t1) * 1e3
        t1 = time.perf_counter()
        tops = [self.final_order(m, s, k, plan) for m, (s, _) in zip(merged, ranked)]
        t["rerank"] = (time.perf_counter() - t1) * 1e3
        t["total"] = (time.perf_counter() - t0) * 1e3
        hist = self.stats_.history.indptr
        fresh = None if state is None else state.history
        out = []
        for r, (u, m, (s, tasks), top) in enumerate(zip(users.tolist(), merged, ranked, tops)):
            no_fresh = fresh is None or fresh[r] is None or len(fresh[r]) == 0
            cold = no_fresh and (u < 0 or hist[u + 1] == hist[u])
            dbg = {}
            if debug:
                dbg = {"candidates": n_merged[r], "ranked": len(m),
                       "per_channel": {b.channel: int((b.items[r] != PAD).sum()) for b in batches}}
            pre = pre_scores[r]
            fused_pos = _fused_positions(s, top) if debug else None
            tail_pos = _ranked_tail(s, top, k, int(tail)) if tail else None
            out.append(Recommendation(
                user_idx=int(u), items=m.items[top], scores=s[top], channels=[m.channels_of(int(p)) for p in top],
                cold_start=bool(cold), timings_ms=dict(t), debug=dbg, recall_scores=m.scores[top],
                recall_channels=list(m.channels), task_scores={n: v[top] for n, v in tasks.items()},
                prerank_scores=None if pre is None else pre[top], filtered=removed[r],
                fusion_weights={t: float(weights.get(t, 1.0)) for t in tasks}, fused_positions=fused_pos,
                tail_items=None if tail_pos is None else m.items[tail_pos],
                tail_scores=None if tail_pos is None else s[tail_pos],
                trace=None if not debug else FunnelTrace(
                    [(b.channel, b.items[r], b.scores[r]) for b in batches], before_filter[r], after_filter[r], m,
                    pre, s, tasks, top, plan.merge)))
        return out

    # ------------------------------------------------------------------ item-to-item
    def similar_sources(self) -> list[str]:
        """The channels that answer item-to-item (itemCF, Swing, EASE, vector: `similar_items`)."""
        return [name for name, ch in self.channels_.items() if callable(getattr(ch, "similar_items", None))]

    def similar(self, item_idx: int, k: int, channel: str | None = None,
                exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, list[list[str]]]:
        """The k items most similar to `item_idx`: each i2i channel's neighbours (or only
        `channel`'s), interleaved channel by channel in config order and deduplicated — the first
        channel to name an item gives its score; `exclude` (item indices) never returned.
        Returns (items (≤k,), scores, the channels that named each item)."""
        sources = self.similar_sources()
        if channel is not None:
            if channel not in sources:
                raise DataError(f"channel {channel!r} has no item-to-item neighbours; "
                                f"these do: {', '.join(sources) or 'none in this funnel'}")
            sources = [channel]
        if not sources:
            raise ConfigError("this funnel has no item-to-item channel (itemcf, swing, ease or vector)")
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise DataError(f"k must be an integer ≥ 1, got {k!r}")
        banned = {int(item_idx), *(() if exclude is None else np.asarray(exclude).tolist())}
        rows = []
        for name in sources:
            b = self.channels_[name].similar_items(np.array([item_idx], np.int64), k + len(banned))
            it, sc = b.row(0)
            rows.append((name, it.tolist(), sc.tolist()))
        order: dict[int, tuple[float, list[str]]] = {}
        for depth in range(max((len(r[1]) for r in rows), default=0)):
            for name, its, scs in rows:
                if depth < len(its) and its[depth] not in banned:
                    got = order.get(its[depth])
                    if got is None:
                        if len(order) < k:
                            order[its[depth]] = (scs[depth], [name])
                    elif name not in got[1]:
                        got[1].append(name)
        items = np.fromiter(order, np.int64, len(order))
        scores = np.array([v[0] for v in order.values()], np.float32)
        return items, scores, [v[1] for v in order.values()]

    # ------------------------------------------------------------------ conveniences over run
    def recommend(self, user_id: Any = None, k: int | None = None, user_idx: int | None = None,
                  context: RecallContext | None = None, state: RequestState | None = None,
                  plan: RequestPlan | None = None, debug: bool = False, tail: int = 0) -> Recommendation:
        """One request by external `user_id` (or dense `user_idx`): `run` on a batch of one."""
        if user_idx is None:
            user_idx = self.dataset_.user_ids.index(user_id) if user_id is not None else -1
        return self.run(np.array([user_idx], np.int64), k, context=context, state=state, plan=plan, debug=debug,
                        tail=tail)[0]

    def recommend_batch(self, users: np.ndarray, k: int, exclude: sp.csr_matrix | None = None,
                        context: RecallContext | None = None,
                        state: RequestState | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(U, k) item indices (PAD-filled) and fused scores for many users: `run` plus the
        offline form of exclusion (a (n_users, I) CSR, e.g. each user's train + valid items)."""
        users = np.asarray(users, dtype=np.int64)
        if exclude is not None:
            rows = [exclude.indices[exclude.indptr[u]: exclude.indptr[u + 1]] if u >= 0 else None
                    for u in users.tolist()]
            if state is not None and state.exclude is not None:  # both given: each row excludes the union
                state.check(len(users))
                rows = [r if e is None else (np.asarray(e, np.int64) if r is None else np.union1d(r, e))
                        for r, e in zip(rows, state.exclude)]
            state = replace(state, exclude=rows) if state is not None else RequestState(exclude=rows)
        recs = self.run(users, k, context=context, state=state)
        items = np.full((len(users), k), PAD, np.int64)
        scores = np.full((len(users), k), -np.inf, np.float32)
        for r, rec in enumerate(recs):
            items[r, : len(rec.items)] = rec.items
            scores[r, : len(rec.items)] = rec.scores
        return items, scores

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> Path:
        """Write the versioned artifact directory (pipeline/artifact.py): a manifest plus one
        part per component, no pickle."""
        from funnelrec.pipeline.artifact import save_artifact

        return save_artifact(Path(path).resolve(), self.components(), config=_config_dict(self.config),
                             schema=_schema_of(self.dataset_), meta={"fit_seconds": self.fit_seconds_})

    @staticmethod
    def load(path: str | Path, parts: list[str] | None = None, base: Funnel | None = None) -> Funnel:
        """Load an artifact directory; with `parts` only those components are read and the rest
        come from `base` (a reload that swaps one part)."""
        from funnelrec.pipeline.artifact import load_artifact

        manifest, comps = load_artifact(path, parts=parts)
        config = FunnelConfig.from_dict(manifest["config"])
        if parts is not None:
            # the served funnel's config stays (its channel list, merge, fusion, k); the parts must
            # fit it — checked when the new funnel is built
            if base is None:
                raise ArtifactError("Funnel.load(parts=…) needs the funnel whose other parts it keeps (base=)")
            merged = base.components()
            merged.update(comps)
            comps, config = merged, base.config
        funnel = Funnel.from_components(config, comps)
        funnel.fit_seconds_ = dict(manifest.get("meta", {}).get("fit_seconds", {}))
        return funnel


def _check_components(config: FunnelConfig, dataset: Dataset, channels: dict[str, RecallChannel],
                      stats: FunnelStats, ranker: Any, prerank: Any) -> None:
    """Parts that do not fit together are refused when the funnel is built (a reload that swaps
    one part, `with_components`), not discovered as wrong scores or errors at request time."""
    names = [c.name for c in config.recall.channels]
    missing = [n for n in names if n not in channels]
    if missing:
        raise ConfigError(f"funnel: configured channels {missing} have no fitted component")
    for spec in config.recall.channels:
        kind = getattr(channels[spec.name], "registered_name", spec.kind)
        if kind != spec.kind:
            raise ConfigError(f"funnel: channel {spec.name!r} is configured as {spec.kind!r} but the component "
                              f"is a {kind!r} channel")
    if (stats.history.shape != (dataset.n_users, dataset.n_items) or len(stats.item_log_pop) != dataset.n_items
            or len(stats.user_log_act) != dataset.n_users):
        raise ConfigError(f"funnel: the fit-time stats are for {stats.history.shape[0]} users × "
                          f"{stats.history.shape[1]} items, the catalogue has {dataset.n_users} × {dataset.n_items}")
    for what, part in (("ranker", ranker), ("prerank", prerank)):
        fitted = getattr(part, "channel_names_", None)  # None: fitted before the layout was recorded
        if fitted is not None and list(fitted) != names:
            raise ConfigError(f"funnel: the {what} was fitted on channels {list(fitted)} in that order, the funnel "
                              f"runs {names}; its recall-source features would be misread — refit or reload it too")
    rows = getattr(ranker, "features_", None)
    if rows is not None and hasattr(rows, "user_rows_") and (
            rows.user_rows_.shape[0] != dataset.n_users or rows.item_rows_.shape[0] != dataset.n_items):
        raise ConfigError(f"funnel: the ranker was fitted on {rows.user_rows_.shape[0]} users × "
                          f"{rows.item_rows_.shape[0]} items, the catalogue has {dataset.n_users} × {dataset.n_items}")


def _config_dict(config: FunnelConfig) -> dict[str, Any]:
    import dataclasses

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, list | tuple):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {str(k): plain(x) for k, x in v.items()}
        return v

    return plain(config)


def _schema_of(dataset: Dataset) -> dict[str, Any]:
    return {name: {c: str(t) for c, t in table.schema.items()}
            for name, table in (("users", dataset.users), ("items", dataset.items),
                                ("interactions", dataset.interactions))}


@dataclass(frozen=True)
class RequestPlan:
    """What one request runs: the funnel config's request-time parts with an experiment's
    overrides applied (fit-time parts — models, channel parameters — cannot change per request)."""

    channels: tuple[ChannelSpec, ...]  # every fitted channel, in config order; n = 0 → not run
    merge: Any  # MergeSpec
    prerank_keep: int | None
    fusion_weights: dict[str, float]
    rerank: Any  # RerankSpec
    categories: sp.csr_matrix | None = None  # (I, V) item × value matrix of rerank.column (Funnel.plan_for)


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

