"""The Milvus backend beyond the shared contract (tests/contracts/test_vector_indexes.py):
Milvus's HNSW answers exactly as faiss's HNSW with the same M/efConstruction/ef (milvus-lite
builds a faiss graph: an independent build, compared id for id), its build parameters reach the
index, l2 scores are -‖q − x‖², a real Milvus gRPC server by URI (milvus-lite's own server
process) gives the same answers and a saved index reconnects to it, the vector recall channel
serves from it, and bad input fails in one line."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import faiss
import numpy as np
import pytest

pytest.importorskip("milvus_lite")

from funnelrec.core.errors import ArtifactError, ConfigError  # noqa: E402
from funnelrec.index import VectorIndex  # noqa: E402

faiss.omp_set_num_threads(1)
N, D, NQ, K = 3000, 16, 50, 10


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(5)
    centers = 2.0 * rng.standard_normal((30, D))
    x = centers[rng.integers(0, 30, N)] + rng.standard_normal((N, D))
    q = centers[rng.integers(0, 30, NQ)] + rng.standard_normal((NQ, D))
    return x.astype(np.float32), q.astype(np.float32)


def _faiss_hnsw(x: np.ndarray, m: int, ef_construction: int, ef: int, metric=faiss.METRIC_INNER_PRODUCT):
    index = faiss.IndexHNSWFlat(x.shape[1], m, metric)
    index.hnsw.efConstruction = ef_construction
    index.add(x)
    index.hnsw.efSearch = ef
    return index


def test_hnsw_equals_faiss_hnsw_with_the_same_parameters(data):
    x, q = data
    ours = VectorIndex("Milvus:HNSW,M=16,efConstruction=100", D).add(x).set_params(efSearch=12)
    s, ids = ours.search(q, K)
    fs, fids = _faiss_hnsw(x, 16, 100, 12).search(q, K)
    np.testing.assert_array_equal(ids, fids)
    np.testing.assert_allclose(s, fs, rtol=1e-6)
    # M reaches the build: a 4-neighbour graph searched with a small ef answers differently
    small = VectorIndex("Milvus:HNSW,M=4,efConstruction=8", D).add(x).set_params(efSearch=10)
    _, sids = small.search(q, K)
    np.testing.assert_array_equal(sids, _faiss_hnsw(x, 4, 8, 10).search(q, K)[1])
    assert (sids != ids).any()
    # ef reaches the search: ef 10 vs 200 on the small graph differ, 200 equals faiss's 200
    wide = small.set_params(efSearch=200).search(q, K)[1]
    np.testing.assert_array_equal(wide, _faiss_hnsw(x, 4, 8, 200).search(q, K)[1])
    assert (wide != sids).any()


def test_l2_scores_are_minus_squared_distance(data):
    x, q = data
    s, ids = VectorIndex("Milvus:FLAT", D, metric="l2").add(x).search(q, K)
    d2 = ((q.astype(np.float64)[:, None, :] - x.astype(np.float64)[None]) ** 2).sum(2)
    truth = np.argsort(d2, axis=1, kind="stable")[:, :K]
    np.testing.assert_array_equal(ids, truth)
    np.testing.assert_allclose(s, -np.take_along_axis(d2, truth, 1), rtol=1e-4, atol=1e-3)


def test_two_adds_and_explicit_ids(data):
    x, q = data
    one = VectorIndex("Milvus:FLAT", D).add(x)
    two = VectorIndex("Milvus:FLAT", D).add(x[:1000]).add(x[1000:])
    assert two.ntotal == N
    np.testing.assert_array_equal(two.search(q, K)[1], one.search(q, K)[1])
    ids = np.arange(N, dtype=np.int64)[::-1] + 100
    back = VectorIndex("Milvus:FLAT", D).add_with_ids(x, ids)
    np.testing.assert_array_equal(back.search(q, K)[1], ids[one.search(q, K)[1]])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def milvus_server(tmp_path_factory):
    """A Milvus gRPC server in its own process (milvus-lite's `server` command), on a free port."""
    exe = shutil.which("milvus-lite", path=str(Path(sys.executable).parent)) or shutil.which("milvus-lite")
    if exe is None:
        pytest.skip("milvus-lite's server command is not installed")
    port = _free_port()
    proc = subprocess.Popen([exe, "server", "--data-dir", str(tmp_path_factory.mktemp("milvus") / "server.db"),
                             "--host", "127.0.0.1", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"milvus-lite server did not start on port {port}")
            time.sleep(0.2)
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=10)


def test_server_uri_answers_as_the_embedded_index_and_reloads(data, milvus_server, tmp_path):
    x, q = data
    factory = f"Milvus:HNSW,M=16,efConstruction=100,uri={milvus_server}"
    remote = VectorIndex(factory, D).add(x).set_params(efSearch=12)
    s, ids = remote.search(q, K)
    local_s, local_ids = VectorIndex("Milvus:HNSW,M=16,efConstruction=100", D).add(x).set_params(efSearch=12).search(q, K)
    np.testing.assert_array_equal(ids, local_ids)
    np.testing.assert_allclose(s, local_s, rtol=1e-6)
    back = VectorIndex.load(remote.save(tmp_path / "idx"), expected_dim=D)
    assert (back.factory, back.ntotal, back.params_) == (factory, N, {"efSearch": 12})
    np.testing.assert_array_equal(back.search(q, K)[1], ids)
    # the saved index names its collection: drop it on the server and the load says so
    from pymilvus import MilvusClient

    MilvusClient(uri=milvus_server).drop_collection(remote.backend_.collection)
    with pytest.raises(ArtifactError, match="no collection"):
        VectorIndex.load(tmp_path / "idx")


def test_vector_recall_channel_serves_from_milvus(tmp_path):
    """The channel's config takes a Milvus factory: the same candidates as faiss's HNSW with the
    same parameters, and the channel's save/load (the artifact path) keeps them."""
    from tests.recall.test_vector import _cfg, planted

    from funnelrec.data.dataset import TrainData
    from funnelrec.recall.base import RecallChannel
    from funnelrec.recall.vector import VectorRecall

    ds, _ = planted()
    train = TrainData(ds, ds.interactions)
    users = np.arange(ds.n_users)
    ours = VectorRecall(_cfg(epochs=1, index_factory="Milvus:HNSW,M=8,efConstruction=40",
                             index_params={"efSearch": 16})).fit(train)
    peer = VectorRecall(_cfg(epochs=1, index_factory="HNSW8",
                             index_params={"efConstruction": 40, "efSearch": 16})).fit(train)
    np.testing.assert_array_equal(ours.item_vectors_, peer.item_vectors_)  # same training, other index
    got = ours.recall(users, 10).items
    np.testing.assert_array_equal(got, peer.recall(users, 10).items)
    ours.save(tmp_path / "v")
    back = RecallChannel.load(tmp_path / "v")
    assert back.index_.factory == "Milvus:HNSW,M=8,efConstruction=40"
    np.testing.assert_array_equal(back.recall(users, 10).items, got)


@pytest.mark.parametrize("factory,match", [
    ("Milvus:", "index type first"),
    ("Milvus:NOPE", "unknown Milvus index type 'NOPE'"),
    ("Milvus:HNSW,M=x", "M='x' must be an integer"),
    ("Milvus:HNSW,nlist=4", "HNSW has no build parameter 'nlist'"),
    ("Milvus:HNSW,M=0", "M must be ≥ 1"),
    ("Milvus:HNSW,M16", "not a <param>=<value>"),
    ("Milvus:FLAT,uri=ftp://host:1", "must start with http://"),
    ("Milvus:HNSW,Rerank40", "needs a faiss base"),
])
def test_bad_factories_are_one_line_errors(factory, match):
    with pytest.raises(ConfigError, match=match) as e:
        VectorIndex(factory, D)
    assert "\n" not in str(e.value)


def test_bad_params_and_unreachable_server_are_one_line_errors(data):
    x, _ = data
    index = VectorIndex("Milvus:HNSW,M=8", D)
    with pytest.raises(ConfigError, match="no search parameter 'nprobes'"):
        index.set_params(nprobes=4)
    with pytest.raises(ConfigError, match="efConstruction is a build parameter"):
        index.set_params(efConstruction=40)
    with pytest.raises(ConfigError, match=r"cannot connect to Milvus server http://127.0.0.1:\d+") as e:
        VectorIndex(f"Milvus:FLAT,uri=http://127.0.0.1:{_free_port()}", D).add(x[:10])
    assert "\n" not in str(e.value)


def test_missing_package_is_named(monkeypatch):
    monkeypatch.setitem(sys.modules, "pymilvus", None)  # what `import pymilvus` meets when it is not installed
    with pytest.raises(ConfigError, match=r"needs pymilvus .*pip install 'funnelrec\[milvus\]'"):
        VectorIndex("Milvus:FLAT", D)


def test_corrupt_archive_is_an_artifact_error(data, tmp_path):
    x, _ = data
    path = VectorIndex("Milvus:FLAT", D).add(x[:100]).save(tmp_path / "idx")
    (path / "index.milvus").write_bytes(b"not a tar")
    with pytest.raises(ArtifactError, match="index.milvus"):
        VectorIndex.load(path, verify=False)
