"""ServiceAccount tokens live only as long as what they name, and only for their audiences.

As kube-apiserver checks them: the ServiceAccount must still exist with the token's UID,
a bound Pod, Secret or Node too, and the token's audiences must meet the API audiences
(or those a TokenReview asks for). TokenReview gives the same answer as the API.
"""

from __future__ import annotations

import base64
import json
import ssl
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from k3p.testing import K3pServer

ISSUER = "https://issuer.k3p.test"
API_AUDIENCES = [ISSUER, "k3p-api"]
NS = "default"
SA_URL = f"/api/v1/namespaces/{NS}/serviceaccounts"
POD_URL = f"/api/v1/namespaces/{NS}/pods"
REVIEW_URL = "/apis/authentication.k8s.io/v1/tokenreviews"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[K3pServer]:
    # the issuer and audiences from config.yaml: the file path works as the flags do
    config = f"service-account-issuer: {ISSUER}\napi-audiences: {','.join(API_AUDIENCES)}\n"
    s = K3pServer(tmp_path_factory.mktemp("satokens"), config=config)
    try:
        # stopped even when it never gets ready
        yield s.start()
    finally:
        s.stop()


@pytest.fixture(scope="module")
def admin(server: K3pServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, verify=server.ssl_context(), timeout=10) as c:
        yield c


@pytest.fixture(scope="module")
def bearer(server: K3pServer) -> Iterator[httpx.Client]:
    # the CA only: no client certificate, so the bearer token is the only credential
    tls = ssl.create_default_context(cafile=str(server.ca_file))
    with httpx.Client(base_url=server.url, verify=tls, timeout=10) as c:
        yield c


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def create(admin: httpx.Client, url: str, obj: dict[str, Any]) -> dict[str, Any]:
    r = admin.post(url, json=obj)
    assert r.status_code == 201, r.text
    return r.json()


def service_account(admin: httpx.Client, name: str) -> dict[str, Any]:
    return create(admin, SA_URL, {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}})


def pod(admin: httpx.Client, name: str, sa: str, node: str = "") -> dict[str, Any]:
    spec: dict[str, Any] = {"serviceAccountName": sa, "containers": [{"name": "c", "image": "busybox"}]}
    if node:
        spec["nodeName"] = node
    return create(admin, POD_URL, {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec})


def request_token(admin: httpx.Client, sa: str, **spec: Any) -> httpx.Response:
    return admin.post(f"{SA_URL}/{sa}/token", json={
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec})


def token(admin: httpx.Client, sa: str, **spec: Any) -> str:
    r = request_token(admin, sa, **spec)
    assert r.status_code == 201, r.text
    return r.json()["status"]["token"]


def bound_to(obj: dict[str, Any]) -> dict[str, str]:
    m = obj["metadata"]
    return {"apiVersion": "v1", "kind": obj["kind"], "name": m["name"], "uid": m["uid"]}


def claims(tok: str) -> dict[str, Any]:
    payload = tok.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def api_status(bearer: httpx.Client, tok: str) -> int:
    return bearer.get("/api", headers={"Authorization": f"Bearer {tok}"}).status_code


def review(admin: httpx.Client, tok: str, audiences: list[str] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"token": tok}
    if audiences is not None:
        spec["audiences"] = audiences
    r = admin.post(REVIEW_URL, json={"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": spec})
    assert r.status_code == 201, r.text
    return r.json()["status"]


def assert_accepted(bearer: httpx.Client, admin: httpx.Client, tok: str) -> dict[str, Any]:
    assert api_status(bearer, tok) == 200
    status = review(admin, tok)
    assert status["authenticated"] is True, status
    return status


def assert_refused(bearer: httpx.Client, admin: httpx.Client, tok: str, why: str) -> None:
    assert api_status(bearer, tok) == 401
    status = review(admin, tok)
    assert status["authenticated"] is False, status
    assert why in status["error"], status
    assert "user" not in status


