"""The online loop measured in closed loop: a world with a ground truth answers what the funnel shows.

    fitted = fit_for_replay(ds, funnel_config, ReplayConfig(click_column="click"))
    rows = closed_loop(fitted, ds.extras["world"], "online", ReplayConfig(...), LoopConfig())

A replay (online/replay.py) scores each mode against what a *logged* policy made users do, so a
mode is penalised for what it shows: the exposure filter holds back for a week the items the
log goes on showing and its users clicking, and a frozen funnel loses half its NDCG@10 within
three days with no drift at all (docs/BENCHMARKS.md, Session 4). That measures the log, not the
funnel. Here the users of a synthetic world (data/synthetic.py, `SyntheticWorld.at(t)`: the
preferences in force at t, drift included) answer the funnel's own lists:

1. each replayed day d (the days of `fitted.replay_rows`), `users_per_day` distinct users are
   drawn (seeded) with P(u) ∝ (1 + u's fit-time interactions)^`activity_power` (the active come
   back more often, as in simulate/simulator.py), each making `requests_per_user` requests at
   uniform times of the day, served in time order; each request asks for k items at context time t, excluding what
   the user clicked since the cut (the fit-time clicks the channels exclude themselves);
2. the world answers the k shown items at slot p with P(click) = P_t(click | u, i)·(1 + p)^(−e)
   (`sample_response` of `world.at(t)`, its position bias);
3. feedback: the k impressions (every mode: the exposure filter), and in modes realtime and
   online the clicks, and a like for each liked click, on the request's id. Each request's
   draws come from a generator seeded by (seed, day, user, request), the same in every mode;
4. mode online: one learner step at the end of the day and the reload (`mode_service`), with
   the live learner's defaults (`cfg.learn` on top): here, as in a deployment, the clicks come
   on what was shown, not the replay's organic positives (`REPLAY_LEARN`).

Metric of a request: NDCG@k with graded gains g_i = P_t(click | u, i) (the truth, without the
position bias) over the items the funnel may show then:

    DCG   = Σ_{p<k} g_{a_p} / log2(p + 2)
    IDCG  = the same over the k largest g among E ∪ returned, E = the published items the user
            has not clicked (fit-time or in the loop) and the exposure filter does not hold back
            (this harness's own record of what it showed, by the service's filter's `window_s`
            and `slice_s`: an item shown at s is back once (t − window) is in a later slice
            than s); the returned candidates passed the service's own filter, E ⊇ them (the
            test checks)
    NDCG@k = DCG / IDCG

so every mode is judged against the best list its own rules allowed, on its own requests; the
paired test of two modes is over (day, user) cells (a user's requests of a day averaged), the
same users at the same times in every mode (the arrivals are drawn from `seed` alone). Also per
request: the realised clicks and the expected clicks Σ_p g_{a_p}(1 + p)^(−e).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from funnelrec.core.errors import ConfigError, DataError
from funnelrec.online.replay import DAY, FittedReplay, ReplayConfig, mode_service


@dataclass(frozen=True)
class LoopConfig:
    """Traffic of the closed loop (module doc)."""

    users_per_day: int = 800  # the drift world's log has ~800 active users a day of 3,000
    requests_per_user: int = 2
    activity_power: float = 1.0  # P(u arrives) ∝ (1 + u's fit-time interactions)^power; 0 = uniform
    seed: int = 0

    def __post_init__(self) -> None:
        if self.users_per_day < 1 or self.requests_per_user < 1:
            raise ConfigError(f"loop: users_per_day and requests_per_user must be ≥ 1, got {self.users_per_day}, "
                              f"{self.requests_per_user}")
        if self.activity_power < 0:
            raise ConfigError(f"loop: activity_power must be ≥ 0, got {self.activity_power}")


def graded_ndcg(gains_shown: np.ndarray, gains_allowed: np.ndarray, k: int) -> float:
    """NDCG@k of a list whose items have true gains `gains_shown` (in list order), against the
    best k of `gains_allowed` (the gains of every item the list could have held, the shown ones
    included); NaN when no allowed item has a gain > 0."""
    g = np.asarray(gains_shown, np.float64)[:k]
    disc = 1.0 / np.log2(np.arange(k) + 2.0)
    best = np.sort(np.asarray(gains_allowed, np.float64))[::-1][:k]
    idcg = float(best @ disc[: len(best)])
    if idcg <= 0:
        return math.nan
    return float(g @ disc[: len(g)]) / idcg


def closed_loop(fitted: FittedReplay, world: Any, mode: str, cfg: ReplayConfig, loop: LoopConfig | None = None,
                workdir: Any = None, learn_log: list | None = None, progress: bool = False,
                on_request: Callable[[int, int, np.ndarray], None] | None = None) -> pl.DataFrame:
    """Run the closed loop (module doc) in `mode` over the days of `fitted.replay_rows`; one row
    per request: mode, day (since the data's first day), user_id, request (0-based within the
    user's day), ts, items (shown, external ids as strings), clicked (of those), ndcg,
    ndcg_candidates (the recall ceiling: the truth's best k of all the ranked candidates the
    request returned, `cfg.auc_k` asked for, against the same ideal), clicks, expected_clicks,
    model_version. Memory: two (users × items) arrays (clicked, last shown): a
    harness for worlds of thousands, not millions. `on_request(user_idx, t, ranked item indices)`
    sees every request's whole ranked answer (bench/drift_bound.py re-ranks it)."""
    loop = loop or LoopConfig()
    ds = fitted.dataset
    n_users, n_items = ds.n_users, ds.n_items
    if world.n_users != n_users or world.n_items != n_items:
        raise DataError(f"closed loop: the world has {world.n_users} users × {world.n_items} items, the dataset "
                        f"{n_users} × {n_items}; give the dataset's own world (extras['world'])")
    if loop.users_per_day > n_users:
        raise ConfigError(f"loop: users_per_day ({loop.users_per_day}) exceeds the world's {n_users} users")
    user_ids = ds.users["user_id"].to_list()
    item_ids = ds.items["item_id"].to_list()
    item_map = ds.item_ids
    publish = np.asarray(world.publish_time, np.int64)
    e = float(world.config.position_exponent)
    k = cfg.k
    all_items = np.arange(n_items)
    clicked = np.zeros((n_users, n_items), bool)  # fit-time and loop clicks: never allowed again
    fu = item_map.indices(fitted.fit_rows["item_id"].to_list())
    uu = ds.user_ids.indices(fitted.fit_rows["user_id"].to_list())
    clicked[uu, fu] = True
    arrival_p = (1.0 + np.bincount(uu, minlength=n_users)) ** loop.activity_power
    arrival_p /= arrival_p.sum()
    last_shown = np.full((n_users, n_items), np.iinfo(np.int64).min // 2, np.int64)
    label_items = fitted.unexcluded()  # the fit rows the channels did not see: excluded by the request
    since_cut: dict[int, list] = {int(ds.user_ids.index(u)): list(v) for u, v in label_items.items()}
    days = sorted(set(fitted.replay_rows["day"].to_list()))
    rng_arrivals = np.random.default_rng([loop.seed, 0])
    out: dict[str, list] = {c: [] for c in ("day", "user_id", "request", "ts", "items", "clicked", "ndcg",
                                            "ndcg_candidates", "clicks", "expected_clicks", "model_version")}
    # the world's users click on the funnel's own lists, so the online learner runs the live
    # defaults (impressions with their clicks), `cfg.learn` on top — not the replay's candidate form
    with mode_service(fitted, mode, cfg, workdir, learn_log, learn_base={}) as (client, end_of_day):
        store_cfg = getattr(getattr(client.service, "exposure", None), "config", None)
        window = getattr(store_cfg, "window_s", None)
        window = 7 * DAY if window is None else int(window)
        slice_s = int(getattr(store_cfg, "slice_s", None) or 1)  # the filter drops a shown item by whole slices
        it = days
        if progress:
            from tqdm import tqdm

            it = tqdm(days, desc=f"closed loop {mode}", unit="day")
        for day in it:
            start = int(day) * cfg.day_seconds
            users = rng_arrivals.choice(n_users, loop.users_per_day, replace=False, p=arrival_p)
            times = np.sort(start + rng_arrivals.integers(0, cfg.day_seconds, (len(users), loop.requests_per_user)),
                            axis=1)
            order = np.argsort(times, axis=None, kind="stable")
            req_u = np.repeat(users, loop.requests_per_user)[order]
            req_t = times.reshape(-1)[order]
            req_n = np.tile(np.arange(loop.requests_per_user), len(users))[order]
            for u, t, r in zip(req_u.tolist(), req_t.tolist(), req_n.tolist()):
                truth = world.at(t)
                mine = since_cut.setdefault(u, [])
                ans = client.recommend(user_ids[u], max(k, cfg.auc_k), t, mine)
                ranked = item_map.indices(ans.item_ids) if ans.item_ids else np.zeros(0, np.int64)
                shown = ranked[:k]
                if on_request is not None:
                    on_request(u, int(t), ranked)
                gains = truth.true_preference(np.array([u]), all_items, t).astype(np.float64).ravel()
                gains[publish > t] = 0.0  # not published yet: nothing to gain
                # shown at s: held back while s's slice is within the window (filter/bloom.py slices)
                allowed = (~clicked[u]) & (publish <= t) & (last_shown[u] // slice_s < (t - window) // slice_s)
                allowed[ranked] = True  # what the service returned passed its own filter (the test checks E ⊇ it)
                out["day"].append(int(day) - fitted.first_day)
                out["user_id"].append(str(user_ids[u]))
                out["request"].append(r)
                out["ts"].append(int(t))
                out["items"].append([str(item_ids[i]) for i in shown.tolist()])
                out["ndcg"].append(graded_ndcg(gains[shown], gains[allowed], k))
                # the recall ceiling: the best k of the ranked candidates (by the truth) against the same ideal
                out["ndcg_candidates"].append(graded_ndcg(np.sort(gains[ranked])[::-1], gains[allowed], k))
                bias = (1.0 + np.arange(len(shown))) ** (-e)
                out["expected_clicks"].append(float(gains[shown] @ bias))
                out["model_version"].append(ans.model_version)
                if len(shown) == 0:
                    out["clicks"].append(0)
                    out["clicked"].append([])
                    continue
                # one generator per request: the same (day, user, request) draws the same uniforms in
                # every mode (common random numbers: the paired differences are tighter)
                rng = np.random.default_rng([loop.seed, 1, int(day), u, r])
                resp = truth.sample_response(np.full(len(shown), u), shown, rng, position=np.arange(len(shown)), t=t)
                hit = resp["click"].astype(bool)
                out["clicks"].append(int(hit.sum()))
                out["clicked"].append([str(item_ids[i]) for i in shown[hit].tolist()])
                last_shown[u, shown] = t
                events = [{"item_id": item_ids[i], "type": "impression", "ts": t} for i in shown.tolist()]
                if mode != "static":
                    for j in np.flatnonzero(hit).tolist():
                        events.append({"item_id": item_ids[shown[j]], "type": "click", "ts": t})
                        if resp["like"][j]:
                            events.append({"item_id": item_ids[shown[j]], "type": "like", "ts": t})
                client.feedback(ans.request_id, user_ids[u], events)
                for i in shown[hit].tolist():
                    if not clicked[u, i]:
                        clicked[u, i] = True
                        mine.append(item_ids[i])
            if end_of_day is not None:
                end_of_day()
    return pl.DataFrame({"mode": [mode] * len(out["day"]), **out},
                        schema={"mode": pl.String, "day": pl.Int64, "user_id": pl.String, "request": pl.Int64,
                                "ts": pl.Int64, "items": pl.List(pl.String), "clicked": pl.List(pl.String),
                                "ndcg": pl.Float64, "ndcg_candidates": pl.Float64, "clicks": pl.Int64,
                                "expected_clicks": pl.Float64, "model_version": pl.String})


def _mean(x: pl.Series) -> float | None:
    x = x.drop_nans().drop_nulls()
    return float(x.mean()) if len(x) else None


def summarize_loop(records: pl.DataFrame, cfg: ReplayConfig, baseline: str = "static") -> dict[str, Any]:
    """Per mode: mean NDCG@k over requests, CTR (clicks / items shown) and expected clicks per
    request; per day the same; each mode − `baseline` paired over (day, user) cells (a user's
    requests of the day averaged) with the bootstrap CI of `online.replay.bootstrap_ci`."""
    from funnelrec.online.replay import MODES, bootstrap_ci

    k = cfg.k
    modes = [m for m in MODES if m in set(records["mode"].to_list())]
    out: dict[str, Any] = {"modes": {}, "per_day": {}, "differences": {}}
    for m in modes:
        r = records.filter(pl.col("mode") == m)
        shown = r["items"].list.len().sum()
        out["modes"][m] = {f"ndcg@{k}": _mean(r["ndcg"]), f"ndcg@{k}_candidates": _mean(r["ndcg_candidates"]),
                           "ctr": float(r["clicks"].sum()) / shown if shown else None,
                           "expected_clicks": float(r["expected_clicks"].mean()), "requests": r.height}
        daily = r.group_by("day").agg(pl.col("ndcg").fill_nan(None).mean(), pl.col("ndcg_candidates").fill_nan(None).mean(),
                                      pl.col("clicks").sum(), pl.col("items").list.len().sum().alias("n"),
                                      pl.col("expected_clicks").mean()).sort("day")
        out["per_day"][m] = {"day": daily["day"].to_list(), f"ndcg@{k}": daily["ndcg"].to_list(),
                             f"ndcg@{k}_candidates": daily["ndcg_candidates"].to_list(),
                             "ctr": (daily["clicks"] / daily["n"]).to_list(),
                             "expected_clicks": daily["expected_clicks"].to_list()}
    if baseline not in modes:
        return out
    cells = (records.group_by("mode", "day", "user_id")
             .agg(pl.col("ndcg").fill_nan(None).mean(), pl.col("clicks").mean(), pl.col("expected_clicks").mean()))
    base = cells.filter(pl.col("mode") == baseline).drop("mode")
    for m in modes:
        if m == baseline:
            continue
        pair = cells.filter(pl.col("mode") == m).drop("mode").join(base, on=["day", "user_id"], suffix="_base")
        diff: dict[str, Any] = {}
        for metric, name in (("ndcg", f"ndcg@{k}"), ("clicks", "clicks_per_request"), ("expected_clicks", "expected_clicks")):
            d = (pair[metric] - pair[f"{metric}_base"]).cast(pl.Float64).fill_null(float("nan")).to_numpy()
            d = d[~np.isnan(d)]
            lo, hi = bootstrap_ci(d, cfg.bootstrap_resamples, cfg.confidence, cfg.seed)
            diff[name] = {"mean": float(d.mean()) if len(d) else None,
                          f"ci{round(cfg.confidence * 100)}": [lo, hi], "cells": int(len(d))}
        out["differences"][f"{m}-{baseline}"] = diff
    return out
