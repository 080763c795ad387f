"""Time from events to the served version at MovieLens-100k scale (issue #10 "Done when": < 60 s).
Prints one JSON object.

    .venv/bin/python bench/online_update.py [--config configs/funnel/ml100k.yaml]

The funnel is fitted on the first 50 % of time; the later ratings become the stream (each an
impression, then a click 5 s later) in a real event log. A real `RecommenderService` watches the
served directory (poll 0.1 s). Measured, for a step over one day of events and for a step over
the whole later half (~50k ratings, ~100k events): the learner's step (read → check → label join
→ itemCF/Swing/hot/fresh updates → publish → commit), the server's pick-up (CURRENT written →
the new version serving), and their sum: events → served. No model updaters (online/updates.py
measures its own in bench/online_updates.py).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import polars as pl


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--config", default="configs/funnel/ml100k.yaml")
    args = p.parse_args()
    from funnelrec.data import load_dataset
    from funnelrec.online.learner import LearnConfig, OnlineLearner
    from funnelrec.online.publish import Publisher
    from funnelrec.online.served import version_dir
    from funnelrec.online.source import EventLogSource
    from funnelrec.pipeline.builder import FunnelBuilder
    from funnelrec.pipeline.config import FunnelConfig
    from funnelrec.pipeline.eventlog import EventLog, FeedbackEvent
    from funnelrec.pipeline.service import RecommenderService, ServiceConfig

    ds = load_dataset("movielens-100k")
    inter = ds.interactions.sort("timestamp")
    cut = inter.height // 2
    head, tail = inter[:cut], inter[cut:]
    cfg = FunnelConfig.load(args.config)
    t = time.perf_counter()
    funnel = FunnelBuilder(cfg).fit(ds, head)
    fit_s = time.perf_counter() - t
    out = {"dataset": "movielens-100k", "config": args.config, "fit_s": round(fit_s, 2),
           "channels": list(funnel.channels_), "train_interactions": head.height, "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        funnel.save(tmp / "artifact")
        served, state = tmp / "served", tmp / "state"
        Publisher(served).init(tmp / "artifact")
        log = EventLog(state / "events.db", synchronous="NORMAL")
        svc = RecommenderService.from_artifact(version_dir(served, "v000001"), config=ServiceConfig(
            watch_dir=str(served), watch_interval_s=0.1))
        learner = OnlineLearner(served, EventLogSource(state / "events.db"),
                                LearnConfig(batch_limit=1_000_000, label_window_s=60))
        t0 = int(tail["timestamp"].min())
        day = tail.filter(pl.col("timestamp") < t0 + 86400)
        rest = tail.filter(pl.col("timestamp") >= t0 + 86400)
        steps = {}
        for name, part in (("one_day", day), ("later_half", rest)):
            evs = []
            for u, i, ts in part.select("user_id", "item_id", "timestamp").iter_rows():
                evs += [FeedbackEvent(None, str(u), str(i), "impression", 1.0, int(ts)),
                        FeedbackEvent(None, str(u), str(i), "click", 1.0, int(ts) + 5)]
            log.append(evs)
            t = time.perf_counter()
            report = learner.run_once()
            step_s = time.perf_counter() - t
            t_pub = time.perf_counter()
            while not svc.current.version.startswith(report["version"]):
                time.sleep(0.005)
                if time.perf_counter() - t_pub > 120:
                    raise SystemExit(f"the server did not pick up {report['version']}")
            pickup_s = time.perf_counter() - t_pub
            steps[name] = {"ratings": part.height, "events": report["events"], "step_s": round(step_s, 3),
                           "pickup_s": round(pickup_s, 3), "events_to_served_s": round(step_s + pickup_s, 3),
                           "parts": report["parts"], "version": report["version"]}
        svc.close()
        learner.close()
        log.close()
    out["steps"] = steps
    out["target_s"] = 60
    out["meets_target"] = all(s["events_to_served_s"] < 60 for s in steps.values())
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
