"""ReplicaSets and ReplicationControllers: keep ``spec.replicas`` pods matching the selector alive."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import structlog

from k3p.client import ApiError, Obj, Requeue, key_of, split_key
from k3p.client.objects import (
    controller_ref,
    is_deleting,
    labels_of,
    meta,
    owner_reference,
    remove_condition,
    set_condition,
)
from k3p.client.resources import PODS, REPLICASETS, REPLICATIONCONTROLLERS
from k3p.selectors import LabelSelector, SelectorError, label_selector_from_dict
from k3p_plugins.controller_manager.base import BaseController, require_workload_spec
from k3p_plugins.controller_manager.claims import claim, recheck_owner
from k3p_plugins.controller_manager.expectations import Expectations
from k3p_plugins.controller_manager.pods import (
    deletion_order,
    is_active,
    is_available,
    is_ready,
    pod_from_template,
    seconds_until_available,
)
from k3p_plugins.controller_manager.status import omit_zero, write_status

log = structlog.get_logger(__name__)

#: most pods created or deleted in one sync (kube's burstReplicas)
BURST_REPLICAS = 500


def rs_status(rs: Obj, pods: list[Obj], failure: str | None = None) -> dict[str, Any]:
    """The status a ReplicaSet/ReplicationController reports for its active ``pods``."""
    template_labels = LabelSelector.from_set(((rs["spec"].get("template") or {}).get("metadata") or {})
                                             .get("labels") or {})
    min_ready = int(rs["spec"].get("minReadySeconds") or 0)
    status: dict[str, Any] = {
        "replicas": len(pods),
        "fullyLabeledReplicas": sum(1 for p in pods if template_labels.matches(labels_of(p))),
        "readyReplicas": sum(1 for p in pods if is_ready(p)),
        "availableReplicas": sum(1 for p in pods if is_available(p, min_ready)),
        "observedGeneration": meta(rs).get("generation"),
    }
    old = copy.deepcopy(rs.get("status") or {})
    if failure is not None:
        set_condition(old, "ReplicaFailure", "True", "FailedCreate", failure)
    elif len(pods) == int(rs["spec"].get("replicas", 1)):
        remove_condition(old, "ReplicaFailure")
    if old.get("conditions"):
        status["conditions"] = old["conditions"]
    return omit_zero(status, keep=("replicas",))


def slow_start_batches(count: int, initial: int = 1) -> list[int]:
    """Batch sizes 1, 2, 4, ... adding up to ``count`` (a failing create stops the rest early)."""
    sizes = []
    size = initial
    while count > 0:
        take = min(size, count)
        sizes.append(take)
        count -= take
        size *= 2
    return sizes


class ReplicaSetController(BaseController):
    name = "replicaset"
    component = "replicaset-controller"
    resource = REPLICASETS
    workers = 4

    def setup(self) -> None:
        self.expectations = Expectations()
        self.owners = self.informers.informer(self.resource)
        self.pods = self.informers.informer(PODS)
        self.watch_objects(self.owners)
        self.pods.add_listener(self._on_pod)
        self._selectors: dict[tuple[str, Any], LabelSelector] = {}

    # --- events -----------------------------------------------------------------------------

    def selector_of(self, owner: Obj) -> LabelSelector:
        key = (meta(owner).get("uid", ""), meta(owner).get("generation"))
        sel = self._selectors.get(key)
        if sel is None:
            raw = owner["spec"].get("selector")
            if self.resource is REPLICATIONCONTROLLERS:
                raw = raw or ((owner["spec"].get("template") or {}).get("metadata") or {}).get("labels") or {}
                sel = LabelSelector.from_set(raw) if raw else LabelSelector.match_nothing()
            else:
                try:
                    sel = label_selector_from_dict(raw)
                except SelectorError:
                    sel = LabelSelector.match_nothing()
            if len(self._selectors) > 10000:
                self._selectors.clear()
            self._selectors[key] = sel
        return sel

    def _on_pod(self, type_: str, pod: Obj, old: Obj | None) -> None:
        ns = meta(pod).get("namespace")
        pod_key = key_of(pod)
        ref = controller_ref(pod)
        if ref is not None:
            if ref.get("kind") != self.resource.kind:
                return
            owner_key = f"{ns}/{ref['name']}"
            if type_ == "ADDED":
                self.expectations.creation_observed(owner_key, pod_key)
            if type_ == "DELETED" or is_deleting(pod):
                self.expectations.deletion_observed(owner_key, pod_key)
            self.queue.add(owner_key)
        if old is not None:
            old_ref = controller_ref(old)
            if old_ref is not None and old_ref.get("kind") == self.resource.kind and (
                    ref is None or old_ref.get("uid") != ref.get("uid")):
                self.queue.add(f"{ns}/{old_ref['name']}")
        if ref is None and type_ != "DELETED" and not is_deleting(pod):
            if type_ == "MODIFIED" and old is not None and labels_of(old) == labels_of(pod):
                return
            for owner in self.owners.items(ns):
                if self.selector_of(owner).matches(labels_of(pod)):
                    self.enqueue(owner)

    # --- reconcile --------------------------------------------------------------------------

    async def reconcile(self, key: str) -> None:
        owner = self.owners.get(key)
        if owner is None:
            self.expectations.forget(key)
            return
        require_workload_spec(owner)
        ns, _ = split_key(key)
        needs_sync = self.expectations.satisfied(key)
        selector = self.selector_of(owner)
        active = [p for p in self.pods.items(ns) if is_active(p)]
        pods = await claim(self.client, PODS, owner, selector, active,
                           can_adopt=recheck_owner(self.client, self.resource, owner))
        failure = None
        if needs_sync and not is_deleting(owner):
            failure = await self.manage_replicas(key, owner, pods)
        status = rs_status(owner, pods, failure)
        await write_status(self.client, self.resource, owner, status)
        if failure is not None:
            raise Requeue(5)
        min_ready = int(owner["spec"].get("minReadySeconds") or 0)
        waits = [w for p in pods if (w := seconds_until_available(p, min_ready)) is not None]
        if waits:
            raise Requeue(min(waits) + 0.5)

    async def report_malformed(self, obj: Obj, message: str) -> None:
        # the condition kube sets when pods cannot be created
        status = copy.deepcopy(obj.get("status") or {})
        uid = meta(obj).get("uid")
        status["replicas"] = sum(1 for p in self.pods.items(meta(obj).get("namespace")) if is_active(p) and any(
            r.get("uid") == uid and r.get("controller") for r in meta(p).get("ownerReferences") or []))
        set_condition(status, "ReplicaFailure", "True", "FailedCreate", message)
        await write_status(self.client, self.resource, obj, status)

    async def manage_replicas(self, key: str, owner: Obj, pods: list[Obj]) -> str | None:
        """Create or delete pods toward ``spec.replicas``; the create error message, if any."""
        want = int(owner["spec"].get("replicas", 1))
        diff = len(pods) - want
        ns = meta(owner)["namespace"]
        if diff < 0:
            return await self._create(key, owner, min(-diff, BURST_REPLICAS), ns)
        if diff > 0:
            victims = deletion_order(pods)[:min(diff, BURST_REPLICAS)]
            await asyncio.gather(*(self._delete(key, owner, p) for p in victims))
        return None

    async def _create(self, key: str, owner: Obj, count: int, ns: str) -> str | None:
        template = owner["spec"].get("template") or {}
        ref = owner_reference(owner)
        for batch in slow_start_batches(count):
            results = await asyncio.gather(*(self._create_one(key, owner, template, ref, ns) for _ in range(batch)),
                                           return_exceptions=True)
            errors = [r for r in results if isinstance(r, BaseException)]
            if errors:
                message = str(errors[0])
                self.record(owner, "Warning", "FailedCreate", f"Error creating: {message}")
                return message
        return None

    async def _create_one(self, key: str, owner: Obj, template: Obj, ref: Obj, ns: str) -> None:
        pod = pod_from_template(template, ref, generate_name=f"{meta(owner)['name']}-", namespace=ns)
        created = await self.client.create(PODS, pod, ns)
        pod_key = key_of(created)
        if self.pods.get(pod_key) is None:
            self.expectations.expect_creation(key, pod_key)
        self.record(owner, "Normal", "SuccessfulCreate", f"Created pod: {meta(created)['name']}")

    async def _delete(self, key: str, owner: Obj, pod: Obj) -> None:
        pod_key = key_of(pod)
        try:
            await self.client.delete(PODS, meta(pod)["name"], meta(pod)["namespace"],
                                     preconditions={"uid": meta(pod).get("uid")})
        except ApiError as e:
            if e.not_found or e.conflict:
                return
            raise
        current = self.pods.get(pod_key)
        if current is not None and not is_deleting(current):
            self.expectations.expect_deletion(key, pod_key)
        self.record(owner, "Normal", "SuccessfulDelete", f"Deleted pod: {meta(pod)['name']}")


class ReplicationControllerController(ReplicaSetController):
    name = "replicationcontroller"
    component = "replication-controller"
    resource = REPLICATIONCONTROLLERS
