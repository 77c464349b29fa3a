"""API server benchmark: k3p's HTTPS API against the datastore it stores into.

    python bench/api.py [--quick] [--watchers N] [--whole-server] [--profile DIR]

Starts a real ``k3p server`` on a free loopback port with a temporary data dir (the API
server alone: no agent, scheduler or controllers acting on the benchmark's pods) and drives
it over HTTPS (admin client certificate, HTTP/1.1 keep-alive, aiohttp on uvloop) from this
process; watch streams come from separate worker processes. Measures GET of one pod,
lists of 100 and 10,000 pods, creates and updates of pods and configmaps with 1, 10 and
50 concurrent clients, and the delivery latency of one change to 1,000 watchers. Then
runs the same operations against an in-process sqlite datastore alone, so every API line
carries the ratio API/datastore: the cost the API layer adds. Goals are checked at the
end (PASS/MISS).

The server and the load generator share the machine's cores: on a 2-core machine the
server's one event loop and the client compete, so the CPU columns show who was busy
(and whether anything else on the machine was). ``--profile DIR`` samples the server
with py-spy during every phase and prints its hottest frames.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import logging
import multiprocessing
import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import structlog
import uvloop
from _common import CpuWindow, Progress, Stats, banner, capacity_line, own_cpu_seconds, percentile, timed_loop

from k3p.testing import K3pServer
from k3p_plugins.datastore_sql.sqlite import SQLiteDatastore

CONCURRENCY = (1, 10, 50)
#: the annotation whose value tells a watcher which update an event belongs to
SEQ_ANNOTATION = "bench/seq"
SEQ_MARK = b'"bench/seq":"'
GOAL_GET_P99 = 0.010
GOAL_BIG_LIST_P99 = 0.300
GOAL_WATCH_P99 = 0.100
#: switches that leave the API server alone in its process: no node agent, scheduler or controllers,
#: which would otherwise act on the benchmark's pods (e.g. try to schedule 10,000 of them)
ISOLATION_FLAGS = ("--disable-agent", "--disable-scheduler", "--disable-controller-manager")

progress = Progress()


@dataclass
class Sizes:
    seconds: float  # per throughput run
    warmup: float  # before each throughput run: connections up, caches warm
    small_list: int
    big_list: int
    small_list_reps: int
    big_list_reps: int
    watchers: int
    watch_events: int
    watch_procs: int = 2
    sessions_per_proc: int = 4


FULL = Sizes(seconds=3.0, warmup=0.3, small_list=100, big_list=10_000, small_list_reps=300, big_list_reps=30,
             watchers=1000, watch_events=50)
QUICK = Sizes(seconds=0.4, warmup=0.1, small_list=100, big_list=10_000, small_list_reps=60, big_list_reps=6,
              watchers=1000, watch_events=10)


def pod_body(namespace: str, name: str) -> dict[str, Any]:
    """A pod like a small Deployment's: about 2 KiB of JSON once the server has added its fields."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"app": "web", "tier": "frontend", "pod-template-hash": "7d9f8c6b5"},
            "annotations": {"kubectl.kubernetes.io/restartedAt": "2025-01-01T00:00:00Z"},
        },
        "spec": {
            "containers": [{
                "name": "web",
                "image": "registry.example/team/web:1.24.3",
                "args": ["--port=8080", "--log-level=info"],
                "ports": [{"containerPort": 8080, "name": "http", "protocol": "TCP"}],
                "env": [{"name": "MODE", "value": "production"}, {"name": "CACHE_SIZE", "value": "256"}],
                "resources": {"requests": {"cpu": "100m", "memory": "128Mi"},
                              "limits": {"cpu": "500m", "memory": "256Mi"}},
                "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 10},
            }],
            "nodeSelector": {"kubernetes.io/os": "linux"},
        },
    }


def configmap_body(namespace: str, name: str, value: str = "0") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": "web"}},
        "data": {"value": value, "settings.ini": "[server]\nport = 8080\nworkers = 4\n"},
    }


