"""serving/transport.py: the served funnel's responses leave in one socket write (header and body
together), so a replica killed mid-response has sent nothing nginx cannot retry. Observed on the
real uvicorn server, on the socket transport itself: every write that reaches it is recorded."""

from __future__ import annotations

import threading
import time

import httpx
import pytest
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from funnelrec.serving.app import create_app
from funnelrec.serving.transport import CoalescingHttpToolsProtocol


class _Recorder:
    """The socket transport, with each write it receives appended to `writes`."""

    def __init__(self, inner, writes: list) -> None:
        self._inner, self._writes = inner, writes

    def write(self, data) -> None:
        self._writes.append(bytes(data))
        self._inner.write(data)

    def __getattr__(self, name):
        return getattr(self._inner, name)


def _recording(base: type, writes: list) -> type:
    """`base` over the recorder: CoalescingHttpToolsProtocol wraps what it is given, so the
    recorder sits under the coalescing layer and sees what the socket gets."""

    class Recording(base):
        def connection_made(self, transport):
            super().connection_made(_Recorder(transport, writes))

    return Recording


def _serve(app, protocol: type):
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="error", http=protocol))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    return server, thread, f"http://127.0.0.1:{port}"


@pytest.mark.parametrize("protocol, writes_per_response", [(CoalescingHttpToolsProtocol, 1), (HttpToolsProtocol, 2)])
def test_each_response_is_one_socket_write_header_and_body_together(fitted_funnel, protocol, writes_per_response):
    writes: list[bytes] = []
    server, thread, url = _serve(create_app(fitted_funnel), _recording(protocol, writes))
    try:
        with httpx.Client(base_url=url, timeout=30) as http:  # one kept-alive connection
            answers = []
            for req in ({"method": "POST", "url": "/recommend", "json": {"user_id": "196", "k": 10}},
                        {"method": "GET", "url": "/recommend", "params": {"user_id": "1", "k": 3}},
                        {"method": "POST", "url": "/recommend", "json": {"user_id": "196", "k": "x"}}):  # a 422
                n0 = len(writes)
                r = http.request(**req)
                deadline = time.monotonic() + 5
                while len(writes) - n0 < writes_per_response and time.monotonic() < deadline:
                    time.sleep(0.01)
                answers.append((r, writes[n0:]))
    finally:
        server.should_exit = True
        thread.join(10)
    assert [r.status_code for r, _ in answers] == [200, 200, 422]
    for r, sent in answers:
        # uvicorn alone: the header, then the body; coalesced: one write holding both, whole
        assert len(sent) == writes_per_response, [len(w) for w in sent]
        data = b"".join(sent)
        assert data.startswith(f"HTTP/1.1 {r.status_code} ".encode()) and data.endswith(r.content)
        header, _, body = data.partition(b"\r\n\r\n")
        assert body == r.content and f"content-length: {len(r.content)}".encode() in header.lower()
