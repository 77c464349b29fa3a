"""What the scheduler knows about a pod or a node, worked out once per object version.

A :class:`PodInfo` holds a pod's requests, ports, tolerations and compiled affinity terms;
a :class:`NodeInfo` holds a node's allocatable resources, taints and labels plus the sum
of what the pods assigned to it (or assumed onto it) request. Filters and scores read
these instead of walking the raw JSON for every node of every decision.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from k3p.quantity import QuantityError, milli_value, value
from k3p.selectors import LabelRequirement, LabelSelector, SelectorError, label_selector_from_dict

Obj = dict[str, Any]

HOSTNAME_LABEL = "kubernetes.io/hostname"
ZONE_LABEL = "topology.kubernetes.io/zone"
TAINT_NOT_READY = "node.kubernetes.io/not-ready"
TAINT_UNREACHABLE = "node.kubernetes.io/unreachable"
TAINT_UNSCHEDULABLE = "node.kubernetes.io/unschedulable"

#: what a container without a cpu / memory request counts as when spreading load (kube's values)
DEFAULT_MILLI_CPU_REQUEST = 100
DEFAULT_MEMORY_REQUEST = 200 * 1024 * 1024

_NATIVE = ("cpu", "memory", "ephemeral-storage", "pods")


def _is_scalar(name: str) -> bool:
    # extended resources (example.com/gpu), hugepages and attachable volumes; "storage" is not one
    return "/" in name or name.startswith(("hugepages-", "attachable-volumes-"))


class Resources:
    """A resource vector in the scheduler's integer units: millicores, bytes, counts."""

    __slots__ = ("ephemeral_storage", "memory", "milli_cpu", "pods", "scalars")

    def __init__(self, milli_cpu: int = 0, memory: int = 0, ephemeral_storage: int = 0, pods: int = 0,
                 scalars: dict[str, int] | None = None) -> None:
        self.milli_cpu = milli_cpu
        self.memory = memory
        self.ephemeral_storage = ephemeral_storage
        self.pods = pods
        self.scalars: dict[str, int] = scalars or {}

    @classmethod
    def from_list(cls, resource_list: Mapping[str, Any] | None) -> Resources:
        """A ResourceList (``{"cpu": "500m", "memory": "1Gi"}``); unparsable quantities count as 0."""
        r = cls()
        for name, quantity in (resource_list or {}).items():
            try:
                if name == "cpu":
                    r.milli_cpu += milli_value(quantity)
                elif name == "memory":
                    r.memory += value(quantity)
                elif name == "ephemeral-storage":
                    r.ephemeral_storage += value(quantity)
                elif name == "pods":
                    r.pods += value(quantity)
                elif _is_scalar(name):
                    r.scalars[name] = r.scalars.get(name, 0) + value(quantity)
            except QuantityError:
                continue
        return r

    def copy(self) -> Resources:
        return Resources(self.milli_cpu, self.memory, self.ephemeral_storage, self.pods, dict(self.scalars))

    def add(self, other: Resources, sign: int = 1) -> None:
        self.milli_cpu += sign * other.milli_cpu
        self.memory += sign * other.memory
        self.ephemeral_storage += sign * other.ephemeral_storage
        self.pods += sign * other.pods
        for name, amount in other.scalars.items():
            self.scalars[name] = self.scalars.get(name, 0) + sign * amount

    def raise_to(self, other: Resources) -> None:
        """Each resource becomes the larger of the two (how init containers count)."""
        self.milli_cpu = max(self.milli_cpu, other.milli_cpu)
        self.memory = max(self.memory, other.memory)
        self.ephemeral_storage = max(self.ephemeral_storage, other.ephemeral_storage)
        self.pods = max(self.pods, other.pods)
        for name, amount in other.scalars.items():
            self.scalars[name] = max(self.scalars.get(name, 0), amount)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Resources):
            return NotImplemented
        return (self.milli_cpu, self.memory, self.ephemeral_storage, self.pods,
                {k: v for k, v in self.scalars.items() if v}) == (
            other.milli_cpu, other.memory, other.ephemeral_storage, other.pods,
            {k: v for k, v in other.scalars.items() if v})

    def __repr__(self) -> str:
        return (f"Resources(milli_cpu={self.milli_cpu}, memory={self.memory}, "
                f"ephemeral_storage={self.ephemeral_storage}, pods={self.pods}, scalars={self.scalars})")


