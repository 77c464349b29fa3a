"""The cluster DNS server end to end on loopback.

Against a real ``k3p server``: Services and an EndpointSlice made through the API are
answered over UDP and TCP by the DNS component running in this process with the
``system:k3p:coredns`` identity (so the plugin's RBAC manifests are exercised too); other
names go to a fake upstream nameserver on another loopback port. Without a server: the
forwarder's TCP retry, cache and SERVFAIL, and UDP truncation of large cluster answers.
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from dnslib import EDNS0, QTYPE, RCODE, RR, A, DNSRecord

from k3p.client import ApiError, Client
from k3p.client.resources import ENDPOINTSLICES, SECRETS, SERVICES
from k3p.pki import ensure_ca
from k3p.testing import K3pServer, async_wait_for, free_port
from k3p_plugins.coredns import USER, ClusterRecords, Forwarder, serve_dns
from k3p_plugins.coredns.node import run_node_dns

UPSTREAM_IP = "192.0.2.7"
#: answers the fake upstream gives only over TCP (its UDP answer is truncated)
BIG_COUNT = 60


class FakeUpstream(asyncio.DatagramProtocol):
    """A nameserver for ``example.org`` (UDP and TCP) that counts the queries it gets."""

    def __init__(self, silent: bool = False) -> None:
        self.silent = silent
        self.queries: list[tuple[str, str, str]] = []
        self.transport: Any = None
        self.tcp: asyncio.Server | None = None
        self.port = 0

    def answer(self, data: bytes, tcp: bool) -> bytes:
        query = DNSRecord.parse(data)
        name = str(query.q.qname).lower().rstrip(".")
        self.queries.append((name, QTYPE[query.q.qtype], "tcp" if tcp else "udp"))
        reply = query.reply()
        if name == "example.org" and query.q.qtype == QTYPE.A:
            reply.add_answer(RR(query.q.qname, QTYPE.A, ttl=300, rdata=A(UPSTREAM_IP)))
        elif name == "big.example.org":
            if tcp:
                for i in range(BIG_COUNT):
                    reply.add_answer(RR(query.q.qname, QTYPE.A, ttl=300, rdata=A(f"198.51.100.{i}")))
            else:
                reply.header.tc = 1
        else:
            reply.header.rcode = RCODE.NXDOMAIN
        return reply.pack()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if not self.silent:
            self.transport.sendto(self.answer(data, tcp=False), addr)
        else:
            self.queries.append(("", "", "udp"))

    async def _tcp_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                (size,) = struct.unpack("!H", await reader.readexactly(2))
                reply = self.answer(await reader.readexactly(size), tcp=True)
                writer.write(struct.pack("!H", len(reply)) + reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def start(self) -> FakeUpstream:
        loop = asyncio.get_running_loop()
        for _ in range(20):
            port = free_port()
            try:
                await loop.create_datagram_endpoint(lambda: self, local_addr=("127.0.0.1", port))
            except OSError:
                continue
            self.tcp = await asyncio.start_server(self._tcp_client, "127.0.0.1", port)
            self.port = port
            return self
        raise RuntimeError("no free port for the fake upstream")

    async def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        if self.tcp is not None:
            self.tcp.close()


@pytest.fixture
async def upstream() -> AsyncIterator[FakeUpstream]:
    up = await FakeUpstream().start()
    yield up
    await up.close()


async def ask(port: int, name: str, qtype: str = "A", *, tcp: bool = False, edns: int = 0) -> DNSRecord:
    query = DNSRecord.question(name, qtype)
    if edns:
        query.add_ar(EDNS0(udp_len=edns))
    data = await asyncio.to_thread(query.send, "127.0.0.1", port, tcp=tcp, timeout=5)
    reply = DNSRecord.parse(data)
    assert reply.header.id == query.header.id
    return reply


def rdatas(reply: DNSRecord, rtype: str = "A") -> list[str]:
    return sorted(str(rr.rdata) for rr in reply.rr if rr.rtype == getattr(QTYPE, rtype))


def coredns_client(server: K3pServer, folder: Path) -> Client:
    """A client with the identity the plugin's component uses (``system:k3p:coredns``)."""
    ca = ensure_ca(server.data_dir / "server" / "tls", "client-ca", "unused")
    cert, key = ca.issue(USER, client=True)
    cert_file, key_file = folder / "coredns.crt", folder / "coredns.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM)
                          + ca.cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_file.chmod(0o600)
    return Client(server.url, ca_file=server.ca_file, cert_file=cert_file, key_file=key_file,
                  user_agent="k3p-coredns-test")


