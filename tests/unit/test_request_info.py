"""Request attributes parsed from method + path + query, as Kubernetes' request-info does."""

from __future__ import annotations

import pytest

from k3p.apiserver.request_info import RequestAttributes, RequestInfoError, UserInfo, request_attributes

ALICE = UserInfo("alice", ("system:authenticated",))

# method, path, query, expected (verb, group, version, resource, subresource, namespace, name)
RESOURCE_CASES = [
    # collections: list, watch in its spellings, and the legacy /watch/ prefix
    ("GET", "/api/v1/namespaces/default/pods", {}, ("list", "", "v1", "pods", "", "default", "")),
    ("GET", "/api/v1/namespaces/default/pods", {"watch": "true"}, ("watch", "", "v1", "pods", "", "default", "")),
    ("GET", "/api/v1/namespaces/default/pods", {"watch": "1"}, ("watch", "", "v1", "pods", "", "default", "")),
    ("GET", "/api/v1/namespaces/default/pods", {"watch": "True"}, ("watch", "", "v1", "pods", "", "default", "")),
    ("GET", "/api/v1/namespaces/default/pods", {"watch": ""}, ("watch", "", "v1", "pods", "", "default", "")),
    ("GET", "/api/v1/namespaces/default/pods", {"watch": "false"}, ("list", "", "v1", "pods", "", "default", "")),
    ("GET", "/api/v1/namespaces/default/pods", {"watch": "FALSE"}, ("list", "", "v1", "pods", "", "default", "")),
    ("GET", "/api/v1/namespaces/default/pods", {"watch": "0"}, ("list", "", "v1", "pods", "", "default", "")),
    ("GET", "/api/v1/watch/namespaces/default/pods", {}, ("watch", "", "v1", "pods", "", "default", "")),
    ("GET", "/api/v1/watch/pods", {}, ("watch", "", "v1", "pods", "", "", "")),
    ("GET", "/api/v1/watch/namespaces/default/pods/p1", {}, ("watch", "", "v1", "pods", "", "default", "p1")),
    ("HEAD", "/api/v1/pods", {}, ("list", "", "v1", "pods", "", "", "")),
    # single objects and writes
    ("GET", "/api/v1/namespaces/default/pods/p1", {}, ("get", "", "v1", "pods", "", "default", "p1")),
    # a name in the path wins: ?watch on a named GET stays a get
    ("GET", "/api/v1/namespaces/default/pods/p1", {"watch": "1"}, ("get", "", "v1", "pods", "", "default", "p1")),
    ("POST", "/api/v1/namespaces/default/pods", {}, ("create", "", "v1", "pods", "", "default", "")),
    ("PUT", "/api/v1/namespaces/default/pods/p1", {}, ("update", "", "v1", "pods", "", "default", "p1")),
    ("PATCH", "/api/v1/namespaces/default/pods/p1", {}, ("patch", "", "v1", "pods", "", "default", "p1")),
    ("DELETE", "/api/v1/namespaces/default/pods/p1", {}, ("delete", "", "v1", "pods", "", "default", "p1")),
    ("DELETE", "/api/v1/namespaces/default/pods", {}, ("deletecollection", "", "v1", "pods", "", "default", "")),
    ("OPTIONS", "/api/v1/namespaces/default/pods", {}, ("", "", "v1", "pods", "", "default", "")),
    # subresources
    ("GET", "/api/v1/namespaces/default/pods/p1/log", {}, ("get", "", "v1", "pods", "log", "default", "p1")),
    ("POST", "/api/v1/namespaces/default/pods/p1/exec", {}, ("create", "", "v1", "pods", "exec", "default", "p1")),
    ("GET", "/api/v1/namespaces/default/pods/p1/exec", {}, ("get", "", "v1", "pods", "exec", "default", "p1")),
    ("POST", "/api/v1/namespaces/ns/pods/p1/eviction", {}, ("create", "", "v1", "pods", "eviction", "ns", "p1")),
    ("PUT", "/api/v1/namespaces/ns/pods/p1/status", {}, ("update", "", "v1", "pods", "status", "ns", "p1")),
    (
        "PUT",
        "/apis/apps/v1/namespaces/ns/deployments/web/scale",
        {},
        ("update", "apps", "v1", "deployments", "scale", "ns", "web"),
    ),
    (
        "PATCH",
        "/apis/apps/v1/namespaces/ns/deployments/web/scale",
        {},
        ("patch", "apps", "v1", "deployments", "scale", "ns", "web"),
    ),
    ("GET", "/api/v1/nodes/n1/proxy/metrics", {}, ("get", "", "v1", "nodes", "proxy", "", "n1")),
    # the legacy /proxy/ prefix: verb proxy, never a subresource
    ("GET", "/api/v1/proxy/namespaces/ns/pods/p1/some/path", {}, ("proxy", "", "v1", "pods", "", "ns", "p1")),
    ("GET", "/api/v1/proxy/nodes/n1/stats", {}, ("proxy", "", "v1", "nodes", "", "", "n1")),
    # cluster-scoped resources and API groups
    ("GET", "/api/v1/nodes", {}, ("list", "", "v1", "nodes", "", "", "")),
    ("GET", "/api/v1/nodes/n1", {}, ("get", "", "v1", "nodes", "", "", "n1")),
    ("PATCH", "/api/v1/nodes/n1/status", {}, ("patch", "", "v1", "nodes", "status", "", "n1")),
    ("GET", "/apis/apps/v1/deployments", {}, ("list", "apps", "v1", "deployments", "", "", "")),
    (
        "GET",
        "/apis/rbac.authorization.k8s.io/v1/clusterroles/admin",
        {},
        ("get", "rbac.authorization.k8s.io", "v1", "clusterroles", "", "", "admin"),
    ),
    (
        "POST",
        "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
        {},
        ("create", "authorization.k8s.io", "v1", "selfsubjectaccessreviews", "", "", ""),
    ),
    (
        "GET",
        "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases",
        {"watch": "true"},
        ("watch", "coordination.k8s.io", "v1", "leases", "", "kube-node-lease", ""),
    ),
    # namespaces themselves and their own subresources
    ("GET", "/api/v1/namespaces", {}, ("list", "", "v1", "namespaces", "", "", "")),
    ("POST", "/api/v1/namespaces", {}, ("create", "", "v1", "namespaces", "", "", "")),
    ("GET", "/api/v1/namespaces/kube-system", {}, ("get", "", "v1", "namespaces", "", "kube-system", "kube-system")),
    ("DELETE", "/api/v1/namespaces/x", {}, ("delete", "", "v1", "namespaces", "", "x", "x")),
    ("PUT", "/api/v1/namespaces/x/finalize", {}, ("update", "", "v1", "namespaces", "finalize", "x", "x")),
    ("GET", "/api/v1/namespaces/x/status", {}, ("get", "", "v1", "namespaces", "status", "x", "x")),
    # trailing slashes are accepted
    ("GET", "/api/v1/namespaces/default/pods/", {}, ("list", "", "v1", "pods", "", "default", "")),
    ("GET", "/api/v1/namespaces/default/pods/p1/", {}, ("get", "", "v1", "pods", "", "default", "p1")),
    ("GET", "/apis/apps/v1/deployments/", {"watch": "True"}, ("watch", "apps", "v1", "deployments", "", "", "")),
    # a field selector that pins metadata.name names the object
    (
        "GET",
        "/api/v1/namespaces/ns/configmaps",
        {"fieldSelector": "metadata.name=cm1"},
        ("list", "", "v1", "configmaps", "", "ns", "cm1"),
    ),
    (
        "GET",
        "/api/v1/namespaces/ns/configmaps",
        {"fieldSelector": "metadata.name==cm1", "watch": "1"},
        ("watch", "", "v1", "configmaps", "", "ns", "cm1"),
    ),
    (
        "GET",
        "/api/v1/namespaces/ns/pods",
        {"fieldSelector": "status.phase=Running,metadata.name=p1"},
        ("list", "", "v1", "pods", "", "ns", "p1"),
    ),
    (
        "GET",
        "/api/v1/namespaces/ns/pods",
        {"fieldSelector": "metadata.name!=p1"},
        ("list", "", "v1", "pods", "", "ns", ""),
    ),
    (
        "GET",
        "/api/v1/namespaces/ns/pods",
        {"fieldSelector": "metadata.name=a/b"},
        ("list", "", "v1", "pods", "", "ns", ""),
    ),
    (
        "GET",
        "/api/v1/namespaces/ns/pods",
        {"fieldSelector": "spec.nodeName=n1"},
        ("list", "", "v1", "pods", "", "ns", ""),
    ),
    # a name from the field selector does not turn deletecollection into delete
    (
        "DELETE",
        "/api/v1/namespaces/ns/pods",
        {"fieldSelector": "metadata.name=p1"},
        ("deletecollection", "", "v1", "pods", "", "ns", ""),
    ),
]


