"""The web console (#13 items 4–5) driven in real headless Chromium (Debian's /usr/bin/chromium
through playwright-python; no browser download) against a real uvicorn server on a small trained
funnel (tests/console_world.py: MovieLens-100k's first 150 users × 300 items).

What a bug would break: the login gate; the User page's funnel (its filter stage must list what
the user was just shown, the final list must change accordingly); feedback sent from the page
reaches the event log under the page's request id and appears in the live history, as does
feedback from another client; the Experiments page's numbers against scipy / statsmodels on the
event log read independently (sqlite3); the Item page against /similar; the Models page against
/metrics and /health, and a reload in its history; the Offline reports page shows the files."""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
from collections import defaultdict
from pathlib import Path

import httpx
import numpy as np
import pytest
from scipy import stats as sps

from console_world import fit_funnel, platform, send_traffic, tiny_ml100k
from funnelrec.pipeline.service import RecommenderService, ServiceConfig
from funnelrec.serving.app import create_app

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed "
                                "(apt-get install chromium chromium-driver; .ci/run does)")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
TOKEN = "console-test-token"
FRESH_USER = "7"  # gets no background traffic: its filter stage holds only what the test showed it
WAIT_MS = 15_000  # an upper bound for htmx to poll/swap, not a timed assertion


@pytest.fixture(scope="module")
def world(tmp_path_factory, serve):
    tmp = tmp_path_factory.mktemp("console")
    ds, split = tiny_ml100k()
    funnel = fit_funnel(ds, split)
    reports = tmp / "reports"
    reports.mkdir()
    report = {"protocol": "RS 0.8/0.1/0.1", "dataset": "ml100k-tiny", "users": 149,
              "channels": {"itemcf": {"recall@10": 0.1234, "ndcg@10": 0.2345, "recall@60": 0.4},
                           "ease": {"recall@10": 0.1357, "ndcg@10": 0.2468, "recall@60": 0.45}},
              "merged": {"size": 120, "recall@120": 0.61}, "funnel": {"recall@10": 0.1111, "ndcg@10": 0.2222}}
    (reports / "funnel.json").write_text(json.dumps(report))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(3, 2))
    ax.plot([0, 1], [0, 1])
    fig.savefig(reports / "roc_ctr.png")
    plt.close(fig)
    state = tmp / "state"
    svc = RecommenderService(funnel, ServiceConfig(state_dir=str(state)), experiments=platform(tmp))
    import os

    os.environ["FUNNELREC_REPORTS_DIR"] = str(reports)
    with serve(create_app(svc, admin_token=TOKEN)) as url:
        users = [str(u) for u in ds.users["user_id"].to_list() if str(u) != FRESH_USER]
        send_traffic(url, users)
        yield {"url": url, "svc": svc, "funnel": funnel, "tmp": tmp, "events_db": state / "events.db",
               "report": report}
    os.environ.pop("FUNNELREC_REPORTS_DIR", None)


@pytest.fixture(scope="module")
def page(world, tmp_path_factory):
    from playwright.sync_api import sync_playwright

    profile = tmp_path_factory.mktemp("chromium-profile")  # a fresh --user-data-dir
    with sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(str(profile), executable_path=CHROMIUM, headless=True, args=ARGS)
        pg = ctx.new_page()
        pg.set_default_timeout(WAIT_MS)
        # the login gate: a page asks for the token, a wrong one is refused, the right one lets in
        pg.goto(world["url"] + "/console/experiments")
        assert "/console/login" in pg.url
        pg.fill("#token", "wrong")
        pg.click("#login")
        assert "wrong admin token" in pg.inner_text("main")
        pg.fill("#token", TOKEN)
        pg.click("#login")
        pg.wait_for_url(re.compile(r".*/console/experiments$"))
        assert all("console-test-token" not in c["value"] for c in ctx.cookies())  # an HMAC, not the token
        yield pg
        ctx.close()


