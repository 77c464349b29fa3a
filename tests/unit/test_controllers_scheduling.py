"""Where daemon pods go, condition taints, NoExecute toleration times, job and statefulset helpers."""

from __future__ import annotations

from k3p.client.nodeaffinity import pod_fits_node, tolerates
from k3p_plugins.controller_manager.daemonset import (
    daemon_pod_spec,
    node_name_affinity,
    should_run_on,
    surge_and_unavailable,
    target_node,
)
from k3p_plugins.controller_manager.job import backoff_delay, format_indexes, is_pod_failed, parse_indexes, want_active
from k3p_plugins.controller_manager.nodelifecycle import desired_taints, min_toleration_seconds
from k3p_plugins.controller_manager.statefulset import new_pod, ordinal_of


def node(name: str = "n1", labels: dict | None = None, taints: list | None = None, ready: str = "True",
         **conditions: str) -> dict:
    conds = [{"type": "Ready", "status": ready}] + [{"type": k, "status": v} for k, v in conditions.items()]
    return {"metadata": {"name": name, "labels": labels or {}}, "spec": {"taints": taints or []},
            "status": {"conditions": conds}}


def ds(spec: dict | None = None, strategy: dict | None = None) -> dict:
    return {"metadata": {"name": "d", "generation": 1},
            "spec": {"template": {"spec": {"containers": [{"name": "c"}], **(spec or {})}},
                     "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": strategy or {}}}}


def test_daemon_eligibility() -> None:
    assert should_run_on(ds(), node()) == (True, True)
    assert should_run_on(ds({"nodeSelector": {"disk": "ssd"}}), node()) == (False, False)
    assert should_run_on(ds({"nodeSelector": {"disk": "ssd"}}), node(labels={"disk": "ssd"})) == (True, True)
    tainted = node(taints=[{"key": "dedicated", "value": "db", "effect": "NoSchedule"}])
    assert should_run_on(ds(), tainted) == (False, True)  # existing pods may stay
    evicting = node(taints=[{"key": "dedicated", "value": "db", "effect": "NoExecute"}])
    assert should_run_on(ds(), evicting) == (False, False)
    tolerated = ds({"tolerations": [{"key": "dedicated", "operator": "Equal", "value": "db"}]})
    assert should_run_on(tolerated, evicting) == (True, True)
    # the automatic daemon tolerations cover a node that is unreachable or cordoned
    cordoned = node(taints=[{"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"},
                            {"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"}])
    assert should_run_on(ds(), cordoned) == (True, True)


def test_daemon_pods_bind_by_node_affinity() -> None:
    spec = daemon_pod_spec({"hostNetwork": True, "tolerations": [
        {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 5}]})
    keys = [(t["key"], t["effect"]) for t in spec["tolerations"]]
    assert ("node.kubernetes.io/network-unavailable", "NoSchedule") in keys
    assert keys.count(("node.kubernetes.io/not-ready", "NoExecute")) == 1
    assert "tolerationSeconds" not in next(t for t in spec["tolerations"] if t["key"].endswith("not-ready"))
    affinity = node_name_affinity({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [{"key": "a", "operator": "Exists"}]}]}}}, "n7")
    pod = {"spec": {"affinity": affinity}}
    assert target_node(pod) == "n7"
    assert pod_fits_node(pod["spec"], node("n7")) and not pod_fits_node(pod["spec"], node("n8"))


def test_daemonset_rolling_numbers() -> None:
    assert surge_and_unavailable(ds(strategy={"maxUnavailable": "10%"}), 15) == (0, 2)
    assert surge_and_unavailable(ds(strategy={"maxUnavailable": 0, "maxSurge": 0}), 5) == (0, 1)
    assert surge_and_unavailable(ds(strategy={"maxUnavailable": 0, "maxSurge": "50%"}), 3) == (2, 0)


