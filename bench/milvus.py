"""Milvus (milvus-lite, embedded) next to faiss HNSW in one run. Prints one JSON object.

1. ANN: bench/ann.py's data (seeded gaussian mixture, inner product; --n 100000 by default, the
   ANN benchmark's quick size), recall@10 against exact and QPS (single queries one at a time,
   then one batch) of ``Milvus:HNSW,M=16,efConstruction=200`` and faiss ``HNSW16`` with
   efConstruction 200, the same efSearch sweep, one faiss search thread.
2. ml-100k: the vector (two-tower) channel, trained once (bench/two_tower.py's softmax settings,
   RecBole RS 8:1:1, seed 2020), its item vectors indexed by faiss HNSW16 and by Milvus HNSW with
   the same M/efConstruction/efSearch (and exact Flat), the channel's test NDCG@10 and recall@10
   for each.

    .venv/bin/python bench/milvus.py                 # ~5 min on 2 shared cores
    .venv/bin/python bench/milvus.py --n 20000 --skip-ml100k
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import time
from pathlib import Path

import faiss

sys.path.insert(0, str(Path(__file__).parent))
from ann import make_data, measure  # noqa: E402  (bench/ann.py: the ANN benchmark's data and timing)
from funnelrec.index import VectorIndex  # noqa: E402


def ann(a: argparse.Namespace) -> dict:
    x, q = make_data(a.n, a.dim, a.nq, a.clusters, a.noise, a.seed)
    flat = faiss.IndexFlatIP(a.dim)
    flat.add(x)
    truth = flat.search(q, 10)[1]
    out: dict = {"n": a.n, "dim": a.dim, "nq": a.nq, "n_single": a.n_single, "rows": []}
    factories = {"faiss": ("HNSW16", {"efConstruction": a.ef_construction}),
                 "milvus": (f"Milvus:HNSW,M=16,efConstruction={a.ef_construction}", {})}
    for backend, (factory, build_params) in factories.items():
        faiss.omp_set_num_threads(a.build_threads)
        t0 = time.perf_counter()
        index = VectorIndex(factory, a.dim).set_params(**build_params).add(x)
        build_s = time.perf_counter() - t0
        faiss.omp_set_num_threads(1)
        for ef in [int(e) for e in a.ef.split(",")]:
            index.set_params(efSearch=ef)
            m = measure(lambda qq, index=index: index.search(qq, 10)[1], q, truth, a.n_single)
            out["rows"].append({"backend": backend, "factory": factory, "efSearch": ef,
                                "build_s": round(build_s, 1), **m})
            print(json.dumps(out["rows"][-1]), file=sys.stderr, flush=True)
    best = {}
    for b in factories:
        ok = [r for r in out["rows"] if r["backend"] == b and r["recall"] >= 0.95]
        best[b] = max(ok, key=lambda r: r["qps_single"]) if ok else None
    out["best_at_recall_0.95"] = best
    if best["faiss"] and best["milvus"]:
        out["qps_single_ratio_milvus_over_faiss"] = round(best["milvus"]["qps_single"] / best["faiss"]["qps_single"], 4)
        out["qps_batch_ratio_milvus_over_faiss"] = round(best["milvus"]["qps_batch"] / best["faiss"]["qps_batch"], 4)
    return out


def ml100k(a: argparse.Namespace) -> dict:
    from funnelrec.core.config import from_dict
    from funnelrec.data import load_dataset
    from funnelrec.data.dataset import TrainData
    from funnelrec.data.splits import random_split_by_user
    from funnelrec.recall.vector import ItemIndex, VectorRecall, VectorRecallConfig
    from two_tower import COMMON, TUNED, _merge, evaluate

    ds = load_dataset("movielens-100k")
    split = random_split_by_user(ds.interactions, seed=2020)
    cfg = from_dict(VectorRecallConfig, _merge(_merge(COMMON, TUNED["softmax"]), {"epochs": a.epochs}))
    t0 = time.perf_counter()
    ch = VectorRecall(cfg).fit(TrainData(ds, split.train), valid=split.valid)
    out: dict = {"fit_s": round(time.perf_counter() - t0, 1), "epochs": a.epochs, "channels": {}}
    vectors = ch.item_vectors_
    faiss.omp_set_num_threads(1)
    for name, factory, params in [
        ("faiss Flat", "Flat", {}),
        ("faiss HNSW16", "HNSW16", {"efConstruction": 200, "efSearch": 64}),
        ("Milvus HNSW", "Milvus:HNSW,M=16,efConstruction=200", {"efSearch": 64}),
        ("Milvus FLAT", "Milvus:FLAT", {}),
    ]:
        variant = copy.copy(ch)  # the same trained towers and vectors; only the index differs
        variant.index_ = ItemIndex(factory, vectors.shape[1])
        build = {k: v for k, v in params.items() if k == "efConstruction"}
        variant.index_.index.set_params(**build)
        variant.index_.add(vectors)
        variant.index_.index.set_params(**{k: v for k, v in params.items() if k not in build})
        m = evaluate(variant, ds, split)
        out["channels"][name] = {"factory": factory, "params": params, **m}
        print(json.dumps({name: out["channels"][name]}), file=sys.stderr, flush=True)
    f, mv = out["channels"]["faiss HNSW16"], out["channels"]["Milvus HNSW"]
    out["ndcg@10_equal_hnsw"] = f["test"]["ndcg@10"] == mv["test"]["ndcg@10"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--nq", type=int, default=1000)
    ap.add_argument("--n-single", type=int, default=300, help="queries issued one at a time")
    ap.add_argument("--clusters", type=int, default=1000)
    ap.add_argument("--noise", type=float, default=0.8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ef", default="16,32,64,128")
    ap.add_argument("--ef-construction", type=int, default=200)
    ap.add_argument("--build-threads", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=30, help="two-tower epochs on ml-100k (early stopping)")
    ap.add_argument("--skip-ml100k", action="store_true")
    a = ap.parse_args()
    import milvus_lite
    import pymilvus

    res = {"machine": f"{platform.processor() or 'cpu'}, 2 cores shared with other sessions (noisy)",
           "date": time.strftime("%Y-%m-%d"), "pymilvus": pymilvus.__version__,
           "milvus_lite": getattr(milvus_lite, "__version__", "?"), "faiss": faiss.__version__,
           "ann": ann(a)}
    if not a.skip_ml100k:
        res["ml100k_vector_channel"] = ml100k(a)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