def test_console_is_behind_the_admin_token(world):
    url = world["url"]
    r = httpx.get(f"{url}/console/user?user_id=1")
    assert r.status_code == 303 and r.headers["location"].startswith("/console/login")
    r = httpx.get(f"{url}/console/user/history?user_id=1", headers={"HX-Request": "true"})
    assert r.status_code == 403 and r.headers["hx-redirect"] == "/console/login"
    def logged() -> int:
        with sqlite3.connect(world["events_db"]) as db:
            return db.execute("SELECT count(*) FROM events WHERE user_id = '1'").fetchone()[0]

    before = logged()
    assert httpx.post(f"{url}/console/user/feedback", data={"user_id": "1", "item_id": "1", "type": "click"}
                      ).status_code == 303
    assert logged() == before  # nothing logged without the token
    r = httpx.get(f"{url}/console/user?user_id=1", headers={"X-Admin-Token": TOKEN})
    assert r.status_code == 200 and "The funnel of this request" in r.text
    assert httpx.get(f"{url}/console/static/htmx.min.js").status_code == 200  # the login page needs it
    assert httpx.get(f"{url}/console/static/..%2Fviews.py").status_code == 404


def _final_items(pg) -> list[str]:
    return pg.eval_on_selector_all('[data-testid="final-item"]', "rows => rows.map(r => r.dataset.item)")


def test_user_page_funnel_feedback_and_live_history(world, page):
    url, svc, funnel = world["url"], world["svc"], world["funnel"]
    page.goto(url + "/console/user")
    page.fill("#user_id", FRESH_USER)
    page.click("#lookup-go")
    page.wait_for_selector("#stage-final")
    first = _final_items(page)
    assert len(first) == 10 and len(set(first)) == 10
    # recall per channel: each channel's own answer for this user (the channel called directly)
    uidx = funnel.dataset_.user_ids.index(FRESH_USER)
    for spec in funnel.config.recall.channels:
        got = funnel.channels_[spec.name].recall(np.array([uidx]), spec.n)
        assert page.inner_text(f'[data-testid="recall-n-{spec.name}"]') == str(int((got.items[0] >= 0).sum()))
    merged = int(page.inner_text('[data-testid="merged-n"]'))
    assert 10 <= merged <= 120
    assert page.inner_text('[data-testid="filtered-n"]') == "0"  # nothing shown to this user yet
    assert int(page.inner_text('[data-testid="prerank-cut"]')) == max(0, merged - 50)  # prerank.keep = 50
    # the user is shown the 10 items (impressions through the public API): the next request's
    # filter stage removes exactly those, and the final list no longer holds them
    r = httpx.post(f"{url}/feedback", json={"user_id": FRESH_USER, "events": [
        {"item_id": i, "type": "impression"} for i in first]})
    assert r.status_code == 200 and r.json()["impressions"] == 10
    page.reload()
    page.wait_for_selector("#stage-final")
    removed = page.eval_on_selector_all('[data-testid="filtered-item"]', "rows => rows.map(r => r.dataset.item)")
    assert set(first) <= set(removed)
    assert int(page.inner_text('[data-testid="filtered-n"]')) >= 10
    second = _final_items(page)
    assert len(second) == 10 and not set(second) & set(first)
    # a click from the page: logged under this page's request id, then shown in the live history
    rid = page.inner_text('[data-testid="request-id"]')
    row = page.locator(f'[data-testid="final-item"][data-item="{second[0]}"]')
    row.locator('[data-testid="fb-click"]').click()
    page.wait_for_selector('[data-testid="feedback-result"]:has-text("logged 1 click")')
    page.wait_for_selector(f'#history tr[data-item="{second[0]}"][data-type="click"]')
    with sqlite3.connect(world["events_db"]) as db:
        rows = db.execute("SELECT request_id, item_id, type, experiments FROM events WHERE user_id = ? AND type = 'click'",
                          (FRESH_USER,)).fetchall()
    assert [(r[0], r[1], r[2]) for r in rows] == [(rid, second[0], "click")]
    assert json.loads(rows[0][3]) == svc.experiments.assign(FRESH_USER).record
    # feedback from another client appears too, without reloading the page (htmx polls)
    httpx.post(f"{url}/feedback", json={"user_id": FRESH_USER, "events": [{"item_id": second[1], "type": "like"}]}
               ).raise_for_status()
    page.wait_for_selector(f'#history tr[data-item="{second[1]}"][data-type="like"]')
    # the experiment assignment shown is the platform's
    for layer, a in svc.experiments.assign(FRESH_USER).record.items():
        assert page.inner_text(f'[data-testid="variant-{layer}"]') == a["variant"]


