"""The component contract *as part of a served funnel*: for every registered ranker, recall channel
and vector index, a tiny funnel with that component is trained, saved as an artifact directory,
loaded, and served over real HTTP (one uvicorn server that /admin/reload's each artifact):

- the loaded funnel answers exactly as the fitted one (items and scores);
- batch = one-by-one on the loaded funnel;
- the HTTP answer equals the loaded funnel's answer for the same user.

The parameters run over `names()` of each registry, never over a hand list: a newly registered
component is in the contract the day it is registered. Every ranker is the funnel's ranker with
what it reads: the behaviour sequence (sequence models), the user's gender as the domain (STAR,
PEPNet), its `prepare` stage (GBDT+LR), and the (click, like) task pair for a multi-task model
(ESMM's ctr/ctcvr).
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

import funnelrec.recall  # noqa: F401  (registers every channel)
from funnelrec.core.registry import RANKERS, RECALL_CHANNELS, VECTOR_INDEXES
from funnelrec.core.types import RequestState
from funnelrec.models.ranking.common import load_all
from funnelrec.pipeline.builder import FunnelBuilder
from funnelrec.pipeline.config import FunnelConfig
from funnelrec.pipeline.funnel import Funnel
from funnelrec.recall.base import RecallContext

load_all()

# the synthetic world's columns for channels whose defaults name another dataset's columns
CHANNEL_PARAMS = {
    "tag": {"column": "tags"},
    "author": {"column": "author"},
    "vector": {"epochs": 1, "user_columns": ["gender", "age_band"], "item_columns": ["tags"]},
}
# factory strings each vector-index backend is served with (a backend missing here fails the test)
INDEX_FACTORIES = {"faiss": ["Flat", "HNSW16"], "hnswlib": ["HNSWLIB16"], "kdtree": ["KDTree"],
                   "milvus": ["Milvus:HNSW,M=8,efConstruction=40"]}
USERS = np.array([0, 3, 17, 120, 299])
NOW = 1_767_300_000  # inside the synthetic world's time span


@pytest.fixture(scope="module")
def world():
    from funnelrec.data import load_dataset
    from funnelrec.data.splits import random_split_by_user

    ds = load_dataset("synthetic", n_users=300, n_items=400, n_interactions=8000)
    split = random_split_by_user(ds.interactions.filter(pl.col("click") == 1), seed=2020)
    return ds, split


def _config(rank_model: str = "lr", channels: list[dict] | None = None) -> FunnelConfig:
    return FunnelConfig.from_dict({
        "recall": {"channels": channels or [{"name": "itemcf", "n": 40}, {"name": "hot", "n": 30}],
                   "merge": {"total": 60}},
        "rank": {"model": rank_model, "epochs": 1, "user_columns": ["age_band", "gender"], "item_columns": ["tags"],
                 "match_columns": ["tags"], "ridge_lambda": 0.0, "domain_column": "gender",
                 "tasks": ["ctr", "like"] if RANKERS.get(rank_model).multi_task else ["ctr"]}})


@pytest.fixture(scope="module")
def server(world, tmp_path_factory, serve):
    """One real uvicorn server over a first artifact; each test reloads its own artifact (all
    under the server's artifact directory, the only place it reloads from)."""
    import httpx

    from funnelrec.pipeline.service import RecommenderService
    from funnelrec.serving.app import create_app

    ds, split = world
    root = tmp_path_factory.mktemp("contract-artifacts")
    FunnelBuilder(_config()).fit(ds, split.train, labels=split.valid).save(root / "first")
    svc = RecommenderService.from_artifact(root / "first")
    with serve(create_app(svc)) as base:
        with httpx.Client(base_url=base, timeout=60) as client:
            yield root, client, svc
    svc.close()


def _served_funnel_contract(funnel: Funnel, name: str, server) -> None:
    root, client, svc = server
    path = root / name
    funnel.save(path)
    loaded = Funnel.load(path)
    a_items, a_scores = funnel.recommend_batch(USERS, 10)
    b_items, b_scores = loaded.recommend_batch(USERS, 10)
    np.testing.assert_array_equal(a_items, b_items)
    # equal up to float32 rounding: a loaded tensor's alignment may pick another SIMD path
    np.testing.assert_allclose(a_scores, b_scores, rtol=1e-6, atol=1e-7)
    assert (b_items[:, 0] >= 0).all(), "the funnel answered nothing"
    for r, u in enumerate(USERS):  # batch = one-by-one
        one = loaded.run(np.array([u]), 10)[0]
        np.testing.assert_array_equal(one.items, b_items[r][b_items[r] >= 0])
        np.testing.assert_allclose(one.scores, b_scores[r][b_items[r] >= 0], rtol=1e-5, atol=1e-6)
    r = client.post("/admin/reload", json={"artifact": str(path)})
    assert r.status_code == 200, r.text
    ids = loaded.dataset_.items["item_id"].to_numpy()
    index_of = {i: k for k, i in enumerate(ids.tolist())}
    for u in USERS[:3]:
        uid = str(loaded.dataset_.user_ids.ids[u].item())
        # twice: the second answer's cache channel reads the first answer (the service's result store)
        first = client.post("/recommend", json={"user_id": uid, "k": 10, "context": {"time": NOW}}).json()
        # what the first answer left in the service's result store: its ranked-but-unshown tail
        keys, scores = svc.results.get(uid)
        cached = [(svc.current.indices_of_keys(keys), scores)]
        assert len(keys) and not set(cached[0][0].tolist()) & {index_of[it["item_id"]] for it in first["items"]}
        body = client.post("/recommend", json={"user_id": uid, "k": 10, "context": {"time": NOW}}).json()
        assert body["model_version"].startswith(name + "@")
        expect = loaded.run(np.array([u]), 10, context=RecallContext(time=NOW), state=RequestState(cached=cached))[0]
        assert [it["item_id"] for it in body["items"]] == ids[expect.items].tolist()
        np.testing.assert_allclose([it["score"] for it in body["items"]], expect.scores, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", RANKERS.names())
def test_every_ranker_in_a_served_funnel(name, world, server):
    ds, split = world
    funnel = FunnelBuilder(_config(rank_model=name)).fit(ds, split.train, labels=split.valid)
    assert type(funnel.ranker_.model_).registered_name == name
    _served_funnel_contract(funnel, f"ranker-{name}", server)


@pytest.mark.parametrize("name", RECALL_CHANNELS.names())
def test_every_recall_channel_in_a_served_funnel(name, world, server):
    ds, split = world
    chans = [{"name": "hot", "n": 20}]
    if name != "hot":
        chans.append({"name": name, "n": 30, "params": CHANNEL_PARAMS.get(name, {})})
    funnel = FunnelBuilder(_config(channels=chans)).fit(ds, split.train, labels=split.valid)
    batch = funnel.channels_[name].recall(USERS, 30)
    if name != "cache":  # the cache channel recalls only what a request hands it
        assert (batch.items >= 0).any(), f"channel {name} recalled nothing in the contract world"
    _served_funnel_contract(funnel, f"channel-{name}", server)


@pytest.mark.parametrize("backend", VECTOR_INDEXES.names())
def test_every_vector_index_in_a_served_funnel(backend, world, server):
    ds, split = world
    for factory in INDEX_FACTORIES[backend]:  # KeyError: a new backend needs its factory strings here
        params = {**CHANNEL_PARAMS["vector"], "index_factory": factory}
        chans = [{"name": "hot", "n": 20}, {"name": "vector", "n": 30, "params": params}]
        funnel = FunnelBuilder(_config(channels=chans)).fit(ds, split.train, labels=split.valid)
        assert funnel.channels_["vector"].index_.index.engine_ == backend
        _served_funnel_contract(funnel, f"index-{backend}-{factory.replace(',', '_')}", server)
