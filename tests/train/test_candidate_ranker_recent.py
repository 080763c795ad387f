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


def test_a_funnel_with_the_short_term_block_saves_loads_and_serves_the_same(world, tmp_path):
    """Trained, saved, loaded: the loaded funnel serves the same items and scores, real-time
    history included, and the history's order moves the scores (the block reads it)."""
    from candidate_ranker_world import tiny_funnel_config

    from funnelrec.core.types import RequestState
    from funnelrec.pipeline.funnel import Funnel

    ds, split = world
    f = FunnelBuilder(tiny_funnel_config(1, recent_decay=0.5)).fit(ds, split.train, labels=split.valid)
    f.save(tmp_path / "art")
    g = Funnel.load(tmp_path / "art")
    users = np.array([0, 1, 2])
    fresh = [np.array([3, 7, 11]), np.array([5]), None]
    a = f.run(users, k=10, state=RequestState(history=fresh))
    b = g.run(users, k=10, state=RequestState(history=fresh))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.items, y.items)
        np.testing.assert_allclose(x.task_scores["ctr"], y.task_scores["ctr"], rtol=1e-6)
    c = g.run(users[:1], k=10, state=RequestState(history=[fresh[0][::-1]]))
    assert not np.allclose(np.sort(c[0].task_scores["ctr"]), np.sort(b[0].task_scores["ctr"]))