def _container_requests(container: Mapping[str, Any]) -> Mapping[str, Any]:
    resources = container.get("resources") or {}
    requests = resources.get("requests") or {}
    limits = resources.get("limits") or {}
    if not limits:
        return requests
    # The API defaults a missing request to its limit; do the same for objects stored without it.
    return {**limits, **requests}


def pod_requests(spec: Mapping[str, Any], non_zero: bool = False) -> Resources:
    """What a pod asks of its node: kube's PodRequests.

    Regular containers add up; sidecars (init containers with ``restartPolicy: Always``) run
    beside them and add too; a plain init container runs alone (beside the sidecars started
    before it), so the pod needs the larger of the two phases; ``spec.overhead`` comes on top.
    With ``non_zero`` a container that names no cpu / memory request counts the defaults.
    """

    def of(container: Mapping[str, Any]) -> Resources:
        raw = _container_requests(container)
        r = Resources.from_list(raw)
        if non_zero:
            if "cpu" not in raw:
                r.milli_cpu = DEFAULT_MILLI_CPU_REQUEST
            if "memory" not in raw:
                r.memory = DEFAULT_MEMORY_REQUEST
        return r

    total = Resources()
    for c in spec.get("containers") or ():
        total.add(of(c))
    sidecars = Resources()
    init_peak = Resources()
    for c in spec.get("initContainers") or ():
        req = of(c)
        if c.get("restartPolicy") == "Always":
            total.add(req)
            sidecars.add(req)
            init_peak.raise_to(sidecars)
        else:
            phase = req.copy()
            phase.add(sidecars)
            init_peak.raise_to(phase)
    total.raise_to(init_peak)
    if spec.get("overhead"):
        total.add(Resources.from_list(spec["overhead"]))
    return total


# --- node selectors ------------------------------------------------------------------------

_NODE_SELECTOR_OPERATORS = {"In": "in", "NotIn": "notin", "Exists": "exists", "DoesNotExist": "!", "Gt": "gt",
                            "Lt": "lt"}


class NodeSelectorTerm:
    """One ``nodeSelectorTerms`` entry: its label expressions and field expressions, ANDed."""

    __slots__ = ("fields", "labels", "valid")

    def __init__(self, term: Mapping[str, Any] | None) -> None:
        term = term or {}
        self.labels: tuple[LabelRequirement, ...] = ()
        self.fields: tuple[tuple[str, frozenset[str]], ...] = ()
        self.valid = True
        try:
            labels = []
            for expr in term.get("matchExpressions") or ():
                op = _NODE_SELECTOR_OPERATORS.get(expr.get("operator", ""))
                if op is None:
                    raise SelectorError(f"{expr.get('operator')!r} is not a valid node selector operator")
                labels.append(LabelRequirement.new(expr.get("key", ""), op, list(expr.get("values") or ())))
            fields = []
            for expr in term.get("matchFields") or ():
                if expr.get("key") != "metadata.name" or expr.get("operator") not in ("In", "NotIn"):
                    raise SelectorError(f"unsupported node field requirement {expr!r}")
                fields.append((expr["operator"], frozenset(expr.get("values") or ())))
            self.labels, self.fields = tuple(labels), tuple(fields)
        except SelectorError:
            self.valid = False
        # A term that requires nothing matches no node (kube: "an empty term matches no objects").
        if not self.labels and not self.fields:
            self.valid = False

    def matches(self, labels: Mapping[str, str], name: str) -> bool:
        if not self.valid:
            return False
        for req in self.labels:
            if not req.matches(labels):
                return False
        for op, values in self.fields:
            if (name in values) != (op == "In"):
                return False
        return True

    def pinned_names(self) -> frozenset[str] | None:
        """The node names a ``metadata.name In`` field requirement pins this term to, if any."""
        for op, values in self.fields:
            if op == "In":
                return values
        return None


