"""Helpers shared by the benchmarks: percentiles, latency summaries, CPU accounting, a banner."""

from __future__ import annotations

import asyncio
import os
import platform
import resource
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

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
