"""RBAC decisions over the default policy plus test bindings, with Kubernetes' wording."""

from __future__ import annotations

from typing import Any

import pytest

from k3p.apiserver import bootstrap_policy as bp
from k3p.apiserver.rbac import (
    Decision,
    InMemoryRBACSource,
    RBACAuthorizer,
    access_review_attributes,
    forbidden_message,
    forbidden_status,
    forbidden_status_message,
    rule_allows,
    service_account_username,
)
from k3p.apiserver.request_info import RequestAttributes, UserInfo, request_attributes

AUTHENTICATED = "system:authenticated"


def user(name: str, *groups: str) -> UserInfo:
    return UserInfo(name, (*groups, AUTHENTICATED))


def sa_user(namespace: str, name: str) -> UserInfo:
    return UserInfo(
        service_account_username(namespace, name),
        ("system:serviceaccounts", f"system:serviceaccounts:{namespace}", AUTHENTICATED),
    )


ANONYMOUS = UserInfo("system:anonymous", ("system:unauthenticated",))


def role_binding(
    namespace: str, name: str, role_kind: str, role: str, subjects: list[dict[str, str]]
) -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": name, "namespace": namespace},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": role},
        "subjects": subjects,
    }


def cluster_role_binding(name: str, role: str, subjects: list[dict[str, str]]) -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": subjects,
    }


def role(namespace: str, name: str, rules: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": name, "namespace": namespace},
        "rules": rules,
    }


def cluster_role(name: str, rules: list[dict[str, Any]], labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": name, "labels": labels or {}},
        "rules": rules,
    }


@pytest.fixture
def source() -> InMemoryRBACSource:
    src = InMemoryRBACSource(bp.default_objects())
    for binding in [
        role_binding("team", "viewers", "ClusterRole", "view", [bp.user_subject("vera")]),
        role_binding("team", "editors", "ClusterRole", "edit", [bp.user_subject("ed")]),
        role_binding("team", "admins", "ClusterRole", "admin", [bp.user_subject("ada")]),
    ]:
        src.put(binding)
    return src


@pytest.fixture
def authz(source: InMemoryRBACSource) -> RBACAuthorizer:
    return RBACAuthorizer(source)


def can(authz: RBACAuthorizer, who: UserInfo, method: str, path: str, query: dict[str, str] | None = None) -> bool:
    return authz.authorize(request_attributes(method, path, query or {}, who)).allowed


# --- view / edit / admin -------------------------------------------------------------


def test_view_reads_but_cannot_write(authz: RBACAuthorizer) -> None:
    vera = user("vera")
    for method, path, query in [
        ("GET", "/api/v1/namespaces/team/pods", {}),
        ("GET", "/api/v1/namespaces/team/pods", {"watch": "true"}),
        ("GET", "/api/v1/namespaces/team/pods/p1", {}),
        ("GET", "/api/v1/namespaces/team/pods/p1/log", {}),
        ("GET", "/apis/apps/v1/namespaces/team/deployments", {}),
        ("GET", "/apis/apps/v1/namespaces/team/deployments/web/scale", {}),
        ("GET", "/apis/discovery.k8s.io/v1/namespaces/team/endpointslices", {}),
        ("GET", "/api/v1/namespaces/team", {}),
    ]:
        assert can(authz, vera, method, path, query), (method, path, query)
    for method, path in [
        ("POST", "/api/v1/namespaces/team/pods"),
        ("PUT", "/api/v1/namespaces/team/pods/p1"),
        ("PATCH", "/api/v1/namespaces/team/pods/p1"),
        ("DELETE", "/api/v1/namespaces/team/pods/p1"),
        ("DELETE", "/api/v1/namespaces/team/pods"),
        ("POST", "/api/v1/namespaces/team/pods/p1/exec"),
        ("GET", "/api/v1/namespaces/team/secrets"),
        ("GET", "/api/v1/namespaces/team/secrets/s1"),
        ("PUT", "/apis/apps/v1/namespaces/team/deployments/web/scale"),
        ("GET", "/apis/rbac.authorization.k8s.io/v1/namespaces/team/roles"),
    ]:
        assert not can(authz, vera, method, path), (method, path)


