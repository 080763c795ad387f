"""The feature service (online/features.py): online counters equal the offline definition on the
same events (streamed out of order into memory / SQLite / Redis, read back from a real EventLog),
each window edge by hand, and the counts against plain numpy filters."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from funnelrec.core.errors import ConfigError, DataError
from funnelrec.online.features import (
    FeatureConfig,
    FeatureService,
    build_feature_service,
    interactions_as_events,
    offline_item_features,
    offline_item_features_at,
    offline_user_features,
)
from funnelrec.pipeline.eventlog import EventLog, FeedbackEvent

T0 = 1_700_000_123  # not aligned to any bucket
DAY = 86400
TYPES = ["impression"] * 6 + ["click"] * 2 + ["like", "purchase", "watch_time", "cart"]


def _items() -> pl.DataFrame:
    rng = np.random.default_rng(1)
    cats = ["a", "b", "c", "d", "e", "f"]
    ids = [str(i) for i in range(40)] + ["x-1"]  # one string id (hashed item key)
    return pl.DataFrame({"item_id": ids,
                         "genre": [sorted(set(rng.choice(cats, size=rng.integers(1, 3)).tolist())) for _ in ids],
                         "studio": [f"s{i % 5}" for i in range(len(ids))]})


def _users() -> pl.DataFrame:
    return pl.DataFrame({"user_id": [f"u{i}" for i in range(25)], "age": list(range(20, 45)),
                         "gender": ["F", "M"] * 12 + ["F"]})


def _events(n: int = 3000, seed: int = 0) -> list[tuple[FeedbackEvent, int]]:
    """n events over 9 days, each with an arrival time ts + a delay of 0–180 s (out of order);
    a few users outside the users table, a few items outside the items table."""
    rng = np.random.default_rng(seed)
    ts = T0 + np.sort(rng.integers(0, 9 * DAY, n))
    # bursts at exact bucket edges, so that the boundaries are exercised
    ts[::50] = (ts[::50] // 3600) * 3600
    users = [f"u{i}" for i in rng.integers(0, 30, n)]
    items = [str(i) if i < 41 else "x-1" for i in rng.integers(0, 45, n)]
    types = rng.choice(TYPES, n)
    out = []
    for u, i, t, s in zip(users, items, types, ts.tolist()):
        value = float(rng.choice([0.0, 30.0])) if t == "watch_time" else 1.0
        out.append((FeedbackEvent(None, u, i, str(t), value, int(s)), int(s + rng.integers(0, 181))))
    return out


CONFIG = FeatureConfig(count_types=("impression", "click", "like", "purchase"), ctr_prior=0.04, ctr_strength=25.0,
                       category_column="genre", recent_n=3)


BACKENDS = ["memory", "sqlite", "redis"]


def test_every_registered_feature_backend_is_tested_here():
    from funnelrec.online.features import FEATURE_BACKENDS

    assert sorted(FEATURE_BACKENDS.names()) == sorted(BACKENDS)  # a new one needs its case in `backend`


@pytest.fixture(params=BACKENDS)
def backend(request, tmp_path):
    """(name, kwargs) of a state backend; redis on the real server of the `redis_url` fixture,
    under a prefix of its own per test."""
    if request.param == "redis":
        url = request.getfixturevalue("redis_url")
        return "redis", {"redis_url": url, "prefix": f"t{request.node.name}:"}
    return request.param, {"state_dir": tmp_path} if request.param == "sqlite" else {}


def test_streamed_online_features_equal_offline_ones_read_from_the_log(backend, tmp_path):
    """The issue's test: events arrive out of order (up to 3 minutes late) in batches; at each
    query time the service's answers equal the offline definition over the EventLog as training
    would read it then, for every item, every user and every window."""
    name, kw = backend
    items, users = _items(), _users()
    fs = build_feature_service(name, CONFIG, items=items, users=users, **kw)
    log = EventLog(tmp_path / "events.db")
    stream = sorted(_events(), key=lambda p: p[1])
    rng = np.random.default_rng(3)
    queries = sorted(int(q) for q in T0 + rng.integers(DAY // 2, 9 * DAY + 600, 6))
    item_ids = items["item_id"].to_list() + ["40", "43"]  # one only in events, one nowhere
    user_ids = [f"u{i}" for i in range(30)]
    pos, checked = 0, 0
    for q in queries:
        while pos < len(stream) and stream[pos][1] <= q:
            size = int(rng.integers(1, 40))
            batch = [e for e, arrival in stream[pos:pos + size] if arrival <= q]
            pos += len(batch)
            log.append(batch)
            fs.update(batch)
        table = log.read()
        assert table["ts"].max() <= q  # events never arrive before they happen
        online = fs.item_features(item_ids, q)
        assert_frame_equal(online, offline_item_features(table, item_ids, q, CONFIG))
        assert online["click_7d"].sum() > 0 and online["impression_1h"].sum() > 0  # nothing vacuous
        for u in user_ids:
            got = fs.user_features(u, q).to_dict()
            assert got == offline_user_features(table, u, q, CONFIG, items, users).to_dict()
            checked += bool(got["recent_categories"])
    assert pos > 2000 and checked > 100
    fs.close()
    log.close()


def _numpy_counts(evs: list[FeedbackEvent], item: str, typ: str, t: int, span: int, bucket: int) -> int:
    """The window's count straight from the definition: lo ≤ ts < hi over plain arrays."""
    ts = np.array([e.ts for e in evs if e.item_id == item and e.type == typ], np.int64)
    hi = t - t % bucket
    return int(((ts >= hi - span) & (ts < hi)).sum())


