"""Re-rank benchmark: our numpy re-rank over a memory-mapped fp32 ``vectors.npy`` (the
pre-2026-12 ``Rerank<k'>`` stage) against faiss's own ``IndexRefineFlat`` (factory ``,RFlat``),
on the same base index. Prints one JSON object.

    .venv/bin/python bench/ann_refine.py                           # 200k x 64, 1,000 queries
    .venv/bin/python bench/ann_refine.py --n 1000000 --cases sq8   # 1M x 64, SQ8 only

Both variants re-score the same number of candidates, k' = ``--rerank`` (SQ8) / ``--rerank-ivf``:
the numpy one fetches the base index's top max(k, k') and re-scores them with a gather + matmul;
RFlat searches with ``k_factor = k'/k``, which faiss turns into the same base fetch.

Every variant is loaded and searched in a fresh child process, so the figures of one do not
leak into the next: load time, RSS deltas after the load and after the searches (``RssAnon``:
private memory; ``RssFile``: file pages mapped in, which the page cache shares between the
serving workers of one machine), recall@k against an exact numpy top-k, single-query QPS
(one request at a time, ``--nq`` queries) and batch QPS (all queries in one call); one search
thread. Variants:

- ``numpy_mmap`` / ``numpy_ram``: base ``index.faiss`` (read with ``IO_FLAG_MMAP_IFC`` or not)
  + ``np.load(vectors.npy, mmap_mode="r" | None)``, exact re-score in numpy;
- ``rflat_mmap`` / ``rflat_ram``: one faiss file holding ``IndexRefineFlat`` (base + fp32 flat
  copy), read with ``IO_FLAG_MMAP_IFC`` or not;
- ``vectorindex_mmap`` / ``vectorindex_ram``: ``funnelrec.index.VectorIndex`` with the factory
  ``<base>,Rerank<k'>``, saved and loaded with ``load(mmap=…)`` (whatever the package ships).

Data: ``--data gaussian`` i.i.d. N(0, 1) vectors (seeded), ``--data mixture`` the gaussian
mixture of bench/ann.py; queries from the same distribution; metric inner product.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

VARIANTS = ("numpy_mmap", "numpy_ram", "rflat_mmap", "rflat_ram", "vectorindex_mmap", "vectorindex_ram")
MMAP_FLAGS = faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY


def make_data(kind: str, n: int, dim: int, nq: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    if kind == "gaussian":
        return rng.standard_normal((n, dim), np.float32), rng.standard_normal((nq, dim), np.float32)
    centers = rng.standard_normal((1000, dim)).astype(np.float32)  # bench/ann.py's defaults
    x = centers[rng.integers(0, 1000, n)] + 0.8 * rng.standard_normal((n, dim), np.float32)
    q = centers[rng.integers(0, 1000, nq)] + 0.8 * rng.standard_normal((nq, dim), np.float32)
    return x.astype(np.float32), q.astype(np.float32)


def exact_top(x: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    """numpy brute force: ids of the k largest ⟨q, x⟩ per query, (Q, k), in chunks of 100 queries."""
    out = np.empty((len(q), k), np.int64)
    for a in range(0, len(q), 100):
        s = q[a : a + 100] @ x.T
        part = np.argpartition(-s, k, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(s, part, 1), axis=1)
        out[a : a + 100] = np.take_along_axis(part, order, 1)
    return out


def status_mb() -> dict[str, float]:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("RssAnon", "RssFile")):
                out[line.split(":")[0]] = int(line.split()[1]) / 1024
    return out


def recall_at(ids: np.ndarray, truth: np.ndarray) -> float:
    hits = (ids[:, :, None] == truth[:, None, :]).any(axis=2).sum()
    return float(hits / truth.size)


# ---------------------------------------------------------------- child: one variant, fresh process
def child(variant: str, case_dir: Path, work: Path, k: int, rerank: int, nprobe: int | None) -> dict:
    faiss.omp_set_num_threads(1)
    q, truth = np.load(work / "queries.npy"), np.load(work / "truth.npy")
    mmap = variant.endswith("_mmap")
    from funnelrec.index import VectorIndex  # imported before the first RSS reading

    m0 = status_mb()
    t0 = time.perf_counter()
    if variant.startswith("numpy"):
        base = faiss.read_index(str(case_dir / "base.faiss"), MMAP_FLAGS if mmap else 0)
        vectors = np.load(case_dir / "vectors.npy", mmap_mode="r" if mmap else None)
        if nprobe:
            faiss.ParameterSpace().set_index_parameter(base, "nprobe", nprobe)
        fetch = max(k, rerank)

        def search(qq: np.ndarray) -> np.ndarray:  # the pre-2026-12 VectorIndex._rerank path
            _, ids = base.search(qq, fetch)
            xs = np.asarray(vectors)[np.maximum(ids, 0)]
            s = np.matmul(xs, qq[:, :, None])[:, :, 0]
            s[ids < 0] = -np.inf
            order = np.argsort(-s, axis=1, kind="stable")[:, :k]
            return np.take_along_axis(ids, order, 1)
    elif variant.startswith("rflat"):
        index = faiss.read_index(str(case_dir / "rflat.faiss"), MMAP_FLAGS if mmap else 0)
        if nprobe:
            faiss.ParameterSpace().set_index_parameter(index, "nprobe", nprobe)
        params = faiss.IndexRefineSearchParameters(k_factor=max(k, rerank) / k)

        def search(qq: np.ndarray) -> np.ndarray:
            return index.search(qq, k, params=params)[1]
    else:
        vi = VectorIndex.load(case_dir / "vectorindex", mmap=mmap, verify=False)
        if nprobe:
            vi.set_params(nprobe=nprobe)

        def search(qq: np.ndarray) -> np.ndarray:
            return vi.search(qq, k)[1]
    load_s = time.perf_counter() - t0
    m1 = status_mb()
    search(q[:1])  # warm-up
    ids = np.empty((len(q), k), np.int64)
    w0, c0 = time.perf_counter(), time.process_time()
    for i in range(len(q)):
        ids[i] = search(q[i : i + 1])[0]
    w1, c1 = time.perf_counter(), time.process_time()
    bids = search(q)
    w2, c2 = time.perf_counter(), time.process_time()
    m2 = status_mb()
    return {
        "variant": variant,
        "recall": round(recall_at(ids, truth), 4),
        "recall_batch": round(recall_at(bids, truth), 4),
        "batch_equals_single": bool((bids == ids).all()),
        "qps_single": round(len(q) / (w1 - w0), 1), "qps_single_cpu": round(len(q) / max(c1 - c0, 1e-9), 1),
        "qps_batch": round(len(q) / (w2 - w1), 1), "qps_batch_cpu": round(len(q) / max(c2 - c1, 1e-9), 1),
        "load_s": round(load_s, 4),
        "rss_anon_load_mb": round(m1["RssAnon"] - m0["RssAnon"], 1),
        "rss_file_load_mb": round(m1["RssFile"] - m0["RssFile"], 1),
        "rss_anon_after_search_mb": round(m2["RssAnon"] - m0["RssAnon"], 1),
        "rss_file_after_search_mb": round(m2["RssFile"] - m0["RssFile"], 1),
    }


# ---------------------------------------------------------------- parent: build, save, spawn
def build_case(base_factory: str, rerank: int, x: np.ndarray, case_dir: Path, build_threads: int) -> dict:
    """One trained base index, saved three ways: base + vectors.npy, IndexRefineFlat, VectorIndex."""
    from funnelrec.index import VectorIndex

    faiss.omp_set_num_threads(build_threads)
    case_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    base = faiss.index_factory(x.shape[1], base_factory, faiss.METRIC_INNER_PRODUCT)
    base.train(x)
    base.add(x)
    build_s = time.perf_counter() - t0
    faiss.write_index(base, str(case_dir / "base.faiss"))
    np.save(case_dir / "vectors.npy", x)
    # the same trained base: the two differ only in the re-rank (refine_index gets a copy of x)
    rflat = faiss.IndexRefineFlat(base, faiss.swig_ptr(x))
    faiss.write_index(rflat, str(case_dir / "rflat.faiss"))
    vi = VectorIndex(f"{base_factory},Rerank{rerank}", x.shape[1]).add(x)
    vi.save(case_dir / "vectorindex")
    size = {p.name: round(p.stat().st_size / 2**20, 1) for p in case_dir.glob("*.*")}
    size["vectorindex"] = {p.name: round(p.stat().st_size / 2**20, 1) for p in (case_dir / "vectorindex").iterdir()}
    return {"build_s": round(build_s, 1), "file_mb": size}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--nq", type=int, default=1000)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--data", choices=("gaussian", "mixture"), default="gaussian")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cases", default="sq8,ivf", help="comma list: sq8 (SQ8 + --rerank), ivf (--ivf + --rerank-ivf)")
    ap.add_argument("--rerank", type=int, default=40)
    ap.add_argument("--ivf", default="IVF1024,PQ32x4fs")
    ap.add_argument("--rerank-ivf", type=int, default=100)
    ap.add_argument("--nprobe", type=int, default=16)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--build-threads", type=int, default=2)
    ap.add_argument("--workdir", default="", help="default: a temporary directory, removed at the end")
    ap.add_argument("--child", nargs=6, metavar=("VARIANT", "CASE_DIR", "WORK", "K", "RERANK", "NPROBE"),
                    help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        v, case_dir, work, k, rerank, nprobe = a.child
        print(json.dumps(child(v, Path(case_dir), Path(work), int(k), int(rerank), int(nprobe) or None)))
        return

    t_start = time.perf_counter()
    tmp = tempfile.TemporaryDirectory(prefix="ann_refine_") if not a.workdir else None
    work = Path(a.workdir or tmp.name)  # type: ignore[union-attr]
    work.mkdir(parents=True, exist_ok=True)
    x, q = make_data(a.data, a.n, a.dim, a.nq, a.seed)
    w0 = time.perf_counter()
    truth = exact_top(x, q, a.k)
    truth_s = time.perf_counter() - w0
    np.save(work / "queries.npy", q)
    np.save(work / "truth.npy", truth)
    cases = {"sq8": ("SQ8", a.rerank, 0), "ivf": (a.ivf, a.rerank_ivf, a.nprobe)}
    results = []
    for name in filter(None, a.cases.split(",")):
        base_factory, rerank, nprobe = cases[name]
        case_dir = work / name
        built = build_case(base_factory, rerank, x, case_dir, a.build_threads)
        rows = []
        for v in filter(None, a.variants.split(",")):
            cmd = [sys.executable, __file__, "--child", v, str(case_dir), str(work), str(a.k), str(rerank), str(nprobe)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True)
            row = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(json.dumps({"case": name, **row}), file=sys.stderr, flush=True)
        results.append({"case": name, "base": base_factory, "rerank": rerank, "nprobe": nprobe or None,
                        **built, "rows": rows})
    print(json.dumps({
        "bench": "ann_refine", "n": a.n, "dim": a.dim, "nq": a.nq, "k": a.k, "data": a.data, "seed": a.seed,
        "search_threads": 1, "faiss": faiss.__version__, "numpy": np.__version__,
        "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
        "load_avg_end": os.getloadavg(), "truth_s": round(truth_s, 2),
        "total_s": round(time.perf_counter() - t_start, 1), "cases": results,
    }))
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