class Template:
    """A JSON body with a placeholder name, turned into bytes once: cheap for the load generator."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self.raw = json.dumps(doc, separators=(",", ":")).encode()

    def render(self, **values: str) -> bytes:
        out = self.raw
        for k, v in values.items():
            out = out.replace(f"@{k}@".encode(), v.encode())
        return out


POD = Template(pod_body("@ns@", "@name@"))
CONFIGMAP = Template(configmap_body("@ns@", "@name@", "@value@"))


# --- results --------------------------------------------------------------------------------


@dataclass
class Results:
    """Measurements of one side (API or datastore), keyed by (operation, clients)."""

    stats: dict[tuple[str, int], Stats] = field(default_factory=dict)
    #: (load generator, server, everything else on the machine), each as a share of one core
    cpu: dict[tuple[str, int], tuple[float, float | None, float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    label: str = "API"


OPERATIONS = [
    *(("GET pod", c) for c in CONCURRENCY),
    ("LIST 100 pods", 1),
    ("LIST 10000 pods", 1),
    *(("create pod", c) for c in CONCURRENCY),
    *(("create configmap", c) for c in CONCURRENCY),
    *(("update pod (merge PATCH)", c) for c in CONCURRENCY),
    *(("update configmap (PUT)", c) for c in CONCURRENCY),
]


def _list_name(n: int) -> str:
    return f"LIST {n} pods"


# --- HTTP client ----------------------------------------------------------------------------


def _tls_context(ca: str, cert: str, key: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=ca)
    ctx.load_cert_chain(cert, key)
    return ctx


def _session(url: str, ctx: ssl.SSLContext, connections: int = 0, timeout: float | None = 60) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        base_url=url,
        connector=aiohttp.TCPConnector(ssl=ctx, limit=connections),
        timeout=aiohttp.ClientTimeout(total=timeout),
        headers={"User-Agent": "k3p-bench/1"},
    )


async def _call(session: aiohttp.ClientSession, method: str, path: str, body: bytes | None = None,
                ctype: str = "application/json") -> tuple[int, bytes]:
    headers = {"Content-Type": ctype} if body is not None else None
    async with session.request(method, path, data=body, headers=headers) as r:
        return r.status, await r.read()


async def _expect(session: aiohttp.ClientSession, method: str, path: str, body: bytes | None = None,
                  ctype: str = "application/json", ok: tuple[int, ...] = (200, 201)) -> bytes:
    status, data = await _call(session, method, path, body, ctype)
    if status not in ok:
        raise RuntimeError(f"{method} {path}: {status} {data[:300]!r}")
    return data


async def _count_loop(clients: int, total: int, op: Any) -> tuple[int, float]:
    """``op(i)`` for i in 0..total-1 from ``clients`` tasks; (failures, seconds)."""
    todo = iter(range(total))
    failures = 0

    async def client() -> None:
        nonlocal failures
        for i in todo:
            if not await op(i):
                failures += 1

    began = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return failures, time.perf_counter() - began


class Profiler:
    """py-spy sampling the server during each phase (``--profile``), one collapsed-stack file per phase."""

    def __init__(self, pid: int, out_dir: Path | None) -> None:
        self.pid = pid
        self.out_dir = out_dir
        self.files: dict[str, Path] = {}

    @contextlib.contextmanager
    def phase(self, name: str) -> Any:
        if self.out_dir is None:
            yield
            return
        path = self.out_dir / (name.replace(" ", "_").replace("/", "") + ".txt")
        proc = subprocess.Popen(
            ["py-spy", "record", "--pid", str(self.pid), "--format", "raw", "--output", str(path),
             "--rate", "250", "--nonblocking"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        time.sleep(0.3)  # py-spy attaches
        try:
            yield
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            self.files[name] = path


# --- the API side ---------------------------------------------------------------------------


class ApiBench:
    """Every workload over HTTPS against a running server; results keyed like :data:`OPERATIONS`."""

    def __init__(self, server: K3pServer, sizes: Sizes, profiler: Profiler) -> None:
        self.server = server
        self.sizes = sizes
        self.profiler = profiler
        self.url = server.url
        tls = server.data_dir / "server" / "tls"
        self.tls = (str(server.ca_file), str(tls / "client-admin.crt"), str(tls / "client-admin.key"))
        self.ctx = _tls_context(*self.tls)
        self.results = Results(label="API")
        self.sample_pod = b""
        self.sample_configmap = b""

    @property
    def pid(self) -> int:
        assert self.server.proc is not None
        return self.server.proc.pid

    def record(self, key: tuple[str, int], stats: Stats, window: CpuWindow) -> None:
        self.results.stats[key] = stats
        own, server = window.shares()
        self.results.cpu[key] = (own, server, max(0.0, window.machine_share() - own - (server or 0.0)))

    async def run(self) -> Results:
        s = self.sizes
        async with _session(self.url, self.ctx, 0) as admin:
            for ns in ("small", "big", "writes", "watch"):
                await _expect(admin, "POST", "/api/v1/namespaces",
                              json.dumps({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}).encode())
            progress(f"API: loading {s.small_list} + {s.big_list} pods")
            await self.populate("small", s.small_list)
            await self.populate("big", s.big_list)
            self.sample_pod = await _expect(admin, "GET", "/api/v1/namespaces/small/pods/pod-00000")
            progress("API: get")
            await self.gets()
            progress("API: list")
            await self.lists()
            progress("API: create and update")
            await self.writes(admin)
            self.sample_configmap = await _expect(admin, "GET", "/api/v1/namespaces/writes/configmaps/cmu-0")
            progress(f"API: watch fan-out to {s.watchers} watchers")
            await self.watch(admin)
        return self.results

    async def populate(self, ns: str, n: int) -> None:
        async with _session(self.url, self.ctx, 50) as session:
            async def create(i: int) -> bool:
                status, _ = await _call(session, "POST", f"/api/v1/namespaces/{ns}/pods",
                                        POD.render(ns=ns, name=f"pod-{i:05d}"))
                return status == 201

            failures, seconds = await _count_loop(50, n, create)
        if failures:
            raise RuntimeError(f"{failures} pod creates failed while loading namespace {ns}")
        if n >= 1000:
            self.results.notes.append(f"loading {n} pods through the API (50 clients): {n / seconds:.0f} creates/s")

    async def gets(self) -> None:
        path = "/api/v1/namespaces/small/pods/pod-00000"
        for clients in CONCURRENCY:
            async with _session(self.url, self.ctx, clients) as session:
                async def get(i: int, n: int) -> bool:
                    async with session.get(path) as r:
                        await r.read()
                        return r.status == 200

                await timed_loop(clients, self.sizes.warmup, get)
                with self.profiler.phase(f"get {clients}"):
                    window = CpuWindow(self.pid)
                    lat, errors, seconds = await timed_loop(clients, self.sizes.seconds, get)
                self.record(("GET pod", clients), Stats.of(lat, seconds, errors), window)

    async def lists(self) -> None:
        async with _session(self.url, self.ctx, 1) as session:
            for ns, n, reps in (("small", self.sizes.small_list, self.sizes.small_list_reps),
                                ("big", self.sizes.big_list, self.sizes.big_list_reps)):
                path = f"/api/v1/namespaces/{ns}/pods"
                data = await _expect(session, "GET", path)
                if data.count(b'"kind":"Pod"') < n:
                    raise RuntimeError(f"list of {ns} returned fewer than {n} pods")
                if n >= 1000:
                    self.results.notes.append(f"a {n}-pod list is {len(data) / 2**20:.1f} MiB of JSON; timed to its "
                                              f"last byte, not parsed")
                with self.profiler.phase(f"list {n}"):
                    window = CpuWindow(self.pid)
                    lat = []
                    for _ in range(reps):
                        began = time.perf_counter()
                        async with session.get(path) as r:
                            await r.read()
                        lat.append(time.perf_counter() - began)
                self.record((_list_name(n), 1), Stats.of(lat), window)

    async def writes(self, admin: aiohttp.ClientSession) -> None:
        seconds = self.sizes.seconds
        for clients in CONCURRENCY:
            async with _session(self.url, self.ctx, clients) as session:
                for kind, template in (("pod", POD), ("configmap", CONFIGMAP)):
                    resource = kind + "s"

                    async def create(i: int, n: int, tag: str = "", resource: str = resource,
                                     template: Template = template, clients: int = clients) -> bool:
                        body = template.render(ns="writes", name=f"{tag}c{clients}-{i}-{n}", value=str(n))
                        status, _ = await _call(session, "POST", f"/api/v1/namespaces/writes/{resource}", body)
                        return status == 201

                    await timed_loop(clients, self.sizes.warmup, lambda i, n, create=create: create(i, n, "warm-"))
                    with self.profiler.phase(f"create {kind} {clients}"):
                        window = CpuWindow(self.pid)
                        lat, errors, took = await timed_loop(clients, seconds, create)
                    self.record((f"create {kind}", clients), Stats.of(lat, took, errors), window)

                # every client updates an object of its own: the figures are not about conflicts
                for i in range(clients):
                    await _call(admin, "POST", "/api/v1/namespaces/writes/pods",
                                POD.render(ns="writes", name=f"pu-{i}"))
                    await _call(admin, "POST", "/api/v1/namespaces/writes/configmaps",
                                CONFIGMAP.render(ns="writes", name=f"cmu-{i}", value="0"))

                async def patch(i: int, n: int) -> bool:
                    body = b'{"metadata":{"annotations":{"bench/seq":"%d"}}}' % n
                    status, _ = await _call(session, "PATCH", f"/api/v1/namespaces/writes/pods/pu-{i}", body,
                                            "application/merge-patch+json")
                    return status == 200

                async def put(i: int, n: int, clients: int = clients) -> bool:
                    body = CONFIGMAP.render(ns="writes", name=f"cmu-{i}", value=f"{clients}-{n}")
                    status, _ = await _call(session, "PUT", f"/api/v1/namespaces/writes/configmaps/cmu-{i}", body)
                    return status == 200

                for name, phase, op in (("update pod (merge PATCH)", "patch pod", patch),
                                        ("update configmap (PUT)", "put configmap", put)):
                    await timed_loop(clients, self.sizes.warmup, op)
                    with self.profiler.phase(f"{phase} {clients}"):
                        window = CpuWindow(self.pid)
                        lat, errors, took = await timed_loop(clients, seconds, op)
                    self.record((name, clients), Stats.of(lat, took, errors), window)

    async def watch(self, admin: aiohttp.ClientSession) -> None:
        s = self.sizes
        await _expect(admin, "POST", "/api/v1/namespaces/watch/pods", POD.render(ns="watch", name="w0"))
        listing = json.loads(await _expect(admin, "GET", "/api/v1/namespaces/watch/pods"))
        path = f"/api/v1/namespaces/watch/pods?watch=1&resourceVersion={listing['metadata']['resourceVersion']}"
        procs = max(1, min(s.watch_procs, s.watchers))
        per_proc = [s.watchers // procs + (1 if i < s.watchers % procs else 0) for i in range(procs)]
        fleet = WatcherFleet(self.url, self.tls, path, per_proc, s.sessions_per_proc)
        try:
            await fleet.start()
            progress(f"API: {s.watchers} watch streams open")

            sent: dict[int, float] = {}

            async def update(seq: int) -> float:
                body = b'{"metadata":{"annotations":{"bench/seq":"%d"}}}' % seq
                sent[seq] = time.perf_counter()
                await _expect(admin, "PATCH", "/api/v1/namespaces/watch/pods/w0", body, "application/merge-patch+json")
                return time.perf_counter()

            await fleet.deliver(-1, update)  # warm-up, not counted
            acks: dict[int, float] = {}
            missing = 0
            with self.profiler.phase(f"watch {s.watchers}"):
                window = CpuWindow(self.pid)
                for seq in range(s.watch_events):
                    acks[seq], short = await fleet.deliver(seq, update)
                    missing += short
                    await asyncio.sleep(0.02)
                own, server = window.shares()
                machine = window.machine_share()
            arrivals, worker_cpu = await fleet.stop()
        finally:
            fleet.kill()
        record_watch(self.results, s.watchers, arrivals, sent, acks, missing)
        for key in watch_keys(s.watchers):
            client = own + worker_cpu / fleet.watched_seconds
            self.results.cpu[key] = (client, server, max(0.0, machine - client - (server or 0.0)))


def watch_keys(watchers: int) -> tuple[tuple[str, int], tuple[str, int]]:
    return ("watch event, after write ack", watchers), ("watch event, after write sent", watchers)


def record_watch(results: Results, watchers: int, arrivals: list[tuple[int, float]], sent: dict[int, float],
                 acks: dict[int, float], missing: int) -> None:
    """Delivery latencies of watch events: from the write's acknowledgement and from its sending."""
    after_ack = [max(0.0, t - acks[seq]) for seq, t in arrivals if seq in acks]
    after_sent = [t - sent[seq] for seq, t in arrivals if seq in acks]
    early = sum(1 for seq, t in arrivals if seq in acks and t < acks[seq])
    last: dict[int, float] = {}
    for seq, t in arrivals:
        if seq in acks:
            last[seq] = max(last.get(seq, 0.0), t - acks[seq])
    ack_key, sent_key = watch_keys(watchers)
    results.stats[ack_key] = Stats.of(after_ack, errors=missing)
    results.stats[sent_key] = Stats.of(after_sent, errors=missing)
    side = results.label
    if last:
        spans = sorted(last.values())
        results.notes.append(f"{side} watch: an update reached all {watchers} watchers "
                             f"{_ms(percentile(spans, 0.5))} ms after its ack (median over {len(spans)} updates), "
                             f"{_ms(spans[-1])} ms at worst")
    if early:
        results.notes.append(f"{side} watch: {early} of {len(after_ack)} deliveries came before the writer had its "
                             f"acknowledgement (counted as 0 ms after ack)")
    if missing:
        results.notes.append(f"{side} watch: {missing} expected deliveries did not arrive within 15 s")


