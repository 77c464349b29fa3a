"""The pod network in real network namespaces: pods on different "nodes" reach each other.

Each test builds a small lab: a "switch" namespace with a bridge, and per node a namespace
joined to it by a veth pair (underlay 10.99.0.0/24), with a ``cni0`` bridge holding the
gateway of the node's pod range and one "pod" namespace on it. The backends are driven with
Node-like dicts; the last test runs the real component against a real ``k3p server``.
Every namespace a test makes is deleted at the end (its links and nftables tables go with it).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import re
import secrets
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pyroute2 import IPRoute

from k3p.client.resources import NODES
from k3p.testing import async_wait_for
from k3p_plugins.flannel.agent import FlannelAgent, FlannelSettings
from k3p_plugins.flannel.annotations import peers_from_nodes
from k3p_plugins.flannel.backends import ROUTE_PROTO, Backend, LocalNode, find_underlay, make_backend
from k3p_plugins.flannel.cni import CONFLIST_NAME
from k3p_plugins.flannel.plan import vxlan_entries
from k3p_plugins.flannel.teardown import teardown

BUSYBOX = "/bin/busybox"


def _missing() -> str:
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    for tool in ("ip", "bridge", "nft", "sysctl"):
        if not shutil.which(tool):
            return f"{tool} not found"
    if not Path(BUSYBOX).exists():
        return "busybox (for ping) not found"
    return ""


pytestmark = [pytest.mark.slow, pytest.mark.root, pytest.mark.skipif(bool(_missing()), reason=_missing() or "ok")]


def sh(*argv: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=check, input=input)


def jsh(*argv: str) -> Any:
    out = sh(*argv).stdout.strip()
    return json.loads(out) if out else []


@dataclass
class LabNode:
    name: str
    ns: str
    pod_ns: str
    underlay_ip: str
    pod_cidr: str = ""

    @property
    def pod_ip(self) -> str:
        return str(ipaddress.ip_network(self.pod_cidr)[10])


class Lab:
    """Namespaces that stand in for nodes, their pods and the network between them."""

    def __init__(self) -> None:
        self.tag = secrets.token_hex(3)
        self.namespaces: list[str] = []

    def netns(self, suffix: str) -> str:
        name = f"k3pt-{self.tag}-{suffix}"
        sh("ip", "netns", "add", name)
        self.namespaces.append(name)
        return name

    def build(self, count: int, pods: bool = True) -> list[LabNode]:
        """``count`` nodes on one switch; with ``pods``, node i gets 10.42.i.0/24 and a pod in it."""
        switch = self.netns("sw")
        sh("ip", "-n", switch, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", switch, "link", "set", "br0", "up")
        nodes = []
        for i in range(1, count + 1):
            letter = "abcdefgh"[i - 1]
            node = LabNode(name=f"node-{letter}", ns=self.netns(letter), pod_ns="", underlay_ip=f"10.99.0.{i}")
            sh("ip", "-n", switch, "link", "add", f"u{i}", "type", "veth", "peer", "name", "eth0", "netns", node.ns)
            sh("ip", "-n", switch, "link", "set", f"u{i}", "master", "br0", "up")
            sh("ip", "-n", node.ns, "addr", "add", f"{node.underlay_ip}/24", "dev", "eth0")
            sh("ip", "-n", node.ns, "link", "set", "eth0", "up")
            sh("ip", "-n", node.ns, "link", "set", "lo", "up")
            sh("ip", "netns", "exec", node.ns, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
            if pods:
                self.add_pod(node, f"10.42.{i}.0/24")
            nodes.append(node)
        return nodes

    def add_pod(self, node: LabNode, pod_cidr: str) -> None:
        """What the CNI bridge plugin would do: cni0 with the gateway address, one pod on it."""
        node.pod_cidr = pod_cidr
        net = ipaddress.ip_network(pod_cidr)
        node.pod_ns = self.netns(f"p{node.name[-1]}")
        sh("ip", "-n", node.ns, "link", "add", "cni0", "type", "bridge")
        sh("ip", "-n", node.ns, "addr", "add", f"{net[1]}/{net.prefixlen}", "dev", "cni0")
        sh("ip", "-n", node.ns, "link", "set", "cni0", "up")
        sh("ip", "-n", node.ns, "link", "add", "vpod", "type", "veth", "peer", "name", "eth0", "netns", node.pod_ns)
        sh("ip", "-n", node.ns, "link", "set", "vpod", "master", "cni0", "up")
        sh("ip", "-n", node.pod_ns, "addr", "add", f"{node.pod_ip}/{net.prefixlen}", "dev", "eth0")
        sh("ip", "-n", node.pod_ns, "link", "set", "eth0", "up")
        sh("ip", "-n", node.pod_ns, "link", "set", "lo", "up")
        sh("ip", "-n", node.pod_ns, "route", "add", "default", "via", str(net[1]))

    def ping(self, src: LabNode, dst_ip: str) -> bool:
        """Whether the pod on ``src`` gets an answer from ``dst_ip``."""
        argv = ("ip", "netns", "exec", src.pod_ns, BUSYBOX, "ping", "-c", "2", "-i", "0.2", "-W", "1", "-w", "3")
        return sh(*argv, dst_ip, check=False).returncode == 0

    def link(self, node: LabNode, name: str) -> dict[str, Any] | None:
        found = jsh("ip", "-n", node.ns, "-d", "-s", "-j", "addr", "show")
        return next((link for link in found if link["ifname"] == name), None)

    def count_vxlan(self, node: LabNode) -> None:
        """Count UDP 8472 packets arriving at ``node``'s underlay."""
        sh("ip", "netns", "exec", node.ns, "nft", "-f", "-", input=(
            "table ip k3pt-count {\n chain input {\n  type filter hook input priority 0; policy accept;\n"
            "  udp dport 8472 counter\n }\n}\n"))

    def vxlan_packets(self, node: LabNode) -> int:
        text = sh("ip", "netns", "exec", node.ns, "nft", "list", "chain", "ip", "k3pt-count", "input").stdout
        return int(re.search(r"counter packets (\d+)", text).group(1))

    def routes(self, node: LabNode) -> list[dict[str, Any]]:
        return jsh("ip", "-n", node.ns, "-j", "route", "show", "proto", str(ROUTE_PROTO))

    def neighbours(self, node: LabNode) -> list[dict[str, Any]]:
        return jsh("ip", "-n", node.ns, "-j", "neigh", "show", "dev", "flannel.1")

    def fdb(self, node: LabNode) -> list[dict[str, Any]]:
        return jsh("bridge", "-n", node.ns, "-j", "fdb", "show", "dev", "flannel.1")

    def destroy(self) -> None:
        for name in reversed(self.namespaces):
            sh("ip", "netns", "del", name, check=False)
        self.namespaces.clear()