def service(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "default"},
            "spec": spec}


async def test_cluster_names_and_forwarding(k3p_server: K3pServer, upstream: FakeUpstream, tmp_path: Path) -> None:
    admin = k3p_server.admin_client("coredns-test")
    dns_client = coredns_client(k3p_server, tmp_path)
    task: asyncio.Task[None] | None = None
    try:
        # The plugin's manifests give its user read access, and nothing more.
        await async_wait_for(lambda: dns_client.list(ENDPOINTSLICES), timeout=30,
                             what="RBAC for system:k3p:coredns")
        with pytest.raises(ApiError) as denied:
            await dns_client.list(SECRETS)
        assert denied.value.status == 403

        web = await admin.create(SERVICES, service("web", ports=[{"name": "http", "port": 80}]))
        web_ip = web["spec"]["clusterIP"]
        await admin.create(SERVICES, service("db", clusterIP="None", ports=[{"name": "pg", "port": 5432}]))
        await admin.create(ENDPOINTSLICES, {
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "db-1", "namespace": "default", "labels": {"kubernetes.io/service-name": "db"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.42.1.1"], "hostname": "db-0", "conditions": {"ready": True}},
                          {"addresses": ["10.42.1.2"], "hostname": "db-1", "conditions": {"ready": True}}],
            "ports": [{"name": "pg", "port": 5432, "protocol": "TCP"}],
        })
        await admin.create(SERVICES, service("ext", type="ExternalName", externalName="example.org"))

        port = free_port()
        started = asyncio.Event()
        task = asyncio.create_task(run_node_dns(dns_client, ["127.0.0.1"], port,
                                                upstreams=[("127.0.0.1", upstream.port)], ready=started.set))
        await asyncio.wait_for(started.wait(), 30)

        for tcp in (False, True):
            reply = await ask(port, "web.default.svc.cluster.local", tcp=tcp)
            assert reply.header.rcode == RCODE.NOERROR and reply.header.aa == 1
            assert rdatas(reply) == [web_ip]
            assert reply.rr[0].ttl == 5
        assert rdatas(await ask(port, "db.default.svc.cluster.local")) == ["10.42.1.1", "10.42.1.2"]
        assert rdatas(await ask(port, "DB-1.db.default.svc.Cluster.Local", tcp=True)) == ["10.42.1.2"]

        srv = await ask(port, "_pg._tcp.db.default.svc.cluster.local", "SRV")
        assert sorted((rr.rdata.port, str(rr.rdata.target)) for rr in srv.rr) == [
            (5432, "db-0.db.default.svc.cluster.local."), (5432, "db-1.db.default.svc.cluster.local.")]
        assert sorted(str(rr.rdata) for rr in srv.ar) == ["10.42.1.1", "10.42.1.2"]
        srv = await ask(port, "_http._tcp.web.default.svc.cluster.local", "SRV")
        assert [(rr.rdata.port, str(rr.rdata.target)) for rr in srv.rr] == [(80, "web.default.svc.cluster.local.")]

        ptr = await ask(port, ".".join(reversed(web_ip.split("."))) + ".in-addr.arpa", "PTR")
        assert rdatas(ptr, "PTR") == ["web.default.svc.cluster.local."]

        # Outside names are forwarded, inside unknown names are not
        before = len(upstream.queries)
        forwarded = await ask(port, "example.org")
        assert rdatas(forwarded) == [UPSTREAM_IP]
        assert rdatas(await ask(port, "example.org", tcp=True)) == [UPSTREAM_IP]
        assert upstream.queries[before:] == [("example.org", "A", "udp")]  # the second came from the cache
        # ExternalName: the CNAME, and its target resolved upstream (here from the cache)
        ext = await ask(port, "ext.default.svc.cluster.local")
        assert [(QTYPE[rr.rtype], str(rr.rdata)) for rr in ext.rr] == [("CNAME", "example.org."),
                                                                          ("A", UPSTREAM_IP)]

        missing = await ask(port, "example.org.default.svc.cluster.local")
        assert missing.header.rcode == RCODE.NXDOMAIN
        assert [QTYPE[rr.rtype] for rr in missing.auth] == ["SOA"]
        assert (await ask(port, "nothing.example.org")).header.rcode == RCODE.NXDOMAIN  # upstream's NXDOMAIN
        nodata = await ask(port, "web.default.svc.cluster.local", "AAAA")
        assert nodata.header.rcode == RCODE.NOERROR and nodata.rr == []

        # A deleted Service stops resolving within a second
        await admin.delete(SERVICES, "web", "default")
        start = time.monotonic()

        async def gone() -> bool:
            return (await ask(port, "web.default.svc.cluster.local")).header.rcode == RCODE.NXDOMAIN

        await async_wait_for(gone, timeout=1.0, interval=0.05, what="NXDOMAIN for a deleted Service")
        assert time.monotonic() - start < 1.0
    finally:
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await dns_client.close()
        await admin.close()