def test_fresh_token_has_upstream_claims_and_authenticates(bearer: httpx.Client,
                                                           admin: httpx.Client) -> None:
    sa = service_account(admin, unique("fresh"))
    name, uid = sa["metadata"]["name"], sa["metadata"]["uid"]
    r = request_token(admin, name, expirationSeconds=1200)
    assert r.status_code == 201, r.text
    answer = r.json()
    assert answer["spec"]["audiences"] == API_AUDIENCES
    tok = answer["status"]["token"]
    c = claims(tok)
    assert c["iss"] == ISSUER and c["aud"] == API_AUDIENCES
    assert c["sub"] == f"system:serviceaccount:{NS}:{name}"
    assert c["exp"] - c["iat"] == 1200 and c["nbf"] == c["iat"]
    assert c["kubernetes.io"] == {"namespace": NS, "serviceaccount": {"name": name, "uid": uid}}
    status = assert_accepted(bearer, admin, tok)
    assert status["user"]["username"] == f"system:serviceaccount:{NS}:{name}"
    assert status["user"]["uid"] == uid
    assert set(status["user"]["groups"]) == {"system:serviceaccounts", f"system:serviceaccounts:{NS}",
                                             "system:authenticated"}
    assert status["user"]["extra"]["authentication.kubernetes.io/credential-id"] == [f"JTI={c['jti']}"]
    assert status["audiences"] == API_AUDIENCES
    # asked for one of the API audiences, the review names just that one
    assert review(admin, tok, ["k3p-api"])["audiences"] == ["k3p-api"]


def test_token_of_a_deleted_service_account_is_refused(bearer: httpx.Client,
                                                       admin: httpx.Client) -> None:
    name = service_account(admin, unique("gone"))["metadata"]["name"]
    tok = token(admin, name)
    assert_accepted(bearer, admin, tok)
    assert admin.delete(f"{SA_URL}/{name}").status_code == 200
    assert_refused(bearer, admin, tok, f'serviceaccounts "{name}" not found')


def test_token_of_a_recreated_service_account_is_refused(bearer: httpx.Client,
                                                         admin: httpx.Client) -> None:
    old = service_account(admin, unique("reborn"))
    name = old["metadata"]["name"]
    tok = token(admin, name)
    assert admin.delete(f"{SA_URL}/{name}").status_code == 200
    new = service_account(admin, name)
    assert new["metadata"]["uid"] != old["metadata"]["uid"]
    assert_refused(bearer, admin, tok,
                   f"service account UID ({new['metadata']['uid']}) does not match claim ({old['metadata']['uid']})")
    assert_accepted(bearer, admin, token(admin, name))


def test_pod_bound_token_dies_with_its_pod(bearer: httpx.Client,
                                           admin: httpx.Client) -> None:
    sa = service_account(admin, unique("runner"))["metadata"]["name"]
    p = pod(admin, unique("bound"), sa)
    name, uid = p["metadata"]["name"], p["metadata"]["uid"]
    # what the kubelet asks for a projected token
    tok = token(admin, sa, expirationSeconds=3600, boundObjectRef=bound_to(p))
    assert claims(tok)["kubernetes.io"]["pod"] == {"name": name, "uid": uid}
    user = assert_accepted(bearer, admin, tok)["user"]
    assert user["extra"]["authentication.kubernetes.io/pod-name"] == [name]
    assert user["extra"]["authentication.kubernetes.io/pod-uid"] == [uid]
    assert admin.delete(f"{POD_URL}/{name}").status_code == 200
    assert_refused(bearer, admin, tok, "service account token has been invalidated")
    # a new pod of the same name is another pod
    pod(admin, name, sa)
    assert_refused(bearer, admin, tok, f"does not match service account pod ref claim ({uid})")
    admin.delete(f"{POD_URL}/{name}", params={"gracePeriodSeconds": "0"})


def test_terminating_pod_keeps_its_token_and_names_its_node(bearer: httpx.Client,
                                                            admin: httpx.Client) -> None:
    node = create(admin, "/api/v1/nodes", {"apiVersion": "v1", "kind": "Node", "metadata": {"name": unique("node")}})
    node_name, node_uid = node["metadata"]["name"], node["metadata"]["uid"]
    sa = service_account(admin, unique("term"))["metadata"]["name"]
    p = pod(admin, unique("term"), sa, node=node_name)
    tok = token(admin, sa, boundObjectRef=bound_to(p))
    assert claims(tok)["kubernetes.io"]["node"] == {"name": node_name, "uid": node_uid}
    # on a node, the pod waits for its kubelet: deletionTimestamp set, still there
    r = admin.delete(f"{POD_URL}/{p['metadata']['name']}", params={"gracePeriodSeconds": "30"})
    assert r.status_code == 200 and r.json()["metadata"].get("deletionTimestamp"), r.text
    user = assert_accepted(bearer, admin, tok)["user"]
    assert user["extra"]["authentication.kubernetes.io/node-name"] == [node_name]
    assert user["extra"]["authentication.kubernetes.io/node-uid"] == [node_uid]
    admin.delete(f"{POD_URL}/{p['metadata']['name']}", params={"gracePeriodSeconds": "0"})
    admin.delete(f"/api/v1/nodes/{node_name}")


