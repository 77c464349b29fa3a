"""Node health: silent nodes go Unknown and get tainted; pods leave nodes whose NoExecute taints they do not tolerate.

Two controllers, as in kube: the node lifecycle controller watches the kubelets' heartbeats
(the node Lease in ``kube-node-lease`` and the Ready condition), marks a node whose kubelet
has been silent for ``node_monitor_grace_period`` Unknown, keeps the condition taints
(``node.kubernetes.io/not-ready``, ``unreachable``, ...) in line with the conditions, and marks
the pods of a node that is not ready as not ready; the taint eviction controller deletes pods
from nodes with NoExecute taints once their ``tolerationSeconds`` run out.
"""

from __future__ import annotations

import asyncio
import copy
import time

import structlog

from k3p.client import ApiError, Obj, Requeue, key_of
from k3p.client.nodeaffinity import tolerates
from k3p.client.objects import format_time, get_condition, is_deleting, meta, name_of, parse_time, utcnow
from k3p.client.resources import LEASES, NODES, PODS
from k3p_plugins.controller_manager.base import BaseController

log = structlog.get_logger(__name__)

NODE_LEASE_NAMESPACE = "kube-node-lease"
NOT_READY = "node.kubernetes.io/not-ready"
UNREACHABLE = "node.kubernetes.io/unreachable"
UNSCHEDULABLE = "node.kubernetes.io/unschedulable"
#: condition (type, status) -> NoSchedule taint key (kube's TaintNodesByCondition)
CONDITION_TAINTS = {
    ("Ready", "False"): NOT_READY,
    ("Ready", "Unknown"): UNREACHABLE,
    ("MemoryPressure", "True"): "node.kubernetes.io/memory-pressure",
    ("DiskPressure", "True"): "node.kubernetes.io/disk-pressure",
    ("PIDPressure", "True"): "node.kubernetes.io/pid-pressure",
    ("NetworkUnavailable", "True"): "node.kubernetes.io/network-unavailable",
}
MANAGED_NOSCHEDULE = {*CONDITION_TAINTS.values(), UNSCHEDULABLE}
#: a node that never reported status gets this long after it was first seen
STARTUP_GRACE = 60.0
KUBELET_CONDITIONS = ("Ready", "MemoryPressure", "DiskPressure", "PIDPressure")


def desired_taints(node: Obj, now: str) -> list[Obj]:
    """The node's taints with the condition-driven ones brought in line with its conditions."""
    status = node.get("status") or {}
    spec = node.get("spec") or {}
    current = list(spec.get("taints") or [])
    keep = [t for t in current if not (
        (t.get("effect") == "NoSchedule" and t.get("key") in MANAGED_NOSCHEDULE)
        or (t.get("effect") == "NoExecute" and t.get("key") in (NOT_READY, UNREACHABLE)))]
    wanted: list[Obj] = []
    for cond in status.get("conditions") or []:
        key = CONDITION_TAINTS.get((cond.get("type"), cond.get("status")))
        if key:
            wanted.append({"key": key, "effect": "NoSchedule"})
    if spec.get("unschedulable"):
        wanted.append({"key": UNSCHEDULABLE, "effect": "NoSchedule"})
    ready = get_condition(status, "Ready")
    if ready is not None and ready.get("status") == "False":
        wanted.append({"key": NOT_READY, "effect": "NoExecute"})
    elif ready is not None and ready.get("status") == "Unknown":
        wanted.append({"key": UNREACHABLE, "effect": "NoExecute"})
    for taint in wanted:
        previous = next((t for t in current if t.get("key") == taint["key"] and t.get("effect") == taint["effect"]),
                        None)
        if previous is not None:
            taint.update({k: v for k, v in previous.items() if k in ("value", "timeAdded")})
        elif taint["effect"] == "NoExecute":
            taint["timeAdded"] = now
    return keep + wanted


