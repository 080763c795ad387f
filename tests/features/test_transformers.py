"""Each feature transformer on a world small enough to compute every value by hand (`world`, conftest.py).

Users (index: id, gender, age): 0: 1 M 20 · 1: 2 F 30 · 2: 3 M 40 · 3: 4 F 50 (no events).
Items (index: id, genres, publish_time): 0: 10 [a, b] 0 · 1: 20 [b] 1 y · 2: 30 [c] null.
TRAIN events (user, item, ts, rating; label = rating ≥ 4):
    u0: (i0, 100, 5 → 1), (i1, 200, 2 → 0), (i2, 300, 4 → 1)
    u1: (i0, 150, 4 → 1), (i1, 250, 5 → 1)
    u2: (i2,  50, 1 → 0)
so ȳ = 4/6 and r̄ = 21/6.
"""

from datetime import UTC, datetime

import numpy as np
import pytest
import xxhash

from funnelrec.core.errors import ConfigError, DataError, NotFittedError, UnknownComponentError
from funnelrec.core.registry import FEATURE_TRANSFORMERS
from funnelrec.data.dataset import TrainData
from funnelrec.features.encoder import FeatureEncoder, FeatureEncoderConfig
from funnelrec.features.fid import FidVocab, slot_of
from funnelrec.features.transformers import (
    FAMILY_ORDER,
    AffinityFeatures,
    AffinityFeaturesConfig,
    ContextFeatures,
    ContextFeaturesConfig,
    CountFeatures,
    CountFeaturesConfig,
    CrossFeatures,
    CrossFeaturesConfig,
    DenseColumns,
    DenseColumnsConfig,
    FieldFids,
    FieldFidsConfig,
    FitContext,
    MatchFeatures,
    MatchFeaturesConfig,
    NeighborhoodCFFeatures,
    NeighborhoodCFFeaturesConfig,
    SequenceFeatures,
    SequenceFeaturesConfig,
    TargetEncodingFeatures,
    TargetEncodingFeaturesConfig,
    TimeFeatures,
    TimeFeaturesConfig,
)

YEAR = 365.25 * 86400
M64 = (1 << 64) - 1


def ctx(train: TrainData) -> FitContext:
    return FitContext.from_train(train, "rating", 4.0)


def signed(x: int) -> int:
    return x - (1 << 64) if x >= 1 << 63 else x


def fid(slot: int, value) -> int:
    """The FID of one value, from the layout in features/fid.py (xxh64 of the value's bytes)."""
    data = value.encode() if isinstance(value, str) else int(value).to_bytes(8, "little", signed=True)
    return signed((slot << 54) | (xxhash.xxh64_intdigest(data) & ((1 << 54) - 1)))


def splitmix_cross(slot: int, a: int, b: int) -> int:
    """Cross FID written out in Python integers: splitmix64 finalizer of a·φ ⊕ b."""
    x = ((a & M64) * 0x9E3779B97F4A7C15 & M64) ^ (b & M64)
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & M64
    x ^= x >> 31
    return signed((slot << 54) | (x & ((1 << 54) - 1)))


def test_every_family_is_registered_once_in_the_fixed_order():
    assert set(FEATURE_TRANSFORMERS.names()) == {c.registered_name for c in FAMILY_ORDER}
    assert len(FAMILY_ORDER) == 11 and FEATURE_TRANSFORMERS.get("crosses") is CrossFeatures
    with pytest.raises(UnknownComponentError, match="known: affinity"):
        FEATURE_TRANSFORMERS.get("embeddings")


def test_field_fids_slots_multi_values_and_buckets(world):
    c = ctx(world)
    cfg = FieldFidsConfig(user_columns=("gender", "age"), item_columns=("genres",), multi_width=2, bucketize={"age": 2})
    t = FieldFids(cfg).fit(world, c)
    assert t.user_names_ == ("user_id", "gender", "age") and t.item_names_ == ("item_id", "genres", "genres")
    # slots: user_id 1, item_id 2, gender 3, age 4, genres 5
    assert t.user_fids_[:, 0].tolist() == [fid(1, v) for v in (1, 2, 3, 4)]
    assert t.user_fids_[:, 1].tolist() == [fid(3, v) for v in "MFMF"]
    # age in 2 quantile buckets: boundary = median(20, 30, 40, 50) = 35 → buckets 0, 0, 1, 1
    assert t.user_fids_[:, 2].tolist() == [fid(4, b) for b in (0, 0, 1, 1)]
    assert t.item_fids_[:, 1:].tolist() == [[fid(5, "a"), fid(5, "b")], [fid(5, "b"), 0], [fid(5, "c"), 0]]
    assert c.next_slot == 6 and c.fields["genres"][0] == "item"
    # serving = training: transform of pairs gathers the same rows
    out = t.transform([3, 0], [2, 0])
    assert out.fid_names == t.user_names_ + t.item_names_
    assert out.fids[0].tolist() == [fid(1, 4), fid(3, "F"), fid(4, 1), fid(2, 30), fid(5, "c"), 0]


