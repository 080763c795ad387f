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


def _serve(args: list[str], env: dict | None = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "funnelrec.serving", *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)  # own group: workers die with it


@contextmanager
def _two_workers(artifact: Path, state_dir: Path, port: int, args: tuple[str, ...] = (),
                 env: dict | None = None) -> Iterator[tuple[str, subprocess.Popen]]:
    """The 2-worker server, healthy; yields (base URL, launcher process); stopped with SIGTERM."""
    base = f"http://127.0.0.1:{port}"
    proc = _serve(["--artifact", str(artifact), "--state-dir", str(state_dir), "--port", str(port), "--workers", "2",
                   *args], env)
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
    except BaseException as e:
        # a failure shows what the server said (uvicorn logs a worker it killed and restarted)
        _stop(proc)
        if proc.stderr is not None and not proc.stderr.closed:
            e.add_note("server stderr (tail):\n" + proc.stderr.read().decode(errors="replace")[-3000:])
        raise
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the server's process group, SIGKILL after 30 s; a group already gone is stopped."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
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
        took = r.headers["x-funnelrec-worker"]
        # a new connection per request: the kernel spreads them over both workers; whichever
        # answers must filter what the other acknowledged — until the other one has answered
        # (bounded), so the filter is seen across processes, not only where it was written
        answered: set[str] = set()
        n = 0
        while (n < 12 or answered <= {took}) and n < 200:
            r = httpx.post(f"{base}/recommend", json={"user_id": "196", "k": 5, "debug": True})
            body = r.json()
            answered.add(r.headers["x-funnelrec-worker"])
            assert not set(shown) & {it["item_id"] for it in body["items"]}
            assert set(shown) <= set(body["debug"]["filtered"])
            n += 1
        assert answered - {took}, f"all {n} requests went to the worker that took the feedback"


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


def test_the_admin_token_guards_every_worker_and_never_shows_in_ps(funnel_artifacts, port_factory, tmp_path):
    artifact, other = funnel_artifacts
    token_file = tmp_path / "token"
    token_file.write_text("t0ken-from-a-file\n")
    with _two_workers(artifact, tmp_path / "state", port_factory(), ("--admin-token-file", str(token_file))) as (
            base, proc):
        answered: dict[str, list[int]] = {}
        for _ in range(60):  # a new connection per request until both workers have refused
            r = httpx.post(f"{base}/admin/reload", json={"artifact": str(other)})
            answered.setdefault(r.headers["x-funnelrec-worker"], []).append(r.status_code)
            if len(answered) == 2:
                break
        assert len(answered) == 2 and all(set(codes) == {403} for codes in answered.values()), answered
        for w in answered:  # nor on any command line (ps shows those to every user)
            assert b"t0ken" not in Path(f"/proc/{w}/cmdline").read_bytes()
        assert b"t0ken" not in Path(f"/proc/{proc.pid}/cmdline").read_bytes()
        debug = httpx.post(f"{base}/recommend", json={"user_id": "196", "k": 3, "debug": True})
        assert debug.status_code == 403
        ok = httpx.post(f"{base}/recommend", json={"user_id": "196", "k": 3, "debug": True},
                        headers={"X-Admin-Token": "t0ken-from-a-file"})
        assert ok.status_code == 200 and "debug" in ok.json()


def test_a_public_bind_without_a_token_and_a_non_artifact_are_one_line_errors(funnel_artifacts, tmp_path):
    artifact, _ = funnel_artifacts
    env = {k: v for k, v in os.environ.items() if k != "FUNNELREC_ADMIN_TOKEN"}
    p = subprocess.run([sys.executable, "-m", "funnelrec.serving", "--artifact", str(artifact), "--host", "0.0.0.0"],
                       env=env, capture_output=True, timeout=120)
    err = p.stderr.decode().strip()
    assert p.returncode == 2 and len(err.splitlines()) == 1 and "FUNNELREC_ADMIN_TOKEN" in err, err
    (tmp_path / "not-an-artifact").mkdir()
    p = subprocess.run([sys.executable, "-m", "funnelrec.cli", "serve", "--artifact", str(tmp_path / "not-an-artifact")],
                       env=env, capture_output=True, timeout=120)
    err = p.stderr.decode().strip()
    assert p.returncode == 2 and len(err.splitlines()) == 1 and err.startswith("error: "), err
    (tmp_path / "empty").write_text("")
    p = subprocess.run([sys.executable, "-m", "funnelrec.serving", "--artifact", str(artifact),
                        "--admin-token-file", str(tmp_path / "empty")], env=env, capture_output=True, timeout=120)
    assert p.returncode == 2 and b"the file is empty" in p.stderr


