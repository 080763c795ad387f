"""The live catalogue over real HTTP (issue #10 item 3): POST /items, DELETE /items/{id},
POST /items/{id}/hide|unhide, POST /users, DELETE /users/{id}, and /recommend's exclude_ids and
attribute filters, on a hand-built catalogue whose answers can be computed by hand; plus the
`funnelrec catalogue` CLI against the same server."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from urllib.parse import quote

import httpx
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from funnelrec.data.dataset import Dataset
from funnelrec.data.schema import Schema
from funnelrec.pipeline.builder import FunnelBuilder
from funnelrec.pipeline.config import FunnelConfig
from funnelrec.pipeline.service import RecommenderService
from funnelrec.serving.app import create_app

DAY = 86400
T0 = 1_000_000_000  # the training "now"
T = T0 + 30 * DAY  # request time
TAU = 365 * DAY  # the fresh channel's default τ
TOKEN = "s3cret"

# items 1..6: 1, 2 are noir by director dX; 3, 4, 5 comedy by dY; 6 drama by dZ
ITEMS = pl.DataFrame({
    "item_id": [1, 2, 3, 4, 5, 6],
    "genres": [["noir"], ["noir"], ["comedy"], ["comedy"], ["comedy", "drama"], ["drama"]],
    "directors": [["dX"], ["dX"], ["dY"], ["dY"], ["dY"], ["dZ"]],
    "publish_time": [T0 - 9 * DAY, T0 - 8 * DAY, T0 - 7 * DAY, T0 - 6 * DAY, T0 - 5 * DAY, T0 - 4 * DAY],
})
# user 1 watched only noir by dX; users 2, 3 comedy by dY (so popularity is not all on noir)
INTER = pl.DataFrame({"user_id": [1, 1, 2, 2, 2, 3, 3], "item_id": [1, 2, 3, 4, 5, 3, 6],
                      "timestamp": [T0 - 100, T0 - 90, T0 - 80, T0 - 70, T0 - 60, T0 - 50, T0]})


def expected_fresh(publish: int) -> float:
    return math.exp(-(T - publish) / TAU)


@pytest.fixture(scope="module")
def hand_funnel():
    schema = Schema(interactions={"user_id": "categorical", "item_id": "categorical", "timestamp": "time"},
                    users={"user_id": "categorical"},
                    items={"item_id": "categorical", "genres": "multi", "directors": "multi", "publish_time": "time"})
    ds = Dataset.build("hand", INTER, schema, items=ITEMS)
    cfg = FunnelConfig.from_dict({
        "recall": {"channels": [{"name": "fresh", "n": 20}, {"name": "tag", "n": 20},
                                {"name": "author", "n": 20, "params": {"k_similar": 0, "column": "directors"}}],
                   "merge": {"total": 60}}})
    return FunnelBuilder(cfg).fit(ds, ds.interactions)  # no labels: no ranker, merge order


@pytest.fixture(scope="module")
def server(serve, hand_funnel):
    svc = RecommenderService(hand_funnel)
    with serve(create_app(svc, admin_token=TOKEN)) as url, httpx.Client(base_url=url, timeout=30) as client:
        yield client, svc
    svc.close()


def recommend(client, user="1", k=20, **body):
    r = client.post("/recommend", json={"user_id": user, "k": k, "context": {"time": T}, **body})
    assert r.status_code == 200, r.text
    return r.json()


def ids(answer):
    return [it["item_id"] for it in answer["items"]]


ADMIN = {"X-Admin-Token": TOKEN}


def test_an_upserted_item_is_recommended_on_the_next_request(server):
    client, _ = server
    before = recommend(client)
    assert 101 not in ids(before)
    pub = T - 3 * 3600
    r = client.post("/items", headers=ADMIN, json={"items": [
        {"item_id": 101, "attributes": {"genres": ["noir"], "directors": ["dX"], "publish_time": pub}}]})
    assert r.status_code == 200, r.text
    after = recommend(client)
    item = next(it for it in after["items"] if it["item_id"] == 101)
    # the newest item heads the fresh list, and user 1's noir / dX profile reaches it by tag and author
    assert set(item["channels"]) == {"fresh", "tag", "author"}
    assert item["recall_scores"]["fresh"] == pytest.approx(expected_fresh(pub), rel=1e-6)
    assert ids(after)[0] == 101  # merge order: fresh first, and it is the freshest item
    # a user whose profile does not match gets it from fresh only
    other = next(it for it in recommend(client, user="2")["items"] if it["item_id"] == 101)
    assert other["channels"] == ["fresh"]
    assert after["model_version"].endswith(f"catalogue@{r.json()['catalogue_version']}")


def test_hidden_deleted_and_expired_items_are_never_returned(server):
    client, _ = server
    assert 6 in ids(recommend(client))
    assert client.post("/items/6/hide", headers=ADMIN).status_code == 200
    assert 6 not in ids(recommend(client)) and 6 not in ids(recommend(client, user="3"))
    assert client.post("/items/6/unhide", headers=ADMIN).status_code == 200
    assert 6 in ids(recommend(client))
    # an expiry time: returned before it, never from it on (the request's context.time decides)
    r = client.post("/items", headers=ADMIN, json={"items": [{"item_id": 5, "expires_at": T + 10}]})
    assert r.status_code == 200, r.text
    assert 5 in ids(recommend(client))
    late = client.post("/recommend", json={"user_id": "1", "k": 20, "context": {"time": T + 10}}).json()
    assert 5 not in ids(late)
    # delete: gone for good; an id nobody knows is a 404
    assert client.delete("/items/4", headers=ADMIN).status_code == 200
    assert 4 not in ids(recommend(client)) and 4 not in ids(recommend(client, user="2"))
    r = client.delete("/items/nope", headers=ADMIN)
    assert r.status_code == 404 and "nope" in r.json()["detail"]


def test_attribute_filters_and_exclude_ids(server):
    client, _ = server
    full = recommend(client, user="3", k=50)
    genres = {r["item_id"]: r["genres"] for r in ITEMS.iter_rows(named=True)}
    genres.update({101: ["noir"]})
    for want in (["drama"], ["comedy", "noir"]):
        got = recommend(client, user="3", k=50, filters={"genres": want})
        # filtering happens before ranking; without a ranker the answer is the unfiltered one
        # minus the items with none of the listed genres, in the same order
        hand = [i for i in ids(full) if set(genres[i]) & set(want)]
        assert ids(got) == hand and hand
    directors = {r["item_id"]: r["directors"] for r in ITEMS.iter_rows(named=True)} | {101: ["dX"]}
    both = recommend(client, user="3", k=50, filters={"genres": ["comedy", "drama"], "directors": ["dY"]})
    assert ids(both) == [i for i in ids(full) if set(genres[i]) & {"comedy", "drama"} and "dY" in directors[i]]
    assert ids(recommend(client, user="3", k=50, filters={"genres": ["comedy"], "directors": ["dZ"]})) == []
    r = client.post("/recommend", json={"user_id": "3", "filters": {"colour": ["red"]}})
    assert r.status_code == 422 and "'colour'" in r.json()["detail"]
    excl = recommend(client, user="3", k=50, exclude_ids=[ids(full)[0]], exclude=[ids(full)[1]])
    assert ids(excl) == ids(full)[2:]


def test_catalogue_routes_need_the_admin_token_and_valid_rows(server):
    client, _ = server
    assert client.post("/items", json={"items": [{"item_id": 900}]}).status_code == 403
    assert client.delete("/items/1").status_code == 403
    assert client.post("/users", json={"users": [{"user_id": "9"}]}).status_code == 403
    r = client.post("/users", headers=ADMIN, json={"users": [{"user_id": "9", "attributes": {"shoe_size": 44}}]})
    assert r.status_code == 422 and "shoe_size" in r.json()["detail"]
    r = client.post("/items", headers=ADMIN, json={"items": [{"item_id": 900, "attributes": {"colour": "red"}}]})
    assert r.status_code == 422 and "colour" in r.json()["detail"]
    r = client.post("/items", headers=ADMIN, json={"items": [{"item_id": "abc"}]})  # the catalogue's ids are ints
    assert r.status_code == 422 and "item_id" in r.json()["detail"]
    assert 900 not in ids(recommend(client))


def test_deleted_user_is_served_as_unknown(server):
    client, _ = server
    assert recommend(client, user="2")["cold_start"] is False
    assert client.post("/users", headers=ADMIN, json={"users": [{"user_id": "2", "attributes": {}}]}).status_code == 200
    # fresh history of the user: a deleted user's is not read either
    assert client.post("/feedback", json={"user_id": "2", "events": [{"item_id": 1, "type": "click", "ts": T}]}
                       ).status_code == 200
    assert client.delete("/users/2", headers=ADMIN).status_code == 200
    gone = recommend(client, user="2")
    assert gone["cold_start"] is True
    # an unknown user gets the non-personalized channels only: here fresh alone
    assert all(it["channels"] == ["fresh"] for it in gone["items"])
    assert client.delete("/users/nobody", headers=ADMIN).status_code == 404
    client.post("/users", headers=ADMIN, json={"users": [{"user_id": "2"}]})  # back again
    assert recommend(client, user="2")["cold_start"] is False


def test_a_click_on_a_new_item_changes_the_next_answer(server):
    """The loop with the real-time history: user 3 (comedy, drama) clicks an item upserted a
    moment ago (noir by dX); the next answer no longer offers that item (consumed), and the tag
    and author channels now reach the older noir / dX items through it."""
    client, _ = server
    before = {it["item_id"]: it["channels"] for it in recommend(client, user="3")["items"]}
    assert "tag" not in before.get(1, []) and "author" not in before.get(1, [])
    r = client.post("/items", headers=ADMIN, json={"items": [
        {"item_id": 505, "attributes": {"genres": ["noir"], "directors": ["dX"], "publish_time": T - 30}}]})
    assert r.status_code == 200, r.text
    assert 505 in ids(recommend(client, user="3"))
    r = client.post("/feedback", json={"user_id": "3", "events": [{"item_id": 505, "type": "click", "ts": T}]})
    assert r.status_code == 200, r.text
    after = {it["item_id"]: it["channels"] for it in recommend(client, user="3")["items"]}
    assert 505 not in after
    assert {"tag", "author"} <= set(after[1]) and {"tag", "author"} <= set(after[2])


def test_cli_upserts_hides_and_reports_errors_in_one_line(server, tmp_path):
    from typer.testing import CliRunner

    from funnelrec.cli import app

    client, _ = server
    url = str(client.base_url)
    f = tmp_path / "new.csv"
    f.write_text(f"item_id,genres,directors,publish_time\n202,noir|drama,dX,{T - 60}\n")
    run = CliRunner().invoke(app, ["catalogue", "upsert", "--items", str(f), "--url", url, "--token", TOKEN,
                                   "--multi", "genres,directors"])
    assert run.exit_code == 0, run.output
    item = next(it for it in recommend(client)["items"] if it["item_id"] == 202)
    assert item["recall_scores"]["fresh"] == pytest.approx(expected_fresh(T - 60), rel=1e-6)
    assert "tag" in item["channels"]
    run = CliRunner().invoke(app, ["catalogue", "hide", "--items", str(f), "--url", url, "--token", TOKEN])
    assert run.exit_code == 0, run.output
    assert 202 not in ids(recommend(client))
    # errors: no token (403), a missing file, a file without item_id — exit 2, one line
    bad = tmp_path / "bad.csv"
    bad.write_text("id\n1\n")
    for args in (["hide", "--items", str(f), "--url", url], ["upsert", "--items", str(tmp_path / "none.csv"),
                 "--url", url], ["upsert", "--items", str(bad), "--url", url, "--token", TOKEN]):
        p = subprocess.run([sys.executable, "-m", "funnelrec.cli", "catalogue", *args], capture_output=True,
                           text=True, timeout=120)
        lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
        assert p.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:"), p.stderr
    assert 202 not in ids(recommend(client))


# ------------------------------------------------------------------ whatever a client sends: < 500
TEXT = st.text(st.characters(codec=None, min_codepoint=0, max_codepoint=0x10FFFF), max_size=12)
INTS = st.one_of(st.integers(-(2**70), 2**70), st.sampled_from([0, -1, 2**63, 2**64, T, 101]))
SCALAR = st.one_of(st.none(), st.booleans(), INTS, st.floats(allow_subnormal=False), TEXT)
JSON = st.recursive(SCALAR, lambda x: st.one_of(st.lists(x, max_size=3), st.dictionaries(TEXT, x, max_size=3)),
                    max_leaves=8)
COLUMN = st.one_of(st.sampled_from(["genres", "directors", "publish_time", "item_id", "item_idx", "colour"]), TEXT)
ITEM = st.fixed_dictionaries({"item_id": st.one_of(INTS, TEXT, JSON)},
                             optional={"attributes": st.one_of(st.dictionaries(COLUMN, JSON, max_size=3), JSON),
                                       "expires_at": st.one_of(INTS, st.floats(allow_subnormal=False), JSON),
                                       "other": JSON})
FUZZ = settings(max_examples=150, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def sqlite_client(serve, hand_funnel, tmp_path_factory):
    from funnelrec.pipeline.service import ServiceConfig

    svc = RecommenderService(hand_funnel, ServiceConfig(state_dir=str(tmp_path_factory.mktemp("cat_fuzz"))))
    with serve(create_app(svc)) as url, httpx.Client(base_url=url, timeout=30) as client:
        yield client
    svc.close()


def _raw(body) -> bytes:
    return json.dumps(body, ensure_ascii=True, allow_nan=True).encode()


@FUZZ
@given(body=st.one_of(JSON, st.fixed_dictionaries({"items": st.one_of(st.lists(ITEM, max_size=3), JSON)})))
def test_item_bodies_never_5xx_and_the_server_keeps_answering(sqlite_client, body):
    r = sqlite_client.post("/items", content=_raw(body), headers={"content-type": "application/json"})
    assert r.status_code < 500, f"/items {r.status_code} for {_raw(body)[:300]!r}: {r.text[:300]}"
    after = sqlite_client.post("/recommend", json={"user_id": "1", "k": 5, "context": {"time": T}})
    assert after.status_code == 200, after.text  # whatever was accepted, the next answer is served


@FUZZ
@given(filters=st.one_of(JSON, st.dictionaries(COLUMN, st.one_of(st.lists(st.one_of(INTS, TEXT), max_size=3), JSON),
                                               max_size=3)),
       item=st.one_of(TEXT, INTS.map(str)))
def test_filters_and_item_paths_never_5xx(sqlite_client, filters, item):
    r = sqlite_client.post("/recommend", content=_raw({"user_id": "1", "filters": filters}),
                           headers={"content-type": "application/json"})
    assert r.status_code < 500, f"filters {filters!r}: {r.status_code} {r.text[:300]}"
    path = "/items/" + quote(item.encode("utf-8", "surrogatepass"), safe="")
    for method, route in (("DELETE", path), ("POST", path + "/hide"), ("POST", path + "/unhide")):
        r = sqlite_client.request(method, route)
        assert r.status_code < 500, f"{method} {route}: {r.status_code} {r.text[:300]}"


def test_two_worker_processes_see_one_catalogue(hand_funnel, port_factory, tmp_path):
    """`--workers 2 --state-dir`: a hide and an upsert made through whichever worker answers are
    seen by both on their next request (the catalogue lives in the shared SQLite file)."""
    from test_workers import _two_workers

    artifact = hand_funnel.save(tmp_path / "artifact")
    with _two_workers(artifact, tmp_path / "state", port_factory()) as (base, _):
        assert httpx.post(f"{base}/items/6/hide").status_code == 200
        r = httpx.post(f"{base}/items", json={"items": [
            {"item_id": 303, "attributes": {"genres": ["noir"], "directors": ["dX"], "publish_time": T - 1}}]})
        assert r.status_code == 200, r.text
        workers = set()
        for n in range(200):  # a new connection each: the kernel spreads them over both workers
            r = httpx.post(f"{base}/recommend", json={"user_id": "3", "k": 20, "context": {"time": T}})
            workers.add(r.headers["x-funnelrec-worker"])
            got = ids(r.json())
            assert got[0] == 303 and 6 not in got, got
            if len(workers) == 2 and n >= 15:
                break
        assert len(workers) == 2
