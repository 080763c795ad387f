"""Closed-loop simulation: users of the synthetic world are served by the real online path
(`RecommenderService` → `Funnel`, with the real experiment assignment and exposure filter) and
react by the world's ground truth; their feedback flows back into the service.

One simulated day:

1. arrivals: `users_per_day` distinct users, drawn with probability ∝ (1 + log activity)^power,
   each making `requests_per_user` requests at uniform times of the day — one session per
   (user, day): the impressions' `request` column r is the user's r-th request of that day in
   time order, so r = 1 is a session's second request (served after the first one's feedback);
2. assignment: `ExperimentPlatform.assign(user_id)` gives the variant's parameter overrides;
   the funnel built from default params + overrides serves the user (one fitted funnel and one
   `RecommenderService` per distinct parameter set, all sharing the one platform);
3. serving: `service.recommend(user_id, k, context={"time": t})` — recall → merge → exposure
   filter → rank, exactly what the HTTP API runs;
4. response: for the item at slot pos (0-based),

       P(click) = P_world(click | u, i, t) · bias(pos) · item_fatigue^n_ui · author_fatigue^a_u,author(i)

   drawn with `SyntheticWorld.sample_response` and thinned by the fatigue factor (like and watch
   time given a click come from the world unchanged);
5. feedback: impressions, clicks, likes and watch time go to `service.feedback` (durable event
   log + exposure filter), clicks also into the training log; every `refit_every` days each
   funnel is refitted on the log plus the simulated clicks, saved and hot-swapped with
   `service.reload`.

Outputs: one row per impression, one row per (user, day) with impressions, clicks, likes,
watch_time and the CUPED covariates, and the experiment report (`build_report`).

    >>> cfg = load_sim_config("configs/sim/ab_itemcf_vs_hot.yaml")     # doctest: +SKIP
    >>> result = Simulator(cfg).run(days=7)                             # doctest: +SKIP
    >>> print(result.report.to_text())                                  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from funnelrec.core.config import from_dict
from funnelrec.core.errors import ConfigError, FunnelrecError
from funnelrec.data.dataset import Dataset
from funnelrec.experiments import ExperimentPlatform, ExperimentsConfig, apply_params, flatten_params
from funnelrec.experiments.report import MetricSpec, Report, ReportConfig, build_report
from funnelrec.filter import DAY, CountingBloomConfig, MemoryExposureStore
from funnelrec.pipeline.builder import FunnelBuilder
from funnelrec.pipeline.config import FunnelConfig
from funnelrec.pipeline.funnel import Funnel
from funnelrec.pipeline.service import RecommenderService, ServiceConfig
from funnelrec.simulate.config import SimConfig

__all__ = ["Simulator", "SimulationResult", "default_metrics", "funnel_key", "position_bias"]


def default_metrics() -> tuple[MetricSpec, ...]:
    """CTR as a ratio of per-user sums (delta method); per-user means with CUPED on the
    pre-period totals; the share of users who clicked at all."""
    return (
        MetricSpec("ctr", kind="ratio", numerator="clicks", denominator="impressions"),
        MetricSpec("clicks_per_user", column="clicks", covariate="pre_clicks"),
        MetricSpec("watch_time_per_user", column="watch_time", covariate="pre_watch_time"),
        MetricSpec("likes_per_user", column="likes"),
        MetricSpec("clicking_users", kind="proportion", column="clicked"),
    )


def funnel_key(params: dict[str, Any]) -> str:
    """Short stable name of a parameter-override set: "funnel-" + sha1 of its sorted JSON."""
    blob = json.dumps(params, sort_keys=True, default=str).encode()
    return "funnel-" + hashlib.sha1(blob).hexdigest()[:8]


def position_bias(positions: np.ndarray, kind: str, exponent: float) -> np.ndarray:
    """(1 + pos)^(−exponent) for "world", 1/log2(pos + 2) for "log2"; pos 0-based."""
    pos = np.asarray(positions, dtype=np.float64)
    if kind == "world":
        return (1.0 + pos) ** (-exponent)
    if kind == "log2":
        return 1.0 / np.log2(pos + 2.0)
    raise ConfigError(f"unknown position_bias {kind!r}; known: world, log2")


@dataclass
class SimulationResult:
    """impressions: one row per shown item (day, ts, user_id, user_idx, request, position,
    item_idx, funnel, experiment, variant, p_click, click, like, watch_time).
    user_days: one row per (user, day) with impressions, clicks, likes, watch_time, clicked,
    pre_clicks, pre_watch_time, experiment, variant, funnel.
    funnels: funnel key → the parameter overrides that built it. events: the services'
    durable event logs, concatenated (plus a `funnel` column)."""

    impressions: pl.DataFrame
    user_days: pl.DataFrame
    funnels: dict[str, dict[str, Any]]
    report: Report
    events: pl.DataFrame
    seconds: dict[str, float] = field(default_factory=dict)
    model_versions: dict[str, str] = field(default_factory=dict)  # funnel key → version served last

    def write(self, out: str | Path, html: bool = True) -> dict[str, Path]:
        """impressions.parquet, user_days.parquet, events.parquet, funnels.json, report.txt and
        (with html) report.html under `out`."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        paths = {
            "impressions": out / "impressions.parquet",
            "user_days": out / "user_days.parquet",
            "events": out / "events.parquet",
            "funnels": out / "funnels.json",
            "report_text": out / "report.txt",
        }
        self.impressions.write_parquet(paths["impressions"])
        self.user_days.write_parquet(paths["user_days"])
        self.events.write_parquet(paths["events"])
        paths["funnels"].write_text(json.dumps(self.funnels, indent=2, sort_keys=True, default=str))
        paths["report_text"].write_text(self.report.to_text() + "\n")
        if html:
            paths["report_html"] = self.report.to_html(out / "report.html")
        return paths


