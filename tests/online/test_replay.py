"""funnelrec replay (online/replay.py): the metrics on hand-computed cases, the bootstrap against
scipy, the protocol through a real service (and the same answers over real HTTP), and a planted
world where real-time history must beat the static funnel."""

import importlib
import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from funnelrec.core.errors import ConfigError, DataError
from funnelrec.data.dataset import Dataset
from funnelrec.data.schema import Schema
from funnelrec.online.replay import (
    HttpReplayClient,
    ReplayConfig,
    ServiceClient,
    bootstrap_ci,
    cut_time,
    fit_for_replay,
    interactions_of,
    load_replay_file,
    ndcg_at_k,
    pairwise_auc,
    recovery,
    replay,
    summarize,
    unseen_auc,
)
from funnelrec.pipeline.config import FunnelConfig
from funnelrec.pipeline.service import RecommenderService

DAY = 86_400
BASE = 11_574 * DAY  # a UTC day boundary
N_CLUSTERS, PER_CLUSTER, N_USERS = 6, 5, 36


# ------------------------------------------------------------------ metrics, by hand
def test_ndcg_hand_cases():
    # hits at positions 1 and 3 (0-based) of 4, |R| = 3: DCG = 1/log2 3 + 1/log2 5, IDCG = 1 + 1/log2 3 + 1/2
    got = ndcg_at_k([9, 1, 8, 2], {1, 2, 7}, k=4)
    assert got == pytest.approx((1 / math.log2(3) + 1 / math.log2(5)) / (1 + 1 / math.log2(3) + 0.5))
    assert ndcg_at_k([1, 2], {1, 2}, k=10) == pytest.approx(1.0)  # |R| < k: the ideal has |R| terms
    assert ndcg_at_k([5, 1], {1}, k=1) == 0.0  # a hit beyond k does not count
    assert ndcg_at_k([1, 2, 3], {4}, k=3) == 0.0
    assert math.isnan(ndcg_at_k([1, 2], set(), k=2))


def test_auc_hand_cases_and_sklearn():
    from sklearn.metrics import roc_auc_score

    # positives 0.8, 0.6 vs negatives 0.9, 0.7: only 0.8 > 0.7 of the 4 pairs
    assert pairwise_auc(np.array([0.9, 0.8, 0.7, 0.6]), np.array([0, 1, 0, 1], bool)) == pytest.approx(0.25)
    # a tie counts ½: 0.5 vs {0.5, 0.1} → (½ + 1) / 2
    assert pairwise_auc(np.array([0.5, 0.5, 0.1]), np.array([1, 0, 0], bool)) == pytest.approx(0.75)
    assert math.isnan(pairwise_auc(np.array([1.0, 2.0]), np.array([1, 1], bool)))
    assert math.isnan(pairwise_auc(np.array([1.0, 2.0]), np.array([0, 0], bool)))
    rng = np.random.default_rng(0)
    s = rng.integers(0, 8, 300).astype(float)  # many ties
    y = rng.random(300) < 0.3
    assert pairwise_auc(s, y) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_unseen_auc_hand_case_and_sklearn():
    from sklearn.metrics import roc_auc_score

    # returned a(+) 0.9, b(−) 0.5, c(+) 0.3 of unseen {a..f}, R = {a, c, d}: negatives b, e, f.
    # a beats b, e, f; c beats e, f (not b); d (not returned) ties e and f (½ each), loses to b: 6 / 9
    assert unseen_auc(np.array([0.9, 0.5, 0.3]), np.array([1, 0, 1], bool), 3, 3) == pytest.approx(6 / 9)
    assert math.isnan(unseen_auc(np.array([0.9]), np.array([1], bool), 1, 0))
    assert unseen_auc(np.zeros(0), np.zeros(0, bool), 2, 5) == pytest.approx(0.5)  # nothing returned: all tied
    with pytest.raises(DataError, match="more than the population"):
        unseen_auc(np.array([0.9, 0.8]), np.array([1, 1], bool), 1, 5)
    rng = np.random.default_rng(2)
    for _ in range(20):  # against sklearn on the whole population, the unreturned items all at one score below
        n, m = int(rng.integers(5, 60)), int(rng.integers(1, 40))
        y = rng.random(n) < 0.3
        y[0], y[1] = True, False
        ret = rng.permutation(n)[: min(m, n)]
        s = np.full(n, -1.0)
        s[ret] = rng.integers(0, 6, len(ret)).astype(float)  # ties among the returned too
        got = unseen_auc(s[ret], y[ret], int(y.sum()), int((~y).sum()))
        assert got == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_bootstrap_ci_matches_scipy():
    from scipy.stats import bootstrap

    rng = np.random.default_rng(1)
    x = rng.exponential(1.0, 400) - 0.8
    lo, hi = bootstrap_ci(x, n_resamples=20_000, confidence=0.95, seed=3)
    ref = bootstrap((x,), np.mean, n_resamples=20_000, confidence_level=0.95, method="percentile",
                    random_state=np.random.default_rng(4)).confidence_interval
    width = ref.high - ref.low
    assert abs(lo - ref.low) < 0.03 * width and abs(hi - ref.high) < 0.03 * width
    # and against the normal approximation mean ± 1.96·s/√n, which it must roughly equal at n = 400
    se = x.std(ddof=1) / np.sqrt(len(x))
    assert lo == pytest.approx(x.mean() - 1.96 * se, abs=0.1 * width)
    assert hi == pytest.approx(x.mean() + 1.96 * se, abs=0.1 * width)
    assert bootstrap_ci(np.full(50, 0.3), 500) == pytest.approx((0.3, 0.3))  # no spread, no width
    assert all(math.isnan(v) for v in bootstrap_ci(np.array([1.0]), 500))


