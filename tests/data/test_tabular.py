"""The CSV/Parquet loader: a round trip through files written here, and each one-line error."""

import re

import polars as pl
import pytest

from funnelrec.core.errors import ConfigError, DataError
from funnelrec.data import load_dataset
from funnelrec.data.tabular import load_tabular

SCHEMA = """\
interactions:
  user_id: categorical
  item_id: categorical
  timestamp: time
  click: label
  watch_time: label
users:
  user_id: categorical
  age: numeric
  city: categorical
items:
  item_id: categorical
  tags: multi
  author: categorical
"""

INTER = """\
user_id,item_id,timestamp,click,watch_time
u1,10,1700000300,1,12.5
u2,11,1700000100,0,0
u1,11,1700000200,1,3
u3,12,1700000400,0,0
"""
USERS = "user_id,age,city\nu1,31,Paris\nu2,45,Lyon\nu3,27,\nu4,60,Nice\n"
ITEMS = "item_id,tags,author\n10,news|sport,a1\n11,,a2\n12,music,a1\n"


def _write(tmp_path, inter=INTER, users=USERS, items=ITEMS, schema=SCHEMA, ext=".csv"):
    (tmp_path / "schema.yaml").write_text(schema)
    paths = {}
    for name, text in (("interactions", inter), ("users", users), ("items", items)):
        p = tmp_path / f"{name}.csv"
        p.write_text(text)
        if ext == ".parquet":
            q = tmp_path / f"{name}.parquet"
            df = pl.read_csv(p, infer_schema=False)
            df.write_parquet(q)
            p = q
        paths[name] = p
    return paths, tmp_path / "schema.yaml"


def test_csv_round_trip_types_lists_and_indices(tmp_path):
    paths, schema = _write(tmp_path)
    ds = load_tabular(paths["interactions"], schema, users=paths["users"], items=paths["items"])
    # user ids are strings (u1…), item ids are plain integers → Int64
    assert ds.users["user_id"].to_list() == ["u1", "u2", "u3", "u4"]
    assert ds.items.schema["item_id"] == pl.Int64 and ds.items["item_id"].to_list() == [10, 11, 12]
    assert ds.users["age"].to_list() == [31, 45, 27, 60]
    assert ds.items["tags"].to_list() == [["news", "sport"], [], ["music"]]
    inter = ds.interactions
    assert inter["timestamp"].to_list() == [1700000300, 1700000100, 1700000200, 1700000400]
    assert inter.schema["click"] == pl.Int64 and inter.schema["watch_time"] == pl.Float64
    assert inter["watch_time"].to_list() == [12.5, 0.0, 3.0, 0.0]
    # dense indices follow the users/items tables' row order
    assert inter["user_idx"].to_list() == [0, 1, 0, 2]
    assert inter["item_idx"].to_list() == [0, 1, 1, 2]
    assert ds.n_users == 4 and ds.n_items == 3  # u4 has no interactions but keeps its row
    assert ds.csr().toarray().tolist() == [[1, 1, 0], [0, 1, 0], [0, 0, 1], [0, 0, 0]]


def test_parquet_round_trip_and_registry(tmp_path):
    paths, schema = _write(tmp_path, ext=".parquet")
    ds = load_dataset("tabular", interactions=str(paths["interactions"]), schema=str(schema),
                      users=str(paths["users"]), items=str(paths["items"]))
    assert ds.items["tags"].to_list() == [["news", "sport"], [], ["music"]]
    assert ds.interactions["click"].to_list() == [1, 0, 1, 0]
    assert ds.interactions["user_idx"].to_list() == [0, 1, 0, 2]


def test_iso_timestamps_are_unix_seconds(tmp_path):
    inter = "user_id,item_id,timestamp,click,watch_time\n1,1,2023-11-14T22:13:20,1,1\n"
    paths, schema = _write(tmp_path, inter=inter, users="user_id,age,city\n1,3,x\n", items="item_id,tags,author\n1,a,b\n")
    ds = load_tabular(paths["interactions"], schema, users=paths["users"], items=paths["items"])
    assert ds.interactions["timestamp"].to_list() == [1_700_000_000]


def test_typed_parquet_times_are_unix_seconds(tmp_path):
    import datetime as dt

    from funnelrec.data.dataset import TrainData

    pl.DataFrame({"user_id": [1, 2], "item_id": [3, 4],
                  "timestamp": [dt.datetime(2023, 11, 14, 22, 13, 20), dt.datetime(2023, 11, 15, 22, 13, 20)],
                  "seen_at": [dt.date(1970, 1, 2), dt.date(1970, 1, 3)], "t_float": [5.0, 6.0]}
                 ).write_parquet(tmp_path / "i.parquet")
    (tmp_path / "s.yaml").write_text("interactions: {user_id: categorical, item_id: categorical, timestamp: time,"
                                     " seen_at: time, t_float: time}\n")
    ds = load_tabular(tmp_path / "i.parquet", tmp_path / "s.yaml")
    inter = ds.interactions
    assert inter["timestamp"].to_list() == [1_700_000_000, 1_700_000_000 + 86_400]  # naive → UTC
    assert inter["seen_at"].to_list() == [86_400, 2 * 86_400] and inter["t_float"].to_list() == [5, 6]
    assert TrainData(ds, inter).now == 1_700_086_400  # an int: the recall channels' "present"


