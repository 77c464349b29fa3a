"""The scheduler against a real ``k3p server --disable-agent``: Node objects stand in for kubelets.

The scheduler runs in the test's event loop over an admin client, as it runs in the server
over the component credentials.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from k3p.client import Client
from k3p.client.resources import CONFIGMAPS, EVENTS, NAMESPACES, NODES, PODS
from k3p.context import PluginContext
from k3p.testing import K3pServer, async_wait_for
from k3p_plugins.scheduler import Scheduler, scheduler_component

pytestmark = pytest.mark.slow

NS = "sched"


def admin_client(server: K3pServer) -> Client:
    tls = server.data_dir / "server" / "tls"
    return Client(server.url, ca_file=server.ca_file, cert_file=tls / "client-admin.crt",
                  key_file=tls / "client-admin.key", user_agent="scheduler-test")


def node(name: str, cpu: str = "4", memory: str = "8Gi", labels: dict | None = None, taints: list | None = None,
         ready: str = "True") -> dict[str, Any]:
    resources = {"cpu": cpu, "memory": memory, "pods": "110"}
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, **(labels or {})}},
            "spec": {"taints": taints or []},
            "status": {"capacity": resources, "allocatable": resources,
                       "conditions": [{"type": "Ready", "status": ready, "reason": "KubeletReady"}]}}


def pod(name: str, cpu: str = "100m", memory: str = "64Mi", labels: dict | None = None,
        owner: dict | None = None, **spec: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": NS, "labels": labels or {}}
    if owner:
        meta["ownerReferences"] = [{"apiVersion": "v1", "kind": "ConfigMap", "name": owner["metadata"]["name"],
                                    "uid": owner["metadata"]["uid"], "controller": True}]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta,
            "spec": {"containers": [{"name": "c", "image": "busybox:1.35",
                                     "resources": {"requests": {"cpu": cpu, "memory": memory}}}], **spec}}


@pytest.fixture
def server(k3p_server_factory: Callable[..., K3pServer]) -> K3pServer:
    # the test runs its own scheduler: the server must not run one too
    return k3p_server_factory(args=["--disable-agent", "--disable-scheduler", "--disable-controller-manager"])


@pytest.fixture
async def client(server: K3pServer) -> AsyncIterator[Client]:
    c = admin_client(server)
    await c.create(NAMESPACES, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
    yield c
    await c.close()


@pytest.fixture
async def scheduler(client: Client, server: K3pServer) -> AsyncIterator[Scheduler]:
    own = admin_client(server)
    s = Scheduler(own)
    ready = asyncio.Event()
    task = asyncio.create_task(s.run(ready.set))
    await asyncio.wait_for(ready.wait(), 30)
    yield s
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await own.close()


async def bound(client: Client, *names: str, timeout: float = 20) -> dict[str, str]:
    """Wait until every pod named is bound; pod name -> node."""

    async def check() -> dict[str, str] | None:
        where = {}
        for name in names:
            p = await client.get(PODS, name, NS)
            if not p["spec"].get("nodeName"):
                return None
            where[name] = p["spec"]["nodeName"]
        return where

    return await async_wait_for(check, timeout, 0.1, f"pods {names} bound")


async def unschedulable(client: Client, name: str, timeout: float = 20) -> dict[str, Any]:
    """Wait for the pod's PodScheduled=False condition; the condition."""

    async def check() -> dict[str, Any] | None:
        p = await client.get(PODS, name, NS)
        assert not p["spec"].get("nodeName"), f"{name} was bound to {p['spec'].get('nodeName')}"
        for c in p.get("status", {}).get("conditions") or []:
            if c["type"] == "PodScheduled" and c["status"] == "False":
                return c
        return None

    return await async_wait_for(check, timeout, 0.1, f"pod {name} reported unschedulable")


async def events_of(client: Client, name: str, reason: str) -> list[dict[str, Any]]:
    items = (await client.list(EVENTS, NS))["items"]
    return [e for e in items if e["involvedObject"]["name"] == name and e["reason"] == reason]


