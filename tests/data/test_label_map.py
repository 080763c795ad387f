"""The label map (data/source.py) and the rule stage's pure part (filter/rules.py), against
hand-computed tables."""

import numpy as np
import polars as pl
import pytest

from funnelrec.core.errors import ConfigError
from funnelrec.data.source import LabelRule, LabelSpec
from funnelrec.filter.rules import RuleSpec, rule_exclusions
from funnelrec.pipeline.config import FunnelConfig

EVENTS = pl.DataFrame({"ev": ["view", "click", "cart", "purchase", "play", "view", None],
                       "secs": [0.0, 0.0, 0.0, 0.0, 42.5, 0.0, 0.0]})
MAP = {"view": {"task": "ctr", "means": "click"}, "click": {"task": "ctr"}, "cart": {"task": "conversion"},
       "purchase": {"task": "conversion", "weight": 3.0}, "play": {"task": "watch_time", "value": "secs",
                                                                   "means": "watch_time"}}


def test_label_columns_by_hand():
    cfg = FunnelConfig.from_dict({"labels": {"event_column": "ev", "map": MAP},
                                  "rank": {"tasks": ["ctr", "conversion", "watch_time"]}})
    out = cfg.labels.label_columns(EVENTS)
    assert out["label_ctr"].to_list() == [1, 1, 0, 0, 0, 1, 0]
    assert out["label_conversion"].to_list() == [0, 0, 1, 1, 0, 0, 0]
    assert out["weight_conversion"].to_list() == [1, 1, 1, 3, 1, 1, 1]
    assert out["label_watch_time"].to_list() == [0, 0, 0, 0, 42.5, 0, 0]  # the value column, not 1
    # the ranker reads them by name; a task with a value column is a watch-time task
    assert cfg.rank.task_columns == {"ctr": "label_ctr", "conversion": "label_conversion",
                                     "watch_time": "label_watch_time"}
    assert cfg.rank.weight_columns["conversion"] == "weight_conversion"
    assert cfg.rank.task_kinds == {"watch_time": "watch_time"}
    assert cfg.labels.meaning() == {"view": "click", "play": "watch_time"}


def test_label_map_errors_name_the_key():
    spec = LabelSpec("ev", {"purchse": LabelRule("conversion")})
    with pytest.raises(ConfigError, match=r"labels.map.purchse: no interaction has ev = 'purchse'"):
        spec.check(EVENTS)
    with pytest.raises(ConfigError, match=r"labels.map.x.means: 'buy' is not a funnel event type"):
        FunnelConfig.from_dict({"labels": {"event_column": "ev", "map": {"x": {"means": "buy"}}}})
    with pytest.raises(ConfigError, match=r"rules\[0\].types: 'impression' never enters"):
        FunnelConfig.from_dict({"rules": [{"types": ["impression"]}]})


def test_impressions_are_exposure_and_out_of_every_fit():
    """An event that means an impression (its name without a `means`, or `means: impression`) is
    exposure only, as online: its rows leave the interactions, and it may not label a task."""
    spec = LabelSpec("ev", {"impression": LabelRule(), "shown": LabelRule(means="impression"),
                            "view": LabelRule("ctr", means="click"), "click": LabelRule("ctr")})
    assert spec.exposure_events() == ["impression", "shown"]
    log = pl.DataFrame({"ev": ["shown", "view", "impression", "click", "shown", None], "x": [0, 1, 2, 3, 4, 5]})
    kept = spec.consumptions(log)
    assert kept["x"].to_list() == [1, 3, 5]  # a row without an event type is an interaction, as before
    spec.check(kept)                        # the mapped exposure events need not occur in what is fitted
    with pytest.raises(ConfigError, match="labels.map.click: no interaction has ev = 'click'"):
        spec.check(kept.filter(pl.col("ev") != "click"))  # … the other events still must
    # an impression the map does not name is one too, as online; one the map gives a meaning is not
    assert LabelSpec("ev", {"click": LabelRule("ctr")}).consumptions(log)["x"].to_list() == [0, 1, 3, 4, 5]
    assert LabelSpec("ev", {"impression": LabelRule("ctr", means="click")}).exposure_events() == []
    assert LabelSpec().exposure_events() == []  # no event column: every row is an interaction
    # an impression log's 0/1 flag: a row without a value was shown, not known to be clicked
    flag = LabelSpec("clicked", {"1": LabelRule("ctr", means="click"), "0": LabelRule(means="impression")})
    rows = pl.DataFrame({"clicked": [1, 0, None, 1], "x": [0, 1, 2, 3]})
    assert flag.is_flag() and flag.consumptions(rows)["x"].to_list() == [0, 3]
    assert not spec.is_flag() and not LabelSpec("ev", {"1": LabelRule("ctr"), "2": LabelRule()}).is_flag()
    # an exposure event labelling a task is refused when a fit starts (an old artifact still loads)
    both = pl.DataFrame({"ev": ["impression", "exp", "click"]})
    for name, rule in (("impression", LabelRule("ctr")), ("exp", LabelRule("ctr", means="impression"))):
        spec = LabelSpec("ev", {name: rule, "click": LabelRule("ctr")})
        with pytest.raises(ConfigError, match=rf"labels.map.{name}: an impression is exposure only .* task 'ctr'"):
            spec.check(both)
    spec = LabelSpec("ev", {"impression": LabelRule(weight=3.0), "click": LabelRule("ctr")})
    with pytest.raises(ConfigError, match=r"labels.map.impression: .* cannot carry a value or a weight"):
        spec.check(both)


def test_rule_exclusions_by_hand():
    keys = np.array([10, 11, 12, 13, 10])
    ts = np.array([100, 500, 900, 950, 960])
    types = ["purchase", "purchase", "cart", "transaction", "click"]
    rules = [RuleSpec(["purchase", "transaction"], ttl_s=500)]
    # now 1000: 10 bought at 100 (900 s ago: expired), 11 at 500 (500 s: expired, ttl is strict),
    # 13 by 'transaction' meaning purchase at 950 (50 s: kept out); 12 is a cart; 10's click is not a rule type
    got = rule_exclusions(rules, keys, ts, types, now=1000, meaning={"transaction": "purchase"})
    assert got.tolist() == [13]
    got = rule_exclusions(rules + [RuleSpec(["cart"], ttl_s=200)], keys, ts, types, now=1000)
    assert got.tolist() == [12, 13]  # the cart 100 s ago is within its 200 s; no meaning: 'transaction' is listed
    assert rule_exclusions([], keys, ts, types, now=1000).tolist() == []