class NodeLifecycleController(BaseController):
    name = "nodelifecycle"
    component = "node-controller"
    workers = 2

    def setup(self) -> None:
        self.nodes = self.informers.informer(NODES)
        self.leases = self.informers.informer(LEASES, NODE_LEASE_NAMESPACE)
        self.pods = self.informers.informer(PODS)
        #: node -> monotonic time the kubelet was last heard from (lease renewal or heartbeat change)
        self.probe: dict[str, float] = {}
        self._seen: dict[str, tuple[str | None, str | None]] = {}
        self.nodes.add_listener(self._on_node)
        self.leases.add_listener(self._on_lease)

    def _heard(self, node: str, lease_time: str | None = None, heartbeat: str | None = None) -> None:
        prev_lease, prev_beat = self._seen.get(node, (None, None))
        lease_time = lease_time if lease_time is not None else prev_lease
        heartbeat = heartbeat if heartbeat is not None else prev_beat
        if node not in self.probe or (lease_time, heartbeat) != (prev_lease, prev_beat):
            self.probe[node] = time.monotonic()
        self._seen[node] = (lease_time, heartbeat)

    def _on_node(self, type_: str, node: Obj, _old: Obj | None) -> None:
        name = name_of(node)
        if type_ == "DELETED":
            self.probe.pop(name, None)
            self._seen.pop(name, None)
            return
        ready = get_condition(node.get("status"), "Ready")
        self._heard(name, heartbeat=(ready or {}).get("lastHeartbeatTime") or "")
        self.queue.add(name)

    def _on_lease(self, type_: str, lease: Obj, _old: Obj | None) -> None:
        if type_ == "DELETED":
            return
        self._heard(name_of(lease), lease_time=(lease.get("spec") or {}).get("renewTime") or "")
        self.queue.add(name_of(lease))

    async def start(self) -> None:
        self.spawn(self._monitor())

    async def _monitor(self) -> None:
        while True:
            await asyncio.sleep(self.options.node_monitor_period)
            for node in self.nodes.items():
                self.queue.add(name_of(node))

    async def reconcile(self, key: str) -> None:
        node = self.nodes.get(key)
        if node is None:
            return
        node = copy.deepcopy(node)
        if key not in self.probe:
            self._heard(key)
        silent = time.monotonic() - self.probe[key]
        status = node.setdefault("status", {})
        ready = get_condition(status, "Ready")
        grace = self.options.node_monitor_grace_period if ready is not None else max(
            STARTUP_GRACE, self.options.node_monitor_grace_period)
        now = format_time()
        if silent > grace and (ready is None or ready.get("status") != "Unknown"):
            conditions = []
            for ctype in KUBELET_CONDITIONS:
                cond = get_condition(status, ctype)
                if cond is None:
                    conditions.append({"type": ctype, "status": "Unknown", "reason": "NodeStatusNeverUpdated",
                                       "message": "Kubelet never posted node status.", "lastHeartbeatTime": None,
                                       "lastTransitionTime": now})
                elif cond.get("status") != "Unknown":
                    conditions.append({**cond, "status": "Unknown", "reason": "NodeStatusUnknown",
                                       "message": "Kubelet stopped posting node status.", "lastTransitionTime": now})
            if conditions:
                log.info("node stopped reporting; marking it Unknown", node=key, silent=f"{silent:.0f}s")
                updated = await self.client.patch(NODES, key, {"status": {"conditions": conditions}},
                                                  patch_type="strategic", subresource="status")
                node["status"] = updated.get("status") or {}
                status = node["status"]
                self.record(node, "Normal", "NodeNotReady", f"Node {key} status is now: NodeNotReady")
        taints = desired_taints(node, now)
        if _taint_keys(taints) != _taint_keys((node.get("spec") or {}).get("taints") or []):
            # resourceVersion as a precondition, as upstream's taint patches carry it: a node the
            # kubelet just updated is a 409 conflict, retried quietly (a failed JSON-patch test
            # would be a 422, logged as a failure)
            patch = {"metadata": {"resourceVersion": meta(node).get("resourceVersion")}, "spec": {"taints": taints}}
            await self.client.patch(NODES, key, patch, patch_type="merge")
        ready = get_condition(status, "Ready")
        if ready is not None and ready.get("status") != "True":
            await self._mark_pods_not_ready(node)
        if ready is None or ready.get("status") == "True":
            left = grace - silent
            if left > 0:
                raise Requeue(left + 0.05)

    async def _mark_pods_not_ready(self, node: Obj) -> None:
        name = name_of(node)
        for pod in list(self.pods.items()):
            if (pod.get("spec") or {}).get("nodeName") != name or is_deleting(pod):
                continue
            cond = get_condition(pod.get("status"), "Ready")
            if cond is None or cond.get("status") == "False":
                continue
            new = {**cond, "status": "False", "lastTransitionTime": format_time()}
            try:
                await self.client.patch(PODS, name_of(pod), {"status": {"conditions": [new]}}, meta(pod)["namespace"],
                                        patch_type="strategic", subresource="status")
            except ApiError as e:
                if not e.not_found:
                    raise
                continue
            self.record(pod, "Warning", "NodeNotReady", "Node is not ready")