@pytest.mark.parametrize(("method", "path", "query", "expected"), RESOURCE_CASES)
def test_resource_requests(method: str, path: str, query: dict[str, str], expected: tuple) -> None:
    attrs = request_attributes(method, path, query, ALICE)
    assert attrs.is_resource_request
    got = (
        attrs.verb,
        attrs.api_group,
        attrs.api_version,
        attrs.resource,
        attrs.subresource,
        attrs.namespace,
        attrs.name,
    )
    assert got == expected
    assert attrs.path == path
    assert attrs.user is ALICE


NON_RESOURCE_CASES = [
    ("GET", "/version", "get"),
    ("GET", "/version/", "get"),
    ("GET", "/healthz", "get"),
    ("GET", "/livez", "get"),
    ("GET", "/readyz/etcd", "get"),
    ("HEAD", "/healthz", "head"),
    ("GET", "/", "get"),
    ("GET", "/api", "get"),
    ("GET", "/api/", "get"),
    ("GET", "/api/v1", "get"),
    ("GET", "/apis", "get"),
    ("GET", "/apis/apps", "get"),
    ("GET", "/apis/apps/v1", "get"),
    ("GET", "/apis/apps/v1/", "get"),
    ("GET", "/openapi/v3", "get"),
    ("GET", "/openapi/v3/apis/apps/v1", "get"),
    ("GET", "/openapi/v2", "get"),
    ("GET", "/metrics", "get"),
    ("GET", "/cacerts", "get"),
    ("POST", "/some/custom/path", "post"),
    ("PUT", "/x", "put"),
]


