"""PodDisruptionBudget status (kube's disruption controller, pkg/controller/disruption).

For each budget: the pods its selector matches, how many of them are healthy (Ready and not
being deleted, less those an eviction has just claimed), how many must stay healthy
(``minAvailable`` or ``maxUnavailable``, an int or a percent of the pods the owning
controllers want), and so how many voluntary disruptions the eviction subresource may
allow now. ``disruptedPods`` entries the API server wrote at eviction are dropped once the
pod is being deleted or after :data:`DELETION_TIMEOUT`.
"""

from __future__ import annotations

import copy
import datetime as dt
from typing import Any

import structlog

from k3p.client import ApiError, Obj, Requeue
from k3p.client.objects import controller_ref, is_deleting, labels_of, meta, parse_time, set_condition, utcnow
from k3p.client.resources import (
    DEPLOYMENTS,
    PODDISRUPTIONBUDGETS,
    PODS,
    REPLICASETS,
    REPLICATIONCONTROLLERS,
    STATEFULSETS,
)
from k3p.selectors import SelectorError, label_selector_from_dict
from k3p_plugins.controller_manager.base import BaseController
from k3p_plugins.controller_manager.intorpercent import InvalidIntOrPercent, scaled_value
from k3p_plugins.controller_manager.pods import is_ready

log = structlog.get_logger(__name__)

#: how long a pod an eviction approved may stay undeleted before it counts again (upstream: 2 min)
DELETION_TIMEOUT = dt.timedelta(minutes=2)


class SyncError(Exception):
    """The budget's numbers cannot be worked out (reported in the SyncFailed condition)."""


def set_disruption_allowed(status: Obj) -> None:
    """The ``DisruptionAllowed`` condition that ``status.disruptionsAllowed`` implies."""
    allowed = (status.get("disruptionsAllowed") or 0) > 0
    set_condition(status, "DisruptionAllowed", "True" if allowed else "False",
                  "SufficientPods" if allowed else "InsufficientPods")
    _stamp_condition(status)


def _stamp_condition(status: Obj) -> None:
    for cond in status.get("conditions") or []:
        if cond.get("type") == "DisruptionAllowed":
            cond["observedGeneration"] = status.get("observedGeneration", 0)
            cond.setdefault("message", "")


def _condition_up_to_date(status: Obj) -> bool:
    for cond in status.get("conditions") or []:
        if cond.get("type") != "DisruptionAllowed":
            continue
        allowed = (status.get("disruptionsAllowed") or 0) > 0
        return cond.get("observedGeneration") == status.get("observedGeneration") and (
            (allowed and cond.get("status") == "True" and cond.get("reason") == "SufficientPods")
            or (not allowed and cond.get("status") == "False" and cond.get("reason") == "InsufficientPods"))
    return False


