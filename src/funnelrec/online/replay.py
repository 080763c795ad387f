"""Replay a dataset's interactions in time order through the service: measures the online loop.

    cfg = ReplayConfig(like_column="rating", like_threshold=4.0)
    fitted = fit_for_replay(dataset, FunnelConfig.load("configs/funnel/ml100k.yaml"), cfg)
    records = {m: replay(fitted, m, cfg) for m in ("static", "realtime", "online")}
    print(summarize(pl.concat(records.values()), cfg))

Protocol. The interactions are the dataset's rows (with `click_column`, only the rows where it
is > 0: a log of impressions keeps its clicks). Time is cut at the day boundary nearest to
t_min + `fit_fraction`·(t_max − t_min); the funnel is fitted on the rows before the cut (its
ranker's labels: the last `label_fraction` of them by time, data/splits.py:temporal_split; 0 =
no ranker). Then for each UTC day d after the cut (day = ts // `day_seconds`), for each user
active on day d, in the order of their first interaction that day:

1. request k' = max(k, `auc_k`) items at context time = the start of day d, excluding the items
   the user interacted with since the cut and in the ranker's label slice of the fit rows (the
   channels exclude the rows they were fitted on themselves);
   the first k are the answer shown;
2. send the k shown items as impressions (ts = the start of the day);
3. modes realtime and online: send the user's real interactions of that day as clicks (their
   own ts), and a like for each whose `like_column` ≥ `like_threshold` (both from the config;
   no like without them, unless the funnel's ranker fits a like task on the rating:
   `replay_likes`). Those on a shown item go with the request's id (a click on the
   answer); the others without one: the user found them elsewhere, and the learner's contract
   (online/learner.py) marks such organic positives by a null request_id — the ranker's
   update learns from impressions only. Mode static sends impressions only: the exposure
   filter is its only online state;
4. at the end of the day (mode online) the learner runs once (`OnlineLearner.run_once`) and the
   service reloads the version it published.

Metrics of a (user, day) request, against R = the items the user interacted with that day,
minus every item they interacted with before (fit-time or replayed); user-days with R empty are
not scored:

    NDCG@k = Σ_{p<k} [a_p ∈ R] / log2(p + 2)  /  Σ_{p < min(|R|, k)} 1 / log2(p + 2)
    AUC    = P(r⁺ before r⁻) + ½·P(tie) over the user's unseen items (the catalogue minus every
             item they interacted with before: the population NDCG ranks — and minus the items
             first consumed after day d, not yet published then, unless returned), positives = R,
             ordered by the funnel: the k' returned candidates by their served (fused) score,
             every item not returned tied below them (`unseen_auc`). The same population for
             every mode, so online − static is paired on like with like.
    AUC over the returned k' only (`auc_returned`, the metric before 2026-12-04): positives = the
             returned items in R, negatives = the other returned ones. Each mode is judged on
             its own candidates there, so a mode that brings more relevant items into its k'
             gets more, and harder, positives: kept for the record, not the criterion.

`summarize` gives per-mode means, per-day means, and each mode − static difference paired over
the user-days both scored, with a percentile bootstrap 95 % CI (`bootstrap_ci`: resample the
user-days with replacement, mean of each resample, the 2.5 / 97.5 % quantiles).

The replay drives a `RecommenderService` in-process (default) or a running server over HTTP
(`HttpReplayClient`): the same requests and events either way. Online learning over HTTP is the
server's own learner (`funnelrec learn` beside `serve`), so mode online runs in-process only.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import polars as pl

from funnelrec.core.errors import ConfigError, DataError, FunnelrecError
from funnelrec.data.dataset import Dataset
from funnelrec.data.splits import temporal_split

MODES = ("static", "realtime", "online")
DAY = 86_400


class ReplayPending(FunnelrecError):
    """A mode needs a piece of the online loop that this installation does not have yet."""


@dataclass(frozen=True)
class ReplayConfig:
    """The replay's knobs (module doc). `learn` is handed to the online learner as its config."""

    k: int = 10
    auc_k: int = 500  # candidates asked for per request (the AUC's ranked part); the first k are shown.
    # 500 = the service's max_k: every candidate the funnel ranks (merge totals are ≤ 500 in the configs)
    fit_fraction: float = 0.5  # of the time span, before the cut
    label_fraction: float = 0.1  # the last share of the fit rows by time: the ranker's labels (0 = no ranker)
    day_seconds: int = DAY
    days: int | None = None  # replay at most this many days after the cut
    click_column: str | None = None  # None: every row is an interaction; else the rows where it is > 0
    like_column: str | None = None
    like_threshold: float | None = None
    bootstrap_resamples: int = 2000
    confidence: float = 0.95
    seed: int = 0
    learn: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.k < 1 or self.auc_k < 1:
            raise ConfigError(f"replay: k and auc_k must be ≥ 1, got {self.k}, {self.auc_k}")
        if not 0.0 < self.fit_fraction < 1.0:
            raise ConfigError(f"replay: fit_fraction must be in (0, 1), got {self.fit_fraction}")
        if not 0.0 <= self.label_fraction < 1.0:
            raise ConfigError(f"replay: label_fraction must be in [0, 1), got {self.label_fraction}")
        if self.day_seconds < 1:
            raise ConfigError(f"replay: day_seconds must be ≥ 1, got {self.day_seconds}")
        if self.days is not None and self.days < 1:
            raise ConfigError(f"replay: days must be ≥ 1, got {self.days}")
        if (self.like_column is None) != (self.like_threshold is None):
            raise ConfigError("replay: like_column and like_threshold go together (a like is like_column ≥ "
                              "like_threshold); give both or neither")
        if self.bootstrap_resamples < 100:
            raise ConfigError(f"replay: bootstrap_resamples must be ≥ 100, got {self.bootstrap_resamples}")
        if not 0.0 < self.confidence < 1.0:
            raise ConfigError(f"replay: confidence must be in (0, 1), got {self.confidence}")


