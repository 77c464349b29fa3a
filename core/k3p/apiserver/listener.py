"""Serving an ASGI app over HTTPS with uvicorn inside k3p's own event loop.

Connections are accepted by :class:`k3p.apiserver.connections.ConnectionGate` rather
than by the event loop's server: it admits or refuses each one before any TLS work is
spent on it, runs the TLS handshake, and counts connections by whether they presented a
client certificate; uvicorn's HTTP protocols then serve the admitted ones. uvicorn's own
``limit_concurrency`` is not used: it answers 503 only after the handshake and the
request's headers, when the connection has already cost what the limit is meant to save.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Generator
from pathlib import Path
from typing import Any

import uvicorn
from uvicorn.config import HTTP_PROTOCOLS, create_ssl_context
from uvicorn.importer import import_from_string

from k3p.apiserver.connections import ConnectionGate, ConnectionLimits
from k3p.supervisor import Ready


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without its own signal handling (k3p's supervisor decides when to stop), and
    with connections accepted by a ConnectionGate instead of the event loop's server."""

    def __init__(self, config: uvicorn.Config, gate: ConnectionGate, bound: socket.socket | None = None) -> None:
        super().__init__(config)
        self.gate = gate
        self.bound = bound

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield

    async def startup(self, sockets: list[Any] | None = None) -> None:
        await self.lifespan.startup()
        config = self.config

        def create_protocol() -> asyncio.Protocol:
            return config.http_protocol_class(  # type: ignore[call-arg]
                config=config, server_state=self.server_state, app_state=self.lifespan.state)

        listener = self.gate.listen(config.host, config.port, config.backlog, create_protocol, self.bound)
        self.servers = [listener]  # type: ignore[list-item]  # close() and wait_closed() are all uvicorn uses
        host, port = listener.sockets[0].getsockname()[:2]
        logging.getLogger("uvicorn.error").info("Uvicorn running on https://%s:%d", host, port)
        self.started = True


class _LimitedConfig(uvicorn.Config):
    """uvicorn's settings plus the limits the HTTP protocol reads (``request_headers.RequestHeaderLimits``)."""

    limits: ConnectionLimits


async def serve_https(
    app: Any,
    *,
    host: str,
    port: int,
    certfile: Path,
    keyfile: Path,
    client_ca: Path | None,
    ready: Ready,
    http: Any = "auto",
    ws: Any = None,
    limits: ConnectionLimits | None = None,
    bound: socket.socket | None = None,
) -> None:
    """Serve ``app`` until cancelled; ``ready()`` once the socket accepts connections.

    With ``client_ca``, clients may present a certificate signed by it (optional, so
    bearer tokens and anonymous probes still work); the app reads it from the scope, for
    WebSocket requests too (``ws`` defaults to a protocol that puts it there). ``limits``
    (default: :class:`ConnectionLimits`' defaults) bound the connections; the header
    limits apply with an HTTP protocol built on ``RequestHeaderLimits`` (k3p's
    ``CertHttpToolsProtocol``). ``bound``: a socket already bound to the port (held since the
    port was chosen, so no other process can take it in between), used instead of binding.
    """
    limits = limits or ConnectionLimits()
    if ws is None:
        from k3p.apiserver.auth import CertWebSocketProtocol

        ws = CertWebSocketProtocol if client_ca else "auto"
    inner = import_from_string(HTTP_PROTOCOLS.get(http, http)) if isinstance(http, str) else http
    ssl_context = create_ssl_context(
        str(certfile), str(keyfile), None, ssl.PROTOCOL_TLS_SERVER,
        ssl.CERT_OPTIONAL if client_ca else ssl.CERT_NONE, str(client_ca) if client_ca else None, "TLSv1",
    )
    gate = ConnectionGate(limits, ssl_context)
    config = _LimitedConfig(
        app,
        host=host,
        port=port,
        lifespan="off",
        log_config=None,
        access_log=False,
        server_header=False,
        timeout_keep_alive=limits.idle_timeout,  # type: ignore[arg-type]  # call_later takes a float
        h11_max_incomplete_event_size=limits.max_header_bytes or None,
        loop="none",
        http=inner,
        ws=ws,
        # kubectl's messages carry at most 32 KiB; deflate would only cost CPU on streams
        ws_per_message_deflate=False,
    )
    config.limits = limits
    server = _EmbeddedServer(config, gate, bound)
    task = None
    try:
        task = asyncio.ensure_future(server.serve())
        while not server.started:
            if task.done():
                await task  # re-raise why it could not start (port taken, bad cert)
                raise RuntimeError("API server stopped before it started")
            await asyncio.sleep(0.02)
        ready()
        await task
    finally:
        if task is not None and not task.done():
            server.should_exit = True
            try:
                await asyncio.wait_for(asyncio.shield(task), 3)
            except (TimeoutError, asyncio.CancelledError):
                server.force_exit = True
                task.cancel()