def test_summarize_pairs_user_days_and_recovery():
    cfg = ReplayConfig(bootstrap_resamples=200)
    rec = pl.DataFrame({
        "mode": ["static"] * 3 + ["online"] * 3,
        "day": [1, 1, 2, 1, 1, 2], "user_id": ["a", "b", "a", "a", "b", "a"],
        "ndcg": [0.1, 0.2, 0.3, 0.4, 0.2, 0.6], "auc": [0.5, math.nan, 0.7, 0.6, 0.9, math.nan],
        "n_relevant": [1, 1, 1, 1, 1, 1], "model_version": ["v"] * 6})
    s = summarize(rec, cfg)
    assert s["modes"]["static"]["ndcg@10"] == pytest.approx(0.2)
    assert s["modes"]["static"]["auc"] == pytest.approx(0.6) and s["modes"]["static"]["auc_user_days"] == 2
    d = s["differences"]["online-static"]
    assert d["ndcg@10"]["mean"] == pytest.approx((0.3 + 0.0 + 0.3) / 3) and d["ndcg@10"]["user_days"] == 3
    assert d["auc"]["mean"] == pytest.approx(0.1) and d["auc"]["user_days"] == 1  # only (1, a) has both
    assert s["per_day"]["online"]["ndcg@10"] == pytest.approx([0.3, 0.6])
    per_day = {"day": [10, 11, 12, 13, 14, 15], "ndcg": [0.4, 0.2, 0.2, 0.3, 0.37, 0.4]}
    r = recovery(per_day, drift_day=12, first_day=10, metric="ndcg", within=3)
    assert r["pre_drift"] == pytest.approx(0.3) and r["trough"] == pytest.approx(0.2)
    assert r["days_to_recover"] == 1 and r["recovered_within_3_days"]  # day 13: 0.3 ≥ 0.27
    r = recovery({"day": [10, 11, 12, 13], "ndcg": [0.4, 0.2, 0.2, 0.2]}, 11, 10, "ndcg")
    assert r["days_to_recover"] is None and not r["recovered_within_3_days"]


