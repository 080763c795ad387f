"""Vector indexes for embedding recall, each described by ONE factory string saved with it.

The factory string is faiss's ``index_factory`` language, plus two additions of ours:

- a trailing ``,Rerank<k'>`` stage: the base index scans approximately (e.g. ``SQ8``: INT8 codes,
  a quarter of the fp32 memory), its top ``max(k, k')`` are re-scored exactly against the fp32
  vectors: ``"SQ8,Rerank40"``, ``"IVF1024,PQ32x4fs,Rerank100"``. It is faiss's ``IndexRefineFlat``
  (``"<base>,RFlat"``) searched with ``k_factor = 1`` for ``max(k, k') + |excluded|`` results, so
  k' stays a candidate *count* (faiss's own ``k_factor`` multiplies k: a recall stage asking for
  k = 500 would re-score 500·k' candidates);
- ``HNSWLIB<M>``: an hnswlib graph (optional dependency ``hnswlib``) instead of faiss's HNSW;
- ``KDTree`` / ``KDTree<leaf size>``: scipy's ``cKDTree``, exact, with inner product by the MIPS→L2
  transform (`KDTreeBackend`). It beats Flat only for L2 at D ≤ 8 (6× at D = 4, 1.5× at 8, 0.08× at
  16; inner product: never, 0.63× at D = 4): bench/ann.py ``--crossover``, docs/BENCHMARKS.md.

    >>> import numpy as np
    >>> x = np.random.default_rng(0).standard_normal((1000, 16), dtype=np.float32)
    >>> index = VectorIndex("SQ8,Rerank40", dim=16)
    >>> index = index.add(x)
    >>> scores, ids = index.search(x[:2], k=5, exclude=[[0], [1]])
    >>> scores.shape, ids.dtype.name, bool((ids[:, 0] != np.array([0, 1])).all())
    ((2, 5), 'int64', True)

Conventions (shared by every backend):

- ids are dense item indices ``0..N-1`` in the order of ``add`` (``add_with_ids`` for ``IDMap``/IVF);
- ``search(queries (Q, D), k) -> scores (Q, k) float32, ids (Q, k) int64``, best first;
  scores are *similarities, higher is better*: the inner product ``⟨q, x⟩`` for ``metric="ip"``,
  ``-‖q − x‖²`` for ``metric="l2"``, ``-hamming`` for a bare ``LSH`` (``1 - ⟨q, x⟩``-style
  distances of hnswlib are turned back into ``⟨q, x⟩``); empty slots are ``id = -1, score = -inf``;
- ``exclude`` removes ids (a user's seen items) before the top k is taken: by over-fetching
  ``k + max |exclude_q|`` from the base index, so an exact index stays exact under exclusion.

On disk an index is a directory: ``index.json`` (format, factory, dim, metric, ntotal, search
params, byte size + xxh64 of every file) and ``index.faiss`` / ``index.hnswlib`` (faiss's file
holds the RFlat fp32 copy too; a Rerank index saved before 2026-12 as base + ``vectors.npy``
still loads, wrapped into an IndexRefineFlat in RAM). ``load(mmap=True)`` maps faiss codes,
the RFlat copy included, read-only (``IO_FLAG_MMAP_IFC``), so the serving workers of one machine
share one copy in the page cache.

Why faiss's RFlat and not our numpy re-rank over a memory-mapped ``vectors.npy`` (used until
2026-12): bench/ann_refine.py, 200k x 64 (i.i.d. gaussian, and bench/ann.py's mixture), 1,000
queries, inner product, one search thread, the same trained base for both, 2 shared cores
(2026-12-02, 5 runs). Recall@10 is identical: SQ8 + 40 1.000 (also at 1M); IVF1024,PQ32x4fs
nprobe 16 + 100 0.9913 (mixture), 0.2529 (structureless gaussian). Batch QPS is 2-3x higher
with RFlat on IVF-PQ (20,137-29,603 vs 7,421-17,297: faiss gathers and scores in C++, numpy
builds a (Q, k', D) copy); single-query IVF-PQ 11,487-19,398 vs 8,228-14,195, within the shared
machine's noise to 1.5x. On SQ8 the INT8 scan dominates: 437-615 vs 361-556 QPS at 200k,
54-104 vs 88-95 at 1M (noise). Memory is the same: loaded into RAM both add 61.0 MB private
RSS (SQ8, 200k; 305.2 MB at 1M); memory-mapped both add 0 MB private and map the same 62.7 MB
(306.8 MB at 1M) of shared file pages once searched, because faiss maps the RFlat copy with
``IO_FLAG_MMAP_IFC`` too, so the mmap copy saves nothing RFlat lacks (and the served funnel
loads its indexes with ``mmap=False``, recall/vector.py). Load: < 10 ms mmapped, 20-150 ms in
RAM at 200k, 0.5-0.8 s at 1M, for both.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import scipy.sparse as sp
import xxhash

from funnelrec.core.errors import ArtifactError, ConfigError, NotFittedError
from funnelrec.core.registry import VECTOR_INDEXES

FORMAT = "funnelrec-vector-index-v1"
METRICS = ("ip", "l2")
_RERANK = re.compile(r"^(?P<base>.+),Rerank(?P<k>\d+)$")
_HNSWLIB = re.compile(r"^HNSWLIB(?P<M>\d+)$")
_KDTREE = re.compile(r"^KDTree(?P<leaf>\d+)?$")
_BUILD_PARAMS = ("efConstruction",)
_LEGACY_VECTORS = "vectors.npy"  # the fp32 copy of a Rerank index saved before 2026-12 (read, never written)
_TRAIN_SAMPLE = 262_144  # k-means/PQ training sample cap: faiss samples ≤256·nlist anyway


def parse_factory(factory: str) -> tuple[str, str, int]:
    """Split a factory string into (engine, base factory, rerank k'); k' = 0 means no re-rank.

    >>> parse_factory("SQ8,Rerank40")
    ('faiss', 'SQ8', 40)
    >>> parse_factory("HNSWLIB32")
    ('hnswlib', 'HNSWLIB32', 0)
    """
    if not isinstance(factory, str) or not factory.strip():
        raise ConfigError(f"vector index factory must be a non-empty string, got {factory!r}")
    base, rerank = factory.strip(), 0
    m = _RERANK.match(base)
    if m:
        base, rerank = m["base"], int(m["k"])
        if rerank < 1:
            raise ConfigError(f"vector index factory {factory!r}: Rerank k' must be ≥ 1")
    if "Rerank" in base:
        raise ConfigError(f"vector index factory {factory!r}: Rerank<k'> must be the last component")
    engine = "hnswlib" if _HNSWLIB.match(base) else "kdtree" if _KDTREE.match(base) else "faiss"
    if base.startswith("Milvus:"):  # Milvus's grammar after the prefix (index/milvus.py)
        engine = "milvus"
    if engine != "faiss" and rerank:
        raise ConfigError(
            f"vector index factory {factory!r}: Rerank<k'> is faiss's IndexRefineFlat and needs a faiss base "
            f"index; {base} already scores with the exact fp32 vectors"
        )
    return engine, base, rerank


# ---------------------------------------------------------------- backends (engines)
@VECTOR_INDEXES.register("faiss")
class FaissBackend:
    """Any faiss ``index_factory`` string. Raw results: faiss distances turned into similarities."""

    file_name = "index.faiss"

    def __init__(self, factory: str, dim: int, metric: str) -> None:
        self.factory = factory
        base, refine = (factory[: -len(",RFlat")], True) if factory.endswith(",RFlat") else (factory, False)
        faiss_metric = faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT
        # faiss's LSH compares sign bits by Hamming distance and only accepts the L2 flag.
        base_metric = faiss.METRIC_L2 if base.startswith("LSH") else faiss_metric
        try:
            index = faiss.index_factory(dim, base, base_metric)
        except RuntimeError as e:
            reason = str(e).strip().splitlines()[-1][-160:]
            raise ConfigError(f"unknown or invalid vector index factory {factory!r} ({reason})") from None
        if refine:
            # IndexRefineFlat re-scores with its own metric_type: the user's metric, also above LSH
            rflat = faiss.IndexRefineFlat(index)
            index.this.disown()
            rflat.own_fields = True
            rflat.metric_type = faiss_metric
            faiss.downcast_index(rflat.refine_index).metric_type = faiss_metric
            index = rflat
        self.index = index
        self._init_search_params()
        self.read_only = False

    def _init_search_params(self) -> None:
        # IndexRefine search parameters by (k, k_base), created once each: faiss releases the GIL
        # while it searches, so one shared object whose k_factor we reassigned could race
        self.refine = isinstance(self.index, faiss.IndexRefine)
        self._refine_params: dict[tuple[int, int], Any] = {}

    # -- build
    @property
    def is_trained(self) -> bool:
        return bool(self.index.is_trained)

    def train(self, x: np.ndarray) -> None:
        if len(x) > _TRAIN_SAMPLE:
            rows = np.sort(np.random.default_rng(0).choice(len(x), _TRAIN_SAMPLE, replace=False))
            x = x[rows]
        self.index.train(x)

    def add(self, x: np.ndarray, ids: np.ndarray | None) -> None:
        try:
            if ids is None:
                if isinstance(self.index, faiss.IndexIDMap):
                    ids = np.arange(self.index.ntotal, self.index.ntotal + len(x), dtype=np.int64)
                    self.index.add_with_ids(x, ids)
                else:
                    self.index.add(x)
            else:
                self.index.add_with_ids(x, ids)
        except RuntimeError as e:
            reason = str(e).strip().splitlines()[-1][-160:]
            raise ConfigError(f"vector index {self.factory!r} cannot add these vectors ({reason})") from None

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    # -- search
    def set_param(self, name: str, value: int) -> None:
        if name == "efConstruction":  # build-time: not a ParameterSpace knob
            hnsw = _find_hnsw(self.index)
            if hnsw is None:
                raise ConfigError(f"vector index {self.factory!r} has no parameter 'efConstruction'")
            hnsw.efConstruction = int(value)
            return
        try:
            faiss.ParameterSpace().set_index_parameter(self.index, name, value)
        except RuntimeError:
            raise ConfigError(f"vector index {self.factory!r} has no search parameter {name!r}") from None

    def search(self, q: np.ndarray, k: int, k_base: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top k; an IndexRefine re-scores the base index's top ``k_base ≥ k`` (default k) exactly,
        whatever k_factor its file holds."""
        if self.refine:
            key = (k, k if k_base is None else k_base)
            params = self._refine_params.get(key)
            if params is None:
                if len(self._refine_params) > 1024:  # per-request exclusion counts vary: keep it bounded
                    self._refine_params = {}
                # faiss fetches idx_t(k · k_factor) from the base: +0.5 keeps float rounding off k_base - 1
                params = self._refine_params[key] = faiss.IndexRefineSearchParameters(k_factor=(key[1] + 0.5) / k)
            D, I = self.index.search(q, k, params=params)
        else:
            D, I = self.index.search(q, k)
        if self.index.metric_type == faiss.METRIC_L2:
            np.negative(D, out=D)
        return D, I

    # -- io
    def save(self, path: Path) -> None:
        faiss.write_index(self.index, str(path))

    @classmethod
    def load(cls, path: Path, factory: str, mmap: bool) -> FaissBackend:
        self = cls.__new__(cls)
        self.factory = factory
        flags = faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY if mmap else 0
        try:
            self.index = faiss.read_index(str(path), flags)
        except RuntimeError:
            if not mmap:
                raise
            self.index = faiss.read_index(str(path))  # index type without mmap support
            mmap = False
        self._init_search_params()
        self.read_only = mmap
        return self


def _find_hnsw(index: Any) -> Any:
    index = faiss.downcast_index(index)
    if hasattr(index, "hnsw"):
        return index.hnsw
    inner = getattr(index, "index", None) or getattr(index, "base_index", None)  # IDMap / PreTransform / Refine
    return _find_hnsw(inner) if inner is not None else None


@VECTOR_INDEXES.register("hnswlib")
class HnswlibBackend:
    """``HNSWLIB<M>``: hnswlib's HNSW graph (stores fp32 vectors; no mmap, loaded into RAM)."""

    file_name = "index.hnswlib"

    def __init__(self, factory: str, dim: int, metric: str) -> None:
        try:
            import hnswlib
        except ImportError:
            raise ConfigError(f"vector index {factory!r} needs the hnswlib package (pip install hnswlib)") from None
        self.factory, self.dim, self.metric = factory, dim, metric
        self.M = int(_HNSWLIB.match(factory)["M"])  # type: ignore[index]
        self.ef_construction = 200
        self.ef = 64
        self.index = hnswlib.Index(space=metric, dim=dim)
        self.initialized = False
        self.read_only = False

    is_trained = True

    def train(self, x: np.ndarray) -> None:
        pass

    def add(self, x: np.ndarray, ids: np.ndarray | None) -> None:
        n0 = self.ntotal
        if ids is None:
            ids = np.arange(n0, n0 + len(x), dtype=np.int64)
        if not self.initialized:
            self.index.init_index(max_elements=len(x), M=self.M, ef_construction=self.ef_construction, random_seed=0)
            self.index.set_ef(self.ef)
            self.initialized = True
        else:
            self.index.resize_index(n0 + len(x))
        self.index.add_items(x, ids)

    @property
    def ntotal(self) -> int:
        return int(self.index.get_current_count()) if self.initialized else 0

    def set_param(self, name: str, value: int) -> None:
        if name == "efSearch":
            self.ef = int(value)
            if self.initialized:
                self.index.set_ef(self.ef)
        elif name == "efConstruction":
            if self.initialized:
                raise ConfigError(f"vector index {self.factory!r}: set efConstruction before add()")
            self.ef_construction = int(value)
        else:
            raise ConfigError(f"vector index {self.factory!r} has no search parameter {name!r}")

    def search(self, q: np.ndarray, k: int, k_base: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        kk = min(k, self.ntotal)
        labels, dist = self.index.knn_query(q, k=kk)
        # hnswlib 'ip' distance is 1 - <q, x>; 'l2' is the squared distance.
        scores = np.subtract(1.0, dist, out=dist) if self.metric == "ip" else np.negative(dist, out=dist)
        ids = labels.view(np.int64)  # uint64 labels < 2**63: same bits
        if kk < k:
            pad = k - kk
            scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
            ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=-1)
        return scores.astype(np.float32, copy=False), ids

    def save(self, path: Path) -> None:
        self.index.save_index(str(path))

    @classmethod
    def load(cls, path: Path, factory: str, mmap: bool, dim: int, metric: str) -> HnswlibBackend:
        self = cls(factory, dim, metric)
        self.index.load_index(str(path))
        self.initialized = True
        self.index.set_ef(self.ef)
        return self


@VECTOR_INDEXES.register("kdtree")
class KDTreeBackend:
    """``KDTree`` / ``KDTree<leaf size>``: scipy's ``cKDTree`` (leaf size 16 by default), exact.

    A KD-tree answers L2 nearest-neighbour queries, so the L2 metric is native. Inner product
    (maximum inner-product search, MIPS) is reduced to L2 by the transform of Bachrach et al.
    (2014, "Speeding up the Xbox recommender system using a euclidean transformation for
    inner-product spaces"): with ``M = max_i ‖x_i‖``,

        x̃_i = [x_i, sqrt(M² − ‖x_i‖²)]   (items, D + 1)        q̃ = [q, 0]   (queries)

        ‖q̃ − x̃_i‖² = ‖q‖² + ‖x_i‖² + (M² − ‖x_i‖²) − 2⟨q, x_i⟩ = ‖q‖² + M² − 2⟨q, x_i⟩

    ``‖q‖² + M²`` is the same for every item of one query, so ascending ‖q̃ − x̃_i‖ is exactly
    descending ⟨q, x_i⟩: the tree's exact L2 neighbours of q̃ are the exact MIPS answer. (Every
    x̃_i has norm M, which is what lets L2 order all items alike; the extra coordinate is ≥ 0
    because M bounds every norm.) The query is first scaled to norm M, q ← q · M / ‖q‖: a
    positive factor multiplies every ⟨q, x_i⟩ alike, so the order is unchanged, but the k-th
    neighbour's distance² becomes 2M² − 2·M·⟨q/‖q‖, x_(k)⟩ instead of ‖q‖² + M² − 2⟨q, x_(k)⟩ —
    with a short q (‖q‖ ≪ M) the latter is ≈ M², a ball that meets almost every leaf. On
    bench/ann.py's 100k mixture this made the tree 10× faster at D = 4, 2× at D = 8, 1× at 16.
    The returned scores are recomputed from the stored vectors
    (float64, then float32) and the k re-sorted by them, so ties and the float64 rounding of the
    transformed distance cannot put a lower inner product first.

    The tree is static: ``add`` appends to the stored vectors and rebuilds it (M may grow, and
    cKDTree has no insert). On disk: ``index.kdtree.npz`` with the fp32 vectors and int64 ids
    (``allow_pickle=False``); the tree is rebuilt on load — deterministic for the same vectors
    and leaf size, a few hundred ms at 1M × 16. Nothing is memory-mapped (cKDTree keeps its
    own float64 copy); ``mmap=True`` loads read-only like the faiss indexes.

    Search knob: ``workers`` (cKDTree query threads, default 1; -1 = every core).
    """

    file_name = "index.kdtree.npz"
    is_trained = True

    def __init__(self, factory: str, dim: int, metric: str) -> None:
        m = _KDTREE.match(factory)
        if m is None:
            raise ConfigError(f"unknown KD-tree factory {factory!r}; expected KDTree or KDTree<leaf size>")
        self.factory, self.dim, self.metric = factory, dim, metric
        self.leaf_size = int(m["leaf"]) if m["leaf"] else 16
        if self.leaf_size < 1:
            raise ConfigError(f"vector index factory {factory!r}: the KD-tree leaf size must be ≥ 1")
        self.workers = 1
        self.vectors = np.zeros((0, dim), np.float32)
        self.ids = np.zeros(0, np.int64)
        self.tree = None
        self.max_norm = 0.0  # M of the MIPS transform (ip)
        self.read_only = False

    def train(self, x: np.ndarray) -> None:
        pass

    def add(self, x: np.ndarray, ids: np.ndarray | None) -> None:
        n0 = self.ntotal
        if ids is None:
            ids = np.arange(n0, n0 + len(x), dtype=np.int64)
        self.vectors = np.ascontiguousarray(np.concatenate([self.vectors, x]), dtype=np.float32)
        self.ids = np.concatenate([self.ids, np.asarray(ids, np.int64)])
        self._build()

    def _build(self) -> None:
        from scipy.spatial import cKDTree

        data = self.vectors.astype(np.float64)
        if self.metric == "ip":
            data = mips_augment(data)
            self.max_norm = float(np.sqrt(np.einsum("nd,nd->n", data, data).max(initial=0.0)))  # every ‖x̃‖ = M
        # balanced median splits (scipy's default): the same vectors always give the same tree
        self.tree = cKDTree(data, leafsize=self.leaf_size) if len(data) else None

    @property
    def ntotal(self) -> int:
        return len(self.vectors)

    def set_param(self, name: str, value: int) -> None:
        if name != "workers":
            raise ConfigError(f"vector index {self.factory!r} has no search parameter {name!r} (KD-tree: workers)")
        if int(value) == 0 or int(value) < -1:
            raise ConfigError(f"vector index {self.factory!r}: workers must be ≥ 1 or -1 (every core), got {value}")
        self.workers = int(value)

    def search(self, q: np.ndarray, k: int, k_base: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        n = self.ntotal
        kk = min(k, n)
        q64 = q.astype(np.float64)
        if self.metric == "ip":
            norm = np.linalg.norm(q64, axis=1, keepdims=True)
            scale = np.divide(self.max_norm, norm, out=np.ones_like(norm), where=norm > 0)  # q · M/‖q‖
            tq = np.hstack([q64 * scale, np.zeros((len(q), 1))])  # q̃ = [q, 0]
        else:
            tq = q64
        _, pos = self.tree.query(tq, k=kk, workers=self.workers)
        pos = np.asarray(pos, np.int64).reshape(len(q), kk)
        x = self.vectors[pos].astype(np.float64)  # (Q, kk, D)
        if self.metric == "ip":
            s = np.einsum("qkd,qd->qk", x, q64)
        else:
            s = -np.square(x - q64[:, None, :]).sum(axis=2)
        scores = s.astype(np.float32)
        order = np.argsort(-scores, axis=1, kind="stable")
        scores = np.take_along_axis(scores, order, 1)
        ids = self.ids[np.take_along_axis(pos, order, 1)]
        if kk < k:
            scores = np.pad(scores, ((0, 0), (0, k - kk)), constant_values=-np.inf)
            ids = np.pad(ids, ((0, 0), (0, k - kk)), constant_values=-1)
        return np.ascontiguousarray(scores), np.ascontiguousarray(ids)

    def save(self, path: Path) -> None:
        with open(path, "wb") as f:
            np.savez(f, vectors=self.vectors, ids=self.ids)

    @classmethod
    def load(cls, path: Path, factory: str, mmap: bool, dim: int, metric: str) -> KDTreeBackend:
        self = cls(factory, dim, metric)
        try:
            with np.load(path, allow_pickle=False) as z:
                vectors, ids = z["vectors"], z["ids"]
        except (ValueError, OSError, KeyError) as e:
            raise ArtifactError(f"{path}: cannot read the KD-tree's vectors ({e})") from None
        if vectors.ndim != 2 or vectors.shape[1] != dim or vectors.dtype != np.float32 or ids.shape != (len(vectors),):
            raise ArtifactError(f"{path}: vectors {vectors.shape} {vectors.dtype}, ids {ids.shape}; expected (N, {dim}) float32, (N,)")
        self.vectors, self.ids = np.ascontiguousarray(vectors), ids.astype(np.int64)
        self._build()
        self.read_only = mmap
        return self

    def memory_bytes(self) -> int:
        # fp32 vectors + ids + cKDTree's float64 copy of the (augmented) data, its index
        # permutation and ≈ 2N/leaf nodes of ~(2·(D+1)·8 + 64) bytes (bounding boxes included)
        d_tree = self.dim + (self.metric == "ip")
        n = self.ntotal
        nodes = 2 * n // self.leaf_size + 1
        return int(n * (self.dim * 4 + 8 + d_tree * 8 + 8) + nodes * (2 * d_tree * 8 + 64))


def mips_augment(x: np.ndarray) -> np.ndarray:
    """(N, D) → (N, D + 1): ``[x_i, sqrt(M² − ‖x_i‖²)]`` with ``M = max_i ‖x_i‖`` (MIPS → L2,
    Bachrach et al. 2014; see `KDTreeBackend`). Queries get a 0 appended.

    >>> mips_augment(np.array([[3.0, 4.0], [0.0, 1.0]]))
    array([[3.        , 4.        , 0.        ],
           [0.        , 1.        , 4.89897949]])
    """
    x = np.asarray(x, np.float64)
    sq = np.einsum("nd,nd->n", x, x)
    extra = np.sqrt(np.maximum(sq.max(initial=0.0) - sq, 0.0))  # ≥ 0: M² bounds every ‖x‖²
    return np.hstack([x, extra[:, None]])


# ---------------------------------------------------------------- the public index
class VectorIndex:
    """A vector index built from one factory string (see the module docstring).

    Args:
        factory: e.g. ``"Flat"``, ``"IDMap,Flat"``, ``"IVF1024,PQ16"``, ``"IVF1024,PQ32x4fs"``,
            ``"HNSW32"``, ``"LSHrt"``, ``"SQ8,Rerank40"``, ``"HNSWLIB32"``, ``"KDTree"``.
        dim: vector dimension D.
        metric: ``"ip"`` (inner product, the two-tower score) or ``"l2"``.
    """

    def __init__(self, factory: str, dim: int, metric: str = "ip") -> None:
        if metric not in METRICS:
            raise ConfigError(f"unknown vector index metric {metric!r}; known: {', '.join(METRICS)}")
        if not isinstance(dim, int | np.integer) or dim < 1:
            raise ConfigError(f"vector index dim must be a positive int, got {dim!r}")
        self.factory = factory
        self.dim = int(dim)
        self.metric = metric
        engine, base, rerank = parse_factory(factory)
        self.engine_, self.base_factory_, self.rerank_k_ = engine, base, rerank
        self.backend_ = VECTOR_INDEXES.get(engine)(f"{base},RFlat" if rerank else base, self.dim, metric)
        self.params_: dict[str, int] = {}

    # ------------------------------------------------------------ build
    @property
    def ntotal(self) -> int:
        return self.backend_.ntotal

    @property
    def is_trained(self) -> bool:
        return self.backend_.is_trained

    def train(self, x: np.ndarray) -> VectorIndex:
        """Train the codebooks / coarse quantizer (IVF, PQ, SQ, LSHrt); a no-op for Flat/HNSW."""
        x = self._as_matrix(x, "training vectors")
        self._writable()
        self.backend_.train(x)
        return self

    def add(self, vectors: np.ndarray) -> VectorIndex:
        """Append float32 (N, D) vectors with ids ``ntotal .. ntotal+N-1``; trains first if needed."""
        x = self._as_matrix(vectors, "vectors")
        self._writable()
        if not self.is_trained:
            self.backend_.train(x)
        self.backend_.add(x, None)
        return self

    def add_with_ids(self, vectors: np.ndarray, ids: np.ndarray) -> VectorIndex:
        """Add vectors under explicit int64 ids (factory ``"IDMap,…"``, IVF or HNSWLIB)."""
        x = self._as_matrix(vectors, "vectors")
        ids = np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)
        if len(ids) != len(x):
            raise ConfigError(f"add_with_ids: {len(x)} vectors but {len(ids)} ids")
        if self.rerank_k_:  # faiss's IndexRefine has no add_with_ids
            raise ConfigError(f"vector index {self.factory!r}: Rerank needs dense ids, use add()")
        self._writable()
        if not self.is_trained:
            self.backend_.train(x)
        self.backend_.add(x, ids)
        return self

    def set_params(self, **params: int) -> VectorIndex:
        """Set search-time knobs: ``nprobe`` (IVF), ``efSearch`` (HNSW), ``rerank`` (k' of
        Rerank), ``efConstruction`` (HNSW, before ``add``), any faiss ParameterSpace name."""
        for name, value in params.items():
            if name == "rerank":
                if not self.rerank_k_:
                    raise ConfigError(f"vector index {self.factory!r} has no Rerank stage")
                if int(value) < 1:
                    raise ConfigError(f"rerank k' must be ≥ 1, got {value}")
                self.rerank_k_ = int(value)
            else:
                self.backend_.set_param(name, value)
            self.params_[name] = int(value)
        return self

    # ------------------------------------------------------------ search
    def search(
        self,
        queries: np.ndarray,
        k: int,
        exclude: np.ndarray | Sequence[Sequence[int]] | sp.spmatrix | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k ids by similarity for each query.

        Args:
            queries: float32 (Q, D) or (D,).
            k: results per query.
            exclude: ids never to return: a 1-D array (for every query), a sequence of Q id
                lists (one per query), or a (Q, ≥N) sparse matrix whose row q's columns are
                excluded (e.g. ``train.csr[users]``).
        Returns:
            scores (Q, k) float32 descending, ids (Q, k) int64; ``-inf`` / ``-1`` where fewer.
        """
        q = queries
        if not (  # fast path for the serving case: a C-contiguous float32 (Q, D) array
            type(q) is np.ndarray and q.dtype == np.float32 and q.ndim == 2
            and q.shape[1] == self.dim and q.flags.c_contiguous
        ):
            q = self._as_matrix(queries, "queries")
        k = int(k)
        if k < 1:
            raise ConfigError(f"k must be ≥ 1, got {k}")
        n = self.backend_.ntotal
        if n == 0:
            raise NotFittedError(f"vector index {self.factory!r} is empty; add() vectors before search()")
        n_excl = 0
        if exclude is not None:
            excl_rows, excl_ids, n_excl = _exclusions(exclude, len(q))
        fetch = min(max(k, self.rerank_k_) + n_excl, n)
        if self.rerank_k_:
            # faiss's IndexRefineFlat re-scores the base index's top `fetch` exactly and returns
            # the best k + n_excl of them: enough for k after the exclusion
            scores, ids = self.backend_.search(q, min(k + n_excl, fetch), k_base=fetch)
        else:
            scores, ids = self.backend_.search(q, fetch)
        if not n_excl and ids.shape[1] == k and ids[:, -1].min() >= 0:
            return scores, ids  # no exclusion, no padding: the backend's answer as is
        invalid = ids < 0
        if n_excl:
            # one int64 key per (row, id) pair: row·base + id, with base above every id
            base = int(max(ids.max(initial=0), excl_ids.max(initial=0))) + 2
            keys = np.arange(len(q), dtype=np.int64)[:, None] * base + ids
            invalid |= np.isin(keys, excl_rows * base + excl_ids)
        any_invalid = bool(invalid.any())
        if any_invalid:
            scores = np.where(invalid, np.float32(-np.inf), scores)
            ids = np.where(invalid, -1, ids)
            order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
            scores = np.take_along_axis(scores, order, 1)
            ids = np.take_along_axis(ids, order, 1)
        else:
            scores, ids = scores[:, :k], ids[:, :k]
        if ids.shape[1] < k:  # fewer vectors than k
            pad = k - ids.shape[1]
            scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
            ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=-1)
        return np.ascontiguousarray(scores, dtype=np.float32), np.ascontiguousarray(ids, dtype=np.int64)

    # ------------------------------------------------------------ io
    def save(self, path: str | Path) -> Path:
        """Write the index directory (index.json + the engine's own file); returns path."""
        if self.ntotal == 0:
            raise NotFittedError(f"vector index {self.factory!r} is empty; nothing to save")
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        files = [self.backend_.file_name]
        self.backend_.save(path / self.backend_.file_name)
        (path / _LEGACY_VECTORS).unlink(missing_ok=True)  # a stale copy from an older save here
        meta = {
            "format": FORMAT,
            "factory": self.factory,
            "dim": self.dim,
            "metric": self.metric,
            "ntotal": self.ntotal,
            "params": self.params_,
            "files": {f: {"bytes": (path / f).stat().st_size, "xxh64": _xxh64(path / f)} for f in files},
        }
        (path / "index.json").write_text(json.dumps(meta, indent=1))
        return path

    @classmethod
    def load(
        cls, path: str | Path, mmap: bool = True, expected_dim: int | None = None, verify: bool = True
    ) -> VectorIndex:
        """Read an index directory written by `save`.

        mmap: map faiss's codes (SQ/PQ codes, the RFlat fp32 copy) read-only, shared between
        processes; a memory-mapped index cannot `add`. expected_dim: raise ArtifactError if the stored dim
        differs. verify: check each file's xxh64 (size is always checked).
        """
        path = Path(path)
        try:
            meta = json.loads((path / "index.json").read_text())
        except FileNotFoundError:
            raise ArtifactError(f"{path}: no vector index here (index.json missing)") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ArtifactError(f"{path}/index.json: corrupt ({e})") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise ArtifactError(f"{path}: not a {FORMAT} index (format={meta.get('format') if isinstance(meta, dict) else None!r})")
        if expected_dim is not None and meta["dim"] != expected_dim:
            raise ArtifactError(f"{path}: index dim {meta['dim']} != expected dim {expected_dim}")
        for name, info in meta["files"].items():
            f = path / name
            if not f.exists():
                raise ArtifactError(f"{path}: file {name} missing")
            if f.stat().st_size != info["bytes"]:
                raise ArtifactError(f"{f}: {f.stat().st_size} bytes, expected {info['bytes']} (truncated or corrupt)")
            if verify and _xxh64(f) != info["xxh64"]:
                raise ArtifactError(f"{f}: checksum mismatch (corrupt)")
        self = cls.__new__(cls)
        self.factory, self.dim, self.metric = meta["factory"], int(meta["dim"]), meta["metric"]
        self.engine_, self.base_factory_, self.rerank_k_ = parse_factory(self.factory)
        backend_cls = VECTOR_INDEXES.get(self.engine_)
        f = path / backend_cls.file_name
        try:
            if self.engine_ in ("hnswlib", "kdtree", "milvus"):  # files that do not record the dim and metric
                self.backend_ = backend_cls.load(f, self.base_factory_, mmap, self.dim, self.metric)
            else:
                self.backend_ = backend_cls.load(f, self.base_factory_, mmap)
        except RuntimeError as e:
            raise ArtifactError(f"{f}: cannot read index ({str(e).strip().splitlines()[-1][-120:]})") from None
        if self.ntotal != meta["ntotal"]:
            raise ArtifactError(f"{f}: holds {self.ntotal} vectors, index.json says {meta['ntotal']}")
        if getattr(self.backend_, "index", None) is not None and self.engine_ == "faiss":
            if self.backend_.index.d != self.dim:
                raise ArtifactError(f"{f}: faiss index dim {self.backend_.index.d} != index.json dim {self.dim}")
        if self.rerank_k_ and not isinstance(self.backend_.index, faiss.IndexRefine):
            self._wrap_legacy_rerank(path)
        params = meta.get("params", {})
        # efConstruction shaped the stored graph already; only search-time knobs are re-applied
        self.params_ = {k: v for k, v in params.items() if k in _BUILD_PARAMS}
        self.set_params(**{k: v for k, v in params.items() if k not in _BUILD_PARAMS})
        return self

    def _wrap_legacy_rerank(self, path: Path) -> None:
        """An index saved before Rerank became IndexRefineFlat: base ``index.faiss`` + fp32
        ``vectors.npy``. Wrap the two into the IndexRefineFlat the factory now builds (in RAM)."""
        f = path / _LEGACY_VECTORS
        if not f.exists():
            raise ArtifactError(
                f"{path}/index.faiss: factory {self.factory!r} has a Rerank stage but the file holds no "
                f"IndexRefineFlat and there is no {_LEGACY_VECTORS}; rebuild and save the index"
            )
        try:
            vectors = np.load(f)
        except (ValueError, OSError) as e:
            raise ArtifactError(f"{f}: corrupt ({e})") from None
        if vectors.shape != (self.ntotal, self.dim) or vectors.dtype != np.float32:
            raise ArtifactError(f"{f}: shape {vectors.shape} {vectors.dtype}, expected ({self.ntotal}, {self.dim}) float32")
        base = self.backend_.index
        rflat = faiss.IndexRefineFlat(base, faiss.swig_ptr(np.ascontiguousarray(vectors)))
        base.this.disown()
        rflat.own_fields = True
        rflat.metric_type = faiss.METRIC_L2 if self.metric == "l2" else faiss.METRIC_INNER_PRODUCT
        faiss.downcast_index(rflat.refine_index).metric_type = rflat.metric_type
        self.backend_.index = rflat
        self.backend_._init_search_params()

    # the artifact directory (core/persist.py) stores an index as this same directory format:
    # faiss's/hnswlib's own file + the factory string, never pickled
    def __persist_save__(self, directory: Path) -> dict:
        self.save(directory)
        return {}

    @classmethod
    def __persist_load__(cls, directory: Path, state: dict) -> VectorIndex:
        return cls.load(directory, mmap=False, verify=False)  # the artifact has checked every file's sha256

    # ------------------------------------------------------------ helpers
    def memory_bytes(self) -> int:
        """Bytes of the serialized index, the RFlat fp32 copy included (≈ resident memory)."""
        if self.engine_ == "faiss":
            return int(faiss.serialize_index(self.backend_.index).nbytes)
        if self.engine_ in ("kdtree", "milvus"):
            return self.backend_.memory_bytes()
        return int(self.ntotal * (self.dim * 4 + self.backend_.M * 2 * 4 + 16))

    def _as_matrix(self, x: np.ndarray, what: str) -> np.ndarray:
        x = np.asarray(x)
        if x.ndim == 1:
            x = x.reshape(1, -1)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ConfigError(f"{what} have shape {x.shape}; this index needs (N, {self.dim})")
        if not np.issubdtype(x.dtype, np.number):
            raise ConfigError(f"{what} must be numeric, got dtype {x.dtype}")
        return np.ascontiguousarray(x, dtype=np.float32)

    def _writable(self) -> None:
        if self.backend_.read_only:
            raise ArtifactError(f"vector index {self.factory!r} was loaded with mmap=True and is read-only")

    def __repr__(self) -> str:
        return f"VectorIndex({self.factory!r}, dim={self.dim}, metric={self.metric!r}, ntotal={self.ntotal})"


def _exclusions(exclude: Any, n_queries: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(row, id) pairs to exclude as two int64 arrays, and the largest count in one row."""
    empty = np.zeros(0, dtype=np.int64)
    if exclude is None:
        return empty, empty, 0
    if sp.issparse(exclude):
        m = sp.csr_matrix(exclude)
        if m.shape[0] != n_queries:
            raise ConfigError(f"exclude has {m.shape[0]} rows for {n_queries} queries")
        counts = np.diff(m.indptr)
        rows = np.repeat(np.arange(n_queries, dtype=np.int64), counts)
        return rows, m.indices.astype(np.int64), int(counts.max(initial=0))
    if isinstance(exclude, np.ndarray) and exclude.ndim == 1 and exclude.dtype != object:
        ids = exclude.astype(np.int64)
        rows = np.repeat(np.arange(n_queries, dtype=np.int64), len(ids))
        return rows, np.tile(ids, n_queries), len(ids)
    if len(exclude) != n_queries:
        raise ConfigError(f"exclude has {len(exclude)} id lists for {n_queries} queries")
    lists = [np.asarray(e, dtype=np.int64).reshape(-1) for e in exclude]
    counts = np.array([len(e) for e in lists], dtype=np.int64)
    rows = np.repeat(np.arange(n_queries, dtype=np.int64), counts)
    ids = np.concatenate(lists) if lists else empty
    return rows, ids, int(counts.max(initial=0))


def _xxh64(path: Path) -> str:
    from funnelrec.core.persist import file_digest

    return file_digest(path, xxhash.xxh64())
