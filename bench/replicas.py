"""Replicas behind nginx under load, with a replica killed and restarted: prints one JSON object.

redis-server + 2 `python -m funnelrec.serving` replicas (own state dirs, shared Redis) + nginx
rendered by `funnelrec deploy nginx` (serving/deploy.py), all on loopback. An open-loop client
(requests sent on a fixed schedule whatever the answers' speed; latency from the scheduled time,
so queueing cannot hide) sends `--rate` req/s through nginx for `--duration` s: odd slots are
POST /recommend for a random user, even slots POST /feedback of the last answer's items
(impressions, and a click on the first one in 1 of 5), each event with its own event_id.
Replica 1 is SIGKILLed at `--kill-at` s and started again at `--restart-at` s.

Counted: every non-200 answer or transport error (errors), per phase p50/p99 of each kind, the
requests nginx retried on the other replica (its access log), and the feedback events: every
acknowledged event_id must be in the Redis stream exactly once (lost = acknowledged − stream;
doubled = in the stream more than once) and in the union of the replicas' local event logs.

    .venv/bin/python bench/replicas.py                       # 3 min at 100 req/s (the issue's run)
    .venv/bin/python bench/replicas.py --duration 30 --kill-at 10 --restart-at 20 --rate 50
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

STREAM = "funnelrec:events"


def _free_run(n: int) -> int:
    def free(p: int) -> bool:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", p))
            except OSError:
                return False
        return True

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        start = s.getsockname()[1]
    return next(p for p in range(start, start + 2000) if all(free(p + i) for i in range(n)))


def _wait(url: str, proc: subprocess.Popen, what: str, timeout: float = 600) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with {proc.returncode}")
        try:
            r = httpx.get(url, timeout=2)
            if r.status_code == 200 and r.json().get("ready", True):
                return
        except (httpx.TransportError, ValueError):
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"{what} did not become ready")
        time.sleep(0.2)


def _pct(xs: list[float]) -> dict:
    if not xs:
        return {"n": 0}
    a = np.asarray(xs)
    return {"n": len(xs), "p50_ms": round(float(np.percentile(a, 50)), 2), "p99_ms": round(float(np.percentile(a, 99)), 2),
            "max_ms": round(float(a.max()), 2)}


async def _load(base: str, rate: float, duration: float, users: list[str], schedule: dict, seed: int = 0) -> dict:
    """The open-loop client; `schedule` maps seconds → a callable run then (kill, restart)."""
    import httpx

    rng = random.Random(seed)
    records: list[dict] = []
    acked: list[str] = []
    last: list[dict] = []  # answers whose feedback is still to send
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    # at most 64 requests in flight; later ones wait here (their latency still counts from their
    # scheduled time): httpx's own pool queue costs O(waiting) per release and spins when backlogged
    slots = asyncio.Semaphore(64)
    async with httpx.AsyncClient(base_url=base, timeout=30, limits=limits) as http:

        async def one(i: int, t_sched: float, t0: float) -> None:
            async with slots:
                await _send(i, t_sched, t0)

        async def _send(i: int, t_sched: float, t0: float) -> None:
            kind = "recommend" if i % 2 == 0 or not last else "feedback"
            rec = {"kind": kind, "t": t_sched - t0}
            try:
                if kind == "recommend":
                    r = await http.post("/recommend", json={"user_id": rng.choice(users), "k": 10})
                    if r.status_code == 200:
                        last.append(r.json())
                        rec["worker"] = r.headers.get("x-funnelrec-worker")
                else:
                    ans = last.pop(0)
                    now = int(time.time())
                    evs = [{"item_id": it["item_id"], "type": "impression", "ts": now, "event_id": uuid.uuid4().hex}
                           for it in ans["items"]]
                    if evs and rng.random() < 0.2:
                        evs.append({"item_id": evs[0]["item_id"], "type": "click", "ts": now,
                                    "event_id": uuid.uuid4().hex})
                    r = await http.post("/feedback", json={"request_id": ans["request_id"], "user_id": ans["user_id"],
                                                           "events": evs})
                    if r.status_code == 200:
                        acked.extend(e["event_id"] for e in evs)
                        rec["duplicates"] = r.json().get("duplicates", 0)
                rec["status"] = r.status_code
                if r.status_code != 200:
                    rec["error"] = r.text[:200]
            except httpx.HTTPError as e:
                rec["status"], rec["error"] = 0, f"{type(e).__name__}: {e}"
            rec["ms"] = (time.perf_counter() - t_sched) * 1e3
            rec["done"] = time.perf_counter() - t0
            records.append(rec)

        t0 = time.perf_counter()
        tasks = []
        pending = sorted(schedule.items())
        n = int(rate * duration)
        for i in range(n):
            t_sched = t0 + i / rate
            while pending and t0 + pending[0][0] <= t_sched:
                pending.pop(0)[1]()
            delay = t_sched - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i, t_sched, t0)))
        await asyncio.gather(*tasks)
        for _, fn in pending:
            fn()
    return {"records": records, "acked": acked}


def claim_bench(n_calls: int = 3000, batch: int = 10) -> dict:
    """The cost of the shared idempotency claim (online/shared.py: SET NX EX + XADD in one Lua
    script per feedback call) next to what it replaced (a pipelined XADD per event, no claim), on
    one local redis-server: feedback calls/s and events/s, and Redis memory per claimed event."""
    import redis

    from funnelrec.online.shared import SharedFeedback
    from funnelrec.online.source import stream_fields
    from funnelrec.pipeline.eventlog import FeedbackEvent

    with tempfile.TemporaryDirectory() as tmp:
        port = _free_run(1)
        proc = subprocess.Popen([shutil.which("redis-server"), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                 "--appendonly", "no", "--dir", tmp], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"redis://127.0.0.1:{port}/0"
        try:
            r = redis.Redis.from_url(url)
            for _ in range(100):
                try:
                    r.ping()
                    break
                except redis.ConnectionError:
                    time.sleep(0.05)
            shared = SharedFeedback(url, prefix="b:", stream="b:claimed", ttl_s=86400)
            now = time.time()
            calls = [[FeedbackEvent("r", "u1", str(k), "impression", 1.0, int(now), None, uuid.uuid4().hex)
                      for k in range(batch)] for _ in range(n_calls)]
            out = {}
            for rep in range(2):  # interleaved: the two paths see the same machine load
                t = time.perf_counter()
                for evs in calls[: n_calls // 2] if rep == 0 else calls[n_calls // 2:]:
                    pipe = r.pipeline(transaction=False)
                    for e in evs:
                        pipe.xadd("b:plain", stream_fields(e, now))
                    pipe.execute()
                plain = time.perf_counter() - t
                mem0 = r.info("memory")["used_memory"]
                t = time.perf_counter()
                for evs in calls[: n_calls // 2] if rep == 0 else calls[n_calls // 2:]:
                    shared.claim_new([(e.event_id, stream_fields(e, now)) for e in evs])
                claim = time.perf_counter() - t
                mem1 = r.info("memory")["used_memory"]
                out[f"run {rep + 1}"] = {"plain_xadd_calls_per_s": round(n_calls / 2 / plain),
                                         "claim_calls_per_s": round(n_calls / 2 / claim),
                                         "claim_events_per_s": round(n_calls / 2 * batch / claim),
                                         "ratio_claim_over_plain_time": round(claim / plain, 2),
                                         "bytes_per_claimed_event (claim key + stream entry)":
                                             round((mem1 - mem0) / (n_calls / 2 * batch))}
            repeat = time.perf_counter()
            for evs in calls[:500]:  # every id already claimed: the retry path
                assert not any(shared.claim_new([(e.event_id, stream_fields(e, now)) for e in evs]))
            out["repeat_calls_per_s"] = round(500 / (time.perf_counter() - repeat))
            shared.close()
            r.close()
        finally:
            proc.terminate()
            proc.wait(10)
    return {"bench": "replicas --claims", "batch_events": batch, "calls": n_calls,
            "machine": f"{platform.machine()} {os.cpu_count()} cpu (shared)", "load_avg": os.getloadavg(), **out}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--claims", action="store_true", help="only the idempotency claim's cost (claim_bench)")
    p.add_argument("--config", default=str(ROOT / "bench" / "replicas_ml100k.yaml"),
                   help="dataset + funnel YAML (bench/serving.py's format)")
    p.add_argument("--workdir", default=None, help="keep the fitted funnel here and reuse it (bench/serving.py's)")
    p.add_argument("--rate", type=float, default=100.0)
    p.add_argument("--duration", type=float, default=180.0)
    p.add_argument("--kill-at", type=float, default=60.0)
    p.add_argument("--restart-at", type=float, default=120.0)
    args = p.parse_args()
    if args.claims:
        print(json.dumps(claim_bench()))
        return

    import redis

    from funnelrec.core.config import load_yaml
    from funnelrec.serving.deploy import NginxLayout, render_nginx, write_nginx
    from serving import build_funnel

    nginx_bin = shutil.which("nginx") or "/usr/sbin/nginx"
    spec = load_yaml(args.config)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        if args.workdir and (work / "funnel" / "manifest.json").exists() and (work / "info.json").exists():
            artifact, saved = work / "funnel", json.loads((work / "info.json").read_text())
            info, user_ids = saved["info"], saved["user_ids"]
        else:
            artifact, info, user_ids = build_funnel(spec, work)
            (work / "info.json").write_text(json.dumps({"info": info, "user_ids": user_ids}))
        users = [str(u) for u in user_ids]
        rport, base = _free_run(1), _free_run(2)
        procs: dict[str, subprocess.Popen] = {}
        procs["redis"] = subprocess.Popen([shutil.which("redis-server"), "--port", str(rport), "--bind", "127.0.0.1",
                                           "--save", "", "--appendonly", "no", "--dir", str(tmp)],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"redis://127.0.0.1:{rport}/0"
        r = redis.Redis.from_url(url)
        for _ in range(100):
            try:
                r.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}

        def replica(i: int) -> subprocess.Popen:
            log = open(tmp / f"replica-{i}.log", "a")  # noqa: SIM115  (closed with the process)
            return subprocess.Popen([sys.executable, "-m", "funnelrec.serving", "--artifact", str(artifact),
                                     "--state-dir", str(tmp / f"state-{i}"), "--redis-url", url,
                                     "--port", str(base + i), "--threads", "1"],
                                    env=env, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)

        lport = _free_run(1)
        prefix = tmp / "nginx"
        conf = write_nginx(render_nginx(NginxLayout(replicas=2, base_port=base, listen=f"127.0.0.1:{lport}"),
                                        prefix=prefix, conf=prefix / "nginx.conf"), prefix / "nginx.conf")
        events: list[tuple[str, float]] = []
        try:
            t = time.perf_counter()
            procs["r0"], procs["r1"] = replica(0), replica(1)
            for i in range(2):
                _wait(f"http://127.0.0.1:{base + i}/health", procs[f"r{i}"], f"replica {i}")
            start_s = time.perf_counter() - t
            procs["nginx"] = subprocess.Popen([nginx_bin, "-p", str(prefix), "-e", "logs/error.log", "-c", str(conf),
                                               "-g", "daemon off;"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            _wait(f"http://127.0.0.1:{lport}/health", procs["nginx"], "nginx")
            t_load = [0.0]

            def kill() -> None:
                os.kill(procs["r1"].pid, signal.SIGKILL)
                procs["r1"].wait(10)
                events.append(("killed replica 1", time.perf_counter() - t_load[0]))

            def restart() -> None:
                procs["r1"] = replica(1)
                events.append(("restarted replica 1", time.perf_counter() - t_load[0]))

            # a short warm-up through nginx (not counted), then the measured run
            asyncio.run(_load(f"http://127.0.0.1:{lport}", 20, 5, users, {}, seed=1))
            t_load[0] = time.perf_counter()
            load_avg_start = os.getloadavg()
            out = asyncio.run(_load(f"http://127.0.0.1:{lport}", args.rate, args.duration, users,
                                    {args.kill_at: kill, args.restart_at: restart}))
            load_avg_end = os.getloadavg()
            # when did the restarted replica answer again (through nginx: its pid in the header)
            for _ in range(50):
                try:
                    if procs["r1"].poll() is None:
                        import httpx

                        httpx.get(f"http://127.0.0.1:{base + 1}/health", timeout=1)
                        break
                except Exception:  # noqa: BLE001
                    time.sleep(0.2)
            stream = Counter()
            cur = "-"
            while True:
                page = r.xrange(STREAM, min=cur, max="+", count=10_000)
                for _, f in page:
                    stream[f.get(b"event_id", b"").decode()] += 1
                if len(page) < 10_000:
                    break
                cur = "(" + page[-1][0].decode()
            logged: set[str] = set()
            for i in range(2):
                db = tmp / f"state-{i}" / "events.db"
                if db.exists():
                    with sqlite3.connect(db) as c:
                        logged |= {row[0] for row in c.execute("SELECT event_id FROM events")}
            time.sleep(1.5)  # nginx's access log buffer (flush=1s)
            access = (prefix / "logs" / "access.log").read_text().splitlines()
        finally:
            for name, proc in procs.items():
                if proc.poll() is None:
                    proc.send_signal(signal.SIGQUIT if name == "nginx" else signal.SIGTERM)
                    try:
                        proc.wait(30)
                    except subprocess.TimeoutExpired:
                        proc.kill()
            r.close()

    recs, acked = out["records"], out["acked"]
    phases = {"before kill": (0, args.kill_at), "one replica": (args.kill_at, args.restart_at),
              "after restart": (args.restart_at, args.duration)}
    by_phase = {}
    for name, (lo, hi) in phases.items():
        ph = [x for x in recs if lo <= x["t"] < hi]
        by_phase[name] = {kind: {**_pct([x["ms"] for x in ph if x["kind"] == kind and x["status"] == 200]),
                                 "errors": sum(x["kind"] == kind and x["status"] != 200 for x in ph)}
                          for kind in ("recommend", "feedback")}
        by_phase[name]["answered_by"] = dict(Counter(x.get("worker") for x in ph if x["kind"] == "recommend"
                                                     and x["status"] == 200))
    acked_set = set(acked)
    retried = [line for line in access if 'ua="' in line and ", " in line.split('ua="')[1].split('"')[0]]
    errors = [x for x in recs if x["status"] != 200]
    print(json.dumps({
        "bench": "replicas", "machine": f"{platform.machine()} {os.cpu_count()} cpu (shared with other sessions)",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "load_avg": [load_avg_start, load_avg_end],
        "funnel": {k: info[k] for k in ("dataset", "n_items", "channels", "ranker") if k in info},
        "layout": "nginx (least_conn, retries) → 2 replicas × 1 worker, shared redis-server",
        "rate": args.rate, "duration_s": args.duration, "kill_at_s": args.kill_at, "restart_at_s": args.restart_at,
        "replica_start_s": round(start_s, 1), "events": [(e, round(s, 1)) for e, s in events],
        "requests": len(recs),
        # what the deployment sustained: all answers over the time until the last one (an
        # overloaded box queues the open-loop schedule; the latencies then include that queue)
        "achieved_rate": round(len(recs) / max(x["done"] for x in recs), 1), "errors": len(errors), "error_samples": [x.get("error") for x in errors[:5]],
        "overall": {kind: _pct([x["ms"] for x in recs if x["kind"] == kind and x["status"] == 200])
                    for kind in ("recommend", "feedback")},
        "phases": by_phase,
        "nginx_retried_requests": len(retried), "nginx_log_lines": len(access),
        "feedback": {"acknowledged_events": len(acked), "unique_acknowledged": len(acked_set),
                     "in_stream": sum(stream[e] >= 1 for e in acked_set),
                     "lost_from_stream": sum(stream[e] == 0 for e in acked_set),
                     "doubled_in_stream": sum(c > 1 for e, c in stream.items() if e),
                     "stream_entries": sum(stream.values()),
                     "lost_from_local_logs": len(acked_set - logged),
                     "acknowledged_as_duplicates": sum(x.get("duplicates", 0) for x in recs)},
    }))


if __name__ == "__main__":
    main()
