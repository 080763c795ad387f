"""Artifact benchmark: the pickled funnel (format 1, "before") against the artifact directory
(format 2, "after") for one fitted funnel; prints one JSON object.

Fits the funnel of a serving YAML (dataset + funnel config, as bench/serving.py does, through
its `build_funnel`), then measures
- before: the stdlib pickle of the whole `Funnel` object: bytes, dump and full load seconds;
- after: the directory's total bytes and bytes per component, save seconds, full load seconds
  (with and without the sha256 check), `Funnel.load` seconds, and each part loaded alone.
Loads run with a warm page cache (the files were just written): the figures are
deserialization cost, not disk reads. Times are the median of `--repeats` runs.

    .venv/bin/python bench/artifact.py --quick                      # MovieLens-100k, configs/funnel/ml100k.yaml
    .venv/bin/python bench/artifact.py                              # the 1M-item world (fit ~10+ min)
    .venv/bin/python bench/artifact.py --dataset-params '{"n_users": 20000, "n_items": 100000,
        "n_interactions": 600000, "seed": 0}'                       # the same funnel, a medium world
"""

from __future__ import annotations

import argparse
import json
import pickle
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))


def _timed(fn, repeats: int) -> tuple[float, object]:
    out, times = None, []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def _spec(args: argparse.Namespace) -> dict:
    from funnelrec.core.config import load_yaml

    if args.quick:  # MovieLens-100k with the default funnel config
        return {"dataset": {"name": "movielens-100k"}, "funnel": load_yaml(ROOT / "configs" / "funnel" / "ml100k.yaml")}
    spec = load_yaml(args.config)
    if args.dataset_params:
        spec["dataset"]["params"] = {**spec["dataset"].get("params", {}), **json.loads(args.dataset_params)}
    if args.label_users is not None:
        spec["label_users"] = args.label_users
    spec["progress"] = False
    return spec


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--config", default=str(ROOT / "bench" / "serving_synthetic.yaml"))
    p.add_argument("--quick", action="store_true", help="MovieLens-100k with configs/funnel/ml100k.yaml")
    p.add_argument("--dataset-params", default=None, help="JSON merged into the YAML's dataset.params")
    p.add_argument("--label-users", type=int, default=None, help="override the YAML's label_users")
    p.add_argument("--repeats", type=int, default=None, help="runs per timing (default 3 with --quick, else 1)")
    p.add_argument("--workdir", default=None,
                   help="keep the fitted artifact here and reuse it when present (default: a temporary directory)")
    args = p.parse_args()
    repeats = args.repeats or (3 if args.quick else 1)

    from funnelrec.pipeline.artifact import load_artifact, read_manifest, save_artifact
    from funnelrec.pipeline.funnel import Funnel
    from serving import build_funnel

    spec = _spec(args)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        info_file = work / "artifact_info.json"
        if args.workdir and (work / "funnel" / "manifest.json").exists() and info_file.exists():
            info = json.loads(info_file.read_text())
            info["reused_artifact"] = True
        else:
            _, info, _ = build_funnel(spec, work)
            info.pop("artifact_mb", None)
            info_file.write_text(json.dumps(info))
        funnel = Funnel.load(work / "funnel")
        m0 = read_manifest(work / "funnel")

        # ---- before: the whole funnel pickled (what format 1 stored)
        pkl = work / "funnel.pkl"

        def dump() -> None:
            with open(pkl, "wb") as f:
                pickle.dump(funnel, f, protocol=pickle.HIGHEST_PROTOCOL)

        def unpickle() -> object:
            with open(pkl, "rb") as f:
                return pickle.load(f)

        t_dump, _ = _timed(dump, repeats)
        t_unpickle, _ = _timed(unpickle, repeats)
        before = {"bytes": pkl.stat().st_size, "mb": round(pkl.stat().st_size / 2**20, 1),
                  "dump_s": round(t_dump, 3), "load_s": round(t_unpickle, 3)}
        pkl.unlink()

        # ---- after: the artifact directory
        art = work / "bench-artifact"
        comps = funnel.components()
        t_save, _ = _timed(lambda: save_artifact(art, comps, config=m0["config"], schema=m0["schema"],
                                                 meta=m0.get("meta")), repeats)
        m = read_manifest(art)
        files = sum(len(e["files"]) for e in m["components"].values())
        total = sum(e["bytes"] for e in m["components"].values()) + (art / "manifest.json").stat().st_size
        t_full, _ = _timed(lambda: load_artifact(art), repeats)
        t_full_nv, _ = _timed(lambda: load_artifact(art, verify=False), repeats)
        t_funnel, _ = _timed(lambda: Funnel.load(art), repeats)
        parts = {}
        for name, e in m["components"].items():
            t, _ = _timed(lambda n=name: load_artifact(art, parts=[n]), repeats)
            t_nv, _ = _timed(lambda n=name: load_artifact(art, parts=[n], verify=False), repeats)
            parts[name] = {"bytes": e["bytes"], "mb": round(e["bytes"] / 2**20, 2), "files": len(e["files"]),
                           "class": e["class"], "load_s": round(t, 3), "load_no_verify_s": round(t_nv, 3)}
        after = {"bytes": total, "mb": round(total / 2**20, 1), "files": files + 1, "save_s": round(t_save, 3),
                 "load_s": round(t_full, 3), "load_no_verify_s": round(t_full_nv, 3),
                 "funnel_load_s": round(t_funnel, 3), "components": parts}
    print(json.dumps({"bench": "artifact", "config": "quick: movielens-100k + configs/funnel/ml100k.yaml"
                      if args.quick else args.config, "dataset": spec["dataset"], "repeats": repeats,
                      "python": platform.python_version(), "funnel": info,
                      "pickle_before": before, "artifact_after": after,
                      "size_ratio_after_over_before": round(total / before["bytes"], 3),
                      "load_ratio_after_over_before": round(t_full / before["load_s"], 3)
                      if before["load_s"] else None}, indent=1))


if __name__ == "__main__":
    main()
