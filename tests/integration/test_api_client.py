"""The official kubernetes Python client, unmodified, against k3p; authentication and RBAC."""

from __future__ import annotations

import json
import ssl
import urllib.request
from pathlib import Path

import pytest
from kubernetes import client, utils, watch
from kubernetes.client.rest import ApiException

from k3p.pki import ensure_ca
from k3p.testing import K3pServer


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    s = K3pServer(tmp_path_factory.mktemp("pyclient"), args=["--watch-cache-size", "20"]).start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def api(server: K3pServer) -> client.ApiClient:
    return server.api_client()


def cm(name: str, **data: str) -> client.V1ConfigMap:
    return client.V1ConfigMap(metadata=client.V1ObjectMeta(name=name), data=data)


def test_typed_crud(api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)
    created = core.create_namespaced_config_map("default", cm("crud", a="1"))
    assert created.metadata.uid and created.metadata.resource_version
    assert core.read_namespaced_config_map("crud", "default").data == {"a": "1"}
    created.data = {"a": "2"}
    replaced = core.replace_namespaced_config_map("crud", "default", created)
    assert int(replaced.metadata.resource_version) > int(created.metadata.resource_version)
    patched = core.patch_namespaced_config_map("crud", "default", {"data": {"b": "3"}})
    assert patched.data == {"a": "2", "b": "3"}
    with pytest.raises(ApiException) as stale:
        core.replace_namespaced_config_map("crud", "default", created)  # old resourceVersion
    assert stale.value.status == 409
    core.delete_namespaced_config_map("crud", "default")
    with pytest.raises(ApiException) as gone:
        core.read_namespaced_config_map("crud", "default")
    assert gone.value.status == 404

    apps = client.AppsV1Api(api)
    dep = client.V1Deployment(
        metadata=client.V1ObjectMeta(name="pyweb"),
        spec=client.V1DeploymentSpec(
            replicas=2,
            selector=client.V1LabelSelector(match_labels={"app": "pyweb"}),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels={"app": "pyweb"}),
                spec=client.V1PodSpec(containers=[client.V1Container(name="c", image="busybox:1.35")]),
            ),
        ),
    )
    made = apps.create_namespaced_deployment("default", dep)
    assert made.spec.strategy.type == "RollingUpdate" and made.metadata.generation == 1
    scaled = apps.patch_namespaced_deployment_scale("pyweb", "default", {"spec": {"replicas": 4}})
    assert scaled.spec.replicas == 4
    assert apps.read_namespaced_deployment("pyweb", "default").metadata.generation == 2


def test_watch_replays_from_a_lists_resource_version(api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="replay")))
    rv = core.list_namespaced_config_map("replay").metadata.resource_version
    for i in range(3):
        core.create_namespaced_config_map("replay", cm(f"r{i}", i=str(i)))
    core.patch_namespaced_config_map("r0", "replay", {"data": {"i": "changed"}})
    # (the root-CA publisher also adds kube-root-ca.crt to every namespace, as in kube)
    seen = [(e["type"], e["object"].metadata.name)
            for e in watch.Watch().stream(core.list_namespaced_config_map, "replay", resource_version=rv,
                                          timeout_seconds=2)
            if e["object"].metadata.name != "kube-root-ca.crt"]
    assert seen == [("ADDED", "r0"), ("ADDED", "r1"), ("ADDED", "r2"), ("MODIFIED", "r0")]


def test_watch_from_a_resource_version_past_the_window_gets_410(api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="expire")))
    old = core.list_namespaced_config_map("expire").metadata.resource_version
    core.create_namespaced_config_map("expire", cm("churn"))
    for i in range(30):  # more changes than the server keeps (--watch-cache-size 20)
        core.patch_namespaced_config_map("churn", "expire", {"data": {"n": str(i)}})
    with pytest.raises(ApiException) as expired:
        for _ in watch.Watch().stream(core.list_namespaced_config_map, "expire", resource_version=old,
                                      timeout_seconds=2):
            pass
    assert expired.value.status == 410


def test_strategic_merge_patch_adds_a_second_service_port(api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)
    svc = client.V1Service(metadata=client.V1ObjectMeta(name="twoports"),
                           spec=client.V1ServiceSpec(selector={"app": "x"},
                                                     ports=[client.V1ServicePort(port=80, name="http")]))
    core.create_namespaced_service("default", svc)
    patched = core.patch_namespaced_service(
        "twoports", "default", {"spec": {"ports": [{"port": 443, "name": "https"}]}})
    assert sorted(p.port for p in patched.spec.ports) == [80, 443]
    assert patched.spec.cluster_ip.startswith("10.43.")


