"""The DNS server: UDP and TCP on one address and port, on asyncio.

Cluster names are answered from a :class:`ClusterRecords` index without leaving the event
loop callback (no task per query); everything else goes through a :class:`Forwarder`.
UDP answers larger than 512 bytes, or than the client's EDNS buffer size, lose their
additional records and then, if still too large, come back empty with the TC bit so the
client asks again over TCP. TCP messages carry the 2-byte length prefix; several may be
in flight on one connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import struct
from collections.abc import Iterable
from typing import Any

import structlog
from dnslib import CLASS, EDNS0, QTYPE, RCODE, DNSError, DNSHeader, DNSRecord

from k3p_plugins.coredns.forward import Forwarder, Upstream
from k3p_plugins.coredns.records import Answer, ClusterRecords

log = structlog.get_logger(__name__).bind(component="coredns")

#: the UDP payload size this server advertises in EDNS (the DNS flag day 2020 value)
EDNS_SIZE = 1232
#: the largest UDP answer sent, whatever the client advertises
MAX_UDP_SIZE = 4096
#: a TCP connection with no new query for this long is closed (seconds)
TCP_IDLE_TIMEOUT = 10.0
#: queries one TCP connection may have in flight before the server stops reading more
MAX_TCP_PIPELINE = 64
#: UDP queries waiting for an upstream at once; beyond that new ones get SERVFAIL at once
MAX_UDP_PENDING = 4096
_CLUSTER_CLASSES = (CLASS.IN, 255)  # IN and ANY


def udp_limit(query: DNSRecord) -> int:
    """The largest UDP answer the client accepts: 512 bytes, or its EDNS size."""
    for rr in query.ar:
        if rr.rtype == QTYPE.OPT:
            return max(512, min(rr.edns_len, MAX_UDP_SIZE))
    return 512


def fit_udp(packet: bytes, limit: int) -> bytes:
    """``packet`` cut down to ``limit`` bytes: first without additional records, then empty with TC set."""
    if len(packet) <= limit:
        return packet
    try:
        record = DNSRecord.parse(packet)
    except DNSError:
        # Not parseable: the header alone, with TC set and every count zero.
        flags = struct.unpack("!H", packet[2:4])[0] | 0x0200
        return packet[:2] + struct.pack("!HHHHH", flags, 0, 0, 0, 0)
    record.ar = [rr for rr in record.ar if rr.rtype == QTYPE.OPT]
    smaller = record.pack()
    if len(smaller) <= limit:
        return smaller
    record.rr = []
    record.auth = []
    record.header.tc = 1
    return record.pack()


def _error_header(packet: bytes, rcode: int) -> bytes:
    """A reply with only a header, for queries too broken to parse."""
    (qid, flags) = struct.unpack("!HH", packet[:4])
    opcode_rd = flags & 0x7900  # keep opcode and RD
    return struct.pack("!HHHHHH", qid, 0x8000 | opcode_rd | rcode, 0, 0, 0, 0)


class DNSHandler:
    """Turns query packets into answer packets: cluster names locally, the rest upstream."""

    def __init__(self, records: ClusterRecords, forwarder: Forwarder) -> None:
        self.records = records
        self.forwarder = forwarder

    def parse(self, packet: bytes) -> DNSRecord | bytes | None:
        """The query, or an error reply to send as is, or None to ignore the packet (too short, a response)."""
        if len(packet) < 12 or packet[2] & 0x80:
            return None
        try:
            query = DNSRecord.parse(packet)
        except (DNSError, ValueError, UnicodeError):
            return _error_header(packet, RCODE.FORMERR)
        if len(query.questions) != 1:
            return self._error(query, RCODE.FORMERR)
        if query.header.opcode != 0:
            return self._error(query, RCODE.NOTIMP)
        return query

    def local(self, query: DNSRecord) -> DNSRecord | Answer | None:
        """The whole reply if the cluster index gives it; an :class:`Answer` still to complete
        (a CNAME to chase); None when the query goes upstream."""
        q = query.q
        if q.qclass not in _CLUSTER_CLASSES:
            return None
        answer = self.records.lookup(q.qname, q.qtype)
        if answer is None:
            return None
        if answer.chase:
            return answer
        return self.reply(query, answer)

    def reply(self, query: DNSRecord, answer: Answer) -> DNSRecord:
        """An authoritative reply to ``query`` carrying ``answer``."""
        reply = DNSRecord(DNSHeader(id=query.header.id, qr=1, aa=1, ra=1, rd=query.header.rd, rcode=answer.rcode),
                          q=query.q)
        reply.rr = answer.answer
        reply.auth = answer.authority
        reply.ar = answer.additional
        if any(rr.rtype == QTYPE.OPT for rr in query.ar):
            reply.ar.append(EDNS0(udp_len=EDNS_SIZE))
        return reply

    async def complete(self, query: DNSRecord, packet: bytes, pending: Answer | None) -> bytes:
        """The reply for what :meth:`local` could not finish."""
        if pending is None:
            return await self.forwarder.forward(query, packet)
        reply = self.reply(query, pending)
        found = await self.forwarder.lookup(pending.chase, query.q.qtype)
        if found is not None:
            reply.rr.extend(found.rr)
        return reply.pack()

    async def handle(self, packet: bytes) -> bytes | None:
        """The reply to one query packet (None: no reply), without any size limit."""
        query = self.parse(packet)
        if query is None or isinstance(query, bytes):
            return query
        result = self.local(query)
        if isinstance(result, DNSRecord):
            return result.pack()
        return await self.complete(query, packet, result)

    def servfail(self, query: DNSRecord) -> bytes:
        """A SERVFAIL reply to ``query`` (overload, or no upstream answered)."""
        return self._error(query, RCODE.SERVFAIL)

    @staticmethod
    def _error(query: DNSRecord, rcode: int) -> bytes:
        reply = DNSRecord(DNSHeader(id=query.header.id, qr=1, ra=1, rd=query.header.rd,
                                    opcode=query.header.opcode, rcode=rcode), questions=query.questions[:1])
        return bytes(reply.pack())


class _UDPProtocol(asyncio.DatagramProtocol):
    def __init__(self, handler: DNSHandler) -> None:
        self.handler = handler
        self.transport: asyncio.DatagramTransport | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        try:
            query = self.handler.parse(data)
            if query is None:
                return
            if isinstance(query, bytes):
                self._send(query, addr)
                return
            result = self.handler.local(query)
            if isinstance(result, DNSRecord):
                self._send(fit_udp(result.pack(), udp_limit(query)), addr)
                return
        except Exception:  # one bad query must not take the listener down
            log.exception("query failed")
            return
        if len(self.tasks) >= MAX_UDP_PENDING:
            self._send(self.handler.servfail(query), addr)
            return
        task = asyncio.get_running_loop().create_task(self._later(query, data, result, addr))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _later(self, query: DNSRecord, data: bytes, pending: Answer | None, addr: Any) -> None:
        try:
            answer = await self.handler.complete(query, data, pending)
        except Exception:
            log.exception("query failed", name=str(query.q.qname))
            return
        self._send(fit_udp(answer, udp_limit(query)), addr)

    def _send(self, packet: bytes, addr: Any) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(packet, addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("udp error", error=str(exc))


class DNSServer:
    """A DNS server on one address and port (UDP and TCP), until :meth:`close`."""

    def __init__(self, records: ClusterRecords, forwarder: Forwarder, host: str = "127.0.0.1",
                 port: int = 53) -> None:
        self.handler = DNSHandler(records, forwarder)
        self.records = records
        self.forwarder = forwarder
        self.host = host
        self.port = port
        self._udp: asyncio.DatagramTransport | None = None
        self._udp_protocol: _UDPProtocol | None = None
        self._tcp: asyncio.Server | None = None
        #: open TCP connections: their handler tasks and writers
        self._connections: dict[asyncio.Task[Any], asyncio.StreamWriter] = {}
        self._closing = False

    async def start(self) -> DNSServer:
        """Bind UDP and TCP; with port 0 the kernel picks one port free for both."""
        loop = asyncio.get_running_loop()
        attempts = 20 if self.port == 0 else 1
        for attempt in range(attempts):
            transport, protocol = await loop.create_datagram_endpoint(
                lambda: _UDPProtocol(self.handler), local_addr=(self.host, self.port))
            port = transport.get_extra_info("sockname")[1]
            try:
                self._tcp = await asyncio.start_server(self._tcp_client, self.host, port, reuse_address=True)
            except OSError as e:
                transport.close()
                if e.errno != errno.EADDRINUSE or attempt == attempts - 1:
                    raise
                continue
            self._udp, self._udp_protocol, self.port = transport, protocol, port
            break
        log.info("dns server listening", address=f"{self.host}:{self.port}")
        return self

    async def close(self) -> None:
        """Stop listening and drop the connections and queries in flight."""
        self._closing = True
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
        if self._udp_protocol is not None:
            for task in self._udp_protocol.tasks:
                task.cancel()
            await asyncio.gather(*self._udp_protocol.tasks, return_exceptions=True)
        # Closing a connection ends its handler (its read sees EOF); cancelling the handler
        # itself would upset asyncio's stream machinery.
        handlers = list(self._connections)
        for writer in self._connections.values():
            writer.close()
        if handlers:
            await asyncio.wait(handlers, timeout=5)
        if self._tcp is not None:
            with contextlib.suppress(Exception):
                await self._tcp.wait_closed()
        self._udp = self._tcp = self._udp_protocol = None

    async def __aenter__(self) -> DNSServer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _tcp_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        current = asyncio.current_task()
        if current is not None:
            self._connections[current] = writer
        pending: set[asyncio.Task[None]] = set()
        try:
            while True:
                async with asyncio.timeout(TCP_IDLE_TIMEOUT):
                    (size,) = struct.unpack("!H", await reader.readexactly(2))
                    packet = await reader.readexactly(size)
                if len(pending) >= MAX_TCP_PIPELINE:
                    await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                task = asyncio.create_task(self._tcp_query(packet, writer))
                pending.add(task)
                task.add_done_callback(pending.discard)
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
            # A client may half-close after its last query: its answers are still due.
            if pending and not self._closing:
                await asyncio.wait(pending, timeout=self.forwarder.timeout * max(1, len(self.forwarder.upstreams)))
        finally:
            for task in pending:
                task.cancel()
            writer.close()
            if current is not None:
                self._connections.pop(current, None)

    async def _tcp_query(self, packet: bytes, writer: asyncio.StreamWriter) -> None:
        try:
            answer = await self.handler.handle(packet)
        except Exception:
            log.exception("query failed")
            return
        if answer is not None and not writer.is_closing():
            writer.write(struct.pack("!H", len(answer)) + answer)


async def serve_dns(records: ClusterRecords, host: str = "127.0.0.1", port: int = 53,
                    upstreams: Iterable[Upstream] = (), *, forwarder: Forwarder | None = None) -> DNSServer:
    """Start a DNS server answering from ``records`` and forwarding the rest; returns it running.

    ``upstreams`` are ``(address, port)`` pairs (see :func:`~k3p_plugins.coredns.forward.read_resolv_conf`);
    pass ``forwarder`` instead to share one (and its cache) between several servers. Use
    ``async with await serve_dns(...)`` or call ``close()``.
    """
    if forwarder is None:
        forwarder = Forwarder(upstreams, exclude=[(host, port)])
    return await DNSServer(records, forwarder, host, port).start()
