"""The RBAC objects a new cluster starts with, as Kubernetes v1.32 bootstraps them.

The roles, their rules and the bindings are the facts of the upstream bootstrap policy
(the user-facing ``cluster-admin``/``admin``/``edit``/``view`` with their aggregation, the
``system:*`` roles of the control-plane identities, discovery and public-info roles, and
the bindings that give them to ``system:masters``, ``system:authenticated``,
``system:unauthenticated``, the scheduler, controller manager and proxy users). Every
object carries the ``kubernetes.io/bootstrapping: rbac-defaults`` label and the
``rbac.authorization.kubernetes.io/autoupdate: "true"`` annotation, so tools that reconcile
default policy recognise them.

The per-controller ``system:controller:*`` roles are not created: k3p's controllers run
inside the server under its own identity rather than as one service account each.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import Any

from k3p.selectors import SelectorError, label_selector_from_dict

RBAC_GROUP = "rbac.authorization.k8s.io"
RBAC_API_VERSION = f"{RBAC_GROUP}/v1"
BOOTSTRAP_LABELS = {"kubernetes.io/bootstrapping": "rbac-defaults"}
AUTOUPDATE_ANNOTATION = "rbac.authorization.kubernetes.io/autoupdate"

AGGREGATE_TO_ADMIN = f"{RBAC_GROUP}/aggregate-to-admin"
AGGREGATE_TO_EDIT = f"{RBAC_GROUP}/aggregate-to-edit"
AGGREGATE_TO_VIEW = f"{RBAC_GROUP}/aggregate-to-view"

# Well-known user and group names of the Kubernetes authentication layer.
SYSTEM_MASTERS = "system:masters"
ALL_AUTHENTICATED = "system:authenticated"
ALL_UNAUTHENTICATED = "system:unauthenticated"
ANONYMOUS_USER = "system:anonymous"
NODES_GROUP = "system:nodes"
MONITORING_GROUP = "system:monitoring"
ALL_SERVICE_ACCOUNTS = "system:serviceaccounts"
KUBE_PROXY = "system:kube-proxy"
KUBE_CONTROLLER_MANAGER = "system:kube-controller-manager"
KUBE_SCHEDULER = "system:kube-scheduler"

Rule = dict[str, list[str]]

READ = ("get", "list", "watch")
WRITE = ("create", "update", "patch", "delete", "deletecollection")
READ_WRITE = READ + WRITE
READ_UPDATE = ("get", "list", "watch", "update", "patch")

_CORE = ""
_APPS = "apps"
_AUTHN = "authentication.k8s.io"
_AUTHZ = "authorization.k8s.io"
_AUTOSCALING = "autoscaling"
_BATCH = "batch"
_CERTIFICATES = "certificates.k8s.io"
_COORDINATION = "coordination.k8s.io"
_DISCOVERY = "discovery.k8s.io"
_EVENTS = "events.k8s.io"
_EXTENSIONS = "extensions"
_NETWORKING = "networking.k8s.io"
_NODE = "node.k8s.io"
_POLICY = "policy"
_RBAC = RBAC_GROUP
_STORAGE = "storage.k8s.io"


def rule(
    verbs: Iterable[str],
    groups: Iterable[str],
    resources: Iterable[str],
    names: Iterable[str] = (),
) -> Rule:
    """A resource PolicyRule; lists are sorted as Kubernetes' rule builder stores them."""
    out: Rule = {"apiGroups": sorted(groups), "resources": sorted(resources)}
    if names:
        out["resourceNames"] = sorted(names)
    out["verbs"] = sorted(verbs)
    return out


def url_rule(verbs: Iterable[str], urls: Iterable[str]) -> Rule:
    """A non-resource PolicyRule for URL paths (a trailing ``*`` matches any suffix)."""
    return {"nonResourceURLs": sorted(urls), "verbs": sorted(verbs)}


def _events_rule() -> Rule:
    return rule(("create", "update", "patch"), (_CORE, _EVENTS), ("events",))


