"""Memory benchmark: the API server's RSS under large objects and under watches that are never read.

    python bench/memory.py [--baseline-rev REV] [--watchers N] [--writes N] [--big N]

Runs the same two scenarios against the working tree and against ``--baseline-rev``
(default ``HEAD``: what is committed; give the revision before a change to see what it
did), each on a fresh ``k3p server`` (API server alone: no agent, scheduler or
controllers) with a temporary data dir and a free loopback port:

1. *big objects*: ``--big`` ConfigMaps of 2.9 MiB are created, updated once (new data)
   and deleted, one at a time; the server's RSS is read before, right after and a few
   seconds after (the memory the deleted and replaced objects leave behind).
2. *unread watches*: ``--watchers`` TLS connections each start a ConfigMap watch and never
   read from their socket (4 KiB receive buffer), then ``--writes`` ConfigMaps of 4 KiB are
   created; RSS is sampled every 50 ms throughout, then the connections are closed and RSS
   is read again (closing is when a server that joined each backlog into one write
   spiked). The line "watch streams ended" counts the connections whose response the
   server finished (read back after the writes).

The baseline runs from a ``git worktree`` of that revision in a temporary folder (its
``core/`` and plugin folders first on ``PYTHONPATH``), removed at the end. RSS is VmRSS of
the server process from /proc; "anon" is its RssAnon (the heap, without mapped files such
as the sqlite database), peak is VmHWM over the whole run.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from _common import Progress, api_session, banner, mib, peak_rss_bytes

from k3p.testing import K3pServer
from k3p.testing.memory import RssSampler, rss_bytes, status_kib

ROOT = Path(__file__).resolve().parent.parent
ISOLATION_FLAGS = ("--disable-agent", "--disable-scheduler", "--disable-controller-manager")
BIG_VALUE = int(2.9 * 2**20)  # the data of one ConfigMap: near the 3 MiB a value may have
SMALL_VALUE = 4096
NAMESPACE = "bench-memory"
progress = Progress()


def anon_bytes(pid: int) -> int | None:
    """RssAnon of ``pid``: its resident memory without file mappings."""
    kib = status_kib(pid, "RssAnon")
    return None if kib is None else kib * 1024


@dataclass
class Result:
    """What one tree's server did in both scenarios (bytes)."""

    idle: int = 0
    big_after: int = 0
    big_settled: int = 0
    big_settled_anon: int = 0
    watch_before: int = 0
    watch_peak: int = 0
    watch_after_close: int = 0
    peak_hwm: int = 0
    ended: int = 0
    watchers: int = 0
    seconds: dict[str, float] = field(default_factory=dict)


def configmap(name: str, value_size: int, fill: str) -> bytes:
    return json.dumps({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": NAMESPACE},
                       "data": {"blob": fill * value_size}}).encode()


async def request(s: aiohttp.ClientSession, method: str, path: str, body: bytes | None = None,
                  ok: tuple[int, ...] = (200, 201)) -> dict:
    async with s.request(method, path, data=body, headers={"Content-Type": "application/json"}) as r:
        data = await r.read()
        if r.status not in ok:
            raise RuntimeError(f"{method} {path}: {r.status} {data[:300]!r}")
        return json.loads(data) if data else {}


async def big_objects(server: K3pServer, pid: int, count: int, result: Result) -> None:
    cms = f"/api/v1/namespaces/{NAMESPACE}/configmaps"
    async with api_session(server, connections=4, timeout=120) as s:
        await request(s, "POST", "/api/v1/namespaces", json.dumps(
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}).encode())
        await asyncio.sleep(2)
        result.idle = rss_bytes(pid) or 0
        began = time.perf_counter()
        for i in range(count):
            name = f"big-{i}"
            await request(s, "POST", cms, configmap(name, BIG_VALUE, "a"))
            await request(s, "PUT", f"{cms}/{name}", configmap(name, BIG_VALUE, "b"))
            await request(s, "DELETE", f"{cms}/{name}")
        result.seconds["big objects"] = time.perf_counter() - began
        result.big_after = rss_bytes(pid) or 0
        await asyncio.sleep(5)
        result.big_settled = rss_bytes(pid) or 0
        result.big_settled_anon = anon_bytes(pid) or 0


def open_unread_watch(server: K3pServer, ctx: ssl.SSLContext, path: str) -> ssl.SSLSocket:
    """A watch request on a TLS socket with a tiny receive buffer; only the response head is read."""
    raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # before connect, so the advertised window stays small too
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.settimeout(30)
    raw.connect(("127.0.0.1", server.port))
    sock = ctx.wrap_socket(raw, server_hostname="127.0.0.1")
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: application/json\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        got = sock.recv(1)
        if not got:
            raise RuntimeError("watch connection closed before its response")
        head += got
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"watch answered {head[:200]!r}")
    return sock


def stream_ended(sock: ssl.SSLSocket, timeout: float = 20.0) -> bool:
    """Read what the server sent until the chunked body's last chunk (True) or a timeout/close (False)."""
    sock.settimeout(timeout)
    tail = b""
    with contextlib.suppress(OSError):
        while True:
            got = sock.recv(65536)
            if not got:
                return tail.endswith(b"\r\n0\r\n\r\n")
            tail = (tail + got)[-16:]
            if tail.endswith(b"\r\n0\r\n\r\n"):
                return True
    return False


