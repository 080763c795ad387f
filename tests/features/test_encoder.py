import numpy as np
import polars as pl
import pytest

from funnelrec.core.errors import ConfigError, DataError, NotFittedError
from funnelrec.data.dataset import TrainData
from funnelrec.features.encoder import FeatureEncoder, FeatureEncoderConfig
from funnelrec.features.fid import fid_column

# the ml-100k columns (no default names a dataset's columns)
ML = {"user_columns": ("age", "gender", "occupation"), "item_columns": ("release_year", "genres")}


@pytest.fixture(scope="module")
def small(ml100k):
    inter = ml100k.interactions.sort("timestamp")
    return ml100k, inter[:3000], inter[3000:3500]


def test_rows_match_fids_and_unknown_items_get_row_0(small):
    ds, train, test = small
    enc = FeatureEncoder(FeatureEncoderConfig(**ML, crosses=(("gender", "genres"),))).fit(TrainData(ds, train))
    spec = enc.spec
    b = enc.encode(test)
    assert b["sparse"].shape == (500, spec.n_fields) and spec.n_fields == len(spec.field_names)
    assert b["label"].tolist() == (test["rating"].to_numpy() >= 4).astype(np.float32).tolist()
    # the item_id column holds the row of the item's FID (slot 2) iff the item was in training
    col = spec.field_names.index("item_id")
    fids = fid_column(2, test["item_id"])
    seen = np.isin(test["item_id"].to_numpy(), train["item_id"].unique().to_numpy())
    assert (b["sparse"][:, col].numpy() == np.where(seen, enc.vocab_.lookup(fids), 0)).all()
    assert (b["sparse"][:, col].numpy()[seen] > 0).all() and (b["sparse"][:, col].numpy()[~seen] == 0).all()
    # the same gender (same user) gives the same gender column; rows are < n_embeddings
    assert int(b["sparse"].max()) < spec.n_embeddings


def test_serving_call_equals_batch_rows(small):
    ds, train, _ = small
    cfg = FeatureEncoderConfig(**ML, count_features=("item_count", "user_mean_rating"), seq_len=5,
                               seq_tag_column="genres", match_columns=("genres",), crosses=(("gender", "genres"),))
    enc = FeatureEncoder(cfg).fit(TrainData(ds, train))
    items = np.arange(300)
    one = enc.transform(np.full(300, 7), items)  # one user, 300 candidates, one call
    for k in (0, 123, 299):
        single = enc.transform(np.array([7]), np.array([k]))
        for key in one:
            assert (one[key][k] == single[key][0]).all(), key
    assert one["seq"].shape == (300, 5) and one["dense"].shape == (300, 3)


def test_sequence_features_have_no_leakage(small):
    ds, train, _ = small
    enc = FeatureEncoder(FeatureEncoderConfig(**ML, seq_len=50)).fit(TrainData(ds, train))
    b = enc.encode(train)
    ts = train["timestamp"].to_numpy()
    # every visible history event is a positive of the same user strictly before the sample
    n_visible = b["seq_mask"].sum(1).numpy()
    pos = train.filter(pl.col("rating") >= 4)
    for k in np.random.default_rng(0).choice(len(train), 40, replace=False):
        u = train["user_idx"][int(k)]
        want = pos.filter((pl.col("user_idx") == u) & (pl.col("timestamp") < int(ts[k]))).height
        assert n_visible[k] == min(want, 50)


def test_clear_errors_before_training(small):
    ds, train, _ = small
    with pytest.raises(DataError, match="shoe_size"):
        FeatureEncoder(FeatureEncoderConfig(user_columns=("shoe_size",))).fit(TrainData(ds, train))
    bad = train.with_columns(pl.lit(2.0).alias("click"))
    with pytest.raises(DataError, match="outside"):
        FeatureEncoder(FeatureEncoderConfig(label_column="click", label_threshold=None)).fit(TrainData(ds, bad))
    users = ds.users.with_columns(pl.when(pl.col("user_idx") == 3).then(None).otherwise(pl.col("age")).alias("age"))
    ds_nan = type(ds)(ds.name, ds.interactions, users, ds.items, ds.schema)
    with pytest.raises(DataError, match="NaN"):
        FeatureEncoder(FeatureEncoderConfig(dense_columns=("age",))).fit(TrainData(ds_nan, train))
    with pytest.raises(ConfigError, match="unknown count"):
        FeatureEncoderConfig(count_features=("clicks",))
    with pytest.raises(NotFittedError):
        FeatureEncoder().transform(np.array([0]), np.array([0]))
