"""`python -m funnelrec.serving --artifact artifacts/funnel --state-dir state --port 8000`: the server
(what the reliability tests kill with SIGKILL and the load benchmark measures). `funnelrec serve`
is the user-facing command; both run `run(ServeSettings)` here, so they take the same settings.

`--workers N` (N > 1) runs N uvicorn worker processes on one port, each loading the artifact —
the production layout, one worker per core (a request is CPU-bound Python and runs on its
worker's event loop). Workers share state through the SQLite files of `--state-dir` or Redis,
so one of the two is required; each worker uses `--threads` torch threads (default 1: a second
spinning thread per worker costs more than it gives on a loaded machine). /metrics sums every
worker's counts: the launcher points $PROMETHEUS_MULTIPROC_DIR at a fresh temporary directory
(under $TMPDIR) for the workers' metric files and removes it when they have stopped.

The admin token (X-Admin-Token of /admin/*, the catalogue routes and debug answers) comes from
$FUNNELREC_ADMIN_TOKEN or `--admin-token-file` — never from the command line, where `ps` shows
it to every user of the machine. It is the same in every mode (one worker or N), and required
whenever the server binds to anything but a loopback address.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

_ENV = "FUNNELREC_SERVE_ARGS"
ADMIN_TOKEN_ENV = "FUNNELREC_ADMIN_TOKEN"


@dataclass(frozen=True)
class ServeSettings:
    artifact: str
    state_dir: str | None = None
    redis_url: str | None = None
    experiments: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    max_in_flight: int = 64
    max_batch: int = 8  # dynamic batching of /recommend (serving/batching.py); 1 = one by one
    threads: int = 1
    workers: int = 1
    eventlog_sync: str = "FULL"
    admin_token_file: str | None = None
    log_level: str = "warning"
    watch: str | None = None  # a `funnelrec learn --served` directory: serve its CURRENT, reload new ones
    stream_retention_s: int = 7 * 86400  # with redis_url: seconds of events the stream keeps; 0 = all
    log_retention_s: int = 0  # seconds of events the event log (events.db) keeps; 0 = all


class ServeError(Exception):
    """A setting that cannot serve (the message is the one line to print; exit 2)."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def admin_token(settings: ServeSettings) -> str | None:
    """The token from `admin_token_file` (its first line) or $FUNNELREC_ADMIN_TOKEN; None when
    neither is set — refused off loopback."""
    token = None
    if settings.admin_token_file:
        path = Path(settings.admin_token_file)
        try:
            text = path.read_text().strip()
        except OSError as e:
            raise ServeError(f"--admin-token-file {path}: {e.strerror or e}") from None
        if not text:
            raise ServeError(f"--admin-token-file {path}: the file is empty")
        token = text.splitlines()[0].strip()
    else:
        token = os.environ.get(ADMIN_TOKEN_ENV) or None
    if token is None and not is_loopback(settings.host):
        raise ServeError(f"binding {settings.host} (not loopback) needs an admin token: set ${ADMIN_TOKEN_ENV} "
                         "or --admin-token-file, or bind 127.0.0.1")
    if token is not None and len(token) < 8:
        raise ServeError("the admin token must be at least 8 characters")
    return token


def _service_config(args: dict):
    from funnelrec.pipeline.service import ServiceConfig

    keep, log_keep = args.get("stream_retention_s", 7 * 86400), args.get("log_retention_s", 0)
    return ServiceConfig(max_in_flight=args["max_in_flight"], max_batch=args.get("max_batch", 8),
                         eventlog_synchronous=args["eventlog_sync"], eventlog_retention_s=log_keep or None,
                         watch_dir=args.get("watch"), started_ns=args.get("started_ns"),
                         redis_stream_retention_s=None if keep == 0 else keep)


def app_from_env():
    """uvicorn factory of each worker process: the settings come from $FUNNELREC_SERVE_ARGS, the
    token from $FUNNELREC_ADMIN_TOKEN (set by the launcher; the environment is readable only by
    the user running the server)."""
    from funnelrec.serving.app import create_app
    from funnelrec.train.trainer import setup_torch

    args = json.loads(os.environ[_ENV])
    setup_torch(args["threads"])
    return create_app(artifact=args["artifact"], state_dir=args["state_dir"], redis_url=args["redis_url"],
                      experiments=args["experiments"], config=_service_config(args),
                      admin_token=os.environ.get(ADMIN_TOKEN_ENV) or None)


WORKER_HEALTHCHECK_S = 60  # seconds a worker may not answer its supervisor's ping (see `run`)


