"""Deployment arithmetic: fenceposts, rolling steps, proportional scaling, revisions, status."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from k3p_plugins.controller_manager import deployment_util as du
from k3p_plugins.controller_manager.intorpercent import InvalidIntOrPercent, resolve_fenceposts, scaled_value


def deploy(replicas: int, surge: Any = "25%", unavailable: Any = "25%", strategy: str = "RollingUpdate",
           annotations: dict[str, str] | None = None, generation: int = 1, status: dict | None = None) -> dict:
    spec: dict[str, Any] = {"replicas": replicas, "strategy": {"type": strategy},
                            "template": {"metadata": {"labels": {"app": "x"}}, "spec": {"containers": [{"name": "c"}]}}}
    if strategy == "RollingUpdate":
        spec["strategy"]["rollingUpdate"] = {"maxSurge": surge, "maxUnavailable": unavailable}
    return {"metadata": {"name": "d", "generation": generation, "annotations": annotations or {}}, "spec": spec,
            "status": status or {}}


def rs(name: str, replicas: int, available: int | None = None, created: str = "2024-01-01T00:00:00Z",
       annotations: dict[str, str] | None = None, status_replicas: int | None = None) -> dict:
    return {"metadata": {"name": name, "creationTimestamp": created, "annotations": annotations or {}},
            "spec": {"replicas": replicas},
            "status": {"replicas": replicas if status_replicas is None else status_replicas,
                       "availableReplicas": replicas if available is None else available}}


@pytest.mark.parametrize(("value", "total", "up", "want"), [
    ("25%", 3, True, 1), ("25%", 3, False, 0), ("25%", 4, False, 1), ("10%", 10, True, 1), ("33%", 10, True, 4),
    (2, 10, False, 2), ("0%", 5, True, 0), ("100%", 7, False, 7),
])
def test_scaled_value_rounds_like_kube(value: Any, total: int, up: bool, want: int) -> None:
    assert scaled_value(value, total, up) == want


def test_fenceposts_never_both_zero_and_bad_values_fail() -> None:
    assert resolve_fenceposts("25%", "25%", 3) == (1, 0)
    assert resolve_fenceposts(0, 0, 3) == (0, 1)
    assert resolve_fenceposts("0%", "0%", 10) == (0, 1)
    with pytest.raises(InvalidIntOrPercent):
        scaled_value("abc", 10, True)


def test_max_unavailable_caps_at_replicas_and_is_zero_for_recreate() -> None:
    assert du.max_unavailable(deploy(2, unavailable=5)) == 2
    assert du.max_unavailable(deploy(3, strategy="Recreate")) == 0
    assert du.max_surge(deploy(3, strategy="Recreate")) == 0
    assert du.max_unavailable(deploy(0)) == 0


def test_new_rs_grows_within_max_surge() -> None:
    d = deploy(10, surge=3, unavailable=2)
    old, new = rs("old", 10), rs("new", 0)
    assert du.new_rs_new_replicas(d, [old, new], new) == 3
    # already at replicas + surge: no growth until old pods go
    old2, new2 = rs("old", 8), rs("new", 5)
    assert du.new_rs_new_replicas(d, [old2, new2], new2) == 5
    # never above the desired count
    assert du.new_rs_new_replicas(d, [rs("old", 0), rs("new", 9)], rs("new", 9)) == 10
    assert du.new_rs_new_replicas(deploy(4, strategy="Recreate"), [], rs("new", 0)) == 4


def test_old_scale_down_keeps_min_available() -> None:
    d = deploy(3, surge=0, unavailable=1)
    old, new = rs("old", 3), rs("new", 0, created="2024-01-02T00:00:00Z")
    assert du.old_replicas_scale_down(d, [old, new], [old], new) == {"old": 2}
    # new pod not available yet: nothing more may go
    old2, new2 = rs("old", 2), rs("new", 1, available=0, created="2024-01-02T00:00:00Z")
    assert du.old_replicas_scale_down(d, [old2, new2], [old2], new2) == {}
    # new pod available: one more old pod goes
    new3 = rs("new", 1, available=1, created="2024-01-02T00:00:00Z")
    assert du.old_replicas_scale_down(d, [old2, new3], [old2], new3) == {"old": 1}


def test_old_scale_down_removes_unhealthy_first_and_ignores_stale_surplus() -> None:
    d = deploy(4, surge=1, unavailable=0)
    a = rs("a", 2, available=0, created="2024-01-01T00:00:00Z")
    b = rs("b", 2, available=2, created="2024-01-02T00:00:00Z")
    new = rs("new", 1, available=0, created="2024-01-03T00:00:00Z")
    # 5 pods, min 4 available, the new one unavailable: 0 may go by availability, but a's two
    # unhealthy pods cost nothing... limited by allPods - minAvailable - newUnavailable = 0
    assert du.old_replicas_scale_down(d, [a, b, new], [a, b], new) == {}
    new_ok = rs("new", 1, available=1, created="2024-01-03T00:00:00Z")
    assert du.old_replicas_scale_down(d, [a, b, new_ok], [a, b], new_ok) == {"a": 1}
    # a status that still counts pods beyond spec.replicas is not trusted
    stale = rs("old", 2, available=3)
    assert du.old_replicas_scale_down(deploy(3, surge=0, unavailable=1), [stale, rs("n", 1, available=0)], [stale],
                                      rs("n", 1, available=0)) == {}


def test_proportional_scaling_spreads_by_size() -> None:
    d = deploy(15, surge=3, unavailable=2, status={"replicas": 13})
    ann = {du.MAX_REPLICAS: "13"}
    old = rs("old", 8, annotations=ann, created="2024-01-01T00:00:00Z")
    new = rs("new", 5, annotations=ann, created="2024-01-02T00:00:00Z")
    sizes = du.proportional_sizes(d, new, [old])
    assert sum(sizes.values()) == 18 and sizes["old"] > sizes["new"] > 5
    # a single active ReplicaSet simply takes the new size
    assert du.proportional_sizes(deploy(7), rs("only", 3), []) == {"only": 7}


def test_templates_equal_ignores_the_hash_label() -> None:
    a = {"metadata": {"labels": {"app": "x", du.POD_TEMPLATE_HASH: "abc"}}, "spec": {"containers": [{"name": "c"}]}}
    b = {"metadata": {"labels": {"app": "x"}}, "spec": {"containers": [{"name": "c"}]}}
    assert du.templates_equal(a, b)
    assert not du.templates_equal(a, {**b, "spec": {"containers": [{"name": "d"}]}})


def test_rollback_moves_revision_forward_and_keeps_history() -> None:
    d = deploy(3, annotations={"kubernetes.io/change-cause": "undo", du.REVISION: "2"})
    target = rs("old", 0, annotations={du.REVISION: "1"})
    assert du.set_new_rs_annotations(d, target, 3, exists=True)
    ann = target["metadata"]["annotations"]
    assert ann[du.REVISION] == "3" and ann[du.REVISION_HISTORY] == "1" and ann["kubernetes.io/change-cause"] == "undo"
    assert not du.set_new_rs_annotations(d, target, 3, exists=True)  # idempotent
    fresh = rs("new", 0, annotations={})
    du.set_new_rs_annotations(deploy(4, surge=1), fresh, 1, exists=False)
    assert fresh["metadata"]["annotations"][du.DESIRED_REPLICAS] == "4"
    assert fresh["metadata"]["annotations"][du.MAX_REPLICAS] == "5"
    assert du.REVISION_HISTORY not in fresh["metadata"]["annotations"]


def test_status_and_completion() -> None:
    d = deploy(3, generation=2)
    new = rs("new", 3, available=2)
    new["status"]["readyReplicas"] = 3
    status = du.calculate_status(d, [new, rs("old", 0, status_replicas=1, available=0)], new)
    assert status["replicas"] == 4 and status["updatedReplicas"] == 3 and status["availableReplicas"] == 2
    assert status["unavailableReplicas"] == 1 and status["observedGeneration"] == 2
    assert not du.deployment_complete(d, status)
    assert du.deployment_complete(d, {"replicas": 3, "updatedReplicas": 3, "availableReplicas": 3,
                                      "observedGeneration": 2})
    assert du.find_new_rs({"spec": {"template": new.get("spec", {}).get("template")}}, []) is None


def test_progress_deadline() -> None:
    now = dt.datetime(2024, 1, 1, 0, 10, tzinfo=dt.UTC)
    d = deploy(3)
    d["spec"]["progressDeadlineSeconds"] = 60
    cond = {"type": "Progressing", "status": "True", "reason": du.RS_UPDATED, "lastUpdateTime": "2024-01-01T00:08:00Z"}
    assert du.progress_deadline_passed(d, {"conditions": [cond]}, now)
    assert not du.progress_deadline_passed(d, {"conditions": [{**cond, "lastUpdateTime": "2024-01-01T00:09:30Z"}]},
                                           now)
    assert not du.progress_deadline_passed(d, {"conditions": [{**cond, "reason": du.NEW_RS_AVAILABLE}]}, now)
    wait = du.seconds_to_deadline(d, {"conditions": [{**cond, "lastUpdateTime": "2024-01-01T00:09:30Z"}]}, now)
    assert wait == pytest.approx(31)
