"""Which label of an online sample trains which ranker task (online/samples.py `task_targets`),
and the learner on a team's own funnel: `funnelrec init` on a shop writes tasks ctr and
conversion (cart, purchase × 3), and the learner must train conversion from the carts and
purchases of the stream — it used to stop at its first labelled step (KeyError 'conversion')."""

from __future__ import annotations

import sqlite3
from types import SimpleNamespace

import numpy as np
import polars as pl
import pytest

from funnelrec.core.errors import ConfigError
from funnelrec.data.source import LabelRule, LabelSpec
from funnelrec.online.labels import LabelJoin, empty_samples


def _events(rows):
    return pl.DataFrame(rows, schema={"user_id": pl.Utf8, "item_id": pl.Utf8, "type": pl.Utf8, "value": pl.Float64,
                                      "ts": pl.Int64, "request_id": pl.Utf8}, orient="row")


def _config(rules: dict | None = None, task_columns: dict | None = None, task_kinds: dict | None = None):
    spec = LabelSpec("event_type", {k: LabelRule(**v) for k, v in (rules or {}).items()}) if rules else LabelSpec()
    return SimpleNamespace(labels=spec, rank=SimpleNamespace(task_columns=task_columns or {},
                                                             task_kinds=task_kinds or {}))


SHOP = {"view": {"task": "ctr", "means": "click"}, "click": {"task": "ctr"}, "cart": {"task": "conversion"},
        "purchase": {"task": "conversion", "weight": 3.0}}


def test_a_cart_after_an_impression_labels_that_sample_and_nothing_else():
    join = LabelJoin(window_s=100)
    ev = _events([("u", "a", "impression", 1.0, 0, "r1"), ("u", "b", "impression", 1.0, 0, "r1"),
                  ("u", "a", "cart", 1.0, 30, "r1"), ("v", "c", "cart", 1.0, 40, None),
                  ("x", "y", "impression", 1.0, 1000, None)])
    done, _, _ = join.step(ev, empty_samples())
    got = {(r["user_id"], r["item_id"]): (r["cart"], r["click"], r["purchase"], r["request_id"])
           for r in done.iter_rows(named=True)}
    assert got == {("u", "a"): (1, 0, 0, "r1"), ("u", "b"): (0, 0, 0, "r1"),
                   ("v", "c"): (1, 0, 0, None)}  # an organic cart: a sample of its own


def test_open_samples_kept_before_the_cart_label_are_read_as_not_carted():
    old = pl.DataFrame([("u", "a", 0, "r1", 0, 0, 0.0, 0)], orient="row", schema={
        "user_id": pl.Utf8, "item_id": pl.Utf8, "ts": pl.Int64, "request_id": pl.Utf8, "click": pl.Int8,
        "like": pl.Int8, "watch_time": pl.Float64, "purchase": pl.Int8})
    done, _, _ = LabelJoin(window_s=100).step(_events([("u", "a", "cart", 1.0, 50, "r1"),
                                                       ("z", "z", "impression", 1.0, 500, None)]), old)
    assert done.filter(pl.col("item_id") == "a")[["cart", "click"]].rows() == [(1, 0)]


def test_shop_label_map_targets_hand_computed():
    from funnelrec.online.samples import task_targets

    t = task_targets(_config(SHOP), ("ctr", "conversion"))
    # rows: click | cart | cart + purchase | purchase | nothing | like only
    labels = {"click": np.array([1, 0, 0, 0, 0, 0], np.float32), "cart": np.array([0, 1, 1, 0, 0, 0], np.float32),
              "purchase": np.array([0, 0, 1, 1, 0, 0], np.float32), "like": np.array([0, 0, 0, 0, 0, 1], np.float32),
              "watch_time": np.zeros(6, np.float32)}
    y, w = t["ctr"].of(labels)
    assert y.tolist() == [1, 0, 0, 0, 0, 0] and w.tolist() == [1, 1, 1, 1, 1, 1]  # view and click are one column
    y, w = t["conversion"].of(labels)
    assert y.tolist() == [0, 1, 1, 1, 0, 0]
    assert w.tolist() == [1, 1, 3, 3, 1, 1]  # the largest weight among the rules it matched; negatives 1


