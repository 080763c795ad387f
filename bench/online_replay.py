"""The online loop measured by replay (issue #10 "Done when"): static vs real-time state vs
real-time state + online learning, through the real service. Prints one JSON object.

    .venv/bin/python bench/online_replay.py                  # both cases, all modes
    .venv/bin/python bench/online_replay.py --cases drift --modes static,realtime

(a) MovieLens-100k: fitted on the first 50 % of time (configs/funnel/ml100k.yaml), the rest
    replayed day by day (online/replay.py): each next day's NDCG@10 and AUC per mode, and
    online − static (and realtime − static) with the bootstrap 95 % CI over user-days. A like
    is a rating ≥ 4 (this bench's choice; the replay has no default); the learner's settings
    are `REPLAY_LEARN` (below) in every replayed case, `--learn` goes on top of them (case loop:
    on top of the live learner's defaults, as online/loop.py runs them).
(b) The synthetic world with a preference drift at day 15 (every user's two loved tags change;
    data/synthetic.py) over 24 days, so the cut falls at day 12: three pre-drift days replayed.
    Rows with click > 0 are the interactions, like > 0 the likes. NDCG@10 per day per mode, and
    whether a mode recovers to ≥ 90 % of its pre-drift NDCG@10 on one of the 3 days after the
    drift day (after 1–3 end-of-day updates) — online should, static should not.
(control) The same world without the drift, every mode: what staleness alone costs (new items;
    the 7-day exposure filter holding back the items shown, which the logging policy goes on
    showing and the users clicking). `vs_no_drift` in (b): each mode's drifted NDCG@10 as a
    share of its own no-drift NDCG@10, day by day — the drift's effect with staleness removed.

(loop) The drift world in closed loop (online/loop.py): the world's users answer the funnel's own
    lists (clicks drawn from the ground truth in force that day, drift included), so no mode is
    penalised for what a logging policy showed; NDCG@10 with the true click probabilities as
    gains, against the best list the mode's rules allowed. Recovery as in (b). `--loop-control`
    adds the same loop on the world without the drift.

A mode whose piece of the loop has not landed (online/state.py, online/learner.py) is listed
under "pending" with the reason.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path

import polars as pl

from funnelrec.data import load_dataset
from funnelrec.online.replay import (  # REPLAY_LEARN: the replay's learn: settings, --learn on top
    MODES,
    REPLAY_LEARN,
    ReplayConfig,
    ReplayPending,
    fit_for_replay,
    merged_learn,
    recovery,
    replay,
    summarize,
)
from funnelrec.pipeline.config import FunnelConfig

ROOT = Path(__file__).resolve().parents[1]
FUNNEL = ROOT / "configs" / "funnel" / "ml100k.yaml"  # generic channels + LR; nothing MovieLens-specific
DRIFT_DAY = 15
WORLD = {"n_users": 3000, "n_items": 1000, "n_interactions": 300_000, "days": 24, "seed": 0,
         "drift_day": DRIFT_DAY, "drift_fraction": 1.0}


def _rounded(x):
    if isinstance(x, float):
        return round(x, 5)
    if isinstance(x, dict):
        return {k: _rounded(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_rounded(v) for v in x]
    return x


def funnel_config(columns: dict | None = None) -> FunnelConfig:
    """configs/funnel/ml100k.yaml, with the ranker's attribute columns replaced by `columns`
    (the ranker's defaults name MovieLens columns)."""
    from funnelrec.core.config import load_yaml

    raw = load_yaml(FUNNEL)
    if columns:
        raw["rank"] = {**raw.get("rank", {}), **columns}
    return FunnelConfig.from_dict(raw)


# the synthetic world's attribute columns for the ranker's profile and match features
SYNTHETIC_COLUMNS = {"user_columns": ["age_band", "gender", "region"], "item_columns": ["tags", "author"],
                     "match_columns": ["tags", "author"]}


def learner_summary(steps: list[dict]) -> dict:
    """The learner steps' reports of one mode, summed."""
    return {"steps": len(steps), "published": sum(r["published"] for r in steps),
            "parts": sorted({p for r in steps for p in r["parts"]}),
            "refused": sum(bool(r["refused"]) for r in steps),
            "refusals": [r["refused"] for r in steps if r["refused"]][:3],
            "samples": sum(r.get("samples", 0) for r in steps),
            "step_s_total": round(sum(r.get("step_s", 0.0) for r in steps), 1)}


def synthetic_config(args, loop: bool = False) -> ReplayConfig:
    """The replay config of the synthetic world's cases: clicks are the interactions, like > 0 a
    like. `loop`: --learn alone (closed_loop puts it over the live learner's defaults)."""
    learn = json.loads(args.learn)
    return ReplayConfig(click_column="click", like_column="like", like_threshold=1.0,
                        bootstrap_resamples=args.resamples, learn=learn if loop else merged_learn(REPLAY_LEARN, learn))


def run_case(ds, cfg: ReplayConfig, modes: list[str], funnel: FunnelConfig) -> tuple[dict, object]:
    t0 = time.perf_counter()
    fitted = fit_for_replay(ds, funnel, cfg)
    records, pending, seconds, learner = [], {}, {"fit": round(fitted.fit_seconds, 1)}, {}
    for m in modes:
        t1 = time.perf_counter()
        steps: list = []
        try:
            records.append(replay(fitted, m, cfg, learn_log=steps))
        except ReplayPending as e:
            pending[m] = str(e)
        seconds[m] = round(time.perf_counter() - t1, 1)
        if steps:
            learner[m] = learner_summary(steps)
    out = summarize(pl.concat(records), cfg) if records else {"modes": {}, "per_day": {}, "differences": {}}
    out.update({"fit_rows": fitted.fit_rows.height, "replay_rows": fitted.replay_rows.height,
                "days_replayed": fitted.replay_rows["day"].n_unique(),
                "first_replayed_day": int(fitted.cut_time // cfg.day_seconds - fitted.first_day),
                "pending": pending, "learner": learner, "seconds": {**seconds, "total": round(time.perf_counter() - t0, 1)}})
    return out, fitted


def vs_control(drifted: dict, control: dict, drift_day: int, within: int = 3, share: float = 0.9) -> dict:
    """Day by day, NDCG@10 with drift / NDCG@10 of the same mode on the same world without it;
    recovered = the share is ≥ `share` on some day drift_day + 1 .. drift_day + within."""
    base = dict(zip(control["day"], control["ndcg@10"]))
    ratio = {d: v / base[d] for d, v in zip(drifted["day"], drifted["ndcg@10"]) if base.get(d)}
    after = [d for d in sorted(ratio) if drift_day < d <= drift_day + within and ratio[d] >= share]
    day_v = dict(zip(drifted["day"], drifted["ndcg@10"]))

    def mean_share(lo: int, hi: int) -> float | None:  # Σ drifted / Σ no-drift over days lo..hi
        ds = [d for d in ratio if lo <= d <= hi]
        return sum(day_v[d] for d in ds) / sum(base[d] for d in ds) if ds else None

    return {"ratio": {str(d): r for d, r in ratio.items()}, "days_to_recover": after[0] - drift_day if after else None,
            f"recovered_within_{within}_days": bool(after),
            f"share_days_{drift_day + 1}_{drift_day + within}": mean_share(drift_day + 1, drift_day + within),
            f"share_days_{drift_day + within + 1}_end": mean_share(drift_day + within + 1, 10**9)}


def run_loop(ds, cfg: ReplayConfig, modes: list[str], funnel: FunnelConfig, loop) -> dict:
    """The closed loop (online/loop.py) of every mode on `ds`, summarized, with the recovery."""
    from funnelrec.online.loop import closed_loop, summarize_loop

    t0 = time.perf_counter()
    fitted = fit_for_replay(ds, funnel, cfg)
    records, seconds, learner = [], {"fit": round(fitted.fit_seconds, 1)}, {}
    for m in modes:
        t1 = time.perf_counter()
        steps: list = []
        records.append(closed_loop(fitted, ds.extras["world"], m, cfg, loop, learn_log=steps))
        seconds[m] = round(time.perf_counter() - t1, 1)
        if steps:
            learner[m] = learner_summary(steps)
    out = summarize_loop(pl.concat(records), cfg)
    first = int(fitted.cut_time // cfg.day_seconds - fitted.first_day)
    out["recovery"] = {m: recovery(out["per_day"][m], DRIFT_DAY, first, "ndcg@10", within=3, share=0.9)
                       for m in out["per_day"]}
    out.update({"first_replayed_day": first, "loop": dataclasses.asdict(loop), "learner": learner,
                "seconds": {**seconds, "total": round(time.perf_counter() - t0, 1)}})
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", default="ml100k,drift,control", help="of ml100k, drift, control, loop")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--resamples", type=int, default=2000)
    ap.add_argument("--learn", default="{}", help="the replay's learn: section as JSON (LearnConfig keys, ranker:, "
                                                  "guardrail:), e.g. '{\"label_window_s\": 100000000}'; "
                                                  "merged over REPLAY_LEARN (case loop: over the live defaults)")
    ap.add_argument("--loop-control", action="store_true", help="case loop: also the world without the drift")
    ap.add_argument("--users-per-day", type=int, default=800, help="case loop: arrivals a day")
    ap.add_argument("--requests-per-user", type=int, default=2, help="case loop: requests per arrival")
    ap.add_argument("--rank", default="{}", help="keys merged over the funnel's rank: section (JSON), e.g. "
                                                 "'{\"recent_decay\": 0.7}'")
    ap.add_argument("--world-seed", type=int, default=WORLD["seed"], help="the synthetic world's seed (cases drift, "
                                                                         "control, loop)")
    args = ap.parse_args()
    modes = args.modes.split(",")
    cases = set(args.cases.split(","))
    WORLD["seed"] = args.world_seed
    rank = json.loads(args.rank)
    out: dict = {"threads": os.environ.get("FUNNELREC_THREADS"), "load": os.getloadavg()[0]}
    t0 = time.perf_counter()
    if "ml100k" in cases:
        cfg = ReplayConfig(like_column="rating", like_threshold=4.0, bootstrap_resamples=args.resamples,
                           learn=merged_learn(REPLAY_LEARN, json.loads(args.learn)))
        res, _ = run_case(load_dataset("movielens-100k"), cfg, modes, funnel_config(rank))
        out["movielens-100k"] = res
    if "drift" in cases:
        cfg = synthetic_config(args)
        res, fitted = run_case(load_dataset("synthetic", **WORLD), cfg, modes, funnel_config({**SYNTHETIC_COLUMNS, **rank}))
        first = res["first_replayed_day"]
        res["world"] = WORLD
        res["recovery"] = {m: recovery(res["per_day"][m], DRIFT_DAY, first, "ndcg@10", within=3, share=0.9)
                           for m in res["per_day"]}
        out["synthetic_drift"] = res
    if "control" in cases:  # the same world without the drift: what staleness alone costs
        cfg = synthetic_config(args)
        world = {**WORLD, "drift_fraction": 0.0}
        res, _ = run_case(load_dataset("synthetic", **world), cfg, modes, funnel_config({**SYNTHETIC_COLUMNS, **rank}))
        res["world"] = world
        out["synthetic_no_drift"] = res
        drift = out.get("synthetic_drift")
        if drift is not None:  # each mode's drifted NDCG as a share of its own no-drift NDCG, day by day
            drift["vs_no_drift"] = {m: vs_control(drift["per_day"][m], res["per_day"][m], DRIFT_DAY)
                                    for m in drift["per_day"] if m in res["per_day"]}
    if "loop" in cases:
        from funnelrec.online.loop import LoopConfig

        cfg = synthetic_config(args, loop=True)
        loop = LoopConfig(users_per_day=args.users_per_day, requests_per_user=args.requests_per_user)
        funnel = funnel_config({**SYNTHETIC_COLUMNS, **rank})
        out["loop_drift"] = {"world": dict(WORLD), **run_loop(load_dataset("synthetic", **WORLD), cfg, modes, funnel, loop)}
        if args.loop_control:
            world = {**WORLD, "drift_fraction": 0.0}
            out["loop_no_drift"] = {"world": world, **run_loop(load_dataset("synthetic", **world), cfg, modes, funnel, loop)}
    out["seconds"] = round(time.perf_counter() - t0, 1)
    out["load_after"] = os.getloadavg()[0]
    print(json.dumps(_rounded(out)))


if __name__ == "__main__":
    main()
