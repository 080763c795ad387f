"""Serving load benchmark: prints one JSON object.

Fits the funnel described by a YAML (dataset + funnel config + load plan), saves it, starts
`python -m funnelrec.serving` in its own process, and drives it from a *separate* load-generator
process (this file with --loadgen: an open-loop asyncio client over raw keep-alive HTTP/1.1
connections — requests are sent on a fixed schedule whatever the server's speed, and latency
is measured from the scheduled send time, so a slow server cannot hide its queueing
(no coordinated omission)). For each rate: achieved rate, p50/p95/p99/max end-to-end latency,
errors, and the per-stage breakdown the server reports in `timings_ms`; then the highest tested
rate whose p99 ≤ the SLO.

    .venv/bin/python bench/serving.py --config bench/serving_ml100k.yaml
    .venv/bin/python bench/serving.py --config bench/serving_ml100k.yaml --rates 50,100 --duration 10
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import platform
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import orjson

from _machine import cpu  # bench/_machine.py (bench/ is the script's directory)

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------- load generator
async def _one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, payload: bytes) -> tuple[int, bytes, bytes]:
    """(status, body, worker id from the x-funnelrec-worker header) of one request."""
    writer.write(payload)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length, worker = 0, b""
    for line in head.split(b"\r\n"):
        low = line[:19].lower()
        if low[:15] == b"content-length:":
            length = int(line[15:])
        elif low == b"x-funnelrec-worker:":
            worker = line[19:].strip()
    body = await reader.readexactly(length)
    return status, body, worker


async def _drive(host: str, port: int, rate: float, duration: float, bodies: list[bytes], max_conns: int,
                 pool: int = 32, balance: str = "connection") -> dict:
    """Open-loop load over `pool` keep-alive connections opened up front; more are opened only
    when all are busy, up to `max_conns`. Which connection a request takes:
    - "least": an L7 balancer's least-outstanding-requests rule, as nginx/envoy in front
      of the workers would do — an idle connection of the worker (x-funnelrec-worker header,
      learned with a GET /health per connection) with the fewest requests in flight;
    - "connection" (default, as in session 1): round-robin over idle connections (oldest first). Each connection is pinned
      to the worker whose accept() won it, and that split is luck: 27 / 5 of 32 connections in
      one run here, which put 84 % of the load on one worker.
    A request whose reused connection turns out closed by the server is retried once on a fresh
    one (its latency still counts from the schedule)."""
    loop = asyncio.get_running_loop()
    idle: dict[bytes, collections.deque] = collections.defaultdict(collections.deque)
    inflight: collections.Counter = collections.Counter()
    served: collections.Counter = collections.Counter()
    lat, stages, codes = [], [], {}
    n_conns = 0
    dropped = 0
    health = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    for _ in range(min(pool, max_conns)):
        conn = await asyncio.open_connection(host, port)
        worker = (await _one(*conn, health))[2] if balance == "least" else b""
        idle[worker].append(conn)
        n_conns += 1

    def take() -> tuple[bytes, tuple] | None:
        ready = [w for w, q in idle.items() if q]
        if not ready:
            return None
        w = min(ready, key=lambda k: inflight[k])  # "connection": one deque, oldest idle first
        return w, idle[w].popleft()

    async def fire(i: int, t_sched: float) -> None:
        nonlocal n_conns, dropped
        got = take()
        worker = b""
        if got is not None:
            worker, conn = got
        elif n_conns < max_conns:
            n_conns += 1
            conn = await asyncio.open_connection(host, port)
        else:
            dropped += 1  # the client's own limit: counted as a failure
            return
        body = bodies[i % len(bodies)]
        req = (b"POST /recommend HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: "
               + str(len(body)).encode() + b"\r\n\r\n" + body)
        inflight[worker] += 1
        try:
            try:
                status, resp, worker_seen = await _one(*conn, req)
            except (OSError, asyncio.IncompleteReadError):  # closed while idle: once more, fresh
                conn[1].close()
                conn = await asyncio.open_connection(host, port)
                status, resp, worker_seen = await _one(*conn, req)
        except (OSError, asyncio.IncompleteReadError):
            codes["conn_error"] = codes.get("conn_error", 0) + 1
            n_conns -= 1
            return
        finally:
            inflight[worker] -= 1
        lat.append((loop.time() - t_sched) * 1e3)
        codes[str(status)] = codes.get(str(status), 0) + 1
        served[worker_seen.decode() or "?"] += 1
        if status == 200:
            stages.append(orjson.loads(resp)["timings_ms"])
        idle[worker_seen if balance == "least" else b""].append(conn)

    t0 = loop.time() + 0.05
    n = int(rate * duration)
    tasks = []
    for i in range(n):
        t_sched = t0 + i / rate
        delay = t_sched - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(fire(i, t_sched)))
    await asyncio.gather(*tasks)
    wall = loop.time() - t0
    for q in idle.values():
        for _, w in q:
            w.close()
    a = np.asarray(lat)
    q = (lambda p: float(np.percentile(a, p))) if a.size else (lambda p: float("nan"))
    stage_names = sorted({k for s in stages for k in s})
    breakdown = {}
    for name in stage_names:
        v = np.asarray([s[name] for s in stages if name in s])
        breakdown[name] = {"p50": round(float(np.percentile(v, 50)), 3), "p99": round(float(np.percentile(v, 99)), 3),
                           "mean": round(float(v.mean()), 3)}
    ok = codes.get("200", 0)
    return {"rate": rate, "sent": n, "ok": ok, "codes": codes, "client_dropped": dropped,
            "achieved_rps": round(ok / wall, 1), "connections": n_conns, "balance": balance,
            "requests_per_worker": dict(sorted(served.items())),
            "p50_ms": round(q(50), 2), "p95_ms": round(q(95), 2), "p99_ms": round(q(99), 2),
            "max_ms": round(float(a.max()), 2) if a.size else None, "stages_ms": breakdown}


def loadgen_main(args: argparse.Namespace) -> None:
    bodies = [line.encode() for line in Path(args.bodies).read_text().splitlines() if line]
    out = asyncio.run(_drive("127.0.0.1", args.port, args.rate, args.duration, bodies, args.max_conns,
                             balance=args.balance))
    print(json.dumps(out))


# ---------------------------------------------------------------------------- orchestration
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(proc: subprocess.Popen, port: int, timeout: float = 600) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise SystemExit("server did not become healthy")


def _start_nginx_layout(cmd: list[str], n: int, tmp: Path, env: dict, log, extra: list) -> tuple[subprocess.Popen, int]:
    """`cmd` (one server) as n one-worker replicas on consecutive ports sharing its --state-dir,
    and nginx in front (serving/deploy.py's config); the replicas go into `extra` with nginx last,
    and (nginx, its port) is returned."""
    import shutil

    from funnelrec.serving.deploy import NginxLayout, render_nginx, write_nginx

    base = _free_port()
    while any(not _port_free(base + i) for i in range(n)):
        base = _free_port()
    one = list(cmd)
    one[one.index("--workers") + 1] = "1"
    for i in range(n):
        c = list(one)
        c[c.index("--port") + 1] = str(base + i)
        extra.append(subprocess.Popen(c, env=env, stdout=subprocess.DEVNULL, stderr=log))
    port = _free_port()
    prefix = tmp / "nginx"
    conf = write_nginx(render_nginx(NginxLayout(replicas=n, base_port=base, listen=f"127.0.0.1:{port}",
                                                access_log=False), prefix=prefix, conf=prefix / "nginx.conf"),
                       prefix / "nginx.conf")
    nginx = subprocess.Popen([shutil.which("nginx") or "/usr/sbin/nginx", "-p", str(prefix), "-e", "logs/error.log",
                              "-c", str(conf), "-g", "daemon off;"], stdout=subprocess.DEVNULL, stderr=log)
    extra.append(nginx)
    return nginx, port


def _tree_pids(pid: int) -> list[int]:
    """`pid` and its descendants (uvicorn's --workers children, nginx's workers), from /proc."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                todo += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                pass
    return out


def _cpu_s(pids: list[int]) -> float:
    """User + system CPU seconds of the processes `pids` (and their descendants) so far."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for root in pids:
        for p in _tree_pids(root):
            try:
                f = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += int(f[11]) + int(f[12])  # utime, stime (fields 14 and 15)
    return total / tick


def _machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs since boot (/proc/stat), for the machine's busy share."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = f[3] + f[4]
    return float(sum(f[:8]) - idle), float(sum(f[:8]))


def _batch_counts(ports: list[int]) -> tuple[float, float]:
    """(requests, batches) of the servers' dynamic batching so far (/metrics of each port:
    funnelrec_recommend_batch_size sum and count; uvicorn workers on one port sum their own)."""
    import httpx

    req = n = 0.0
    for port in ports:
        for line in httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text.splitlines():
            if line.startswith("funnelrec_recommend_batch_size_sum"):
                req += float(line.split()[-1])
            elif line.startswith("funnelrec_recommend_batch_size_count"):
                n += float(line.split()[-1])
    return req, n


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def build_funnel(spec: dict, workdir: Path) -> tuple[Path, dict, list]:
    import polars as pl

    from funnelrec.data import load_dataset
    from funnelrec.data.splits import random_split_by_user
    from funnelrec.pipeline.builder import FunnelBuilder
    from funnelrec.pipeline.config import FunnelConfig
    from funnelrec.train.trainer import setup_torch

    setup_torch(1)  # a second spinning torch thread is slower on this loaded 2-core machine
    ds_spec = spec["dataset"]
    t0 = time.perf_counter()
    ds = load_dataset(ds_spec["name"], **ds_spec.get("params", {}))
    t_data = time.perf_counter() - t0
    split = random_split_by_user(ds.interactions, seed=2020)
    labels = split.valid
    n_label = int(spec.get("label_users", 0))  # ranker/pre-ranker trained on a sample of users (0 = all)
    if n_label and labels["user_idx"].n_unique() > n_label:
        rng = np.random.default_rng(2020)
        keep = rng.choice(np.unique(labels["user_idx"].to_numpy()), n_label, replace=False)
        labels = labels.filter(pl.col("user_idx").is_in(keep))
    cfg = FunnelConfig.from_dict(spec["funnel"])
    t0 = time.perf_counter()
    funnel = FunnelBuilder(cfg).fit(ds, split.train, labels=labels, progress=bool(spec.get("progress", False)))
    t_fit = time.perf_counter() - t0
    path = workdir / "funnel"
    funnel.save(path)
    info = {"dataset": ds_spec, "n_users": ds.n_users, "n_items": ds.n_items, "n_interactions": ds.interactions.height,
            "channels": [c.name for c in cfg.recall.channels], "merge_total": cfg.recall.merge.total,
            "prerank_keep": cfg.prerank.keep if cfg.prerank.enabled else None,
            "ranker": cfg.rank.model, "label_users": int(labels["user_idx"].n_unique()),
            "data_s": round(t_data, 1), "fit_s": round(t_fit, 1),
            "fit_seconds": {k: round(v, 2) for k, v in funnel.fit_seconds_.items()},
            "artifact_mb": round(sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20, 1)}
    return path, info, ds.users["user_id"].to_list()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--config", default=str(ROOT / "bench" / "serving_ml100k.yaml"))
    p.add_argument("--rates", default=None, help="comma-separated req/s (default: the YAML's)")
    p.add_argument("--duration", type=float, default=None, help="seconds per rate (default: the YAML's)")
    p.add_argument("--slo-ms", type=float, default=50.0)
    p.add_argument("--workers", type=int, default=None, help="server worker processes (default: the YAML's, else 1)")
    p.add_argument("--max-batch", type=int, default=None,
                   help="the servers' dynamic batching of /recommend (default: the YAML's server.max_batch, else 8; "
                        "1 = one request at a time)")
    p.add_argument("--workdir", default=None,
                   help="keep the fitted funnel here and reuse it when present (default: a temporary directory)")
    p.add_argument("--loadgen", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--rate", type=float, default=0, help=argparse.SUPPRESS)
    p.add_argument("--bodies", default="", help=argparse.SUPPRESS)
    p.add_argument("--max-conns", type=int, default=256, help=argparse.SUPPRESS)
    p.add_argument("--nginx", action="store_true",
                   help="serve --workers N as N one-worker replicas on consecutive ports (one shared --state-dir) "
                        "behind nginx (`funnelrec deploy nginx`: least_conn), the load sent to nginx")
    p.add_argument("--balance", default="connection", choices=["least", "connection"],
                   help="least: least-outstanding-requests over the workers (an L7 balancer); "
                        "connection: round-robin over connections, each pinned to the worker that accepted it")
    args = p.parse_args()
    if args.loadgen:
        loadgen_main(args)
        return

    from funnelrec.core.config import load_yaml

    spec = load_yaml(args.config)
    load = spec.get("load", {})
    rates = [float(r) for r in (args.rates.split(",") if args.rates else load.get("rates", [50, 100, 200]))]
    duration = args.duration or float(load.get("duration_s", 60))
    warmup = float(load.get("warmup_s", 5))
    server = spec.get("server", {})
    max_batch = args.max_batch or int(server.get("max_batch", 8))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        if args.workdir and (work / "funnel" / "manifest.json").exists() and (work / "info.json").exists():
            artifact, saved = work / "funnel", json.loads((work / "info.json").read_text())
            info, user_ids = saved["info"], saved["user_ids"]
            info["reused_artifact"] = True
        else:
            artifact, info, user_ids = build_funnel(spec, work)
            (work / "info.json").write_text(json.dumps({"info": info, "user_ids": user_ids}))
        rng = np.random.default_rng(0)
        cold = float(load.get("cold_fraction", 0.05))
        k = int(load.get("k", 10))
        bodies = []
        for i in range(20_000):
            uid = f"cold-{i}" if rng.random() < cold else str(user_ids[rng.integers(len(user_ids))])
            bodies.append(orjson.dumps({"user_id": uid, "k": k}).decode())
        (work / "bodies.txt").write_text("\n".join(bodies))
        port = _free_port()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        state = Path(tmp) / "state"  # fresh state every run
        cmd = [sys.executable, "-m", "funnelrec.serving", "--artifact", str(artifact), "--state-dir", str(state),
               "--port", str(port), "--threads", str(server.get("threads", 1)),
               "--max-in-flight", str(server.get("max_in_flight", 64)),
               "--max-batch", str(max_batch),
               "--workers", str(args.workers or server.get("workers", 1))]
        print(json.dumps({"progress": "fitted", **info}), file=sys.stderr, flush=True)
        log = open(Path(tmp) / "server.log", "w")  # noqa: SIM115  (closed with the temporary directory)
        n_workers = args.workers or server.get("workers", 1)
        extra: list[subprocess.Popen] = []  # the nginx layout's replicas and nginx
        if args.nginx:
            proc, port = _start_nginx_layout(cmd, n_workers, Path(tmp), env, log, extra)
        else:
            proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=log)
        try:
            t_start = time.perf_counter()
            try:
                for rep in extra[:-1]:  # each replica behind nginx, then nginx itself
                    _wait_healthy(rep, int(rep.args[rep.args.index("--port") + 1]))
                _wait_healthy(proc, port)
            except SystemExit:
                print((Path(tmp) / "server.log").read_text()[-3000:], file=sys.stderr)
                raise
            info["server_start_s"] = round(time.perf_counter() - t_start, 1)

            servers = [q.pid for q in (extra[:-1] if args.nginx else [proc])]
            server_ports = [int(q.args[q.args.index("--port") + 1]) for q in extra[:-1]] if args.nginx else [port]
            balancer = [proc.pid] if args.nginx else []

            def run(rate: float, seconds: float) -> dict:
                load_start = [round(x, 2) for x in os.getloadavg()]
                b0 = _batch_counts(server_ports)
                cpu0 = (_cpu_s(servers), _cpu_s(balancer), resource.getrusage(resource.RUSAGE_CHILDREN), _machine_busy())
                out = subprocess.run([sys.executable, __file__, "--loadgen", "--port", str(port), "--rate", str(rate),
                                      "--duration", str(seconds), "--bodies", str(work / "bodies.txt"),
                                      "--balance", args.balance],
                                     capture_output=True, text=True, check=True)
                res = json.loads(out.stdout)
                ru, (busy, tot) = resource.getrusage(resource.RUSAGE_CHILDREN), _machine_busy()
                # CPU per request: the servers' (every replica / worker), nginx's and the load
                # generator's CPU seconds over the run, per request answered; and the machine's
                # busy share over the run (all processes, this bench's or not)
                n_ok = max(res["ok"], 1)
                res["cpu_ms_per_request"] = {
                    "servers": round((_cpu_s(servers) - cpu0[0]) / n_ok * 1e3, 3),
                    "nginx": round((_cpu_s(balancer) - cpu0[1]) / n_ok * 1e3, 3) if args.nginx else None,
                    "loadgen": round((ru.ru_utime + ru.ru_stime - cpu0[2].ru_utime - cpu0[2].ru_stime) / n_ok * 1e3, 3),
                }
                b1 = _batch_counts(server_ports)
                res["mean_batch"] = round((b1[0] - b0[0]) / (b1[1] - b0[1]), 3) if b1[1] > b0[1] else None
                res["machine_busy_share"] = round((busy - cpu0[3][0]) / max(tot - cpu0[3][1], 1.0), 3)
                res["load_avg_start"] = load_start
                res["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
                print(json.dumps({"progress": res["rate"], "p50_ms": res["p50_ms"], "p99_ms": res["p99_ms"],
                                  "ok": res["ok"], "sent": res["sent"], "codes": res["codes"],
                                  "cpu_ms_per_request": res["cpu_ms_per_request"], "mean_batch": res["mean_batch"],
                                  "busy": res["machine_busy_share"]}), file=sys.stderr, flush=True)
                return res

            run(min(rates), warmup)  # warm caches, numba, torch
            results = [run(r, duration) for r in rates]
        finally:
            for q in extra[::-1] if args.nginx else [proc]:  # nginx first, then its replicas
                if q.poll() is None:
                    q.send_signal(signal.SIGQUIT if q is proc and args.nginx else signal.SIGTERM)
                    q.wait(30)
    ok = [r["rate"] for r in results if r["p99_ms"] <= args.slo_ms and r["ok"] == r["sent"]]
    print(json.dumps({
        "bench": "serving", "config": os.path.relpath(args.config, ROOT),
        "machine": f"{platform.machine()} {os.cpu_count()} cpu", "cpu": cpu(), "load_avg_at_end": os.getloadavg(),
        "funnel": info, "workers": args.workers or server.get("workers", 1), "max_batch": max_batch,
        "duration_s": duration,
        "layout": "nginx least_conn → one-worker replicas" if args.nginx else "uvicorn --workers (one port)",
        "slo_p99_ms": args.slo_ms,
        "results": results, "highest_rate_within_slo": max(ok) if ok else None,
    }))


if __name__ == "__main__":
    main()