@pytest.fixture
def lab() -> Iterator[Lab]:
    lab = Lab()
    try:
        yield lab
    finally:
        lab.destroy()


@pytest.fixture
def open_backend() -> Iterator[Callable[[str, LabNode], Backend]]:
    """Open a backend inside a lab node's namespace and set it up; closed at the end."""
    opened: list[Any] = []

    def make(kind: str, node: LabNode) -> Backend:
        ipr = IPRoute(netns=node.ns)
        opened.append(ipr)
        backend = make_backend(kind, ipr, find_underlay(ipr, node_ips=[node.underlay_ip]))
        backend.setup(LocalNode(ipaddress.IPv4Network(node.pod_cidr), node.underlay_ip))
        return backend

    yield make
    for ipr in opened:
        ipr.close()


def node_object(node: LabNode, backend: Backend) -> dict[str, Any]:
    return {"metadata": {"name": node.name, "annotations": backend.annotations(node.underlay_ip)},
            "spec": {"podCIDR": node.pod_cidr}}


def tx_packets(lab: Lab, node: LabNode) -> int:
    return lab.link(node, "flannel.1")["stats64"]["tx"]["packets"]


def test_vxlan_pods_reach_pods_on_other_nodes(lab: Lab, open_backend):
    a, b, c = lab.build(3)
    backends = {n.name: open_backend("vxlan", n) for n in (a, b, c)}
    objects = [node_object(n, backends[n.name]) for n in (a, b, c)]

    device = lab.link(a, "flannel.1")
    info = device["linkinfo"]["info_data"]
    assert (info["id"], info["port"], info["learning"], info["local"]) == (1, 8472, False, "10.99.0.1")
    assert device["mtu"] == 1450
    assert [(x["local"], x["prefixlen"]) for x in device["addr_info"] if x["family"] == "inet"] == [
        ("10.42.1.0", 32)]
    assert "UP" in device["flags"]

    for n in (a, b, c):
        plan = backends[n.name].sync(peers_from_nodes(objects, n.name, "vxlan").values())
        assert len(plan.add) == 6 and not plan.remove  # 3 entries for each of the 2 peers

    lab.count_vxlan(b)
    sent, arrived = tx_packets(lab, a), lab.vxlan_packets(b)
    assert lab.ping(a, b.pod_ip)
    assert lab.ping(a, c.pod_ip)
    assert lab.ping(c, b.pod_ip)
    assert tx_packets(lab, a) >= sent + 4  # to b and to c, through flannel.1
    assert lab.vxlan_packets(b) >= arrived + 2  # encapsulated in UDP 8472 on the underlay

    # re-running sync changes nothing
    for n in (a, b, c):
        backend = backends[n.name]
        peers = peers_from_nodes(objects, n.name, "vxlan").values()
        assert not backend.sync(peers)
        assert backend.current() == backend.desired(peers)

    # b leaves: a's full sync removes exactly b's neighbour, FDB entry and route
    peer_b = peers_from_nodes(objects, "node-a", "vxlan")["node-b"]
    without_b = [o for o in objects if o["metadata"]["name"] != "node-b"]
    plan = backends["node-a"].sync(peers_from_nodes(without_b, "node-a", "vxlan").values())
    assert not plan.add and plan.remove == vxlan_entries(peer_b, backends["node-a"].index)
    assert [r["dst"] for r in lab.routes(a)] == [c.pod_cidr]
    assert [n["dst"] for n in lab.neighbours(a)] == [str(ipaddress.ip_network(c.pod_cidr).network_address)]
    assert peer_b.vtep_mac not in {f["mac"] for f in lab.fdb(a)}
    assert not lab.ping(a, b.pod_ip)
    assert lab.ping(a, c.pod_ip)

    # one peer at a time
    backends["node-a"].add_peer(peer_b)
    assert lab.ping(a, b.pod_ip)
    backends["node-a"].remove_peer(peer_b)
    assert not lab.ping(a, b.pod_ip)
    backends["node-a"].remove_peer(peer_b)  # already gone: fine

    # the device, recreated with the MAC the node announced, works for peers that never heard of it
    mac = backends["node-c"].vtep_mac
    backends["node-c"].setup(LocalNode(ipaddress.IPv4Network(c.pod_cidr), c.underlay_ip))
    assert backends["node-c"].vtep_mac == mac  # adopted, not recreated
    sh("ip", "-n", c.ns, "link", "del", "flannel.1")
    backend_c = backends["node-c"]
    backend_c.index = 0
    backend_c.setup(LocalNode(ipaddress.IPv4Network(c.pod_cidr), c.underlay_ip, vtep_mac=mac))
    assert backend_c.vtep_mac == mac
    backend_c.sync(peers_from_nodes(objects, "node-c", "vxlan").values())
    assert lab.ping(c, b.pod_ip)
    assert lab.ping(c, a.pod_ip)


