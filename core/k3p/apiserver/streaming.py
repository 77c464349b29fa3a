"""``pods/exec``, ``pods/attach`` and ``pods/portforward``: the streaming protocols and the relay.

Clients reach these subresources over WebSocket. kubectl 1.30+ speaks
``v5.channel.k8s.io`` for exec/attach and tunnels SPDY for port-forward
(``SPDY/3.1+portforward.k8s.io``: SPDY frames carried in binary messages); the Python
client speaks ``v5``/``v4.channel.k8s.io`` for both. The API server does not interpret
the frames: it checks who may do what, picks the subprotocol, opens a WebSocket with the
same subprotocol to the pod's kubelet and passes messages both ways (the kubelet
translates to what the runtime speaks). SPDY upgrade requests (old clients) are refused.

Channel protocol (``*.channel.k8s.io``): every binary message starts with a channel byte
(0 stdin, 1 stdout, 2 stderr, 3 error/status, 4 terminal resize); the ``base64`` variants
send text messages whose channel is an ASCII digit followed by base64 data. ``v5`` adds
one control message, ``[255, channel]``: the sender closed that channel (stdin's EOF).
For port-forward the channels come in pairs per requested port (data, error), and the
first message on each carries the port number (2 bytes, little-endian).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ssl
import time
from collections.abc import Coroutine, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlencode

import structlog
import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import NegotiationError

log = structlog.get_logger(__name__)

CHANNEL_V5 = "v5.channel.k8s.io"
CHANNEL_V4 = "v4.channel.k8s.io"
CHANNEL_V4_BASE64 = "v4.base64.channel.k8s.io"
#: kubectl's port-forward: SPDY/3.1 tunnelled through WebSocket binary messages
SPDY_TUNNEL_PORTFORWARD = "SPDY/3.1+portforward.k8s.io"
#: the SPDY stream protocol of port-forward (``X-Stream-Protocol-Version``)
PORTFORWARD_V1 = "portforward.k8s.io"

#: what exec/attach clients may ask for; the client's order of preference wins
REMOTECOMMAND_PROTOCOLS = (CHANNEL_V5, CHANNEL_V4, CHANNEL_V4_BASE64)
#: what port-forward clients may ask for ("" is a client that names none: binary v4 framing)
PORTFORWARD_PROTOCOLS = (SPDY_TUNNEL_PORTFORWARD, CHANNEL_V4, CHANNEL_V4_BASE64, "")

STDIN, STDOUT, STDERR, ERROR, RESIZE = 0, 1, 2, 3, 4
#: v5's control channel: ``[CLOSE, channel]`` half-closes ``channel``
CLOSE = 255

#: a browser cannot set headers on a WebSocket: it may pass its token as a subprotocol
BEARER_PROTOCOL_PREFIX = "base64url.bearer.authorization.k8s.io."

STREAM_SUBRESOURCES = ("exec", "attach", "portforward")

SPDY_UNSUPPORTED = ("this server serves pods/{sub} over WebSocket only (SPDY upgrades are not supported): "
                    "use kubectl 1.30 or newer, or a client that speaks the v5/v4.channel.k8s.io "
                    "WebSocket protocols")


def negotiate(offered: Sequence[str], supported: Sequence[str]) -> str | None:
    """The first protocol the client offered that is supported (``""`` if it offered none and that is)."""
    if not offered:
        return "" if "" in supported else None
    for protocol in offered:
        if protocol and protocol in supported:
            return protocol
    return None


def protocols_for(subresource: str) -> tuple[str, ...]:
    return PORTFORWARD_PROTOCOLS if subresource == "portforward" else REMOTECOMMAND_PROTOCOLS


def bearer_token_from_protocols(offered: Sequence[str]) -> tuple[str | None, list[str]]:
    """The token a browser passed as ``base64url.bearer.authorization.k8s.io.<token>``, and the rest."""
    token = None
    rest = []
    for protocol in offered:
        if protocol.startswith(BEARER_PROTOCOL_PREFIX):
            encoded = protocol[len(BEARER_PROTOCOL_PREFIX):]
            with contextlib.suppress(ValueError):
                token = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
        else:
            rest.append(protocol)
    return token, rest


_TRUE = frozenset({"1", "t", "T", "true", "TRUE", "True"})
_FALSE = frozenset({"0", "f", "F", "false", "FALSE", "False"})


def parse_bool(name: str, value: str) -> bool:
    """A query boolean as Kubernetes parses it (Go's strconv.ParseBool)."""
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f'invalid value for "{name}": {value!r} is not a boolean')


