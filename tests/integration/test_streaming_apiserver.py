"""pods/exec and pods/portforward through a real API server to a hollow node's kubelet.

`k3p server` and `k3p agent --simulate 1` run as subprocesses; the simulated runtime
cannot stream, so every stream ends at the kubelet with that reason: what is checked
here is everything before it (authentication incl. the token-in-subprotocol form,
RBAC's extra ``create`` check for WebSocket GETs, negotiation, the kubelet's client
certificate on WebSocket connections) and that kubectl shows the kubelet's reason even
though it retries over SPDY after a failed WebSocket upgrade.
"""

from __future__ import annotations

import base64
import json
import ssl
import subprocess
from pathlib import Path

import httpx
import pytest
import websockets

from k3p.apiserver import streaming as api
from k3p.testing import HollowNodes, K3pServer, wait_for

pytestmark = pytest.mark.slow

POD = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "quiet"},
       "spec": {"containers": [{"name": "main", "image": "registry.local/app:1"}]}}
VIEWER = """
apiVersion: v1
kind: ServiceAccount
metadata: {name: viewer}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: exec-get-only}
rules:
- {apiGroups: [""], resources: [pods], verbs: [get, list]}
- {apiGroups: [""], resources: [pods/exec, pods/portforward], verbs: [get]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: viewer}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: exec-get-only}
subjects:
- {kind: ServiceAccount, name: viewer, namespace: default}
"""


class Cluster:
    def __init__(self, workdir: Path) -> None:
        self.server = K3pServer(workdir / "server", args=["--disable-agent"]).start()
        try:
            self.agent = HollowNodes(self.server, workdir / "agent", 1, "hollow")
        except BaseException:
            self.server.stop()
            raise

    def stop(self) -> None:
        self.agent.stop()
        self.server.stop()

    def kubectl(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        return self.server.kubectl(*args, input=input, timeout=60)

    def admin_tls(self) -> ssl.SSLContext:
        return self.server.ssl_context()

    def ws_url(self, path: str) -> str:
        return f"wss://127.0.0.1:{self.server.port}{path}"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    c = Cluster(tmp_path_factory.mktemp("streams"))
    try:
        def running() -> bool:
            got = c.kubectl("get", "pod", "quiet", "-o", "jsonpath={.status.phase}")
            return got.stdout == "Running"

        c.kubectl("apply", "-f", "-", input=json.dumps(POD))
        wait_for(running, 60, 0.3, "the pod running on the hollow node")
        c.kubectl("apply", "-f", "-", input=VIEWER)
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def viewer_token(cluster: Cluster) -> str:
    got = cluster.kubectl("create", "token", "viewer")
    assert got.returncode == 0, got.stderr
    return got.stdout.strip()


def test_kubectl_exec_shows_why_the_node_cannot_stream(cluster: Cluster) -> None:
    got = cluster.kubectl("exec", "quiet", "--", "true")
    assert got.returncode == 1
    # the WebSocket attempt reached the kubelet; kubectl's SPDY retry is told what it found
    assert "the simulated runtime cannot exec into containers" in got.stderr, got.stderr


def test_kubectl_port_forward_shows_why_the_node_cannot_stream(cluster: Cluster) -> None:
    got = cluster.kubectl("port-forward", "pod/quiet", ":80")
    assert got.returncode == 1
    assert "the simulated runtime cannot forward ports" in got.stderr, got.stderr


async def test_missing_pods_and_containers(cluster: Cluster) -> None:
    got = cluster.kubectl("exec", "quiet", "-c", "nope", "--", "true")
    assert got.returncode == 1 and "container nope is not valid for pod quiet" in got.stderr, got.stderr
    with pytest.raises(websockets.exceptions.InvalidStatus) as e:
        await api.dial(cluster.ws_url("/api/v1/namespaces/default/pods/gone/exec?command=ls"), api.CHANNEL_V5,
                       cluster.admin_tls())
    assert e.value.response.status_code == 404


async def test_websocket_exec_needs_create_as_well_as_get(cluster: Cluster, viewer_token: str) -> None:
    url = cluster.ws_url("/api/v1/namespaces/default/pods/quiet/exec?command=ls")
    tls = ssl.create_default_context(cafile=str(cluster.server.ca_file))
    with pytest.raises(websockets.exceptions.InvalidStatus) as e:
        await api.dial(url, api.CHANNEL_V5, tls)
    assert e.value.response.status_code == 401
    # the token as a browser passes it: in a subprotocol
    encoded = base64.urlsafe_b64encode(viewer_token.encode()).decode().rstrip("=")
    with pytest.raises(websockets.exceptions.InvalidStatus) as e:
        await websockets.connect(url, ssl=tls, proxy=None, additional_headers={
            "Sec-WebSocket-Protocol": f"{api.BEARER_PROTOCOL_PREFIX}{encoded}, {api.CHANNEL_V5}"})
    assert e.value.response.status_code == 403
    status = json.loads(e.value.response.body)
    assert status["reason"] == "Forbidden"
    assert 'cannot create resource "pods/exec"' in status["message"]


async def test_unsupported_subprotocols_and_spdy_are_refused(cluster: Cluster) -> None:
    path = "/api/v1/namespaces/default/pods/quiet/exec?command=ls"
    async with httpx.AsyncClient(verify=cluster.admin_tls()) as http:
        got = await http.post(cluster.server.url + path, headers={
            "Connection": "Upgrade", "Upgrade": "SPDY/3.1", "X-Stream-Protocol-Version": "v4.channel.k8s.io"})
    assert got.status_code == 400
    assert "SPDY upgrades are not supported" in got.json()["message"]
    with pytest.raises(websockets.exceptions.InvalidStatus) as e:
        await api.dial(cluster.ws_url(path), "channel.k8s.io", cluster.admin_tls())
    assert e.value.response.status_code == 400
    assert b"v5.channel.k8s.io" in e.value.response.body


def test_python_client_exec_reports_the_kubelets_reason(cluster: Cluster) -> None:
    from kubernetes import client
    from kubernetes.client.rest import ApiException
    from kubernetes.stream import stream

    core = client.CoreV1Api(cluster.server.api_client())
    with pytest.raises(ApiException) as e:
        stream(core.connect_get_namespaced_pod_exec, "quiet", "default", command=["true"], stderr=True,
               stdin=False, stdout=True, tty=False)
    assert "the simulated runtime cannot exec into containers" in str(e.value)