def test_role_binding_to_cluster_role_is_limited_to_its_namespace(authz: RBACAuthorizer) -> None:
    vera = user("vera")
    assert can(authz, vera, "GET", "/api/v1/namespaces/team/pods")
    assert not can(authz, vera, "GET", "/api/v1/namespaces/other/pods")
    assert not can(authz, vera, "GET", "/api/v1/pods")  # all namespaces is cluster scope
    assert not can(authz, vera, "GET", "/api/v1/nodes")
    assert not can(authz, vera, "GET", "/api/v1/namespaces")


def test_edit_writes_workloads_and_secrets_but_not_rbac(authz: RBACAuthorizer) -> None:
    ed = user("ed")
    for method, path in [
        ("POST", "/api/v1/namespaces/team/pods"),
        ("DELETE", "/api/v1/namespaces/team/pods"),
        ("GET", "/api/v1/namespaces/team/secrets/s1"),
        ("POST", "/api/v1/namespaces/team/secrets"),
        ("POST", "/api/v1/namespaces/team/pods/p1/exec"),
        ("GET", "/api/v1/namespaces/team/pods/p1/log"),
        ("POST", "/apis/apps/v1/namespaces/team/deployments"),
        ("PATCH", "/apis/apps/v1/namespaces/team/deployments/web/scale"),
        ("PUT", "/apis/batch/v1/namespaces/team/cronjobs/c"),
        ("POST", "/apis/networking.k8s.io/v1/namespaces/team/ingresses"),
    ]:
        assert can(authz, ed, method, path), (method, path)
    assert not can(authz, ed, "POST", "/apis/rbac.authorization.k8s.io/v1/namespaces/team/rolebindings")
    assert not can(authz, ed, "PUT", "/api/v1/namespaces/team/resourcequotas/q")
    assert not can(authz, ed, "POST", "/api/v1/namespaces/other/pods")


def test_admin_can_grant_in_its_namespace(authz: RBACAuthorizer) -> None:
    ada = user("ada")
    assert can(authz, ada, "POST", "/apis/rbac.authorization.k8s.io/v1/namespaces/team/rolebindings")
    assert can(authz, ada, "POST", "/apis/authorization.k8s.io/v1/namespaces/team/localsubjectaccessreviews")
    assert can(authz, ada, "DELETE", "/api/v1/namespaces/team/configmaps/c")
    assert not can(authz, ada, "POST", "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings")
    assert not can(authz, ada, "DELETE", "/api/v1/namespaces/team")  # namespaces are read-only to admin


def test_aggregated_roles_nest_admin_edit_view() -> None:
    roles = bp.default_cluster_roles()
    by_name = {r["metadata"]["name"]: r for r in roles}
    admin = bp.aggregate_cluster_role(by_name["admin"], roles)
    edit = bp.aggregate_cluster_role(by_name["edit"], roles)
    view = bp.aggregate_cluster_role(by_name["view"], roles)
    assert view == by_name["system:aggregate-to-view"]["rules"]
    assert all(r in edit for r in view)
    assert all(r in admin for r in edit)
    assert len(view) < len(edit) < len(admin)
    # default objects already carry the aggregated rules, as the aggregation controller would write
    assert by_name["admin"]["rules"] == admin


def test_aggregation_picks_up_new_labelled_roles(source: InMemoryRBACSource, authz: RBACAuthorizer) -> None:
    vera, ed, ada = user("vera"), user("ed"), user("ada")
    path = "/apis/example.com/v1/namespaces/team/widgets"
    assert not can(authz, vera, "GET", path)
    source.put(
        cluster_role(
            "widgets-view",
            [bp.rule(bp.READ, ["example.com"], ["widgets"])],
            labels={bp.AGGREGATE_TO_VIEW: "true"},
        )
    )
    assert can(authz, vera, "GET", path)
    assert can(authz, ed, "GET", path)
    assert can(authz, ada, "GET", path)
    assert not can(authz, ada, "POST", path)
    source.delete("ClusterRole", "widgets-view")
    assert not can(authz, ada, "GET", path)


