"""A newcomer's first served recommendation, timed: a generated e-commerce log (view / click /
cart / purchase, string ids, ms times, missing values, an extra column; simulate/ecommerce.py)
→ `funnelrec init` → `funnelrec train --config` → `funnelrec serve --config` → the first
/recommend answer, each step a real command (a fresh process, as a user runs it), wall time.

    .venv/bin/python bench/own_data.py                 # 300k events (the issue's log size)
    .venv/bin/python bench/own_data.py --events 50000  # quicker

Prints one JSON object: the wall and CPU seconds of each step, the totals, the machine's load,
the sizes, and two checks of the served funnel — the conversion task was trained, a purchased
item is not recommended again.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _proc_cpu(pid: int) -> float:
    """utime + stime of a live process (/proc/<pid>/stat), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _run(args: list[str], env: dict) -> tuple[float, float, str]:
    """(wall s, CPU s, stdout) of one `funnelrec ARGS` process."""
    t0, c0 = time.perf_counter(), _children_cpu()
    out = subprocess.run([sys.executable, "-m", "funnelrec.cli", *args], env=env, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{' '.join(args)} failed ({out.returncode}): {out.stderr[-2000:]}")
    return time.perf_counter() - t0, _children_cpu() - c0, out.stdout


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=300_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dir", default=None, help="work folder (default: a temporary one)")
    args = p.parse_args()
    from funnelrec.simulate.ecommerce import write_ecommerce_files

    root = Path(args.dir or tempfile.mkdtemp(prefix="funnelrec-own-data-"))
    t0 = time.perf_counter()
    paths = write_ecommerce_files(root / "data", n_events=args.events, seed=args.seed)
    gen_s = time.perf_counter() - t0
    env = {**os.environ, "FUNNELREC_THREADS": os.environ.get("FUNNELREC_THREADS", "2")}
    cfg = root / "cfg" / "funnel.yaml"
    wall0 = time.perf_counter()
    init_s, init_cpu, init_out = _run(["init", "--interactions", str(paths["interactions"]), "--items", str(paths["items"]),
                             "--users", str(paths["users"]), "--out", str(cfg.parent), "--json"], env)
    train_s, train_cpu, train_out = _run(["train", "--config", str(cfg), "--json"], env)
    port = _free_port()
    t1 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "funnelrec.cli", "serve", "--config", str(cfg), "--port", str(port),
                             "--state-dir", str(root / "state")], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        first = None
        while first is None:
            if proc.poll() is not None:
                raise SystemExit(f"serve exited: {proc.stderr.read().decode()[-2000:]}")
            try:
                r = httpx.get(f"{base}/recommend", params={"user_id": "v000001", "k": 10, "fields": "title"}, timeout=5)
                if r.status_code == 200:
                    first = r.json()
            except httpx.HTTPError:
                time.sleep(0.2)
        serve_s = time.perf_counter() - t1
        total_s = time.perf_counter() - wall0
        serve_cpu = _proc_cpu(proc.pid)
        bought = first["items"][0]["item_id"]
        httpx.post(f"{base}/feedback", json={"user_id": "v000001", "events": [{"item_id": bought, "type": "purchase"}]})
        again = httpx.get(f"{base}/recommend", params={"user_id": "v000001", "k": 50}).json()["items"]
        kept_out = bought not in [it["item_id"] for it in again]
    finally:
        proc.terminate()
        proc.wait(30)
    init, train = json.loads(init_out), json.loads(train_out)
    print(json.dumps({
        "bench": "own_data", "events": init["interactions"], "users": init["users"], "items": init["items"],
        "channels": init["channels"], "tasks": train["tasks"], "generate_s": round(gen_s, 1),
        "init_s": round(init_s, 1), "train_s": round(train_s, 1), "serve_to_first_answer_s": round(serve_s, 1),
        "total_s": round(total_s, 1),
        # CPU seconds of the three processes: on a shared, oversubscribed machine the wall time
        # measures the neighbours; the CPU time is what the steps cost (≈ wall when the cores are free)
        "init_cpu_s": round(init_cpu, 1), "train_cpu_s": round(train_cpu, 1),
        "serve_cpu_s": round(serve_cpu, 1), "total_cpu_s": round(init_cpu + train_cpu + serve_cpu, 1),
        "load_avg_1m": round(os.getloadavg()[0], 1), "first_answer_titles": all("title" in it["attributes"] for it in first["items"]),
        "bought_item_kept_out": kept_out, "cores": os.cpu_count(), "date": time.strftime("%Y-%m-%d"),
    }))


if __name__ == "__main__":
    main()