class WatcherFleet:
    """Watch streams spread over worker processes; they report arrival times of each update."""

    def __init__(self, url: str, tls: tuple[str, str, str], path: str, per_proc: list[int], sessions: int) -> None:
        self.url, self.tls, self.path = url, tls, path
        self.per_proc = per_proc
        self.sessions = sessions
        self.procs: list[Any] = []
        self.conns: list[Any] = []
        self.queues: list[asyncio.Queue[Any]] = []
        self.ready_at = 0.0
        #: wall time between all streams being open and the end of the measurement
        self.watched_seconds = 1e-9

    async def start(self) -> None:
        mp = multiprocessing.get_context("spawn")
        loop = asyncio.get_running_loop()
        for streams in self.per_proc:
            ours, theirs = mp.Pipe()
            proc = mp.Process(target=_watch_worker, args=(theirs, self.url, self.tls, self.path, streams,
                                                          self.sessions), daemon=True)
            proc.start()
            theirs.close()
            queue: asyncio.Queue[Any] = asyncio.Queue()
            threading.Thread(target=_pump, args=(ours, loop, queue), daemon=True).start()
            self.procs.append(proc)
            self.conns.append(ours)
            self.queues.append(queue)
        for streams, queue in zip(self.per_proc, self.queues, strict=True):
            msg = await asyncio.wait_for(queue.get(), 120)
            if msg[0] != "ready" or msg[1] != streams:
                raise RuntimeError(f"watch worker did not open its {streams} streams: {msg}")
        self.ready_at = time.perf_counter()

    async def deliver(self, seq: int, update: Any) -> tuple[float, int]:
        """Make update ``seq``; wait until every stream has seen it. (ack time, deliveries missing)."""
        ack = await update(seq)
        missing = 0
        for streams, queue in zip(self.per_proc, self.queues, strict=True):
            try:
                while True:
                    msg = await asyncio.wait_for(queue.get(), 15)
                    if msg == ("done", seq):
                        break
            except TimeoutError:
                missing += streams  # an over-estimate: the worker only says when all arrived
        return ack, missing

    async def stop(self) -> tuple[list[tuple[int, float]], float]:
        arrivals: list[tuple[int, float]] = []
        cpu = 0.0
        self.watched_seconds = time.perf_counter() - self.ready_at
        for conn in self.conns:
            conn.send(("stop",))
        for queue in self.queues:
            while True:
                msg = await asyncio.wait_for(queue.get(), 60)
                if msg[0] == "samples":
                    arrivals.extend(msg[1])
                    cpu += msg[2]
                    break
        for proc in self.procs:
            await asyncio.to_thread(proc.join, 10)
        return arrivals, cpu

    def kill(self) -> None:
        for proc in self.procs:
            if proc.is_alive():
                proc.terminate()
                proc.join(5)
        for conn in self.conns:
            conn.close()


