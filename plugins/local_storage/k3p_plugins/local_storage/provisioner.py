"""The ``rancher.io/local-path`` provisioner: a hostPath volume in a folder of the node that runs the pod.

Upstream's local-path-provisioner runs a helper pod on the node to make and remove the
folder; here the server makes the PersistentVolume and each node's agent looks after the
folders of its own volumes:

- :class:`Provisioner` (server): a claim of a class with this provisioner, handed to it by
  the binder (``volume.kubernetes.io/storage-provisioner``) and placed by the scheduler
  (``volume.kubernetes.io/selected-node``), gets a volume ``pvc-<claim uid>`` pre-bound to
  it, pinned to that node, in ``<storage path>/pvc-<uid>_<namespace>_<name>``.
- :class:`NodeVolumes` (every real node): makes the folders of its volumes (world-writable,
  as local-path's setup script does) and, once a volume is Released with reclaim policy
  Delete, removes its folder and then deletes the volume.

Simulated nodes never make folders, and a node that no longer exists cannot clean up: for
volumes on those the provisioner deletes the Released volume itself.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import structlog

from k3p.client import ApiError, Client, Controller, EventRecorder, InformerFactory, Obj, Requeue, key_of
from k3p.client.objects import annotations_of, is_deleting, name_of, namespace_of, uid_of
from k3p.client.resources import NODES, PERSISTENTVOLUMECLAIMS, PERSISTENTVOLUMES, STORAGECLASSES
from k3p.client.volumes import (
    ANN_BETA_STORAGE_PROVISIONER,
    ANN_PROVISIONED_BY,
    ANN_SELECTED_NODE,
    ANN_STORAGE_PROVISIONER,
    claim_class,
    claim_ref,
    phase_of,
    reclaim_policy,
)

log = structlog.get_logger(__name__)

PROVISIONER = "rancher.io/local-path"
HOSTNAME_LABEL = "kubernetes.io/hostname"
#: the access modes a folder on one node can honour
SUPPORTED_ACCESS_MODES = ("ReadWriteOnce", "ReadWriteOncePod")
#: what simulated (hollow) nodes report as their container runtime
SIMULATED_RUNTIME_PREFIX = "simulated://"


class ProvisioningError(Exception):
    """The claim cannot be served (reported as a ProvisioningFailed event)."""


def volume_name(pvc: Mapping[str, Any]) -> str:
    """The volume made for a claim: ``pvc-<claim uid>``, as every external provisioner names it."""
    return f"pvc-{uid_of(pvc)}"


def volume_folder(base: str | Path, pvc: Mapping[str, Any]) -> str:
    """``<base>/pvc-<uid>_<namespace>_<name>``: local-path's folder name, readable on the node."""
    return str(Path(base) / f"{volume_name(pvc)}_{namespace_of(pvc)}_{name_of(pvc)}")


def provisioned_volume(pvc: Mapping[str, Any], storage_class: Mapping[str, Any], node: Mapping[str, Any],
                       base: str | Path) -> Obj:
    """The PersistentVolume for ``pvc`` on ``node``; ProvisioningError if this provisioner cannot serve it."""
    spec = pvc.get("spec") or {}
    if spec.get("selector") is not None:
        raise ProvisioningError("claim.Spec.Selector is not supported")
    modes = list(spec.get("accessModes") or [])
    if any(m not in SUPPORTED_ACCESS_MODES for m in modes):
        raise ProvisioningError("NodePath only supports ReadWriteOnce and ReadWriteOncePod (1.22+) access modes")
    if (spec.get("volumeMode") or "Filesystem") != "Filesystem":
        raise ProvisioningError(f"volumeMode {spec['volumeMode']} is not supported")
    storage = ((spec.get("resources") or {}).get("requests") or {}).get("storage")
    if storage is None:
        raise ProvisioningError("claim.Spec.Resources.Requests[storage] is not set")
    hostname = ((node.get("metadata") or {}).get("labels") or {}).get(HOSTNAME_LABEL) or name_of(node)
    pv_spec: Obj = {
        "capacity": {"storage": storage},
        "accessModes": modes,
        "persistentVolumeReclaimPolicy": storage_class.get("reclaimPolicy") or "Delete",
        "storageClassName": name_of(storage_class),
        "volumeMode": "Filesystem",
        "hostPath": {"path": volume_folder(base, pvc), "type": "DirectoryOrCreate"},
        "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
            {"key": HOSTNAME_LABEL, "operator": "In", "values": [hostname]}]}]}},
        "claimRef": claim_ref(pvc),
    }
    if storage_class.get("mountOptions"):
        pv_spec["mountOptions"] = list(storage_class["mountOptions"])
    return {"apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": volume_name(pvc), "annotations": {ANN_PROVISIONED_BY: PROVISIONER}},
            "spec": pv_spec}


