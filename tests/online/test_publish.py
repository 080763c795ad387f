"""Versioned publishing into a served directory and a server that picks new versions up by
itself (#10 item 4): hard links for unchanged parts, atomic CURRENT, /health shows the version."""

from __future__ import annotations

import json
import os
import time
import urllib.request

import numpy as np
import pytest

from funnelrec.core.errors import ArtifactError
from funnelrec.online.publish import Publisher
from funnelrec.online.served import STATUS, changed_parts, current_version, version_dir
from funnelrec.pipeline.builder import FunnelBuilder
from funnelrec.pipeline.config import FunnelConfig
from funnelrec.pipeline.funnel import Funnel
from funnelrec.pipeline.service import RecommenderService, ServiceConfig
from funnelrec.serving.app import create_app
from tiny_world import make_world

CONFIG = {"recall": {"channels": [{"name": "itemcf", "n": 20, "params": {"k": 10}}, {"name": "hot", "n": 10}],
                     "merge": {"total": 25}}}


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    data = make_world(seed=2)
    funnel = FunnelBuilder(FunnelConfig.from_dict(CONFIG)).fit(data.dataset, data.interactions)
    return funnel.save(tmp_path_factory.mktemp("pub") / "artifact"), data


def _hot_with(funnel: Funnel, item: int, n: int):
    ch = funnel.channels_["hot"]
    return ch.update(np.arange(n) % funnel.dataset_.n_users, np.full(n, item), np.full(n, ch.now_))


def _files(d):
    return {str(p.relative_to(d)): p.stat().st_ino for p in d.rglob("*") if p.is_file()}


def test_publish_links_unchanged_parts_and_moves_current(artifact, tmp_path):
    art, _ = artifact
    (tmp_path / "served" / "versions" / ".tmp-v000009-1").mkdir(parents=True)  # a crashed publish
    pub = Publisher(tmp_path / "served")
    assert not list((tmp_path / "served" / "versions").glob(".tmp-*"))
    assert pub.init(art) == "v000001" and pub.init(art) == "v000001"  # init only once
    base = Funnel.load(version_dir(tmp_path / "served", "v000001"))
    name = pub.publish("v000001", {"channels/hot": _hot_with(base, 5, 30)})
    assert name == "v000002" and current_version(tmp_path / "served") == "v000002"
    a, b = version_dir(tmp_path / "served", "v000001"), version_dir(tmp_path / "served", name)
    fa, fb = _files(a), _files(b)
    shared = [f for f in fb if f.startswith("channels/itemcf/")]
    assert shared and all(fa[f] == fb[f] for f in shared)  # the same inode: a hard link, no copy
    assert not any(f.startswith("channels/hot/") and f in fa and fa[f] == fb[f] for f in fb)
    assert changed_parts(a, b) == ["channels/hot"]
    new = Funnel.load(b)  # a complete, verified artifact
    assert new.channels_["hot"].items_[0] == 5
    old = Funnel.load(a)  # the old version is intact
    assert old.channels_["hot"].popularity_[5] + 30 == new.channels_["hot"].popularity_[5]
    with pytest.raises(ArtifactError, match="v000042"):
        pub.publish("v000042", {"channels/hot": new.channels_["hot"]})


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def test_service_with_watch_dir_reloads_a_published_version_by_itself(artifact, tmp_path, serve):
    art, data = artifact
    served = tmp_path / "served"
    pub = Publisher(served)
    pub.init(art)
    svc = RecommenderService.from_artifact(version_dir(served, "v000001"), config=ServiceConfig(
        watch_dir=str(served), watch_interval_s=0.05))
    try:
        with serve(create_app(svc)) as url:
            h = _get(f"{url}/health")
            assert h["served"]["version"] == "v000001"
            base = svc.current.funnel
            item = int(np.argsort(base.channels_["hot"].popularity_)[0])  # the least popular item
            name = pub.publish("v000001", {"channels/hot": _hot_with(base, item, 200)})
            (served / STATUS).write_text(json.dumps({"version": name, "offset": "41", "events_seen": 41,
                                                     "lag_events": 3, "lag_s": 0.5,
                                                     "stream_gap": {"after": "9-0", "trimmed_up_to": "12-0"}}))
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and svc.current.funnel.channels_["hot"].items_[0] != item:
                time.sleep(0.02)
            assert svc.current.funnel.channels_["hot"].items_[0] == item  # no call told it to reload
            assert svc.current.version.startswith("v000002") and svc.current.version.endswith("[channels/hot]")
            assert svc.current.funnel.channels_["itemcf"] is base.channels_["itemcf"]  # only the changed part
            h = _get(f"{url}/health")
            assert h["served"]["version"] == "v000002"
            assert h["served"]["learner"]["offset"] == "41" and h["served"]["learner"]["lag_events"] == 3
            assert h["served"]["learner"]["stream_gap"]["trimmed_up_to"] == "12-0"  # events it lost, on /health
            uid = str(data.dataset.users["user_id"][0])
            rec = _get(f"{url}/recommend?user_id={uid}&k=5")
            assert rec["model_version"].startswith("v000002")
    finally:
        svc.close()


def test_watch_keeps_serving_through_a_broken_version(artifact, tmp_path):
    art, _ = artifact
    served = tmp_path / "served"
    pub = Publisher(served)
    pub.init(art)
    svc = RecommenderService.from_artifact(version_dir(served, "v000001"), config=ServiceConfig(
        watch_dir=str(served), watch_interval_s=0.05))
    try:
        (served / "versions" / "v000002").mkdir()
        tmp = served / "CURRENT.tmp"  # replaced atomically, as the publisher does (a plain write
        tmp.write_text("v000002\n")   # can be read half-done: an empty name, another error)
        os.replace(tmp, served / "CURRENT")  # names a version with no manifest
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not svc.health()["served"]["error"]:
            time.sleep(0.02)
        h = svc.health()["served"]
        assert "manifest" in h["error"] and h["version"] == "v000001"
        assert svc.current.version.startswith("v000001")
    finally:
        svc.close()
    assert os.path.isdir(version_dir(served, "v000001"))


def test_every_worker_of_a_multi_worker_server_picks_up_the_new_version(artifact, tmp_path, port_factory):
    """`python -m funnelrec.serving --workers 2 --watch DIR`: each worker's own poll thread reloads;
    /health over fresh connections (the kernel spreads them over both workers) all show it."""
    import signal
    import subprocess
    import sys

    import httpx

    art, _ = artifact
    served = tmp_path / "served"
    pub = Publisher(served)
    pub.init(art)
    port = port_factory()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "FUNNELREC_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "funnelrec.serving", "--artifact", str(art), "--watch", str(served),
                             "--state-dir", str(tmp_path / "state"), "--port", str(port), "--workers", "2"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)

    def versions(n: int) -> set:
        return {httpx.get(f"{base}/health", timeout=5).json()["served"]["version"] for _ in range(n)}

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
        time.sleep(1.0)  # the second worker up too
        assert versions(20) == {"v000001"}
        base_funnel = Funnel.load(version_dir(served, "v000001"))
        pub.publish("v000001", {"channels/hot": _hot_with(base_funnel, 3, 50)})
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and versions(10) != {"v000002"}:
            time.sleep(0.3)  # default watch interval: 2 s
        assert versions(40) == {"v000002"}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
