"""Serving an ASGI app over HTTPS with uvicorn inside k3p's own event loop."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Generator
from pathlib import Path
from typing import Any

import uvicorn

from k3p.supervisor import Ready


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without its own signal handling: k3p's supervisor decides when to stop."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


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
) -> None:
    """Serve ``app`` until cancelled; ``ready()`` once the socket accepts connections.

    With ``client_ca``, clients may present a certificate signed by it (optional, so
    bearer tokens and anonymous probes still work); the app reads it from the scope, for
    WebSocket requests too (``ws`` defaults to a protocol that puts it there).
    """
    if ws is None:
        from k3p.apiserver.auth import CertWebSocketProtocol

        ws = CertWebSocketProtocol if client_ca else "auto"
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        ssl_certfile=str(certfile),
        ssl_keyfile=str(keyfile),
        ssl_ca_certs=str(client_ca) if client_ca else None,
        ssl_cert_reqs=ssl.CERT_OPTIONAL if client_ca else ssl.CERT_NONE,
        lifespan="off",
        log_config=None,
        access_log=False,
        server_header=False,
        timeout_keep_alive=90,
        loop="none",
        http=http,
        ws=ws,
        # kubectl's messages carry at most 32 KiB; deflate would only cost CPU on streams
        ws_per_message_deflate=False,
    )
    server = _EmbeddedServer(config)
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