def test_aggregation_selectors_with_expressions() -> None:
    agg = {
        "metadata": {"name": "agg"},
        "aggregationRule": {
            "clusterRoleSelectors": [
                {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]}]},
                {"matchLabels": {"x": "1"}, "matchExpressions": [{"key": "y", "operator": "DoesNotExist"}]},
            ]
        },
    }
    r1 = {"verbs": ["get"], "apiGroups": [""], "resources": ["pods"]}
    r2 = {"verbs": ["list"], "apiGroups": [""], "resources": ["pods"]}
    r3 = {"verbs": ["watch"], "apiGroups": [""], "resources": ["pods"]}
    roles = [
        agg,
        cluster_role("b-role", [r2, r1], labels={"tier": "b"}),
        cluster_role("a-role", [r1], labels={"tier": "a"}),
        cluster_role("c-role", [r3], labels={"tier": "c"}),
        cluster_role("x-role", [r3], labels={"x": "1"}),
        cluster_role("xy-role", [{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}], labels={"x": "1", "y": ""}),
    ]
    # by selector, then by role name; duplicates once
    assert bp.aggregate_cluster_role(agg, roles) == [r1, r2, r3]


def test_aggregation_selector_edge_cases() -> None:
    r1 = {"verbs": ["get"], "apiGroups": [""], "resources": ["pods"]}
    roles = [cluster_role("a", [r1], labels={"k": "v"})]

    def agg(selectors: list[dict[str, Any]]) -> list[dict[str, Any]]:
        role = {"metadata": {"name": "agg"}, "aggregationRule": {"clusterRoleSelectors": selectors}}
        return bp.aggregate_cluster_role(role, [role, *roles])

    assert agg([{}]) == [r1]  # an empty selector selects every role
    assert agg([]) == []
    assert agg([{"matchExpressions": [{"key": "k", "operator": "Bogus"}]}]) == []
    assert agg([{"matchExpressions": [{"key": "k", "operator": "Exists"}]}]) == [r1]
    assert agg([{"matchExpressions": [{"key": "k", "operator": "NotIn", "values": ["v"]}]}]) == []
    # a role without aggregationRule keeps its own rules
    assert bp.aggregate_cluster_role(roles[0], roles) == [r1]


# --- superuser, service accounts, groups ---------------------------------------------


def test_system_masters_is_allowed_everything(authz: RBACAuthorizer) -> None:
    root = user("root", "system:masters")
    assert can(authz, root, "DELETE", "/api/v1/nodes/n1")
    assert can(authz, root, "POST", "/apis/whatever.io/v1/namespaces/x/things")
    assert can(authz, root, "GET", "/metrics")
    assert authz.authorize(request_attributes("GET", "/api/v1/pods", {}, root)) == Decision(True, "")


def test_superuser_even_without_bindings() -> None:
    authz = RBACAuthorizer(InMemoryRBACSource())
    assert can(authz, UserInfo("x", ("system:masters",)), "DELETE", "/api/v1/namespaces/a/pods/b")
    assert not can(authz, UserInfo("x", ()), "GET", "/version")


def test_service_account_subjects(source: InMemoryRBACSource, authz: RBACAuthorizer) -> None:
    # namespace left out: a RoleBinding means its own namespace
    source.put(role_binding("team", "bot-edit", "ClusterRole", "edit", [{"kind": "ServiceAccount", "name": "bot"}]))
    bot = sa_user("team", "bot")
    other_bot = sa_user("elsewhere", "bot")
    assert can(authz, bot, "POST", "/api/v1/namespaces/team/configmaps")
    assert not can(authz, other_bot, "POST", "/api/v1/namespaces/team/configmaps")
    assert not can(authz, bot, "POST", "/api/v1/namespaces/elsewhere/configmaps")


def test_service_account_without_namespace_never_matches_cluster_wide(source: InMemoryRBACSource) -> None:
    source.put(cluster_role_binding("bad", "cluster-admin", [{"kind": "ServiceAccount", "name": "bot"}]))
    assert not can(RBACAuthorizer(source), sa_user("team", "bot"), "GET", "/api/v1/pods")


def test_service_account_groups(source: InMemoryRBACSource, authz: RBACAuthorizer) -> None:
    source.put(
        role_binding("team", "all-sa-view", "ClusterRole", "view", [bp.group_subject("system:serviceaccounts:team")])
    )
    source.put(cluster_role_binding("sa-nodes", "system:node-proxier", [bp.group_subject("system:serviceaccounts")]))
    assert can(authz, sa_user("team", "anyone"), "GET", "/api/v1/namespaces/team/configmaps")
    assert not can(authz, sa_user("other", "anyone"), "GET", "/api/v1/namespaces/team/configmaps")
    assert can(authz, sa_user("other", "anyone"), "GET", "/api/v1/nodes")
    # every service account may read the OIDC discovery documents by default
    assert can(authz, sa_user("other", "x"), "GET", "/.well-known/openid-configuration")
    assert not can(authz, user("human"), "GET", "/.well-known/openid-configuration")