def _taint_keys(taints: list[Obj]) -> list[tuple[str, str, str]]:
    return sorted((t.get("key", ""), t.get("value", ""), t.get("effect", "")) for t in taints)


def min_toleration_seconds(taints: list[Obj], tolerations: list[Obj]) -> float | None:
    """Seconds a pod may stay with these NoExecute taints: 0 = evict now, None = forever."""
    shortest: float | None = None
    forever = True
    for taint in taints:
        matching = [t for t in tolerations if (t.get("effect") in ("NoExecute", "", None)) and tolerates(t, taint)]
        if not matching:
            return 0.0
        for tol in matching:
            secs = tol.get("tolerationSeconds")
            if secs is None:
                continue
            forever = False
            secs = max(float(secs), 0.0)
            shortest = secs if shortest is None else min(shortest, secs)
    return None if forever else shortest


class TaintEvictionController(BaseController):
    name = "taint-eviction"
    component = "taint-eviction-controller"
    workers = 4

    def setup(self) -> None:
        self.nodes = self.informers.informer(NODES)
        self.pods = self.informers.informer(PODS)
        self.by_node: dict[str, set[str]] = {}
        #: pod key -> (when its eviction clock started, the taints it started for)
        self.scheduled: dict[str, tuple[float, tuple[tuple[str, str, str], ...]]] = {}
        self.pods.add_listener(self._on_pod)
        self.nodes.add_listener(self._on_node)

    def _on_pod(self, type_: str, pod: Obj, old: Obj | None) -> None:
        key = key_of(pod)
        for o in (old, pod):
            n = ((o or {}).get("spec") or {}).get("nodeName")
            if n:
                self.by_node.get(n, set()).discard(key)
        node = (pod.get("spec") or {}).get("nodeName")
        if type_ == "DELETED":
            self.scheduled.pop(key, None)
            return
        if node:
            self.by_node.setdefault(node, set()).add(key)
            self.queue.add(key)

    def _on_node(self, type_: str, node: Obj, old: Obj | None) -> None:
        before = [t for t in ((old or {}).get("spec") or {}).get("taints") or [] if t.get("effect") == "NoExecute"]
        after = [t for t in (node.get("spec") or {}).get("taints") or [] if t.get("effect") == "NoExecute"]
        if type_ != "DELETED" and _taint_keys(before) == _taint_keys(after):
            return
        for key in list(self.by_node.get(name_of(node), ())):
            self.queue.add(key)

    async def reconcile(self, key: str) -> None:
        pod = self.pods.get(key)
        if pod is None or is_deleting(pod):
            self.scheduled.pop(key, None)
            return
        node = self.nodes.get((pod.get("spec") or {}).get("nodeName") or "")
        taints = [t for t in ((node or {}).get("spec") or {}).get("taints") or [] if t.get("effect") == "NoExecute"]
        if not taints:
            self._cancel(pod, key)
            return
        wait = min_toleration_seconds(taints, (pod.get("spec") or {}).get("tolerations") or [])
        if wait is None:
            self._cancel(pod, key)
            return
        signature = tuple(_taint_keys(taints))
        started, _ = self.scheduled.get(key, (time.monotonic(), signature))
        self.scheduled[key] = (started, signature)
        left = started + wait - time.monotonic()
        if left > 0:
            raise Requeue(left)
        await self._evict(pod)
        self.scheduled.pop(key, None)

    def _cancel(self, pod: Obj, key: str) -> None:
        if self.scheduled.pop(key, None) is not None:
            self.record(pod, "Normal", "TaintManagerEviction", f"Cancelling deletion of Pod {key}")

    async def _evict(self, pod: Obj) -> None:
        ns, name = meta(pod)["namespace"], name_of(pod)
        self.record(pod, "Normal", "TaintManagerEviction", f"Marking for deletion Pod {ns}/{name}")
        cond = {"type": "DisruptionTarget", "status": "True", "reason": "DeletionByTaintManager",
                "message": "Taint manager: deleting due to NoExecute taint", "lastTransitionTime": format_time()}
        try:
            await self.client.patch(PODS, name, {"status": {"conditions": [cond]}}, ns, patch_type="strategic",
                                    subresource="status")
            await self.client.delete(PODS, name, ns, preconditions={"uid": meta(pod).get("uid")})
        except ApiError as e:
            if not (e.not_found or e.conflict):
                raise


__all__ = ["NodeLifecycleController", "TaintEvictionController", "desired_taints", "min_toleration_seconds",
           "parse_time", "utcnow"]