def _pump(conn: Any, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[Any]) -> None:
    """Forward a worker's messages into the event loop (a blocking reader in a thread)."""
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        loop.call_soon_threadsafe(queue.put_nowait, msg)
        if msg[0] == "samples":
            return


def _watch_worker(conn: Any, url: str, tls: tuple[str, str, str], path: str, streams: int, sessions: int) -> None:
    """Entry point of a watcher process."""
    uvloop.run(_watch_worker_main(conn, url, tls, path, streams, sessions))


async def _watch_worker_main(conn: Any, url: str, tls: tuple[str, str, str], path: str, streams: int,
                             sessions: int) -> None:
    ctx = _tls_context(*tls)
    clients = [_session(url, ctx, 0, timeout=None) for _ in range(sessions)]
    arrivals: list[tuple[int, float]] = []
    counts: collections.Counter[int] = collections.Counter()
    handshakes = asyncio.Semaphore(25)
    opened: list[aiohttp.ClientResponse] = []
    failures: list[str] = []
    all_open = asyncio.Event()

    async def stream(session: aiohttp.ClientSession) -> None:
        try:
            async with handshakes:
                resp = await session.get(path)
        except Exception as e:
            failures.append(repr(e))
            resp = None
        if resp is None or resp.status != 200:
            if resp is not None:
                failures.append(f"status {resp.status}")
                resp.release()
        else:
            opened.append(resp)
        if len(opened) + len(failures) == streams:
            all_open.set()
        if resp is None or resp.status != 200:
            return
        content = resp.content
        while True:
            line = await content.readline()
            if not line:
                return
            now = time.perf_counter()
            at = line.find(SEQ_MARK)
            if at < 0:
                continue
            at += len(SEQ_MARK)
            seq = int(line[at : line.index(b'"', at)])
            arrivals.append((seq, now))
            counts[seq] += 1
            if counts[seq] == len(opened):
                conn.send(("done", seq))

    tasks = [asyncio.create_task(stream(clients[i % sessions])) for i in range(streams)]
    await all_open.wait()
    conn.send(("ready", len(opened), failures[:3]))
    cpu0 = own_cpu_seconds()
    await asyncio.to_thread(conn.recv)  # "stop"
    cpu = own_cpu_seconds() - cpu0
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for resp in opened:
        resp.close()
    for c in clients:
        await c.close()
    conn.send(("samples", [(seq, t) for seq, t in arrivals if seq >= 0], cpu))
    conn.close()