def test_a_valued_rule_is_a_watch_time_target_weighted_by_seconds():
    from funnelrec.online.samples import task_targets

    rules = {"play": {"task": "watch", "value": "seconds", "means": "watch_time"}, "click": {"task": "ctr"}}
    t = task_targets(_config(rules, task_kinds={"watch": "watch_time"}), ("ctr", "watch"))
    y, w = t["watch"].of({"watch_time": np.array([0.0, 12.5, 3.0]), "click": np.array([1, 1, 0])})
    assert y.tolist() == [0, 1, 1] and w.tolist() == [1.0, 12.5, 3.0]


def test_without_a_map_ctr_is_any_event_like_is_like_and_a_named_column_is_read():
    from funnelrec.online.samples import task_targets

    t = task_targets(_config(task_columns={"buy": "purchase"}), ("ctr", "like", "buy", "cart"))
    assert {k: v.columns for k, v in t.items() if k != "ctr"} == {
        "like": (("like", 1.0),), "buy": (("purchase", 1.0),), "cart": (("cart", 1.0),)}
    # the fit takes every label row as a ctr positive, so online a like, cart, purchase or watch
    # without a click is one too; rows: click | like only | cart only | 40 s watched | nothing
    labels = {"click": np.array([1, 0, 0, 0, 0]), "like": np.array([0, 1, 0, 0, 0]), "cart": np.array([0, 0, 1, 0, 0]),
              "purchase": np.zeros(5), "watch_time": np.array([0, 0, 0, 40.0, 0])}
    y, w = t["ctr"].of(labels)
    assert y.tolist() == [1, 1, 1, 1, 0] and w.tolist() == [1, 1, 1, 1, 1]


@pytest.mark.parametrize("key, value", [("task_columns", "bought"), ("weight_columns", "margin")])
def test_an_offline_override_of_a_mapped_task_is_refused_online(key, value):
    """With labels.map naming task conversion, rank.task_columns.conversion = another column
    trains conversion offline on that column, while the learner trains it on the map's events."""
    from funnelrec.online.samples import task_targets

    cfg = _config(SHOP)
    setattr(cfg.rank, key, {"conversion": value})
    with pytest.raises(ConfigError) as e:
        task_targets(cfg, ("ctr", "conversion"))
    assert f"rank.{key}.conversion" in str(e.value) and repr(value) in str(e.value), str(e.value)
    own = {"task_columns": "label_conversion", "weight_columns": "weight_conversion"}[key]
    setattr(cfg.rank, key, {"conversion": own})  # the map's own column (what config.py resolves to) is fine
    assert set(task_targets(cfg, ("ctr", "conversion"))) == {"ctr", "conversion"}


@pytest.mark.parametrize("cfg, tasks, names", [
    (_config(task_columns={"rated": "rating"}), ("ctr", "rated"), ("'rated'", "'rating'")),
    (_config(), ("ctr", "conversion"), ("'conversion'", "labels.map")),
    (_config({"seen": {"task": "ctr", "means": "impression"}}), ("ctr",), ("labels.map.seen", "'impression'")),
    (_config({"fol": {"task": "ctr", "means": "follow"}}), ("ctr",), ("labels.map.fol", "'follow'")),
    (_config({"play": {"task": "watch", "value": "seconds", "means": "click"}}), ("watch",),
     ("labels.map.play", "watch_time")),
])
def test_a_task_the_stream_cannot_label_is_a_config_error_naming_it(cfg, tasks, names):
    from funnelrec.online.samples import task_targets

    with pytest.raises(ConfigError) as e:
        task_targets(cfg, tasks)
    assert all(n in str(e.value) for n in names), str(e.value)


# ------------------------------------------------------------------ the learner on a shop's funnel
@pytest.fixture(scope="module")
def shop_artifact(tmp_path_factory):
    """`funnelrec init` + `funnelrec train` on a generated shop (tasks ctr and conversion)."""
    from typer.testing import CliRunner

    from funnelrec.cli import app
    from shop_world import init_shop

    root = tmp_path_factory.mktemp("shoplearn")
    _, config = init_shop(root, n_events=5000, seed=3, n_users=250, n_items=200)
    r = CliRunner().invoke(app, ["train", "--config", str(config), "--out", str(root / "art"), "--quiet"])
    assert r.exit_code == 0, (r.output, r.exception)
    return root / "art"


