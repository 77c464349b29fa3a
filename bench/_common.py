"""Helpers shared by the benchmarks: percentiles, latency summaries, CPU and memory of processes, a banner,
and a light HTTP client for a test server (JSON requests, watches)."""

from __future__ import annotations

import asyncio
import json
import os
import platform
import re
import resource
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from k3p.testing.memory import status_kib

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def percentile(samples: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``samples``, interpolated between the nearest ranks."""
    if not samples:
        return float("nan")
    if len(samples) == 1:
        return samples[0]
    if q >= 1.0:
        return max(samples)
    cuts = statistics.quantiles(samples, n=1000, method="inclusive")
    return cuts[min(len(cuts) - 1, max(0, round(q * 1000) - 1))]


@dataclass
class Stats:
    """A latency distribution (seconds) and, where it was a throughput run, operations per second."""

    p50: float
    p99: float
    count: int
    rate: float | None = None
    errors: int = 0

    @classmethod
    def of(cls, samples: list[float], seconds: float | None = None, errors: int = 0) -> Stats:
        rate = len(samples) / seconds if seconds else None
        return cls(percentile(samples, 0.5), percentile(samples, 0.99), len(samples), rate, errors)


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (all its threads) so far, from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # after the command name: state is field 0, utime field 11, stime field 12
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def machine_cpu_seconds() -> float:
    """CPU time all processes on the machine have used so far (every core), from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal: interrupts are left out, as they are mostly our own
    # loopback traffic, which the per-process figures do not show either
    user, nice, system, steal = fields[0], fields[1], fields[2], fields[7]
    return (user + nice + system + steal) / _CLOCK_TICKS


def own_cpu_seconds() -> float:
    """CPU time of this process (all threads) so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class CpuWindow:
    """CPU used by some processes over a stretch of wall time, as a share of one core."""

    def __init__(self, server_pid: int | None = None) -> None:
        self.server_pid = server_pid
        self.wall = time.perf_counter()
        self.own = own_cpu_seconds()
        self.server = process_cpu_seconds(server_pid) if server_pid else 0.0
        self.machine = machine_cpu_seconds()

    def shares(self) -> tuple[float, float | None]:
        """(this process, the server or None): fraction of one core used since the window opened."""
        wall = max(time.perf_counter() - self.wall, 1e-9)
        own = (own_cpu_seconds() - self.own) / wall
        server = (process_cpu_seconds(self.server_pid) - self.server) / wall if self.server_pid else None
        return own, server

    def machine_share(self) -> float:
        """Fraction of one core the whole machine used since the window opened (all processes)."""
        return (machine_cpu_seconds() - self.machine) / max(time.perf_counter() - self.wall, 1e-9)


async def timed_loop(clients: int, seconds: float, op: Callable[[int, int], Awaitable[bool]]) -> tuple[
        list[float], int, float]:
    """Run ``op(client, n)`` in a loop from ``clients`` concurrent tasks for ``seconds``.

    ``op`` returns False for a failed operation. Returns (latencies of the successful
    operations, number of failures, elapsed wall seconds).
    """
    loop = asyncio.get_running_loop()
    stop = loop.time() + seconds
    latencies: list[float] = []
    failures = 0

    async def client(i: int) -> None:
        nonlocal failures
        n = 0
        while loop.time() < stop:
            began = time.perf_counter()
            ok = await op(i, n)
            if ok:
                latencies.append(time.perf_counter() - began)
            else:
                failures += 1
            n += 1

    began = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(clients)))
    return latencies, failures, time.perf_counter() - began


def banner(what: str) -> str:
    """One line naming the machine and software the figures were measured on."""
    return (
        f"{what}: python {platform.python_version()}, sqlite {sqlite3.sqlite_version},"
        f" {os.cpu_count()} cpus, {platform.machine()}"
    )


_BUSY = (
    "import time\nend = time.monotonic() + {seconds}\n"
    "while time.monotonic() < end:\n    pass\nprint(time.process_time())"
)


def capacity_line(when: str) -> str:
    """One line saying how much CPU the machine really gives right now (a noisy neighbour shows here)."""
    cores = os.cpu_count() or 1
    got = cpu_capacity(cores)
    return (f"CPU check {when}: {cores} busy processes got {got:.2f} cores' worth"
            + ("" if got > cores * 0.9 else " (something else is using this machine: figures are depressed)"))


@dataclass
class WrkResult:
    """One ``wrk --latency`` run; ``cpu`` holds the benchmark's own CPU shares (of one core) by name."""

    rps: float
    p50: float
    p99: float
    requests: int
    errors: int
    cpu: dict[str, float] = field(default_factory=dict)


_WRK_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


def _wrk_seconds(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if not m:
        raise ValueError(f"unexpected wrk duration {text!r}")
    return float(m.group(1)) * _WRK_UNITS[m.group(2)]


def parse_wrk(output: str) -> WrkResult:
    """Requests/s, p50, p99 and the request and error counts of a ``wrk --latency`` report."""
    def find(pattern: str) -> str:
        m = re.search(pattern, output, re.M)
        if m is None:
            raise ValueError(f"no {pattern!r} in the wrk output:\n{output}")
        return m.group(1)

    errors = 0
    if m := re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output):
        errors += int(m.group(1))
    if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output):
        errors += sum(int(g) for g in m.groups())
    return WrkResult(rps=float(find(r"Requests/sec:\s+([\d.]+)")), p50=_wrk_seconds(find(r"^\s+50%\s+(\S+)")),
                     p99=_wrk_seconds(find(r"^\s+99%\s+(\S+)")), requests=int(find(r"(\d+) requests in")),
                     errors=errors)


