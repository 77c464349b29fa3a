"""The kubelet's streaming endpoints: exec, attach and port-forward, bridged to the runtime.

The API server reaches these over WebSocket (see :mod:`k3p.apiserver.streaming`). The
runtime hands out CRI streaming URLs (containerd's streaming server is kube's
``cri/streaming`` package). What each request becomes towards that server:

- exec/attach: SPDY/3.1 with kube's remotecommand ``v4.channel.k8s.io`` stream protocol.
  Not WebSocket, because the runtime's WebSocket server knows only ``v4``, which cannot
  half-close stdin: ``echo hi | kubectl exec -i pod -- cat`` would never end. Each
  WebSocket channel maps to one SPDY stream (``streamtype`` header: error, stdin, stdout,
  stderr, resize); v5's CLOSE message becomes a FIN on the stdin stream.
- port-forward from kubectl (``SPDY/3.1+portforward.k8s.io``): the WebSocket messages
  already carry SPDY frames, so the kubelet only does the HTTP ``Upgrade: SPDY/3.1``
  handshake (``X-Stream-Protocol-Version: portforward.k8s.io``) and then copies bytes.
- port-forward over ``v4.channel.k8s.io`` (the Python client): relayed as is to the
  runtime's own WebSocket port-forward, which takes its ports from the CRI request.

Only a small client side of SPDY/3 is needed (kube's servers use no flow control: no
WINDOW_UPDATE is sent or honoured), so it is written here rather than pulled in.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import ssl
import struct
import zlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import structlog
import websockets
from starlette.responses import JSONResponse
from starlette.websockets import WebSocket

from k3p.apiserver import streaming as protocols
from k3p.protocols.runtime import (
    LABEL_CONTAINER_NAME,
    LABEL_POD_NAME,
    LABEL_POD_NAMESPACE,
    ContainerState,
    Runtime,
    RuntimeError_,
    SandboxState,
)

log = structlog.get_logger(__name__)

REMOTECOMMAND_V4 = "v4.channel.k8s.io"

# --- SPDY/3 framing ------------------------------------------------------------------------

SPDY_VERSION = 3
SYN_STREAM, SYN_REPLY, RST_STREAM, SETTINGS, PING, GOAWAY, HEADERS, WINDOW_UPDATE = 1, 2, 3, 4, 6, 7, 8, 9
FLAG_FIN = 0x01
MAX_DATA = 0xFFFFFF


def _header_dictionary() -> bytes:
    """The zlib dictionary of SPDY/3 header blocks (draft-mbelshe-httpbis-spdy-00, 2.6.10.1)."""
    words = [*(
        "options head post put delete trace accept accept-charset accept-encoding accept-language "
        "accept-ranges age allow authorization cache-control connection content-base content-encoding "
        "content-language content-length content-location content-md5 content-range content-type date etag "
        "expect expires from host if-match if-modified-since if-none-match if-range if-unmodified-since "
        "last-modified location max-forwards pragma proxy-authenticate proxy-authorization range referer "
        "retry-after server te trailer transfer-encoding upgrade user-agent vary via warning www-authenticate "
        "method get status"
    ).split(), "200 OK", "version", "HTTP/1.1", "url", "public", "set-cookie", "keep-alive", "origin"]
    tail = (
        "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505"
        "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request401 Unauthorized"
        "403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented503 Service Unavailable"
        "Jan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMT"
        "chunked,text/html,image/png,image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,"
        "text/javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0."
    )
    return b"".join(struct.pack(">I", len(w)) + w.encode() for w in words) + tail.encode()


HEADER_DICTIONARY = _header_dictionary()


@dataclass
class Frame:
    """One SPDY frame: ``kind`` 0 is a data frame, else the control frame type."""

    kind: int
    flags: int
    stream_id: int = 0
    data: bytes = b""
    headers: dict[str, list[str]] = field(default_factory=dict)
    status: int = 0

    @property
    def fin(self) -> bool:
        return bool(self.flags & FLAG_FIN)


class SpdyError(Exception):
    """The peer broke the SPDY framing."""


class HeaderCodec:
    """SPDY/3 header blocks; each direction of a session keeps one zlib stream for all its blocks."""

    def __init__(self) -> None:
        self._compress = zlib.compressobj(zlib.Z_BEST_COMPRESSION, zlib.DEFLATED, 15, 9, zdict=HEADER_DICTIONARY)
        self._decompress = zlib.decompressobj(zdict=HEADER_DICTIONARY)

    def encode(self, headers: dict[str, str]) -> bytes:
        raw = [struct.pack(">I", len(headers))]
        for name, value in headers.items():
            # SPDY/3 header names are lower case (kube's servers refuse others)
            n, v = name.lower().encode(), value.encode()
            raw += [struct.pack(">I", len(n)), n, struct.pack(">I", len(v)), v]
        return self._compress.compress(b"".join(raw)) + self._compress.flush(zlib.Z_SYNC_FLUSH)

    def decode(self, block: bytes) -> dict[str, list[str]]:
        try:
            raw = self._decompress.decompress(block)
            (count,) = struct.unpack_from(">I", raw, 0)
            pos, headers = 4, {}
            for _ in range(count):
                (n,) = struct.unpack_from(">I", raw, pos)
                name = raw[pos + 4: pos + 4 + n].decode()
                pos += 4 + n
                (n,) = struct.unpack_from(">I", raw, pos)
                value = raw[pos + 4: pos + 4 + n].decode(errors="replace")
                pos += 4 + n
                headers.setdefault(name, []).extend(value.split("\0"))
        except (zlib.error, struct.error, UnicodeDecodeError) as e:
            raise SpdyError(f"bad SPDY header block: {e}") from None
        return headers


def control_frame(kind: int, payload: bytes, flags: int = 0) -> bytes:
    return struct.pack(">HHI", 0x8000 | SPDY_VERSION, kind, (flags << 24) | len(payload)) + payload


def data_frame(stream_id: int, data: bytes, fin: bool = False) -> bytes:
    return struct.pack(">II", stream_id & 0x7FFFFFFF, ((FLAG_FIN if fin else 0) << 24) | len(data)) + data


def parse_frame(head: bytes, payload: bytes, codec: HeaderCodec) -> Frame:
    """A frame from its 8-byte head and its payload (header blocks are decoded with ``codec``)."""
    first, second = struct.unpack(">II", head)
    flags = second >> 24
    if not first & 0x80000000:
        return Frame(0, flags, first & 0x7FFFFFFF, payload)
    kind = first & 0xFFFF
    if (first >> 16) & 0x7FFF != SPDY_VERSION:
        raise SpdyError(f"unsupported SPDY version {(first >> 16) & 0x7FFF}")
    frame = Frame(kind, flags)
    if kind in (SYN_STREAM, SYN_REPLY, RST_STREAM, HEADERS, WINDOW_UPDATE, GOAWAY):
        if len(payload) < 4:
            raise SpdyError(f"short SPDY control frame of type {kind}")
        frame.stream_id = struct.unpack_from(">I", payload)[0] & 0x7FFFFFFF
    if kind == SYN_STREAM:
        frame.headers = codec.decode(payload[10:])
    elif kind in (SYN_REPLY, HEADERS):
        frame.headers = codec.decode(payload[4:])
    elif kind in (RST_STREAM, GOAWAY) and len(payload) >= 8:
        frame.status = struct.unpack_from(">I", payload, 4)[0]
    elif kind == PING and len(payload) >= 4:
        frame.stream_id = struct.unpack_from(">I", payload)[0]
    return frame


class SpdySession:
    """The client side of a SPDY/3.1 session on an upgraded connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.codec = HeaderCodec()
        self._next_id = 1
        self._lock = asyncio.Lock()

    async def _write(self, frame: bytes) -> None:
        async with self._lock:
            self.writer.write(frame)
            await self.writer.drain()

    async def open_stream(self, headers: dict[str, str], fin: bool = False) -> int:
        """Send SYN_STREAM; returns the new stream's id (client streams are odd, increasing)."""
        async with self._lock:
            stream_id = self._next_id
            self._next_id += 2
            payload = struct.pack(">IIBB", stream_id, 0, 0, 0) + self.codec.encode(headers)
            self.writer.write(control_frame(SYN_STREAM, payload, FLAG_FIN if fin else 0))
            await self.writer.drain()
        return stream_id

    async def send(self, stream_id: int, data: bytes, fin: bool = False) -> None:
        """Data on a stream, split to SPDY's frame size; ``fin`` half-closes it after."""
        view = memoryview(data)
        while len(view) > MAX_DATA:
            await self._write(data_frame(stream_id, bytes(view[:MAX_DATA])))
            view = view[MAX_DATA:]
        await self._write(data_frame(stream_id, bytes(view), fin))

    async def frames(self) -> AsyncIterator[Frame]:
        """Frames until the peer closes; its PINGs are answered on the way."""
        while True:
            try:
                head = await self.reader.readexactly(8)
                length = int.from_bytes(head[5:8], "big")
                payload = await self.reader.readexactly(length)
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            frame = parse_frame(head, payload, self.codec)
            if frame.kind == PING and frame.stream_id % 2 == 0:
                await self._write(control_frame(PING, payload))
            yield frame

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()
            await self.writer.wait_closed()


