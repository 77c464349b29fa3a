"""Each score of the scheduler, and how the algorithm picks a node from the totals."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

from k3p_plugins.scheduler import interpod, spread
from k3p_plugins.scheduler.algorithm import Algorithm, feasible_nodes_to_find
from k3p_plugins.scheduler.cache import SchedulerCache
from k3p_plugins.scheduler.model import PodInfo, node_info
from k3p_plugins.scheduler.scores import (
    balanced_allocation,
    least_allocated,
    node_affinity_raw,
    normalize,
    taint_toleration_raw,
)


def node(name: str = "n1", cpu: str = "4", memory: str = "8Gi", labels: dict | None = None,
         taints: list | None = None) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, **(labels or {})}},
            "spec": {"taints": taints or []},
            "status": {"allocatable": {"cpu": cpu, "memory": memory, "pods": "110"},
                       "conditions": [{"type": "Ready", "status": "True"}]}}


def pod(name: str = "p", namespace: str = "default", cpu: str | None = None, memory: str | None = None,
        labels: dict | None = None, owner: str | None = None, **spec: Any) -> dict[str, Any]:
    requests = {k: v for k, v in (("cpu", cpu), ("memory", memory)) if v is not None}
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "uid": f"uid-{name}", "labels": labels or {}}
    if owner:
        meta["ownerReferences"] = [{"kind": "ReplicaSet", "name": owner, "uid": owner, "controller": True}]
    return {"metadata": meta, "spec": {"containers": [{"name": "c", "resources": {"requests": requests}}], **spec}}


def cluster(*nodes: dict, pods: dict[str, list[dict]] | None = None) -> SchedulerCache:
    cache = SchedulerCache()
    for n in nodes:
        cache.set_node(n)
    for node_name, placed in (pods or {}).items():
        for p in placed:
            p["spec"]["nodeName"] = node_name
            cache.set_pod(PodInfo(p))
    return cache


# --- resources ---------------------------------------------------------------------------------


def test_least_allocated_prefers_free_nodes() -> None:
    empty = node_info(node(cpu="4", memory="8Gi"))
    busy = node_info(node(cpu="4", memory="8Gi"), [pod("a", cpu="3", memory="6Gi")])
    p = PodInfo(pod(cpu="1", memory="2Gi"))
    assert least_allocated(p, empty) == 75  # (3/4 cpu free + 6/8 memory free) / 2
    assert least_allocated(p, busy) == 0
    # containers without requests count 100m / 200Mi, so best-effort pods spread too
    assert least_allocated(PodInfo(pod()), empty) < 100


def test_balanced_allocation_prefers_even_use() -> None:
    n = node_info(node(cpu="4", memory="8Gi"))
    assert balanced_allocation(PodInfo(pod(cpu="2", memory="4Gi")), n) == 100
    lopsided = balanced_allocation(PodInfo(pod(cpu="4", memory="0")), n)
    assert lopsided == 50  # cpu fully used, memory not at all: std deviation 0.5


def test_node_affinity_preference_and_normalization() -> None:
    preferred = {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
        {"weight": 80, "preference": {"matchExpressions": [{"key": "disk", "operator": "In", "values": ["ssd"]}]}},
        {"weight": 20, "preference": {"matchExpressions": [{"key": "zone", "operator": "Exists"}]}},
    ]}}
    p = PodInfo(pod(affinity=preferred))
    nodes = [node_info(node("a", labels={"disk": "ssd", "zone": "z"})), node_info(node("b", labels={"disk": "ssd"})),
             node_info(node("c"))]
    raw = [node_affinity_raw(p, n) for n in nodes]
    assert raw == [100, 80, 0]
    assert normalize([40, 20, 0]) == [100, 50, 0]
    assert normalize([0, 0]) == [0, 0]


def test_prefer_no_schedule_taints_score_lower() -> None:
    soft = [{"key": "spot", "value": "true", "effect": "PreferNoSchedule"}]
    tainted, clean = node_info(node("t", taints=soft)), node_info(node("c"))
    p = PodInfo(pod())
    raw = [taint_toleration_raw(p, tainted), taint_toleration_raw(p, clean)]
    assert raw == [1, 0]
    assert normalize(raw, reverse=True) == [0, 100]
    tolerant = PodInfo(pod(tolerations=[{"key": "spot", "operator": "Exists", "effect": "PreferNoSchedule"}]))
    assert taint_toleration_raw(tolerant, tainted) == 0
    assert normalize([0, 0], reverse=True) == [100, 100]


# --- spreading -----------------------------------------------------------------------------------


def test_default_spreading_of_one_owners_replicas() -> None:
    cache = cluster(node("a"), node("b"), node("c"),
                    pods={"a": [pod("r0", owner="rs1"), pod("r1", owner="rs1")], "b": [pod("r2", owner="rs1")],
                          "c": [pod("x", owner="other")]})
    scores = spread.score(PodInfo(pod("r3", owner="rs1")), cache.node_list(), cache)
    assert scores[2] == 100 and scores[0] < scores[1] < scores[2]
    assert spread.score(PodInfo(pod("lonely")), cache.node_list(), cache) is None


def test_default_spreading_counts_zones() -> None:
    cache = cluster(node("a1", labels={"topology.kubernetes.io/zone": "a"}),
                    node("a2", labels={"topology.kubernetes.io/zone": "a"}),
                    node("b1", labels={"topology.kubernetes.io/zone": "b"}),
                    pods={"a1": [pod("r0", owner="rs")]})
    scores = spread.score(PodInfo(pod("r1", owner="rs")), cache.node_list(), cache)
    by_name = dict(zip([n.name for n in cache.node_list()], scores, strict=True))
    # a2 is an empty host but shares zone a with the replica: the other zone wins
    assert by_name["b1"] > by_name["a2"] > by_name["a1"]


def test_schedule_anyway_constraint_scores_by_its_selector() -> None:
    cache = cluster(node("a", labels={"zone": "z1"}), node("b", labels={"zone": "z2"}), node("c"),
                    pods={"a": [pod("w0", labels={"app": "web"})]})
    p = PodInfo(pod("w1", labels={"app": "web"}, topologySpreadConstraints=[
        {"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "ScheduleAnyway",
         "labelSelector": {"matchLabels": {"app": "web"}}}]))
    scores = dict(zip("abc", spread.score(p, cache.node_list(), cache), strict=True))
    assert scores["b"] == 100 and scores["a"] < 100
    assert scores["c"] == 0  # lacks the key: ignored by the constraint


# --- inter-pod affinity preferences ----------------------------------------------------------------


def weighted(kind: str, weight: int, labels: dict, key: str = "kubernetes.io/hostname") -> dict:
    return {kind: {"preferredDuringSchedulingIgnoredDuringExecution": [
        {"weight": weight, "podAffinityTerm": {"labelSelector": {"matchLabels": labels}, "topologyKey": key}}]}}


def test_preferred_pod_affinity_and_anti_affinity() -> None:
    cache = cluster(node("a"), node("b"), node("c"),
                    pods={"a": [pod("cache", labels={"app": "cache"})], "b": [pod("noisy", labels={"app": "noisy"})]})
    near_cache = PodInfo(pod("web", affinity=weighted("podAffinity", 50, {"app": "cache"})))
    scores = interpod.score(cache.node_list(), interpod.prescore(near_cache, cache))
    assert scores == [100, 0, 0]
    away = PodInfo(pod("web", affinity=weighted("podAntiAffinity", 50, {"app": "noisy"})))
    assert interpod.score(cache.node_list(), interpod.prescore(away, cache)) == [100, 0, 100]
    assert interpod.prescore(PodInfo(pod("plain")), cache) is None


def test_existing_pods_preferences_attract_the_incoming_pod() -> None:
    fan = pod("fan", affinity=weighted("podAffinity", 30, {"app": "star"}))
    cache = cluster(node("a"), node("b"), pods={"b": [fan]})
    scores = interpod.score(cache.node_list(), interpod.prescore(PodInfo(pod("s", labels={"app": "star"})), cache))
    assert scores == [0, 100]


# --- picking ---------------------------------------------------------------------------------------


def test_best_node_wins_and_ties_are_broken_at_random() -> None:
    cache = cluster(node("a"), node("b"), node("c"), pods={"a": [pod("busy", cpu="3")]})
    choices = Counter()
    algorithm = Algorithm(cache, random.Random(7))
    for i in range(60):
        choices[algorithm.schedule(PodInfo(pod(f"p{i}"))).node] += 1
    assert choices["a"] == 0
    assert choices["b"] > 10 and choices["c"] > 10


def test_scores_add_up_with_kube_weights() -> None:
    cache = cluster(node("a", labels={"disk": "ssd"}), node("b"))
    preferred = {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
        {"weight": 1, "preference": {"matchExpressions": [{"key": "disk", "operator": "Exists"}]}}]}}
    decision = Algorithm(cache).schedule(PodInfo(pod(affinity=preferred)))
    assert decision.node == "a"
    assert decision.scores["a"] - decision.scores["b"] == 200  # NodeAffinity weight 2 x 100


def test_feasible_nodes_to_find() -> None:
    assert feasible_nodes_to_find(50) == 50
    assert feasible_nodes_to_find(100) == 100
    assert feasible_nodes_to_find(1000) == 420  # 42% of 1000
    assert feasible_nodes_to_find(5000) == 500  # 10%
    assert feasible_nodes_to_find(100_000) == 5000  # never below 5%


def test_large_clusters_stop_early_and_rotate() -> None:
    cache = cluster(*(node(f"n{i:04d}") for i in range(1000)))
    algorithm = Algorithm(cache)
    algorithm.schedule(PodInfo(pod("a")))
    assert cache.next_start == 420
    algorithm.schedule(PodInfo(pod("b")))
    assert cache.next_start == 840
