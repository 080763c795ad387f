"""One worker process per core: `python -m funnelrec.serving --workers 2` on one port, state shared
through the SQLite files of --state-dir (real processes, real HTTP)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx


def _serve(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "funnelrec.serving", *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)  # own group: workers die with it


def test_workers_need_shared_state(funnel_artifacts):
    artifact, _ = funnel_artifacts
    proc = _serve(["--artifact", str(artifact), "--workers", "2"])
    assert proc.wait(60) == 2
    assert b"--state-dir or --redis-url" in proc.stderr.read()


def test_two_workers_serve_and_share_exposure_filters(funnel_artifacts, port_factory, tmp_path):
    artifact, _ = funnel_artifacts
    port = port_factory()
    base = f"http://127.0.0.1:{port}"
    proc = _serve(["--artifact", str(artifact), "--state-dir", str(tmp_path / "state"), "--port", str(port),
                   "--workers", "2"])
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server did not become healthy"
            time.sleep(0.2)
        now = int(time.time())
        first = httpx.post(f"{base}/recommend", json={"user_id": "196", "k": 5}).json()
        shown = [it["item_id"] for it in first["items"]]
        r = httpx.post(f"{base}/feedback", json={"request_id": first["request_id"], "user_id": "196",
                                                  "events": [{"item_id": i, "type": "impression", "ts": now} for i in shown]})
        assert r.status_code == 200 and r.json()["impressions"] == 5
        # a new connection per request: the kernel spreads them over both workers; whichever
        # answers must filter what the other acknowledged
        for _ in range(12):
            body = httpx.post(f"{base}/recommend", json={"user_id": "196", "k": 5, "debug": True}).json()
            assert not set(shown) & {it["item_id"] for it in body["items"]}
            assert set(shown) <= set(body["debug"]["filtered"])
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
