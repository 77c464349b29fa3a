"""The FailedScheduling messages: kube-scheduler 1.32's wording, reasons counted and sorted."""

from __future__ import annotations

from typing import Any

from k3p_plugins.scheduler import messages
from k3p_plugins.scheduler.algorithm import Algorithm
from k3p_plugins.scheduler.cache import SchedulerCache
from k3p_plugins.scheduler.model import PodInfo


def test_histogram_counts_and_sorts_as_text() -> None:
    lists = [("Insufficient memory",), ("Insufficient cpu", "Insufficient memory"), ("Too many pods",),
             ("node(s) were unschedulable",)]
    assert messages.histogram(lists) == (
        "1 Insufficient cpu, 1 Too many pods, 1 node(s) were unschedulable, 2 Insufficient memory")


def test_fit_error_format() -> None:
    assert messages.fit_error(3, [("Insufficient cpu",)] * 3, "0/3 nodes are available: 3 No preemption victims "
                              "found for incoming pod.") == (
        "0/3 nodes are available: 3 Insufficient cpu. preemption: 0/3 nodes are available: "
        "3 No preemption victims found for incoming pod.")
    assert messages.fit_error(0, []) == "0/0 nodes are available:"
    assert messages.scheduled("ns", "web-1", "node-a") == "Successfully assigned ns/web-1 to node-a"


def node(name: str, cpu: str = "4", memory: str = "8Gi", taints: list | None = None, labels: dict | None = None,
         unschedulable: bool = False) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, **(labels or {})}},
            "spec": {"taints": taints or [], "unschedulable": unschedulable},
            "status": {"allocatable": {"cpu": cpu, "memory": memory, "pods": "110"},
                       "conditions": [{"type": "Ready", "status": "True"}]}}


def pod(name: str = "p", cpu: str | None = None, memory: str | None = None, priority: int = 0,
        **spec: Any) -> dict[str, Any]:
    requests = {k: v for k, v in (("cpu", cpu), ("memory", memory)) if v is not None}
    return {"metadata": {"name": name, "namespace": "default", "uid": name},
            "spec": {"containers": [{"name": "c", "resources": {"requests": requests}}], "priority": priority,
                     **spec}}


def decide(nodes: list[dict], p: dict, placed: dict[str, list[dict]] | None = None) -> str:
    cache = SchedulerCache()
    for n in nodes:
        cache.set_node(n)
    for node_name, pods in (placed or {}).items():
        for q in pods:
            q["spec"]["nodeName"] = node_name
            cache.set_pod(PodInfo(q))
    decision = Algorithm(cache).schedule(PodInfo(p))
    assert decision.node is None
    return decision.message


CONTROL_PLANE = {"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}


def test_message_for_a_pod_too_big_for_every_node() -> None:
    assert decide([node("a"), node("b"), node("c")], pod(cpu="100")) == (
        "0/3 nodes are available: 3 Insufficient cpu. preemption: 0/3 nodes are available: "
        "3 No preemption victims found for incoming pod.")


def test_message_mixing_taints_and_memory() -> None:
    nodes = [node("cp", memory="64Gi", taints=[CONTROL_PLANE]), node("w1"), node("w2")]
    assert decide(nodes, pod(memory="16Gi")) == (
        "0/3 nodes are available: 1 node(s) had untolerated taint {node-role.kubernetes.io/control-plane: }, "
        "2 Insufficient memory. preemption: 0/3 nodes are available: 1 Preemption is not helpful for scheduling, "
        "2 No preemption victims found for incoming pod.")


def test_message_with_several_reasons_on_one_node() -> None:
    assert decide([node("a", cpu="1", memory="1Gi")], pod(cpu="2", memory="2Gi")) == (
        "0/1 nodes are available: 1 Insufficient cpu, 1 Insufficient memory. preemption: 0/1 nodes are available: "
        "1 No preemption victims found for incoming pod.")


def test_message_when_preemption_is_not_allowed() -> None:
    assert decide([node("a")], pod(cpu="8", preemptionPolicy="Never")) == (
        "0/1 nodes are available: 1 Insufficient cpu. preemption: not eligible due to preemptionPolicy=Never.")


def test_lower_priority_pods_that_would_not_make_room() -> None:
    # Evicting the low-priority pod frees 1 cpu: still not enough, so preemption names the shortfall.
    placed = {"a": [pod("low", cpu="1", priority=0), pod("high", cpu="2", priority=1000)]}
    assert decide([node("a", cpu="4")], pod(cpu="3", priority=500), placed) == (
        "0/1 nodes are available: 1 Insufficient cpu. preemption: 0/1 nodes are available: 1 Insufficient cpu.")


def test_message_for_a_daemon_pod_pinned_to_a_node() -> None:
    pinned = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["a"]}]}]}}}
    assert decide([node("a", cpu="1"), node("b"), node("c")], pod(cpu="2", affinity=pinned)) == (
        "0/3 nodes are available: 1 Insufficient cpu, 2 node(s) didn't satisfy plugin(s) [NodeAffinity]. "
        "preemption: 0/3 nodes are available: 1 No preemption victims found for incoming pod, "
        "2 Preemption is not helpful for scheduling.")


def test_message_for_cordoned_and_mismatched_nodes() -> None:
    nodes = [node("a", unschedulable=True), node("b", labels={"disk": "hdd"})]
    assert decide(nodes, pod(nodeSelector={"disk": "ssd"})) == (
        "0/2 nodes are available: 1 node(s) didn't match Pod's node affinity/selector, "
        "1 node(s) were unschedulable. preemption: 0/2 nodes are available: "
        "2 Preemption is not helpful for scheduling.")


def test_no_nodes_at_all() -> None:
    decision = Algorithm(SchedulerCache()).schedule(PodInfo(pod()))
    assert decision.node is None
    assert (decision.reason, decision.message) == ("SchedulerError", "no nodes available to schedule pods")
