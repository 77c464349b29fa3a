"""Legacy and aggregated discovery documents."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from k3p.apiserver import discovery
from k3p.apiserver.discovery import (
    AGGREGATED_CONTENT_TYPE,
    DiscoveryCache,
    aggregated_discovery,
    api_group,
    api_group_list,
    api_resource_list,
    api_versions,
    storage_version_hash,
    wants_aggregated,
)
from k3p.apiserver.registry import ResourceType, builtin_registry

CLIENT_GO_ACCEPT = (
    "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,"
    "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json"
)


def crontab(version: str = "v1", **extra: object) -> ResourceType:
    return ResourceType(group="stable.example.com", version=version, resource="crontabs", kind="CronTab",
                        singular="crontab", namespaced=True, short_names=("ct",), categories=("all",),
                        verbs=("delete", "deletecollection", "get", "list", "patch", "create", "update", "watch"),
                        subresources=("status", "scale"), custom=True, **extra)


def test_content_type_constant() -> None:
    assert AGGREGATED_CONTENT_TYPE == "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"


@pytest.mark.parametrize(("accept", "expected"), [
    (CLIENT_GO_ACCEPT, True),
    ("application/json; g=apidiscovery.k8s.io; v=v2; as=APIGroupDiscoveryList", True),
    ("application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList;q=0", False),
    ("application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json", False),
    ("application/json, */*", False),
    ("", False),
    (None, False),
])
def test_wants_aggregated(accept, expected) -> None:
    assert wants_aggregated(accept) is expected


def test_api_versions() -> None:
    assert api_versions() == {"kind": "APIVersions", "versions": ["v1"]}
    doc = api_versions("10.0.0.1:6443")
    assert doc["serverAddressByClientCIDRs"] == [{"clientCIDR": "0.0.0.0/0", "serverAddress": "10.0.0.1:6443"}]


def test_group_list_and_group() -> None:
    registry = builtin_registry()
    doc = api_group_list(registry)
    assert doc["kind"] == "APIGroupList"
    names = [g["name"] for g in doc["groups"]]
    assert "" not in names
    assert names[0] == "apps"
    autoscaling = next(g for g in doc["groups"] if g["name"] == "autoscaling")
    assert autoscaling["versions"] == [{"groupVersion": "autoscaling/v2", "version": "v2"},
                                       {"groupVersion": "autoscaling/v1", "version": "v1"}]
    assert autoscaling["preferredVersion"] == {"groupVersion": "autoscaling/v2", "version": "v2"}
    assert api_group(registry, "batch") == {
        "kind": "APIGroup", "apiVersion": "v1", "name": "batch",
        "versions": [{"groupVersion": "batch/v1", "version": "v1"}],
        "preferredVersion": {"groupVersion": "batch/v1", "version": "v1"},
    }
    assert api_group(registry, "nope.io") is None
    assert api_group(registry, "") is None


def test_core_resource_list_like_kube() -> None:
    doc = api_resource_list(builtin_registry(), "", "v1")
    assert "apiVersion" not in doc
    assert doc["kind"] == "APIResourceList" and doc["groupVersion"] == "v1"
    by_name = {r["name"]: r for r in doc["resources"]}
    names = [r["name"] for r in doc["resources"]]
    assert names == sorted(names)
    assert by_name["pods"] == {
        "name": "pods", "singularName": "pod", "namespaced": True, "kind": "Pod",
        "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"],
        "shortNames": ["po"], "categories": ["all"], "storageVersionHash": "xPOwRZ+Yhw8=",
    }
    assert by_name["pods/eviction"] == {"name": "pods/eviction", "singularName": "", "namespaced": True,
                                        "group": "policy", "version": "v1", "kind": "Eviction", "verbs": ["create"]}
    assert by_name["pods/log"]["verbs"] == ["get"]
    assert by_name["pods/exec"]["kind"] == "PodExecOptions"
    assert by_name["pods/status"] == {"name": "pods/status", "singularName": "", "namespaced": True, "kind": "Pod",
                                      "verbs": ["get", "patch", "update"]}
    assert by_name["bindings"] == {"name": "bindings", "singularName": "binding", "namespaced": True,
                                   "kind": "Binding", "verbs": ["create"]}
    assert by_name["endpoints"]["singularName"] == "endpoints"
    assert by_name["serviceaccounts/token"]["group"] == "authentication.k8s.io"
    assert by_name["namespaces/finalize"]["verbs"] == ["update"]
    assert "pods/scale" not in by_name


def test_group_resource_list() -> None:
    doc = api_resource_list(builtin_registry(), "apps", "v1")
    assert doc["apiVersion"] == "v1" and doc["groupVersion"] == "apps/v1"
    by_name = {r["name"]: r for r in doc["resources"]}
    assert by_name["deployments"]["storageVersionHash"] == "8aSe+NMegvE="
    assert by_name["deployments/scale"] == {"name": "deployments/scale", "singularName": "", "namespaced": True,
                                            "group": "autoscaling", "version": "v1", "kind": "Scale",
                                            "verbs": ["get", "patch", "update"]}
    assert api_resource_list(builtin_registry(), "apps", "v2") is None


def test_storage_version_hash_follows_shared_storage() -> None:
    registry = builtin_registry()
    # Values a v1.32 server reports: both event APIs store core v1 Events, both HPA versions store v2.
    assert storage_version_hash(registry.get("", "v1", "events")) == "r2yiGXH7wu8="
    assert storage_version_hash(registry.get("events.k8s.io", "v1", "events")) == "r2yiGXH7wu8="
    for version in ("v1", "v2"):
        assert storage_version_hash(registry.get("autoscaling", version, "horizontalpodautoscalers")) == "qwQve8ut294="


def test_aggregated_core_document() -> None:
    doc = aggregated_discovery(builtin_registry(), legacy=True)
    assert doc["kind"] == "APIGroupDiscoveryList"
    assert doc["apiVersion"] == "apidiscovery.k8s.io/v2"
    assert doc["metadata"] == {}
    [core] = doc["items"]
    assert core["metadata"] == {"creationTimestamp": None}
    [v1] = core["versions"]
    assert v1["version"] == "v1" and v1["freshness"] == "Current"
    pods = next(r for r in v1["resources"] if r["resource"] == "pods")
    assert pods["responseKind"] == {"group": "", "version": "v1", "kind": "Pod"}
    assert pods["scope"] == "Namespaced"
    assert pods["singularResource"] == "pod"
    assert pods["shortNames"] == ["po"] and pods["categories"] == ["all"]
    subs = {s["subresource"]: s for s in pods["subresources"]}
    assert set(subs) == {"attach", "binding", "ephemeralcontainers", "eviction", "exec", "log", "portforward",
                         "status"}
    assert subs["eviction"]["responseKind"] == {"group": "policy", "version": "v1", "kind": "Eviction"}
    assert subs["status"]["verbs"] == ["get", "patch", "update"]
    nodes = next(r for r in v1["resources"] if r["resource"] == "nodes")
    assert nodes["scope"] == "Cluster"
    secrets = next(r for r in v1["resources"] if r["resource"] == "secrets")
    assert "shortNames" not in secrets and "subresources" not in secrets


def test_aggregated_groups_document() -> None:
    registry = builtin_registry()
    registry.set_resource_versions("stable.example.com", "crontabs", [crontab("v1"), crontab("v1beta1")])
    doc = aggregated_discovery(registry, legacy=False)
    names = [item["metadata"]["name"] for item in doc["items"]]
    assert "" not in names
    assert names[0] == "apps" and names[-1] == "stable.example.com"
    assert all(item["metadata"]["creationTimestamp"] is None for item in doc["items"])
    autoscaling = doc["items"][names.index("autoscaling")]
    assert [v["version"] for v in autoscaling["versions"]] == ["v2", "v1"]
    custom = doc["items"][-1]
    assert [v["version"] for v in custom["versions"]] == ["v1", "v1beta1"]
    [res] = custom["versions"][0]["resources"]
    assert res["responseKind"] == {"group": "stable.example.com", "version": "v1", "kind": "CronTab"}
    assert res["shortNames"] == ["ct"]
    assert [s["subresource"] for s in res["subresources"]] == ["scale", "status"]
    assert res["subresources"][0]["responseKind"] == {"group": "autoscaling", "version": "v1", "kind": "Scale"}
    deployments = next(r for r in doc["items"][0]["versions"][0]["resources"] if r["resource"] == "deployments")
    assert deployments["responseKind"] == {"group": "apps", "version": "v1", "kind": "Deployment"}
    reviews = doc["items"][names.index("authorization.k8s.io")]["versions"][0]["resources"]
    assert all(r["verbs"] == ["create"] for r in reviews)


def test_cache_rebuilds_when_registry_changes() -> None:
    registry = builtin_registry()
    cache = DiscoveryCache(registry)
    body, etag = cache.aggregated(legacy=False)
    assert cache.aggregated(legacy=False) == (body, etag)
    assert len(etag) == 128 and etag == etag.upper()
    assert json.loads(body) == aggregated_discovery(registry, legacy=False)
    assert cache.resource_list("stable.example.com", "v1") is None
    registry.add(crontab())
    body2, etag2 = cache.aggregated(legacy=False)
    assert etag2 != etag and b"crontabs" in body2
    assert json.loads(cache.resource_list("stable.example.com", "v1")[0])["groupVersion"] == "stable.example.com/v1"
    assert json.loads(cache.group("stable.example.com")[0])["name"] == "stable.example.com"
    assert b"stable.example.com" in cache.group_list()[0]
    assert cache.group("nope.io") is None


# --- kubectl against the documents -----------------------------------------------------------

class _Handler(BaseHTTPRequestHandler):
    registry = builtin_registry()
    accepts: list[str] = []

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
        accept = self.headers.get("Accept")
        self.accepts.append(f"{path} {accept}")
        if path == "/version":
            return self._send(json.dumps({"major": "1", "minor": "32", "gitVersion": "v1.32.4+k3p1",
                                          "platform": "linux/amd64"}).encode())
        if path in ("/api", "/apis") and wants_aggregated(accept):
            doc = aggregated_discovery(self.registry, legacy=path == "/api")
            return self._send(discovery.encode(doc), AGGREGATED_CONTENT_TYPE)
        if path == "/api":
            return self._send(discovery.encode(api_versions()))
        if path == "/apis":
            return self._send(discovery.encode(api_group_list(self.registry)))
        parts = path.strip("/").split("/")
        doc = None
        if parts[0] == "api" and len(parts) == 2:
            doc = api_resource_list(self.registry, "", parts[1])
        elif parts[0] == "apis" and len(parts) == 3:
            doc = api_resource_list(self.registry, parts[1], parts[2])
        if doc is None:
            return self._send(b'{"kind":"Status","apiVersion":"v1","status":"Failure","code":404}', code=404)
        return self._send(discovery.encode(doc))


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


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
def test_kubectl_api_resources_reads_aggregated_discovery(tmp_path: Path) -> None:
    _Handler.registry = builtin_registry()
    _Handler.registry.add(crontab())
    _Handler.accepts = []
    with _serve() as url:
        out = _kubectl(url, tmp_path, "api-resources")
    assert any("apidiscovery.k8s.io" in (a or "") for a in _Handler.accepts if a.startswith("/apis "))
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "SHORTNAMES", "APIVERSION", "NAMESPACED", "KIND"]
    rows = {tuple(line.split()) for line in lines[1:]}
    assert ("pods", "po", "v1", "true", "Pod") in rows
    assert ("deployments", "deploy", "apps/v1", "true", "Deployment") in rows
    assert ("horizontalpodautoscalers", "hpa", "autoscaling/v2", "true", "HorizontalPodAutoscaler") in rows
    assert ("customresourcedefinitions", "crd,crds", "apiextensions.k8s.io/v1", "false",
            "CustomResourceDefinition") in rows
    assert ("crontabs", "ct", "stable.example.com/v1", "true", "CronTab") in rows
    assert ("secrets", "v1", "true", "Secret") in rows
    assert len(rows) == len({(rt.group, rt.resource) for rt in _Handler.registry})
