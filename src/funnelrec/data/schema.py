"""The schema: which column of which table is what.

A schema types every column of the three tables of the data contract:

    interactions:            users:                 items:
      user_id: categorical     user_id: categorical   item_id: categorical
      item_id: categorical     age: numeric           genres: multi
      timestamp: time          gender: categorical    author: categorical
      rating: label            ...                    publish_time: time

Kinds: categorical (one token), numeric (a number), multi (a list of tokens), sequence (an
ordered list), label (a training target), time (unix seconds).

An optional fourth table, `follows` (the follow graph of platforms with creators), has fixed
columns and needs no schema entry:

    follows:
      user_id: categorical   (the users table's ids)
      author_id: categorical (a value of the items' author column, e.g. items.author; String)
      ts: time               (unix seconds the user followed the author)

One row per (user, author) edge that holds at the end of the data; the author channel reads it
(recall/author.py). `validate_follows` checks it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from funnelrec.core.config import from_dict, load_yaml
from funnelrec.core.errors import ConfigError, DataError

KINDS = ("categorical", "numeric", "multi", "sequence", "label", "time")
TABLES = ("interactions", "users", "items")
REQUIRED = {
    "interactions": ("user_id", "item_id", "timestamp"),
    "users": ("user_id",),
    "items": ("item_id",),
}


@dataclass(frozen=True)
class Schema:
    interactions: dict[str, str]
    users: dict[str, str] = field(default_factory=lambda: {"user_id": "categorical"})
    items: dict[str, str] = field(default_factory=lambda: {"item_id": "categorical"})

    def __post_init__(self) -> None:
        for table in TABLES:
            cols = getattr(self, table)
            for col, kind in cols.items():
                if kind not in KINDS:
                    raise ConfigError(
                        f"schema: column {table}.{col} has unknown kind {kind!r}; known: {', '.join(KINDS)}"
                    )
            for col in REQUIRED[table]:
                if col not in cols:
                    raise ConfigError(f"schema: table {table} must declare column {col!r}")

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "schema") -> Schema:
        """Strict (core/config.py): tables are mappings column → kind; unknown tables are errors."""
        return from_dict(cls, data, where)

    @classmethod
    def load(cls, path: str | Path) -> Schema:
        return cls.from_dict(load_yaml(path), where=str(path))

    def to_dict(self) -> dict[str, dict[str, str]]:
        return {t: dict(getattr(self, t)) for t in TABLES}

    def columns(self, table: str, kind: str) -> list[str]:
        return [c for c, k in getattr(self, table).items() if k == kind]

    @property
    def labels(self) -> list[str]:
        return self.columns("interactions", "label")

    def validate(self, table: str, df: pl.DataFrame) -> None:
        """Raise DataError naming the first missing or mistyped column."""
        for col, kind in getattr(self, table).items():
            if col not in df.columns:
                raise DataError(f"{table}: missing column {col!r} (declared {kind} in the schema)")
            dt = df.schema[col]
            ok = True
            if kind in ("numeric", "label"):
                ok = dt.is_numeric() or dt == pl.Boolean
            elif kind == "time":
                ok = dt.is_integer() or dt.is_float() or isinstance(dt, pl.Datetime)
            elif kind in ("multi", "sequence"):
                ok = isinstance(dt, pl.List)
            if not ok:
                raise DataError(f"{table}: column {col!r} is {dt}, but the schema says {kind}")


#: the columns of the optional follows table, in order (see the module doc)
FOLLOWS_COLUMNS = ("user_id", "author_id", "ts")


def validate_follows(df: pl.DataFrame) -> pl.DataFrame:
    """The follows table typed: author_id as String, ts as Int64 unix seconds, one row per
    (user_id, author_id) (the latest ts kept). DataError naming the first missing column, a
    null or a mistyped ts."""
    for col in FOLLOWS_COLUMNS:
        if col not in df.columns:
            raise DataError(f"follows: missing column {col!r} (the follows table has {', '.join(FOLLOWS_COLUMNS)})")
        if df[col].null_count():
            raise DataError(f"follows: column {col!r} has {df[col].null_count()} nulls")
    ts = df.schema["ts"]
    if not (ts.is_integer() or ts.is_float()):
        raise DataError(f"follows: column 'ts' is {ts}, but it must be unix seconds")
    out = df.select("user_id", pl.col("author_id").cast(pl.String), pl.col("ts").cast(pl.Int64))
    return out.sort("ts").unique(["user_id", "author_id"], keep="last", maintain_order=True)
