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
    r = http.post(CM_URL, content=json.dumps(big).encode(), headers=JSON)
    check(r, 413, "RequestEntityTooLarge")
    # the unread body ends the connection; the client is told, so it does not reuse it
    assert r.headers.get("connection") == "close"


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


YAML_HEADERS = {"content-type": "application/yaml"}
SCALE_URL = "/apis/apps/v1/namespaces/default/deployments/scaled/scale"


def test_negative_and_out_of_range_limit(http: httpx.Client) -> None:
    # kube pages only for a positive limit: zero or less lists everything
    r = http.get(CM_URL + "?limit=-5")
    assert r.status_code == 200, r.text
    assert "keep" in [o["metadata"]["name"] for o in r.json()["items"]]
    assert "continue" not in r.json()["metadata"]
    check(http.get(CM_URL + "?limit=99999999999999999999999"), 400, "BadRequest", "value out of range")
    token = "eyJ2IjoibWV0YS5rOHMuaW8vdjEiLCJydiI6MWU5OTksInN0YXJ0IjpudWxsfQ"  # {"rv":1e999,"start":null}
    check(http.get(CM_URL + f"?limit=1&continue={token}"), 400, "BadRequest", "continue key is not valid")


def test_body_nested_too_deep(http: httpx.Client) -> None:
    deep = b'{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"deep"},"x":' + b"[" * 10000 + b"]" * 10000 + b"}"
    check(http.post(CM_URL, content=deep, headers=JSON), 400, "BadRequest", "exceeded max depth")
    check(http.post(CM_URL, content=b"a: " + b"[" * 10000, headers=YAML_HEADERS), 400, "BadRequest",
          "exceeded max depth")
    check(http.patch(f"{CM_URL}/keep", content=b'{"a":' * 5000 + b"1" + b"}" * 5000,
                     headers={"content-type": "application/merge-patch+json"}), 400, "BadRequest", "exceeded max depth")


def test_lone_surrogates_become_replacement_characters(http: httpx.Client) -> None:
    # Go's JSON decoder turns a lone UTF-16 surrogate escape into U+FFFD
    body = b'{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"lone","labels":{"a":"b"}},' \
           b'"data":{"v":"x\\ud800y","\\udfff":"k"}}'
    r = http.post(CM_URL + "?dryRun=All", content=body, headers=JSON)
    assert r.status_code == 201, r.text
    assert r.json()["data"] == {"v": "x\ufffdy", "\ufffd": "k"}


def test_yaml_alias_cycle_and_billion_laughs(http: httpx.Client) -> None:
    cycle = b"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cycle}\ndata: &a {x: *a}\n"
    check(http.post(CM_URL, content=cycle, headers=YAML_HEADERS), 400, "BadRequest", "anchor 'a' value contains itself")
    lines = [b'a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"a{i}: &a{i} [".encode() + b",".join([f"*a{i - 1}".encode()] * 9) + b"]" for i in range(1, 9)]
    check(http.post(CM_URL, content=b"\n".join(lines), headers=YAML_HEADERS), 400, "BadRequest",
          "excessive aliasing")
    check(http.post(CM_URL, content=b"a: .nan\n", headers=YAML_HEADERS), 400, "BadRequest", "NaN")
    # timestamps and binary values are strings in JSON, as kube reads YAML
    body = b"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: tagged}\ndata: {when: 2001-12-14, b: !!binary aGk=}\n"
    r = http.post(CM_URL + "?dryRun=All", content=body, headers=YAML_HEADERS)
    assert r.status_code == 201 and r.json()["data"] == {"when": "2001-12-14", "b": "hi"}, r.text


def test_non_finite_numbers(http: httpx.Client) -> None:
    body = b'{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"nan","x":NaN}}'
    check(http.post(CM_URL, content=body, headers=JSON), 400, "BadRequest", "invalid character 'N'")
    body = b'{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"inf"},"x":1e999}'
    check(http.post(CM_URL, content=body, headers=JSON), 400, "BadRequest", "cannot unmarshal number 1e999")


@pytest.fixture(scope="module")
def pod(http: httpx.Client) -> str:
    http.post("/api/v1/namespaces/default/pods", json={
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "unbound"},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]}}).raise_for_status()
    return "/api/v1/namespaces/default/pods/unbound"


def test_binding_target_must_be_an_object(http: httpx.Client, pod: str) -> None:
    for target, what in (("node-a", "string"), (["node-a"], "array")):
        body = {"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "unbound"}, "target": target}
        check(http.post(f"{pod}/binding", json=body), 400, "BadRequest",
              f"cannot unmarshal {what} into Go struct field Binding.target of type v1.ObjectReference")
    body = {"apiVersion": "v1", "kind": "Binding", "metadata": "unbound", "target": {"name": "node-a"}}
    check(http.post("/api/v1/namespaces/default/bindings", json=body), 400, "BadRequest", "Binding.metadata")
    assert not http.get(pod).json()["spec"].get("nodeName")


@pytest.fixture(scope="module")
def deployment(http: httpx.Client) -> None:
    http.post("/apis/apps/v1/namespaces/default/deployments", json={
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "scaled"},
        "spec": {"selector": {"matchLabels": {"a": "b"}},
                 "template": {"metadata": {"labels": {"a": "b"}},
                              "spec": {"containers": [{"name": "c", "image": "busybox"}]}}}}).raise_for_status()


