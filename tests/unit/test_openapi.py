"""The /openapi/v3 index and per group-version documents."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from k3p.apiserver import crd as crdmod
from k3p.apiserver import discovery
from k3p.apiserver.openapi import OpenAPIV3, document_path
from k3p.apiserver.registry import Registry, builtin_registry

CRONTAB_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "crontabs.stable.example.com"},
    "spec": {
        "group": "stable.example.com",
        "scope": "Namespaced",
        "names": {"plural": "crontabs", "kind": "CronTab", "shortNames": ["ct"]},
        "versions": [{
            "name": "v1", "served": True, "storage": True,
            "subresources": {"status": {}},
            "schema": {"openAPIV3Schema": {
                "type": "object",
                "description": "A cron tab.",
                "properties": {
                    "spec": {"type": "object", "description": "What to run when.", "properties": {
                        "cronSpec": {"type": "string", "description": "The schedule."},
                        "replicas": {"type": "integer"}}},
                    "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                },
            }},
        }],
    },
}


def with_crontab(registry: Registry | None = None, crd: dict[str, Any] = CRONTAB_CRD) -> Registry:
    registry = registry or builtin_registry()
    registry.set_resource_versions("stable.example.com", "crontabs", crdmod.resource_types(crd))
    return registry


def docs(api: OpenAPIV3) -> dict[str, dict[str, Any]]:
    return {key: json.loads(api.document_by_path(key)[0]) for key in api.index()["paths"]}


@pytest.fixture(scope="module")
def served() -> tuple[OpenAPIV3, dict[str, dict[str, Any]]]:
    api = OpenAPIV3(with_crontab())
    return api, docs(api)


def walk(node: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield key, value
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


def test_index_lists_every_group_version_with_its_hash(served) -> None:
    api, _ = served
    index = api.index()
    assert set(index) == {"paths"}
    expected = {document_path(g.name, v) for g in api.registry.groups() for v in g.versions}
    assert set(index["paths"]) == expected
    assert {"api/v1", "apis/apps/v1", "apis/autoscaling/v1", "apis/autoscaling/v2",
            "apis/stable.example.com/v1"} <= expected
    for key, entry in index["paths"].items():
        url = entry["serverRelativeURL"]
        match = re.fullmatch(r"/openapi/v3/(.+)\?hash=([0-9A-F]{128})", url)
        assert match and match.group(1) == key
        body, digest = api.document_by_path(key)
        assert digest == match.group(2) == hashlib.sha512(body).hexdigest().upper()
    assert json.loads(api.index_bytes()) == index


def test_unknown_document_is_a_key_error() -> None:
    api = OpenAPIV3(builtin_registry())
    for bad in ("apis/apps/v2", "apis/nope.io/v1", "api/v2", "foo", "apis/apps"):
        with pytest.raises(KeyError):
            api.document_by_path(bad)


def test_documents_are_openapi_3_0_with_local_refs(served) -> None:
    _, documents = served
    for key, doc in documents.items():
        assert doc["openapi"] == "3.0.0"
        assert doc["info"]["version"].startswith("v1.32")
        components = doc["components"]["schemas"]
        for name, value in walk(doc):
            if name == "$ref" and isinstance(value, str):  # JSONSchemaProps has a "$ref" property
                assert value.startswith("#/components/schemas/"), (key, value)
                assert value.removeprefix("#/components/schemas/") in components, (key, value)
            if name == "type":
                # Schema types only: OpenAPI 3.0 has no type lists and no "null".
                assert isinstance(value, str | dict) and value != "null", (key, value)
        assert "$defs" not in json.dumps(doc)


def test_components_carry_gvk_and_no_invented_enums(served) -> None:
    _, documents = served
    apps = documents["apis/apps/v1"]["components"]["schemas"]
    deployment = apps["io.k8s.api.apps.v1.Deployment"]
    assert {"group": "apps", "kind": "Deployment", "version": "v1"} in deployment["x-kubernetes-group-version-kind"]
    assert deployment["type"] == "object"
    assert "enum" not in deployment["properties"]["apiVersion"]
    assert deployment["properties"]["spec"]["allOf"] == [
        {"$ref": "#/components/schemas/io.k8s.api.apps.v1.DeploymentSpec"}]
    assert deployment["properties"]["spec"]["description"]
    strategy = apps["io.k8s.api.apps.v1.DeploymentSpec"]["properties"]["strategy"]
    assert strategy["x-kubernetes-patch-strategy"] == "retainKeys"
    containers = apps["io.k8s.api.core.v1.PodSpec"]["properties"]["containers"]
    assert containers["x-kubernetes-patch-merge-key"] == "name"
    int_or_string = apps["io.k8s.apimachinery.pkg.util.intstr.IntOrString"]
    assert int_or_string["format"] == "int-or-string"
    assert sorted(o["type"] for o in int_or_string["oneOf"]) == ["integer", "string"]
    assert "io.k8s.api.autoscaling.v1.Scale" in apps


def test_every_resource_has_explainable_paths(served) -> None:
    api, documents = served
    for rt in api.registry:
        doc = documents[document_path(rt.group, rt.version)]
        prefix = f"/apis/{rt.group}/{rt.version}" if rt.group else f"/api/{rt.version}"
        collection = (f"{prefix}/namespaces/{{namespace}}/{rt.resource}" if rt.namespaced
                      else f"{prefix}/{rt.resource}")
        gvk = {"group": rt.group, "version": rt.version, "kind": rt.kind}
        ops = doc["paths"][collection]
        method = "get" if "list" in rt.verbs else "post"
        assert ops[method]["x-kubernetes-group-version-kind"] == gvk, rt
        # kubectl explain looks the GVK up in the components' GVK lists.
        component_gvks = [g for schema in doc["components"]["schemas"].values()
                          for g in schema.get("x-kubernetes-group-version-kind", ())]
        assert gvk in component_gvks, rt


def supports_query_param(doc: dict[str, Any], gvk: dict[str, str], param: str) -> bool:
    """What kubectl's queryParamVerifierV3 does: the first PATCH of the GVK must list the param."""
    for path in doc["paths"].values():
        op = path.get("patch")
        if not op or op.get("x-kubernetes-group-version-kind") != gvk:
            continue
        return any(p.get("name") == param for p in op.get("parameters", ()))
    return False


