"""`rank.recent_decay` in the funnel ranker (train/candidate_ranker.py): the short-term block is
a part of the ranker's dense input, and label sets shared by two configs (the variant benches
fit several rankers on one set of label sets) give each config its own match features."""

from __future__ import annotations

import dataclasses

import numpy as np

from funnelrec.pipeline.builder import FunnelBuilder
from funnelrec.train.candidate_ranker import CandidateRanker


def test_label_sets_shared_by_two_configs_give_each_its_own_match_features(world):
    from candidate_ranker_world import tiny_funnel_config

    ds, split = world
    cfg = tiny_funnel_config(1)
    builder = FunnelBuilder(cfg)
    channels = builder.fit(ds, split.train).channels_
    sets = builder.label_sets(ds, split.train, split.valid, channels)
    plain = CandidateRanker(cfg.rank).fit(ds, split.train, sets)
    short = CandidateRanker(dataclasses.replace(cfg.rank, recent_decay=0.5)).fit(ds, split.train, sets)
    again = CandidateRanker(cfg.rank).fit(ds, split.train, sets)
    assert plain.match_.names_ == ["match_log_tags", "match_share_tags"] == again.match_.names_
    assert short.match_.names_ == plain.match_.names_ + ["recent_share_tags"]
    assert short.n_dense_ == plain.n_dense_ + 1
    # the short-term column is fitted on, not constant: its training values spread
    assert short.features_.std_[-1] > 1e-3
    # the same config on the same sets trains the same ranker (the cached match is reused)
    np.testing.assert_array_equal(plain.features_.mean_, again.features_.mean_)