# --- the datastore side ---------------------------------------------------------------------


class DatastoreBench:
    """The same operations on an in-process sqlite datastore, with the API's stored bytes as values."""

    def __init__(self, path: str, sizes: Sizes, pod: bytes, configmap: bytes) -> None:
        self.store = SQLiteDatastore(path, compact_interval=0)
        self.sizes = sizes
        self.pod = pod
        self.configmap = configmap
        self.results = Results(label="datastore")

    async def run(self) -> Results:
        await self.store.start()
        try:
            progress("datastore: loading, get, list")
            await self.populate("small", self.sizes.small_list)
            await self.populate("big", self.sizes.big_list)
            await self.gets()
            await self.lists()
            progress("datastore: create and update")
            await self.writes()
            progress(f"datastore: watch fan-out to {self.sizes.watchers} watchers")
            await self.watch()
        finally:
            await self.store.close()
        return self.results

    def _value(self, template: bytes, name: str) -> bytes:
        doc = json.loads(template)
        doc["metadata"]["name"] = name
        return json.dumps(doc, separators=(",", ":")).encode()

    async def populate(self, ns: str, n: int) -> None:
        async def create(i: int) -> bool:
            name = f"pod-{i:05d}"
            await self.store.create(f"/registry/pods/{ns}/{name}", self._value(self.pod, name))
            return True

        await _count_loop(50, n, create)

    async def gets(self) -> None:
        key = "/registry/pods/small/pod-00000"

        async def get(i: int, n: int) -> bool:
            return await self.store.get(key) is not None

        for clients in CONCURRENCY:
            await timed_loop(clients, self.sizes.warmup, get)
            lat, errors, seconds = await timed_loop(clients, self.sizes.seconds, get)
            self.results.stats[("GET pod", clients)] = Stats.of(lat, seconds, errors)

    async def lists(self) -> None:
        for ns, n, reps in (("small", self.sizes.small_list, self.sizes.small_list_reps),
                            ("big", self.sizes.big_list, self.sizes.big_list_reps)):
            prefix = f"/registry/pods/{ns}/"
            assert len((await self.store.list(prefix)).kvs) == n
            lat = []
            for _ in range(reps):
                began = time.perf_counter()
                await self.store.list(prefix)
                lat.append(time.perf_counter() - began)
            self.results.stats[(_list_name(n), 1)] = Stats.of(lat)

    async def writes(self) -> None:
        seconds = self.sizes.seconds
        for clients in CONCURRENCY:
            for kind, value in (("pod", self.pod), ("configmap", self.configmap)):
                async def create(i: int, n: int, tag: str = "", kind: str = kind, value: bytes = value,
                                 clients: int = clients) -> bool:
                    await self.store.create(f"/registry/{kind}s/writes/{tag}c{clients}-{i}-{n}", value)
                    return True

                await timed_loop(clients, self.sizes.warmup, lambda i, n, create=create: create(i, n, "warm-"))
                lat, errors, took = await timed_loop(clients, seconds, create)
                self.results.stats[(f"create {kind}", clients)] = Stats.of(lat, took, errors)
            for name, kind, value in (("update pod (merge PATCH)", "pods", self.pod),
                                      ("update configmap (PUT)", "configmaps", self.configmap)):
                revisions = {}
                for i in range(clients):
                    key = f"/registry/{kind}/writes/u{clients}-{i}"
                    revisions[key] = await self.store.create(key, value)

                async def update(i: int, n: int, kind: str = kind, value: bytes = value,
                                 revisions: dict[str, int] = revisions, clients: int = clients) -> bool:
                    key = f"/registry/{kind}/writes/u{clients}-{i}"
                    kv = await self.store.update(key, value, revisions[key])
                    revisions[key] = kv.mod_revision
                    return True

                await timed_loop(clients, self.sizes.warmup, update)
                lat, errors, took = await timed_loop(clients, seconds, update)
                self.results.stats[(name, clients)] = Stats.of(lat, took, errors)

    async def watch(self) -> None:
        watchers, events = self.sizes.watchers, self.sizes.watch_events
        key = "/registry/pods/watch/w0"
        doc = json.loads(self.pod)
        doc["metadata"]["name"] = "w0"
        revision = await self.store.create(key, json.dumps(doc).encode())
        arrivals: list[tuple[int, float]] = []
        counts: collections.Counter[int] = collections.Counter()
        all_seen: dict[int, asyncio.Event] = collections.defaultdict(asyncio.Event)

        async def watcher() -> None:
            async for ev in self.store.watch("/registry/pods/watch/", revision):
                now = time.perf_counter()
                value = ev.kv.value
                at = value.find(SEQ_MARK) + len(SEQ_MARK)
                seq = int(value[at : value.index(b'"', at)])
                arrivals.append((seq, now))
                counts[seq] += 1
                if counts[seq] == watchers:
                    all_seen[seq].set()

        tasks = [asyncio.create_task(watcher()) for _ in range(watchers)]
        sent: dict[int, float] = {}
        acks: dict[int, float] = {}
        try:
            current = revision
            for seq in range(-1, events):
                doc["metadata"].setdefault("annotations", {})[SEQ_ANNOTATION] = str(seq)
                value = json.dumps(doc, separators=(",", ":")).encode()
                sent[seq] = time.perf_counter()
                kv = await self.store.update(key, value, current)
                acks[seq] = time.perf_counter()
                current = kv.mod_revision
                await asyncio.wait_for(all_seen[seq].wait(), 30)
                await asyncio.sleep(0.02)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        del acks[-1]
        record_watch(self.results, watchers, arrivals, sent, acks, 0)


