"""The node-local DNS address on a real interface, queried from another network namespace.

Two fresh namespaces joined by a veth pair: the "node" runs the DNS server on the cluster
DNS address, which it puts on its ``k3p-dns`` interface; the "pod" side reaches that
address through a route to the node, as a pod does through its default route. The
interface outlives the server (a restarted server answers again at once) and is gone
after ``remove_dns_link``. Everything is torn down at the end, also on failure.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import select
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from k3p.testing import stop_process

pytestmark = [
    pytest.mark.slow,
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
    pytest.mark.skipif(shutil.which("ip") is None, reason="needs iproute2"),
]

DNS_IP = "10.43.0.10"

SERVER = textwrap.dedent(f"""
    import asyncio
    from k3p_plugins.coredns.link import ensure_dns_link
    from k3p_plugins.coredns.records import ClusterRecords
    from k3p_plugins.coredns.server import serve_dns

    ensure_dns_link(["{DNS_IP}"])
    records = ClusterRecords()
    records.on_service("ADDED", {{"metadata": {{"name": "web", "namespace": "default"}},
                                 "spec": {{"clusterIP": "10.43.0.20", "ports": [{{"name": "http", "port": 80}}]}}}})

    async def main():
        await serve_dns(records, "{DNS_IP}", 53)
        print("serving", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())
""")

#: the plugin's own agent component, as a node runs it, with an API server that is not there
#: (the informers keep retrying; the server starts after its sync timeout); stdin closing stops it
COMPONENT = textwrap.dedent(f"""
    import asyncio, sys, types
    from k3p.client import Client
    import k3p_plugins.coredns as plugin

    ctx = types.SimpleNamespace(
        runs_workloads=True, node_name="n1", config={{"resolv_conf": "/nonexistent/resolv.conf"}},
        cluster={{"clusterDNS": "{DNS_IP}", "clusterDomain": "k3p.test"}},
        component_client=lambda component, agent: Client("https://127.0.0.1:9", user_agent=agent))
    [component] = plugin.k3p_agent_components(ctx)
    assert component.name == "coredns-n1"

    async def main():
        task = asyncio.create_task(component.fn(lambda: print("serving", flush=True)))
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        print("stopped", flush=True)

    asyncio.run(main())
""")

QUERY = textwrap.dedent(f"""
    import sys
    from dnslib import RCODE, DNSRecord
    reply = DNSRecord.parse(DNSRecord.question(sys.argv[1]).send("{DNS_IP}", 53, tcp=sys.argv[2] == "tcp",
                                                                   timeout=2))
    print(RCODE[reply.header.rcode], *(str(rr.rdata) for rr in reply.rr))
""")


@dataclass
class Lab:
    node: str
    pod: str
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def run(self, netns: str, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "netns", "exec", netns, *cmd], capture_output=True, text=True, timeout=30,
                              check=check)

    def python(self, netns: str, code: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run(netns, sys.executable, "-c", code, *args, check=check)

    def start_server(self, code: str = SERVER) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(["ip", "netns", "exec", self.node, sys.executable, "-c", code],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.processes.append(proc)
        assert proc.stdout is not None
        output = b""
        # the component waits up to 5 s for its informers before it serves
        deadline = time.monotonic() + 30
        while b"serving\n" not in output:  # the server logs, then says "serving"
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([proc.stdout], [], [], remaining)[0]:
                break
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                break
            output += chunk
        else:
            return proc
        stop_process(proc)
        raise AssertionError(f"the DNS server did not start (exit {proc.returncode}):\n{output.decode()}")

    def query(self, name: str, transport: str = "udp", check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.python(self.pod, QUERY, name, transport, check=check)

    def link_addresses(self) -> str:
        return self.run(self.node, "ip", "-o", "addr", "show", "dev", "k3p-dns", check=False).stdout


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], capture_output=True, text=True, check=True)


@pytest.fixture
def lab() -> Iterator[Lab]:
    suffix = secrets.token_hex(3)
    node, pod = f"k3pt-{suffix}-n", f"k3pt-{suffix}-p"
    lab = Lab(node, pod)
    try:
        _ip("netns", "add", node)
        _ip("netns", "add", pod)
        # veth ends are made inside the namespaces, so nothing is left on the host
        _ip("-n", node, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", pod)
        for ns, address in ((node, "10.250.0.1/24"), (pod, "10.250.0.2/24")):
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "addr", "add", address, "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
        _ip("-n", pod, "route", "add", "default", "via", "10.250.0.1")
        yield lab
    finally:
        for proc in lab.processes:
            with contextlib.suppress(Exception):
                stop_process(proc)
            for pipe in (proc.stdin, proc.stdout):
                if pipe is not None:
                    pipe.close()
        for ns in (node, pod):
            pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            subprocess.run(["ip", "netns", "delete", ns], capture_output=True)


def test_cluster_dns_address_served_across_namespaces(lab: Lab) -> None:
    server = lab.start_server()
    assert f"{DNS_IP}/32" in lab.link_addresses()
    assert lab.query("web.default.svc.cluster.local").stdout.split() == ["NOERROR", "10.43.0.20"]
    assert lab.query("WEB.default.svc.cluster.local.", "tcp").stdout.split() == ["NOERROR", "10.43.0.20"]

    # The interface and its address outlive the server: a restart answers again at once
    stop_process(server)
    assert f"{DNS_IP}/32" in lab.link_addresses()
    lab.start_server()
    assert lab.query("web.default.svc.cluster.local").stdout.split() == ["NOERROR", "10.43.0.20"]

    # Removing the interface takes the address away
    removed = lab.python(lab.node, "from k3p_plugins.coredns.link import remove_dns_link; "
                                   "print(remove_dns_link(), remove_dns_link())")
    assert removed.stdout.splitlines()[-1] == "True False"  # (after its log lines)
    assert lab.link_addresses() == ""
    assert lab.run(lab.node, "ip", "-o", "addr", "show", "to", DNS_IP).stdout == ""
    assert lab.query("web.default.svc.cluster.local", check=False).returncode != 0


def test_agent_component_sets_up_the_address_and_serves(lab: Lab) -> None:
    component = lab.start_server(COMPONENT)
    assert f"{DNS_IP}/32" in lab.link_addresses()
    assert lab.query("10-42-0-5.default.pod.k3p.test").stdout.split() == ["NOERROR", "10.42.0.5"]
    assert lab.query("web.default.svc.k3p.test", "tcp").stdout.split() == ["NXDOMAIN"]
    # no upstream nameserver: outside names fail, quickly
    assert lab.query("example.org").stdout.split() == ["SERVFAIL"]

    # A stopped component leaves the interface in place for the pods
    assert component.stdin is not None and component.stdout is not None
    component.stdin.close()
    assert component.wait(15) == 0
    assert b"stopped" in component.stdout.read()
    assert f"{DNS_IP}/32" in lab.link_addresses()