def _log_per_user(db_path: Path, experiment: str) -> dict[str, dict[str, dict[str, float]]]:
    """variant → user → {clicks, impressions}, read from the SQLite log without funnelrec."""
    out: dict[str, dict[str, dict[str, float]]] = defaultdict(lambda: defaultdict(lambda: {"click": 0.0, "impression": 0.0}))
    with sqlite3.connect(db_path) as db:
        for user, kind, exp in db.execute("SELECT user_id, type, experiments FROM events WHERE experiments IS NOT NULL"):
            for a in json.loads(exp).values():
                if a.get("experiment") == experiment and kind in ("click", "impression"):
                    out[a["variant"]][user][kind] += 1
    return out


def _cell(pg, exp: str, metric: str, variant: str, field: str, attr: str = "data-raw") -> float:
    sel = f'#exp-{exp} tr[data-metric="{metric}"][data-variant="{variant}"] [data-field="{field}"]'
    return float(pg.get_attribute(sel, attr))


def test_experiment_page_numbers_match_scipy_on_the_log(world, page):
    from statsmodels.stats.proportion import proportions_ztest

    page.goto(world["url"] + "/console/experiments")
    per = _log_per_user(world["events_db"], "hot_quota")
    a = np.array([u["click"] for u in per["control"].values()])
    b = np.array([u["click"] for u in per["hot_30"].values()])
    assert len(a) > 30 and len(b) > 30
    assert int(page.inner_text('#exp-hot_quota tr[data-metric="clicks"][data-variant="control"] [data-field="users"]')) == len(a)
    assert int(page.inner_text('#exp-hot_quota tr[data-metric="clicks"][data-variant="hot_30"] [data-field="users"]')) == len(b)
    # clicks per user: Welch's t-test
    welch = sps.ttest_ind(b, a, equal_var=False)
    assert _cell(page, "hot_quota", "clicks", "control", "value") == pytest.approx(a.mean(), rel=1e-9)
    assert _cell(page, "hot_quota", "clicks", "hot_30", "value") == pytest.approx(b.mean(), rel=1e-9)
    assert _cell(page, "hot_quota", "clicks", "hot_30", "abs_lift") == pytest.approx(b.mean() - a.mean(), rel=1e-9)
    assert _cell(page, "hot_quota", "clicks", "hot_30", "p") == pytest.approx(welch.pvalue, rel=1e-6)
    ci = welch.confidence_interval(0.95)
    assert _cell(page, "hot_quota", "clicks", "hot_30", "ci", "data-lo") == pytest.approx(ci.low, rel=1e-6)
    assert _cell(page, "hot_quota", "clicks", "hot_30", "ci", "data-hi") == pytest.approx(ci.high, rel=1e-6)
    assert welch.pvalue < 0.05  # the world's hot_30 arm clicks more: the page must show a real effect
    # clicked at least once: the pooled two-proportion z-test
    ca, cb = int((a > 0).sum()), int((b > 0).sum())
    _, pz = proportions_ztest([cb, ca], [len(b), len(a)])
    assert _cell(page, "hot_quota", "clicked", "hot_30", "p") == pytest.approx(pz, rel=1e-6)
    # SRM: χ² of the arms' user counts against the configured 50/50 split
    srm = sps.chisquare([len(a), len(b)], [(len(a) + len(b)) / 2] * 2)
    text = page.inner_text("#exp-hot_quota [data-testid=srm]")
    assert f"users [{len(a)}, {len(b)}]" in text and ("mismatch" in text) == (srm.pvalue < 0.001)
    # the ramp of genre_cap: at its second step, 30 % of the layer live
    steps = page.locator("#exp-genre_cap [data-testid=ramp-step]").all_inner_texts()
    assert [s.split(":")[0] for s in steps] == ["1", "2", "3"] and "current" in steps[1] and "done" in steps[0]