def test_counts_at_past_times_match_plain_numpy_filters(backend):
    """Everything fed at once in a shuffled order, then queried at past times (lateness_s covers
    them): every count equals a numpy filter of the raw events, the CTR its formula."""
    name, kw = backend
    cfg = FeatureConfig(count_types=("impression", "click", "like"), ctr_prior=0.1, ctr_strength=10.0,
                        lateness_s=30 * DAY)
    fs = build_feature_service(name, cfg, **kw)
    evs = [e for e, _ in _events(2500, seed=5)]
    order = np.random.default_rng(0).permutation(len(evs))
    fs.update([evs[i] for i in order])
    item_ids = [str(i) for i in range(41)] + ["x-1"]
    for q in (T0 + 2 * DAY + 7, T0 + 5 * DAY - 3600 * 3, T0 + 9 * DAY + 1):
        got = fs.item_features(item_ids, q)
        for w, span, bucket in cfg.windows:
            for typ in cfg.count_types:
                want = [_numpy_counts(evs, i, typ, q, span, bucket) for i in item_ids]
                assert got[f"{typ}_{w}"].to_list() == want, (q, w, typ)
            clicks = np.array(got[f"click_{w}"].to_list(), float)
            imps = np.array(got[f"impression_{w}"].to_list(), float)
            np.testing.assert_allclose(got[f"ctr_{w}"].to_numpy(), (clicks + 1.0) / (imps + 10.0), rtol=1e-15)
        assert got["impression_7d"].sum() > 100
    fs.close()


def test_point_in_time_features_of_samples_equal_the_as_of_definition():
    """`offline_item_features_at` (one searchsorted pass for all samples, each as of its own ts)
    equals `offline_item_features` row by row — samples at bucket edges and items without events
    included."""
    evs = [e for e, _ in _events(2000, seed=9)]
    table = pl.DataFrame([e.__dict__ for e in evs])
    rng = np.random.default_rng(4)
    items = [str(i) for i in rng.integers(0, 42, 60)] + ["x-1", "never", "40"]
    ts = (T0 + rng.integers(0, 10 * DAY, len(items))).tolist()
    ts[:10] = [t - t % 3600 for t in ts[:10]]  # exactly where the 1d window moves
    ts[10:15] = [t - t % 21600 - 1 for t in ts[10:15]]  # one second before the 7d window moves
    samples = pl.DataFrame({"item_id": items, "ts": ts})
    got = offline_item_features_at(table, samples, CONFIG)
    assert got["item_id"].to_list() == items and got["ts"].to_list() == ts
    want = pl.concat([offline_item_features(table, [i], t, CONFIG) for i, t in zip(items, ts)])
    assert_frame_equal(got.drop("ts"), want)
    assert got["impression_7d"].sum() > 100 and got["click_1h"].sum() > 0
    with pytest.raises(DataError, match="samples: missing column 'ts'"):
        offline_item_features_at(table, samples.drop("ts"), CONFIG)


