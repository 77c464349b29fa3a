"""Scheduler benchmark: how fast k3p's scheduler places a burst of pods on many nodes.

    python bench/scheduler.py [--nodes 100] [--pods 3000] [--creators 8] [--quick] [--server-scheduler]

Starts a real ``k3p server --disable-agent`` on a free loopback port with a temporary data
dir and creates Node objects (Ready; 8 cpu, 32Gi, 110 pods each). Then two runs:

1. *backlog*: the pods are created while no scheduler runs, then a fresh scheduler starts;
   the rate from its start (cache fill included) to the last bind is the scheduler's own.
2. *burst* (the goal): with the scheduler running, the pods are created from concurrent
   clients; the rate is pods / (first create .. last bind), bounded by how fast the API
   takes new pods as much as by the scheduler.

The scheduler runs in this process over ``k3p.client`` as it does in the server (or, with
``--server-scheduler``, the server's own is used and only the burst runs). The load
generator (creates, and a watch that records when each pod is bound) uses aiohttp so it
takes little CPU from the scheduler. Reported: throughput, create-to-bind latency, API
requests per second counted client-side (creators and scheduler separately), CPU of the
server and of this process, and how evenly the pods landed. The goal is checked at the
end (PASS/MISS). The server, the load generator and the scheduler share the machine's cores.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import structlog
from _common import CpuWindow, Progress, banner, cpu_capacity, percentile
from k3p.client import Client
from k3p.scheduler import Scheduler
from k3p.testing import K3pServer

GOAL_PODS_PER_SECOND = 100.0
NAMESPACE = "bench"

progress = Progress()


class CountingClient(Client):
    """A k3p Client that counts its requests by kind (watches excluded: each is one long request)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.requests: collections.Counter[str] = collections.Counter()

    async def request(self, method: str, path: str, **kwargs: Any) -> Any:
        if path.endswith("/binding"):
            kind = "bind"
        elif "/events" in path:
            kind = "event"
        elif path.endswith("/status"):
            kind = "status"
        else:
            kind = method
        self.requests[kind] += 1
        return await super().request(method, path, **kwargs)


def scheduler_client(server: K3pServer) -> CountingClient:
    tls = server.data_dir / "server" / "tls"
    return CountingClient(server.url, ca_file=server.ca_file, cert_file=tls / "client-admin.crt",
                          key_file=tls / "client-admin.key", user_agent="k3p-scheduler")


def load_session(server: K3pServer) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(base_url=server.url, connector=aiohttp.TCPConnector(ssl=server.ssl_context(),
                                                                                     limit=64),
                                 headers={"User-Agent": "k3p-bench/1"})


def node_body(name: str) -> dict[str, Any]:
    resources = {"cpu": "8", "memory": "32Gi", "pods": "110", "ephemeral-storage": "100Gi"}
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                                              "kubernetes.io/arch": "amd64"}},
        "status": {"capacity": resources, "allocatable": resources,
                   "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                                   "message": "kubelet is posting ready status"}]},
    }


def pod_body(name: str, owner_uid: str) -> dict[str, Any]:
    """A pod like one replica of a small Deployment (requests, an owner, a node selector)."""
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"app": "web", "pod-template-hash": "7d9f8c6b5"},
                     "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7d9f8c6b5",
                                          "uid": owner_uid, "controller": True, "blockOwnerDeletion": True}]},
        "spec": {
            "containers": [{"name": "web", "image": "registry.example/web:1.0",
                            "resources": {"requests": {"cpu": "100m", "memory": "128Mi"},
                                          "limits": {"cpu": "500m", "memory": "256Mi"}}}],
            "nodeSelector": {"kubernetes.io/os": "linux"},
        },
    }


async def post(session: aiohttp.ClientSession, path: str, body: dict[str, Any]) -> None:
    async with session.post(path, data=json.dumps(body).encode(),
                            headers={"Content-Type": "application/json"}) as r:
        data = await r.read()
        if r.status != 201:
            raise RuntimeError(f"POST {path}: {r.status} {data[:200]!r}")


async def create_pods(session: aiohttp.ClientSession, total: int, creators: int, prefix: str,
                      created_at: dict[str, float] | None = None) -> int:
    """``total`` pods from ``creators`` concurrent clients; the number of failures."""
    todo = iter(range(total))
    failures = 0
    owner = f"00000000-0000-4000-8000-{prefix:0>12}"
    path = f"/api/v1/namespaces/{NAMESPACE}/pods"

    async def creator() -> None:
        nonlocal failures
        for i in todo:
            name = f"{prefix}-{i:05d}"
            if created_at is not None:
                created_at[name] = time.perf_counter()
            try:
                await post(session, path, pod_body(name, owner))
            except Exception as e:
                failures += 1
                progress(f"create {name} failed: {e}")

    await asyncio.gather(*(creator() for _ in range(creators)))
    return failures