def _metadata(name: str, labels: Mapping[str, str] | None = None, namespace: str = "") -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if namespace:
        meta["namespace"] = namespace
    meta["labels"] = {**(labels or {}), **BOOTSTRAP_LABELS}
    meta["annotations"] = {AUTOUPDATE_ANNOTATION: "true"}
    return meta


def _cluster_role(
    name: str,
    rules: list[Rule] | None = None,
    labels: Mapping[str, str] | None = None,
    aggregate_from: str | None = None,
) -> dict[str, Any]:
    role: dict[str, Any] = {
        "apiVersion": RBAC_API_VERSION,
        "kind": "ClusterRole",
        "metadata": _metadata(name, labels),
        "rules": rules or [],
    }
    if aggregate_from:
        role["aggregationRule"] = {"clusterRoleSelectors": [{"matchLabels": {aggregate_from: "true"}}]}
    return role


def _role(namespace: str, name: str, rules: list[Rule]) -> dict[str, Any]:
    return {
        "apiVersion": RBAC_API_VERSION,
        "kind": "Role",
        "metadata": _metadata(name, namespace=namespace),
        "rules": rules,
    }


def user_subject(name: str) -> dict[str, str]:
    """A binding subject for a user name."""
    return {"apiGroup": RBAC_GROUP, "kind": "User", "name": name}


def group_subject(name: str) -> dict[str, str]:
    """A binding subject for a group name."""
    return {"apiGroup": RBAC_GROUP, "kind": "Group", "name": name}


def service_account_subject(namespace: str, name: str) -> dict[str, str]:
    """A binding subject for a service account."""
    return {"kind": "ServiceAccount", "name": name, "namespace": namespace}


def _cluster_role_binding(name: str, subjects: list[dict[str, str]], role: str | None = None) -> dict[str, Any]:
    binding: dict[str, Any] = {
        "apiVersion": RBAC_API_VERSION,
        "kind": "ClusterRoleBinding",
        "metadata": _metadata(name),
        "roleRef": {"apiGroup": RBAC_GROUP, "kind": "ClusterRole", "name": role or name},
    }
    if subjects:
        binding["subjects"] = subjects
    return binding


def _role_binding(namespace: str, name: str, role: str, subjects: list[dict[str, str]]) -> dict[str, Any]:
    return {
        "apiVersion": RBAC_API_VERSION,
        "kind": "RoleBinding",
        "metadata": _metadata(name, namespace=namespace),
        "roleRef": {"apiGroup": RBAC_GROUP, "kind": "Role", "name": role},
        "subjects": subjects,
    }


def node_rules() -> list[Rule]:
    """The rules of the ``system:node`` ClusterRole, which the Node authorizer grants every node."""
    return _node_rules()


def _node_rules() -> list[Rule]:
    return [
        rule(("create",), (_AUTHN,), ("tokenreviews",)),
        rule(("create",), (_AUTHZ,), ("subjectaccessreviews", "localsubjectaccessreviews")),
        rule(READ, (_CORE,), ("services",)),
        rule(("create", "get", "list", "watch"), (_CORE,), ("nodes",)),
        rule(("update", "patch"), (_CORE,), ("nodes/status",)),
        rule(("update", "patch"), (_CORE,), ("nodes",)),
        rule(("create", "update", "patch"), (_CORE,), ("events",)),
        rule(READ, (_CORE,), ("pods",)),
        rule(("create", "delete"), (_CORE,), ("pods",)),
        rule(("update", "patch"), (_CORE,), ("pods/status",)),
        rule(("create",), (_CORE,), ("pods/eviction",)),
        rule(READ, (_CORE,), ("secrets", "configmaps")),
        rule(("get",), (_CORE,), ("persistentvolumeclaims", "persistentvolumes")),
        rule(("get",), (_CORE,), ("endpoints",)),
        rule(("create", "get", "list", "watch"), (_CERTIFICATES,), ("certificatesigningrequests",)),
        rule(("get", "create", "update", "patch", "delete"), (_COORDINATION,), ("leases",)),
        rule(("get",), (_STORAGE,), ("volumeattachments",)),
        rule(("create",), (_CORE,), ("serviceaccounts/token",)),
        rule(("get", "update", "patch"), (_CORE,), ("persistentvolumeclaims/status",)),
        rule(READ, (_STORAGE,), ("csidrivers",)),
        rule(("get", "create", "update", "patch", "delete"), (_STORAGE,), ("csinodes",)),
        rule(READ, (_NODE,), ("runtimeclasses",)),
    ]