def test_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="like_column and like_threshold go together"):
        ReplayConfig(like_column="rating")
    with pytest.raises(ConfigError, match="fit_fraction must be in"):
        ReplayConfig(fit_fraction=1.0)
    bad = tmp_path / "r.yaml"
    bad.write_text("replay: {k: 10, like_colum: rating}\n")
    with pytest.raises(ConfigError, match="unknown key 'like_colum'"):
        load_replay_file(bad)
    ok = tmp_path / "ok.yaml"
    (tmp_path / "f.yaml").write_text("recall:\n  channels: [{name: hot, n: 20}]\n")
    ok.write_text("replay: {click_column: click, like_column: like, like_threshold: 1}\nfunnel: f.yaml\n"
                  "dataset: {n_users: 50}\n")
    cfg, funnel, ds = load_replay_file(ok)
    assert cfg.click_column == "click" and cfg.like_threshold == 1 and ds == {"n_users": 50}
    assert [c.name for c in funnel.recall.channels] == ["hot"]


# ------------------------------------------------------------------ the planted world
def planted_world(extra: tuple = (), n_items: int = N_CLUSTERS * PER_CLUSTER) -> Dataset:
    """36 users, 6 clusters × 5 items, 8 days. Days 0–3 (fit): each user consumes the 5 items of
    a home cluster (itemCF learns the clusters; the static funnel's triggers have no unseen
    neighbour left). Days 4–7 (replay): on day d a user consumes the 3 items left of the cluster
    they started on day d − 1 and 2 items of a new cluster c(u, d) — so the next day's items are
    the CF neighbours of today's. A rating of 5 on even items, 2 on odd ones. (With fresh history
    as triggers, days 5–7 reach NDCG@3 ≈ 0.8 against ≈ 0.15 static.)"""
    rows = []
    cluster = lambda c: [c * PER_CLUSTER + j for j in range(PER_CLUSTER)]  # noqa: E731
    for u in range(N_USERS):
        home = u % N_CLUSTERS
        for j, i in enumerate(cluster(home)):
            rows.append((u, i, BASE + (u % 4) * DAY + 600 + 60 * j))
        prev = None
        for d in range(4, 8):
            c = (home + d - 3) % N_CLUSTERS
            t = BASE + d * DAY + 3600 + 60 * u
            todo = [] if prev is None else cluster(prev)[2:]
            todo += cluster(c)[:2]
            rows += [(u, i, t + 10 * j) for j, i in enumerate(todo)]
            prev = c
    rows += list(extra)
    inter = pl.DataFrame(rows, schema={"user_id": pl.Int64, "item_id": pl.Int64, "timestamp": pl.Int64}, orient="row")
    inter = inter.with_columns(pl.when(pl.col("item_id") % 2 == 0).then(5.0).otherwise(2.0).alias("rating"))
    inter = inter.sort("timestamp")
    schema = Schema(interactions={"user_id": "categorical", "item_id": "categorical", "timestamp": "time",
                                  "rating": "label"}, items={"item_id": "categorical"})
    items = pl.DataFrame({"item_id": np.arange(n_items)})
    return Dataset.build("planted", inter, schema, items=items)


CFG = ReplayConfig(k=3, auc_k=10, label_fraction=0.0, like_column="rating", like_threshold=4.0,
                   bootstrap_resamples=200)
FUNNEL = FunnelConfig.from_dict({"recall": {"channels": [{"name": "itemcf", "n": 20}, {"name": "hot", "n": 20}],
                                            "merge": {"total": 30, "priority": ["itemcf", "hot"]}}, "k": 3})


@pytest.fixture(scope="module")
def planted():
    ds = planted_world()
    return ds, fit_for_replay(ds, FUNNEL, CFG)


