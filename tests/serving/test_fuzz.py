"""Property-based fuzzing of the client-facing bodies (#14): whatever a client sends to
/recommend, /feedback and /similar, the answer is < 500 and the server stays healthy.

Bodies come from hypothesis: arbitrary JSON (nested, huge and negative ints, 1e308 floats,
NaN/Infinity tokens, lone UTF-16 surrogates and NULs escaped as JSON allows) and near-valid
bodies (the real field names with values of every type), sent as raw bytes over real HTTP to a
server whose state is in SQLite (where an out-of-range int used to be an OverflowError)."""

from __future__ import annotations

import json

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from funnelrec.pipeline.service import RecommenderService, ServiceConfig
from funnelrec.serving.app import create_app

# (allow_subnormal=False: a library in the process sets flush-to-zero, which hypothesis detects)
# every code point, surrogates and NUL included; json.dumps(ensure_ascii=True) escapes them
TEXT = st.text(st.characters(codec=None, min_codepoint=0, max_codepoint=0x10FFFF), max_size=40)
INTS = st.one_of(st.integers(-(2**70), 2**70),
                 st.sampled_from([0, -1, 2**63, 2**63 - 1, -(2**63) - 1, 2**64, 2**1100, 10**12, 1_700_000_000_000]))
FLOATS = st.one_of(st.floats(allow_nan=True, allow_infinity=True, allow_subnormal=False), st.sampled_from([1e30, -1e308, 5e-324]))
SCALARS = st.one_of(st.none(), st.booleans(), INTS, FLOATS, TEXT)
JSON = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                      st.dictionaries(TEXT, inner, max_size=4)), max_leaves=12)
# biased towards valid values, so that a fully valid body with one bad field is common
ID = st.one_of(st.sampled_from(["196", "1", "50", "", " ", "x" * 200]), st.integers(0, 2000), TEXT, INTS, JSON)
TYPES = st.one_of(st.sampled_from(["impression", "click", "like", "watch_time", "purchase", "follow", "buy"]),
                  TEXT, JSON)
EVENT = st.fixed_dictionaries({"item_id": ID, "type": TYPES},
                              optional={"value": st.one_of(FLOATS, INTS, JSON), "ts": st.one_of(INTS, FLOATS, JSON),
                                        "extra": JSON})
FEEDBACK = st.one_of(JSON, st.fixed_dictionaries(
    {"user_id": ID, "events": st.one_of(st.lists(EVENT, max_size=5), JSON)},
    optional={"request_id": st.one_of(TEXT, JSON)}))
CONTEXT = st.one_of(JSON, st.fixed_dictionaries({}, optional={"time": st.one_of(INTS, FLOATS, JSON),
                                                              "device": ID, "region": ID, "anything": JSON}))
RECOMMEND = st.one_of(JSON, st.fixed_dictionaries(
    {"user_id": ID},
    optional={"k": st.one_of(INTS, JSON), "context": CONTEXT, "debug": JSON, "explain": JSON,
              "exclude": st.one_of(st.lists(ID, max_size=5), JSON)}))


def _raw(body) -> bytes:
    # allow_nan: NaN/Infinity tokens are not JSON and must be a 422 too
    return json.dumps(body, ensure_ascii=True, allow_nan=True).encode()


@pytest.fixture(scope="module")
def client(fitted_funnel, serve, tmp_path_factory):
    svc = RecommenderService(fitted_funnel, ServiceConfig(state_dir=str(tmp_path_factory.mktemp("fuzz_state")),
                                                          eventlog_synchronous="NORMAL"))
    with serve(create_app(svc)) as url, httpx.Client(base_url=url, timeout=30) as c:
        yield c
    svc.close()


def _post(client: httpx.Client, path: str, body) -> httpx.Response:
    r = client.post(path, content=_raw(body), headers={"content-type": "application/json"})
    assert r.status_code < 500, f"{path} {r.status_code} for {_raw(body)[:300]!r}: {r.text[:300]}"
    return r


FUZZ = settings(max_examples=800, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@FUZZ
@given(body=RECOMMEND)
def test_recommend_bodies_never_5xx(client, body):
    r = _post(client, "/recommend", body)
    assert r.status_code in (200, 400, 403, 422), r.text  # an answer, or a named refusal
    assert ("items" in r.json()) if r.status_code == 200 else r.json()["detail"]


@FUZZ
@given(body=FEEDBACK)
def test_feedback_bodies_never_5xx(client, body):
    r = _post(client, "/feedback", body)
    assert r.status_code in (200, 400, 422), r.text
    assert ("logged" in r.json()) if r.status_code == 200 else r.json()["detail"]


@settings(max_examples=400, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(item=st.one_of(TEXT, INTS.map(str)), k=st.one_of(INTS.map(str), TEXT), channel=st.one_of(st.none(), TEXT))
def test_similar_params_never_5xx(client, item, k, channel):
    params = {"item_id": item, "k": k} | ({} if channel is None else {"channel": channel})
    r = client.get("/similar", params={p: v.encode("utf-8", "surrogatepass") for p, v in params.items()})
    assert r.status_code < 500, f"/similar {r.status_code} for {params!r}: {r.text[:300]}"


def test_known_bad_inputs_are_4xx_and_the_server_stays_healthy(client):
    cases = [
        ("/feedback", {"user_id": "196", "events": [{"item_id": 1, "type": "click", "ts": 2**63}]}),
        ("/feedback", {"user_id": "196", "events": [{"item_id": 1, "type": "click", "ts": 10**30}]}),
        ("/feedback", {"user_id": "\ud800", "events": [{"item_id": 1, "type": "click"}]}),
        ("/feedback", {"user_id": "196", "events": [{"item_id": "\ud800", "type": "click"}]}),
        ("/feedback", {"user_id": "196", "events": [{"item_id": 1, "type": "watch_time", "value": float("nan")}]}),
        ("/recommend", {"user_id": "\ud800"}),
        ("/recommend", {"user_id": "196", "k": 2**64}),
        ("/recommend", {"user_id": "196", "context": {"time": 2**63}}),
        ("/recommend", {"user_id": "196", "context": {"time": 1_700_000_000_000}}),  # milliseconds
        ("/feedback", {"user_id": "196", "events": [{"item_id": 1, "type": "click", "ts": 1_700_000_000_000}]}),
        ("/feedback", {"user_id": "196", "events": [{"item_id": 1, "type": "watch_time", "value": 2**1100}]}),
        ("/feedback", {"user_id": "196", "events": [{"item_id": 1, "type": "watch_time", "value": -3.0}]}),
    ]
    for path, body in cases:
        r = _post(client, path, body)
        assert 400 <= r.status_code < 500, (path, body, r.status_code, r.text)
    assert client.get("/health").json()["status"] == "ok"
    ok = client.post("/recommend", json={"user_id": "196", "k": 5})
    assert ok.status_code == 200 and len(ok.json()["items"]) == 5