def test_interleaved_late_events_and_queries_in_any_time_order(backend):
    """Updates (late by up to a day) interleaved with queries that go forward by less than a
    bucket, by several, by more than a window, and backwards: every answer equals the offline
    definition over the events fed so far (Redis moves, recomputes or bypasses its rolling totals
    on these paths; lateness_s covers the past queries)."""
    name, kw = backend
    cfg = FeatureConfig(windows=(("1h", 3600, 600), ("6h", 6 * 3600, 3600)), count_types=("impression", "click"),
                        lateness_s=30 * DAY)
    fs = build_feature_service(name, cfg, **kw)
    rng = np.random.default_rng(11)
    fed: list[FeedbackEvent] = []
    clock = T0
    item_ids = [str(i) for i in range(6)]
    nonzero = 0
    for step in range(120):
        clock += int(rng.choice([30, 300, 900, 3 * 3600, 8 * 3600]))
        batch = [_ev(str(rng.integers(0, 6)), str(rng.choice(["impression", "impression", "click"])),
                     int(clock - rng.choice([0, 10, 700, 4000, DAY])), user=f"u{rng.integers(0, 3)}")
                 for _ in range(int(rng.integers(1, 6)))]
        fs.update(batch)
        fed += batch
        q = int(clock - rng.choice([0, 0, 0, 1, 650, 5000, 2 * DAY]))  # mostly now, sometimes the past
        table = pl.DataFrame([e.__dict__ for e in fed])
        got = fs.item_features(item_ids, q)
        assert_frame_equal(got, offline_item_features(table, item_ids, q, cfg))
        nonzero += int(got["impression_1h"].sum() > 0) + int(got["click_6h"].sum() > 0)
        if step % 10 == 0:
            assert fs.user_features("u1", q).counts == offline_user_features(table, "u1", q, cfg).counts
    assert nonzero > 60  # answers were mostly not all zero
    fs.close()


def test_a_dataset_without_impressions_enters_as_clicks(world):
    """The training log of a dataset (the tiny world's interactions): each row one click at its
    timestamp; a sample's click_7d is the item's interactions in the 7 d before its bucket."""
    inter = world.dataset.interactions
    ev = interactions_as_events(inter)
    assert ev.columns == ["user_id", "item_id", "type", "value", "ts"] and ev.height == inter.height
    cfg = FeatureConfig(count_types=("impression", "click"))
    s = inter.head(40).select(pl.col("item_id"), pl.col("timestamp").alias("ts"))
    got = offline_item_features_at(ev, s, cfg)
    ts, items = inter["timestamp"].to_numpy(), inter["item_id"].to_numpy()
    for row in got.iter_rows(named=True):
        hi = row["ts"] - row["ts"] % (6 * 3600)
        want = int(((items == int(row["item_id"])) & (ts >= hi - 7 * DAY) & (ts < hi)).sum())
        assert row["click_7d"] == want and row["impression_7d"] == 0
        assert row["ctr_7d"] == pytest.approx((want + 20 * 0.05) / 20)  # no impressions: prior + clicks / α
    assert got["click_7d"].sum() > 0
    with pytest.raises(ConfigError, match="event_type must be one of"):
        interactions_as_events(inter, "rating")


def _ev(item: str, typ: str, ts: int, user: str = "u1", value: float = 1.0) -> FeedbackEvent:
    return FeedbackEvent(None, user, item, typ, value, ts)