# --- report ---------------------------------------------------------------------------------


def _ms(v: float | None) -> str:
    return "-" if v is None or v != v else f"{v * 1e3:.2f}"


def _rate(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f}"


def _ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b <= 0 or a != a or b != b:
        return "-"
    r = a / b
    return f"{r:.0f}x" if r >= 10 else f"{r:.1f}x" if r >= 1 else f"{r:.2f}x" if r >= 0.1 else f"{r:.3f}x"


def _share(v: float | None) -> str:
    return "-" if v is None else f"{v:.0%}"


def report(api: Results, ds: Results, sizes: Sizes, pod_bytes: int, cm_bytes: int) -> list[tuple[str, bool]]:
    """Print the table, the notes and the goals; returns the goals as (text, passed)."""
    print()
    print(f"pod as stored: {pod_bytes} bytes of JSON; configmap: {cm_bytes} bytes. Latencies in ms, measured at the "
          f"client from sending the request to its last byte.")
    print("API/store: the API's figure divided by the datastore's (latency: how many times slower; ops/s: the share "
          "of the store's throughput the API reaches).")
    print("CPU: share of one core used during the run by the load generator (with the watch workers), by the server "
          "(near 100%: it is the bottleneck, one event loop) and by anything else on the machine (other: noise).")
    head = (f"{'operation':<31}{'clients':>8} | {'API p50':>8}{'p99':>8}{'ops/s':>7} | {'store p50':>9}{'p99':>7}"
            f"{'ops/s':>8} | {'API/store p50':>13}{'p99':>6}{'ops/s':>8} | {'CPU client':>10}{'server':>7}{'other':>6}")
    print(head)
    print("-" * len(head))
    keys = [k for k in OPERATIONS if k in api.stats] + [k for k in api.stats if k not in OPERATIONS]
    for key in keys:
        a, d = api.stats[key], ds.stats.get(key)
        d_p50, d_p99, d_rate = (d.p50, d.p99, d.rate) if d else (None, None, None)
        own, server, other = api.cpu.get(key, (None, None, None))
        errs = f"  ({a.errors} failed)" if a.errors else ""
        print(f"{key[0]:<31}{key[1]:>8} | {_ms(a.p50):>8}{_ms(a.p99):>8}{_rate(a.rate):>7} | "
              f"{_ms(d_p50):>9}{_ms(d_p99):>7}{_rate(d_rate):>8} | "
              f"{_ratio(a.p50, d_p50):>13}{_ratio(a.p99, d_p99):>6}{_ratio(a.rate, d_rate):>8} | "
              f"{_share(own):>10}{_share(server):>7}{_share(other):>6}{errs}")
    for note in api.notes + ds.notes:
        print(f"note: {note}")

    goals: list[tuple[str, bool]] = []
    for c in CONCURRENCY:
        st = api.stats[("GET pod", c)]
        goals.append((f"GET p99 < 10 ms with {c} client(s): {_ms(st.p99)} ms", st.p99 < GOAL_GET_P99))
    big = api.stats[(_list_name(sizes.big_list), 1)]
    goals.append((f"LIST {sizes.big_list} pods p99 < 300 ms: {_ms(big.p99)} ms (p50 {_ms(big.p50)})",
                  big.p99 < GOAL_BIG_LIST_P99))
    watch = api.stats[watch_keys(sizes.watchers)[0]]
    goals.append((f"watch event to {sizes.watchers} watchers p99 < 100 ms after the write's ack: {_ms(watch.p99)} ms "
                  f"(p50 {_ms(watch.p50)})", watch.p99 < GOAL_WATCH_P99 and not watch.errors))
    print()
    print("goals (p99):")
    for text, ok in goals:
        print(f"  {'PASS' if ok else 'MISS'}  {text}")
    busy = api.stats[("GET pod", CONCURRENCY[-1])]
    if busy.rate:
        print(f"  (with {CONCURRENCY[-1]} clients always waiting, mean latency = clients / throughput: at "
              f"{busy.rate:.0f} GETs/s that is {CONCURRENCY[-1] / busy.rate * 1e3:.1f} ms, so a p99 under 10 ms "
              f"needs well over {CONCURRENCY[-1] / GOAL_GET_P99:.0f} GETs/s)")
    if sizes.big_list != 10_000 or sizes.watchers != 1000:
        print("  (sizes differ from the goals' 10,000 pods / 1,000 watchers: the verdicts are indicative only)")
    return goals


