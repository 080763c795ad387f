"""The data contract of every registered dataset loader (DATASETS.names()), each on a small
input of its own (files written here, or a tiny synthetic world); a registered loader without
an input builder here fails:

- users/items tables carry dense `user_idx`/`item_idx` int64 0..n-1, sorted so row i is index i;
  interactions carry the same indices, consistent with their ids;
- every column the schema declares is present, with the declared kind;
- timestamps (and every "time" column) are integer unix seconds;
- the rows loaded are the rows written (checked against the input, not the loader);
- loading twice gives identical tables.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

import funnelrec.data  # noqa: F401  (registers every loader)
from funnelrec.core.registry import DATASETS
from funnelrec.data import load_dataset

# (user_id, item_id, timestamp) rows each builder writes
ML_ROWS = [(7, 10, 881250949), (3, 10, 891717742), (7, 20, 878887116), (5, 30, 880606923), (3, 30, 886397596)]
TAB_ROWS = [("u2", 12, 1_700_000_300), ("u1", 10, 1_700_000_100), ("u2", 10, 1_700_000_200), ("u9", 11, 1_700_000_400)]


def _movielens(tmp: Path) -> tuple[dict, list | None]:
    """GroupLens layout (u.data, u.user, u.item): three users, three items, unordered ids."""
    (tmp / "u.data").write_text("".join(f"{u}\t{i}\t4\t{t}\n" for u, i, t in ML_ROWS))
    (tmp / "u.user").write_text("7|24|M|technician|85711\n3|53|F|other|94043\n5|23|M|writer|T8H1N\n")
    flags = "|".join(["0"] * 19)
    (tmp / "u.item").write_text("".join(f"{i}|Film {i} (1995)|01-Jan-1995||http://x|{flags}\n" for i in (30, 10, 20)))
    return {"path": tmp}, ML_ROWS


def _tabular(tmp: Path) -> tuple[dict, list | None]:
    """CSV files typed by a schema YAML; user u9 is absent from users.csv, u4 never interacts."""
    (tmp / "schema.yaml").write_text(
        "interactions:\n  user_id: categorical\n  item_id: categorical\n  timestamp: time\n  click: label\n"
        "users:\n  user_id: categorical\n  age: numeric\n"
        "items:\n  item_id: categorical\n  tags: multi\n  publish_time: time\n")
    (tmp / "inter.csv").write_text("user_id,item_id,timestamp,click\n" + "".join(f"{u},{i},{t},1\n" for u, i, t in TAB_ROWS))
    (tmp / "users.csv").write_text("user_id,age\nu2,31\nu1,45\nu4,60\n")
    (tmp / "items.csv").write_text("item_id,tags,publish_time\n12,a|b,1699000000\n10,,1698000000\n11,c,2023-11-01\n")
    return {"interactions": tmp / "inter.csv", "schema": tmp / "schema.yaml", "users": tmp / "users.csv",
            "items": tmp / "items.csv"}, TAB_ROWS


def _synthetic(tmp: Path) -> tuple[dict, list | None]:
    return {"n_users": 60, "n_items": 40, "n_interactions": 500, "seed": 3}, None


INPUTS = {"movielens-100k": _movielens, "tabular": _tabular, "synthetic": _synthetic}
KIND_DTYPES = {"time": "integer", "label": "numeric", "numeric": "numeric"}


def _load(name: str, tmp: Path):
    if name not in INPUTS:
        pytest.fail(f"dataset {name!r} is registered but has no small input builder in {__file__} INPUTS")
    tmp.mkdir(parents=True, exist_ok=True)
    kwargs, rows = INPUTS[name](tmp)
    return load_dataset(name, **kwargs), rows


def test_every_loader_is_registered_on_import():
    assert set(DATASETS.names()) >= {"movielens-100k", "tabular", "synthetic"}
    assert not set(DATASETS.names()) - set(INPUTS), "loaders without an input builder here"


@pytest.mark.parametrize("name", DATASETS.names())
def test_dense_indices_and_row_i_is_index_i(name, tmp_path):
    ds, _ = _load(name, tmp_path)
    for table, id_col, idx_col, n in (("users", "user_id", "user_idx", ds.n_users),
                                      ("items", "item_id", "item_idx", ds.n_items)):
        df = getattr(ds, table)
        assert df.schema[idx_col] == pl.Int64, (table, df.schema[idx_col])
        np.testing.assert_array_equal(df[idx_col].to_numpy(), np.arange(n), err_msg=f"{name}.{table}")
        assert df[id_col].n_unique() == n and df[id_col].null_count() == 0
        inter = ds.interactions
        assert inter.schema[idx_col] == pl.Int64
        idx = inter[idx_col].to_numpy()
        assert idx.min() >= 0 and idx.max() < n
        # the id at row idx of the table is the interaction's id
        assert df[id_col].gather(idx).to_list() == inter[id_col].to_list(), f"{name}: {idx_col} disagrees with {id_col}"
    m = ds.csr()
    assert m.shape == (ds.n_users, ds.n_items)
    assert m.nnz == ds.interactions.select("user_idx", "item_idx").unique().height


@pytest.mark.parametrize("name", DATASETS.names())
def test_schema_columns_present_with_their_kinds(name, tmp_path):
    ds, _ = _load(name, tmp_path)
    for table in ("interactions", "users", "items"):
        df = getattr(ds, table)
        for col, kind in getattr(ds.schema, table).items():
            assert col in df.columns, f"{name}: {table} lacks schema column {col!r}"
            dtype = df.schema[col]
            if KIND_DTYPES.get(kind) == "integer":
                assert dtype.is_integer(), f"{name}: {table}.{col} ({kind}) is {dtype}"
            elif KIND_DTYPES.get(kind) == "numeric":
                assert dtype.is_numeric(), f"{name}: {table}.{col} ({kind}) is {dtype}"
            elif kind == "multi":
                assert isinstance(dtype, pl.List), f"{name}: {table}.{col} (multi) is {dtype}"


@pytest.mark.parametrize("name", DATASETS.names())
def test_timestamps_are_integer_unix_seconds(name, tmp_path):
    ds, _ = _load(name, tmp_path)
    for table in ("interactions", "users", "items"):
        df = getattr(ds, table)
        for col in ds.schema.columns(table, "time"):
            v = df[col].drop_nulls()
            assert df.schema[col] == pl.Int64, f"{name}: {table}.{col} is {df.schema[col]}"
            # seconds, not milliseconds: between 1970 and 2100
            assert v.len() == 0 or (v.min() >= 0 and v.max() < 4_102_444_800), f"{name}: {table}.{col} not in seconds"


@pytest.mark.parametrize("name", DATASETS.names())
def test_the_rows_loaded_are_the_rows_written(name, tmp_path):
    ds, rows = _load(name, tmp_path)
    if rows is None:  # generated: the synthetic world documents ids = indices
        assert ds.users["user_id"].to_list() == list(range(ds.n_users))
        assert ds.items["item_id"].to_list() == list(range(ds.n_items))
        assert ds.interactions.height == 500
        return
    got = sorted(ds.interactions.select("user_id", "item_id", "timestamp").iter_rows())
    assert got == sorted(rows)
    users = {u for u, _, _ in rows}
    assert set(ds.users["user_id"].to_list()) >= users


def test_tabular_side_tables_by_hand(tmp_path):
    ds, _ = _load("tabular", tmp_path)
    # users: the file's three plus u9, who only appears in interactions (null attributes)
    assert sorted(ds.users["user_id"].to_list()) == ["u1", "u2", "u4", "u9"]
    assert ds.users.filter(pl.col("user_id") == "u9")["age"].to_list() == [None]
    items = {r["item_id"]: r for r in ds.items.iter_rows(named=True)}
    assert items[12]["tags"] == ["a", "b"] and items[10]["tags"] == []
    assert items[10]["publish_time"] == 1_698_000_000
    assert items[11]["publish_time"] == 1_698_796_800  # 2023-11-01 00:00 UTC


@pytest.mark.parametrize("name", DATASETS.names())
def test_loading_twice_gives_identical_tables(name, tmp_path):
    a, _ = _load(name, tmp_path / "a")
    b, _ = _load(name, tmp_path / "b")
    for table in ("interactions", "users", "items"):
        assert getattr(a, table).equals(getattr(b, table)), f"{name}: {table} differs between two loads"
    assert a.schema == b.schema
