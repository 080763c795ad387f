"""/metrics through prometheus_client: HTTP request counts and latency, rejections (overload 503,
body too large 413), server errors, the in-flight gauge, and — mirrored from the service's own
`ServiceMetrics` — per-stage latency histograms, feedback-event counters, cold starts, reloads
and the served model version.

    funnelrec_http_requests_total{method="POST",path="/recommend",status="200"} 42.0
    funnelrec_stage_latency_ms_bucket{stage="rank",le="1.0"} 40.0
    funnelrec_recommend_batch_size_sum / funnelrec_recommend_batch_size_count = the mean batch

One process: the series live in the app's own `CollectorRegistry` (one per app, so several apps
can run in one process, as the tests do).
Several uvicorn workers (`python -m funnelrec.serving --workers N`): the launcher points
$PROMETHEUS_MULTIPROC_DIR at a fresh directory before the workers start (prometheus_client picks
its value store when it is imported); each worker writes its values to mmap files there, and
/metrics — whichever worker answers — sums the files of every worker (`MultiProcessCollector`):
- counters and histograms: the sum over every worker that ever ran (a restarted worker's counts
  stay, so a counter never goes backwards);
- `funnelrec_http_in_flight`: the sum over the live workers (`livesum`);
- `funnelrec_model_info{version}`: 1 for each version that some live worker serves (`livemax`;
  /admin/reload reaches one worker, so two versions can be served at once).
A worker that stops cleanly takes its live gauges with it (`mark_process_dead` at the end of its
lifespan); one killed with SIGKILL leaves its last in-flight value in the sum until the
directory is wiped (the launcher makes a fresh one per run).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from funnelrec.pipeline.eventlog import EVENT_TYPES
from funnelrec.pipeline.service import (
    LATENCY_BUCKETS_MS,
    LatencyHistogram,
    RecommenderService,
    ServiceMetrics,
)

CONTENT_TYPE = CONTENT_TYPE_LATEST
#: set → every worker's values go to mmap files in this directory and /metrics sums them
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
REJECT_REASONS = ("overload", "too_large")


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV)


class HttpMetrics:
    """The Prometheus series of one app, in its own registry: the HTTP middleware's counts (thread-
    safe) and the service's, which `instrument` mirrors here."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        ms = LATENCY_BUCKETS_MS
        self.requests = Counter("funnelrec_http_requests", "HTTP requests by method, route and status.",
                                ("method", "path", "status"), registry=r)
        self.errors = Counter("funnelrec_http_errors", "Responses with status >= 500, by route.", ("path",),
                              registry=r)
        self.rejected = Counter("funnelrec_http_rejected",
                                "Requests refused before the handler (overload, too_large).", ("reason",), registry=r)
        self._in_flight_gauge = Gauge("funnelrec_http_in_flight", "Requests being served now.", registry=r,
                                      multiprocess_mode="livesum")
        self.latency = Histogram("funnelrec_http_request_latency_ms",
                                 "End-to-end handler latency in milliseconds.", ("path",), buckets=ms, registry=r)
        self.stage_latency = Histogram("funnelrec_stage_latency_ms", "Latency of each funnel stage in milliseconds.",
                                       ("stage",), buckets=ms, registry=r)
        self.feedback_events = Counter("funnelrec_feedback_events",
                                       "Feedback events appended to the event log, by type.", ("type",), registry=r)
        self.cold_start = Counter("funnelrec_cold_start", "Requests answered with the cold-start funnel.",
                                  registry=r)
        self.reloads = Counter("funnelrec_model_reloads", "Successful /admin/reload swaps.", registry=r)
        self.unknown_items = Counter("funnelrec_feedback_unknown_items",
                                     "Feedback events refused (422): their item is in no catalogue.", registry=r)
        self.batch_size = Histogram("funnelrec_recommend_batch_size",
                                    "Requests per dynamic /recommend batch (serving/batching.py).",
                                    buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32, 64), registry=r)
        self.model_info = Gauge("funnelrec_model_info", "1 for each model version being served.", ("version",),
                                registry=r, multiprocess_mode="livemax")
        # zeros from the start: an alert on rate() needs the series before the first event
        for reason in REJECT_REASONS:
            self.rejected.labels(reason)
        for t in EVENT_TYPES:
            self.feedback_events.labels(t)
        self._in_flight = 0

    @property
    def in_flight(self) -> int:
        """Admitted /recommend and /feedback requests of this process (the admission bound is per
        worker: each runs its own event loop)."""
        return self._in_flight

    @in_flight.setter
    def in_flight(self, n: int) -> None:
        self._in_flight = n
        self._in_flight_gauge.set(n)

    def observe(self, method: str, path: str, status: int, ms: float) -> None:
        self.requests.labels(method, path, str(status)).inc()
        if status >= 500:
            self.errors.labels(path).inc()
        self.latency.labels(path).observe(ms)

    def reject(self, reason: str) -> None:
        self.rejected.labels(reason).inc()


