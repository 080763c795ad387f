"""The online learner (#10 item 4, core): incremental channel updates equal a full refit, the
label join, offsets/quarantine/crash safety of `OnlineLearner`, the Redis Stream source."""

from __future__ import annotations

import math
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import scipy.sparse as sp

from funnelrec.data.dataset import Dataset, TrainData
from funnelrec.data.schema import Schema
from funnelrec.online.labels import LabelJoin
from funnelrec.online.learner import LearnConfig, OnlineLearner
from funnelrec.online.publish import Publisher
from funnelrec.online.served import STATUS, current_dir
from funnelrec.online.source import EventLogSource, RedisStreamSource
from funnelrec.pipeline.builder import FunnelBuilder
from funnelrec.pipeline.config import FunnelConfig
from funnelrec.pipeline.eventlog import EventLog, FeedbackEvent
from funnelrec.pipeline.funnel import Funnel
from funnelrec.recall.fresh import FreshConfig, FreshRecall
from funnelrec.recall.hot import HotConfig, HotRecall
from funnelrec.recall.itemcf import ItemCFConfig, ItemCFRecall
from funnelrec.recall.swing import SwingConfig, SwingRecall
from tiny_world import make_world


def _split(data: TrainData, frac: float = 0.7) -> tuple[TrainData, pl.DataFrame]:
    inter = data.interactions.sort("timestamp")
    cut = int(inter.height * frac)
    return TrainData(data.dataset, inter[:cut]), inter[cut:]


def _update(ch, new: pl.DataFrame):
    return ch.update(new["user_idx"].to_numpy(), new["item_idx"].to_numpy(), new["timestamp"].to_numpy())


def _dense(m: sp.csr_matrix) -> np.ndarray:
    return np.asarray(sp.csr_matrix(m).todense())


