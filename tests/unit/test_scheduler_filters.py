"""Each filter of the scheduler on plain pod and node dicts."""

from __future__ import annotations

from typing import Any

from k3p_plugins.scheduler import interpod, spread
from k3p_plugins.scheduler.cache import SchedulerCache
from k3p_plugins.scheduler.filters import (
    node_affinity,
    node_name,
    node_ports,
    node_unschedulable,
    resources_fit,
    run_node_filters,
    taint_toleration,
)
from k3p_plugins.scheduler.model import NodeInfo, PodInfo, node_info


def node(name: str = "n1", cpu: str = "4", memory: str = "8Gi", pods: str = "110", labels: dict | None = None,
         taints: list | None = None, ready: str | None = "True", unschedulable: bool = False,
         extra: dict | None = None) -> dict[str, Any]:
    conditions = [] if ready is None else [{"type": "Ready", "status": ready}]
    spec: dict[str, Any] = {"taints": taints or []}
    if unschedulable:
        spec["unschedulable"] = True
    return {"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, **(labels or {})}},
            "spec": spec,
            "status": {"allocatable": {"cpu": cpu, "memory": memory, "pods": pods, **(extra or {})},
                       "conditions": conditions}}


def pod(name: str = "p", namespace: str = "default", cpu: str | None = None, memory: str | None = None,
        labels: dict | None = None, ports: list | None = None, node_name: str = "", **spec: Any) -> dict[str, Any]:
    requests = {k: v for k, v in (("cpu", cpu), ("memory", memory)) if v is not None}
    requests.update(spec.pop("requests", {}))
    container: dict[str, Any] = {"name": "c", "image": "i", "resources": {"requests": requests}}
    if ports:
        container["ports"] = ports
    body = {"metadata": {"name": name, "namespace": namespace, "uid": f"uid-{name}", "labels": labels or {}},
            "spec": {"containers": [container], **spec}}
    if node_name:
        body["spec"]["nodeName"] = node_name
    return body


def info(p: dict) -> PodInfo:
    return PodInfo(p)


# --- NodeUnschedulable, NodeName ---------------------------------------------------------------


def test_cordoned_node_rejects_unless_tolerated() -> None:
    cordoned = node_info(node(unschedulable=True))
    status = node_unschedulable(info(pod()), cordoned)
    assert status is not None and status.reasons == ("node(s) were unschedulable",) and status.unresolvable
    tolerant = pod(tolerations=[{"key": "node.kubernetes.io/unschedulable", "operator": "Exists",
                                 "effect": "NoSchedule"}])
    assert node_unschedulable(info(tolerant), cordoned) is None
    assert node_unschedulable(info(pod()), node_info(node())) is None


def test_node_name() -> None:
    assert node_name(info(pod(node_name="n1")), node_info(node("n1"))) is None
    status = node_name(info(pod(node_name="n2")), node_info(node("n1")))
    assert status is not None and status.reasons == ("node(s) didn't match the requested node name",)


# --- TaintToleration -------------------------------------------------------------------------------


