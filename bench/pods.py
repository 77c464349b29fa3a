"""Pod benchmark: pod start latency on a real node, and what the node's processes cost in memory and CPU.

    python bench/pods.py [--pods 30] [--quick] [--settle S] [--cpu-window S]

Needs root, containerd, runc, the CNI plugins and a static busybox (``k3p check-config``
lists them). Starts a full ``k3p server`` with its own node on free ports and a short-named
temporary data dir under /tmp (containerd's socket path must fit in a unix socket address);
the server runs containerd as its child. A busybox image is built locally and put in the
node's airgap images folder before the start, so no registry is needed.

Measured:

1. *idle*: with the node Ready and no pods, after a settle time: RSS of the k3p server
   process and of containerd, and the server's CPU over a window.
2. *pod start*: ``--pods`` pods (``sleep 3600``, ``imagePullPolicy: IfNotPresent``) are
   created at once from concurrent clients; a watch records when each is first seen
   Running and Ready (time from just before its create request).
3. *busy*: with the pods running, after a settle time: RSS of the server, containerd, the
   shims (``containerd-shim-runc-v2``; one per pod, re-parented to init, found by their
   command line naming this data dir) and the containers' own processes, and the CPU of
   each over a window.

RSS counts a shared page in every process that maps it, so sums over many processes
(the shims) overstate; the PSS column splits shared pages among their sharers. Goals are
checked at the end (PASS/MISS). Everything the run made is removed at the end, also on
failure: pods, the server and its children, shims and containers left behind, mounts,
network namespaces and IP reservations of this run's pods, the ``cni0`` bridge when
nothing else uses it, and the temp dir.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import ipaddress
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import structlog
from _common import (
    CpuWindow,
    Progress,
    api_session,
    banner,
    condition_true,
    get_json,
    mib,
    peak_rss_bytes,
    percentile,
    pids_where,
    post_json,
    process_cmdline,
    process_cpu_seconds,
    process_name,
    pss_bytes,
    watch_events,
)

from k3p.testing import K3pServer, descendants
from k3p.testing.memory import rss_bytes
from k3p.testing.process import pid_alive
from k3p_plugins.containerd.ocibuild import build_busybox_image

GOAL_SERVER_RSS = 150 * 2**20
GOAL_START_P50 = 1.0
#: K3s's documented minimum RAM for a server with one agent, Kine/SQLite (K3s 1.19 resource profiling);
#: the same page for K3s 1.26 gives 1428 M (one agent) and 1596 M (server with a workload)
K3S_SERVER_RAM = 512 * 2**20
K3S_SERVER_RAM_SOURCE = ("K3s docs, resource profiling (v1.19): 512 M minimum RAM for a cluster with one agent, "
                         "Kine/SQLite; 1596 M for a server with a workload in the v1.26 edition")
IMAGE = "docker.io/library/busybox:1.35"
NAMESPACE = "bench"
SHIM = "containerd-shim-runc-v2"
NETNS_DIR = Path("/var/run/netns")
CNI_BRIDGE = "cni0"
CNI_IPAM_DIR = Path("/var/lib/cni/networks")

progress = Progress()


# --- what runs on the node --------------------------------------------------------------------


@dataclass
class NodeProcesses:
    """The node's processes: the server, its containerd, the shims of this data dir and their containers."""

    server: int
    data_dir: Path
    containerd: int | None = None
    shims: list[int] = field(default_factory=list)
    containers: list[int] = field(default_factory=list)

    def refresh(self) -> NodeProcesses:
        kids = descendants(self.server)
        self.containerd = next((p for p in kids if process_name(p) == "containerd"), None)
        self.shims = pids_where(SHIM, mentioning=str(self.data_dir))
        self.containers = [p for shim in self.shims for p in descendants(shim)]
        return self

    def sandbox_ids(self) -> set[str]:
        """The ids the shims serve (a runc v2 shim is named after its pod's sandbox)."""
        ids = set()
        for pid in self.shims:
            argv = process_cmdline(pid)
            if "-id" in argv[:-1]:
                ids.add(argv[argv.index("-id") + 1])
        return ids

    def netns_inodes(self) -> set[int]:
        """The network namespaces the containers' processes are in (inode numbers)."""
        found = set()
        for pid in self.containers:
            with contextlib.suppress(OSError):
                found.add(os.stat(f"/proc/{pid}/ns/net").st_ino)
        return found