def _aggregate_to_admin_rules() -> list[Rule]:
    return [
        rule(("create",), (_AUTHZ,), ("localsubjectaccessreviews",)),
        rule(READ_WRITE, (_RBAC,), ("roles", "rolebindings")),
    ]


def _aggregate_to_edit_rules() -> list[Rule]:
    return [
        # Reading these can escalate (secrets, exec into pods), so view does not get them.
        rule(
            READ,
            (_CORE,),
            ("pods/attach", "pods/proxy", "pods/exec", "pods/portforward", "secrets", "services/proxy"),
        ),
        rule(("impersonate",), (_CORE,), ("serviceaccounts",)),
        rule(WRITE, (_CORE,), ("pods", "pods/attach", "pods/proxy", "pods/exec", "pods/portforward")),
        rule(("create",), (_CORE,), ("pods/eviction",)),
        rule(
            WRITE,
            (_CORE,),
            (
                "replicationcontrollers",
                "replicationcontrollers/scale",
                "serviceaccounts",
                "services",
                "services/proxy",
                "persistentvolumeclaims",
                "configmaps",
                "secrets",
                "events",
            ),
        ),
        rule(("create",), (_CORE,), ("serviceaccounts/token",)),
        rule(
            WRITE,
            (_APPS,),
            (
                "statefulsets",
                "statefulsets/scale",
                "daemonsets",
                "deployments",
                "deployments/scale",
                "deployments/rollback",
                "replicasets",
                "replicasets/scale",
            ),
        ),
        rule(WRITE, (_AUTOSCALING,), ("horizontalpodautoscalers",)),
        rule(WRITE, (_BATCH,), ("jobs", "cronjobs")),
        rule(
            WRITE,
            (_EXTENSIONS,),
            (
                "daemonsets",
                "deployments",
                "deployments/scale",
                "deployments/rollback",
                "ingresses",
                "replicasets",
                "replicasets/scale",
                "replicationcontrollers/scale",
                "networkpolicies",
            ),
        ),
        rule(WRITE, (_POLICY,), ("poddisruptionbudgets",)),
        rule(WRITE, (_NETWORKING,), ("networkpolicies", "ingresses")),
        rule(READ_WRITE, (_COORDINATION,), ("leases",)),
    ]


