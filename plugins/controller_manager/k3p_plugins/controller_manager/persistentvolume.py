"""The PersistentVolume binder: pairs claims with volumes and runs the volumes' reclaim policy.

kube-controller-manager's ``persistentvolume-binder`` behaviour, step by step:

- A claim without ``pv.kubernetes.io/bind-completed`` is unbound. It gets the smallest
  Available volume that matches it (class, access modes, size, selector, volume mode),
  with volumes pre-bound to it (``claimRef`` naming it) first. Its class decides the rest:
  ``WaitForFirstConsumer`` waits until the scheduler names a node
  (``volume.kubernetes.io/selected-node``); a class with a provisioner gets the
  ``storage-provisioner`` annotations and the external provisioner creates a volume
  pre-bound to the claim; a claim that names no class is given the default class, as
  kube's retroactive default-class assignment does.
- Binding writes the volume's ``claimRef`` (and ``bound-by-controller``), the volume's
  phase, the claim's ``volumeName`` with ``bind-completed``, then the claim's status.
- A volume whose claim is gone becomes Released; ``Retain`` keeps it, ``Delete`` leaves it
  to its provisioner (``pv.kubernetes.io/provisioned-by``); a volume no provisioner made
  cannot be deleted here and goes Failed.

:class:`PVCProtectionController` (kube's ``pvc-protection``) keeps a claim that a pod still
mounts from being deleted, so its volume is not released under a running pod.

The matching functions are pure: the scheduler's volume binding uses them too.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Mapping
from typing import Any

import structlog

from k3p.client import ApiError, Obj, key_of
from k3p.client.objects import annotations_of, format_time, is_deleting, meta, name_of, namespace_of, uid_of
from k3p.client.resources import PERSISTENTVOLUMECLAIMS, PERSISTENTVOLUMES, PODS, STORAGECLASSES
from k3p.client.volumes import (
    ANN_BETA_STORAGE_PROVISIONER,
    ANN_BIND_COMPLETED,
    ANN_BOUND_BY_CONTROLLER,
    ANN_PROVISIONED_BY,
    ANN_SELECTED_NODE,
    ANN_STORAGE_PROVISIONER,
    claim_class,
    claim_ref,
    class_unset,
    default_class,
    find_matching_volume,
    is_bound_to_claim,
    is_delay_binding,
    phase_of,
    reclaim_policy,
    volume_mismatch,
)
from k3p_plugins.controller_manager.base import BaseController

log = structlog.get_logger(__name__)

def _revision(obj: Mapping[str, Any] | None) -> int:
    try:
        return int(meta(obj or {}).get("resourceVersion") or 0)
    except ValueError:
        return 0


def claim_volume_names(pod: Mapping[str, Any]) -> list[str]:
    """The claims a pod's volumes name (``persistentVolumeClaim.claimName``)."""
    return [v["persistentVolumeClaim"].get("claimName", "") for v in (pod.get("spec") or {}).get("volumes") or ()
            if v.get("persistentVolumeClaim")]


# --- the controller --------------------------------------------------------------------------------

_CLAIM, _VOLUME = "claim:", "volume:"