def run(s: ServeSettings) -> int:
    """Serve until stopped; a bad setting is one `error: …` line and exit code 2."""
    import uvicorn

    from funnelrec.core.errors import FunnelrecError
    from funnelrec.pipeline.artifact import read_manifest
    from funnelrec.pipeline.service import RecommenderService
    from funnelrec.serving.app import create_app
    from funnelrec.serving.metrics import MULTIPROC_ENV
    from funnelrec.serving.transport import CoalescingHttpToolsProtocol
    from funnelrec.train.trainer import setup_torch

    try:
        if s.workers < 1:
            raise ServeError("--workers must be ≥ 1")
        if s.max_batch < 1:
            raise ServeError(f"--max-batch must be ≥ 1 (1 = no batching), got {s.max_batch}")
        if s.stream_retention_s < 0:
            raise ServeError(f"--stream-retention-s must be ≥ 0 seconds (0 = never trimmed), got {s.stream_retention_s}")
        if s.log_retention_s < 0:
            raise ServeError(f"--log-retention-s must be ≥ 0 seconds (0 = keep every event), got {s.log_retention_s}")
        token = admin_token(s)
        if s.watch:  # start on the learner's live version when it has one (every worker does)
            from dataclasses import replace

            from funnelrec.online.served import current_dir

            live = current_dir(s.watch)
            s = replace(s, artifact=str(live)) if live is not None else s
        if not Path(s.artifact).exists():
            raise ServeError(f"{s.artifact}: no funnel artifact there (train one: funnelrec train --out {s.artifact})")
        read_manifest(s.artifact)  # a directory that is not an artifact fails here, in one line
        if s.workers > 1 and not (s.state_dir or s.redis_url):
            raise ServeError("--workers > 1 needs shared state: --state-dir or --redis-url")
    except (ServeError, FunnelrecError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if s.workers > 1:
        # started_ns: the run's start, the same in every worker — a worker that uvicorn restarts
        # applies the reloads its siblings made since then (online/reloads.py)
        os.environ[_ENV] = json.dumps({**asdict(s), "started_ns": time.time_ns()})
        if token is not None:
            os.environ[ADMIN_TOKEN_ENV] = token
        # fresh per run: files left by an earlier run would be summed into this one's counters.
        # The workers are spawned (fresh interpreters), so they import prometheus_client with it set.
        metrics_dir = os.environ[MULTIPROC_ENV] = tempfile.mkdtemp(prefix="funnelrec-metrics-")
        try:
            # uvicorn's supervisor kills a worker whose ping thread has not answered in
            # timeout_worker_healthcheck (default 5 s) and starts another; a worker loading its
            # artifact (numba compiles, numpy) on a busy host can hold the GIL that long, and the
            # kill resets the connections it had accepted. A hung worker is still replaced, later.
            uvicorn.run("funnelrec.serving.__main__:app_from_env", factory=True, workers=s.workers,
                        host=s.host, port=s.port, log_level=s.log_level, access_log=False,
                        timeout_worker_healthcheck=WORKER_HEALTHCHECK_S, http=CoalescingHttpToolsProtocol)
        finally:
            del os.environ[MULTIPROC_ENV]
            shutil.rmtree(metrics_dir, ignore_errors=True)
        return 0

    setup_torch(s.threads)
    try:
        svc = RecommenderService.from_artifact(s.artifact, state_dir=s.state_dir, redis_url=s.redis_url,
                                               experiments=s.experiments, config=_service_config(asdict(s)))
    except FunnelrecError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    uvicorn.run(create_app(svc, admin_token=token), host=s.host, port=s.port, log_level=s.log_level,
                access_log=False, http=CoalescingHttpToolsProtocol)  # header + body in one write: serving/transport.py
    svc.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m funnelrec.serving", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--artifact", required=True, help="a funnel saved by Funnel.save / `funnelrec train`")
    p.add_argument("--state-dir", default=None, help="the online state in SQLite files: event log, exposure "
                   "filters, cached results, real-time history, feature counters, live catalogue, follows")
    p.add_argument("--redis-url", default=None, help="the online state in Redis, shared by workers and replicas "
                   "(the event log stays a local SQLite file; feedback also goes to a Redis Stream)")
    p.add_argument("--stream-retention-s", type=int, default=7 * 86400,
                   help="with --redis-url: seconds of events the feedback stream keeps (0 = never trimmed)")
    p.add_argument("--log-retention-s", type=int, default=0,
                   help="seconds of events the event log (events.db) keeps, trimmed as feedback arrives "
                        "(0 = every event is kept)")
    p.add_argument("--experiments", default=None, help="experiments YAML")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-in-flight", type=int, default=64)
    p.add_argument("--max-batch", type=int, default=8,
                   help="/recommend requests waiting together run as one batch of at most this many; 1 = one by one")
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker process")
    p.add_argument("--workers", type=int, default=1, help="worker processes (one per core)")
    p.add_argument("--eventlog-sync", default="FULL", choices=["FULL", "NORMAL"])
    p.add_argument("--watch", default=None, help="a `funnelrec learn --served` directory to follow")
    p.add_argument("--admin-token-file", default=None,
                   help=f"file holding the admin token (else ${ADMIN_TOKEN_ENV}); required off loopback")
    a = p.parse_args(argv)
    return run(ServeSettings(**{k: v for k, v in vars(a).items()}))


if __name__ == "__main__":
    sys.exit(main())
