"""Two `python -m funnelrec.serving` replicas (real uvicorn processes, each with its own state dir:
two hosts as far as local files go) sharing one real redis-server, behind a real nginx rendered
by serving/deploy.py (non-root, a temp prefix, loopback ports). What a user of the deployment
relies on: feedback taken by one replica is honoured by the other (exposure filter, real-time
history, the request's experiment assignment, the idempotency of a repeated event), and a
replica killed under load costs no client a failed request — nginx retries on the other, and no
acknowledged feedback event is lost from or doubled in the stream the learner reads."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import httpx
import pytest

from funnelrec.serving.deploy import NginxLayout, render_nginx, write_nginx

NGINX = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)
REDIS = shutil.which("redis-server")
# every user in one experiment of the recall layer: each request has an assignment to remember
EXPERIMENTS = """n_buckets: 1000
layers:
  - {name: recall, owns: ["recall."]}
experiments:
  - name: hot_quota
    layer: recall
    buckets: [0, 1000]
    variants:
      - {name: control}
      - {name: hot_80, params: {recall.merge.quotas.hot: 80}}
"""
STREAM = "funnelrec:events"

pytestmark = pytest.mark.skipif(NGINX is None or REDIS is None,
                                reason="needs nginx and redis-server (apt-get install nginx redis-server)")


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_run(n: int) -> int:
    """A first port p with p..p+n-1 free (the layout's replicas sit on consecutive ports)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        start = s.getsockname()[1]
    for p in range(start, start + 2000):
        if p + n <= 65535 and all(_free(p + i) for i in range(n)):
            return p
    raise RuntimeError("no free port run")


def _wait(url: str, proc: subprocess.Popen | None, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            err = proc.stderr.read().decode()[-2000:] if proc.stderr else ""
            raise AssertionError(f"{what} exited ({proc.returncode}): {err}")
        try:
            r = httpx.get(url, timeout=2)
            if r.status_code == 200 and r.json().get("ready", True):
                return
        except (httpx.TransportError, ValueError):
            pass
        assert time.monotonic() < deadline, f"{what} did not become ready"
        time.sleep(0.2)


def _replica(artifact: Path, state: Path, port: int, redis_url: str, experiments: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "funnelrec.serving", "--artifact", str(artifact), "--state-dir", str(state),
         "--redis-url", redis_url, "--port", str(port), "--experiments", str(experiments)],
        env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        start_new_session=True)


def _stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)