def test_missing_file(tmp_path):
    paths, schema = _write(tmp_path)
    with pytest.raises(DataError, match=r"nope\.csv: file not found"):
        load_tabular(tmp_path / "nope.csv", schema, users=paths["users"], items=paths["items"])


def test_missing_schema_file(tmp_path):
    paths, _ = _write(tmp_path)
    with pytest.raises(ConfigError, match="not found"):
        load_tabular(paths["interactions"], tmp_path / "none.yaml", users=paths["users"], items=paths["items"])


@pytest.mark.parametrize("bad", ["u1,10,1700000300,1,12.5,EXTRA\n", "u1,10\n"])
def test_ragged_csv_names_the_line(tmp_path, bad):
    paths, schema = _write(tmp_path, inter=INTER + bad)
    with pytest.raises(DataError, match=r"interactions\.csv: malformed CSV \(line 6 has \d fields, the header has 5\)"):
        load_tabular(paths["interactions"], schema, users=paths["users"], items=paths["items"])


def test_missing_column(tmp_path):
    items = "item_id,tags\n10,a\n11,b\n12,c\n"
    paths, schema = _write(tmp_path, items=items)
    with pytest.raises(DataError, match=r"items\.csv: missing column 'author'"):
        load_tabular(paths["interactions"], schema, users=paths["users"], items=paths["items"])


def test_non_numeric_value_names_column_and_value(tmp_path):
    users = "user_id,age,city\nu1,31,Paris\nu2,abc,Lyon\nu3,27,\n"
    paths, schema = _write(tmp_path, users=users)
    with pytest.raises(DataError, match=r"users\.csv: column 'age' is numeric, but holds 'abc'"):
        load_tabular(paths["interactions"], schema, users=paths["users"], items=paths["items"])


def test_bad_time_value(tmp_path):
    inter = INTER.replace("1700000100", "yesterday")
    paths, schema = _write(tmp_path, inter=inter)
    with pytest.raises(DataError, match=r"column 'timestamp' is time .* but holds 'yesterday'"):
        load_tabular(paths["interactions"], schema, users=paths["users"], items=paths["items"])


def test_unknown_schema_key(tmp_path):
    paths, schema = _write(tmp_path, schema=SCHEMA + "extras:\n  foo: numeric\n")
    with pytest.raises(ConfigError, match="unknown key 'extras'"):
        load_tabular(paths["interactions"], schema, users=paths["users"], items=paths["items"])


def test_unknown_kind_and_missing_side_table(tmp_path):
    paths, schema = _write(tmp_path, schema=SCHEMA.replace("age: numeric", "age: number"))
    with pytest.raises(ConfigError, match="users.age has unknown kind 'number'"):
        load_tabular(paths["interactions"], schema, users=paths["users"], items=paths["items"])
    paths, schema = _write(tmp_path)
    with pytest.raises(ConfigError, match=r"declares users columns \['age', 'city'\] but no users file"):
        load_tabular(paths["interactions"], schema, items=paths["items"])


def test_unknown_extension(tmp_path):
    paths, schema = _write(tmp_path)
    odd = tmp_path / "inter.xlsx"
    odd.write_text("x")
    with pytest.raises(DataError, match=r"unknown file type '\.xlsx'"):
        load_tabular(odd, schema, users=paths["users"], items=paths["items"])


def _times(ds) -> list[int]:
    return ds.interactions.sort("timestamp")["timestamp"].to_list()


@pytest.mark.parametrize("scale", [1_000, 1_000_000, 1_000_000_000])
def test_millisecond_microsecond_and_nanosecond_times_become_seconds(tmp_path, scale):
    inter = re.sub(r"\b(1700000\d{3})\b", lambda m: str(int(m.group(1)) * scale), INTER)  # 1700000300 → …300000
    paths, schema = _write(tmp_path, inter=inter)
    ds = load_tabular(paths["interactions"], schema, users=paths["users"], items=paths["items"])
    assert _times(ds) == [1700000100, 1700000200, 1700000300, 1700000400]
    pq = tmp_path / "typed.parquet"  # typed integer times in Parquet too
    pl.read_csv(paths["interactions"]).write_parquet(pq)
    assert _times(load_tabular(pq, schema, users=paths["users"], items=paths["items"]))[0] == 1700000100


@pytest.mark.parametrize("sep", [";", "\t", "|"])
def test_a_csv_with_another_separator_is_sniffed(tmp_path, sep):
    paths, schema = _write(tmp_path, inter=INTER.replace(",", sep))
    ds = load_tabular(paths["interactions"], schema, users=paths["users"], items=paths["items"])
    assert ds.interactions.height == 4 and _times(ds)[0] == 1700000100


@pytest.mark.parametrize("inter", ["", "user_id,item_id,timestamp,click,watch_time\n"])
def test_no_interactions_is_an_error(tmp_path, inter):
    paths, schema = _write(tmp_path, inter=inter)
    with pytest.raises(DataError, match="no interactions|empty file"):
        load_tabular(paths["interactions"], schema, users=paths["users"], items=paths["items"])


def test_load_dataset_passes_the_loaders_own_name(tmp_path):
    paths, schema = _write(tmp_path)
    ds = load_dataset("tabular", name="shop", interactions=paths["interactions"], schema=schema,
                      users=paths["users"], items=paths["items"])
    assert ds.name == "shop"