class _Fatigue:
    """Per-user exposure memory: item counts (int) and author counts decaying with a half-life."""

    def __init__(self, n_items: int, n_authors: int, half_life_s: float) -> None:
        self.n_items, self.n_authors, self.half_life_s = n_items, n_authors, half_life_s
        self._items: dict[int, np.ndarray] = {}
        self._authors: dict[int, tuple[np.ndarray, int]] = {}

    def counts(self, user: int, items: np.ndarray, authors: np.ndarray, t: int) -> tuple[np.ndarray, np.ndarray]:
        it = self._items.get(user)
        n_item = np.zeros(len(items)) if it is None else it[items].astype(np.float64)
        au = self._authors.get(user)
        if au is None:
            return n_item, np.zeros(len(items))
        a, last = au
        return n_item, a[authors] * 0.5 ** ((t - last) / self.half_life_s)

    def add(self, user: int, items: np.ndarray, authors: np.ndarray, t: int) -> None:
        it = self._items.get(user)
        if it is None:
            it = self._items[user] = np.zeros(self.n_items, np.int32)
        np.add.at(it, items, 1)
        au = self._authors.get(user)
        a = np.zeros(self.n_authors) if au is None else au[0] * 0.5 ** ((t - au[1]) / self.half_life_s)
        np.add.at(a, authors, 1.0)
        self._authors[user] = (a, t)


