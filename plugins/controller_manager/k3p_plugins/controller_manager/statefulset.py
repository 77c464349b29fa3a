"""StatefulSets: pods with stable names and claims, created in order and updated from the top down."""

from __future__ import annotations

import copy
import re
from typing import Any

import structlog

from k3p.client import ApiError, Obj, Requeue, split_key
from k3p.client.objects import controller_ref, is_deleting, labels_of, meta, name_of, owner_reference
from k3p.client.resources import CONTROLLERREVISIONS, PERSISTENTVOLUMECLAIMS, PODS, STATEFULSETS
from k3p.selectors import LabelSelector, SelectorError, label_selector_from_dict
from k3p_plugins.controller_manager.base import BaseController
from k3p_plugins.controller_manager.claims import claim, recheck_owner
from k3p_plugins.controller_manager.pods import (
    is_available,
    is_ready,
    phase,
    pod_from_template,
    seconds_until_available,
)
from k3p_plugins.controller_manager.revisions import (
    REVISION_HASH_LABEL,
    RevisionCollision,
    ensure_current_revision,
    owned_revisions,
    template_of_revision,
    truncate_history,
)
from k3p_plugins.controller_manager.status import omit_zero, write_status

log = structlog.get_logger(__name__)

POD_NAME_LABEL = "statefulset.kubernetes.io/pod-name"
POD_INDEX_LABEL = "apps.kubernetes.io/pod-index"
_ORDINAL = re.compile(r"^(.*)-([0-9]+)$")


def ordinal_of(set_name: str, pod: Obj) -> int | None:
    """The pod's ordinal if its name is ``<set>-<n>``, else None (not a member)."""
    m = _ORDINAL.match(name_of(pod))
    if m is None or m.group(1) != set_name:
        return None
    return int(m.group(2))


def claim_name(template: Obj, set_name: str, ordinal: int) -> str:
    return f"{name_of(template)}-{set_name}-{ordinal}"


def start_ordinal(sts: Obj) -> int:
    return int(((sts["spec"].get("ordinals") or {}).get("start")) or 0)


def new_pod(sts: Obj, template: Obj, ordinal: int, revision_name: str) -> Obj:
    """The pod of ``ordinal``: name, hostname, subdomain, identity labels, claims and revision label."""
    name = f"{name_of(sts)}-{ordinal}"
    pod = pod_from_template(template, owner_reference(sts), name=name, namespace=meta(sts)["namespace"])
    labels = pod["metadata"].setdefault("labels", {})
    labels[POD_NAME_LABEL] = name
    labels[POD_INDEX_LABEL] = str(ordinal)
    labels[REVISION_HASH_LABEL] = revision_name
    spec = pod["spec"]
    spec["hostname"] = name
    if sts["spec"].get("serviceName"):
        spec["subdomain"] = sts["spec"]["serviceName"]
    templates = sts["spec"].get("volumeClaimTemplates") or []
    if templates:
        claimed = {name_of(t) for t in templates}
        volumes = [v for v in spec.get("volumes") or [] if v.get("name") not in claimed]
        for t in templates:
            volumes.append({"name": name_of(t),
                            "persistentVolumeClaim": {"claimName": claim_name(t, name_of(sts), ordinal)}})
        spec["volumes"] = volumes
    return pod


def running_and_ready(pod: Obj) -> bool:
    return phase(pod) == "Running" and is_ready(pod)


def healthy(pod: Obj, min_ready: int) -> bool:
    return running_and_ready(pod) and is_available(pod, min_ready) and not is_deleting(pod)


