"""Datastore benchmark: k3p's sqlite store against a real etcd 3.4 on this machine.

    python bench/datastore.py [--quick] [--no-etcd] [--etcd PATH] [--uvloop]

Measures, for each store: durable writes/s (creates of new 1 KiB keys, each a
conditional write) with 1, 10 and 50 concurrent writers; get and prefix-list latency
over 10,000 keys of 1 KiB; delivery latency of watch events to 100 watchers. etcd is
started here on free loopback ports with a temporary data dir and driven with aetcd;
creates go through a transaction ("create if version == 0"), the operation an API
server needs. The last column gives k3p's speed relative to etcd (> 1: k3p is faster;
for latencies that is etcd's latency divided by k3p's).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import platform
import random
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import structlog

from k3p_plugins.datastore_sql.sqlite import SQLiteDatastore

VALUE = os.urandom(1024)


@dataclass
class Sizes:
    write_seconds: float
    read_keys: int
    gets: int
    lists: int
    watchers: int
    watch_events: int


FULL = Sizes(write_seconds=3.0, read_keys=10_000, gets=3000, lists=100, watchers=100, watch_events=200)
QUICK = Sizes(write_seconds=0.7, read_keys=10_000, gets=500, lists=20, watchers=100, watch_events=40)


# --- the two stores behind one small interface ---------------------------------------------


class K3pStore:
    name = "k3p sqlite"

    def __init__(self, workdir: str) -> None:
        self.store = SQLiteDatastore(os.path.join(workdir, "state.db"), compact_interval=0)

    async def start(self) -> None:
        await self.store.start()

    async def stop(self) -> None:
        await self.store.close()

    async def create(self, key: str, value: bytes) -> None:
        await self.store.create(key, value)

    async def get(self, key: str) -> bytes:
        kv = await self.store.get(key)
        assert kv is not None
        return kv.value

    async def list(self, prefix: str) -> int:
        return len((await self.store.list(prefix)).kvs)

    async def watch(self, prefix: str) -> AsyncIterator[str]:
        async for event in self.store.watch(prefix, await self.store.current_revision()):
            yield event.kv.key


class EtcdStore:
    name = "etcd 3.4"

    def __init__(self, workdir: str, binary: str) -> None:
        self.workdir = workdir
        self.binary = binary
        self.proc: asyncio.subprocess.Process | None = None
        self.client: Any = None

    async def start(self) -> None:
        import aetcd

        client_port, peer_port = _free_port(), _free_port()
        client_url, peer_url = f"http://127.0.0.1:{client_port}", f"http://127.0.0.1:{peer_port}"
        self.proc = await asyncio.create_subprocess_exec(
            self.binary,
            "--name=bench",
            f"--data-dir={os.path.join(self.workdir, 'etcd')}",
            f"--listen-client-urls={client_url}",
            f"--advertise-client-urls={client_url}",
            f"--listen-peer-urls={peer_url}",
            f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=bench={peer_url}",
            "--initial-cluster-state=new",
            "--log-level=error",
            "--logger=zap",
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.client = aetcd.Client(host="127.0.0.1", port=client_port)
        deadline = time.monotonic() + 30
        while True:
            try:
                await self.client.get(b"/ping")
                return
            except Exception:
                if self.proc.returncode is not None or time.monotonic() > deadline:
                    raise RuntimeError("etcd did not start") from None
                await asyncio.sleep(0.1)

    async def stop(self) -> None:
        if self.client is not None:
            with contextlib.suppress(Exception):
                await self.client.close()
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()

    async def create(self, key: str, value: bytes) -> None:
        k = key.encode()
        tx = self.client.transactions
        ok, _ = await self.client.transaction(compare=[tx.version(k) == 0], success=[tx.put(k, value)], failure=[])
        assert ok

    async def put(self, key: str, value: bytes) -> None:
        await self.client.put(key.encode(), value)

    async def get(self, key: str) -> bytes:
        result = await self.client.get(key.encode())
        assert result is not None
        return result.value

    async def list(self, prefix: str) -> int:
        return len(list(await self.client.get_prefix(prefix.encode())))

    async def watch(self, prefix: str) -> AsyncIterator[str]:
        watch = await self.client.watch_prefix(prefix.encode())
        try:
            async for event in watch:
                yield event.kv.key.decode()
        finally:
            await watch.cancel()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- workloads ------------------------------------------------------------------------------


def _pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _writes_per_second(store: Any, writers: int, seconds: float, tag: str, put: bool = False) -> float:
    loop = asyncio.get_running_loop()
    write = store.put if put else store.create

    async def writer(run: str, i: int, stop: float) -> int:
        n = 0
        while loop.time() < stop:
            await write(f"/bench/{tag}/{run}/w{writers}/{i}/{n}", VALUE)
            n += 1
        return n

    await asyncio.gather(*(writer("warmup", i, loop.time() + 0.2) for i in range(writers)))
    began = time.perf_counter()
    counts = await asyncio.gather(*(writer("run", i, loop.time() + seconds) for i in range(writers)))
    return sum(counts) / (time.perf_counter() - began)


async def _load_read_keys(store: Any, n: int) -> list[str]:
    # 10 prefixes of n/10 keys, each split into 10 sub-prefixes
    keys = [f"/bench/read/p{i % 10}/s{(i // 10) % 10}/k{i:06d}" for i in range(n)]
    for i in range(0, n, 200):
        await asyncio.gather(*(store.create(k, VALUE) for k in keys[i : i + 200]))
    return keys


async def _latencies(fn: Any, args: list[Any]) -> list[float]:
    out = []
    for a in args:
        began = time.perf_counter()
        await fn(a)
        out.append(time.perf_counter() - began)
    return out


async def _watch_latency(store: Any, watchers: int, events: int) -> list[float]:
    prefix = "/bench/watch/"
    sent: dict[str, float] = {}
    latencies: list[float] = []
    warmed = asyncio.Semaphore(0)

    async def watcher() -> None:
        seen = 0
        async for key in store.watch(prefix):
            if key == prefix + "warmup":
                warmed.release()
                continue
            latencies.append(time.perf_counter() - sent[key])
            seen += 1
            if seen == events:
                return

    tasks = [asyncio.create_task(watcher()) for _ in range(watchers)]
    await asyncio.sleep(0.5)  # let every watch register
    await store.create(prefix + "warmup", b"x")
    for _ in range(watchers):
        await asyncio.wait_for(warmed.acquire(), 30)
    for i in range(events):
        key = f"{prefix}e{i:05d}"
        sent[key] = time.perf_counter()
        await store.create(key, VALUE)
        await asyncio.sleep(0.002)
    await asyncio.wait_for(asyncio.gather(*tasks), 60)
    return latencies


async def run_store(store: Any, sizes: Sizes) -> dict[str, float]:
    """Every workload against one store; {metric name: value}."""
    results: dict[str, float] = {}
    try:
        await store.start()
        for writers in (1, 10, 50):
            results[f"durable writes/s, {writers} writer(s)"] = await _writes_per_second(
                store, writers, sizes.write_seconds, "w"
            )
        if hasattr(store, "put"):
            results["reference: plain put/s (no condition), 50 writers"] = await _writes_per_second(
                store, 50, sizes.write_seconds, "p", put=True
            )
        keys = await _load_read_keys(store, sizes.read_keys)
        rng = random.Random(1)
        gets = await _latencies(store.get, [rng.choice(keys) for _ in range(sizes.gets)])
        results["get p50 ms"], results["get p99 ms"] = _pct(gets, 0.5) * 1e3, _pct(gets, 0.99) * 1e3
        per_prefix = sizes.read_keys // 10
        prefixes = [f"/bench/read/p{rng.randrange(10)}/" for _ in range(sizes.lists)]
        lists = await _latencies(store.list, prefixes)
        results[f"list {per_prefix} keys p50 ms"] = _pct(lists, 0.5) * 1e3
        results[f"list {per_prefix} keys p99 ms"] = _pct(lists, 0.99) * 1e3
        small = [f"/bench/read/p{rng.randrange(10)}/s{rng.randrange(10)}/" for _ in range(sizes.lists * 5)]
        lists = await _latencies(store.list, small)
        results[f"list {per_prefix // 10} keys p50 ms"] = _pct(lists, 0.5) * 1e3
        results[f"list {per_prefix // 10} keys p99 ms"] = _pct(lists, 0.99) * 1e3
        watch = await _watch_latency(store, sizes.watchers, sizes.watch_events)
        results[f"watch delivery to {sizes.watchers} watchers p50 ms"] = _pct(watch, 0.5) * 1e3
        results[f"watch delivery to {sizes.watchers} watchers p99 ms"] = _pct(watch, 0.99) * 1e3
    finally:
        await store.stop()
    return results


def _report(k3p: dict[str, float], etcd: dict[str, float] | None) -> None:
    print(f"{'metric':<52} {'k3p sqlite':>12} {'etcd 3.4':>12} {'k3p speed vs etcd':>18}")
    for name, value in k3p.items():
        other = etcd.get(name) if etcd else None
        if other is None:
            print(f"{name:<52} {value:>12.2f} {'-':>12} {'-':>18}")
            continue
        higher_is_better = name.startswith("durable")
        speed = value / other if higher_is_better else other / value
        print(f"{name:<52} {value:>12.2f} {other:>12.2f} {speed:>17.2f}x")
    for name, value in (etcd or {}).items():
        if name not in k3p:
            print(f"{name:<52} {'-':>12} {value:>12.2f}")


async def main(args: argparse.Namespace, etcd_binary: str | None) -> None:
    sizes = QUICK if args.quick else FULL
    print(
        f"python {platform.python_version()}, sqlite {sqlite3.sqlite_version}, {os.cpu_count()} cpus,"
        f" {'quick' if args.quick else 'full'} run, loop {type(asyncio.get_running_loop()).__module__}"
    )
    with tempfile.TemporaryDirectory(prefix="k3p-bench-") as workdir:
        k3p = await run_store(K3pStore(workdir), sizes)
        etcd = await run_store(EtcdStore(workdir, etcd_binary), sizes) if etcd_binary else None
    _report(k3p, etcd)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smaller, faster run")
    parser.add_argument("--no-etcd", action="store_true", help="measure k3p only")
    parser.add_argument("--etcd", default="/usr/bin/etcd", help="the etcd binary (default %(default)s)")
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop, as the server does")
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    etcd_binary = None if args.no_etcd else shutil.which(args.etcd)
    if not args.no_etcd and etcd_binary is None:
        print(f"etcd binary {args.etcd} not found: k3p figures only")
    if args.uvloop:
        import uvloop

        uvloop.run(main(args, etcd_binary))
    else:
        asyncio.run(main(args, etcd_binary))
    sys.exit(0)
