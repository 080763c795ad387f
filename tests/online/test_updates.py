"""Online model updates (#10 item 4, model side): ranker update on served features, FTRL warm
start, FID admission/eviction, the AUC guardrail, the vector channel's refresh.

The world: ml-100k fitted on the first 50 % of time; 100 users active after the cut; samples =
the funnel's top-30 for each as impressions (click = rated in the first half of the user's later
interactions) plus their other first-half ratings (clicks no channel recalled); holdout = the
same with the second half (items clicked in the first half left out)."""

from __future__ import annotations

import dataclasses

import numpy as np
import polars as pl
import pytest
import torch
from sklearn.metrics import roc_auc_score

from funnelrec.core.errors import ConfigError, DataError, GuardrailRefused
from funnelrec.eval.metrics import auc
from funnelrec.online.guardrail import AUCGuardrail, ranker_logits
from funnelrec.online.samples import SAMPLE_COLUMNS, later_halves, rank_samples, samples_from_interactions
from funnelrec.online.updates import (
    RankerUpdateConfig,
    RankerUpdater,
    VectorUpdateConfig,
    VectorUpdater,
    copy_ranker,
    warm_ftrl,
)

K = 30
N_USERS = 100
# the world's funnel (bench/online_updates.py measures the same one across seeds)
WORLD_CONFIG = {
    "recall": {"channels": [{"name": "itemcf", "n": 100}, {"name": "hot", "n": 50},
                            {"name": "vector", "n": 50, "params": {
                                "epochs": 2, "num_threads": 1, "item_columns": ["genres", "directors", "release_year"],
                                "user_columns": ["age_band", "gender", "occupation", "region"],
                                "model": {"embedding_dim": 16, "user_hidden": [32], "item_hidden": [32],
                                          "output_dim": 16}}}],
               "merge": {"total": 150, "quotas": {"hot": 40}, "priority": ["itemcf", "vector", "hot"]}},
    "rank": {"epochs": 3, "user_columns": ["age_band", "gender", "occupation"],  # the MovieLens columns
             "item_columns": ["release_year", "genres"], "match_columns": ["genres", "directors"],
             "recent_decay": 0.5}}  # the short-term block too: every served = samples check covers it


def _frame(rows: list[tuple]) -> pl.DataFrame:
    # the eight columns from before the cart label: check_samples reads a frame without it as cart = 0
    return pl.DataFrame(rows, schema=list(SAMPLE_COLUMNS[:8]), orient="row")


@pytest.fixture(scope="module")
def world(ml100k):
    from funnelrec.data.splits import temporal_split
    from funnelrec.pipeline.builder import FunnelBuilder
    from funnelrec.pipeline.config import FunnelConfig

    inter = ml100k.interactions.sort("timestamp")
    t = inter["timestamp"]
    cut = int(t.min() + 0.5 * (t.max() - t.min()))
    fit_rows, rest = inter.filter(pl.col("timestamp") < cut), inter.filter(pl.col("timestamp") >= cut)
    cfg = FunnelConfig.from_dict(WORLD_CONFIG)
    sp_ = temporal_split(fit_rows, (0.9, 0.1, 0.0))
    funnel = FunnelBuilder(cfg).fit(ml100k, sp_.train, labels=sp_.valid)
    rng = np.random.default_rng(0)
    users = np.sort(rng.choice(rest["user_idx"].unique().to_numpy(), N_USERS, replace=False))
    first, second = later_halves(rest, users)
    recs = funnel.run(users, k=K)
    shown = [r.items for r in recs]
    samples = samples_from_interactions(funnel, users, first, K, recommended=shown)
    holdout = samples_from_interactions(funnel, users, second, K, exclude=first, recommended=shown)
    return {"funnel": funnel, "users": users, "recs": recs, "samples": samples, "holdout": holdout,
            "cut": cut, "fit_rows": sp_.train}


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


# --------------------------------------------------------------------------- served features
def test_sample_features_are_the_served_ones(world):
    """The logits of impression samples equal the task scores Funnel.run served for them."""
    f, users, recs = world["funnel"], world["users"], world["recs"]
    uid, iid = f.dataset_.users["user_id"].to_numpy(), f.dataset_.items["item_id"].to_numpy()
    rows = [(str(uid[u]), str(iid[i]), 0, "r", 0, 0, 0.0, 0) for u, rec in zip(users[:5], recs[:5])
            for i in rec.items.tolist()]
    s = rank_samples(f, _frame(rows))
    assert s.recalled.all() and len(s) == sum(len(r.items) for r in recs[:5])
    served = np.concatenate([r.task_scores["ctr"] for r in recs[:5]])
    np.testing.assert_allclose(ranker_logits(f.ranker_, s), served, rtol=1e-5, atol=1e-5)


def test_unrecalled_clicks_take_the_random_pair_form(world):
    f = world["funnel"]
    s = rank_samples(f, world["samples"])
    un = ~s.recalled
    assert un.any() and s.recalled.any()
    n_match = len(f.ranker_.features_.match_.names_)
    rec_block = s.X[un, : s.X.shape[1] - n_match]
    # recall block zero except popularity and activity (the layout of feature_names)
    np.testing.assert_array_equal(rec_block[:, :-3], 0)
    np.testing.assert_allclose(rec_block[:, -3], f.stats_.item_log_pop[s.items[un]])
    np.testing.assert_array_equal(rec_block[:, -1], 0)
    dropped = rank_samples(f, world["samples"], unrecalled="drop")
    assert len(dropped) == int(s.recalled.sum()) and dropped.n_dropped["unrecalled"] == int(un.sum())


def test_count_updates_do_not_leak_the_label_into_the_recall_block(world):
    """The learner adds a step's clicks to itemCF's / hot's histories before the ranker update
    sees the step's samples; a clicked impression must keep the recall row it was served with
    (its item recalled by itemCF), not lose it because the click made the item "seen"."""
    f, users, recs = world["funnel"], world["users"][:8], world["recs"][:8]
    uid, iid = f.dataset_.users["user_id"].to_numpy(), f.dataset_.items["item_id"].to_numpy()
    chans = list(f.candidates(users[:1])[0].channels)
    col = 3 * chans.index("itemcf")  # "itemcf:recalled" (features/candidates.py:feature_names)
    rows, cu, ci = [], [], []
    for u, rec in zip(users, recs):
        for p, i in enumerate(rec.items.tolist()[:10]):
            click = int(p % 3 == 0)
            rows.append((str(uid[u]), str(iid[i]), 0, "r", click, 0, 0.0, 0))
            if click:
                cu.append(u)
                ci.append(i)
    frame = _frame(rows)
    before = rank_samples(f, frame)
    assert before.recalled.all() and (before.X[:, col] == 1).sum() > len(cu) // 2
    cu, ci = np.array(cu), np.array(ci)
    ds = f.dataset_
    updated = f.with_components(**{f"channels__{n}": f.channels_[n].update(cu, ci, np.zeros(len(cu), np.int64),
                                                                            n_users=ds.n_users, n_items=ds.n_items)
                                   for n in ("itemcf", "hot")})
    assert updated.channels_["itemcf"].history_.seen[cu, ci].min() == 1  # the clicks are in its history now
    after = rank_samples(updated, frame)
    assert after.recalled.all()
    clicked = before.labels["click"] == 1
    # itemCF still recalls every clicked item it recalled when it was served (before the fix: none)
    np.testing.assert_array_equal(after.X[clicked, col], before.X[clicked, col])
    np.testing.assert_array_equal(after.X[~clicked, col], before.X[~clicked, col])


