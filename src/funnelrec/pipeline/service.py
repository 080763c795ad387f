"""The online recommender: the fitted `Funnel` plus the state serving needs, HTTP-free.

`RecommenderService` is what the HTTP layer (serving/) and the closed-loop simulator call:

    svc = RecommenderService.from_artifact("artifacts/funnel", state_dir="state")
    out = svc.recommend("196", k=10, context={"time": 1700000000, "device": "tv"}, exclude=["50"])
    svc.feedback(out.request_id, "196", [{"item_id": out.item_ids[0], "type": "impression", "ts": 1700000000}])
    svc.reload("artifacts/funnel-v2")               # atomic swap of the whole funnel
    svc.reload("artifacts/funnel-v3", parts=["ranker"])  # or of one component

It holds
- the current model: one immutable `LoadedFunnel` (funnel + precomputed id arrays). `reload`
  builds the new one off to the side and swaps one reference; a request reads the reference
  once at its start, so requests in flight finish on the old funnel.
- the exposure store (per-user counting Bloom filters): impressions acknowledged by
  `feedback` are filtered out of later answers between merge and pre-rank;
- each request's online state is read once at its start and handed to `Funnel.run` as a
  `RequestState` value (exposure view, previous results for the cache channel, the client's
  `exclude` ids); the funnel calls nothing back and changes nothing it holds;
- the durable `EventLog`: `feedback` returns only after its events are committed;
- the result cache that feeds the "cache" recall channel (previous fine-ranked results);
- the real-time history (online/state.py): `feedback` appends each accepted consumption (click,
  like, cart, purchase, watch_time > 0 s; never an impression) after the event log commit; the
  next request reads it once and hands it to the funnel as `RequestState.history` — the triggers
  of every history-reading channel and the ranker's match features (fit-time row ∪ fresh items);
  an unknown user with fresh history is served personalised, not cold start;
- the experiment platform (optional): each request's assignment is returned and logged with
  the feedback of that request;
- per-stage latency histograms (`metrics`);
- the live catalogue (online/catalogue.py, same backend as the state): item upserts, deletes,
  hides and expiry times, user deletes. A request reads its version once; on a change the
  worker rebuilds a `LiveCatalogue` (the served funnel `with_items` every upserted item, the
  hide/delete/expiry rules checked per candidate in the filter stage) and uses it from then on.

State backends: nothing (in-memory; tests), `state_dir` (SQLite files: events.db, exposure.db,
results.db, history.db — the embedded default, survives restarts), or `redis_url` (exposure
filters, cached results and histories in Redis, shared by many workers; the event log stays a
local SQLite file).

Item keys: exposure filters, cached results and histories are keyed by the item's *external*
id, so they survive a reload that re-indexes the catalogue: an integer id is its own key, any
other id is its xxh64 hash as int64 (`item_key`).
"""

from __future__ import annotations

import bisect
import json
import logging
import os
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from funnelrec.core.errors import ArtifactRefused, ConfigError, DataError
from funnelrec.core.ids import item_key, item_keys
from funnelrec.core.types import PAD, RequestState
from funnelrec.filter.results import (  # the result caches live in filter/; their names stay importable here
    MemoryResultCache,  # noqa: F401
    RedisResultCache,  # noqa: F401
    ResultCache,
    SQLiteResultCache,  # noqa: F401
    build_state_stores,
)
from funnelrec.filter.store import ExposureStore
from funnelrec.online.catalogue import (
    Catalogue,
    CatalogueRules,
    UnknownEntity,
    item_frame,
    open_catalogue,
    rows_with_any,
    user_frame,
)
from funnelrec.online.features import FeatureConfig, FeatureService, build_feature_service
from funnelrec.online.follows import FollowStore, build_follow_store
from funnelrec.online.reloads import open_reload_broadcast
from funnelrec.online.state import HistoryStore, build_history_store, enters_history
from funnelrec.pipeline.eventlog import EVENT_TYPES, EventLog, FeedbackEvent
from funnelrec.pipeline.funnel import Funnel, Recommendation
from funnelrec.recall.base import RecallContext

_log = logging.getLogger(__name__)
#: the history-store key suffix of a user's rule events (filter/rules.py), beside its history
RULE_EVENTS_SUFFIX = "\x1frules"

#: upper bounds (ms) of the latency histogram buckets, as Prometheus `le` labels
LATENCY_BUCKETS_MS = (0.25, 0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 25, 35, 50, 75, 100, 250, 500, 1000, 2500)


# --------------------------------------------------------------------------------- config
@dataclass(frozen=True)
class ServiceConfig:
    state_dir: str | None = None  # None: in-memory state (lost on exit)
    redis_url: str | None = None  # exposure filters + cached results in Redis
    redis_prefix: str = "funnelrec:"
    max_in_flight: int = 64  # requests admitted at once; more get 503 (enforced by the HTTP layer)
    max_k: int = 500
    cache_n: int = 50  # fine-ranked results kept per user for the cache channel
    # which ones: "tail" = the ranked-but-unshown tail, positions k..k+cache_n-1 of the fused order
    # minus what was shown (Recommendation.tail_items); "shown" = the k returned (before 2026-12:
    # the exposure filter then removes them, kept for comparison: bench/cache_tail.py)
    cache_keep: str = "tail"
    history_n: int = 200  # recent consumptions kept per user (real-time history, online/state.py)
    remembered_requests: int = 100_000  # request ids kept for attributing feedback to experiments
    eventlog_synchronous: str = "FULL"  # FULL: fsync per feedback call; NORMAL: survives SIGKILL only
    # the event log (events.db) keeps the events of the last this many seconds, trimmed as feedback
    # arrives (pipeline/eventlog.py); None = everything is kept (the log grows with the traffic)
    eventlog_retention_s: int | None = None
    # an event more than this many seconds ahead of the server's clock is refused (422): one
    # future-dated impression would otherwise move the exposure window past every slice the user
    # has and wipe the filter. None = no bound (a simulation whose clock runs ahead of the wall's)
    max_future_s: int | None = 300
    # /admin/reload loads only artifacts under this directory (pickles run code when loaded);
    # `from_artifact` sets it to the served artifact's directory; None = any path (in-process use)
    artifact_dir: str | None = None
    # True: each variant's parameters are already fitted into the funnel this service runs (the
    # simulator fits one funnel per variant): assignments are recorded, parameters not re-applied
    experiments_fitted: bool = False
    # the feature service's definitions (online/features.py: windows, CTR prior, category column);
    # None = FeatureConfig() (no recent categories: that column is dataset-specific)
    features: FeatureConfig | None = None
    # the Redis Stream (key) every accepted feedback event is XADDed to when redis_url is set: the
    # bus `funnelrec learn --redis` tails (online/source.py RedisStreamSource); None = no stream
    redis_stream: str | None = "funnelrec:events"
    # with redis_url: how long an event id (the cross-replica idempotency claim) and a request's
    # assignment record are remembered in Redis (online/shared.py); a retry later is stored again
    redis_dedup_ttl_s: int = 86400
    # with redis_url: the stream keeps the last this many seconds of events, trimmed at each append
    # (online/shared.py); a learner further behind than that loses events and logs it. The
    # replicas' event logs keep everything unless eventlog_retention_s. None = the stream is never trimmed
    redis_stream_retention_s: int | None = 7 * 86400
    # a served directory of the online learner (online/served.py): a poll thread reloads the
    # version its CURRENT names, only the changed parts; None = no watch
    watch_dir: str | None = None
    watch_interval_s: float = 2.0
    # the start of this server run (ns since the epoch; the launcher's, shared by its workers):
    # reload records written since then are applied by every worker (online/reloads.py);
    # None = this service's own start
    started_ns: int | None = None
    # feedback on an item that is in neither the fitted catalogue nor the live one: "reject" (422,
    # counted in funnelrec_feedback_unknown_items) — else every made-up id would grow the
    # exposure filters, counters and histories without bound; "accept" = log and apply it anyway
    unknown_items: str = "reject"
    # dynamic batching (serving/app.py): up to this many /recommend requests that are waiting on
    # the event loop at once run as one `Funnel.run` batch (`recommend_many`); 1 = one by one
    max_batch: int = 8

    def __post_init__(self) -> None:
        if self.max_in_flight < 1:
            raise ConfigError("max_in_flight must be ≥ 1")
        if self.max_k < 1:
            raise ConfigError("max_k must be ≥ 1")
        if self.max_batch < 1:
            raise ConfigError(f"max_batch must be ≥ 1, got {self.max_batch}")
        if self.eventlog_retention_s is not None and self.eventlog_retention_s <= 0:
            raise ConfigError(f"eventlog_retention_s must be > 0 seconds (None = keep everything), "
                              f"got {self.eventlog_retention_s}")
        if self.cache_n < 0:
            raise ConfigError("cache_n must be ≥ 0")
        if self.unknown_items not in ("reject", "accept"):
            raise ConfigError(f"unknown_items must be 'reject' or 'accept', got {self.unknown_items!r}")
        if self.cache_keep not in ("tail", "shown"):
            raise ConfigError(f"cache_keep must be 'tail' or 'shown', got {self.cache_keep!r}")
        if isinstance(self.history_n, bool) or not isinstance(self.history_n, int) or self.history_n < 1:
            raise ConfigError(f"history_n must be an int ≥ 1, got {self.history_n!r}")


