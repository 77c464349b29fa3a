"""The arithmetic of Deployments, as pure functions over plain dicts (kube's deployment/util).

How many pods a rolling update may add or remove, proportional scaling of several
ReplicaSets, revision bookkeeping, the status a Deployment reports and its conditions.
"""

from __future__ import annotations

import copy
import datetime as dt
from collections.abc import Iterable, Mapping
from typing import Any

from k3p.client import Obj
from k3p.client.objects import get_condition, meta, name_of, parse_time, sort_by_creation
from k3p_plugins.controller_manager.intorpercent import resolve_fenceposts

REVISION = "deployment.kubernetes.io/revision"
REVISION_HISTORY = "deployment.kubernetes.io/revision-history"
DESIRED_REPLICAS = "deployment.kubernetes.io/desired-replicas"
MAX_REPLICAS = "deployment.kubernetes.io/max-replicas"
POD_TEMPLATE_HASH = "pod-template-hash"

#: Deployment annotations that are not copied to its ReplicaSets
_NOT_COPIED = {
    "kubectl.kubernetes.io/last-applied-configuration",
    REVISION, REVISION_HISTORY, DESIRED_REPLICAS, MAX_REPLICAS,
    "deprecated.deployment.rollback.to",
}

# Condition reasons and messages kube's deployment controller writes (kubectl reads them).
NEW_RS_CREATED = "NewReplicaSetCreated"
FOUND_NEW_RS = "FoundNewReplicaSet"
RS_UPDATED = "ReplicaSetUpdated"
NEW_RS_AVAILABLE = "NewReplicaSetAvailable"
TIMED_OUT = "ProgressDeadlineExceeded"
PAUSED = "DeploymentPaused"
RESUMED = "DeploymentResumed"
MIN_AVAILABLE = "MinimumReplicasAvailable"
MIN_UNAVAILABLE = "MinimumReplicasUnavailable"
FAILED_RS_CREATE = "ReplicaSetCreateError"


def replicas(obj: Mapping[str, Any]) -> int:
    value = (obj.get("spec") or {}).get("replicas")
    return 1 if value is None else int(value)


def status_int(obj: Mapping[str, Any], field: str) -> int:
    return int((obj.get("status") or {}).get(field) or 0)


def revision_of(rs: Mapping[str, Any]) -> int:
    try:
        return int((meta(rs).get("annotations") or {}).get(REVISION, "0"))
    except ValueError:
        return 0


def is_rolling(d: Mapping[str, Any]) -> bool:
    return ((d.get("spec") or {}).get("strategy") or {}).get("type", "RollingUpdate") == "RollingUpdate"


def fenceposts(d: Mapping[str, Any]) -> tuple[int, int]:
    ru = ((d.get("spec") or {}).get("strategy") or {}).get("rollingUpdate") or {}
    return resolve_fenceposts(ru.get("maxSurge", "25%"), ru.get("maxUnavailable", "25%"), replicas(d))


def max_surge(d: Mapping[str, Any]) -> int:
    return fenceposts(d)[0] if is_rolling(d) else 0


def max_unavailable(d: Mapping[str, Any]) -> int:
    if not is_rolling(d) or replicas(d) == 0:
        return 0
    return min(fenceposts(d)[1], replicas(d))


def _strip_hash(template: Mapping[str, Any] | None) -> Obj:
    t = copy.deepcopy(dict(template or {}))
    tmeta = t.setdefault("metadata", {})
    labels = dict(tmeta.get("labels") or {})
    labels.pop(POD_TEMPLATE_HASH, None)
    if labels:
        tmeta["labels"] = labels
    else:
        tmeta.pop("labels", None)
    for key in [k for k, v in tmeta.items() if v in (None, {}, [])]:
        tmeta.pop(key)
    if not tmeta:
        t.pop("metadata")
    return t


def templates_equal(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None) -> bool:
    """Pod templates equal apart from the pod-template-hash label (kube's EqualIgnoreHash)."""
    return _strip_hash(a) == _strip_hash(b)


def template_for_hash(template: Mapping[str, Any] | None) -> Obj:
    """The template as hashed: the stored, defaulted template without the hash label."""
    return _strip_hash(template)