def test_ranker_update_learns_from_impressions_not_organic_clicks(world):
    """Samples no impression led to (request_id null) stay out of the ranker's training and
    holdout by default (organic="drop"): with the served top-k as the only negatives, they teach
    "shown ⇒ not clicked". organic="keep" trains on them."""
    f, s, h = world["funnel"], world["samples"], world["holdout"]
    uid, iid = f.dataset_.users["user_id"].to_numpy(), f.dataset_.items["item_id"].to_numpy()
    shown = {(str(uid[u]), str(iid[i])) for u, rec in zip(world["users"], world["recs"]) for i in rec.items.tolist()}

    def mark(frame: pl.DataFrame) -> pl.DataFrame:
        was_shown = pl.Series([(u, i) in shown for u, i in zip(frame["user_id"], frame["item_id"])])
        return frame.with_columns(pl.when(was_shown).then(pl.col("request_id")).otherwise(None).alias("request_id"))

    s, h = mark(s), mark(h)
    n_org = int(s["request_id"].is_null().sum())
    assert 0 < n_org < s.height
    n_org_h = int(h["request_id"].is_null().sum())
    assert 0 < n_org_h < h.height
    # a guardrail that accepts anything reports how many held-out rows it judged: the shown ones
    # (every shown item was a candidate, so each is recalled), never the organic ones
    up = RankerUpdater(RankerUpdateConfig(min_count=0), guardrail=AUCGuardrail(1.0, min_per_class=1))
    up.update(f, s, h)
    assert up.last_report_["samples"] == s.height - n_org and up.last_report_["organic_dropped"] == n_org
    assert up.last_report_["guardrail"]["n"] == h.height - n_org_h
    keep = RankerUpdater(RankerUpdateConfig(min_count=0, organic="keep"))
    keep.update(f, s, h)
    assert keep.last_report_["samples"] == s.height
    with pytest.raises(ConfigError, match="organic"):
        RankerUpdateConfig(organic="sometimes")


def _organic(world, n_users: int = 6) -> tuple[pl.DataFrame, pl.DataFrame, list]:
    """(organic positives: each user's later ratings, request_id null; impressions: each
    user's served top 5, request_id set; the users) for the world's first `n_users` users."""
    f, users, recs = world["funnel"], world["users"][:n_users], world["recs"][:n_users]
    uid, iid = f.dataset_.users["user_id"].to_numpy(), f.dataset_.items["item_id"].to_numpy()
    s = world["samples"].filter((pl.col("click") == 1) & pl.col("user_id").is_in([str(uid[u]) for u in users]))
    shown = _frame([(str(uid[u]), str(iid[i]), 0, "r", 0, 0, 0.0, 0) for u, rec in zip(users, recs)
                    for i in rec.items.tolist()[:5]])
    keys = set(zip(shown["user_id"], shown["item_id"]))
    organic = s.filter(~pl.Series([(a, b) in keys for a, b in zip(s["user_id"], s["item_id"])])).with_columns(
        pl.lit(None, pl.Utf8).alias("request_id"))
    return organic, shown, users


def test_candidate_samples_are_the_users_candidates_labelled_by_its_positives(world):
    """organic="candidates": an organic positive is labelled among its own user's merged
    candidates, the fit's label-set form. With negative_rate 1 the samples are exactly each
    user's candidates minus the shown items, the features are the served ones (rank_samples of
    the same pairs), click = 1 on the recalled positives only; rate 0 leaves the positives."""
    from funnelrec.online.samples import candidate_samples

    f = world["funnel"]
    organic, shown, users = _organic(world)
    ds = f.dataset_
    s = candidate_samples(f, organic, shown, negative_rate=1.0)
    merged = f.candidates(np.asarray(users))  # the pairs are later than the fit: not in any history
    shown_pairs = set(zip(ds.user_ids.indices(shown["user_id"].to_list()).tolist(),
                          ds.item_ids.indices(shown["item_id"].to_list()).tolist()))
    pos_pairs = set(zip(ds.user_ids.indices(organic["user_id"].to_list()).tolist(),
                        ds.item_ids.indices(organic["item_id"].to_list()).tolist()))
    want = {(int(u), int(i)) for u, m in zip(users, merged) for i in m.items.tolist()
            if (int(u), int(i)) not in shown_pairs or (int(u), int(i)) in pos_pairs}
    got = list(zip(s.users.tolist(), s.items.tolist()))
    assert set(got) == want and len(got) == len(want)
    y = s.labels["click"]
    assert {p for p, c in zip(got, y) if c == 1} == pos_pairs & want
    assert 0 < y.sum() < len(y) and s.n_dropped["unrecalled"] == len(pos_pairs - want)
    uid, iid = ds.users["user_id"].to_numpy(), ds.items["item_id"].to_numpy()
    same = rank_samples(f, _frame([(str(uid[u]), str(iid[i]), 0, "r", 0, 0, 0.0, 0) for u, i in got]))
    np.testing.assert_allclose(s.X, same.X, rtol=1e-6, atol=1e-6)
    only_pos = candidate_samples(f, organic, shown, negative_rate=0.0)
    assert only_pos.labels["click"].all() and len(only_pos) == int(y.sum())
    some = candidate_samples(f, organic, shown, negative_rate=0.3, seed=1)
    n_neg = len(want) - int(y.sum())
    assert int(y.sum()) < len(some) and abs((len(some) - int(y.sum())) - 0.3 * n_neg) < 4 * np.sqrt(0.21 * n_neg)