def test_count_features_smoothing_cdf_and_buckets(world):
    c = ctx(world)
    FieldFids(FieldFidsConfig((), (), include_ids=False)).fit(world, c)
    t = CountFeatures(CountFeaturesConfig(("user_pos_rate", "item_mean_rating", "user_count"), buckets=2,
                                          smoothing=1.0)).fit(world, c)
    # user_pos_rate = (Σy + 1 · 2/3) / (n + 1): u0 (2 + 2/3) / 4, u1 (2 + 2/3) / 3, u2 (0 + 2/3) / 2, u3 2/3
    assert np.allclose(t.counts_["user_pos_rate"], [2 / 3, 8 / 9, 1 / 3, 2 / 3])
    # item_mean_rating = (Σr + 3.5) / (n + 1): i0 (9 + 3.5) / 3, i1 (7 + 3.5) / 3, i2 (5 + 3.5) / 3
    assert np.allclose(t.counts_["item_mean_rating"], [12.5 / 3, 10.5 / 3, 8.5 / 3])
    # dense = CDF over the 6 training rows: user_pos_rate values 2/3 ×3, 8/9 ×2, 1/3 ×1
    d = t.transform([0, 1, 2, 3], [0, 1, 2, 0]).dense
    assert np.allclose(d[:, 0], [4 / 6, 1.0, 1 / 6, 4 / 6])
    # user_count = log1p(n): training rows log 4 ×3, log 3 ×2, log 2 ×1; u3 (n = 0) is below all
    assert np.allclose(d[:, 2], [1.0, 3 / 6, 1 / 6, 0.0])
    # user_count buckets over the users' values log1p(3, 2, 1, 0): boundary = their median
    # (log 2 + log 3) / 2 → buckets 1, 1, 0, 0; slots 1, 2 are the pos-rate and mean-rating buckets
    assert t.user_names_ == ("user_pos_rate_bucket", "user_count_bucket")
    assert t.user_fids_[:, 1].tolist() == [fid(3, b) for b in (1, 1, 0, 0)]
    assert slot_of(t.item_fids_[:, 0]).tolist() == [2] * 3 and c.next_slot == 4


def test_dense_columns_are_training_row_cdfs(world):
    t = DenseColumns(DenseColumnsConfig(("age",))).fit(world, ctx(world))
    # training rows' ages: 20 ×3, 30 ×2, 40 ×1; user 3 (50) is above all of them
    assert t.transform([0, 1, 2, 3], [0, 0, 0, 0]).dense[:, 0].tolist() == pytest.approx([0.5, 5 / 6, 1.0, 1.0])
    with pytest.raises(DataError, match="shoe_size"):
        DenseColumns(DenseColumnsConfig(("shoe_size",))).fit(world, ctx(world))


def test_cross_fids_are_the_splitmix_of_both_fids(world):
    c = ctx(world)
    fields = FieldFids(FieldFidsConfig(("gender",), ("genres",), include_ids=False, multi_width=2)).fit(world, c)
    t = CrossFeatures(CrossFeaturesConfig((("gender", "genres"),))).fit(world, c)
    assert t.pair_names_ == ("gender*genres",) * 2 and c.next_slot == 4
    f = t.transform([0, 1], [0, 2]).fids[:, -2:]
    g_m, g_f = fields.user_fids_[0, 0], fields.user_fids_[1, 0]
    a, b, cc = fid(2, "a"), fid(2, "b"), fid(2, "c")
    assert f[0].tolist() == [splitmix_cross(3, int(g_m), a), splitmix_cross(3, int(g_m), b)]
    assert f[1].tolist() == [splitmix_cross(3, int(g_f), cc), 0]  # item 30 has one genre: PAD
    with pytest.raises(ConfigError, match="'genres' is not a user field"):
        CrossFeatures(CrossFeaturesConfig((("genres", "gender"),))).fit(world, c)