def _aggregate_to_view_rules() -> list[Rule]:
    return [
        rule(
            READ,
            (_CORE,),
            (
                "pods",
                "replicationcontrollers",
                "replicationcontrollers/scale",
                "serviceaccounts",
                "services",
                "services/status",
                "endpoints",
                "persistentvolumeclaims",
                "persistentvolumeclaims/status",
                "configmaps",
            ),
        ),
        rule(
            READ,
            (_CORE,),
            (
                "limitranges",
                "resourcequotas",
                "bindings",
                "events",
                "pods/status",
                "resourcequotas/status",
                "namespaces/status",
                "replicationcontrollers/status",
                "pods/log",
            ),
        ),
        # Reading namespaces inside a namespace means reading that namespace only.
        rule(READ, (_CORE,), ("namespaces",)),
        rule(READ, (_DISCOVERY,), ("endpointslices",)),
        rule(
            READ,
            (_APPS,),
            (
                "controllerrevisions",
                "statefulsets",
                "statefulsets/status",
                "statefulsets/scale",
                "daemonsets",
                "daemonsets/status",
                "deployments",
                "deployments/status",
                "deployments/scale",
                "replicasets",
                "replicasets/status",
                "replicasets/scale",
            ),
        ),
        rule(READ, (_AUTOSCALING,), ("horizontalpodautoscalers", "horizontalpodautoscalers/status")),
        rule(READ, (_BATCH,), ("jobs", "cronjobs", "cronjobs/status", "jobs/status")),
        rule(
            READ,
            (_EXTENSIONS,),
            (
                "daemonsets",
                "daemonsets/status",
                "deployments",
                "deployments/scale",
                "deployments/status",
                "ingresses",
                "ingresses/status",
                "replicasets",
                "replicasets/scale",
                "replicasets/status",
                "replicationcontrollers/scale",
                "networkpolicies",
            ),
        ),
        rule(READ, (_POLICY,), ("poddisruptionbudgets", "poddisruptionbudgets/status")),
        rule(READ, (_NETWORKING,), ("networkpolicies", "ingresses", "ingresses/status")),
    ]


def _kube_scheduler_rules() -> list[Rule]:
    return [
        _events_rule(),
        rule(("create",), (_COORDINATION,), ("leases",)),
        rule(("get", "update"), (_COORDINATION,), ("leases",), names=("kube-scheduler",)),
        rule(READ, (_CORE,), ("nodes",)),
        rule(("get", "list", "watch", "delete"), (_CORE,), ("pods",)),
        rule(("create",), (_CORE,), ("pods/binding", "bindings")),
        rule(("patch", "update"), (_CORE,), ("pods/status",)),
        rule(READ, (_CORE,), ("services", "replicationcontrollers")),
        rule(READ, (_APPS, _EXTENSIONS), ("replicasets",)),
        rule(READ, (_APPS,), ("statefulsets",)),
        rule(READ, (_POLICY,), ("poddisruptionbudgets",)),
        rule(READ, (_CORE,), ("persistentvolumeclaims", "persistentvolumes")),
        rule(("create",), (_AUTHN,), ("tokenreviews",)),
        rule(("create",), (_AUTHZ,), ("subjectaccessreviews",)),
        rule(READ, (_STORAGE,), ("csinodes",)),
        rule(READ, (_CORE,), ("namespaces",)),
        rule(READ, (_STORAGE,), ("csidrivers",)),
        rule(READ, (_STORAGE,), ("csistoragecapacities",)),
    ]


def _kube_controller_manager_rules() -> list[Rule]:
    return [
        _events_rule(),
        rule(("create",), (_COORDINATION,), ("leases",)),
        rule(("get", "update"), (_COORDINATION,), ("leases",), names=("kube-controller-manager",)),
        rule(("create",), (_CORE,), ("secrets", "serviceaccounts")),
        rule(("delete",), (_CORE,), ("secrets",)),
        rule(("get",), (_CORE,), ("namespaces", "secrets", "serviceaccounts", "configmaps")),
        rule(("update",), (_CORE,), ("secrets", "serviceaccounts")),
        rule(("create",), (_AUTHN,), ("tokenreviews",)),
        rule(("create",), (_AUTHZ,), ("subjectaccessreviews",)),
        # Every shared informer lists and watches.
        rule(("list", "watch"), ("*",), ("*",)),
        rule(("create",), (_CORE,), ("serviceaccounts/token",)),
    ]


def _approver_role(signer: str) -> dict[str, Any]:
    name = "system:certificates.k8s.io:" + signer.split("/", 1)[1] + "-approver"
    return _cluster_role(name, [rule(("approve",), (_CERTIFICATES,), ("signers",), names=(signer,))])