def test_cut_and_fit_window(planted):
    ds, fitted = planted
    assert cut_time(interactions_of(ds, CFG), CFG) == BASE + 4 * DAY == fitted.cut_time
    assert fitted.fit_rows.height == N_USERS * PER_CLUSTER and fitted.fit_rows["timestamp"].max() < BASE + 4 * DAY
    assert sorted(fitted.replay_rows["day"].unique().to_list()) == [BASE // DAY + d for d in range(4, 8)]
    assert fitted.funnel.ranker_ is None  # label_fraction 0: no ranker
    short = fit_for_replay(ds, FUNNEL, ReplayConfig(**{**CFG.__dict__, "days": 2}))
    assert short.replay_rows["day"].n_unique() == 2
    with pytest.raises(ConfigError, match="column 'clicked' is not in the interactions table"):
        interactions_of(ds, ReplayConfig(click_column="clicked"))


def test_static_protocol_through_a_real_service(planted):
    _, fitted = planted
    svc = RecommenderService(fitted.funnel)
    try:
        rec = replay(fitted, "static", CFG, client=ServiceClient(svc))
        log = svc.events.read()
    finally:
        svc.close()
    # every user is active on each of the 4 replayed days, and every day brings new items
    assert rec.height == N_USERS * 4 and rec["day"].unique().sort().to_list() == [4, 5, 6, 7]
    assert (rec["n_relevant"] == np.where(rec["day"].to_numpy() == 4, 2, 5)).all()
    assert set(rec["model_version"].to_list()) == {"initial"}  # static: the fitted funnel throughout
    # static: impressions only, k per user-day, at the start of the day
    assert set(log["type"].to_list()) == {"impression"}
    assert log.height == N_USERS * 4 * CFG.k
    assert (log["ts"].to_numpy() % DAY == 0).all()
    # the exposure filter: a user is never shown the same item twice
    assert log.group_by("user_id", "item_id").len()["len"].max() == 1


def _static_replay_answers(fitted, cfg):
    """The static replay's records and every answer it was served: [(user, time, answer)]."""
    answers = []

    class Recording(ServiceClient):
        def recommend(self, user_id, k, time, exclude):
            ans = super().recommend(user_id, k, time, exclude)
            answers.append((user_id, time, ans))
            return ans

    svc = RecommenderService(fitted.funnel)
    try:
        return replay(fitted, "static", cfg, client=Recording(svc)), answers
    finally:
        svc.close()


def test_the_label_slice_is_excluded_and_the_auc_is_over_the_unseen_items(planted):
    """With a ranker (label_fraction > 0) the channels never see the label slice of the fit
    rows: the replay excludes it itself, so no answer shows what the user consumed then. Each
    user-day's AUC is recomputed here from the served answer (sklearn over the unseen items,
    the unreturned ones at one score below every returned one)."""
    from sklearn.metrics import roc_auc_score

    ds, _ = planted
    cfg = ReplayConfig(**{**CFG.__dict__, "label_fraction": 0.3})
    fitted = fit_for_replay(ds, FUNNEL, cfg)
    assert fitted.funnel.ranker_ is not None and fitted.label_rows.height > 0
    label = fitted.unexcluded()
    rec, answers = _static_replay_answers(fitted, cfg)
    assert any(label.values())
    for u, _, ans in answers:
        assert not set(ans.item_ids) & set(label.get(u, []))
    # AUC of the first replayed day's user-days, by hand
    fit_items = fitted.fit_rows.group_by("user_id").agg(pl.col("item_id"))
    before = {u: set(v) for u, v in fit_items.iter_rows()}
    day0 = fitted.replay_rows["day"].min()
    rows = fitted.replay_rows.filter(pl.col("day") == day0)
    n_items = ds.n_items
    checked = 0
    for u, _t, ans in answers[: len(set(rows["user_id"].to_list()))]:
        R = set(rows.filter(pl.col("user_id") == u)["item_id"].to_list()) - before.get(u, set())
        unseen = [i for i in range(n_items) if i not in before.get(u, set())]
        score = {i: -1e9 for i in unseen}
        for i, sc in zip(ans.item_ids, ans.scores):
            score[i] = sc
        y = np.array([i in R for i in unseen])
        got = rec.filter((pl.col("user_id") == str(u)) & (pl.col("day") == day0 - fitted.first_day))["auc"][0]
        assert got == pytest.approx(roc_auc_score(y, [score[i] for i in unseen]), abs=1e-9)
        checked += 1
    assert checked > 10


def test_an_item_first_consumed_later_is_not_a_negative_before_then():
    """Item 30 is first consumed on day 6: on days 4–5 no user could have had it, so it is not
    in their AUC's population. Item 31 is never consumed, but it is in the catalogue all along:
    a negative every day. Recomputed by hand (sklearn) from the served answers of day 4."""
    from sklearn.metrics import roc_auc_score

    n = N_CLUSTERS * PER_CLUSTER
    ds = planted_world(extra=((0, n, BASE + 6 * DAY + 5000),), n_items=n + 2)
    fitted = fit_for_replay(ds, FUNNEL, CFG)
    rec, answers = _static_replay_answers(fitted, CFG)
    before = {u: set(v) for u, v in fitted.fit_rows.group_by("user_id").agg(pl.col("item_id")).iter_rows()}
    day0 = fitted.replay_rows["day"].min()
    rows = fitted.replay_rows.filter(pl.col("day") == day0)
    checked = 0
    for u, _t, ans in answers[: len(set(rows["user_id"].to_list()))]:
        assert n not in ans.item_ids  # nobody knows it yet
        R = set(rows.filter(pl.col("user_id") == u)["item_id"].to_list()) - before[u]
        unseen = [i for i in range(n + 2) if i not in before[u] and i != n]  # 31 in, 30 out
        score = {i: -1e9 for i in unseen} | dict(zip(ans.item_ids, ans.scores))
        y = np.array([i in R for i in unseen])
        got = rec.filter((pl.col("user_id") == str(u)) & (pl.col("day") == day0 - fitted.first_day))["auc"][0]
        assert got == pytest.approx(roc_auc_score(y, [score[i] for i in unseen]), abs=1e-9)
        checked += 1
    assert checked == N_USERS

    # a client that does return the future item (last, lowest): then it is in that day's population
    from funnelrec.online.replay import Answer

    class Returning(ServiceClient):
        def recommend(self, user_id, k, time, exclude):
            ans = super().recommend(user_id, k, time, exclude)
            return Answer(ans.request_id, ans.item_ids + [n], np.r_[ans.scores, ans.scores.min() - 1], ans.model_version)

    svc = RecommenderService(fitted.funnel)
    try:
        with_future = replay(fitted, "static", CFG, client=Returning(svc))
    finally:
        svc.close()
    u0 = answers[0][0]
    R = set(rows.filter(pl.col("user_id") == u0)["item_id"].to_list()) - before[u0]
    unseen = [i for i in range(n + 2) if i not in before[u0]]  # 30 returned: in the population
    score = {i: -1e9 for i in unseen} | dict(zip(answers[0][2].item_ids, answers[0][2].scores))
    score[n] = float(answers[0][2].scores.min()) - 1
    got = with_future.filter((pl.col("user_id") == str(u0)) & (pl.col("day") == day0 - fitted.first_day))["auc"][0]
    assert got == pytest.approx(roc_auc_score(np.array([i in R for i in unseen]), [score[i] for i in unseen]), abs=1e-9)


def test_realtime_sends_clicks_and_likes_from_the_config(planted):
    _, fitted = planted
    svc = RecommenderService(fitted.funnel)
    try:
        replay(fitted, "realtime", CFG, client=ServiceClient(svc))
        log = svc.events.read()
    finally:
        svc.close()
    n = fitted.replay_rows.height
    counts = dict(log.group_by("type").len().iter_rows())
    assert counts["click"] == n
    assert counts["like"] == int((fitted.replay_rows["rating"] >= 4.0).sum()) == n - int(
        (fitted.replay_rows["item_id"] % 2).sum())
    clicks = log.filter(pl.col("type") == "click")
    assert sorted(clicks["ts"].to_list()) == sorted(fitted.replay_rows["timestamp"].to_list())
    # a click on a shown item carries that request's id; the others are organic (no request id),
    # as the learner's contract marks positives no impression led to
    shown = {(u, r, i) for u, r, i in log.filter(pl.col("type") == "impression")
             .select("user_id", "request_id", "item_id").iter_rows()}
    on_shown = [(u, r, i) in shown for u, r, i in clicks.select("user_id", "request_id", "item_id").iter_rows()]
    organic = clicks["request_id"].is_null().to_list()
    assert any(on_shown) and any(organic)
    assert [not o for o in organic] == on_shown


def test_http_replay_equals_in_process(planted, serve):
    from funnelrec.serving.app import create_app

    _, fitted = planted
    local = replay(fitted, "static", CFG)
    svc = RecommenderService(fitted.funnel)
    with serve(create_app(svc)) as url:
        client = HttpReplayClient(url)
        try:
            remote = replay(fitted, "static", CFG, client=client)
        finally:
            client.close()
        with pytest.raises(ConfigError, match="online runs in-process only"):
            replay(fitted, "online", CFG, client=HttpReplayClient(url))
    svc.close()
    assert remote.equals(local)
    with pytest.raises(DataError, match="replay over HTTP: /recommend"):
        HttpReplayClient("http://127.0.0.1:9").recommend(1, 3, BASE, [])


@pytest.mark.skipif(importlib.util.find_spec("funnelrec.online.state") is None,
                    reason="real-time user state (online/state.py) has not landed: realtime = static until then")
def test_realtime_beats_static_when_tomorrow_is_todays_neighbours(planted):
    _, fitted = planted
    s = summarize(pl.concat([replay(fitted, m, CFG) for m in ("static", "realtime")]), CFG)
    static, realtime = s["modes"]["static"]["ndcg@3"], s["modes"]["realtime"]["ndcg@3"]
    # days 5–7: the 3 items left of yesterday's cluster are itemCF neighbours of yesterday's 2
    # clicks; the static funnel only knows the home cluster
    late = {m: np.mean([v for d, v in zip(s["per_day"][m]["day"], s["per_day"][m]["ndcg@3"]) if d >= 5])
            for m in ("static", "realtime")}
    assert late["realtime"] > late["static"] + 0.3, late
    assert realtime > static
    lo, _ = s["differences"]["realtime-static"]["ndcg@3"]["ci95"]
    assert lo > 0


def test_cli_replay_json_and_errors(tmp_path):
    def cli(*args):
        return subprocess.run([sys.executable, "-m", "funnelrec.cli", "replay", *args], capture_output=True,
                              text=True, timeout=300)

    p = cli("--mode", "nope")
    assert p.returncode == 2 and p.stderr.strip().count("\n") == 0 and "--mode must be one of" in p.stderr
    p = cli("--dataset", "nope")
    assert p.returncode == 2 and "unknown dataset 'nope'" in p.stderr
    cfg = tmp_path / "r.yaml"
    cfg.write_text("replay: {click_column: click, like_column: like, like_threshold: 1, k: 5, auc_k: 20, "
                   "label_fraction: 0, bootstrap_resamples: 200}\n"
                   "funnel: {recall: {channels: [{name: itemcf, n: 30}, {name: hot, n: 30}], merge: {total: 40}}}\n"
                   "dataset: {n_users: 60, n_items: 40, n_interactions: 3000, days: 8, seed: 2}\n")
    p = cli("--dataset", "synthetic", "--mode", "all", "--days", "2", "--config", str(cfg), "--json",
            "--save", str(tmp_path / "art"))
    assert p.returncode == 0, p.stderr
    from funnelrec.pipeline.funnel import Funnel

    saved = Funnel.load(tmp_path / "art")  # the funnel fitted before the cut, for `serve --artifact`
    assert saved.ranker_ is None and [c.name for c in saved.config.recall.channels] == ["itemcf", "hot"]
    out = json.loads(p.stdout)
    assert set(out["modes"]) | set(out["pending"]) == {"static", "realtime", "online"}
    assert len(out["per_day"]["static"]["day"]) == 2  # --days 2
    assert out["modes"]["static"]["user_days"] > 0 and 0 <= out["modes"]["static"]["ndcg@5"] <= 1


@pytest.mark.skipif(not hasattr(importlib.import_module("funnelrec.online.learner"), "OnlineLearner"),
                    reason="the online learner (online/learner.py:OnlineLearner) has not landed")
def test_online_learns_at_the_end_of_each_day_and_the_next_day_is_served_by_it(planted, tmp_path):
    _, fitted = planted
    log: list = []
    rec = replay(fitted, "online", CFG, workdir=tmp_path, learn_log=log)
    assert rec.height == N_USERS * 4  # the same user-days as the other modes
    by_day = dict(rec.group_by("day").agg(pl.col("model_version").unique()).iter_rows())
    assert all(len(v) == 1 for v in by_day.values())  # one version a day: reloads happen between days
    names = [by_day[d][0].split("@")[0] for d in (4, 5, 6, 7)]
    assert names == ["v000001", "v000002", "v000003", "v000004"]  # the fit, then one version per update
    assert len(log) == 4 and all(r["published"] for r in log)
    assert {"channels/itemcf", "channels/hot"} <= set(log[0]["parts"])  # co-occurrence / counter updates
    # day d's step read the day's events: impressions (k per user) + clicks + likes
    day4 = fitted.replay_rows.filter(pl.col("day") == BASE // DAY + 4)
    assert log[0]["events"] == N_USERS * CFG.k + day4.height + int((day4["rating"] >= 4).sum())
    assert (tmp_path / "served" / "CURRENT").read_text().strip() == "v000005"  # the last day's step too


# ------------------------------------------------------------------ a team's own log, replayed
def test_a_funnel_config_is_a_replay_config_with_the_defaults_and_its_own_data(tmp_path):
    """`funnelrec replay --config myshop/funnel.yaml` replays the team's files through that funnel
    (it used to refuse the data: key, and without a replay file it replayed MovieLens)."""
    from typer.testing import CliRunner

    from funnelrec.cli import app
    from funnelrec.online.replay import replay_funnel_path
    from shop_world import init_shop

    paths, funnel_yaml = init_shop(tmp_path, "shop", n_events=3000, seed=5, n_users=120, n_items=80)
    runner = CliRunner()
    cfg, funnel, ds_kwargs = load_replay_file(funnel_yaml)
    assert cfg == ReplayConfig() and ds_kwargs == {} and funnel.labels.event_column == "event_type"
    assert replay_funnel_path(funnel_yaml) == funnel_yaml
    wrapper = tmp_path / "replay.yaml"
    wrapper.write_text("replay: {days: 2}\nfunnel: shop/funnel.yaml\n")
    assert replay_funnel_path(wrapper) == tmp_path / "shop" / "funnel.yaml"
    r = runner.invoke(app, ["replay", "--config", str(funnel_yaml), "--mode", "static", "--days", "2", "--json"])
    assert r.exit_code == 0, (r.output, r.exception)
    out = json.loads(r.stdout.strip().splitlines()[-1])
    ts = pl.read_parquet(paths["interactions"])["ts_ms"] // 1000  # the shop's clock (ms), not MovieLens's
    assert out["dataset"] != "movielens-100k" and out["modes"]["static"]["user_days"] > 0
    assert ts.min() < out["cut_time"] < ts.max()  # its cut falls inside the shop's time line
    r = runner.invoke(app, ["replay", "--config", str(tmp_path / "nope.yaml")])
    assert isinstance(r.exception, ConfigError) and "nope.yaml: config file not found" in str(r.exception)


def test_the_replay_learner_starts_from_the_replay_settings_and_takes_learn_keys_on_top(tmp_path):
    from funnelrec.online.replay import REPLAY_LEARN, _learner
    from funnelrec.pipeline.eventlog import EventLog

    with EventLog(tmp_path / "events.db"):
        pass
    got = {}

    class Capture:
        def __init__(self, served, source, config, updaters):
            got.update(config=config, updaters=updaters)

    funnel = type("F", (), {"ranker_": object()})()
    _learner(Capture, tmp_path, tmp_path / "events.db", {"ranker": {"lr": 0.01}, "guardrail_margin": 0.02},
             funnel, 86_400)
    (up,) = got["updaters"]
    assert up.config.organic == REPLAY_LEARN["ranker"]["organic"] == "candidates"
    assert up.config.ftrl_alpha == 0.05 and up.config.lr == 0.01  # the default kept, the given key on top
    assert up.guardrail.group == "user" and up.guardrail.margin == 0.02
    _learner(Capture, tmp_path, tmp_path / "events.db", {"ranker": {"organic": "drop"}}, funnel, 86_400)
    assert got["updaters"][0].config.organic == "drop"
    # base {} (the closed loop's): the live learner's defaults — impressions, FTRL α 0.2, a pooled AUC
    _learner(Capture, tmp_path, tmp_path / "events.db", {"ranker": {"lr": 0.01}}, funnel, 86_400, base={})
    (up,) = got["updaters"]
    assert (up.config.organic, up.config.ftrl_alpha, up.config.lr, up.guardrail.group) == ("drop", 0.2, 0.01, "none")


def test_replay_file_mistakes_are_named_as_replay_file_mistakes(tmp_path):
    from funnelrec.online.replay import REPLAY_LEARN, merged_learn

    f = tmp_path / "r.yaml"
    f.write_text("learn: {ranker: {lr: 0.1}}\n")  # learn: belongs under replay:
    with pytest.raises(ConfigError, match="unknown key 'learn' in replay config"):
        load_replay_file(f)
    with pytest.raises(ConfigError, match="learn.ranker: expected a mapping"):
        merged_learn(REPLAY_LEARN, {"ranker": None})
    # a wrong learn: key or value is named when the file loads, before a fit of minutes
    for body, named in (("{rankr: {}}", "unknown key 'rankr' in replay config.learn"),
                        ("{ranker: {organic: sometimes}}", "learn.ranker.organic must be"),
                        ("{guardrail: {colour: red}}", "learn.guardrail"),
                        ("{label_window_s: -5}", "label_window_s")):
        f.write_text(f"replay: {{learn: {body}}}\n")
        with pytest.raises(ConfigError, match=named):
            load_replay_file(f)


def test_a_like_task_read_from_the_rating_is_replayed_as_likes(ml100k):
    """configs/funnel/ml100k_mmoe.yaml fits its like task on rating ≥ rank.like_threshold (no like
    column): replayed without a like_column, its online mode sent no like and trained the like
    head on zeros. The replay now sends those likes; a like_column of its own, a funnel without
    a like task, or data without a rating leave the config as it was."""
    import dataclasses as dc

    from funnelrec.online.replay import ReplayConfig, replay_likes
    from funnelrec.pipeline.config import FunnelConfig

    configs = Path(__file__).resolve().parents[2] / "configs" / "funnel"
    mmoe = FunnelConfig.load(configs / "ml100k_mmoe.yaml")
    inter = ml100k.interactions
    got = replay_likes(ReplayConfig(), mmoe, inter)
    assert (got.like_column, got.like_threshold) == ("rating", 4.0)
    five = dc.replace(mmoe, rank=dc.replace(mmoe.rank, like_threshold=5.0))
    assert replay_likes(ReplayConfig(), five, inter).like_threshold == 5.0
    own = ReplayConfig(like_column="rating", like_threshold=3.0)
    assert replay_likes(own, mmoe, inter) == own
    plain = FunnelConfig.load(configs / "ml100k.yaml")
    assert "like" not in plain.rank.tasks and replay_likes(ReplayConfig(), plain, inter) == ReplayConfig()
    assert replay_likes(ReplayConfig(), mmoe, inter.drop("rating")) == ReplayConfig()
    # like read from a column of its own, or mapped from an event type (sent as that type): unchanged
    own_col = dc.replace(mmoe, rank=dc.replace(mmoe.rank, task_columns={"like": "liked"}))
    assert replay_likes(ReplayConfig(), own_col, inter) == ReplayConfig()
    from funnelrec.data.source import LabelRule, LabelSpec

    mapped = dc.replace(mmoe, labels=LabelSpec("event_type", {"heart": LabelRule(task="like")}))
    assert replay_likes(ReplayConfig(), mapped, inter) == ReplayConfig()
