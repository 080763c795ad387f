"""Does the cache channel help a session's second request, and which list should it keep?

Three closed-loop simulations (funnelrec.simulate) of the same synthetic world, the same arrivals
and the same random draws (one seed: common random numbers), differing only in the cache channel:

- ``none``:  recall itemCF + hot, no cache channel;
- ``shown``: + a cache channel fed the k items the previous request *returned* (the behaviour
  before 2026-12; the exposure filter then removes every one of them);
- ``tail``:  + a cache channel fed the ranked-but-unshown tail, positions k..k+cache_n-1 of the
  previous request's fine-ranked list minus what was shown (ServiceConfig.cache_keep="tail").

Each user makes two requests a day (one session, `request` 0 then 1, the second served after
the first one's impression/click feedback). Per arm and request: CTR (clicks / impressions);
expected CTR (the mean of the world's click probability of each impression, position bias and
fatigue included: CTR without the Bernoulli noise, the figure to compare); and `ndcg_shown`, the
NDCG of the shown order with the world's true preference as gain, over the ideal order *of the
same k items* (it measures the ordering, not which items were picked). Differences are paired
per (day, user) with a normal 95 % interval. The arms share the seed, so arrivals and request
times are identical; the click draws drift apart once the lists differ (the number of draws
depends on the clicks), so the paired CTR difference is noisier than the expected-CTR one.
`none` also differs from the others in its ranker (fitted without the cache channel's recall
features), so `tail − shown` is the comparison that isolates what the cache list holds.
Prints one JSON object.

    .venv/bin/python bench/cache_tail.py                     # 3 days × 1,000 users, ~ minutes
    .venv/bin/python bench/cache_tail.py --days 5 --users 1500
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import polars as pl

from funnelrec.simulate import Simulator
from funnelrec.simulate.config import SimConfig


def sim_config(arm: str, a: argparse.Namespace) -> SimConfig:
    channels = [{"name": "itemcf", "n": 200}, {"name": "hot", "n": 100}]
    if arm != "none":
        channels.append({"name": "cache", "n": a.cache_n})
    funnel = {"recall": {"channels": channels, "merge": {"total": 300 + (a.cache_n if arm != "none" else 0)}},
              "rank": {"model": "lr", "epochs": a.epochs, "user_columns": ["gender", "age_band"],
                       "item_columns": ["tags"], "match_columns": ["tags"]},
              "k": a.k}
    return SimConfig.from_dict({
        "title": f"cache channel: {arm}",
        "world": {"n_users": a.world_users, "n_items": a.world_items, "n_interactions": a.world_interactions, "seed": 1},
        "funnel": funnel,
        "experiments": {"layers": [{"name": "recall", "owns": ["recall."]}],
                        "experiments": [{"name": "one", "layer": "recall", "buckets": [0, 1000],
                                         "variants": [{"name": "control"}, {"name": "same"}]}]},
        "experiment": "one", "days": a.days, "seed": a.seed,
        "traffic": {"users_per_day": a.users, "requests_per_user": 2},
        "train_ranker": True,
        "service": {"cache_n": a.cache_n, "cache_keep": "shown" if arm == "shown" else "tail"},
    })


def ndcg_of_shown(imp: pl.DataFrame, world, k: int) -> pl.DataFrame:
    """Per impression list (day, user, request): DCG of the shown order with gain = the world's
    true preference, over the DCG of the same items sorted by it."""
    out = []
    for (day, u, r), g in imp.group_by(["day", "user_idx", "request"], maintain_order=True):
        g = g.sort("position")
        gain = world.true_preference(int(u), g["item_idx"].to_numpy(), int(g["ts"][0]))
        disc = 1.0 / np.log2(np.arange(len(gain)) + 2)
        ideal = float(np.sort(gain)[::-1] @ disc)
        out.append((day, u, r, float(gain @ disc) / ideal if ideal > 0 else 0.0))
    return pl.DataFrame(out, schema=["day", "user_idx", "request", "ndcg_shown"], orient="row")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--days", type=int, default=3)
    ap.add_argument("--users", type=int, default=1000, help="users per day (each: 2 requests)")
    ap.add_argument("--world-users", type=int, default=3000)
    ap.add_argument("--world-items", type=int, default=1000)
    ap.add_argument("--world-interactions", type=int, default=60_000)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--cache-n", type=int, default=50)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--arms", default="none,shown,tail")
    a = ap.parse_args()
    t0 = time.perf_counter()
    per_list: dict[str, pl.DataFrame] = {}
    seconds: dict[str, float] = {}
    for arm in a.arms.split(","):
        t1 = time.perf_counter()
        sim = Simulator(sim_config(arm, a))
        res = sim.run()
        imp = res.impressions
        lists = (imp.group_by(["day", "user_idx", "request"], maintain_order=True)
                 .agg(pl.col("click").sum().alias("clicks"), pl.len().alias("impressions"),
                      pl.col("p_click").sum().alias("p_click")))
        lists = lists.join(ndcg_of_shown(imp, sim.world, a.k), on=["day", "user_idx", "request"])
        per_list[arm] = lists
        seconds[arm] = round(time.perf_counter() - t1, 1)
        print(json.dumps({"arm": arm, "seconds": seconds[arm], "lists": lists.height}), flush=True,
              file=__import__("sys").stderr)

    def summary(df: pl.DataFrame) -> dict:
        return {"lists": df.height, "impressions": int(df["impressions"].sum()),
                "ctr": round(float(df["clicks"].sum() / df["impressions"].sum()), 5),
                "expected_ctr": round(float(df["p_click"].sum() / df["impressions"].sum()), 5),
                "ndcg_shown": round(float(df["ndcg_shown"].mean()), 4)}

    arms = {arm: {f"request_{r}": summary(df.filter(pl.col("request") == r)) for r in (0, 1)}
            for arm, df in per_list.items()}

    def paired(x: str, y: str, r: int) -> dict:
        """y − x on the lists of request r both arms served (same day, user): mean and 95 % CI of
        clicks per impression, expected clicks per impression and NDCG."""
        key = ["day", "user_idx", "request"]
        j = (per_list[x].filter(pl.col("request") == r)
             .join(per_list[y].filter(pl.col("request") == r), on=key, suffix="_y"))
        out = {"pairs": j.height}
        for name, num in (("ctr", "clicks"), ("expected_ctr", "p_click"), ("ndcg_shown", "ndcg_shown")):
            if name == "ndcg_shown":
                d = (j[f"{num}_y"] - j[num]).to_numpy()
            else:
                d = (j[f"{num}_y"] / j["impressions_y"] - j[num] / j["impressions"]).to_numpy()
            half = 1.96 * d.std(ddof=1) / np.sqrt(len(d))
            out[name] = {"diff": round(float(d.mean()), 5), "ci95": [round(float(d.mean() - half), 5),
                                                                       round(float(d.mean() + half), 5)]}
        return out

    names = list(per_list)
    comparisons = {}
    for x, y in (("none", "shown"), ("none", "tail"), ("shown", "tail")):
        if x in names and y in names:
            comparisons[f"{y}_minus_{x}"] = {f"request_{r}": paired(x, y, r) for r in (0, 1)}
    print(json.dumps({
        "bench": "cache_tail", "days": a.days, "users_per_day": a.users, "requests_per_user": 2, "k": a.k,
        "cache_n": a.cache_n, "world": [a.world_users, a.world_items, a.world_interactions], "seed": a.seed,
        "ranker": "lr", "arms": arms, "comparisons": comparisons, "seconds": seconds,
        "total_s": round(time.perf_counter() - t0, 1), "cpus": os.cpu_count(), "load_avg_end": os.getloadavg(),
    }))


if __name__ == "__main__":
    main()