class NodeSelector:
    """``requiredDuringSchedulingIgnoredDuringExecution`` of a node affinity: terms ORed."""

    __slots__ = ("terms",)

    def __init__(self, selector: Mapping[str, Any]) -> None:
        self.terms = tuple(NodeSelectorTerm(t) for t in selector.get("nodeSelectorTerms") or ())

    def matches(self, labels: Mapping[str, str], name: str) -> bool:
        return any(t.matches(labels, name) for t in self.terms)

    def pinned_names(self) -> frozenset[str] | None:
        """Node names the selector can only match (every term pins names), else None."""
        names: set[str] = set()
        for term in self.terms:
            pinned = term.pinned_names()
            if pinned is None:
                return None
            names |= pinned
        return frozenset(names)


# --- taints and tolerations ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Taint:
    key: str
    value: str
    effect: str


@dataclass(frozen=True, slots=True)
class Toleration:
    key: str
    operator: str
    value: str
    effect: str

    @classmethod
    def from_dict(cls, t: Mapping[str, Any]) -> Toleration:
        return cls(t.get("key") or "", t.get("operator") or "Equal", str(t.get("value") or ""), t.get("effect") or "")

    def tolerates(self, taint: Taint) -> bool:
        """kube's ToleratesTaint: an empty effect or key is a wildcard; Exists ignores the value."""
        if self.effect and self.effect != taint.effect:
            return False
        if self.key and self.key != taint.key:
            return False
        if self.operator == "Exists":
            return True
        return self.operator == "Equal" and self.value == taint.value


def tolerated(tolerations: tuple[Toleration, ...], taint: Taint) -> bool:
    return any(t.tolerates(taint) for t in tolerations)


# --- inter-pod affinity ------------------------------------------------------------------------

NamespaceLabels = Callable[[str], Mapping[str, str] | None]


class AffinityTerm:
    """A pod (anti-)affinity term with its namespaces worked out for the pod that owns it."""

    __slots__ = ("namespace_selector", "namespaces", "selector", "topology_key")

    def __init__(self, term: Mapping[str, Any], owner_namespace: str, owner_labels: Mapping[str, str]) -> None:
        self.topology_key: str = term.get("topologyKey") or ""
        selector_dict = term.get("labelSelector")
        try:
            selector = label_selector_from_dict(selector_dict)
            extra = []
            for key in term.get("matchLabelKeys") or ():
                if key in owner_labels:
                    extra.append(LabelRequirement.new(key, "in", [owner_labels[key]]))
            for key in term.get("mismatchLabelKeys") or ():
                if key in owner_labels:
                    extra.append(LabelRequirement.new(key, "notin", [owner_labels[key]]))
            if extra and not selector.nothing:
                selector = LabelSelector(tuple(sorted((*selector.requirements, *extra), key=lambda r: r.key)))
        except SelectorError:
            selector = LabelSelector.match_nothing()
        self.selector = selector
        names = frozenset(term.get("namespaces") or ())
        ns_selector = term.get("namespaceSelector")
        self.namespace_selector: LabelSelector | None = None
        self.namespaces: frozenset[str] | None = names
        if ns_selector is not None:
            try:
                parsed = label_selector_from_dict(ns_selector)
            except SelectorError:
                parsed = LabelSelector.match_nothing()
            if parsed.empty:
                self.namespaces = None  # {} selects every namespace
            else:
                self.namespace_selector = parsed
        elif not names:
            self.namespaces = frozenset((owner_namespace,))

    def matches(self, pod: PodInfo, namespace_labels: NamespaceLabels) -> bool:
        """Whether ``pod`` is one of the pods this term selects."""
        if self.namespaces is not None and pod.namespace not in self.namespaces:
            if self.namespace_selector is None:
                return False
            if not self.namespace_selector.matches(namespace_labels(pod.namespace) or {}):
                return False
        return self.selector.matches(pod.labels)


