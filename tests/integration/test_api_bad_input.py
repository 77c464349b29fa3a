"""Bad requests get the right Status, the server keeps serving and nothing stored changes."""

from __future__ import annotations

import json

import httpx
import pytest

from k3p.testing import K3pServer

CM_URL = "/api/v1/namespaces/default/configmaps"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    s = K3pServer(tmp_path_factory.mktemp("badinput")).start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def http(server: K3pServer):
    with httpx.Client(base_url=server.url, verify=server.ssl_context(), timeout=10) as c:
        c.post(CM_URL, json={"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "keep"},
                             "data": {"v": "1"}}).raise_for_status()
        yield c


def stored(http: httpx.Client) -> dict:
    r = http.get(f"{CM_URL}/keep")
    r.raise_for_status()
    return r.json()


def check(r: httpx.Response, code: int, reason: str, fragment: str = "") -> dict:
    assert r.status_code == code, r.text
    body = r.json()
    assert body["kind"] == "Status" and body["status"] == "Failure"
    assert body["code"] == code and body["reason"] == reason, body
    assert fragment in body["message"], body["message"]
    return body


@pytest.fixture(autouse=True)
def unchanged(http: httpx.Client):
    before = stored(http)
    yield
    assert stored(http) == before
    assert http.get("/readyz").status_code == 200


JSON = {"content-type": "application/json"}


def test_malformed_json(http: httpx.Client) -> None:
    check(http.post(CM_URL, content=b'{"apiVersion": "v1", "kind": ', headers=JSON), 400, "BadRequest")
    check(http.put(f"{CM_URL}/keep", content=b"[1, 2", headers=JSON), 400, "BadRequest")


def test_malformed_yaml(http: httpx.Client) -> None:
    r = http.post(CM_URL, content=b"kind: ConfigMap\nmetadata: {name: [oops\n", headers={"content-type":
                                                                                        "application/yaml"})
    check(r, 400, "BadRequest", "yaml")


def test_unsupported_media_type(http: httpx.Client) -> None:
    check(http.post(CM_URL, content=b"<xml/>", headers={"content-type": "application/xml"}), 415,
          "UnsupportedMediaType")
    check(http.patch(f"{CM_URL}/keep", content=b"{}", headers={"content-type": "text/plain"}), 415,
          "UnsupportedMediaType")


def test_wrong_kind_for_the_url(http: httpx.Client) -> None:
    body = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "x"}}
    check(http.post(CM_URL, json=body), 400, "BadRequest", "Secret")
    body = {"apiVersion": "apps/v1", "kind": "ConfigMap", "metadata": {"name": "x"}}
    check(http.post(CM_URL, json=body), 400, "BadRequest", "apps/v1")


def test_unknown_fields_under_strict_and_warn(http: httpx.Client) -> None:
    body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "strict", "bogus": 1}, "extra": True}
    r = http.post(CM_URL + "?fieldValidation=Strict", json=body)
    check(r, 400, "BadRequest", 'strict decoding error: unknown field "metadata.bogus", unknown field "extra"')
    r = http.post(CM_URL + "?fieldValidation=Warn&dryRun=All", json=body)
    assert r.status_code == 201 and 'unknown field \\"extra\\"' in r.headers["warning"]
    check(http.post(CM_URL + "?fieldValidation=Sometimes", json=body), 400, "BadRequest", "fieldValidation")


def test_invalid_names(http: httpx.Client) -> None:
    body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "Not_Valid"}}
    status = check(http.post(CM_URL, json=body), 422, "Invalid", 'ConfigMap "Not_Valid" is invalid')
    assert status["details"]["causes"][0]["field"] == "metadata.name"
    body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {}}
    check(http.post(CM_URL, json=body), 422, "Invalid", "name or generateName is required")


def test_wrong_types_are_rejected(http: httpx.Client) -> None:
    body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "typed"}, "data": {"a": 1}}
    check(http.post(CM_URL, json=body), 400, "BadRequest", "cannot unmarshal")


def test_oversized_body(http: httpx.Client) -> None:
    big = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "big"}, "data": {"a": "x" * (3 << 20)}}
    check(http.post(CM_URL, content=json.dumps(big).encode(), headers=JSON), 413, "RequestEntityTooLarge")


def test_json_patch_against_missing_path(http: httpx.Client) -> None:
    patch = [{"op": "replace", "path": "/data/missing/deeper", "value": "x"}]
    check(http.patch(f"{CM_URL}/keep", json=patch, headers={"content-type": "application/json-patch+json"}),
          422, "Invalid")
    test_op = [{"op": "test", "path": "/data/v", "value": "not-this"}]
    check(http.patch(f"{CM_URL}/keep", json=test_op, headers={"content-type": "application/json-patch+json"}),
          422, "Invalid")


def test_not_found_and_method_not_allowed(http: httpx.Client) -> None:
    check(http.get(f"{CM_URL}/nope"), 404, "NotFound", 'configmaps "nope" not found')
    check(http.get("/apis/nothere.example.com/v1/things"), 404, "NotFound")
    check(http.put("/apis/authorization.k8s.io/v1/selfsubjectaccessreviews/x", json={}), 405,
          "MethodNotAllowed")


def test_conflicts(http: httpx.Client) -> None:
    body = stored(http)
    body["metadata"]["resourceVersion"] = "1"
    check(http.put(f"{CM_URL}/keep", json=body), 409, "Conflict", "the object has been modified")
    body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "keep"}}
    check(http.post(CM_URL, json=body), 409, "AlreadyExists", 'configmaps "keep" already exists')


def test_namespace_that_does_not_exist(http: httpx.Client) -> None:
    body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}}
    check(http.post("/api/v1/namespaces/ghost/configmaps", json=body), 404, "NotFound", 'namespaces "ghost"')
