"""Request headers: how large they may be and how long they may take (uvicorn's httptools protocol)."""

from __future__ import annotations

import asyncio
from typing import Any

from k3p.apiserver.connections import ConnectionLimits

REQUEST_HEADER_FIELDS_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"connection: close\r\ncontent-length: 35\r\n\r\n431 Request Header Fields Too Large"
)


class RequestHeaderLimits:
    """Mixin for uvicorn's httptools protocol: header size and header time limits.

    httptools buffers a header of any length, and uvicorn's keep-alive timer is reset by
    every byte, so a client could send headers forever. Here the bytes received while no
    request body is being read (a request line and headers, or whatever a client sends
    between requests) may not exceed ``max_header_bytes`` (431), and from a connection's
    first moment, or a request's first byte, the headers must be complete within
    ``header_timeout``. A response sent before the request's body arrived in full (413,
    401, ...) closes the connection rather than reading the rest, as Go's server does.
    """

    config: Any
    loop: asyncio.AbstractEventLoop
    transport: Any
    cycle: Any
    timeout_keep_alive_task: Any

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        limits = getattr(self.config, "limits", None) or ConnectionLimits()
        self._max_header_bytes = limits.max_header_bytes
        self._header_timeout = limits.header_timeout
        self._header_bytes = 0
        self._in_body = False
        self._headers_seen = 0
        self._upgraded = False
        self._header_timer: asyncio.TimerHandle | None = None
        self._arm_header_timer()

    def _arm_header_timer(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self._header_timeout, self._header_timed_out)

    def _header_timed_out(self) -> None:
        self._header_timer = None
        if self.cycle is not None and not self.cycle.response_complete:
            # a pipelined request waits for the one before it: its time starts once that is answered
            self._arm_header_timer()
            return
        self.transport.abort()

    def data_received(self, data: bytes) -> None:
        if self.transport.is_closing():
            return
        if self._in_body or not self._max_header_bytes:
            if not self._in_body:
                self._arm_header_timer()
            super().data_received(data)  # type: ignore[misc]
            return
        self._arm_header_timer()
        room = self._max_header_bytes - self._header_bytes
        if len(data) <= room:
            self._header_bytes += len(data)
            super().data_received(data)  # type: ignore[misc]
            return
        # Over the limit unless the headers end within the room left: feed that much first.
        seen = self._headers_seen
        if room:
            self._header_bytes += room
            super().data_received(data[:room])  # type: ignore[misc]
        if self.transport.is_closing() or self._upgraded:
            return
        if self._headers_seen != seen:
            self.data_received(data[room:])
            return
        self._too_large()

    def _too_large(self) -> None:
        if self.cycle is None or self.cycle.response_complete:
            self.transport.write(REQUEST_HEADER_FIELDS_TOO_LARGE)
            self.transport.close()
        else:
            self.transport.abort()

    def on_headers_complete(self) -> None:
        self._headers_seen += 1
        self._in_body = True
        self._header_bytes = 0
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        super().on_headers_complete()  # type: ignore[misc]

    def on_message_complete(self) -> None:
        self._in_body = False
        super().on_message_complete()  # type: ignore[misc]

    def on_response_complete(self) -> None:
        cycle = self.cycle
        if cycle is not None and cycle.more_body and not self.transport.is_closing():
            self.transport.close()
        super().on_response_complete()  # type: ignore[misc]

    def handle_websocket_upgrade(self) -> None:
        self._upgraded = True
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        super().handle_websocket_upgrade()  # type: ignore[misc]

    def connection_lost(self, exc: Exception | None) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        super().connection_lost(exc)  # type: ignore[misc]
