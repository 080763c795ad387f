"""CTR model zoo on the ml-100k CTR protocol: quality and training throughput.

    .venv/bin/python bench/ctr_throughput.py [--models deepfm,dcnv2] [--epochs N] [--threads 1]
        [--recbole [--recbole-models DeepFM,DCNV2]] [--before-src DIR] [--repeat N]

A model name may carry variants after "@", joined by "+": "recbole" (RecBole's features and
sizes), "bf16" (trainer.matmul_precision bf16: oneDNN matmuls on bf16 inputs, fp32
accumulation), "fp32" (trainer.matmul_precision ieee, whatever the config says), e.g.
deepfm@recbole+bf16.

Prints one JSON object: {"machine", "load_start", "load_end", "models": {name: {auc, gauc,
logloss, train_samples_per_s, train_cpu_samples_per_s, epochs, …}}, ["recbole": {...},
"ratios": {...}, "cpu_ratios": {...}]}. With --recbole it also runs RecBole 1.2.1 DeepFM and
DCNV2 in the same run through /work/shared/peers/recbole_run.py (venv at $VENV, default
/tmp/peers-venv, created with /work/shared/peers/setup_venv.sh when it is missing: RecBole never
shares our venv) and reports our/RecBole samples/s ratios: wall-clock ("ratios") and per
CPU-second of the training epochs ("cpu_ratios", robust to other jobs' load; RecBole's from its
train_cpu_s_total). Both sides run with the same torch thread count (`--threads`, default 1: on the shared 2-core machine a second OpenMP thread spin-waits; RecBole
gets OMP_NUM_THREADS/MKL_NUM_THREADS, which torch reads at start-up).

--before-src DIR (a `src` directory of another checkout, e.g. `git archive <commit> | tar -x -C
/tmp/before`): first runs the same models from that code in a subprocess (PYTHONPATH=DIR, its
own bench/ctr_throughput.py), then ours, then RecBole, so a before/after comparison and both
ratios come from one invocation; reported as "before" and "before_ratios"/"before_cpu_ratios".

--repeat N: N interleaved rounds of (before, ours, RecBole), every other one in the reverse
order. This machine's speed drifts by up to ~30 % between runs minutes apart, so a single
round's ratio can land anywhere in that spread. The ratios reported are then the per-round
medians, with every round's in "<key>_all" and the rounds' full figures in "rounds"; the
top-level models/recbole figures are the last round's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _machine import cpu  # bench/_machine.py (bench/ is the script's directory)
from funnelrec.data import load_dataset
from funnelrec.eval.ctr import evaluate_ctr, load_ctr_config
from funnelrec.train.trainer import Trainer

# keep the TrainResult of the last fit: its CPU seconds give a load-independent throughput
_LAST: dict = {}
_fit = Trainer.fit


def _recording_fit(self, *a, **k):
    _LAST["result"] = res = _fit(self, *a, **k)
    return res


Trainer.fit = _recording_fit

ALL = ["lr", "fm", "ffm", "gbdt_lr", "widedeep", "deepfm", "dcn", "dcnv2", "gdcn", "xdeepfm", "fibinet",
       "lhuc", "all_interaction", "neural_interaction", "mmcn",
       "din", "dien", "sim", "mmoe", "ple", "esmm", "star", "pepnet"]
# "<model>@recbole": RecBole's feature set (genres one pooled field) and RecBole 1.2.1's default
# sizes, for a like-for-like throughput ratio (same fields, same layers, same embedding size)
RECBOLE_ARCH = {"deepfm": {"embedding_dim": 10, "hidden": [128, 128, 128]},
                "dcnv2": {"embedding_dim": 16, "cross_layers": 3, "hidden": [768, 768], "structure": "stacked"}}
PEERS = Path(os.environ.get("PEERS", "/work/shared/peers"))


PAIRS = {"DeepFM": "deepfm", "DCNV2": "dcnv2", "DCN": "dcn", "LR": "lr", "FM": "fm", "WideDeep": "widedeep",
         "xDeepFM": "xdeepfm"}


def ensure_recbole_venv() -> Path:
    """Python of the peer venv; installs RecBole 1.2.1 there (setup_venv.sh) if it is missing."""
    venv = Path(os.environ.get("VENV", "/tmp/peers-venv"))
    py = venv / "bin" / "python"
    ok = py.exists() and subprocess.run([str(py), "-c", "import recbole"], capture_output=True).returncode == 0
    if not ok:
        print(f"installing RecBole into {venv} (setup_venv.sh) …", file=sys.stderr, flush=True)
        Path(os.environ.get("OUT", "/tmp/peers-out")).mkdir(parents=True, exist_ok=True)
        subprocess.run(["bash", str(PEERS / "setup_venv.sh")], check=True, env={**os.environ, "VENV": str(venv)})
    return py


def run_recbole(model: str, epochs: int | None, threads: int) -> dict:
    py = ensure_recbole_venv()
    out = Path("/tmp/peers-out/raw")
    cmd = [str(py), str(PEERS / "recbole_run.py"), "--task", "ctr", "--model", model, "--out", str(out)]
    if epochs:
        cmd += ["--epochs", str(epochs)]
    if model == "DCNV2":
        cmd.append("--flush-denormal")
    Path("/tmp/peers-work").mkdir(exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    subprocess.run(cmd, cwd="/tmp/peers-work", check=True, capture_output=True, env=env)
    r = json.loads((out / f"ctr_{model}.json").read_text())
    cpu = r.get("train_cpu_s_total")
    return {"auc": r["test_result"].get("auc"), "logloss": r["test_result"].get("logloss"),
            "train_samples_per_s": r["train_samples_per_s"], "epochs": r["epochs_run"],
            "train_cpu_samples_per_s": r["n_train_interactions"] * r["epochs_run"] / cpu if cpu else None,
            "load_start": r.get("loadavg_start"), "load_end": r.get("loadavg_end"),
            "torch_threads": r.get("torch_threads")}


def _ratios(models: dict, ours: str, theirs: str, rb: dict, wall: dict, cpu: dict) -> None:
    """our/RecBole samples/s (wall and per CPU-second) for every variant of model `ours`."""
    for name, m in models.items():
        if name.partition("@")[0] == ours:
            wall[f"{name}/{theirs}"] = round(m["train_samples_per_s"] / rb["train_samples_per_s"], 2)
            if m.get("train_cpu_samples_per_s") and rb.get("train_cpu_samples_per_s"):
                cpu[f"{name}/{theirs}"] = round(m["train_cpu_samples_per_s"] / rb["train_cpu_samples_per_s"], 2)


def run_before(src: Path, args: argparse.Namespace) -> dict:
    """The same models trained by the code under `src` (its own bench script), in a subprocess."""
    bench = src.parent / "bench" / "ctr_throughput.py"
    if not bench.exists():
        bench = Path(__file__)
    cmd = [sys.executable, str(bench), "--models", args.before_models or args.models, "--threads", str(args.threads)]
    if args.epochs:
        cmd += ["--epochs", str(args.epochs)]
    env = {**os.environ, "PYTHONPATH": str(src.resolve())}
    print(f"before: {' '.join(cmd)} (PYTHONPATH={src})", file=sys.stderr, flush=True)
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env, cwd=src.parent).stdout
    return json.loads(out.strip().splitlines()[-1])["models"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default=",".join(ALL))
    ap.add_argument("--epochs", type=int, default=None, help="cap epochs (default: protocol's 20)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads, ours and RecBole's")
    ap.add_argument("--recbole", action="store_true")
    ap.add_argument("--recbole-models", default="DeepFM,DCNV2", help=f"of {', '.join(PAIRS)}")
    ap.add_argument("--before-src", default=None, help="src/ of another checkout: run its models first, same run")
    ap.add_argument("--before-models", default=None, help="models for --before-src (default: --models)")
    ap.add_argument("--repeat", type=int, default=1,
                    help="rounds of (before, ours, RecBole), interleaved; ratios are the per-round median")
    args = ap.parse_args()
    ds = load_dataset("movielens-100k")
    res = {"cpu": cpu(), "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
           "threads": args.threads,
           "load_start": os.getloadavg()[0], "models": {}}
    rounds = []
    for i in range(max(1, args.repeat)):
        rnd: dict = {}
        # odd rounds run in the reverse order (RecBole, ours, before): a drift within a round
        # then favours no side over the series
        steps = ["before", "ours", "recbole"]
        for step in (steps if i % 2 == 0 else steps[::-1]):
            if step == "before" and args.before_src:
                rnd["before"] = run_before(Path(args.before_src), args)
            elif step == "ours":
                rnd["models"] = run_ours(ds, args)
            elif step == "recbole" and args.recbole:
                rnd["recbole"] = {}
                for theirs in args.recbole_models.split(","):
                    rnd["recbole"][theirs] = run_recbole(theirs, args.epochs, args.threads)
                    print(json.dumps({theirs: rnd["recbole"][theirs]}), file=sys.stderr, flush=True)
        if args.recbole:
            rnd["ratios"], rnd["cpu_ratios"] = {}, {}
            for theirs, rb in rnd["recbole"].items():
                ours = PAIRS[theirs]
                _ratios(rnd["models"], ours, theirs, rb, rnd["ratios"], rnd["cpu_ratios"])
                if "before" in rnd:
                    _ratios(rnd["before"], ours, theirs, rb, rnd.setdefault("before_ratios", {}),
                            rnd.setdefault("before_cpu_ratios", {}))
        rounds.append(rnd)
    res.update(rounds[-1])  # one round: exactly that round's figures
    if len(rounds) > 1:  # the machine's speed drifts between runs: the median of interleaved rounds
        res["rounds"] = rounds
        for key in ("ratios", "cpu_ratios", "before_ratios", "before_cpu_ratios"):
            common = set.intersection(*(set(r.get(key, {})) for r in rounds))  # a ratio every round has
            if common:
                res[key] = {k: statistics.median(r[key][k] for r in rounds) for k in sorted(common)}
                res[key + "_all"] = {k: [r[key][k] for r in rounds] for k in sorted(common)}
    res["load_end"] = os.getloadavg()[0]
    print(json.dumps(res))


def run_ours(ds, args: argparse.Namespace) -> dict:
    models = {}
    for m in args.models.split(","):
        base, _, variant = m.partition("@")
        variants = set(variant.split("+")) - {""}
        if variants - {"recbole", "bf16", "fp32"}:
            raise SystemExit(f"unknown variant(s) {sorted(variants - {'recbole', 'bf16', 'fp32'})} in {m!r}; "
                             "known: recbole, bf16, fp32")
        cfg = load_ctr_config(base)
        if "recbole" in variants:
            cfg = {"features": {"pool_multi": True}, "model": RECBOLE_ARCH[base], "trainer": cfg.get("trainer", {})}
        trainer = {**cfg.get("trainer", {}), "num_threads": args.threads}
        if "bf16" in variants:
            trainer["matmul_precision"] = "bf16"
        if "fp32" in variants:
            trainer["matmul_precision"] = "ieee"
        if args.epochs:
            trainer["epochs"] = args.epochs
        cfg = {**cfg, "trainer": trainer}
        t0 = time.perf_counter()
        _LAST.clear()
        r = evaluate_ctr(ds, base, cfg)
        r["model"] = m
        fit = _LAST.get("result")
        if fit is not None and fit.cpu_seconds > 0:  # samples per CPU-second of the training epochs
            r["train_cpu_samples_per_s"] = fit.samples_per_s * fit.train_seconds / fit.cpu_seconds
        r["wall_s"] = time.perf_counter() - t0
        models[m] = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}
        print(json.dumps({m: models[m]}), file=sys.stderr, flush=True)
    return models


if __name__ == "__main__":
    main()
