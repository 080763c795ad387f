"""The closed loop (online/loop.py): the graded NDCG by hand, and every request's NDCG recomputed
independently from the world's truth and the loop's own records (what was shown and clicked)."""

import math

import numpy as np
import polars as pl
import pytest

from funnelrec.core.errors import ConfigError, DataError
from funnelrec.data import load_dataset
from funnelrec.online.loop import LoopConfig, closed_loop, graded_ndcg, summarize_loop
from funnelrec.online.replay import DAY, ReplayConfig, fit_for_replay
from funnelrec.pipeline.config import FunnelConfig

K = 5
# a ranker (label_fraction 0.1): its label slice of the fit rows is what the channels never saw
CFG = ReplayConfig(k=K, label_fraction=0.1, click_column="click", like_column="like", like_threshold=1.0,
                   bootstrap_resamples=200)
FUNNEL = FunnelConfig.from_dict({"recall": {"channels": [{"name": "itemcf", "n": 30}, {"name": "hot", "n": 30}],
                                            "merge": {"total": 40, "priority": ["itemcf", "hot"]}}, "k": K,
                                  "rank": {"epochs": 1, "user_columns": ["age_band"], "item_columns": ["tags"]}})
LOOP = LoopConfig(users_per_day=40, requests_per_user=2, seed=3)
SLICE = DAY  # the service's default exposure filter: 7 days in 1-day slices


def test_graded_ndcg_by_hand():
    # shown gains .5, .1, .4; best three allowed .5, .4, .3: DCG = .5 + .1/log2 3 + .4/2
    got = graded_ndcg(np.array([0.5, 0.1, 0.4]), np.array([0.1, 0.3, 0.5, 0.4, 0.0]), 3)
    assert got == pytest.approx((0.5 + 0.1 / math.log2(3) + 0.2) / (0.5 + 0.4 / math.log2(3) + 0.3 / 2))
    assert graded_ndcg(np.array([0.5, 0.4]), np.array([0.5, 0.4, 0.1]), 3) == pytest.approx(
        (0.5 + 0.4 / math.log2(3)) / (0.5 + 0.4 / math.log2(3) + 0.05))  # a short list: the ideal still has k
    assert math.isnan(graded_ndcg(np.array([0.0]), np.array([0.0, 0.0]), 2))


@pytest.fixture(scope="module")
def loop_runs():
    # 20 days, cut at day 10: the 10 loop days outlast the 7-day exposure window (and its slice)
    ds = load_dataset("synthetic", n_users=150, n_items=120, n_interactions=6000, days=20, seed=1,
                      drift_day=13, drift_fraction=1.0)
    fitted = fit_for_replay(ds, FUNNEL, CFG)
    world = ds.extras["world"]
    runs = {}
    for m in ("static", "realtime"):
        ranked: list[list[int]] = []  # each request's whole ranked answer (item indices), in request order
        rec = closed_loop(fitted, world, m, CFG, LOOP, on_request=lambda u, t, r, into=ranked: into.append(r.tolist()))
        runs[m] = rec.with_columns(pl.Series("ranked", ranked, dtype=pl.List(pl.Int64)))
    return ds, fitted, runs