class _MirroredServiceMetrics:
    """Stands in for a service's `ServiceMetrics`: every count still lands in that object (which
    the service and its callers read), and is also added to the app's Prometheus series. The
    service assigns `cold_start += 1` and `reloads += 1`; the setters turn those into increments."""

    def __init__(self, inner: ServiceMetrics, service: RecommenderService, prom: HttpMetrics) -> None:
        self._inner = inner
        self._service = service
        self._prom = prom
        self._version = service.current.version
        prom.model_info.labels(self._version).set(1)

    @property
    def stages(self) -> dict[str, LatencyHistogram]:
        return self._inner.stages

    @property
    def events(self) -> dict[str, int]:
        return self._inner.events

    def observe_stages(self, timings_ms: Mapping[str, float]) -> None:
        self._inner.observe_stages(timings_ms)
        h = self._prom.stage_latency
        for stage, ms in timings_ms.items():
            h.labels(stage).observe(ms)

    def count_events(self, types: Iterable[str]) -> None:
        types = list(types)
        self._inner.count_events(types)
        c = self._prom.feedback_events
        for t in types:
            c.labels(t).inc()

    def count_unknown_items(self, n: int) -> None:
        self._inner.count_unknown_items(n)
        self._prom.unknown_items.inc(n)

    @property
    def cold_start(self) -> int:
        return self._inner.cold_start

    @cold_start.setter
    def cold_start(self, n: int) -> None:
        delta, self._inner.cold_start = n - self._inner.cold_start, n
        if delta > 0:
            self._prom.cold_start.inc(delta)

    @property
    def reloads(self) -> int:
        return self._inner.reloads

    @reloads.setter
    def reloads(self, n: int) -> None:
        delta, self._inner.reloads = n - self._inner.reloads, n
        if delta > 0:
            self._prom.reloads.inc(delta)
        # the service counts a reload right after swapping the funnel in: `current` is the new one
        new = self._service.current.version
        if new != self._version:
            info = self._prom.model_info
            if multiprocess_dir():
                info.labels(self._version).set(0)  # label removal is not implemented across processes
            else:
                info.remove(self._version)
            info.labels(new).set(1)
            self._version = new


@contextmanager
def instrument(service: RecommenderService, prom: HttpMetrics) -> Iterator[None]:
    """While the app runs (its lifespan), mirror `service.metrics` into `prom`'s series; afterwards
    give the service its own `ServiceMetrics` back and, across workers, drop this process's live
    gauges."""
    inner = service.metrics
    mirror = _MirroredServiceMetrics(inner, service, prom)
    service.metrics = mirror  # type: ignore[assignment]
    try:
        yield
    finally:
        if service.metrics is mirror:
            service.metrics = inner
        if multiprocess_dir():
            multiprocess.mark_process_dead(os.getpid())


def render(prom: HttpMetrics) -> bytes:
    """The exposition text (`CONTENT_TYPE`): summed over the workers' files when
    $PROMETHEUS_MULTIPROC_DIR is set, else this app's registry."""
    if multiprocess_dir():
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)
    return generate_latest(prom.registry)
