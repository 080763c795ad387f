"""One socket write per response: uvicorn's HTTP protocol with its writes coalesced.

uvicorn writes a response's status line and headers in one `transport.write` and its body in
another. Behind nginx that gap is a failure mode: a replica killed between the two writes has
sent a header that nginx has already forwarded to the client, so nginx cannot retry the request
on another replica, and the client gets a truncated response ("peer closed connection without
sending complete message body", 1 run in 14 of tests/serving/test_replicas.py's kill -9 test,
with serving/guard.py already sending the two back to back). Here every write made during one
event-loop step is joined and written once at the end of the step (`loop.call_soon`), so the
header and the body of a response leave in one `send` — a replica that dies before it has sent
nothing, and nginx retries. A close flushes first; nothing is reordered.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class CoalescingTransport:
    """A transport whose `write`s within one loop step become one write to `inner`."""

    def __init__(self, inner: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._inner = inner
        self._loop = loop
        self._held: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not data:
            return
        if not self._held:
            self._loop.call_soon(self._flush)
        self._held.append(bytes(data))

    def writelines(self, chunks) -> None:
        for c in chunks:
            self.write(c)

    def _flush(self) -> None:
        if self._held:
            data = b"".join(self._held)
            self._held.clear()
            if not self._inner.is_closing():
                self._inner.write(data)

    def close(self) -> None:
        self._flush()
        self._inner.close()

    def write_eof(self) -> None:
        self._flush()
        self._inner.write_eof()

    def get_write_buffer_size(self) -> int:
        return self._inner.get_write_buffer_size() + sum(len(b) for b in self._held)

    def __getattr__(self, name: str) -> Any:  # is_closing, get_extra_info, pause_reading, abort, …
        return getattr(self._inner, name)


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol over a `CoalescingTransport` (`uvicorn.run(http=…)`)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(CoalescingTransport(transport, self.loop))  # type: ignore[arg-type]
