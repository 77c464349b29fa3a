"""Local storage for k3p: the default ``local-path`` StorageClass and its provisioner, as K3s bundles.

A claim of class ``local-path`` (the default class) waits for its first pod; once the
scheduler has picked the pod's node, the provisioner makes a hostPath volume in a folder
of that node (``--default-local-storage-path``, default ``<data-dir>/storage``), pinned to
it, so the pod and its data stay together. Deleting the claim deletes the volume and its
folder (reclaim policy Delete). ``--disable local-storage`` removes the class again.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from k3p.hookspecs import hookimpl
from k3p_plugins.local_storage.provisioner import PROVISIONER

if TYPE_CHECKING:
    from k3p.client.group import MakeController
    from k3p.config import Config, OptionSchema
    from k3p.context import PluginContext
    from k3p.supervisor import Component

#: the user the components act as (ctx.component_client); the RBAC below is all it may do
COMPONENT = "local-storage"
USER = f"system:k3p:{COMPONENT}"
STORAGE_CLASS = "local-path"
RBAC_GROUP = "rbac.authorization.k8s.io"


@hookimpl
def k3p_add_options(schema: OptionSchema) -> None:
    """--default-local-storage-path, named as in K3s."""
    schema.add("default-local-storage-path", default="", commands=("server",), metavar="PATH",
               help="Folder on each node for local-path volumes (default <data-dir>/storage)")


def storage_path(config: Any, data_dir: str | Path) -> Path:
    """Where the folders of local-path volumes go on every node."""
    return Path(config.get("default_local_storage_path") or Path(data_dir) / "storage")


def manifests() -> list[dict[str, Any]]:
    """The default StorageClass and the RBAC of the provisioner's user."""
    return [
        {"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
         "metadata": {"name": STORAGE_CLASS, "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
         "provisioner": PROVISIONER, "volumeBindingMode": "WaitForFirstConsumer", "reclaimPolicy": "Delete"},
        {"apiVersion": f"{RBAC_GROUP}/v1", "kind": "ClusterRole", "metadata": {"name": USER},
         "rules": [
             {"apiGroups": [""], "resources": ["persistentvolumeclaims"], "verbs": ["get", "list", "watch"]},
             {"apiGroups": [""], "resources": ["persistentvolumes"],
              "verbs": ["get", "list", "watch", "create", "delete"]},
             {"apiGroups": ["storage.k8s.io"], "resources": ["storageclasses"], "verbs": ["get", "list", "watch"]},
             {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]},
             {"apiGroups": ["", "events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch", "update"]},
         ]},
        {"apiVersion": f"{RBAC_GROUP}/v1", "kind": "ClusterRoleBinding", "metadata": {"name": USER},
         "roleRef": {"apiGroup": RBAC_GROUP, "kind": "ClusterRole", "name": USER},
         "subjects": [{"apiGroup": RBAC_GROUP, "kind": "User", "name": USER}]},
    ]


@hookimpl
def k3p_manifests(config: Config) -> list[dict[str, Any]]:
    """StorageClass ``local-path`` (the default class) and ClusterRole/Binding ``system:k3p:local-storage``."""
    return manifests()


def _controller(ctx: PluginContext, name: str, user_agent: str, make: MakeController,
                requires: tuple[str, ...] = ()) -> Component:
    """A component running one of the plugin's controllers (``make(client, informers)``) as its own user."""
    from k3p.client import ControllerGroup

    return ControllerGroup(name, lambda: ctx.component_client(COMPONENT, user_agent), [make],
                           requires=requires).component()


@hookimpl
def k3p_server_components(ctx: PluginContext) -> list[Component]:
    """The provisioner: makes a volume for each claim the scheduler has placed on a node."""
    from k3p_plugins.local_storage.provisioner import Provisioner

    base = storage_path(ctx.config, ctx.data_dir)
    # after the addon deployer: its user may do nothing before the RBAC above is applied
    return [_controller(ctx, "local-storage-provisioner", "k3p-local-path-provisioner",
                        lambda client, informers: Provisioner(client, informers, base), requires=("addons",))]


@hookimpl
def k3p_agent_components(ctx: PluginContext) -> list[Component]:
    """On a real node: the folders of its volumes (made, and removed once their claims are deleted)."""
    if not ctx.runs_workloads:
        return []
    from k3p_plugins.local_storage.provisioner import NodeVolumes

    node = ctx.node_name
    return [_controller(ctx, f"local-storage-{node}", "k3p-local-path-node",
                        lambda client, informers: NodeVolumes(client, informers, node))]