def test_apply_patch_on_scale(http: httpx.Client, deployment: None) -> None:
    apply = {"content-type": "application/apply-patch+yaml"}
    check(http.patch(SCALE_URL, content=b"spec: {replicas: 2}\n", headers=apply), 400, "BadRequest",
          "fieldManager: Required value")
    check(http.patch(SCALE_URL + "?fieldManager=t", content=b"- 1\n", headers=apply), 400, "BadRequest",
          "must be a JSON object")
    check(http.patch(SCALE_URL + "?fieldManager=t", content=b"apiVersion: autoscaling/v1\nkind: Scale\nspec: x\n",
                     headers=apply), 400, "BadRequest", "cannot unmarshal string into Go struct field Scale.spec")
    body = b"apiVersion: autoscaling/v1\nkind: Scale\nmetadata: {name: scaled}\nspec: {replicas: 3}\n"
    r = http.patch(SCALE_URL + "?fieldManager=t&force=true", content=body, headers=apply)
    assert r.status_code == 200 and r.json()["spec"]["replicas"] == 3, r.text
    assert http.get(SCALE_URL).json()["spec"]["replicas"] == 3


def test_scale_bodies_of_the_wrong_shape(http: httpx.Client, deployment: None) -> None:
    check(http.put(SCALE_URL, json={"spec": "x"}), 400, "BadRequest", "Go struct field Scale.spec of type v1.ScaleSpec")
    check(http.put(SCALE_URL, json=[1]), 400, "BadRequest", "not a Scale")
    check(http.patch(SCALE_URL, json={"spec": {"replicas": "2"}},
                     headers={"content-type": "application/merge-patch+json"}), 400, "BadRequest", "spec.replicas")


def test_unknown_field_named_beyond_latin1(http: httpx.Client) -> None:
    body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "named"}, "\u540d\u524d": 1, "a\nb": 2}
    r = http.post(CM_URL, json=body)
    # the object is stored, and so the answer is a success with the warnings as UTF-8 text
    assert r.status_code == 201, r.text
    warning = dict(r.headers.raw)[b"warning"].decode("utf-8")
    assert '299 - "unknown field \\"\u540d\u524d\\""' in warning and 'unknown field \\"a\\\\nb\\"' in warning
    assert "\n" not in warning
    assert http.get(f"{CM_URL}/named").status_code == 200
    http.delete(f"{CM_URL}/named").raise_for_status()


def test_null_fields_of_built_in_objects(http: httpx.Client) -> None:
    # Go decodes a null into a nil or zero field: none is stored, and no default trips on one
    body = {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "nulls", "labels": None},
            "spec": None}
    r = http.post("/api/v1/persistentvolumes?dryRun=All", json=body)
    assert r.status_code in (201, 422), r.text
    patch = {"metadata": False}
    check(http.patch(f"{CM_URL}/keep", json=patch, headers={"content-type": "application/merge-patch+json"}), 400,
          "BadRequest", "metadata")
    # free-form parts keep theirs, as Go keeps a RawExtension's bytes: a ControllerRevision's
    # data must read back exactly as written, or its controller sees a hash collision
    data = {"spec": {"template": {"metadata": {"creationTimestamp": None}}}}
    rev = {"apiVersion": "apps/v1", "kind": "ControllerRevision", "metadata": {"name": "nulls"},
           "data": data, "revision": 1}
    url = "/apis/apps/v1/namespaces/default/controllerrevisions"
    created = http.post(url, json=rev)
    assert created.status_code == 201, created.text
    try:
        assert http.get(f"{url}/nulls").json()["data"] == data
    finally:
        http.delete(f"{url}/nulls")


def test_table_with_unknown_include_object(http: httpx.Client) -> None:
    r = http.get(CM_URL + "?includeObject=Everything",
                 headers={"accept": "application/json;as=Table;v=v1;g=meta.k8s.io"})
    check(r, 400, "BadRequest", 'includeObject: Unsupported value: "Everything"')


def test_access_review_of_the_wrong_shape(http: httpx.Client) -> None:
    url = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"
    body = {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview", "spec": {}}
    check(http.post(url, json=body), 422, "Invalid", "exactly one of nonResourceAttributes or resourceAttributes")
    body["spec"] = True
    check(http.post(url, json=body), 400, "BadRequest", "cannot unmarshal bool")
    rules = {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectRulesReview", "spec": {"namespace": [1]}}
    check(http.post("/apis/authorization.k8s.io/v1/selfsubjectrulesreviews", json=rules), 400, "BadRequest",
          "cannot unmarshal array")


def test_resource_version_the_cache_has_not_reached(http: httpx.Client) -> None:
    r = http.get(CM_URL + "?resourceVersion=99999999999")
    assert r.status_code == 504, r.text
    assert r.json()["details"]["causes"][0]["reason"] == "ResourceVersionTooLarge"


def test_an_early_answer_does_not_reset_the_connection(server: K3pServer) -> None:
    # a 404 sent before the body was read: the client still gets it, and the connection serves on
    with httpx.Client(base_url=server.url, verify=server.ssl_context(), timeout=10,
                      limits=httpx.Limits(max_connections=1)) as c:
        for _ in range(3):
            check(c.post("/apis/apps/v1/nothere/x", content=b"x" * 400_000, headers=JSON), 404, "NotFound")
            assert c.get("/readyz").status_code == 200
