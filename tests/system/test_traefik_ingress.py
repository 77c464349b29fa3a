"""Ingress on a real node: ``k3p server`` with its containerd node serves an Ingress to a pod.

The traefik plugin's component runs as the node runs it (its own identity and RBAC from
the plugin's manifests), on free loopback ports. A busybox httpd pod behind a Service
with a selector gets its EndpointSlice from the controllers; the request goes from the
host through the proxy to the pod's IP on the node's bridge. The node and its teardown
are ``containerd_host.HostNode``.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from containerd_host import IMAGE, REAL_NODE, HostNode

from k3p.testing import free_port, wait_for

pytestmark = REAL_NODE

PAGE = b"<h1>through the ingress</h1>\n"


def through_proxy(port: int, host: str, path: str = "/index.html") -> tuple[int, bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Host": host})
    try:
        with urllib.request.urlopen(request, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


class Node(HostNode):
    """A server with its own containerd node and the traefik proxy on free loopback ports."""

    def __init__(self) -> None:
        self.http_port, self.https_port = free_port(), free_port()
        super().__init__("k3pi-", ["--traefik-http-port", str(self.http_port), "--traefik-https-port",
                                   str(self.https_port), "--traefik-bind-address", "127.0.0.1"], PAGE)


@pytest.fixture(scope="module")
def node() -> Iterator[Node]:
    with Node() as n:
        yield n


def test_ingress_routes_to_a_pod_and_reports_the_node(node: Node) -> None:
    ingress_class = wait_for(lambda: node.get("ingressclass", "traefik"), 30, 0.2, "IngressClass traefik installed")
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

    _, body = wait_for(lambda: (r := through_proxy(node.http_port, "web.test"))[0] == 200 and r, 120, 0.2,
                        "the pod's page through the ingress")
    assert body == PAGE
    assert through_proxy(node.http_port, "elsewhere.test")[0] == 404

    node_obj = node.get("nodes")["items"][0]
    internal = sorted(a["address"] for a in node_obj["status"]["addresses"] if a["type"] == "InternalIP")

    def reported() -> bool:
        lb = node.get("ingress", "web").get("status", {}).get("loadBalancer", {}).get("ingress") or []
        return sorted(i["ip"] for i in lb) == internal

    wait_for(reported, 30, 0.2, "the node's InternalIP in the Ingress status")

    got = node.server.kubectl("delete", "pod", "web", "--wait=true", "--timeout=60s", timeout=90)
    assert got.returncode == 0, got.stderr
    wait_for(lambda: through_proxy(node.http_port, "web.test")[0] == 503, 30, 0.2, "503 once no endpoint is left")
