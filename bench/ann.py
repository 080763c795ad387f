"""ANN benchmark: recall@k vs exact and QPS of every VectorIndex backend, with faiss HNSW32 and
hnswlib as peers measured in the same run. One search thread (faiss omp, hnswlib); builds use
--build-threads. Prints one JSON object.

    .venv/bin/python bench/ann.py --n 100000          # quick
    .venv/bin/python bench/ann.py                     # 1M x 64, 1,000 queries (several minutes)
    .venv/bin/python bench/ann.py --crossover         # KD-tree vs Flat vs HNSW32 at D = 8/16/32/64, N = 100k

Data: a seeded gaussian mixture (--clusters centers ~ N(0, 1), unit-variance-scaled noise of
--noise), queries drawn from the same mixture; metric inner product (two-tower scores).
QPS "single" issues queries one at a time (a serving request), "batch" all at once; "cpu" QPS
divide by process CPU time, which on a shared machine is steadier than wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import faiss
import numpy as np

from funnelrec.index import VectorIndex


def make_data(n: int, dim: int, nq: int, clusters: int, noise: float, seed: int):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((clusters, dim)).astype(np.float32)
    x = np.empty((n, dim), np.float32)
    step = 200_000
    for a in range(0, n, step):  # chunked: keeps the float64 temporaries small
        b = min(n, a + step)
        x[a:b] = centers[rng.integers(0, clusters, b - a)] + noise * rng.standard_normal((b - a, dim), np.float32)
    q = centers[rng.integers(0, clusters, nq)] + noise * rng.standard_normal((nq, dim), np.float32)
    return x, q.astype(np.float32)


def rss_anon_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon"):
                return int(line.split()[1]) / 1024
    return float("nan")


def recall_at(ids: np.ndarray, truth: np.ndarray) -> float:
    k = truth.shape[1]
    hits = (ids[:, :, None] == truth[:, None, :]).any(axis=2).sum()
    return float(hits / (len(truth) * k))


def measure(search: Callable[[np.ndarray], np.ndarray], q: np.ndarray, truth: np.ndarray, n_single: int,
            batch: bool = True) -> dict:
    """Single-query loop over the first n_single queries, then one batch call over all."""
    out = {}
    ids = np.empty((n_single, truth.shape[1]), np.int64)
    w0, c0 = time.perf_counter(), time.process_time()
    for i in range(n_single):
        ids[i] = search(q[i : i + 1])[0]
    w1, c1 = time.perf_counter(), time.process_time()
    out["recall"] = round(recall_at(ids, truth[:n_single]), 4)
    out["qps_single"] = round(n_single / (w1 - w0), 1)
    out["qps_single_cpu"] = round(n_single / max(c1 - c0, 1e-9), 1)
    out["n_single"] = n_single
    if batch:
        w0, c0 = time.perf_counter(), time.process_time()
        bids = search(q)
        w1, c1 = time.perf_counter(), time.process_time()
        out["recall_batch"] = round(recall_at(bids, truth), 4)
        out["qps_batch"] = round(len(q) / (w1 - w0), 1)
        out["qps_batch_cpu"] = round(len(q) / max(c1 - c0, 1e-9), 1)
    return out


class Timer:
    def __enter__(self):
        self.m0, self.w0, self.c0 = rss_anon_mb(), time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.build_s = round(time.perf_counter() - self.w0, 2)
        self.build_cpu_s = round(time.process_time() - self.c0, 2)
        self.mem_mb = round(rss_anon_mb() - self.m0, 1)


def crossover(a: argparse.Namespace) -> None:
    """Where the exact KD-tree stops paying off: for each D in --dims, the same seeded mixture
    (N = --n, default 100k here), recall@k and QPS (single query and batch, one search thread)
    of KDTree (scipy cKDTree; inner product by the MIPS→L2 transform) next to Flat (faiss's
    exact scan) and HNSW32 (efSearch 16 / 64 / 128), all in one run. `kdtree_vs_flat` is
    KD-tree QPS / Flat QPS per D (> 1: the tree pays off); `stops_paying_off_at_dim` is the
    first D where the KD-tree's single-query CPU QPS falls below Flat's, per metric (--metric
    ip,l2: the two-tower score through the transform, and L2, the tree's native metric)."""
    k = a.k
    t_start = time.perf_counter()
    dims = [int(d) for d in a.dims.split(",")]
    rows: list[dict] = []
    metrics = a.metric.split(",")
    ratios: dict[str, dict[int, dict]] = {m: {} for m in metrics}
    for metric, dim in [(m, d) for m in metrics for d in dims]:
        x, q = make_data(a.n, dim, a.nq, a.clusters, a.noise, a.seed)
        faiss.omp_set_num_threads(1)
        flat = VectorIndex("Flat", dim, metric=metric).add(x)
        w0 = time.perf_counter()
        _, truth = flat.backend_.index.search(q, k)
        truth_s = time.perf_counter() - w0
        n_single = min(a.nq_slow, a.nq)

        def add_row(name: str, params: dict, build_s: float | None, index: VectorIndex, m: dict, dim: int = dim,
                    metric: str = metric) -> dict:
            r = {"metric": metric, "dim": dim, "backend": name, "params": params, **m, "index_mb": round(index.memory_bytes() / 2**20, 1)}
            if build_s is not None:
                r["build_s"] = round(build_s, 2)
            rows.append(r)
            print(json.dumps(r), flush=True, file=__import__("sys").stderr)
            return r

        m = measure(lambda qq, f=flat: f.search(qq, k)[1], q, truth, n_single, batch=False)
        m.update(qps_batch=round(a.nq / truth_s, 1), recall_batch=1.0)
        r_flat = add_row("Flat", {}, None, flat, m)
        flat = None
        w0 = time.perf_counter()
        kd = VectorIndex("KDTree", dim, metric=metric).add(x)
        kd_build = time.perf_counter() - w0
        r_kd = add_row("KDTree", {"leaf_size": 16}, kd_build, kd,
                       measure(lambda qq, i=kd: i.search(qq, k)[1], q, truth, n_single))
        kd = None
        faiss.omp_set_num_threads(a.build_threads)
        w0 = time.perf_counter()
        h = VectorIndex("HNSW32", dim, metric=metric).set_params(efConstruction=a.ef_construction).add(x)
        h_build = time.perf_counter() - w0
        faiss.omp_set_num_threads(1)
        for i, ef in enumerate((16, 64, 128)):
            h.set_params(efSearch=ef)
            add_row("HNSW32", {"efSearch": ef}, h_build if i == 0 else None, h,
                    measure(lambda qq, i=h: i.search(qq, k)[1], q, truth, a.nq))
        h = None
        ratios[metric][dim] = {"single": round(r_kd["qps_single"] / r_flat["qps_single"], 2),
                       "single_cpu": round(r_kd["qps_single_cpu"] / r_flat["qps_single_cpu"], 2),
                       "batch": round(r_kd["qps_batch"] / r_flat["qps_batch"], 2)}
    stops = {m: next((d for d in dims if ratios[m][d]["single_cpu"] < 1.0), None) for m in metrics}
    print(json.dumps({
        "bench": "ann_kdtree_crossover", "n": a.n, "dims": dims, "nq": a.nq, "nq_single_scan": min(a.nq_slow, a.nq),
        "k": k, "metrics": metrics, "clusters": a.clusters, "noise": a.noise, "seed": a.seed,
        "search_threads": 1, "build_threads": a.build_threads, "faiss": faiss.__version__,
        "scipy": __import__("scipy").__version__, "cpus": os.cpu_count(), "load_avg_end": os.getloadavg(),
        "total_s": round(time.perf_counter() - t_start, 1),
        "kdtree_vs_flat_qps": ratios, "stops_paying_off_at_dim": stops, "rows": rows,
    }))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--nq", type=int, default=1000)
    ap.add_argument("--nq-slow", type=int, default=100, help="single queries for scan backends (Flat, SQ8, LSH)")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--clusters", type=int, default=1000)
    ap.add_argument("--noise", type=float, default=0.8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--build-threads", type=int, default=2)
    ap.add_argument("--ivf", default="IVF1024,PQ32x4fs,Rerank100;IVF1024,PQ64x4fs,Rerank100", help="';'-separated IVF factories")
    ap.add_argument("--nprobe", default="4,16")
    ap.add_argument("--rerank", default="100,200,400")
    ap.add_argument("--truth-cache", default="/tmp/funnelrec-bench", help="'' disables")
    ap.add_argument("--ef-construction", type=int, default=40, help="all graphs (faiss's default is 40)")
    ap.add_argument("--skip", default="", help="comma list of groups to skip: flat,sq8,lsh,ivf,faiss_hnsw,hnswlib")
    ap.add_argument("--crossover", action="store_true", help="KD-tree vs Flat vs HNSW32 over --dims (N default 100k)")
    ap.add_argument("--dims", default="8,16,32,64", help="--crossover: comma list of dimensions")
    ap.add_argument("--metric", default="ip,l2", help="--crossover: comma list of ip / l2")
    a = ap.parse_args()
    if a.crossover:
        if a.n == ap.get_default("n"):
            a.n = 100_000
        crossover(a)
        return
    skip = set(filter(None, a.skip.split(",")))
    k = a.k
    t_start = time.perf_counter()
    x, q = make_data(a.n, a.dim, a.nq, a.clusters, a.noise, a.seed)
    rows: list[dict] = []

    def row(backend: str, peer: bool, params: dict, build: Timer | None, mem_bytes: int | None, m: dict) -> None:
        r = {"backend": backend, "peer": peer, "params": params, **m}
        if build is not None:
            r.update(build_s=build.build_s, build_cpu_s=build.build_cpu_s, rss_mb=build.mem_mb)
        if mem_bytes is not None:
            r["index_mb"] = round(mem_bytes / 2**20, 1)
        rows.append(r)
        print(json.dumps(r), flush=True, file=__import__("sys").stderr)

    def build_threads() -> None:
        faiss.omp_set_num_threads(a.build_threads)

    def search_threads() -> None:
        faiss.omp_set_num_threads(1)

    # ---- exact (truth) — also the "Flat" backend
    search_threads()
    flat = VectorIndex("Flat", a.dim).add(x)
    cache = Path(a.truth_cache) / f"ann_truth_{a.n}_{a.dim}_{a.nq}_{a.clusters}_{a.noise}_{a.seed}_{k}.npz"
    w0 = time.perf_counter()
    if a.truth_cache and cache.exists():  # the exact batch scan takes minutes on a loaded machine
        truth, truth_s = np.load(cache)["truth"], float(np.load(cache)["seconds"])
    else:
        _, truth = flat.backend_.index.search(q, k)
        truth_s = time.perf_counter() - w0
        if a.truth_cache:
            cache.parent.mkdir(parents=True, exist_ok=True)
            np.savez(cache, truth=truth, seconds=truth_s)
    if "flat" not in skip:
        m = measure(lambda qq, f=flat: f.search(qq, k)[1], q, truth, min(a.nq_slow, a.nq), batch=False)
        m.update(qps_batch=round(a.nq / truth_s, 1))
        row("Flat", False, {}, None, flat.memory_bytes(), m)
    flat = None  # free the 256 MB before the next build

    def ours(factory: str, sweep: list[dict], pre: dict | None = None, n_single: int | None = None,
             batch: bool = True) -> VectorIndex:
        build_threads()
        with Timer() as t:
            index = VectorIndex(factory, a.dim)
            if pre:
                index.set_params(**pre)
            index.add(x)
        search_threads()
        for i, params in enumerate(sweep):
            index.set_params(**params)
            m = measure(lambda qq: index.search(qq, k)[1], q, truth, n_single or a.nq, batch)
            row(factory, False, {**(pre or {}), **params}, t if i == 0 else None, index.memory_bytes(), m)
        return index

    # ---- INT8 scan + fp32 re-rank
    if "sq8" not in skip:
        ours("SQ8,Rerank40", [{}], n_single=min(a.nq_slow, a.nq))
    # ---- LSH (+ re-rank)
    if "lsh" not in skip:
        ours("LSHrt,Rerank400", [{}], n_single=min(a.nq_slow, a.nq), batch=False)
    # ---- IVF-PQ fast-scan + fp32 re-rank
    if "ivf" not in skip:
        nprobes = [int(v) for v in a.nprobe.split(",")]
        reranks = [int(v) for v in a.rerank.split(",")]
        for factory in filter(None, a.ivf.split(";")):
            ivf = ours(factory, [{"nprobe": p, "rerank": r} for p in nprobes for r in reranks])
            # the same IVF index without re-rank: the base inside faiss's IndexRefineFlat
            raw = faiss.downcast_index(ivf.backend_.index.base_index)
            for p in (nprobes[0], nprobes[-1]):
                faiss.ParameterSpace().set_index_parameter(raw, "nprobe", p)
                m = measure(lambda qq, r=raw: r.search(qq, k)[1], q, truth, a.nq)
                row(f"{ivf.base_factory_} (no rerank, raw faiss)", False, {"nprobe": p}, None, None, m)
            ivf = raw = None

    efs = [16, 32, 64, 128, 256]
    # ---- faiss HNSW32: the same graph searched raw (peer) and through VectorIndex (ours)
    if "faiss_hnsw" not in skip:
        build_threads()
        with Timer() as t:
            h = VectorIndex("HNSW32", a.dim).set_params(efConstruction=a.ef_construction).add(x)
        search_threads()
        raw = h.backend_.index
        for i, ef in enumerate(efs):
            raw.hnsw.efSearch = ef
            m = measure(lambda qq: raw.search(qq, k)[1], q, truth, a.nq)
            row(f"faiss HNSW32 (raw faiss, efConstruction {a.ef_construction})", True, {"efSearch": ef}, t if i == 0 else None,
                h.memory_bytes(), m)
            m = measure(lambda qq: h.search(qq, k)[1], q, truth, a.nq)
            row("HNSW32", False, {"efSearch": ef}, None, None, m)
        del h, raw

    # ---- hnswlib: raw peers M=16/32 and ours through VectorIndex("HNSWLIB…")
    if "hnswlib" not in skip:
        import hnswlib

        for M in (16, 32):
            with Timer() as t:
                ours_h = VectorIndex(f"HNSWLIB{M}", a.dim).set_params(efConstruction=a.ef_construction)
                ours_h.add(x[:1])  # init, then build with the build threads
                ours_h.backend_.index.set_num_threads(a.build_threads)
                ours_h.backend_.index.resize_index(a.n)
                ours_h.backend_.index.add_items(x[1:], np.arange(1, a.n))
            raw_h: hnswlib.Index = ours_h.backend_.index
            raw_h.set_num_threads(1)
            for i, ef in enumerate(efs):
                raw_h.set_ef(ef)
                m = measure(lambda qq, r=raw_h: r.knn_query(qq, k=k)[0], q, truth, a.nq)
                row(f"hnswlib M={M} (raw, ef_construction {a.ef_construction})", True, {"ef": ef}, t if i == 0 else None,
                    ours_h.memory_bytes(), m)
                ours_h.set_params(efSearch=ef)
                m = measure(lambda qq, o=ours_h: o.search(qq, k)[1], q, truth, a.nq)
                row(f"HNSWLIB{M}", False, {"efSearch": ef}, None, None, m)
            del ours_h, raw_h

    # ---- summary: best QPS at recall >= 0.95, ours vs faiss HNSW32
    def best(pred) -> dict | None:
        ok = [r for r in rows if pred(r) and r["recall"] >= 0.95]
        return max(ok, key=lambda r: r["qps_single_cpu"]) if ok else None

    b_ours = best(lambda r: not r["peer"] and r["backend"] != "Flat")
    b_faiss = best(lambda r: r["backend"].startswith("faiss HNSW32"))
    b_hnswlib = best(lambda r: r["backend"].startswith("hnswlib"))
    summary = {
        "best_ours_at_r95": b_ours and {k2: b_ours[k2] for k2 in ("backend", "params", "recall", "qps_single", "qps_single_cpu")},
        "faiss_hnsw32_at_r95": b_faiss and {k2: b_faiss[k2] for k2 in ("params", "recall", "qps_single", "qps_single_cpu")},
        "hnswlib_at_r95": b_hnswlib and {k2: b_hnswlib[k2] for k2 in ("backend", "params", "recall", "qps_single", "qps_single_cpu")},
    }
    if b_ours and b_faiss:
        summary["ratio_ours_vs_faiss_hnsw32_cpu_qps"] = round(b_ours["qps_single_cpu"] / b_faiss["qps_single_cpu"], 2)
    print(json.dumps({
        "bench": "ann",
        "n": a.n, "dim": a.dim, "nq": a.nq, "k": k, "clusters": a.clusters, "noise": a.noise,
        "search_threads": 1, "build_threads": a.build_threads,
        "faiss": faiss.__version__, "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(), "load_avg_end": os.getloadavg(),
        "truth_batch_s": round(truth_s, 2), "total_s": round(time.perf_counter() - t_start, 1),
        "summary": summary, "rows": rows,
    }))


if __name__ == "__main__":
    main()
