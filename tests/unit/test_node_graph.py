"""The Node authorizer's graph and decisions, from pod and volume events alone."""

from __future__ import annotations

from k3p.apiserver.node_authorizer import NodeAuthorizer, NodeGraph, pod_refs
from k3p.apiserver.request_info import RequestAttributes, UserInfo
from k3p.apiserver.watchcache import CachedObject, WatchEvent

NODE_USER = UserInfo("system:node:n1", ("system:nodes", "system:authenticated"))


def pod(name: str, node: str, **spec: object) -> dict:
    return {"metadata": {"name": name, "namespace": "ns"},
            "spec": {"nodeName": node, "containers": [{"name": "c"}], **spec}}


def event(type_: str, key: str, obj: dict) -> WatchEvent:
    return WatchEvent(type_, CachedObject(key, obj, 1))


def get(resource: str, name: str, namespace: str = "ns", verb: str = "get", sub: str = "") -> RequestAttributes:
    return RequestAttributes(user=NODE_USER, verb=verb, resource=resource, subresource=sub, namespace=namespace,
                             name=name, is_resource_request=True)


def test_pod_refs_cover_every_place_a_pod_names_objects() -> None:
    p = pod("p", "n1", imagePullSecrets=[{"name": "pull"}],
            initContainers=[{"name": "i", "env": [{"name": "A", "valueFrom": {"secretKeyRef": {"name": "env"}}}]}],
            containers=[{"name": "c", "envFrom": [{"configMapRef": {"name": "cm-env"}}]}],
            volumes=[{"name": "v", "projected": {"sources": [{"secret": {"name": "proj"}}]}},
                     {"name": "csi", "csi": {"driver": "d", "nodePublishSecretRef": {"name": "csi"}}},
                     {"name": "data", "persistentVolumeClaim": {"claimName": "claim"}},
                     {"name": "scratch", "ephemeral": {"volumeClaimTemplate": {}}}],
            serviceAccountName="sa")
    assert pod_refs(p) == {("secrets", "ns", "pull"), ("secrets", "ns", "env"), ("configmaps", "ns", "cm-env"),
                           ("secrets", "ns", "proj"), ("secrets", "ns", "csi"),
                           ("persistentvolumeclaims", "ns", "claim"), ("persistentvolumeclaims", "ns", "p-scratch"),
                           ("serviceaccounts", "ns", "sa")}


def test_secret_through_a_claims_volume_and_moving_pods() -> None:
    graph = NodeGraph()
    volumes = {"pv1": {"metadata": {"name": "pv1"},
                       "spec": {"claimRef": {"namespace": "ns", "name": "claim"},
                                "csi": {"driver": "d", "nodeStageSecretRef": {"name": "stage", "namespace": "ops"}}}}}
    authz = NodeAuthorizer(graph, lambda g, r, ns, name: volumes.get(name) if r == "persistentvolumes" else None)
    graph.load([], [CachedObject("/registry/persistentvolumes/pv1", volumes["pv1"], 1)])
    assert not authz.authorize(get("secrets", "stage", "ops")).allowed
    p = pod("p", "n1", volumes=[{"name": "data", "persistentVolumeClaim": {"claimName": "claim"}}])
    graph.on_pod(event("ADDED", "/registry/pods/ns/p", p))
    assert authz.authorize(get("secrets", "stage", "ops")).allowed
    assert authz.authorize(get("persistentvolumeclaims", "claim")).allowed
    assert authz.authorize(get("persistentvolumes", "pv1", "")).allowed
    assert authz.authorize(get("persistentvolumeclaims", "claim", verb="patch", sub="status")).allowed
    assert authz.authorize(get("persistentvolumeclaims", "claim", verb="list")).reason == \
        "can only get individual resources of this type"
    # the same pod moving to another node (a new pod of the same name) takes its access along
    graph.on_pod(event("MODIFIED", "/registry/pods/ns/p", {**p, "spec": {**p["spec"], "nodeName": "n2"}}))
    decision = authz.authorize(get("secrets", "stage", "ops"))
    assert not decision.allowed and decision.reason == "no relationship found between node 'n1' and this object"
    graph.on_pod(event("MODIFIED", "/registry/pods/ns/p", p))
    graph.on_pod(event("DELETED", "/registry/pods/ns/p", p))
    assert not authz.authorize(get("persistentvolumes", "pv1", "")).allowed


def test_two_pods_share_a_secret_until_both_are_gone() -> None:
    graph = NodeGraph()
    authz = NodeAuthorizer(graph, lambda *_: None)
    uses = {"volumes": [{"name": "s", "secret": {"secretName": "shared"}}]}
    graph.on_pod(event("ADDED", "/registry/pods/ns/a", pod("a", "n1", **uses)))
    graph.on_pod(event("ADDED", "/registry/pods/ns/b", pod("b", "n1", **uses)))
    graph.on_pod(event("DELETED", "/registry/pods/ns/a", pod("a", "n1", **uses)))
    assert authz.authorize(get("secrets", "shared")).allowed
    graph.on_pod(event("DELETED", "/registry/pods/ns/b", pod("b", "n1", **uses)))
    assert not authz.authorize(get("secrets", "shared")).allowed
    # not a node: no opinion at all, RBAC decides
    assert authz.authorize(RequestAttributes(user=UserInfo("jane"), verb="get", resource="secrets",
                                             namespace="ns", name="shared", is_resource_request=True)) is None


def test_static_rules_for_the_rest() -> None:
    authz = NodeAuthorizer(NodeGraph(), lambda *_: None)
    assert authz.authorize(get("pods", "", verb="list")).allowed
    assert authz.authorize(get("nodes", "n2", "", verb="patch")).allowed  # which node: NodeRestriction's job
    assert not authz.authorize(get("deployments", "d", verb="get")).allowed
    unknown = UserInfo("system:node:", ("system:nodes",))
    assert authz.authorize(RequestAttributes(user=unknown, verb="get", resource="pods", is_resource_request=True)
                           ).reason == 'unknown node for user "system:node:"'