def test_secret_and_node_bound_tokens_die_with_their_object(bearer: httpx.Client,
                                                            admin: httpx.Client) -> None:
    sa = service_account(admin, unique("bound"))["metadata"]["name"]
    secret = create(admin, f"/api/v1/namespaces/{NS}/secrets", {
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": unique("sec")}})
    node = create(admin, "/api/v1/nodes", {"apiVersion": "v1", "kind": "Node", "metadata": {"name": unique("node")}})
    by_secret = token(admin, sa, boundObjectRef=bound_to(secret))
    by_node = token(admin, sa, boundObjectRef=bound_to(node))
    assert claims(by_secret)["kubernetes.io"]["secret"]["uid"] == secret["metadata"]["uid"]
    assert_accepted(bearer, admin, by_secret)
    assert_accepted(bearer, admin, by_node)
    assert admin.delete(f"/api/v1/namespaces/{NS}/secrets/{secret['metadata']['name']}").status_code == 200
    assert admin.delete(f"/api/v1/nodes/{node['metadata']['name']}").status_code == 200
    assert_refused(bearer, admin, by_secret, "service account token has been invalidated")
    assert_refused(bearer, admin, by_node, "service account token has been invalidated")


def test_token_for_another_audience(bearer: httpx.Client, admin: httpx.Client) -> None:
    sa = service_account(admin, unique("vault"))
    tok = token(admin, sa["metadata"]["name"], audiences=["vault"])
    assert claims(tok)["aud"] == ["vault"]
    assert_refused(bearer, admin, tok, 'token audiences ["vault"] is invalid for the target audiences')
    status = review(admin, tok, ["vault"])
    assert status["authenticated"] is True, status
    assert status["audiences"] == ["vault"]
    assert status["user"]["username"] == f"system:serviceaccount:{NS}:{sa['metadata']['name']}"
    # and an API token is no good for vault
    api_token = token(admin, sa["metadata"]["name"])
    refused = review(admin, api_token, ["vault"])
    assert refused["authenticated"] is False and "audiences" in refused["error"], refused


def test_token_request_checks_what_it_binds_to(admin: httpx.Client) -> None:
    sa = service_account(admin, unique("req"))["metadata"]["name"]
    other = service_account(admin, unique("other"))["metadata"]["name"]
    p = pod(admin, unique("req"), other)
    r = request_token(admin, sa, boundObjectRef=bound_to(p))
    assert r.status_code == 400, r.text
    assert r.json()["message"] == (f'cannot bind token for serviceaccount "{sa}" to pod running with different '
                                   "serviceaccount name.")
    r = request_token(admin, other, boundObjectRef={**bound_to(p), "uid": "not-the-uid"})
    assert r.status_code == 409 and r.json()["reason"] == "Conflict", r.text
    assert "the UID in the bound object reference (not-the-uid) does not match the UID in record" in r.json()["message"]
    r = request_token(admin, other, boundObjectRef={"apiVersion": "v1", "kind": "Pod", "name": "no-such-pod"})
    assert r.status_code == 404, r.text
    r = request_token(admin, sa, boundObjectRef={"apiVersion": "v1", "kind": "ConfigMap", "name": "x"})
    assert r.status_code == 400, r.text
    assert r.json()["message"] == "cannot bind token to object of type /v1, Kind=ConfigMap"
    admin.delete(f"{POD_URL}/{p['metadata']['name']}", params={"gracePeriodSeconds": "0"})


def test_garbage_and_forged_tokens_are_refused(bearer: httpx.Client,
                                               admin: httpx.Client) -> None:
    assert_refused(bearer, admin, "not-a-token", "invalid bearer token")
    tok = token(admin, service_account(admin, unique("forged"))["metadata"]["name"])
    head, _payload, sig = tok.split(".")
    forged = dict(claims(tok), aud=["vault", ISSUER])
    body = base64.urlsafe_b64encode(json.dumps(forged).encode()).rstrip(b"=").decode()
    assert_refused(bearer, admin, f"{head}.{body}.{sig}", "invalid bearer token")
