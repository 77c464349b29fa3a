"""Forwarding the names the cluster does not own to the node's upstream nameservers.

Queries go over UDP first and are retried over TCP when the answer comes back truncated.
Servers are tried in turn (the starting one rotates per query) with a timeout each; when
none answers the client gets SERVFAIL. Positive answers are cached for their TTL, capped
like K3s's Corefile (``cache 30``), with a bounded number of entries.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import structlog
from dnslib import QTYPE, RCODE, DNSError, DNSQuestion, DNSRecord

log = structlog.get_logger(__name__).bind(component="coredns")

Upstream = tuple[str, int]

DEFAULT_TIMEOUT = 2.0
DEFAULT_CACHE_SIZE = 10_000
#: the longest a forwarded answer is kept, in seconds (K3s's Corefile: ``cache 30``)
DEFAULT_MAX_TTL = 30
_TCP_MAX = 65535


def parse_resolv_conf(text: str) -> list[Upstream]:
    """The ``nameserver`` entries of a resolv.conf, in order, each on port 53."""
    servers: list[Upstream] = []
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split(";", 1)[0].split()
        if len(fields) >= 2 and fields[0] == "nameserver":
            # An IPv6 zone index (fe80::1%eth0) is kept: the socket layer understands it.
            address = fields[1]
            if (address, 53) not in servers:
                servers.append((address, 53))
    return servers


def read_resolv_conf(path: str | Path) -> list[Upstream]:
    """:func:`parse_resolv_conf` of a file; an unreadable file gives no servers."""
    try:
        return parse_resolv_conf(Path(path).read_text())
    except OSError as e:
        log.warning("cannot read resolv.conf", path=str(path), error=str(e))
        return []


class UpstreamError(Exception):
    """No upstream server gave an answer."""


@dataclass(slots=True)
class _Cached:
    stored: float
    expires: float
    record: DNSRecord
    ttls: list[int]


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _servfail(query: DNSRecord) -> bytes:
    reply = query.reply(ra=1, aa=0)
    reply.header.rcode = RCODE.SERVFAIL
    return reply.pack()


class Forwarder:
    """Sends queries to upstream nameservers and caches the positive answers."""

    def __init__(self, upstreams: Iterable[Upstream] = (), *, timeout: float = DEFAULT_TIMEOUT,
                 cache_size: int = DEFAULT_CACHE_SIZE, max_ttl: int = DEFAULT_MAX_TTL,
                 exclude: Iterable[Upstream] = ()) -> None:
        """``exclude`` lists servers never to forward to (the DNS server's own addresses: no loops)."""
        self.timeout = timeout
        self.cache_size = cache_size
        self.max_ttl = max_ttl
        self._exclude = {(h, int(p)) for h, p in exclude}
        self.upstreams: list[Upstream] = []
        self.set_upstreams(upstreams)
        self._next = 0
        self._cache: OrderedDict[tuple[str, int, int, bool], _Cached] = OrderedDict()

    def set_upstreams(self, upstreams: Iterable[Upstream]) -> None:
        """Replace the upstream servers (e.g. after resolv.conf changed)."""
        servers = [(h, int(p)) for h, p in upstreams if (h, int(p)) not in self._exclude]
        if servers != self.upstreams:
            log.info("upstream nameservers", servers=[f"{h}:{p}" for h, p in servers])
        self.upstreams = servers

    def clear_cache(self) -> None:
        self._cache.clear()

    # --- the public verbs ----------------------------------------------------------------

    async def forward(self, query: DNSRecord, packet: bytes | None = None) -> bytes:
        """The upstream answer to ``query`` as bytes with the query's ID; SERVFAIL when none comes."""
        key = self._cache_key(query)
        if key is not None:
            hit = self._from_cache(key, query)
            if hit is not None:
                return hit
        raw = packet if packet is not None else query.pack()
        try:
            answer = await self.exchange(raw)
        except UpstreamError as e:
            log.debug("no upstream answered", name=str(query.q.qname), error=str(e))
            return _servfail(query)
        if key is not None:
            self._store(key, answer)
        return answer

    async def lookup(self, qname: str, qtype: int) -> DNSRecord | None:
        """Resolve one name upstream (recursion desired); None when nothing usable came back."""
        query = DNSRecord(q=DNSQuestion(qname, qtype))
        try:
            return DNSRecord.parse(await self.forward(query))
        except DNSError:
            return None

    async def exchange(self, packet: bytes) -> bytes:
        """Send a query packet to the upstreams in turn; the first answer, with the packet's ID."""
        if len(packet) < 12:
            raise UpstreamError("query too short")
        servers = self.upstreams
        if not servers:
            raise UpstreamError("no upstream nameservers")
        start = self._next % len(servers)
        self._next += 1
        client_id = packet[:2]
        errors = []
        for server in servers[start:] + servers[:start]:
            # A fresh ID per upstream query: the client's cannot be trusted to be random.
            wire = struct.pack("!H", random.getrandbits(16)) + packet[2:]
            try:
                async with asyncio.timeout(self.timeout):
                    answer = await self._udp(server, wire)
                    if len(answer) > 2 and answer[2] & 0x02:  # TC: the whole answer needs TCP
                        answer = await self._tcp(server, wire)
                return client_id + answer[2:]
            except (TimeoutError, OSError, asyncio.IncompleteReadError) as e:
                errors.append(f"{server[0]}:{server[1]}: {type(e).__name__} {e}".rstrip())
        raise UpstreamError("; ".join(errors))

    # --- transports ----------------------------------------------------------------------

    async def _udp(self, server: Upstream, wire: bytes) -> bytes:
        loop = asyncio.get_running_loop()
        sock = socket.socket(_family(server[0]), socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            # A connected socket only hears from the server it asked, from a random port.
            sock.connect(server)
            await loop.sock_sendall(sock, wire)
            while True:
                data = await loop.sock_recv(sock, _TCP_MAX)
                if len(data) >= 12 and data[:2] == wire[:2]:
                    return data
        finally:
            sock.close()

    async def _tcp(self, server: Upstream, wire: bytes) -> bytes:
        reader, writer = await asyncio.open_connection(server[0], server[1])
        try:
            writer.write(struct.pack("!H", len(wire)) + wire)
            await writer.drain()
            while True:
                (size,) = struct.unpack("!H", await reader.readexactly(2))
                data = await reader.readexactly(size)
                if data[:2] == wire[:2]:
                    return data
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    # --- cache ---------------------------------------------------------------------------

    def _cache_key(self, query: DNSRecord) -> tuple[str, int, int, bool] | None:
        if self.cache_size <= 0 or len(query.questions) != 1:
            return None
        q = query.questions[0]
        dnssec = any(rr.rtype == QTYPE.OPT and rr.edns_do for rr in query.ar)
        return (str(q.qname).lower(), q.qtype, q.qclass, bool(dnssec or query.header.cd))

    def _from_cache(self, key: tuple[str, int, int, bool], query: DNSRecord) -> bytes | None:
        entry = self._cache.get(key)
        if entry is None:
            return None
        now = time.monotonic()
        if now >= entry.expires:
            del self._cache[key]
            return None
        self._cache.move_to_end(key)
        age = int(now - entry.stored)
        record = entry.record
        # Nothing awaits between here and pack(), so the shared record can be adjusted in place.
        for rr, ttl in zip(self._ttl_rrs(record), entry.ttls, strict=True):
            rr.ttl = max(0, ttl - age)
        record.header.id = query.header.id
        record.questions = list(query.questions)
        return record.pack()

    def _store(self, key: tuple[str, int, int, bool], answer: bytes) -> None:
        try:
            record = DNSRecord.parse(answer)
        except DNSError:
            return
        h = record.header
        if h.rcode != RCODE.NOERROR or h.tc or not record.rr:
            return
        rrs = self._ttl_rrs(record)
        ttls = [rr.ttl for rr in rrs]
        ttl = min([*ttls, self.max_ttl])
        if ttl <= 0:
            return
        now = time.monotonic()
        self._cache[key] = _Cached(now, now + ttl, record, ttls)
        self._cache.move_to_end(key)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    @staticmethod
    def _ttl_rrs(record: DNSRecord) -> list:
        return [rr for rr in (*record.rr, *record.auth, *record.ar) if rr.rtype != QTYPE.OPT]

