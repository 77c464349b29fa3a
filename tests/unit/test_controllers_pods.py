"""Pod facts: availability, templates, which pod a scale-down deletes first."""

from __future__ import annotations

import datetime as dt

from k3p_plugins.controller_manager.pods import (
    deletion_order,
    is_active,
    is_available,
    pod_from_template,
    seconds_until_available,
)

NOW = dt.datetime(2024, 1, 1, 12, 0, tzinfo=dt.UTC)


def pod(name: str, node: str = "n1", phase: str = "Running", ready: bool = True, created: str = "2024-01-01T10:00:00Z",
        ready_since: str = "2024-01-01T10:00:00Z", restarts: int = 0, cost: str | None = None) -> dict:
    meta: dict = {"name": name, "creationTimestamp": created}
    if cost is not None:
        meta["annotations"] = {"controller.kubernetes.io/pod-deletion-cost": cost}
    return {"metadata": meta, "spec": {"nodeName": node} if node else {},
            "status": {"phase": phase, "conditions": [{"type": "Ready", "status": "True" if ready else "False",
                                                       "lastTransitionTime": ready_since}],
                       "containerStatuses": [{"restartCount": restarts}]}}


def names(pods: list[dict]) -> list[str]:
    return [p["metadata"]["name"] for p in pods]


def test_deletion_order_prefers_unscheduled_pending_not_ready() -> None:
    pods = [pod("running"), pod("pending", phase="Pending", ready=False), pod("unscheduled", node="", phase="Pending",
                                                                              ready=False),
            pod("notready", ready=False)]
    assert names(deletion_order(pods, now=NOW)) == ["unscheduled", "pending", "notready", "running"]


def test_deletion_order_cost_doubling_and_age() -> None:
    pods = [pod("cheap", cost="-10", node="a"), pod("a2", node="a"), pod("lonely", node="b"),
            pod("young", node="c", created="2024-01-01T11:59:00Z", ready_since="2024-01-01T11:59:30Z")]
    order = names(deletion_order(pods, now=NOW))
    assert order[0] == "cheap"  # lowest deletion cost first
    assert order.index("a2") < order.index("lonely")  # node "a" has two related pods
    assert order.index("young") < order.index("lonely")  # recently ready goes first


def test_availability_waits_min_ready_seconds() -> None:
    p = pod("p", ready_since="2024-01-01T11:59:50Z")
    assert is_available(p, 0, NOW)
    assert not is_available(p, 30, NOW)
    assert is_available(p, 5, NOW)
    assert seconds_until_available(p, 30, NOW) == 20
    assert not is_available(pod("q", ready=False), 0, NOW)


def test_active_and_template() -> None:
    assert is_active(pod("a"))
    assert not is_active(pod("b", phase="Succeeded"))
    gone = pod("c")
    gone["metadata"]["deletionTimestamp"] = "2024-01-01T00:00:00Z"
    assert not is_active(gone)
    template = {"metadata": {"labels": {"app": "x"}, "annotations": {"a": "b"}, "finalizers": ["f"]},
                "spec": {"containers": [{"name": "c"}]}}
    ref = {"kind": "ReplicaSet", "name": "rs", "uid": "u", "controller": True}
    made = pod_from_template(template, ref, generate_name="rs-", namespace="ns")
    assert made["metadata"] == {"labels": {"app": "x"}, "annotations": {"a": "b"}, "finalizers": ["f"],
                                "ownerReferences": [ref], "generateName": "rs-", "namespace": "ns"}
    made["spec"]["containers"].append({})
    assert len(template["spec"]["containers"]) == 1  # a copy, not the template itself
