"""Several k3p nodes on one machine, each in its own network namespace (for multi-node tests).

A ``NetnsLab`` makes a "switch" namespace holding a bridge with a private /24 and, per
node, a network namespace joined to that bridge by a veth pair. The host joins the
bridge too, through one more veth pair, and holds the /24's first address: tests reach
the nodes' API and ports directly. Traffic between nodes is bridged inside the switch
namespace, so the host's own firewall rules never see it.
Processes run in a namespace through ``nsenter --net`` (the mount namespace stays the
host's, so the mounts containerd makes are visible to the cleanup). ``close()`` stops
every process the lab started, removes the containers they left, the pod network
namespaces made meanwhile, the namespaces and the bridge.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from k3p.testing.process import (
    K3pServer,
    pod_network_namespaces,
    remove_network_namespaces,
    remove_node_leftovers,
    stop_process,
)

NETNS_DIR = Path("/run/netns")


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


@dataclass
class NetnsNode:
    """One node's network namespace and its address on the lab bridge."""

    name: str
    netns: str
    ip: str
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def prefix(self) -> list[str]:
        """The command prefix that runs a program in this node's network namespace."""
        return ["nsenter", f"--net={NETNS_DIR / self.netns}"]

    def run(self, *cmd: str, timeout: float = 30, check: bool = False) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self.prefix(), *cmd], capture_output=True, text=True, timeout=timeout, check=check)


class NetnsLab:
    """A bridge with network namespaces attached: one per node."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = Path(workdir)
        self.id = secrets.token_hex(3)
        self.switch = f"k3pt-{self.id}-sw"
        self.uplink = f"k3pt{self.id}h"  # the host's end of its veth pair to the switch
        # a /24 inside 10.200.0.0/13 unlikely to meet anything else on the host
        n = int(self.id, 16) % 2048
        self.network = ipaddress.ip_network(f"10.{200 + n // 256}.{n % 256}.0/24")
        self.gateway = str(self.network.network_address + 1)
        self.nodes: dict[str, NetnsNode] = {}
        self.servers: list[K3pServer] = []
        self.agents: list[tuple[subprocess.Popen[bytes], Path]] = []
        _ip("netns", "add", self.switch)
        _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.switch, "link", "set", "br0", "up")
        _ip("link", "add", self.uplink, "type", "veth", "peer", "name", "uplink", "netns", self.switch)
        _ip("-n", self.switch, "link", "set", "uplink", "master", "br0", "up")
        _ip("addr", "add", f"{self.gateway}/24", "dev", self.uplink)
        _ip("link", "set", self.uplink, "up")

    def add_node(self, name: str) -> NetnsNode:
        index = len(self.nodes) + 2
        netns = f"k3pt-{self.id}-{name}"
        ip = str(self.network.network_address + index)
        _ip("netns", "add", netns)
        node = NetnsNode(name, netns, ip)
        self.nodes[name] = node
        port = f"port{index}"
        _ip("-n", self.switch, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", netns)
        _ip("-n", self.switch, "link", "set", port, "master", "br0", "up")
        for args in (("link", "set", "lo", "up"), ("link", "set", "eth0", "up"),
                     ("addr", "add", f"{ip}/24", "dev", "eth0"),
                     ("route", "add", "default", "via", self.gateway)):
            _ip("-n", netns, *args)
        return node

    def resolv_conf(self) -> Path:
        """The nodes' resolv.conf: names the cluster DNS cannot answer go nowhere but the node itself."""
        path = self.workdir / "resolv.conf"
        if not path.exists():
            self.workdir.mkdir(parents=True, exist_ok=True)
            path.write_text("nameserver 127.0.0.1\n")
        return path

    def server(self, node: NetnsNode, args: Sequence[str] = (), config: str = "") -> K3pServer:
        """A ``k3p server`` (with its own node) in ``node``'s namespace on port 6443."""
        server = K3pServer(self.workdir / node.name, ["--node-name", node.name, "--bind-address", "0.0.0.0",
                                                     "--kubelet-port", "10250",
                                                     "--resolv-conf", str(self.resolv_conf()), *args],
                           config=config, port=6443, agent=True, host=node.ip, prefix=node.prefix())
        self.servers.append(server)
        return server

    def agent(self, node: NetnsNode, server: K3pServer, *args: str) -> subprocess.Popen[bytes]:
        """A ``k3p agent`` in ``node``'s namespace joined to ``server`` with the server token."""
        workdir = self.workdir / node.name
        workdir.mkdir(parents=True, exist_ok=True)
        config = workdir / "config.yaml"
        if not config.exists():
            config.write_text("")
        token = (server.data_dir / "server" / "token").read_text().strip()
        env = {k: v for k, v in os.environ.items() if not k.startswith("K3P_")}
        with (workdir / "k3p.log").open("ab") as out:
            proc = subprocess.Popen(
                [*node.prefix(), sys.executable, "-m", "k3p", "agent", "--config", str(config),
                 "--data-dir", str(workdir / "data"), "--server", server.url, "--token", token,
                 "--node-name", node.name, "--resolv-conf", str(self.resolv_conf()), *args],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env)
        self.agents.append((proc, workdir / "data"))
        return proc

    def stop_agent(self, proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
        stop_process(proc, 15, sig)

    def close(self) -> None:
        pod_namespaces = pod_network_namespaces(str(self.workdir))
        for server in self.servers:
            with contextlib.suppress(Exception):
                server.stop()
        for proc, data_dir in self.agents:
            with contextlib.suppress(Exception):
                stop_process(proc, 15)
            remove_node_leftovers(data_dir)
        # processes a test started in a namespace by hand (httpd, wget) die with it
        for node in self.nodes.values():
            pids = _ip("netns", "pids", node.netns, check=False).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
        time.sleep(0.1)
        remove_network_namespaces(pod_namespaces)
        for node in self.nodes.values():
            _ip("netns", "delete", node.netns, check=False)
        _ip("link", "delete", self.uplink, check=False)
        _ip("netns", "delete", self.switch, check=False)

    def __enter__(self) -> NetnsLab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