def test_tolerations() -> None:
    taint = {"key": "k", "value": "v", "effect": "NoSchedule"}
    assert tolerates({"key": "k", "operator": "Equal", "value": "v"}, taint)
    assert not tolerates({"key": "k", "operator": "Equal", "value": "w"}, taint)
    assert tolerates({"operator": "Exists"}, taint)
    assert not tolerates({"key": "k", "operator": "Exists", "effect": "NoExecute"}, taint)


def test_condition_taints() -> None:
    taints = desired_taints(node(ready="Unknown"), "T")
    assert {(t["key"], t["effect"]) for t in taints} == {("node.kubernetes.io/unreachable", "NoSchedule"),
                                                         ("node.kubernetes.io/unreachable", "NoExecute")}
    assert next(t for t in taints if t["effect"] == "NoExecute")["timeAdded"] == "T"
    not_ready = desired_taints(node(ready="False", DiskPressure="True",
                                    taints=[{"key": "mine", "effect": "NoSchedule"},
                                            {"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"}]), "T")
    assert {(t["key"], t["effect"]) for t in not_ready} == {
        ("mine", "NoSchedule"), ("node.kubernetes.io/not-ready", "NoSchedule"),
        ("node.kubernetes.io/not-ready", "NoExecute"), ("node.kubernetes.io/disk-pressure", "NoSchedule")}
    assert desired_taints(node(taints=[{"key": "node.kubernetes.io/not-ready", "effect": "NoExecute"}]), "T") == []


def test_min_toleration_seconds() -> None:
    unreachable = [{"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"}]
    default = [{"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute",
                "tolerationSeconds": 300}]
    assert min_toleration_seconds(unreachable, default) == 300
    assert min_toleration_seconds(unreachable, []) == 0
    assert min_toleration_seconds(unreachable, [{"operator": "Exists"}]) is None
    assert min_toleration_seconds(unreachable, [*default, {"operator": "Exists", "tolerationSeconds": 10}]) == 10


def test_job_helpers() -> None:
    assert parse_indexes("0-2,5,7-8") == {0, 1, 2, 5, 7, 8}
    assert format_indexes({8, 0, 1, 2, 5, 7}) == "0-2,5,7-8"
    job = {"spec": {"completions": 5, "parallelism": 2}}
    assert want_active(job, 0) == 2 and want_active(job, 4) == 1 and want_active(job, 5) == 0
    assert want_active({"spec": {"parallelism": 3}}, 0) == 3 and want_active({"spec": {"parallelism": 3}}, 1) == 0
    assert [backoff_delay(n) for n in (0, 1, 2, 3)] == [0, 10, 20, 40] and backoff_delay(20) == 600
    deleted = {"metadata": {"deletionTimestamp": "x"}, "status": {"phase": "Running"}}
    assert is_pod_failed(deleted, {"spec": {}})
    assert not is_pod_failed(deleted, {"spec": {"podReplacementPolicy": "Failed"}})


def test_statefulset_identity() -> None:
    sts = {"apiVersion": "apps/v1", "kind": "StatefulSet",
           "metadata": {"name": "web", "namespace": "ns", "uid": "u"},
           "spec": {"serviceName": "svc", "volumeClaimTemplates": [{"metadata": {"name": "data"}}]}}
    template = {"metadata": {"labels": {"app": "w"}},
                "spec": {"containers": [{"name": "c"}], "volumes": [{"name": "data", "emptyDir": {}}]}}
    pod = new_pod(sts, template, 2, "web-abc")
    assert pod["metadata"]["name"] == "web-2" and pod["spec"]["hostname"] == "web-2"
    assert pod["spec"]["subdomain"] == "svc"
    assert pod["metadata"]["labels"] == {"app": "w", "statefulset.kubernetes.io/pod-name": "web-2",
                                         "apps.kubernetes.io/pod-index": "2", "controller-revision-hash": "web-abc"}
    assert pod["spec"]["volumes"] == [{"name": "data", "persistentVolumeClaim": {"claimName": "data-web-2"}}]
    assert ordinal_of("web", pod) == 2
    assert ordinal_of("web", {"metadata": {"name": "webx-1"}}) is None
    assert ordinal_of("web", {"metadata": {"name": "web-x"}}) is None
