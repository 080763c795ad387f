"""The synthetic world at a tiny size: determinism, skew, and labels that follow the exposed truth."""

import numpy as np
import polars as pl
import pytest
from scipy.special import expit

from funnelrec.core.errors import ConfigError, DataError
from funnelrec.core.registry import DATASETS
from funnelrec.data import load_dataset
from funnelrec.data.synthetic import SCHEMA, WorldConfig, load_synthetic

SIZE = {"n_users": 300, "n_items": 200, "n_interactions": 20_000}


@pytest.fixture(scope="module")
def world_ds():
    return load_dataset("synthetic", **SIZE, seed=3)


def _cols(ds):
    i = ds.interactions
    return (i["user_idx"].to_numpy(), i["item_idx"].to_numpy(), i["timestamp"].to_numpy(),
            i["click"].to_numpy(), i["like"].to_numpy(), i["watch_time"].to_numpy())


def test_registered_and_seeded(world_ds):
    assert DATASETS.get("synthetic") is load_synthetic
    again = load_synthetic(**SIZE, seed=3)
    for t in ("interactions", "users", "items"):
        assert getattr(again, t).equals(getattr(world_ds, t)), t
    np.testing.assert_array_equal(again.extras["world"].user_vectors, world_ds.extras["world"].user_vectors)
    other = load_synthetic(**SIZE, seed=4)
    assert not other.interactions.equals(world_ds.interactions)
    assert not np.allclose(other.extras["world"].item_vectors, world_ds.extras["world"].item_vectors)


def test_unknown_or_bad_knob():
    with pytest.raises(ConfigError, match="unknown key 'zipf' in WorldConfig"):
        load_synthetic(n_users=10, n_items=10, n_interactions=100, zipf=1.2)
    with pytest.raises(ConfigError, match="n_interactions .* must be ≥ n_users"):
        load_synthetic(n_users=100, n_items=10, n_interactions=50)
    with pytest.raises(ConfigError, match="exploration must be in"):
        WorldConfig(exploration=1.5)


def test_contract_dense_ids_and_schema(world_ds):
    ds = world_ds
    for t in ("interactions", "users", "items"):
        SCHEMA.validate(t, getattr(ds, t))
    assert ds.n_users == SIZE["n_users"] and ds.n_items == SIZE["n_items"]
    assert ds.interactions.height == SIZE["n_interactions"]
    assert (ds.users["user_id"] == ds.users["user_idx"]).all()
    assert (ds.items["item_id"] == ds.items["item_idx"]).all()
    assert (ds.interactions["user_id"] == ds.interactions["user_idx"]).all()
    assert (ds.interactions["item_id"] == ds.interactions["item_idx"]).all()
    n_tags = ds.items["tags"].list.len()
    assert n_tags.min() >= 1 and n_tags.max() <= 3
    assert (ds.items["tags"].list.n_unique() == n_tags).all()  # no repeated tag on an item
    assert ds.items["author"].value_counts()["count"].max() >= 5  # some authors own several items
    assert set(ds.users["gender"].unique()) <= {"M", "F", "U"}


def test_time_order_and_published_before_shown(world_ds):
    ds = world_ds
    assert ds.interactions["timestamp"].is_sorted()
    per_user = ds.interactions.group_by("user_idx").agg(pl.col("timestamp").diff().min().alias("d"))
    assert (per_user["d"].fill_null(0) >= 0).all()
    w = ds.extras["world"]
    _, it, ts, *_ = _cols(ds)
    assert (ts >= w.publish_time[it]).all()
    cfg = w.config
    assert ts.min() >= cfg.start_time and ts.max() < cfg.end_time


def test_heavy_tailed_activity_and_every_user_active(world_ds):
    counts = np.bincount(_cols(world_ds)[0], minlength=SIZE["n_users"])
    assert counts.min() >= 1
    assert counts.max() > 10 * np.median(counts)


