"""The contract every registered feature transformer passes, run over FEATURE_TRANSFORMERS.names()
(a transformer registered without a case here fails): batch = one-by-one, the same fit twice
gives the same bits, a save/load round trip through core/persist (no pickle) transforms alike,
the column names match the columns, and an unfitted transformer refuses to transform."""

import numpy as np
import pytest

from funnelrec.core.errors import NotFittedError
from funnelrec.core.persist import load_state, save_state
from funnelrec.core.registry import FEATURE_TRANSFORMERS
from funnelrec.features.transformers import (
    CF_FEATURES,
    COUNT_FEATURES,
    TIME_FEATURES,
    AffinityFeaturesConfig,
    ContextFeaturesConfig,
    CountFeaturesConfig,
    CrossFeaturesConfig,
    DenseColumnsConfig,
    FieldFids,
    FieldFidsConfig,
    FitContext,
    MatchFeaturesConfig,
    NeighborhoodCFFeaturesConfig,
    SequenceFeaturesConfig,
    TargetEncodingFeaturesConfig,
    TimeFeaturesConfig,
)

CASES = {
    "field_fids": FieldFidsConfig(("gender", "age"), ("genres",), multi_width=2, bucketize={"age": 2}),
    "counts": CountFeaturesConfig(COUNT_FEATURES, buckets=2, smoothing=1.0),
    "crosses": CrossFeaturesConfig((("gender", "genres"), ("user_id", "item_id"))),
    "context": ContextFeaturesConfig(("hour", "weekday")),
    "dense_columns": DenseColumnsConfig(("age",)),
    "sequence": SequenceFeaturesConfig(seq_len=2, tag_column="genres"),
    "match": MatchFeaturesConfig(("item_id", "genres")),
    "affinity": AffinityFeaturesConfig(("genres",), smoothing=1.0),
    "target_encoding": TargetEncodingFeaturesConfig((("user_id",), ("item_id", "gender"), ("user_id", "genres")),
                                                    ("label", "rating"), folds=2, counts=True),
    "neighborhood_cf": NeighborhoodCFFeaturesConfig(CF_FEATURES, folds=2),
    "time": TimeFeaturesConfig(TIME_FEATURES),
}

# `world` (conftest.py): 4 users, 3 items, 6 events at ts 50…300
# every (user, item) pair at three times: before, between and after the training events
U, I = np.meshgrid(np.arange(4), np.arange(3), indexing="ij")
U, I = np.tile(U.ravel(), 3), np.tile(I.ravel(), 3)
TS = np.repeat([120, 260, 10**9], 12)


def fitted(name, train):
    """The transformer `name` fitted after the id/attribute fields it may read (crosses, sequences)."""
    c = FitContext.from_train(train, "rating", 4.0)
    if name != "field_fids":
        FieldFids(FieldFidsConfig(("gender",), ("genres",), multi_width=2)).fit(train, c)
    return FEATURE_TRANSFORMERS.get(name)(CASES[name]).fit(train, c)


def same(a, b) -> bool:
    """Bitwise equality of two FeatureColumns."""
    return (a.fids.tobytes() == b.fids.tobytes() and a.dense.tobytes() == b.dense.tobytes()
            and a.fid_names == b.fid_names and a.dense_names == b.dense_names
            and a.sequences.keys() == b.sequences.keys()
            and all(a.sequences[k].tobytes() == b.sequences[k].tobytes() for k in a.sequences))


@pytest.mark.parametrize("name", FEATURE_TRANSFORMERS.names())
def test_transformer_contract(name, world, tmp_path):
    assert name in CASES, f"no contract case for feature transformer {name!r}"
    t = fitted(name, world)
    out = t.transform(U, I, TS)
    assert out.fids.shape == (len(U), len(out.fid_names)) and out.fids.dtype == np.int64
    assert out.dense.shape == (len(U), len(out.dense_names)) and out.dense.dtype == np.float32
    assert out.fids.shape[1] + out.dense.shape[1] + len(out.sequences) > 0, "the case makes no column"
    for k in (0, 13, len(U) - 1):  # batch = one-by-one
        one = t.transform(U[k : k + 1], I[k : k + 1], TS[k : k + 1])
        assert one.fids.tolist() == out.fids[k : k + 1].tolist() and one.dense.tolist() == out.dense[k : k + 1].tolist()
        assert all(one.sequences[s].tolist() == out.sequences[s][k : k + 1].tolist() for s in out.sequences)
    assert same(fitted(name, world).transform(U, I, TS), out)  # the same fit gives the same bits
    save_state(t, tmp_path / name)
    assert same(load_state(tmp_path / name).transform(U, I, TS), out)
    with pytest.raises(NotFittedError):
        FEATURE_TRANSFORMERS.get(name)(CASES[name]).transform(U, I, TS)