def test_window_edges_by_hand(backend):
    """Window 1h in 10-minute buckets: as of t it covers [⌊t/600⌋·600 − 3600, ⌊t/600⌋·600). Clicks:
    1 at 3599, 2 at 3600 (the lower edge), 4 at 7199, 8 at 7200 (the upper edge)."""
    name, kw = backend
    cfg = FeatureConfig(windows=(("1h", 3600, 600),), count_types=("impression", "click"),
                        ctr_prior=0.1, ctr_strength=10.0, lateness_s=DAY)
    fs = build_feature_service(name, cfg, **kw)
    evs = [_ev("9", "click", 3599)] + [_ev("9", "click", 3600)] * 2 + [_ev("9", "click", 7199)] * 4 \
        + [_ev("9", "click", 7200)] * 8 + [_ev("9", "impression", 7000)] * 2
    fs.update(evs)
    table = pl.DataFrame([e.__dict__ for e in evs])
    # t → (clicks, impressions): 7200 opens a bucket, so it and 7217 both read [3600, 7200)
    for t, clicks, imps in ((7199, 1 + 2, 0), (7200, 2 + 4, 2), (7217, 2 + 4, 2), (7800, 4 + 8, 2),
                            (10799, 4 + 8, 2), (10800, 8, 0), (11400, 0, 0)):
        for got in (fs.item_features(["9"], t), offline_item_features(table, ["9"], t, cfg)):
            row = got.row(0, named=True)
            assert (row["click_1h"], row["impression_1h"]) == (clicks, imps), t
            assert row["ctr_1h"] == pytest.approx((clicks + 1.0) / (imps + 10.0), rel=1e-15)
        assert fs.user_features("u1", t).counts == {"impression_1h": imps, "click_1h": clicks}
    assert fs.item_features(["9"], 7200)["ctr_1h"].item() == pytest.approx((6 + 1) / (2 + 10))  # 7/12
    assert fs.item_features(["nope"], 7200).row(0) == ("nope", 0, 0, 0.1)  # no events: the prior
    fs.close()


def test_recent_categories_by_hand(backend):
    """Consumptions only (an impression, a 0-second watch and a follow do not count); recency is
    the latest consumption of a value; ties: the larger value first; the last recent_n kept."""
    name, kw = backend
    items = pl.DataFrame({"item_id": [1, 2, 3, 4, 5], "genre": [["x"], ["y", "z"], ["w"], ["v"], None]})
    cfg = FeatureConfig(category_column="genre", recent_n=3)
    fs = build_feature_service(name, cfg, items=items, users=pl.DataFrame({"user_id": ["u1"], "age": [33]}), **kw)
    evs = [_ev("1", "click", 10), _ev("2", "like", 20), _ev("1", "purchase", 30), _ev("3", "impression", 40),
           _ev("4", "watch_time", 45, value=0.0), _ev("4", "follow", 46), _ev("5", "click", 47), _ev("9", "click", 48)]
    fs.update(evs[::-1])  # arrival order does not matter
    uf = fs.user_features("u1", 50)
    assert uf.recent_categories == ["x", "z", "y"]
    assert uf.profile == {"user_id": "u1", "age": 33}
    fs.update([_ev("4", "watch_time", 60, value=12.0), _ev("3", "cart", 55)])
    assert fs.user_features("u1", 60).recent_categories == ["v", "w", "x"]
    table = pl.DataFrame([e.__dict__ for e in evs] + [_ev("4", "watch_time", 60, value=12.0).__dict__,
                                                      _ev("3", "cart", 55).__dict__])
    assert offline_user_features(table, "u1", 60, cfg, items).recent_categories == ["v", "w", "x"]
    assert offline_user_features(table, "u1", 25, cfg, items).recent_categories == ["z", "y", "x"]
    other = fs.user_features("u2", 60)
    assert other.recent_categories == [] and other.profile is None
    fs.close()


def test_category_column_is_a_config_key_with_no_default():
    items = pl.DataFrame({"item_id": [1, 2], "genre": ["a", "b"]})
    fs = FeatureService(FeatureConfig(), items=items)
    fs.update([_ev("1", "click", 10)])
    assert fs.user_features("u1", 20).recent_categories is None  # off unless configured
    with pytest.raises(ConfigError, match=r"^features\.category_column: 'genres' is not an item column.*genre"):
        FeatureService(FeatureConfig(category_column="genres"), items=items)


@pytest.mark.parametrize("kw, key", [
    ({"windows": (("1h", 3600, 700),)}, "windows"), ({"windows": (("a:b", 60, 60),)}, "windows"),
    ({"windows": ()}, "windows"), ({"count_types": ("view",)}, "count_types"), ({"ctr_prior": 1.5}, "ctr_prior"),
    ({"ctr_strength": 0.0}, "ctr_strength"), ({"recent_n": 0}, "recent_n"), ({"lateness_s": -1}, "lateness_s"),
])
def test_bad_config_names_its_key(kw, key):
    with pytest.raises(ConfigError, match=rf"^features\.{key}"):
        FeatureConfig(**kw)