@dataclass
class Memory:
    server_rss: int | None
    server_peak: int | None
    containerd_rss: int | None
    shims: int
    shims_rss: int
    shims_pss: int
    containers: int
    containers_rss: int


def _sum(values: list[int | None]) -> int:
    return sum(v for v in values if v is not None)


def measure_memory(procs: NodeProcesses) -> Memory:
    procs.refresh()
    return Memory(
        server_rss=rss_bytes(procs.server),
        server_peak=peak_rss_bytes(procs.server),
        containerd_rss=rss_bytes(procs.containerd) if procs.containerd else None,
        shims=len(procs.shims),
        shims_rss=_sum([rss_bytes(p) for p in procs.shims]),
        shims_pss=_sum([pss_bytes(p) for p in procs.shims]),
        containers=len(procs.containers),
        containers_rss=_sum([rss_bytes(p) for p in procs.containers]),
    )


def _cpu(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            total += process_cpu_seconds(pid)
    return total


async def measure_cpu(procs: NodeProcesses, seconds: float) -> dict[str, float]:
    """Share of one core each group (and the whole machine: every process) used over ``seconds`` of wall time."""
    procs.refresh()
    groups = {"server": [procs.server], "containerd": [procs.containerd] if procs.containerd else [],
              "shims": list(procs.shims), "containers": list(procs.containers)}
    before = {k: _cpu(v) for k, v in groups.items()}
    window = CpuWindow()
    await asyncio.sleep(seconds)
    wall = time.perf_counter() - window.wall
    return {**{k: (_cpu(v) - before[k]) / wall for k, v in groups.items()}, "machine": window.machine_share()}


# --- the cluster side ------------------------------------------------------------------------


def pod_body(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"app": "bench-sleep"}},
        "spec": {
            # busybox sleep as PID 1 ignores SIGTERM: a short grace period keeps the cleanup quick
            "terminationGracePeriodSeconds": 2,
            "containers": [{"name": "sleep", "image": IMAGE, "imagePullPolicy": "IfNotPresent",
                            "command": ["sleep", "3600"]}],
        },
    }


