import zipfile

import numpy as np
import polars as pl
import pytest

from funnelrec.core.errors import ConfigError, DataError
from funnelrec.core.registry import DATASETS
from funnelrec.data import load_dataset
from funnelrec.data.movielens import fetch_ml100k, load_movielens_100k
from funnelrec.data.schema import Schema
from funnelrec.data.splits import (
    leave_one_out,
    random_split_by_user,
    random_split_global,
    recbole_split_counts,
    temporal_split,
)


def test_ml100k_contract(ml100k):
    assert (ml100k.interactions.height, ml100k.n_users, ml100k.n_items) == (100_000, 943, 1682)
    # dense indices: row i of users/items describes index i
    assert ml100k.users["user_idx"].to_list() == list(range(943))
    assert ml100k.items["item_idx"].to_list() == list(range(1682))
    # index ↔ id consistency through the interactions join
    row = ml100k.interactions.row(0, named=True)
    assert ml100k.users["user_id"][row["user_idx"]] == row["user_id"] == 196
    assert ml100k.items["item_id"][row["item_idx"]] == row["item_id"] == 242
    toy = ml100k.items.filter(pl.col("item_id") == 1).row(0, named=True)
    assert toy["title"] == "Toy Story" and "Animation" in toy["genres"]
    # directors come from the knowledge graph: most films have exactly one
    assert ml100k.items["directors"].list.len().median() == 1
    assert ml100k.user_ids.index(196) == row["user_idx"] and ml100k.user_ids.index("196") == row["user_idx"]
    assert ml100k.user_ids.index(99999) == -1


def test_recbole_split_sizes_match_recbole(ml100k_split):
    # RecBole 1.2.1 reports 80,808 / 9,596 / 9,596 for RS 0.8/0.1/0.1 grouped by user
    assert ml100k_split.sizes() == (80_808, 9_596, 9_596)
    tr, te = ml100k_split.train, ml100k_split.test
    # every user appears in every part, and no (user, item) pair leaks across parts
    assert tr["user_idx"].n_unique() == te["user_idx"].n_unique() == 943
    assert tr.join(te, on=["user_idx", "item_idx"]).height == 0


def test_recbole_rounding_rule():
    assert recbole_split_counts(20, (0.8, 0.1, 0.1)) == [16, 2, 2]
    assert recbole_split_counts(24, (0.8, 0.1, 0.1)) == [20, 2, 2]
    assert recbole_split_counts(5, (0.8, 0.1, 0.1)) == [3, 1, 1]


def test_split_is_seeded(ml100k):
    a = random_split_by_user(ml100k.interactions, seed=1).test
    b = random_split_by_user(ml100k.interactions, seed=1).test
    c = random_split_by_user(ml100k.interactions, seed=2).test
    assert a.equals(b) and not a.equals(c)


def test_repeated_pairs_split_as_pairs_by_the_recbole_counts():
    # user 0: items 10 (view, cart, purchase), 11 (view), 12 (view, view) and 13 … 19 (one view
    # each): 10 pairs → RecBole's counts 8 / 1 / 1 over pairs, not over its 13 rows (11 / 1 / 1);
    # user 1: two pairs, one row each → 1 / 0 / 1 (0 < 0.2 < 1 gives test a row), as RecBole
    u0 = [0] * 13
    i0 = [10, 10, 10, 11, 12, 12, *range(13, 20)]
    inter = pl.DataFrame({"user_idx": u0 + [1, 1], "item_idx": i0 + [10, 11],
                          "event": ["view", "cart", "purchase", "view", "view", "view"] + ["view"] * 7 + ["view"] * 2})
    assert inter.filter(pl.col("user_idx") == 0)["item_idx"].n_unique() == 10
    for seed in range(5):
        s = random_split_by_user(inter, seed=seed)
        assert s.protocol == "rs-811-by-pair"
        parts = [p.with_columns(pl.lit(k).alias("part")) for k, p in enumerate((s.train, s.valid, s.test))]
        both = pl.concat(parts)
        assert both.height == inter.height  # every row once
        # a pair's rows are in one part
        assert both.group_by("user_idx", "item_idx").agg(pl.col("part").n_unique())["part"].max() == 1
        pairs = both.unique(["user_idx", "item_idx", "part"])
        per = {(u, k): n for u, k, n in pairs.group_by("user_idx", "part").len().iter_rows()}
        assert [per.get((0, k), 0) for k in range(3)] == recbole_split_counts(10, (0.8, 0.1, 0.1)) == [8, 1, 1]
        assert [per.get((1, k), 0) for k in range(3)] == recbole_split_counts(2, (0.8, 0.1, 0.1)) == [1, 0, 1]
        three = both.filter(pl.col("item_idx") == 10, pl.col("user_idx") == 0)
        assert sorted(three["event"].to_list()) == ["cart", "purchase", "view"]
    # one row per pair (MovieLens): the RecBole split itself
    assert random_split_by_user(inter.unique(["user_idx", "item_idx"]), seed=0).protocol == "recbole-rs-811"


