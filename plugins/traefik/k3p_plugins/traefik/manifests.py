"""The cluster objects the ingress plugin needs: its IngressClass and the RBAC of its controller."""

from __future__ import annotations

from typing import Any

from k3p_plugins.traefik.routes import CLASS_NAME, CONTROLLER, DEFAULT_CLASS_ANNOTATION

#: the user the controller acts as (``ctx.component_client("traefik", ...)``)
USER = "system:k3p:traefik"
CLUSTER_ROLE = "system:k3p:traefik"

_READ = ["get", "list", "watch"]


def ingress_class() -> dict[str, Any]:
    """IngressClass ``traefik``, the cluster's default class."""
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "IngressClass",
        "metadata": {"name": CLASS_NAME, "annotations": {DEFAULT_CLASS_ANNOTATION: "true"}},
        "spec": {"controller": CONTROLLER},
    }


def cluster_role() -> dict[str, Any]:
    """What the controller reads (routes, endpoints, TLS Secrets, nodes) and the Ingress status it writes."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": CLUSTER_ROLE},
        "rules": [
            {"apiGroups": [""], "resources": ["services", "endpoints", "secrets", "nodes"], "verbs": _READ},
            {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": _READ},
            {"apiGroups": ["networking.k8s.io"], "resources": ["ingresses", "ingressclasses"], "verbs": _READ},
            {"apiGroups": ["networking.k8s.io"], "resources": ["ingresses/status"], "verbs": ["update", "patch"]},
        ],
    }


def cluster_role_binding() -> dict[str, Any]:
    """Binds :func:`cluster_role` to the controller's user."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": CLUSTER_ROLE},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": CLUSTER_ROLE},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": USER}],
    }


def manifests() -> list[dict[str, Any]]:
    """Every object the plugin installs."""
    return [ingress_class(), cluster_role(), cluster_role_binding()]
