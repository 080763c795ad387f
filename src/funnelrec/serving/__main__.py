"""`python -m funnelrec.serving --artifact funnel.pkl --state-dir state --port 8000`: one server
process (what the reliability tests kill with SIGKILL and the load benchmark measures).
`funnelrec serve` is the user-facing command; this entry point takes the same settings."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m funnelrec.serving", description=__doc__)
    p.add_argument("--artifact", required=True, help="a funnel saved by Funnel.save / `funnelrec train`")
    p.add_argument("--state-dir", default=None, help="event log, exposure filters, cached results (SQLite)")
    p.add_argument("--redis-url", default=None, help="exposure filters and cached results in Redis")
    p.add_argument("--experiments", default=None, help="experiments YAML")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-in-flight", type=int, default=64)
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--eventlog-sync", default="FULL", choices=["FULL", "NORMAL"])
    args = p.parse_args(argv)

    import uvicorn

    from funnelrec.core.errors import FunnelrecError
    from funnelrec.pipeline.service import RecommenderService, ServiceConfig
    from funnelrec.serving.app import create_app
    from funnelrec.train.trainer import setup_torch

    setup_torch(args.threads)
    try:
        svc = RecommenderService.from_artifact(
            args.artifact, state_dir=args.state_dir, redis_url=args.redis_url, experiments=args.experiments,
            config=ServiceConfig(max_in_flight=args.max_in_flight, eventlog_synchronous=args.eventlog_sync))
    except FunnelrecError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    uvicorn.run(create_app(svc), host=args.host, port=args.port, log_level="warning", access_log=False)
    svc.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