def test_bad_now_and_events_are_data_errors():
    fs = FeatureService()
    with pytest.raises(DataError, match="now must be an int"):
        fs.item_features(["1"], now=1.5)
    with pytest.raises(DataError, match="missing columns"):
        fs.update(pl.DataFrame({"user_id": ["u"], "item_id": ["1"]}))
    bad = pl.DataFrame({"user_id": ["u"], "item_id": ["1"], "type": ["click"], "value": [1.0], "ts": ["noon"]})
    with pytest.raises(DataError, match=r"^event table: column 'ts' \(String\) cannot be read as Int64"):
        fs.update(bad)
    with pytest.raises(DataError, match="column 'item_id' has 1 nulls"):
        offline_item_features(bad.with_columns(ts=pl.lit(5), item_id=pl.lit(None, pl.Utf8)), ["1"], 10)
    with pytest.raises(DataError, match="event ts must be unix seconds ≥ 0, got -5"):
        fs.update(bad.with_columns(ts=pl.lit(-5)))


def test_old_buckets_are_pruned_and_answers_stay_exact(backend):
    """30 days of a busy item with lateness 0: the store keeps at most the bound of live buckets
    (memory: its dict; Redis: HLEN), and the answer at the end still equals the offline one."""
    name, kw = backend
    cfg = FeatureConfig(count_types=("impression", "click"), lateness_s=0)
    fs = build_feature_service(name, cfg, **kw)
    ts = T0 + np.arange(0, 30 * DAY, 1800)
    evs = [_ev("5", "impression" if k % 3 else "click", int(t)) for k, t in enumerate(ts)]
    table = pl.DataFrame([e.__dict__ for e in evs])
    for i in range(0, len(evs), 7):
        fs.update(evs[i:i + 7])
        if i % 70 == 0:  # reads along the way: Redis's rolling totals must survive the pruning
            now = evs[min(i + 6, len(evs) - 1)].ts + 1
            seen = table.head(i + 7)
            assert_frame_equal(fs.item_features(["5"], now), offline_item_features(seen, ["5"], now, cfg))
    stored = len(fs.backend.counts(["i:5"])[0])
    assert stored <= cfg.bucket_bound() + 3 * 2 * 7  # the bound, plus at most one batch past it
    assert stored < 3 * len(evs) / 2  # pruned: 3 windows × all 1440 events' buckets would be far more
    now = int(ts[-1]) + 1
    assert_frame_equal(fs.item_features(["5"], now), offline_item_features(table, ["5"], now, cfg))
    got = fs.item_features(["5"], now).row(0, named=True)
    for w, span, bucket in cfg.windows:
        assert got[f"impression_{w}"] == _numpy_counts(evs, "5", "impression", now, span, bucket) > 0
    fs.close()


def test_redis_counters_are_shared_between_workers_and_expire(redis_url):
    import redis

    cfg = FeatureConfig(count_types=("impression", "click"))
    a = build_feature_service("redis", cfg, redis_url=redis_url, prefix="shared:")
    b = build_feature_service("redis", cfg, redis_url=redis_url, prefix="shared:")
    a.update([_ev("3", "impression", T0), _ev("3", "click", T0 + 1)])
    b.update([_ev("3", "impression", T0 + 2)])
    now = T0 + 2 * DAY
    for fs in (a, b):
        assert fs.item_features(["3"], now).select("impression_7d", "click_7d").row(0) == (2, 1)
    client = redis.Redis.from_url(redis_url)
    assert 0 < client.ttl("shared:features:i:3") <= cfg.max_span() + 6 * 3600 + cfg.lateness_s
    assert client.type("shared:features:i:3") == b"hash"
    a.close()
    b.close()


# ------------------------------------------------------------------ served: RecommenderService + HTTP
@pytest.fixture(scope="module")
def tiny_funnel():
    from funnelrec.pipeline.builder import FunnelBuilder
    from funnelrec.pipeline.config import FunnelConfig
    from tiny_world import make_world

    world = make_world()
    cfg = FunnelConfig.from_dict({"recall": {"channels": [{"name": "hot", "n": 20}], "merge": {"total": 20}},
                                  "rank": {"epochs": 1}})
    return FunnelBuilder(cfg).fit(world.dataset, world.dataset.interactions)