@pytest.fixture(scope="module")
def deployment(funnel_artifacts, tmp_path_factory):
    """redis-server + 2 replicas + nginx, all started here and stopped at the end; yields a dict
    with the URLs, the replica processes and a Redis client."""
    import redis

    artifact, _ = funnel_artifacts
    root = tmp_path_factory.mktemp("replicas")
    rport, base, lport = _free_run(1), _free_run(2), None
    procs: list[subprocess.Popen] = []
    redis_proc = subprocess.Popen([REDIS, "--port", str(rport), "--bind", "127.0.0.1", "--save", "",
                                   "--appendonly", "no", "--dir", str(root)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{rport}/0"
    client = redis.Redis.from_url(url)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                assert redis_proc.poll() is None and time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)
        experiments = root / "experiments.yaml"
        experiments.write_text(EXPERIMENTS)
        replicas = [_replica(artifact, root / f"state-{i}", base + i, url, experiments) for i in range(2)]
        procs += replicas
        lport = _free_run(1)
        layout = NginxLayout(replicas=2, base_port=base, listen=f"127.0.0.1:{lport}", fail_timeout_s=1.0)
        prefix = root / "nginx"
        conf = write_nginx(render_nginx(layout, prefix=prefix, conf=prefix / "nginx.conf"), prefix / "nginx.conf")
        nginx = subprocess.Popen([NGINX, "-p", str(prefix), "-e", "logs/error.log", "-c", str(conf),
                                  "-g", "daemon off;"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                 start_new_session=True)
        procs.append(nginx)
        direct = [f"http://127.0.0.1:{base + i}" for i in range(2)]
        for i, d in enumerate(direct):
            _wait(f"{d}/health", replicas[i], f"replica {i}")
        _wait(f"http://127.0.0.1:{lport}/health", nginx, "nginx")
        yield {"nginx": f"http://127.0.0.1:{lport}", "direct": direct, "replicas": replicas, "redis": client,
               "prefix": prefix, "artifact": artifact, "root": root, "redis_url": url, "base": base}
    finally:
        for p in procs:
            _stop(p, signal.SIGQUIT if p.args[0] == NGINX else signal.SIGTERM)
        client.close()
        redis_proc.terminate()
        redis_proc.wait(10)


def _stream(client) -> list[dict[str, str]]:
    return [{k.decode(): v.decode() for k, v in f.items()} for _, f in client.xrange(STREAM, "-", "+")]


def test_rendered_example_in_deploy_is_current():
    """deploy/nginx.conf is the template rendered for 2 replicas: a template change re-renders it."""
    shipped = Path(__file__).resolve().parents[2] / "deploy" / "nginx.conf"
    assert shipped.read_text() == render_nginx(NginxLayout())


def test_cli_renders_a_config_nginx_accepts_and_refuses_bad_settings(tmp_path):
    from typer.testing import CliRunner

    from funnelrec.cli import app

    out = tmp_path / "ng" / "nginx.conf"
    r = CliRunner().invoke(app, ["deploy", "nginx", "--replicas", "3", "--base-port", "18001", "--out", str(out)])
    assert r.exit_code == 0, r.output
    text = out.read_text()
    assert [f"server 127.0.0.1:{p} " in text for p in (18001, 18002, 18003)] == [True] * 3
    assert "server 127.0.0.1:18004" not in text and "{{" not in text
    check = subprocess.run([NGINX, "-t", "-p", str(out.parent), "-e", "logs/error.log", "-c", str(out)],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    bad = subprocess.run([sys.executable, "-m", "funnelrec.cli", "deploy", "nginx", "--replicas", "0"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.strip() == "error: --replicas must be in [1, 1024], got 0"


def test_layout_settings_reach_the_config_and_bad_layouts_are_refused(tmp_path):
    """What the rendered file says for settings the shipped example does not use (sub-second
    timeouts, three replicas), checked by nginx itself; and each layout nginx could not run."""
    from funnelrec.core.errors import ConfigError

    layout = NginxLayout(replicas=3, base_port=18001, listen="127.0.0.1:18000", read_timeout_s=0.5,
                         retry_timeout_s=2.25, fail_timeout_s=3.0, worker_processes=2, access_log=False)
    out = write_nginx(render_nginx(layout), tmp_path / "ng" / "nginx.conf")
    lines = {line.strip() for line in out.read_text().splitlines()}
    assert {"proxy_read_timeout 500ms;", "proxy_next_upstream_timeout 2250ms;", "worker_processes 2;",
            "access_log off;", "proxy_next_upstream_tries 4;",  # every replica once, plus one
            "listen 127.0.0.1:18000;"} <= lines
    assert [f"server 127.0.0.1:{p} max_fails=1 fail_timeout=3s;" in lines for p in (18001, 18002, 18003)] == [True] * 3
    check = subprocess.run([NGINX, "-t", "-p", str(out.parent), "-e", "logs/error.log", "-c", str(out)],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    assert "proxy_next_upstream_tries 3;" in {x.strip() for x in render_nginx(NginxLayout(replicas=1)).splitlines()}
    for bad, why in ((dict(listen="8001"), "also a replica's port"), (dict(listen="127.0.0.1:8002"), "also a replica's port"),
                     (dict(base_port=65535), "must lie in"), (dict(listen="127.0.0.1:http"), "--listen"),
                     (dict(worker_processes=0), "worker_processes"), (dict(read_timeout_s=0), "read_timeout_s"),
                     (dict(retry_timeout_s=-1), "retry_timeout_s"), (dict(fail_timeout_s=0), "fail_timeout_s")):
        with pytest.raises(ConfigError, match=why):
            NginxLayout(**{"replicas": 2, "base_port": 8001, **bad})
    NginxLayout(replicas=2, base_port=8001, listen="10.0.0.5:8001")  # another host's port 8001 is not a replica's


def test_a_fractional_fail_timeout_is_refused_before_nginx_would_refuse_the_file(tmp_path):
    """nginx's upstream `server … fail_timeout=` takes whole seconds (1500ms is an invalid
    parameter): the layout refuses 1.5 in one line; 2.0 renders as 2s and nginx accepts it."""
    from funnelrec.core.errors import ConfigError

    with pytest.raises(ConfigError, match=r"fail_timeout_s must be a whole number of seconds.*1\.5"):
        NginxLayout(replicas=2, base_port=18001, listen="127.0.0.1:18000", fail_timeout_s=1.5)
    layout = NginxLayout(replicas=2, base_port=18001, listen="127.0.0.1:18000", fail_timeout_s=2.0)
    out = write_nginx(render_nginx(layout), tmp_path / "ng" / "nginx.conf")
    assert "server 127.0.0.1:18001 max_fails=1 fail_timeout=2s;" in out.read_text()
    check = subprocess.run([NGINX, "-t", "-p", str(out.parent), "-e", "logs/error.log", "-c", str(out)],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stderr


def test_no_replica_available_is_a_503_with_retry_after_not_a_502(tmp_path):
    """Both replicas down (nothing listens on their ports): nginx has no upstream to answer, and
    the client gets what one overloaded replica says — 503, Retry-After: 1, a JSON detail —
    instead of nginx's "502 Bad Gateway" (measured under overload: docs/BENCHMARKS.md session 10)."""
    lport = _free_run(3)  # nginx, then the two (dead) replicas' ports
    base = lport + 1
    prefix = tmp_path / "ng"
    conf = write_nginx(render_nginx(NginxLayout(replicas=2, base_port=base, listen=f"127.0.0.1:{lport}"),
                                    prefix=prefix, conf=prefix / "nginx.conf"), prefix / "nginx.conf")
    nginx = subprocess.Popen([NGINX, "-p", str(prefix), "-e", "logs/error.log", "-c", str(conf), "-g", "daemon off;"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{lport}"
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.get(f"{url}/health", timeout=5)
                break
            except httpx.TransportError:
                assert nginx.poll() is None and time.monotonic() < deadline, "nginx did not start"
                time.sleep(0.1)
        for r in (httpx.get(f"{url}/health", timeout=10), httpx.post(f"{url}/recommend", json={"user_id": "1"}, timeout=10),
                  httpx.post(f"{url}/feedback", json={"events": []}, timeout=10)):
            assert r.status_code == 503, (r.status_code, r.text)
            assert r.headers.get("retry-after") == "1"
            assert "no replica available" in r.json()["detail"]
    finally:
        _stop(nginx, signal.SIGQUIT)


def test_feedback_through_one_replica_is_honoured_by_the_other(deployment):
    a, b = deployment["direct"]
    now = int(time.time())
    first = httpx.post(f"{a}/recommend", json={"user_id": "196", "k": 10}).json()
    shown = [it["item_id"] for it in first["items"]]
    r = httpx.post(f"{b}/feedback", json={"request_id": first["request_id"], "user_id": "196",
                                          "events": [{"item_id": i, "type": "impression", "ts": now} for i in shown]})
    assert r.status_code == 200 and r.json()["impressions"] == 10
    again = httpx.post(f"{a}/recommend", json={"user_id": "196", "k": 10}).json()
    assert len(again["items"]) == 10 and not set(shown) & {it["item_id"] for it in again["items"]}
    # the feedback was logged with the assignment replica A gave that request (B never saw it)
    assert set(first["experiments"]) == {"recall"}
    rows = [f for f in _stream(deployment["redis"]) if f["request_id"] == first["request_id"]]
    assert len(rows) == 10
    import json

    assert all(json.loads(f["experiments"]) == first["experiments"] for f in rows)
    # real-time history: an unknown user's click through B makes A answer personalised
    user = f"new-{uuid.uuid4().hex[:8]}"
    cold = httpx.post(f"{a}/recommend", json={"user_id": user, "k": 5}).json()
    assert cold["cold_start"] is True
    httpx.post(f"{b}/feedback", json={"user_id": user, "events": [{"item_id": shown[0], "type": "click", "ts": now}]})
    warm = httpx.post(f"{a}/recommend", json={"user_id": user, "k": 5}).json()
    assert warm["cold_start"] is False


def test_a_repeat_is_applied_once_whichever_replica_gets_it(deployment):
    a, b = deployment["direct"]
    client = deployment["redis"]
    eid = uuid.uuid4().hex
    body = {"user_id": "7", "events": [{"item_id": "50", "type": "click", "ts": int(time.time()), "event_id": eid}]}
    assert httpx.post(f"{a}/feedback", json=body).json() == {"logged": 1, "impressions": 0, "duplicates": 0}
    assert httpx.post(f"{b}/feedback", json=body).json() == {"logged": 0, "impressions": 0, "duplicates": 1}
    assert sum(f["event_id"] == eid for f in _stream(client)) == 1
    # no event ids, one Idempotency-Key: the retried call is a repeat on the other replica too
    key = uuid.uuid4().hex
    body = {"user_id": "7", "events": [{"item_id": "51", "type": "click"}, {"item_id": "52", "type": "like"}]}
    assert httpx.post(f"{a}/feedback", json=body, headers={"Idempotency-Key": key}).json()["logged"] == 2
    assert httpx.post(f"{b}/feedback", json=body, headers={"Idempotency-Key": key}).json()["duplicates"] == 2
    assert sorted(f["event_id"] for f in _stream(client) if f["event_id"].startswith(key)) == [f"{key}:0", f"{key}:1"]
    # a different key is a different call
    assert httpx.post(f"{b}/feedback", json=body, headers={"Idempotency-Key": key + "x"}).json()["logged"] == 2
    # a client's own retry through nginx gets a new key from nginx, but a request id + ts still
    # name the events: the repeat is recognised
    first = httpx.post(f"{deployment['nginx']}/recommend", json={"user_id": "7", "k": 3}).json()
    body = {"request_id": first["request_id"], "user_id": "7",
            "events": [{"item_id": it["item_id"], "type": "impression", "ts": int(time.time())} for it in first["items"]]}
    assert httpx.post(f"{deployment['nginx']}/feedback", json=body).json()["logged"] == 3
    assert httpx.post(f"{deployment['nginx']}/feedback", json=body).json() == {"logged": 0, "impressions": 0,
                                                                              "duplicates": 3}


def test_killing_a_replica_under_load_fails_no_request(deployment):
    """Four keep-alive clients through nginx (recommend, then feedback of what was shown, with
    event ids); replica 1 is SIGKILLed after a second and a half. Every request must answer 200,
    and every acknowledged event must be in the stream exactly once."""
    base = deployment["nginx"]
    client = deployment["redis"]
    stop = threading.Event()
    failures: list[str] = []
    acked: list[str] = []
    served_by: Counter = Counter()
    after_kill = [0]
    killed = threading.Event()
    lock = threading.Lock()

    def load(worker: int) -> None:
        with httpx.Client(base_url=base, timeout=15) as http:
            n = 0
            while not stop.is_set():
                n += 1
                user = str(1 + (worker * 97 + n) % 900)
                try:
                    r = http.post("/recommend", json={"user_id": user, "k": 5})
                    if r.status_code != 200:
                        failures.append(f"recommend {r.status_code}: {r.text[:200]}")
                        continue
                    body = r.json()
                    served_by[r.headers.get("x-funnelrec-worker")] += 1
                    ids = [uuid.uuid4().hex for _ in body["items"]]
                    f = http.post("/feedback", json={"request_id": body["request_id"], "user_id": user, "events": [
                        {"item_id": it["item_id"], "type": "impression", "event_id": e}
                        for it, e in zip(body["items"], ids)]})
                    if f.status_code != 200:
                        failures.append(f"feedback {f.status_code}: {f.text[:200]}")
                        continue
                    with lock:
                        acked.extend(ids)
                        if killed.is_set():
                            after_kill[0] += 1
                except httpx.HTTPError as e:
                    failures.append(f"{type(e).__name__}: {e}")

    threads = [threading.Thread(target=load, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    time.sleep(1.5)
    victim = deployment["replicas"][1]
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait(10)
    killed.set()
    time.sleep(2.5)
    stop.set()
    for t in threads:
        t.join(30)
    assert failures == []
    assert len(served_by) == 2, f"both replicas should have served before the kill: {served_by}"
    assert after_kill[0] > 10, "requests kept being answered after the kill"
    in_stream = Counter(f["event_id"] for f in _stream(client))
    assert all(in_stream[e] == 1 for e in acked), "an acknowledged event is missing from or doubled in the stream"
    # nginx's access log names the retries: some request was tried on the dead replica first
    log = (deployment["prefix"] / "logs" / "access.log")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and ", " not in log.read_text():
        time.sleep(0.2)  # the log is buffered (flush=1s)
    dead = f"127.0.0.1:{deployment['base'] + 1}"
    assert any(f'ua="{dead}, ' in line for line in log.read_text().splitlines()), "no retried request in the log"
