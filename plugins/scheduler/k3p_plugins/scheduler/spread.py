"""Topology spreading: explicit ``topologySpreadConstraints`` and the default spreading of replicas.

A pod with ``whenUnsatisfiable: DoNotSchedule`` constraints is filtered: placing it must
not make (matching pods in its domain) - (the emptiest domain) exceed ``maxSkew``.
``ScheduleAnyway`` constraints only score. A pod without constraints gets kube's system
defaults (hostname, maxSkew 3; zone, maxSkew 5) over the replicas of its controller
(kube derives that group from the Services and controllers selecting the pod; the
controller's ownerReference names the same group for Deployments, ReplicaSets and
StatefulSets and is kept per node in the cache, so no pod list is walked).
"""

from __future__ import annotations

import math
from collections import Counter

from k3p_plugins.scheduler.cache import SchedulerCache
from k3p_plugins.scheduler.filters import POD_TOPOLOGY_SPREAD, Status
from k3p_plugins.scheduler.model import HOSTNAME_LABEL, ZONE_LABEL, NodeInfo, PodInfo, SpreadConstraint, tolerated

REASON_CONSTRAINTS = "node(s) didn't match pod topology spread constraints"
REASON_MISSING_LABEL = REASON_CONSTRAINTS + " (missing required label)"

_ST_CONSTRAINTS = Status((REASON_CONSTRAINTS,), False, POD_TOPOLOGY_SPREAD)
_ST_MISSING_LABEL = Status((REASON_MISSING_LABEL,), True, POD_TOPOLOGY_SPREAD)

DEFAULT_HOSTNAME_SKEW = 3
DEFAULT_ZONE_SKEW = 5


def _counts_in(pod: PodInfo, c: SpreadConstraint, node: NodeInfo) -> int:
    n = 0
    for other in node.pods.values():
        if other.namespace == pod.namespace and not other.terminating and c.selector.matches(other.labels):
            n += 1
    return n


def _eligible(pod: PodInfo, c: SpreadConstraint, node: NodeInfo) -> bool:
    """Whether a node's pods count for a constraint (nodeAffinityPolicy / nodeTaintsPolicy)."""
    if c.node_affinity_policy == "Honor":
        for key, want in pod.node_selector.items():
            if node.labels.get(key) != want:
                return False
        if pod.node_affinity is not None and not pod.node_affinity.matches(node.labels, node.name):
            return False
    if c.node_taints_policy == "Honor":
        for taint in node.taints:
            if not tolerated(pod.tolerations, taint):
                return False
    return True


class SpreadState:
    """Per DoNotSchedule constraint: matching pods per domain, the minimum, whether the pod matches itself."""

    __slots__ = ("entries",)

    def __init__(self) -> None:
        self.entries: list[tuple[SpreadConstraint, Counter[str], int, int]] = []


def prefilter(pod: PodInfo, cache: SchedulerCache) -> SpreadState | None:
    hard = [c for c in pod.spread_constraints if c.when_unsatisfiable == "DoNotSchedule"]
    if not hard:
        return None
    keys = [c.topology_key for c in hard]
    state = SpreadState()
    nodes = [n for n in cache.node_list() if all(k in n.labels for k in keys)]
    for c in hard:
        counts: Counter[str] = Counter()
        for node in nodes:
            if not _eligible(pod, c, node):
                continue
            value = node.labels[c.topology_key]
            counts[value] += _counts_in(pod, c, node)
        lowest = min(counts.values()) if counts else 0
        if c.min_domains and len(counts) < c.min_domains:
            lowest = 0
        state.entries.append((c, counts, lowest, 1 if c.selector.matches(pod.labels) else 0))
    return state


def filter_node(pod: PodInfo, node: NodeInfo, state: SpreadState | None) -> Status | None:
    if state is None:
        return None
    for c, counts, lowest, self_match in state.entries:
        value = node.labels.get(c.topology_key)
        if value is None:
            return _ST_MISSING_LABEL
        if counts.get(value, 0) + self_match - lowest > c.max_skew:
            return _ST_CONSTRAINTS
    return None


def _normalize(raw: list[float | None]) -> list[int]:
    """Fewest matching pods scores 100; nodes the constraints ignore score 0 (kube's normalization)."""
    known = [int(s) for s in raw if s is not None]
    if not known:
        return [0] * len(raw)
    high, low = max(known), min(known)
    out = []
    for s in raw:
        if s is None:
            out.append(0)
        elif high == 0:
            out.append(100)
        else:
            out.append(100 * (high + low - int(s)) // high)
    return out


def _weight(domains: int) -> float:
    return math.log(domains + 2)


def score(pod: PodInfo, nodes: list[NodeInfo], cache: SchedulerCache) -> list[int] | None:
    """0..100 per feasible node, higher where fewer of the pod's peers already are."""
    soft = [c for c in pod.spread_constraints if c.when_unsatisfiable == "ScheduleAnyway"]
    if pod.spread_constraints:
        if not soft:
            return None
        return _score_explicit(pod, soft, nodes, cache)
    if pod.owner is None:
        return None
    return _score_default(pod, nodes, cache)


def _score_explicit(pod: PodInfo, soft: list[SpreadConstraint], nodes: list[NodeInfo],
                    cache: SchedulerCache) -> list[int]:
    keys = [c.topology_key for c in soft]
    counted = [n for n in nodes if all(k in n.labels for k in keys)]
    per_domain: list[Counter[str]] = []
    for c in soft:
        counts: Counter[str] = Counter()
        if c.topology_key != HOSTNAME_LABEL:
            for node in cache.node_list():
                if all(k in node.labels for k in keys) and _eligible(pod, c, node):
                    counts[node.labels[c.topology_key]] += _counts_in(pod, c, node)
        per_domain.append(counts)
    weights = []
    for c in soft:
        size = len(counted) if c.topology_key == HOSTNAME_LABEL else len({n.labels[c.topology_key] for n in counted})
        weights.append(_weight(size))
    raw: list[float | None] = []
    for node in nodes:
        if not all(k in node.labels for k in keys):
            raw.append(None)
            continue
        total = 0.0
        for c, counts, w in zip(soft, per_domain, weights, strict=True):
            cnt = _counts_in(pod, c, node) if c.topology_key == HOSTNAME_LABEL else counts[node.labels[c.topology_key]]
            total += cnt * w + (c.max_skew - 1)
        raw.append(math.floor(total + 0.5))
    return _normalize(raw)


def _score_default(pod: PodInfo, nodes: list[NodeInfo], cache: SchedulerCache) -> list[int]:
    per_node = cache.owner_counts.get(pod.owner) if pod.owner else None
    per_node = per_node or Counter()
    host_weight = _weight(len(nodes))
    zone_counts: Counter[str] = Counter()
    zone_weight = 0.0
    if cache.has_zones:
        for node in cache.node_list():
            zone = node.labels.get(ZONE_LABEL)
            if zone is not None:
                zone_counts[zone] += per_node.get(node.name, 0)
        zone_weight = _weight(len({z for z in (n.labels.get(ZONE_LABEL) for n in nodes) if z is not None}))
    raw: list[float | None] = []
    for node in nodes:
        total = per_node.get(node.name, 0) * host_weight + (DEFAULT_HOSTNAME_SKEW - 1)
        zone = node.labels.get(ZONE_LABEL) if zone_weight else None
        if zone is not None:
            total += zone_counts[zone] * zone_weight + (DEFAULT_ZONE_SKEW - 1)
        raw.append(math.floor(total + 0.5))
    return _normalize(raw)

