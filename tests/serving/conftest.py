"""Fixtures of the serving tests: a real uvicorn server in a thread on a free loopback port,
services over the session's fitted funnel, and a real redis-server (skipped when missing)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from contextlib import contextmanager

import pytest
import uvicorn

REDIS_SERVER = shutil.which("redis-server")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve_in_thread(app):
    """Run `app` under uvicorn in a daemon thread; yields the base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture(scope="session")
def funnel_artifacts(fitted_funnel, tmp_path_factory):
    """The fitted funnel saved twice (two versions to reload between)."""
    d = tmp_path_factory.mktemp("artifacts")
    a, b = d / "funnel-a.pkl", d / "funnel-b.pkl"
    fitted_funnel.save(a)
    fitted_funnel.save(b)
    return a, b


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not on PATH (apt-get install redis-server)")
    import redis

    workdir = tmp_path_factory.mktemp("redis-serving")
    port = free_port()
    proc = subprocess.Popen(
        [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(workdir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"redis-server did not start on port {port}")
            time.sleep(0.05)
    client.close()
    yield url
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="session")
def serve():
    """serve(app) → context manager yielding the base URL of `app` served in a thread."""
    return serve_in_thread


@pytest.fixture(scope="session")
def port_factory():
    return free_port