# --------------------------------------------------------------------------------- metrics
class LatencyHistogram:
    """Cumulative histogram of latencies (ms) over `LATENCY_BUCKETS_MS`, plus sum and count;
    thread-safe. `counts[i]` = observations ≤ bucket i (Prometheus semantics, +Inf last)."""

    def __init__(self, buckets: tuple[float, ...] = LATENCY_BUCKETS_MS) -> None:
        self.buckets = tuple(float(b) for b in buckets)
        self._raw = [0] * (len(self.buckets) + 1)
        self.sum = 0.0
        self.count = 0
        self._lock = threading.Lock()

    def observe(self, ms: float) -> None:
        i = bisect.bisect_left(self.buckets, ms)
        with self._lock:
            self._raw[i] += 1
            self.sum += ms
            self.count += 1

    def snapshot(self) -> tuple[list[int], float, int]:
        with self._lock:
            raw, s, n = list(self._raw), self.sum, self.count
        return list(np.cumsum(raw).tolist()), s, n


class ServiceMetrics:
    """Per-stage latency histograms (recall, merge, filter, rank, total, …) and event counters."""

    def __init__(self) -> None:
        self.stages: dict[str, LatencyHistogram] = {}
        self.events: dict[str, int] = dict.fromkeys(EVENT_TYPES, 0)
        self.cold_start = 0
        self.reloads = 0
        self.unknown_items = 0  # feedback events refused: their item is in no catalogue
        self._lock = threading.Lock()

    def observe_stages(self, timings_ms: Mapping[str, float]) -> None:
        for stage, ms in timings_ms.items():
            h = self.stages.get(stage)
            if h is None:
                with self._lock:
                    h = self.stages.setdefault(stage, LatencyHistogram())
            h.observe(ms)

    def count_events(self, types: Iterable[str]) -> None:
        with self._lock:
            for t in types:
                self.events[t] += 1

    def count_unknown_items(self, n: int) -> None:
        with self._lock:
            self.unknown_items += n


# --------------------------------------------------------------------------------- the model
@dataclass(frozen=True)
class LoadedFunnel:
    """A fitted funnel with the arrays a request needs, built once per (re)load."""

    funnel: Funnel
    version: str
    item_ids: np.ndarray  # (I,) external ids by dense index
    item_keys: np.ndarray  # (I,) int64 keys by dense index
    key_order: np.ndarray  # argsort of item_keys, for key → dense index
    sorted_keys: np.ndarray  # item_keys[key_order], built once (a request must not gather all I)
    has_cache_channel: bool  # a "cache" channel reads the user's previous results
    loaded_at: float
    plans: dict = field(default_factory=dict)  # experiment parameters → this funnel's RequestPlan

    def plan(self, params: dict[str, Any]) -> Any:
        """The funnel's plan for an assignment's parameters, built once per parameter set (a layer
        has a handful of variants; at most 256 kept) instead of once per request."""
        if not params:
            return self.funnel.default_plan_
        key = repr(sorted(params.items()))
        got = self.plans.get(key)
        if got is None:
            got = self.funnel.plan_for(params)
            if len(self.plans) < 256:
                got = self.plans.setdefault(key, got)
        return got

    @classmethod
    def build(cls, funnel: Funnel, version: str) -> LoadedFunnel:
        ids = funnel.dataset_.items["item_id"].to_numpy()
        keys = funnel.item_keys_
        has_cache = any(getattr(ch, "registered_name", "") == "cache" for ch in funnel.channels_.values())
        order = np.argsort(keys, kind="stable")
        return cls(funnel, version, ids, keys, order, keys[order], has_cache, time.time())

    def indices_of_keys(self, keys: np.ndarray) -> np.ndarray:
        """Dense indices of item keys; -1 where the key is not in this catalogue."""
        sorted_keys = self.sorted_keys
        if len(sorted_keys) == 0:
            return np.full(len(keys), -1, np.int64)
        pos = np.minimum(np.searchsorted(sorted_keys, keys), len(sorted_keys) - 1)
        found = sorted_keys[pos] == keys
        return np.where(found, self.key_order[pos], -1)

    def indices_of_ids(self, item_ids: list) -> np.ndarray:
        """Dense indices of external item ids (-1 = not in the catalogue)."""
        return self.indices_of_keys(item_keys(np.asarray(item_ids, dtype=object))) if item_ids else np.empty(0, np.int64)


class StoreExposure:
    """A user's exposure-filter view at request time: `contains(keys)` asks the store (a Bloom
    filter per user: false positives possible, no false negatives)."""

    __slots__ = ("store", "user_key", "now")

    def __init__(self, store: ExposureStore, user_key: str, now: int) -> None:
        self.store, self.user_key, self.now = store, user_key, now

    def contains(self, keys: np.ndarray) -> np.ndarray:
        return self.store.filter(self.user_key, keys, self.now)


@dataclass
class _Prepared:
    """One request between `RecommenderService._prepare` and `_finish` (see `recommend_many`)."""

    t0: float
    cur: LoadedFunnel
    uid: str
    user_idx: int
    k: int
    rctx: RecallContext
    plan: Any
    state: RequestState
    timings: dict[str, float]
    record: dict[str, Any]
    debug: bool  # the run's: debug or explain
    show_filtered: bool  # debug: the answer lists what the exposure filter removed
    fields: list[str] | None
    tail: int
    batch_key: tuple | None  # requests with equal keys can share one Funnel.run; None = alone


def _stack_states(states: list[RequestState]) -> RequestState:
    """One batch RequestState from single-user ones (rows in order; a field absent everywhere
    stays None, else a missing row is None — what `Funnel.run` reads as "nothing for this user")."""
    out = {}
    for name in ("history", "exclude", "exposure", "cached", "follows"):
        rows = [getattr(s, name) for s in states]
        out[name] = None if all(r is None for r in rows) else [None if r is None else r[0] for r in rows]
    return RequestState(**out)


