"""VectorIndex: exactness against numpy brute force, recall of each approximate backend,
save/load round trips, exclusion, and the errors of bad input and bad files."""

from __future__ import annotations

import json

import faiss
import numpy as np
import pytest
import scipy.sparse as sp

from funnelrec.core.errors import ArtifactError, ConfigError, NotFittedError, UnknownComponentError
from funnelrec.core.registry import VECTOR_INDEXES
from funnelrec.index import VectorIndex, parse_factory

faiss.omp_set_num_threads(1)
N, D, NQ, K = 4000, 32, 100, 10


def _mixture(rng: np.random.Generator, n: int, centers: np.ndarray) -> np.ndarray:
    """Gaussian mixture: a random center (scaled ×2) plus unit noise, so neighbours are not trivial."""
    return (centers[rng.integers(0, len(centers), n)] + rng.standard_normal((n, D))).astype(np.float32)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    centers = 2.0 * rng.standard_normal((40, D))
    return _mixture(rng, N, centers), _mixture(rng, NQ, centers)


def _brute(x: np.ndarray, q: np.ndarray, k: int, metric: str = "ip") -> tuple[np.ndarray, np.ndarray]:
    s = q.astype(np.float64) @ x.T.astype(np.float64)
    if metric == "l2":
        x64, q64 = x.astype(np.float64), q.astype(np.float64)
        s = 2 * s - (q64**2).sum(1)[:, None] - (x64**2).sum(1)[None, :]  # -‖q − x‖²
    ids = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, ids, 1), ids


def _recall(ids: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / truth.shape[1] for a, b in zip(ids, truth)]))


# ------------------------------------------------------------------ exactness
@pytest.mark.parametrize("factory", ["Flat", "IDMap,Flat", "Flat,Rerank10"])
@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_exact_index_equals_numpy_brute_force(data, factory, metric):
    x, q = data
    index = VectorIndex(factory, D, metric).add(x)
    scores, ids = index.search(q, K)
    ref_s, ref_ids = _brute(x, q, K, metric)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(scores, ref_s, rtol=1e-4, atol=1e-3)
    assert scores.dtype == np.float32 and ids.dtype == np.int64 and scores.shape == (NQ, K)


def test_single_query_equals_batch_row(data):
    x, q = data
    index = VectorIndex("SQ8,Rerank40", D).add(x)
    s_all, i_all = index.search(q[:5], K)
    for r in range(5):
        s1, i1 = index.search(q[r], K)  # a 1-D query is a batch of one
        np.testing.assert_array_equal(i1[0], i_all[r])
        np.testing.assert_allclose(s1[0], s_all[r], rtol=1e-6)


# ------------------------------------------------------------------ recall of approximate backends
APPROX = [
    # factory, params, minimum recall@10 vs exact (measured: 1.0, 1.0, 0.998, 0.755, 0.971, 0.181, 0.979)
    ("HNSW32", {"efSearch": 64}, 0.90),
    ("SQ8,Rerank40", {}, 0.99),
    ("HNSWLIB16", {"efSearch": 64}, 0.90),
    ("IVF32,PQ32x4fs", {"nprobe": 32}, 0.50),
    ("IVF32,PQ16x4fs,Rerank50", {"nprobe": 32}, 0.85),
    ("LSHrt", {}, 0.10),  # random: 10/4000 = 0.0025
    ("LSHrt,Rerank200", {}, 0.85),
]


@pytest.fixture(scope="module")
def built(data):
    x, _ = data
    out = {}
    for factory, params, _ in APPROX:
        if factory.startswith("HNSWLIB"):
            pytest.importorskip("hnswlib")
        index = VectorIndex(factory, D)
        if factory.startswith("HNSWLIB"):
            index.set_params(efConstruction=100)
        out[factory] = index.add(x).set_params(**params)
    return out


@pytest.mark.parametrize(("factory", "params", "min_recall"), APPROX, ids=[a[0] for a in APPROX])
def test_approximate_backend_recall(data, built, factory, params, min_recall):
    x, q = data
    _, truth = _brute(x, q, K)
    scores, ids = built[factory].search(q, K)
    assert _recall(ids, truth) >= min_recall
    assert np.all(np.diff(scores, axis=1) <= 1e-6), "scores must be descending"
    if "Rerank" in factory:  # re-ranked scores are the exact inner products of the returned ids
        np.testing.assert_allclose(scores, np.einsum("qkd,qd->qk", x[ids], q), rtol=1e-5, atol=1e-4)