def test_zipf_popularity_vs_uniform_world(world_ds):
    def top_share(ds):
        c = np.sort(np.bincount(_cols(ds)[1], minlength=SIZE["n_items"]))[::-1]
        return c[: SIZE["n_items"] // 10].sum() / c.sum()

    # the Zipf(1) proposal alone puts H(20)/H(200) = 0.61 of the mass on the top 10 %
    zipf = top_share(world_ds)
    uniform = top_share(load_synthetic(**SIZE, seed=3, popularity_exponent=0.0))
    assert zipf > 0.45 and uniform < 0.25 and zipf > 2.5 * uniform
    p = world_ds.extras["world"].popularity
    assert abs(p.sum() - 1) < 1e-9 and np.sort(p)[-1] / np.sort(p)[-2] == pytest.approx(2.0)


def test_label_consistency(world_ds):
    _, _, _, click, like, watch = _cols(world_ds)
    assert (watch[click == 0] == 0).all() and (watch[click == 1] > 0).all()
    assert (like <= click).all()
    assert 0.05 < click.mean() < 0.3 and 0 < like.sum() < click.sum()


def test_clicks_follow_true_preference(world_ds):
    u, it, ts, click, _, _ = _cols(world_ds)
    p = world_ds.extras["world"].true_preference(u, it, t=ts)
    # total clicks: a sum of independent Bernoullis, within 4 standard deviations
    assert abs(click.sum() - p.sum()) < 4 * np.sqrt((p * (1 - p)).sum())
    lo, hi = np.quantile(p, [0.25, 0.75])
    assert click[p > hi].mean() > 3 * click[p < lo].mean()
    # calibration in five bins of p
    edges = np.quantile(p, np.linspace(0, 1, 6))
    b = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, 4)
    for k in range(5):
        pk = p[b == k]
        assert abs(click[b == k].sum() - pk.sum()) < 4 * np.sqrt((pk * (1 - pk)).sum()) + 1


def test_true_preference_formula_and_broadcasting(world_ds):
    w = world_ds.extras["world"]
    c = w.config
    u, i, t = 7, 11, c.start_time + 5 * 86_400
    s = float(w.user_vectors[u].astype(np.float64) @ w.item_vectors[i].astype(np.float64))
    rank = int((w.popularity > w.popularity[i]).sum())  # 0-based popularity rank
    age = max(0, t - int(w.publish_time[i]))
    logit = (c.click_bias + c.affinity_weight * s + c.popularity_weight * (1 - rank / w.n_items)
             + c.freshness_weight * np.exp(-age / (c.freshness_days * 86_400)))
    assert w.true_preference(np.array([u]), np.array([i]), t=t)[0] == pytest.approx(expit(logit), rel=1e-5)
    users, items = np.array([0, 5, 299]), np.array([3, 0, 199, 42])
    grid = w.true_preference(users[:, None], items[None, :])
    assert grid.shape == (3, 4)
    for a, uu in enumerate(users):
        np.testing.assert_allclose(grid[a], w.true_preference(np.full(4, uu), items), rtol=1e-5)
    with pytest.raises(DataError, match="item_idx out of range"):
        w.true_preference(np.array([0]), np.array([200]))


def test_sample_response_matches_exposed_truth(world_ds):
    w = world_ds.extras["world"]
    rng = np.random.default_rng(0)
    n = 20_000
    pairs = [(0, 0), (5, 17), (120, 150)]
    for u, i in pairs:
        uu, ii = np.full(n, u), np.full(n, i)
        r = w.sample_response(uu, ii, rng)
        p = w.true_preference(uu[:1], ii[:1])[0]
        assert abs(r["click"].mean() - p) < 4 * np.sqrt(p * (1 - p) / n) + 1e-3
        clicked = r["click"] == 1
        # watch time: mean given click ≈ expected_watch_time(given_click) (Gamma noise has mean 1,
        # CV 1/√k); unconditional mean ≈ expected_watch_time
        wt_click = w.expected_watch_time(uu[:1], ii[:1], given_click=True)[0]
        k = w.config.watch_shape
        assert abs(r["watch_time"][clicked].mean() - wt_click) < 4 * wt_click / np.sqrt(k * clicked.sum())
        assert w.expected_watch_time(uu[:1], ii[:1])[0] == pytest.approx(p * wt_click, rel=1e-5)
    # position bias: P(click | position 3) = p · 4^(−η)
    r = w.sample_response(np.zeros(n, np.int64), np.zeros(n, np.int64), rng, position=np.full(n, 3))
    p = w.true_preference(np.array([0]), np.array([0]))[0] * 4 ** -w.config.position_exponent
    assert abs(r["click"].mean() - p) < 4 * np.sqrt(p * (1 - p) / n) + 1e-3


