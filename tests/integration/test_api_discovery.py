"""Discovery and OpenAPI documents as clients fetch them over HTTPS."""

from __future__ import annotations

import httpx
import pytest

from k3p.apiserver.discovery import AGGREGATED_CONTENT_TYPE
from k3p.testing import K3pServer


@pytest.fixture(scope="module")
def http(tmp_path_factory: pytest.TempPathFactory):
    server = K3pServer(tmp_path_factory.mktemp("discovery")).start()
    with httpx.Client(base_url=server.url, verify=server.ssl_context(), timeout=10) as c:
        yield c
    server.stop()


def test_aggregated_discovery_has_the_exact_content_type(http: httpx.Client) -> None:
    for path in ("/api", "/apis"):
        r = http.get(path, headers={"accept": AGGREGATED_CONTENT_TYPE + ",application/json"})
        assert r.headers["content-type"] == AGGREGATED_CONTENT_TYPE
        assert r.json()["kind"] == "APIGroupDiscoveryList"
    groups = {g["metadata"]["name"] for g in http.get("/apis", headers={"accept": AGGREGATED_CONTENT_TYPE}).json()[
        "items"]}
    assert {"apps", "batch", "rbac.authorization.k8s.io", "apiextensions.k8s.io"} <= groups


def test_legacy_discovery(http: httpx.Client) -> None:
    assert http.get("/api").json()["versions"] == ["v1"]
    names = {g["name"] for g in http.get("/apis").json()["groups"]}
    assert "apps" in names
    resources = {r["name"] for r in http.get("/apis/apps/v1").json()["resources"]}
    assert {"deployments", "deployments/scale", "deployments/status"} <= resources
    assert http.get("/api/v1/").status_code == 200  # trailing slash


def test_openapi_index_documents_etag_and_stale_hash_redirect(http: httpx.Client) -> None:
    index = http.get("/openapi/v3").json()["paths"]
    url = index["apis/apps/v1"]["serverRelativeURL"]
    r = http.get(url)
    assert r.status_code == 200
    assert "io.k8s.api.apps.v1.Deployment" in r.json()["components"]["schemas"]
    etag = r.headers["etag"]
    assert http.get(url, headers={"if-none-match": etag}).status_code == 304
    stale = http.get("/openapi/v3/apis/apps/v1?hash=0000")
    assert stale.status_code == 301 and stale.headers["location"] == url
