"""Scheduler benchmark: how fast k3p places a burst of pods on many nodes, and rolls out a big Deployment.

    python bench/scheduler.py [--nodes 100] [--pods 3000] [--creators 8] [--quick] [--server-scheduler]
                              [--replicas 1000] [--sim-nodes 100] [--deployment-only | --skip-deployment]

Starts a real ``k3p server --disable-agent --disable-controller-manager`` on a free loopback
port with a temporary data dir and creates Node objects (Ready; 8 cpu, 32Gi, 110 pods each).
No controllers run: the pods name an owner that does not exist and the nodes send no
heartbeats. Then two runs:

1. *backlog*: the pods are created while no scheduler runs (the server's is disabled), then
   a fresh scheduler starts; the rate from its start (cache fill included) to the last bind
   is the scheduler's own.
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

3. *deployment*: on a second, fresh server with its own controllers and scheduler, and
   ``--sim-nodes`` simulated nodes from a ``k3p agent --simulate`` subprocess (the real
   kubelet over the simulated runtime), a Deployment of ``--replicas`` replicas is created
   and watched until every pod is Running. Reported: the time and pods/s, when the last pod
   was created, bound and Running, the API's write rate (datastore revisions, split by
   resource with watches; the server counts no reads) during the run and with the nodes
   idle, and the CPU of the server and of the agent.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import logging
import os
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
    count_ready_nodes,
    cpu_capacity,
    get_json,
    percentile,
    post_json,
    process_cpu_seconds,
    watch_events,
)

from k3p.client import Client
from k3p.testing import HollowNodes, K3pServer
from k3p_plugins.scheduler import Scheduler

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
                await post_json(session, path, pod_body(name, owner))
            except Exception as e:
                failures += 1
                progress(f"create {name} failed: {e}")

    await asyncio.gather(*(creator() for _ in range(creators)))
    return failures


async def watch_binds(session: aiohttp.ClientSession, prefix: str, total: int, bound_at: dict[str, float],
                      where: dict[str, str], done: asyncio.Event, started: asyncio.Event) -> None:
    """Record when each pod named ``prefix-*`` is first seen with a node."""
    path = f"/api/v1/namespaces/{NAMESPACE}/pods"
    rv = (await get_json(session, path, limit="1"))["metadata"]["resourceVersion"]
    started.set()  # the watch replays everything after ``rv``: creates from now on are all seen
    async for event in watch_events(session, path, rv):
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


def deployment_body(name: str, replicas: int) -> dict[str, Any]:
    """A small web Deployment: requests, so the scheduler's fit and spreading have work to do."""
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": labels},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "web", "image": "registry.example/web:1.0",
                                         "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}}}]},
            },
        },
    }


async def _revision(session: aiohttp.ClientSession, mark: str) -> int:
    """The datastore's revision now: the resourceVersion of a marker write (one global revision per write)."""
    created = await post_json(session, f"/api/v1/namespaces/{NAMESPACE}/configmaps",
                              {"metadata": {"name": f"rv-mark-{mark}"}})
    return int(created["metadata"]["resourceVersion"])


#: collections whose writes are told apart in the Deployment run (every other write counts as "other")
WATCHED_WRITES = {
    "pods": "/api/v1/pods", "events": "/api/v1/events", "replicasets": "/apis/apps/v1/replicasets",
    "deployments": "/apis/apps/v1/deployments", "nodes": "/api/v1/nodes",
    "leases": "/apis/coordination.k8s.io/v1/leases",
}