def test_host_gw_routes_via_the_peers(lab: Lab, open_backend):
    a, b, c = lab.build(3)
    backends = {n.name: open_backend("host-gw", n) for n in (a, b, c)}
    objects = [node_object(n, backends[n.name]) for n in (a, b, c)]
    assert objects[0]["metadata"]["annotations"]["flannel.alpha.coreos.com/backend-data"] == "null"
    for n in (a, b, c):
        backends[n.name].sync(peers_from_nodes(objects, n.name, "host-gw").values())

    assert lab.link(a, "flannel.1") is None
    assert sorted((r["dst"], r["gateway"], r["dev"]) for r in lab.routes(a)) == [
        (b.pod_cidr, b.underlay_ip, "eth0"), (c.pod_cidr, c.underlay_ip, "eth0")]
    assert lab.ping(a, b.pod_ip)
    assert lab.ping(b, c.pod_ip)
    for n in (a, b, c):
        assert not backends[n.name].sync(peers_from_nodes(objects, n.name, "host-gw").values())

    without_c = [o for o in objects if o["metadata"]["name"] != "node-c"]
    plan = backends["node-a"].sync(peers_from_nodes(without_c, "node-a", "host-gw").values())
    assert [r.dst for r in plan.remove.routes] == [c.pod_cidr]
    assert [r["dst"] for r in lab.routes(a)] == [b.pod_cidr]
    assert not lab.ping(a, c.pod_ip)
    assert lab.ping(a, b.pod_ip)