# --------------------------------------------------------------------------------- metrics
def ndcg_at_k(ranked: Sequence[Any], relevant: set, k: int) -> float:
    """Binary NDCG@k of one answer (module doc); NaN when `relevant` is empty."""
    if not relevant:
        return math.nan
    dcg = sum(1.0 / math.log2(p + 2) for p, item in enumerate(list(ranked)[:k]) if item in relevant)
    ideal = sum(1.0 / math.log2(p + 2) for p in range(min(len(relevant), k)))
    return dcg / ideal


def pairwise_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """P(s⁺ > s⁻) + ½·P(s⁺ = s⁻) by midranks (Mann–Whitney U / (n⁺·n⁻)); NaN without both classes."""
    s = np.asarray(scores, np.float64)
    y = np.asarray(positive, bool)
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    from scipy.stats import rankdata

    r = rankdata(s)  # midranks: ties count ½
    return float((r[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def unseen_auc(scores: np.ndarray, positive: np.ndarray, n_positive: int, n_negative: int) -> float:
    """AUC of a ranked answer over a whole population of `n_positive` + `n_negative` items of
    which only the returned ones have scores: returned pairs by their `scores` (midranks, ties ½),
    a returned item before every item not returned, and the not-returned ones tied among
    themselves (½). `positive` flags the returned items in the positive class; NaN without both
    classes in the population."""
    s = np.asarray(scores, np.float64)
    y = np.asarray(positive, bool)
    p_in = int(y.sum())
    n_in = len(y) - p_in
    if p_in > n_positive or n_in > n_negative:
        raise DataError(f"unseen_auc: {p_in} positive / {n_in} negative items returned, more than the population's "
                        f"{n_positive} / {n_negative}")
    if n_positive == 0 or n_negative == 0:
        return math.nan
    p_out, n_out = n_positive - p_in, n_negative - n_in
    u_in = 0.0
    if p_in and n_in:
        from scipy.stats import rankdata

        u_in = float(rankdata(s)[y].sum() - p_in * (p_in + 1) / 2)  # returned positive beats returned negative
    u = u_in + p_in * n_out + 0.5 * p_out * n_out  # a returned positive beats every unreturned negative
    return u / (n_positive * n_negative)


def bootstrap_ci(x: np.ndarray, n_resamples: int = 2000, confidence: float = 0.95, seed: int = 0,
                 chunk: int = 256) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of `x` (n,): `n_resamples` resamples of n values with
    replacement, the (1 ∓ confidence)/2 quantiles of their means. Drawn `chunk` resamples at a
    time, so memory is chunk·n, not n_resamples·n."""
    x = np.asarray(x, np.float64)
    x = x[~np.isnan(x)]
    if len(x) < 2:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = np.empty(n_resamples)
    for a in range(0, n_resamples, chunk):
        b = min(a + chunk, n_resamples)
        means[a:b] = x[rng.integers(0, len(x), (b - a, len(x)))].mean(1)
    alpha = (1.0 - confidence) / 2
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


# --------------------------------------------------------------------------------- clients
@dataclass
class Answer:
    request_id: str | None
    item_ids: list  # external ids, best first
    scores: np.ndarray  # the served (fused) score of each
    model_version: str = ""


class ReplayClient(Protocol):
    def recommend(self, user_id: Any, k: int, time: int, exclude: list) -> Answer: ...

    def feedback(self, request_id: str | None, user_id: Any, events: list[dict[str, Any]]) -> None: ...


class ServiceClient:
    """A `RecommenderService` in this process."""

    def __init__(self, service: Any) -> None:
        self.service = service

    def recommend(self, user_id: Any, k: int, time: int, exclude: list) -> Answer:
        out = self.service.recommend(user_id, k=k, context={"time": int(time)}, exclude=exclude or None)
        return Answer(out.request_id, list(out.item_ids), np.asarray(out.rec.scores, np.float64), out.model_version)

    def feedback(self, request_id: str | None, user_id: Any, events: list[dict[str, Any]]) -> None:
        if events:
            self.service.feedback(request_id, user_id, events)


class HttpReplayClient:
    """A running server (`funnelrec serve`) at `base_url`: POST /recommend and /feedback."""

    MAX_EVENTS = 1000  # per /feedback body (serving/schemas.py)

    def __init__(self, base_url: str, timeout: float = 30.0) -> None:
        import httpx

        self.http = httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout)

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        import httpx

        try:
            r = self.http.post(path, json=body)
        except httpx.HTTPError as e:
            raise DataError(f"replay over HTTP: {path} at {self.http.base_url}: {e}") from None
        if r.status_code != 200:
            raise DataError(f"replay over HTTP: {path} answered {r.status_code}: {r.text[:300]}")
        return r.json()

    def recommend(self, user_id: Any, k: int, time: int, exclude: list) -> Answer:
        got = self._post("/recommend", {"user_id": user_id, "k": k, "context": {"time": int(time)},
                                        "exclude": list(exclude)})
        items = got["items"]
        return Answer(got.get("request_id"), [it["item_id"] for it in items],
                      np.asarray([it["score"] for it in items], np.float64), str(got.get("model_version", "")))

    def feedback(self, request_id: str | None, user_id: Any, events: list[dict[str, Any]]) -> None:
        for a in range(0, len(events), self.MAX_EVENTS):
            self._post("/feedback", {"request_id": request_id, "user_id": user_id,
                                     "events": events[a: a + self.MAX_EVENTS]})

    def close(self) -> None:
        self.http.close()


# --------------------------------------------------------------------------------- fitting
@dataclass
class FittedReplay:
    """A funnel fitted on the rows before the cut, and the rows to replay after it."""

    dataset: Dataset
    funnel_config: Any
    funnel: Any
    fit_rows: pl.DataFrame
    replay_rows: pl.DataFrame  # with a "day" column (ts // day_seconds), in time order
    cut_time: int
    first_day: int  # day number of the data's first row: days are reported as day − first_day
    fit_seconds: float
    # the fit rows the channels did not train on (the ranker's label slice): the user consumed
    # them, the channels do not know it, so each request excludes them explicitly
    label_rows: pl.DataFrame | None = None

    def unexcluded(self) -> dict[Any, list]:
        """{user_id: [item_id, …]} of `label_rows`, in time order: the fit-time consumptions a
        request must exclude itself (the channels exclude their own training rows)."""
        if self.label_rows is None or self.label_rows.height == 0:
            return {}
        g = self.label_rows.group_by("user_id", maintain_order=True).agg(pl.col("item_id"))
        return {u: list(dict.fromkeys(items)) for u, items in g.iter_rows()}


def interactions_of(dataset: Dataset, cfg: ReplayConfig) -> pl.DataFrame:
    """The rows that count as interactions (module doc), in time order."""
    inter = dataset.interactions
    for col in (cfg.click_column, cfg.like_column):
        if col is not None and col not in inter.columns:
            raise ConfigError(f"replay: column {col!r} is not in the interactions table "
                              f"({', '.join(inter.columns)}); fix replay.click_column / like_column")
    if cfg.click_column is not None:
        inter = inter.filter(pl.col(cfg.click_column) > 0)
    if inter.height == 0:
        raise DataError(f"replay: {dataset.name} has no interactions"
                        + (f" with {cfg.click_column} > 0" if cfg.click_column else ""))
    return inter.sort("timestamp", maintain_order=True)


def cut_time(inter: pl.DataFrame, cfg: ReplayConfig) -> int:
    """The day boundary nearest to t_min + fit_fraction·(t_max − t_min)."""
    t = inter["timestamp"]
    lo, hi = int(t.min()), int(t.max())
    D = cfg.day_seconds
    return int(round((lo + cfg.fit_fraction * (hi - lo)) / D)) * D


def replay_likes(cfg: ReplayConfig, funnel_config: Any, interactions: pl.DataFrame) -> ReplayConfig:
    """`cfg` with the likes the funnel's ranker learns: a `like` task read from the rating offline
    (no label map rule, no `rank.task_columns.like`, no like column: rating ≥ rank.like_threshold,
    train/candidate_ranker.py) is replayed as a like per row with rating ≥ that threshold, unless
    the replay config names its own like_column. Without it the online mode would send no like
    and train the like head on zeros (a replay of configs/funnel/ml100k_mmoe.yaml did)."""
    rank = funnel_config.rank
    if cfg.like_column is not None or "like" not in rank.tasks:
        return cfg
    if any(r.task == "like" for r in funnel_config.labels.map.values()):
        return cfg  # sent as its own event type (_row_events)
    if (rank.task_columns.get("like") is None and rank.task_kinds.get("like", "binary") == "binary"
            and "like" not in interactions.columns and "rating" in interactions.columns):
        return dataclasses.replace(cfg, like_column="rating", like_threshold=float(rank.like_threshold))
    return cfg


def fit_for_replay(dataset: Dataset, funnel_config: Any, cfg: ReplayConfig, progress: bool = False) -> FittedReplay:
    """Cut the time line and fit the funnel on the rows before the cut (module doc)."""
    from funnelrec.pipeline.builder import FunnelBuilder

    inter = interactions_of(dataset, cfg)
    cut = cut_time(inter, cfg)
    fit_rows = inter.filter(pl.col("timestamp") < cut)
    rest = inter.filter(pl.col("timestamp") >= cut)
    if fit_rows.height == 0 or rest.height == 0:
        raise DataError(f"replay: the cut at {cut} leaves {fit_rows.height} rows to fit and {rest.height} to "
                        f"replay; change replay.fit_fraction")
    D = cfg.day_seconds
    rest = rest.with_columns((pl.col("timestamp") // D).alias("day"))
    if cfg.days is not None:
        rest = rest.filter(pl.col("day") < cut // D + cfg.days)
    t0 = time.perf_counter()
    labels = None
    train = fit_rows
    if cfg.label_fraction > 0:
        sp = temporal_split(fit_rows, (1.0 - cfg.label_fraction, cfg.label_fraction, 0.0))
        train, labels = sp.train, sp.valid
    funnel = FunnelBuilder(funnel_config).fit(dataset, train, labels=labels, progress=progress)
    return FittedReplay(dataset, funnel_config, funnel, fit_rows, rest, cut, int(inter["timestamp"].min()) // D,
                        time.perf_counter() - t0, labels)


# --------------------------------------------------------------------------------- the replay
def _make_online(fitted: FittedReplay, cfg: ReplayConfig, workdir: Path,
                 learn_base: dict[str, Any]) -> tuple[Any, Callable[[], None]]:
    """An in-process service over a served directory (online/served.py: versions/vNNNNNN +
    CURRENT) and a state directory, the learner tailing that service's event log and publishing
    into the served directory, and the end-of-day step: one learner step, then the service
    reloads CURRENT if it moved (only the parts that changed, `served.changed_parts`)."""
    try:
        from funnelrec.online.learner import OnlineLearner
    except ImportError as e:
        raise ReplayPending(f"replay mode online needs funnelrec.online.learner.OnlineLearner ({e}); "
                            "run static or realtime") from None
    from funnelrec.online.publish import Publisher
    from funnelrec.online.served import changed_parts, current_dir
    from funnelrec.pipeline.service import RecommenderService

    served = workdir / "served"
    fitted.funnel.save(workdir / "fitted")
    Publisher(served).init(workdir / "fitted")
    loaded = current_dir(served)
    service = RecommenderService.from_artifact(loaded, state_dir=workdir / "state")
    learner = _learner(OnlineLearner, served, workdir / "state" / "events.db", dict(cfg.learn), fitted.funnel,
                       cfg.day_seconds, learn_base)
    state = {"loaded": loaded}
    steps: list[dict[str, Any]] = []

    def end_of_day() -> None:
        while True:  # until caught up with the day's events
            report = learner.run_once()
            steps.append(report)
            if report["events"] < learner.config.batch_limit:
                break
        now = current_dir(served)
        if now is not None and now != state["loaded"]:
            service.reload(now, parts=changed_parts(state["loaded"], now))
            state["loaded"] = now

    end_of_day.steps = steps  # type: ignore[attr-defined]  # each learner step's report
    end_of_day.close = learner.close  # type: ignore[attr-defined]
    return service, end_of_day


# The learner's settings a replay starts from (`learn:` keys go on top, the ranker: and
# guardrail: sections key by key). A replayed log's positives are mostly organic: the logged
# users did not see our answers (ml-100k: of ~420 interactions a day ~5 fall on the 10 items a
# request showed). So the ranker's update labels every positive among its user's candidates (the
# form the ranker was fitted on) instead of judging ~120 impressions a day, the guardrail judges
# the held-out users' candidates by GAUC (a pooled AUC there mostly compares users), and FTRL
# moves at α = 0.05 (one day's update at 0.2 lost 0.01–0.05 of held-out GAUC as often as it
# gained). With the library's live defaults (impressions only) a replay's online mode orders the
# shown ten and not the candidates: on a generated shop log one accepted update took NDCG@10 from
# 0.11 to 0.007 for the rest of the replay. docs/BENCHMARKS.md (Sessions 6 and 17). The live
# defaults are right where users click on what they were shown: the closed loop (online/loop.py)
# runs them, and there they beat these settings (0.309 vs 0.304 NDCG@10, Session 18).
REPLAY_LEARN: dict[str, Any] = {"ranker": {"organic": "candidates", "ftrl_alpha": 0.05}, "guardrail": {"group": "user"}}


def merged_learn(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`base` with `override` on top, the ranker: / guardrail: sections merged key by key."""
    out = {**base, **override}
    for k in ("ranker", "guardrail"):
        for side in (base, override):
            if not isinstance(side.get(k, {}), dict):
                raise ConfigError(f"replay config: learn.{k}: expected a mapping, got {side[k]!r}")
        if k in base or k in override:
            out[k] = {**base.get(k, {}), **override.get(k, {})}
    return out


def check_learn(learn: dict[str, Any], day_seconds: int, base: dict[str, Any] = REPLAY_LEARN) -> tuple[Any, Any, Any]:
    """(LearnConfig, RankerUpdateConfig, AUCGuardrail) of a replay config's `learn:` over `base`
    (`REPLAY_LEARN`, or {} for the live defaults): LearnConfig keys, plus `ranker:`
    (RankerUpdateConfig keys) for the fine ranker's update, guarded by an AUCGuardrail at
    `guardrail_margin` (`guardrail:` its other keys, e.g. on_undefined). The label window
    defaults to one replayed day: the day's impressions (at its start) wait for the day's
    clicks. A wrong key or value is a ConfigError naming it, raised when the replay config is
    loaded (`load_replay_file`), not after the fit."""
    from funnelrec.core.config import from_dict
    from funnelrec.online.guardrail import AUCGuardrail
    from funnelrec.online.learner import LearnConfig
    from funnelrec.online.updates import RankerUpdateConfig

    learn = merged_learn(base, dict(learn))
    ranker = learn.pop("ranker", {})
    guard = dict(learn.pop("guardrail", {}))  # AUCGuardrail keys other than margin (task, on_undefined)
    learn.setdefault("label_window_s", day_seconds)
    # LearnConfig's ttl_s = 0 means "never evict", which RankerUpdater.configure hands to
    # FidAdmission as ttl 0, refused there (> 0 or None); ten years of event time is "never" here
    learn.setdefault("ttl_s", 10 * 365 * DAY)
    config = from_dict(LearnConfig, learn, "replay config", path="learn")
    rcfg = from_dict(RankerUpdateConfig, ranker, "replay config", path="learn.ranker")
    try:
        guardrail = AUCGuardrail(config.guardrail_margin, **guard)
    except TypeError as e:
        raise ConfigError(f"replay config: learn.guardrail: {e}") from None
    return config, rcfg, guardrail


def _learner(cls: Any, served: Path, events: Path, learn: dict[str, Any], funnel: Any, day_seconds: int,
             base: dict[str, Any] = REPLAY_LEARN) -> Any:
    """OnlineLearner over the served directory and the service's event log, with the settings
    of `check_learn(learn, day_seconds, base)`; the ranker's update when the funnel has one."""
    from funnelrec.online.source import EventLogSource
    from funnelrec.online.updates import RankerUpdater

    config, rcfg, guardrail = check_learn(learn, day_seconds, base)
    updaters = [RankerUpdater(rcfg, guardrail)] if funnel.ranker_ is not None else []
    return cls(served, EventLogSource(events), config, updaters=updaters)


def replay(fitted: FittedReplay, mode: str, cfg: ReplayConfig, client: ReplayClient | None = None,
           workdir: str | Path | None = None, progress: bool = False,
           learn_log: list | None = None) -> pl.DataFrame:
    """Replay `fitted.replay_rows` in `mode`; one row per scored user-day:
    mode, day (since the data's first day), user_id, ndcg, auc, auc_returned, n_relevant, model_version (of the
    funnel that answered). `client`: drive
    that (e.g. `HttpReplayClient`) instead of a fresh in-process service. `learn_log`: a list that
    gets each learner step's report (mode online)."""
    if mode not in MODES:
        raise ConfigError(f"replay mode must be one of {', '.join(MODES)}, got {mode!r}")
    if client is not None:
        if mode == "online":
            raise ConfigError("replay mode online runs in-process only (over HTTP the server's own `funnelrec learn` "
                              "updates it); drop the server URL or run static / realtime")
        return _run(fitted, mode, cfg, client, None, progress)
    with mode_service(fitted, mode, cfg, workdir, learn_log) as (client, end_of_day):
        return _run(fitted, mode, cfg, client, end_of_day, progress)


@contextmanager
def mode_service(fitted: FittedReplay, mode: str, cfg: ReplayConfig, workdir: str | Path | None = None,
                 learn_log: list | None = None, learn_base: dict[str, Any] = REPLAY_LEARN
                 ) -> Iterator[tuple[ServiceClient, Callable[[], None] | None]]:
    """(client, end_of_day) of a fresh in-process service serving `fitted.funnel` in `mode`:
    static and realtime a `RecommenderService` over it (end_of_day None); online one over a
    served directory under `workdir` (a temporary one by default) with its learner, end_of_day
    = one learner step and the reload (`_make_online`). Closed on exit; `learn_log` gets each
    learner step's report. `learn_base`: the learner settings `cfg.learn` goes on top of
    (default `REPLAY_LEARN`; {} = the live learner's defaults, online/loop.py)."""
    if mode not in MODES:
        raise ConfigError(f"replay mode must be one of {', '.join(MODES)}, got {mode!r}")
    end_of_day: Callable[[], None] | None = None
    tmp = None
    if mode == "online":
        tmp = tempfile.TemporaryDirectory(prefix="funnelrec-replay-") if workdir is None else None
        service, end_of_day = _make_online(fitted, cfg, Path(workdir or tmp.name), learn_base)
    else:
        from funnelrec.pipeline.service import RecommenderService

        service = RecommenderService(fitted.funnel)
    try:
        yield ServiceClient(service), end_of_day
    finally:
        if end_of_day is not None:
            end_of_day.close()  # type: ignore[attr-defined]
            if learn_log is not None:
                learn_log.extend(end_of_day.steps)  # type: ignore[attr-defined]
        service.close()
        if tmp is not None:
            tmp.cleanup()


def _run(fitted: FittedReplay, mode: str, cfg: ReplayConfig, client: ReplayClient,
         end_of_day: Callable[[], None] | None, progress: bool) -> pl.DataFrame:
    D = cfg.day_seconds
    labels = getattr(fitted.funnel_config, "labels", None)  # with a label map each row is sent as its own event
    label_map = labels if labels is not None and labels.map and labels.event_column else None
    # each user's items so far: fit-time rows, then every replayed day's
    seen: dict[Any, set] = {}
    for u, items in fitted.fit_rows.group_by("user_id", maintain_order=True).agg(pl.col("item_id")).iter_rows():
        seen[u] = set(items)
    since_cut: dict[Any, list] = fitted.unexcluded()  # each request's exclude: the label slice, then the replayed days
    cols = ["user_id", "item_id", "timestamp"] + ([cfg.like_column] if cfg.like_column else [])
    if label_map is not None:  # the event type and the valued rules' columns travel with each row
        cols = list(dict.fromkeys([*cols, label_map.event_column, *(r.value for r in label_map.map.values() if r.value)]))
    rows = fitted.replay_rows
    k_req = max(cfg.k, cfg.auc_k)
    n_catalogue = fitted.dataset.n_items
    # an item first consumed after day d is taken as not yet published on day d: no user could
    # have had it, so it is not one of the AUC's negatives that day (unless the funnel returned it)
    first = (pl.concat([fitted.fit_rows.select("item_id", "timestamp"), rows.select("item_id", "timestamp")])
             .group_by("item_id").agg(pl.col("timestamp").min() // D))
    first_day = dict(zip(first["item_id"].to_list(), first["timestamp"].to_list()))
    later_days = np.sort(first["timestamp"].to_numpy())  # first-consumption days, to count the future ones
    out: dict[str, list] = {"day": [], "user_id": [], "ndcg": [], "auc": [], "auc_returned": [], "n_relevant": [],
                            "model_version": []}
    days = rows.partition_by("day", maintain_order=True, as_dict=True)
    it = days.items()
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc=f"replay {mode}", unit="day")
    for (day,), day_rows in it:
        start = int(day) * D
        for user_rows in day_rows.select(cols).partition_by("user_id", maintain_order=True):
            uid = user_rows["user_id"][0]
            items = user_rows["item_id"].to_list()
            before = seen.setdefault(uid, set())
            mine = since_cut.setdefault(uid, [])
            ans = client.recommend(uid, k_req, start, mine)
            shown = ans.item_ids[: cfg.k]
            relevant = set(items) - before
            if relevant:
                out["day"].append(int(day) - fitted.first_day)
                out["user_id"].append(str(uid))
                out["ndcg"].append(ndcg_at_k(shown, relevant, cfg.k))
                fresh = np.array([i not in before for i in ans.item_ids], bool)  # the channels exclude them
                scores = ans.scores[fresh]
                hit = np.array([i in relevant for i in ans.item_ids], bool)[fresh]
                future = len(later_days) - int(np.searchsorted(later_days, int(day), side="right"))
                returned_future = sum(first_day.get(i, -1) > int(day) for i in np.asarray(ans.item_ids)[fresh].tolist())
                n_unseen = n_catalogue - future + returned_future - len(before)
                out["auc"].append(unseen_auc(scores, hit, len(relevant), n_unseen - len(relevant)))
                out["auc_returned"].append(pairwise_auc(scores, hit))
                out["n_relevant"].append(len(relevant))
                out["model_version"].append(ans.model_version)
            events = [{"item_id": i, "type": "impression", "ts": start} for i in shown]
            organic: list[dict[str, Any]] = []
            if mode != "static":
                ts = user_rows["timestamp"].to_list()
                liked = (user_rows[cfg.like_column].to_numpy() >= cfg.like_threshold if cfg.like_column is not None
                         else np.zeros(len(items), bool))
                on_shown = set(shown)
                for i, t, y, (etype, value) in zip(items, ts, liked, _row_events(user_rows, label_map)):
                    evs = [{"item_id": i, "type": etype, "value": value, "ts": int(t)}]
                    if y:
                        evs.append({"item_id": i, "type": "like", "ts": int(t)})
                    (events if i in on_shown else organic).extend(evs)
            client.feedback(ans.request_id, uid, events)
            client.feedback(None, uid, organic)
            for i in items:
                if i not in before:
                    before.add(i)
                    mine.append(i)
        if end_of_day is not None:
            end_of_day()
    return pl.DataFrame({"mode": [mode] * len(out["day"]), **out},
                        schema={"mode": pl.String, "day": pl.Int64, "user_id": pl.String, "ndcg": pl.Float64,
                                "auc": pl.Float64, "auc_returned": pl.Float64, "n_relevant": pl.Int64,
                                "model_version": pl.String})


# --------------------------------------------------------------------------------- summary
def summarize(records: pl.DataFrame, cfg: ReplayConfig, baseline: str = "static") -> dict[str, Any]:
    """Per-mode means (NDCG@k over the scored user-days, each AUC over those where it is defined),
    per-day NDCG@k and AUC means, and each mode − `baseline` paired over user-days with its
    bootstrap CI (module doc). The AUCs: "auc" and, where the records have it, "auc_returned"."""
    k = cfg.k
    aucs = [c for c in ("auc", "auc_returned") if c in records.columns]
    modes = [m for m in MODES if m in set(records["mode"].to_list())]
    out: dict[str, Any] = {"modes": {}, "per_day": {}, "differences": {}}
    for m in modes:
        r = records.filter(pl.col("mode") == m)
        out["modes"][m] = {f"ndcg@{k}": float(r["ndcg"].mean()), "user_days": r.height}
        for c in aucs:
            auc = r[c].drop_nans().drop_nulls()
            out["modes"][m][c] = float(auc.mean()) if len(auc) else None
            out["modes"][m][f"{c}_user_days"] = len(auc)
        daily = r.group_by("day").agg(pl.col("ndcg").mean(), *[pl.col(c).fill_nan(None).mean() for c in aucs],
                                      pl.len().alias("users")).sort("day")
        out["per_day"][m] = {"day": daily["day"].to_list(), f"ndcg@{k}": daily["ndcg"].to_list(),
                             **{c: daily[c].to_list() for c in aucs}, "users": daily["users"].to_list()}
    if baseline not in modes:
        return out
    base = records.filter(pl.col("mode") == baseline).select("day", "user_id", "ndcg", *aucs)
    for m in modes:
        if m == baseline:
            continue
        pair = records.filter(pl.col("mode") == m).join(base, on=["day", "user_id"], suffix="_base")
        diff: dict[str, Any] = {}
        for metric, name in (("ndcg", f"ndcg@{k}"), *((c, c) for c in aucs)):
            d = (pair[metric] - pair[f"{metric}_base"]).to_numpy()
            d = d[~np.isnan(d)]
            lo, hi = bootstrap_ci(d, cfg.bootstrap_resamples, cfg.confidence, cfg.seed)
            diff[name] = {"mean": float(d.mean()) if len(d) else None, f"ci{round(cfg.confidence * 100)}": [lo, hi],
                          "user_days": int(len(d))}
        out["differences"][f"{m}-{baseline}"] = diff
    return out


def recovery(per_day: dict[str, list], drift_day: int, first_day: int, metric: str, within: int = 3,
             share: float = 0.9) -> dict[str, Any]:
    """Recovery after a drift at `drift_day` (days since the data's first day): pre = the mean
    daily `metric` over the replayed days before it; recovered = some day in drift_day + 1 ..
    drift_day + within (the days after 1..within end-of-day updates) has a daily mean ≥ share·pre;
    trough = the drift day's value. `first_day`: the first replayed day."""
    days, vals = per_day["day"], per_day[metric]
    pre = [v for d, v in zip(days, vals) if first_day <= d < drift_day and v is not None]
    if not pre:
        raise DataError(f"recovery: no replayed day before the drift day {drift_day}")
    pre_mean = float(np.mean(pre))
    after = [(d, v) for d, v in zip(days, vals) if drift_day < d <= drift_day + within]
    first = next((d for d, v in after if v is not None and v >= share * pre_mean), None)
    trough = next((v for d, v in zip(days, vals) if d == drift_day), None)
    return {"pre_drift": pre_mean, "threshold": share * pre_mean, "trough": trough,
            "days_to_recover": None if first is None else first - drift_day,
            f"recovered_within_{within}_days": first is not None}


# --------------------------------------------------------------------------------- from a file
@dataclass(frozen=True)
class ReplayFile:
    """A replay YAML: `replay:` (ReplayConfig keys), `funnel:` (a funnel config mapping, or the
    path of a funnel YAML, relative to this file), `dataset:` (keyword arguments of the dataset
    loader, e.g. a synthetic world's knobs)."""

    replay: dict[str, Any] = field(default_factory=dict)
    funnel: Any = None
    dataset: dict[str, Any] = field(default_factory=dict)


def _is_funnel_config(raw: Any) -> bool:
    """A YAML mapping with none of a replay file's sections is a funnel config (`funnelrec init`'s
    funnel.yaml), replayed with the ReplayConfig defaults."""
    from funnelrec.pipeline.config import FunnelConfig

    return (isinstance(raw, dict) and not set(raw) & {f.name for f in dataclasses.fields(ReplayFile)}
            and bool(set(raw) & {f.name for f in dataclasses.fields(FunnelConfig)}))


def load_replay_file(path: str | Path | None) -> tuple[ReplayConfig, Any, dict[str, Any]]:
    """(ReplayConfig, FunnelConfig or None = the caller's default, dataset kwargs) from a replay
    YAML, or from a funnel config (`_is_funnel_config`: the defaults, that funnel)."""
    from funnelrec.core.config import from_dict, load_yaml
    from funnelrec.pipeline.config import FunnelConfig

    if path is None:
        return ReplayConfig(), None, {}
    path = Path(path)
    raw = load_yaml(path)
    if _is_funnel_config(raw):
        return ReplayConfig(), FunnelConfig.load(path), {}
    f = from_dict(ReplayFile, raw, f"replay config {path}")
    cfg = from_dict(ReplayConfig, f.replay, f"replay config {path}", path="replay")
    check_learn(cfg.learn, cfg.day_seconds)  # a wrong learn: key now, not after the fit
    funnel = None
    if isinstance(f.funnel, str):
        fp = Path(f.funnel) if Path(f.funnel).is_absolute() else path.parent / f.funnel
        funnel = FunnelConfig.load(fp)
    elif f.funnel is not None:
        funnel = FunnelConfig.from_dict(f.funnel, f"replay config {path}", path="funnel")
    return cfg, funnel, dict(f.dataset)


def _row_events(rows: pl.DataFrame, labels: Any) -> list[tuple[str, float]]:
    """(event type, value) of each interaction row as the service is sent it: a click of value
    1, or with a label map the row's own event type (the service stores it as its `means`, a
    `view` as the click it means; a type the map does not name and the funnel does not know is
    a click) with a valued rule's number (watch seconds)."""
    from funnelrec.pipeline.eventlog import EVENT_TYPES

    if labels is None:
        return [("click", 1.0)] * rows.height
    out = []
    for ev, row in zip(rows[labels.event_column].cast(pl.String).to_list(), rows.iter_rows(named=True)):
        rule = labels.map.get(ev)
        if rule is None and ev not in EVENT_TYPES:
            out.append(("click", 1.0))
            continue
        value = float(row[rule.value] or 0.0) if rule is not None and rule.value else 1.0
        out.append((ev, value))
    return out


def replay_funnel_path(path: str | Path | None) -> Path | None:
    """The funnel config file a replay YAML names (its `funnel:` path), the file itself when it
    is a funnel config, else None: where the funnel's `data:` paths are relative to."""
    from funnelrec.core.config import load_yaml

    if path is None:
        return None
    path = Path(path)
    raw = load_yaml(path)
    if _is_funnel_config(raw):
        return path
    f = raw.get("funnel") if isinstance(raw, dict) else None
    if isinstance(f, str):
        return Path(f) if Path(f).is_absolute() else path.parent / f
    return path if f is not None else None