class PersistentVolumeController(BaseController):
    """Binds claims to volumes and releases volumes whose claims are gone."""

    name = "persistentvolume-binder"
    component = "persistentvolume-controller"
    #: one worker, as kube's: two claims must never race for the same volume
    workers = 1
    #: how often unbound claims and released volumes are looked at again (kube's default sync period)
    resync_seconds = 15.0

    def setup(self) -> None:
        self.claims = self.informers.informer(PERSISTENTVOLUMECLAIMS)
        self.volumes = self.informers.informer(PERSISTENTVOLUMES)
        self.classes = self.informers.informer(STORAGECLASSES)
        self.pods = self.informers.informer(PODS)
        #: objects this controller wrote, kept until the informers catch up with them
        self._written: dict[str, Obj] = {}
        self._claims_due = False
        self.claims.add_listener(self._on_claim)
        self.volumes.add_listener(self._on_volume)
        self.classes.add_listener(self._on_class)

    # --- listeners -------------------------------------------------------------------------

    def _on_claim(self, type_: str, pvc: Obj, _old: Obj | None) -> None:
        self.queue.add(_CLAIM + key_of(pvc))
        if type_ == "DELETED":
            name = (pvc.get("spec") or {}).get("volumeName")
            if name:
                self.queue.add(_VOLUME + name)
            for pv in self.volumes.items():
                if is_bound_to_claim(pv, pvc):
                    self.queue.add(_VOLUME + name_of(pv))

    def _on_volume(self, type_: str, pv: Obj, _old: Obj | None) -> None:
        if type_ == "DELETED":
            self._written.pop(_VOLUME + name_of(pv), None)
            for pvc in self.claims.items():
                if (pvc.get("spec") or {}).get("volumeName") == name_of(pv):
                    self.queue.add(_CLAIM + key_of(pvc))
            return
        self.queue.add(_VOLUME + name_of(pv))
        ref = (pv.get("spec") or {}).get("claimRef")
        if ref:
            self.queue.add(f"{_CLAIM}{ref.get('namespace')}/{ref.get('name')}")
        elif phase_of(pv) == "Available":
            self._queue_unbound_claims()  # a new candidate for any waiting claim

    def _on_class(self, type_: str, _sc: Obj, _old: Obj | None) -> None:
        if type_ != "DELETED":
            self._queue_unbound_claims()

    def _queue_unbound_claims(self) -> None:
        """Look at every unbound claim again, once for a burst of changes (a relist reports every volume)."""
        if self._claims_due:
            return
        self._claims_due = True

        def queue_them() -> None:
            self._claims_due = False
            for pvc in self.claims.items():
                if ANN_BIND_COMPLETED not in annotations_of(pvc):
                    self.queue.add(_CLAIM + key_of(pvc))

        asyncio.get_running_loop().call_soon(queue_them)

    async def start(self) -> None:
        self.spawn(self._resync())

    async def _resync(self) -> None:
        while True:
            await asyncio.sleep(self.resync_seconds)
            self._queue_unbound_claims()
            for pv in self.volumes.items():
                if phase_of(pv) in ("", "Pending", "Released"):
                    self.queue.add(_VOLUME + name_of(pv))

    # --- current state ---------------------------------------------------------------------

    def _fresh(self, key: str, cached: Obj | None) -> Obj | None:
        mine = self._written.get(key)
        if mine is None:
            return cached
        if cached is None or _revision(cached) >= _revision(mine):
            self._written.pop(key, None)
            return cached
        return mine

    def _claim(self, key: str) -> Obj | None:
        return self._fresh(_CLAIM + key, self.claims.get(key))

    def _volume(self, name: str) -> Obj | None:
        return self._fresh(_VOLUME + name, self.volumes.get(name))

    def _all_volumes(self) -> list[Obj]:
        out = []
        for pv in self.volumes.items():
            fresh = self._volume(name_of(pv))
            if fresh is not None:
                out.append(fresh)
        return out

    def _classes(self) -> dict[str, Obj]:
        return {name_of(c): c for c in self.classes.items()}

    def _remember(self, prefix: str, obj: Obj) -> Obj:
        obj.setdefault("apiVersion", "v1")
        obj.setdefault("kind", "PersistentVolumeClaim" if prefix == _CLAIM else "PersistentVolume")
        self._written[prefix + key_of(obj)] = obj
        return obj

    # --- reconcile -------------------------------------------------------------------------

    async def reconcile(self, key: str) -> None:
        if key.startswith(_CLAIM):
            pvc = self._claim(key[len(_CLAIM):])
            if pvc is None:
                return
            if ANN_BIND_COMPLETED in annotations_of(pvc):
                await self._sync_bound_claim(pvc)
            else:
                await self._sync_unbound_claim(pvc)
        elif key.startswith(_VOLUME):
            pv = self._volume(key[len(_VOLUME):])
            if pv is not None:
                await self._sync_volume(pv)

    async def _sync_unbound_claim(self, pvc: Obj) -> None:
        volume_name = (pvc.get("spec") or {}).get("volumeName")
        if volume_name:
            await self._sync_requested_volume(pvc, volume_name)
            return
        classes = self._classes()
        delay = is_delay_binding(pvc, classes)
        pv = find_matching_volume(pvc, self._all_volumes(), delay_binding=delay)
        if pv is not None:
            await self._bind(pv, pvc)
            return
        if class_unset(pvc):
            chosen = default_class(classes.values())
            if chosen is not None:
                # kube's retroactive default class; the update brings the claim back here
                updated = copy.deepcopy(pvc)
                updated["spec"]["storageClassName"] = name_of(chosen)
                self._remember(_CLAIM, await self.client.update(PERSISTENTVOLUMECLAIMS, updated))
                log.info("default storage class assigned", namespace=namespace_of(pvc), claim=name_of(pvc),
                         storage_class=name_of(chosen))
                return
        if delay and ANN_SELECTED_NODE not in annotations_of(pvc):
            self._wait_for_consumer(pvc)
        elif claim_class(pvc):
            pvc = await self._provision(pvc, classes)
        else:
            self.record(pvc, "Normal", "FailedBinding",
                        "no persistent volumes available for this claim and no storage class is set")
        await self._claim_status(pvc, "Pending")

    async def _sync_requested_volume(self, pvc: Obj, volume_name: str) -> None:
        """The claim names its volume (set by a user, or left half-done by an earlier bind)."""
        pv = self._volume(volume_name)
        if pv is None:
            await self._claim_status(pvc, "Pending")
            return
        if not (pv.get("spec") or {}).get("claimRef"):
            problem = volume_mismatch(pv, pvc)
            if problem:
                self.record(pvc, "Warning", "VolumeMismatch",
                            f'Cannot bind to requested volume "{volume_name}": {problem}')
                await self._claim_status(pvc, "Pending")
                return
            await self._bind(pv, pvc)
        elif is_bound_to_claim(pv, pvc):
            await self._bind(pv, pvc)
        else:
            # the volume the user asked for belongs to another claim: wait until it is free
            await self._claim_status(pvc, "Pending")

    async def _sync_bound_claim(self, pvc: Obj) -> None:
        volume_name = (pvc.get("spec") or {}).get("volumeName")
        if not volume_name:
            await self._lose(pvc, "ClaimLost", "Bound claim has lost reference to PersistentVolume. "
                                               "Data on the volume is lost!")
            return
        pv = self._volume(volume_name)
        if pv is None:
            await self._lose(pvc, "ClaimLost", "Bound claim has lost its PersistentVolume. Data on the volume is lost!")
            return
        ref = (pv.get("spec") or {}).get("claimRef")
        if not ref or ref.get("uid") == uid_of(pvc):
            await self._bind(pv, pvc)
        else:
            await self._lose(pvc, "ClaimMisbound", "Two claims are bound to the same volume, this one is bound "
                                                   "incorrectly")

    async def _lose(self, pvc: Obj, reason: str, message: str) -> None:
        if phase_of(pvc) != "Lost":
            await self._claim_status(pvc, "Lost")
            self.record(pvc, "Warning", reason, message)

    def _wait_for_consumer(self, pvc: Obj) -> None:
        claim_name = name_of(pvc)
        waiting = sorted(name_of(p) for p in self.pods.items(namespace_of(pvc))
                         if not (p.get("spec") or {}).get("nodeName") and not is_deleting(p)
                         and phase_of(p) not in ("Succeeded", "Failed") and claim_name in claim_volume_names(p))
        if not waiting:
            self.record(pvc, "Normal", "WaitForFirstConsumer",
                        "waiting for first consumer to be created before binding")
        elif len(waiting) == 1:
            self.record(pvc, "Normal", "WaitForPodScheduled", f"waiting for pod {waiting[0]} to be scheduled")
        else:
            self.record(pvc, "Normal", "WaitForPodScheduled", f"waiting for pods {','.join(waiting)} to be scheduled")

    async def _provision(self, pvc: Obj, classes: Mapping[str, Obj]) -> Obj:
        """Hand the claim to its class's provisioner: the annotations it watches for, and an event."""
        class_name = claim_class(pvc)
        sc = classes.get(class_name)
        if sc is None:
            self.record(pvc, "Warning", "ProvisioningFailed", f'storageclass.storage.k8s.io "{class_name}" not found')
            return pvc
        provisioner = sc.get("provisioner") or ""
        ann = annotations_of(pvc)
        if ann.get(ANN_STORAGE_PROVISIONER) != provisioner or ann.get(ANN_BETA_STORAGE_PROVISIONER) != provisioner:
            patch = {"metadata": {"annotations": {ANN_STORAGE_PROVISIONER: provisioner,
                                                  ANN_BETA_STORAGE_PROVISIONER: provisioner},
                                  "resourceVersion": meta(pvc).get("resourceVersion")}}
            pvc = self._remember(_CLAIM, await self.client.patch(PERSISTENTVOLUMECLAIMS, name_of(pvc), patch,
                                                                 namespace_of(pvc)))
        self.record(pvc, "Normal", "ExternalProvisioning",
                    f"Waiting for a volume to be created either by the external provisioner '{provisioner}' or "
                    "manually by the system administrator. If volume creation is delayed, please verify that the "
                    "provisioner is running and correctly registered.")
        return pvc

    # --- binding ---------------------------------------------------------------------------

    async def _bind(self, pv: Obj, pvc: Obj) -> None:
        pv = await self._bind_volume_to_claim(pv, pvc)
        pv = await self._volume_phase(pv, "Bound")
        pvc = await self._bind_claim_to_volume(pvc, pv)
        await self._claim_status(pvc, "Bound", pv)

    async def _bind_volume_to_claim(self, pv: Obj, pvc: Obj) -> Obj:
        ref = (pv.get("spec") or {}).get("claimRef") or {}
        if (ref.get("name") == name_of(pvc) and ref.get("namespace") == namespace_of(pvc)
                and ref.get("uid") == uid_of(pvc)):
            return pv
        updated = copy.deepcopy(pv)
        updated.setdefault("spec", {})["claimRef"] = claim_ref(pvc)
        if not is_bound_to_claim(pv, pvc):
            updated["metadata"].setdefault("annotations", {})[ANN_BOUND_BY_CONTROLLER] = "yes"
        stored = self._remember(_VOLUME, await self.client.update(PERSISTENTVOLUMES, updated))
        log.info("volume bound to claim", volume=name_of(pv), namespace=namespace_of(pvc), claim=name_of(pvc))
        return stored

    async def _bind_claim_to_volume(self, pvc: Obj, pv: Obj) -> Obj:
        spec = pvc.get("spec") or {}
        ann = annotations_of(pvc)
        if spec.get("volumeName") == name_of(pv) and ann.get(ANN_BIND_COMPLETED) == "yes":
            return pvc
        updated = copy.deepcopy(pvc)
        annotations = updated["metadata"].setdefault("annotations", {})
        if spec.get("volumeName") != name_of(pv):
            updated["spec"]["volumeName"] = name_of(pv)
            annotations[ANN_BOUND_BY_CONTROLLER] = "yes"
        annotations[ANN_BIND_COMPLETED] = "yes"
        return self._remember(_CLAIM, await self.client.update(PERSISTENTVOLUMECLAIMS, updated))

    async def _claim_status(self, pvc: Obj, phase: str, pv: Obj | None = None) -> Obj:
        old = pvc.get("status") or {}
        want: dict[str, Any] = {"phase": phase}
        if pv is not None:
            want["accessModes"] = (pv.get("spec") or {}).get("accessModes")
            want["capacity"] = (pv.get("spec") or {}).get("capacity")
        else:
            want["accessModes"] = None
            want["capacity"] = None
        patch = {k: v for k, v in want.items() if old.get(k) != v}
        if not patch:
            return pvc
        stored = await self.client.patch(PERSISTENTVOLUMECLAIMS, name_of(pvc), {"status": patch}, namespace_of(pvc),
                                         subresource="status")
        if phase != old.get("phase"):
            log.info("claim phase", namespace=namespace_of(pvc), claim=name_of(pvc), phase=phase)
        return self._remember(_CLAIM, stored)

    async def _volume_phase(self, pv: Obj, phase: str, message: str = "") -> Obj:
        old = pv.get("status") or {}
        if old.get("phase") == phase and (old.get("message") or "") == message:
            return pv
        status: dict[str, Any] = {"phase": phase, "message": message or None}
        if old.get("phase") != phase:
            status["lastPhaseTransitionTime"] = format_time()
        stored = await self.client.patch(PERSISTENTVOLUMES, name_of(pv), {"status": status}, subresource="status")
        log.info("volume phase", volume=name_of(pv), phase=phase)
        return self._remember(_VOLUME, stored)

    # --- volumes ---------------------------------------------------------------------------

    async def _sync_volume(self, pv: Obj) -> None:
        ref = (pv.get("spec") or {}).get("claimRef")
        if not ref or not ref.get("uid"):
            # unused, or reserved for a claim that has not been bound to it yet
            await self._volume_phase(pv, "Available")
            return
        claim_key = f"{ref.get('namespace')}/{ref.get('name')}"
        pvc = self._claim(claim_key)
        if pvc is None and phase_of(pv) not in ("Released", "Failed"):
            pvc = await self._claim_from_api(ref)  # the claim informer may not have seen a new claim yet
        if pvc is not None and uid_of(pvc) != ref.get("uid"):
            pvc = None  # deleted and made again under the same name
        if pvc is None:
            if phase_of(pv) not in ("Released", "Failed"):
                pv = await self._volume_phase(pv, "Released")
            await self._reclaim(pv)
            return
        bound_to = (pvc.get("spec") or {}).get("volumeName")
        if not bound_to:
            self.queue.add(_CLAIM + claim_key)  # binding in progress: the claim's sync finishes it
        elif bound_to == name_of(pv):
            await self._volume_phase(pv, "Bound")
        elif ANN_PROVISIONED_BY in annotations_of(pv) and reclaim_policy(pv) == "Delete":
            # made for this claim, which got another volume: not needed any more
            if phase_of(pv) not in ("Released", "Failed"):
                pv = await self._volume_phase(pv, "Released")
            await self._reclaim(pv)
        else:
            await self._unbind(pv)

    async def _claim_from_api(self, ref: Mapping[str, Any]) -> Obj | None:
        try:
            return await self.client.get(PERSISTENTVOLUMECLAIMS, ref.get("name", ""), ref.get("namespace"))
        except ApiError as e:
            if e.not_found:
                return None
            raise

    async def _unbind(self, pv: Obj) -> None:
        """Free a volume whose claim went to another volume (a user's pre-binding keeps the claim's name)."""
        updated = copy.deepcopy(pv)
        annotations = updated["metadata"].get("annotations") or {}
        if ANN_BOUND_BY_CONTROLLER in annotations:
            updated["spec"]["claimRef"] = None
            annotations.pop(ANN_BOUND_BY_CONTROLLER, None)
        else:
            updated["spec"]["claimRef"].pop("uid", None)
        stored = self._remember(_VOLUME, await self.client.update(PERSISTENTVOLUMES, updated))
        await self._volume_phase(stored, "Available")

    async def _reclaim(self, pv: Obj) -> None:
        policy = reclaim_policy(pv)
        if policy == "Retain":
            return
        if policy == "Recycle":
            if phase_of(pv) != "Failed":
                await self._volume_phase(pv, "Failed", "No recycler plugin found for the volume!")
                self.record(pv, "Warning", "VolumeFailedRecycle", "No recycler plugin found for the volume!")
            return
        if policy == "Delete" and ANN_PROVISIONED_BY in annotations_of(pv):
            return  # its provisioner deletes it (and the data) once it sees it Released
        if phase_of(pv) != "Failed":
            message = f'error getting deleter volume plugin for volume "{name_of(pv)}": no deletable volume plugin ' \
                      "matched"
            await self._volume_phase(pv, "Failed", message)
            self.record(pv, "Warning", "VolumeFailedDelete", message)