@dataclass
class StreamOptions:
    """``PodExecOptions`` / ``PodAttachOptions`` (stdout and stderr default to true, as in kube)."""

    container: str = ""
    command: tuple[str, ...] = ()
    stdin: bool = False
    stdout: bool = True
    stderr: bool = True
    tty: bool = False

    @classmethod
    def from_query(cls, items: Iterable[tuple[str, str]]) -> StreamOptions:
        """From the client's query (repeated ``command``); raises ValueError for a bad one."""
        opts = cls()
        command: list[str] = []
        for key, value in items:
            if key == "command":
                command.append(value)
            elif key == "container":
                opts.container = value
            elif key in ("stdin", "stdout", "stderr", "tty"):
                setattr(opts, key, parse_bool(key, value))
        opts.command = tuple(command)
        if opts.tty:
            # a terminal merges stderr into stdout (kube's kubelet drops stderr the same way)
            opts.stderr = False
        if not (opts.stdin or opts.stdout or opts.stderr):
            raise ValueError("you must specify at least 1 of stdin, stdout, stderr")
        return opts

    def kubelet_query(self) -> list[tuple[str, str]]:
        """The kubelet's query names for the same options (as kube's API server sends them)."""
        items = [("command", c) for c in self.command]
        for flag, name in ((self.stdin, "input"), (self.stdout, "output"), (self.stderr, "error"),
                           (self.tty, "tty")):
            if flag:
                items.append((name, "1"))
        return items


def portforward_ports(items: Iterable[tuple[str, str]]) -> list[int]:
    """The ports of a port-forward request: ``ports=80,443`` (API) or repeated ``port=`` (kubelet)."""
    ports: list[int] = []
    for key, value in items:
        if key not in ("ports", "port"):
            continue
        for part in value.split(","):
            part = part.strip()
            if not part:
                continue
            try:
                port = int(part)
            except ValueError:
                raise ValueError(f"invalid port {part!r}") from None
            if not 0 < port < 65536:
                raise ValueError(f"port {port} must be between 1 and 65535")
            ports.append(port)
    return ports


def kubelet_path(subresource: str, namespace: str, pod: str, container: str,
                 items: Iterable[tuple[str, str]]) -> str:
    """The kubelet's path and query for a stream (``/exec/ns/pod/c?command=..&output=1``)."""
    items = list(items)
    if subresource == "portforward":
        query = [("port", str(p)) for p in portforward_ports(items)]
        path = f"/portForward/{namespace}/{pod}"
    else:
        opts = StreamOptions.from_query(items)
        if subresource == "exec" and not opts.command:
            raise ValueError("you must specify a command to run in the container")
        query = opts.kubelet_query()
        path = f"/{subresource}/{namespace}/{pod}/{container}"
    return path + ("?" + urlencode(query) if query else "")


class RecentFailures:
    """Why a WebSocket stream just failed, for the SPDY request that kubectl sends right after.

    kubectl falls back to SPDY whenever the WebSocket upgrade fails; without this, the
    user would only see that SPDY is not supported instead of the actual reason.
    """

    def __init__(self, ttl: float = 30.0, limit: int = 1000) -> None:
        self.ttl = ttl
        self.limit = limit
        self._items: dict[tuple[str, ...], tuple[float, Any]] = {}

    def remember(self, key: tuple[str, ...], error: Any) -> None:
        now = time.monotonic()
        if len(self._items) >= self.limit:
            self._items = {k: v for k, v in self._items.items() if v[0] > now}
            while len(self._items) >= self.limit:
                self._items.pop(next(iter(self._items)))
        self._items[key] = (now + self.ttl, error)

    def pop(self, key: tuple[str, ...]) -> Any:
        found = self._items.pop(key, None)
        if found is None or found[0] < time.monotonic():
            return None
        return found[1]