def _shop_stream(funnel, carted: str, passed: str, t0: int):
    """Every user with both items among its candidates is shown both; `carted` is carted (and
    every third time bought) 5 s later, `passed` never; a late impression closes the windows."""
    from funnelrec.pipeline.eventlog import FeedbackEvent

    users = funnel.dataset_.users["user_id"].cast(pl.Utf8).to_list()
    out = []
    for k, u in enumerate(users[:150]):
        t = t0 + 10 * k
        out += [FeedbackEvent(f"r{k}", u, carted, "impression", 1.0, t), FeedbackEvent(f"r{k}", u, passed, "impression", 1.0, t),
                FeedbackEvent(f"r{k}", u, carted, "cart", 1.0, t + 5)]
        if k % 3 == 0:
            out.append(FeedbackEvent(f"r{k}", u, carted, "purchase", 1.0, t + 6))
        if k % 2 == 0:  # ctr gets both classes too
            out.append(FeedbackEvent(f"r{k}", u, passed, "click", 1.0, t + 4))
    out.append(FeedbackEvent("late", users[0], passed, "impression", 1.0, t0 + 100_000))
    return out


def test_the_learner_trains_the_shop_conversion_task_from_carts_and_purchases(shop_artifact, tmp_path):
    from funnelrec.online.guardrail import AUCGuardrail, ranker_logits
    from funnelrec.online.learner import LearnConfig, OnlineLearner
    from funnelrec.online.publish import Publisher
    from funnelrec.online.samples import rank_samples
    from funnelrec.online.served import current_dir
    from funnelrec.online.source import EventLogSource
    from funnelrec.online.updates import RankerUpdateConfig, RankerUpdater
    from funnelrec.pipeline.eventlog import EventLog
    from funnelrec.pipeline.funnel import Funnel

    served, state = tmp_path / "served", tmp_path / "state"
    Publisher(served).init(shop_artifact)
    before = Funnel.load(current_dir(served))
    assert tuple(before.ranker_.tasks_) == ("ctr", "conversion")
    items = before.dataset_.items["item_id"].cast(pl.Utf8).to_list()
    carted, passed = items[3], items[4]
    with EventLog(state / "events.db") as log:
        log.append(_shop_stream(before, carted, passed, t0=1_900_000_000))
    learner = OnlineLearner(served, EventLogSource(state / "events.db"), LearnConfig(label_window_s=60),
                            [RankerUpdater(RankerUpdateConfig(min_count=0, epochs=5, lr=0.01),
                                           guardrail=AUCGuardrail(margin=1.0, min_per_class=1))])
    report = learner.run_once()
    learner.close()
    assert report["refused"] == {} and "ranker" in report["parts"], report
    after = Funnel.load(current_dir(served))
    users = before.dataset_.users["user_id"].cast(pl.Utf8).to_list()[:150]
    probe = pl.DataFrame({"user_id": users * 2, "item_id": [carted] * 150 + [passed] * 150, "ts": [0] * 300,
                          "request_id": ["p"] * 300, "click": [0] * 300, "like": [0] * 300,
                          "watch_time": [0.0] * 300, "purchase": [0] * 300})
    s = rank_samples(before, probe)

    def gap(f, task):  # mean logit of the carted item − of the passed one, same users
        z = ranker_logits(f.ranker_, s, task)
        return float(z[:150].mean() - z[150:].mean())

    # the carts and purchases taught conversion to put the carted item above the passed one
    assert gap(after, "conversion") > gap(before, "conversion") + 0.2
    # and ctr learned the clicks on the passed one (the tasks are not mixed up)
    assert gap(after, "ctr") < gap(before, "ctr") - 0.2