def test_watch_time_and_like_increase_with_preference(world_ds):
    w = world_ds.extras["world"]
    items = np.arange(w.n_items)
    s = w.affinity(np.zeros_like(items), items)
    wt = w.expected_watch_time(np.zeros_like(items), items, given_click=True) / w.duration
    assert np.all(np.diff(wt[np.argsort(s)]) >= -1e-6)  # completion share is monotone in s


def test_attributes_carry_signal(world_ds):
    """Item vectors of one author (or one tag) and user vectors of one region are closer than
    random pairs, so author/tag/geo channels have something to find."""
    w = world_ds.extras["world"]

    def mean_cos(vectors, groups):
        x = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        sim = x @ x.T
        same = groups[:, None] == groups[None, :]
        off = ~np.eye(len(x), dtype=bool)
        return sim[same & off].mean(), sim[~same].mean()

    same, diff = mean_cos(w.item_vectors, w.item_author)
    assert same > diff + 0.3
    same, diff = mean_cos(w.item_vectors, w.item_tags[:, 0])
    assert same > diff + 0.2
    same, diff = mean_cos(w.user_vectors, w.user_region)
    assert same > diff + 0.05


def test_dense_ids_fast_path_equals_the_join_path(world_ds):
    from funnelrec.data.dataset import Dataset

    ds = world_ds
    raw = {t: getattr(ds, t).drop("user_idx", "item_idx", strict=False) for t in ("interactions", "users", "items")}
    slow = Dataset.build("s", raw["interactions"], SCHEMA, users=raw["users"], items=raw["items"])
    fast = Dataset.build("s", raw["interactions"], SCHEMA, users=raw["users"], items=raw["items"], dense_ids=True)
    for t in ("interactions", "users", "items"):
        assert getattr(fast, t).equals(getattr(slow, t)), t
    with pytest.raises(DataError, match=r"dense_ids: users\.user_id must be 0\.\.299 in row order"):
        Dataset.build("s", raw["interactions"], SCHEMA, users=raw["users"].reverse(), items=raw["items"],
                      dense_ids=True)
    bad = raw["interactions"].with_columns(pl.col("item_id") + 1)
    with pytest.raises(DataError, match=r"dense_ids: interactions\.item_id must be integers in 0\.\.199"):
        Dataset.build("s", bad, SCHEMA, users=raw["users"], items=raw["items"], dense_ids=True)


# ------------------------------------------------------------------ preference drift
# sha256 over every column of the three tables and the two vector tables, taken before the drift
# knobs existed (see _world_digest): drift off by default must leave the world bit-identical
DIGEST_SEED3 = "8ee839af68ef317f2fee34872f3a347e64cced7e332f2ef6ce79821cc53a6cab"
DRIFT = {"n_users": 300, "n_items": 200, "n_interactions": 20_000, "seed": 3, "days": 20}


def _world_digest(cfg):
    import hashlib

    from funnelrec.data.synthetic import generate_world

    world, inter, users, items = generate_world(cfg)
    h = hashlib.sha256()
    for df in (inter, users, items):
        for c in df.columns:
            s = df[c].list.join(",") if df[c].dtype.is_nested() else df[c]
            h.update(c.encode())
            h.update(s.str.join("|").item().encode() if s.dtype == pl.String else s.to_numpy().tobytes())
    h.update(world.user_vectors.tobytes())
    h.update(world.item_vectors.tobytes())
    return h.hexdigest()


def test_drift_off_by_default_is_bit_identical():
    cfg = WorldConfig(**SIZE, seed=3)
    assert cfg.drift_fraction == 0 and cfg.drift_time is None
    assert _world_digest(cfg) == DIGEST_SEED3
    assert _world_digest(WorldConfig(**SIZE, seed=3, drift_day=5)) == DIGEST_SEED3  # a day alone: no drift


def test_drift_bad_knobs():
    with pytest.raises(ConfigError, match="drift_fraction must be in"):
        WorldConfig(drift_fraction=1.5, drift_day=3)
    with pytest.raises(ConfigError, match="drift_day must be in 1..59"):
        WorldConfig(drift_fraction=0.5, drift_day=60)
    with pytest.raises(ConfigError, match="drift_day must be in"):
        WorldConfig(drift_fraction=0.5)


@pytest.fixture(scope="module")
def drift_pair():
    return load_synthetic(**DRIFT), load_synthetic(**DRIFT, drift_day=10, drift_fraction=0.5)