def find_new_rs(d: Mapping[str, Any], rs_list: Iterable[Obj]) -> Obj | None:
    """The oldest ReplicaSet whose template is the Deployment's (several can match after a hash collision)."""
    template = (d.get("spec") or {}).get("template")
    for rs in sort_by_creation(rs_list):
        if templates_equal((rs.get("spec") or {}).get("template"), template):
            return rs
    return None


def active_or_latest(new_rs: Obj | None, old_rss: list[Obj]) -> Obj | None:
    """The one ReplicaSet with pods, or the newest one if none has any; None if several have pods."""
    if new_rs is None and not old_rss:
        return None
    olds = sort_by_creation(old_rss, newest_first=True)
    active = [rs for rs in ([new_rs] if new_rs else []) + olds if replicas(rs) > 0]
    if len(active) == 0:
        return new_rs if new_rs is not None else olds[0]
    if len(active) == 1:
        return active[0]
    return None


def new_rs_new_replicas(d: Mapping[str, Any], all_rss: list[Obj], new_rs: Obj) -> int:
    """How many replicas the new ReplicaSet should have now (kube's NewRSNewReplicas)."""
    if not is_rolling(d):
        return replicas(d)
    surge = max_surge(d)
    current = sum(replicas(rs) for rs in all_rss)
    max_total = replicas(d) + surge
    if current >= max_total:
        return replicas(new_rs)
    scale_up = min(max_total - current, replicas(d) - replicas(new_rs))
    return replicas(new_rs) + max(scale_up, 0)


def _available(rs: Mapping[str, Any]) -> int:
    # Pods beyond spec.replicas are about to go: never count them as available (a stale
    # status right after a scale-down would otherwise allow removing too many at once).
    return min(status_int(rs, "availableReplicas"), replicas(rs))


def old_replicas_scale_down(d: Mapping[str, Any], all_rss: list[Obj], old_rss: list[Obj],
                            new_rs: Obj | None) -> dict[str, int]:
    """New sizes of old ReplicaSets for one rolling-update step (unhealthy pods go first).

    Mirrors kube's reconcileOldReplicaSets: never lets available pods drop below
    ``replicas - maxUnavailable``.
    """
    old_count = sum(replicas(rs) for rs in old_rss)
    if old_count == 0:
        return {}
    all_count = sum(replicas(rs) for rs in all_rss)
    min_available = replicas(d) - max_unavailable(d)
    new_unavailable = (replicas(new_rs) - _available(new_rs)) if new_rs is not None else 0
    max_scaled_down = all_count - min_available - new_unavailable
    if max_scaled_down <= 0:
        return {}
    sizes = {name_of(rs): replicas(rs) for rs in old_rss}
    # 1. Unhealthy replicas of old ReplicaSets, oldest first: removing them costs no availability.
    cleaned = 0
    for rs in sort_by_creation(old_rss):
        if cleaned >= max_scaled_down:
            break
        size = sizes[name_of(rs)]
        if size == 0:
            continue
        unhealthy = size - _available(rs)
        if unhealthy <= 0:
            continue
        remove = min(unhealthy, max_scaled_down - cleaned)
        sizes[name_of(rs)] = size - remove
        cleaned += remove
    # 2. Available replicas, as long as enough stay available.
    available = sum(min(_available(rs), sizes.get(name_of(rs), replicas(rs))) for rs in all_rss)
    if available > min_available:
        total = available - min_available
        done = 0
        for rs in sort_by_creation(old_rss):
            if done >= total:
                break
            size = sizes[name_of(rs)]
            if size == 0:
                continue
            remove = min(size, total - done)
            sizes[name_of(rs)] = size - remove
            done += remove
    return {name: size for name, size in sizes.items() if size != replicas(next(
        rs for rs in old_rss if name_of(rs) == name))}


def _max_replicas_annotation(rs: Mapping[str, Any]) -> int | None:
    try:
        return int((meta(rs).get("annotations") or {})[MAX_REPLICAS])
    except (KeyError, ValueError):
        return None