@dataclass
class ServedRecommendation:
    """One answer of the service: the funnel's `Recommendation` plus serving facts."""

    request_id: str
    user_id: str
    item_ids: list  # external ids, best first
    rec: Recommendation
    experiments: dict[str, Any]
    model_version: str
    filtered_ids: list = field(default_factory=list)
    attributes: list | None = None  # per item {column: value} of the asked `fields` (None: not asked)

    def to_dict(self, debug: bool = False, explain: bool = False) -> dict[str, Any]:
        """The JSON-able answer (per-stage times are always included). `explain` adds, per item,
        how it was scored — the pre-rank score, each task's score, the fused score, its position
        in the fused order before the re-ranker and after it — and the fusion weights used;
        `debug` adds that too, plus what the exposure filter removed and the candidate counts."""
        rec = self.rec
        names = rec.recall_channels
        rscores = rec.recall_scores
        explain = (explain or debug) and rec.fused_positions is not None
        tasks = {t: v.tolist() for t, v in rec.task_scores.items()} if explain else {}
        pre = rec.prerank_scores.tolist() if explain and rec.prerank_scores is not None else None
        items = []
        rrows = rscores.tolist() if rscores is not None else None  # Python floats: no per-cell numpy scalars
        for pos, (iid, s, ch) in enumerate(zip(self.item_ids, rec.scores.tolist(), rec.channels)):
            it: dict[str, Any] = {"item_id": iid, "score": s, "channels": ch}
            if rrows is not None:
                it["recall_scores"] = {c: v for c, v in zip(names, rrows[pos]) if v == v}  # v == v: not NaN
            if explain:
                it["explain"] = {"prerank_score": None if pre is None else pre[pos],
                                 "task_scores": {t: v[pos] for t, v in tasks.items()},
                                 "fused_score": s, "position_before_rerank": int(rec.fused_positions[pos]),
                                 "position": pos}
            if self.attributes is not None:
                it["attributes"] = self.attributes[pos]
            items.append(it)
        out: dict[str, Any] = {
            "request_id": self.request_id,
            "user_id": self.user_id,
            "cold_start": rec.cold_start,
            "note": "unknown user or empty history: non-personalized results" if rec.cold_start else None,
            "items": items,
            "experiments": self.experiments,
            "model_version": self.model_version,
            "timings_ms": rec.timings_ms,
        }
        if explain:
            out["fusion_weights"] = dict(rec.fusion_weights)
        if debug:
            out["debug"] = {
                "filtered": self.filtered_ids,
                **{k: v for k, v in rec.debug.items() if k != "filtered"},
            }
        return out


def item_attributes(items: Any, idx: np.ndarray, fields: list[str]) -> list[dict[str, Any]]:
    """{column: value} of each item in `idx` (dense indices into the items table) for the asked
    `fields` (`/recommend?fields=title,genre`); an unknown column is a DataError naming it."""
    fields = list(dict.fromkeys(f for f in fields if f))
    known = [c for c in items.columns if c != "item_idx"]
    bad = [f for f in fields if f not in known]
    if bad:
        raise DataError(f"fields: {bad[0]!r} is not an item column; the items have: {', '.join(known)}")
    return items.select(fields)[np.asarray(idx, np.int64)].to_dicts() if fields else [{} for _ in idx]


# --------------------------------------------------------------------------------- the service
def _check_experiments(platform: Any, funnel: Funnel) -> None:
    """Every parameter an experiment or rollout sets must be one the funnel applies per request;
    otherwise its users would silently get the default (ConfigError naming the parameter)."""
    if platform is None:
        return
    from funnelrec.experiments import ExperimentPlatform
    from funnelrec.pipeline.funnel import request_params

    ExperimentPlatform(platform.config, request_params(funnel.config, funnel.tasks_))


