"""Screenshots of every console page (docs/console/*.png), taken in real headless Chromium.

    python bench/console_screenshots.py [--out docs/console]

Builds the tests' small served world (tests/console_world.py: MovieLens-100k's first 150 users ×
300 items, a five-channel funnel with a pre-ranker, MMoE ctr+like and a genre cap, two experiment
layers), runs the real offline evaluations of that data into a reports folder (`evaluate funnel` of that
config, `evaluate ctr` of LR with its ROC and reliability PNGs), serves the
app under uvicorn, sends one round of traffic (recommend → impressions → clicks) and a click from
the User page, then captures each page. Needs Debian's chromium (/usr/bin/chromium) and
playwright-python (no `playwright install`: the system browser is used). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
PAGES = [("user", "/console/user?user_id=13"), ("item", "/console/item?item_id=50"),
         ("experiments", "/console/experiments"), ("serving", "/console/serving"), ("reports", "/console/reports")]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "console")
    args = ap.parse_args()
    args.out = args.out.resolve()
    os.environ.setdefault("FUNNELREC_THREADS", "1")
    from playwright.sync_api import sync_playwright

    from conftest import serve_in_thread
    from console_world import CONFIG, fit_funnel, platform, send_traffic, tiny_ml100k
    from funnelrec.eval.ctr import evaluate_ctr
    from funnelrec.pipeline.config import FunnelConfig
    from funnelrec.pipeline.offline import evaluate_funnel
    from funnelrec.pipeline.service import RecommenderService
    from funnelrec.serving.app import create_app

    t0 = time.perf_counter()
    ds, split = tiny_ml100k()
    funnel = fit_funnel(ds, split)
    tmp = Path(tempfile.mkdtemp(prefix="console-shots-"))
    reports = tmp / "reports"
    reports.mkdir()
    (reports / "funnel.json").write_text(json.dumps(evaluate_funnel(ds, FunnelConfig.from_dict(CONFIG), seed=2020)))
    ctr = evaluate_ctr(ds, "lr", seed=2020, plot_dir=reports)  # the ROC + reliability PNGs of `evaluate ctr --plot`
    (reports / "ctr_lr.json").write_text(json.dumps({k: v for k, v in ctr.items() if k != "plots"}, default=str))
    os.chdir(tmp)  # the page then names the default folder, ./reports, not a temporary path
    os.environ.pop("FUNNELREC_REPORTS_DIR", None)
    svc = RecommenderService(funnel, experiments=platform(tmp))
    args.out.mkdir(parents=True, exist_ok=True)
    shots = []
    with serve_in_thread(create_app(svc)) as url:
        sent = send_traffic(url, [str(u) for u in ds.users["user_id"].to_list()])
        with sync_playwright() as p:
            ctx = p.chromium.launch_persistent_context(str(tmp / "profile"), executable_path=CHROMIUM, headless=True,
                                                       args=ARGS, viewport={"width": 1360, "height": 900})
            page = ctx.new_page()
            page.goto(url + "/console/serving")  # the first look of the QPS meter
            for name, path in PAGES:
                page.goto(url + path)
                if name == "user":
                    page.locator('[data-testid="fb-click"]').first.click()
                    page.wait_for_selector('[data-testid="feedback-result"]')
                    page.wait_for_selector('#history tr[data-type="click"]')
                if name == "serving":
                    page.wait_for_timeout(2500)  # one htmx refresh: QPS between two looks
                out = args.out / f"{name}.png"
                page.screenshot(path=str(out), full_page=True)
                shots.append(str(out.relative_to(ROOT)) if out.is_relative_to(ROOT) else str(out))
            ctx.close()
    print(json.dumps({"screenshots": shots, "traffic": sent, "seconds": round(time.perf_counter() - t0, 1)}))


if __name__ == "__main__":
    main()