def summarize_profiles(files: dict[str, Path], top: int = 12) -> None:
    """Top self-time frames, and the project's frames by inclusive time, per profiled phase."""
    for name, path in files.items():
        if not path.exists():
            print(f"\nprofile {name}: no output (is py-spy installed and allowed to attach?)")
            continue
        own: collections.Counter[str] = collections.Counter()
        inclusive: collections.Counter[str] = collections.Counter()
        total = 0
        for line in path.read_text().splitlines():
            stack, _, count_text = line.rpartition(" ")
            if not stack:
                continue
            count = int(count_text)
            total += count
            frames = stack.split(";")
            own[frames[-1]] += count
            seen = set()
            for f in frames:
                fn = f.split(" (")[0] + " (" + f.rsplit("/", 1)[-1].split(":")[0] + ")" if " (" in f else f
                if ("k3p" in f or "apiserver" in f) and fn not in seen:
                    seen.add(fn)
                    inclusive[fn] += count
        if not total:
            continue
        print(f"\nprofile {name}: {total} samples of the server while busy ({path})")
        print("  self time:")
        for frame, count in own.most_common(top):
            print(f"    {count / total:6.1%}  {_short(frame)}")
        print("  inclusive time in k3p code:")
        for frame, count in inclusive.most_common(top):
            print(f"    {count / total:6.1%}  {frame}")


