"""The ingress proxy: an asyncio HTTP/1.1 reverse proxy that follows a routing table.

One aiohttp low-level server per listener (HTTP, and HTTPS with certificates chosen by
SNI) and one aiohttp client session with a keep-alive pool for every backend. Bodies
stream both ways (only small bodies of known length are read whole); WebSocket upgrades
are relayed message by message. The routing table is replaced as a whole by
:meth:`IngressProxy.set_table`, so a request in flight keeps the table it started with
and none is dropped when the configuration changes.

Headers the backend sees: the client's, minus hop-by-hop headers, with ``Host`` kept and
``X-Forwarded-For``/``-Proto``/``-Host``/``-Port`` and ``X-Real-Ip`` set by the proxy
(values a client sent in those are not trusted and are replaced). A backend that refuses
the connection is skipped for the next endpoint, which is safe because nothing was sent
yet; other failures answer 502, a backend that stays silent too long after the request
504.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from typing import Any

import aiohttp
import structlog
from aiohttp import ClientConnectorError, ConnectionTimeoutError, WSMsgType, hdrs, web
from multidict import CIMultiDict
from yarl import URL

from k3p_plugins.traefik.certs import CertificateStore
from k3p_plugins.traefik.routes import EMPTY_TABLE, RoutingTable, TlsCertificate, request_host

log = structlog.get_logger(__name__)

#: headers that describe one connection, not the message (RFC 9110 section 7.6.1), plus the
#: legacy ones proxies also drop
HOP_BY_HOP = (
    hdrs.CONNECTION, hdrs.KEEP_ALIVE, "Proxy-Connection", hdrs.PROXY_AUTHENTICATE, hdrs.PROXY_AUTHORIZATION,
    hdrs.TE, hdrs.TRAILER, hdrs.TRANSFER_ENCODING, hdrs.UPGRADE,
)
#: what the WebSocket client makes anew for its own handshake with the backend
WEBSOCKET_HANDSHAKE = (
    hdrs.SEC_WEBSOCKET_KEY, hdrs.SEC_WEBSOCKET_VERSION, hdrs.SEC_WEBSOCKET_EXTENSIONS, hdrs.SEC_WEBSOCKET_PROTOCOL,
)
X_FORWARDED_FOR = "X-Forwarded-For"
X_FORWARDED_PROTO = "X-Forwarded-Proto"
X_FORWARDED_HOST = "X-Forwarded-Host"
X_FORWARDED_PORT = "X-Forwarded-Port"
X_REAL_IP = "X-Real-Ip"

#: responses of known length up to this size are read whole and sent in one write
SMALL_BODY = 64 * 1024
#: close codes that only report a state and may not be sent in a close frame
_LOCAL_CLOSE_CODES = frozenset({1005, 1006, 1015})


def _text(status: int, text: str) -> web.Response:
    return web.Response(status=status, text=text)


def _drop_hop_by_hop(headers: CIMultiDict[str]) -> None:
    connection = headers.get(hdrs.CONNECTION)
    if connection:
        for token in connection.split(","):
            token = token.strip()
            if token:
                headers.popall(token, None)
    for name in HOP_BY_HOP:
        if name in headers:
            del headers[name]


class _Listener:
    """What a handler needs to know about the listener that accepted the request."""

    __slots__ = ("port", "scheme", "site")

    def __init__(self, scheme: str) -> None:
        self.scheme = scheme
        self.port = ""
        self.site: web.TCPSite | None = None


class IngressProxy:
    """An HTTP and HTTPS reverse proxy driven by a :class:`RoutingTable`.

    ``http_port``/``https_port`` may be 0 (any free port: read :attr:`http_port` after
    :meth:`start`) or None (that listener is not opened). ``default_certificate`` is
    served to TLS clients whose server name no Ingress covers; a self-signed one is made
    when it is not given.

    Timeouts (seconds): ``connect_timeout`` to open a backend connection (then the next
    endpoint is tried); ``response_timeout`` how long a backend may stay silent, waiting
    for its response headers (504) and between two reads of its body (the client is cut
    off), as a read timeout does; ``idle_timeout`` for idle client keep-alive connections.
    """

    def __init__(
        self,
        http_port: int | None = 80,
        https_port: int | None = 443,
        host: str = "0.0.0.0",
        *,
        table: RoutingTable | None = None,
        default_certificate: TlsCertificate | None = None,
        connect_timeout: float = 5.0,
        response_timeout: float = 60.0,
        idle_timeout: float = 180.0,
        shutdown_timeout: float = 5.0,
    ) -> None:
        self.host = host
        self._ports = {"http": http_port, "https": https_port}
        self._table = table or EMPTY_TABLE
        self._default_certificate = default_certificate
        self.connect_timeout = connect_timeout
        self.response_timeout = response_timeout
        self.idle_timeout = idle_timeout
        self.shutdown_timeout = shutdown_timeout
        self.certificates: CertificateStore | None = None
        self._session: aiohttp.ClientSession | None = None
        self._runners: list[web.ServerRunner] = []
        self._listeners: dict[str, _Listener] = {}

    # --- configuration ---------------------------------------------------------------------

    @property
    def table(self) -> RoutingTable:
        """The routing table new requests use."""
        return self._table

    def set_table(self, table: RoutingTable) -> None:
        """Route new requests (and TLS handshakes) by ``table``; requests in flight keep theirs."""
        old, self._table = self._table, table
        if self.certificates is not None and table.tls != old.tls:
            self.certificates.update(table)

    @property
    def http_port(self) -> int | None:
        """The port the HTTP listener is bound to (None when it is not open)."""
        return self._bound_port("http")

    @property
    def https_port(self) -> int | None:
        """The port the HTTPS listener is bound to (None when it is not open)."""
        return self._bound_port("https")

    def _bound_port(self, scheme: str) -> int | None:
        listener = self._listeners.get(scheme)
        return int(listener.port) if listener and listener.port else None

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the listeners; raises OSError when a port cannot be bound."""
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=30, ttl_dns_cache=10),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.connect_timeout,
                                          sock_read=self.response_timeout),
            # a proxy passes the client's message on as it is: no cookies kept between users,
            # no bodies decompressed, no headers the client did not send
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
            skip_auto_headers=(hdrs.USER_AGENT, hdrs.ACCEPT, hdrs.ACCEPT_ENCODING, hdrs.CONTENT_TYPE),
        )
        try:
            for scheme, port in self._ports.items():
                if port is not None:
                    await self._listen(scheme, port)
        except BaseException:
            await self.close()
            raise
        log.info("ingress proxy listening", component="traefik", host=self.host, http=self.http_port,
                 https=self.https_port)

    async def _listen(self, scheme: str, port: int) -> None:
        listener = _Listener(scheme)
        ssl_context = None
        if scheme == "https":
            self.certificates = CertificateStore(self._default_certificate)
            self.certificates.update(self._table)
            ssl_context = self.certificates.context
        server = web.Server(
            functools.partial(self._handle, listener),
            access_log=None,  # no per-request log lines: they would cost more than the proxying
            auto_decompress=False,
            handler_cancellation=True,  # a client that goes away cancels its backend request
            keepalive_timeout=self.idle_timeout,
        )
        runner = web.ServerRunner(server, handle_signals=False, shutdown_timeout=self.shutdown_timeout)
        await runner.setup()
        self._runners.append(runner)
        site = web.TCPSite(runner, self.host, port, ssl_context=ssl_context, backlog=1024, reuse_address=True)
        await site.start()
        listener.site = site
        listener.port = str(runner.addresses[0][1])
        self._listeners[scheme] = listener

    async def close(self) -> None:
        """Stop listening, give requests in flight ``shutdown_timeout`` to finish, close backend connections."""
        runners, self._runners = self._runners, []
        for runner in runners:
            await runner.cleanup()
        self._listeners.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> IngressProxy:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- requests --------------------------------------------------------------------------

    def _forward_headers(self, request: web.BaseRequest, listener: _Listener) -> CIMultiDict[str]:
        headers = CIMultiDict(request.headers)
        _drop_hop_by_hop(headers)
        remote = request.remote or ""
        headers[X_FORWARDED_FOR] = remote
        headers[X_REAL_IP] = remote
        headers[X_FORWARDED_PROTO] = listener.scheme
        headers[X_FORWARDED_HOST] = request.headers.get(hdrs.HOST, "")
        headers[X_FORWARDED_PORT] = listener.port
        return headers

    async def _handle(self, listener: _Listener, request: web.BaseRequest) -> web.StreamResponse:
        incoming = request.headers
        backend = self._table.resolve(request_host(incoming.get(hdrs.HOST, "")), request.path)
        if backend is None:
            return _text(404, "404 page not found\n")
        targets = backend.attempts()
        if not targets:
            return _text(503, "no available server\n")
        headers = self._forward_headers(request, listener)
        upgrade = incoming.get(hdrs.UPGRADE)
        if upgrade is not None and upgrade.lower() == "websocket":
            return await self._websocket(request, targets, headers)

        data = None
        if request.body_exists:
            data = request.content
            if hdrs.EXPECT in headers:
                # answer the client's "100-continue" ourselves; the backend gets the body right away
                if headers.popone(hdrs.EXPECT).lower() == "100-continue" and request.version >= (1, 1):
                    await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        path = request.raw_path
        session = self._session
        assert session is not None
        upstream = None
        for target in targets:
            try:
                upstream = await session.request(request.method, URL(target + path, encoded=True),
                                                 headers=headers, data=data, allow_redirects=False)
                break
            except (ClientConnectorError, ConnectionTimeoutError) as e:
                # nothing reached this endpoint: another one may take the request
                log.debug("backend unreachable", component="traefik", backend=backend.key, target=target,
                          error=str(e))
                continue
            except TimeoutError:
                return _text(504, "Gateway Timeout\n")
            except aiohttp.ClientError as e:
                log.debug("backend request failed", component="traefik", backend=backend.key, target=target,
                          error=repr(e))
                return _text(502, "Bad Gateway\n")
        if upstream is None:
            return _text(502, "Bad Gateway\n")
        try:
            return await self._respond(request, upstream)
        finally:
            upstream.release()

    async def _respond(self, request: web.BaseRequest, upstream: aiohttp.ClientResponse) -> web.StreamResponse:
        status = upstream.status
        length = upstream.content_length
        bodyless = request.method == hdrs.METH_HEAD or status in (204, 304) or status < 200
        if not bodyless and length is not None and length <= SMALL_BODY:
            try:
                body = await upstream.read()
            except aiohttp.ClientError:
                return _text(502, "Bad Gateway\n")
            response = web.Response(status=status, reason=upstream.reason, headers=upstream.headers, body=body)
            _drop_hop_by_hop(response.headers)
            return response
        response = web.StreamResponse(status=status, reason=upstream.reason, headers=upstream.headers)
        _drop_hop_by_hop(response.headers)
        if length is not None:
            response.content_length = length
        await response.prepare(request)
        if not bodyless:
            try:
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
            except aiohttp.ClientError as e:
                # the status line is gone already: all that is left is to cut the client off
                log.debug("backend response broke off", component="traefik", error=repr(e))
                if request.transport is not None:
                    request.transport.close()
                return response
        await response.write_eof()
        return response

    # --- WebSocket -------------------------------------------------------------------------

    async def _websocket(self, request: web.BaseRequest, targets: list[str],
                         headers: CIMultiDict[str]) -> web.StreamResponse:
        for name in WEBSOCKET_HANDSHAKE:
            headers.popall(name, None)
        offered = request.headers.get(hdrs.SEC_WEBSOCKET_PROTOCOL, "")
        protocols = tuple(p.strip() for p in offered.split(",") if p.strip())
        session = self._session
        assert session is not None
        upstream = None
        for target in targets:
            try:
                async with asyncio.timeout(self.response_timeout):
                    upstream = await session.ws_connect(
                        URL(target + request.raw_path, encoded=True), headers=headers, protocols=protocols,
                        autoclose=False, autoping=False, max_msg_size=0, compress=0)
                break
            except (ClientConnectorError, ConnectionTimeoutError):
                continue
            except aiohttp.WSServerHandshakeError as e:
                status = e.status if e.status >= 400 else 502
                return _text(status, f"{e.message or 'WebSocket handshake refused'}\n")
            except TimeoutError:
                return _text(504, "Gateway Timeout\n")
            except aiohttp.ClientError:
                return _text(502, "Bad Gateway\n")
        if upstream is None:
            return _text(502, "Bad Gateway\n")
        try:
            downstream = web.WebSocketResponse(protocols=(upstream.protocol,) if upstream.protocol else (),
                                               autoclose=False, autoping=False, max_msg_size=0, compress=False)
            await downstream.prepare(request)
            await _relay(downstream, upstream)
            return downstream
        finally:
            await upstream.close()


async def _pump(source: Any, sink: Any) -> None:
    """Copy WebSocket messages from ``source`` to ``sink`` until one side closes."""
    while True:
        msg = await source.receive()
        kind = msg.type
        if kind is WSMsgType.TEXT:
            await sink.send_str(msg.data)
        elif kind is WSMsgType.BINARY:
            await sink.send_bytes(msg.data)
        elif kind is WSMsgType.PING:
            await sink.ping(msg.data)
        elif kind is WSMsgType.PONG:
            await sink.pong(msg.data)
        elif kind is WSMsgType.CLOSE:
            code = msg.data if msg.data and msg.data not in _LOCAL_CLOSE_CODES else 1000
            await sink.close(code=code, message=(msg.extra or "").encode())
            return
        else:  # CLOSING, CLOSED, ERROR
            await sink.close()
            return


async def _relay(downstream: web.WebSocketResponse, upstream: aiohttp.ClientWebSocketResponse) -> None:
    """Relay both ways; once one side has closed, the other gets a moment to finish its close."""
    tasks = {asyncio.ensure_future(_pump(downstream, upstream)), asyncio.ensure_future(_pump(upstream, downstream))}
    try:
        _done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        if pending:
            await asyncio.wait(pending, timeout=5)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