def test_every_request_ndcg_recomputed_from_the_truth(loop_runs):
    """Independently of the loop's arrays: allowed = published, not clicked (fit rows, the
    label slice included, or earlier in the loop), not held back by the exposure filter (shown
    at s: back once t − 7 days lies in a later day-slice than s); gains = the truth at the
    request's time, after the drift the drifted vectors themselves (not `world.at`)."""
    ds, fitted, runs = loop_runs
    world = ds.extras["world"]
    c = world.config
    fit = fitted.fit_rows
    reshown = {m: 0 for m in runs}
    for mode, rec in runs.items():
        clicked = {(u, i) for u, i in zip(fit["user_id"].cast(pl.String).to_list(), fit["item_id"].cast(pl.String).to_list())}
        shown_at: dict[tuple[str, str], int] = {}
        for row in rec.sort("ts", maintain_order=True).iter_rows(named=True):
            u, t = row["user_id"], row["ts"]
            vec = world.user_vectors_after_drift[int(u)] if t >= c.drift_time else world.user_vectors[int(u)]
            logit = (c.click_bias + c.affinity_weight * (world.item_vectors @ vec) + c.popularity_weight
                     * world.popularity_score + c.freshness_weight
                     * np.exp(-np.maximum(0, t - world.publish_time) / (c.freshness_days * DAY)))
            gain = np.where(world.publish_time <= t, 1 / (1 + np.exp(-logit)), 0.0)
            shown = [int(i) for i in row["items"]]
            ok = [i for i in range(world.n_items) if world.publish_time[i] <= t and (u, str(i)) not in clicked
                  and shown_at.get((u, str(i)), -10**12) // SLICE < (t - 7 * DAY) // SLICE]
            allowed = sorted(set(ok) | set(shown))
            want = graded_ndcg(gain[shown], gain[allowed], K)
            assert row["ndcg"] == pytest.approx(want, rel=1e-5, abs=1e-9), (mode, row)
            # the recall ceiling: the truth's best k of what was ranked, at least what was shown, at most the ideal
            assert row["ndcg"] - 1e-9 <= row["ndcg_candidates"] <= 1 + 1e-9
            ranked = row["ranked"]
            assert [int(i) for i in ranked[:K]] == shown  # the shown list is the ranked answer's head
            best = sorted(gain[ranked], reverse=True)[:K]
            assert row["ndcg_candidates"] == pytest.approx(graded_ndcg(np.array(best), gain[allowed], K),
                                                           rel=1e-5, abs=1e-9)
            # P(click) at each position: the truth × (1 + position)^−position_exponent
            bias = [(1.0 + p) ** -c.position_exponent for p in range(len(shown))]
            assert row["expected_clicks"] == pytest.approx(sum(g * b for g, b in zip(gain[shown], bias)), rel=1e-5)
            for i in row["items"]:
                assert (u, i) not in clicked  # never show what the user clicked (label slice included)
                assert shown_at.get((u, i), -10**12) // SLICE < (t - 7 * DAY) // SLICE  # the filter held it back
                reshown[mode] += (u, i) in shown_at
                shown_at[(u, i)] = t
            clicked |= {(u, i) for i in row["clicked"]}
            assert set(row["clicked"]) <= set(row["items"]) and row["clicks"] == len(row["clicked"])
    assert all(v > 0 for v in reshown.values())  # the window was crossed: items came back after it


def test_the_same_arrivals_in_every_mode_and_the_summary(loop_runs):
    _, fitted, runs = loop_runs
    keys = {m: r.select("day", "user_id", "request", "ts").rows() for m, r in runs.items()}
    assert keys["static"] == keys["realtime"] and len(keys["static"]) == 40 * 2 * fitted.replay_rows["day"].n_unique()
    s = summarize_loop(pl.concat(runs.values()), CFG)
    st = runs["static"]
    assert s["modes"]["static"]["ctr"] == pytest.approx(st["clicks"].sum() / st["items"].list.len().sum())
    assert s["modes"]["static"][f"ndcg@{K}"] == pytest.approx(st["ndcg"].mean())
    assert s["modes"]["static"]["expected_clicks"] == pytest.approx(st["expected_clicks"].mean())
    d = s["differences"]["realtime-static"][f"ndcg@{K}"]
    cells = (pl.concat(runs.values()).group_by("mode", "day", "user_id").agg(pl.col("ndcg").mean())
             .pivot(on="mode", index=["day", "user_id"], values="ndcg"))
    assert d["mean"] == pytest.approx((cells["realtime"] - cells["static"]).mean()) and d["cells"] == cells.height
    lo, hi = d["ci95"]
    assert lo <= d["mean"] <= hi


def test_loop_errors(loop_runs):
    ds, fitted, _ = loop_runs
    with pytest.raises(ConfigError, match="users_per_day and requests_per_user must be ≥ 1"):
        LoopConfig(users_per_day=0)
    with pytest.raises(ConfigError, match="exceeds the world's 150 users"):
        closed_loop(fitted, ds.extras["world"], "static", CFG, LoopConfig(users_per_day=151))
    other = load_dataset("synthetic", n_users=100, n_items=50, n_interactions=1000, days=8, seed=1)
    with pytest.raises(DataError, match="give the dataset's own world"):
        closed_loop(fitted, other.extras["world"], "static", CFG, LOOP)


def test_the_closed_loop_runs_the_live_learner_defaults(loop_runs, monkeypatch):
    """Its users click on what they were shown, as in a deployment: the learner starts from the
    live defaults (learn_base {}), not the replay's candidate form (REPLAY_LEARN)."""
    import funnelrec.online.loop as loop_mod

    _, fitted, _ = loop_runs
    seen = {}

    class Stop(Exception):
        pass

    def spy(*args, learn_base=None, **kw):
        seen["learn_base"] = learn_base
        raise Stop

    monkeypatch.setattr(loop_mod, "mode_service", spy)
    with pytest.raises(Stop):
        closed_loop(fitted, fitted.dataset.extras["world"], "online", CFG, LOOP)
    assert seen == {"learn_base": {}}
