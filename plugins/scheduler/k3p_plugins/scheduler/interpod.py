"""Inter-pod affinity and anti-affinity: the required terms filter nodes, the preferred ones score them.

Both work on topology domains: a term with ``topologyKey: zone`` is satisfied on every
node whose zone label equals that of a node running a matching pod. So the cluster's
pods are counted once per decision into (topology key, value) pairs, and each node then
looks its own label values up.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator

from k3p_plugins.scheduler.cache import SchedulerCache
from k3p_plugins.scheduler.filters import INTER_POD_AFFINITY, Status
from k3p_plugins.scheduler.model import NodeInfo, PodInfo

REASON_AFFINITY = "node(s) didn't match pod affinity rules"
REASON_ANTI_AFFINITY = "node(s) didn't match pod anti-affinity rules"
REASON_EXISTING_ANTI_AFFINITY = "node(s) didn't satisfy existing pods anti-affinity rules"

_ST_AFFINITY = Status((REASON_AFFINITY,), True, INTER_POD_AFFINITY)
_ST_ANTI_AFFINITY = Status((REASON_ANTI_AFFINITY,), False, INTER_POD_AFFINITY)
_ST_EXISTING = Status((REASON_EXISTING_ANTI_AFFINITY,), False, INTER_POD_AFFINITY)

#: how much an existing pod's *required* affinity to the incoming pod counts when scoring (kube's default)
HARD_POD_AFFINITY_WEIGHT = 1

Pair = tuple[str, str]


def _placed_pods(cache: SchedulerCache) -> Iterator[tuple[PodInfo, NodeInfo]]:
    for node in cache.node_list():
        for pod in node.pods.values():
            yield pod, node


class AffinityState:
    """What the filter needs, counted over the cluster once per decision."""

    __slots__ = ("affinity", "anti", "existing_anti", "self_match")

    def __init__(self) -> None:
        self.existing_anti: Counter[Pair] = Counter()
        self.affinity: Counter[Pair] = Counter()
        self.anti: Counter[Pair] = Counter()
        self.self_match = False


def prefilter(pod: PodInfo, cache: SchedulerCache) -> AffinityState | None:
    """Count matching pods per topology pair; None when no affinity rule is in play at all."""
    if not pod.required_affinity and not pod.required_anti_affinity and not cache.anti_affinity_pods:
        return None
    ns_labels = cache.namespace_labels
    state = AffinityState()
    for existing, node in cache.anti_affinity_pods.values():
        if node.node is None:
            continue
        for term in existing.required_anti_affinity:
            value = node.labels.get(term.topology_key)
            if value is not None and term.matches(pod, ns_labels):
                state.existing_anti[(term.topology_key, value)] += 1
    if pod.required_affinity or pod.required_anti_affinity:
        for existing, node in _placed_pods(cache):
            labels = node.labels
            if pod.required_affinity and all(t.matches(existing, ns_labels) for t in pod.required_affinity):
                for term in pod.required_affinity:
                    value = labels.get(term.topology_key)
                    if value is not None:
                        state.affinity[(term.topology_key, value)] += 1
            for term in pod.required_anti_affinity:
                value = labels.get(term.topology_key)
                if value is not None and term.matches(existing, ns_labels):
                    state.anti[(term.topology_key, value)] += 1
        state.self_match = all(t.matches(pod, ns_labels) for t in pod.required_affinity)
    return state


def filter_node(pod: PodInfo, node: NodeInfo, state: AffinityState | None) -> Status | None:
    if state is None:
        return None
    labels = node.labels
    if pod.required_affinity:
        found = True
        for term in pod.required_affinity:
            value = labels.get(term.topology_key)
            if value is None:
                return _ST_AFFINITY  # the node must have every topology key
            if state.affinity[(term.topology_key, value)] <= 0:
                found = False
        # The first pod of a group with affinity to itself may go anywhere that has the keys.
        if not found and (state.affinity or not state.self_match):
            return _ST_AFFINITY
    for term in pod.required_anti_affinity:
        value = labels.get(term.topology_key)
        if value is not None and state.anti[(term.topology_key, value)] > 0:
            return _ST_ANTI_AFFINITY
    for (key, value), count in state.existing_anti.items():
        if count > 0 and labels.get(key) == value:
            return _ST_EXISTING
    return None


def prescore(pod: PodInfo, cache: SchedulerCache) -> dict[Pair, int] | None:
    """Weights per topology pair from preferred terms both ways (and others' required affinity)."""
    own = bool(pod.preferred_affinity or pod.preferred_anti_affinity)
    if not own and not cache.affinity_pods:
        return None
    ns_labels = cache.namespace_labels
    scores: dict[Pair, int] = {}

    def add(labels: dict[str, str], key: str, weight: int) -> None:
        value = labels.get(key)
        if value is not None:
            scores[(key, value)] = scores.get((key, value), 0) + weight

    source: Iterable[tuple[PodInfo, NodeInfo]] = _placed_pods(cache) if own else list(cache.affinity_pods.values())
    for existing, node in source:
        if node.node is None:
            continue
        labels = node.labels
        for weight, term in pod.preferred_affinity:
            if term.matches(existing, ns_labels):
                add(labels, term.topology_key, weight)
        for weight, term in pod.preferred_anti_affinity:
            if term.matches(existing, ns_labels):
                add(labels, term.topology_key, -weight)
        if existing.has_pod_affinity:
            for term in existing.required_affinity:
                if term.matches(pod, ns_labels):
                    add(labels, term.topology_key, HARD_POD_AFFINITY_WEIGHT)
            for weight, term in existing.preferred_affinity:
                if term.matches(pod, ns_labels):
                    add(labels, term.topology_key, weight)
            for weight, term in existing.preferred_anti_affinity:
                if term.matches(pod, ns_labels):
                    add(labels, term.topology_key, -weight)
    return scores or None


def score(nodes: list[NodeInfo], pair_scores: dict[Pair, int] | None) -> list[int] | None:
    """0..100 per node: its summed pair weights scaled between the lowest and the highest."""
    if not pair_scores:
        return None
    keys = {key for key, _ in pair_scores}
    raw = [sum(pair_scores.get((k, n.labels.get(k, "")), 0) for k in keys if k in n.labels) for n in nodes]
    low, high = min(raw), max(raw)
    span = high - low
    if span <= 0:
        return [0] * len(nodes)
    return [int(100 * (s - low) / span) for s in raw]