def default_cluster_roles() -> list[dict[str, Any]]:
    """The bootstrap ClusterRoles; ``admin``, ``edit`` and ``view`` carry their aggregated rules."""
    roles = [
        _cluster_role("cluster-admin", [rule(("*",), ("*",), ("*",)), url_rule(("*",), ("*",))]),
        _cluster_role(
            "system:discovery",
            [
                url_rule(
                    ("get",),
                    (
                        "/livez",
                        "/readyz",
                        "/healthz",
                        "/version",
                        "/version/",
                        "/openapi",
                        "/openapi/*",
                        "/api",
                        "/api/*",
                        "/apis",
                        "/apis/*",
                    ),
                )
            ],
        ),
        _cluster_role(
            "system:monitoring",
            [
                url_rule(
                    ("get",),
                    (
                        "/metrics",
                        "/metrics/slis",
                        "/livez",
                        "/readyz",
                        "/healthz",
                        "/livez/*",
                        "/readyz/*",
                        "/healthz/*",
                    ),
                )
            ],
        ),
        _cluster_role(
            "system:basic-user",
            [
                rule(("create",), (_AUTHZ,), ("selfsubjectaccessreviews", "selfsubjectrulesreviews")),
                rule(("create",), (_AUTHN,), ("selfsubjectreviews",)),
            ],
        ),
        _cluster_role(
            "system:public-info-viewer",
            [url_rule(("get",), ("/livez", "/readyz", "/healthz", "/version", "/version/"))],
        ),
        _cluster_role("admin", aggregate_from=AGGREGATE_TO_ADMIN),
        _cluster_role("edit", labels={AGGREGATE_TO_ADMIN: "true"}, aggregate_from=AGGREGATE_TO_EDIT),
        _cluster_role("view", labels={AGGREGATE_TO_EDIT: "true"}, aggregate_from=AGGREGATE_TO_VIEW),
        _cluster_role("system:aggregate-to-admin", _aggregate_to_admin_rules(), labels={AGGREGATE_TO_ADMIN: "true"}),
        _cluster_role("system:aggregate-to-edit", _aggregate_to_edit_rules(), labels={AGGREGATE_TO_EDIT: "true"}),
        _cluster_role("system:aggregate-to-view", _aggregate_to_view_rules(), labels={AGGREGATE_TO_VIEW: "true"}),
        _cluster_role(
            "system:heapster",
            [
                rule(READ, (_CORE,), ("events", "pods", "nodes", "namespaces")),
                rule(READ, (_EXTENSIONS,), ("deployments",)),
            ],
        ),
        _cluster_role("system:node", _node_rules()),
        _cluster_role(
            "system:node-problem-detector",
            [
                rule(("get",), (_CORE,), ("nodes",)),
                rule(("patch",), (_CORE,), ("nodes/status",)),
                _events_rule(),
            ],
        ),
        _cluster_role(
            "system:kubelet-api-admin",
            [
                rule(READ, (_CORE,), ("nodes",)),
                rule(("proxy",), (_CORE,), ("nodes",)),
                rule(("*",), (_CORE,), ("nodes/proxy", "nodes/metrics", "nodes/stats", "nodes/log")),
            ],
        ),
        _cluster_role(
            "system:node-bootstrapper",
            [rule(("create", "get", "list", "watch"), (_CERTIFICATES,), ("certificatesigningrequests",))],
        ),
        _cluster_role(
            "system:auth-delegator",
            [
                rule(("create",), (_AUTHN,), ("tokenreviews",)),
                rule(("create",), (_AUTHZ,), ("subjectaccessreviews",)),
            ],
        ),
        _cluster_role("system:kube-aggregator", [rule(READ, (_CORE,), ("services", "endpoints"))]),
        _cluster_role("system:kube-controller-manager", _kube_controller_manager_rules()),
        _cluster_role("system:kube-dns", [rule(("list", "watch"), (_CORE,), ("endpoints", "services"))]),
        _cluster_role(
            "system:persistent-volume-provisioner",
            [
                rule(("get", "list", "watch", "create", "delete"), (_CORE,), ("persistentvolumes",)),
                rule(("get", "list", "watch", "update"), (_CORE,), ("persistentvolumeclaims",)),
                rule(READ, (_STORAGE,), ("storageclasses",)),
                rule(("watch",), (_CORE,), ("events",)),
                _events_rule(),
            ],
        ),
        _cluster_role(
            "system:certificates.k8s.io:certificatesigningrequests:nodeclient",
            [rule(("create",), (_CERTIFICATES,), ("certificatesigningrequests/nodeclient",))],
        ),
        _cluster_role(
            "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient",
            [rule(("create",), (_CERTIFICATES,), ("certificatesigningrequests/selfnodeclient",))],
        ),
        _cluster_role(
            "system:volume-scheduler",
            [
                rule(READ_UPDATE, (_CORE,), ("persistentvolumes",)),
                rule(READ, (_STORAGE,), ("storageclasses",)),
                rule(READ_UPDATE, (_CORE,), ("persistentvolumeclaims",)),
            ],
        ),
        _approver_role("kubernetes.io/legacy-unknown"),
        _approver_role("kubernetes.io/kubelet-serving"),
        _approver_role("kubernetes.io/kube-apiserver-client"),
        _approver_role("kubernetes.io/kube-apiserver-client-kubelet"),
        _cluster_role(
            "system:service-account-issuer-discovery",
            [url_rule(("get",), ("/.well-known/openid-configuration", "/openid/v1/jwks"))],
        ),
        _cluster_role(
            "system:node-proxier",
            [
                rule(("list", "watch"), (_CORE,), ("services", "endpoints")),
                rule(READ, (_CORE,), ("nodes",)),
                _events_rule(),
                rule(("list", "watch"), (_DISCOVERY,), ("endpointslices",)),
            ],
        ),
        _cluster_role("system:kube-scheduler", _kube_scheduler_rules()),
    ]
    for role in roles:
        if "aggregationRule" in role:
            role["rules"] = aggregate_cluster_role(role, roles)
    return roles