def _versions_by_worker(base: str, want: int = 2, tries: int = 200) -> dict[int, str]:
    """/health over a new connection each time until `want` distinct workers have answered."""
    seen: dict[int, str] = {}
    for _ in range(tries):
        h = httpx.get(f"{base}/health", timeout=5).json()
        seen[h["pid"]] = h["model_version"]
        if len(seen) >= want:
            break
    return seen


def test_a_reload_reaches_every_worker_and_a_restart_is_not_overridden(funnel_artifacts, port_factory, tmp_path):
    artifact, other = funnel_artifacts
    state = tmp_path / "state"
    with _two_workers(artifact, state, port_factory()) as (base, _):
        before = _versions_by_worker(base)
        assert len(before) == 2 and len(set(before.values())) == 1, before
        r = httpx.post(f"{base}/admin/reload", json={"artifact": str(other)}, timeout=120)
        assert r.status_code == 200, r.text
        new = r.json()["model_version"]
        assert new != next(iter(before.values()))
        deadline = time.monotonic() + 60  # the others poll the record every second
        while True:
            now = _versions_by_worker(base)
            if len(now) == 2 and set(now.values()) == {new}:
                break
            assert time.monotonic() < deadline, f"after a reload to {new} the workers serve {now}"
            time.sleep(0.5)
        assert set(now) == set(before)  # the same two workers, not restarted ones
        # a worker killed now is restarted by uvicorn and catches up on the reload it never saw:
        # it applies the records written since the run (not the new worker) started
        os.kill(next(iter(before)), signal.SIGKILL)
        deadline = time.monotonic() + 90
        while True:
            now = _versions_by_worker(base)
            if len(now) == 2 and set(now) - set(before) and set(now.values()) == {new}:
                break
            assert time.monotonic() < deadline, f"after a worker restart the workers serve {now} (want {new})"
            time.sleep(0.5)
    # a new run on the same state directory serves what it was told to, not the last run's reload
    with _two_workers(artifact, state, port_factory()) as (base, _):
        time.sleep(2.5)  # two poll intervals: an old record would have been applied by now
        again = _versions_by_worker(base)
        assert len(again) == 2 and set(again.values()) == set(before.values()), again


def test_a_negative_stream_retention_is_a_one_line_error(funnel_artifacts):
    artifact, _ = funnel_artifacts
    p = subprocess.run([sys.executable, "-m", "funnelrec.serving", "--artifact", str(artifact),
                        "--stream-retention-s", "-5"], capture_output=True, timeout=120)
    err = p.stderr.decode().strip()
    assert p.returncode == 2 and err == "error: --stream-retention-s must be ≥ 0 seconds (0 = never trimmed), got -5", err
    p = subprocess.run([sys.executable, "-m", "funnelrec.serving", "--artifact", str(artifact),
                        "--log-retention-s", "-1"], capture_output=True, timeout=120)
    err = p.stderr.decode().strip()
    assert p.returncode == 2 and err == "error: --log-retention-s must be ≥ 0 seconds (0 = keep every event), got -1", err


def test_the_serve_settings_reach_every_workers_service_config():
    """`--max-in-flight`, `--max-batch`, `--eventlog-sync`, `--watch`, `--stream-retention-s`: what
    each worker (and the one-process server) builds its ServiceConfig from ($FUNNELREC_SERVE_ARGS
    is these settings as JSON, plus the launcher's start)."""
    import json
    from dataclasses import asdict

    from funnelrec.serving.__main__ import ServeSettings, _service_config

    s = ServeSettings(artifact="a", max_in_flight=3, max_batch=1, eventlog_sync="NORMAL", watch="served",
                      stream_retention_s=60, log_retention_s=3600)
    cfg = _service_config(json.loads(json.dumps({**asdict(s), "started_ns": 1234})))
    assert (cfg.max_in_flight, cfg.max_batch, cfg.eventlog_synchronous, cfg.watch_dir, cfg.started_ns,
            cfg.redis_stream_retention_s, cfg.eventlog_retention_s) == (3, 1, "NORMAL", "served", 1234, 60, 3600)
    default = _service_config(asdict(ServeSettings(artifact="a", stream_retention_s=0)))
    assert (default.max_in_flight, default.max_batch, default.eventlog_synchronous, default.watch_dir,
            default.started_ns, default.redis_stream_retention_s, default.eventlog_retention_s) == (
        64, 8, "FULL", None, None, None, None)  # 0 = never trimmed / every event kept
