"""Prometheus text exposition (format 0.0.4), written by hand: HTTP request counts and latency,
rejections (overload 503, body too large 413), server errors, in-flight gauge, and the
service's per-stage latency histograms and feedback-event counters.

    funnelrec_http_requests_total{method="POST",path="/recommend",status="200"} 42
    funnelrec_stage_latency_ms_bucket{stage="rank",le="1"} 40
"""

from __future__ import annotations

import threading
from collections import defaultdict

from funnelrec.pipeline.service import LatencyHistogram, RecommenderService

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _esc(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(**kv: str) -> str:
    return "{" + ",".join(f'{k}="{_esc(str(v))}"' for k, v in kv.items()) + "}"


def _num(x: float) -> str:
    return repr(float(x)) if isinstance(x, float) else str(x)


class HttpMetrics:
    """Counters kept by the HTTP middleware (thread-safe)."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, str], int] = defaultdict(int)
        self.latency: dict[str, LatencyHistogram] = {}
        self.rejected: dict[str, int] = defaultdict(int)
        self.errors: dict[str, int] = defaultdict(int)
        self.in_flight = 0
        self._lock = threading.Lock()

    def observe(self, method: str, path: str, status: int, ms: float) -> None:
        with self._lock:
            self.requests[(method, path, str(status))] += 1
            if status >= 500:
                self.errors[path] += 1
            h = self.latency.get(path)
            if h is None:
                h = self.latency[path] = LatencyHistogram()
        h.observe(ms)

    def reject(self, reason: str) -> None:
        with self._lock:
            self.rejected[reason] += 1


def _histogram(lines: list[str], name: str, label: str, hists: dict[str, LatencyHistogram]) -> None:
    lines.append(f"# TYPE {name} histogram")
    for key in sorted(hists):
        h = hists[key]
        counts, total, n = h.snapshot()
        for le, c in zip([*map(_num, h.buckets), "+Inf"], counts):
            lines.append(f"{name}_bucket{_labels(**{label: key, 'le': le})} {c}")
        lines.append(f"{name}_sum{_labels(**{label: key})} {_num(total)}")
        lines.append(f"{name}_count{_labels(**{label: key})} {n}")


def render(service: RecommenderService, http: HttpMetrics) -> str:
    lines: list[str] = []
    lines.append("# HELP funnelrec_http_requests_total HTTP requests by method, route and status.")
    lines.append("# TYPE funnelrec_http_requests_total counter")
    with http._lock:
        requests = dict(http.requests)
        rejected = dict(http.rejected)
        errors = dict(http.errors)
        latency = dict(http.latency)
    for (method, path, status), n in sorted(requests.items()):
        lines.append(f"funnelrec_http_requests_total{_labels(method=method, path=path, status=status)} {n}")
    lines.append("# HELP funnelrec_http_errors_total Responses with status >= 500, by route.")
    lines.append("# TYPE funnelrec_http_errors_total counter")
    for path, n in sorted(errors.items()):
        lines.append(f"funnelrec_http_errors_total{_labels(path=path)} {n}")
    lines.append("# HELP funnelrec_http_rejected_total Requests refused before the handler (overload, too_large).")
    lines.append("# TYPE funnelrec_http_rejected_total counter")
    for reason, n in sorted(rejected.items()):
        lines.append(f"funnelrec_http_rejected_total{_labels(reason=reason)} {n}")
    lines.append("# HELP funnelrec_http_in_flight Requests being served now.")
    lines.append("# TYPE funnelrec_http_in_flight gauge")
    lines.append(f"funnelrec_http_in_flight {http.in_flight}")
    lines.append("# HELP funnelrec_http_request_latency_ms End-to-end handler latency in milliseconds.")
    _histogram(lines, "funnelrec_http_request_latency_ms", "path", latency)
    m = service.metrics
    lines.append("# HELP funnelrec_stage_latency_ms Latency of each funnel stage in milliseconds.")
    _histogram(lines, "funnelrec_stage_latency_ms", "stage", dict(m.stages))
    lines.append("# HELP funnelrec_feedback_events_total Feedback events appended to the event log, by type.")
    lines.append("# TYPE funnelrec_feedback_events_total counter")
    for t, n in sorted(m.events.items()):
        lines.append(f"funnelrec_feedback_events_total{_labels(type=t)} {n}")
    lines.append("# TYPE funnelrec_cold_start_total counter")
    lines.append(f"funnelrec_cold_start_total {m.cold_start}")
    lines.append("# TYPE funnelrec_model_reloads_total counter")
    lines.append(f"funnelrec_model_reloads_total {m.reloads}")
    lines.append("# TYPE funnelrec_model_info gauge")
    lines.append(f"funnelrec_model_info{_labels(version=service.current.version)} 1")
    return "\n".join(lines) + "\n"
