"""Closed-loop simulation benchmark: A/B tests of funnels through the real serving path, an
A/A, and the A/A false-positive rate. Prints one JSON object.

    .venv/bin/python bench/simulate.py                 # full size (configs/sim/*.yaml as written)
    .venv/bin/python bench/simulate.py --quick         # small world, 3 days (a smoke run)

A/A false-positive rate: in an A/A both arms serve the same funnel, so a user's outcome does not
depend on their arm; re-hashing the users with `--rehash` fresh layer salts (buckets = xxh64 of
"salt:user_id" mod 1000, < 500 → control) and re-testing the one simulated table gives the
false-positive rate of the whole analysis (per-user aggregation, delta method, CUPED, BH) at
α = 5 %. Independent A/A simulations (`--aa-seeds`) add whole reruns of the loop.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import polars as pl

from funnelrec.experiments.assignment import buckets_of
from funnelrec.experiments.report import ReportConfig, build_report
from funnelrec.simulate import Simulator, WorldSpec, default_metrics, load_sim_config
from funnelrec.simulate.config import TrafficConfig

ROOT = Path(__file__).resolve().parents[1]


def summarize(result, name: str) -> dict:
    rep = result.report
    imp = result.impressions
    arms = imp.group_by("variant").agg(pl.col("click").mean().alias("ctr"), pl.col("p_click").mean().alias("expected_ctr"))
    return {
        "experiment": name,
        "users": int(sum(rep.srm.counts)),
        "impressions": imp.height,
        "clicks": int(imp["click"].sum()),
        "srm_p": round(rep.srm.p_value, 4),
        "arms": {r["variant"]: {"ctr": round(r["ctr"], 5), "expected_ctr": round(r["expected_ctr"], 5)}
                 for r in arms.iter_rows(named=True)},
        "metrics": {f"{m}/{v}": {"rel_lift": round(r.rel_lift, 4), "p": float(f"{r.p_value:.3g}"),
                                 "always_valid_p": float(f"{rep.daily[(m, v)]['always_valid_p'][-1]:.3g}")}
                    for (m, v), r in rep.results.items()},
        "seconds": {k: round(s, 1) for k, s in result.seconds.items()},
    }


def rehash_fpr(user_days: pl.DataFrame, n: int, alpha: float = 0.05) -> dict:
    """Share of re-hashed A/A splits with p < alpha, per metric and for any metric (BH q < alpha)."""
    per_user = user_days.drop("day").group_by("user_id").agg(
        pl.col("impressions", "clicks", "likes", "watch_time").sum(), pl.col("clicked").max(),
        pl.col("pre_clicks", "pre_watch_time").first())
    ids = per_user["user_id"].to_list()
    metrics = default_metrics()
    hits = {m.name: 0 for m in metrics}
    any_hit = 0
    for s in range(n):
        arm = np.where(buckets_of(f"aa-rehash-{s}", ids) < 500, "control", "same")
        rep = build_report(per_user.with_columns(pl.Series("variant", arm)), ReportConfig(metrics=metrics, alpha=alpha))
        for (m, _), r in rep.results.items():
            hits[m] += r.p_value < alpha
        any_hit += any(r.q_value is not None and r.q_value < alpha for r in rep.rows)
    return {"splits": n, "alpha": alpha, "fpr": {m: h / n for m, h in hits.items()}, "fpr_any_metric_bh": any_hit / n}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--days", type=int, default=None)
    ap.add_argument("--rehash", type=int, default=1000)
    ap.add_argument("--aa-seeds", type=int, default=3)
    ap.add_argument("--cases", default="ab_itemcf_vs_hot,ab_swing,aa")
    args = ap.parse_args()
    out: dict = {"quick": args.quick, "cases": {}}
    t0 = time.perf_counter()
    for case in args.cases.split(","):
        cfg = load_sim_config(ROOT / "configs" / "sim" / f"{case}.yaml")
        if args.quick:
            cfg = cfg.replace(world=WorldSpec(n_users=800, n_items=400, n_interactions=16_000, seed=1),
                              traffic=TrafficConfig(users_per_day=300), days=3)
        days = args.days or cfg.days
        res = Simulator(cfg).run(days=days)
        out["cases"][case] = summarize(res, cfg.experiment)
        if case == "aa":
            out["cases"][case]["rehash"] = rehash_fpr(res.user_days, 100 if args.quick else args.rehash)
            reruns = []
            for seed in range(1, args.aa_seeds + 1):
                r = Simulator(cfg.replace(seed=cfg.seed + 1000 * seed), dataset=None).run(days=days)
                reruns.append({"seed": cfg.seed + 1000 * seed,
                               "p": {m: float(f"{x.p_value:.3g}") for (m, _), x in r.report.results.items()}})
            out["cases"][case]["reruns"] = reruns
    out["total_seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