def test_drift_changes_the_loved_tags_of_its_users_only(drift_pair):
    base, ds = drift_pair
    w0, w = base.extras["world"], ds.extras["world"]
    np.testing.assert_array_equal(w.user_vectors, w0.user_vectors)  # the pre-drift truth is unchanged
    assert len(w.drifted_users) == 150 and len(np.unique(w.drifted_users)) == 150
    after = w.user_vectors_after_drift
    still = np.setdiff1d(np.arange(300), w.drifted_users)
    np.testing.assert_array_equal(after[still], w.user_vectors[still])
    moved = w.drifted_users
    # the new vectors have the old scale (per-coordinate RMS d^-1/4 over the population) but
    # point elsewhere: cosine to the old vector well below 1 (old and new share only
    # region/age/gender/noise)
    rms = np.sqrt(np.mean(after[moved].astype(np.float64) ** 2))
    assert 0.7 * 16 ** -0.25 < rms < 1.3 * 16 ** -0.25
    a, b = after[moved], w.user_vectors[moved]
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert np.median(cos) < 0.8 and (cos < 0.999).all()
    # the recorded favourite tags: new ones for the drifted users, none of their old two, the
    # same for the others; and they are the tags the truth loves — an item carrying one of a
    # user's tags has a higher affinity than one carrying none, before and after the drift
    old, new = w.loved_tags, w.loved_tags_after_drift
    np.testing.assert_array_equal(old, w0.loved_tags)
    np.testing.assert_array_equal(new[still], old[still])
    assert not (new[moved][:, :, None] == old[moved][:, None, :]).any()
    assert w.at(w.config.drift_time).loved_tags is new and base.extras["world"].loved_tags_after_drift is None
    for vecs, tags in ((w.user_vectors, old), (after, new)):
        carries = (w.item_tags[None, :, :, None] == tags[moved][:, None, None, :]).any((2, 3))  # (M, N)
        s = vecs[moved] @ w.item_vectors.T
        assert s[carries].mean() > s[~carries].mean() + 0.3


def test_drift_log_equals_the_plain_log_before_the_drift_and_follows_the_new_taste_after(drift_pair):
    base, ds = drift_pair
    w = ds.extras["world"]
    t_drift = w.config.drift_time
    i0, i1 = base.interactions, ds.interactions
    t = i1["timestamp"].to_numpy()
    np.testing.assert_array_equal(t, i0["timestamp"].to_numpy())
    np.testing.assert_array_equal(i1["user_idx"].to_numpy(), i0["user_idx"].to_numpy())
    pre = t < t_drift
    assert 0.3 < pre.mean() < 0.7
    for col in ("item_idx", "click"):  # same draws, same vectors before the drift
        np.testing.assert_array_equal(i1[col].to_numpy()[pre], i0[col].to_numpy()[pre])
    u, it = i1["user_idx"].to_numpy(), i1["item_idx"].to_numpy()
    post_moved = ~pre & np.isin(u, w.drifted_users)
    post_still = ~pre & ~np.isin(u, w.drifted_users)
    # users who did not drift see exactly what they saw without drift, even after it
    np.testing.assert_array_equal(it[post_still], i0["item_idx"].to_numpy()[post_still])
    # the drifted users' later exposures follow the new vectors, not the old ones
    uu, ii = u[post_moved], it[post_moved]
    s_new = (w.user_vectors_after_drift[uu] * w.item_vectors[ii]).sum(1)
    s_old = (w.user_vectors[uu] * w.item_vectors[ii]).sum(1)
    assert s_new.mean() > s_old.mean() + 0.15  # 0.66 vs 0.34 at this seed
    # and before the drift, the old vectors explain their exposures better than the new ones
    pm = pre & np.isin(u, w.drifted_users)
    s_new_pre = (w.user_vectors_after_drift[u[pm]] * w.item_vectors[it[pm]]).sum(1)
    s_old_pre = (w.user_vectors[u[pm]] * w.item_vectors[it[pm]]).sum(1)
    assert s_old_pre.mean() > s_new_pre.mean() + 0.3  # 0.81 vs 0.25