def proportional_sizes(d: Mapping[str, Any], new_rs: Obj | None, old_rss: list[Obj]) -> dict[str, int]:
    """New sizes when a Deployment is scaled in the middle of a rollout (kube's proportional scaling)."""
    target = active_or_latest(new_rs, old_rss)
    if target is not None:
        return {} if replicas(target) == replicas(d) else {name_of(target): replicas(d)}
    if new_rs is not None and is_saturated(d, new_rs):
        return {name_of(rs): 0 for rs in old_rss if replicas(rs) != 0}
    if not is_rolling(d):
        return {}
    all_rss = [rs for rs in ([new_rs] if new_rs else []) + old_rss if replicas(rs) > 0]
    all_count = sum(replicas(rs) for rs in all_rss)
    allowed = replicas(d) + max_surge(d) if replicas(d) > 0 else 0
    to_add = allowed - all_count
    if to_add > 0:
        # bigger first, newer first among equals
        ordered = sorted(all_rss, key=lambda rs: (-replicas(rs), _neg_time(rs)))
    else:
        # bigger first, older first among equals
        ordered = sorted(all_rss, key=lambda rs: (-replicas(rs), meta(rs).get("creationTimestamp") or ""))
    sizes: dict[str, int] = {}
    added = 0
    for rs in ordered:
        proportion = 0
        if to_add != 0:
            proportion = _proportion(rs, d, to_add, added)
        sizes[name_of(rs)] = replicas(rs) + proportion
        added += proportion
    if ordered and to_add != 0:
        first = name_of(ordered[0])
        sizes[first] = max(sizes[first] + (to_add - added), 0)
    return {name: max(size, 0) for name, size in sizes.items()
            if size != replicas(next(rs for rs in all_rss if name_of(rs) == name))}


def _neg_time(rs: Mapping[str, Any]) -> float:
    when = parse_time(meta(rs).get("creationTimestamp"))
    return -when.timestamp() if when else 0.0


def _proportion(rs: Obj, d: Mapping[str, Any], to_add: int, added: int) -> int:
    if replicas(rs) == 0 or to_add == 0 or to_add == added:
        return 0
    fraction = _fraction(rs, d)
    allowed = to_add - added
    return min(fraction, allowed) if to_add > 0 else max(fraction, allowed)


def _fraction(rs: Obj, d: Mapping[str, Any]) -> int:
    if replicas(d) == 0:
        return -replicas(rs)
    deployment_replicas = replicas(d) + max_surge(d)
    annotated = _max_replicas_annotation(rs)
    if annotated is None or annotated == 0:
        annotated = status_int(d, "replicas")
    if annotated == 0:
        return 0
    new_size = replicas(rs) * deployment_replicas / annotated
    return int(new_size + 0.5) - replicas(rs)


def is_saturated(d: Mapping[str, Any], rs: Mapping[str, Any]) -> bool:
    try:
        desired = int((meta(rs).get("annotations") or {}).get(DESIRED_REPLICAS, ""))
    except ValueError:
        return False
    return replicas(rs) == replicas(d) and desired == replicas(d) and status_int(rs, "availableReplicas") == replicas(d)


def replicas_annotations_need_update(rs: Mapping[str, Any], desired: int, max_total: int) -> bool:
    ann = meta(rs).get("annotations") or {}
    return ann.get(DESIRED_REPLICAS) != str(desired) or ann.get(MAX_REPLICAS) != str(max_total)


def set_replicas_annotations(rs: Obj, desired: int, max_total: int) -> bool:
    ann = rs.setdefault("metadata", {}).setdefault("annotations", {})
    changed = ann.get(DESIRED_REPLICAS) != str(desired) or ann.get(MAX_REPLICAS) != str(max_total)
    ann[DESIRED_REPLICAS] = str(desired)
    ann[MAX_REPLICAS] = str(max_total)
    return changed