class UpgradeError(Exception):
    """The streaming server answered the upgrade with something else than 101."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"{status}: {body}" if body else str(status))
        self.status = status
        self.body = body


def _insecure_tls() -> ssl.SSLContext:
    """TLS to the runtime's streaming server: it is local, and the URL's one-time token is the
    secret; its certificate is self-signed (kube's kubelet does not verify it either)."""
    tls = ssl.create_default_context()
    tls.check_hostname = False
    tls.verify_mode = ssl.CERT_NONE
    return tls


async def spdy_upgrade(url: str, protocol: str, timeout: float = 10.0
                       ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, str]:
    """Open ``url`` and switch the connection to SPDY/3.1 with stream protocol ``protocol``.

    Returns the connection and the protocol the server chose. Raises UpgradeError when
    the server refuses (e.g. 404 for a used or expired token) and OSError when it is gone.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UpgradeError(0, f"the runtime gave a streaming URL that cannot be dialled: {url}")
    tls = _insecure_tls() if parts.scheme == "https" else None
    port = parts.port or (443 if tls else 80)
    reader, writer = await asyncio.wait_for(asyncio.open_connection(parts.hostname, port, ssl=tls), timeout)
    try:
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        writer.write((
            f"POST {target} HTTP/1.1\r\nHost: {parts.netloc}\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n"
            f"X-Stream-Protocol-Version: {protocol}\r\nContent-Length: 0\r\n\r\n"
        ).encode())
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        lines = head.decode("latin-1").split("\r\n")
        try:
            status = int(lines[0].split(" ", 2)[1])
        except (IndexError, ValueError):
            raise UpgradeError(0, f"not an HTTP response: {lines[0][:80]!r}") from None
        headers = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        if status != 101:
            body = b""
            with contextlib.suppress(Exception):
                body = await asyncio.wait_for(reader.read(64 * 1024), 2)
            raise UpgradeError(status, body.decode(errors="replace").strip())
        return reader, writer, headers.get("x-stream-protocol-version", "")
    except BaseException:
        writer.close()
        raise


# --- the WebSocket side --------------------------------------------------------------------


class ChannelCodec:
    """Channel-prefixed WebSocket messages (binary, or text+base64 for the base64 protocols)."""

    def __init__(self, protocol: str) -> None:
        self.protocol = protocol
        self.base64 = "base64" in protocol

    def encode(self, channel: int, data: bytes) -> dict[str, Any]:
        if self.base64:
            return {"type": "websocket.send", "text": chr(ord("0") + channel) + base64.b64encode(data).decode()}
        return {"type": "websocket.send", "bytes": bytes([channel]) + data}

    def decode(self, message: dict[str, Any]) -> tuple[int, bytes] | None:
        data = message.get("bytes")
        if data is not None:
            return (data[0], data[1:]) if data else None
        text = message.get("text")
        if not text:
            return None
        if self.base64:
            try:
                return ord(text[0]) - ord("0"), base64.b64decode(text[1:])
            except ValueError:
                return None
        raw = text.encode()
        return raw[0], raw[1:]


def failure_status(message: str, code: int = 500, reason: str = "InternalError") -> bytes:
    return json.dumps({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                       "message": message, "reason": reason, "code": code}).encode()


async def bridge_remotecommand(ws: WebSocket, protocol: str, session: SpdySession, *, stdin: bool, stdout: bool,
                               stderr: bool, tty: bool, first_size_wait: float = 0.5) -> None:
    """Relay an accepted exec/attach WebSocket to a SPDY remotecommand session until either ends."""
    codec = ChannelCodec(protocol)
    early: list[tuple[int, bytes]] = []
    if tty:
        # The runtime starts the command once every stream is open. Opening them only after
        # the client's first terminal size (sent right after connecting) lets the command
        # start with that size rather than 0x0.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(first_size_wait):
                while True:
                    message = await ws.receive()
                    if message["type"] == "websocket.disconnect":
                        await session.close()
                        return
                    decoded = codec.decode(message)
                    if decoded is not None:
                        early.append(decoded)
                        if decoded[0] == protocols.RESIZE:
                            break
    kinds = ["error"] + [k for k, on in (("stdin", stdin), ("stdout", stdout), ("stderr", stderr),
                                         ("resize", tty)) if on]
    ids = {kind: await session.open_stream({"streamtype": kind}) for kind in kinds}
    channel_of = {ids[k]: ch for k, ch in (("stdout", protocols.STDOUT), ("stderr", protocols.STDERR)) if k in ids}
    status = bytearray()

    async def from_runtime() -> None:
        async for frame in session.frames():
            if frame.kind == 0:
                if frame.stream_id == ids["error"]:
                    status.extend(frame.data)
                elif frame.data and frame.stream_id in channel_of:
                    await ws.send(codec.encode(channel_of[frame.stream_id], frame.data))
            elif frame.kind == GOAWAY:
                # sent right after the status: everything the command wrote came before it
                return

    async def to_runtime(channel: int, data: bytes) -> None:
        if channel == protocols.STDIN and "stdin" in ids and data:
            await session.send(ids["stdin"], data)
        elif channel == protocols.RESIZE and "resize" in ids and data:
            await session.send(ids["resize"], data)
        elif channel == protocols.CLOSE and protocol == protocols.CHANNEL_V5 and data[:1] == b"\0" \
                and "stdin" in ids:
            await session.send(ids["stdin"], b"", fin=True)

    async def from_client() -> None:
        for channel, data in early:
            await to_runtime(channel, data)
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            decoded = codec.decode(message)
            if decoded is not None:
                await to_runtime(*decoded)

    try:
        runtime_task, client_task, done = await protocols.race(from_runtime(), from_client())
    finally:
        await session.close()
    if client_task in done and runtime_task not in done:
        return
    error = runtime_task.exception() if runtime_task in done else None
    with contextlib.suppress(Exception):
        if error is not None:
            log.warning("stream from the runtime broke", error=str(error))
            await ws.send(codec.encode(protocols.ERROR, failure_status(f"stream from the runtime broke: {error}")))
        elif status:
            await ws.send(codec.encode(protocols.ERROR, bytes(status)))
        await ws.close(1000)


async def tunnel(ws: WebSocket, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy raw bytes between an accepted WebSocket (binary messages) and a TCP connection."""

    async def down() -> None:
        while True:
            chunk = await reader.read(64 * 1024)
            if not chunk:
                return
            await ws.send_bytes(chunk)

    async def up() -> None:
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            data = message.get("bytes")
            if data is None and message.get("text") is not None:
                data = message["text"].encode()
            if data:
                writer.write(data)
                await writer.drain()

    try:
        down_task, _up_task, done = await protocols.race(down(), up())
    finally:
        with contextlib.suppress(Exception):
            writer.close()
            await writer.wait_closed()
    if down_task in done:
        with contextlib.suppress(Exception):
            await ws.close(1000)


# --- the kubelet endpoints -----------------------------------------------------------------


def _flag(query: Any, *names: str) -> bool:
    """kube's kubelet takes ``input=1``; the API-style names (``stdin=true``) are accepted too."""
    for name in names:
        value = query.get(name)
        if value is not None and value != "":
            try:
                return protocols.parse_bool(name, value)
            except ValueError:
                return False
    return False


class KubeletStreams:
    """WebSocket handlers for ``/exec``, ``/attach`` and ``/portForward`` of one node's runtime."""

    def __init__(self, runtime: Runtime, allowed: Callable[[dict[str, Any]], bool]) -> None:
        self.runtime = runtime
        self.allowed = allowed

    async def _deny(self, ws: WebSocket, code: int, message: str, reason: str = "") -> None:
        reasons = {400: "BadRequest", 401: "Unauthorized", 404: "NotFound", 500: "InternalError"}
        body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
                "reason": reason or reasons.get(code, ""), "code": code}
        await ws.send_denial_response(JSONResponse(body, code))

    async def _running_container(self, namespace: str, pod: str, container: str) -> str | None:
        found = [c for c in await self.runtime.list_containers()
                 if c.labels.get(LABEL_POD_NAMESPACE) == namespace and c.labels.get(LABEL_POD_NAME) == pod
                 and c.labels.get(LABEL_CONTAINER_NAME) == container and c.state == ContainerState.RUNNING]
        found.sort(key=lambda c: (c.attempt, c.created_at))
        return found[-1].id if found else None

    async def _ready_sandbox(self, namespace: str, pod: str) -> str | None:
        found = [s for s in await self.runtime.list_pod_sandboxes()
                 if s.labels.get(LABEL_POD_NAMESPACE) == namespace and s.labels.get(LABEL_POD_NAME) == pod
                 and s.state == SandboxState.READY]
        found.sort(key=lambda s: (s.attempt, s.created_at))
        return found[-1].id if found else None

    async def _guard(self, ws: WebSocket, supported: tuple[str, ...]) -> str | None:
        """The negotiated subprotocol, or None once the request has been refused."""
        if not self.allowed(ws.scope):
            await self._deny(ws, 401, "Unauthorized")
            return None
        protocol = protocols.negotiate(list(ws.scope.get("subprotocols") or []), supported)
        if protocol is None:
            await self._deny(ws, 400, f"none of the requested WebSocket protocols is supported; "
                                      f"supported: {', '.join(p for p in supported if p)}")
        return protocol

    async def exec(self, ws: WebSocket) -> None:
        await self._remotecommand(ws, "exec")

    async def attach(self, ws: WebSocket) -> None:
        await self._remotecommand(ws, "attach")

    async def _remotecommand(self, ws: WebSocket, what: str) -> None:
        protocol = await self._guard(ws, protocols.REMOTECOMMAND_PROTOCOLS)
        if protocol is None:
            return
        p = ws.path_params
        q = ws.query_params
        tty = _flag(q, "tty")
        stdin, stdout = _flag(q, "input", "stdin"), _flag(q, "output", "stdout")
        stderr = _flag(q, "error", "stderr") and not tty
        command = q.getlist("command")
        if not (stdin or stdout or stderr):
            return await self._deny(ws, 400, "you must specify at least 1 of stdin, stdout, stderr")
        if what == "exec" and not command:
            return await self._deny(ws, 400, "you must specify a command to execute")
        cid = await self._running_container(p["namespace"], p["pod"], p["container"])
        if cid is None:
            return await self._deny(ws, 404, f'container not found ("{p["container"]}")')
        try:
            if what == "exec":
                url = await self.runtime.exec_url(cid, command, tty, stdin, stdout, stderr)
            else:
                url = await self.runtime.attach_url(cid, tty, stdin, stdout, stderr)
            reader, writer, chosen = await spdy_upgrade(url, REMOTECOMMAND_V4)
        except (RuntimeError_, NotImplementedError, UpgradeError, OSError, TimeoutError) as e:
            log.info("stream refused", what=what, pod=f"{p['namespace']}/{p['pod']}", error=str(e))
            return await self._deny(ws, 500, f"unable to {what} in container {p['container']}: {e}")
        if chosen and chosen != REMOTECOMMAND_V4:
            writer.close()
            return await self._deny(ws, 500, f"the runtime chose stream protocol {chosen!r}")
        session = SpdySession(reader, writer)
        try:
            await ws.accept(subprotocol=protocol)
        except BaseException:
            await session.close()
            raise
        log.info("stream started", what=what, pod=f"{p['namespace']}/{p['pod']}", container=p["container"],
                 protocol=protocol, tty=tty, stdin=stdin)
        await bridge_remotecommand(ws, protocol, session, stdin=stdin, stdout=stdout, stderr=stderr, tty=tty)

    async def port_forward(self, ws: WebSocket) -> None:
        protocol = await self._guard(ws, protocols.PORTFORWARD_PROTOCOLS)
        if protocol is None:
            return
        p = ws.path_params
        try:
            ports = protocols.portforward_ports(ws.query_params.multi_items())
        except ValueError as e:
            return await self._deny(ws, 400, str(e))
        tunnel_spdy = protocol == protocols.SPDY_TUNNEL_PORTFORWARD
        if not tunnel_spdy and not ports:
            return await self._deny(ws, 400, "at least one port must be given (port=N)")
        sandbox = await self._ready_sandbox(p["namespace"], p["pod"])
        if sandbox is None:
            return await self._deny(ws, 404, f'pod "{p["pod"]}" has no running sandbox on this node')
        tcp: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        upstream = None
        try:
            url = await self.runtime.port_forward_url(sandbox, ports)
            if tunnel_spdy:
                reader, writer, _ = await spdy_upgrade(url, protocols.PORTFORWARD_V1)
                tcp = (reader, writer)
            else:
                upstream = await protocols.dial("ws" + url[len("http"):], protocol,
                                                _insecure_tls() if url.startswith("https:") else None)
        except (RuntimeError_, NotImplementedError, UpgradeError, OSError, TimeoutError,
                websockets.exceptions.WebSocketException) as e:
            log.info("port-forward refused", pod=f"{p['namespace']}/{p['pod']}", error=str(e))
            return await self._deny(ws, 500, f"unable to forward ports of pod {p['pod']}: {e}")
        try:
            await ws.accept(subprotocol=protocol or None)
        except BaseException:
            if tcp is not None:
                tcp[1].close()
            if upstream is not None:
                await upstream.close()
            raise
        log.info("port-forward started", pod=f"{p['namespace']}/{p['pod']}", protocol=protocol or "(none)",
                 ports=ports)
        if tcp is not None:
            await tunnel(ws, *tcp)
        elif upstream is not None:
            await protocols.relay(ws, upstream)