def test_world_at_time_answers_with_the_preferences_in_force(drift_pair):
    base, ds = drift_pair
    w = ds.extras["world"]
    t = w.config.drift_time
    assert w.at(t - 1) is w and base.extras["world"].at(t + 10**6) is base.extras["world"]  # no drift: itself
    after = w.at(t)
    assert after is w.at(t + 86_400)  # one view, cached
    u, i = w.drifted_users[:5], np.arange(7)
    c = w.config
    # P(click) by hand from the drifted vectors: σ(b_c + w_s·u'·v + w_p·ρ + w_f·φ(t))
    s = w.user_vectors_after_drift[u][:, None, :] @ w.item_vectors[i].T[None]
    logit = (c.click_bias + c.affinity_weight * s[:, 0, :] + c.popularity_weight * w.popularity_score[i]
             + c.freshness_weight * np.exp(-np.maximum(0, t - w.publish_time[i]) / (c.freshness_days * 86_400)))
    np.testing.assert_allclose(after.true_preference(u[:, None], i[None, :], t), 1 / (1 + np.exp(-logit)), rtol=1e-5)
    np.testing.assert_array_equal(w.user_vectors, base.extras["world"].user_vectors)  # the world itself unchanged
    assert not np.allclose(after.true_preference(u[:, None], i[None, :], t), w.true_preference(u[:, None], i[None, :], t))


def test_build_gives_users_and_items_only_in_interactions_their_own_rows():
    """Dataset.build: a user or item the interactions name but its table lacks gets a row of its
    own after the table's rows (in order of first appearance), with null attributes; every
    interaction's index points at the row of its id; a table row without interactions stays."""
    from funnelrec.data.dataset import Dataset
    from funnelrec.data.schema import Schema

    schema = Schema(interactions={"user_id": "categorical", "item_id": "categorical", "timestamp": "time"},
                    users={"user_id": "categorical", "age": "numeric"},
                    items={"item_id": "categorical", "author": "categorical"})
    users = pl.DataFrame({"user_id": ["u1", "u2", "u4"], "age": [30.0, 40.0, 50.0]})
    items = pl.DataFrame({"item_id": [10, 11], "author": ["a", "b"]})
    inter = pl.DataFrame({"user_id": ["u1", "u5", "u2", "u3", "u5"], "item_id": [10, 12, 11, 13, 12],
                          "timestamp": [1, 2, 3, 4, 5]})
    ds = Dataset.build("t", inter, schema, users=users, items=items)
    assert ds.users.select("user_idx", "user_id", "age").rows() == [
        (0, "u1", 30.0), (1, "u2", 40.0), (2, "u4", 50.0), (3, "u5", None), (4, "u3", None)]
    assert ds.items.select("item_idx", "item_id", "author").rows() == [
        (0, 10, "a"), (1, 11, "b"), (2, 12, None), (3, 13, None)]
    assert (ds.n_users, ds.n_items) == (5, 4)
    assert ds.interactions["user_idx"].to_list() == [0, 3, 1, 4, 3]
    assert ds.interactions["item_idx"].to_list() == [0, 2, 1, 3, 2]
    # without tables: one row per id of the interactions, in order of first appearance
    ids = Schema(interactions=schema.interactions, users={"user_id": "categorical"}, items={"item_id": "categorical"})
    bare = Dataset.build("t", inter, ids)
    assert bare.users.select("user_idx", "user_id").rows() == [(0, "u1"), (1, "u5"), (2, "u2"), (3, "u3")]
    assert bare.interactions["item_idx"].to_list() == [0, 1, 2, 3, 1]


def test_the_default_funnel_fits_and_scores_the_clicks_not_the_impressions(world_ds):
    """The world's log has one row per item shown: `evaluate funnel --dataset synthetic` reads it
    with configs/funnel/synthetic.yaml, whose label map makes the unclicked rows exposure — out of
    the fit and of the test positives."""
    from funnelrec.cli_data import resolve_config
    from funnelrec.pipeline.offline import fit_on_protocol

    cfg = resolve_config(None, "synthetic")
    assert cfg.labels.event_column == "click" and "0" in cfg.labels.exposure_events()
    funnel, split = fit_on_protocol(world_ds, cfg)
    rows = pl.concat([split.train, split.valid, split.test])
    assert rows.height == int((world_ds.interactions["click"] > 0).sum()) and (rows["click"] == 1).all()
    assert float(funnel.channels_["hot"].popularity_.sum()) > 0 and funnel.ranker_ is not None
