"""Error bodies are byte-identical to kube-apiserver's: clients show them to their users as they are."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from k3p.testing import K3pServer

RECORDED = json.loads((Path(__file__).parent.parent / "data" / "kubernetes_status_bodies.json").read_text())
CM_URL = "/api/v1/namespaces/default/configmaps"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    s = K3pServer(tmp_path_factory.mktemp("status-bodies"), ["--disable-agent"]).start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def http(server: K3pServer):
    with httpx.Client(base_url=server.url, verify=server.ssl_context(), timeout=10) as c:
        yield c


def same(r: httpx.Response, code: int, name: str) -> None:
    assert r.status_code == code
    assert r.headers["content-type"] == "application/json"
    assert r.content == RECORDED[name].encode(), f"\n{r.content!r}\n{RECORDED[name].encode()!r}"


def test_not_found(http: httpx.Client) -> None:
    same(http.get("/api/v1/namespaces/default/pods/nope"), 404, "not_found_core")
    same(http.get("/apis/apps/v1/namespaces/default/deployments/web"), 404, "not_found_group")


def test_already_exists_and_conflict(http: httpx.Client) -> None:
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "keep"}, "data": {"v": "1"}}
    created = http.post(CM_URL, json=cm).json()
    same(http.post(CM_URL, json=cm), 409, "already_exists")
    stale = {**cm, "metadata": {"name": "keep", "resourceVersion": created["metadata"]["resourceVersion"]}}
    http.put(f"{CM_URL}/keep", json={**stale, "data": {"v": "2"}}).raise_for_status()
    same(http.put(f"{CM_URL}/keep", json={**stale, "data": {"v": "3"}}), 409, "conflict")


def test_forbidden(http: httpx.Client) -> None:
    same(http.get("/api/v1/namespaces/default/pods", headers={"Impersonate-User": "jane"}), 403, "forbidden")


def test_invalid(http: httpx.Client) -> None:
    bad = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "Bad_Name"}}
    same(http.post(CM_URL, json=bad), 422, "invalid")