def test_a_learner_db_from_before_the_cart_label_is_migrated(shop_artifact, tmp_path):
    from funnelrec.online.learner import LearnConfig, OnlineLearner
    from funnelrec.online.publish import Publisher
    from funnelrec.online.source import EventLogSource
    from funnelrec.pipeline.eventlog import EventLog

    served, state = tmp_path / "served", tmp_path / "state"
    Publisher(served).init(shop_artifact)
    db = sqlite3.connect(served / "learner.db")
    db.executescript("""CREATE TABLE pending (user_id TEXT, item_id TEXT, ts INTEGER, request_id TEXT,
        click INTEGER, like INTEGER, watch_time REAL, purchase INTEGER);
        CREATE TABLE holdout (user_id TEXT, item_id TEXT, ts INTEGER, request_id TEXT,
        click INTEGER, like INTEGER, watch_time REAL, purchase INTEGER);
        INSERT INTO pending VALUES ('u1', 'i1', 5, 'r', 1, 0, 0.0, 0);""")
    db.commit()
    db.close()
    with EventLog(state / "events.db"):
        pass
    learner = OnlineLearner(served, EventLogSource(state / "events.db"), LearnConfig())
    assert learner.pending[["user_id", "click", "cart"]].rows() == [("u1", 1, 0)]
    learner.close()


def test_learn_refuses_at_start_a_ranker_task_the_stream_cannot_label(shop_artifact, tmp_path):
    import dataclasses

    from funnelrec.online.learner import LearnConfig, OnlineLearner
    from funnelrec.online.publish import Publisher
    from funnelrec.online.source import EventLogSource
    from funnelrec.online.updates import RankerUpdater
    from funnelrec.pipeline.eventlog import EventLog
    from funnelrec.pipeline.funnel import Funnel

    f = Funnel.load(shop_artifact)
    rules = {k: v for k, v in f.config.labels.map.items() if v.task != "conversion"}  # conversion unmapped
    f.config = dataclasses.replace(f.config, labels=dataclasses.replace(f.config.labels, map=rules))
    f.save(tmp_path / "art")
    served, state = tmp_path / "served", tmp_path / "state"
    Publisher(served).init(tmp_path / "art")
    with EventLog(state / "events.db"):
        pass
    with pytest.raises(ConfigError, match="'conversion'"):
        OnlineLearner(served, EventLogSource(state / "events.db"), LearnConfig(), [RankerUpdater()])


def test_two_events_stored_as_one_type_cannot_label_two_tasks():
    from funnelrec.online.samples import task_targets

    cfg = _config({"view": {"task": "ctr", "means": "click"}, "click": {"task": "conversion"}})
    with pytest.raises(ConfigError, match="labels.map.click: .*'view'.*cannot tell task 'conversion' from 'ctr'"):
        task_targets(cfg, ("ctr", "conversion"))


def test_candidate_form_positives_include_carts_and_watches():
    from funnelrec.online.updates import _positives

    f = pl.DataFrame({"user_id": ["u"] * 4, "item_id": list("abcd"), "ts": [0] * 4, "request_id": [None] * 4,
                      "click": [1, 0, 0, 0], "like": [0] * 4, "watch_time": [0.0, 0.0, 12.0, 0.0],
                      "purchase": [0] * 4, "cart": [0, 1, 0, 0]})
    assert _positives(f)["item_id"].to_list() == ["a", "b", "c"]


def test_the_guardrail_judges_ctr_else_the_rankers_first_task():
    from funnelrec.online.guardrail import AUCGuardrail

    g = AUCGuardrail()
    assert g.task_of(SimpleNamespace(tasks_=("conversion", "ctr"))) == "ctr"
    assert g.task_of(SimpleNamespace(tasks_=("conversion",))) == "conversion"  # a carts-and-purchases log
    assert AUCGuardrail(task="like").task_of(SimpleNamespace(tasks_=("ctr", "like"))) == "like"


def test_a_replayed_row_is_sent_as_its_own_event_type_with_a_valued_rules_number():
    from funnelrec.online.replay import _row_events

    spec = LabelSpec("ev", {"view": LabelRule(task="ctr", means="click"), "cart": LabelRule(task="conversion"),
                            "play": LabelRule(task="watch", value="secs", means="watch_time")})
    rows = pl.DataFrame({"ev": ["view", "cart", "play", "share", "purchase"], "secs": [None, None, 42.0, None, None]})
    assert _row_events(rows, spec) == [("view", 1.0), ("cart", 1.0), ("play", 42.0), ("click", 1.0),
                                       ("purchase", 1.0)]  # share: neither mapped nor a funnel type
    assert _row_events(rows, None) == [("click", 1.0)] * 5
