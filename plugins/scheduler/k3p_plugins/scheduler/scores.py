"""Scores: how good is each feasible node for the pod? Every score is 0..100 per node.

The weights are kube's defaults: TaintToleration 3; NodeAffinity, PodTopologySpread and
InterPodAffinity 2; NodeResourcesFit (least allocated) and BalancedAllocation 1.
"""

from __future__ import annotations

from k3p_plugins.scheduler.model import NodeInfo, PodInfo, tolerated

MAX_SCORE = 100

WEIGHT_TAINT_TOLERATION = 3
WEIGHT_NODE_AFFINITY = 2
WEIGHT_TOPOLOGY_SPREAD = 2
WEIGHT_INTER_POD_AFFINITY = 2
WEIGHT_LEAST_ALLOCATED = 1
WEIGHT_BALANCED_ALLOCATION = 1


def _free_share(requested: int, capacity: int) -> int:
    if capacity <= 0 or requested > capacity:
        return 0
    return (capacity - requested) * MAX_SCORE // capacity


def least_allocated(pod: PodInfo, node: NodeInfo) -> int:
    """Share of cpu and memory left once the pod is placed (containers without requests count defaults)."""
    alloc = node.allocatable
    cpu = _free_share(node.nonzero_cpu + pod.nonzero_cpu, alloc.milli_cpu)
    memory = _free_share(node.nonzero_memory + pod.nonzero_memory, alloc.memory)
    return (cpu + memory) // 2


def balanced_allocation(pod: PodInfo, node: NodeInfo) -> int:
    """Nodes whose cpu and memory would be used in equal shares score higher: 100 * (1 - std deviation)."""
    alloc = node.allocatable
    fractions = []
    for used, want, capacity in ((node.requested.milli_cpu, pod.requests.milli_cpu, alloc.milli_cpu),
                                 (node.requested.memory, pod.requests.memory, alloc.memory)):
        if capacity > 0:
            fractions.append(min(1.0, (used + want) / capacity))
    if len(fractions) < 2:
        return MAX_SCORE
    std = abs(fractions[0] - fractions[1]) / 2
    return int((1 - std) * MAX_SCORE)


def best_effort(pod: PodInfo) -> bool:
    r = pod.requests
    return not (r.milli_cpu or r.memory)


def node_affinity_raw(pod: PodInfo, node: NodeInfo) -> int:
    """Sum of the weights of the preferred node affinity terms the node matches."""
    return sum(w for w, term in pod.preferred_node_affinity if term.matches(node.labels, node.name))


def taint_toleration_raw(pod: PodInfo, node: NodeInfo) -> int:
    """How many PreferNoSchedule taints of the node the pod does not tolerate."""
    if not node.prefer_no_schedule:
        return 0
    tolerations = tuple(t for t in pod.tolerations if t.effect in ("", "PreferNoSchedule"))
    return sum(1 for taint in node.prefer_no_schedule if not tolerated(tolerations, taint))


def normalize(raw: list[int], reverse: bool = False) -> list[int]:
    """Scale to 0..100 by the highest value (kube's DefaultNormalizeScore); ``reverse`` makes fewer better."""
    high = max(raw) if raw else 0
    if high == 0:
        return [MAX_SCORE if reverse else 0] * len(raw)
    scaled = [MAX_SCORE * s // high for s in raw]
    return [MAX_SCORE - s for s in scaled] if reverse else scaled