def cpu_capacity(processes: int | None = None, seconds: float = 0.5) -> float:
    """How many cores' worth of CPU ``processes`` busy loops really get (other load and hypervisor show here)."""
    n = processes or os.cpu_count() or 1
    procs = [subprocess.Popen([sys.executable, "-S", "-c", _BUSY.format(seconds=seconds)], stdout=subprocess.PIPE,
                              text=True) for _ in range(n)]
    used = 0.0
    for p in procs:
        out, _ = p.communicate(timeout=seconds + 30)
        used += float(out.strip() or 0)
    return used / seconds


class Progress:
    """Timestamped progress lines on stderr, so a long run shows where it is."""

    def __init__(self) -> None:
        self.began = time.perf_counter()

    def __call__(self, message: str) -> None:
        print(f"[{time.perf_counter() - self.began:6.1f}s] {message}", file=sys.stderr, flush=True)


# --- processes ----------------------------------------------------------------------------


def peak_rss_bytes(pid: int) -> int | None:
    """The highest resident set size ``pid`` has had (VmHWM), or None once it is gone."""
    kib = status_kib(pid, "VmHWM")
    return None if kib is None else kib * 1024


def pss_bytes(pid: int) -> int | None:
    """Proportional set size of ``pid``: shared pages divided among their sharers, so sums over processes add up."""
    kib = status_kib(pid, "Pss", "smaps_rollup")
    return None if kib is None else kib * 1024


def process_name(pid: int) -> str:
    """The kernel's short name of ``pid`` (``comm``, at most 15 characters), or "" once it is gone."""
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def process_cmdline(pid: int) -> list[str]:
    """The argument vector of ``pid`` (empty for kernel threads and processes that are gone)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def pids_where(name: str, mentioning: str = "") -> list[int]:
    """Live processes whose short name is ``name`` (and whose command line contains ``mentioning``)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and process_name(int(entry)) == name[:15]:
            if not mentioning or any(mentioning in a for a in process_cmdline(int(entry))):
                found.append(int(entry))
    return found


def mib(n: float | None) -> str:
    """Bytes as MiB for a table cell ("-" when unknown)."""
    return "-" if n is None else f"{n / 2**20:.1f}"


# --- talking to a test server -------------------------------------------------------------


def api_session(server: Any, connections: int = 64, timeout: float | None = None) -> aiohttp.ClientSession:
    """An aiohttp session to a ``k3p.testing.K3pServer`` with its admin certificate.

    aiohttp rather than ``k3p.client`` on the load side: it costs the measuring process
    little CPU, which is shared with the server being measured.
    """
    return aiohttp.ClientSession(
        base_url=server.url,
        connector=aiohttp.TCPConnector(ssl=server.ssl_context(), limit=connections),
        timeout=aiohttp.ClientTimeout(total=timeout),
        headers={"User-Agent": "k3p-bench/1"},
    )


async def post_json(session: aiohttp.ClientSession, path: str, body: dict[str, Any],
                    ok: tuple[int, ...] = (201,)) -> dict[str, Any]:
    """POST a JSON object; the created object, or RuntimeError with the server's answer."""
    async with session.post(path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}) as r:
        data = await r.read()
        if r.status not in ok:
            raise RuntimeError(f"POST {path}: {r.status} {data[:300]!r}")
        return json.loads(data) if data else {}


async def get_json(session: aiohttp.ClientSession, path: str, **params: str) -> dict[str, Any]:
    """GET a JSON object; RuntimeError unless the answer is 200."""
    async with session.get(path, params=params or None) as r:
        data = await r.read()
        if r.status != 200:
            raise RuntimeError(f"GET {path}: {r.status} {data[:300]!r}")
        return json.loads(data)


async def watch_events(session: aiohttp.ClientSession, path: str, resource_version: str = "",
                       **params: str) -> AsyncIterator[dict[str, Any]]:
    """The events of a watch on the collection at ``path`` (from ``resource_version``, or from now).

    Without a resource version the collection is listed first (``limit=1``) so that no
    event after this call is missed. Ends when the server closes the stream.
    """
    if not resource_version:
        resource_version = (await get_json(session, path, limit="1", **params))["metadata"]["resourceVersion"]
    async with session.get(path, params={**params, "watch": "true", "resourceVersion": resource_version},
                           timeout=aiohttp.ClientTimeout(total=None)) as r:
        if r.status != 200:
            raise RuntimeError(f"watch {path}: {r.status} {(await r.read())[:300]!r}")
        async for line in r.content:
            if line.strip():
                yield json.loads(line)


def condition_true(obj: dict[str, Any], kind: str) -> bool:
    """Whether ``obj.status.conditions`` holds a ``kind`` condition with status "True"."""
    return any(c.get("type") == kind and c.get("status") == "True"
               for c in (obj.get("status") or {}).get("conditions") or [])


async def count_ready_nodes(session: aiohttp.ClientSession) -> int:
    """How many Node objects have Ready=True."""
    return sum(1 for n in (await get_json(session, "/api/v1/nodes"))["items"] if condition_true(n, "Ready"))
