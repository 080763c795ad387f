"""`rank.ensemble` (train/candidate_ranker.py `MeanEnsemble`): N members trained apart with seeds
seed … seed+N−1, the served logit their mean.

- member 0 is exactly the ranker `ensemble: 1` trains (same init, samples and batch order), so a
  one-member funnel is unchanged;
- the other members differ from it (their own validation users, negatives, init); each member's
  validation users are its own draw and give it no training row;
- the served task logits are the members' mean, computed here from each member's own forward;
- the ensemble round-trips through an artifact; a bad `ensemble` is a ConfigError naming the key.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from funnelrec.core.errors import ConfigError
from funnelrec.pipeline.builder import FunnelBuilder
from funnelrec.pipeline.config import FunnelConfig
from funnelrec.pipeline.funnel import Funnel
from funnelrec.train.candidate_ranker import CandidateRankerConfig, MeanEnsemble


def _cfg(**rank) -> FunnelConfig:
    from candidate_ranker_world import tiny_funnel_config

    return tiny_funnel_config(2, **rank)


SAMPLED: dict[str, list] = {}  # per funnel of `pair`: each `_samples` call (one per member)


@pytest.fixture(scope="module")
def pair(world):
    """The one- and three-member funnels, fitted while recording each member's `_samples` call:
    the label users, the validation users it was handed, and the users of its training rows."""
    import funnelrec.train.candidate_ranker as cr

    ds, split = world
    samples = cr.CandidateRanker._samples

    def recording(self, sets, valid_users, *args, **kwargs):
        out = samples(self, sets, valid_users, *args, **kwargs)
        log.append((sets[0].users.copy(), np.array(valid_users), out[0][out[6] == 0].copy()))
        return out

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cr.CandidateRanker, "_samples", recording)
        log: list = []
        one = FunnelBuilder(_cfg()).fit(ds, split.train, labels=split.valid)
        SAMPLED["one"], log = log, []
        three = FunnelBuilder(_cfg(ensemble=3)).fit(ds, split.train, labels=split.valid)
        SAMPLED["three"] = log
    return one, three


def test_each_member_holds_out_its_own_validation_users(pair):
    """Member k draws its validation users with seed + k: ~10 % of the label users, a different
    draw for every member (member 0's = the one-member ranker's), none of them in its own
    training rows — while the other members do train on some of them."""
    one, three = pair
    [(_, v_one, _)] = SAMPLED["one"]
    assert len(SAMPLED["three"]) == 3
    users = SAMPLED["three"][0][0]
    n_valid = round(0.1 * len(users))
    valid = [v for _, v, _ in SAMPLED["three"]]
    np.testing.assert_array_equal(valid[0], v_one)
    np.testing.assert_array_equal(valid[0], three.ranker_.valid_users_)
    for k, (label_users, v, trained) in enumerate(SAMPLED["three"]):
        np.testing.assert_array_equal(label_users, users)
        assert len(np.unique(v)) == len(v) == n_valid >= 5 and np.isin(v, users).all()
        assert not np.isin(trained, v).any()  # its validation users give it no training row
        others = [t for j, (_, _, t) in enumerate(SAMPLED["three"]) if j != k]
        assert all(np.isin(v, t).any() for t in others)  # … but other members train on some of them
    for a in range(3):
        for b in range(a + 1, 3):
            assert set(valid[a].tolist()) != set(valid[b].tolist()), (a, b)


def test_member_zero_is_the_single_ranker_and_the_others_differ(pair):
    one, three = pair
    m = three.ranker_.model_
    assert isinstance(m, MeanEnsemble) and len(m.members) == 3
    assert not isinstance(one.ranker_.model_, MeanEnsemble)
    single = one.ranker_.model_.state_dict()
    first = m.members[0].state_dict()
    assert single.keys() == first.keys()
    for k in single:
        torch.testing.assert_close(first[k], single[k], rtol=0, atol=0)
    for other in m.members[1:]:
        assert any(not torch.equal(other.state_dict()[k], single[k]) for k in single)
    assert len(three.ranker_.member_results_) == 3 and len(one.ranker_.member_results_) == 1
    np.testing.assert_array_equal(three.ranker_.valid_users_, one.ranker_.valid_users_)


def test_served_logits_are_the_members_mean(pair):
    _, three = pair
    r = three.ranker_
    users = np.array([0, 7, 42])
    merged = three.candidates(users)
    got = r.score_tasks(merged, users, three.stats_.item_log_pop, three.stats_.user_log_act)
    u, items, X = r.features_.raw(merged, users, three.stats_.item_log_pop, three.stats_.user_log_act)
    b = r.batch(u, items, X)
    with torch.inference_mode():
        each = np.stack([mem(b)["ctr"].numpy() for mem in r.model_.members])
    want = each.sum(0) / 3.0
    assert np.std(each, axis=0).max() > 0  # the members disagree somewhere: the mean is not one of them
    np.testing.assert_allclose(np.concatenate([g["ctr"] for g in got]), want, rtol=1e-5, atol=1e-6)


def test_an_ensemble_round_trips_through_an_artifact(pair, tmp_path):
    _, three = pair
    users = np.array([0, 5, 9])
    a = three.recommend_batch(users, 10)
    back = Funnel.load(three.save(tmp_path / "art"))
    assert isinstance(back.ranker_.model_, MeanEnsemble) and len(back.ranker_.model_.members) == 3
    b = back.recommend_batch(users, 10)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_allclose(a[1], b[1], rtol=1e-6)


@pytest.mark.parametrize("bad", [0, -1, True, 2.5])
def test_a_bad_ensemble_size_names_the_key(bad):
    with pytest.raises(ConfigError, match="rank.ensemble"):
        CandidateRankerConfig(ensemble=bad)


def test_online_fid_admission_grows_every_members_table(pair):
    from funnelrec.online.updates import copy_ranker, grow_ranker_table

    _, three = pair
    r = copy_ranker(three.ranker_)
    n0 = r.spec_.n_embeddings
    users = np.array([0, 7, 42])
    merged = three.candidates(users)
    stats = (three.stats_.item_log_pop, three.stats_.user_log_act)
    scores0 = r.score_tasks(merged, users, *stats)
    before = {k: v.clone() for k, v in r.model_.state_dict().items()}
    grow_ranker_table(r, 4)
    after = r.model_.state_dict()
    assert isinstance(r.model_, MeanEnsemble) and r.spec_.n_embeddings == n0 + 4 == r.model_.spec.n_embeddings
    assert after.keys() == before.keys()
    grown = [k for k in before if after[k].shape != before[k].shape]
    assert {k.split(".")[1] for k in grown} == {"0", "1", "2"}  # a table of every member
    for k in before:
        if k in grown:
            assert after[k].shape[0] == n0 + 4 and torch.count_nonzero(after[k][n0:]) == 0
            torch.testing.assert_close(after[k][:n0], before[k], rtol=0, atol=0)
        else:
            torch.testing.assert_close(after[k], before[k], rtol=0, atol=0)
    for a, b in zip(scores0, r.score_tasks(merged, users, *stats)):  # the old rows serve as before
        np.testing.assert_allclose(a["ctr"], b["ctr"], rtol=1e-6, atol=1e-7)
    assert three.ranker_.spec_.n_embeddings == n0  # the served ranker is untouched