def test_patch_operations_offer_server_side_field_validation(served) -> None:
    api, documents = served
    for rt in api.registry:
        if "patch" not in rt.verbs:
            continue
        doc = documents[document_path(rt.group, rt.version)]
        gvk = {"group": rt.group, "version": rt.version, "kind": rt.kind}
        assert supports_query_param(doc, gvk, "fieldValidation"), rt
        assert not supports_query_param(doc, gvk, "noSuchParam")


def test_strategic_merge_patch_for_builtins_only(served) -> None:
    _, documents = served
    builtin = documents["apis/apps/v1"]["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]
    assert "application/strategic-merge-patch+json" in builtin["patch"]["requestBody"]["content"]
    assert "application/apply-patch+yaml" in builtin["patch"]["requestBody"]["content"]
    custom = documents["apis/stable.example.com/v1"]["paths"][
        "/apis/stable.example.com/v1/namespaces/{namespace}/crontabs/{name}"]
    content = custom["patch"]["requestBody"]["content"]
    assert "application/strategic-merge-patch+json" not in content
    assert "application/merge-patch+json" in content


def test_subresource_and_create_only_paths(served) -> None:
    _, documents = served
    core = documents["api/v1"]["paths"]
    assert core["/api/v1/namespaces/{namespace}/pods/{name}/status"]["patch"][
        "x-kubernetes-group-version-kind"] == {"group": "", "version": "v1", "kind": "Pod"}
    assert core["/api/v1/namespaces/{namespace}/pods/{name}/eviction"]["post"][
        "x-kubernetes-group-version-kind"] == {"group": "policy", "version": "v1", "kind": "Eviction"}
    assert core["/api/v1/namespaces/{namespace}/pods/{name}/exec"]["get"]["x-kubernetes-action"] == "connect"
    log = core["/api/v1/namespaces/{namespace}/pods/{name}/log"]["get"]
    assert {p["name"] for p in log["parameters"]} >= {"container", "follow", "tailLines"}
    assert "/api/v1/pods" in core  # list across namespaces
    scale = documents["apis/apps/v1"]["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}/scale"]
    assert scale["get"]["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/io.k8s.api.autoscaling.v1.Scale"}
    reviews = documents["apis/authorization.k8s.io/v1"]["paths"]
    assert set(reviews["/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"]) == {"post", "parameters"}
    assert "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews/{name}" not in reviews


def test_custom_resource_schema(served) -> None:
    _, documents = served
    doc = documents["apis/stable.example.com/v1"]
    schemas = doc["components"]["schemas"]
    crontab = schemas["com.example.stable.v1.CronTab"]
    assert crontab["x-kubernetes-group-version-kind"] == [
        {"group": "stable.example.com", "kind": "CronTab", "version": "v1"}]
    assert crontab["description"] == "A cron tab."
    assert crontab["properties"]["spec"]["properties"]["cronSpec"]["description"] == "The schedule."
    assert crontab["properties"]["metadata"]["allOf"] == [
        {"$ref": "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"}]
    assert crontab["properties"]["apiVersion"]["type"] == "string"
    assert crontab["properties"]["apiVersion"]["description"]
    assert schemas["com.example.stable.v1.CronTabList"]["x-kubernetes-group-version-kind"] == [
        {"group": "stable.example.com", "kind": "CronTabList", "version": "v1"}]
    assert "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta" in schemas
    assert "io.k8s.api.core.v1.Pod" not in schemas


def test_openapi_spec_validator_accepts_documents(served) -> None:
    validation = pytest.importorskip("openapi_spec_validator.validation")
    _, documents = served
    for key in ("apis/apps/v1", "apis/stable.example.com/v1", "apis/autoscaling/v2"):
        errors = list(validation.OpenAPIV30SpecValidator(documents[key]).iter_errors())
        assert errors == [], (key, errors[:3])


def test_hash_stable_and_changes_only_where_the_registry_changes() -> None:
    api = OpenAPIV3(builtin_registry())
    before = api.index()["paths"]
    assert api.index()["paths"] == before
    assert OpenAPIV3(builtin_registry()).index()["paths"] == before
    body, digest = api.document("apps", "v1")
    assert api.document("apps", "v1") == (body, digest)

    with_crontab(api.registry)
    after = api.index()["paths"]
    assert "apis/stable.example.com/v1" in after
    assert {k: v for k, v in after.items() if k != "apis/stable.example.com/v1"} == before
    first = after["apis/stable.example.com/v1"]

    changed = json.loads(json.dumps(CRONTAB_CRD))
    changed["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["x"] = {
        "type": "string"}
    with_crontab(api.registry, changed)
    assert api.index()["paths"]["apis/stable.example.com/v1"] != first

    api.registry.set_resource_versions("stable.example.com", "crontabs", [])
    assert "apis/stable.example.com/v1" not in api.index()["paths"]
    with pytest.raises(KeyError):
        api.document("stable.example.com", "v1")


def test_generating_every_document_is_fast() -> None:
    builtin_registry()  # load the schema file outside the measurement
    start = time.perf_counter()
    api = OpenAPIV3(with_crontab())
    api.index()
    elapsed = time.perf_counter() - start
    assert elapsed < 1.0, f"generating all documents took {elapsed:.3f}s"
    total = sum(len(api.document_by_path(k)[0]) for k in api.index()["paths"])
    assert total < 8 * 1024 * 1024


# --- kubectl against the documents -----------------------------------------------------------

_APPLIED = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d", "namespace": "default"},
            "spec": {"selector": {"matchLabels": {"a": "b"}}, "template": {
                "metadata": {"labels": {"a": "b"}},
                "spec": {"containers": [{"name": "c", "image": "i"}, {"name": "s", "image": "j"}]}}}}