async def unread_watches(server: K3pServer, pid: int, watchers: int, writes: int, result: Result) -> None:
    cms = f"/api/v1/namespaces/{NAMESPACE}/configmaps"
    ctx = server.ssl_context()
    async with api_session(server, connections=16, timeout=120) as s:
        await request(s, "POST", "/api/v1/namespaces", json.dumps(
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}).encode())
        rv = (await request(s, "GET", cms))["metadata"]["resourceVersion"]
        path = f"{cms}?watch=true&resourceVersion={rv}"
        socks = await asyncio.to_thread(lambda: [open_unread_watch(server, ctx, path) for _ in range(watchers)])
        result.watchers = len(socks)
        await asyncio.sleep(1)
        result.watch_before = rss_bytes(pid) or 0
        body = [configmap(f"small-{i}", SMALL_VALUE, "c") for i in range(writes)]
        began = time.perf_counter()
        with RssSampler(pid) as sampler:
            queue: asyncio.Queue[bytes] = asyncio.Queue()
            for b in body:
                queue.put_nowait(b)

            async def writer() -> None:
                while not queue.empty():
                    await request(s, "POST", cms, queue.get_nowait())

            await asyncio.gather(*(writer() for _ in range(8)))
            result.seconds["writes"] = time.perf_counter() - began
            with concurrent.futures.ThreadPoolExecutor(len(socks)) as pool:
                result.ended = sum(pool.map(lambda sock: stream_ended(sock, 5.0), socks))
            for sock in socks:
                sock.close()
            await asyncio.sleep(3)
        result.watch_peak = sampler.peak
        result.watch_after_close = rss_bytes(pid) or 0
        result.peak_hwm = peak_rss_bytes(pid) or 0


def server_pid(server: K3pServer) -> int:
    assert server.proc is not None
    return server.proc.pid


async def measure(label: str, env: dict[str, str] | None, args: argparse.Namespace, work: Path) -> Result:
    result = Result()
    for scenario in ("big", "watch"):
        server = K3pServer(work / f"{label}-{scenario}", args=list(ISOLATION_FLAGS), env=env)
        try:
            server.start()
            pid = server_pid(server)
            progress(f"{label}: {scenario} (server {pid})")
            if scenario == "big":
                await big_objects(server, pid, args.big, result)
            else:
                await unread_watches(server, pid, args.watchers, args.writes, result)
        finally:
            server.stop()
    return result


@contextlib.contextmanager
def worktree(rev: str) -> Iterator[Path]:
    """``rev`` checked out into a temporary folder (a detached git worktree), removed afterwards."""
    parent = Path(tempfile.mkdtemp(prefix="k3p-bench-memory-"))
    path = parent / "tree"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "--quiet", str(path), rev], check=True)
    try:
        yield path
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(path)], check=False)
        shutil.rmtree(parent, ignore_errors=True)


def tree_env(tree: Path) -> dict[str, str]:
    """An environment whose ``python -m k3p`` imports the core and the plugins from ``tree``."""
    paths = [str(tree / "core"), *sorted(str(p) for p in (tree / "plugins").iterdir() if (p / "k3p_plugins").is_dir())]
    return {"PYTHONPATH": os.pathsep.join(paths)}


def ratio(new: int, old: int) -> str:
    return f"{new / old:.2f}x" if old else "-"


def report(rev: str, cur: Result, base: Result, args: argparse.Namespace) -> None:
    print(banner("memory benchmark"))
    print(f"baseline: {rev}; {args.big} ConfigMaps of {BIG_VALUE / 2**20:.1f} MiB; {cur.watchers} unread watches,"
          f" {args.writes} ConfigMaps of {SMALL_VALUE // 1024} KiB")
    print(f"{'server RSS (MiB)':<46}{'this tree':>11}{'baseline':>11}{'ratio':>8}")
    rows = [
        ("idle", cur.idle, base.idle),
        (f"after {args.big} creates+updates+deletes", cur.big_after, base.big_after),
        ("  5 s later", cur.big_settled, base.big_settled),
        ("  5 s later, anon (heap)", cur.big_settled_anon, base.big_settled_anon),
        (f"{cur.watchers} unread watches, before writes", cur.watch_before, base.watch_before),
        ("  highest during writes and close", cur.watch_peak, base.watch_peak),
        ("  3 s after the connections closed", cur.watch_after_close, base.watch_after_close),
        ("  peak RSS of the watch run (VmHWM)", cur.peak_hwm, base.peak_hwm),
    ]
    for name, new, old in rows:
        print(f"{name:<46}{mib(new):>11}{mib(old):>11}{ratio(new, old):>8}")
    print(f"{'watch streams ended by the server':<46}{cur.ended:>11}{base.ended:>11}")
    for what in cur.seconds:
        print(f"{what + ' (s)':<46}{cur.seconds[what]:>11.1f}{base.seconds.get(what, 0):>11.1f}")


async def run(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="k3p-bench-memory-") as tmp:
        work = Path(tmp)
        current = await measure("this tree", None, args, work)
        with worktree(args.baseline_rev) as tree:
            baseline = await measure(f"baseline {args.baseline_rev}", tree_env(tree), args, work)
    report(args.baseline_rev, current, baseline, args)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline-rev", default="HEAD",
                        help="git revision to compare the working tree with (default HEAD, what is committed)")
    parser.add_argument("--watchers", type=int, default=500, help="watch connections that never read (default 500)")
    parser.add_argument("--writes", type=int, default=3000, help="4 KiB ConfigMaps created under them (default 3000)")
    parser.add_argument("--big", type=int, default=50, help="2.9 MiB ConfigMaps created, updated, deleted (default 50)")
    args = parser.parse_args()
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
