"""A node's own credentials open only what its pods need: the Node authorizer and NodeRestriction.

The node's certificate comes from the supervisor endpoint, as a joining agent gets it. No
kubelet runs (``--disable-agent``): pods are bound to the node by ``spec.nodeName``.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import httpx
import pytest

from k3p import pki as pki_mod
from k3p.agent.join import PASSWORD_HEADER
from k3p.testing import K3pServer

NS = "/api/v1/namespaces/default"
NODE = "n1"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    s = K3pServer(tmp_path_factory.mktemp("nodeauthz")).start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def admin(server: K3pServer):
    with httpx.Client(base_url=server.url, verify=server.ssl_context(), timeout=10) as c:
        yield c


def node_credentials(server: K3pServer, name: str, folder: Path) -> ssl.SSLContext:
    """A client TLS context with the certificate the supervisor hands node ``name``."""
    token = (server.data_dir / "server" / "token").read_text().strip()
    secret = pki_mod.parse_token(token).secret
    r = httpx.post(f"{server.url}/v1-k3p/node-credentials", json={"nodeName": name},
                   auth=("node", secret), headers={PASSWORD_HEADER: f"password-of-{name}"},
                   verify=ssl.create_default_context(cafile=str(server.ca_file)), timeout=10)
    r.raise_for_status()
    creds = r.json()
    cert, key = folder / f"{name}.crt", folder / f"{name}.key"
    cert.write_text(creds["certificate"])
    key.write_text(creds["key"])
    ctx = ssl.create_default_context(cafile=str(server.ca_file))
    ctx.load_cert_chain(str(cert), str(key))
    return ctx


@pytest.fixture(scope="module")
def node(server: K3pServer, admin: httpx.Client, tmp_path_factory: pytest.TempPathFactory):
    ctx = node_credentials(server, NODE, tmp_path_factory.mktemp("creds"))
    with httpx.Client(base_url=server.url, verify=ctx, timeout=10) as c:
        # the node registers itself, as a kubelet does
        r = c.post("/api/v1/nodes", json={"apiVersion": "v1", "kind": "Node",
                                          "metadata": {"name": NODE, "labels": {"zone": "z1"}}})
        assert r.status_code == 201, r.text
        admin.post("/api/v1/nodes", json={"apiVersion": "v1", "kind": "Node",
                                          "metadata": {"name": "n2"}}).raise_for_status()
        for kind, name in (("secrets", "used"), ("secrets", "pulled"), ("secrets", "unused"),
                           ("configmaps", "used"), ("configmaps", "elsewhere")):
            body = {"apiVersion": "v1", "kind": "Secret" if kind == "secrets" else "ConfigMap",
                    "metadata": {"name": name}, "data": {}}
            admin.post(f"{NS}/{kind}", json=body).raise_for_status()
        admin.post(f"{NS}/pods", json=pod("mine", NODE, volumes=[
            {"name": "s", "secret": {"secretName": "used"}},
            {"name": "c", "projected": {"sources": [{"configMap": {"name": "used"}}]}}],
            imagePullSecrets=[{"name": "pulled"}])).raise_for_status()
        admin.post(f"{NS}/pods", json=pod("theirs", "n2", volumes=[
            {"name": "c", "configMap": {"name": "elsewhere"}}])).raise_for_status()
        yield c


def pod(name: str, node: str, **spec: object) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": name}},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}], **spec}}


def forbidden(r: httpx.Response, fragment: str) -> None:
    assert r.status_code == 403, r.text
    body = r.json()
    assert body["kind"] == "Status" and body["reason"] == "Forbidden", body
    assert fragment in body["message"], body["message"]


def test_node_reads_only_what_its_pods_use(node: httpx.Client) -> None:
    assert node.get(f"{NS}/secrets/used").status_code == 200
    assert node.get(f"{NS}/secrets/pulled").status_code == 200
    assert node.get(f"{NS}/configmaps/used").status_code == 200
    # a single named object may be watched too, as kubelets do
    assert node.get(f"{NS}/secrets", params={"fieldSelector": "metadata.name=used"}).status_code == 200
    forbidden(node.get(f"{NS}/secrets/unused"),
              'secrets "unused" is forbidden: User "system:node:n1" cannot get resource "secrets" in API group "" '
              "in the namespace \"default\": no relationship found between node 'n1' and this object")
    forbidden(node.get(f"{NS}/configmaps/elsewhere"), "no relationship found between node 'n1'")
    forbidden(node.get(f"{NS}/secrets"), "No Object name found")
    forbidden(node.get("/api/v1/secrets"), "can only read namespaced object of this type")
    forbidden(node.delete(f"{NS}/secrets/used"), "can only read resources of this type")


def test_graph_follows_pod_changes(admin: httpx.Client, node: httpx.Client) -> None:
    admin.post(f"{NS}/secrets", json={"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "later"}}
               ).raise_for_status()
    forbidden(node.get(f"{NS}/secrets/later"), "no relationship")
    admin.post(f"{NS}/pods", json=pod("later", NODE, containers=[{
        "name": "c", "image": "busybox", "envFrom": [{"secretRef": {"name": "later"}}]}])).raise_for_status()
    assert node.get(f"{NS}/secrets/later").status_code == 200
    admin.delete(f"{NS}/pods/later", params={"gracePeriodSeconds": "0"}).raise_for_status()
    forbidden(node.get(f"{NS}/secrets/later"), "no relationship")


def test_tokens_only_for_its_pods_service_accounts(admin: httpx.Client, node: httpx.Client) -> None:
    uid = admin.get(f"{NS}/pods/mine").json()["metadata"]["uid"]
    body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
            "spec": {"boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": "mine", "uid": uid}}}
    r = node.post(f"{NS}/serviceaccounts/default/token", json=body)
    assert r.status_code == 201, r.text
    forbidden(node.post(f"{NS}/serviceaccounts/default/token", json={"spec": {}}),
              "node requested token not bound to a pod")
    admin.post(f"{NS}/serviceaccounts", json={"apiVersion": "v1", "kind": "ServiceAccount",
                                              "metadata": {"name": "other"}}).raise_for_status()
    forbidden(node.post(f"{NS}/serviceaccounts/other/token", json=body), "no relationship found")


def test_node_changes_only_itself(node: httpx.Client) -> None:
    merge = {"content-type": "application/merge-patch+json"}
    r = node.patch(f"/api/v1/nodes/{NODE}", json={"metadata": {"labels": {"zone": "z2"}}}, headers=merge)
    assert r.status_code == 200, r.text
    r = node.patch(f"/api/v1/nodes/{NODE}/status", json={"status": {"conditions": [
        {"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "ok"}]}}, headers=merge)
    assert r.status_code == 200, r.text
    forbidden(node.patch("/api/v1/nodes/n2", json={"metadata": {"labels": {"x": "y"}}}, headers=merge),
              'nodes "n2" is forbidden: node "n1" is not allowed to modify node "n2"')
    forbidden(node.patch(f"/api/v1/nodes/{NODE}",
                         json={"metadata": {"labels": {"node-restriction.kubernetes.io/x": "y"}}}, headers=merge),
              'nodes "n1" is forbidden: is not allowed to modify labels: node-restriction.kubernetes.io/x')
    forbidden(node.patch(f"/api/v1/nodes/{NODE}", json={"spec": {"taints": [
        {"key": "k", "effect": "NoSchedule"}]}}, headers=merge), 'node "n1" is not allowed to modify taints')


def test_node_lease_is_its_own(node: httpx.Client) -> None:
    leases = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases"
    lease = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": NODE},
             "spec": {"holderIdentity": NODE, "leaseDurationSeconds": 40}}
    assert node.post(leases, json=lease).status_code == 201
    stored = node.get(f"{leases}/{NODE}").json()
    stored["spec"]["leaseDurationSeconds"] = 41
    r = node.put(f"{leases}/{NODE}", json=stored)
    assert r.status_code == 200, r.text
    forbidden(node.post(leases, json={**lease, "metadata": {"name": "n2"}}),
              "can only access node lease with the same name as the requesting node")
    forbidden(node.get(f"{leases}/n2"), "can only access node lease with the same name as the requesting node")
    forbidden(node.get("/apis/coordination.k8s.io/v1/namespaces/default/leases/n1"),
              'can only access leases in the "kube-node-lease" system namespace')


def test_pods_the_node_may_write(node: httpx.Client) -> None:
    merge = {"content-type": "application/merge-patch+json"}
    r = node.patch(f"{NS}/pods/mine/status", json={"status": {"phase": "Running"}}, headers=merge)
    assert r.status_code == 200 and r.json()["status"]["phase"] == "Running", r.text
    forbidden(node.patch(f"{NS}/pods/theirs/status", json={"status": {"phase": "Running"}}, headers=merge),
              'node "n1" can only update pod status for pods with spec.nodeName set to itself')
    forbidden(node.patch(f"{NS}/pods/mine/status", json={"metadata": {"labels": {"app": "x"}}}, headers=merge),
              'node "n1" cannot update labels through pod status')
    forbidden(node.delete(f"{NS}/pods/theirs"),
              'pods "Unknown" is forbidden: node "n1" can only delete pods with spec.nodeName set to itself')
    forbidden(node.post(f"{NS}/pods/theirs/eviction", json={"apiVersion": "policy/v1", "kind": "Eviction",
                                                            "metadata": {"name": "theirs"}}),
              'pods "theirs" is forbidden: node n1 can only evict pods with spec.nodeName set to itself')
    forbidden(node.post(f"{NS}/pods", json=pod("made", NODE)),
              'pod does not have "kubernetes.io/config.mirror" annotation, node "n1" can only create mirror pods')
    r = node.delete(f"{NS}/pods/mine", params={"gracePeriodSeconds": "0"})
    assert r.status_code == 200, r.text


def test_node_group_binding_is_gone(admin: httpx.Client) -> None:
    binding = admin.get("/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/system:node").json()
    assert not binding.get("subjects")
    review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": {
        "user": "system:node:n1", "groups": ["system:nodes", "system:authenticated"],
        "resourceAttributes": {"verb": "list", "resource": "secrets", "namespace": "default"}}}
    status = admin.post("/apis/authorization.k8s.io/v1/subjectaccessreviews", json=review).json()["status"]
    assert status["allowed"] is False and status["reason"] == "No Object name found"