def test_context_hour_and_weekday_of_utc_time(world):
    c = ctx(world)
    t = ContextFeatures(ContextFeaturesConfig(("hour", "weekday"))).fit(world, c)
    ts = np.array([4 * 86400 + 13 * 3600 + 59, 1_700_000_000])  # Mon 1970-01-05 13:00:59; Tue 2023-11-14 22:13
    want = [(d.hour, d.weekday()) for d in (datetime.fromtimestamp(int(x), UTC) for x in ts)]
    assert want == [(13, 0), (22, 1)]
    got = t.transform([0, 0], [0, 0], ts).fids
    assert got.tolist() == [[fid(1, h), fid(2, w)] for h, w in want]
    with pytest.raises(DataError, match="ts"):
        t.transform([0], [0])


def test_sequences_are_positives_strictly_before_ts(world):
    c = ctx(world)
    FieldFids(FieldFidsConfig((), ("genres",), multi_width=2)).fit(world, c)  # user_id 1, item_id 2, genres 3
    t = SequenceFeatures(SequenceFeaturesConfig(seq_len=2, tag_column="genres")).fit(world, c)
    # u0's positives: i0 at 100, i2 at 300 (i1 at 200 is a negative)
    s = t.sequences(np.array([0, 0, 0, 1]), np.array([1, 1, 1, 2]), np.array([100, 300, 301, 10**9]))
    assert s["seq_mask"].tolist() == [[False, False], [False, True], [True, True], [True, True]]
    assert s["seq"].tolist() == [[0, 0], [0, fid(2, 10)], [fid(2, 10), fid(2, 30)], [fid(2, 10), fid(2, 20)]]
    assert s["seq_cat"].tolist()[2] == [fid(3, "a"), fid(3, "c")]
    assert s["target"].tolist() == [fid(2, 20)] * 3 + [fid(2, 30)]
    # serving (ts = None) sees the whole history; with a vocabulary FIDs become rows, PAD → row 0
    vocab = FidVocab().fit(np.array([fid(2, 10), fid(2, 30)]))
    row = {f: k + 1 for k, f in enumerate(sorted([fid(2, 10), fid(2, 30)]))}  # sorted FIDs → rows 1, 2
    rows = t.transform([0], [1], None, vocab=vocab).sequences
    assert rows["seq"].tolist() == [[row[fid(2, 10)], row[fid(2, 30)]]]
    assert rows["target"].tolist() == [0]  # i1's FID is not in the vocabulary
    with pytest.raises(ConfigError, match="item_id"):
        SequenceFeatures(SequenceFeaturesConfig(seq_len=2)).fit(world, ctx(world))


def test_match_counts_earlier_positives_sharing_a_value(world):
    t = MatchFeatures(MatchFeaturesConfig(("genres", "item_id"))).fit(world, ctx(world))
    # u1's positives: i0 [a, b] at 150, i1 [b] at 250. Candidate i1 [b]: before 300 → 2, before 200 → 1
    d = t.transform([1, 1, 1, 0], [1, 1, 2, 0], [300, 200, 300, 10**9]).dense
    assert d[:, 0].tolist() == pytest.approx(np.log1p([2, 1, 0, 2]).tolist())  # u0, i0 [a, b]: i0 matches a and b
    assert d[:, 1].tolist() == pytest.approx(np.log1p([1, 0, 0, 1]).tolist())
    assert t.dense_names_ == ("match_genres", "match_item_id")


def test_affinity_is_the_smoothed_rate_over_all_earlier_events(world):
    t = AffinityFeatures(AffinityFeaturesConfig(("genres",), smoothing=1.0)).fit(world, ctx(world))
    # u0 × candidate i1 [b]: events with b are i0 (y 1, t 100) and i1 (y 0, t 200)
    d = t.transform([0, 0, 3], [1, 1, 1], [10**9, 150, 10**9]).dense
    assert d[0].tolist() == pytest.approx([(1 + 2 / 3) / 3, np.log1p(2)])
    assert d[1].tolist() == pytest.approx([(1 + 2 / 3) / 2, np.log1p(1)])
    assert d[2].tolist() == pytest.approx([2 / 3, 0.0])  # no events: the prior ȳ
    assert t.dense_names_ == ("affinity_genres", "affinity_n_genres")


