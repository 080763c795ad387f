"""Per-step time splits of the Trainer's step for CTR models on ml-100k, next to a bare loop.

    .venv/bin/python bench/ctr_step_profile.py [--models deepfm,dcnv2] [--steps 120] [--rounds 5]
        [--precision ieee|bf16] [--before-src DIR]

The step is the Trainer's (train/trainer.py `_fit`): slices of the epoch's shuffled tensors,
`bce_loss()(model, batch)`, zero_grad + backward, the Trainer's optimizer (`_optimizer`: fused
Adam), the epoch-loss bookkeeping, with the process settings `Trainer.fit` makes (one thread,
flush denormals, tuned malloc where the code has train/alloc.py) and the CTR protocol's
features and model config (eval/ctr.py). Each phase is timed in CPU seconds of this thread
(time.thread_time: robust to other jobs' load on a shared machine, though not to cache and
hyper-thread sharing); reported as the median over `--rounds` rounds of `--steps` steps, in
ms per step: data (per-epoch shuffle share + slicing), forward, backward, optimizer,
bookkeeping, total, and samples per CPU-second.

"bare" is the ceiling the issue names: the same shapes written as a plain torch loop over
pre-built tensors (nn.Embedding + mean-pooled genres, nn.Linear layers, torch BCE, fused Adam,
no funnelrec code), timed the same way.

--before-src DIR: the same profile from another checkout's code first (subprocess with
PYTHONPATH=DIR), in the same invocation. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

from _machine import cpu  # bench/_machine.py (bench/ is the script's directory)

B = 2048


def _setup() -> None:
    from funnelrec.train.trainer import setup_torch

    setup_torch(1)
    try:
        from funnelrec.train.alloc import tune_malloc
    except ImportError:  # older code: no allocator tuning
        return
    tune_malloc()


def _data(model: str):
    from funnelrec.data import load_dataset
    from funnelrec.eval.ctr import _prepare

    cfg, _, enc, (train, _, _), _ = _prepare(load_dataset("movielens-100k"), model, None, 2020)
    return cfg, enc.spec, train


def _precision(p: str):
    from funnelrec.train.trainer import _matmul_precision

    return _matmul_precision(p) if p != "ieee" else contextlib.nullcontext()


def profile_trainer(model: str, steps: int, rounds: int, precision: str, data) -> dict:
    from funnelrec.models.ranking.common import build_ranker
    from funnelrec.train.losses import bce_loss
    from funnelrec.train.trainer import TrainerConfig, _optimizer

    cfg, spec, train = data
    torch.manual_seed(2020)
    net = build_ranker(model, spec, cfg.model)
    net.train()
    opt = _optimizer(TrainerConfig(), [p for p in net.parameters() if p.requires_grad])
    loss_fn = bce_loss()
    n = len(train["label"])
    gen = torch.Generator().manual_seed(2020)
    splits = {k: [] for k in ("data", "forward", "backward", "optimizer", "bookkeeping")}
    with _precision(precision):
        for r in range(rounds + 1):  # round 0 warms up
            acc = dict.fromkeys(splits, 0.0)
            t = time.thread_time()
            perm = torch.randperm(n, generator=gen)
            shuffled = {k: v[perm] for k, v in train.items()}
            acc["data"] += (time.thread_time() - t) * steps * B / n  # the epoch's shuffle, per step share
            total = None
            for i in range(steps):
                s = (i * B) % (n - B)
                t0 = time.thread_time()
                batch = {k: v[s : s + B] for k, v in shuffled.items()}
                t1 = time.thread_time()
                loss = loss_fn(net, batch)
                t2 = time.thread_time()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                t3 = time.thread_time()
                opt.step()
                t4 = time.thread_time()
                total = loss.detach() if total is None else total + loss.detach()
                t5 = time.thread_time()
                for k, a, b in (("data", t0, t1), ("forward", t1, t2), ("backward", t2, t3), ("optimizer", t3, t4),
                                ("bookkeeping", t4, t5)):
                    acc[k] += b - a
            float(total)
            if r:
                for k in splits:
                    splits[k].append(acc[k] / steps * 1e3)
    return _summary(splits)


class _Bare(nn.Module):
    """DeepFM / DCNv2 of the same shapes in plain torch (the issue's 'bare loop')."""

    def __init__(self, kind: str, spec, mcfg: dict) -> None:
        super().__init__()
        self.kind = kind
        names = spec.field_names
        groups = [0]
        for a, b in zip(names, names[1:]):
            groups.append(groups[-1] + (a != b))
        self.register_buffer("assign", torch.zeros(groups[-1] + 1, spec.n_fields).index_put_(
            (torch.tensor(groups), torch.arange(spec.n_fields)), torch.tensor(1.0)))
        d = mcfg.get("embedding_dim", 10)
        self.emb = nn.Embedding(spec.n_embeddings, d, padding_idx=0)
        width = (groups[-1] + 1) * d + spec.n_dense
        hidden = list(mcfg.get("hidden", [256, 256]))
        layers, w = [], width
        for h in hidden:
            layers += [nn.Linear(w, h), nn.ReLU()]
            w = h
        if kind == "deepfm":
            self.lin = nn.Embedding(spec.n_embeddings, 1, padding_idx=0)
            self.lin_dense = nn.Linear(spec.n_dense, 1)
            layers.append(nn.Linear(w, 1))
            self.mlp = nn.Sequential(*layers)
        else:
            self.cross = nn.ModuleList([nn.Linear(width, width) for _ in range(mcfg.get("cross_layers", 3))])
            self.mlp = nn.Sequential(*layers)
            self.head = nn.Linear(width + w, 1)

    def forward(self, sparse, dense):
        e = self.emb(sparse)  # (B, F, D)
        present = (sparse > 0).float()
        v = torch.einsum("gf,bfd->bgd", self.assign, e) / (present @ self.assign.T).clamp_min(1).unsqueeze(-1)
        x = torch.cat([v.flatten(1), dense], 1)
        if self.kind == "deepfm":
            s = v.sum(1)
            fm = 0.5 * (s.pow(2) - v.pow(2).sum(1)).sum(1)
            return self.lin(sparse).sum((1, 2)) + self.lin_dense(dense).squeeze(-1) + fm + self.mlp(x).squeeze(-1)
        c = x
        for lin in self.cross:
            c = x * lin(c) + c
        return self.head(torch.cat([c, self.mlp(x)], 1)).squeeze(-1)


def profile_bare(model: str, steps: int, rounds: int, precision: str, data) -> dict:
    cfg, spec, train = data
    torch.manual_seed(2020)
    net = _Bare(model, spec, cfg.model)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, fused=True)
    n = len(train["label"])
    sparse, dense, label = train["sparse"], train["dense"], train["label"]
    times = []
    with _precision(precision):
        for r in range(rounds + 1):
            t = time.thread_time()
            perm = torch.randperm(n)
            sp, de, la = sparse[perm], dense[perm], label[perm]
            for i in range(steps):
                s = (i * B) % (n - B)
                loss = nn.functional.binary_cross_entropy_with_logits(net(sp[s : s + B], de[s : s + B]), la[s : s + B])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            if r:
                times.append((time.thread_time() - t) / steps * 1e3)
    med = statistics.median(times)
    return {"total": round(med, 3), "samples_per_cpu_s": round(B / med * 1e3)}


