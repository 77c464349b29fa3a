"""The cluster's controllers (what kube-controller-manager runs), as the ``controller-manager`` plugin.

Every controller is a level-triggered reconcile loop that reads the cluster through shared
informers and writes through the API, like any other client. ``k3p server --disable
controller-manager`` (or K3s's ``--disable-controller-manager``) leaves them all out.
:class:`ControllerManager` runs the same controllers against any API server (tests use
it with an admin client).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from k3p.hookspecs import hookimpl
from k3p_plugins.controller_manager.base import ControllerOptions
from k3p_plugins.controller_manager.manager import (
    CONTROLLERS,
    ControllerManager,
    controller_manager_component,
)

if TYPE_CHECKING:
    from k3p.config import Config
    from k3p.context import PluginContext
    from k3p.supervisor import Component

__all__ = ["CONTROLLERS", "ControllerManager", "ControllerOptions", "controller_manager_component"]

USER = "system:kube-controller-manager"
ROLE = "system:k3p:controller-manager"
RBAC = "rbac.authorization.k8s.io"


@hookimpl
def k3p_manifests(config: Config) -> list[dict[str, Any]]:
    """The rights of ``system:kube-controller-manager``.

    Upstream's controller manager runs each controller with a service account of its own
    (``--use-service-account-credentials``); k3p's runs them all with one identity, so
    that identity gets what they need together: every verb on every resource, as the
    garbage collector and the namespace controller must reach every type.
    """
    return [
        {"apiVersion": f"{RBAC}/v1", "kind": "ClusterRole", "metadata": {"name": ROLE},
         "rules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]},
        {"apiVersion": f"{RBAC}/v1", "kind": "ClusterRoleBinding", "metadata": {"name": ROLE},
         "roleRef": {"apiGroup": RBAC, "kind": "ClusterRole", "name": ROLE},
         "subjects": [{"apiGroup": RBAC, "kind": "User", "name": USER}]},
    ]


@hookimpl
def k3p_server_components(ctx: PluginContext) -> list[Component]:
    """The controller manager: every controller of :data:`CONTROLLERS`."""
    return [controller_manager_component(ctx)]