async def test_replicas_spread_and_are_bound_with_events(client: Client, scheduler: Scheduler) -> None:
    # Different sizes: by free resources alone the biggest node would take every replica.
    for name, cpu in (("small", "4"), ("medium", "8"), ("large", "16")):
        await client.create(NODES, node(name, cpu=cpu, memory=f"{int(cpu) * 2}Gi"))
    owner = await client.create(CONFIGMAPS, {"metadata": {"name": "web-owner", "namespace": NS}})
    names = [f"web-{i}" for i in range(6)]
    await asyncio.gather(*(client.create(PODS, pod(n, labels={"app": "web"}, owner=owner)) for n in names))
    where = await bound(client, *names)
    assert sorted(collections.Counter(where.values()).values()) == [2, 2, 2], where
    p = await client.get(PODS, "web-0", NS)
    scheduled = [c for c in p["status"]["conditions"] if c["type"] == "PodScheduled"]
    assert scheduled and scheduled[0]["status"] == "True"

    async def events() -> list[dict[str, Any]]:
        return await events_of(client, "web-0", "Scheduled")

    [event] = await async_wait_for(events, 10, 0.1, "Scheduled event")
    assert event["type"] == "Normal"
    assert event["message"] == f"Successfully assigned {NS}/web-0 to {where['web-0']}"
    assert event["source"]["component"] == "default-scheduler"


async def test_too_big_pod_waits_for_a_node_that_fits(client: Client, scheduler: Scheduler) -> None:
    for i in range(3):
        await client.create(NODES, node(f"n{i}"))
    await client.create(PODS, pod("huge", cpu="100"))
    message = ("0/3 nodes are available: 3 Insufficient cpu. preemption: 0/3 nodes are available: "
               "3 No preemption victims found for incoming pod.")
    condition = await unschedulable(client, "huge")
    assert condition["reason"] == "Unschedulable"
    assert condition["message"] == message

    async def failed() -> list[dict[str, Any]]:
        return await events_of(client, "huge", "FailedScheduling")

    [event] = await async_wait_for(failed, 10, 0.1, "FailedScheduling event")
    assert event["type"] == "Warning" and event["message"] == message
    # No hot loop: without a cluster change the pod is not tried again and again.
    attempts = scheduler.failed_attempts
    await asyncio.sleep(1.5)
    assert scheduler.failed_attempts - attempts <= 1
    await client.create(NODES, node("big", cpu="128", memory="256Gi"))
    assert await bound(client, "huge") == {"huge": "big"}
    p = await client.get(PODS, "huge", NS)
    assert [c["status"] for c in p["status"]["conditions"] if c["type"] == "PodScheduled"] == ["True"]