class WriteCounter:
    """Watches of several collections that note the revision of every change, to split writes by resource."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.session = session
        self.revisions: dict[str, list[int]] = {name: [] for name in WATCHED_WRITES}
        self.tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        for name, path in WATCHED_WRITES.items():
            rv = (await get_json(self.session, path, limit="1"))["metadata"]["resourceVersion"]
            self.tasks.append(asyncio.create_task(self._watch(name, path, rv)))

    async def _watch(self, name: str, path: str, rv: str) -> None:
        async for event in watch_events(self.session, path, rv):
            if event.get("type") in ("ADDED", "MODIFIED", "DELETED"):
                self.revisions[name].append(int(event["object"]["metadata"]["resourceVersion"]))

    def between(self, low: int, high: int) -> dict[str, int]:
        """Writes to each collection with a revision in (low, high)."""
        return {name: sum(1 for r in revs if low < r < high) for name, revs in self.revisions.items()}

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


@dataclass
class RolloutTimes:
    """When (perf_counter) each pod of the Deployment was first seen created, bound and Running."""

    created: dict[str, float] = field(default_factory=dict)
    bound: dict[str, float] = field(default_factory=dict)
    running: dict[str, float] = field(default_factory=dict)


async def watch_rollout(session: aiohttp.ClientSession, rv: str, replicas: int, times: RolloutTimes,
                        done: asyncio.Event) -> None:
    async for event in watch_events(session, f"/api/v1/namespaces/{NAMESPACE}/pods", rv):
        pod = event["object"]
        name, now = pod["metadata"]["name"], time.perf_counter()
        times.created.setdefault(name, now)
        if (pod.get("spec") or {}).get("nodeName"):
            times.bound.setdefault(name, now)
        if (pod.get("status") or {}).get("phase") == "Running" and name not in times.running:
            times.running[name] = now
            if len(times.running) >= replicas:
                done.set()


class AgentExited(RuntimeError):
    """The hollow-node agent stopped before its nodes were Ready."""


async def wait_nodes_ready(session: aiohttp.ClientSession, agent: HollowNodes, count: int, timeout: float) -> float:
    """Seconds until ``count`` nodes are Ready."""
    began = time.perf_counter()
    while (ready := await count_ready_nodes(session)) < count:
        if agent.proc.poll() is not None:
            errors = [line for line in agent.logs().splitlines() if '"error"' in line or "Error" in line]
            raise AgentExited(f"k3p agent exited with {agent.proc.returncode}: " + " | ".join(errors[-3:])[-1500:])
        if time.perf_counter() - began > timeout:
            raise TimeoutError(f"{ready} of {count} simulated nodes Ready after {timeout:.0f} s")
        await asyncio.sleep(0.5)
    return time.perf_counter() - began


async def wait_service_account(session: aiohttp.ClientSession, timeout: float) -> None:
    """Pods of a new namespace wait for its default service account, which a controller makes."""
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        async with session.get(f"/api/v1/namespaces/{NAMESPACE}/serviceaccounts/default") as r:
            await r.read()
        if r.status == 200:
            return
        await asyncio.sleep(0.1)


async def deployment_to_running(args: argparse.Namespace) -> str:
    """A Deployment of ``args.replicas`` replicas on ``args.sim_nodes`` simulated nodes until every pod is Running.

    A fresh ``k3p server --disable-agent`` runs its own controllers and scheduler; a
    ``k3p agent --simulate N`` subprocess runs the nodes (the real kubelet over the
    simulated runtime). A watch from this process records when each pod was created,
    bound and seen Running. The API's write rate comes from the datastore revision (one
    per write), split by resource with watches; the server counts no reads (its own
    controllers read through informers, i.e. watches).
    """
    replicas, nodes = args.replicas, args.sim_nodes
    with tempfile.TemporaryDirectory(prefix="k3p-bench-deploy-") as workdir:
        server = K3pServer(Path(workdir) / "server", args=["--disable-agent"])
        agent: HollowNodes | None = None
        try:
            server.start(timeout=120)
            assert server.proc is not None
            async with api_session(server, connections=16) as session:
                for attempt in range(1, 4):
                    agent = HollowNodes(server, Path(workdir) / f"agent-{attempt}", nodes)
                    progress(f"deployment: server pid {server.proc.pid}, agent pid {agent.pid}; "
                             f"waiting for {nodes} simulated nodes")
                    try:
                        nodes_ready = await wait_nodes_ready(session, agent, nodes, args.timeout)
                        break
                    except AgentExited as e:
                        # e.g. two hollow kubelets given the same "free" port: worth another try, not the run
                        progress(f"deployment: attempt {attempt}: {e}")
                        agent.stop()
                        if attempt == 3:
                            raise
                await post_json(session, "/api/v1/namespaces", {"metadata": {"name": NAMESPACE}})
                await wait_service_account(session, 30)
                writes = WriteCounter(session)
                await writes.start()
                progress(f"deployment: {nodes} nodes Ready after {nodes_ready:.1f} s; idle write rate over "
                         f"{args.idle_window:.0f} s")
                idle_rev, idle_began = await _revision(session, "idle-0"), time.perf_counter()
                await asyncio.sleep(args.idle_window)
                idle_end = await _revision(session, "idle-1")
                idle_rate = (idle_end - idle_rev - 1) / (time.perf_counter() - idle_began)

                times, done = RolloutTimes(), asyncio.Event()
                rv = (await get_json(session, f"/api/v1/namespaces/{NAMESPACE}/pods", limit="1"))["metadata"][
                    "resourceVersion"]
                watcher = asyncio.create_task(watch_rollout(session, rv, replicas, times, done))
                rev0 = await _revision(session, "run-0")
                cpu = CpuWindow(server.proc.pid)
                agent_cpu0 = process_cpu_seconds(agent.pid)
                progress(f"deployment: creating a {replicas}-replica Deployment")
                began = time.perf_counter()
                await post_json(session, f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments",
                                deployment_body("web", replicas))
                try:
                    await asyncio.wait_for(done.wait(), args.timeout)
                except TimeoutError:
                    progress(f"deployment: timed out with {len(times.running)} of {replicas} Running")
                ok = len(times.running) >= replicas
                finished = max(times.running.values()) if ok else time.perf_counter()
                elapsed = max(finished - began, 1e-9)
                own, server_share = cpu.shares()
                machine_share = cpu.machine_share()
                agent_share = (process_cpu_seconds(agent.pid) - agent_cpu0) / (time.perf_counter() - cpu.wall)
                rev1 = await _revision(session, "run-1")
                available_at = None
                deadline = time.perf_counter() + 60
                while ok and time.perf_counter() < deadline:
                    deployment = await get_json(session, f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments/web")
                    if (deployment.get("status") or {}).get("availableReplicas", 0) >= replicas:
                        available_at = time.perf_counter() - began
                        break
                    await asyncio.sleep(0.1)
                watcher.cancel()
                await asyncio.gather(watcher, return_exceptions=True)
                await asyncio.sleep(0.5)  # the last writes of the run reach the counting watches
                by_resource = writes.between(rev0, rev1)
                reasons = collections.Counter(
                    e.get("reason", "?") for e in (await get_json(session, f"/api/v1/namespaces/{NAMESPACE}/events"))[
                        "items"])
                idle_by_resource = writes.between(idle_rev, idle_end)
                await writes.stop()
        finally:
            if agent is not None:
                agent.stop()
            server.stop()

    def last(stamps: dict[str, float]) -> str:
        return f"{max(stamps.values()) - began:.1f} s" if len(stamps) >= replicas else f"{len(stamps)} only"

    def split(counts: dict[str, int], total: int) -> str:
        parts = [f"{name} {n}" for name, n in counts.items() if n]
        if other := total - sum(counts.values()):
            parts.append(f"other {other}")
        return ", ".join(parts) or "none"

    total = rev1 - rev0 - 1
    rate = len(times.running) / elapsed
    return "\n".join([
        f"deployment: {replicas} replicas on {nodes} simulated nodes (the server's own controllers and scheduler; "
        f"{nodes} kubelets in one `k3p agent --simulate` process, Ready {nodes_ready:.1f} s after it started)",
        f"  create Deployment -> all {replicas} pods Running: "
        + (f"{elapsed:.1f} s, {rate:.0f} pods/s" if ok
           else f"timed out, {len(times.running)} Running after {elapsed:.0f} s"),
        f"  milestones from the create: all pods created {last(times.created)}, all bound {last(times.bound)}, "
        f"all Running {last(times.running)}, Deployment status available "
        + (f"{available_at:.1f} s" if available_at is not None else "not within 60 s"),
        f"  API writes (datastore revisions) during the run: {total / elapsed:.0f}/s, {total} in all "
        f"({total / max(len(times.running), 1):.1f} per pod): {split(by_resource, total)}",
        f"  events in the namespace by reason: {dict(reasons.most_common())}",
        f"  API writes in the {args.idle_window:.0f} s after the {nodes} nodes were Ready, no pods: {idle_rate:.1f}/s "
        f"({split(idle_by_resource, idle_end - idle_rev - 1)}; the nodes' first status reports fall in here, later "
        f"only the leases are renewed: {nodes / 10:.0f}/s)",
        f"  CPU (share of one core): server {server_share or 0:.2f}, agent with {nodes} nodes {agent_share:.2f}, "
        f"this process {own:.2f}; whole machine {machine_share:.2f} of {os.cpu_count()} cpus (other programs "
        f"included)",
    ])


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


def scheduler_server_flags(args: argparse.Namespace) -> list[str]:
    """No node, and no controllers: the benchmark's pods name an owner that does not exist (the
    garbage collector would delete them) and its nodes send no heartbeats (node lifecycle would
    taint them). The server's scheduler runs only when it is the one measured."""
    flags = ["--disable-agent", "--disable-controller-manager"]
    return flags if args.server_scheduler else [*flags, "--disable-scheduler"]


