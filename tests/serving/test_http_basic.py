"""The HTTP API through a real uvicorn server on a free loopback port."""

import socket
import threading
import time

import httpx
import pytest
import uvicorn

from funnelrec.serving.app import create_app


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def base_url(fitted_funnel):
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(fitted_funnel), host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(200):
        if server.started:
            break
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(5)


def test_recommend_known_user_lists_items_scores_channels(base_url, fitted_funnel, ml100k_split):
    r = httpx.get(f"{base_url}/recommend", params={"user_id": "196", "k": 7})
    assert r.status_code == 200
    body = r.json()
    assert body["cold_start"] is False and len(body["items"]) == 7
    scores = [it["score"] for it in body["items"]]
    assert scores == sorted(scores, reverse=True)
    assert all(set(it["channels"]) <= {"itemcf", "hot"} and it["channels"] for it in body["items"])
    # nothing the user already consumed in training comes back
    seen = set(ml100k_split.train.filter(ml100k_split.train["user_id"] == 196)["item_id"].to_list())
    assert not seen & {it["item_id"] for it in body["items"]}


def test_unknown_user_gets_non_personalized_answer(base_url):
    body = httpx.get(f"{base_url}/recommend", params={"user_id": "no-such-user", "k": 5}).json()
    assert body["cold_start"] is True and "non-personalized" in body["note"]
    assert len(body["items"]) == 5 and all(it["channels"] == ["hot"] for it in body["items"])


@pytest.mark.parametrize("params", [{"user_id": "1", "k": -1}, {"user_id": "1", "k": "ten"}, {"k": 3},
                                    {"user_id": "1", "k": 10_000}])
def test_malformed_query_is_422_naming_the_field(base_url, params):
    r = httpx.get(f"{base_url}/recommend", params=params)
    assert r.status_code == 422
    assert any(e["loc"][-1] in ("k", "user_id") for e in r.json()["detail"])
