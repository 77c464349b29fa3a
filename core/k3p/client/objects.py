"""Helpers for plain-dict Kubernetes objects: times, owner references, conditions.

The time helpers here are the one way k3p writes Kubernetes timestamps; the API server and the
agent use them too, so this module imports only the standard library at run time.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from k3p.client.api import Obj


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def format_time(when: dt.datetime | None = None) -> str:
    """RFC 3339 in UTC with seconds, as Kubernetes writes metav1.Time (now without ``when``).

    Sub-second digits are dropped (not rounded); a naive ``when`` is taken as local time.
    """
    when = when or utcnow()
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def format_micro_time(when: dt.datetime | None = None) -> str:
    """RFC 3339 in UTC with microseconds, as Kubernetes writes metav1.MicroTime (now without ``when``)."""
    when = when or utcnow()
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def format_unix_time(seconds: float) -> str:
    """A Unix timestamp (seconds since the epoch) as metav1.Time: UTC, sub-seconds dropped."""
    return format_time(dt.datetime.fromtimestamp(seconds, dt.UTC))


def parse_time(value: str | None) -> dt.datetime | None:
    """A metav1.Time (or MicroTime) string as an aware datetime; None for empty or malformed input."""
    if not value:
        return None
    try:
        return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def meta(obj: Mapping[str, Any]) -> dict[str, Any]:
    return obj.get("metadata") or {}


def uid_of(obj: Mapping[str, Any]) -> str:
    return meta(obj).get("uid", "")


def name_of(obj: Mapping[str, Any]) -> str:
    return meta(obj).get("name", "")


def namespace_of(obj: Mapping[str, Any]) -> str | None:
    return meta(obj).get("namespace")


def labels_of(obj: Mapping[str, Any]) -> dict[str, str]:
    return meta(obj).get("labels") or {}


def annotations_of(obj: Mapping[str, Any]) -> dict[str, str]:
    return meta(obj).get("annotations") or {}


def is_deleting(obj: Mapping[str, Any]) -> bool:
    return bool(meta(obj).get("deletionTimestamp"))


def owner_reference(owner: Mapping[str, Any], controller: bool = True, block: bool = True) -> Obj:
    """An ownerReference to ``owner`` (controller + blockOwnerDeletion, as controllers set them)."""
    return {"apiVersion": owner["apiVersion"], "kind": owner["kind"], "name": name_of(owner),
            "uid": uid_of(owner), "controller": controller, "blockOwnerDeletion": block}


def controller_ref(obj: Mapping[str, Any]) -> Obj | None:
    """The ownerReference with ``controller: true``, if any."""
    for ref in meta(obj).get("ownerReferences") or []:
        if ref.get("controller"):
            return ref
    return None


def is_controlled_by(obj: Mapping[str, Any], owner: Mapping[str, Any]) -> bool:
    ref = controller_ref(obj)
    return ref is not None and ref.get("uid") == uid_of(owner)


def get_condition(status: Mapping[str, Any] | None, type_: str) -> Obj | None:
    for cond in (status or {}).get("conditions") or []:
        if cond.get("type") == type_:
            return cond
    return None


def set_condition(status: dict[str, Any], type_: str, cond_status: str, reason: str = "", message: str = "",
                  *, now: str | None = None, update_time: bool = False, probe_time: bool = False) -> bool:
    """Set a condition the way kube's helpers do: the transition time moves only when the status changes.

    ``update_time`` adds ``lastUpdateTime`` (Deployments), ``probe_time`` ``lastProbeTime`` (Jobs).
    Returns whether anything changed.
    """
    now = now or format_time()
    conditions: list[Obj] = list(status.get("conditions") or [])
    current = next((c for c in conditions if c.get("type") == type_), None)
    if current is not None and current.get("status") == cond_status and current.get("reason", "") == reason \
            and current.get("message", "") == message:
        return False
    new: Obj = {"type": type_, "status": cond_status}
    if update_time:
        new["lastUpdateTime"] = now
    if probe_time:
        new["lastProbeTime"] = now
    new["lastTransitionTime"] = (current.get("lastTransitionTime") if current is not None
                                 and current.get("status") == cond_status else now)
    if reason:
        new["reason"] = reason
    if message:
        new["message"] = message
    status["conditions"] = [c for c in conditions if c.get("type") != type_] + [new]
    return True


def remove_condition(status: dict[str, Any], type_: str) -> bool:
    conditions = status.get("conditions") or []
    kept = [c for c in conditions if c.get("type") != type_]
    if len(kept) == len(conditions):
        return False
    status["conditions"] = kept
    return True


def object_reference(obj: Mapping[str, Any]) -> Obj:
    """A core/v1 ObjectReference to ``obj`` (what CronJob status.active holds)."""
    ref = {"kind": obj.get("kind"), "namespace": namespace_of(obj), "name": name_of(obj), "uid": uid_of(obj),
           "apiVersion": obj.get("apiVersion"), "resourceVersion": meta(obj).get("resourceVersion")}
    return {k: v for k, v in ref.items() if v}


def sort_by_creation(objs: Iterable[Obj], newest_first: bool = False) -> list[Obj]:
    """Oldest first (ties by name), as kube's ByCreationTimestamp."""
    items = sorted(objs, key=lambda o: (meta(o).get("creationTimestamp") or "", name_of(o)))
    return items[::-1] if newest_first else items
