"""Pod facts controllers act on: active, ready, available; pods from templates; which pod to delete first."""

from __future__ import annotations

import copy
import datetime as dt
import math
from collections.abc import Iterable, Mapping
from typing import Any

from k3p.client import Obj
from k3p.client.objects import get_condition, is_deleting, meta, parse_time, utcnow

#: annotation by which users steer which pods a scale-down removes first
POD_DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"


def phase(pod: Mapping[str, Any]) -> str:
    return (pod.get("status") or {}).get("phase") or "Pending"


def is_terminal(pod: Mapping[str, Any]) -> bool:
    return phase(pod) in ("Succeeded", "Failed")


def is_active(pod: Mapping[str, Any]) -> bool:
    """Neither finished nor being deleted (kube's FilterActivePods)."""
    return not is_terminal(pod) and not is_deleting(pod)


def is_terminating(pod: Mapping[str, Any]) -> bool:
    return is_deleting(pod) and not is_terminal(pod)


def is_ready(pod: Mapping[str, Any]) -> bool:
    cond = get_condition(pod.get("status"), "Ready")
    return cond is not None and cond.get("status") == "True"


def ready_since(pod: Mapping[str, Any]) -> dt.datetime | None:
    cond = get_condition(pod.get("status"), "Ready")
    if cond is None or cond.get("status") != "True":
        return None
    return parse_time(cond.get("lastTransitionTime")) or parse_time(meta(pod).get("creationTimestamp"))


def is_available(pod: Mapping[str, Any], min_ready_seconds: int, now: dt.datetime | None = None) -> bool:
    """Ready for at least ``min_ready_seconds`` (kube's IsPodAvailable)."""
    if not is_ready(pod):
        return False
    if min_ready_seconds <= 0:
        return True
    since = ready_since(pod)
    if since is None:
        return False
    return since + dt.timedelta(seconds=min_ready_seconds) <= (now or utcnow())


def seconds_until_available(pod: Mapping[str, Any], min_ready_seconds: int, now: dt.datetime | None = None
                            ) -> float | None:
    """For a ready but not yet available pod: how long until it counts as available."""
    if min_ready_seconds <= 0 or not is_ready(pod):
        return None
    since = ready_since(pod)
    if since is None:
        return None
    left = (since + dt.timedelta(seconds=min_ready_seconds) - (now or utcnow())).total_seconds()
    return left if left > 0 else None


def pod_from_template(template: Mapping[str, Any], owner_ref: Obj, *, generate_name: str | None = None,
                      name: str | None = None, namespace: str | None = None) -> Obj:
    """A new Pod from a PodTemplateSpec: labels, annotations and finalizers copied, the owner set."""
    tmeta = template.get("metadata") or {}
    pod_meta: Obj = {"labels": dict(tmeta.get("labels") or {}), "ownerReferences": [owner_ref]}
    if tmeta.get("annotations"):
        pod_meta["annotations"] = dict(tmeta["annotations"])
    if tmeta.get("finalizers"):
        pod_meta["finalizers"] = list(tmeta["finalizers"])
    if name:
        pod_meta["name"] = name
    elif generate_name:
        pod_meta["generateName"] = generate_name
    if namespace:
        pod_meta["namespace"] = namespace
    return {"apiVersion": "v1", "kind": "Pod", "metadata": pod_meta,
            "spec": copy.deepcopy(template.get("spec") or {})}


def restart_count(pod: Mapping[str, Any]) -> int:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    return max((int(s.get("restartCount") or 0) for s in statuses), default=0)


def _log_bucket(when: dt.datetime | None, now: dt.datetime) -> int:
    # Logarithmic buckets of age: pods of about the same age count as equal, so scale-down
    # spreads over nodes instead of always removing the very newest pod.
    if when is None:
        return -1
    age = max((now - when).total_seconds(), 0.0)
    return math.floor(math.log2(age)) if age >= 1 else 0


_PHASE_RANK = {"Pending": 0, "Unknown": 1, "Running": 2}


def deletion_order(pods: Iterable[Obj], related: Iterable[Obj] | None = None,
                   now: dt.datetime | None = None) -> list[Obj]:
    """``pods`` sorted so the ones to delete first come first (kube's ActivePodsWithRanks).

    Unscheduled before scheduled; Pending before Unknown before Running; not ready before
    ready; lower pod-deletion-cost first; pods sharing a node with more related pods first;
    more recently ready first; more restarts first; newer first.
    """
    now = now or utcnow()
    pods = list(pods)
    per_node: dict[str, int] = {}
    for p in related if related is not None else pods:
        node = (p.get("spec") or {}).get("nodeName") or ""
        if node and is_active(p):
            per_node[node] = per_node.get(node, 0) + 1

    def key(p: Obj) -> tuple[Any, ...]:
        spec = p.get("spec") or {}
        node = spec.get("nodeName") or ""
        ready = is_ready(p)
        try:
            cost = int((meta(p).get("annotations") or {}).get(POD_DELETION_COST, "0"))
        except ValueError:
            cost = 0
        created = parse_time(meta(p).get("creationTimestamp"))
        return (
            1 if node else 0,
            _PHASE_RANK.get(phase(p), 0),
            1 if ready else 0,
            cost,
            -per_node.get(node, 0),
            _log_bucket(ready_since(p), now) if ready else 0,
            -restart_count(p),
            _log_bucket(created, now),
        )

    return sorted(pods, key=key)