async def watch_binds(session: aiohttp.ClientSession, prefix: str, total: int, bound_at: dict[str, float],
                      where: dict[str, str], done: asyncio.Event, started: asyncio.Event) -> None:
    """Record when each pod named ``prefix-*`` is first seen with a node."""
    path = f"/api/v1/namespaces/{NAMESPACE}/pods"
    async with session.get(path, params={"limit": "1"}) as r:
        rv = (await r.json())["metadata"]["resourceVersion"]
    async with session.get(path, params={"watch": "true", "resourceVersion": rv},
                           timeout=aiohttp.ClientTimeout(total=None)) as r:
        started.set()
        async for line in r.content:
            if not line.strip():
                continue
            event = json.loads(line)
            pod = event["object"]
            name = pod["metadata"]["name"]
            node = (pod.get("spec") or {}).get("nodeName")
            if node and name.startswith(prefix) and name not in bound_at:
                bound_at[name] = time.perf_counter()
                where[name] = node
                if len(bound_at) >= total:
                    done.set()
                    return


async def backlog_run(server: K3pServer, session: aiohttp.ClientSession, args: argparse.Namespace) -> str:
    """Pods created while no scheduler runs, then a fresh one started: the scheduler's own rate."""
    assert server.proc is not None
    progress(f"backlog: creating {args.pods} pods with no scheduler running")
    await create_pods(session, args.pods, args.creators, "old")
    client = scheduler_client(server)
    scheduler = Scheduler(client, bind_concurrency=args.bind_concurrency)
    cpu = CpuWindow(server.proc.pid)
    began = time.perf_counter()
    task = asyncio.create_task(scheduler.run())
    try:
        while scheduler.bound < args.pods and time.perf_counter() - began < args.timeout:
            await asyncio.sleep(0.005)
        elapsed = time.perf_counter() - began
        own, server_share = cpu.shares()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await client.close()
    rate = scheduler.bound / elapsed
    progress(f"backlog: {scheduler.bound} bound in {elapsed:.2f} s")
    return (f"backlog: {scheduler.bound}/{args.pods} pending pods bound by a fresh scheduler in {elapsed:.2f} s "
            f"(cache fill included): {rate:.0f} pods/s; API requests by the scheduler "
            f"{sum(client.requests.values()) / elapsed:.0f}/s {dict(client.requests)}; "
            f"CPU server {server_share or 0:.2f}, this process {own:.2f}; "
            f"events sent {scheduler.events.sent}, dropped {scheduler.events.dropped}")


async def deployment_to_running(server: K3pServer, replicas: int = 1000) -> float | None:
    """TODO(lead): a Deployment of ``replicas`` replicas until every pod is Running; seconds taken.

    Needs the controllers (Deployment -> ReplicaSet -> pods) and simulated nodes whose
    kubelets run pods, which are not part of this benchmark yet. Return None to skip.
    """
    return None