def _numpy_rerank(x, q, candidates, k, metric="ip", exclude=None):
    """Exact fp64 re-score of each query's candidate ids, minus its excluded ids; top k, best first."""
    ids, scores = [], []
    for r in range(len(q)):
        c = candidates[r][candidates[r] >= 0]
        if exclude is not None:
            c = c[~np.isin(c, exclude[r])]
        diff = x[c].astype(np.float64)
        s = diff @ q[r] if metric == "ip" else -((diff - q[r]) ** 2).sum(1)
        order = np.argsort(-s, kind="stable")[:k]
        ids.append(c[order])
        scores.append(s[order])
    return np.array(scores), np.array(ids)


def _assert_same_ranking(ids, scores, ref_ids, ref_scores):
    """Equal ids, except where two candidates' exact scores tie within float32 rounding."""
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-5, atol=1e-4)
    differ = ids != ref_ids
    assert differ.sum() <= 2, f"{differ.sum()} positions differ"
    np.testing.assert_allclose(scores[differ], ref_scores[differ], rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize(("base", "params", "metric", "k"), [
    ("SQ8", {}, "ip", K),
    ("IVF32,PQ16x4fs", {"nprobe": 4}, "ip", K),
    ("IVF32,PQ16x4fs", {"nprobe": 4}, "l2", K),
    ("LSHrt", {}, "ip", K),  # Hamming base, inner-product re-score
    ("SQ8", {}, "ip", 60),  # k above k': the base's top k are re-scored
])
def test_rerank_equals_numpy_rerank_of_the_base_candidates(data, base, params, metric, k):
    """Rerank<k'> = an exact numpy re-score of the base index's own top max(k, k') (+ the
    excluded count) candidates, whichever code does the re-score."""
    x, q = data
    rerank = 40
    index = VectorIndex(f"{base},Rerank{rerank}", D, metric).add(x).set_params(**params)
    base_index = faiss.downcast_index(index.backend_.index.base_index)  # the trained base alone
    fetch = max(k, rerank)
    _, cand = base_index.search(q, fetch)
    ref_s, ref_ids = _numpy_rerank(x, q, cand, k, metric)
    scores, ids = index.search(q, k)
    _assert_same_ranking(ids, scores, ref_ids, ref_s)
    assert _recall(ids, _brute(x, q, K, metric)[1][:, :k]) >= _recall(cand[:, :k], _brute(x, q, K, metric)[1][:, :k])

    excl = [cand[r, : r % 5 * 2] for r in range(NQ)]  # up to 8 of each query's own candidates
    _, cand = base_index.search(q, fetch + max(len(e) for e in excl))
    ref_s, ref_ids = _numpy_rerank(x, q, cand, k, metric, excl)
    scores, ids = index.search(q, k, exclude=excl)
    _assert_same_ranking(ids, scores, ref_ids, ref_s)


def test_rerank_index_saved_before_rflat_still_loads(data, tmp_path):
    """The pre-2026-12 layout (base index.faiss + fp32 vectors.npy) loads into the RFlat index."""
    from funnelrec.index.vector import FORMAT, _xxh64

    x, q = data
    new = VectorIndex("SQ8,Rerank40", D).add(x)
    path = tmp_path / "old"
    path.mkdir()
    faiss.write_index(new.backend_.index.base_index, str(path / "index.faiss"))
    np.save(path / "vectors.npy", x)
    files = {f: {"bytes": (path / f).stat().st_size, "xxh64": _xxh64(path / f)} for f in ("index.faiss", "vectors.npy")}
    meta = {"format": FORMAT, "factory": "SQ8,Rerank40", "dim": D, "metric": "ip", "ntotal": N, "params": {},
            "files": files}
    (path / "index.json").write_text(json.dumps(meta))
    for mmap in (True, False):
        old = VectorIndex.load(path, mmap=mmap)
        for got, want in zip(old.search(q, K, exclude=[[0]] * NQ), new.search(q, K, exclude=[[0]] * NQ)):
            np.testing.assert_array_equal(got, want)
    (path / "vectors.npy").unlink()
    del meta["files"]["vectors.npy"]
    (path / "index.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="no IndexRefineFlat"):
        VectorIndex.load(path)


def test_nprobe_trades_recall(data):
    x, q = data
    _, truth = _brute(x, q, K)
    index = VectorIndex("IVF32,Flat", D).add(x)
    low = _recall(index.set_params(nprobe=1).search(q, K)[1], truth)
    full = _recall(index.set_params(nprobe=32).search(q, K)[1], truth)
    assert full == 1.0 and low < full  # faiss default nprobe=1 would fail the first


# ------------------------------------------------------------------ save / load
@pytest.mark.parametrize("factory", ["Flat", "IDMap,Flat", *[a[0] for a in APPROX]])
@pytest.mark.parametrize("mmap", [True, False])
def test_save_load_round_trip_gives_identical_results(data, built, tmp_path, factory, mmap):
    x, q = data
    if factory.startswith("HNSWLIB"):
        pytest.importorskip("hnswlib")
    index = built.get(factory) or VectorIndex(factory, D).add(x)
    before = index.search(q, K, exclude=[[0, 1]] * NQ)
    index.save(tmp_path / "idx")
    loaded = VectorIndex.load(tmp_path / "idx", mmap=mmap, expected_dim=D)
    after = loaded.search(q, K, exclude=[[0, 1]] * NQ)
    np.testing.assert_array_equal(after[1], before[1])
    np.testing.assert_array_equal(after[0], before[0])
    assert (loaded.factory, loaded.dim, loaded.ntotal, loaded.params_) == (
        index.factory, D, N, index.params_)


def test_load_reapplies_a_non_default_ef_search(data, tmp_path):
    """efSearch is not in hnswlib's file: load must re-apply the saved one (10), not keep the
    backend default (64) — the two give different top-10s, so equal results prove it."""
    pytest.importorskip("hnswlib")
    x, q = data
    index = VectorIndex("HNSWLIB16", D).set_params(efConstruction=40).add(x).set_params(efSearch=10)
    before = index.search(q, K)
    at_64 = VectorIndex.load(index.save(tmp_path / "idx")).set_params(efSearch=64).search(q, K)
    assert (at_64[1] != before[1]).any()  # ef changes the answer on this data
    loaded = VectorIndex.load(tmp_path / "idx")
    assert loaded.backend_.index.ef == 10 and loaded.params_ == {"efConstruction": 40, "efSearch": 10}
    after = loaded.search(q, K)
    np.testing.assert_array_equal(after[1], before[1])
    np.testing.assert_array_equal(after[0], before[0])


def test_mmap_loaded_index_is_read_only(data, tmp_path):
    x, _ = data
    path = VectorIndex("SQ8,Rerank40", D).add(x).save(tmp_path / "i")
    # Rerank is faiss's IndexRefineFlat: the fp32 copy lives in faiss's own file, no side file
    assert sorted(p.name for p in path.iterdir()) == ["index.faiss", "index.json"]
    loaded = VectorIndex.load(tmp_path / "i", mmap=True)
    assert isinstance(loaded.backend_.index, faiss.IndexRefineFlat) and loaded.backend_.read_only
    with pytest.raises(ArtifactError, match="read-only"):
        loaded.add(x[:3])
    writable = VectorIndex.load(tmp_path / "i", mmap=False).add(x[:3])
    assert writable.ntotal == N + 3


# ------------------------------------------------------------------ exclusion
def test_exclude_per_query_lists_array_and_sparse(data):
    x, q = data
    index = VectorIndex("Flat", D).add(x)
    _, top = _brute(x, q, 30)
    excl = [top[r, : r % 7 * 3] for r in range(NQ)]  # 0..18 of each query's own best ids
    s = q.astype(np.float64) @ x.T
    for r in range(NQ):
        s[r, excl[r]] = -np.inf
    truth = np.argsort(-s, axis=1, kind="stable")[:, :K]

    _, ids = index.search(q, K, exclude=excl)
    np.testing.assert_array_equal(ids, truth)
    rows = np.repeat(np.arange(NQ), [len(e) for e in excl])
    csr = sp.csr_matrix((np.ones(len(rows)), (rows, np.concatenate(excl))), shape=(NQ, N))
    np.testing.assert_array_equal(index.search(q, K, exclude=csr)[1], truth)

    shared = top[0, :5]  # a 1-D array is excluded for every query
    s = q.astype(np.float64) @ x.T
    s[:, shared] = -np.inf
    truth = np.argsort(-s, axis=1, kind="stable")[:, :K]
    scores, ids = index.search(q, K, exclude=shared)
    np.testing.assert_array_equal(ids, truth)  # query 0 loses its 5 best: it needs K + 5 fetched
    np.testing.assert_allclose(scores, np.take_along_axis(s, truth, 1), rtol=1e-4, atol=1e-3)


def test_exclude_everything_pads_and_k_above_ntotal_pads(data):
    x, q = data
    index = VectorIndex("HNSW16", D).add(x[:6])
    scores, ids = index.search(q[:2], 10)
    assert (ids[:, :6] >= 0).all() and (ids[:, 6:] == -1).all()
    assert np.isneginf(scores[:, 6:]).all() and np.isfinite(scores[:, :6]).all()
    scores, ids = index.search(q[:2], 3, exclude=np.arange(6))
    assert (ids == -1).all() and np.isneginf(scores).all()


# ------------------------------------------------------------------ errors
def test_bad_factory_and_params():
    with pytest.raises(ConfigError, match="Bogus12"):
        VectorIndex("Bogus12", D)
    with pytest.raises(ConfigError, match="last"):
        VectorIndex("Rerank10,Flat", D)
    with pytest.raises(ConfigError, match="faiss base"):
        VectorIndex("HNSWLIB16,Rerank10", D)
    with pytest.raises(ConfigError, match="metric"):
        VectorIndex("Flat", D, metric="cosine")
    with pytest.raises(ConfigError, match="nprobe"):
        VectorIndex("HNSW32", D).set_params(nprobe=4)
    with pytest.raises(UnknownComponentError):
        VECTOR_INDEXES.get("annoy")
    assert parse_factory("IVF1024,PQ32x4fs,Rerank100") == ("faiss", "IVF1024,PQ32x4fs", 100)
    assert {"faiss", "hnswlib"} <= set(VECTOR_INDEXES.names())


def test_wrong_query_dim_and_empty_index(data):
    x, q = data
    with pytest.raises(NotFittedError, match="empty"):
        VectorIndex("Flat", D).search(q, K)
    index = VectorIndex("Flat", D).add(x)
    with pytest.raises(ConfigError, match=r"\(N, 32\)"):
        index.search(np.zeros((2, D + 1), np.float32), K)
    with pytest.raises(ConfigError, match="2 id lists for 100 queries"):
        index.search(q, K, exclude=[[1], [2]])


def test_load_with_other_dim_names_both_dims(data, tmp_path):
    x, _ = data
    VectorIndex("Flat", D).add(x).save(tmp_path / "i")
    with pytest.raises(ArtifactError, match=r"index dim 32 != expected dim 64"):
        VectorIndex.load(tmp_path / "i", expected_dim=64)


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage_json", "missing"])
def test_corrupt_files_raise_artifact_error(data, tmp_path, damage):
    x, q = data
    path = VectorIndex("SQ8,Rerank40", D).add(x).save(tmp_path / "i")
    f = path / "index.faiss"
    raw = bytearray(f.read_bytes())
    if damage == "truncate":
        f.write_bytes(raw[: len(raw) // 2])
    elif damage == "flip":
        raw[len(raw) // 2] ^= 0xFF
        f.write_bytes(raw)
    elif damage == "garbage_json":
        (path / "index.json").write_text("{not json")
    else:
        f.unlink()
    with pytest.raises(ArtifactError):
        VectorIndex.load(path)


def test_truncated_faiss_file_without_checksum_still_raises(data, tmp_path):
    # even if index.json is rewritten to match the truncated file, faiss's reader must not
    # return a silently smaller index
    x, _ = data
    path = VectorIndex("Flat", D).add(x).save(tmp_path / "i")
    f = path / "index.faiss"
    f.write_bytes(f.read_bytes()[:-1000])
    meta = json.loads((path / "index.json").read_text())
    meta["files"]["index.faiss"]["bytes"] = f.stat().st_size
    (path / "index.json").write_text(json.dumps(meta))
    for mmap in (True, False):
        with pytest.raises(ArtifactError):
            VectorIndex.load(path, mmap=mmap, verify=False)
