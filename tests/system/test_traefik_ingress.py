"""Ingress on a real node: ``k3p server`` with its containerd node serves an Ingress to a pod.

The traefik plugin's component runs as the node runs it (its own identity and RBAC from
the plugin's manifests), on free loopback ports. A busybox httpd pod behind a Service
with a selector gets its EndpointSlice from the controllers; the request goes from the
host through the proxy to the pod's IP on the node's bridge. Teardown deletes the pod,
stops the server and removes what the node left on the host (runc state, network
namespaces, the bridge if this run made it, the temp dir).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from containerd_host import BRIDGE, IMAGE, REAL_NODE, bridge_network
from k3p import ocibuild
from k3p.testing import K3pServer, free_port
from k3p_plugins.containerd.paths import ContainerdPaths

pytestmark = REAL_NODE

PAGE = b"<h1>through the ingress</h1>\n"


def eventually(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = check()
        except Exception as e:  # not yet
            last = e
        if last and not isinstance(last, Exception):
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s (last: {last!r})")
        time.sleep(interval)


def through_proxy(port: int, host: str, path: str = "/index.html") -> tuple[int, bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Host": host})
    try:
        with urllib.request.urlopen(request, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


class Node:
    """A server with its own containerd node and the traefik proxy on free ports."""

    def __init__(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="k3pi-", dir="/tmp"))  # containerd's socket path is limited
        self.paths = ContainerdPaths.from_data_dir(self.tmp / "data")
        self.had_bridge = Path(f"/sys/class/net/{BRIDGE}").exists()
        self.ip_forward = Path("/proc/sys/net/ipv4/ip_forward").read_text().strip()
        self.netns_before = {p.name for p in Path("/var/run/netns").glob("cni-*")}
        self.http_port, self.https_port = free_port(), free_port()
        shared = bridge_network()
        args = ["--traefik-http-port", str(self.http_port), "--traefik-https-port", str(self.https_port),
                "--traefik-bind-address", "127.0.0.1"]
        self.server = K3pServer(self.tmp, args=args + (["--cluster-cidr", shared] if shared else []), agent=True)

    def start(self) -> None:
        self.paths.images_dir.mkdir(parents=True)
        ocibuild.build_busybox_image(self.paths.images_dir / "busybox.tar", IMAGE, files={"www/index.html": PAGE})
        self.server.start(timeout=120)

    def apply(self, obj: dict[str, Any]) -> None:
        got = self.server.kubectl("apply", "-f", "-", input=json.dumps(obj))
        assert got.returncode == 0, got.stderr

    def get(self, *what: str) -> dict[str, Any]:
        got = self.server.kubectl("get", *what, "-o", "json")
        assert got.returncode == 0, got.stderr
        return json.loads(got.stdout)

    def cleanup(self) -> None:
        with contextlib.suppress(Exception):
            if self.server.proc is not None and self.server.proc.poll() is None:
                self.server.kubectl("delete", "pods", "--all", "--wait=true", "--timeout=60s", timeout=90)
        self.server.stop()
        runc_root = self.paths.runc_root / "k8s.io"
        if runc_root.is_dir():
            for cid in os.listdir(runc_root):
                subprocess.run(["runc", "--root", str(runc_root), "delete", "--force", cid], capture_output=True)
        for path in Path("/var/run/netns").glob("cni-*"):
            if path.name not in self.netns_before:
                subprocess.run(["ip", "netns", "delete", path.name], capture_output=True)
        if not self.had_bridge and Path(f"/sys/class/net/{BRIDGE}").exists() \
                and not any(Path(f"/sys/class/net/{BRIDGE}/brif").iterdir()):
            subprocess.run(["ip", "link", "del", BRIDGE], capture_output=True)
            Path("/proc/sys/net/ipv4/ip_forward").write_text(self.ip_forward)
        shutil.rmtree(self.tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def node() -> Iterator[Node]:
    n = Node()
    try:
        n.start()
        yield n
    finally:
        n.cleanup()


def test_ingress_routes_to_a_pod_and_reports_the_node(node: Node) -> None:
    ingress_class = eventually(lambda: node.get("ingressclass", "traefik"), 30, "IngressClass traefik installed")
    assert ingress_class["spec"]["controller"] == "traefik.io/ingress-controller"

    node.apply({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web", "labels": {"app": "web"}},
                "spec": {"terminationGracePeriodSeconds": 1, "containers": [{
                    "name": "web", "image": IMAGE, "imagePullPolicy": "IfNotPresent",
                    "command": ["httpd", "-f", "-p", "8080", "-h", "/www"],
                    "ports": [{"name": "http", "containerPort": 8080}],
                    "readinessProbe": {"httpGet": {"path": "/index.html", "port": 8080}, "periodSeconds": 1}}]}})
    node.apply({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
                "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}})
    # no ingressClassName: served because traefik is the default class
    node.apply({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": "web"},
                "spec": {"rules": [{"host": "web.test", "http": {"paths": [
                    {"path": "/", "pathType": "Prefix",
                     "backend": {"service": {"name": "web", "port": {"number": 80}}}}]}}]}})

    _, body = eventually(lambda: (r := through_proxy(node.http_port, "web.test"))[0] == 200 and r, 120,
                         "the pod's page through the ingress")
    assert body == PAGE
    assert through_proxy(node.http_port, "elsewhere.test")[0] == 404

    node_obj = node.get("nodes")["items"][0]
    internal = sorted(a["address"] for a in node_obj["status"]["addresses"] if a["type"] == "InternalIP")

    def reported() -> bool:
        lb = node.get("ingress", "web").get("status", {}).get("loadBalancer", {}).get("ingress") or []
        return sorted(i["ip"] for i in lb) == internal

    eventually(reported, 30, "the node's InternalIP in the Ingress status")

    got = node.server.kubectl("delete", "pod", "web", "--wait=true", "--timeout=60s", timeout=90)
    assert got.returncode == 0, got.stderr
    eventually(lambda: through_proxy(node.http_port, "web.test")[0] == 503, 30, "503 once no endpoint is left")