def test_candidate_samples_count_a_pairs_rows_as_one_label(world):
    """A pair with several positive rows in the window (a like with a watch, an earlier click,
    another watch) is one sample: each label its rows' largest (watch seconds too), ts the
    earliest, as the fit counts a pair (train/candidate_ranker.py `_label_table`)."""
    from funnelrec.online.samples import candidate_samples

    f = world["funnel"]
    organic, shown, users = _organic(world, n_users=1)
    ds = f.dataset_
    s0 = candidate_samples(f, organic, shown, negative_rate=0.0)
    u, i = int(s0.users[0]), int(s0.items[0])  # a recalled positive
    uid, iid = str(ds.users["user_id"][u]), str(ds.items["item_id"][i])
    rest = organic.filter((pl.col("user_id") != uid) | (pl.col("item_id") != iid))
    rows = _frame([(uid, iid, 900, None, 0, 1, 30.0, 0), (uid, iid, 500, None, 1, 0, 0.0, 0),
                   (uid, iid, 700, None, 0, 0, 20.0, 0)])
    s = candidate_samples(f, pl.concat([rest, rows], how="vertical_relaxed"), shown, negative_rate=0.0)
    at = [k for k, (a, b) in enumerate(zip(s.users.tolist(), s.items.tolist())) if (a, b) == (u, i)]
    assert len(at) == 1 and len(s) == len(s0)
    k = at[0]
    assert (s.labels["click"][k], s.labels["like"][k], s.labels["watch_time"][k], int(s.ts[k])) == (1, 1, 30.0, 500)


def test_candidate_samples_top_labels_the_served_top_only(world):
    """top=N: only each user's N best candidates by the served ranker are labelled — the items
    `Funnel.run` returns as its top N (no re-rank in this funnel), positives beyond them dropped."""
    from funnelrec.online.samples import candidate_samples

    f = world["funnel"]
    organic, _, users = _organic(world)
    s = candidate_samples(f, organic, None, negative_rate=1.0, top=20)
    recs = f.run(np.asarray(users), k=20)
    want = {(int(u), int(i)) for u, r in zip(users, recs) for i in r.items.tolist()}
    assert set(zip(s.users.tolist(), s.items.tolist())) == want and len(s) == len(want)
    full = candidate_samples(f, organic, None, negative_rate=1.0)
    assert 0 < s.labels["click"].sum() < full.labels["click"].sum()
    with pytest.raises(ConfigError, match="top"):
        candidate_samples(f, organic, None, top=0)


def test_ranker_update_trains_every_positive_among_its_users_candidates(world):
    """organic="candidates": the update trains on every positive (clicked impression or organic)
    among its user's candidates, a shown-not-clicked item only as one of those candidates (at the
    negative rate, not always), and the guardrail judges every candidate of the held-out users."""
    organic, shown, users = _organic(world)
    f = world["funnel"]
    clicked = shown.head(2).with_columns(pl.lit(1, shown["click"].dtype).alias("click"))
    train = pl.concat([clicked, shown.slice(2), organic])
    hold_org, hold_shown, _ = _organic({**world, "samples": world["holdout"]})
    hold = pl.concat([hold_shown, hold_org])
    up = RankerUpdater(RankerUpdateConfig(min_count=0, organic="candidates", candidate_negative_rate=0.0),
                       guardrail=AUCGuardrail(0.5, min_per_class=1))
    out = up.update(f, train, hold)
    rep = up.last_report_
    # rate 0: the recalled positives only — the 2 clicked impressions and the recalled organic ones,
    # no shown-not-clicked impression
    n_org = len(candidate_samples_of(f, organic))
    assert "ranker" in out and rep["samples"] == 2 + n_org
    assert rep["guardrail"]["n"] > hold_shown.height + hold_org.height  # the held-out users' candidates
    half = RankerUpdater(RankerUpdateConfig(min_count=0, organic="candidates", candidate_negative_rate=0.5))
    half.update(f, train, hold)
    assert rep["samples"] < half.last_report_["samples"]
    drop = RankerUpdater(RankerUpdateConfig(min_count=0))
    drop.update(f, train, hold)
    assert drop.last_report_["samples"] == shown.height and drop.last_report_["organic_dropped"] == organic.height
    with pytest.raises(ConfigError, match="candidate_negative_rate"):
        RankerUpdateConfig(candidate_negative_rate=1.5)


def candidate_samples_of(f, positives: pl.DataFrame):
    from funnelrec.online.samples import candidate_samples

    return candidate_samples(f, positives, None, 0.0)