async def test_forwarder_retries_truncated_answers_over_tcp(upstream: FakeUpstream) -> None:
    async with await serve_dns(ClusterRecords(), "127.0.0.1", 0, [("127.0.0.1", upstream.port)]) as server:
        # Over TCP the client gets every record, which the server fetched upstream over TCP
        full = await ask(server.port, "big.example.org", tcp=True)
        assert len(full.rr) == BIG_COUNT
        assert ("big.example.org", "A", "udp") in upstream.queries
        assert ("big.example.org", "A", "tcp") in upstream.queries
        # Over UDP without EDNS the same answer does not fit in 512 bytes: TC, no records
        cut = await ask(server.port, "big.example.org")
        assert cut.header.tc == 1 and cut.rr == []
        # With a large EDNS buffer it fits
        assert len((await ask(server.port, "big.example.org", edns=4096)).rr) == BIG_COUNT


async def test_large_cluster_answers_are_truncated_over_udp() -> None:
    records = ClusterRecords()
    records.on_service("ADDED", service("many", clusterIP="None", ports=[{"name": "http", "port": 80}]))
    records.on_endpoint_slice("ADDED", {
        "metadata": {"name": "many-1", "namespace": "default", "labels": {"kubernetes.io/service-name": "many"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [f"10.42.7.{i}"]} for i in range(1, 101)],
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
    })
    async with await serve_dns(records, "127.0.0.1", 0) as server:
        cut = await ask(server.port, "many.default.svc.cluster.local")
        assert cut.header.tc == 1 and cut.rr == []
        assert len((await ask(server.port, "many.default.svc.cluster.local", tcp=True)).rr) == 100
        fits = await ask(server.port, "many.default.svc.cluster.local", edns=4096)
        assert fits.header.tc == 0 and len(fits.rr) == 100
        assert any(rr.rtype == QTYPE.OPT for rr in fits.ar)


async def test_servfail_when_no_upstream_answers() -> None:
    silent = await FakeUpstream(silent=True).start()
    try:
        forwarder = Forwarder([("127.0.0.1", silent.port), ("127.0.0.1", silent.port)], timeout=0.3)
        async with await serve_dns(ClusterRecords(), "127.0.0.1", 0, forwarder=forwarder) as server:
            start = time.monotonic()
            reply = await ask(server.port, "example.org")
            assert reply.header.rcode == RCODE.SERVFAIL
            assert 0.5 < time.monotonic() - start < 3  # both servers tried, 0.3 s each
            assert len(silent.queries) == 2
            # cluster names still answer without any upstream
            assert (await ask(server.port, "x.default.svc.cluster.local")).header.rcode == RCODE.NXDOMAIN
    finally:
        await silent.close()


async def test_malformed_and_unsupported_queries(upstream: FakeUpstream) -> None:
    async with await serve_dns(ClusterRecords(), "127.0.0.1", 0, [("127.0.0.1", upstream.port)]) as server:
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.create_datagram_endpoint(
            lambda: _Collector(), remote_addr=("127.0.0.1", server.port))
        try:
            transport.sendto(b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x05abc")  # cut question
            notify = DNSRecord.question("example.org")
            notify.header.opcode = 4
            transport.sendto(notify.pack())
            await async_wait_for(lambda: _ready(protocol, 2), timeout=5)
            by_id = {struct.unpack("!H", p[:2])[0]: p for p in protocol.packets}
            assert by_id[0x1234][3] & 0x0F == RCODE.FORMERR
            assert DNSRecord.parse(by_id[notify.header.id]).header.rcode == RCODE.NOTIMP
        finally:
            transport.close()
        # the server still answers afterwards
        assert rdatas(await ask(server.port, "example.org")) == [UPSTREAM_IP]


class _Collector(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.packets: list[bytes] = []

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.packets.append(data)


async def _ready(protocol: _Collector, count: int) -> bool:
    return len(protocol.packets) >= count