async def wait_node_ready(session: aiohttp.ClientSession, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for node in (await get_json(session, "/api/v1/nodes"))["items"]:
            if condition_true(node, "Ready"):
                return node["metadata"]["name"]
        await asyncio.sleep(0.2)
    raise TimeoutError(f"no node Ready within {timeout:.0f} s")


async def wait_image_imported(marker: Path, archive: Path, timeout: float) -> None:
    """The containerd plugin records each archive it imported in its marker file."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError):
            if str(archive) in json.loads(marker.read_text()):
                return
        await asyncio.sleep(0.2)
    raise TimeoutError(f"{archive.name} not imported within {timeout:.0f} s")


async def wait_default_service_account(session: aiohttp.ClientSession, timeout: float) -> None:
    """Pods in a new namespace need its ``default`` service account, which a controller makes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        async with session.get(f"/api/v1/namespaces/{NAMESPACE}/serviceaccounts/default") as r:
            await r.read()
            if r.status == 200:
                return
        await asyncio.sleep(0.1)
    progress("no default service account appeared; creating pods anyway")


@dataclass
class StartTimes:
    created: dict[str, float] = field(default_factory=dict)
    bound: dict[str, float] = field(default_factory=dict)
    running: dict[str, float] = field(default_factory=dict)
    ready: dict[str, float] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    create_errors: int = 0


async def watch_starts(session: aiohttp.ClientSession, rv: str, times: StartTimes, total: int,
                       done: asyncio.Event) -> None:
    async for event in watch_events(session, f"/api/v1/namespaces/{NAMESPACE}/pods", rv):
        if event.get("type") not in ("ADDED", "MODIFIED"):
            continue
        pod = event["object"]
        name = pod["metadata"]["name"]
        now = time.perf_counter()
        status = pod.get("status") or {}
        if (pod.get("spec") or {}).get("nodeName") and name not in times.bound:
            times.bound[name] = now
        if status.get("phase") == "Running" and name not in times.running:
            times.running[name] = now
        if condition_true(pod, "Ready") and name not in times.ready:
            times.ready[name] = now
        for c in status.get("containerStatuses") or []:
            reason = ((c.get("state") or {}).get("waiting") or {}).get("reason")
            if reason in ("ErrImagePull", "ImagePullBackOff", "CreateContainerError", "CrashLoopBackOff",
                          "CreateContainerConfigError", "InvalidImageName"):
                times.failed[name] = reason
        if len(times.ready) >= total:
            done.set()
            return


async def start_pods(session: aiohttp.ClientSession, names: list[str], timeout: float) -> StartTimes:
    """Create the pods ``names`` at once and wait until all are Ready (or ``timeout``)."""
    times = StartTimes()
    rv = (await get_json(session, f"/api/v1/namespaces/{NAMESPACE}/pods", limit="1"))["metadata"]["resourceVersion"]
    done = asyncio.Event()
    watcher = asyncio.create_task(watch_starts(session, rv, times, len(names), done))

    async def create(name: str) -> None:
        times.created[name] = time.perf_counter()
        try:
            await post_json(session, f"/api/v1/namespaces/{NAMESPACE}/pods", pod_body(name))
        except Exception as e:
            times.create_errors += 1
            progress(f"create {name} failed: {e}")

    try:
        await asyncio.gather(*(create(name) for name in names))
        try:
            await asyncio.wait_for(done.wait(), timeout)
        except TimeoutError:
            progress(f"timed out: {len(times.running)} Running, {len(times.ready)} Ready of {len(names)}; "
                     f"failures {times.failed}")
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
    return times


async def diagnose(session: aiohttp.ClientSession, server: K3pServer) -> list[str]:
    """Why pods did not start: their phases and waiting reasons, recent events, the server's warnings."""
    pods = (await get_json(session, f"/api/v1/namespaces/{NAMESPACE}/pods"))["items"]
    states = collections.Counter()
    for p in pods:
        status = p.get("status") or {}
        waiting = [((c.get("state") or {}).get("waiting") or {}).get("reason", "")
                   for c in status.get("containerStatuses") or []]
        states[(status.get("phase", "?"), p["spec"].get("nodeName", ""), ",".join(waiting))] += 1
    lines = ["diagnosis: pods by (phase, node, waiting reasons): " + str(dict(states))]
    events = (await get_json(session, f"/api/v1/namespaces/{NAMESPACE}/events"))["items"]
    for e in events[-8:]:
        lines.append(f"  event {e.get('reason')}: {e.get('message', '')[-300:]}")
    warnings = [line for line in server.logs().splitlines() if '"level": "warning"' in line or
                '"level": "error"' in line]
    lines += [f"  log: {line[:300]}" for line in warnings[-8:]]
    return lines


async def delete_pods(session: aiohttp.ClientSession, timeout: float) -> int:
    """Delete every pod of the benchmark and wait until they are gone; the number still there."""
    path = f"/api/v1/namespaces/{NAMESPACE}/pods"
    async with session.delete(path) as r:
        await r.read()
    deadline = time.monotonic() + timeout
    left = -1
    while time.monotonic() < deadline:
        left = len((await get_json(session, path))["items"])
        if not left:
            return 0
        await asyncio.sleep(0.5)
    return left


# --- cleanup of what the kernel and containerd keep outside the data dir --------------------


@dataclass
class HostState:
    """What existed before the run, and what this run's pods were seen using."""

    netns_before: set[str]
    bridge_before: bool
    netns_inodes: set[int] = field(default_factory=set)
    sandbox_ids: set[str] = field(default_factory=set)

    @classmethod
    def now(cls) -> HostState:
        return cls(netns_before=_netns_names(), bridge_before=Path(f"/sys/class/net/{CNI_BRIDGE}").exists())

    def note(self, procs: NodeProcesses) -> None:
        procs.refresh()
        self.netns_inodes |= procs.netns_inodes()
        self.sandbox_ids |= procs.sandbox_ids()


def bridge_subnet(name: str = CNI_BRIDGE) -> str | None:
    """The IPv4 subnet of an existing bridge ``name`` (e.g. "10.42.1.0/24"), or None."""
    result = subprocess.run(["ip", "-j", "-4", "addr", "show", "dev", name], capture_output=True, text=True)
    if result.returncode != 0:
        return None
    for link in json.loads(result.stdout or "[]"):
        for addr in link.get("addr_info") or []:
            if addr.get("family") == "inet":
                return str(ipaddress.ip_interface(f"{addr['local']}/{addr['prefixlen']}").network)
    return None


def _netns_names() -> set[str]:
    try:
        return {p.name for p in NETNS_DIR.iterdir() if p.name.startswith("cni-")}
    except OSError:
        return set()


def _kill_tree(pid: int) -> None:
    for p in [*descendants(pid), pid]:
        if pid_alive(p):
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)