def test_samples_see_the_users_stream_history_as_serving_does(world):
    """A user whose consumptions since the fit are in the updated channels' histories: its
    samples' features are those a request with that real-time history is served with
    (`Funnel.run` with `RequestState.history`: EASE-less here, but itemCF triggers and the match
    block read it) — not those of the user without it."""
    from funnelrec.core.types import RequestState

    f = world["funnel"]
    ds = f.dataset_
    organic, _, users = _organic(world, 3)
    cu = ds.user_ids.indices(organic["user_id"].to_list())
    ci = ds.item_ids.indices(organic["item_id"].to_list())
    first = np.zeros(len(cu), bool)  # each user's first half of the organic items = the stream so far
    for u in np.unique(cu):
        idx = np.flatnonzero(cu == u)
        first[idx[: len(idx) // 2]] = True
    from funnelrec.online.learner import OnlineLearner

    # the stream's times: the learner records them (FunnelStats.stream_ts), and the samples read
    # each user's stream history in that order — here the reverse of the organic rows' order
    ts = 2_000_000_000 - np.arange(int(first.sum()), dtype=np.int64)
    updated = f.with_components(stats=OnlineLearner._stats_update(f, cu[first], ci[first], ts), **{
        f"channels__{n}": f.channels_[n].update(cu[first], ci[first], ts, n_users=ds.n_users, n_items=ds.n_items)
        for n in ("itemcf", "hot")})
    fresh = [ci[first & (cu == u)][::-1] for u in users]  # oldest first, as a history store gives it
    assert max(len(h) for h in fresh) > 2
    recs = updated.run(np.asarray(users), k=20, state=RequestState(history=fresh))
    uid, iid = ds.users["user_id"].to_numpy(), ds.items["item_id"].to_numpy()
    rows = [(str(uid[u]), str(iid[i]), 0, "r", 0, 0, 0.0, 0) for u, r in zip(users, recs) for i in r.items.tolist()]
    s = rank_samples(updated, _frame(rows))
    served = np.concatenate([r.task_scores["ctr"] for r in recs])
    assert s.recalled.all()
    np.testing.assert_allclose(ranker_logits(updated.ranker_, s), served, rtol=1e-5, atol=1e-5)
    blind = rank_samples(updated.with_components(), _frame(rows))  # same funnel: same features
    np.testing.assert_array_equal(blind.X, s.X)
    n_match = len(f.ranker_.features_.match_.names_)
    stale = rank_samples(f, _frame(rows))  # the fit-time funnel: no stream history
    assert not np.allclose(stale.X[:, -n_match:], s.X[:, -n_match:])
    # the order is read: the same pairs with each stream history reversed get another short-term block
    match = updated.ranker_.features_.match_
    U = np.asarray(users)
    rows_of = {int(x): r for r, x in enumerate(U.tolist())}
    r = np.array([rows_of[int(x)] for x in s.users])
    same = match.transform(r, s.items, *match.current(U, fresh))
    other = match.transform(r, s.items, *match.current(U, [h[::-1] for h in fresh]))
    np.testing.assert_allclose(same, s.X[:, -n_match:], rtol=1e-5, atol=1e-6)
    n_recent = len(match.columns)
    assert not np.allclose(other[:, -n_recent:], same[:, -n_recent:])
    np.testing.assert_allclose(other[:, :-n_recent], same[:, :-n_recent], rtol=1e-6)  # the rest ignores order


@pytest.mark.parametrize("count_popularity", [True, False])
def test_the_learner_orders_a_users_stream_as_its_history_store_does(world, count_popularity):
    """One learner step with: click a, click j (an item of the user's fit history), click b,
    then like a. A request's history store gives the user's history as j, b, a (oldest first,
    each item at its latest consumption); the learner's samples must read the same order, the
    re-consumed fit item included — with or without the popularity counts — and so get the
    served short-term block and logits."""
    from funnelrec.core.types import RequestState
    from funnelrec.online.learner import LearnConfig, OnlineLearner
    from funnelrec.online.samples import stream_history

    f = world["funnel"]
    ds = f.dataset_
    H = f.stats_.history
    u = int(np.flatnonzero(np.diff(H.indptr) > 20)[0])
    fit_items = H.indices[H.indptr[u]:H.indptr[u + 1]]
    a, b = (int(x) for x in np.setdiff1d(np.arange(ds.n_items), fit_items)[:2])
    j = int(fit_items[0])
    uid, iid = str(ds.users["user_id"][u]), ds.items["item_id"].cast(pl.Utf8).to_list()
    t0 = 2_000_000_000
    events = pl.DataFrame({"user_id": [uid] * 4, "item_id": [iid[a], iid[j], iid[b], iid[a]],
                           "type": ["click", "click", "click", "like"], "value": [1.0] * 4,
                           "ts": [t0, t0 + 10, t0 + 20, t0 + 30]})
    learner = object.__new__(OnlineLearner)
    learner.config = LearnConfig(count_popularity=count_popularity)
    parts = learner._count_updates(f, events)
    assert "stats" in parts
    up = f.with_components(**{k.replace("/", "__"): v for k, v in parts.items()})
    assert stream_history(up, np.array([u]))[0].tolist() == [j, b, a]
    recs = up.run(np.array([u]), k=20, state=RequestState(history=[np.array([j, b, a])]))
    rows = [(uid, iid[i], 0, "r", 0, 0, 0.0, 0) for i in recs[0].items.tolist()]
    s = rank_samples(up, _frame(rows))
    np.testing.assert_allclose(ranker_logits(up.ranker_, s), recs[0].task_scores["ctr"], rtol=1e-5, atol=1e-5)


def test_counted_popularity_does_not_leak_the_label(world):
    """The learner counts a step's consumptions into the ranker's popularity feature before the
    ranker update sees the step's samples (`count_popularity`): with `uncount` a clicked sample
    keeps the popularity it was served with; without, its own click is in it."""
    from funnelrec.online.learner import OnlineLearner

    f = world["funnel"]
    organic, shown, users = _organic(world)
    ds = f.dataset_
    cu = ds.user_ids.indices(organic["user_id"].to_list())
    ci = ds.item_ids.indices(organic["item_id"].to_list())
    frame = pl.concat([shown, organic.with_columns(pl.lit("r").alias("request_id"))])
    before = rank_samples(f, frame)
    updated = f.with_components(
        stats=OnlineLearner._stats_update(f, cu, ci),
        **{f"channels__{n}": f.channels_[n].update(cu, ci, np.zeros(len(cu), np.int64), n_users=ds.n_users,
                                                   n_items=ds.n_items) for n in ("itemcf", "hot")})
    n_rec = before.X.shape[1] - len(f.ranker_.features_.match_.names_)
    pop = n_rec - 3  # "item_log_pop" (features/candidates.py:feature_names)
    leaky = rank_samples(updated, frame)
    clicked = before.labels["click"] == 1
    assert (leaky.X[clicked, pop] > before.X[clicked, pop]).all()
    fixed = rank_samples(updated, frame, uncount=True)
    np.testing.assert_allclose(fixed.X[:, pop], before.X[:, pop], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fixed.X[:, pop + 1], before.X[:, pop + 1], rtol=1e-5, atol=1e-6)  # activity
    up = RankerUpdater().configure(__import__("funnelrec.online.learner", fromlist=["LearnConfig"]).LearnConfig())
    assert up.uncount


def test_bad_samples_name_the_column(world):
    with pytest.raises(DataError, match="missing columns \\['click'\\]"):
        rank_samples(world["funnel"], world["samples"].drop("click"))
    bad = world["samples"].with_columns(pl.lit(2).alias("like"))
    with pytest.raises(DataError, match="'like' must be 0/1"):
        RankerUpdater().update(world["funnel"], bad, world["holdout"])
    with pytest.raises(ConfigError, match="unrecalled"):
        rank_samples(world["funnel"], world["samples"], unrecalled="keep")


# --------------------------------------------------------------------------- FTRL warm start
def test_warm_ftrl_keeps_weights_under_zero_gradient_and_steps_by_the_formula():
    w = torch.nn.Parameter(torch.tensor([0.7, -0.3, 0.0]))
    a, b, l1, l2 = 0.2, 1.0, 0.01, 0.1
    opt = warm_ftrl([w], a, b, l1, l2)
    w.grad = torch.zeros(3)
    opt.step()
    np.testing.assert_allclose(w.detach().numpy(), [0.7, -0.3, 0.0], atol=1e-7)
    # one step with g by hand: z = z0 + g − σ·w, n = g², σ = |g|/α
    g = np.array([0.5, 0.5, -2.0])
    w0 = np.array([0.7, -0.3, 0.0])
    z = -w0 * (b / a + l2) - np.sign(w0) * l1 + g - np.abs(g) / a * w0
    n = g * g
    want = np.where(np.abs(z) <= l1, 0.0, -(z - np.sign(z) * l1) / ((b + np.sqrt(n)) / a + l2))
    w.grad = torch.tensor(g, dtype=torch.float32)
    opt.step()
    np.testing.assert_allclose(w.detach().numpy(), want, rtol=1e-5)


def test_warm_ftrl_with_a_carried_n_keeps_weights_and_steps_by_the_formula():
    w0 = np.array([[0.7, -0.3], [0.2, 0.0], [-0.5, 0.4]])
    n0 = np.array([[4.0, 0.25], [1.0, 9.0]])  # two rows carried; the third (grown since) starts at 0
    a, b, l1, l2 = 0.2, 1.0, 0.01, 0.1
    w = torch.nn.Parameter(torch.tensor(w0, dtype=torch.float32))
    opt = warm_ftrl([w], a, b, l1, l2, [n0])
    w.grad = torch.zeros(3, 2)
    opt.step()
    np.testing.assert_allclose(w.detach().numpy(), w0, atol=1e-6)  # z reproduces w under the carried n
    n = np.vstack([n0, np.zeros((1, 2))])
    g = np.array([[0.5, -1.0], [2.0, 0.5], [0.5, 0.5]])
    z = -w0 * ((b + np.sqrt(n)) / a + l2) - np.sign(w0) * l1
    n_new = n + g * g
    z = z + g - (np.sqrt(n_new) - np.sqrt(n)) / a * w0
    want = np.where(np.abs(z) <= l1, 0.0, -(z - np.sign(z) * l1) / ((b + np.sqrt(n_new)) / a + l2))
    w.grad = torch.tensor(g, dtype=torch.float32)
    opt.step()
    np.testing.assert_allclose(w.detach().numpy(), want, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(opt.state[w]["n"].numpy(), n_new, rtol=1e-6)
    # the carried n slows the step: the same gradient from n = 0 moves the first row further
    fresh = torch.nn.Parameter(torch.tensor(w0, dtype=torch.float32))
    o2 = warm_ftrl([fresh], a, b, l1, l2)
    fresh.grad = torch.tensor(g, dtype=torch.float32)
    o2.step()
    assert abs(fresh[0, 0].item() - w0[0, 0]) > abs(w[0, 0].item() - w0[0, 0])


def test_warm_ftrl_with_l1_and_the_carried_state_continues_one_ftrl_run():
    """λ1 > 0: a warm restart from (w, n, z) after k steps gives the weights of one FTRL run over
    all 2k steps, coordinates in the dead zone included; from (w, n) alone it does not, because
    a zero weight's z (anywhere in [−λ1, λ1]) is reset to 0."""
    from funnelrec.train.ftrl import FTRL

    gen = torch.Generator().manual_seed(5)
    a, b, l1, l2 = 0.5, 1.0, 0.3, 0.05
    grads = [torch.randn(40, generator=gen) * 0.4 for _ in range(8)]
    ref = torch.nn.Parameter(torch.zeros(40))
    one = FTRL([ref], alpha=a, beta=b, l1=l1, l2=l2)
    for k, g in enumerate(grads):
        ref.grad = g.clone()
        one.step()
        if k == 3:
            w4, n4, z4 = ref.detach().clone(), one.state[ref]["n"].numpy().copy(), one.state[ref]["z"].numpy().copy()
    dead = (w4 == 0) & torch.from_numpy(np.abs(z4) > 1e-3)
    assert dead.sum() >= 5  # the case under test: zero weights with a z away from 0
    for carry_z, exact in ((True, True), (False, False)):
        w = torch.nn.Parameter(w4.clone())
        opt = warm_ftrl([w], a, b, l1, l2, [n4], [z4] if carry_z else None)
        for g in grads[4:]:
            w.grad = g.clone()
            opt.step()
        same = torch.allclose(w.detach(), ref.detach(), rtol=1e-5, atol=1e-6)
        assert same is exact, carry_z


def test_ranker_update_carries_ftrl_state_from_step_to_step(world, tmp_path):
    """One minibatch per step (batch ≥ samples): step 2's Σg² is step 1's plus its own gradient²,
    which the no-carry update of the same step-1 ranker measures alone (its weights equal, so
    the gradient is the same). The state survives the artifact round trip."""
    from funnelrec.core.persist import load_state, save_state

    f = world["funnel"]
    big = {"batch_size": 1_000_000, "min_count": 0}
    one = RankerUpdater(RankerUpdateConfig(**big)).update(f, world["samples"], world["holdout"])["ranker"]
    assert one.ftrl_n_ and all(float(v.sum()) > 0 for v in one.ftrl_n_.values())
    f1 = f.with_components(ranker=one)
    before = {k: v.copy() for k, v in one.ftrl_n_.items()}
    two = RankerUpdater(RankerUpdateConfig(**big)).update(f1, world["samples"], world["holdout"])["ranker"]
    alone = RankerUpdater(RankerUpdateConfig(**big, ftrl_carry_n=False)).update(
        f1, world["samples"], world["holdout"])["ranker"]
    assert set(two.ftrl_n_) == set(one.ftrl_n_)
    for k, n1 in one.ftrl_n_.items():
        np.testing.assert_allclose(two.ftrl_n_[k], n1 + alone.ftrl_n_[k], rtol=1e-4, atol=1e-9)
    for k, v in before.items():  # the served ranker's state is not changed by the next step
        np.testing.assert_array_equal(one.ftrl_n_[k], v)
    save_state(two, tmp_path / "r")
    back = load_state(tmp_path / "r")
    for k, v in two.ftrl_n_.items():
        np.testing.assert_array_equal(back.ftrl_n_[k], v)


def test_ranker_update_with_l1_carries_z_where_the_weight_is_zero(world, tmp_path):
    from funnelrec.core.persist import load_state, save_state

    cfg = RankerUpdateConfig(batch_size=1_000_000, min_count=0, ftrl_l1=0.05)
    one = RankerUpdater(cfg).update(world["funnel"], world["samples"], world["holdout"])["ranker"]
    assert set(one.ftrl_z_) == set(one.ftrl_n_)
    wide = dict(one.model_.named_parameters())
    zero = {k: wide[k].detach().numpy() == 0 for k in one.ftrl_z_}
    assert any(np.abs(one.ftrl_z_[k][m]).max(initial=0) > 0 for k, m in zero.items())  # dead-zone z ≠ 0
    assert all(np.abs(one.ftrl_z_[k][m]).max(initial=0) <= 0.05 + 1e-6 for k, m in zero.items())
    save_state(one, tmp_path / "r")
    back = load_state(tmp_path / "r")
    for k, v in one.ftrl_z_.items():
        np.testing.assert_array_equal(back.ftrl_z_[k], v)


# --------------------------------------------------------------------------- the ranker update
def test_update_returns_a_new_ranker_and_leaves_the_served_one(world):
    f = world["funnel"]
    served = f.ranker_
    before, rows_before = _state(served.model_), served.user_rows_.copy()
    up = RankerUpdater(RankerUpdateConfig(min_count=3))
    out = up.update(f, world["samples"], world["holdout"])
    new = out["ranker"]
    assert set(out) == {"ranker"} and new is not served and new.model_ is not served.model_
    for k, v in served.model_.state_dict().items():
        assert torch.equal(v, before[k]), k
    np.testing.assert_array_equal(served.user_rows_, rows_before)
    assert getattr(served, "fid_state_", None) is None
    moved = sum(float((new.model_.state_dict()[k][: len(v)] - v).abs().sum()) for k, v in before.items())
    assert moved > 0
    assert up.last_report_["samples"] == world["samples"].height
    f.with_components(ranker=new).run(world["users"][:3], k=5)  # the new funnel serves


def test_online_update_beats_static_on_the_holdout(world):
    """Measured (`bench/online_updates.py --seeds 0 1 2 --users 100`, this world at seed 0): AUC
    on the recalled holdout impressions static 0.334 / 0.307 / 0.334, updated 0.717 / 0.685 /
    0.725 — gains 0.383 / 0.378 / 0.391. The assert keeps 0.2, about half the smallest gain."""
    f = world["funnel"]
    new = RankerUpdater().update(f, world["samples"], world["holdout"])["ranker"]
    hold = rank_samples(f, world["holdout"], unrecalled="drop")
    y = hold.labels["click"]
    a_static, a_new = auc(y, ranker_logits(f.ranker_, hold)), auc(y, ranker_logits(new, hold))
    assert a_new > a_static + 0.2, (a_static, a_new)


# --------------------------------------------------------------------------- FID admission / eviction
def _new_user(world) -> int:
    """A catalogue user without a fit-time row (no training event), not among the world's users."""
    f = world["funnel"]
    col = list(f.ranker_.features_.spec_.field_names).index("user_id")
    zero = np.flatnonzero(f.ranker_.user_rows_[:, col] == 0)
    zero = np.setdiff1d(zero, world["users"])
    assert len(zero), "ml-100k cut at 50 % of time leaves users without a training event"
    return int(zero[0]), col


def test_admission_gives_a_new_user_a_fresh_row_that_learns_from_clicks(world):
    f = world["funnel"]
    u, col = _new_user(world)
    uid = str(f.dataset_.users["user_id"][u])
    items = f.dataset_.items["item_id"].cast(pl.Utf8).to_list()[:10]
    clicks = _frame([(uid, it, world["cut"] + k, "r", 1, 0, 0.0, 0) for k, it in enumerate(items[:4])])
    cfg = RankerUpdateConfig(min_count=5, epochs=3)
    n0 = f.ranker_.spec_.n_embeddings
    few = RankerUpdater(cfg).update(f, clicks, world["holdout"])["ranker"]
    assert few.user_rows_[u, col] == 0 and few.fid_state_.user_count[u] == 4  # 4 < min_count
    more = _frame([(uid, it, world["cut"] + k, "r", 1, 0, 0.0, 0) for k, it in enumerate(items)])
    new = RankerUpdater(cfg).update(f, more, world["holdout"])["ranker"]
    row = new.user_rows_[u, col]
    assert row >= n0 and new.spec_.n_embeddings > n0 and new.model_.spec.n_embeddings == new.spec_.n_embeddings
    # the user's own row moved up (all clicks) and their score on a clicked item rose
    w = new.model_.linear.weight.weight.detach()[row, 0]
    assert float(w) > 0
    s = rank_samples(f, more[:1])
    assert ranker_logits(new, s)[0] > ranker_logits(f.ranker_, s)[0]
    # the same clicks on a user row held at 0 (the served ranker) cannot move it
    assert f.ranker_.user_rows_[u, col] == 0


def test_eviction_by_a_fake_clock_frees_the_row_for_the_next_admission(world):
    f = world["funnel"]
    u, col = _new_user(world)
    f2 = world["funnel"]
    uid = str(f.dataset_.users["user_id"][u])
    items = f.dataset_.items["item_id"].cast(pl.Utf8).to_list()[:6]
    t0 = world["cut"]
    clicks = _frame([(uid, it, t0, "r", 1, 0, 0.0, 0) for it in items])
    cfg = RankerUpdateConfig(min_count=5, ttl=3600)
    admitted = RankerUpdater(cfg, clock=lambda: t0).update(f, clicks, world["holdout"])["ranker"]
    row = int(admitted.user_rows_[u, col])
    assert row > 0
    f_adm = f2.with_components(ranker=admitted)
    # events of a user with a fit-time row one hour and one second later: u is evicted, its row
    # zeroed and freed (a user admitted by these events would take the freed row at once)
    ds = f.dataset_
    fitted = [x for x in world["samples"]["user_id"].unique(maintain_order=True).to_list()
              if f.ranker_.user_rows_[ds.user_ids.index(x), col] != 0]
    other = world["samples"].filter(pl.col("user_id") == fitted[0])
    late = RankerUpdater(cfg, clock=lambda: t0 + 3601).update(f_adm, other, world["holdout"])["ranker"]
    assert late.user_rows_[u, col] == 0 and late.fid_state_.user_count[u] == 0
    assert row in late.fid_state_.free_rows.tolist()
    assert float(late.model_.linear.weight.weight.detach()[row].abs().sum()) == 0
    # within the ttl nothing is evicted
    kept = RankerUpdater(cfg, clock=lambda: t0 + 3599).update(f_adm, other, world["holdout"])["ranker"]
    assert kept.user_rows_[u, col] == row
    # the next admission reuses the freed row instead of growing the table
    u2 = int(np.setdiff1d(np.flatnonzero(f.ranker_.user_rows_[:, col] == 0), [*world["users"], u])[0])
    uid2 = str(f.dataset_.users["user_id"][u2])
    f_late = f2.with_components(ranker=late)
    clicks2 = _frame([(uid2, it, t0 + 3602, "r", 1, 0, 0.0, 0) for it in items])
    again = RankerUpdater(cfg, clock=lambda: t0 + 3602).update(f_late, clicks2, world["holdout"])["ranker"]
    assert again.user_rows_[u2, col] == row and again.spec_.n_embeddings == late.spec_.n_embeddings


def test_grown_ranker_survives_the_artifact_round_trip(world, tmp_path):
    from funnelrec.core.persist import load_state, save_state

    f = world["funnel"]
    u, col = _new_user(world)
    uid = str(f.dataset_.users["user_id"][u])
    items = f.dataset_.items["item_id"].cast(pl.Utf8).to_list()[:6]
    new = RankerUpdater(RankerUpdateConfig(min_count=2)).update(
        f, _frame([(uid, it, world["cut"], "r", 1, 0, 0.0, 0) for it in items]), world["holdout"])["ranker"]
    assert new.spec_.n_embeddings > f.ranker_.spec_.n_embeddings
    save_state(new, tmp_path / "r")
    back = load_state(tmp_path / "r")
    s = rank_samples(f, world["holdout"][:200])
    np.testing.assert_allclose(ranker_logits(back, s), ranker_logits(new, s), rtol=1e-6)
    np.testing.assert_array_equal(back.fid_state_.user_row, new.fid_state_.user_row)


# --------------------------------------------------------------------------- the guardrail
def test_guardrail_auc_agrees_with_sklearn_and_pair_counting(world):
    f = world["funnel"]
    hold = rank_samples(f, world["holdout"][:600])
    y, s = hold.labels["click"], ranker_logits(f.ranker_, hold)
    pos, neg = s[y > 0.5], s[y < 0.5]
    pairs = ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (len(pos) * len(neg))
    assert auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert auc(y, s) == pytest.approx(pairs, abs=1e-9)


def test_guardrail_refuses_a_corrupted_update_and_accepts_a_real_one(world, caplog):
    f = world["funnel"]
    guard = AUCGuardrail(margin=0.01)
    ok = RankerUpdater(guardrail=guard)
    out = ok.update(f, world["samples"], world["holdout"])
    v = ok.last_report_["guardrail"]
    assert "ranker" in out and v["candidate_auc"] >= v["served_auc"] - 0.01
    # labels flipped: the update learns the opposite of the clicks
    flipped = world["samples"].with_columns((1 - pl.col("click")).alias("click"))
    with caplog.at_level("WARNING", logger="funnelrec.online.guardrail"), \
            pytest.raises(GuardrailRefused, match=r"candidate ctr AUC 0\.\d{4} < served AUC 0\.\d{4} − margin 0\.01"):
        RankerUpdater(guardrail=guard).update(f, flipped, world["holdout"])
    assert "refused" in caplog.text
    # the real update with its weights negated, checked directly against the served ranker
    bad = copy_ranker(out["ranker"])
    with torch.no_grad():
        for p in bad.model_.parameters():
            p.neg_()
    hold = rank_samples(f, world["holdout"], unrecalled="drop")
    with pytest.raises(GuardrailRefused, match="margin 0.01"):
        guard.check(f.ranker_, bad, hold)
    # one class only: no AUC, refused with the reason
    ones = dataclasses.replace(hold, labels={**hold.labels, "click": np.ones(len(hold), np.float32)})
    with pytest.raises(GuardrailRefused, match="AUC undefined"):
        guard.check(f.ranker_, f.ranker_, ones)
    with pytest.raises(GuardrailRefused, match=r"0 recalled samples, 0 with a ctr positive \(click / like / .*cart\) — AUC undefined"):
        RankerUpdater(guardrail=guard).update(f, world["samples"], world["holdout"].clear())
    lenient = RankerUpdater(guardrail=AUCGuardrail(0.01, on_undefined="accept"))
    assert "ranker" in lenient.update(f, world["samples"], world["holdout"].clear())
    with pytest.raises(ConfigError, match="margin"):
        AUCGuardrail(margin=-1)


def test_guardrail_by_user_is_the_sample_weighted_mean_of_per_user_aucs(world):
    """group="user" (GAUC): each user's AUC (sklearn), weighted by its samples, over the users with
    both classes; the others are not judged. A pooled AUC also ranks users against each other."""
    f = world["funnel"]
    hold = rank_samples(f, world["holdout"], unrecalled="drop")
    y, s = hold.labels["click"], ranker_logits(f.ranker_, hold)
    want, weight = 0.0, 0
    for u in np.unique(hold.users):
        m = hold.users == u
        if 0 < y[m].sum() < m.sum():
            want += m.sum() * roc_auc_score(y[m], s[m])
            weight += int(m.sum())
    assert weight < len(y)  # some users have one class only
    guard = AUCGuardrail(0.01, group="user", min_per_class=1)
    v = guard.check(f.ranker_, f.ranker_, hold)
    assert v["served_auc"] == pytest.approx(want / weight, abs=1e-9) and v["n"] == weight
    # a score shift per user leaves every user's order, so the GAUC, as it is; the pooled AUC moves
    shift = s + 3.0 * (hold.users % 2)
    assert AUCGuardrail._auc(y, shift, hold.users) == pytest.approx(
        AUCGuardrail._auc(y, s, hold.users), abs=1e-9)
    assert abs(auc(y, shift) - auc(y, s)) > 0.01
    with pytest.raises(ConfigError, match="group"):
        AUCGuardrail(0.01, group="session")


def test_guardrail_does_not_judge_a_window_with_few_positives(world):
    """A window with 3 positives: its AUC is noise next to a 0.01 margin (sd ≈ 0.15), so even the
    served ranker against itself is not judged (refused by default, the reason said); with 10 of
    each class it is judged, and the served ranker is accepted against itself."""
    f = world["funnel"]
    hold = rank_samples(f, world["holdout"], unrecalled="drop")
    y = hold.labels["click"]
    pos, neg = np.flatnonzero(y > 0.5), np.flatnonzero(y < 0.5)
    assert len(pos) >= 10 and len(neg) >= 30

    def subset(idx: np.ndarray):
        return dataclasses.replace(hold, users=hold.users[idx], items=hold.items[idx], X=hold.X[idx],
                                   recalled=hold.recalled[idx], ts=hold.ts[idx],
                                   labels={k: v[idx] for k, v in hold.labels.items()})

    few = subset(np.concatenate([pos[:3], neg[:27]]))
    guard = AUCGuardrail(margin=0.01)
    with pytest.raises(GuardrailRefused, match=r"30 recalled samples, 3 with a ctr positive \(click / .*\) — fewer than min_per_class=10"):
        guard.check(f.ranker_, f.ranker_, few)
    enough = subset(np.concatenate([pos[:10], neg[:30]]))
    assert guard.check(f.ranker_, f.ranker_, enough)["n"] == 40
    assert AUCGuardrail(0.01, min_per_class=3).check(f.ranker_, f.ranker_, few)["n"] == 30
    with pytest.raises(ConfigError, match="min_per_class"):
        AUCGuardrail(0.01, min_per_class=0)


# --------------------------------------------------------------------------- the vector channel
def test_vector_updater_refreshes_every_interval_and_rebuilds_the_index(world):
    f = world["funnel"]
    ch = f.channels_["vector"]
    served_vecs, served_hist = ch.item_vectors_.copy(), ch.features_.hist.clone()
    now = {"t": float(world["cut"])}
    up = VectorUpdater(VectorUpdateConfig(interval=1800, epochs=3, lr=0.01), clock=lambda: now["t"])
    clicks = world["samples"].filter(pl.col("click") == 1)
    out = up.update(f, world["samples"], world["holdout"])
    new = out["channels/vector"]
    assert new is not ch and len(new.index_) == len(ch.index_) == f.dataset_.n_items
    np.testing.assert_array_equal(ch.item_vectors_, served_vecs)  # served channel untouched
    assert torch.equal(ch.features_.hist, served_hist)
    assert not np.allclose(new.item_vectors_, served_vecs)
    # the clicks now lead the users' tower histories, newest first
    ds = f.dataset_
    u0 = int(ds.user_ids.index(clicks["user_id"][0]))
    mine = clicks.filter(pl.col("user_id") == clicks["user_id"][0]).sort("ts")
    newest = int(ds.item_ids.index(mine["item_id"][-1]))
    assert int(new.features_.hist[u0, 0]) == newest
    # the user's clicked items score higher against their new vector than against the old one
    cu = ds.user_ids.indices(clicks["user_id"].to_list())
    ci = ds.item_ids.indices(clicks["item_id"].to_list())
    before = (ch.user_vectors(cu) * ch.item_vectors_[ci]).sum(1).mean()
    after = (new.user_vectors(cu) * new.item_vectors_[ci]).sum(1).mean()
    assert after > before
    # the search answers from the rebuilt index: exact top-1 of the new vectors
    q = new.user_vectors(np.array([u0]))
    _, ids = new.index_.search(q, 1)
    assert int(ids[0, 0]) == int(np.argmax(new.item_vectors_ @ q[0]))
    # within the interval: nothing; after it: a refresh
    f2 = f.with_components(channels__vector=new)
    now["t"] += 1799
    assert VectorUpdater(up.config, clock=lambda: now["t"]).update(f2, world["samples"], world["holdout"]) == {}
    now["t"] += 2
    assert "channels/vector" in VectorUpdater(up.config, clock=lambda: now["t"]).update(
        f2, world["samples"], world["holdout"])
    with pytest.raises(ConfigError, match="no fitted vector channel"):
        VectorUpdater(VectorUpdateConfig(channel="itemcf")).update(f, world["samples"], world["holdout"])
    # a cart without a click is a positive too (the tower was fitted on every interaction): the
    # user's history leads with the carted item; impressions alone change nothing
    u_id, i_id = str(ds.users["user_id"][u0]), str(ds.items["item_id"][3])
    t = int(world["samples"]["ts"].max()) + 10
    cart = _frame([(u_id, i_id, t, "r", 0, 0, 0.0, 0)]).with_columns(pl.lit(1, pl.Int8).alias("cart"))
    got = VectorUpdater(up.config).update(f, cart, world["holdout"])["channels/vector"]
    assert int(got.features_.hist[u0, 0]) == 3
    shown = _frame([(u_id, i_id, t, "r", 0, 0, 0.0, 0)])
    assert VectorUpdater(up.config).update(f, shown, world["holdout"]) == {}


def test_wide_and_deep_ranker_updates_both_parts_and_grows_every_table(world, tmp_path):
    """A Wide&Deep ranker in place of LR: FTRL on the wide part, Adam on the deep part, and FID
    admission widens both the wide weights and the field embeddings; the artifact rebuilds it."""
    from funnelrec.core.persist import load_state, save_state
    from funnelrec.models.ranking.common import build_ranker

    f = world["funnel"]
    wd = copy_ranker(f.ranker_)
    wd.config = dataclasses.replace(wd.config, model="widedeep", params={"embedding_dim": 4, "hidden": [8]})
    torch.manual_seed(0)
    wd.model_ = build_ranker("widedeep", wd.spec_, dict(wd.config.params))
    wd.model_.eval()
    fw = f.with_components(ranker=wd)
    before = _state(wd.model_)
    new = RankerUpdater(RankerUpdateConfig(min_count=3)).update(fw, world["samples"], world["holdout"])["ranker"]
    n0, n1 = wd.spec_.n_embeddings, new.spec_.n_embeddings
    assert n1 > n0 and type(new.model_).__name__ == "WideDeep"
    after = new.model_.state_dict()
    assert after["wide.weight.weight"].shape[0] == after["embed.embedding.embedding.weight"].shape[0] == n1
    for k in ("wide.weight.weight", "embed.embedding.embedding.weight"):
        assert not torch.equal(after[k][:n0], before[k]), k  # both parts stepped
    for k, v in wd.model_.state_dict().items():
        assert torch.equal(v, before[k]), k  # the served one did not
    save_state(new, tmp_path / "wd")
    back = load_state(tmp_path / "wd")
    s = rank_samples(fw, world["holdout"][:300])
    np.testing.assert_allclose(ranker_logits(back, s), ranker_logits(new, s), rtol=1e-5, atol=1e-6)


def test_an_item_admitted_online_survives_the_next_catalogue_change_with_a_pre_ranker(world):
    """A new catalogue item admitted by the ranker holds a row past the pre-ranker's table; the
    next catalogue change (which re-extends the pre-ranker from the ranker's item rows) and the
    requests after it still work."""
    from funnelrec.pipeline.builder import FunnelBuilder
    from funnelrec.pipeline.config import FunnelConfig

    f = world["funnel"]
    cfg = FunnelConfig.from_dict({**WORLD_CONFIG, "prerank": {"enabled": True, "keep": 100, "epochs": 1}})
    fp = f.with_components(prerank=FunnelBuilder(cfg).fit_prerank(f, world["users"][:40]))
    fn = fp.with_items(pl.DataFrame({"item_id": [900001], "genres": [["Drama"]]}))
    col = list(f.ranker_.features_.spec_.field_names).index("item_id") - f.ranker_.user_rows_.shape[1]
    new_idx = fn.dataset_.n_items - 1
    assert fn.ranker_.item_rows_[new_idx, col] == 0
    uid = f.dataset_.users["user_id"].cast(pl.Utf8).to_list()
    clicks = _frame([(uid[u], "900001", world["cut"], "r", 1, 0, 0.0, 0) for u in world["users"][:6]])
    ranker = RankerUpdater(RankerUpdateConfig(min_count=5)).update(fn, clicks, world["holdout"])["ranker"]
    row = ranker.item_rows_[new_idx, col]
    assert row >= f.ranker_.spec_.n_embeddings
    more = pl.DataFrame({"item_id": [900001, 900002], "genres": [["Drama"], ["Comedy"]]})
    # the published ranker in the overlaid funnel, then the next catalogue change: the admitted
    # row stays, the pre-ranker is extended for 900002 only (it already covers 900001)
    fn2 = fn.with_components(ranker=ranker).with_items(more)
    assert fn2.ranker_.item_rows_[new_idx, col] == row and fn2.ranker_.item_rows_[new_idx + 1, col] == 0
    recs = fn2.run(world["users"][:3], k=10)
    assert all(len(r.items) == 10 for r in recs)


def test_configure_takes_the_learners_fid_and_interval_settings():
    class LearnConfig:  # the attributes online/learner.py documents
        min_count, ttl_s, interval_s = 7, 86400.0, 600.0

    r = RankerUpdater().configure(LearnConfig())
    assert (r.config.min_count, r.config.ttl) == (7, 86400.0)
    assert (r.admission.min_count, r.admission.ttl) == (7, 86400.0)
    assert VectorUpdater().configure(LearnConfig()).config.interval == 600.0
    LearnConfig.min_count = 0
    assert RankerUpdater().configure(LearnConfig()).admission is None