def _terms(affinity: Mapping[str, Any], kind: str, namespace: str, labels: Mapping[str, str]
           ) -> tuple[tuple[AffinityTerm, ...], tuple[tuple[int, AffinityTerm], ...]]:
    section = affinity.get(kind) or {}
    required = tuple(AffinityTerm(t, namespace, labels)
                     for t in section.get("requiredDuringSchedulingIgnoredDuringExecution") or ())
    preferred = tuple((int(w.get("weight") or 0), AffinityTerm(w.get("podAffinityTerm") or {}, namespace, labels))
                      for w in section.get("preferredDuringSchedulingIgnoredDuringExecution") or ())
    return required, preferred


# --- topology spread ---------------------------------------------------------------------------


class SpreadConstraint:
    """One ``topologySpreadConstraints`` entry (or a default one the scheduler made up)."""

    __slots__ = ("max_skew", "min_domains", "node_affinity_policy", "node_taints_policy", "selector",
                 "topology_key", "when_unsatisfiable")

    def __init__(self, c: Mapping[str, Any], labels: Mapping[str, str]) -> None:
        self.max_skew = int(c.get("maxSkew") or 1)
        self.topology_key = c.get("topologyKey") or ""
        self.when_unsatisfiable = c.get("whenUnsatisfiable") or "DoNotSchedule"
        self.min_domains = int(c["minDomains"]) if c.get("minDomains") else None
        self.node_affinity_policy = c.get("nodeAffinityPolicy") or "Honor"
        self.node_taints_policy = c.get("nodeTaintsPolicy") or "Ignore"
        try:
            selector = label_selector_from_dict(c.get("labelSelector"))
            extra = [LabelRequirement.new(k, "in", [labels[k]]) for k in c.get("matchLabelKeys") or () if k in labels]
            if extra and not selector.nothing:
                selector = LabelSelector(tuple(sorted((*selector.requirements, *extra), key=lambda r: r.key)))
        except SelectorError:
            selector = LabelSelector.match_nothing()
        self.selector = selector


# --- pods ----------------------------------------------------------------------------------------


def _controller_uid(meta: Mapping[str, Any]) -> str | None:
    for ref in meta.get("ownerReferences") or ():
        if ref.get("controller"):
            return ref.get("uid") or f"{ref.get('kind')}/{ref.get('name')}"
    return None