class RecommenderService:
    """The funnel behind an online API (see the module doc). Thread-safe."""

    def __init__(self, funnel: Funnel, config: ServiceConfig | None = None, experiments: Any = None,
                 version: str = "initial",
                 loaded_from: str | Path | None = None) -> None:
        self.config = config or ServiceConfig()
        self.experiments = experiments
        if not self.config.experiments_fitted:
            _check_experiments(experiments, funnel)
        self.metrics = ServiceMetrics()
        self._current = LoadedFunnel.build(funnel, version)
        self._reload_lock = threading.Lock()
        # the versions this service loaded, oldest first (the console's reload history): the
        # first load, then every /admin/reload and served-dir pick-up; bounded
        self.reload_log: deque[dict[str, Any]] = deque(
            [{"version": version, "at": self._current.loaded_at, "parts": None, "source": "start"}], maxlen=100)
        self._requests: OrderedDict[str, tuple[str, str]] = OrderedDict()  # request id → (user, experiments json)
        self._requests_lock = threading.Lock()
        cfg = self.config
        state = Path(cfg.state_dir) if cfg.state_dir else None
        if state is not None:
            state.mkdir(parents=True, exist_ok=True)
        self.events = EventLog(state / "events.db" if state else ":memory:", synchronous=cfg.eventlog_synchronous,
                               retention_s=cfg.eventlog_retention_s)
        self.exposure: ExposureStore
        self.results: ResultCache
        backend = "redis" if cfg.redis_url else "sqlite" if state is not None else "memory"
        self.exposure, self.results = build_state_stores(backend, state_dir=state, redis_url=cfg.redis_url,
                                                         prefix=cfg.redis_prefix)
        # each user's recent consumptions (online/state.py), in the same backend: what a click
        # changes in the next request of any worker
        self.history: HistoryStore = build_history_store(backend, state_dir=state, redis_url=cfg.redis_url,
                                                         prefix=cfg.redis_prefix, history_n=cfg.history_n)
        # the live catalogue (online/catalogue.py) in the same backend, and this worker's view of it
        self.catalogue: Catalogue = open_catalogue(backend, state_dir=state, redis_url=cfg.redis_url,
                                                   prefix=cfg.redis_prefix)
        self._live: LiveCatalogue | None = None
        self._live_lock = threading.Lock()
        self._loaded_from = loaded_from  # the artifact directory this funnel came from (watch: what is loaded)
        self._init_online_learning()
        self._share_experiments()
        # a reload on this worker reaches the others through the same backend (online/reloads.py)
        self._reloads = open_reload_broadcast(backend, self._reload_checked, state_dir=state,
                                              redis_url=cfg.redis_url, prefix=cfg.redis_prefix,
                                              since_ns=cfg.started_ns)
        # windowed counters, recent categories, profiles (online/features.py) in the same backend;
        # `feedback` updates them, training reads the same definitions from the event log
        self.features: FeatureService = build_feature_service(
            backend, cfg.features, state_dir=state, redis_url=cfg.redis_url, prefix=cfg.redis_prefix,
            items=funnel.dataset_.items, users=funnel.dataset_.users)
        # live follow / unfollow edges (online/follows.py) for the author channel, same backend
        self.follows: FollowStore = build_follow_store(backend, state_dir=state, redis_url=cfg.redis_url,
                                                       prefix=cfg.redis_prefix)

    @classmethod
    def from_artifact(cls, path: str | Path, state_dir: str | Path | None = None, redis_url: str | None = None,
                      experiments: str | Path | None = None, config: ServiceConfig | None = None) -> RecommenderService:
        """Load a funnel saved by `Funnel.save`; `experiments` is an experiments YAML (optional)."""
        base = config or ServiceConfig()
        cfg = ServiceConfig(**{**base.__dict__, "state_dir": str(state_dir) if state_dir else base.state_dir,
                               "redis_url": redis_url or base.redis_url,
                               "artifact_dir": base.artifact_dir or str(Path(path).resolve().parent)})
        platform = None
        if experiments is not None:
            from funnelrec.experiments import ExperimentPlatform

            platform = ExperimentPlatform.from_yaml(experiments)
        return cls(Funnel.load(path), cfg, platform, version=_version_of(path), loaded_from=path)

    # ------------------------------------------------------------------ model swap
    @property
    def current(self) -> LoadedFunnel:
        return self._current

    def reload(self, path: str | Path, parts: list[str] | None = None) -> str:
        """Load the funnel artifact at `path` (all of it, or only `parts`, e.g. ["ranker"], the
        rest kept from the serving funnel) and swap it in atomically; returns its version.
        Requests that already started finish on the old funnel; a failed load leaves the old
        one serving."""
        version = self._reload_checked(path, parts)
        if self._reloads is not None:  # every other worker and replica loads it too (online/reloads.py)
            self._reloads.publish(path, parts)
        return version

    def _reload_checked(self, path: str | Path, parts: list[str] | None) -> str:
        allowed = self.config.artifact_dir
        if allowed is not None and not Path(path).resolve().is_relative_to(Path(allowed).resolve()):
            raise ArtifactRefused(f"{path}: outside the artifact directory {allowed}; this server reloads only from there")
        return self._swap_in(path, parts)

    def _swap_in(self, path: str | Path, parts: list[str] | None) -> str:
        with self._reload_lock:
            funnel = Funnel.load(path, parts=parts, base=self._current.funnel if parts else None)
            if not self.config.experiments_fitted:
                _check_experiments(self.experiments, funnel)  # the new funnel must run every experiment
            loaded = LoadedFunnel.build(funnel, _version_of(path, parts))
            self._current = loaded  # one reference assignment: atomic under the GIL
            self.metrics.reloads += 1
            self.reload_log.append({"version": loaded.version, "at": loaded.loaded_at, "parts": parts,
                                    "source": str(path)})
            return loaded.version

    # ------------------------------------------------------------------ requests
    def request_state(self, cur: LoadedFunnel, uid: str, user_idx: int, now: int,
                      exclude_ids: list | None = None) -> tuple[RequestState, dict[str, float]]:
        """The online state of one request, read once at its start: the user's real-time history
        (`recent_items`), exposure view, previous results (for the cache channel; also for an
        unknown user with fresh history) and the client's exclusions."""
        timings: dict[str, float] = {}
        t1 = time.perf_counter()
        fresh = self.recent_items(cur, uid)
        history = None if fresh is None else [fresh]
        timings["history_read"] = (time.perf_counter() - t1) * 1e3
        cached = [None] if cur.has_cache_channel else None
        if cur.has_cache_channel and (user_idx >= 0 or history is not None):
            t1 = time.perf_counter()
            got = self.results.get(uid)
            if got is not None:
                idx = cur.indices_of_keys(got[0])
                keep = idx != PAD
                cached = [(idx[keep], got[1][keep])]
            timings["cache_read"] = (time.perf_counter() - t1) * 1e3
        exclude = None
        if exclude_ids:
            idx = cur.indices_of_ids(list(exclude_ids))
            exclude = [idx[idx >= 0]]
        ruled = self.rule_exclusions(cur, uid, now)  # filter/rules.py: e.g. what was bought lately
        if ruled is not None:
            exclude = [ruled] if exclude is None else [np.union1d(exclude[0], ruled)]
        state = RequestState(history=history, exclude=exclude, exposure=[StoreExposure(self.exposure, uid, now)],
                             cached=cached, follows=self.live_follows(cur, uid))
        return state, timings

    def rule_exclusions(self, cur: LoadedFunnel, uid: str, now: int) -> np.ndarray | None:
        """Dense indices the config's `rules` remove for this user now (filter/rules.py), from
        the user's rule events (the history store under `uid + RULE_EVENTS_SUFFIX`: only events
        of the rules' types, so a purchase is not pushed out by the views after it); None
        without rules or without such an item."""
        from funnelrec.filter.rules import rule_exclusions

        cfg = cur.funnel.config
        if not cfg.rules:
            return None
        h = self.history.recent(uid + RULE_EVENTS_SUFFIX)
        keys = rule_exclusions(cfg.rules, h.keys, h.ts, h.type_names(), now, cfg.labels.meaning())
        idx = cur.indices_of_keys(keys)
        idx = idx[idx >= 0]
        return idx if len(idx) else None

    def live_follows(self, cur: LoadedFunnel, uid: str) -> list | None:
        """`RequestState.follows` of one user: the follow store's edges (author id → follows),
        read only when the funnel has an author channel; None when there are none."""
        if not any(getattr(ch, "registered_name", "") == "author" for ch in cur.funnel.channels_.values()):
            return None
        got = self.follows.get(uid)
        return [got] if got else None

    def _update_follows(self, uid: str, evs: list[FeedbackEvent]) -> None:
        """follow / unfollow events (item_id = the author id) into the follow store."""
        edges = [(e.item_id, e.type == "follow", e.ts) for e in evs if e.type in ("follow", "unfollow")]
        if edges:
            self.follows.update(uid, edges)

    def recent_items(self, cur: LoadedFunnel, uid: str) -> np.ndarray | None:
        """The user's real-time history (one read of the history store) as dense item indices of
        `cur`, oldest first, each item once at its latest consumption (the order the vector
        tower reads); items outside `cur`'s catalogue are dropped. None when nothing is left."""
        h = self.history.recent(uid)
        if not len(h):
            return None
        idx = cur.indices_of_keys(h.keys)
        rev = idx[idx >= 0][::-1]
        _, last = np.unique(rev, return_index=True)  # first in the reversed order = latest consumption
        idx = rev[np.sort(last)][::-1].astype(np.int64)
        return idx if len(idx) else None

    def recommend(self, user_id: Any, k: int = 10, context: Mapping[str, Any] | None = None,
                  debug: bool = False, exclude: list | None = None, explain: bool = False,
                  filters: Mapping[str, list] | None = None, fields: list[str] | None = None) -> ServedRecommendation:
        """Recommend k items to `user_id` (external id; unknown → cold start), never any of the
        external item ids in `exclude`, nor what the user's exposure filter says was shown, nor a
        hidden, deleted or expired item; with `filters` ({column: [values]}) only items with any
        of the listed values of each named column."""
        p = self._prepare(user_id, k, context, debug, exclude, explain, filters, fields)
        return self._finish(p, self._run_alone(p))

    @staticmethod
    def _run_alone(p: _Prepared) -> Recommendation:
        return p.cur.funnel.recommend(user_idx=p.user_idx, k=p.k, context=p.rctx, state=p.state, plan=p.plan,
                                      debug=p.debug, tail=p.tail)

    def recommend_many(self, requests: list[Mapping[str, Any]]) -> list[ServedRecommendation | Exception]:
        """`recommend(**r)` for each of `requests`, in order, each answer or the exception that
        request raised. Requests that can share one `Funnel.run` batch do — the same funnel
        version, k, clock second, region, other context and experiment parameters, no debug or
        explain — and each gets what it would alone (`Funnel.run` answers a batch row by row;
        tests/serving/test_batching.py). A batch costs much less than its requests one by one:
        2.5 vs 5.0 ms per user at 8 on the 1M-item bench funnel (docs/BENCHMARKS.md). A batch that
        fails is retried one by one, so one request's error stays its own."""
        # a user twice: the later request starts after the earlier one's answer (and cache write)
        chunks: list[list[Mapping[str, Any]]] = [[]]
        seen: set[str] = set()
        for r in requests:
            uid = str(r.get("user_id"))
            if uid in seen:
                chunks.append([])
                seen = set()
            seen.add(uid)
            chunks[-1].append(r)
        if len(chunks) > 1:
            return [a for c in chunks for a in self.recommend_many(c)]
        prepared: list[_Prepared | Exception] = []
        for r in requests:
            try:
                prepared.append(self._prepare(**r))
            except Exception as e:  # noqa: BLE001 - handed back to that request's caller
                prepared.append(e)
        out: list[ServedRecommendation | Exception | None] = [None] * len(prepared)
        groups: dict[tuple, list[int]] = {}
        for i, p in enumerate(prepared):
            if isinstance(p, Exception):
                out[i] = p
            else:
                groups.setdefault(p.batch_key if p.batch_key is not None else ("alone", i), []).append(i)
        for rows in groups.values():
            ps = [prepared[i] for i in rows]
            recs = None
            if len(ps) > 1:
                try:
                    recs = ps[0].cur.funnel.run(np.array([p.user_idx for p in ps], np.int64), ps[0].k,
                                                context=ps[0].rctx, state=_stack_states([p.state for p in ps]),
                                                plan=ps[0].plan, tail=ps[0].tail)
                except Exception:  # noqa: BLE001 - one by one below: each request gets its own answer or error
                    recs = None
            for j, (i, p) in enumerate(zip(rows, ps)):
                try:
                    out[i] = self._finish(p, recs[j] if recs is not None else self._run_alone(p))
                except Exception as e:  # noqa: BLE001
                    out[i] = e
        return out  # type: ignore[return-value]

    def _prepare(self, user_id: Any, k: int = 10, context: Mapping[str, Any] | None = None,
                 debug: bool = False, exclude: list | None = None, explain: bool = False,
                 filters: Mapping[str, list] | None = None, fields: list[str] | None = None) -> _Prepared:
        """Everything of a request before `Funnel.run`: validation, the funnel version, the
        experiment assignment, the request's context and its online state."""
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or not 1 <= k <= self.config.max_k:
            raise DataError(f"k must be an int in [1, {self.config.max_k}], got {k!r}")
        t0 = time.perf_counter()
        cur = self._current  # read once: the whole request runs on this funnel
        cur, live = self.live_catalogue(cur)  # … with the live catalogue's items (one version read)
        f = cur.funnel
        uid = str(user_id)
        ctx = dict(context or {})
        now = ctx.get("time")
        if now is None:
            now = int(time.time())
        elif isinstance(now, bool) or not isinstance(now, int | float):
            raise DataError(f"context.time must be unix seconds, got {now!r}")
        now = int(now)
        timings: dict[str, float] = {}
        record: dict[str, Any] = {}
        plan = None
        extra = {k_: v for k_, v in ctx.items() if k_ not in ("time", "region")}
        if self.experiments is not None:
            t1 = time.perf_counter()
            # scheduled ramps follow the platform's clock (no restart); with Redis they read every
            # replica's feedback (the stream) and share their anchor and rollbacks (online/shared.py)
            if self.experiments.tick(self._ramp_events) and self._ramp_key is not None:
                self._record_stops()
            a = self.experiments.assign(uid)
            record = a.record
            if not self.config.experiments_fitted:
                extra["experiment_params"] = a.params
                plan = cur.plan(a.params)
            timings["experiments"] = (time.perf_counter() - t1) * 1e3
        region = ctx.get("region")
        rctx = RecallContext(time=now, region=None if region is None else str(region), extra=extra)
        deleted = uid in live.deleted_users
        user_idx = -1 if deleted else f.dataset_.user_ids.index(user_id)
        state, st = self.request_state(cur, uid, user_idx, now, exclude)
        if deleted:  # a deleted user is served as unknown: neither their history nor their cache
            state = replace(state, history=None, cached=None if state.cached is None else [None])
        state = live.restrict(state, cur, now, filters)  # hidden / deleted / expired items, attribute filters
        timings.update(st)
        tail = self.config.cache_n if self.config.cache_keep == "tail" else 0
        batch_key = None
        if not (debug or explain):
            try:
                batch_key = (id(cur), int(k), now, rctx.region, json.dumps(extra, sort_keys=True))
            except (TypeError, ValueError):  # a context that does not serialize is served alone
                batch_key = None
        return _Prepared(t0, cur, uid, user_idx, int(k), rctx, plan, state, timings, record, debug or explain,
                         debug, fields, tail, batch_key)

    def _finish(self, p: _Prepared, rec: Recommendation) -> ServedRecommendation:
        """Everything of a request after `Funnel.run`: ids, the cache channel's write, the request
        record for feedback attribution, timings and metrics."""
        cur, uid, user_idx, state, debug, timings = p.cur, p.uid, p.user_idx, p.state, p.show_filtered, p.timings
        record, fields, t0 = p.record, p.fields, p.t0
        request_id = uuid.uuid4().hex
        keys = cur.item_keys
        tail = p.tail
        out_ids = cur.item_ids[rec.items].tolist()
        filtered = cur.item_ids[rec.filtered].tolist() if debug else []
        if self.config.cache_n and (user_idx >= 0 or state.history is not None) and len(rec.items):
            t1 = time.perf_counter()
            if tail:  # the ranked-but-unshown tail (may be empty: then nothing stale stays cached)
                self.results.put(uid, keys[rec.tail_items], rec.tail_scores)
            else:
                self.results.put(uid, keys[rec.items[: self.config.cache_n]], rec.scores[: self.config.cache_n])
            timings["cache_write"] = (time.perf_counter() - t1) * 1e3
        record_json = json.dumps(record, sort_keys=True) if record else None
        with self._requests_lock:
            self._requests[request_id] = (uid, record_json)
            while len(self._requests) > self.config.remembered_requests:
                self._requests.popitem(last=False)
        if record_json is not None and self._stream is not None:  # the feedback may reach another replica
            self._remember_request(request_id, uid, record_json)
        rec.timings_ms.update(timings)
        rec.timings_ms["service_total"] = (time.perf_counter() - t0) * 1e3
        self.metrics.observe_stages(rec.timings_ms)
        if rec.cold_start:
            self.metrics.cold_start += 1
        attrs = None if not fields else item_attributes(cur.funnel.dataset_.items, rec.items, fields)
        return ServedRecommendation(request_id, uid, out_ids, rec, record, cur.version, filtered, attrs)

    def similar(self, item_id: Any, k: int = 10, channel: str | None = None) -> dict[str, Any] | None:
        """Item-to-item: the k items most similar to the external `item_id` from the funnel's
        itemCF / Swing / EASE / vector neighbours (`Funnel.similar`); None when the item is not
        in the catalogue."""
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or not 1 <= k <= self.config.max_k:
            raise DataError(f"k must be an int in [1, {self.config.max_k}], got {k!r}")
        cur, live = self.live_catalogue(self._current)  # new items (vector neighbours) and the rules
        idx = cur.funnel.dataset_.item_ids.index(item_id)
        if idx < 0:
            return None
        extra = min(len(live.rules), self.config.max_k)  # room for neighbours the rules remove
        items, scores, channels = cur.funnel.similar(idx, int(k) + extra, channel)
        if len(live.rules):
            keep = np.flatnonzero(~live.rules.blocked(cur.item_keys[items], time.time()))[: int(k)]
            items, scores, channels = items[keep], scores[keep], [channels[i] for i in keep]
        return {"item_id": cur.item_ids[[idx]].tolist()[0],
                "items": [{"item_id": iid, "score": sc, "channels": ch}
                          for iid, sc, ch in zip(cur.item_ids[items].tolist(), scores.tolist(), channels)],
                "model_version": cur.version}

    def feedback(self, request_id: str | None, user_id: Any, events: Iterable[Mapping[str, Any]],
                 idempotency_key: str | None = None) -> dict[str, int]:
        """Append the events to the durable log (committed when this returns), then add the
        impressions to the user's exposure filter. Each event: {item_id, type, value?, ts?,
        event_id?}. An event's id is the client's `event_id`, else — when the feedback names its
        request — "request_id:item:type:ts"; a repeat of a logged id is acknowledged (counted in
        "duplicates") but changes nothing: not the log, the exposure filter, history or counters.
        `idempotency_key` (the HTTP Idempotency-Key header; nginx sets one per client request,
        the same on every upstream it retries on) gives the id "key:index" to events that have
        neither an `event_id` nor a request + ts to derive one from — a retried call without ids
        is then a repeat too. With Redis the repeat is
        recognised whichever replica saw the first attempt (online/shared.py)."""
        uid = str(user_id)
        rid = None if request_id is None else str(request_id)
        exp_json = None
        if rid is not None:
            with self._requests_lock:
                hit = self._requests.get(rid)
            if hit is None and self._stream is not None:  # served by another replica
                hit = self._recalled_request(rid)
            if hit is not None and hit[0] == uid:
                exp_json = hit[1]
        now = int(time.time())
        evs: list[FeedbackEvent] = []
        means = self._current.funnel.config.labels.meaning()  # a team's own event names (labels.map)
        for i, e in enumerate(events):
            try:
                ts = e.get("ts")
                ts = now if ts is None else int(ts)
                if self.config.max_future_s is not None and ts > now + self.config.max_future_s:
                    raise DataError(f"events[{i}].ts = {ts} is {ts - now} s ahead of the server's clock "
                                    f"(at most {self.config.max_future_s} s; ts is unix seconds)")
                eid = e.get("event_id")
                # the most stable id first: request + item + type + the client's ts repeats on any
                # retry (the client's own too, which nginx gives a new Idempotency-Key); the key
                # covers events without a request or a ts (a server ts differs per attempt)
                if eid is None and rid is not None and e.get("ts") is not None:
                    eid = f"{rid}:{e['item_id']}:{e['type']}:{ts}"
                elif eid is None and idempotency_key is not None:
                    eid = f"{idempotency_key}:{i}"
                elif eid is None and rid is not None:
                    eid = f"{rid}:{e['item_id']}:{e['type']}:{ts}"
                etype = means.get(str(e["type"]), str(e["type"]))
                evs.append(FeedbackEvent(rid, uid, str(e["item_id"]), etype, float(e.get("value", 1.0)),
                                         ts, exp_json, None if eid is None else str(eid)))
            except (KeyError, TypeError, ValueError, OverflowError, DataError) as err:
                raise DataError(f"events[{i}]: {err}") from None  # which event, in the client's words
        if self.config.unknown_items == "reject":
            self._refuse_unknown_items(evs)
        n_sent = len(evs)
        local_new = self.events.append_new(evs)  # durable before anything else; repeats left out
        evs = self._publish_stream(evs, local_new)  # with Redis: the repeats of any replica left out
        impressions: dict[int, list[int]] = {}
        for e in evs:
            if e.type == "impression":
                impressions.setdefault(e.ts, []).append(item_key(e.item_id))
        for ts, ks in impressions.items():
            self.exposure.add(uid, np.asarray(ks, np.int64), ts)
        self._append_history(uid, evs)
        self._update_features(evs)
        self._update_follows(uid, evs)
        self.metrics.count_events(e.type for e in evs)
        return {"logged": len(evs), "impressions": sum(len(v) for v in impressions.values()),
                "duplicates": n_sent - len(evs)}

    def _refuse_unknown_items(self, evs: list[FeedbackEvent]) -> None:
        """DataError (→ 422) naming the first event whose item is in no catalogue (fitted or
        live); nothing of the call is stored. follow / unfollow name an author, not an item."""
        cur, _ = self.live_catalogue(self._current)
        ids = cur.funnel.dataset_.item_ids
        bad = [i for i, e in enumerate(evs) if e.type not in ("follow", "unfollow") and ids.index(e.item_id) < 0]
        if bad:
            self.metrics.count_unknown_items(len(bad))
            raise DataError(f"events[{bad[0]}].item_id {evs[bad[0]].item_id!r} is not in the catalogue "
                            f"({len(bad)} of {len(evs)} events): upsert the item first (PUT /items/{{item_id}}); "
                            "nothing of this call was stored")

    # ------------------------------------------------------------------ live catalogue (issue #10)
    def live_catalogue(self, cur: LoadedFunnel) -> tuple[LoadedFunnel, LiveCatalogue]:
        """`cur` with the live catalogue applied, and its rules. One version read per call; the
        overlay (`Funnel.with_items` over every upserted item, the rules) is rebuilt only when
        the catalogue's version or the served funnel changed — by the first request after it."""
        version = self.catalogue.version()
        live = self._live
        if live is None or live.version != version or live.base is not cur:
            with self._live_lock:
                live = self._live
                if live is None or live.version != version or live.base is not cur:
                    live = self._live = LiveCatalogue.build(cur, self.catalogue)
        return live.loaded, live

    def upsert_items(self, rows: list[Mapping[str, Any]], now: int | None = None) -> dict[str, int]:
        """Upsert items ({item_id, attributes?, expires_at?}; online/catalogue.py); attributes are
        checked against the items table first (a bad column or value is a DataError naming it)."""
        now = int(time.time()) if now is None else int(now)
        table = self._current.funnel.dataset_.items
        item_frame([{"item_id": r.get("item_id"), **dict(r.get("attributes") or {})} for r in rows], table)
        return {"catalogue_version": self.catalogue.upsert_items(rows, now), "upserted": len(rows)}

    def _check_item(self, item_id: Any) -> None:
        cur, live = self.live_catalogue(self._current)
        if cur.funnel.dataset_.item_ids.index(item_id) < 0 and str(item_id) not in live.item_ids:
            raise UnknownEntity(f"item {item_id!r} is not in the catalogue")

    def delete_item(self, item_id: Any) -> dict[str, int]:
        self._check_item(item_id)
        return {"catalogue_version": self.catalogue.delete_item(item_id, time.time())}

    def hide_item(self, item_id: Any, hidden: bool = True) -> dict[str, int]:
        self._check_item(item_id)
        return {"catalogue_version": self.catalogue.hide_item(item_id, time.time(), hidden)}

    def upsert_users(self, rows: list[Mapping[str, Any]]) -> dict[str, int]:
        """Upsert users ({user_id, attributes?}: users-table columns, checked like items'). A user
        the fit never saw becomes known on the next request (`Funnel.with_users`): the ranker and
        pre-ranker read its profile; an upsert undoes a delete."""
        user_frame([{"user_id": r.get("user_id"), **dict(r.get("attributes") or {})} for r in rows],
                   self._current.funnel.dataset_.users)
        return {"catalogue_version": self.catalogue.upsert_users(rows), "upserted": len(rows)}

    def delete_user(self, user_id: Any) -> dict[str, int]:
        _, live = self.live_catalogue(self._current)
        if self._current.funnel.dataset_.user_ids.index(user_id) < 0 and str(user_id) not in live.user_ids:
            raise UnknownEntity(f"user {user_id!r} is not in the catalogue")
        return {"catalogue_version": self.catalogue.delete_user(user_id)}

    def _append_history(self, uid: str, evs: list[FeedbackEvent]) -> int:
        """The consumptions of one accepted feedback call (`enters_history`: no impression, no
        watch_time of 0 s) appended to the user's real-time history — after the event log
        commit, so every history entry is a logged event. Returns how many."""
        pos = [e for e in evs if enters_history(e.type, e.value)]
        if pos:
            self.history.append(uid, np.fromiter((item_key(e.item_id) for e in pos), np.int64, len(pos)),
                                np.fromiter((e.ts for e in pos), np.int64, len(pos)), [e.type for e in pos])
        cfg = self._current.funnel.config
        if cfg.rules:  # the rule stage's own record: only the rules' event types
            from funnelrec.filter.rules import rule_types

            kept = [e for e in pos if e.type in rule_types(cfg.rules, cfg.labels.meaning())]
            if kept:
                self.history.append(uid + RULE_EVENTS_SUFFIX, np.fromiter((item_key(e.item_id) for e in kept), np.int64,
                                                                          len(kept)),
                                    np.fromiter((e.ts for e in kept), np.int64, len(kept)), [e.type for e in kept])
        return len(pos)

    def warm_up(self, k: int = 10) -> float:
        """Run the request path once (a known user with history, no state read or written), so
        that the first client request does not pay for lazy set-up (numba caches, torch's first
        call, page faults of mmapped parts); returns its ms. The HTTP app serves — and /health
        says "ready" — only after it."""
        f = self._current.funnel
        t0 = time.perf_counter()
        users = np.flatnonzero(np.diff(f.stats_.history.indptr) > 0)
        f.recommend(user_idx=int(users[0]) if len(users) else -1, k=min(k, max(1, f.dataset_.n_items)))
        self.warmed_up_ms = (time.perf_counter() - t0) * 1e3
        return self.warmed_up_ms

    # ------------------------------------------------------------------ feature service (issue #10)
    def _update_features(self, evs: list[FeedbackEvent]) -> None:
        """Count one accepted feedback call into the feature service — after the event log commit,
        so the counters never hold an event the log (what training reads) does not."""
        ds = self._current.funnel.dataset_
        self.features.bind(ds.items, ds.users)
        self.features.update(evs)

    def item_features(self, item_id: Any, now: int | None = None) -> dict[str, Any] | None:
        """The item's online features at `now` (default: the clock): window counts and smoothed
        CTRs (online/features.py). None for an id neither in the catalogue (served or live) nor
        seen in events."""
        now = int(time.time()) if now is None else now
        cur, live = self.live_catalogue(self._current)
        known = cur.funnel.dataset_.item_ids.index(item_id) >= 0 or str(item_id) in live.item_ids
        if not known and not self.features.seen_item(item_id):
            return None
        row = self.features.item_features([item_id], now).row(0, named=True)
        return {"item_id": row.pop("item_id"), "now": now, "features": row}

    def user_features(self, user_id: Any, now: int | None = None) -> dict[str, Any] | None:
        """The user's online features at `now`: window counts, recent categories, profile. None
        for an id neither in the catalogue nor seen in events."""
        now = int(time.time()) if now is None else now
        ds = self._current.funnel.dataset_
        self.features.bind(ds.items, ds.users)
        _, live = self.live_catalogue(self._current)
        known = ds.user_ids.index(user_id) >= 0 or str(user_id) in live.user_ids
        if not known and not self.features.seen_user(user_id):
            return None
        return self.features.user_features(user_id, now).to_dict()

    def health(self) -> dict[str, Any]:
        cur = self._current
        warm = getattr(self, "warmed_up_ms", None)
        out = {"status": "ok", "ready": warm is not None, "warm_up_ms": warm, "model_version": cur.version,
                "loaded_at": cur.loaded_at, "n_items": int(len(cur.item_ids)),
                "n_users": int(cur.funnel.dataset_.n_users)}
        if self._watcher is not None:
            out["served"] = self._watcher.health()  # the learner's version, offset, lag
        out["pid"] = os.getpid()  # which worker answered: after a reload every one reports the new version
        if self._reloads is not None:
            out["reloads"] = self._reloads.health()
        return out

    def close(self) -> None:
        if self._watcher is not None:
            self._watcher.stop()
        if self._reloads is not None:
            self._reloads.stop()
        if self._stream is not None:
            self._stream.close()
        self.catalogue.close()
        self.events.close()
        self.exposure.close()
        self.results.close()
        self.history.close()
        self.features.close()
        self.follows.close()


    # ------------------------------------------------------------------ online learning (issue #10 item 4)
    def _init_online_learning(self) -> None:
        """The Redis Stream the feedback goes to (with redis_url) and the served-dir watch."""
        from funnelrec.online.served import ServedWatcher

        cfg = self.config
        self._stream = None  # the shared claim + stream append of every replica (online/shared.py)
        if cfg.redis_url:
            from funnelrec.online.shared import SharedFeedback

            self._stream = SharedFeedback(cfg.redis_url, prefix=cfg.redis_prefix, stream=cfg.redis_stream,
                                          ttl_s=cfg.redis_dedup_ttl_s, retention_s=cfg.redis_stream_retention_s)
        self._watcher = None
        if cfg.watch_dir:
            # the operator named this directory: its versions load whatever artifact_dir says
            self._watcher = ServedWatcher(cfg.watch_dir, self._swap_in, cfg.watch_interval_s,
                                          loaded=self._loaded_from).start()

    def _share_experiments(self) -> None:
        """Replicas run one ramp schedule: with Redis the platform's scheduled ramps count from the
        first replica's start, see every replica's rollbacks and judge guardrails on the stream."""
        self._ramp_events, self._ramp_key = self.events, None
        if self._stream is None or self.experiments is None:
            return
        from funnelrec.online.shared import StreamEvents, share_ramps

        self.experiments, self._ramp_key = share_ramps(self.experiments, self._stream)
        if self._ramp_key is not None and self.config.redis_stream:
            self._ramp_events = StreamEvents(self._stream.client, self.config.redis_stream)

    def _record_stops(self) -> None:
        import redis

        from funnelrec.online.shared import record_stops

        try:
            record_stops(self.experiments, self._stream, self._ramp_key)
        except redis.RedisError as err:
            _log.error("experiments: rollback not recorded in Redis: %s", err)

    def _remember_request(self, request_id: str, uid: str, record_json: str) -> None:
        import redis

        try:
            self._stream.put_request(request_id, uid, record_json)
        except redis.RedisError as err:  # the answer stands; its feedback may lose its assignment
            _log.error("recommend: request %s not recorded in Redis: %s", request_id, err)

    def _recalled_request(self, request_id: str) -> tuple[str, str] | None:
        import redis

        try:
            return self._stream.get_request(request_id)
        except redis.RedisError as err:
            _log.error("feedback: request %s not read from Redis: %s", request_id, err)
            return None

    def _publish_stream(self, evs: list[FeedbackEvent], local_new: list[FeedbackEvent]) -> list[FeedbackEvent]:
        """With Redis: claim every event's id across replicas and XADD the claimed ones to the
        stream, in one atomic script (online/shared.py); returns the events no replica applied
        before — all of `evs` are offered, not only `local_new`, so a replica that committed
        locally, crashed and got the retry itself still streams them. Without Redis (or when it
        fails: logged, the feedback stays accepted on the durable local log) `local_new`."""
        if self._stream is None or not evs:
            return local_new
        import redis

        from funnelrec.online.source import stream_fields

        now = time.time()
        try:
            fresh = self._stream.claim_new([(e.event_id, stream_fields(e, now)) for e in evs])
        except redis.RedisError as err:
            _log.error("feedback: %d events logged but not claimed/streamed (%s): %s", len(local_new),
                       self.config.redis_stream, err)
            return local_new
        return [e for e, new in zip(evs, fresh) if new]


