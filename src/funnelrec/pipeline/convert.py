"""Format 1 → 2, offline: a pickled `Funnel` (format 1) rewritten as an artifact directory.

This module UNPICKLES — it runs whatever code the file names — so it is never on the serve path:
`funnelrec artifact convert OLD NEW`, once, on files you trust. It sits above both the artifact
(pipeline/artifact.py) and the funnel (pipeline/funnel.py), which know nothing of the old format
beyond the error that points here.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from funnelrec.core.errors import ArtifactError
from funnelrec.core.persist import record_build, record_init
from funnelrec.pipeline.artifact import PICKLE_MAGIC, dataset_schema, plain_data, save_artifact
from funnelrec.pipeline.funnel import FunnelStats


def convert_pickle_artifact(old: str | Path, new: str | Path) -> Path:
    """Rewrite a format-1 pickled funnel as an artifact directory. This UNPICKLES `old` (runs
    whatever code it names): use it once, offline, on files you trust. Classes of the pickle
    must still exist under their old names."""
    old, new = Path(old), Path(new)
    funnel = _unpickle_format1(old)
    components = legacy_components(funnel)
    _fill_new_fields(getattr(funnel, "config", None))
    for name, obj in components.items():
        _fill_new_fields(getattr(obj, "config", None))
        _migrate_session2(obj)
        _record_legacy_modules(obj, name)
    config = getattr(funnel, "config", None)
    dataset = components.get("dataset")
    meta = {"converted_from": str(old), "fit_seconds": dict(funnel.__dict__.get("fit_seconds_", {}))}
    return save_artifact(new, components, config=plain_data(config), schema=dataset_schema(dataset), meta=meta)


def _fill_new_fields(cfg: Any, seen: set[int] | None = None) -> None:
    """A config dataclass pickled before some fields existed lacks them in its __dict__; a field
    with a plain default reads it from the class, one with a default_factory (dict, list, a nested
    config) has nothing to read: set each missing field to its default, nested configs too."""
    seen = set() if seen is None else seen
    if not dataclasses.is_dataclass(cfg) or isinstance(cfg, type) or id(cfg) in seen:
        return
    seen.add(id(cfg))
    for f in dataclasses.fields(cfg):
        if f.name not in cfg.__dict__ and f.default is dataclasses.MISSING \
                and f.default_factory is not dataclasses.MISSING:
            object.__setattr__(cfg, f.name, f.default_factory())
        value = cfg.__dict__.get(f.name)
        for v in (value if isinstance(value, list | tuple) else [value]):
            _fill_new_fields(v, seen)


#: classes that moved since format 1 was written: old import path → new
MOVED = {("funnelrec.pipeline.stages", "PreRanker"): ("funnelrec.train.prerank", "PreRanker")}


def _unpickle_format1(path: Path) -> Any:
    """The pickled funnel, with the classes that moved found at their new homes."""
    import importlib
    import pickle

    class _Unpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            module, name = MOVED.get((module, name), (module, name))
            if module.startswith("funnelrec.") or module == "funnelrec":
                return getattr(importlib.import_module(module), name)
            return super().find_class(module, name)

    try:
        with open(path, "rb") as f:
            if f.read(len(PICKLE_MAGIC)) != PICKLE_MAGIC:
                raise ArtifactError(f"{path}: not a format-1 funnelrec funnel file")
            return _Unpickler(f).load()
    except FileNotFoundError:
        raise ArtifactError(f"{path}: funnel file not found") from None
    except (pickle.UnpicklingError, EOFError, AttributeError, ValueError, ImportError) as e:
        raise ArtifactError(f"{path}: cannot convert this pickled funnel ({e}); re-train it with `funnelrec train`") from None


def _migrate_session2(obj: Any) -> None:
    """Format-1 funnels from before session 3 hold a `CandidateRanker` whose features were its
    own attributes (encoder_, match_, mean_, std_): give it the `RankFeatures` it has now, built
    from the same fitted tables (the same numbers: static fields are embedding-row gathers)."""
    from funnelrec.features.candidates import RankFeatures
    from funnelrec.train.candidate_ranker import CandidateRanker

    if not isinstance(obj, CandidateRanker) or "features_" in obj.__dict__:
        return
    d = obj.__dict__
    missing = [k for k in ("encoder_", "match_", "mean_", "std_") if k not in d]
    if missing:
        raise ArtifactError(f"the pickled ranker lacks {', '.join(missing)}; re-train it with `funnelrec train`")
    enc = d.pop("encoder_")
    cfg = obj.config
    rf = RankFeatures(tuple(cfg.user_columns), tuple(cfg.item_columns), bool(cfg.include_ids))
    rf.user_rows_ = np.ascontiguousarray(enc.user_rows_)
    rf.item_rows_ = np.ascontiguousarray(enc.item_rows_)
    rf.spec_ = d.get("spec_")
    rf.match_ = d.pop("match_")
    rf.mean_, rf.std_ = d.pop("mean_"), d.pop("std_")
    d.pop("weights_", None)  # the old per-ranker fusion weights: fusion is the funnel's, one `fuse`
    d["features_"] = rf
    # a config pickled before fields were added reads them from the class defaults: store them
    import dataclasses

    if dataclasses.is_dataclass(cfg):
        fields = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
        obj.config = type(cfg)(**fields)


def legacy_components(funnel: Any) -> dict[str, Any]:
    """The components of an unpickled format-1 funnel: `components()` where the funnel has
    it, else read from its attributes (dataset_, history_ + item_log_pop_ + user_log_act_ →
    stats, channels_, ranker_, prerank_)."""
    d = funnel.__dict__
    if "stats_" in d and callable(getattr(funnel, "components", None)):
        return funnel.components()
    missing = [k for k in ("dataset_", "channels_", "history_", "item_log_pop_", "user_log_act_") if k not in d]
    if missing:
        raise ArtifactError(f"the pickled funnel lacks {', '.join(missing)} (not fitted, or not a funnel)")
    ds = d["dataset_"]
    out: dict[str, Any] = {"dataset": ds.catalogue() if hasattr(ds, "catalogue") else ds,
                           "stats": FunnelStats(d["history_"], d["item_log_pop_"], d["user_log_act_"])}
    out.update({f"channels/{n}": ch for n, ch in d["channels_"].items()})
    for k in ("ranker", "prerank"):
        if d.get(k + "_") is not None:
            out[k] = d[k + "_"]
    return out


def _record_legacy_modules(obj: Any, where: str, seen: set[int] | None = None) -> None:
    """Give every nn.Module in `obj`'s tree that was built before constructor records existed
    the record it would have got (ranking models through build_ranker, the two towers by their
    sizes); anything else is left for save_state to name."""
    import torch

    seen = set() if seen is None else seen
    if id(obj) in seen or isinstance(obj, str | bytes | int | float | torch.Tensor) or obj is None:
        return
    seen.add(id(obj))
    if isinstance(obj, torch.nn.Module):
        if "_persist_init_" not in obj.__dict__:
            _infer_record(obj)
        return
    if isinstance(obj, dict):
        vals = list(obj.values())
    elif isinstance(obj, list | tuple | set | frozenset):
        vals = list(obj)
    else:
        vals = list(getattr(obj, "__dict__", {}).values())
    for v in vals:
        _record_legacy_modules(v, where, seen)


def _infer_record(m: Any) -> None:
    from torch import nn

    from funnelrec.core.registry import RANKERS
    from funnelrec.models.ranking.common import _plain, build_ranker, load_all
    from funnelrec.models.ranking.prerank import TwoTowerPrerank
    from funnelrec.models.recall.two_tower import TwoTowerModel

    load_all()
    name = getattr(type(m), "registered_name", None)
    if name in RANKERS and RANKERS.get(name) is type(m) and hasattr(m, "spec"):
        cfg = getattr(m, "config", None)
        record_build(m, build_ranker, name, m.spec, _plain(cfg) if dataclasses.is_dataclass(cfg) else {})
    elif type(m) is TwoTowerModel:
        record_init(m, m.spec, m.config, sparse_grad=bool(m.item_id.sparse))
    elif type(m) is TwoTowerPrerank:
        linears = [x for x in m.user_tower.mlp if isinstance(x, nn.Linear)]
        record_init(m, m.user_emb.num_embeddings, linears[-1].out_features,
                    tuple(x.out_features for x in linears[:-1]), m.user_emb.embedding_dim,
                    0 if m.dense is None else m.dense.in_features)