async def test_component_against_a_real_server(lab: Lab, k3p_server, tmp_path: Path):
    a, b = lab.build(2, pods=False)
    admin = k3p_server.admin_client("flannel-test")
    runs: dict[str, tuple[asyncio.Task[None], asyncio.Event]] = {}
    for n in (a, b):
        settings = FlannelSettings(node_name=n.name, agent_dir=tmp_path / n.name / "agent", backend="vxlan",
                                   cluster_cidr="10.42.0.0/16", node_ips=[n.underlay_ip], netns=n.ns,
                                   progress_seconds=0.5)
        ready = asyncio.Event()
        task = asyncio.create_task(FlannelAgent(k3p_server.admin_client, settings).run(ready.set))
        runs[n.name] = (task, ready)
    try:
        await asyncio.sleep(1.5)
        assert not any(ready.is_set() for _, ready in runs.values()), "ready before the Node had a podCIDR"
        assert lab.link(a, "flannel.1") is None
        for n in (a, b):
            await admin.create(NODES, {"apiVersion": "v1", "kind": "Node", "metadata": {"name": n.name}})
        for name, (task, ready) in runs.items():
            done, _ = await asyncio.wait({task, asyncio.create_task(ready.wait())}, timeout=30,
                                         return_when=asyncio.FIRST_COMPLETED)
            if task in done:
                task.result()  # the component died: show why
            assert ready.is_set(), f"{name} never became ready"

        for n in (a, b):
            obj = await admin.get(NODES, n.name)
            n.pod_cidr = obj["spec"]["podCIDR"]
            annotations = obj["metadata"]["annotations"]
            mac = lab.link(n, "flannel.1")["address"]
            assert annotations["flannel.alpha.coreos.com/backend-type"] == "vxlan"
            assert json.loads(annotations["flannel.alpha.coreos.com/backend-data"]) == {"VNI": 1, "VtepMAC": mac}
            assert annotations["flannel.alpha.coreos.com/public-ip"] == n.underlay_ip
            assert annotations["flannel.alpha.coreos.com/kube-subnet-manager"] == "true"
            conf = json.loads((tmp_path / n.name / "agent/etc/cni/net.d" / CONFLIST_NAME).read_text())
            assert conf["plugins"][0]["ipam"]["ranges"] == [[{"subnet": n.pod_cidr}]]
            assert conf["plugins"][0]["mtu"] == 1450
            table = sh("ip", "netns", "exec", n.ns, "nft", "list", "table", "ip", "k3p-flannel").stdout
            assert f"ip saddr {n.pod_cidr} ip daddr 10.42.0.0/16 return" in table
            forward = sh("ip", "netns", "exec", n.ns, "sysctl", "-n", "net.ipv4.ip_forward").stdout
            assert forward.strip() == "1"
        assert a.pod_cidr != b.pod_cidr

        b_vtep = str(ipaddress.ip_network(b.pod_cidr).network_address)
        await async_wait_for(lambda: asyncio.to_thread(lab.routes, a), timeout=15, what="a route to b's pods")
        (route,) = lab.routes(a)
        assert (route["dst"], route["gateway"], route["dev"], route["flags"]) == (b.pod_cidr, b_vtep, "flannel.1",
                                                                                  ["onlink"])
        for n in (a, b):
            lab.add_pod(n, n.pod_cidr)
        assert await asyncio.to_thread(lab.ping, a, b.pod_ip)
        assert await asyncio.to_thread(lab.ping, b, a.pod_ip)

        await admin.delete(NODES, b.name)

        def b_gone() -> bool:
            return not lab.routes(a) and not lab.neighbours(a) and not [f for f in lab.fdb(a) if f.get("dst")]

        await async_wait_for(lambda: asyncio.to_thread(b_gone), timeout=15, what="b's entries to go from a")
        assert not await asyncio.to_thread(lab.ping, a, b.pod_ip)
    finally:
        for task, _ in runs.values():
            task.cancel()
        for task, _ in runs.values():
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await admin.close()

    # stopping the component leaves the data plane to the pods
    assert lab.link(a, "flannel.1") is not None
    assert sh("ip", "netns", "exec", a.ns, "nft", "list", "table", "ip", "k3p-flannel", check=False).returncode == 0
    # pyroute2's blocking API runs an event loop of its own: keep it off this one
    await asyncio.to_thread(teardown, netns=a.ns)
    assert lab.link(a, "flannel.1") is None and lab.link(a, "cni0") is None
    assert sh("ip", "netns", "exec", a.ns, "nft", "list", "table", "ip", "k3p-flannel", check=False).returncode != 0
    await asyncio.to_thread(teardown, netns=a.ns)  # again: nothing left to remove is fine