def _lenient_connection(offered: str) -> Any:
    """Client connections that take kube's subprotocol names (``SPDY/3.1+...`` holds a '/').

    websockets checks offered and answered subprotocols against the RFC 7230 token
    grammar, so the offer goes in as a plain header and the answer is only checked to be
    the offered one.
    """

    def chosen(headers: Any) -> str | None:
        values = [v.strip() for h in headers.get_all("Sec-WebSocket-Protocol") for v in h.split(",") if v.strip()]
        if not values:
            return None
        if values != [offered]:
            raise NegotiationError(f"unexpected subprotocol {', '.join(values)}")
        return offered

    def make(protocol: Any, **kwargs: Any) -> ClientConnection:
        protocol.process_subprotocol = chosen
        return ClientConnection(protocol, **kwargs)

    return make


async def dial(url: str, protocol: str, tls: ssl.SSLContext | None = None, timeout: float = 10.0) -> ClientConnection:
    """A WebSocket to ``url`` (``ws://`` or ``wss://``) offering exactly ``protocol`` ("" offers none).

    Raises websockets' InvalidStatus when the server answers the upgrade with an error.
    """
    return await websockets.connect(
        url, ssl=tls, additional_headers={"Sec-WebSocket-Protocol": protocol} if protocol else None,
        compression=None, max_size=None, open_timeout=timeout, ping_interval=None, proxy=None,
        create_connection=_lenient_connection(protocol))


class ServerSide(Protocol):
    """The accepted side of a relay (starlette's WebSocket)."""

    async def receive(self) -> Any: ...
    async def send_bytes(self, data: bytes) -> None: ...
    async def send_text(self, data: str) -> None: ...
    async def close(self, code: int = 1000, reason: str | None = None) -> None: ...


class ClientSide(Protocol):
    """The dialled side of a relay (a ``websockets`` client connection)."""

    close_code: int | None

    def __aiter__(self) -> Any: ...
    async def send(self, message: Any) -> None: ...
    async def close(self, code: int = 1000, reason: str = "") -> None: ...


def _sendable(code: int | None) -> int:
    """A close code that may go on the wire (1005/1006 only describe a missing or broken close)."""
    if code is None or code == 1005:
        return 1000
    if code == 1006 or not (1000 <= code < 5000) or code in (1004, 1015):
        return 1011
    return code



async def race(first: Coroutine[Any, Any, Any], second: Coroutine[Any, Any, Any]
               ) -> tuple[asyncio.Task[Any], asyncio.Task[Any], set[asyncio.Task[Any]]]:
    """Run two pumps of a stream until either ends; the other is cancelled and awaited.

    Returns both tasks and the set of those that finished by themselves, so the caller can
    tell which side closed and read its result or exception.
    """
    a, b = asyncio.create_task(first), asyncio.create_task(second)
    try:
        done, _ = await asyncio.wait({a, b}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (a, b):
            task.cancel()
        for task in (a, b):
            with contextlib.suppress(BaseException):
                await task
    return a, b, done

async def relay(accepted: ServerSide, dialled: ClientSide) -> None:
    """Pass messages both ways (binary stays binary, text stays text) until one side closes.

    The other side is then closed with the same code, so a normal end (1000) reaches the
    client as a normal end: kubectl reads it as EOF on every stream.
    """

    async def down() -> None:
        async for message in dialled:
            if isinstance(message, bytes):
                await accepted.send_bytes(message)
            else:
                await accepted.send_text(message)

    async def up() -> int:
        while True:
            message = await accepted.receive()
            if message["type"] == "websocket.disconnect":
                return int(message.get("code") or 1000)
            data = message.get("bytes")
            if data is None:
                data = message.get("text")
            if data is not None:
                await dialled.send(data)

    down_task, up_task, done = await race(down(), up())
    if down_task in done:
        code = _sendable(dialled.close_code) if down_task.exception() is None else 1011
        with contextlib.suppress(Exception):
            await accepted.close(code)
    else:
        code = up_task.result() if up_task.exception() is None else 1011
        with contextlib.suppress(Exception):
            await dialled.close(_sendable(code))
    with contextlib.suppress(Exception):
        await dialled.close()
