"""The service proxy against real nftables, in network namespaces made for the test.

A "node" namespace holds a bridge (the pod network's gateway, 10.42.0.1/24) and an
"uplink" veth with the node's address and default route; two "pod" namespaces
run busybox httpd and a "client" pod namespace makes requests, all attached to the
bridge by veth pairs. The proxy runs in this process against a real ``k3p server``,
with nft (and sysctl) run inside the node namespace. Each page names its pod, and a CGI
script also tells the address the request came from, which shows masquerading.

Everything is made inside the test's namespaces (the veth pairs are created there too),
so deleting the namespaces removes every link and nft table; the httpd processes are
stopped by PID first.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import structlog

from k3p.client import Client
from k3p.client.resources import ENDPOINTSLICES, SERVICES
from k3p.testing import K3pServer
from k3p.testing.process import stop_process
from k3p_plugins.kube_proxy import proxy_component, remove_proxy_rules

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces and nftables"),
    pytest.mark.skipif(not all(shutil.which(t) for t in ("ip", "nft", "busybox")),
                       reason="needs ip, nft and busybox"),
]

NODE = "node-a"
CLUSTER_CIDR = "10.42.0.0/16"
GATEWAY = "10.42.0.1"
NODE_IP = "198.51.100.10"
POD_PORT = 8080
PODS = {"pod-a": "10.42.0.11", "pod-b": "10.42.0.12"}
CLIENT_IP = "10.42.0.20"
# httpd listens on an IPv6 socket: REMOTE_ADDR reads "[::ffff:10.42.0.20]".
WHO = """#!/bin/sh
addr=${REMOTE_ADDR#[[]::ffff:}
echo "Content-Type: text/plain"
echo ""
echo "NAME ${addr%]}"
"""


def sh(*argv: str) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {result.stderr.strip()}")
    return result.stdout


@dataclass
class Lab:
    """The namespaces of one test and what runs in them."""

    suffix: str
    root: Path
    namespaces: dict[str, str] = field(default_factory=dict)  # role -> netns name
    servers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def node(self) -> str:
        return self.namespaces["node"]

    @property
    def nft(self) -> tuple[str, ...]:
        return ("ip", "netns", "exec", self.node, "nft")

    def add_netns(self, role: str) -> str:
        name = f"k3pt-{self.suffix}-{role}"
        sh("ip", "netns", "add", name)
        self.namespaces[role] = name
        sh("ip", "-n", name, "link", "set", "lo", "up")
        return name

    def attach(self, role: str, ip: str, port_name: str) -> str:
        """A pod namespace on the node's bridge, with ``ip`` and a default route via the gateway."""
        ns = self.add_netns(role)
        # Made inside the node namespace: nothing of the test ever lives in the host's.
        sh("ip", "-n", self.node, "link", "add", port_name, "type", "veth", "peer", "name", "eth0", "netns", ns)
        sh("ip", "-n", self.node, "link", "set", port_name, "master", "cni0", "up")
        # As the pod network's bridge plugin does (hairpinMode): a pod reaching itself through
        # a service has its packets bridged back out of the port they came in by.
        sh("ip", "-n", self.node, "link", "set", port_name, "type", "bridge_slave", "hairpin", "on")
        sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0")
        sh("ip", "-n", ns, "link", "set", "eth0", "up")
        sh("ip", "-n", ns, "route", "add", "default", "via", GATEWAY)
        return ns

    def serve(self, role: str, name: str) -> None:
        docroot = self.root / name
        (docroot / "cgi-bin").mkdir(parents=True)
        (docroot / "index.html").write_text(f"{name}\n")
        who = docroot / "cgi-bin" / "who"
        who.write_text(WHO.replace("NAME", name))
        who.chmod(0o755)
        self.servers.append(subprocess.Popen(
            ["ip", "netns", "exec", self.namespaces[role], "busybox", "httpd", "-f", "-p", str(POD_PORT),
             "-h", str(docroot)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        deadline = time.monotonic() + 10
        while subprocess.run(["ip", "netns", "exec", self.namespaces[role], "busybox", "wget", "-q", "-O-",
                              f"http://127.0.0.1:{POD_PORT}/"], capture_output=True, timeout=10).returncode:
            assert time.monotonic() < deadline, f"httpd in {role} did not start"
            time.sleep(0.02)

    def close(self) -> None:
        for proc in self.servers:
            stop_process(proc, timeout=5)
        if "node" in self.namespaces:
            with contextlib.suppress(Exception):
                remove_proxy_rules(self.nft)
        for ns in self.namespaces.values():
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    lab = Lab(secrets.token_hex(3), tmp_path)
    try:
        node = lab.add_netns("node")
        sh("ip", "-n", node, "link", "add", "cni0", "type", "bridge")
        sh("ip", "-n", node, "addr", "add", f"{GATEWAY}/24", "dev", "cni0")
        sh("ip", "-n", node, "link", "set", "cni0", "up")
        # The uplink is one end of a veth pair whose other end stays unused in the namespace.
        sh("ip", "-n", node, "link", "add", "uplink", "type", "veth", "peer", "name", "uplink-peer")
        sh("ip", "-n", node, "link", "set", "uplink-peer", "up")
        sh("ip", "-n", node, "addr", "add", f"{NODE_IP}/24", "dev", "uplink")
        sh("ip", "-n", node, "link", "set", "uplink", "up")
        # Service addresses are routed like any off-node address, as on a real node.
        sh("ip", "-n", node, "route", "add", "default", "dev", "uplink")
        # Forwarding off: the proxy must turn it on. Bridged replies (pod -> client on the
        # same bridge) must pass netfilter to be un-DNATed, as the pod network sets up.
        sh("ip", "netns", "exec", node, "sysctl", "-q", "-w", "net.ipv4.ip_forward=0",
           "net.bridge.bridge-nf-call-iptables=1")
        for i, (name, ip) in enumerate(PODS.items()):
            lab.attach(name, ip, f"veth{i}")
            lab.serve(name, name)
        lab.attach("client", CLIENT_IP, "vethc")
        yield lab
    finally:
        lab.close()
    leftovers = set(sh("ip", "netns", "list").split()) & set(lab.namespaces.values())
    assert not leftovers, f"network namespaces left behind: {leftovers}"


async def fetch(ns: str, url: str, timeout: float = 2.0) -> tuple[bool, str]:
    """``busybox wget`` from inside ``ns``: (succeeded, body or error)."""
    # No "wget -T": busybox 1.35's wget crashes with it; the timeout is kept here instead.
    proc = await asyncio.create_subprocess_exec(
        "ip", "netns", "exec", ns, "busybox", "wget", "-q", "-O-", url,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        return False, f"timed out after {timeout}s"
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return proc.returncode == 0, (out if proc.returncode == 0 else err).decode(errors="replace").strip()


async def wait_answer(ns: str, url: str, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        ok, text = await fetch(ns, url, timeout=1)
        if ok:
            return text
        if time.monotonic() > deadline:
            raise AssertionError(f"{url} from {ns}: no answer within {timeout}s (last: {text})")
        await asyncio.sleep(0.05)


def endpoint_slice(ips: list[str]) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "web-manual", "namespace": "default",
                     "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": POD_PORT, "protocol": "TCP"}],
        "endpoints": [{"addresses": [ip], "conditions": {"ready": True}, "nodeName": NODE} for ip in ips],
    }


@dataclass
class Cluster:
    client: Client
    lab: Lab
    service: dict[str, Any]
    proxy: asyncio.Task[None]

    @property
    def cluster_url(self) -> str:
        return f"http://{self.service['spec']['clusterIP']}:80"

    @property
    def node_port_url(self) -> str:
        return f"http://{NODE_IP}:{self.service['spec']['ports'][0]['nodePort']}"

    async def set_endpoints(self, ips: list[str]) -> None:
        await self.client.patch(ENDPOINTSLICES, "web-manual", {"endpoints": endpoint_slice(ips)["endpoints"]},
                                "default")

    async def table(self) -> str:
        proc = await asyncio.create_subprocess_exec(*self.lab.nft, "list", "table", "ip", "k3p-proxy",
                                                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, _ = await proc.communicate()
        return out.decode() if proc.returncode == 0 else ""

    async def wait_table(self, check: Callable[[str], bool], what: str, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while not check(await self.table()):
            assert time.monotonic() < deadline, f"{what}: not in the table within {timeout}s"
            await asyncio.sleep(0.05)


@pytest.fixture
async def cluster(k3p_server: K3pServer, lab: Lab) -> AsyncIterator[Cluster]:
    client: Client = k3p_server.admin_client("proxy-test")
    try:
        service = await client.create(SERVICES, {
            "apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "default"},
            # no selector: the endpoints are written by the test (no kubelet runs here)
            "spec": {"type": "NodePort", "ports": [{"name": "http", "port": 80, "targetPort": POD_PORT}]},
        }, "default")
        await client.create(ENDPOINTSLICES, endpoint_slice(list(PODS.values())), "default")
        component = proxy_component(k3p_server.admin_client, NODE, CLUSTER_CIDR, [NODE_IP], nft_command=lab.nft)
        assert component.name == f"kube-proxy-{NODE}"
        ready = asyncio.Event()
        task = asyncio.create_task(component.run(ready.set))
        try:
            done, _ = await asyncio.wait({task, asyncio.create_task(ready.wait())}, timeout=30,
                                         return_when=asyncio.FIRST_COMPLETED)
            if task in done:
                task.result()  # raises what stopped it
            assert ready.is_set(), "proxy not ready within 30s"
            yield Cluster(client, lab, service, task)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    finally:
        await client.close()


async def test_cluster_ip_node_port_and_endpoint_changes(cluster: Cluster) -> None:
    lab = cluster.lab
    node_forwarding = sh("ip", "netns", "exec", lab.node, "sysctl", "-n", "net.ipv4.ip_forward").strip()
    assert node_forwarding == "1", "the proxy turns on IPv4 forwarding"

    # a change that leaves the rules as they are runs no nft
    with structlog.testing.capture_logs() as logs:
        await cluster.client.patch(SERVICES, "web", {"metadata": {"annotations": {"example.org/note": "x"}}},
                                   "default")
        await asyncio.sleep(0.5)
    assert [e for e in logs if e["event"] == "proxy rules synced"] == []

    # successive requests reach both pods
    seen: set[str] = set()
    for _ in range(40):
        ok, text = await fetch(lab.namespaces["client"], cluster.cluster_url + "/")
        assert ok, text
        seen.add(text)
        if seen == set(PODS):
            break
    assert seen == set(PODS)

    # pod traffic keeps its source address; the node's own traffic is masqueraded
    ok, text = await fetch(lab.namespaces["client"], cluster.cluster_url + "/cgi-bin/who")
    assert ok and text.split()[1] == CLIENT_IP, text
    ok, text = await fetch(lab.node, cluster.cluster_url + "/cgi-bin/who")
    assert ok and text.split()[1] == GATEWAY, text

    # the NodePort on the node's address answers (masqueraded: the policy is Cluster)
    ok, text = await fetch(lab.namespaces["client"], cluster.node_port_url + "/cgi-bin/who")
    assert ok and text.split()[0] in PODS and text.split()[1] == GATEWAY, text

    # no endpoints: refused at once, not left to time out
    await cluster.set_endpoints([])
    started = time.monotonic()
    while True:
        ok, text = await fetch(lab.namespaces["client"], cluster.cluster_url + "/", timeout=5)
        if not ok:
            break
        assert time.monotonic() - started < 1.5, "still answering 1.5s after the endpoints went away"
        await asyncio.sleep(0.05)
    assert "refused" in text.lower(), text
    print(f"\nendpoints removed -> connection refused after {time.monotonic() - started:.3f}s")
    started = time.monotonic()
    ok, text = await fetch(lab.namespaces["client"], cluster.node_port_url + "/", timeout=5)
    assert not ok and "refused" in text.lower() and time.monotonic() - started < 1, text

    # one endpoint back: answers within a second of the EndpointSlice change
    started = time.monotonic()
    await cluster.set_endpoints([PODS["pod-b"]])
    text = await wait_answer(lab.namespaces["client"], cluster.cluster_url + "/", timeout=5)
    elapsed = time.monotonic() - started
    print(f"endpoint added -> service answers after {elapsed:.3f}s")
    assert text == "pod-b"
    assert elapsed < 1.5, f"the service answered {elapsed:.2f}s after the EndpointSlice change"
    for _ in range(5):
        assert await fetch(lab.namespaces["client"], cluster.cluster_url + "/") == (True, "pod-b")

    # a burst of changes is coalesced: at most one sync per 100 ms, the last state wins
    with structlog.testing.capture_logs() as logs:
        started = time.monotonic()
        for i in range(20):
            await cluster.set_endpoints(list(PODS.values()) if i % 2 else [PODS["pod-a"]])
        burst = time.monotonic() - started
        await asyncio.sleep(0.5)
    syncs = [e for e in logs if e["event"] == "proxy rules synced"]
    print(f"20 EndpointSlice changes in {burst:.3f}s -> {len(syncs)} syncs")
    assert 1 <= len(syncs) <= (burst + 0.5) / 0.1 + 1
    assert syncs[-1]["endpoints"] == 3  # both pods, and the kubernetes service's own endpoint


async def test_affinity_hairpin_restart_and_removal(cluster: Cluster) -> None:
    lab = cluster.lab
    await cluster.client.patch(SERVICES, "web", {"spec": {"sessionAffinity": "ClientIP",
                                                          "sessionAffinityConfig": {"clientIP": {
                                                              "timeoutSeconds": 300}}}}, "default")
    await cluster.wait_table(lambda t: "affinity-" in t, "affinity sets")
    answers = [await fetch(lab.namespaces["client"], cluster.cluster_url + "/") for _ in range(12)]
    assert all(ok for ok, _ in answers), answers
    assert len({text for _, text in answers}) == 1, f"ClientIP affinity did not stick: {answers}"
    chosen = answers[0][1]

    # another change elsewhere in the table keeps what the affinity sets remember
    await cluster.client.create(SERVICES, {
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "other", "namespace": "default"},
        "spec": {"ports": [{"port": 81}]}}, "default")
    await cluster.wait_table(lambda t: "default/other" in t, "the second service")
    for _ in range(6):
        assert await fetch(lab.namespaces["client"], cluster.cluster_url + "/") == (True, chosen)

    # hairpin: a pod reaching itself through its service works, masqueraded
    await cluster.set_endpoints([PODS["pod-a"]])
    await cluster.wait_table(lambda t: f"dnat to {PODS['pod-b']}:" not in t, "pod-b's removal")
    answer = await wait_answer(lab.namespaces["pod-a"], cluster.cluster_url + "/cgi-bin/who", timeout=5)
    assert answer == f"pod-a {GATEWAY}"

    # stopping the proxy leaves the data plane as it is
    cluster.proxy.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await cluster.proxy
    assert await fetch(lab.namespaces["client"], cluster.cluster_url + "/") == (True, "pod-a")

    # disabling it removes the table, once
    assert remove_proxy_rules(lab.nft) is True
    assert await cluster.table() == ""
    assert remove_proxy_rules(lab.nft) is False
    ok, text = await fetch(lab.namespaces["client"], cluster.cluster_url + "/", timeout=1)
    assert not ok, text


async def test_nft_failure_is_logged_and_retried(k3p_server: K3pServer) -> None:
    missing = f"k3pt-{secrets.token_hex(3)}-none"  # a namespace that does not exist: every nft run fails
    component = proxy_component(k3p_server.admin_client, NODE, CLUSTER_CIDR, lambda: [NODE_IP],
                                nft_command=("ip", "netns", "exec", missing, "nft"))
    ready = asyncio.Event()
    with structlog.testing.capture_logs() as logs:
        task = asyncio.create_task(component.run(ready.set))
        try:
            await asyncio.sleep(2.5)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    assert not ready.is_set()
    failures = [e for e in logs if e["event"] == "proxy rules not applied; retrying"]
    # back-off 0.5 s, 1 s, 2 s: three or four attempts in 2.5 s, not a busy loop
    assert 2 <= len(failures) <= 4, failures
    assert missing in failures[0]["stderr"]
    assert [f["retry_in"] for f in failures[:3]] == ["0.5s", "1.0s", "2.0s"][: len(failures[:3])]
    assert all(f["component"] == "kube-proxy" for f in failures)