@pytest.mark.parametrize(("method", "path", "verb"), NON_RESOURCE_CASES)
def test_non_resource_requests(method: str, path: str, verb: str) -> None:
    attrs = request_attributes(method, path, {}, ALICE)
    assert attrs == RequestAttributes(user=ALICE, verb=verb, path=path, is_resource_request=False)


def test_watch_query_on_non_resource_path_is_ignored() -> None:
    attrs = request_attributes("GET", "/apis/apps/v1", {"watch": "true"}, ALICE)
    assert not attrs.is_resource_request
    assert attrs.verb == "get"


def test_empty_path_is_root() -> None:
    attrs = request_attributes("GET", "", {}, ALICE)
    assert attrs.path == "/"
    assert not attrs.is_resource_request


@pytest.mark.parametrize("path", ["/api/v1/watch", "/api/v1/proxy/", "/apis/apps/v1/watch"])
def test_special_verb_without_resource_is_an_error(path: str) -> None:
    with pytest.raises(RequestInfoError):
        request_attributes("GET", path, {}, ALICE)


def test_user_info_is_hashable_with_extra() -> None:
    a = UserInfo("u", ("g",), uid="1", extra={"scopes": ["x"]})
    b = UserInfo("u", ("g",), uid="1", extra={"scopes": ["y"]})
    assert hash(a) == hash(b)
    assert a != b
    assert UserInfo("u").extra == {}