async def burst_run(server: K3pServer, session: aiohttp.ClientSession, args: argparse.Namespace) -> tuple[bool, str]:
    """The scheduler running while pods arrive: first create to last bind."""
    assert server.proc is not None
    client = scheduler_client(server)
    scheduler: Scheduler | None = None
    task: asyncio.Task[None] | None = None
    try:
        if not args.server_scheduler:
            scheduler = Scheduler(client, bind_concurrency=args.bind_concurrency)
            ready = asyncio.Event()
            task = asyncio.create_task(scheduler.run(ready.set))
            await asyncio.wait_for(ready.wait(), 60)
        bound_at: dict[str, float] = {}
        where: dict[str, str] = {}
        created_at: dict[str, float] = {}
        done, watching = asyncio.Event(), asyncio.Event()
        watcher = asyncio.create_task(watch_binds(session, "web-", args.pods, bound_at, where, done, watching))
        await watching.wait()
        progress(f"burst: creating {args.pods} pods from {args.creators} clients")
        before = collections.Counter(client.requests)
        cpu = CpuWindow(server.proc.pid)
        began = time.perf_counter()
        failures = await create_pods(session, args.pods, args.creators, "web", created_at)
        created = time.perf_counter()
        progress(f"burst: created in {created - began:.1f} s ({failures} failures); waiting for the binds")
        try:
            await asyncio.wait_for(done.wait(), args.timeout)
        except TimeoutError:
            progress(f"burst: timed out with {len(bound_at)} of {args.pods} bound")
        own, server_share = cpu.shares()
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        finished = max(bound_at.values()) if bound_at else time.perf_counter()
        elapsed = max(finished - began, 1e-9)
        used = client.requests - before
        rate = len(bound_at) / elapsed
        latencies = [bound_at[n] - created_at[n] for n in bound_at if n in created_at]
        per_node = collections.Counter(where.values())
        counts = [per_node.get(f"node-{i:04d}", 0) for i in range(args.nodes)]
        lines = [
            f"burst: {len(bound_at)}/{args.pods} bound in {elapsed:.2f} s (first create to last bind): "
            f"{rate:.0f} pods/s; the creates alone took {created - began:.2f} s "
            f"({args.pods / (created - began):.0f}/s)",
            f"  create-to-bind latency p50 {percentile(latencies, 0.5) * 1000:.0f} ms, "
            f"p99 {percentile(latencies, 0.99) * 1000:.0f} ms",
            f"  API requests: {(args.pods + sum(used.values())) / elapsed:.0f}/s (creates {args.pods / elapsed:.0f}/s, "
            + (f"scheduler {sum(used.values()) / elapsed:.0f}/s {dict(used)})" if scheduler
               else "scheduler in the server)"),
            f"  CPU (share of one core): server {server_share or 0:.2f}, this process {own:.2f}",
            f"  pods per node: min {min(counts)}, max {max(counts)} (even: {args.pods / args.nodes:.0f})",
        ]
        if scheduler is not None:
            lines.append(f"  scheduler: bound {scheduler.bound}, bind errors {scheduler.bind_errors}, failed attempts "
                         f"{scheduler.failed_attempts}, events sent {scheduler.events.sent}, dropped "
                         f"{scheduler.events.dropped}")
        ok = rate >= GOAL_PODS_PER_SECOND and len(bound_at) == args.pods
        lines.append(f"\n  {'PASS' if ok else 'MISS'}  scheduling throughput {rate:.0f} pods/s "
                     f">= {GOAL_PODS_PER_SECOND:.0f} (burst, first create to last bind)")
        return ok, "\n".join(lines)
    finally:
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await client.close()


async def run(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="k3p-bench-scheduler-") as workdir:
        server = K3pServer(Path(workdir) / "server", args=["--disable-agent"])
        server.start(timeout=120)
        try:
            assert server.proc is not None
            print(f"k3p server pid {server.proc.pid} at {server.url}")
            async with load_session(server) as session:
                await post(session, "/api/v1/namespaces", {"metadata": {"name": NAMESPACE}})
                progress(f"creating {args.nodes} nodes")
                for i in range(args.nodes):
                    await post(session, "/api/v1/nodes", node_body(f"node-{i:04d}"))
                backlog = None if args.server_scheduler else await backlog_run(server, session, args)
                _, burst = await burst_run(server, session, args)
            deployment = await deployment_to_running(server)
        finally:
            server.stop()
    print()
    print(f"nodes {args.nodes}, pods {args.pods} per run, creators {args.creators}, bindings in flight "
          f"{args.bind_concurrency}, scheduler {'in the server' if args.server_scheduler else 'in this process'}")
    if backlog:
        print(backlog)
    if deployment is None:
        print("1,000-replica Deployment to all pods Running: skipped (needs controllers and simulated nodes)")
    else:
        print(f"1,000-replica Deployment to all pods Running: {deployment:.1f} s")
    print(burst)
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--pods", type=int, default=3000, help="pods per run (backlog and burst)")
    parser.add_argument("--creators", type=int, default=8, help="concurrent pod-creating clients")
    parser.add_argument("--bind-concurrency", type=int, default=8, help="bindings in flight (in-process scheduler)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the last bind")
    parser.add_argument("--quick", action="store_true", help="20 nodes and 300 pods")
    parser.add_argument("--server-scheduler", action="store_true",
                        help="do not run a scheduler here: the server runs its own (burst run only)")
    args = parser.parse_args()
    if args.quick:
        args.nodes, args.pods = 20, 300
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    print(banner("k3p scheduler benchmark"))
    cores = os.cpu_count() or 1
    print(f"loopback only; the server, the load generator and the scheduler share {cores} cores; "
          f"CPU check: {cores} busy processes got {cpu_capacity(cores):.2f} cores' worth")
    try:
        import uvloop
    except ImportError:
        sys.exit(asyncio.run(run(args)))
    sys.exit(uvloop.run(run(args)))