# --- claim protection -------------------------------------------------------------------------------

PVC_PROTECTION_FINALIZER = "kubernetes.io/pvc-protection"


def pod_uses_claim(pod: Mapping[str, Any], claim_name: str) -> bool:
    """A pod on a node that is not finished and mounts the claim (kube's podUsesPVC)."""
    spec = pod.get("spec") or {}
    if not spec.get("nodeName") or phase_of(pod) in ("Succeeded", "Failed"):
        return False
    return claim_name in claim_volume_names(pod)


class PVCProtectionController(BaseController):
    """A claim in use by a pod is not deleted until that pod is gone (kube's ``pvc-protection``).

    Every claim carries the ``kubernetes.io/pvc-protection`` finalizer; once a claim is being
    deleted, the finalizer is removed when no scheduled, unfinished pod mounts it, so its
    volume is released only after its last user stopped.
    """

    name = "pvc-protection"
    component = "pvc-protection-controller"

    def setup(self) -> None:
        self.claims = self.informers.informer(PERSISTENTVOLUMECLAIMS)
        self.pods = self.informers.informer(PODS)
        self.watch_objects(self.claims)
        self.pods.add_listener(self._on_pod)

    def _on_pod(self, type_: str, pod: Obj, old: Obj | None) -> None:
        # a pod that goes away (or finishes) may free the claims it used
        if type_ == "DELETED" or phase_of(pod) in ("Succeeded", "Failed"):
            for name in claim_volume_names(pod):
                self.queue.add(f"{namespace_of(pod)}/{name}")

    async def reconcile(self, key: str) -> None:
        pvc = self.claims.get(key)
        if pvc is None:
            return
        finalizers = list(meta(pvc).get("finalizers") or [])
        if not is_deleting(pvc):
            if PVC_PROTECTION_FINALIZER not in finalizers:
                await self._set_finalizers(pvc, [*finalizers, PVC_PROTECTION_FINALIZER])
            return
        if PVC_PROTECTION_FINALIZER not in finalizers:
            return
        if any(pod_uses_claim(p, name_of(pvc)) for p in self.pods.items(namespace_of(pvc))):
            return
        # the informer may lag behind a pod that was just bound: ask the API before letting go
        listed = await self.client.list(PODS, namespace_of(pvc))
        if any(pod_uses_claim(p, name_of(pvc)) for p in listed.get("items") or []):
            return
        await self._set_finalizers(pvc, [f for f in finalizers if f != PVC_PROTECTION_FINALIZER])
        log.info("claim no longer in use; deletion may go on", namespace=namespace_of(pvc), claim=name_of(pvc))

    async def _set_finalizers(self, pvc: Obj, finalizers: list[str]) -> None:
        patch = {"metadata": {"finalizers": finalizers, "resourceVersion": meta(pvc).get("resourceVersion")}}
        try:
            await self.client.patch(PERSISTENTVOLUMECLAIMS, name_of(pvc), patch, namespace_of(pvc))
        except ApiError as e:
            if not e.not_found:
                raise
