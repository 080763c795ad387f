"""`make bench`: run every benchmark script, each in its own process, and print one JSON object
{name: result} (each script prints one JSON object on stdout). Results are also written to
bench/results/<name>.json so docs/BENCHMARKS.md can quote them.

    python bench/run_all.py                # full sizes (long: tens of minutes on 2 cores)
    python bench/run_all.py --quick        # small sizes, a smoke run of every script
    python bench/run_all.py --only ann,bloom
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

# name → (script, full-size args, quick args)
BENCHES: dict[str, tuple[str, list[str], list[str]]] = {
    "eval_speed": ("eval_speed.py", [], []),
    "synthetic_world": ("synthetic_world.py", ["--users", "1000000", "--items", "200000", "--interactions", "20000000"],
                        ["--users", "20000", "--items", "5000", "--interactions", "200000"]),
    "cf_scale": ("cf_scale.py", [], ["--users", "50000", "--items", "10000", "--interactions", "500000"]),
    "recall_quality": ("recall_quality.py", [], []),
    "two_tower": ("two_tower.py", [], ["--losses", "softmax", "--set", '{"epochs": 1}']),
    "ann": ("ann.py", [], ["--n", "50000", "--nq", "200", "--clusters", "100"]),
    "bloom": ("bloom.py", [], ["--calls", "200", "--users", "100", "--fpr-capacity", "10000", "--probes", "200000"]),
    "merge_speed": ("merge_speed.py", [], []),
    "ctr_throughput": ("ctr_throughput.py", [], ["--models", "lr,deepfm,dcnv2", "--epochs", "1"]),
    "ctr_seq_multitask": ("ctr_seq_multitask.py", [], ["--users", "2000", "--items", "500", "--interactions", "30000", "--epochs", "1"]),
    "experiments_stats": ("experiments_stats.py", [], ["--sims", "200", "--users", "100000"]),
    "simulate": ("simulate.py", [], ["--quick"]),
    "serving": ("serving.py", [], ["--rates", "20", "--duration", "5"]),
    # the loop (session 4)
    "freshness": ("freshness.py", [], ["--clicks", "30"]),
    "feature_service": ("feature_service.py", [], ["--events", "5000", "--lookups", "30"]),
    "eventlog_retention": ("eventlog_retention.py", [], ["--seconds", "60", "--retention", "20"]),
    "catalogue": ("catalogue.py", [], ["--requests", "30"]),
    "online_update": ("online_update.py", [], []),
    "online_updates": ("online_updates.py", [], ["--seeds", "0", "--users", "30", "--repeats", "1"]),
    "online_replay": ("online_replay.py", [], ["--cases", "ml100k", "--resamples", "200"]),
    "online_loop": ("online_replay.py", ["--cases", "loop", "--loop-control", "--resamples", "1000"],
                    ["--cases", "loop", "--modes", "realtime", "--users-per-day", "100", "--resamples", "100"]),
    "drift_bound": ("drift_bound.py", [], ["--users-per-day", "100"]),
    "follow_graph": ("follow_graph.py", [], ["--users", "2000", "--items", "500", "--interactions", "40000"]),
    "cache_tail": ("cache_tail.py", [], ["--days", "1", "--users", "200"]),
    # replicas behind nginx (session 5; needs nginx and redis-server)
    "replicas": ("replicas.py", [], ["--rate", "20", "--duration", "12", "--kill-at", "4", "--restart-at", "8"]),
    "replicas_claims": ("replicas.py", ["--claims"], ["--claims"]),
    # scale-out engines (session 5; Java 17 for Spark, milvus-lite)
    "cf_scale_spark": ("cf_scale.py", ["--engine", "spark"],
                       ["--engine", "spark", "--users", "50000", "--items", "10000", "--interactions", "500000"]),
    "milvus": ("milvus.py", [], ["--n", "20000", "--nq", "200", "--n-single", "50", "--clusters", "200",
                                 "--skip-ml100k"]),
    "ddp": ("ddp.py", [], []),
    # a newcomer's path: init → train → serve → the first /recommend on a 300k-event shop log
    "own_data": ("own_data.py", [], ["--events", "20000"]),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", default="", help="comma-separated bench names")
    args = ap.parse_args()
    names = [n for n in args.only.split(",") if n] or list(BENCHES)
    out_dir = HERE / "results"
    out_dir.mkdir(exist_ok=True)
    results = {}
    for name in names:
        script, full, quick = BENCHES[name]
        path = HERE / script
        if not path.exists():
            results[name] = {"skipped": f"{script} not present"}
            continue
        t0 = time.perf_counter()
        p = subprocess.run([sys.executable, str(path), *(quick if args.quick else full)], capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if p.returncode != 0:
            results[name] = {"error": p.stderr.strip().splitlines()[-1:] or ["failed"], "wall_s": wall}
            print(f"[bench] {name}: FAILED ({wall:.0f}s)", file=sys.stderr)
            continue
        try:
            res = json.loads(p.stdout.strip().splitlines()[-1])
        except (json.JSONDecodeError, IndexError):
            res = {"raw": p.stdout[-2000:]}
        results[name] = res
        (out_dir / f"{name}{'.quick' if args.quick else ''}.json").write_text(json.dumps(res, indent=2))
        print(f"[bench] {name}: ok ({wall:.0f}s)", file=sys.stderr)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