@pytest.mark.parametrize("state", ["sqlite", "redis"])
def test_http_features_follow_feedback(tiny_funnel, serve, tmp_path, request, state):
    """POST /feedback, then GET /features/items/{id} and /features/users/{id}: the counts of the
    accepted events (equal to the offline definition over the service's own event log), recent
    genres, the users-table profile; 404 for ids nowhere, 422 for a bad id or time."""
    import httpx

    from funnelrec.pipeline.service import RecommenderService, ServiceConfig
    from funnelrec.serving.app import create_app

    cfg = FeatureConfig(windows=(("1h", 3600, 300), ("1d", DAY, 3600)), count_types=("impression", "click"),
                        ctr_prior=0.1, ctr_strength=10.0, category_column="genres", recent_n=2)
    kw = {"state_dir": str(tmp_path)} if state == "sqlite" else {
        "redis_url": request.getfixturevalue("redis_url"), "redis_prefix": "http_features:"}
    # unknown_items="accept": item 999 is in no catalogue (refused by default) — its counters are
    # what this test checks against the offline definition
    svc = RecommenderService(tiny_funnel, ServiceConfig(features=cfg, unknown_items="accept", **kw))
    t = T0 - T0 % 3600
    genres = dict(zip(tiny_funnel.dataset_.items["item_id"].to_list(), tiny_funnel.dataset_.items["genres"].to_list()))
    with serve(create_app(svc)) as url, httpx.Client(base_url=url, timeout=30) as http:
        events = [{"item_id": 3, "type": "impression", "ts": t + k} for k in range(5)] + [
            {"item_id": 3, "type": "click", "ts": t + 10}, {"item_id": 4, "type": "like", "ts": t + 20},
            {"item_id": 999, "type": "impression", "ts": t + 30}]
        assert http.post("/feedback", json={"user_id": 7, "events": events}).status_code == 200
        now = t + 3600  # the buckets [t, t + 300) of 1h and [t, t + 3600) of 1d are complete
        got = http.get("/features/items/3", params={"now": now}).json()
        assert got == {"item_id": "3", "now": now, "features": {
            "impression_1h": 5, "click_1h": 1, "impression_1d": 5, "click_1d": 1,
            "ctr_1h": (1 + 1.0) / (5 + 10.0), "ctr_1d": (1 + 1.0) / (5 + 10.0)}}
        early = http.get("/features/items/3", params={"now": t + 300}).json()["features"]
        assert (early["click_1h"], early["click_1d"]) == (1, 0)  # the 1d window's hour is not complete yet
        assert http.get("/features/items/3", params={"now": t + 299}).json()["features"]["click_1h"] == 0
        log = svc.events.read()
        off = offline_item_features(log, ["3", "999"], now, cfg).drop("item_id").to_dicts()
        assert [http.get(f"/features/items/{i}", params={"now": now}).json()["features"] for i in (3, 999)] == off
        user = http.get("/features/users/7", params={"now": now}).json()
        assert user["counts"] == {"impression_1h": 6, "click_1h": 1, "impression_1d": 6, "click_1d": 1}
        want = sorted(set(genres[3]) | set(genres[4]), key=lambda g: (g in genres[4], g), reverse=True)[:2]
        assert user["recent_categories"] == want  # item 4's genres first (the later like), then item 3's
        assert user["profile"]["user_id"] == 7 and user["profile"]["gender"] == "MF"[6 % 2]
        assert user == offline_user_features(log, "7", now, cfg, tiny_funnel.dataset_.items,
                                             tiny_funnel.dataset_.users).to_dict()
        # known ids without events answer zeros / the prior; ids nowhere are 404
        assert http.get("/features/items/1", params={"now": now}).json()["features"]["ctr_1d"] == 0.1
        assert http.get("/features/users/40").json()["counts"]["click_1d"] == 0
        for path in ("/features/items/123456", "/features/users/nobody"):
            r = http.get(path)
            assert r.status_code == 404 and "neither in the catalogue nor in any event" in r.json()["detail"]
        assert http.get("/features/items/" + "9" * 129).status_code == 422
        assert http.get("/features/users/7", params={"now": -1}).status_code == 422
        assert http.get("/features/items/3", params={"now": "soon"}).status_code == 422
    svc.close()
