"""One worker process per core: `python -m funnelrec.serving --workers 2` on one port, state shared
through the SQLite files of --state-dir and /metrics summed over the workers (real processes,
real HTTP)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families


def _serve(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "funnelrec.serving", *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)  # own group: workers die with it


@contextmanager
def _two_workers(artifact: Path, state_dir: Path, port: int) -> Iterator[tuple[str, subprocess.Popen]]:
    """The 2-worker server, healthy; yields (base URL, launcher process); stopped with SIGTERM."""
    base = f"http://127.0.0.1:{port}"
    proc = _serve(["--artifact", str(artifact), "--state-dir", str(state_dir), "--port", str(port), "--workers", "2"])
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
        yield base, proc
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)


def _samples(text: str) -> dict[tuple[str, frozenset], float]:
    """/metrics read by prometheus_client's own parser: (sample name, labels) → value."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_workers_need_shared_state(funnel_artifacts):
    artifact, _ = funnel_artifacts
    proc = _serve(["--artifact", str(artifact), "--workers", "2"])
    assert proc.wait(60) == 2
    assert b"--state-dir or --redis-url" in proc.stderr.read()


def test_two_workers_serve_and_share_exposure_filters(funnel_artifacts, port_factory, tmp_path):
    artifact, _ = funnel_artifacts
    with _two_workers(artifact, tmp_path / "state", port_factory()) as (base, _):
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


def test_metrics_sum_over_both_workers_whichever_answers(funnel_artifacts, port_factory, tmp_path):
    artifact, _ = funnel_artifacts
    with _two_workers(artifact, tmp_path / "state", port_factory()) as (base, proc):
        first_version = httpx.get(f"{base}/health").json()["model_version"]
        # a new connection per request until both workers have answered (bounded)
        answered: dict[str, int] = {}
        n = 0
        while len(answered) < 2 and n < 200:
            r = httpx.post(f"{base}/recommend", json={"user_id": str(1 + n % 50), "k": 5})
            assert r.status_code == 200, r.text
            w = r.headers["x-funnelrec-worker"]
            answered[w] = answered.get(w, 0) + 1
            n += 1
        assert len(answered) == 2, f"all {n} requests went to one worker"
        ok = ("funnelrec_http_requests_total", frozenset({"method": "POST", "path": "/recommend", "status": "200"}.items()))
        for _ in range(20):  # each scrape on a new connection, answered by either worker
            r = httpx.get(f"{base}/metrics")
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
            s = _samples(r.text)
            assert s[ok] == n
            assert sum(v for (name, labels), v in s.items()
                       if name == "funnelrec_http_requests_total" and dict(labels)["path"] == "/recommend") == n
            assert s[("funnelrec_stage_latency_ms_count", frozenset({"stage": "total"}.items()))] == n
            assert s[("funnelrec_stage_latency_ms_bucket", frozenset({"stage": "total", "le": "+Inf"}.items()))] == n
            # a scrape is counted when it ends and /metrics is not admission-limited: nothing in flight
            assert s[("funnelrec_http_in_flight", frozenset())] == 0
            # both workers loaded the same artifact: one version is served
            assert [dict(labels)["version"] for (name, labels), v in s.items()
                    if name == "funnelrec_model_info" and v == 1] == [first_version]
        # the workers' metric files: in the directory the launcher gave them, one set per worker
        environ = Path(f"/proc/{next(iter(answered))}/environ").read_bytes().split(b"\0")
        metrics_dir = Path(next(v for k, _, v in (e.partition(b"=") for e in environ)
                                if k == b"PROMETHEUS_MULTIPROC_DIR").decode())
        assert {f"counter_{w}.db" for w in answered} <= {f.name for f in metrics_dir.iterdir()}
    # the launcher removes the directory once its workers have stopped
    assert proc.returncode is not None and not metrics_dir.exists()