def _summary(splits: dict) -> dict:
    out = {k: round(statistics.median(v), 3) for k, v in splits.items()}
    tot = statistics.median([sum(r) for r in zip(*splits.values())])
    out["total"] = round(tot, 3)
    out["samples_per_cpu_s"] = round(B / tot * 1e3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="deepfm,dcnv2")
    ap.add_argument("--steps", type=int, default=39, help="steps per round (39 = one ml-100k epoch)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--precision", default="ieee", choices=["ieee", "bf16"])
    ap.add_argument("--no-bare", action="store_true")
    ap.add_argument("--before-src", default=None)
    args = ap.parse_args()
    res: dict = {"cpu": cpu(), "machine": f"{os.cpu_count()} CPUs", "load_start": os.getloadavg()[0], "precision": args.precision}
    if args.before_src:
        cmd = [sys.executable, __file__, "--models", args.models, "--steps", str(args.steps), "--rounds",
               str(args.rounds), "--precision", args.precision, "--no-bare"]
        env = {**os.environ, "PYTHONPATH": str(Path(args.before_src).resolve())}
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
        res["before"] = json.loads(out.strip().splitlines()[-1])["trainer"]
    _setup()
    res["trainer"], res["bare"] = {}, {}
    for m in args.models.split(","):
        data = _data(m)
        res["trainer"][m] = profile_trainer(m, args.steps, args.rounds, args.precision, data)
        if not args.no_bare:
            res["bare"][m] = profile_bare(m, args.steps, args.rounds, args.precision, data)
        print(json.dumps({m: {"trainer": res["trainer"][m], "bare": res["bare"].get(m)}}), file=sys.stderr, flush=True)
    res["load_end"] = os.getloadavg()[0]
    print(json.dumps(res))


if __name__ == "__main__":
    main()
