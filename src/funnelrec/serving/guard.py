"""The ASGI guard in front of every route: body limits, the in-flight bound, per-route counts.

Order of work for one request (each step protects the next):

1. **Body size by header.** A Content-Length over `max_body_bytes` (or not a number) is a 413.
   The body is then *drained* (read and dropped, up to `drain_bytes` within `body_timeout_s`)
   before the answer, as nginx's lingering close does: a client that writes its whole body
   before reading (urllib, requests) would otherwise get a connection reset instead of the 413.
2. **The whole body is read before a slot is taken**, with `body_timeout_s` for all of it (a
   408 beyond). A slow client holds only its own coroutine and socket, never one of the
   `max_in_flight` slots: 100 connections trickling a few body bytes leave /recommend
   answering. A chunked body that grows past the limit is a 413 as soon as it does.
3. **The in-flight bound.** /recommend, /feedback and /similar (the limited routes) are admitted
   while fewer than `max_in_flight` are being served, else 503 with Retry-After: 1 — a burst
   beyond the bound is refused, not queued (the handler runs on the event loop).
4. The route runs on the buffered body; its status and latency are counted for /metrics.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import orjson

from funnelrec.serving import metrics as prom

_WORKER = str(os.getpid()).encode()
LIMITED = ("/recommend", "/feedback", "/similar")
ROUTES = ("/recommend", "/feedback", "/similar", "/health", "/metrics", "/admin/reload")


def replaying(body: bytes, receive: Any) -> Any:
    """An ASGI `receive` that hands the app `body` (already read whole) as one message, then
    waits on the real `receive` (for the disconnect, as ASGI servers do)."""
    sent = False

    async def replay() -> dict:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


class GuardMiddleware:
    """Pure ASGI middleware; see the module doc for what it does, in that order."""

    def __init__(self, app: Any, http: prom.HttpMetrics, max_in_flight: int, max_body_bytes: int,
                 body_timeout_s: float = 10.0, drain_bytes: int | None = None) -> None:
        self.app = app
        self.http = http
        self.max_in_flight = max_in_flight
        self.max_body_bytes = max_body_bytes
        self.body_timeout_s = body_timeout_s
        self.drain_bytes = 64 * max_body_bytes if drain_bytes is None else drain_bytes

    @staticmethod
    async def _reply(send: Any, status: int, detail: str, headers: list | None = None) -> None:
        body = orjson.dumps({"detail": detail})
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                *(headers or [])]})
        await send({"type": "http.response.body", "body": body})

    async def _read_body(self, receive: Any) -> tuple[bytes | None, str | None]:
        """The whole request body, or (None, why): "timeout", "too_large" or "disconnect"."""
        chunks, size = [], 0
        deadline = time.monotonic() + self.body_timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None, "timeout"
            try:
                message = await asyncio.wait_for(receive(), left)
            except TimeoutError:
                return None, "timeout"
            if message["type"] == "http.disconnect":
                return None, "disconnect"
            part = message.get("body", b"")
            size += len(part)
            if size > self.max_body_bytes:
                return None, "too_large"
            chunks.append(part)
            if not message.get("more_body", False):
                return b"".join(chunks), None

    async def _drain(self, receive: Any) -> None:
        """Read and drop the rest of a refused body (bounded in bytes and time)."""
        seen, deadline = 0, time.monotonic() + self.body_timeout_s
        while seen <= self.drain_bytes:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            try:
                message = await asyncio.wait_for(receive(), left)
            except TimeoutError:
                return
            if message["type"] != "http.request":
                return
            seen += len(message.get("body", b""))
            if not message.get("more_body", False):
                return

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        path, method = scope["path"], scope["method"]
        route = path if path in ROUTES else "other"
        http = self.http
        status = {"code": 500}
        held: list[dict] = []

        async def send_wrapped(message: dict) -> None:
            if message["type"] == "http.response.start":
                # which worker process answered: lets a balancer (or the load benchmark) spread
                # requests over the workers instead of over connections
                message["headers"] = [*message.get("headers", ()), (b"x-funnelrec-worker", _WORKER)]
                # held until the first body part, then both written back to back: the server
                # writes the header and the body separately, and a replica killed between the
                # two leaves nginx with a header it has already forwarded and cannot retry (a
                # client saw "received 0 bytes, expected 1175" in test_replicas' kill -9 run)
                held.append(message)
                return
            if held:
                start = held.pop()
                status["code"] = start["status"]  # counted as sent (an app that fails after holding it answers 500)
                await send(start)
            await send(message)

        async def refuse(code: int, reason: str, detail: str, headers: list | None = None) -> None:
            http.reject(reason)
            await self._reply(send_wrapped, code, detail, headers)
            http.observe(method, route, code, (time.perf_counter() - t0) * 1e3)

        too_large = f"request body over {self.max_body_bytes} bytes"
        length = next((v for k, v in scope.get("headers", ()) if k == b"content-length"), None)
        if length is not None and (not length.isdigit() or int(length) > self.max_body_bytes):
            await self._drain(receive)
            await refuse(413, "too_large", too_large)
            return
        body, why = await self._read_body(receive)
        if body is None:
            if why == "too_large":
                await self._drain(receive)
                await refuse(413, "too_large", too_large)
            elif why == "timeout":
                await refuse(408, "body_timeout", f"request body not complete within {self.body_timeout_s:g} s")
            else:  # the client left: nobody to answer
                http.observe(method, route, 499, (time.perf_counter() - t0) * 1e3)
            return
        limited = path in LIMITED
        if limited and http.in_flight >= self.max_in_flight:
            await refuse(503, "overload", f"overloaded: {self.max_in_flight} requests in flight",
                         [(b"retry-after", b"1")])
            return
        replay = replaying(body, receive)
        if limited:
            http.in_flight += 1  # the event loop runs this middleware: no lock needed
        try:
            if limited:
                # let the other requests already read reach the admission check before this one
                # runs its (blocking) handler, so a burst beyond the bound is refused, not queued
                # (what arrives while a handler runs is read, and judged, together when it ends)
                await asyncio.sleep(0)
            await self.app(scope, replay, send_wrapped)
        finally:
            if limited:
                http.in_flight -= 1
            http.observe(method, route, status["code"], (time.perf_counter() - t0) * 1e3)
