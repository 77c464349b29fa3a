"""Filters: may this pod run on this node? Each returns None (yes) or a :class:`Status` (no, and why).

The reasons are kube-scheduler's own strings, because users read them in ``kubectl
describe`` and search for them. ``unresolvable`` marks a rejection that evicting other
pods could not fix (kube's UnschedulableAndUnresolvable): preemption skips those nodes.
The filters run in kube's default order and the first rejection wins.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from k3p_plugins.scheduler.model import TAINT_UNSCHEDULABLE, NodeInfo, PodInfo, Taint, tolerated


class Status(NamedTuple):
    """Why a node was rejected: the reasons and the plugin that gave them."""

    reasons: tuple[str, ...]
    unresolvable: bool
    plugin: str


NODE_UNSCHEDULABLE = "NodeUnschedulable"
NODE_NAME = "NodeName"
TAINT_TOLERATION = "TaintToleration"
NODE_AFFINITY = "NodeAffinity"
NODE_PORTS = "NodePorts"
NODE_RESOURCES_FIT = "NodeResourcesFit"
POD_TOPOLOGY_SPREAD = "PodTopologySpread"
INTER_POD_AFFINITY = "InterPodAffinity"

REASON_UNSCHEDULABLE = "node(s) were unschedulable"
REASON_NODE_NAME = "node(s) didn't match the requested node name"
REASON_NODE_AFFINITY = "node(s) didn't match Pod's node affinity/selector"
REASON_NODE_PORTS = "node(s) didn't have free ports for the requested pod ports"
REASON_TOO_MANY_PODS = "Too many pods"
REASON_PREFILTERED = f"node(s) didn't satisfy plugin(s) [{NODE_AFFINITY}]"

_UNSCHEDULABLE_TAINT = Taint(TAINT_UNSCHEDULABLE, "", "NoSchedule")
_ST_UNSCHEDULABLE = Status((REASON_UNSCHEDULABLE,), True, NODE_UNSCHEDULABLE)
_ST_NODE_NAME = Status((REASON_NODE_NAME,), True, NODE_NAME)
_ST_NODE_AFFINITY = Status((REASON_NODE_AFFINITY,), True, NODE_AFFINITY)
_ST_NODE_PORTS = Status((REASON_NODE_PORTS,), False, NODE_PORTS)
ST_PREFILTERED = Status((REASON_PREFILTERED,), True, NODE_AFFINITY)


def untolerated_taint_reason(taint: Taint) -> str:
    return f"node(s) had untolerated taint {{{taint.key}: {taint.value}}}"


def node_unschedulable(pod: PodInfo, node: NodeInfo) -> Status | None:
    """A cordoned node (``spec.unschedulable``) takes only pods that tolerate the unschedulable taint."""
    if node.unschedulable and not tolerated(pod.tolerations, _UNSCHEDULABLE_TAINT):
        return _ST_UNSCHEDULABLE
    return None


def node_name(pod: PodInfo, node: NodeInfo) -> Status | None:
    if pod.node_name and pod.node_name != node.name:
        return _ST_NODE_NAME
    return None


def taint_toleration(pod: PodInfo, node: NodeInfo) -> Status | None:
    """The first NoSchedule / NoExecute taint (a NotReady node's included) the pod does not tolerate."""
    for taint in node.taints:
        if not tolerated(pod.tolerations, taint):
            return Status((untolerated_taint_reason(taint),), True, TAINT_TOLERATION)
    return None


def node_affinity(pod: PodInfo, node: NodeInfo) -> Status | None:
    """``nodeSelector`` and required node affinity (label expressions and ``metadata.name`` fields)."""
    labels = node.labels
    for key, want in pod.node_selector.items():
        if labels.get(key) != want:
            return _ST_NODE_AFFINITY
    if pod.node_affinity is not None and not pod.node_affinity.matches(labels, node.name):
        return _ST_NODE_AFFINITY
    return None


def node_ports(pod: PodInfo, node: NodeInfo) -> Status | None:
    """A hostPort is taken if the same protocol/port is used on the same IP or on 0.0.0.0 (either side)."""
    for ip, proto, port in pod.host_ports:
        if ip == "0.0.0.0":
            if node.wildcard_ports.get((proto, port)):
                return _ST_NODE_PORTS
        elif node.ports.get((ip, proto, port)) or node.ports.get(("0.0.0.0", proto, port)):
            return _ST_NODE_PORTS
    return None


def resources_fit(pod: PodInfo, node: NodeInfo) -> Status | None:
    """Requests against what is left of allocatable: every shortfall is a reason of its own."""
    alloc, used, want = node.allocatable, node.requested, pod.requests
    reasons = []
    if used.pods + 1 > alloc.pods:
        reasons.append(REASON_TOO_MANY_PODS)
    if want.milli_cpu or want.memory or want.ephemeral_storage or any(want.scalars.values()):
        if want.milli_cpu and want.milli_cpu > alloc.milli_cpu - used.milli_cpu:
            reasons.append("Insufficient cpu")
        if want.memory and want.memory > alloc.memory - used.memory:
            reasons.append("Insufficient memory")
        if want.ephemeral_storage and want.ephemeral_storage > alloc.ephemeral_storage - used.ephemeral_storage:
            reasons.append("Insufficient ephemeral-storage")
        for name, amount in want.scalars.items():
            if amount and amount > alloc.scalars.get(name, 0) - used.scalars.get(name, 0):
                reasons.append(f"Insufficient {name}")
    if reasons:
        return Status(tuple(reasons), False, NODE_RESOURCES_FIT)
    return None


#: the filters that look at one node alone, in kube's default order
NODE_FILTERS = (node_unschedulable, node_name, taint_toleration, node_affinity, node_ports, resources_fit)


Filter = Callable[[PodInfo, NodeInfo], "Status | None"]


def filters_for(pod: PodInfo) -> tuple[Filter, ...]:
    """The node filters that can reject this pod at all (the others would pass every node)."""
    return tuple(f for f in NODE_FILTERS
                 if (f is not node_name or pod.node_name)
                 and (f is not node_affinity or pod.node_selector or pod.node_affinity is not None)
                 and (f is not node_ports or pod.host_ports))


def run_node_filters(pod: PodInfo, node: NodeInfo, filters: tuple[Filter, ...] = NODE_FILTERS) -> Status | None:
    for f in filters:
        status = f(pod, node)
        if status is not None:
            return status
    return None
