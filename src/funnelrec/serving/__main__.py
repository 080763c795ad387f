"""`python -m funnelrec.serving --artifact artifacts/funnel --state-dir state --port 8000`: the server
(what the reliability tests kill with SIGKILL and the load benchmark measures).
`funnelrec serve` is the user-facing command; this entry point takes the same settings.

`--workers N` (N > 1) runs N uvicorn worker processes on one port, each loading the artifact —
the production layout, one worker per core (a request is CPU-bound Python and runs on its
worker's event loop). Workers share state through the SQLite files of `--state-dir` or Redis,
so one of the two is required; each worker uses `--threads` torch threads (default 1: a second
spinning thread per worker costs more than it gives on a loaded machine). /metrics sums every
worker's counts: the launcher points $PROMETHEUS_MULTIPROC_DIR at a fresh temporary directory
(under $TMPDIR) for the workers' metric files and removes it when they have stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile

_ENV = "FUNNELREC_SERVE_ARGS"


def _service_config(args: dict):
    from funnelrec.pipeline.service import ServiceConfig

    return ServiceConfig(max_in_flight=args["max_in_flight"], eventlog_synchronous=args["eventlog_sync"])


def app_from_env():
    """uvicorn factory of each worker process: the settings come from $FUNNELREC_SERVE_ARGS."""
    from funnelrec.serving.app import create_app
    from funnelrec.train.trainer import setup_torch

    args = json.loads(os.environ[_ENV])
    setup_torch(args["threads"])
    return create_app(artifact=args["artifact"], state_dir=args["state_dir"], redis_url=args["redis_url"],
                      experiments=args["experiments"], config=_service_config(args))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m funnelrec.serving", description=__doc__)
    p.add_argument("--artifact", required=True, help="a funnel saved by Funnel.save / `funnelrec train`")
    p.add_argument("--state-dir", default=None, help="event log, exposure filters, cached results (SQLite)")
    p.add_argument("--redis-url", default=None, help="exposure filters and cached results in Redis")
    p.add_argument("--experiments", default=None, help="experiments YAML")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-in-flight", type=int, default=64)
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker process")
    p.add_argument("--workers", type=int, default=1, help="worker processes (one per core)")
    p.add_argument("--eventlog-sync", default="FULL", choices=["FULL", "NORMAL"])
    args = p.parse_args(argv)

    import uvicorn

    from funnelrec.core.errors import FunnelrecError
    from funnelrec.pipeline.service import RecommenderService
    from funnelrec.serving.app import create_app
    from funnelrec.serving.metrics import MULTIPROC_ENV
    from funnelrec.train.trainer import setup_torch

    if args.workers < 1:
        print("error: --workers must be ≥ 1", file=sys.stderr)
        return 2
    if args.workers > 1:
        if not (args.state_dir or args.redis_url):
            print("error: --workers > 1 needs shared state: --state-dir or --redis-url", file=sys.stderr)
            return 2
        if not os.path.exists(args.artifact):
            print(f"error: {args.artifact}: funnel file not found", file=sys.stderr)
            return 2
        os.environ[_ENV] = json.dumps({k: getattr(args, k) for k in (
            "artifact", "state_dir", "redis_url", "experiments", "max_in_flight", "threads", "eventlog_sync")})
        # fresh per run: files left by an earlier run would be summed into this one's counters.
        # The workers are spawned (fresh interpreters), so they import prometheus_client with it set.
        metrics_dir = os.environ[MULTIPROC_ENV] = tempfile.mkdtemp(prefix="funnelrec-metrics-")
        try:
            uvicorn.run("funnelrec.serving.__main__:app_from_env", factory=True, workers=args.workers,
                        host=args.host, port=args.port, log_level="warning", access_log=False)
        finally:
            del os.environ[MULTIPROC_ENV]
            shutil.rmtree(metrics_dir, ignore_errors=True)
        return 0

    setup_torch(args.threads)
    try:
        svc = RecommenderService.from_artifact(
            args.artifact, state_dir=args.state_dir, redis_url=args.redis_url, experiments=args.experiments,
            config=_service_config(vars(args)))
    except FunnelrecError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    uvicorn.run(create_app(svc), host=args.host, port=args.port, log_level="warning", access_log=False)
    svc.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