def test_item_page_agrees_with_similar(world, page):
    url = world["url"]
    item = "50"
    page.goto(f"{url}/console/item?item_id={item}&k=8")
    for ch in ("itemcf", "swing", "ease", "vector"):
        api = httpx.get(f"{url}/similar", params={"item_id": item, "k": 8, "channel": ch}).json()
        shown = page.eval_on_selector_all(f'[data-channel="{ch}"] [data-testid="neighbour"]',
                                          "rows => rows.map(r => r.dataset.item)")
        assert shown == [str(i["item_id"]) for i in api["items"]] and len(shown) > 0, ch
    api = httpx.get(f"{url}/similar", params={"item_id": item, "k": 8}).json()
    shown = page.eval_on_selector_all('[data-testid="similar"]', "rows => rows.map(r => r.dataset.item)")
    assert shown == [str(i["item_id"]) for i in api["items"]]
    hist = world["funnel"].stats_.history.tocsc()
    idx = world["funnel"].dataset_.item_ids.index(item)
    assert page.inner_text('[data-testid="fit-consumptions"]') == str(hist.indptr[idx + 1] - hist.indptr[idx])
    assert "Star Wars" in page.inner_text("#attributes")  # ml-100k item 50's title


def _metric(text: str, name: str, labels: str) -> float:
    m = re.search(rf"^{re.escape(name)}\{{{re.escape(labels)}\}} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def test_serving_page_against_metrics_and_a_reload(world, page):
    url = world["url"]
    artifact = world["tmp"] / "funnel-v2"
    world["funnel"].save(artifact)
    r = httpx.post(f"{url}/admin/reload", json={"artifact": str(artifact)}, headers={"X-Admin-Token": TOKEN},
                   timeout=60)
    assert r.status_code == 200, r.text
    version = r.json()["model_version"]
    page.goto(url + "/console/serving")
    text = httpx.get(f"{url}/metrics").text  # read after the page: /metrics itself is not a /recommend
    assert page.inner_text('[data-testid="model-version"]') == version == httpx.get(f"{url}/health").json()["model_version"]
    reloads = page.locator('[data-testid="reload"]').all_inner_texts()
    assert len(reloads) == 2 and version in reloads[0] and "initial" in reloads[1]
    sel = '#traffic tr[data-route="/recommend"] [data-field="total"]'
    assert int(page.inner_text(sel)) == int(_metric(text, "funnelrec_http_requests_total",
                                                    'method="POST",path="/recommend",status="200"'))
    n_total = _metric(text, "funnelrec_stage_latency_ms_count", 'stage="total"')
    head = page.inner_text('[data-stage="total"] h3')
    assert f"n={int(n_total)}" in head and n_total >= 149
    # the page refreshes itself (htmx): a request sent now shows up in its counts
    before = int(page.inner_text(sel))
    httpx.post(f"{url}/recommend", json={"user_id": "1", "k": 5}).raise_for_status()
    page.wait_for_function(f"document.querySelector('{sel}').innerText == '{before + 1}'")
    assert page.inner_text('[data-testid="qps"]') not in ("", "–")


def test_reports_page_shows_the_last_evaluation_and_plots(world, page):
    page.goto(world["url"] + "/console/reports")
    rows = page.locator("#funnel-report tr[data-channel]").all_inner_texts()
    assert any("itemcf" in r and "0.1234" in r and "0.2345" in r for r in rows)
    assert "recall@10 0.1111" in page.inner_text('[data-testid="funnel-metrics"]')
    width = page.eval_on_selector('img[alt="roc_ctr.png"]', "img => img.complete && img.naturalWidth")
    assert width and width > 100