def default_cluster_role_bindings(node_authorizer: bool = False) -> list[dict[str, Any]]:
    """The bootstrap ClusterRoleBindings.

    Kubernetes leaves ``system:node`` without subjects because its Node authorizer grants
    kubelets their access. Without that authorizer (``node_authorizer=False``, k3p's
    setup) the binding names the ``system:nodes`` group, as Kubernetes did before it had one.
    """
    return [
        _cluster_role_binding("cluster-admin", [group_subject(SYSTEM_MASTERS)]),
        _cluster_role_binding("system:monitoring", [group_subject(MONITORING_GROUP)]),
        _cluster_role_binding("system:discovery", [group_subject(ALL_AUTHENTICATED)]),
        _cluster_role_binding("system:basic-user", [group_subject(ALL_AUTHENTICATED)]),
        _cluster_role_binding(
            "system:public-info-viewer",
            [group_subject(ALL_AUTHENTICATED), group_subject(ALL_UNAUTHENTICATED)],
        ),
        _cluster_role_binding("system:node-proxier", [user_subject(KUBE_PROXY)]),
        _cluster_role_binding("system:kube-controller-manager", [user_subject(KUBE_CONTROLLER_MANAGER)]),
        _cluster_role_binding("system:kube-dns", [service_account_subject("kube-system", "kube-dns")]),
        _cluster_role_binding("system:kube-scheduler", [user_subject(KUBE_SCHEDULER)]),
        _cluster_role_binding("system:volume-scheduler", [user_subject(KUBE_SCHEDULER)]),
        _cluster_role_binding("system:node", [] if node_authorizer else [group_subject(NODES_GROUP)]),
        _cluster_role_binding("system:service-account-issuer-discovery", [group_subject(ALL_SERVICE_ACCOUNTS)]),
    ]


def _leader_locking_rules() -> list[Rule]:
    return [
        rule(("watch", "get", "list", "create", "update"), (_COORDINATION,), ("leases",)),
        rule(("watch", "get", "list", "create", "update"), (_COORDINATION,), ("leasecandidates",)),
    ]


