"""How much the drift world lets a funnel recover in 3 days: the feedback a user has given since
the drift, and what re-ranking the funnel's own candidates by it would reach (issue #10, drift).

The closed loop (online/loop.py) runs one mode on bench/online_replay.py's drift world. For every
request it keeps the whole ranked answer (`closed_loop(on_request=…)`) and scores, against the
truth in force (graded gains P_t(click | u, i)), with the ideal = the best 10 *of those
candidates* (so the recall is out of the question; `ndcg@10_candidates` is 1 by definition):

- `funnel`: the funnel's order;
- `profile`: the same candidates re-ranked by the tag profile of the user's clicks since the
  drift — score(i) = Σ_{clicks j since the drift, before t} |tags(i) ∩ tags(j)| / |tags(i)|,
  ties in the funnel's order. The world's drift is a change of each user's two loved tags, and
  tags are what the truth's affinity is made of, so this is the direct use of the only
  post-drift evidence a user gives (its clicks; an impression without a click says "not this",
  one of ~100 tags);
- `profile_neg`: the same with the shown-but-not-clicked items since the drift against them:
  Σ_clicks |tags(i) ∩ tags(j)| − β · Σ_shown, not clicked |tags(i) ∩ tags(j)|, over |tags(i)|
  (β = `--neg-weight`, 0.05: of 0.05 and 0.2, the better on this world — a bound, tuned where
  it is measured);
- `oracle_tags`: the same candidates re-ranked by how many of the user's two loved tags *in
  force* (`SyntheticWorld.loved_tags_after_drift`, which no funnel can see) each carries, ties
  in the funnel's order: what knowing the drift exactly would buy on these candidates;
- `clicks_since_drift`: how many clicks the user has made since the drift when it asks.

Pre-drift days give each score's own reference, and `share` = a post-drift day's mean / the
mean of days 12–14 (the loop's recovery rule, in these within-candidates units).

    FUNNELREC_THREADS=1 .venv/bin/python bench/drift_bound.py [--mode realtime] [--requests-per-user 2]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent))
import online_replay as ob  # noqa: E402  (the drift world, its funnel and its replay config)
from funnelrec.data import load_dataset  # noqa: E402
from funnelrec.online.loop import LoopConfig, closed_loop, graded_ndcg  # noqa: E402
from funnelrec.online.replay import fit_for_replay  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", default="realtime", choices=["static", "realtime", "online"])
    ap.add_argument("--users-per-day", type=int, default=800)
    ap.add_argument("--requests-per-user", type=int, default=2)
    ap.add_argument("--world-seed", type=int, default=0)
    ap.add_argument("--neg-weight", type=float, default=0.05, help="β of profile_neg (module doc)")
    ap.add_argument("--rank", default="{}", help="keys merged over the funnel's rank: section (JSON)")
    args = ap.parse_args()
    t0 = time.perf_counter()
    world_cfg = {**ob.WORLD, "seed": args.world_seed}
    ds = load_dataset("synthetic", **world_cfg)
    world = ds.extras["world"]
    cfg = ob.synthetic_config(argparse.Namespace(resamples=100, learn="{}"), loop=True)
    fitted = fit_for_replay(ds, ob.funnel_config({**ob.SYNTHETIC_COLUMNS, **json.loads(args.rank)}), cfg)
    names = sorted({t for ts in ds.items["tags"].to_list() for t in (ts or ())})
    code = {t: k for k, t in enumerate(names)}
    T = np.zeros((ds.n_items, len(names)))
    for i, ts in enumerate(ds.items["tags"].to_list()):
        for t in ts or ():
            T[i, code[t]] = 1.0
    n_tags = np.maximum(T.sum(1), 1.0)
    requests: list[tuple[int, int, np.ndarray]] = []
    records = closed_loop(fitted, world, args.mode, cfg,
                          LoopConfig(users_per_day=args.users_per_day, requests_per_user=args.requests_per_user),
                          on_request=lambda u, t, ranked: requests.append((u, t, ranked.copy())))
    drift = world.config.drift_time
    since: dict[int, list[int]] = {}  # user → items clicked since the drift (before the current request)
    passed: dict[int, list[int]] = {}  # user → items shown since the drift and not clicked
    rows: dict[str, list] = {"day": [], "funnel": [], "profile": [], "profile_neg": [], "oracle_tags": [],
                             "clicks_since_drift": []}
    item_tags = np.asarray(world.item_tags)
    for (u, t, ranked), clicked in zip(requests, records.iter_rows(named=True)):
        if len(ranked):
            gains = world.at(t).true_preference(np.array([u]), ranked, t).astype(np.float64).ravel()
            mine = since.get(u, [])
            profile = T[mine].sum(0) if mine else np.zeros(T.shape[1])
            score = (T[ranked] @ profile) / n_tags[ranked]
            order = np.argsort(-score, kind="stable")  # ties (all of them without clicks): the funnel's order
            rows["day"].append(clicked["day"])
            rows["funnel"].append(graded_ndcg(gains, gains, 10))
            rows["profile"].append(graded_ndcg(gains[order], gains, 10))
            nos = passed.get(u, [])
            against = T[nos].sum(0) if nos else np.zeros(T.shape[1])
            score = (T[ranked] @ (profile - args.neg_weight * against)) / n_tags[ranked]
            rows["profile_neg"].append(graded_ndcg(gains[np.argsort(-score, kind="stable")], gains, 10))
            loved = world.at(t).loved_tags[u]
            carries = (item_tags[ranked][:, :, None] == loved[None, None, :]).any(2).sum(1)
            rows["oracle_tags"].append(graded_ndcg(gains[np.argsort(-carries, kind="stable")], gains, 10))
            rows["clicks_since_drift"].append(len(mine) if t >= drift else 0)
        if t >= drift:
            hit = set(clicked["clicked"] or [])
            passed.setdefault(u, []).extend(i for i, name in zip(ranked[:10].tolist(), clicked["items"]) if name not in hit)
            since.setdefault(u, []).extend(ds.item_ids.indices(clicked["clicked"]).tolist() if clicked["clicked"] else [])
    frame = pl.DataFrame(rows)
    daily = frame.group_by("day").agg(pl.col("funnel", "profile", "profile_neg", "oracle_tags", "clicks_since_drift").mean()).sort("day")
    first = daily["day"].min()
    pre = daily.filter(pl.col("day") < ob.DRIFT_DAY)
    out = {"mode": args.mode, "world": world_cfg, "loop": {"users_per_day": args.users_per_day,
                                                           "requests_per_user": args.requests_per_user},
           "first_day": int(first), "per_day": {c: [round(float(x), 4) for x in daily[c]] for c in daily.columns},
           "pre_drift": {c: round(float(pre[c].mean()), 4) for c in ("funnel", "profile", "profile_neg", "oracle_tags")},
           "share": {c: [round(float(v / pre[c].mean()), 3) for v in daily[c]] for c in ("funnel", "profile", "profile_neg", "oracle_tags")},
           "loop_ndcg@10": [round(float(x), 4) for x in records.group_by("day").agg(pl.col("ndcg").mean())
                            .sort("day")["ndcg"]],
           "seconds": round(time.perf_counter() - t0, 1), "threads": os.environ.get("FUNNELREC_THREADS"),
           "load": os.getloadavg()[0]}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