def test_create_from_yaml_multi_document(api: client.ApiClient, tmp_path: Path) -> None:
    manifest = tmp_path / "multi.yaml"
    manifest.write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: multi-a}\ndata: {k: v}\n---\n"
        "apiVersion: v1\nkind: Secret\nmetadata: {name: multi-b}\nstringData: {p: q}\n---\n"
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: multi-c}\nspec:\n  selector: {matchLabels: {a: b}}\n"
        "  template:\n    metadata: {labels: {a: b}}\n    spec: {containers: [{name: c, image: busybox:1.35}]}\n"
    )
    utils.create_from_yaml(api, str(manifest), namespace="default")
    core = client.CoreV1Api(api)
    assert core.read_namespaced_config_map("multi-a", "default").data == {"k": "v"}
    assert core.read_namespaced_secret("multi-b", "default").type == "Opaque"
    assert client.AppsV1Api(api).read_namespaced_deployment("multi-c", "default").spec.replicas == 1


# --- authentication and authorization ---------------------------------------------------------


def viewer_api(server: K3pServer, tmp_path: Path) -> client.ApiClient:
    """A client with a certificate for user "viewer", signed by the cluster's client CA."""
    from cryptography.hazmat.primitives import serialization

    ca = ensure_ca(server.data_dir / "server" / "tls", "client-ca", "unused")
    cert, key = ca.issue("viewer", ["viewers"], client=True)
    (tmp_path / "v.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "v.key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                       serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    cfg = client.Configuration()
    cfg.host = server.url
    cfg.ssl_ca_cert = str(server.ca_file)
    cfg.cert_file = str(tmp_path / "v.crt")
    cfg.key_file = str(tmp_path / "v.key")
    return client.ApiClient(cfg)


def test_view_user_can_read_but_not_write(server: K3pServer, api: client.ApiClient, tmp_path: Path) -> None:
    rbac = client.RbacAuthorizationV1Api(api)
    viewer = client.CoreV1Api(viewer_api(server, tmp_path))
    with pytest.raises(ApiException) as before:
        viewer.list_namespaced_config_map("default")
    assert before.value.status == 403
    assert json.loads(before.value.body)["message"] == (
        'configmaps is forbidden: User "viewer" cannot list resource "configmaps" in API group "" in the '
        'namespace "default"')
    rbac.create_cluster_role_binding(client.V1ClusterRoleBinding(
        metadata=client.V1ObjectMeta(name="viewer-view"),
        role_ref=client.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="ClusterRole", name="view"),
        subjects=[client.RbacV1Subject(kind="User", name="viewer", api_group="rbac.authorization.k8s.io")],
    ))
    viewer.list_namespaced_config_map("default")
    with pytest.raises(ApiException) as write:
        viewer.create_namespaced_config_map("default", cm("nope"))
    assert write.value.status == 403
    assert json.loads(write.value.body)["reason"] == "Forbidden"


def test_service_account_token_authenticates_with_its_bindings(server: K3pServer, api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)
    core.create_namespaced_service_account("default", client.V1ServiceAccount(
        metadata=client.V1ObjectMeta(name="robot")))
    client.RbacAuthorizationV1Api(api).create_namespaced_role_binding("default", client.V1RoleBinding(
        metadata=client.V1ObjectMeta(name="robot-edit"),
        role_ref=client.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="ClusterRole", name="edit"),
        subjects=[client.RbacV1Subject(kind="ServiceAccount", name="robot", namespace="default")],
    ))
    token = core.create_namespaced_service_account_token(
        "robot", "default", client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(audiences=[])),
    ).status.token
    cfg = client.Configuration()
    cfg.host = server.url
    cfg.ssl_ca_cert = str(server.ca_file)
    cfg.api_key = {"authorization": "Bearer " + token}
    robot = client.CoreV1Api(client.ApiClient(cfg))
    robot.create_namespaced_config_map("default", cm("from-robot"))
    with pytest.raises(ApiException) as other_ns:
        robot.list_namespaced_config_map("kube-system")
    assert other_ns.value.status == 403
    cfg.api_key = {"authorization": "Bearer " + token[:-4] + "AAAA"}
    with pytest.raises(ApiException) as forged:
        client.CoreV1Api(client.ApiClient(cfg)).list_namespaced_config_map("default")
    assert forged.value.status == 401


def test_no_credentials_get_401_except_probes(server: K3pServer) -> None:
    ctx = ssl.create_default_context(cafile=str(server.ca_file))
    for path in ("/api/v1/namespaces", "/apis", "/api", "/openapi/v3"):
        with pytest.raises(urllib.error.HTTPError) as denied:
            urllib.request.urlopen(server.url + path, context=ctx, timeout=5)
        assert denied.value.code == 401
        assert b'"reason":"Unauthorized"' in denied.value.read()
    for path in ("/version", "/readyz", "/livez", "/healthz"):
        with urllib.request.urlopen(server.url + path, context=ctx, timeout=5) as r:
            assert r.status == 200