_LIVE = {**_APPLIED, "metadata": {**_APPLIED["metadata"], "resourceVersion": "5", "annotations": {
    "kubectl.kubernetes.io/last-applied-configuration": json.dumps(_APPLIED)}}}


class _Handler(BaseHTTPRequestHandler):
    registry: Registry = builtin_registry()
    api = OpenAPIV3(registry)
    posts: list[str] = []
    patches: list[tuple[str, dict[str, Any]]] = []

    def log_message(self, *args: object) -> None:  # keep test output quiet
        pass

    def _send(self, body: bytes, content_type: str = "application/json", code: int = 200) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        path = self.path.partition("?")[0].rstrip("/")
        if path == "/version":
            return self._send(b'{"major":"1","minor":"32","gitVersion":"v1.32.4+k3p1","platform":"linux/amd64"}')
        if path in ("/api", "/apis"):
            doc = discovery.aggregated_discovery(self.registry, legacy=path == "/api")
            return self._send(discovery.encode(doc), discovery.AGGREGATED_CONTENT_TYPE)
        if path == "/apis/apps/v1/namespaces/default/deployments/d":
            return self._send(json.dumps(_LIVE).encode())
        if path == "/openapi/v3":
            return self._send(self.api.index_bytes())
        if path.startswith("/openapi/v3/"):
            with contextlib.suppress(KeyError):
                return self._send(self.api.document_by_path(path.removeprefix("/openapi/v3/"))[0])
        return self._send(b'{"kind":"Status","apiVersion":"v1","status":"Failure","code":404}', code=404)

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.posts.append(self.path)
        self._send(body, code=201)

    def do_PATCH(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.patches.append((self.headers.get("Content-Type", ""), json.loads(body)))
        self._send(json.dumps(_LIVE).encode())


@contextlib.contextmanager
def _serve() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _kubectl(url: str, tmp_path: Path, *args: str) -> str:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "t",
        "clusters": [{"name": "t", "cluster": {"server": url}}],
        "users": [{"name": "t", "user": {"token": "t"}}],
        "contexts": [{"name": "t", "context": {"cluster": "t", "user": "t"}}],
    }))
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "HOME": str(tmp_path)}
    done = subprocess.run(["kubectl", "--cache-dir", str(tmp_path / "cache"), *args], env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


needs_kubectl = pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")


@pytest.fixture
def kubectl_server() -> Iterator[str]:
    _Handler.registry = with_crontab()
    _Handler.api = OpenAPIV3(_Handler.registry)
    _Handler.posts = []
    _Handler.patches = []
    with _serve() as url:
        yield url


@pytest.mark.slow
@needs_kubectl
def test_kubectl_explain(kubectl_server: str, tmp_path: Path) -> None:
    out = _kubectl(kubectl_server, tmp_path, "explain", "deployment.spec.strategy")
    assert "KIND:       Deployment" in out and "GROUP:      apps" in out
    assert "FIELD: strategy <DeploymentStrategy>" in out
    assert "rollingUpdate\t<RollingUpdateDeployment>" in out
    out = _kubectl(kubectl_server, tmp_path, "explain", "pods.spec.containers.ports.containerPort")
    assert "FIELD: containerPort <integer>" in out
    out = _kubectl(kubectl_server, tmp_path, "explain", "hpa", "--api-version", "autoscaling/v1")
    assert "VERSION:    v1" in out and "targetCPUUtilizationPercentage" not in out  # top level only
    out = _kubectl(kubectl_server, tmp_path, "explain", "crontabs.spec")
    assert "cronSpec\t<string>" in out and "The schedule." in out


@pytest.mark.slow
@needs_kubectl
def test_kubectl_uses_server_side_field_validation(kubectl_server: str, tmp_path: Path) -> None:
    # Two documents: a List would make kubectl validate on the client.
    manifest = tmp_path / "objects.yaml"
    manifest.write_text(yaml.safe_dump_all([
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d", "namespace": "default"},
         "spec": {"selector": {"matchLabels": {"a": "b"}}, "template": {
             "metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "c", "image": "i", "bogus": 1}]}}}},
        {"apiVersion": "stable.example.com/v1", "kind": "CronTab",
         "metadata": {"name": "c", "namespace": "default"}, "spec": {"cronSpec": "* * * * *"}}]))
    _kubectl(kubectl_server, tmp_path, "create", "-f", str(manifest))
    # Client-side validation would have refused the unknown field before sending anything.
    assert len(_Handler.posts) == 2
    assert all("fieldValidation=Strict" in p for p in _Handler.posts), _Handler.posts


@pytest.mark.slow
@needs_kubectl
def test_kubectl_apply_builds_strategic_merge_patch_from_the_schemas(kubectl_server: str, tmp_path: Path) -> None:
    manifest = tmp_path / "deployment.yaml"
    changed = json.loads(json.dumps(_APPLIED))
    changed["spec"]["template"]["spec"]["containers"] = [{"name": "c", "image": "i2"}]
    manifest.write_text(yaml.safe_dump(changed))
    _kubectl(kubectl_server, tmp_path, "apply", "-f", str(manifest))
    content_type, patch = _Handler.patches[0]
    assert content_type == "application/strategic-merge-patch+json"
    # The merge key and directives come from x-kubernetes-patch-merge-key in the v3 document.
    assert patch["spec"]["template"]["spec"]["$setElementOrder/containers"] == [{"name": "c"}]
    assert {"$patch": "delete", "name": "s"} in patch["spec"]["template"]["spec"]["containers"]