@pytest.mark.parametrize("cfg", [
    ItemCFConfig(k=10, similarity="cosine", user_damping="none"),
    ItemCFConfig(k=5, similarity="asymmetric", asymmetry=0.3, user_damping="iuf"),
    ItemCFConfig(k=8, similarity="jaccard", user_damping="inverse", shrink=1.0, normalize=True),
])
def test_itemcf_update_equals_refit_on_concatenated_data(cfg):
    data = make_world(seed=3)
    head, tail = _split(data)
    base = ItemCFRecall(cfg).fit(head)
    inc = base
    for chunk in (tail[: tail.height // 2], tail[tail.height // 2:]):  # two steps
        inc = _update(inc, chunk)
    full = ItemCFRecall(cfg).fit(data)
    assert inc.neighbours_.shape == full.neighbours_.shape
    np.testing.assert_array_equal(_dense(inc.neighbours_), _dense(full.neighbours_))  # same arithmetic
    np.testing.assert_array_equal(_dense(inc.history_.seen), _dense(full.history_.seen))
    assert not np.array_equal(_dense(base.neighbours_), _dense(full.neighbours_))  # the update did something
    users = np.arange(data.n_users)
    np.testing.assert_array_equal(inc.recall(users, 10).items, full.recall(users, 10).items)


def _tiny(pairs: list[tuple[int, int]], n_items: int = 4) -> TrainData:
    inter = pl.DataFrame({"user_id": [u for u, _ in pairs], "item_id": [i for _, i in pairs],
                          "timestamp": np.arange(len(pairs)) + 1_000_000})
    items = pl.DataFrame({"item_id": np.arange(n_items)})
    users = pl.DataFrame({"user_id": np.arange(3)})
    schema = Schema(interactions={"user_id": "categorical", "item_id": "categorical", "timestamp": "time"},
                    users={"user_id": "categorical"}, items={"item_id": "categorical"})
    ds = Dataset.build("hand", inter, schema, users=users, items=items)
    return TrainData(ds, ds.interactions)


def test_itemcf_update_hand_computed_cosine():
    """Train u0 {0, 1}, u1 {1, 2}; events u2 → 0, 1; u0 → 2; u1 → 3 (an item nobody had). Then
    |U_0| = 2, |U_1| = 3, |U_2| = 2, |U_3| = 1; c(0,1) = 2, c(0,2) = 1, c(1,2) = 2, c(1,3) = c(2,3) = 1,
    cosine c / √(|U_i||U_j|)."""
    data = _tiny([(0, 0), (0, 1), (1, 1), (1, 2)])
    ch = ItemCFRecall(ItemCFConfig(k=10, similarity="cosine", user_damping="none")).fit(data)
    u = data.dataset.user_ids.indices(["2", "2", "0", "1"])
    i = data.dataset.item_ids.indices(["0", "1", "2", "3"])
    got = _dense(ch.update(u, i).neighbours_)
    r6, r3, r2 = math.sqrt(6), math.sqrt(3), math.sqrt(2)
    want = np.array([[0, 2 / r6, 0.5, 0], [2 / r6, 0, 2 / r6, 1 / r3], [0.5, 2 / r6, 0, 1 / r2], [0, 1 / r3, 1 / r2, 0]])
    idx = data.dataset.item_ids.indices(["0", "1", "2", "3"])
    np.testing.assert_allclose(got[np.ix_(idx, idx)], want, rtol=1e-6)
    before = _dense(ch.neighbours_)[np.ix_(idx, idx)]
    assert before[0, 2] == 0 and before[1, 3] == 0  # these pairs come from the events only


def test_itemcf_update_grows_the_catalogue():
    """A pair on an item index beyond the fitted catalogue (a live-catalogue item) gets a row."""
    data = make_world(seed=1)
    ch = ItemCFRecall(ItemCFConfig(k=5, user_damping="none", similarity="cosine")).fit(data)
    I = data.n_items
    users = np.array([0, 1, 2])
    new = ch.update(users, np.full(3, I), n_items=I + 1)
    assert new.neighbours_.shape == (I + 1, I + 1)
    assert new.neighbours_[I].nnz > 0  # the new item has neighbours: the items of its 3 users
    assert set(new.neighbours_[I].indices) <= set(np.unique(data.csr[users].indices))
    assert ch.neighbours_.shape == (I, I)  # the fitted channel is unchanged


@pytest.mark.parametrize("cfg", [
    SwingConfig(k=10, max_users_per_item=0, max_items_per_user=0),
    SwingConfig(k=6, alpha=0.5, popularity_power=0.3, max_users_per_item=0, max_items_per_user=0),
    SwingConfig(k=6, max_users_per_item=5, max_items_per_user=0),  # a cap: every row recomputed
])
def test_swing_update_equals_refit_on_concatenated_data(cfg):
    data = make_world(seed=4)
    head, tail = _split(data)
    inc = _update(SwingRecall(cfg).fit(head), tail)
    full = SwingRecall(cfg).fit(data)
    np.testing.assert_array_equal(_dense(inc.neighbours_), _dense(full.neighbours_))


@pytest.mark.parametrize("tau", [0.0, 7.0])
def test_hot_update_equals_refit_on_concatenated_data(tau):
    data = make_world(seed=5)
    head, tail = _split(data, 0.6)
    inc = HotRecall(HotConfig(tau_days=tau)).fit(head)
    for chunk in (tail[:50], tail[50:]):
        inc = _update(inc, chunk)
    full = HotRecall(HotConfig(tau_days=tau)).fit(data)
    assert inc.now_ == full.now_ == int(data.interactions["timestamp"].max())
    np.testing.assert_allclose(inc.popularity_, full.popularity_, rtol=1e-9)
    if tau == 0:  # plain counts: the item's number of interactions, independent of the code
        counts = np.bincount(data.interactions["item_idx"].to_numpy(), minlength=data.n_items)
        np.testing.assert_array_equal(inc.popularity_, counts)
        np.testing.assert_array_equal(inc.items_, full.items_)


def test_hot_update_hand_computed_decay():
    """τ = 1 day: item a seen at t0 (fit), then b at t0 + 1 day: hot(a) = e^-1, hot(b) = 1."""
    data = _tiny([(0, 0)], n_items=2)
    t0 = int(data.interactions["timestamp"].max())
    ch = HotRecall(HotConfig(tau_days=1.0)).fit(data)
    b = data.dataset.item_ids.index("1")
    new = ch.update(np.array([1]), np.array([b]), np.array([t0 + 86400]))
    a = data.dataset.item_ids.index("0")
    assert new.popularity_[a] == pytest.approx(math.exp(-1))
    assert new.popularity_[b] == pytest.approx(1.0)
    assert new.items_.tolist() == [b, a]


def test_fresh_update_moves_the_present():
    data = make_world(seed=6)
    head, tail = _split(data, 0.5)
    cfg = FreshConfig(max_items=5)
    inc = _update(FreshRecall(cfg).fit(head), tail)
    full = FreshRecall(cfg).fit(data)
    assert inc.now_ == full.now_
    np.testing.assert_array_equal(inc.items_, full.items_)
    np.testing.assert_array_equal(_dense(inc.history_.seen), _dense(full.history_.seen))


# ---------------------------------------------------------------------------- the label join


def _events(rows):
    return pl.DataFrame(rows, schema={"user_id": pl.Utf8, "item_id": pl.Utf8, "type": pl.Utf8, "value": pl.Float64,
                                      "ts": pl.Int64, "request_id": pl.Utf8}, orient="row")


def test_label_join_delayed_click_inside_and_outside_the_window():
    join = LabelJoin(window_s=100)
    first = _events([("u1", "a", "impression", 1.0, 0, "r1"), ("u1", "b", "impression", 1.0, 0, "r1"),
                     ("u2", "a", "impression", 1.0, 10, "r2"), ("u3", "c", "like", 1.0, 20, None),
                     ("u1", "a", "click", 1.0, 50, "r1"), ("u1", "a", "watch_time", 30.0, 60, "r1")])
    done, pending, wm = join.step(first, pl.DataFrame(schema=dict(zip(
        ("user_id", "item_id", "ts", "request_id", "click", "like", "watch_time", "purchase"),
        (pl.Utf8, pl.Utf8, pl.Int64, pl.Utf8, pl.Int8, pl.Int8, pl.Float64, pl.Int8)))))
    assert wm == 60 and done.height == 0 and pending.height == 4  # no window has closed at t = 60
    # a delayed click on b at t = 150 > 0 + 100: outside b's window → an organic sample of its own
    second = _events([("u1", "b", "click", 1.0, 150, "r1"), ("u9", "z", "impression", 1.0, 300, "r9")])
    done, pending, wm = join.step(second, pending, wm)
    assert wm == 300
    got = {(r["user_id"], r["item_id"], r["ts"]): (r["click"], r["like"], r["watch_time"], r["request_id"])
           for r in done.iter_rows(named=True)}
    assert got == {("u1", "a", 0): (1, 0, 30.0, "r1"),     # click at +50 and 30 s watched: inside
                   ("u1", "b", 0): (0, 0, 0.0, "r1"),      # its click came too late: a negative
                   ("u2", "a", 10): (0, 0, 0.0, "r2"),     # never clicked
                   ("u3", "c", 20): (0, 1, 0.0, None),     # organic like
                   ("u1", "b", 150): (1, 0, 0.0, "r1")}    # organic click (closed: 250 < 300)
    assert pending.select("user_id", "item_id", "ts").rows() == [("u9", "z", 300)]


def test_label_join_positive_joins_the_latest_open_impression():
    join = LabelJoin(window_s=100)
    ev = _events([("u", "a", "impression", 1.0, 0, "r1"), ("u", "a", "impression", 1.0, 40, "r2"),
                  ("u", "a", "click", 1.0, 60, "r2"), ("x", "y", "impression", 1.0, 1000, None)])
    done, _, _ = join.step(ev, pl.DataFrame(schema=dict(zip(
        ("user_id", "item_id", "ts", "request_id", "click", "like", "watch_time", "purchase"),
        (pl.Utf8, pl.Utf8, pl.Int64, pl.Utf8, pl.Int8, pl.Int8, pl.Float64, pl.Int8)))))
    assert dict(zip(done["request_id"].to_list(), done["click"].to_list())) == {"r1": 0, "r2": 1}


# ---------------------------------------------------------------------------- the learner


LEARN_CONFIG = {"recall": {"channels": [{"name": "itemcf", "n": 20, "params": {"k": 10, "user_damping": "none",
                                                                                  "similarity": "cosine"}},
                                        {"name": "hot", "n": 10, "params": {"tau_days": 0}}],
                           "merge": {"total": 25}}}


@pytest.fixture(scope="module")
def learn_world(tmp_path_factory):
    """The tiny world fitted on its older 60 %; the newer 40 % are the stream (each a click after an
    impression), saved as an artifact."""
    data = make_world(seed=7)
    head, tail = _split(data, 0.6)
    funnel = FunnelBuilder(FunnelConfig.from_dict(LEARN_CONFIG)).fit(data.dataset, head.interactions)
    art = tmp_path_factory.mktemp("learn") / "artifact"
    funnel.save(art)
    return data, head, tail, art


def _stream(tail: pl.DataFrame) -> list[FeedbackEvent]:
    out = []
    for r in tail.iter_rows(named=True):
        u, i, t = str(r["user_id"]), str(r["item_id"]), int(r["timestamp"])
        out += [FeedbackEvent(f"q{t}", u, i, "impression", 1.0, t), FeedbackEvent(f"q{t}", u, i, "click", 1.0, t + 5)]
    return out


def _setup(tmp: Path, art: Path, events: list[FeedbackEvent]) -> tuple[Path, Path]:
    served, state = tmp / "served", tmp / "state"
    Publisher(served).init(art)
    with EventLog(state / "events.db") as log:
        log.append(events)
    return served, state


def _channels(served: Path) -> tuple:
    f = Funnel.load(current_dir(served))
    return f.channels_["itemcf"], f.channels_["hot"]


def test_learner_counts_equal_a_refit_on_all_events(learn_world, tmp_path):
    data, head, tail, art = learn_world
    served, state = _setup(tmp_path, art, _stream(tail))
    learner = OnlineLearner(served, EventLogSource(state / "events.db"), LearnConfig(batch_limit=50, label_window_s=60))
    reports = []
    while (r := learner.run_once())["events"]:
        reports.append(r)
    assert len(reports) == math.ceil(2 * tail.height / 50)
    assert learner.offset == str(2 * tail.height) and learner.events_seen == 2 * tail.height
    itemcf, hot = _channels(served)
    full = FunnelBuilder(FunnelConfig.from_dict(LEARN_CONFIG)).fit(data.dataset, data.interactions)
    np.testing.assert_array_equal(_dense(itemcf.neighbours_), _dense(full.channels_["itemcf"].neighbours_))
    np.testing.assert_array_equal(hot.popularity_, np.bincount(data.interactions["item_idx"].to_numpy(),
                                                               minlength=data.n_items))
    assert sum(r["samples"] for r in reports) + learner.pending.height == tail.height  # one sample per impression
    assert all(r["published"] for r in reports)
    assert reports[-1]["parts"] == ["channels/hot", "channels/itemcf", "stats"]
    # the ranker's count features (item popularity, user activity) count the stream as a refit would
    stats = Funnel.load(current_dir(served)).stats_
    np.testing.assert_allclose(stats.item_log_pop, full.stats_.item_log_pop, rtol=1e-6)
    np.testing.assert_allclose(stats.user_log_act, full.stats_.user_log_act, rtol=1e-6)
    assert (stats.item_log_pop != Funnel.load(art).stats_.item_log_pop).any()
    learner.close()


def test_count_popularity_off_leaves_the_count_features_as_fitted(learn_world, tmp_path):
    data, head, tail, art = learn_world
    served, state = _setup(tmp_path, art, _stream(tail[:30]))
    learner = OnlineLearner(served, EventLogSource(state / "events.db"),
                            LearnConfig(batch_limit=1000, count_popularity=False))
    r = learner.run_once()
    assert r["published"] and "stats" not in r["parts"]
    np.testing.assert_array_equal(Funnel.load(current_dir(served)).stats_.item_log_pop,
                                  Funnel.load(art).stats_.item_log_pop)
    learner.close()


def test_malformed_events_are_quarantined_and_the_rest_learned(learn_world, tmp_path):
    data, head, tail, art = learn_world
    good = _stream(tail[:20])
    served, state = _setup(tmp_path, art, good[:10])
    db = sqlite3.connect(state / "events.db")  # written raw: what a buggy or hostile producer leaves
    db.executemany("INSERT INTO events (request_id, user_id, item_id, type, value, ts, received_at) VALUES "
                   "(?, ?, ?, ?, ?, ?, ?)", [(None, "1", "no-such-item", "click", 1.0, 1_000_000_000, 0.0),
                                              (None, "1", "2", "teleport", 1.0, 1_000_000_000, 0.0),
                                              (None, "1", "2", "click", "lots", 1_000_000_000, 0.0),
                                              (None, "1", "2", "watch_time", -3.0, 1_000_000_000, 0.0)])
    db.commit()
    db.close()
    with EventLog(state / "events.db") as log:
        log.append(good[10:])
    learner = OnlineLearner(served, EventLogSource(state / "events.db"), LearnConfig(batch_limit=1000))
    r = learner.run_once()
    assert r["events"] == 44 and r["quarantined"] == 4 and r["published"]
    q = learner.quarantine()
    assert q["offset"].to_list() == ["11", "12", "13", "14"]
    msgs = q["message"].to_list()
    assert "unknown item no-such-item" in msgs[0] and "unknown event type teleport" in msgs[1]
    assert "finite number" in msgs[2] and "watch_time" in msgs[3]
    _, hot = _channels(served)  # all 20 good clicks counted, none of the bad ones
    base = np.bincount(head.interactions["item_idx"].to_numpy(), minlength=data.n_items)
    assert hot.popularity_.sum() - base.sum() == 20
    learner.close()


def test_a_click_and_its_like_are_one_consumption_in_the_counts(learn_world, tmp_path):
    """Hot (τ = 0: a plain count) gains 1 per consumed item, not 1 per positive event: the fit
    counts one interaction row, and a liked click is one interaction."""
    data, head, tail, art = learn_world
    events = []
    for e in _stream(tail[:20]):
        events.append(e)
        if e.type == "click":
            events.append(FeedbackEvent(e.request_id, e.user_id, e.item_id, "like", 1.0, e.ts))
    served, state = _setup(tmp_path, art, events)
    learner = OnlineLearner(served, EventLogSource(state / "events.db"), LearnConfig(batch_limit=1000))
    assert learner.run_once()["events"] == 60
    _, hot = _channels(served)
    base = np.bincount(head.interactions["item_idx"].to_numpy(), minlength=data.n_items)
    want = base + np.bincount(tail[:20]["item_idx"].to_numpy(), minlength=data.n_items)
    np.testing.assert_array_equal(hot.popularity_, want)
    learner.close()


def test_holdout_takes_its_share_of_impressions_when_positives_come_last():
    """Impressions at the start of a day, their organic clicks later (the replay's order): the
    newest 20 % of all samples would be clicks only (one class, no AUC); the holdout takes 20 %
    of the impression samples and 20 % of the organic ones."""
    from types import SimpleNamespace

    from funnelrec.online.labels import PENDING_SCHEMA, empty_samples

    imp = [(f"u{k}", f"i{k}", 0, f"r{k}", int(k % 4 == 0), 0, 0.0, 0, 0) for k in range(20)]
    org = [(f"u{k}", f"j{k}", 1000 + k, None, 1, 0, 0.0, 0, 0) for k in range(10)]
    closed = pl.DataFrame(imp + org, schema=PENDING_SCHEMA, orient="row")
    me = SimpleNamespace(config=LearnConfig(holdout_fraction=0.2), holdout=empty_samples())
    train, hold = OnlineLearner._split(me, closed)
    assert hold["request_id"].is_not_null().sum() == 4 and hold["request_id"].is_null().sum() == 2
    assert hold.filter(pl.col("request_id").is_not_null())["item_id"].to_list() == ["i16", "i17", "i18", "i19"]
    assert hold.filter(pl.col("request_id").is_not_null())["click"].to_list() == [1, 0, 0, 0]  # both classes
    assert train.height == 24 and set(train["item_id"]) | set(hold["item_id"]) == set(closed["item_id"])
    assert train["ts"].is_sorted() and hold["ts"].is_sorted()


def _learn_cmd(served: Path, state: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "funnelrec.cli", "learn", "--served", str(served), "--state-dir", str(state),
            "--interval", "0", "--batch", "9", "--label-window", "60", *extra]


def _learner_state(served: Path) -> dict:
    db = sqlite3.connect(served / "learner.db")
    try:
        return dict(db.execute("SELECT key, value FROM state").fetchall())
    finally:
        db.close()


def test_kill_9_mid_stream_then_restart_equals_one_uninterrupted_run(learn_world, tmp_path):
    data, head, tail, art = learn_world
    events = _stream(tail)
    env = {**os.environ, "FUNNELREC_THREADS": "1"}
    ref_served, ref_state = _setup(tmp_path / "ref", art, events)
    subprocess.run(_learn_cmd(ref_served, ref_state, "--until-caught-up"), check=True, env=env, timeout=300,
                   capture_output=True)
    served, state = _setup(tmp_path / "killed", art, events)
    proc = subprocess.Popen(_learn_cmd(served, state), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # kill it once a few steps are committed, mid-stream
        try:
            if (served / "learner.db").exists() and int(_learner_state(served).get("steps", 0) or 0) >= 3:
                break
        except sqlite3.OperationalError:  # the learner is creating its tables
            pass
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = int(_learner_state(served)["offset"])
    assert 0 < killed_at < len(events)  # really mid-stream
    out = subprocess.run(_learn_cmd(served, state, "--until-caught-up"), check=True, env=env, timeout=300,
                         capture_output=True, text=True)
    a, b = _learner_state(ref_served), _learner_state(served)
    assert a["offset"] == b["offset"] == str(len(events))
    assert a["events_seen"] == b["events_seen"] == str(len(events))  # nothing skipped or counted twice
    (ia, ha), (ib, hb) = _channels(ref_served), _channels(served)
    np.testing.assert_array_equal(ha.popularity_, hb.popularity_)
    np.testing.assert_array_equal(_dense(ia.neighbours_), _dense(ib.neighbours_))
    assert ha.popularity_.sum() == len(head.interactions) + tail.height
    assert f'"events_seen": {len(events)}' in out.stdout


def test_redis_stream_source_feeds_the_learner(learn_world, tmp_path, redis_url):
    """The service XADDs every accepted feedback event; the learner tails the stream."""
    from funnelrec.pipeline.service import RecommenderService, ServiceConfig

    data, head, tail, art = learn_world
    key = f"test:events:{tmp_path.name}"
    svc = RecommenderService(Funnel.load(art), ServiceConfig(redis_url=redis_url, redis_stream=key,
                                                             redis_prefix=f"t{tmp_path.name}:"))
    events = _stream(tail[:15])
    for e in events:
        svc.feedback(e.request_id, e.user_id, [{"item_id": e.item_id, "type": e.type, "ts": e.ts}])
    svc.close()
    src = RedisStreamSource(redis_url, key)
    first, off = src.read(src.start, 10)
    rest, off2 = src.read(off, 100)
    assert first.height == 10 and rest.height == 20 and src.backlog(off2) == 0 and src.backlog(off) == 20
    assert first["offset"].to_list() == sorted(first["offset"].to_list(), key=lambda s: tuple(map(int, s.split("-"))))
    assert list(zip(first["user_id"], first["item_id"], first["type"], first["ts"]))[:2] == [
        (e.user_id, e.item_id, e.type, e.ts) for e in events[:2]]
    served = tmp_path / "served"
    Publisher(served).init(art)
    learner = OnlineLearner(served, src, LearnConfig(batch_limit=100))
    r = learner.run_once()
    assert r["events"] == 30 and r["offset"] == off2 and r["quarantined"] == 0
    _, hot = _channels(served)
    assert hot.popularity_.sum() == len(head.interactions) + 15
    learner.close()


def test_a_learner_the_stream_retention_outran_reports_the_gap(learn_world, tmp_path, redis_url, caplog):
    """Events trimmed from the stream before the learner read them are lost to it: the step says
    so (report, status, an error log line) and goes on with what the stream still holds."""
    import json
    import logging

    import redis

    from funnelrec.online.shared import SharedFeedback
    from funnelrec.online.source import stream_fields

    _, _, tail, art = learn_world
    key = f"test:gap:{tmp_path.name}"
    client = redis.Redis.from_url(redis_url)
    events = _stream(tail[:4])  # 8 events: 4 impression + click pairs
    for n, e in enumerate(events[:6]):  # six of them appended in 1970 (ids 1000-0 … 1005-0)
        client.xadd(key, stream_fields(e, 1.0), id=f"{1000 + n}-0")
    served = tmp_path / "served"
    Publisher(served).init(art)
    learner = OnlineLearner(served, RedisStreamSource(redis_url, key), LearnConfig(batch_limit=2))
    first = learner.run_once()
    assert first["events"] == 2 and first["offset"] == "1001-0" and "stream_gap" not in first
    shared = SharedFeedback(redis_url, prefix=f"g{tmp_path.name}:", stream=key, retention_s=3600)
    assert shared.claim_new([(None, stream_fields(e, 2.0)) for e in events[6:]]) == [True, True]
    with caplog.at_level(logging.ERROR, logger="funnelrec.online.learner"):
        second = learner.run_once()
    # 1002-0 … 1005-0 went unread; the two appended now are read
    assert second["stream_gap"]["after"] == "1001-0" and second["stream_gap"]["trimmed_up_to"] == "1005-0"
    assert second["events"] == 2 and learner.events_seen == 4
    assert any("trimmed from the stream" in r.getMessage() for r in caplog.records)
    status = json.loads((served / STATUS).read_text())
    assert status["stream_gap"]["trimmed_up_to"] == "1005-0"
    third = learner.run_once()
    assert third["events"] == 0 and "stream_gap" not in third
    learner.close()
    shared.close()
    client.close()


def test_a_learner_the_event_log_retention_outran_reports_the_gap(learn_world, tmp_path, caplog):
    """The SQLite log's retention (serve --log-retention-s) trimmed events the learner had not read:
    the step reports it, names the knob, and learns from what the log still holds."""
    import logging

    _, _, tail, art = learn_world
    events = _stream(tail[:4])  # 8 events
    served = tmp_path / "served"
    Publisher(served).init(art)
    now = [1000.0]
    log = EventLog(tmp_path / "state" / "events.db", retention_s=60, trim_every_s=0, clock=lambda: now[0])
    log.append(events[:6])      # seq 1–6 at t 1000
    learner = OnlineLearner(served, EventLogSource(tmp_path / "state" / "events.db"), LearnConfig(batch_limit=2))
    first = learner.run_once()
    assert first["events"] == 2 and first["offset"] == "2" and "stream_gap" not in first
    now[0] = 2000.0
    log.append(events[6:])      # seq 7–8; the append trims seq 1–6
    with caplog.at_level(logging.ERROR, logger="funnelrec.online.learner"):
        second = learner.run_once()
    assert second["stream_gap"]["after"] == "2" and second["stream_gap"]["trimmed_up_to"] == "6"
    assert second["events"] == 2 and second["offset"] == "8" and learner.events_seen == 4
    assert any("trimmed from the event log" in r.getMessage() and "--log-retention-s" in r.getMessage()
               for r in caplog.records)
    third = learner.run_once()
    assert third["events"] == 0 and "stream_gap" not in third
    # everything unread trimmed and nothing new: the learner steps past the gap and says so once
    now[0] = 2100.0
    log.append(events[:2])      # seq 9–10 (the same events again: no ids, so stored again)
    now[0] = 9000.0
    assert log.trim() == 2
    fourth = learner.run_once()
    assert fourth["stream_gap"]["trimmed_up_to"] == "10" and fourth["events"] == 0 and learner.offset == "10"
    fifth = learner.run_once()
    assert "stream_gap" not in fifth and fifth["offset"] == "10"
    learner.close()
    restarted = OnlineLearner(served, EventLogSource(tmp_path / "state" / "events.db"), LearnConfig(batch_limit=2))
    assert restarted.offset == "10"  # the step past the gap was committed
    restarted.close()
    log.close()


def test_learn_cli_errors_are_one_line_and_exit_2(learn_world, tmp_path):
    _, _, _, art = learn_world
    env = {**os.environ, "FUNNELREC_THREADS": "1"}
    base = [sys.executable, "-m", "funnelrec.cli", "learn", "--served", str(tmp_path / "served")]
    cases = [(base + ["--state-dir", str(tmp_path / "none")], "events.db"),  # no event log there
             (base + ["--state-dir", str(tmp_path), "--redis", "redis://127.0.0.1:1/0"], "exactly one of"),
             (base + ["--state-dir", str(tmp_path), "--artifact", str(tmp_path / "nope")], "nope")]
    for cmd, needle in cases:
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], r.stderr
    with EventLog(tmp_path / "state" / "events.db"):
        pass
    r = subprocess.run(base + ["--state-dir", str(tmp_path / "state"), "--once"], env=env, capture_output=True,
                       text=True, timeout=120)  # a served dir with no version and no --artifact
    assert r.returncode == 2 and "--artifact" in r.stderr.strip().splitlines()[-1]


def test_an_item_upserted_through_the_catalogue_enters_itemcf_and_hot_at_the_next_step(learn_world, tmp_path):
    from funnelrec.online.catalogue import open_catalogue

    data, head, tail, art = learn_world
    served, state = _setup(tmp_path, art, [])
    cat = open_catalogue("sqlite", state_dir=state)
    genres = data.dataset.items["genres"][0].to_list()
    cat.upsert_items([{"item_id": 1001, "attributes": {"genres": genres}}], now=1_000_000_000)
    users = [str(u) for u in data.dataset.users["user_id"][:3].to_list()]
    with EventLog(state / "events.db") as log:
        log.append([FeedbackEvent(None, u, "1001", "click", 1.0, 1_009_000_000) for u in users])
    learner = OnlineLearner(served, EventLogSource(state / "events.db"), LearnConfig(), catalogue=cat)
    r = learner.run_once()
    assert r["quarantined"] == 0 and "dataset" in r["parts"] and "channels/itemcf" in r["parts"]
    f = Funnel.load(current_dir(served))
    idx = f.dataset_.item_ids.index(1001)
    assert idx == data.n_items  # appended after the fitted items
    itemcf, hot = f.channels_["itemcf"], f.channels_["hot"]
    assert itemcf.neighbours_.shape == (idx + 1, idx + 1) and hot.popularity_[idx] == 3
    got = set(itemcf.neighbours_[idx].indices)  # its neighbours: what its three users consumed
    assert got and got <= set(np.unique(head.csr[data.dataset.user_ids.indices(users)].indices))
    learner.close()
    # without the catalogue the same event is an unknown item: quarantined
    served2, state2 = _setup(tmp_path / "b", art, [FeedbackEvent(None, users[0], "1001", "click", 1.0, 1_009_000_000)])
    bare = OnlineLearner(served2, EventLogSource(state2 / "events.db"), LearnConfig())
    assert bare.run_once()["quarantined"] == 1
    bare.close()