async def scheduler_runs(args: argparse.Namespace) -> tuple[str | None, str]:
    """The backlog run (unless the server's scheduler is measured) and the burst run, on one server."""
    with tempfile.TemporaryDirectory(prefix="k3p-bench-scheduler-") as workdir:
        server = K3pServer(Path(workdir) / "server", args=scheduler_server_flags(args))
        try:
            server.start(timeout=120)
            assert server.proc is not None
            print(f"k3p server pid {server.proc.pid} at {server.url}")
            async with api_session(server) as session:
                await post_json(session, "/api/v1/namespaces", {"metadata": {"name": NAMESPACE}})
                progress(f"creating {args.nodes} nodes")
                for i in range(args.nodes):
                    await post_json(session, "/api/v1/nodes", node_body(f"node-{i:04d}"))
                backlog = None if args.server_scheduler else await backlog_run(server, session, args)
                _, burst = await burst_run(server, session, args)
        finally:
            server.stop()
    return backlog, burst


async def run(args: argparse.Namespace) -> int:
    backlog, burst = (None, "") if args.deployment_only else await scheduler_runs(args)
    deployment = None if args.skip_deployment else await deployment_to_running(args)
    print()
    if not args.deployment_only:
        print(f"nodes {args.nodes}, pods {args.pods} per run, creators {args.creators}, bindings in flight "
              f"{args.bind_concurrency}, scheduler {'in the server' if args.server_scheduler else 'in this process'}")
        if backlog:
            print(backlog)
        print(burst)
    if deployment:
        if not args.deployment_only:
            print()
        print(deployment)
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--pods", type=int, default=3000, help="pods per run (backlog and burst)")
    parser.add_argument("--creators", type=int, default=8, help="concurrent pod-creating clients")
    parser.add_argument("--bind-concurrency", type=int, default=8, help="bindings in flight (in-process scheduler)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the last bind")
    parser.add_argument("--replicas", type=int, default=1000, help="replicas of the Deployment run")
    parser.add_argument("--sim-nodes", type=int, default=100, help="simulated nodes of the Deployment run")
    parser.add_argument("--idle-window", type=float, default=10.0,
                        help="seconds over which the idle cluster's write rate is measured (Deployment run)")
    parser.add_argument("--quick", action="store_true",
                        help="20 nodes and 300 pods; a 200-replica Deployment on 20 simulated nodes")
    parser.add_argument("--server-scheduler", action="store_true",
                        help="do not run a scheduler here: the server runs its own (burst run only)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--deployment-only", action="store_true", help="only the Deployment run")
    which.add_argument("--skip-deployment", action="store_true", help="leave out the Deployment run")
    args = parser.parse_args()
    if args.quick:
        args.nodes, args.pods, args.replicas, args.sim_nodes, args.idle_window = 20, 300, 200, 20, 5.0
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
