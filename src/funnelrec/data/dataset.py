"""The dataset contract: three Polars tables plus a schema, with dense indices.

Every loader returns a `Dataset`; nothing downstream knows where the data came from.
`Dataset.build` validates the contract and adds dense indices: `user_idx` / `item_idx`
(int64, 0..n-1). The users and items tables are sorted so that row i describes index i, which
lets every later stage gather attributes by index instead of building dicts.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import polars as pl
import scipy.sparse as sp

from funnelrec.core.errors import DataError
from funnelrec.data.schema import Schema


class IdMap:
    """Bidirectional map between external ids (int or str) and dense indices."""

    def __init__(self, ids: np.ndarray | list) -> None:
        self.ids = np.asarray(ids)
        self._lookup = {k: i for i, k in enumerate(self.ids.tolist())}

    def __len__(self) -> int:
        return len(self.ids)

    def index(self, key: Any) -> int:
        """Dense index of `key`, or -1 when unknown. Accepts '12' for an int id and vice versa."""
        i = self._lookup.get(key)
        if i is None and isinstance(key, str) and self.ids.dtype.kind in "iu":
            try:
                i = self._lookup.get(int(key))
            except ValueError:
                i = None
        elif i is None and not isinstance(key, str):
            i = self._lookup.get(str(key))
        return -1 if i is None else i

    def indices(self, keys: Any) -> np.ndarray:
        return np.fromiter((self.index(k) for k in keys), dtype=np.int64)


@dataclass
class Dataset:
    name: str
    interactions: pl.DataFrame
    users: pl.DataFrame
    items: pl.DataFrame
    schema: Schema
    extras: dict[str, Any] = field(default_factory=dict)
    #: the optional follow graph (data/schema.py): user_id, author_id (str), ts, user_idx; None = none
    follows: pl.DataFrame | None = None

    @property
    def n_users(self) -> int:
        return self.users.height

    @property
    def n_items(self) -> int:
        return self.items.height

    @cached_property
    def user_ids(self) -> IdMap:
        return IdMap(self.users["user_id"].to_numpy())

    @cached_property
    def item_ids(self) -> IdMap:
        return IdMap(self.items["item_id"].to_numpy())

    def catalogue(self) -> Dataset:
        """The users and items tables, schema and id maps without the interactions (an empty
        table of the same columns) or the loader's extras: what a served funnel keeps — its
        history lives in the fitted components, and a 3M-row log has no place in an artifact."""
        return Dataset(self.name, self.interactions.clear(), self.users, self.items, self.schema, {})

    @classmethod
    def build(
        cls,
        name: str,
        interactions: pl.DataFrame,
        schema: Schema,
        users: pl.DataFrame | None = None,
        items: pl.DataFrame | None = None,
        extras: dict[str, Any] | None = None,
        dense_ids: bool = False,
        follows: pl.DataFrame | None = None,
    ) -> Dataset:
        """Validate the three tables against `schema` and assign dense indices.

        Users/items that appear only in interactions get rows with nulls for their attributes.
        `dense_ids=True` is the fast path for generated data: the ids already are 0..n-1 (users
        and items tables given, row i holding id i); that is checked without joins and the
        index columns are the id columns under their index names. `follows` (optional; columns
        user_id, author_id, ts) gets `user_idx`; every user in it must be a known user.
        """
        schema.validate("interactions", interactions)
        for col in ("user_id", "item_id", "timestamp"):
            if interactions[col].null_count():
                raise DataError(f"interactions: column {col!r} has {interactions[col].null_count()} nulls")
        if dense_ids:
            ds = cls._build_dense(name, interactions, schema, users, items, extras)
            return ds.with_follows(follows) if follows is not None else ds
        users = users if users is not None else interactions.select("user_id").unique(maintain_order=True)
        items = items if items is not None else interactions.select("item_id").unique(maintain_order=True)
        schema.validate("users", users)
        schema.validate("items", items)
        users = _with_index(users, interactions, "user_id", "user_idx")
        items = _with_index(items, interactions, "item_id", "item_idx")
        inter = interactions.join(users.select("user_id", "user_idx"), on="user_id", how="left").join(
            items.select("item_id", "item_idx"), on="item_id", how="left"
        )
        ds = cls(name=name, interactions=inter, users=users, items=items, schema=schema, extras=extras or {})
        return ds.with_follows(follows) if follows is not None else ds

    def with_follows(self, follows: pl.DataFrame) -> Dataset:
        """This dataset with the follow graph `follows` (typed by `schema.validate_follows`, with
        `user_idx`). A user the users table does not hold is a DataError naming it."""
        from funnelrec.data.schema import validate_follows

        f = validate_follows(follows)
        try:
            f = f.join(self.users.select("user_id", "user_idx"), on="user_id", how="left")
        except pl.exceptions.PolarsError as e:
            raise DataError(f"follows: user_id and the users table disagree on its type: {e}") from None
        unknown = f.filter(pl.col("user_idx").is_null())
        if unknown.height:
            raise DataError(f"follows: {unknown.height} rows name users not in the data, e.g. user_id "
                            f"{unknown['user_id'][0]!r}")
        return dataclasses.replace(self, follows=f)

    @classmethod
    def _build_dense(cls, name: str, interactions: pl.DataFrame, schema: Schema, users: pl.DataFrame | None,
                     items: pl.DataFrame | None, extras: dict[str, Any] | None) -> Dataset:
        tables = {"users": (users, "user_id", "user_idx"), "items": (items, "item_id", "item_idx")}
        out = {}
        for table, (df, id_col, idx_col) in tables.items():
            if df is None:
                raise DataError(f"dense_ids: the {table} table is required")
            schema.validate(table, df)
            ids = df[id_col]
            if not ids.dtype.is_integer() or not np.array_equal(ids.to_numpy(), np.arange(df.height)):
                raise DataError(f"dense_ids: {table}.{id_col} must be 0..{df.height - 1} in row order")
            used = interactions[id_col]
            if not used.dtype.is_integer() or (used.len() and (used.min() < 0 or used.max() >= df.height)):
                raise DataError(f"dense_ids: interactions.{id_col} must be integers in 0..{df.height - 1}")
            out[table] = df.with_columns(pl.col(id_col).cast(pl.Int64).alias(idx_col)).select(idx_col, *df.columns)
        inter = interactions.with_columns(pl.col("user_id").cast(pl.Int64).alias("user_idx"),
                                          pl.col("item_id").cast(pl.Int64).alias("item_idx"))
        return cls(name=name, interactions=inter, users=out["users"], items=out["items"], schema=schema,
                   extras=extras or {})

    def csr(self, interactions: pl.DataFrame | None = None, value: str | None = None) -> sp.csr_matrix:
        """User × item matrix of `interactions` (default: all), binary or valued by `value`."""
        return interactions_csr(interactions if interactions is not None else self.interactions,
                                self.n_users, self.n_items, value)

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "interactions": self.interactions.height,
            "users": self.n_users,
            "items": self.n_items,
            "density": self.interactions.height / max(1, self.n_users * self.n_items),
            "labels": self.schema.labels,
            "user_columns": [c for c in self.users.columns if c not in ("user_id", "user_idx")],
            "item_columns": [c for c in self.items.columns if c not in ("item_id", "item_idx")],
        }


def interactions_csr(inter: pl.DataFrame, n_users: int, n_items: int, value: str | None = None) -> sp.csr_matrix:
    u = inter["user_idx"].to_numpy()
    i = inter["item_idx"].to_numpy()
    v = np.ones(len(u), dtype=np.float32) if value is None else inter[value].to_numpy().astype(np.float32)
    m = sp.csr_matrix((v, (u, i)), shape=(n_users, n_items), dtype=np.float32)
    m.sum_duplicates()
    if value is None:
        m.data[:] = 1.0
    return m


def _with_index(table: pl.DataFrame, inter: pl.DataFrame, id_col: str, idx_col: str) -> pl.DataFrame:
    if table[id_col].null_count():
        raise DataError(f"{id_col}: {table[id_col].null_count()} null ids in the {id_col[:-3]}s table")
    if table[id_col].n_unique() != table.height:
        raise DataError(f"{id_col}: duplicate ids in the {id_col[:-3]}s table")
    try:
        extra = inter.select(id_col).unique(maintain_order=True).join(table.select(id_col), on=id_col, how="anti")
    except pl.exceptions.PolarsError as e:  # mismatched id dtypes between tables
        raise DataError(f"{id_col}: interactions and the {id_col[:-3]}s table disagree on its type: {e}") from None
    if extra.height:
        table = pl.concat([table, extra], how="diagonal_relaxed")
    return table.with_row_index(idx_col).with_columns(pl.col(idx_col).cast(pl.Int64))


@dataclass
class TrainData:
    """What a component is fitted on: the dataset (tables, schema, indices) and the training
    interactions (a subset of `dataset.interactions`, e.g. the train split)."""

    dataset: Dataset
    interactions: pl.DataFrame

    @property
    def n_users(self) -> int:
        return self.dataset.n_users

    @property
    def n_items(self) -> int:
        return self.dataset.n_items

    @cached_property
    def csr(self) -> sp.csr_matrix:
        """Binary user × item matrix of the training interactions."""
        return interactions_csr(self.interactions, self.n_users, self.n_items)

    @cached_property
    def now(self) -> int:
        """The latest training timestamp: the 'present' for time decay and freshness."""
        return int(self.interactions["timestamp"].max()) if self.interactions.height else 0
