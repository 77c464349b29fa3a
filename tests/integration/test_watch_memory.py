"""Watches cost bounded memory: a watcher that does not read is closed, one that reads keeps up.

The slow watchers here are TLS connections with a tiny receive buffer that send a watch
request and then never read. The server must end their streams (a clean end of the chunked
body: clients watch again from their last event) instead of queueing every event for them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import json
import socket
import ssl
from pathlib import Path

import httpx
import pytest

from k3p.testing import K3pServer
from k3p.testing.memory import RssSampler

NS = "watch-memory"
CMS = f"/api/v1/namespaces/{NS}/configmaps"
#: the server's RSS (VmRSS) the slow-watcher run must stay under
RSS_LIMIT = 400 * 2**20
LAST_CHUNK = b"\r\n0\r\n\r\n"


def configmap(name: str, size: int) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": NS},
            "data": {"blob": "x" * size}}


def unread_watch(server: K3pServer, ctx: ssl.SSLContext, path: str) -> ssl.SSLSocket:
    """A watch whose client reads the response head and then nothing."""
    raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window too
    raw.settimeout(30)
    raw.connect(("127.0.0.1", server.port))
    sock = ctx.wrap_socket(raw, server_hostname="127.0.0.1")
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        got = sock.recv(1)
        assert got, "connection closed before the watch answered"
        head += got
    assert head.startswith(b"HTTP/1.1 200"), head
    return sock


def read_to_end(sock: ssl.SSLSocket, timeout: float) -> tuple[bool, int]:
    """Read everything the server sent: (whether the chunked body ended, bytes read)."""
    sock.settimeout(timeout)
    tail, total = b"", 0
    with contextlib.suppress(OSError):
        while True:
            got = sock.recv(65536)
            if not got:
                break
            total += len(got)
            tail = (tail + got)[-len(LAST_CHUNK):]
            if tail == LAST_CHUNK:
                return True, total
    return False, total


async def follow(server: K3pServer, rv: str, names: list[str], rvs: list[int], done: asyncio.Event,
                 expect: int) -> None:
    """A watcher that reads along: every event's name and resourceVersion, until ``expect`` arrived."""
    async with httpx.AsyncClient(base_url=server.url, verify=server.ssl_context(),
                                 timeout=httpx.Timeout(30, read=None)) as c:
        async with c.stream("GET", CMS, params={"watch": "true", "resourceVersion": rv}) as r:
            assert r.status_code == 200
            async for line in r.aiter_lines():
                if not line:
                    continue
                ev = json.loads(line)
                name = ev["object"]["metadata"]["name"]
                if not name.startswith("cm-"):
                    continue  # not one of the writes (kube-root-ca.crt, were it published)
                assert ev["type"] == "ADDED", ev
                names.append(name)
                rvs.append(int(ev["object"]["metadata"]["resourceVersion"]))
                if len(names) == expect:
                    done.set()
                    return
    raise AssertionError(f"the reading watcher's stream ended after {len(names)} of {expect} events")


async def write_configmaps(server: K3pServer, count: int, size: int, writers: int, first: int = 0) -> None:
    """Create ConfigMaps cm-<first>... with ``size`` bytes of data from ``writers`` concurrent clients."""
    async with httpx.AsyncClient(base_url=server.url, verify=server.ssl_context(), timeout=30,
                                 limits=httpx.Limits(max_connections=writers)) as c:
        todo = iter(range(first, first + count))

        async def writer() -> None:
            for i in todo:
                r = await c.post(CMS, json=configmap(f"cm-{i}", size))
                assert r.status_code == 201, r.text

        await asyncio.gather(*(writer() for _ in range(writers)))


def start(tmp: Path) -> tuple[K3pServer, str]:
    # The API server alone: controllers acting on every ConfigMap would only slow the writes.
    server = K3pServer(tmp, args=["--disable-scheduler", "--disable-controller-manager"])
    try:
        server.start()
        with httpx.Client(base_url=server.url, verify=server.ssl_context(), timeout=10) as c:
            c.post("/api/v1/namespaces", json={"apiVersion": "v1", "kind": "Namespace",
                                               "metadata": {"name": NS}}).raise_for_status()
            rv = c.get(CMS).json()["metadata"]["resourceVersion"]
    except BaseException:
        server.stop()
        raise
    return server, rv


def check_in_order(names: list[str], rvs: list[int], count: int) -> None:
    assert sorted(names, key=lambda n: int(n.rsplit("-", 1)[1])) == [f"cm-{i}" for i in range(count)]
    assert all(a < b for a, b in itertools.pairwise(rvs)), "events out of resourceVersion order"


@pytest.mark.slow
def test_unread_watches_are_closed_and_memory_stays_bounded(tmp_path: Path) -> None:
    watchers, writes = 500, 3000
    server, rv = start(tmp_path)
    socks: list[ssl.SSLSocket] = []
    try:
        assert server.proc is not None
        pid = server.proc.pid
        ctx = server.ssl_context()
        path = f"{CMS}?watch=true&resourceVersion={rv}"
        with RssSampler(pid) as sampler:
            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                socks.extend(pool.map(lambda _: unread_watch(server, ctx, path), range(watchers)))
            names: list[str] = []
            rvs: list[int] = []

            async def run() -> None:
                done = asyncio.Event()
                reader = asyncio.create_task(follow(server, rv, names, rvs, done, writes))
                await write_configmaps(server, writes, 4096, writers=8)
                await asyncio.wait_for(reader, 30)

            asyncio.run(run())
            # Every slow watcher fell behind: the server ended its stream, which the client
            # sees once it reads what was already sent (part of the events, then the last chunk).
            with concurrent.futures.ThreadPoolExecutor(64) as pool:
                ends = list(pool.map(lambda s: read_to_end(s, 10.0), socks))
        check_in_order(names, rvs, writes)
        not_ended = [n for ended, n in ends if not ended]
        assert not not_ended, f"{len(not_ended)} of {watchers} unread watches were not ended"
        all_events = sum(len(json.dumps(configmap("cm-0000", 4096))) for _ in range(writes))
        assert max(n for _, n in ends) < all_events, "a slow watcher got every event: it was never closed"
        assert "watcher fell too far behind" in server.logs()
        assert sampler.samples > 20
        assert sampler.peak < RSS_LIMIT, f"server RSS peaked at {sampler.peak / 2**20:.0f} MiB"
    finally:
        for s in socks:
            s.close()
        server.stop()


def test_reading_watcher_is_not_closed_by_a_burst(tmp_path: Path) -> None:
    writes = 2000
    server, rv = start(tmp_path)
    try:
        names: list[str] = []
        rvs: list[int] = []

        async def run() -> None:
            done = asyncio.Event()
            reader = asyncio.create_task(follow(server, rv, names, rvs, done, writes))
            await write_configmaps(server, writes, 256, writers=16)
            await asyncio.wait_for(reader, 30)

        asyncio.run(run())
        check_in_order(names, rvs, writes)
        assert "watcher fell too far behind" not in server.logs()
    finally:
        server.stop()
