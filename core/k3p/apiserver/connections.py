"""How many connections the HTTPS listener keeps, from whom, and for how long.

Every connection is admitted or refused the moment it is accepted, on its TCP peer
address alone, before any TLS work is done for it: a refused one costs an accept and a
close. The listener accepts connections itself and starts the TLS handshake of each
admitted one (``connect_accepted_socket``), so that it knows whether the client
presented a certificate:

- ``max_connections`` caps all open connections;
- ``max_per_client`` caps, per peer address, the connections that have not shown a
  client certificate (still in the handshake, or through it without one): one host
  without credentials cannot hold more, while a node or component with its certificate
  may open as many as it needs;
- a quarter of ``max_connections`` is kept for clients with a certificate: once the
  connections without one hold the rest, a new connection is still admitted, but it
  must present a certificate in its handshake or it is closed. This keeps nodes,
  components and admins reachable while anonymous or bearer-token clients fill up the
  server. One address may have only a few connections at a time in that reserve's
  handshakes, so that idle TCP connections from one host cannot hold the reserve either.
  (Before the handshake no client can be told from another except by address, so a
  flood of idle TCP connections from many addresses is bounded only by the caps and the
  handshake timeout.)
- the TLS handshake, and then each request's headers, must arrive within
  ``header_timeout`` (kube-apiserver: ``ReadHeaderTimeout`` 32 s); a keep-alive
  connection may sit idle ``idle_timeout`` between requests (kube-apiserver: 90 s);
- request headers larger than ``max_header_bytes`` are answered 431 (those two are
  enforced by the HTTP protocol: :mod:`k3p.apiserver.request_headers`).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import resource
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog

from k3p.config import Config, ConfigError
from k3p.durations import parse_duration

log = structlog.get_logger(__name__)

#: file descriptors kept for everything else the process opens (datastore, its own client
#: connections, child processes, logs) when the open-files limit bounds the connections
_FD_HEADROOM_MIN = 64

_REFUSAL_LOG_INTERVAL = 10.0

#: handshakes one address may have running at once in the share kept for certificates
RESERVED_HANDSHAKES_PER_CLIENT = 8


@dataclass(frozen=True)
class ConnectionLimits:
    """The listener's limits; ``0`` turns a cap off."""

    max_connections: int = 2048
    max_per_client: int = 256
    header_timeout: float = 32.0
    idle_timeout: float = 90.0
    max_header_bytes: int = 64 * 1024

    @property
    def reserved_for_certificates(self) -> int:
        """Connections only clients with a certificate may take once the others hold the rest."""
        return self.max_connections // 4

    @classmethod
    def from_config(cls, config: Config) -> ConnectionLimits:
        """The limits the server's options set; ConfigError for values that make no sense."""
        def count(name: str) -> int:
            value = config.get(name)
            if not isinstance(value, int) or value < 0:
                raise ConfigError(f"invalid value for {name.replace('_', '-')}: {value!r} (a count, 0 for no limit)")
            return value

        def duration(name: str) -> float:
            raw = config.get(name)
            try:
                seconds = parse_duration(raw)
            except ValueError:
                seconds = -1.0
            if seconds <= 0:
                raise ConfigError(f"invalid value for {name.replace('_', '-')}: {raw!r} (a duration such as 30s)")
            return seconds

        return cls(max_connections=count("max_connections"), max_per_client=count("max_connections_per_client"),
                   header_timeout=duration("request_header_timeout"),
                   idle_timeout=duration("idle_connection_timeout"),
                   max_header_bytes=count("max_request_header_bytes"))

    def within_open_files(self, open_files: int) -> ConnectionLimits:
        """These limits with ``max_connections`` lowered to what ``open_files`` descriptors allow."""
        usable = max(16, open_files - max(_FD_HEADROOM_MIN, open_files // 8))
        if self.max_connections and self.max_connections <= usable:
            return self
        log.warning("the open-files limit bounds the API server's connections below --max-connections",
                    max_connections=self.max_connections or "unlimited", open_files=open_files, using=usable)
        return ConnectionLimits(usable, self.max_per_client, self.header_timeout, self.idle_timeout,
                                self.max_header_bytes)


def raise_open_files_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit (kube-apiserver does the same); the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard and hard != resource.RLIM_INFINITY:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as e:
            log.warning("cannot raise the open-files limit", soft=soft, hard=hard, error=str(e))
    return soft if soft != resource.RLIM_INFINITY else 1 << 30


def client_address(peer: Any) -> str:
    """The address a peer is counted under: IPv4-mapped IPv6 addresses count as their IPv4 address."""
    if not peer:
        return ""
    host = peer[0] if isinstance(peer, tuple) else str(peer)
    if ":" not in host:
        return host
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        return str(ip.ipv4_mapped)
    return str(ip)


_PENDING, _ANONYMOUS, _CERTIFIED, _CLOSED = range(4)


def _decrement(counts: dict[str, int], key: str) -> None:
    left = counts.get(key, 0) - 1
    if left > 0:
        counts[key] = left
    else:
        counts.pop(key, None)


class _Slot:
    __slots__ = ("address", "reserved", "state")

    def __init__(self, address: str, reserved: bool) -> None:
        self.address = address
        self.state = _PENDING
        #: admitted into the share kept for certificates: must present one
        self.reserved = reserved


class ConnectionGate:
    """Admits, counts and releases the listener's connections (see the module docstring)."""

    def __init__(self, limits: ConnectionLimits, ssl_context: ssl.SSLContext) -> None:
        self.limits = limits
        self.ssl_context = ssl_context
        self.pending = 0
        self.anonymous = 0
        self.certified = 0
        #: per address: connections without a certificate
        self.uncertified: dict[str, int] = {}
        #: per address: handshakes in the share kept for certificates
        self.reserved_handshakes: dict[str, int] = {}
        self._refused: dict[str, int] = {}
        self._refusals_logged = 0.0

    @property
    def total(self) -> int:
        return self.pending + self.anonymous + self.certified

    def admit(self, address: str) -> _Slot | None:
        """A slot for a new connection from ``address``, or None: close it at once."""
        limits = self.limits
        cap = limits.max_connections
        if cap and self.total >= cap:
            return self._refuse("max-connections")
        if limits.max_per_client and self.uncertified.get(address, 0) >= limits.max_per_client:
            return self._refuse("max-connections-per-client")
        reserved = bool(cap) and self.pending + self.anonymous >= cap - limits.reserved_for_certificates
        if reserved:
            if self.reserved_handshakes.get(address, 0) >= RESERVED_HANDSHAKES_PER_CLIENT:
                return self._refuse("reserved-for-client-certificates")
            self.reserved_handshakes[address] = self.reserved_handshakes.get(address, 0) + 1
        self.pending += 1
        self.uncertified[address] = self.uncertified.get(address, 0) + 1
        return _Slot(address, reserved)

    def established(self, slot: _Slot, certificate: bool) -> bool:
        """The handshake is done; False when the connection must be closed (no certificate in the reserve)."""
        if slot.state != _PENDING:
            return False
        if slot.reserved and not certificate:
            self._refuse("reserved-for-client-certificates")
            self.release(slot)
            return False
        self.pending -= 1
        if slot.reserved:
            _decrement(self.reserved_handshakes, slot.address)
        if certificate:
            _decrement(self.uncertified, slot.address)
            slot.state = _CERTIFIED
            self.certified += 1
        else:
            slot.state = _ANONYMOUS
            self.anonymous += 1
        return True

    def release(self, slot: _Slot) -> None:
        """The connection is gone (any number of calls)."""
        state, slot.state = slot.state, _CLOSED
        if state == _PENDING:
            self.pending -= 1
            _decrement(self.uncertified, slot.address)
            if slot.reserved:
                _decrement(self.reserved_handshakes, slot.address)
        elif state == _ANONYMOUS:
            self.anonymous -= 1
            _decrement(self.uncertified, slot.address)
        elif state == _CERTIFIED:
            self.certified -= 1

    def _refuse(self, reason: str) -> None:
        # Refusals come in floods: one summary line every few seconds, not one per connection.
        self._refused[reason] = self._refused.get(reason, 0) + 1
        now = time.monotonic()
        if now - self._refusals_logged >= _REFUSAL_LOG_INTERVAL:
            self._refusals_logged = now
            log.warning("connections refused", **{k.replace("-", "_"): v for k, v in self._refused.items()},
                        open=self.total, without_certificate=self.pending + self.anonymous)
            self._refused.clear()
        return None

    def listen(self, host: str | None, port: int, backlog: int,
               make_protocol: Callable[[], asyncio.Protocol], bound: socket.socket | None = None) -> GatedListener:
        """Listen on ``host``:``port`` (or on the already ``bound`` socket); each admitted
        connection gets a protocol from ``make_protocol`` once its TLS handshake is done."""
        sockets = [_listening(bound, backlog)] if bound is not None else _listening_sockets(host, port, backlog)
        listener = GatedListener(self, sockets, make_protocol)
        listener.start()
        return listener


def _listening_sockets(host: str | None, port: int, backlog: int) -> list[socket.socket]:
    """Bound, listening, non-blocking sockets for ``host`` (every address it resolves to), as
    asyncio's create_server makes them: SO_REUSEADDR, IPv6 sockets IPv6-only."""
    found: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                                                  flags=socket.AI_PASSIVE):
            sock = socket.socket(family, kind, proto)
            found.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(backlog)
            sock.setblocking(False)
    except OSError:
        for sock in found:
            sock.close()
        raise
    return found


def _listening(sock: socket.socket, backlog: int) -> socket.socket:
    sock.listen(backlog)
    sock.setblocking(False)
    return sock


#: connections accepted per wake-up of a listening socket, so that a flood does not starve the rest
_ACCEPT_BATCH = 256
#: accept errors that mean the process is out of descriptors or memory: wait a little, then go on
_ACCEPT_RESOURCE_ERRORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class GatedListener:
    """Accepts connections itself, so that a refused one is closed before asyncio (or uvloop)
    makes a transport for it, and admitted ones get their TLS handshake from
    ``connect_accepted_socket``. Has the ``close``/``wait_closed`` of an asyncio server."""

    def __init__(self, gate: ConnectionGate, sockets: list[socket.socket],
                 make_protocol: Callable[[], asyncio.Protocol]) -> None:
        self.gate = gate
        self.sockets = sockets
        self.make_protocol = make_protocol
        self.loop = asyncio.get_running_loop()
        self._handshakes: set[asyncio.Task[None]] = set()
        self._closed = False

    def start(self) -> None:
        for sock in self.sockets:
            self.loop.add_reader(sock.fileno(), self._accept, sock)

    def _accept(self, sock: socket.socket) -> None:
        for _ in range(_ACCEPT_BATCH):
            try:
                conn, peer = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno in _ACCEPT_RESOURCE_ERRORS:
                    log.warning("cannot accept connections", error=str(e), open=self.gate.total)
                    self.loop.remove_reader(sock.fileno())
                    self.loop.call_later(0.1, self._resume, sock)
                    return
                continue  # the client gave up before we accepted (ECONNABORTED and the like)
            slot = self.gate.admit(client_address(peer))
            if slot is None:
                conn.close()
                continue
            conn.setblocking(False)
            task = self.loop.create_task(self._handshake(conn, slot))
            self._handshakes.add(task)
            task.add_done_callback(self._handshakes.discard)

    def _resume(self, sock: socket.socket) -> None:
        if not self._closed:
            self.loop.add_reader(sock.fileno(), self._accept, sock)

    async def _handshake(self, conn: socket.socket, slot: _Slot) -> None:
        protocol = GatedConnection(self.gate, slot, self.make_protocol)
        try:
            await self.loop.connect_accepted_socket(lambda: protocol, conn, ssl=self.gate.ssl_context,
                                                    ssl_handshake_timeout=self.gate.limits.header_timeout)
        except asyncio.CancelledError:
            self.gate.release(slot)
            raise
        except Exception as e:  # timeouts, resets, bad handshakes: each just ends the connection
            log.debug("TLS handshake failed", error=f"{type(e).__name__}: {e}")
            self.gate.release(slot)

    def close(self) -> None:
        """Stop accepting and abort the handshakes still running."""
        self._closed = True
        for sock in self.sockets:
            with contextlib.suppress(ValueError, OSError):
                self.loop.remove_reader(sock.fileno())
            sock.close()
        for task in list(self._handshakes):
            task.cancel()

    async def wait_closed(self) -> None:
        if self._handshakes:
            await asyncio.gather(*self._handshakes, return_exceptions=True)


class GatedConnection(asyncio.Protocol):
    """One admitted connection once TLS is up: the certificate check, then the HTTP protocol.

    It stays the TLS transport's protocol for the connection's whole life and passes
    everything on to the current HTTP or WebSocket protocol, so that the gate learns when
    the connection ends whichever protocol serves it by then.
    """

    def __init__(self, gate: ConnectionGate, slot: _Slot, make_inner: Callable[[], asyncio.Protocol]) -> None:
        self.gate = gate
        self.slot = slot
        self.make_inner = make_inner
        self.inner: Any = None

    def connection_made(self, transport: Any) -> None:
        ssl_object = transport.get_extra_info("ssl_object")
        certificate = bool(ssl_object is not None and ssl_object.getpeercert(binary_form=True))
        if not self.gate.established(self.slot, certificate):
            transport.abort()
            return
        self.inner = self.make_inner()
        self.inner.connection_made(_ForwardingTransport(transport, self))

    def data_received(self, data: bytes) -> None:
        if self.inner is not None:
            self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.inner is not None else None

    def connection_lost(self, exc: Exception | None) -> None:
        self.gate.release(self.slot)
        if self.inner is not None:
            self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()


class _ForwardingTransport:
    """The TLS transport as the HTTP protocol sees it; switching protocols (a WebSocket
    upgrade) switches what the connection forwards to, not the TLS transport's protocol."""

    __slots__ = ("_conn", "_tls")

    def __init__(self, tls: Any, conn: GatedConnection) -> None:
        self._tls = tls
        self._conn = conn

    def set_protocol(self, protocol: Any) -> None:
        self._conn.inner = protocol

    def get_protocol(self) -> Any:
        return self._conn.inner

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._tls.write(data)

    def writelines(self, data: Any) -> None:
        self._tls.writelines(data)

    def close(self) -> None:
        self._tls.close()

    def abort(self) -> None:
        self._tls.abort()

    def is_closing(self) -> bool:
        return self._tls.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._tls.get_extra_info(name, default)

    def pause_reading(self) -> None:
        self._tls.pause_reading()

    def resume_reading(self) -> None:
        self._tls.resume_reading()

    def is_reading(self) -> bool:
        return self._tls.is_reading()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tls, name)