def _mounts_under(root: Path) -> list[str]:
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            # the mount point is field 5; octal escapes stand for spaces and the like
            point = line.split()[4].encode().decode("unicode_escape")
            if point == str(root) or point.startswith(str(root) + "/"):
                found.append(point)
    return found


def cleanup_host(workdir: Path, data_dir: Path, host: HostState) -> list[str]:
    """Remove what this run left outside the server's process tree; what was done, for the report."""
    notes: list[str] = []
    shims = pids_where(SHIM, mentioning=str(data_dir))
    for pid in shims:
        _kill_tree(pid)
    if shims:
        notes.append(f"killed {len(shims)} leftover shims (and their containers)")
    for point in sorted(_mounts_under(workdir), key=len, reverse=True):
        if subprocess.run(["umount", "-R", point], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-R", "-l", point], capture_output=True)
    if left := _mounts_under(workdir):
        notes.append(f"{len(left)} mounts could not be removed under {workdir}")
    ours, stale, others = [], [], []
    for name in sorted(_netns_names() - host.netns_before):
        path = NETNS_DIR / name
        try:
            inode, mtime = os.stat(path).st_ino, os.lstat(path).st_mtime
        except OSError:
            continue
        if inode in host.netns_inodes:
            ours.append(name)
        elif not os.path.ismount(path) and time.time() - mtime > 5:
            # a name whose namespace is gone (no nsfs mounted on it) serves nobody; a fresh one may be
            # another runtime's that is about to mount it
            stale.append(name)
        else:
            others.append(name)
    removed = 0
    for name in stale:
        try:
            (NETNS_DIR / name).unlink()
            removed += 1
        except OSError:
            others.append(name)
    if removed:
        notes.append(f"removed {removed} stale network namespace names (nothing mounted on them)")
    for name in ours:
        if subprocess.run(["ip", "netns", "del", name], capture_output=True).returncode != 0:
            with contextlib.suppress(OSError):
                subprocess.run(["umount", "-l", str(NETNS_DIR / name)], capture_output=True)
                (NETNS_DIR / name).unlink()
    if ours:
        notes.append(f"removed {len(ours)} network namespaces of this run's pods")
    if others:
        notes.append(f"left {len(others)} new network namespaces that this run's pods did not use")
    released = 0
    for reservation in CNI_IPAM_DIR.glob("*/*"):
        with contextlib.suppress(OSError, UnicodeDecodeError):
            if reservation.read_text().split("\n", 1)[0].strip() in host.sandbox_ids:
                reservation.unlink()
                released += 1
    if released:
        notes.append(f"released {released} pod IP reservations")
    bridge = Path(f"/sys/class/net/{CNI_BRIDGE}")
    if bridge.exists():
        # another node on this machine (a test, a real k3p) may still have pods on the bridge
        ports = list((bridge / "brif").iterdir()) if (bridge / "brif").exists() else []
        if not ports:
            subprocess.run(["ip", "link", "del", CNI_BRIDGE], capture_output=True)
            notes.append(f"deleted the {CNI_BRIDGE} bridge" + ("" if not host.bridge_before else
                                                               " (it existed before the run, unused)"))
        else:
            notes.append(f"kept the {CNI_BRIDGE} bridge: {len(ports)} interfaces of other pods are on it")
    shutil.rmtree(workdir, ignore_errors=True)
    if workdir.exists():
        notes.append(f"could not remove {workdir} completely")
    return notes


# --- the run ---------------------------------------------------------------------------------


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def stage_line(label: str, times: StartTimes, stamps: dict[str, float], total: int) -> str:
    took = [stamps[n] - times.created[n] for n in stamps if n in times.created]
    return (f"  create -> {label:<18} p50 {ms(percentile(took, 0.5)):>8}, p99 {ms(percentile(took, 0.99)):>8}"
            f"  ({len(took)}/{total})")


async def measure(server: K3pServer, archive: Path, args: argparse.Namespace, host: HostState,
                  began: float) -> list[str]:
    assert server.proc is not None
    procs = NodeProcesses(server.proc.pid, server.data_dir)
    out: list[str] = []
    async with api_session(server, connections=args.pods + 8) as session:
        node = await wait_node_ready(session, args.timeout)
        node_ready = time.perf_counter() - began
        await wait_image_imported(server.data_dir / "agent" / "containerd" / "imported-images.json", archive,
                                  args.timeout)
        progress(f"node {node} Ready after {node_ready:.1f} s; image imported")
        await post_json(session, "/api/v1/namespaces", {"metadata": {"name": NAMESPACE}})
        await wait_default_service_account(session, 30)
        progress(f"idle: settling {args.settle:.0f} s, then CPU over {args.cpu_window:.0f} s")
        await asyncio.sleep(args.settle)
        idle = measure_memory(procs)
        idle_cpu = await measure_cpu(procs, args.cpu_window)

        progress(f"{args.singles} pods one at a time")
        single = StartTimes()
        for i in range(args.singles):
            one = await start_pods(session, [f"single-{i}"], args.timeout)
            for stamps, into in ((one.created, single.created), (one.bound, single.bound),
                                 (one.running, single.running), (one.ready, single.ready)):
                into.update(stamps)
        host.note(procs)
        await delete_pods(session, 90)

        progress(f"starting {args.pods} pods at once")
        procs.refresh()
        window = CpuWindow(procs.server)
        containerd_cpu = _cpu([procs.containerd] if procs.containerd else [])
        times = await start_pods(session, [f"sleep-{i:03d}" for i in range(args.pods)], args.timeout)
        start_wall = (max(times.ready.values()) if times.ready else time.perf_counter()) - min(times.created.values())
        own_share, server_share = window.shares()
        burst_cpu = (server_share or 0.0, (_cpu([procs.containerd] if procs.containerd else []) - containerd_cpu)
                     / (time.perf_counter() - window.wall), window.machine_share(), own_share)
        host.note(procs)
        if len(times.ready) < args.pods:
            out.extend(await diagnose(session, server))
        progress(f"busy: settling {args.settle:.0f} s, then CPU over {args.cpu_window:.0f} s")
        await asyncio.sleep(args.settle)
        busy = measure_memory(procs)
        busy_cpu = await measure_cpu(procs, args.cpu_window)
        host.note(procs)
        running_now = sum(1 for p in (await get_json(session, f"/api/v1/namespaces/{NAMESPACE}/pods"))["items"]
                          if (p.get("status") or {}).get("phase") == "Running")

        progress("deleting the pods")
        delete_began = time.perf_counter()
        left = await delete_pods(session, 90)
        deleted_in = time.perf_counter() - delete_began

    to_running = [times.running[n] - times.created[n] for n in times.running]
    all_ready = start_wall if len(times.ready) == args.pods else None
    others = sorted({process_name(p) for p in descendants(procs.server) if p != procs.containerd} - {""})

    out.append(f"node {node} Ready {node_ready:.1f} s after the server started (containerd started by the "
               f"server{'; other children: ' + ', '.join(others) if others else ''})")
    out.append("")
    out.append("pod start (busybox `sleep 3600`, image present, imagePullPolicy IfNotPresent; times from just "
               "before the create request to the watch event that first shows the state)")
    out.append(f" {args.singles} pods one at a time:")
    for label, stamps in (("bound", single.bound), ("Running", single.running), ("Ready", single.ready)):
        out.append(stage_line(label, single, stamps, args.singles))
    out.append(f" {args.pods} pods created at once ({times.create_errors} create errors):")
    for label, stamps in (("bound", times.bound), ("Running", times.running), ("Ready", times.ready)):
        out.append(stage_line(label, times, stamps, args.pods))
    if all_ready is not None:
        out.append(f"  all {args.pods} Ready {all_ready:.2f} s after the first create ({args.pods / all_ready:.1f} "
                   f"pods/s); CPU meanwhile (share of one core): server {burst_cpu[0]:.2f}, "
                   f"containerd {burst_cpu[1]:.2f}, whole machine {burst_cpu[2]:.2f} of {os.cpu_count()} "
                   f"(this process {burst_cpu[3]:.2f}): {burst_cpu[2] * all_ready / args.pods:.2f} CPU-seconds "
                   f"of the machine per pod, other programs included")
    if times.failed:
        out.append(f"  failures: {times.failed}")
    out.append(f"  deleting them took {deleted_in:.1f} s" + (f" ({left} still there)" if left else ""))
    out.append("")
    out.append(f"memory, MiB (settled {args.settle:.0f} s)   idle: node Ready, no pods   "
               f"{args.pods} pods ({running_now} Running)")
    out.append(f"  k3p server process RSS        {mib(idle.server_rss):>8}                  {mib(busy.server_rss):>8}"
               f"   (peak {mib(busy.server_peak)})")
    out.append(f"  containerd RSS                {mib(idle.containerd_rss):>8}                  "
               f"{mib(busy.containerd_rss):>8}")
    out.append(f"  shims ({busy.shims:>2}) RSS total          {mib(idle.shims_rss):>8}                  "
               f"{mib(busy.shims_rss):>8}   (PSS total {mib(busy.shims_pss)})")
    out.append(f"  containers' processes ({busy.containers:>2}) RSS {mib(idle.containers_rss):>6}                  "
               f"{mib(busy.containers_rss):>8}")
    out.append("")
    out.append(f"CPU, share of one core over {args.cpu_window:.0f} s:  idle                        "
               f"{args.pods} pods")
    for key, label in (("server", "k3p server process"), ("containerd", "containerd"), ("shims", "shims"),
                       ("containers", "containers' processes"), ("machine", f"whole machine ({os.cpu_count()} cpus)")):
        out.append(f"  {label:<28} {idle_cpu[key]:>8.3f}                  {busy_cpu[key]:>8.3f}")
    out.append("")
    rss = idle.server_rss or 0
    p50 = percentile(to_running, 0.5) if len(to_running) == args.pods else float("inf")
    out.append(f"  {'PASS' if rss <= GOAL_SERVER_RSS else 'MISS'}  k3p server RSS idle with the node Ready "
               f"{mib(rss)} MiB <= {GOAL_SERVER_RSS / 2**20:.0f} MiB")
    out.append(f"        K3s baseline {K3S_SERVER_RAM / 2**20:.0f} M: k3p uses {rss / K3S_SERVER_RAM:.2f}x of it "
               f"({K3S_SERVER_RAM / max(rss, 1):.1f}x less); {args.pods} pods running: {mib(busy.server_rss)} MiB "
               f"({(busy.server_rss or 0) / K3S_SERVER_RAM:.2f}x)")
    out.append(f"        ({K3S_SERVER_RAM_SOURCE}; K3s's figure covers its whole process, containerd aside)")
    out.append(f"  {'PASS' if p50 <= GOAL_START_P50 else 'MISS'}  pod start (create -> Running) p50 "
               f"{p50:.2f} s <= {GOAL_START_P50:.0f} s ({args.pods} pods created at once)")
    alone = [single.running[n] - single.created[n] for n in single.running]
    if alone:
        out.append(f"        one pod at a time: p50 {percentile(alone, 0.5):.2f} s")
    return out


async def run(args: argparse.Namespace) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="k3pb-", dir="/tmp"))
    host = HostState.now()
    flags: list[str] = []
    if shared := bridge_subnet():
        # Another node on this host owns the pod bridge already (every k3p node names it cni0). A node
        # whose pod CIDR differs cannot join the bridge, so this one takes the same subnet: the pods
        # of both draw addresses from the one host-local pool and the figures are unaffected.
        flags = ["--cluster-cidr", shared, "--node-cidr-mask-size", shared.rsplit("/", 1)[1]]
        print(f"note: {CNI_BRIDGE} exists already with {shared} (another node on this host): "
              f"this node uses the same pod subnet")
    server = K3pServer(workdir / "s", args=flags, agent=True)
    lines: list[str] = []
    notes: list[str] = []
    try:
        archive = server.data_dir / "agent" / "images" / "busybox.tar"
        archive.parent.mkdir(parents=True, exist_ok=True)
        build_busybox_image(archive, IMAGE)
        progress(f"starting k3p server with its node in {workdir}")
        began = time.perf_counter()
        server.start(timeout=args.timeout)
        assert server.proc is not None
        print(f"k3p server pid {server.proc.pid} at {server.url}, data dir {server.data_dir}")
        lines = await measure(server, archive, args, host, began)
    except BaseException:
        if server.proc is not None:
            print(f"--- k3p log (tail) ---\n{server.logs()[-3000:]}", file=sys.stderr)
        raise
    finally:
        if server.proc is not None:
            with contextlib.suppress(Exception):
                host.note(NodeProcesses(server.proc.pid, server.data_dir))
            server.stop()
        if args.keep_logs:
            keep = Path(args.keep_logs)
            keep.mkdir(parents=True, exist_ok=True)
            for log_file in (server.log_path, server.data_dir / "agent" / "containerd" / "containerd.log"):
                with contextlib.suppress(OSError):
                    shutil.copy(log_file, keep / log_file.name)
        notes = cleanup_host(workdir, server.data_dir, host)
    print()
    print("\n".join(lines))
    print()
    print("cleanup: " + ("; ".join(notes) if notes else "nothing left behind"))
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pods", type=int, default=30)
    parser.add_argument("--singles", type=int, default=3, help="pods started one at a time before the burst")
    parser.add_argument("--settle", type=float, default=10.0, help="seconds to wait before measuring memory")
    parser.add_argument("--cpu-window", type=float, default=10.0, help="seconds over which CPU is measured")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for each stage")
    parser.add_argument("--keep-logs", metavar="DIR", help="copy the k3p and containerd logs here at the end")
    parser.add_argument("--quick", action="store_true", help="10 pods (2 alone), 3 s settle and CPU windows")
    args = parser.parse_args()
    if args.quick:
        args.pods, args.singles, args.settle, args.cpu_window = 10, 2, 3.0, 3.0
    if os.geteuid() != 0:
        sys.exit("bench/pods.py needs root (containerd, network namespaces)")
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    print(banner("k3p pod benchmark"))
    sys.exit(asyncio.run(run(args)))


if __name__ == "__main__":
    main()