def test_default_component_identities(authz: RBACAuthorizer) -> None:
    scheduler = UserInfo("system:kube-scheduler", (AUTHENTICATED,))
    assert can(authz, scheduler, "POST", "/api/v1/namespaces/default/pods/p/binding")
    assert can(authz, scheduler, "PUT", "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/kube-scheduler")
    assert not can(authz, scheduler, "PUT", "/apis/coordination.k8s.io/v1/namespaces/default/leases/other")
    # the leader-locking Role covers any lease, but only in kube-system
    assert can(authz, scheduler, "PUT", "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/other")
    assert can(authz, scheduler, "PUT", "/api/v1/persistentvolumes/pv1")  # via system:volume-scheduler
    node = UserInfo("system:node:n1", ("system:nodes", AUTHENTICATED))
    assert can(authz, node, "PATCH", "/api/v1/nodes/n1/status")
    assert can(authz, node, "POST", "/api/v1/namespaces/ns/serviceaccounts/default/token")
    proxy = UserInfo("system:kube-proxy", (AUTHENTICATED,))
    assert can(authz, proxy, "GET", "/apis/discovery.k8s.io/v1/endpointslices", {"watch": "1"})
    assert not can(authz, proxy, "GET", "/api/v1/secrets")


# --- resourceNames, subresources, non-resource URLs ----------------------------------


def test_resource_names(source: InMemoryRBACSource, authz: RBACAuthorizer) -> None:
    source.put(role("team", "cm1-reader", [bp.rule(bp.READ, [""], ["configmaps"], names=["cm1"])]))
    source.put(role_binding("team", "cm1", "Role", "cm1-reader", [bp.user_subject("rita")]))
    rita = user("rita")
    assert can(authz, rita, "GET", "/api/v1/namespaces/team/configmaps/cm1")
    assert not can(authz, rita, "GET", "/api/v1/namespaces/team/configmaps/cm2")
    assert not can(authz, rita, "GET", "/api/v1/namespaces/team/configmaps")
    # a list or watch pinned to the name by field selector is allowed (kubectl get cm cm1 -w)
    assert can(authz, rita, "GET", "/api/v1/namespaces/team/configmaps", {"fieldSelector": "metadata.name=cm1"})
    assert can(
        authz, rita, "GET", "/api/v1/namespaces/team/configmaps", {"fieldSelector": "metadata.name=cm1", "watch": "1"}
    )
    assert not can(authz, rita, "GET", "/api/v1/namespaces/team/configmaps", {"fieldSelector": "metadata.name=cm2"})


def test_subresource_rules(source: InMemoryRBACSource, authz: RBACAuthorizer) -> None:
    source.put(
        role(
            "team",
            "scaler",
            [
                bp.rule(["get", "update", "patch"], ["apps"], ["*/scale"]),
                bp.rule(["get"], [""], ["pods/log"]),
            ],
        )
    )
    source.put(role_binding("team", "scaler", "Role", "scaler", [bp.user_subject("sam")]))
    sam = user("sam")
    assert can(authz, sam, "PUT", "/apis/apps/v1/namespaces/team/deployments/web/scale")
    assert can(authz, sam, "PATCH", "/apis/apps/v1/namespaces/team/statefulsets/db/scale")
    assert not can(authz, sam, "PUT", "/apis/apps/v1/namespaces/team/deployments/web")
    assert not can(authz, sam, "PUT", "/apis/apps/v1/namespaces/team/deployments/web/status")
    assert can(authz, sam, "GET", "/api/v1/namespaces/team/pods/p/log")
    assert not can(authz, sam, "GET", "/api/v1/namespaces/team/pods/p")
    assert not can(authz, sam, "GET", "/api/v1/namespaces/team/pods/p/exec")


