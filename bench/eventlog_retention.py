"""What the event log's retention costs a feedback call, and what it saves on disk (pipeline/eventlog.py), as JSON.

A simulated clock runs `--seconds` of traffic at `--rate` feedback calls per second, each
appending `--batch` events, into one events.db with and without `--retention` seconds of
retention (the trim every 1 s, at most 5k rows per append: the shipped defaults). Reported per
run: append latency p50 / p99 / max (ms, wall) over every call and over the calls that trimmed,
the rows left and the file's size (after a WAL checkpoint). `--sync NORMAL` by default, so that
the trim's cost is not hidden under the fsync of FULL (the server's default, ~1 ms more per call
on a local disk).

    python bench/eventlog_retention.py [--seconds 900] [--rate 100] [--batch 10] [--retention 300]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import cpu  # noqa: E402
from funnelrec.pipeline.eventlog import EventLog, FeedbackEvent  # noqa: E402


def run(path: Path, args: argparse.Namespace, retention: float | None) -> dict:
    clock = [0.0]
    log = EventLog(path, synchronous=args.sync, retention_s=retention, clock=lambda: clock[0])
    rng = np.random.default_rng(0)
    calls = int(args.seconds * args.rate)
    lat = np.empty(calls)
    trimmed = np.zeros(calls, dtype=bool)
    last_trim = 0
    for c in range(calls):
        clock[0] = c / args.rate
        user = str(int(rng.integers(100_000)))
        items = rng.integers(1_000_000, size=args.batch)
        events = [FeedbackEvent(f"r{c}", user, str(int(i)), "impression", 1.0, 1_700_000_000 + c) for i in items]
        t0 = time.perf_counter()
        log.append(events)
        lat[c] = (time.perf_counter() - t0) * 1e3
        now_trim = log.trimmed_up_to() if retention is not None else 0
        trimmed[c] = now_trim != last_trim
        last_trim = now_trim
    rows = len(log)
    log._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    log.close()
    out = {"retention_s": retention, "calls": calls, "events": calls * args.batch, "rows_left": rows,
           "file_mb": round(path.stat().st_size / 2**20, 2),
           "append_ms": {"p50": round(float(np.percentile(lat, 50)), 3), "p99": round(float(np.percentile(lat, 99)), 3),
                         "max": round(float(lat.max()), 2)}}
    if trimmed.any():
        t = lat[trimmed]
        out["trimming_calls"] = int(trimmed.sum())
        out["trimming_append_ms"] = {"p50": round(float(np.percentile(t, 50)), 2), "max": round(float(t.max()), 2)}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=900)
    p.add_argument("--rate", type=float, default=100, help="feedback calls per simulated second")
    p.add_argument("--batch", type=int, default=10, help="events per call")
    p.add_argument("--retention", type=float, default=300)
    p.add_argument("--sync", default="NORMAL", choices=["FULL", "NORMAL"])
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        runs = [run(Path(tmp) / f"events{n}.db", args, r) for n, r in enumerate([None, args.retention])]
    print(json.dumps({"bench": "eventlog_retention", "sync": args.sync, "rate": args.rate, "batch": args.batch,
                      "seconds": args.seconds, "cpu": cpu(), "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
