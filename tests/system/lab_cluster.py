"""A k3p cluster of real nodes in network namespaces, shared by the multi-node system tests."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from pathlib import Path

from containerd_host import IMAGE

import k3p_plugins.containerd.ocibuild as ocibuild
from k3p.testing import wait_for
from k3p.testing.netns import NetnsLab, NetnsNode

#: each pod serves its own name on 8080, so a reply says which pod answered
SERVE = "echo $HOSTNAME > /tmp/index.html; exec httpd -f -p 8080 -h /tmp"


class Cluster:
    """A lab with a server node and agent nodes, and the helpers the tests share."""

    def __init__(self, workdir: Path, agents: list[str], args: list[str], disable: str = "traefik") -> None:
        self.lab = NetnsLab(workdir)
        self.nodes: dict[str, NetnsNode] = {}
        self.agent_procs: dict[str, subprocess.Popen[bytes]] = {}
        self.args = args
        try:
            for name in ["srv", *agents]:
                self.nodes[name] = self.lab.add_node(name)
                ocibuild.build_busybox_image(workdir / name / "data/agent/images/busybox.tar", IMAGE)
            disabled = ["--disable", disable] if disable else []
            self.server = self.lab.server(self.nodes["srv"], [*disabled, *args]).start(timeout=120)
            for name in agents:
                self.start_agent(name)
            wait_for(lambda: self.ready_nodes() == set(self.nodes), 120, 1, "all nodes Ready")
        except BaseException:
            self.lab.close()
            raise

    def start_agent(self, name: str) -> None:
        self.agent_procs[name] = self.lab.agent(self.nodes[name], self.server)

    def stop_agent(self, name: str) -> None:
        self.lab.stop_agent(self.agent_procs.pop(name))

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> str:
        return self.server.kubectl(*args, input=input, check=check).stdout

    def json(self, *args: str) -> dict:
        return json.loads(self.kubectl("get", *args, "-o", "json"))

    def ready_nodes(self) -> set[str]:
        found = set()
        for node in self.json("nodes").get("items", []):
            conditions = {c["type"]: c["status"] for c in node["status"].get("conditions", [])}
            if conditions.get("Ready") == "True":
                found.add(node["metadata"]["name"])
        return found

    def apply(self, obj: dict) -> None:
        self.kubectl("apply", "-f", "-", input=json.dumps(obj))

    def run_pod(self, name: str, node: str) -> str:
        """A pod serving its name on ``node``; returns its IP once Running."""
        self.apply({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": name}},
                    "spec": {"nodeName": node, "terminationGracePeriodSeconds": 1,
                             "containers": [{"name": "c", "image": IMAGE, "imagePullPolicy": "IfNotPresent",
                                             "command": ["sh", "-c", SERVE]}]}})

        def running() -> str | None:
            status = self.json("pod", name)["status"]
            return status.get("podIP") if status.get("phase") == "Running" else None

        return wait_for(running, 120, 0.5, f"pod {name} Running")

    def fetch(self, pod: str, url: str, seconds: int = 10) -> subprocess.CompletedProcess[str]:
        """``wget -qO- url`` inside ``pod``, given up after ``seconds`` (busybox 1.35's wget crashes with -T)."""
        return self.server.kubectl("exec", pod, "--", "timeout", str(seconds), "wget", "-qO-", url,
                                   timeout=seconds + 20)

    def reaches(self, pod: str, url: str, want: str | set[str], timeout: float = 20) -> float:
        """Wait until ``pod`` gets ``want`` (or one of a set) from ``url``; the seconds it took.

        A pod that has just started may need a moment before the other nodes' routes and
        the proxy rules cover it, as on any cluster; the time is printed so a slow data
        plane shows up in the log.
        """
        began = time.monotonic()
        wanted = {want} if isinstance(want, str) else want
        last = None

        def answered() -> bool:
            nonlocal last
            last = self.fetch(pod, url, 3)
            return last.stdout.strip() in wanted

        try:
            wait_for(answered, timeout, 0.2, f"{pod} reaching {url}")
        except TimeoutError:
            raise AssertionError(f"{pod} never reached {url}: {last.stderr if last else ''}") from None
        took = time.monotonic() - began
        print(f"{pod} reached {url} after {took:.2f} s")
        return took

    def close(self) -> None:
        self.lab.close()


def http_get(url: str, timeout: float = 2) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode().strip()


def pod_network_namespace(ip: str) -> str:
    """The /run/netns entry of the pod that has ``ip``."""
    for path in Path("/run/netns").glob("cni-*"):
        out = subprocess.run(["ip", "-n", path.name, "-4", "-o", "addr"], capture_output=True, text=True).stdout
        if f" {ip}/" in out:
            return str(path)
    raise AssertionError(f"no pod network namespace holds {ip}")
