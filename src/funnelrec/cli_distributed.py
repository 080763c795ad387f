"""`funnelrec train --nproc N`: the same fit in N data-parallel processes (torchrun, gloo on CPU,
NCCL with GPUs), rank 0 writing the artifact.

The command checks its config, then relaunches itself as ``python -m torch.distributed.run
--standalone --nproc-per-node N -m funnelrec.cli_distributed train …``. Each worker joins the
process group (train/distributed.py) and runs `funnelrec train`'s own steps (cli_data.py: load,
check, split, fit); the stages before the Trainer (channels, samples, features) are
deterministic and run on every rank, the Trainer's loops (the fine ranker, the two-tower and the
pre-ranker) split every batch across the ranks under DDP. Only rank 0 saves, so the artifact is
the ordinary one: `funnelrec serve` loads it in one process as any other.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from funnelrec.core.errors import ConfigError, FunnelrecError

_ERROR_FILE = "FUNNELREC_DDP_ERROR_FILE"


def launch_train(nproc: int, dataset: str | None, path: Path | None, config: Path | None, out: Path | None,
                 seed: int, quiet: bool, as_json: bool) -> int:
    """Run `funnelrec train` in `nproc` torchrun workers; returns the launcher's exit code."""
    from funnelrec.cli_data import resolve_config

    if nproc < 1:
        raise ConfigError(f"--nproc must be ≥ 1, got {nproc}")
    resolve_config(config, dataset)  # a bad config fails here, in one line, before N processes start
    args = ["train", "--seed", str(seed)]
    for flag, value in (("--dataset", dataset), ("--path", path), ("--config", config), ("--out", out)):
        if value is not None:
            args += [flag, str(value)]
    args += ["--quiet"] * quiet + ["--json"] * as_json
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "funnelrec.cli_distributed", *args]
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")  # torchrun's own default, set here to skip its warning
    with tempfile.TemporaryDirectory(prefix="funnelrec-ddp-") as tmp:
        # a worker's user error (bad data for the config …) comes back as its one line, exit 2,
        # after torchrun's own failure report
        env[_ERROR_FILE] = str(Path(tmp) / "error.txt")
        code = subprocess.call(cmd, env=env)
        err = Path(env[_ERROR_FILE])
        if code != 0 and err.is_file():
            print(err.read_text().strip(), file=sys.stderr)
            return 2
    return 0 if code == 0 else 1


def _worker(argv: list[str]) -> int:
    from funnelrec.cli_data import _emit, default_artifact, fit_funnel, load_data, resolve_config
    from funnelrec.train import distributed

    ap = argparse.ArgumentParser(prog="funnelrec.cli_distributed")
    ap.add_argument("command", choices=["train"])
    ap.add_argument("--dataset")
    ap.add_argument("--path", type=Path)
    ap.add_argument("--config", type=Path)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--seed", type=int, default=2020)
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--json", dest="as_json", action="store_true")
    a = ap.parse_args(argv)
    rank = distributed.init_from_env()
    try:
        t0 = time.perf_counter()
        cfg = resolve_config(a.config, a.dataset)
        d = load_data(cfg, a.config, a.dataset, a.path)
        funnel = fit_funnel(cfg, d, a.seed, progress=rank == 0 and not (a.quiet or a.as_json), where=a.config)
        if rank == 0:
            out = a.out if a.out is not None else default_artifact(a.config, cfg)
            funnel.save(out)
            size = sum(p.stat().st_size for p in Path(out).rglob("*") if p.is_file())
            tasks = list(getattr(funnel.ranker_, "tasks_", ()))
            ranker = getattr(funnel.ranker_, "train_result_", None)
            _emit({"artifact": str(out), "bytes": size, "components": len(funnel.components()),
                   "users": d.n_users, "items": d.n_items, "interactions": d.interactions.height, "tasks": tasks,
                   "world_size": distributed.world_size(),
                   "ranker_samples_per_s": round(ranker.samples_per_s) if ranker is not None else None,
                   "seconds": round(time.perf_counter() - t0, 2)}, a.as_json,
                  f"saved {out}/ ({size / 1e6:.1f} MB, {len(funnel.components())} components; tasks: "
                  f"{', '.join(tasks)}; trained by {distributed.world_size()} processes)")
        return 0
    except FunnelrecError as e:
        if rank == 0:
            print(f"error: {e}", file=sys.stderr)
            if os.environ.get(_ERROR_FILE):
                Path(os.environ[_ERROR_FILE]).write_text(f"error: {e}\n")
        return 2
    finally:
        distributed.shutdown()


if __name__ == "__main__":
    sys.exit(_worker(sys.argv[1:]))