async def test_taints_tolerations_and_node_selectors(client: Client, scheduler: Scheduler) -> None:
    control_plane = {"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}
    await client.create(NODES, node("cp", labels={"node-role.kubernetes.io/control-plane": ""},
                                    taints=[control_plane]))
    await client.create(NODES, node("ssd", labels={"disk": "ssd"}))
    await client.create(NODES, node("plain"))
    await client.create(NODES, node("down", ready="False"))
    await client.create(PODS, pod("wants-ssd", nodeSelector={"disk": "ssd"}))
    await client.create(PODS, pod("system", nodeSelector={"kubernetes.io/hostname": "cp"},
                                  tolerations=[{"key": "node-role.kubernetes.io/control-plane",
                                                "operator": "Exists", "effect": "NoSchedule"}]))
    await client.create(PODS, pod("wants-nvme", nodeSelector={"disk": "nvme"}))
    names = [f"any-{i}" for i in range(4)]
    for name in names:
        await client.create(PODS, pod(name))
    where = await bound(client, "wants-ssd", "system", *names)
    assert where["wants-ssd"] == "ssd"
    assert where["system"] == "cp"
    assert {where[n] for n in names} <= {"ssd", "plain"}  # neither the tainted nor the NotReady node
    condition = await unschedulable(client, "wants-nvme")
    assert condition["message"] == (
        "0/4 nodes are available: 1 node(s) had untolerated taint {node-role.kubernetes.io/control-plane: }, "
        "1 node(s) had untolerated taint {node.kubernetes.io/not-ready: }, "
        "2 node(s) didn't match Pod's node affinity/selector. "
        "preemption: 0/4 nodes are available: 4 Preemption is not helpful for scheduling.")
    # Labelling a node is a cluster change that lets the waiting pod in.
    await client.patch(NODES, "plain", {"metadata": {"labels": {"disk": "nvme"}}})
    assert await bound(client, "wants-nvme") == {"wants-nvme": "plain"}


async def test_a_burst_never_overcommits_and_a_deletion_makes_room(client: Client, scheduler: Scheduler) -> None:
    for i in range(3):
        await client.create(NODES, node(f"n{i}", cpu="1"))
    names = [f"half-{i}" for i in range(6)]
    await asyncio.gather(*(client.create(PODS, pod(n, cpu="500m")) for n in names))
    where = await bound(client, *names)
    assert sorted(collections.Counter(where.values()).values()) == [2, 2, 2]
    await client.create(PODS, pod("extra", cpu="500m"))
    condition = await unschedulable(client, "extra")
    assert condition["message"].startswith("0/3 nodes are available: 3 Insufficient cpu.")
    await client.delete(PODS, "half-0", NS, grace_period_seconds=0)
    assert await bound(client, "extra") == {"extra": where["half-0"]}


async def test_host_ports_and_anti_affinity(client: Client, scheduler: Scheduler) -> None:
    await client.create(NODES, node("a"))
    await client.create(NODES, node("b"))
    ported = {"containers": [{"name": "c", "image": "busybox:1.35",
                              "ports": [{"containerPort": 80, "hostPort": 8080}]}]}
    await client.create(PODS, {"metadata": {"name": "port-1", "namespace": NS}, "spec": ported})
    await client.create(PODS, {"metadata": {"name": "port-2", "namespace": NS}, "spec": ported})
    where = await bound(client, "port-1", "port-2")
    assert where["port-1"] != where["port-2"]
    await client.create(PODS, {"metadata": {"name": "port-3", "namespace": NS}, "spec": ported})
    condition = await unschedulable(client, "port-3")
    assert condition["message"] == (
        "0/2 nodes are available: 2 node(s) didn't have free ports for the requested pod ports. "
        "preemption: 0/2 nodes are available: 2 No preemption victims found for incoming pod.")
    anti = {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"labelSelector": {"matchLabels": {"app": "solo"}}, "topologyKey": "kubernetes.io/hostname"}]}}
    for i in range(3):
        await client.create(PODS, pod(f"solo-{i}", labels={"app": "solo"}, affinity=anti))
    async def two_bound() -> list[str] | None:
        nodes = [(await client.get(PODS, f"solo-{i}", NS))["spec"].get("nodeName") for i in range(3)]
        return nodes if sum(1 for n in nodes if n) == 2 else None

    nodes = await async_wait_for(two_bound, 20, 0.1, "two of three anti-affine pods bound")
    assert len({n for n in nodes if n}) == 2
    left = next(f"solo-{i}" for i, n in enumerate(nodes) if not n)
    condition = await unschedulable(client, left)
    assert "2 node(s) didn't match pod anti-affinity rules" in condition["message"]


async def test_the_server_component(server: K3pServer, client: Client, tmp_path: Path) -> None:
    await client.create(NODES, node("only"))
    made: list[Client] = []

    def component_client(component: str, user_agent: str) -> Client:
        assert component == "scheduler"
        made.append(admin_client(server))
        return made[-1]

    ctx = PluginContext(config=None, data_dir=tmp_path, component_client=component_client)  # type: ignore[arg-type]
    component = scheduler_component(ctx)
    assert component.name == "scheduler" and component.requires == ("apiserver",)
    ready = asyncio.Event()
    task = asyncio.create_task(component.run(ready.set))
    try:
        await asyncio.wait_for(ready.wait(), 30)
        await client.create(PODS, pod("via-component"))
        assert await bound(client, "via-component") == {"via-component": "only"}
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert made and made[0]._http.is_closed
