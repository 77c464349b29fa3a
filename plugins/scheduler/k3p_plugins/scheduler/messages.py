"""The texts users see on a pod: kube-scheduler's wording, so what they know from kube still applies.

A failed attempt reads ``0/<n> nodes are available: <histogram>.`` followed by what
preemption made of it, e.g. ``0/3 nodes are available: 1 node(s) had untolerated taint
{node-role.kubernetes.io/control-plane: }, 2 Insufficient memory. preemption: 0/3 nodes
are available: 1 Preemption is not helpful for scheduling, 2 No preemption victims found
for incoming pod.``
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

NO_NODES_AVAILABLE = "no nodes available to schedule pods"
PREEMPTION_NOT_HELPFUL = "Preemption is not helpful for scheduling"
NO_PREEMPTION_VICTIMS = "No preemption victims found for incoming pod"
PREEMPTION_NEVER = "not eligible due to preemptionPolicy=Never."
SCHEDULING_GATED = "Scheduling is blocked due to non-empty scheduling gates"


def histogram(reason_lists: Iterable[Iterable[str]]) -> str:
    """``"2 Insufficient cpu, 1 node(s) were unschedulable"`` style: counts per reason, sorted as text."""
    counts: Counter[str] = Counter()
    for reasons in reason_lists:
        counts.update(reasons)
    return ", ".join(sorted(f"{n} {reason}" for reason, n in counts.items()))


def nodes_unavailable(num_nodes: int, reason_lists: Iterable[Iterable[str]]) -> str:
    """``0/<n> nodes are available: <histogram>.``"""
    text = f"0/{num_nodes} nodes are available:"
    summary = histogram(reason_lists)
    if summary:
        text += f" {summary}."
    return text


def fit_error(num_nodes: int, reason_lists: Iterable[Iterable[str]], preemption: str = "") -> str:
    """The whole message of a FailedScheduling event and the PodScheduled condition."""
    text = nodes_unavailable(num_nodes, reason_lists)
    if preemption:
        text += f" preemption: {preemption}"
    return text


def prefilter_error(num_nodes: int, reason: str, preemption: str = "") -> str:
    """The message when one check rejects the pod before any node is looked at (kube's PreFilter).

    e.g. ``0/3 nodes are available: persistentvolumeclaim "data" not found. preemption: ...``
    """
    text = f"0/{num_nodes} nodes are available: {reason}."
    if preemption:
        text += f" preemption: {preemption}"
    return text


def scheduled(namespace: str, name: str, node: str) -> str:
    """The message of the ``Scheduled`` event."""
    return f"Successfully assigned {namespace}/{name} to {node}"