def test_rule_matching_helpers() -> None:
    who = UserInfo("u")
    attrs = RequestAttributes(who, "get", "", "v1", "pods", "log", "ns", "p", "", True)
    assert rule_allows(attrs, {"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]})
    assert rule_allows(attrs, {"verbs": ["get"], "apiGroups": [""], "resources": ["*/log"]})
    assert not rule_allows(attrs, {"verbs": ["get"], "apiGroups": [""], "resources": ["pods"]})
    assert not rule_allows(attrs, {"verbs": ["get"], "apiGroups": ["apps"], "resources": ["pods/log"]})
    assert not rule_allows(attrs, {"verbs": ["get"], "apiGroups": [""], "resources": ["*/lo"]})
    url = RequestAttributes(who, "get", path="/logs/kubelet.log")
    assert rule_allows(url, {"verbs": ["get"], "nonResourceURLs": ["/logs/*"]})
    assert rule_allows(url, {"verbs": ["get"], "nonResourceURLs": ["/lo*"]})
    assert not rule_allows(url, {"verbs": ["get"], "nonResourceURLs": ["/logs"]})
    assert not rule_allows(url, {"verbs": ["post"], "nonResourceURLs": ["*"]})
    assert not rule_allows(url, {"verbs": ["get"], "apiGroups": ["*"], "resources": ["*"]})
    assert not rule_allows(attrs, {"verbs": ["get"], "nonResourceURLs": ["*"]})


@pytest.mark.parametrize("path", ["/healthz", "/livez", "/readyz", "/version", "/version/"])
def test_public_info_for_anonymous(authz: RBACAuthorizer, path: str) -> None:
    assert can(authz, ANONYMOUS, "GET", path)
    assert can(authz, user("someone"), "GET", path)
    assert not can(authz, ANONYMOUS, "POST", path)


@pytest.mark.parametrize("path", ["/api", "/api/v1", "/apis", "/apis/apps/v1", "/openapi/v3", "/openapi/v3/api/v1"])
def test_discovery_for_authenticated_only(authz: RBACAuthorizer, path: str) -> None:
    assert can(authz, user("someone"), "GET", path)
    assert not can(authz, ANONYMOUS, "GET", path)


def test_anonymous_gets_nothing_else(authz: RBACAuthorizer) -> None:
    assert not can(authz, ANONYMOUS, "GET", "/metrics")
    assert not can(authz, ANONYMOUS, "GET", "/healthz/etcd")
    assert not can(authz, ANONYMOUS, "GET", "/api/v1/namespaces/default/pods")
    assert not can(authz, ANONYMOUS, "POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews")
    assert can(authz, user("x"), "POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews")
    assert can(authz, user("x", "system:monitoring"), "GET", "/healthz/etcd")


# --- reasons and messages ------------------------------------------------------------


def test_allow_reasons_name_the_binding(source: InMemoryRBACSource, authz: RBACAuthorizer) -> None:
    source.put(cluster_role_binding("ops-admin", "cluster-admin", [bp.user_subject("zoe")]))
    decision = authz.authorize(request_attributes("DELETE", "/api/v1/nodes/n1", {}, user("zoe")))
    assert decision == Decision(
        True, 'RBAC: allowed by ClusterRoleBinding "ops-admin" of ClusterRole "cluster-admin" to User "zoe"'
    )
    decision = authz.authorize(request_attributes("GET", "/api/v1/namespaces/team/pods", {}, user("vera")))
    assert decision.reason == 'RBAC: allowed by RoleBinding "viewers/team" of ClusterRole "view" to User "vera"'
    source.put(role_binding("team", "sa", "ClusterRole", "view", [{"kind": "ServiceAccount", "name": "bot"}]))
    decision = authz.authorize(request_attributes("GET", "/api/v1/namespaces/team/pods", {}, sa_user("team", "bot")))
    assert (
        decision.reason == 'RBAC: allowed by RoleBinding "sa/team" of ClusterRole "view" to ServiceAccount "bot/team"'
    )
    decision = authz.authorize(request_attributes("GET", "/version", {}, ANONYMOUS))
    assert decision.reason == (
        'RBAC: allowed by ClusterRoleBinding "system:public-info-viewer" of ClusterRole '
        '"system:public-info-viewer" to Group "system:unauthenticated"'
    )


def test_plain_denial_has_no_reason(authz: RBACAuthorizer) -> None:
    assert authz.authorize(request_attributes("GET", "/api/v1/secrets", {}, user("vera"))) == Decision(False, "")


def test_missing_roles_are_reported(source: InMemoryRBACSource, authz: RBACAuthorizer) -> None:
    source.put(cluster_role_binding("dangling", "no-such-role", [bp.user_subject("dan")]))
    source.put(role_binding("team", "dangling-role", "Role", "nope", [bp.user_subject("dan")]))
    dan = user("dan")
    decision = authz.authorize(request_attributes("GET", "/api/v1/pods", {}, dan))
    assert decision == Decision(False, 'RBAC: clusterrole.rbac.authorization.k8s.io "no-such-role" not found')
    decision = authz.authorize(request_attributes("GET", "/api/v1/namespaces/team/pods", {}, dan))
    assert decision.reason == (
        'RBAC: [clusterrole.rbac.authorization.k8s.io "no-such-role" not found, '
        'role.rbac.authorization.k8s.io "nope" not found]'
    )
    # the dangling reference starts to work once the role appears
    source.put(role("team", "nope", [bp.rule(["get"], [""], ["pods"])]))
    assert can(authz, dan, "GET", "/api/v1/namespaces/team/pods/p")


def test_forbidden_message_wording() -> None:
    vera = UserInfo("vera")
    namespaced = request_attributes("GET", "/api/v1/namespaces/default/pods", {}, vera)
    assert forbidden_message(namespaced) == (
        'User "vera" cannot list resource "pods" in API group "" in the namespace "default"'
    )
    assert forbidden_status_message(namespaced) == (
        'pods is forbidden: User "vera" cannot list resource "pods" in API group "" in the namespace "default"'
    )
    cluster = request_attributes("DELETE", "/api/v1/nodes/n1", {}, vera)
    assert (
        forbidden_message(cluster) == 'User "vera" cannot delete resource "nodes" in API group "" at the cluster scope'
    )
    assert forbidden_status_message(cluster).startswith('nodes "n1" is forbidden: User "vera" cannot delete')
    sub = request_attributes("PATCH", "/apis/apps/v1/namespaces/ns/deployments/web/scale", {}, vera)
    assert forbidden_status_message(sub) == (
        'deployments.apps "web" is forbidden: User "vera" cannot patch resource "deployments/scale" '
        'in API group "apps" in the namespace "ns"'
    )
    path = request_attributes("GET", "/metrics", {}, UserInfo("system:anonymous"))
    assert forbidden_status_message(path) == 'forbidden: User "system:anonymous" cannot get path "/metrics"'
    reasoned = forbidden_status_message(namespaced, 'RBAC: role.rbac.authorization.k8s.io "x" not found')
    assert reasoned.endswith('in the namespace "default": RBAC: role.rbac.authorization.k8s.io "x" not found')


def test_forbidden_status_object() -> None:
    attrs = request_attributes("GET", "/apis/apps/v1/namespaces/ns/deployments/web", {}, UserInfo("u"))
    status = forbidden_status(attrs)
    assert status["code"] == 403
    assert status["reason"] == "Forbidden"
    assert status["details"] == {"name": "web", "group": "apps", "kind": "deployments"}
    assert status["message"].startswith('deployments.apps "web" is forbidden: ')
    assert forbidden_status(request_attributes("GET", "/x", {}, UserInfo("u")))["details"] == {}


# --- reviews -------------------------------------------------------------------------


def test_subject_access_review(authz: RBACAuthorizer) -> None:
    spec = {
        "user": "vera",
        "groups": [AUTHENTICATED],
        "resourceAttributes": {"namespace": "team", "verb": "list", "resource": "pods"},
    }
    assert authz.evaluate_access_review(spec) == {
        "allowed": True,
        "reason": 'RBAC: allowed by RoleBinding "viewers/team" of ClusterRole "view" to User "vera"',
    }
    spec["resourceAttributes"] = {"namespace": "team", "verb": "create", "resource": "pods"}
    assert authz.evaluate_access_review(spec) == {"allowed": False}
    spec["resourceAttributes"] = {"namespace": "team", "verb": "get", "resource": "pods", "subresource": "log"}
    assert authz.evaluate_access_review(spec)["allowed"]
    # groups are taken as given: without system:authenticated there is no discovery access
    assert not authz.evaluate_access_review({"user": "vera", "nonResourceAttributes": {"path": "/api", "verb": "get"}})[
        "allowed"
    ]
    assert authz.evaluate_access_review(
        {"user": "vera", "groups": [AUTHENTICATED], "nonResourceAttributes": {"path": "/api", "verb": "get"}}
    )["allowed"]
    with pytest.raises(ValueError):
        authz.evaluate_access_review({"user": "vera"})


def test_self_subject_access_review_uses_requester(authz: RBACAuthorizer) -> None:
    spec = {"resourceAttributes": {"namespace": "team", "verb": "create", "resource": "deployments", "group": "apps"}}
    assert authz.evaluate_access_review(spec, user=user("ed"))["allowed"]
    assert not authz.evaluate_access_review(spec, user=user("vera"))["allowed"]
    assert authz.evaluate_access_review(spec, user=UserInfo("r", ("system:masters",))) == {"allowed": True}


def test_access_review_attributes() -> None:
    attrs = access_review_attributes(
        {
            "user": "u",
            "groups": ["g"],
            "uid": "1",
            "extra": {"k": ["v"]},
            "resourceAttributes": {"verb": "get", "resource": "pods", "name": "p", "namespace": "n"},
        }
    )
    assert attrs.user == UserInfo("u", ("g",), "1", {"k": ["v"]})
    assert (attrs.verb, attrs.resource, attrs.name, attrs.namespace, attrs.api_version) == (
        "get",
        "pods",
        "p",
        "n",
        "*",
    )
    assert attrs.is_resource_request


def test_rules_for(authz: RBACAuthorizer) -> None:
    resource_rules, non_resource_rules, incomplete = authz.rules_for(user("vera"), "team")
    assert not incomplete
    assert {
        "verbs": ["get", "list", "watch"],
        "apiGroups": [""],
        "resources": ["namespaces"],
    } in resource_rules
    assert any("selfsubjectaccessreviews" in r["resources"] for r in resource_rules)  # system:basic-user
    assert any("/api" in r["nonResourceURLs"] for r in non_resource_rules)  # system:discovery
    assert not any("secrets" in r["resources"] for r in resource_rules)
    # outside the bound namespace only the cluster-wide rules are left
    elsewhere, _, _ = authz.rules_for(user("vera"), "other")
    assert not any("pods" in r["resources"] for r in elsewhere)
    masters, masters_urls, _ = authz.rules_for(UserInfo("r", ("system:masters",)), "x")
    assert masters[0] == {"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}
    assert masters_urls[0] == {"verbs": ["*"], "nonResourceURLs": ["*"]}


def test_rules_for_resource_names_and_errors(source: InMemoryRBACSource, authz: RBACAuthorizer) -> None:
    source.put(role("team", "one", [bp.rule(["get"], [""], ["secrets"], names=["s1"])]))
    source.put(role_binding("team", "one", "Role", "one", [bp.user_subject("rita")]))
    source.put(role_binding("team", "gone", "Role", "gone", [bp.user_subject("rita")]))
    status = authz.rules_review_status(user("rita"), "team")
    assert {"verbs": ["get"], "apiGroups": [""], "resources": ["secrets"], "resourceNames": ["s1"]} in status[
        "resourceRules"
    ]
    assert status["incomplete"] is False
    assert status["evaluationError"] == 'role.rbac.authorization.k8s.io "gone" not found'


# --- sources -------------------------------------------------------------------------


class _PlainSource:
    """A source without version(): every decision must read it afresh."""

    def __init__(self, objects: list[dict[str, Any]]) -> None:
        self.objects = objects

    def _kind(self, kind: str, namespace: str = "") -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind and o["metadata"].get("namespace", "") == namespace]

    def cluster_roles(self) -> list[dict[str, Any]]:
        return self._kind("ClusterRole")

    def cluster_role_bindings(self) -> list[dict[str, Any]]:
        return self._kind("ClusterRoleBinding")

    def roles(self, namespace: str) -> list[dict[str, Any]]:
        return self._kind("Role", namespace)

    def role_bindings(self, namespace: str) -> list[dict[str, Any]]:
        return self._kind("RoleBinding", namespace)

    def cluster_role(self, name: str) -> dict[str, Any] | None:
        return next((o for o in self._kind("ClusterRole") if o["metadata"]["name"] == name), None)

    def role(self, namespace: str, name: str) -> dict[str, Any] | None:
        return next((o for o in self._kind("Role", namespace) if o["metadata"]["name"] == name), None)


def test_source_without_version_sees_every_change() -> None:
    src = _PlainSource(bp.default_objects())
    authz = RBACAuthorizer(src)
    pat = user("pat")
    assert not can(authz, pat, "GET", "/api/v1/namespaces/team/pods")
    src.objects.append(role_binding("team", "pat", "ClusterRole", "view", [bp.user_subject("pat")]))
    assert can(authz, pat, "GET", "/api/v1/namespaces/team/pods")
    src.objects.pop()
    assert not can(authz, pat, "GET", "/api/v1/namespaces/team/pods")


def test_versioned_source_caches_until_version_changes(source: InMemoryRBACSource) -> None:
    authz = RBACAuthorizer(source)
    calls = {"n": 0}
    original = source.cluster_role_bindings

    def counting() -> list[dict[str, Any]]:
        calls["n"] += 1
        return original()

    source.cluster_role_bindings = counting  # type: ignore[method-assign]
    for _ in range(5):
        assert can(authz, user("vera"), "GET", "/api/v1/namespaces/team/pods")
    assert calls["n"] == 1
    source.put(cluster_role_binding("late", "view", [bp.user_subject("lee")]))
    assert can(authz, user("lee"), "GET", "/api/v1/namespaces/any/pods")
    assert calls["n"] == 2
    source.delete("ClusterRoleBinding", "late")
    assert not can(authz, user("lee"), "GET", "/api/v1/namespaces/any/pods")


def test_unsupported_role_ref_kind(source: InMemoryRBACSource, authz: RBACAuthorizer) -> None:
    binding = cluster_role_binding("odd", "x", [bp.user_subject("odd")])
    binding["roleRef"]["kind"] = "Policy"
    source.put(binding)
    assert authz.authorize(request_attributes("GET", "/api/v1/pods", {}, user("odd"))) == Decision(
        False, 'RBAC: unsupported role reference kind: "Policy"'
    )


# --- the default objects -------------------------------------------------------------


def test_default_objects_shape() -> None:
    objects = bp.default_objects()
    for obj in objects:
        meta = obj["metadata"]
        assert obj["apiVersion"] == "rbac.authorization.k8s.io/v1"
        assert meta["labels"]["kubernetes.io/bootstrapping"] == "rbac-defaults", meta["name"]
        assert meta["annotations"] == {"rbac.authorization.kubernetes.io/autoupdate": "true"}
        assert ("namespace" in meta) == (obj["kind"] in ("Role", "RoleBinding"))
    names = {(o["kind"], o["metadata"]["name"]) for o in objects}
    for expected in [
        "cluster-admin",
        "admin",
        "edit",
        "view",
        "system:aggregate-to-admin",
        "system:aggregate-to-edit",
        "system:aggregate-to-view",
        "system:basic-user",
        "system:discovery",
        "system:public-info-viewer",
        "system:node",
        "system:node-proxier",
        "system:kube-scheduler",
        "system:kube-controller-manager",
        "system:kube-dns",
        "system:monitoring",
        "system:service-account-issuer-discovery",
        "system:auth-delegator",
        "system:heapster",
        "system:node-bootstrapper",
        "system:volume-scheduler",
    ]:
        assert ("ClusterRole", expected) in names, expected
    by_name = {(o["kind"], o["metadata"]["name"]): o for o in objects}
    assert by_name[("ClusterRole", "edit")]["metadata"]["labels"][bp.AGGREGATE_TO_ADMIN] == "true"
    assert by_name[("ClusterRole", "view")]["metadata"]["labels"][bp.AGGREGATE_TO_EDIT] == "true"
    assert by_name[("ClusterRole", "admin")]["aggregationRule"] == {
        "clusterRoleSelectors": [{"matchLabels": {bp.AGGREGATE_TO_ADMIN: "true"}}]
    }
    assert by_name[("ClusterRoleBinding", "cluster-admin")]["subjects"] == [
        {"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "system:masters"}
    ]
    public = by_name[("ClusterRoleBinding", "system:public-info-viewer")]["subjects"]
    assert [s["name"] for s in public] == ["system:authenticated", "system:unauthenticated"]
    assert by_name[("ClusterRoleBinding", "system:node")]["subjects"][0]["name"] == "system:nodes"
    assert ("RoleBinding", "system::leader-locking-kube-scheduler") in names
    # fresh copies: changing one result leaves the next alone
    by_name[("ClusterRole", "view")]["rules"].clear()
    assert next(o for o in bp.default_objects() if o["metadata"]["name"] == "view")["rules"]


def test_node_binding_without_subjects_under_a_node_authorizer() -> None:
    bindings = bp.default_cluster_role_bindings(node_authorizer=True)
    node = next(b for b in bindings if b["metadata"]["name"] == "system:node")
    assert "subjects" not in node
    authz = RBACAuthorizer(InMemoryRBACSource([*bp.default_cluster_roles(), *bindings]))
    assert not can(authz, UserInfo("system:node:n1", ("system:nodes",)), "GET", "/api/v1/nodes/n1")