class Simulator:
    """Runs `SimConfig` against the real serving path; see the module doc.

    dataset: the synthetic world to use (default: built from `config.world`); it must carry
    `extras["world"]`, a `SyntheticWorld`.
    """

    def __init__(self, config: SimConfig, dataset: Dataset | None = None) -> None:
        self.config = config
        self.dataset = dataset

    # ------------------------------------------------------------------ setup
    def _setup(self) -> None:
        cfg = self.config
        if self.dataset is None:
            from funnelrec.data import load_dataset

            w = cfg.world
            self.dataset = load_dataset("synthetic", n_users=w.n_users, n_items=w.n_items,
                                        n_interactions=w.n_interactions, seed=w.seed, **w.params)
        ds = self.dataset
        self.world = ds.extras.get("world")
        if self.world is None:
            raise ConfigError(f"dataset {ds.name!r} has no ground truth (extras['world']); simulate the synthetic world")
        self.base_funnel = dataclasses.asdict(FunnelConfig.from_dict(dict(cfg.funnel)))
        known = set(flatten_params(self.base_funnel))
        self.platform = ExperimentPlatform(from_dict(ExperimentsConfig, dict(cfg.experiments), "experiments"), known)
        self.experiment = self.platform.experiment(cfg.experiment)
        inter = ds.interactions
        label = "click" if "click" in inter.columns else None
        self.log_clicks = inter.filter(pl.col(label) == 1) if label else inter
        self.user_ids = ds.users["user_id"].to_list()
        self.item_ids = ds.items["item_id"].to_numpy()
        n_users = ds.n_users
        activity = np.bincount(inter["user_idx"].to_numpy(), minlength=n_users).astype(np.float64)
        w = (1.0 + activity) ** cfg.traffic.activity_power
        self.arrival_p = w / w.sum()
        self.t0 = int(self.world.config.end_time)
        pre = self.log_clicks.filter(pl.col("timestamp") >= self.t0 - cfg.pre_days * DAY)
        u = pre["user_idx"].to_numpy()
        self.pre_clicks = np.bincount(u, minlength=n_users).astype(np.float64)
        wt = pre["watch_time"].to_numpy().astype(np.float64) if "watch_time" in pre.columns else np.zeros(len(u))
        self.pre_watch = np.bincount(u, weights=wt, minlength=n_users)
        self.services: dict[str, RecommenderService] = {}
        self.funnel_params: dict[str, dict[str, Any]] = {}
        self.funnel_configs: dict[str, FunnelConfig] = {}
        self.bloom = CountingBloomConfig(capacity=cfg.exposure_capacity, fp_rate=cfg.exposure_fp_rate,
                                         window_s=cfg.exposure_window_days * DAY, slice_s=DAY)

    def _fit_funnel(self, fc: FunnelConfig, clicks: pl.DataFrame) -> Funnel:
        cfg = self.config
        if not cfg.train_ranker:
            return FunnelBuilder(fc).fit(self.dataset, clicks)
        cut = clicks["timestamp"].quantile(1.0 - cfg.label_fraction)
        train = clicks.filter(pl.col("timestamp") < cut)
        labels = clicks.filter(pl.col("timestamp") >= cut)
        return FunnelBuilder(fc).fit(self.dataset, train, labels=labels)

    def _service_for(self, params: dict[str, Any]) -> tuple[str, RecommenderService]:
        key = funnel_key(params)
        svc = self.services.get(key)
        if svc is None:
            try:
                fc = FunnelConfig.from_dict(apply_params(self.base_funnel, params))
            except FunnelrecError as e:
                raise ConfigError(f"variant parameters {params} give an invalid funnel: {e}") from None
            funnel = self._fit_funnel(fc, self.log_clicks)
            # the simulated clock may run ahead of the wall clock: no future bound on event times
            service = from_dict(ServiceConfig, {"eventlog_synchronous": "NORMAL", "max_future_s": None,
                                                **self.config.service,
                                                "experiments_fitted": True}, "simulation config", path="service")
            svc = RecommenderService(funnel, service,
                                     experiments=self.platform,
                                     version=f"{key}@day0")
            svc.exposure.close()
            svc.exposure = MemoryExposureStore(self.bloom)
            self.services[key], self.funnel_params[key], self.funnel_configs[key] = svc, dict(params), fc
        return key, svc

    def _refit(self, clicks: pl.DataFrame, day: int, tmp: Path) -> None:
        for key, svc in self.services.items():
            path = tmp / f"{key}@day{day}"
            self._fit_funnel(self.funnel_configs[key], clicks).save(path)
            svc.reload(path)

    # ------------------------------------------------------------------ the loop
    def run(self, days: int | None = None, progress: bool = False) -> SimulationResult:
        """Simulate `days` days (default: config.days) and build the report."""
        t_start = time.perf_counter()
        cfg = self.config
        days = cfg.days if days is None else int(days)
        if days < 1:
            raise ConfigError(f"days must be ≥ 1, got {days}")
        self._setup()
        n_users = self.dataset.n_users
        if cfg.traffic.users_per_day > n_users:
            raise ConfigError(f"traffic.users_per_day ({cfg.traffic.users_per_day}) exceeds the world's {n_users} users")
        world = self.world
        rng = np.random.default_rng(cfg.seed)
        beh = cfg.behaviour
        pos_exp = float(world.config.position_exponent)
        authors_of = np.asarray(world.item_author, np.int64)
        fatigue = _Fatigue(self.dataset.n_items, int(authors_of.max()) + 1, beh.fatigue_half_life_days * DAY)
        layer = self.experiment.layer
        self._days = days
        for params in sorted({json.dumps(self.platform.assign(u).params, sort_keys=True, default=str)
                              for u in self.user_ids}):
            self._service_for(json.loads(params))  # fit every funnel some user will need, up front
        t_fit = time.perf_counter() - t_start

        cols: dict[str, list] = {c: [] for c in ("day", "ts", "user_idx", "request", "position", "item_idx",
                                                "funnel", "experiment", "variant", "p_click", "click", "like",
                                                "watch_time")}
        sim_clicks: list[pl.DataFrame] = []
        serve_s = 0.0
        refit_s = 0.0
        it = range(days)
        if progress:
            from tqdm import tqdm

            it = tqdm(it, desc="simulating days", unit="day")
        with tempfile.TemporaryDirectory(prefix="funnelrec-sim-") as tmpdir:
            for day in it:
                day_start = self.t0 + day * DAY
                users = rng.choice(n_users, cfg.traffic.users_per_day, replace=False, p=self.arrival_p)
                # sorted per user: request r is the r-th of the user's day (the same draws, served in
                # the same order; only the labels follow time)
                times = np.sort(day_start + rng.integers(0, DAY, (len(users), cfg.traffic.requests_per_user)), axis=1)
                order = np.argsort(times, axis=None, kind="stable")
                req_user = np.repeat(users, cfg.traffic.requests_per_user)[order]
                req_time = times.reshape(-1)[order]
                req_no = np.tile(np.arange(cfg.traffic.requests_per_user), len(users))[order]
                day_clicks: list[tuple[int, int, int, int, float]] = []
                t1 = time.perf_counter()
                for u, t, r in zip(req_user.tolist(), req_time.tolist(), req_no.tolist()):
                    uid = self.user_ids[u]
                    a = self.platform.assign(uid)
                    key, svc = self._service_for(a.params)
                    served = svc.recommend(uid, k=self.funnel_configs[key].k, context={"time": t})
                    if served.experiments != a.record:
                        raise FunnelrecError(f"user {uid}: the service assigned {served.experiments}, the router {a.record}")
                    items = np.asarray(served.rec.items, np.int64)
                    if items.size == 0:
                        continue
                    pos = np.arange(items.size)
                    authors = authors_of[items]
                    n_item, n_author = fatigue.counts(u, items, authors, t)
                    fat = beh.item_fatigue ** n_item * beh.author_fatigue ** n_author
                    if beh.position_bias == "world":
                        resp = world.sample_response(u, items, rng, position=pos, t=t)
                        extra = fat
                    else:
                        resp = world.sample_response(u, items, rng, t=t)
                        extra = fat * position_bias(pos, beh.position_bias, pos_exp)
                    keep = rng.random(items.size) < extra  # thinning: P(click) × extra, like/watch given click unchanged
                    click = resp["click"].astype(bool) & keep
                    like = resp["like"].astype(bool) & click
                    watch = np.where(click, resp["watch_time"], 0.0)
                    p_click = world.true_preference(u, items, t) * position_bias(pos, beh.position_bias, pos_exp) * fat
                    fatigue.add(u, items, authors, t)
                    ext = self.item_ids[items].tolist()
                    events = [{"item_id": i, "type": "impression", "ts": t} for i in ext]
                    for j in np.flatnonzero(click).tolist():
                        events.append({"item_id": ext[j], "type": "click", "ts": t})
                        if like[j]:
                            events.append({"item_id": ext[j], "type": "like", "ts": t})
                        events.append({"item_id": ext[j], "type": "watch_time", "value": float(watch[j]), "ts": t})
                        day_clicks.append((u, int(items[j]), t, int(like[j]), float(watch[j])))
                    svc.feedback(served.request_id, uid, events)
                    rec = a.record.get(layer, {})
                    n = items.size
                    cols["day"] += [day] * n
                    cols["ts"] += [t] * n
                    cols["user_idx"] += [u] * n
                    cols["request"] += [r] * n
                    cols["position"] += pos.tolist()
                    cols["item_idx"] += items.tolist()
                    cols["funnel"] += [key] * n
                    cols["experiment"] += [rec.get("experiment")] * n
                    cols["variant"] += [rec.get("variant")] * n
                    cols["p_click"] += p_click.tolist()
                    cols["click"] += click.astype(int).tolist()
                    cols["like"] += like.astype(int).tolist()
                    cols["watch_time"] += watch.astype(float).tolist()
                serve_s += time.perf_counter() - t1
                if day_clicks:
                    sim_clicks.append(self._clicks_frame(day_clicks))
                if cfg.refit_every and (day + 1) % cfg.refit_every == 0 and day + 1 < days:
                    t1 = time.perf_counter()
                    self._refit(pl.concat([self.log_clicks, *sim_clicks], how="vertical_relaxed"), day + 1, Path(tmpdir))
                    refit_s += time.perf_counter() - t1

        impressions = self._impressions_frame(cols)
        user_days = self._user_days(impressions)
        t1 = time.perf_counter()
        report = self.report(user_days)
        events = pl.concat([svc.events.read().with_columns(pl.lit(key).alias("funnel"))
                            for key, svc in self.services.items()], how="vertical_relaxed")
        versions = {key: svc.current.version for key, svc in self.services.items()}
        for svc in self.services.values():
            svc.close()
        seconds = {"fit": t_fit, "serve": serve_s, "refit": refit_s, "report": time.perf_counter() - t1,
                   "total": time.perf_counter() - t_start}
        return SimulationResult(impressions, user_days, dict(self.funnel_params), report, events, seconds, versions)

    # ------------------------------------------------------------------ tables and report
    def _clicks_frame(self, rows: list[tuple[int, int, int, int, float]]) -> pl.DataFrame:
        u, i, t, like, watch = (np.asarray(c) for c in zip(*rows))
        schema = self.log_clicks.schema
        data: dict[str, Any] = {
            "user_id": np.asarray(self.dataset.users["user_id"].to_numpy())[u],
            "item_id": self.item_ids[i], "timestamp": t, "click": np.ones(len(u)), "like": like,
            "watch_time": watch, "user_idx": u, "item_idx": i,
        }
        frame = pl.DataFrame({c: data[c] for c in schema if c in data})
        missing = [c for c in schema if c not in data]
        if missing:
            frame = frame.with_columns(pl.lit(None).alias(c) for c in missing)
        return frame.select(list(schema)).cast(dict(schema))

    def _impressions_frame(self, cols: dict[str, list]) -> pl.DataFrame:
        schema = {"day": pl.Int32, "ts": pl.Int64, "user_idx": pl.Int64, "request": pl.Int32, "position": pl.Int32,
                  "item_idx": pl.Int64, "funnel": pl.Utf8, "experiment": pl.Utf8, "variant": pl.Utf8,
                  "p_click": pl.Float64, "click": pl.Int8, "like": pl.Int8, "watch_time": pl.Float64}
        df = pl.DataFrame(cols, schema=schema)
        ids = pl.Series("user_id", [str(x) for x in self.user_ids], dtype=pl.Utf8)
        return df.with_columns(ids.gather(df["user_idx"]).alias("user_id")).select("user_id", *schema)

    def _user_days(self, imp: pl.DataFrame) -> pl.DataFrame:
        agg = (imp.group_by("user_id", "user_idx", "day", "experiment", "variant", "funnel")
               .agg(pl.len().cast(pl.Float64).alias("impressions"), pl.col("click").sum().cast(pl.Float64).alias("clicks"),
                    pl.col("like").sum().cast(pl.Float64).alias("likes"), pl.col("watch_time").sum().alias("watch_time"),
                    pl.col("p_click").sum().alias("expected_clicks"))
               .sort("day", "user_idx"))
        u = agg["user_idx"].to_numpy()
        return agg.with_columns(
            (pl.col("clicks") > 0).cast(pl.Int8).alias("clicked"),
            pl.Series("pre_clicks", self.pre_clicks[u]),
            pl.Series("pre_watch_time", self.pre_watch[u]),
        )

    def report_config(self, metrics: tuple[MetricSpec, ...] | None = None) -> ReportConfig:
        e = self.experiment
        shares = self.platform.traffic_shares(e.name)
        title = self.config.title or f"Simulated experiment {e.name!r} ({getattr(self, '_days', self.config.days)} days)"
        return ReportConfig(metrics=metrics or default_metrics(), control=e.control_variant,
                            expected_shares=shares, alpha=self.config.alpha, title=title)

    def report(self, user_days: pl.DataFrame, metrics: tuple[MetricSpec, ...] | None = None) -> Report:
        """The experiment report on the users of `config.experiment` (other users are dropped)."""
        rows = user_days.filter(pl.col("experiment") == self.experiment.name)
        if rows.is_empty():
            raise ConfigError(f"no simulated user fell into experiment {self.experiment.name!r}; raise its traffic")
        return build_report(rows, self.report_config(metrics))
