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

from funnelrec.core.errors import ArtifactError
from funnelrec.core.persist import record_build, record_init
from funnelrec.pipeline.artifact import PICKLE_MAGIC, dataset_schema, plain_data, save_artifact
from funnelrec.pipeline.funnel import FunnelStats


def convert_pickle_artifact(old: str | Path, new: str | Path) -> Path:
    """Rewrite a format-1 pickled funnel as an artifact directory. This UNPICKLES `old` (runs
    whatever code it names): use it once, offline, on files you trust. Classes of the pickle
    must still exist under their old names."""
    from funnelrec.core.artifact import load_pickle

    old, new = Path(old), Path(new)
    funnel = load_pickle(old, PICKLE_MAGIC, object, "funnel", hint="")
    components = legacy_components(funnel)
    for name, obj in components.items():
        _record_legacy_modules(obj, name)
    config = getattr(funnel, "config", None)
    dataset = components.get("dataset")
    meta = {"converted_from": str(old), "fit_seconds": dict(funnel.__dict__.get("fit_seconds_", {}))}
    return save_artifact(new, components, config=plain_data(config), schema=dataset_schema(dataset), meta=meta)


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
    out: dict[str, Any] = {"dataset": d["dataset_"],
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