class DisruptionController(BaseController):
    name = "disruption"
    component = "controllermanager"

    def setup(self) -> None:
        self.pdbs = self.informers.informer(PODDISRUPTIONBUDGETS)
        self.pods = self.informers.informer(PODS)
        self.deployments = self.informers.informer(DEPLOYMENTS)
        self.replicasets = self.informers.informer(REPLICASETS)
        self.statefulsets = self.informers.informer(STATEFULSETS)
        self.rcs = self.informers.informer(REPLICATIONCONTROLLERS)
        self.watch_objects(self.pdbs)
        self.pods.add_listener(self._on_pod)

    def _on_pod(self, _type: str, pod: Obj, old: Obj | None) -> None:
        for p in (pod, old):
            if p is None:
                continue
            for pdb in self.pdbs.items(meta(p).get("namespace")):
                if self._selects(pdb, p):
                    self.enqueue(pdb)

    @staticmethod
    def _selects(pdb: Obj, pod: Obj) -> bool:
        try:
            return label_selector_from_dict((pdb.get("spec") or {}).get("selector")).matches(labels_of(pod))
        except SelectorError:
            return False

    async def reconcile(self, key: str) -> None:
        pdb = self.pdbs.get(key)
        if pdb is None:
            return
        try:
            status, recheck = self._status(pdb)
        except SyncError as e:
            if await self._fail_safe(pdb, str(e)):
                self.record(pdb, "Warning", "CalculateExpectedPodCountFailed",
                            f"Failed to calculate the number of expected pods: {e}")
            return
        old = pdb.get("status") or {}
        if {k: v for k, v in old.items() if k != "conditions"} != {k: v for k, v in status.items()
                                                                   if k != "conditions"} \
                or not _condition_up_to_date(old):
            new = copy.deepcopy(pdb)
            status["conditions"] = copy.deepcopy(old.get("conditions") or [])
            set_disruption_allowed(status)
            new["status"] = status
            await self._write(new)
        if recheck is not None:
            raise Requeue(max(recheck, 0.5))

    def _status(self, pdb: Obj) -> tuple[Obj, float | None]:
        pods = self._pods_of(pdb)
        expected, desired = self._expected_and_desired(pdb, pods)
        now = utcnow()
        disrupted, recheck = self._disrupted_pods(pdb, pods, now)
        healthy = 0
        for pod in pods:
            if is_deleting(pod):
                continue
            since = parse_time(disrupted.get(meta(pod)["name"]))
            if since is not None and since + DELETION_TIMEOUT > now:
                continue  # an eviction claimed it: it is about to go
            if is_ready(pod):
                healthy += 1
        # A budget that matches no pods yet allows nothing: its first pods may appear
        # before this controller has counted them.
        allowed = healthy - desired
        if expected <= 0 or allowed <= 0:
            allowed = 0
        status: Obj = {"observedGeneration": meta(pdb).get("generation", 0), "disruptionsAllowed": allowed,
                       "currentHealthy": healthy, "desiredHealthy": desired, "expectedPods": expected}
        if disrupted:
            status["disruptedPods"] = disrupted
        return status, recheck

    def _pods_of(self, pdb: Obj) -> list[Obj]:
        try:
            selector = label_selector_from_dict((pdb.get("spec") or {}).get("selector"))
        except SelectorError as e:
            raise SyncError(str(e)) from None
        return [p for p in self.pods.items(meta(pdb).get("namespace")) if selector.matches(labels_of(p))]

    def _expected_and_desired(self, pdb: Obj, pods: list[Obj]) -> tuple[int, int]:
        spec = pdb.get("spec") or {}
        try:
            if spec.get("maxUnavailable") is not None:
                expected = self._expected_scale(pods)
                unavailable = scaled_value(spec["maxUnavailable"], expected, True)
                return expected, max(expected - unavailable, 0)
            minimum = spec.get("minAvailable")
            if isinstance(minimum, int):
                return len(pods), minimum
            if minimum is not None:
                expected = self._expected_scale(pods)
                return expected, scaled_value(minimum, expected, True)
        except InvalidIntOrPercent as e:
            raise SyncError(str(e)) from None
        return 0, 0

    def _expected_scale(self, pods: list[Obj]) -> int:
        """The replicas the pods' controllers want, each controller counted once."""
        scales: dict[str, int] = {}
        for pod in pods:
            ref = controller_ref(pod)
            if ref is None:
                continue  # unmanaged pods add nothing (upstream warns and goes on)
            if ref.get("uid") in scales:
                continue
            found = self._scale_of(ref, meta(pod)["namespace"])
            if found is None:
                raise SyncError(f'found no controllers for pod "{meta(pod)["name"]}"')
            scales[found[0]] = found[1]
        return sum(scales.values())

    def _scale_of(self, ref: Obj, ns: str) -> tuple[str, int] | None:
        kind, group = ref.get("kind"), (ref.get("apiVersion") or "").partition("/")[0]
        owner: Obj | None = None
        if kind == "ReplicaSet" and group == "apps":
            owner = self._owned(self.replicasets, ns, ref)
            parent = controller_ref(owner) if owner else None
            if parent is not None and parent.get("kind") == "Deployment":
                # a Deployment's ReplicaSets count as the Deployment, at its scale
                owner = self._owned(self.deployments, ns, parent)
        elif kind == "StatefulSet" and group == "apps":
            owner = self._owned(self.statefulsets, ns, ref)
        elif kind == "ReplicationController" and ref.get("apiVersion") == "v1":
            owner = self._owned(self.rcs, ns, ref)
        if owner is None:
            return None
        replicas = (owner.get("spec") or {}).get("replicas")
        return meta(owner)["uid"], 1 if replicas is None else int(replicas)

    @staticmethod
    def _owned(informer: Any, ns: str, ref: Obj) -> Obj | None:
        obj = informer.get(f"{ns}/{ref.get('name')}")
        if obj is None or meta(obj).get("uid") != ref.get("uid"):
            return None
        return obj

    @staticmethod
    def _disrupted_pods(pdb: Obj, pods: list[Obj], now: dt.datetime) -> tuple[Obj, float | None]:
        """The entries still pending (pod present, not yet being deleted, within the timeout)."""
        claimed = (pdb.get("status") or {}).get("disruptedPods") or {}
        kept: Obj = {}
        recheck: float | None = None
        for pod in pods:
            name = meta(pod)["name"]
            if is_deleting(pod) or name not in claimed:
                continue
            since = parse_time(claimed[name])
            if since is None:
                continue
            expires = since + DELETION_TIMEOUT
            if expires < now:
                log.info("pod was expected to be deleted but it wasn't", pod=name,
                         namespace=meta(pod).get("namespace"), pdb=meta(pdb)["name"])
                continue
            kept[name] = claimed[name]
            wait = (expires - now).total_seconds()
            recheck = wait if recheck is None else min(recheck, wait)
        return kept, recheck

    async def _fail_safe(self, pdb: Obj, why: str) -> bool:
        """Allow no disruption when the numbers cannot be had (fail closed); whether it wrote."""
        new = copy.deepcopy(pdb)
        status = new.setdefault("status", {})
        status["disruptionsAllowed"] = 0
        if not set_condition(status, "DisruptionAllowed", "False", "SyncFailed", why) and \
                (pdb.get("status") or {}).get("disruptionsAllowed") == 0:
            return False
        _stamp_condition(status)
        await self._write(new)
        return True

    async def _write(self, pdb: Obj) -> None:
        try:
            await self.client.update_status(PODDISRUPTIONBUDGETS, pdb)
        except ApiError as e:
            if not e.not_found:
                raise

