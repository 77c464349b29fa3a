"""One scheduling decision: filter the nodes, score the feasible ones, pick the best.

Synchronous and free of I/O: it reads the :class:`SchedulerCache` and returns a
:class:`Decision`. In large clusters it stops filtering once it has found enough
feasible nodes (kube's percentageOfNodesToScore: all of the first 100, then a share
shrinking from 50% towards 5%), starting each search where the previous one stopped.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import k3p_plugins.scheduler.interpod as interpod
import k3p_plugins.scheduler.messages as messages
import k3p_plugins.scheduler.spread as spread
from k3p_plugins.scheduler.cache import SchedulerCache
from k3p_plugins.scheduler.filters import ST_PREFILTERED, Status, filters_for, run_node_filters
from k3p_plugins.scheduler.model import NodeInfo, PodInfo
from k3p_plugins.scheduler.scores import (
    WEIGHT_BALANCED_ALLOCATION,
    WEIGHT_INTER_POD_AFFINITY,
    WEIGHT_LEAST_ALLOCATED,
    WEIGHT_NODE_AFFINITY,
    WEIGHT_TAINT_TOLERATION,
    WEIGHT_TOPOLOGY_SPREAD,
    balanced_allocation,
    best_effort,
    least_allocated,
    node_affinity_raw,
    normalize,
    taint_toleration_raw,
)
from k3p_plugins.scheduler.volumes import VOLUME_BINDING, ClaimsState, VolumeBinder, VolumePlan

MIN_FEASIBLE_NODES = 100
MIN_FEASIBLE_PERCENT = 5

#: a rejection not tied to one filter (no nodes at all): any cluster change may help
ALL_PLUGINS = frozenset({"*"})


def feasible_nodes_to_find(num_nodes: int) -> int:
    """How many feasible nodes are enough to stop filtering (kube's adaptive percentage)."""
    if num_nodes < MIN_FEASIBLE_NODES:
        return num_nodes
    percent = max(MIN_FEASIBLE_PERCENT, 50 - num_nodes // 125)
    return max(MIN_FEASIBLE_NODES, num_nodes * percent // 100)


@dataclass
class Decision:
    """Where the pod goes, or why it goes nowhere (``reason`` is the PodScheduled condition's)."""

    node: str | None
    message: str = ""
    reason: str = ""
    #: the filters that rejected nodes: which cluster changes are worth a retry
    plugins: frozenset[str] = field(default_factory=frozenset)
    scores: dict[str, int] = field(default_factory=dict)
    #: the pod's claims to bind on the chosen node first (None: the pod has no claims)
    volumes: VolumePlan | None = None


class Algorithm:
    def __init__(self, cache: SchedulerCache, rng: random.Random | None = None,
                 volumes: VolumeBinder | None = None) -> None:
        self.cache = cache
        self.rng = rng or random.Random()
        #: the VolumeBinding plugin (None: claims are not looked at, as for tools that only place pods)
        self.volumes = volumes

    def schedule(self, pod: PodInfo) -> Decision:
        cache = self.cache
        nodes = cache.node_list()
        if not nodes:
            return Decision(None, messages.NO_NODES_AVAILABLE, "SchedulerError", ALL_PLUGINS)
        statuses: dict[str, Status] = {}
        volume_state: ClaimsState | None = None
        if pod.claims and self.volumes is not None:
            volume_state, rejection = self.volumes.prefilter(pod)
            if volume_state is None:
                rejected = Status((rejection,), True, VOLUME_BINDING)
                preemption = self._preemption(pod, nodes, {n.name: rejected for n in nodes})
                return Decision(None, messages.prefilter_error(len(nodes), rejection, preemption), "Unschedulable",
                                frozenset({VOLUME_BINDING}))
        candidates = nodes
        if pod.pinned_nodes is not None:
            candidates = [n for n in nodes if n.name in pod.pinned_nodes]
            for n in nodes:
                if n.name not in pod.pinned_nodes:
                    statuses[n.name] = ST_PREFILTERED
        affinity_state = interpod.prefilter(pod, cache)
        spread_state = spread.prefilter(pod, cache)
        feasible: list[NodeInfo] = []
        filters = filters_for(pod)
        count = len(candidates)
        if count:
            want = feasible_nodes_to_find(count)
            start = cache.next_start % count
            processed = 0
            for i in range(count):
                node = candidates[(start + i) % count]
                processed += 1
                status = (run_node_filters(pod, node, filters) or self._volume_filter(volume_state, node)
                          or spread.filter_node(pod, node, spread_state)
                          or interpod.filter_node(pod, node, affinity_state))
                if status is None:
                    feasible.append(node)
                    if len(feasible) >= want:
                        break
                else:
                    statuses[node.name] = status
            cache.next_start = (start + processed) % count
        if not feasible:
            message = messages.fit_error(len(nodes), (s.reasons for s in statuses.values()),
                                         self._preemption(pod, nodes, statuses))
            return Decision(None, message, "Unschedulable", frozenset(s.plugin for s in statuses.values()))
        if len(feasible) == 1:
            return Decision(feasible[0].name, volumes=self._volume_plan(pod, volume_state, feasible[0]))
        totals = self.scores(pod, feasible)
        best = max(totals)
        winners = [n for n, total in zip(feasible, totals, strict=True) if total == best]
        chosen = winners[0] if len(winners) == 1 else self.rng.choice(winners)
        return Decision(chosen.name, scores={n.name: t for n, t in zip(feasible, totals, strict=True)},
                        volumes=self._volume_plan(pod, volume_state, chosen))

    def _volume_filter(self, state: ClaimsState | None, node: NodeInfo) -> Status | None:
        if state is None or self.volumes is None:
            return None
        return self.volumes.filter_node(state, node)

    def _volume_plan(self, pod: PodInfo, state: ClaimsState | None, node: NodeInfo) -> VolumePlan | None:
        if state is None or self.volumes is None:
            return None
        return self.volumes.plan(pod, state, node)

    def scores(self, pod: PodInfo, nodes: list[NodeInfo]) -> list[int]:
        """The weighted total of every score for each node."""
        cache = self.cache
        balanced = not best_effort(pod)
        totals = []
        for node in nodes:
            total = WEIGHT_LEAST_ALLOCATED * least_allocated(pod, node)
            if balanced:
                total += WEIGHT_BALANCED_ALLOCATION * balanced_allocation(pod, node)
            totals.append(total)

        def add(weight: int, values: list[int] | None) -> None:
            if values:
                for i, v in enumerate(values):
                    totals[i] += weight * v

        if pod.preferred_node_affinity:
            add(WEIGHT_NODE_AFFINITY, normalize([node_affinity_raw(pod, n) for n in nodes]))
        if any(n.prefer_no_schedule for n in nodes):
            add(WEIGHT_TAINT_TOLERATION, normalize([taint_toleration_raw(pod, n) for n in nodes], reverse=True))
        add(WEIGHT_TOPOLOGY_SPREAD, spread.score(pod, nodes, cache))
        add(WEIGHT_INTER_POD_AFFINITY, interpod.score(nodes, interpod.prescore(pod, cache)))
        return totals

    def _preemption(self, pod: PodInfo, nodes: list[NodeInfo], statuses: dict[str, Status]) -> str:
        """What kube's preemption would report. It never evicts here: it only says whether it could help."""
        if pod.preemption_policy == "Never":
            return messages.PREEMPTION_NEVER
        reason_lists: list[tuple[str, ...]] = []
        for node in nodes:
            status = statuses.get(node.name)
            if status is None or status.unresolvable:
                reason_lists.append((messages.PREEMPTION_NOT_HELPFUL,))
                continue
            lower = {key for key, p in node.pods.items() if p.priority < pod.priority}
            if not lower:
                reason_lists.append((messages.NO_PREEMPTION_VICTIMS,))
                continue
            again = run_node_filters(pod, node.without(lower))
            reason_lists.append(again.reasons if again is not None else (messages.NO_PREEMPTION_VICTIMS,))
        return messages.nodes_unavailable(len(nodes), reason_lists)
