"""Data-parallel training: ml-100k DCNv2 on the CTR protocol (`funnelrec evaluate ctr --model
dcnv2`: rating ≥ 4, global RS 0.8/0.1/0.1, early stopping on validation AUC) in 1 process and
in 2 torchrun processes (DDP over gloo, one torch thread each), run one after the other in the
same invocation. Prints one JSON object: test AUC of each and their difference, training
samples/s (global samples over wall seconds of the training epochs), samples per CPU-second of
the training epochs (steadier than wall time on a shared machine), process CPU seconds of each
rank, and the ratios.

    .venv/bin/python bench/ddp.py                  # seeds 2020; ~2-4 min on 2 quiet cores
    .venv/bin/python bench/ddp.py --seeds 2020,1,2 # the 1-process seed spread too
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time


def worker(seed: int) -> None:
    """One rank of the run (or the only process): evaluate_ctr; rank 0 prints the JSON line."""
    import torch.distributed as dist

    import funnelrec.eval.ctr as ctr
    from funnelrec.data import load_dataset
    from funnelrec.eval.ctr import evaluate_ctr
    from funnelrec.train import distributed

    results = []

    class Recording(ctr.Trainer):  # keeps the TrainResult: the epochs' process CPU seconds
        def fit(self, *args, **kwargs):
            results.append(super().fit(*args, **kwargs))
            return results[-1]

    ctr.Trainer = Recording
    rank = distributed.init_from_env()
    ds = load_dataset("movielens-100k")
    c0 = time.process_time()
    res = evaluate_ctr(ds, "dcnv2", seed=seed)
    cpu = (time.process_time() - c0, results[-1].cpu_seconds)
    cpus = [cpu]
    if distributed.world_size() > 1:
        cpus = [None] * distributed.world_size()
        dist.all_gather_object(cpus, cpu)
    if rank == 0:
        keep = ("auc", "gauc", "logloss", "valid_auc", "epochs", "best_epoch", "train_samples_per_s", "train_seconds",
                "n_train")
        samples = res["epochs"] * res["n_train"]  # every epoch's samples, over all ranks together
        train_cpu = [c[1] for c in cpus]
        print(json.dumps({"world": distributed.world_size(), "seed": seed, **{k: res[k] for k in keep},
                          "cpu_seconds_per_rank": [round(c[0], 1) for c in cpus],
                          "train_cpu_seconds_per_rank": [round(c, 2) for c in train_cpu],
                          # the machine is shared: samples per CPU-second of the training epochs is the
                          # load-independent figure; with N ranks, over the busiest rank's CPU seconds
                          # (the rate N free cores would give) and over their sum (cost)
                          "samples_per_cpu_s_busiest_rank": round(samples / max(train_cpu)),
                          "samples_per_cpu_s_all_ranks": round(samples / sum(train_cpu))}), flush=True)
    distributed.shutdown()


def run(nproc: int, seed: int) -> dict:
    env = {**os.environ, "FUNNELREC_THREADS": "1", "OMP_NUM_THREADS": "1"}
    me = [os.path.abspath(__file__), "--worker", "--seed", str(seed)]
    cmd = [sys.executable, *me] if nproc == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", *me]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"{nproc}-process run failed:\n{p.stderr[-3000:]}")
    out = json.loads(p.stdout.strip().splitlines()[-1])
    out["wall_s"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(out), file=sys.stderr, flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--worker", action="store_true")
    ap.add_argument("--seed", type=int, default=2020)
    ap.add_argument("--seeds", default="2020")
    ap.add_argument("--nproc", type=int, default=2)
    a = ap.parse_args()
    if a.worker:
        worker(a.seed)
        return
    seeds = [int(s) for s in a.seeds.split(",")]
    one = [run(1, s) for s in seeds]
    two = run(a.nproc, seeds[0])
    res = {"machine": f"{platform.processor() or 'cpu'}, {os.cpu_count()} cores shared with other sessions (noisy)",
           "date": time.strftime("%Y-%m-%d"), "model": "dcnv2", "protocol": "ctr (ml-100k)",
           "one_process": one, f"{a.nproc}_processes": two,
           "auc_diff": round(two["auc"] - one[0]["auc"], 5),
           "one_process_auc_spread": round(max(r["auc"] for r in one) - min(r["auc"] for r in one), 5),
           "samples_per_s_ratio": round(two["train_samples_per_s"] / one[0]["train_samples_per_s"], 3),
           "cpu_seconds_ratio": round(sum(two["cpu_seconds_per_rank"]) / one[0]["cpu_seconds_per_rank"][0], 3)}
    if "samples_per_cpu_s_busiest_rank" in one[0]:
        res["samples_per_cpu_s_ratio_busiest_rank"] = round(
            two["samples_per_cpu_s_busiest_rank"] / one[0]["samples_per_cpu_s_busiest_rank"], 3)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
