"""Freshness over real HTTP: how soon after a click is acknowledged does /recommend reflect it?

Fits the MovieLens-100k funnel of bench/serving_ml100k.yaml (itemCF, Swing, userCF, tag, author,
fresh, hot, cache → LR ranker), saves it, starts `python -m funnelrec.serving` in its own
process (uvicorn; `--workers` processes sharing SQLite state, or Redis with `--redis`), then for
each of `--clicks` users (one click each, distinct users):

1. POST /recommend (k) — the "before" answer;
2. POST /feedback a click on X = the first answered item with itemCF neighbours (an item the user
   has not consumed: it was recommended);
3. POST /recommend again, over a *different* connection (with several workers it may be served by
   another process than the one that took the click), until the answer reflects the click:
   X is not in it, and for every item s in both answers with an itemCF score

        score_after(s) − score_before(s) = N[s, X]        (target neighbourhood; N[X, s] for trigger)

   within 1e-4 (the channel's neighbour table, read from the saved artifact here) — the new
   trigger, added by hand.

Latency: freshness_ms = the reflecting answer's arrival − the feedback's 200 (p50/p99/max),
plus the feedback round trip and click sent → reflected. Prints one JSON object.

    .venv/bin/python bench/freshness.py                      # SQLite state, 1 worker, 250 clicks
    .venv/bin/python bench/freshness.py --workers 2 --redis  # two workers on a local redis-server
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from serving import _free_port, _wait_healthy, build_funnel  # noqa: E402  (bench/serving.py)


def _start_redis(workdir: Path) -> tuple[subprocess.Popen, str]:
    exe = shutil.which("redis-server")
    if exe is None:
        raise SystemExit("--redis: redis-server is not on PATH")
    import redis

    port = _free_port()
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(workdir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 10
    while True:
        try:
            redis.Redis.from_url(url).ping()
            return proc, url
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                proc.kill()
                raise SystemExit("redis-server did not start") from None
            time.sleep(0.05)


def _itemcf_scores(answer: dict) -> dict:
    return {it["item_id"]: it["recall_scores"]["itemcf"] for it in answer["items"]
            if "itemcf" in it.get("recall_scores", {})}


def _pct(a: list[float]) -> dict | None:
    v = np.asarray(a, np.float64)
    if not v.size:
        return None
    return {"p50": round(float(np.percentile(v, 50)), 2), "p99": round(float(np.percentile(v, 99)), 2),
            "max": round(float(v.max()), 2), "mean": round(float(v.mean()), 2)}


def measure(base: str, funnel, user_ids: list, n_clicks: int, k: int, seed: int = 0) -> dict:
    """The click loop (see the module doc) against the server at `base`."""
    import httpx

    ch = funnel.channels_["itemcf"]
    N = ch.neighbours_.tocsr()  # row i = i's neighbours: sim(i → s)
    # Δscore(s) of a new trigger X at [s, X]: target Σ_i sim(s → i) → N[s, X]; trigger → N[X, s]
    N_in = N if ch.neighbourhood == "target" else ch.neighbours_t_.tocsr()
    ids = funnel.dataset_.items["item_id"].to_list()
    index = {iid: i for i, iid in enumerate(ids)}
    rng = np.random.default_rng(seed)
    users = rng.choice(np.asarray(user_ids, dtype=object), size=min(n_clicks, len(user_ids)), replace=False)
    fresh_ms, feedback_ms, total_ms, tries, checked, workers = [], [], [], [], 0, {"same": 0, "other": 0}
    failures: list[str] = []
    t_ctx = int(time.time())
    with httpx.Client(base_url=base, timeout=30) as rec, httpx.Client(base_url=base, timeout=30) as fb:
        for uid in users.tolist():
            body = {"user_id": uid, "k": k, "context": {"time": t_ctx}}
            before = rec.post("/recommend", json=body).json()
            cand = [it["item_id"] for it in before["items"] if N[index[it["item_id"]]].nnz or N_in[index[it["item_id"]]].nnz]
            if not cand:
                failures.append(f"user {uid}: no answered item with itemCF neighbours")
                continue
            x = cand[0]
            xi = index[x]
            t_send = time.perf_counter()
            r = fb.post("/feedback", json={"user_id": uid, "events": [{"item_id": x, "type": "click", "ts": t_ctx}]})
            t_ack = time.perf_counter()
            if r.status_code != 200:
                failures.append(f"user {uid}: feedback {r.status_code} {r.text[:200]}")
                continue
            w_fb = r.headers.get("x-funnelrec-worker")
            old = _itemcf_scores(before)
            attempt = 0
            while attempt < 1000:
                attempt += 1
                resp = rec.post("/recommend", json=body)
                after = resp.json()
                t_got = time.perf_counter()
                new = _itemcf_scores(after)
                both = [s for s in new if s in old]
                want = {s: old[s] + float(N_in[index[s], xi]) for s in both}
                ok = x not in [it["item_id"] for it in after["items"]] and all(
                    abs(new[s] - want[s]) <= 1e-4 * max(1.0, abs(want[s])) for s in both)
                if ok:
                    break
                if t_got - t_ack > 5.0:
                    failures.append(f"user {uid}: not reflected 5 s after the ack")
                    break
            else:
                failures.append(f"user {uid}: not reflected after 1000 answers")
                continue
            if not ok:
                continue
            checked += any(float(N_in[index[s], xi]) > 0 for s in both)  # a changed score was verified
            workers["same" if resp.headers.get("x-funnelrec-worker") == w_fb else "other"] += 1
            fresh_ms.append((t_got - t_ack) * 1e3)
            feedback_ms.append((t_ack - t_send) * 1e3)
            total_ms.append((t_got - t_send) * 1e3)
            tries.append(attempt)
    return {"clicks": len(fresh_ms), "failures": failures[:10], "n_failures": len(failures),
            "freshness_ms": _pct(fresh_ms), "feedback_ms": _pct(feedback_ms), "click_to_reflected_ms": _pct(total_ms),
            "answers_until_reflected": {"max": int(max(tries)) if tries else None,
                                        "first_answer_share": round(float(np.mean(np.asarray(tries) == 1)), 4)
                                        if tries else None},
            "clicks_with_a_changed_itemcf_score_checked": int(checked),
            "reflecting_answer_worker_vs_feedback_worker": workers}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--config", default=str(ROOT / "bench" / "serving_ml100k.yaml"))
    p.add_argument("--clicks", type=int, default=250)
    p.add_argument("--k", type=int, default=50, help="answer size (more items: more itemCF scores compared)")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--redis", action="store_true", help="state in a local redis-server (started here)")
    p.add_argument("--eventlog-sync", default="FULL", choices=["FULL", "NORMAL"])
    p.add_argument("--workdir", default=None, help="keep the fitted funnel here and reuse it when present")
    args = p.parse_args()
    if args.clicks < 1:
        raise SystemExit("--clicks must be ≥ 1")

    from funnelrec.core.config import load_yaml
    from funnelrec.pipeline.funnel import Funnel

    spec = load_yaml(args.config)
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
        funnel = Funnel.load(artifact)
        if "itemcf" not in funnel.channels_:
            raise SystemExit(f"{args.config}: the funnel has no itemcf channel, whose triggers this bench checks")
        redis_proc = None
        port = _free_port()
        cmd = [sys.executable, "-m", "funnelrec.serving", "--artifact", str(artifact), "--port", str(port),
               "--workers", str(args.workers), "--eventlog-sync", args.eventlog_sync,
               "--state-dir", str(Path(tmp) / "state")]
        if args.redis:
            redis_proc, url = _start_redis(Path(tmp))
            cmd += ["--redis-url", url]
        log = open(Path(tmp) / "server.log", "w")  # noqa: SIM115  (closed with the temporary directory)
        proc = subprocess.Popen(cmd, env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.DEVNULL, stderr=log)
        try:
            try:
                _wait_healthy(proc, port)
            except SystemExit:
                print((Path(tmp) / "server.log").read_text()[-3000:], file=sys.stderr)
                raise
            base = f"http://127.0.0.1:{port}"
            measure(base, funnel, [f"warm-{i}" for i in range(5)] + user_ids[:5], 10, args.k, seed=1)  # warm up
            load_start = [round(x, 2) for x in os.getloadavg()]
            out = measure(base, funnel, user_ids, args.clicks, args.k)
        finally:
            proc.terminate()
            proc.wait(30)
            if redis_proc is not None:
                redis_proc.terminate()
                redis_proc.wait(10)
    print(json.dumps({
        "bench": "freshness", "config": os.path.relpath(args.config, ROOT),
        "machine": f"{platform.machine()} {os.cpu_count()} cpu", "load_avg_start": load_start,
        "load_avg_end": [round(x, 2) for x in os.getloadavg()],
        "state": "redis" if args.redis else "sqlite", "workers": args.workers, "eventlog_sync": args.eventlog_sync,
        "k": args.k, "funnel": info, **out,
        "target_p99_ms": 100, "meets_target": out["clicks"] > 0 and out["freshness_ms"]["p99"] < 100,
    }))


if __name__ == "__main__":
    main()