def test_leave_one_out_takes_latest(ml100k):
    s = leave_one_out(ml100k.interactions)
    assert s.test.height == s.valid.height == 943
    assert s.test["user_idx"].n_unique() == s.valid["user_idx"].n_unique() == 943  # one each per user
    # per user, by time: test = the latest timestamp, valid = the second-latest (ties counted: the
    # sorted timestamps' last and second-to-last), train = the rest, all of it no later than valid
    ts = ml100k.interactions.group_by("user_idx").agg(pl.col("timestamp").sort())
    last = {u: t[-1] for u, t in ts.iter_rows()}
    second = {u: t[-2] for u, t in ts.iter_rows()}
    # ml-100k has same-second ratings; for 344 users the three latest times all differ, so the
    # check tells the second-latest from the latest and the third-latest
    assert sum(t[-3] < t[-2] < t[-1] for _, t in ts.iter_rows()) > 300
    assert all(last[u] == t for u, t in s.test.select("user_idx", "timestamp").iter_rows())
    assert all(second[u] == t for u, t in s.valid.select("user_idx", "timestamp").iter_rows())
    train_max = dict(s.train.group_by("user_idx").agg(pl.col("timestamp").max()).iter_rows())
    assert all(train_max[u] <= second[u] for u in train_max)
    assert s.train.height + 2 * 943 == 100_000
    # the three parts are the interactions, each row once
    key = ["user_idx", "item_idx", "timestamp"]
    parts = pl.concat([s.train.select(key), s.valid.select(key), s.test.select(key)]).sort(key)
    assert parts.equals(ml100k.interactions.select(key).sort(key))


def test_global_and_temporal_splits(ml100k):
    key = ["user_idx", "item_idx", "timestamp"]
    everything = ml100k.interactions.select(key).sort(key)
    g = random_split_global(ml100k.interactions)
    assert g.sizes() == (80_000, 10_000, 10_000)
    assert pl.concat([g.train.select(key), g.valid.select(key), g.test.select(key)]).sort(key).equals(everything)
    t = temporal_split(ml100k.interactions)
    assert t.sizes() == (80_000, 10_000, 10_000)
    # a global time cut: the earliest 80 % train, the next 10 % validate, the latest 10 % test
    assert t.train["timestamp"].max() <= t.valid["timestamp"].min()
    assert t.valid["timestamp"].min() < t.valid["timestamp"].max() <= t.test["timestamp"].min()
    cut = np.sort(ml100k.interactions["timestamp"].to_numpy())
    assert (t.valid["timestamp"].min(), t.test["timestamp"].min()) == (cut[80_000], cut[90_000])
    assert pl.concat([t.train.select(key), t.valid.select(key), t.test.select(key)]).sort(key).equals(everything)


def test_bad_ratios():
    with pytest.raises(ConfigError, match="summing to 1"):
        random_split_global(pl.DataFrame({"x": [1]}), (0.5, 0.1, 0.1))


def test_grouplens_layout(tmp_path):
    (tmp_path / "u.data").write_text("1\t10\t5\t100\n2\t10\t3\t200\n1\t20\t4\t300\n")
    (tmp_path / "u.user").write_text("1|24|M|technician|85711\n2|53|F|other|T8H1N\n")
    flags = "|".join(["0"] * 19)
    genre_item = "|".join(["0", "1"] + ["0"] * 17)
    (tmp_path / "u.item").write_text(
        f"10|Heat (1995)|01-Jan-1995||http://x|{genre_item}\n20|Nothing (1996)|01-Jan-1996||http://y|{flags}\n"
    )
    d = load_movielens_100k(path=tmp_path)
    assert (d.interactions.height, d.n_users, d.n_items) == (3, 2, 2)
    assert d.items.filter(pl.col("item_id") == 10)["genres"].to_list() == [["Action"]]
    assert d.users["region"].to_list() == ["8", "other"]


def test_local_folder_without_data_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="neither ml-100k.inter"):
        load_movielens_100k(path=tmp_path)


def test_offline_and_uncached_says_how_to_provide_files(tmp_path, monkeypatch):
    # an unreachable index makes `pip download` fail like an offline machine
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", "")
    with pytest.raises(DataError, match="--path DIR"):
        fetch_ml100k(tmp_path)


def test_corrupt_wheel_fails_sha256(tmp_path):
    wheel = tmp_path / "wheels" / "recbole-1.2.1-py3-none-any.whl"
    wheel.parent.mkdir(parents=True)
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("x", "not recbole")
    with pytest.raises(DataError, match="sha256"):
        fetch_ml100k(tmp_path)


def test_unknown_dataset_lists_known():
    with pytest.raises(ConfigError, match="movielens-100k"):
        load_dataset("movielens-1b")
    for name in ("synthetic", "tabular"):  # every loader module registers (no import is swallowed)
        assert name in DATASETS


def test_misspelt_loader_option_is_a_config_error():
    with pytest.raises(ConfigError, match="dataset 'movielens-100k': got an unexpected keyword argument 'pth'"):
        load_dataset("movielens-100k", pth="/data")


def test_schema_rejects_unknown_kind_and_key():
    with pytest.raises(ConfigError, match="unknown kind 'float'"):
        Schema.from_dict({"interactions": {"user_id": "categorical", "item_id": "categorical", "timestamp": "time", "x": "float"}})
    with pytest.raises(ConfigError, match="unknown key 'itemz'"):
        Schema.from_dict({"itemz": {}})


def test_schema_names_mistyped_column(ml100k):
    bad = ml100k.interactions.with_columns(pl.col("rating").cast(pl.String))
    with pytest.raises(DataError, match="'rating'"):
        ml100k.schema.validate("interactions", bad)


def test_csr_is_binary(ml100k):
    m = ml100k.csr()
    assert m.shape == (943, 1682) and m.nnz == 100_000 and np.all(m.data == 1)
