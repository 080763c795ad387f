"""The funnel config checked against the data before anything is fitted.

A channel's or the ranker's missing column used to surface as a DataError from deep inside a
fit, minutes in, naming neither the config key nor the fix. `check_against(config, dataset)`
reads only the config and the tables' column lists (and the event column's distinct values),
and raises one ConfigError naming the key:

    funnel config: rank.item_columns[1]: 'genres' is not an items column; the items table has: item_id, brand

Checked: the data is not empty; rank.user_columns / item_columns / match_columns; rerank.column
(with cap/mmr); every channel's column parameters (fields named `*column` / `*columns` of its
config class, the defaults included: a default is a value too); labels (data/source.py); every
rank task has a label source. `FunnelBuilder.fit` calls it first.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import polars as pl

from funnelrec.core.config import from_dict
from funnelrec.core.errors import ConfigError, DataError
from funnelrec.pipeline.config import FunnelConfig

#: channel config fields that name a column of another table than items ((kind, field) first)
_TABLE_OF_FIELD = {"user_columns": "users", "user_column": "users", "label_column": "interactions",
                   ("geo", "column"): "users"}


def _columns(df: pl.DataFrame) -> list[str]:
    return [c for c in df.columns if c not in ("user_idx", "item_idx")]


def _need(table: str, tables: dict[str, pl.DataFrame], col: Any, key: str) -> None:
    have = _columns(tables[table])
    if not isinstance(col, str) or col not in have:
        raise ConfigError(f"funnel config: {key}: {col!r} is not a{'n' if table[0] in 'iu' else ''} {table} column; "
                          f"the {table} table has: {', '.join(have)}")


def check_against(config: FunnelConfig, dataset: Any, train: pl.DataFrame | None = None) -> None:
    """Raise ConfigError (naming the config key) or DataError (empty data) before any fit."""
    inter = dataset.interactions if train is None else train
    if inter.height == 0:
        raise DataError(f"dataset {dataset.name!r}: 0 interactions to fit on (an empty file or a header only)")
    tables = {"users": dataset.users, "items": dataset.items, "interactions": inter}
    rs = config.rank
    for key, table in (("user_columns", "users"), ("item_columns", "items"), ("match_columns", "items")):
        for i, c in enumerate(getattr(rs, key)):
            _need(table, tables, c, f"rank.{key}[{i}]")
    if config.rerank.method != "none":
        _need("items", tables, config.rerank.column, "rerank.column")
    _check_channels(config, tables)
    config.labels.check(inter, where="funnel config: labels")
    _check_tasks(config, inter)


def _check_channels(config: FunnelConfig, tables: dict[str, pl.DataFrame]) -> None:
    import funnelrec.recall  # noqa: F401  (registers every channel)
    from funnelrec.core.registry import RECALL_CHANNELS

    for i, spec in enumerate(config.recall.channels):
        cfg_cls = getattr(RECALL_CHANNELS.get(spec.kind), "config_class", None)
        if cfg_cls is None or not dataclasses.is_dataclass(cfg_cls):
            continue
        cfg = from_dict(cfg_cls, dict(spec.params), "funnel config", path=f"recall.channels[{i}].params")
        for f in dataclasses.fields(cfg):
            if not (f.name.endswith("column") or f.name.endswith("columns")):
                continue
            value = getattr(cfg, f.name)
            table = _TABLE_OF_FIELD.get((spec.kind, f.name), _TABLE_OF_FIELD.get(f.name, "items"))
            key = f"recall.channels[{i}].params.{f.name}"
            if f.name.endswith("columns") and isinstance(value, list | tuple):
                for j, c in enumerate(value):
                    _need(table, tables, c, f"{key}[{j}]")
            elif isinstance(value, str) and value:  # "" / None: the channel picks one from the schema
                _need(table, tables, value, key)


def _check_tasks(config: FunnelConfig, inter: pl.DataFrame) -> None:
    """Each rank task has labels: ctr (every interaction), a labels.map task, a column of the task's
    name (or the one rank.task_columns names), like ← rating."""
    mapped = set(config.labels.tasks)
    named = dict(getattr(config.rank, "task_columns", {}) or {})
    for t in config.rank.tasks:
        col = named.get(t, t)
        if t == "ctr" or t in mapped or col in inter.columns or (t == "like" and "rating" in inter.columns):
            continue
        hint = f"; the event types are in {config.labels.event_column!r}" if config.labels.event_column else ""
        raise ConfigError(f"funnel config: rank.tasks: task {t!r} has no labels: map event types to it in "
                          f"labels.map (task: {t}), or give the interactions a {col!r} column{hint}")
