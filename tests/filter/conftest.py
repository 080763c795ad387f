"""Fixtures of the exposure-store tests: a real redis-server on a free loopback port (no
persistence, temp dir), and a `store_factory` parametrized over every backend."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import uuid

import pytest

from funnelrec.filter import MemoryExposureStore, RedisExposureStore, SQLiteExposureStore

REDIS_SERVER = shutil.which("redis-server")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


BACKENDS = ["memory", "sqlite", pytest.param("redis", marks=pytest.mark.redis)]


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    return request.param


@pytest.fixture
def store_factory(backend, tmp_path, request):
    """store_factory(config) -> a fresh, empty store of the parametrized backend; closed after.
    Calling it again with the same config reopens the same data (sqlite file, redis prefix)."""
    opened = []
    prefix = f"test:{uuid.uuid4().hex}:"

    def make(config=None):
        if backend == "memory":
            store = MemoryExposureStore(config)
        elif backend == "sqlite":
            store = SQLiteExposureStore(tmp_path / "exposure.db", config)
        else:
            url = request.getfixturevalue("redis_url")
            store = RedisExposureStore(url, config=config, prefix=prefix)
        opened.append(store)
        return store

    yield make
    if backend == "redis" and opened:
        import redis

        client = redis.Redis.from_url(request.getfixturevalue("redis_url"))
        keys = list(client.scan_iter(match=prefix + "*"))
        if keys:
            client.delete(*keys)
        client.close()
    for store in opened:
        store.close()