def _short(frame: str) -> str:
    for marker in ("site-packages/", "/core/", "/plugins/", "lib/python3"):
        if marker in frame:
            head, _, tail = frame.partition("(")
            return head + "(" + tail[tail.find(marker) + len(marker):] if marker in tail else frame
    return frame


# --- main -----------------------------------------------------------------------------------


async def main(args: argparse.Namespace, profile_dir: Path | None, server_args: list[str]) -> int:
    sizes = QUICK if args.quick else FULL
    if args.watchers:
        sizes.watchers = args.watchers
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="k3p-bench-api-") as workdir:
        server = K3pServer(Path(workdir) / "server", args=server_args)
        try:
            server.start(timeout=120)
            assert server.proc is not None
            print(f"k3p server pid {server.proc.pid} at {server.url}, flags: {' '.join(server_args) or '(none)'}")
            profiler = Profiler(server.proc.pid, profile_dir)
            api_bench = ApiBench(server, sizes, profiler)
            api = await api_bench.run()
        finally:
            server.stop()
        api_seconds = time.perf_counter() - began
        # The datastore runs only after the server is gone: it gets the machine to itself too.
        ds_bench = DatastoreBench(os.path.join(workdir, "store.db"), sizes, api_bench.sample_pod,
                                  api_bench.sample_configmap)
        ds = await ds_bench.run()
    report(api, ds, sizes, len(api_bench.sample_pod), len(api_bench.sample_configmap))
    if profiler.files:
        summarize_profiles(profiler.files)
    print(f"\ntook {time.perf_counter() - began:.0f} s (API part {api_seconds:.0f} s)")
    return 0


def isolation_flags() -> list[str]:
    """Those of :data:`ISOLATION_FLAGS` that this k3p's ``server`` command knows."""
    helptext = subprocess.run([sys.executable, "-m", "k3p", "server", "--help"], capture_output=True, text=True,
                              timeout=60).stdout
    return [f for f in ISOLATION_FLAGS if f in helptext]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smaller, faster run (under a minute)")
    parser.add_argument("--watchers", type=int, default=0, help="watch streams for the fan-out (default 1000)")
    parser.add_argument("--whole-server", action="store_true",
                        help="keep the agent, scheduler and controllers running in the server (default: API alone)")
    parser.add_argument("--profile", metavar="DIR",
                        help="sample the server with py-spy during every phase; collapsed stacks go to DIR")
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    profile_dir = Path(args.profile).resolve() if args.profile else None
    if profile_dir is not None:
        if shutil.which("py-spy") is None:
            sys.exit("--profile needs py-spy (pip install py-spy)")
        profile_dir.mkdir(parents=True, exist_ok=True)
    print(banner("k3p API benchmark"))
    print(f"{'quick' if args.quick else 'full'} run, loopback only. The server (a subprocess with one asyncio loop) "
          f"and this load generator share the machine's {os.cpu_count()} cores and compete for them: absolute figures "
          f"are lower than with the client on other cores or another machine.")
    print(capacity_line("before the run"))
    server_args = [] if args.whole_server else isolation_flags()
    code = uvloop.run(main(args, profile_dir, server_args))
    print(capacity_line("after the run"))
    sys.exit(code)
