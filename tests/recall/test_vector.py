"""Vector (two-tower) recall channel: learns planted structure, honours exposures, context
history and every loss/sampler; the registry-wide contract lives in test_channels.py."""

import numpy as np
import polars as pl
import pytest
import torch

from funnelrec.core.config import from_dict
from funnelrec.core.errors import ConfigError, DataError
from funnelrec.core.types import PAD
from funnelrec.data.dataset import Dataset, TrainData
from funnelrec.data.schema import Schema
from funnelrec.models.recall.two_tower import TwoTowerConfig
from funnelrec.recall.base import RecallChannel, RecallContext
from funnelrec.recall.vector import VectorRecall, VectorRecallConfig
from funnelrec.train.row_sparse_adam import RowSparseAdam

SMALL = TwoTowerConfig(embedding_dim=16, user_hidden=(32,), item_hidden=(32,), output_dim=16, temperature=0.1)


def planted(n_users=60, n_items=40, k=4, per_user=8, seed=0):
    """k clusters of items (genre = cluster); each user consumes items of one cluster only."""
    rng = np.random.default_rng(seed)
    size = n_items // k
    rows = []
    for u in range(n_users):
        c = u % k
        for j, i in enumerate(rng.choice(np.arange(size) + c * size, per_user, replace=False)):
            rows.append((u + 1, int(i) + 1, 1.0, 1_000_000 + j, 1 if j % 4 else 0))
    inter = pl.DataFrame(rows, schema=["user_id", "item_id", "rating", "timestamp", "click"], orient="row")
    items = pl.DataFrame({"item_id": np.arange(1, n_items + 1),
                          "genres": [[f"g{i // size}"] for i in range(n_items)]})
    users = pl.DataFrame({"user_id": np.arange(1, n_users + 1), "gender": ["MF"[u % 2] for u in range(n_users)]})
    schema = Schema(interactions={"user_id": "categorical", "item_id": "categorical", "rating": "label",
                                  "timestamp": "time", "click": "label"},
                    users={"user_id": "categorical", "gender": "categorical"},
                    items={"item_id": "categorical", "genres": "multi"})
    return Dataset.build("planted", inter, schema, users=users, items=items), size


def _cfg(**kw):
    base = dict(model=SMALL, item_columns=("genres",), user_columns=("gender",), epochs=12, lr=0.01,
                batch_size=128, num_threads=1, n_negatives=2)
    base.update(kw)
    return VectorRecallConfig(**base)


@pytest.fixture(scope="module")
def world():
    ds, size = planted()
    ranked = ds.interactions.with_columns(pl.col("timestamp").rank("ordinal").over("user_idx").alias("r"))
    train, test = ranked.filter(pl.col("r") <= 6).drop("r"), ranked.filter(pl.col("r") > 6).drop("r")
    return ds, size, TrainData(ds, train), test


def _recall_at_10(ch, ds, test):
    users = np.arange(ds.n_users)
    top = ch.recall(users, 10).items
    pos = test.group_by("user_idx").agg("item_idx").sort("user_idx")
    hits = [np.isin(pos["item_idx"][u].to_numpy(), top[u]).mean() for u in range(ds.n_users)]
    return float(np.mean(hits))


@pytest.mark.parametrize("loss,sampler", [("softmax", "uniform"), ("bpr", "pop075"), ("pointwise", "mixed_hard")])
def test_learns_planted_clusters(world, loss, sampler):
    ds, size, train, test = world
    ch = VectorRecall(_cfg(loss=loss, negative_sampler=sampler, hard_ranks=(3, 15))).fit(train)
    r10 = _recall_at_10(ch, ds, test)
    # random: 10 of the 34 unseen items → 0.29; the cluster holds the 4 unseen same-cluster items
    assert r10 > 0.8, (loss, sampler, r10)


