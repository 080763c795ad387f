"""The baseline a fitted ranker is held to: each channel's own order over the merged candidates,
NDCG@10 on the ranker's validation users (train/candidate_ranker.py `_channel_ndcg`), worked by
hand; `weaker_than_a_channel` names the channel that beat the ranker; `funnelrec train` warns."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp

from funnelrec.core.types import MergedCandidates
from funnelrec.train.candidate_ranker import CandidateRanker, _channel_ndcg
from funnelrec.train.trainer import TrainResult

NAN = float("nan")


def test_each_channels_own_order_by_hand():
    # user 0: candidates 3, 1, 4; channel a scores 0.9, 0.5, – ; b 0.1, 0.8, 0.7; positive: item 1
    # user 1: candidates 0, 2;    channel a scores  –, 0.3;      b 0.2, 0.9;      positive: item 0
    m0 = MergedCandidates(np.array([3, 1, 4]), np.array([3, 3, 2], np.uint64),
                          np.array([[0.9, 0.1], [0.5, 0.8], [NAN, 0.7]], np.float32), ["a", "b"])
    m1 = MergedCandidates(np.array([0, 2]), np.array([2, 3], np.uint64),
                          np.array([[NAN, 0.2], [0.3, 0.9]], np.float32), ["a", "b"])
    pos = sp.csr_matrix((np.ones(2), ([0, 1], [1, 0])), shape=(2, 5))
    got = _channel_ndcg([m0, m1], ("a", "b"), pos, np.array([0, 1]))
    g2 = 1 / math.log2(3)  # a hit at rank 2, one positive: DCG / IDCG = 1 / log2(3)
    # a: user 0 → 3, 1 (hit at 2); user 1 → 2 only (item 0 not recalled by a: no hit)
    # b: user 0 → 1 (hit at 1), 4, 3; user 1 → 2, 0 (hit at 2)
    assert got["a"] == pytest.approx((g2 + 0.0) / 2)
    assert got["b"] == pytest.approx((1.0 + g2) / 2)


def test_weaker_than_a_channel_names_the_best_one_only_when_it_wins():
    r = CandidateRanker()
    assert r.weaker_than_a_channel() is None  # not fitted
    r.channel_valid_ndcg_ = {"itemcf": 0.30, "hot": 0.12, "ease": 0.41}
    r.train_result_ = TrainResult(epochs=3, best_epoch=1, best_score=0.35)
    assert r.weaker_than_a_channel() == ("ease", 0.41, 0.35)
    r.train_result_ = TrainResult(epochs=3, best_epoch=1, best_score=0.45)
    assert r.weaker_than_a_channel() is None


def test_a_fitted_ranker_holds_every_channels_baseline(world):
    from candidate_ranker_world import tiny_funnel_config

    from funnelrec.pipeline.builder import FunnelBuilder

    ds, split = world
    funnel = FunnelBuilder(tiny_funnel_config(2)).fit(ds, split.train, labels=split.valid)
    base = funnel.ranker_.channel_valid_ndcg_
    assert set(base) == {"itemcf", "hot"} and all(0.0 <= v <= 1.0 for v in base.values())
    assert base["itemcf"] != base["hot"]  # two orders, two scores


def test_a_repeated_label_pairs_weight_is_its_positive_rows_max_by_hand():
    """Label rows of pair (0, 1): watch 0.5 s and 0 s → watch-time positive, weight 0.5 (the row
    with no watch is not a positive and has no say); pair (0, 2): watch 30 s and 90 s → 90 (a sum
    would count a valueless watch rule's rows, where online labels 0/1); pair (1, 0): one row,
    watch 0 → not a positive, weight 1; ts is each pair's first event. A binary task the same:
    conversion rows of weight 1 and 3 → 3."""
    import polars as pl

    from funnelrec.train.candidate_ranker import CandidateRankerConfig, LabelSet

    labels = pl.DataFrame({"user_idx": [0, 0, 0, 0, 1], "item_idx": [1, 1, 2, 2, 0],
                           "timestamp": [50, 40, 7, 9, 3], "watch_time": [0.5, 0.0, 30.0, 90.0, 0.0],
                           "conv": [0, 0, 1, 1, 0], "conv_w": [1.0, 1.0, 1.0, 3.0, 1.0]})
    cfg = CandidateRankerConfig(tasks=("ctr", "watch_time", "conv"), task_kinds={"watch_time": "watch_time"},
                                weight_columns={"conv": "conv_w"})
    s = LabelSet(merged=[], users=np.array([0, 1]), positives=sp.csr_matrix((2, 3)), history=sp.csr_matrix((2, 3)),
                 item_log_pop=np.zeros(3), user_log_act=np.zeros(2), labels=labels)
    t = CandidateRanker(cfg)._label_table(s)
    assert t["key"].tolist() == [1, 2, 3]  # u · 3 + i
    assert t["ts"].tolist() == [40, 7, 3]
    assert t["y_watch_time"].tolist() == [1.0, 1.0, 0.0] and t["w_watch_time"].tolist() == [0.5, 90.0, 1.0]
    assert t["y_conv"].tolist() == [0.0, 1.0, 0.0] and t["w_conv"].tolist() == [1.0, 3.0, 1.0]
    assert t["y_ctr"].tolist() == [1.0, 1.0, 1.0] and t["w_ctr"].tolist() == [1.0, 1.0, 1.0]