class PodInfo:
    """A pod as the scheduler needs it, computed once from the object."""

    __slots__ = ("claims", "has_pod_affinity", "host_ports", "key", "labels", "name", "namespace",
                 "node_affinity", "node_name", "node_selector", "nonzero_cpu", "nonzero_memory", "obj", "owner",
                 "phase", "pinned_nodes", "preemption_policy", "preferred_affinity", "preferred_anti_affinity",
                 "preferred_node_affinity", "priority", "requests", "required_affinity", "required_anti_affinity",
                 "scheduler_name", "scheduling_gated", "spread_constraints", "terminating", "tolerations", "uid")

    def __init__(self, pod: Obj) -> None:
        self.obj = pod
        meta = pod.get("metadata") or {}
        spec = pod.get("spec") or {}
        self.namespace: str = meta.get("namespace") or ""
        self.name: str = meta.get("name") or ""
        self.key = f"{self.namespace}/{self.name}"
        self.uid: str = meta.get("uid") or ""
        self.labels: dict[str, str] = meta.get("labels") or {}
        self.terminating = bool(meta.get("deletionTimestamp"))
        self.phase: str = (pod.get("status") or {}).get("phase") or ""
        self.node_name: str = spec.get("nodeName") or ""
        self.scheduler_name: str = spec.get("schedulerName") or "default-scheduler"
        self.priority = int(spec.get("priority") or 0)
        self.preemption_policy: str = spec.get("preemptionPolicy") or "PreemptLowerPriority"
        self.scheduling_gated = bool(spec.get("schedulingGates"))
        self.requests = pod_requests(spec)
        non_zero = pod_requests(spec, non_zero=True)
        self.nonzero_cpu, self.nonzero_memory = non_zero.milli_cpu, non_zero.memory
        ports = []
        sidecars = [c for c in spec.get("initContainers") or () if c.get("restartPolicy") == "Always"]
        for c in (*(spec.get("containers") or ()), *sidecars):
            for p in c.get("ports") or ():
                if p.get("hostPort"):
                    ports.append((p.get("hostIP") or "0.0.0.0", p.get("protocol") or "TCP", int(p["hostPort"])))
        self.host_ports: tuple[tuple[str, str, int], ...] = tuple(ports)
        self.tolerations = tuple(Toleration.from_dict(t) for t in spec.get("tolerations") or ())
        self.node_selector: dict[str, str] = spec.get("nodeSelector") or {}
        affinity = spec.get("affinity") or {}
        node_affinity = affinity.get("nodeAffinity") or {}
        required = node_affinity.get("requiredDuringSchedulingIgnoredDuringExecution")
        self.node_affinity = NodeSelector(required) if required is not None else None
        self.pinned_nodes = self.node_affinity.pinned_names() if self.node_affinity else None
        self.preferred_node_affinity = tuple(
            (int(p.get("weight") or 0), NodeSelectorTerm(p.get("preference")))
            for p in node_affinity.get("preferredDuringSchedulingIgnoredDuringExecution") or ())
        self.required_affinity, self.preferred_affinity = _terms(affinity, "podAffinity", self.namespace,
                                                                 self.labels)
        self.required_anti_affinity, self.preferred_anti_affinity = _terms(affinity, "podAntiAffinity",
                                                                           self.namespace, self.labels)
        self.has_pod_affinity = bool(self.required_affinity or self.preferred_affinity
                                     or self.required_anti_affinity or self.preferred_anti_affinity)
        self.spread_constraints = tuple(SpreadConstraint(c, self.labels)
                                        for c in spec.get("topologySpreadConstraints") or ())
        uid = _controller_uid(meta)
        self.owner: tuple[str, str] | None = (self.namespace, uid) if uid else None
        #: the PersistentVolumeClaims its volumes name
        self.claims: tuple[str, ...] = tuple(
            v["persistentVolumeClaim"].get("claimName") or "" for v in spec.get("volumes") or ()
            if v.get("persistentVolumeClaim"))

    @property
    def terminal(self) -> bool:
        return self.phase in ("Succeeded", "Failed")

    def __repr__(self) -> str:
        return f"PodInfo({self.key})"


# --- nodes ---------------------------------------------------------------------------------------


def _ready_taint(node: Mapping[str, Any]) -> Taint | None:
    """The taint kube's node lifecycle controller puts on a node that is not Ready."""
    for cond in (node.get("status") or {}).get("conditions") or ():
        if cond.get("type") == "Ready":
            status = cond.get("status")
            if status == "True":
                return None
            if status == "Unknown":
                return Taint(TAINT_UNREACHABLE, "", "NoSchedule")
            return Taint(TAINT_NOT_READY, "", "NoSchedule")
    return Taint(TAINT_NOT_READY, "", "NoSchedule")