def test_target_encoding_leaves_a_training_row_out(world):
    cfg = TargetEncodingFeaturesConfig(keys=(("user_id",),), folds=0, smoothing=0.0, counts=True)
    t = TargetEncodingFeatures(cfg).fit(world, ctx(world))
    # training rows' own values: u0 → (0 + 1) / 2, (1 + 1) / 2, (1 + 0) / 2; u1 → 1, 1; u2 → no other row: ȳ
    # so the training values sorted are 0.5, 0.5, 2/3, 1, 1, 1
    d = t.transform([0, 1, 2, 3], [0, 2, 0, 0]).dense
    # (u0, i0) is a training row: 0.5 → CDF 2/6, n = 2; (u1, i2) and (u2, i0) are not: full means 1
    # and 0; u3 has no rows: the prior 2/3 → CDF 3/6
    assert d[:, 0].tolist() == pytest.approx([2 / 6, 1.0, 0.0, 0.5])
    assert d[:, 1].tolist() == pytest.approx(np.log1p([2, 2, 1, 0]).tolist())
    assert t.dense_names_ == ("te_label_user_id", "te_n_user_id")
    with pytest.raises(ConfigError, match="unknown target values"):
        TargetEncodingFeaturesConfig(values=("clicks",))


def test_item_cf_estimate_from_cosine_neighbours(world):
    cfg = NeighborhoodCFFeaturesConfig(("itemcf_label",), power=1.0, smoothing=0.0)
    t = NeighborhoodCFFeatures(cfg).fit(world, ctx(world))
    # binary columns i0 = i1 = (1, 1, 0, 0), i2 = (1, 0, 1, 0): cos(i0, i1) = 1, cos(i0, i2) = cos(i1, i2) = 1/2
    # est(u0, i0) = (1 · y(u0, i1) + 1/2 · y(u0, i2)) / (1 + 1/2) = 1/3; est(u1, i2) = (1/2 + 1/2) / 1 = 1;
    # est(u2, i0) = (1/2 · 0) / (1/2) = 0
    assert t.estimate("itemcf_label", np.array([0, 1, 2]), np.array([0, 2, 0])).tolist() == pytest.approx([1 / 3, 1, 0])


def test_time_position_elapsed_and_item_age(world):
    t = TimeFeatures(TimeFeaturesConfig(("user_time_position", "user_elapsed", "item_age"))).fit(world, ctx(world))
    v = t.values(np.array([0, 0, 3, 1]), np.array([1, 0, 0, 2]), np.array([250, 100, 250, int(YEAR) + 150]))
    # u0's events at 100, 200, 300: 2 of 3 before 250, none before 100; u3 has none → 0.5, elapsed 0
    assert v[:, 0].tolist() == pytest.approx([2 / 3, 0.0, 0.5, 1.0])
    assert v[:, 1].tolist() == pytest.approx([np.log1p(150 / 3600), 0.0, 0.0, np.log1p(YEAR / 3600)])
    assert v[:, 2].tolist() == pytest.approx([(250 - YEAR) / YEAR, 100 / YEAR, 250 / YEAR, 0.0])  # i2: no publish time
    with pytest.raises(DataError, match="ts"):
        t.transform([0], [0])


def test_encoder_lays_out_the_families_and_shares_one_vocabulary(world):
    cfg = FeatureEncoderConfig(user_columns=("gender",), item_columns=("genres",), multi_width=2,
                               count_features=("item_count", "user_count"), count_buckets=2,
                               crosses=(("gender", "genres"),), context=("hour",), match_columns=("genres",),
                               label_threshold=4.0)
    enc = FeatureEncoder(cfg).fit(world)
    # user block, item block, pair columns; slots: user_id 1, item_id 2, gender 3, genres 4, item_count
    # bucket 5, user_count bucket 6, cross 7, hour 8
    assert enc.field_names_ == ("user_id", "gender", "user_count_bucket", "item_id", "genres", "genres",
                                "item_count_bucket", "gender*genres", "gender*genres", "hour")
    assert enc.dense_names_ == ["item_count", "user_count", "match_genres"]
    b = enc.transform([0], [1], [200])  # hour 0, as every training event
    want = [fid(1, 1), fid(3, "M"), fid(6, 1), fid(2, 20), fid(4, "b"), 0, fid(5, 1),
            splitmix_cross(7, fid(3, "M"), fid(4, "b")), 0, fid(8, 0)]
    assert b["sparse"][0].tolist() == enc.vocab_.lookup(np.array(want)).tolist()
    assert (b["sparse"][0].numpy() > 0).tolist() == [w != 0 for w in want]  # every FID here was in training
    assert int(b["sparse"].max()) < enc.spec.n_embeddings
    with pytest.raises(NotFittedError):
        CountFeatures().transform([0], [0])