CONTROL_PLANE = {"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}


def test_untolerated_taint_names_the_first_one() -> None:
    n = node_info(node(taints=[{"key": "soft", "value": "x", "effect": "PreferNoSchedule"}, CONTROL_PLANE,
                               {"key": "gpu", "value": "true", "effect": "NoExecute"}]))
    status = taint_toleration(info(pod()), n)
    assert status is not None
    assert status.reasons == ("node(s) had untolerated taint {node-role.kubernetes.io/control-plane: }",)
    assert status.unresolvable


def test_tolerations_operators() -> None:
    n = node_info(node(taints=[{"key": "gpu", "value": "true", "effect": "NoSchedule"}]))
    cases = {
        "equal": ([{"key": "gpu", "operator": "Equal", "value": "true", "effect": "NoSchedule"}], True),
        "default operator is Equal": ([{"key": "gpu", "value": "true"}], True),
        "wrong value": ([{"key": "gpu", "value": "false", "effect": "NoSchedule"}], False),
        "exists": ([{"key": "gpu", "operator": "Exists"}], True),
        "wrong effect": ([{"key": "gpu", "operator": "Exists", "effect": "NoExecute"}], False),
        "empty key with Exists tolerates everything": ([{"operator": "Exists"}], True),
        "other key": ([{"key": "disk", "operator": "Exists"}], False),
    }
    for what, (tolerations, ok) in cases.items():
        status = taint_toleration(info(pod(tolerations=tolerations)), n)
        assert (status is None) == ok, what
    no_execute = node_info(node(taints=[{"key": "gpu", "value": "true", "effect": "NoExecute"}]))
    assert taint_toleration(info(pod()), no_execute) is not None


def test_prefer_no_schedule_does_not_filter() -> None:
    n = node_info(node(taints=[{"key": "soft", "effect": "PreferNoSchedule"}]))
    assert taint_toleration(info(pod()), n) is None


def test_not_ready_and_unreachable_nodes_are_tainted() -> None:
    not_ready = node_info(node(ready="False"))
    unknown = node_info(node(ready="Unknown"))
    no_condition = node_info(node(ready=None))
    p = info(pod())
    assert taint_toleration(p, not_ready).reasons == ("node(s) had untolerated taint {node.kubernetes.io/not-ready: }",)
    assert taint_toleration(p, unknown).reasons == (
        "node(s) had untolerated taint {node.kubernetes.io/unreachable: }",)
    assert taint_toleration(p, no_condition) is not None
    # The NoExecute tolerations every pod gets by default do not cover the NoSchedule taint.
    defaulted = info(pod(tolerations=[{"key": "node.kubernetes.io/not-ready", "operator": "Exists",
                                       "effect": "NoExecute", "tolerationSeconds": 300}]))
    assert taint_toleration(defaulted, not_ready) is not None
    daemon = info(pod(tolerations=[{"key": "node.kubernetes.io/not-ready", "operator": "Exists"}]))
    assert taint_toleration(daemon, not_ready) is None
    # A taint the lifecycle controller already set is not doubled.
    tainted = node_info(node(ready="False", taints=[{"key": "node.kubernetes.io/not-ready", "effect": "NoSchedule"}]))
    assert len(tainted.taints) == 1


# --- NodeAffinity ----------------------------------------------------------------------------------


def required(*terms: dict) -> dict:
    return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": list(terms)}}}


def expr(key: str, op: str, *values: str) -> dict:
    return {"key": key, "operator": op, **({"values": list(values)} if values else {})}


def test_node_selector() -> None:
    n = node_info(node(labels={"disk": "ssd", "zone": "a"}))
    assert node_affinity(info(pod(nodeSelector={"disk": "ssd"})), n) is None
    status = node_affinity(info(pod(nodeSelector={"disk": "ssd", "zone": "b"})), n)
    assert status is not None and status.reasons == ("node(s) didn't match Pod's node affinity/selector",)
    assert status.unresolvable


def test_required_node_affinity_operators() -> None:
    n = node_info(node("worker-1", labels={"disk": "ssd", "cores": "16"}))

    def fits(*terms: dict) -> bool:
        return node_affinity(info(pod(affinity=required(*terms))), n) is None

    assert fits({"matchExpressions": [expr("disk", "In", "ssd", "nvme")]})
    assert not fits({"matchExpressions": [expr("disk", "NotIn", "ssd")]})
    assert fits({"matchExpressions": [expr("gpu", "NotIn", "yes")]})
    assert fits({"matchExpressions": [expr("disk", "Exists")]})
    assert not fits({"matchExpressions": [expr("gpu", "Exists")]})
    assert fits({"matchExpressions": [expr("gpu", "DoesNotExist")]})
    assert fits({"matchExpressions": [expr("cores", "Gt", "8")]})
    assert not fits({"matchExpressions": [expr("cores", "Lt", "8")]})
    assert not fits({"matchExpressions": [expr("cores", "Gt", "16")]})
    # expressions within a term are ANDed, terms are ORed
    assert not fits({"matchExpressions": [expr("disk", "In", "ssd"), expr("gpu", "Exists")]})
    assert fits({"matchExpressions": [expr("gpu", "Exists")]}, {"matchExpressions": [expr("disk", "In", "ssd")]})
    # fields: metadata.name
    assert fits({"matchFields": [expr("metadata.name", "In", "worker-1")]})
    assert not fits({"matchFields": [expr("metadata.name", "In", "worker-2")]})
    assert fits({"matchFields": [expr("metadata.name", "NotIn", "worker-2")]})
    # an empty term matches nothing; an invalid one neither
    assert not fits({})
    assert not fits({"matchExpressions": [expr("cores", "Gt", "many")]})


def test_node_selector_and_affinity_must_both_hold() -> None:
    n = node_info(node(labels={"disk": "ssd"}))
    p = pod(nodeSelector={"disk": "hdd"}, affinity=required({"matchExpressions": [expr("disk", "Exists")]}))
    assert node_affinity(info(p), n) is not None


# --- NodePorts -------------------------------------------------------------------------------------


def port(host_port: int, host_ip: str = "", protocol: str = "TCP") -> dict:
    p: dict[str, Any] = {"containerPort": 80, "hostPort": host_port, "protocol": protocol}
    if host_ip:
        p["hostIP"] = host_ip
    return p


def test_host_port_conflicts() -> None:
    busy = node_info(node(), [pod("a", ports=[port(8080)]), pod("b", ports=[port(9090, "10.0.0.1")])])

    def fits(*ports: dict) -> bool:
        return node_ports(info(pod("new", ports=list(ports))), busy) is None

    assert not fits(port(8080))
    assert not fits(port(8080, "10.0.0.2"))  # 0.0.0.0 on the node covers every address
    assert fits(port(8080, protocol="UDP"))
    assert not fits(port(9090))  # 0.0.0.0 wanted covers the taken 10.0.0.1
    assert not fits(port(9090, "10.0.0.1"))
    assert fits(port(9090, "10.0.0.2"))
    assert fits(port(7070))
    assert fits({"containerPort": 8080})  # no hostPort: nothing to take
    status = node_ports(info(pod("new", ports=[port(8080)])), busy)
    assert status is not None and status.reasons == ("node(s) didn't have free ports for the requested pod ports",)
    assert not status.unresolvable


def test_ports_are_released_with_the_pod() -> None:
    holder = pod("a", ports=[port(8080)])
    n = node_info(node(), [holder])
    n.remove_pod(PodInfo(holder))
    assert node_ports(info(pod("new", ports=[port(8080)])), n) is None


# --- NodeResourcesFit ------------------------------------------------------------------------------


def test_resources_fit_and_insufficient_reasons() -> None:
    n = node_info(node(cpu="2", memory="4Gi", pods="3"), [pod("a", cpu="1500m", memory="1Gi")])
    assert resources_fit(info(pod(cpu="500m", memory="3Gi")), n) is None
    status = resources_fit(info(pod(cpu="600m")), n)
    assert status is not None and status.reasons == ("Insufficient cpu",) and not status.unresolvable
    status = resources_fit(info(pod(cpu="1", memory="8Gi")), n)
    assert status.reasons == ("Insufficient cpu", "Insufficient memory")
    storage = resources_fit(info(pod(requests={"ephemeral-storage": "1Gi"})), n)
    assert storage.reasons == ("Insufficient ephemeral-storage",)


def test_too_many_pods_counts_even_without_requests() -> None:
    n = node_info(node(pods="2"), [pod("a"), pod("b")])
    status = resources_fit(info(pod()), n)
    assert status is not None and status.reasons == ("Too many pods",)
    full = node_info(node(cpu="1", pods="1"), [pod("a", cpu="1")])
    assert resources_fit(info(pod(cpu="1")), full).reasons == ("Too many pods", "Insufficient cpu")


def test_extended_resources() -> None:
    gpu_node = node_info(node(extra={"nvidia.com/gpu": "1"}))
    assert resources_fit(info(pod(requests={"nvidia.com/gpu": "1"})), gpu_node) is None
    assert resources_fit(info(pod(requests={"nvidia.com/gpu": "2"})), gpu_node).reasons == (
        "Insufficient nvidia.com/gpu",)
    assert resources_fit(info(pod(requests={"nvidia.com/gpu": "1"})), node_info(node())).reasons == (
        "Insufficient nvidia.com/gpu",)


def test_first_failing_filter_wins_in_kube_order() -> None:
    n = node_info(node(cpu="1", unschedulable=True, taints=[CONTROL_PLANE]))
    status = run_node_filters(info(pod(cpu="2")), n)
    assert status.plugin == "NodeUnschedulable"
    n = node_info(node(cpu="1", taints=[CONTROL_PLANE]))
    assert run_node_filters(info(pod(cpu="2")), n).plugin == "TaintToleration"


# --- InterPodAffinity ------------------------------------------------------------------------------


def cluster(*nodes: tuple[dict, list[dict]]) -> SchedulerCache:
    cache = SchedulerCache()
    for n, pods in nodes:
        cache.set_node(n)
        for p in pods:
            p["spec"]["nodeName"] = n["metadata"]["name"]
            cache.set_pod(PodInfo(p))
    return cache


def affinity_term(labels: dict, key: str = "kubernetes.io/hostname", **extra: Any) -> dict:
    return {"labelSelector": {"matchLabels": labels}, "topologyKey": key, **extra}


def pod_affinity(kind: str, *terms: dict) -> dict:
    return {kind: {"requiredDuringSchedulingIgnoredDuringExecution": list(terms)}}


def feasible(p: dict, cache: SchedulerCache) -> dict[str, str | None]:
    pi = PodInfo(p)
    state = interpod.prefilter(pi, cache)
    out = {}
    for n in cache.node_list():
        status = interpod.filter_node(pi, n, state)
        out[n.name] = status.reasons[0] if status else None
    return out


def test_required_pod_affinity_by_hostname_and_zone() -> None:
    cache = cluster(
        (node("a", labels={"zone": "z1"}), [pod("db", labels={"app": "db"})]),
        (node("b", labels={"zone": "z1"}), []),
        (node("c", labels={"zone": "z2"}), []),
    )
    by_host = pod("web", affinity=pod_affinity("podAffinity", affinity_term({"app": "db"})))
    assert feasible(by_host, cache) == {"a": None, "b": "node(s) didn't match pod affinity rules",
                                        "c": "node(s) didn't match pod affinity rules"}
    by_zone = pod("web", affinity=pod_affinity("podAffinity", affinity_term({"app": "db"}, "zone")))
    assert feasible(by_zone, cache) == {"a": None, "b": None, "c": "node(s) didn't match pod affinity rules"}


def test_first_pod_of_a_self_affine_group_may_go_anywhere_with_the_key() -> None:
    cache = cluster((node("a", labels={"zone": "z1"}), []), (node("b"), []))
    first = pod("web-0", labels={"app": "web"},
                affinity=pod_affinity("podAffinity", affinity_term({"app": "web"}, "zone")))
    assert feasible(first, cache) == {"a": None, "b": "node(s) didn't match pod affinity rules"}
    stranger = pod("x", affinity=pod_affinity("podAffinity", affinity_term({"app": "web"}, "zone")))
    assert feasible(stranger, cache)["a"] == "node(s) didn't match pod affinity rules"


def test_required_anti_affinity_both_ways() -> None:
    cache = cluster(
        (node("a", labels={"zone": "z1"}), [pod("web-0", labels={"app": "web"})]),
        (node("b", labels={"zone": "z1"}), []),
        (node("c", labels={"zone": "z2"}), []),
    )
    spread_out = pod("web-1", labels={"app": "web"},
                     affinity=pod_affinity("podAntiAffinity", affinity_term({"app": "web"}, "zone")))
    result = feasible(spread_out, cache)
    assert result == {"a": "node(s) didn't match pod anti-affinity rules",
                      "b": "node(s) didn't match pod anti-affinity rules", "c": None}
    loner = pod("loner", labels={"app": "loner"},
                affinity=pod_affinity("podAntiAffinity", affinity_term({"app": "web"})))
    cache2 = cluster((node("a"), [pod("exclusive", labels={"role": "x"}, affinity=pod_affinity(
        "podAntiAffinity", affinity_term({"app": "loner"})))]), (node("b"), []))
    assert feasible(loner, cache2) == {"a": "node(s) didn't satisfy existing pods anti-affinity rules", "b": None}
    assert feasible(pod("other", labels={"app": "other"}), cache2) == {"a": None, "b": None}


def test_affinity_namespaces() -> None:
    cache = cluster((node("a"), [pod("db", namespace="data", labels={"app": "db"})]), (node("b"), []))
    cache.set_namespace({"metadata": {"name": "data", "labels": {"team": "storage"}}})
    same_ns = pod("web", affinity=pod_affinity("podAffinity", affinity_term({"app": "db"})))
    assert feasible(same_ns, cache)["a"] is not None  # the term looks in the pod's own namespace
    listed = pod("web", affinity=pod_affinity("podAffinity", affinity_term({"app": "db"}, namespaces=["data"])))
    assert feasible(listed, cache) == {"a": None, "b": "node(s) didn't match pod affinity rules"}
    by_selector = pod("web", affinity=pod_affinity("podAffinity", affinity_term(
        {"app": "db"}, namespaceSelector={"matchLabels": {"team": "storage"}})))
    assert feasible(by_selector, cache)["a"] is None
    all_ns = pod("web", affinity=pod_affinity("podAffinity", affinity_term({"app": "db"}, namespaceSelector={})))
    assert feasible(all_ns, cache)["a"] is None


# --- PodTopologySpread (DoNotSchedule) -----------------------------------------------------------


def spread_constraint(key: str, skew: int = 1, labels: dict | None = None, when: str = "DoNotSchedule",
                      **extra: Any) -> dict:
    return {"maxSkew": skew, "topologyKey": key, "whenUnsatisfiable": when,
            "labelSelector": {"matchLabels": labels or {"app": "web"}}, **extra}


def spread_feasible(p: dict, cache: SchedulerCache) -> dict[str, str | None]:
    pi = PodInfo(p)
    state = spread.prefilter(pi, cache)
    out = {}
    for n in cache.node_list():
        status = spread.filter_node(pi, n, state)
        out[n.name] = status.reasons[0] if status else None
    return out


def test_do_not_schedule_spread() -> None:
    web = {"app": "web"}
    cache = cluster(
        (node("a", labels={"zone": "z1"}), [pod("w0", labels=web), pod("w1", labels=web)]),
        (node("b", labels={"zone": "z2"}), [pod("w2", labels=web)]),
        (node("c", labels={"zone": "z3"}), []),
        (node("x"), []),
    )
    new = pod("w3", labels=web, topologySpreadConstraints=[spread_constraint("zone")])
    assert spread_feasible(new, cache) == {
        "a": "node(s) didn't match pod topology spread constraints",
        "b": "node(s) didn't match pod topology spread constraints",
        "c": None,
        "x": "node(s) didn't match pod topology spread constraints (missing required label)",
    }
    loose = pod("w3", labels=web, topologySpreadConstraints=[spread_constraint("zone", skew=2)])
    assert spread_feasible(loose, cache) == {
        "a": "node(s) didn't match pod topology spread constraints", "b": None, "c": None,
        "x": "node(s) didn't match pod topology spread constraints (missing required label)"}
    other_ns = pod("w3", namespace="elsewhere", labels=web, topologySpreadConstraints=[spread_constraint("zone")])
    assert spread_feasible(other_ns, cache)["a"] is None  # only the pod's namespace counts


def test_min_domains_makes_the_minimum_zero() -> None:
    web = {"app": "web"}
    cache = cluster((node("a", labels={"zone": "z1"}), [pod("w0", labels=web)]),
                    (node("b", labels={"zone": "z2"}), [pod("w1", labels=web)]))
    p = pod("w2", labels=web, topologySpreadConstraints=[spread_constraint("zone", minDomains=3)])
    assert set(spread_feasible(p, cache).values()) == {"node(s) didn't match pod topology spread constraints"}
    without = pod("w2", labels=web, topologySpreadConstraints=[spread_constraint("zone")])
    assert set(spread_feasible(without, cache).values()) == {None}


def test_assumed_pods_count_at_once() -> None:
    cache = cluster((node("a"), []))
    n = cache.nodes["a"]
    p = PodInfo(pod("x", cpu="3"))
    cache.assume(p, "a")
    assert resources_fit(info(pod("y", cpu="2")), n).reasons == ("Insufficient cpu",)
    cache.forget(p.key)
    assert resources_fit(info(pod("y", cpu="2")), n) is None
    assert isinstance(n, NodeInfo)