def set_new_rs_annotations(d: Mapping[str, Any], rs: Obj, new_revision: int, exists: bool) -> bool:
    """Copy the Deployment's annotations and move the revision forward (keeping the history on rollback)."""
    ann = rs.setdefault("metadata", {}).setdefault("annotations", {})
    changed = False
    for k, v in (meta(d).get("annotations") or {}).items():
        if k in _NOT_COPIED or ann.get(k) == v:
            continue
        ann[k] = v
        changed = True
    old_text = ann.get(REVISION)
    try:
        old = int(old_text) if old_text is not None else 0
    except ValueError:
        old = 0
    if old < new_revision:
        ann[REVISION] = str(new_revision)
        changed = True
        if old_text is not None:
            history = [h for h in (ann.get(REVISION_HISTORY) or "").split(",") if h]
            history.append(old_text)
            ann[REVISION_HISTORY] = ",".join(history)
    if not exists and set_replicas_annotations(rs, replicas(d), replicas(d) + max_surge(d)):
        changed = True
    return changed


def calculate_status(d: Mapping[str, Any], all_rss: list[Obj], new_rs: Obj | None) -> dict[str, Any]:
    """Counts and the Available condition of a Deployment (kube's calculateStatus)."""
    available = sum(status_int(rs, "availableReplicas") for rs in all_rss)
    total = sum(replicas(rs) for rs in all_rss)
    status: dict[str, Any] = {
        "observedGeneration": meta(d).get("generation"),
        "replicas": sum(status_int(rs, "replicas") for rs in all_rss),
        "updatedReplicas": status_int(new_rs, "replicas") if new_rs is not None else 0,
        "readyReplicas": sum(status_int(rs, "readyReplicas") for rs in all_rss),
        "availableReplicas": available,
        "unavailableReplicas": max(total - available, 0),
    }
    old = d.get("status") or {}
    if old.get("collisionCount") is not None:
        status["collisionCount"] = old["collisionCount"]
    status["conditions"] = copy.deepcopy(old.get("conditions") or [])
    return status


def deployment_complete(d: Mapping[str, Any], status: Mapping[str, Any]) -> bool:
    want = replicas(d)
    return (int(status.get("updatedReplicas") or 0) == want and int(status.get("replicas") or 0) == want
            and int(status.get("availableReplicas") or 0) == want
            and int(status.get("observedGeneration") or 0) >= int(meta(d).get("generation") or 0))


def deployment_progressing(d: Mapping[str, Any], new_status: Mapping[str, Any]) -> bool:
    old = d.get("status") or {}
    old_old = int(old.get("replicas") or 0) - int(old.get("updatedReplicas") or 0)
    new_old = int(new_status.get("replicas") or 0) - int(new_status.get("updatedReplicas") or 0)
    return (int(new_status.get("updatedReplicas") or 0) > int(old.get("updatedReplicas") or 0)
            or new_old < old_old
            or int(new_status.get("readyReplicas") or 0) > int(old.get("readyReplicas") or 0)
            or int(new_status.get("availableReplicas") or 0) > int(old.get("availableReplicas") or 0))


def has_progress_deadline(d: Mapping[str, Any]) -> bool:
    value = (d.get("spec") or {}).get("progressDeadlineSeconds")
    return value is not None and int(value) != 2**31 - 1


def progress_deadline_passed(d: Mapping[str, Any], status: Mapping[str, Any], now: dt.datetime) -> bool:
    """kube's DeploymentTimedOut: the Progressing condition has not moved for progressDeadlineSeconds."""
    if not has_progress_deadline(d):
        return False
    cond = get_condition(status, "Progressing")
    if cond is None or cond.get("reason") == NEW_RS_AVAILABLE:
        return False
    if cond.get("reason") == TIMED_OUT:
        return True
    since = parse_time(cond.get("lastUpdateTime"))
    if since is None:
        return False
    return since + dt.timedelta(seconds=int(d["spec"]["progressDeadlineSeconds"])) < now


def seconds_to_deadline(d: Mapping[str, Any], status: Mapping[str, Any], now: dt.datetime) -> float | None:
    """When a stuck rollout should be looked at again to notice its deadline (None: never)."""
    cond = get_condition(status, "Progressing")
    if cond is None or not has_progress_deadline(d) or cond.get("reason") in (NEW_RS_AVAILABLE, TIMED_OUT):
        return None
    if deployment_complete(d, status):
        return None
    since = parse_time(cond.get("lastUpdateTime"))
    if since is None:
        return None
    left = (since + dt.timedelta(seconds=int(d["spec"]["progressDeadlineSeconds"])) - now).total_seconds()
    return max(left + 1, 0.5)