class LiveCatalogue:
    """One worker's view of the live catalogue at `version` over the served funnel `base`:
    `loaded` (base with every upserted item and user appended or updated, `Funnel.with_items` /
    `with_users`), the rules (hidden / deleted / expired item keys), the deleted users. Built
    once per change; rows the served tables cannot hold are left out and listed in `skipped`."""

    def __init__(self, base: LoadedFunnel, loaded: LoadedFunnel, version: int, rules: CatalogueRules,
                 deleted_users: frozenset[str], item_ids: frozenset[str], user_ids: frozenset[str]) -> None:
        self.base, self.loaded, self.version, self.rules = base, loaded, version, rules
        self.deleted_users, self.item_ids, self.user_ids = deleted_users, item_ids, user_ids
        self.skipped: list[str] = []  # upserted items the served funnel cannot hold (logged)
        self._columns: dict[str, Any] = {}  # column → ForwardIndex over loaded's items (attribute filters)

    @classmethod
    def build(cls, base: LoadedFunnel, catalogue: Catalogue) -> LiveCatalogue:
        snap = catalogue.snapshot()
        rows = snap.item_rows()
        loaded, skipped = base, []
        if rows:
            try:
                loaded = cls._extend(base, rows, snap)
            except DataError:
                # rows the served funnel's items table cannot hold (a reload changed its columns):
                # served without them, each named in the log, rather than failing every request
                ok = []
                for r in rows:
                    try:
                        item_frame([r], base.funnel.dataset_.items)
                        ok.append(r)
                    except DataError as e:
                        skipped.append(str(r["item_id"]))
                        _log.warning("live catalogue: item %r not served: %s", r["item_id"], e)
                try:
                    loaded = cls._extend(base, ok, snap) if ok else base
                except DataError as e:  # rows that fit one by one but not together: none served
                    skipped += [str(r["item_id"]) for r in ok]
                    _log.warning("live catalogue: upserted items not served: %s", e)
        users = snap.user_rows()
        if users:
            try:
                funnel = loaded.funnel.with_users(user_frame(users, loaded.funnel.dataset_.users))
                loaded = LoadedFunnel.build(funnel, f"{base.version}+catalogue@{snap.version}")
            except DataError as e:  # users the served table cannot hold: served as they were
                skipped.append("users")
                _log.warning("live catalogue: upserted users not served: %s", e)
        live = cls(base, loaded, snap.version, snap.rules(), snap.deleted_users(),
                   frozenset(k for k, r in snap.items.items() if not r.get("deleted")), frozenset(snap.users))
        live.skipped = skipped
        return live

    @staticmethod
    def _extend(base: LoadedFunnel, rows: list[dict], snap: Any) -> LoadedFunnel:
        """`base` with `rows` upserted (`Funnel.with_items`); a new item without a value in a
        time column (its publish time) was published when it was first upserted."""
        ds = base.funnel.dataset_
        frame = item_frame(rows, ds.items)
        times = [c for c, kind in ds.schema.items.items() if kind == "time" and c in ds.items.columns]
        if times:
            import polars as pl

            frame = frame.with_columns(
                pl.Series("_new", [ds.item_ids.index(r["item_id"]) < 0 for r in rows]),
                pl.Series("_created", [int(snap.items[str(r["item_id"])]["created_at"]) for r in rows]))
            frame = frame.with_columns(
                pl.when(pl.col("_new") & (pl.col(c).is_null() if c in frame.columns else pl.lit(True)))
                .then(pl.col("_created").cast(ds.items.schema[c]))
                .otherwise(pl.col(c) if c in frame.columns else pl.lit(None, ds.items.schema[c])).alias(c)
                for c in times).drop("_new", "_created")
        return LoadedFunnel.build(base.funnel.with_items(frame), f"{base.version}+catalogue@{snap.version}")

    def _forward(self, column: str) -> Any:
        got = self._columns.get(column)
        if got is None:
            from funnelrec.recall.attributes import ForwardIndex

            got = self._columns.setdefault(column, ForwardIndex.from_column(self.loaded.funnel.dataset_.items, column))
        return got

    def attribute_filter(self, filters: Mapping[str, list] | None) -> Any:
        """A function dense item indices (C,) → (C,) bool: the item has any listed value of each
        named column (None without filters). An unknown column is a DataError naming it."""
        if not filters:
            return None
        items = self.loaded.funnel.dataset_.items
        known = [c for c in items.columns if c != "item_idx"]
        checks = []
        for column, values in filters.items():
            if column not in known:
                raise DataError(f"filters: unknown item column {column!r}; the catalogue has: {', '.join(known)}")
            if not isinstance(values, list | tuple):
                raise DataError(f"filters.{column} must be a list of values, got {type(values).__name__}")
            fwd = self._forward(column)
            codes = np.array(sorted({fwd.code(str(v)) for v in values} - {-1}), np.int64)
            checks.append((fwd.matrix, codes))

        def allowed(idx: np.ndarray) -> np.ndarray:
            idx = np.ascontiguousarray(idx, np.int64)
            ok = np.ones(len(idx), bool)
            for m, codes in checks:  # O(C · values per item): no catalogue-wide pass
                ok &= rows_with_any(m.indptr, m.indices, idx, codes)
            return ok

        return allowed

    def restrict(self, state: RequestState, cur: LoadedFunnel, now: int, filters: Mapping[str, list] | None
                 ) -> RequestState:
        """`state` whose exposure views also remove what the rules block at `now` and what fails
        the attribute filters — the funnel's filter stage applies them with the exposure filter."""
        allowed = self.attribute_filter(filters)
        if not len(self.rules) and allowed is None:
            return state
        from dataclasses import replace as _replace

        views = [CatalogueExposure(v, self.rules, now, cur, allowed) for v in (state.exposure or [None])]
        return _replace(state, exposure=views)


class CatalogueExposure:
    """An exposure view that also contains every item the catalogue keeps out of this answer:
    `contains(keys)` = shown ∨ blocked(key, now) ∨ ¬allowed(item). O(candidates)."""

    __slots__ = ("view", "rules", "now", "cur", "allowed")

    def __init__(self, view: Any, rules: CatalogueRules, now: int, cur: LoadedFunnel, allowed: Any) -> None:
        self.view, self.rules, self.now, self.cur, self.allowed = view, rules, now, cur, allowed

    def contains(self, keys: np.ndarray) -> np.ndarray:
        keys = np.asarray(keys, np.int64)
        out = self.rules.blocked(keys, self.now)
        if self.view is not None:
            out |= np.asarray(self.view.contains(keys), bool)
        if self.allowed is not None and len(keys):
            out |= ~self.allowed(self.cur.indices_of_keys(keys))
        return out


def _version_of(path: str | Path, parts: list[str] | None = None) -> str:
    p = Path(path)
    try:
        v = f"{p.name}@{int(p.stat().st_mtime)}"
    except OSError:
        v = p.name
    return v + (f"[{','.join(parts)}]" if parts else "")