def is_ours(pv: Mapping[str, Any]) -> bool:
    return annotations_of(pv).get(ANN_PROVISIONED_BY) == PROVISIONER


def volume_node(pv: Mapping[str, Any]) -> str:
    """The node a volume of ours is pinned to ("" if it names none)."""
    required = ((pv.get("spec") or {}).get("nodeAffinity") or {}).get("required") or {}
    for term in required.get("nodeSelectorTerms") or ():
        for expr in term.get("matchExpressions") or ():
            values = expr.get("values") or ()
            if expr.get("key") == HOSTNAME_LABEL and expr.get("operator") == "In" and len(values) == 1:
                return values[0]
    return ""


def to_delete(pv: Mapping[str, Any]) -> bool:
    """A volume of ours whose claim is gone and whose data is to go with it."""
    return is_ours(pv) and phase_of(pv) == "Released" and reclaim_policy(pv) == "Delete" and not is_deleting(pv)


def safe_folder(pv: Mapping[str, Any]) -> str:
    """The volume's folder if it is one this provisioner made (never ``/`` or a stranger's path), else ""."""
    path = ((pv.get("spec") or {}).get("hostPath") or {}).get("path") or ""
    if not path.startswith("/"):
        return ""
    folder = Path(os.path.normpath(path))
    if folder.parent == folder or not folder.name.startswith(f"{name_of(pv)}_"):
        return ""
    return str(folder)


def _node_by_hostname(nodes: list[Obj], hostname: str) -> Obj | None:
    for node in nodes:
        if name_of(node) == hostname or ((node.get("metadata") or {}).get("labels") or {}).get(
                HOSTNAME_LABEL) == hostname:
            return node
    return None


def is_simulated(node: Mapping[str, Any]) -> bool:
    version = ((node.get("status") or {}).get("nodeInfo") or {}).get("containerRuntimeVersion") or ""
    return version.startswith(SIMULATED_RUNTIME_PREFIX)


async def _delete_volume(client: Client, pv: Obj) -> None:
    try:
        await client.delete(PERSISTENTVOLUMES, name_of(pv), preconditions={"uid": uid_of(pv)})
    except ApiError as e:
        if not (e.not_found or e.conflict):
            raise


_CLAIM, _VOLUME = "claim:", "volume:"


