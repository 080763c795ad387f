"""Fixtures of the serving tests: a real uvicorn server in a thread on a free loopback port,
services over the session's fitted funnel, and a real redis-server (skipped when missing)."""

from __future__ import annotations

import shutil
import socket
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


# redis_url: the session fixture of tests/conftest.py (one real redis-server for the suite)


@pytest.fixture(scope="session")
def serve():
    """serve(app) → context manager yielding the base URL of `app` served in a thread."""
    return serve_in_thread


@pytest.fixture(scope="session")
def port_factory():
    return free_port