class NodeInfo:
    """A node and the pods on it (bound or assumed), with their requests summed."""

    __slots__ = ("allocatable", "labels", "name", "node", "nonzero_cpu", "nonzero_memory", "pods", "ports",
                 "prefer_no_schedule", "requested", "signature", "taints", "unschedulable", "wildcard_ports")

    def __init__(self, name: str, node: Obj | None = None) -> None:
        self.name = name
        self.node: Obj | None = None
        self.labels: dict[str, str] = {}
        self.taints: tuple[Taint, ...] = ()
        self.prefer_no_schedule: tuple[Taint, ...] = ()
        self.unschedulable = False
        self.allocatable = Resources()
        self.signature: Any = None
        self.requested = Resources()
        self.nonzero_cpu = 0
        self.nonzero_memory = 0
        self.pods: dict[str, PodInfo] = {}
        self.ports: Counter[tuple[str, str, int]] = Counter()
        self.wildcard_ports: Counter[tuple[str, int]] = Counter()
        if node is not None:
            self.set_node(node)

    def set_node(self, node: Obj | None) -> None:
        """Take a (new version of the) Node object; None leaves only its pods (the node is gone)."""
        self.node = node
        if node is None:
            self.signature = None
            return
        spec = node.get("spec") or {}
        status = node.get("status") or {}
        self.labels = (node.get("metadata") or {}).get("labels") or {}
        taints = [Taint(t.get("key") or "", str(t.get("value") or ""), t.get("effect") or "")
                  for t in spec.get("taints") or ()]
        ready = _ready_taint(node)
        if ready is not None and not any(t.key == ready.key and t.effect == ready.effect for t in taints):
            taints.append(ready)
        self.taints = tuple(t for t in taints if t.effect in ("NoSchedule", "NoExecute"))
        self.prefer_no_schedule = tuple(t for t in taints if t.effect == "PreferNoSchedule")
        self.unschedulable = bool(spec.get("unschedulable"))
        self.allocatable = Resources.from_list(status.get("allocatable") or status.get("capacity"))
        # what, if it changes, may let a waiting pod fit (heartbeats and images do not)
        self.signature = (tuple(sorted(self.labels.items())), tuple(taints), self.prefer_no_schedule,
                          self.unschedulable, repr(self.allocatable))

    def add_pod(self, pod: PodInfo) -> None:
        self.pods[pod.key] = pod
        self.requested.add(pod.requests)
        self.requested.pods += 1
        self.nonzero_cpu += pod.nonzero_cpu
        self.nonzero_memory += pod.nonzero_memory
        for ip, proto, port in pod.host_ports:
            self.ports[(ip, proto, port)] += 1
            self.wildcard_ports[(proto, port)] += 1

    def remove_pod(self, pod: PodInfo) -> None:
        if self.pods.pop(pod.key, None) is None:
            return
        self.requested.add(pod.requests, -1)
        self.requested.pods -= 1
        self.nonzero_cpu -= pod.nonzero_cpu
        self.nonzero_memory -= pod.nonzero_memory
        for ip, proto, port in pod.host_ports:
            for counter, key in ((self.ports, (ip, proto, port)), (self.wildcard_ports, (proto, port))):
                counter[key] -= 1
                if counter[key] <= 0:
                    del counter[key]

    def without(self, keys: set[str]) -> NodeInfo:
        """A copy of this node without some of its pods (to ask "would it fit if they left?")."""
        clone = NodeInfo(self.name)
        clone.node, clone.labels, clone.taints = self.node, self.labels, self.taints
        clone.prefer_no_schedule, clone.unschedulable = self.prefer_no_schedule, self.unschedulable
        clone.allocatable, clone.signature = self.allocatable, self.signature
        for key, pod in self.pods.items():
            if key not in keys:
                clone.add_pod(pod)
        return clone

    def __repr__(self) -> str:
        return f"NodeInfo({self.name}, pods={len(self.pods)})"


def node_info(node: Obj, pods: list[Obj] | tuple[Obj, ...] = ()) -> NodeInfo:
    """A NodeInfo for ``node`` with ``pods`` on it: handy for tests and tools."""
    info = NodeInfo(node["metadata"]["name"], node)
    for p in pods:
        info.add_pod(PodInfo(p))
    return info