class Provisioner(Controller):
    """Makes volumes for the claims handed to ``rancher.io/local-path`` (the server side)."""

    name = "local-path-provisioner"
    workers = 2

    def __init__(self, client: Client, informers: InformerFactory, base: str | Path) -> None:
        super().__init__(client, informers, EventRecorder(client, PROVISIONER))
        self.base = str(base)
        self._pending: set[asyncio.Task[None]] = set()

    def setup(self) -> None:
        self.claims = self.informers.informer(PERSISTENTVOLUMECLAIMS)
        self.volumes = self.informers.informer(PERSISTENTVOLUMES)
        self.classes = self.informers.informer(STORAGECLASSES)
        self.nodes = self.informers.informer(NODES)
        self.claims.add_listener(lambda _t, pvc, _o: self.queue.add(_CLAIM + key_of(pvc)))
        self.volumes.add_listener(self._on_volume)
        self.nodes.add_listener(self._on_node)

    def _on_volume(self, type_: str, pv: Obj, _old: Obj | None) -> None:
        if type_ != "DELETED" and is_ours(pv):
            self.queue.add(_VOLUME + name_of(pv))

    def _on_node(self, type_: str, node: Obj, _old: Obj | None) -> None:
        # (a Released volume on a live node is looked at when it is released: see _on_volume)
        if type_ == "DELETED":
            for pv in self.volumes.items():
                if to_delete(pv):
                    self.queue.add(_VOLUME + name_of(pv))

    def _emit(self, obj: Obj, type_: str, reason: str, message: str) -> None:
        """An event in the background (best effort: never slows provisioning down)."""
        task = asyncio.get_running_loop().create_task(self.events.emit(obj, type_, reason, message))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def reconcile(self, key: str) -> None:
        if key.startswith(_CLAIM):
            pvc = self.claims.get(key[len(_CLAIM):])
            if pvc is not None:
                await self._provision(pvc)
        elif key.startswith(_VOLUME):
            pv = self.volumes.get(key[len(_VOLUME):])
            if pv is not None and to_delete(pv):
                await self._delete_unreachable(pv)

    async def _provision(self, pvc: Obj) -> None:
        ann = annotations_of(pvc)
        if is_deleting(pvc) or (pvc.get("spec") or {}).get("volumeName"):
            return
        if PROVISIONER not in (ann.get(ANN_STORAGE_PROVISIONER), ann.get(ANN_BETA_STORAGE_PROVISIONER)):
            return  # the binder has not handed the claim to a provisioner (yet)
        sc = self.classes.get(claim_class(pvc))
        if sc is None or sc.get("provisioner") != PROVISIONER:
            return
        if self.volumes.get(volume_name(pvc)) is not None:
            return
        selected = ann.get(ANN_SELECTED_NODE)
        ref = f"{namespace_of(pvc)}/{name_of(pvc)}"
        try:
            if not selected:
                raise ProvisioningError("configuration error, no node was specified")
            node = self.nodes.get(selected)
            if node is None:
                self._emit(pvc, "Warning", "ProvisioningFailed", f'failed to get target node: nodes "{selected}" '
                                                                 "not found")
                raise Requeue(5.0)  # the node may not be in the informer yet
            pv = provisioned_volume(pvc, sc, node, self.base)
        except ProvisioningError as e:
            self._emit(pvc, "Warning", "ProvisioningFailed",
                       f'failed to provision volume with StorageClass "{name_of(sc)}": {e}')
            return
        self._emit(pvc, "Normal", "Provisioning", f'External provisioner is provisioning volume for claim "{ref}"')
        try:
            await self.client.create(PERSISTENTVOLUMES, pv)
        except ApiError as e:
            if e.already_exists:
                return
            self._emit(pvc, "Warning", "ProvisioningFailed",
                       f'failed to provision volume with StorageClass "{name_of(sc)}": {e.message or e}')
            raise
        log.info("volume provisioned", volume=pv["metadata"]["name"], node=selected, claim=ref,
                 path=pv["spec"]["hostPath"]["path"])
        self._emit(pvc, "Normal", "ProvisioningSucceeded", f"Successfully provisioned volume {name_of(pv)}")

    async def _delete_unreachable(self, pv: Obj) -> None:
        """Delete a Released volume whose node cannot: simulated (no folder was made) or gone."""
        node = _node_by_hostname(list(self.nodes.items()), volume_node(pv))
        if node is not None and not is_simulated(node):
            return  # that node's agent removes the folder, then the volume
        if node is None:
            log.warning("volume's node is gone; deleting the volume, its folder stays on that host",
                        volume=name_of(pv), node=volume_node(pv), path=safe_folder(pv))
        await _delete_volume(self.client, pv)
        log.info("volume deleted", volume=name_of(pv))


class NodeVolumes(Controller):
    """The folders of this node's local-path volumes: made when missing, removed once Released."""

    name = "local-path-node"
    workers = 1

    def __init__(self, client: Client, informers: InformerFactory, node_name: str) -> None:
        super().__init__(client, informers, EventRecorder(client, PROVISIONER, host=node_name))
        self.node_name = node_name

    def setup(self) -> None:
        self.volumes = self.informers.informer(PERSISTENTVOLUMES)
        self.volumes.add_listener(self._on_volume)

    def _mine(self, pv: Obj) -> bool:
        return is_ours(pv) and volume_node(pv) == self.node_name

    def _on_volume(self, type_: str, pv: Obj, _old: Obj | None) -> None:
        if type_ != "DELETED" and self._mine(pv):
            self.queue.add(name_of(pv))

    async def reconcile(self, key: str) -> None:
        pv = self.volumes.get(key)
        if pv is None or not self._mine(pv) or is_deleting(pv):
            return
        folder = safe_folder(pv)
        if not folder:
            log.warning("volume's folder is not one this provisioner makes; left alone", volume=key,
                        path=((pv.get("spec") or {}).get("hostPath") or {}).get("path"))
            return
        if to_delete(pv):
            await asyncio.to_thread(shutil.rmtree, folder, True)
            if os.path.exists(folder):
                raise OSError(f"could not remove {folder}")
            log.info("volume folder removed", volume=key, path=folder)
            await _delete_volume(self.client, pv)
            log.info("volume deleted", volume=key)
        elif phase_of(pv) != "Released" and not os.path.exists(folder):
            await asyncio.to_thread(_make_folder, folder)
            log.info("volume folder made", volume=key, path=folder)


def _make_folder(folder: str) -> None:
    os.makedirs(folder, exist_ok=True)
    os.chmod(folder, 0o777)  # local-path's setup: any container user may write its volume