def default_roles() -> list[dict[str, Any]]:
    """The bootstrap namespaced Roles (all in ``kube-system``)."""
    return [
        _role(
            "kube-system",
            "extension-apiserver-authentication-reader",
            [rule(READ, (_CORE,), ("configmaps",), names=("extension-apiserver-authentication",))],
        ),
        _role("kube-system", "system::leader-locking-kube-controller-manager", _leader_locking_rules()),
        _role("kube-system", "system::leader-locking-kube-scheduler", _leader_locking_rules()),
    ]


def default_role_bindings() -> list[dict[str, Any]]:
    """The bootstrap namespaced RoleBindings (all in ``kube-system``)."""
    return [
        _role_binding(
            "kube-system",
            "system::extension-apiserver-authentication-reader",
            "extension-apiserver-authentication-reader",
            [user_subject(KUBE_CONTROLLER_MANAGER), user_subject(KUBE_SCHEDULER)],
        ),
        _role_binding(
            "kube-system",
            "system::leader-locking-kube-controller-manager",
            "system::leader-locking-kube-controller-manager",
            [
                user_subject(KUBE_CONTROLLER_MANAGER),
                service_account_subject("kube-system", "kube-controller-manager"),
                service_account_subject("kube-system", "leader-election-controller"),
            ],
        ),
        _role_binding(
            "kube-system",
            "system::leader-locking-kube-scheduler",
            "system::leader-locking-kube-scheduler",
            [user_subject(KUBE_SCHEDULER), service_account_subject("kube-system", "kube-scheduler")],
        ),
    ]


def default_objects(node_authorizer: bool = False) -> list[dict[str, Any]]:
    """Every bootstrap RBAC object: ClusterRoles, ClusterRoleBindings, Roles, RoleBindings.

    Fresh copies each call, so callers may change them freely.
    """
    return copy.deepcopy(
        [
            *default_cluster_roles(),
            *default_cluster_role_bindings(node_authorizer),
            *default_roles(),
            *default_role_bindings(),
        ]
    )


def aggregate_cluster_role(role: Mapping[str, Any], all_roles: Iterable[Mapping[str, Any]]) -> list[Rule]:
    """The rules an aggregated ClusterRole has: those of every ClusterRole its selectors match.

    Follows the aggregation controller: selectors in order, matching roles by name within
    each, the role itself skipped, each distinct rule once in first-seen order. A matched
    role that is itself aggregated contributes its own aggregated rules, which is the state
    the controller converges to (``admin`` includes ``edit`` includes ``view``). A role
    without ``aggregationRule`` keeps its own rules.
    """
    by_name = {r.get("metadata", {}).get("name", ""): r for r in all_roles}
    return _aggregate(role, by_name, frozenset())


def _aggregate(
    role: Mapping[str, Any], by_name: Mapping[str, Mapping[str, Any]], visiting: frozenset[str]
) -> list[Rule]:
    aggregation = role.get("aggregationRule")
    if aggregation is None:
        return [copy.deepcopy(r) for r in role.get("rules") or []]
    name = role.get("metadata", {}).get("name", "")
    visiting = visiting | {name}
    rules: list[Rule] = []
    for selector in aggregation.get("clusterRoleSelectors") or []:
        for other_name in sorted(by_name):
            other = by_name[other_name]
            if other_name == name or not _selects(selector, other.get("metadata", {}).get("labels") or {}):
                continue
            if other.get("aggregationRule") is not None and other_name in visiting:
                # A cycle of aggregated roles: what the other has stored is all we know.
                contributed = other.get("rules") or []
            else:
                contributed = _aggregate(other, by_name, visiting)
            for r in contributed:
                if r not in rules:
                    rules.append(copy.deepcopy(r))
    return rules


def _selects(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    try:
        return label_selector_from_dict(selector).matches(labels)
    except SelectorError:
        # The aggregation controller cannot use a selector that does not parse: it selects nothing.
        return False