class StatefulSetController(BaseController):
    name = "statefulset"
    component = "statefulset-controller"
    workers = 2

    def setup(self) -> None:
        self.sets = self.informers.informer(STATEFULSETS)
        self.pods = self.informers.informer(PODS)
        self.revisions = self.informers.informer(CONTROLLERREVISIONS)
        self.claims = self.informers.informer(PERSISTENTVOLUMECLAIMS)
        self.watch_objects(self.sets)
        self.watch_owned(self.pods, "StatefulSet")
        self.watch_owned(self.revisions, "StatefulSet")

    async def reconcile(self, key: str) -> None:
        cached = self.sets.get(key)
        if cached is None:
            return
        sts = copy.deepcopy(cached)
        ns, set_name = split_key(key)
        try:
            selector = label_selector_from_dict(sts["spec"].get("selector"))
        except SelectorError:
            selector = LabelSelector.match_nothing()
        members = [p for p in self.pods.items(ns) if ordinal_of(set_name, p) is not None]
        pods = await claim(self.client, PODS, sts, selector, members,
                           can_adopt=recheck_owner(self.client, STATEFULSETS, sts))
        try:
            update_rev, revs = await ensure_current_revision(self.client, self.revisions, sts)
        except RevisionCollision:
            status = dict(sts.get("status") or {})
            status["collisionCount"] = int(status.get("collisionCount") or 0) + 1
            await write_status(self.client, STATEFULSETS, sts, status)
            raise
        current_name = (sts.get("status") or {}).get("currentRevision")
        current_rev = next((r for r in revs if name_of(r) == current_name), update_rev)
        waits: list[float] = []
        if not is_deleting(sts):
            await self._update(sts, pods, current_rev, update_rev, waits)
        fresh = [p for p in self.pods.items(ns) if ordinal_of(set_name, p) is not None
                 and controller_ref(p) is not None and controller_ref(p).get("uid") == meta(sts).get("uid")]
        status = self._status(sts, fresh, name_of(current_rev), name_of(update_rev))
        in_use = {status.get("currentRevision"), status.get("updateRevision")} | {
            labels_of(p).get(REVISION_HASH_LABEL) for p in fresh}
        await truncate_history(self.client, owned_revisions(self.revisions, sts), {n for n in in_use if n},
                               sts["spec"].get("revisionHistoryLimit"))
        await write_status(self.client, STATEFULSETS, sts, status)
        if waits:
            raise Requeue(min(waits) + 0.5)

    def _status(self, sts: Obj, pods: list[Obj], current: str, update: str) -> dict[str, Any]:
        min_ready = int(sts["spec"].get("minReadySeconds") or 0)
        counts = {"replicas": 0, "readyReplicas": 0, "availableReplicas": 0, "currentReplicas": 0,
                  "updatedReplicas": 0}
        for pod in pods:
            counts["replicas"] += 1
            if running_and_ready(pod):
                counts["readyReplicas"] += 1
                if is_available(pod, min_ready):
                    counts["availableReplicas"] += 1
            if not is_deleting(pod):
                rev = labels_of(pod).get(REVISION_HASH_LABEL)
                if rev == current:
                    counts["currentReplicas"] += 1
                if rev == update:
                    counts["updatedReplicas"] += 1
        status: dict[str, Any] = {"observedGeneration": meta(sts).get("generation"), **counts,
                                  "currentRevision": current, "updateRevision": update}
        old = sts.get("status") or {}
        if old.get("collisionCount") is not None:
            status["collisionCount"] = old["collisionCount"]
        if ((sts["spec"].get("updateStrategy") or {}).get("type", "RollingUpdate") == "RollingUpdate"
                and counts["updatedReplicas"] == counts["replicas"] and counts["readyReplicas"] == counts["replicas"]):
            status["currentReplicas"] = counts["updatedReplicas"]
            status["currentRevision"] = update
        if old.get("conditions"):
            status["conditions"] = old["conditions"]
        return omit_zero(status, keep=("replicas", "availableReplicas"))

    async def _update(self, sts: Obj, pods: list[Obj], current_rev: Obj, update_rev: Obj,
                      waits: list[float]) -> None:
        set_name = name_of(sts)
        ns = meta(sts)["namespace"]
        min_ready = int(sts["spec"].get("minReadySeconds") or 0)
        monotonic = sts["spec"].get("podManagementPolicy", "OrderedReady") != "Parallel"
        start = start_ordinal(sts)
        count = int(sts["spec"].get("replicas", 1))
        end = start + count
        strategy = sts["spec"].get("updateStrategy") or {"type": "RollingUpdate"}
        rolling = strategy.get("type", "RollingUpdate") == "RollingUpdate"
        partition = int(((strategy.get("rollingUpdate") or {}).get("partition")) or 0)
        current_template = template_of_revision(current_rev)
        update_template = template_of_revision(update_rev)

        replicas: dict[int, Obj | None] = {i: None for i in range(start, end)}
        condemned: list[Obj] = []
        for pod in pods:
            ordinal = ordinal_of(set_name, pod)
            if ordinal is None:
                continue
            if start <= ordinal < end:
                replicas[ordinal] = pod
            else:
                condemned.append(pod)
        condemned.sort(key=lambda p: -(ordinal_of(set_name, p) or 0))

        def versioned(ordinal: int) -> Obj:
            if rolling and ordinal < start + partition:
                return new_pod(sts, current_template, ordinal, name_of(current_rev))
            return new_pod(sts, update_template, ordinal, name_of(update_rev))

        unhealthy = [p for p in [*(replicas[o] for o in sorted(replicas)), *condemned]
                     if p is not None and not (running_and_ready(p) and not is_deleting(p))]
        first_unhealthy = unhealthy[0] if unhealthy else None

        for ordinal in sorted(replicas):
            pod = replicas[ordinal]
            if pod is not None and phase(pod) in ("Failed", "Succeeded") and not is_deleting(pod):
                kind = "failed" if phase(pod) == "Failed" else "terminated"
                self.record(sts, "Warning", "RecreatingFailedPod" if kind == "failed" else "RecreatingTerminatedPod",
                            f"StatefulSet {ns}/{set_name} is recreating {kind} Pod {name_of(pod)}")
                await self._delete_pod(sts, pod)
                if monotonic:
                    return
                continue
            if pod is None:
                wanted = versioned(ordinal)
                await self._create_claims(sts, ordinal, name_of(wanted))
                try:
                    await self.client.create(PODS, wanted, ns)
                except ApiError as e:
                    if not e.already_exists:
                        self.record(sts, "Warning", "FailedCreate",
                                    f"create Pod {name_of(wanted)} in StatefulSet {set_name} failed error: {e.message}")
                        raise
                else:
                    self.record(sts, "Normal", "SuccessfulCreate",
                                f"create Pod {name_of(wanted)} in StatefulSet {set_name} successful")
                if monotonic:
                    return
                continue
            if is_deleting(pod) and monotonic:
                return
            if phase(pod) == "Pending":
                await self._create_claims(sts, ordinal, name_of(pod))
            if monotonic and not running_and_ready(pod):
                return
            if monotonic and not is_available(pod, min_ready):
                w = seconds_until_available(pod, min_ready)
                if w is not None:
                    waits.append(w)
                return

        for pod in condemned:
            if is_deleting(pod):
                if monotonic:
                    return
                continue
            if monotonic and not running_and_ready(pod) and pod is not first_unhealthy:
                return
            await self._delete_pod(sts, pod)
            if monotonic:
                return

        if not rolling:
            return
        for ordinal in sorted(replicas, reverse=True):
            if ordinal < start + partition:
                break
            pod = replicas[ordinal]
            if pod is None:
                return
            if labels_of(pod).get(REVISION_HASH_LABEL) != name_of(update_rev) and not is_deleting(pod):
                await self._delete_pod(sts, pod)
                return
            if not healthy(pod, min_ready):
                return

    async def _delete_pod(self, sts: Obj, pod: Obj) -> None:
        try:
            await self.client.delete(PODS, name_of(pod), meta(pod)["namespace"],
                                     preconditions={"uid": meta(pod).get("uid")})
        except ApiError as e:
            if e.not_found or e.conflict:
                return
            raise
        self.record(sts, "Normal", "SuccessfulDelete",
                    f"delete Pod {name_of(pod)} in StatefulSet {name_of(sts)} successful")

    async def _create_claims(self, sts: Obj, ordinal: int, pod_name: str) -> None:
        ns = meta(sts)["namespace"]
        policy = sts["spec"].get("persistentVolumeClaimRetentionPolicy") or {}
        match_labels = (sts["spec"].get("selector") or {}).get("matchLabels") or {}
        for template in sts["spec"].get("volumeClaimTemplates") or []:
            name = claim_name(template, name_of(sts), ordinal)
            existing = self.claims.get(f"{ns}/{name}")
            if existing is not None:
                continue
            pvc = copy.deepcopy(template)
            pvc.pop("status", None)
            pvc["apiVersion"], pvc["kind"] = "v1", "PersistentVolumeClaim"
            pmeta = pvc.setdefault("metadata", {})
            pmeta["name"], pmeta["namespace"] = name, ns
            pmeta["labels"] = {**(pmeta.get("labels") or {}), **match_labels}
            for key in ("uid", "resourceVersion", "creationTimestamp"):
                pmeta.pop(key, None)
            if policy.get("whenDeleted") == "Delete":
                pmeta["ownerReferences"] = [owner_reference(sts, controller=False)]
            try:
                await self.client.create(PERSISTENTVOLUMECLAIMS, pvc, ns)
            except ApiError as e:
                if e.already_exists:
                    continue
                self.record(sts, "Warning", "FailedCreate",
                            f"create Claim {name} for Pod {pod_name} in StatefulSet {name_of(sts)} failed error: "
                            f"{e.message}")
                raise
            self.record(sts, "Normal", "SuccessfulCreate",
                        f"create Claim {name} Pod {pod_name} in StatefulSet {name_of(sts)} success")