def test_exposed_not_clicked_are_not_positives(world):
    ds, _, train, _ = world
    ch = VectorRecall(_cfg(label_column="click", positive_min=1.0, epochs=1)).fit(train)
    hist = ch.features_.hist.numpy()
    skipped = train.interactions.filter(pl.col("click") == 0)
    for u, i in zip(skipped["user_idx"].to_list(), skipped["item_idx"].to_list()):
        assert i not in hist[u]
    clicked = train.interactions.filter(pl.col("click") == 1)
    assert (hist >= 0).sum() == clicked.height
    # they still count as seen: never recalled
    top = ch.recall(skipped["user_idx"].to_numpy(), 39).items
    assert not (top == skipped["item_idx"].to_numpy()[:, None]).any()


def test_context_history_drives_unknown_user_and_is_excluded(world):
    ds, size, train, _ = world
    ch = VectorRecall(_cfg(epochs=12)).fit(train)
    hist = np.arange(4) + 2 * size  # cluster 2
    b = ch.recall(np.array([-1, -1]), 5, RecallContext(extra={"history": [hist, np.array([999, -3])]}))
    got = b.items[0][b.items[0] != PAD]
    assert len(got) == 5 and not np.isin(got, hist).any()
    assert (got // size == 2).mean() >= 0.8
    assert (b.items[1] == PAD).all()  # its history is all outside the catalogue: ignored
    with pytest.raises(DataError, match="rows"):
        ch.recall(np.array([0]), 5, RecallContext(extra={"history": [hist, hist]}))


@pytest.mark.parametrize("factory", ["HNSW16", "SQ8,Rerank20"])
def test_ann_index_round_trips(world, tmp_path, factory):
    _, _, train, _ = world
    ch = VectorRecall(_cfg(epochs=1, index_factory=factory)).fit(train)
    assert ch.index_.factory == factory
    ch.save(tmp_path / "v")
    back = RecallChannel.load(tmp_path / "v")
    users = np.arange(train.n_users)
    np.testing.assert_array_equal(ch.recall(users, 10).items, back.recall(users, 10).items)


def test_config_errors_are_named():
    with pytest.raises(ConfigError, match="unknown loss"):
        VectorRecallConfig(loss="listnet")
    with pytest.raises(ConfigError, match="unknown negative sampler"):
        VectorRecallConfig(negative_sampler="hardest")
    with pytest.raises(ConfigError, match="n_negatives"):
        VectorRecallConfig(loss="bpr", n_negatives=0)
    cfg = from_dict(VectorRecallConfig, {"loss": "bpr", "model": {"temperature": 0.2}, "hard_ranks": [5, 50]})
    assert cfg.model.temperature == 0.2 and cfg.hard_ranks == (5, 50)
    ds = planted()[0]
    with pytest.raises(ConfigError):
        VectorRecall(_cfg(epochs=1, index_factory="NoSuchIndex")).fit(TrainData(ds, ds.interactions))


def test_missing_feature_column_is_named(world):
    _, _, train, _ = world
    with pytest.raises(ConfigError, match="'tags' not found"):
        VectorRecall(_cfg(item_columns=("tags",), epochs=1)).fit(train)


def test_default_tower_columns_are_the_schemas_attributes_not_its_identifiers(world):
    """No column list in the config: the towers read the schema's categorical / multi columns,
    less the ids and any column with more distinct values than half its rows (a title, a sku)."""
    from funnelrec.recall.vector import attribute_columns

    ds, _, train, _ = world
    n_items, n_users = ds.items.height, ds.users.height
    items = ds.items.with_columns(title=pl.Series([f"t{i}" for i in range(n_items)]),  # unique: an id
                                  shelf=pl.Series([f"s{i % 3}" for i in range(n_items)]),
                                  price=pl.Series(np.arange(n_items, dtype=np.float64)))
    users = ds.users.with_columns(zip=pl.Series([f"z{u}" for u in range(n_users)]))
    schema = Schema(interactions=ds.schema.interactions,
                    users={**ds.schema.users, "zip": "categorical"},
                    items={**ds.schema.items, "title": "categorical", "shelf": "categorical", "price": "numeric"})
    rich = Dataset.build("rich", ds.interactions, schema, users=users.drop("user_idx"), items=items.drop("item_idx"))
    assert attribute_columns(rich, "items") == ("shelf", "genres")  # schema order: categorical, then multi
    assert attribute_columns(rich, "users") == ("gender",)
    ch = VectorRecall(VectorRecallConfig(model=SMALL, epochs=1, num_threads=1)).fit(TrainData(rich, rich.interactions))
    assert (ch.item_columns_, ch.user_columns_) == (("shelf", "genres"), ("gender",))
    # 1 (pad) + 3 shelves + 4 genres attribute rows, 1 (unknown) + 2 genders profile rows
    assert ch.features_.n_attr_rows == 1 + 3 + 4 and ch.features_.n_profile_rows == 1 + 2


def _np_user_tower(model, profile_rows: np.ndarray, hist: list[np.ndarray]) -> np.ndarray:
    """The user tower from its weights in float64 numpy: x = [E_prof[p] ; mean_j E_hist[j + 1]],
    Linear → ReLU → Linear, then x / ‖x‖ (the formula of models/recall/two_tower.py)."""
    w = {k: v.detach().double().numpy() for k, v in model.state_dict().items()}
    out = []
    for p, h in zip(profile_rows, hist):
        e_prof = w["profile.weight"][p].reshape(-1)
        e_hist = w["hist_item.weight"][np.asarray(h) + 1].mean(0) if len(h) else np.zeros(w["hist_item.weight"].shape[1])
        x = np.concatenate([e_prof, e_hist])
        x = np.maximum(w["user_mlp.0.weight"] @ x + w["user_mlp.0.bias"], 0.0)
        x = w["user_mlp.2.weight"] @ x + w["user_mlp.2.bias"]
        out.append(x / np.linalg.norm(x))
    return np.array(out)


def test_stored_user_vectors_equal_the_user_tower(world):
    """The user vectors stored at fit equal the tower recomputed from scratch: the history
    rebuilt from the raw training rows (each user's `history_len` most recent positives),
    the profile row from the user's gender (values numbered 1.. in sorted order), the layers
    in numpy; fresh history goes in front of the stored one. The recalled items are the exact
    brute-force top-n over the item vectors minus the user's training items."""
    ds, size, train, _ = world
    ch = VectorRecall(_cfg(epochs=1)).fit(train)
    assert set(ch.model_.state_dict()) >= {"user_mlp.0.weight", "user_mlp.2.weight"} and len(SMALL.user_hidden) == 1
    L = ch.config.history_len
    inter = train.interactions.sort(["user_idx", "timestamp"], descending=[False, True], maintain_order=True)
    hist = [inter.filter(pl.col("user_idx") == u)["item_idx"].to_numpy()[:L] for u in range(ds.n_users)]
    genders = sorted(set(ds.users["gender"].to_list()))
    profile = np.array([[1 + genders.index(g)] for g in ds.users.sort("user_idx")["gender"].to_list()])
    ref = _np_user_tower(ch.model_, profile, hist)
    users = np.arange(ds.n_users)
    np.testing.assert_allclose(ch.user_vectors_, ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ch.user_vectors(users), ref, rtol=1e-4, atol=1e-5)

    fresh = [np.arange(4) + 2 * size, np.arange(3)]
    moved = ch.user_vectors(np.array([0, 1]), fresh)
    want = _np_user_tower(ch.model_, profile[:2], [np.r_[f[::-1], h][:L] for f, h in zip(fresh, hist[:2])])
    np.testing.assert_allclose(moved, want, rtol=1e-4, atol=1e-5)
    assert not np.allclose(moved, ch.user_vectors_[:2], atol=1e-3)

    n = 10
    got = ch.recall(users, n)
    s = ref @ ch.item_vectors_.astype(np.float64).T  # (U, I) exact scores
    seen = np.zeros_like(s, bool)
    seen[train.interactions["user_idx"].to_numpy(), train.interactions["item_idx"].to_numpy()] = True
    s[seen] = -np.inf
    for u in users:
        top = np.lexsort((np.arange(s.shape[1]), -s[u]))[:n]  # score descending, ties by index
        assert got.items[u].tolist() == top.tolist(), u
        np.testing.assert_allclose(got.scores[u], s[u, top], rtol=1e-4, atol=1e-5)


def test_sparse_embeddings_use_sparse_adam_and_learn_like_dense(world):
    """Default: embedding tables with row-sparse gradients under lazy Adam, MLPs under Adam;
    the dense path (one Adam over everything) stays available and learns the clusters too."""
    ds, _, train, test = world
    t = VectorRecall(_cfg(epochs=1)).build_training(train)
    sparse_opt, dense_opt = t.optimizers
    assert isinstance(sparse_opt, RowSparseAdam) and type(dense_opt) is torch.optim.Adam
    tables = {id(e.weight) for e in t.model.embedding_tables()}
    assert {id(p) for p in sparse_opt.param_groups[0]["params"]} == tables
    assert {id(p) for p in dense_opt.param_groups[0]["params"]} == {id(p) for p in t.model.parameters()} - tables
    batch = {k: v[:32] for k, v in t.epoch_tensors(0).items()}
    t.objective(t.model, batch).backward()
    assert all(e.weight.grad.is_sparse for e in t.model.embedding_tables())
    assert VectorRecall(_cfg(epochs=1, sparse_embeddings=False)).build_training(train).optimizers is None
    dense = VectorRecall(_cfg(loss="softmax", sparse_embeddings=False)).fit(train)
    assert not any(e.sparse for e in dense.model_.embedding_tables())
    assert _recall_at_10(dense, ds, test) > 0.8
    with pytest.raises(ConfigError, match="weight_decay"):
        VectorRecallConfig(weight_decay=1e-4)


def test_validation_scores_at_most_max_valid_users(world, monkeypatch):
    """Per-epoch validation ranks all items for each validation user; above max_valid_users it
    scores a seeded sample of them (10¹¹ dot products per epoch at 1M items × 100k users)."""
    import funnelrec.recall.vector as vector

    ds, _, train, test = world
    seen_sizes = []
    real = vector._ranked_items

    def spy(model, feats, users, seen, k, **kw):
        seen_sizes.append(len(users))
        return real(model, feats, users, seen, k, **kw)

    monkeypatch.setattr(vector, "_ranked_items", spy)
    VectorRecall(_cfg(epochs=2, max_valid_users=7)).fit(train, valid=test)
    assert seen_sizes and set(seen_sizes) == {7} and test["user_idx"].n_unique() > 7
    seen_sizes.clear()
    VectorRecall(_cfg(epochs=1, max_valid_users=0)).fit(train, valid=test)
    assert seen_sizes == [test["user_idx"].n_unique()]


def test_index_params_reach_the_index_and_survive_save_load(world, tmp_path):
    ds, _, train, _ = world
    ch = VectorRecall(_cfg(epochs=1, index_factory="IVF4,Flat", index_params={"nprobe": 4})).fit(train)
    assert ch.index_.index.params_ == {"nprobe": 4}
    users = np.arange(ds.n_users)
    full = ch.recall(users, 10).items
    ch.save(tmp_path / "v")
    back = VectorRecall.load(tmp_path / "v")
    assert back.index_.index.params_ == {"nprobe": 4}
    np.testing.assert_array_equal(back.recall(users, 10).items, full)
    # nprobe 4 of 4 lists is exhaustive: the same answer as the exact Flat index
    flat = VectorRecall(_cfg(epochs=1)).fit(train)
    assert (full == flat.recall(users, 10).items).mean() > 0.99
