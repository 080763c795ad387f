"""Funnel quality on a team's own e-commerce log, the way a newcomer gets it: a generated log
(view / click / cart / purchase; simulate/ecommerce.py) → `funnelrec init`'s config → the
held-out split → every channel alone and the funnel, NDCG@10 on the test part (as `funnelrec
evaluate funnel --config` reports it), for each split:

- "pair": the split the funnel uses (data/splits.py: a repeated (user, item) pair is one unit);
- "row": RecBole's RS row by row (the split before c999574), where a purchase lands in valid
  while its view stays in the history — kept here to show what the pair split fixed. Its
  conversion task has no positive, which the ranker now refuses ("refused"); the row is then
  fitted with the ctr task alone.

Also the share of the valid part's conversion rows whose item is in the user's training history
(no channel may recall it), and the ranker's contribution (funnel − the best channel).

    .venv/bin/python bench/own_data_quality.py [--events 60000] [--users 3000] [--items 1500] [--seeds 5,6,7]

Prints one JSON line per (seed, split), then one JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import time
from pathlib import Path

import polars as pl

from funnelrec.cli_data import load_data, resolve_config
from funnelrec.core.errors import DataError
from funnelrec.data.splits import Split, _split_rows, random_split_by_user
from funnelrec.pipeline.builder import FunnelBuilder
from funnelrec.pipeline.offline import evaluate_funnel
from funnelrec.pipeline.validate import check_against


def _row_split(inter: pl.DataFrame, seed: int) -> Split:
    return Split(*_split_rows(inter, (0.8, 0.1, 0.1), seed), protocol="recbole-rs-811-rows")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=60_000)
    p.add_argument("--users", type=int, default=3000)
    p.add_argument("--items", type=int, default=1500)
    p.add_argument("--seeds", default="5,6,7", help="generator seeds (one log each)")
    args = p.parse_args()
    from typer.testing import CliRunner

    from funnelrec.cli import app
    from funnelrec.simulate.ecommerce import write_ecommerce_files

    out: dict = {"events": args.events, "users": args.users, "items": args.items, "runs": [],
                 "loadavg_start": list(os.getloadavg())}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in [int(s) for s in args.seeds.split(",")]:
            root = Path(tmp) / f"log{seed}"
            paths = write_ecommerce_files(root / "data", n_events=args.events, seed=seed, n_users=args.users,
                                          n_items=args.items)
            r = CliRunner().invoke(app, ["init", "--interactions", str(paths["interactions"]), "--items",
                                         str(paths["items"]), "--users", str(paths["users"]), "--out",
                                         str(root / "cfg"), "--quiet"])
            if r.exit_code:
                raise SystemExit(r.output)
            config = root / "cfg" / "funnel.yaml"
            cfg = resolve_config(config, None)
            d = load_data(cfg, config, None, None)
            check_against(cfg, d)
            for name, split in (("pair", random_split_by_user(d.interactions, seed=2020)),
                                ("row", _row_split(d.interactions, 2020))):
                seen = split.train.select("user_idx", "item_idx").unique().with_columns(pl.lit(1).alias("_seen"))
                conv = split.valid.filter(pl.col("label_conversion") > 0).join(seen, on=["user_idx", "item_idx"],
                                                                               how="left")
                t0 = time.perf_counter()
                use, error = cfg, None
                try:
                    funnel = FunnelBuilder(use).fit(d, split.train, labels=split.valid)
                except DataError as e:  # the row split leaves the conversion task no positive: refused now
                    error = str(e)
                    rank = dataclasses.replace(cfg.rank, tasks=("ctr",), task_columns={"ctr": cfg.rank.task_columns["ctr"]},
                                               weight_columns={k: v for k, v in cfg.rank.weight_columns.items()
                                                               if k == "ctr"})
                    use = dataclasses.replace(cfg, rank=rank, fusion=dataclasses.replace(cfg.fusion,
                                                                                         weights={"ctr": 1.0}))
                    funnel = FunnelBuilder(use).fit(d, split.train, labels=split.valid)
                rep = evaluate_funnel(d, use, fitted=(funnel, split))
                funnel_ndcg = rep["funnel"]["ndcg@10"]
                channels = {k: v["ndcg@10"] for k, v in rep["channels"].items()}
                best = max(channels.items(), key=lambda kv: kv[1]) if channels else (None, None)
                row = {"seed": seed, "split": name, "funnel_ndcg@10": funnel_ndcg, "channels_ndcg@10": channels,
                       "best_channel": best[0], "ranker_minus_best_channel":
                           None if funnel_ndcg is None else funnel_ndcg - best[1],
                       "valid_conversions": conv.height,
                       "valid_conversions_in_history": int(conv["_seen"].fill_null(0).sum()),
                       "tasks": list(use.rank.tasks), "refused": error, "seconds": round(time.perf_counter() - t0, 1)}
                out["runs"].append(row)
                print(json.dumps(row), flush=True)
    for name in ("pair", "row"):
        rs = [r for r in out["runs"] if r["split"] == name]
        if rs:
            out[f"{name}_funnel_mean"] = sum(r["funnel_ndcg@10"] for r in rs) / len(rs)
            out[f"{name}_ranker_minus_best_mean"] = sum(r["ranker_minus_best_channel"] for r in rs) / len(rs)
    out["loadavg_end"] = list(os.getloadavg())
    print(json.dumps(out))


if __name__ == "__main__":
    main()
