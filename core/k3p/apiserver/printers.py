"""Per-kind Table columns and cells, as kube-apiserver v1.32 prints them for ``kubectl get``.

Each :class:`Printer` holds a kind's column definitions and a function that turns one object
(a dict in its external JSON form) into the row's cells. The server always prints the wide
set; kubectl hides the ``priority`` 1 columns unless asked for ``-o wide``. Column
descriptions come from the v1.32 OpenAPI schemas in ``kubernetes-validate`` (the same
source kube's Swagger docs are generated from), literal ones are kube's own.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from k3p.apiserver import schemas
from k3p.selectors import SelectorError, format_label_selector, format_labels, label_selector_from_dict

__all__ = [
    "AGE_COLUMN",
    "NAME_COLUMN",
    "PRINTERS",
    "Column",
    "Printer",
    "column_definitions",
    "human_duration",
    "parse_time",
    "translate_timestamp_since",
]

_ZERO_TIME = datetime.min.replace(tzinfo=UTC)

# ---------------------------------------------------------------------------------------------
# Time


def parse_time(value: Any) -> datetime | None:
    """An RFC 3339 timestamp (``metav1.Time`` / ``MicroTime``) as an aware datetime, or None."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def human_duration(d: timedelta) -> str:
    """kube's ``duration.HumanDuration``: ``5s``, ``3m2s``, ``4h``, ``2d3h``, ``5y``."""
    seconds = int(d.total_seconds())  # truncates toward zero, as Go's int(d.Seconds())
    if seconds < -1:
        return "<invalid>"
    if seconds < 0:
        return "0s"
    if seconds < 60 * 2:
        return f"{seconds}s"
    minutes = seconds // 60
    if minutes < 10:
        s = seconds % 60
        return f"{minutes}m" if s == 0 else f"{minutes}m{s}s"
    if minutes < 60 * 3:
        return f"{minutes}m"
    hours = seconds // 3600
    if hours < 8:
        m = minutes % 60
        return f"{hours}h" if m == 0 else f"{hours}h{m}m"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        h = hours % 24
        return f"{hours // 24}d" if h == 0 else f"{hours // 24}d{h}h"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        dy = (hours // 24) % 365
        return f"{hours // 24 // 365}y" if dy == 0 else f"{hours // 24 // 365}y{dy}d"
    return f"{hours // 24 // 365}y"


def translate_timestamp_since(value: Any, now: datetime) -> str:
    """The age of a timestamp, or ``<unknown>`` when it is missing."""
    t = parse_time(value)
    return "<unknown>" if t is None else human_duration(now - t)


# ---------------------------------------------------------------------------------------------
# Columns

_META = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"


@dataclass(frozen=True, slots=True)
class Column:
    """A column: ``doc`` is a literal description or a (definition, property) schema reference."""

    name: str
    type: str = "string"
    priority: int = 0
    format: str = ""
    doc: str | tuple[str, str] = ""


def _doc(ref: str | tuple[str, str]) -> str:
    if isinstance(ref, str):
        return ref
    definition, prop = ref
    schema = schemas.definitions().get(definition, {})
    return schema.get("properties", {}).get(prop, {}).get("description", "")


def column_definitions(columns: Sequence[Column]) -> list[dict[str, Any]]:
    """The ``columnDefinitions`` of a Table for these columns."""
    return [
        {"name": c.name, "type": c.type, "format": c.format, "description": _doc(c.doc), "priority": c.priority}
        for c in columns
    ]


def _api(definition: str, prop: str) -> tuple[str, str]:
    return ("io.k8s.api." + definition, prop)


NAME_COLUMN = Column("Name", format="name", doc=(_META, "name"))
AGE_COLUMN = Column("Age", doc=(_META, "creationTimestamp"))
_CONTAINERS = Column("Containers", priority=1, doc="Names of each container in the template.")
_IMAGES = Column("Images", priority=1, doc="Images referenced by each container in the template.")


Cells = list[Any]


@dataclass(frozen=True, slots=True)
class Printer:
    """A kind's columns, its cell function and (pods only) its row conditions."""

    columns: tuple[Column, ...]
    cells: Callable[[dict[str, Any], datetime], Cells]
    conditions: Callable[[dict[str, Any]], list[dict[str, str]] | None] = field(default=lambda obj: None)


# ---------------------------------------------------------------------------------------------
# Helpers shared by several kinds


def _get(obj: Any, *keys: str, default: Any = None) -> Any:
    for k in keys:
        if not isinstance(obj, dict):
            return default
        obj = obj.get(k)
    return default if obj is None else obj


def _name(obj: dict[str, Any]) -> str:
    return _get(obj, "metadata", "name", default="")


def _age(obj: dict[str, Any], now: datetime) -> str:
    return translate_timestamp_since(_get(obj, "metadata", "creationTimestamp"), now)


def _containers(spec: dict[str, Any] | None) -> tuple[str, str]:
    containers = _get(spec, "containers", default=[])
    return ",".join(c.get("name", "") for c in containers), ",".join(c.get("image", "") for c in containers)


def _selector_string(selector: Mapping[str, Any] | None) -> str:
    try:
        return label_selector_from_dict(selector).to_string()
    except SelectorError:
        return "<invalid>"


def _join_host_port(host: str, port: Any) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _list_with_more(items: list[str], more: bool, count: int, limit: int) -> str:
    text = ",".join(items)
    if more:
        return f"{text} + {count - limit} more..."
    return text or "<unset>"


def _lb_status(ingress: list[dict[str, Any]] | None) -> str:
    # The server prints the wide form, so the list is never clipped.
    return ",".join(
        sorted({i.get("ip") or i.get("hostname") for i in ingress or [] if i.get("ip") or i.get("hostname")})
    )


def _bool_text(value: Any) -> str:
    if value is None:
        return "<unset>"
    return "True" if value else "False"


def _int_or_string(value: Any) -> str:
    return str(value)


def _condition(conditions: list[dict[str, Any]] | None, kind: str) -> dict[str, Any] | None:
    for c in conditions or []:
        if c.get("type") == kind:
            return c
    return None


def _has_true_condition(conditions: list[dict[str, Any]] | None, kind: str) -> bool:
    c = _condition(conditions, kind)
    return c is not None and c.get("status") == "True"


# ---------------------------------------------------------------------------------------------
# Pods

_POD_SUCCEEDED = [
    {"type": "Completed", "status": "True", "reason": "Succeeded", "message": "The pod has completed successfully."}
]
_POD_FAILED = [{"type": "Completed", "status": "True", "reason": "Failed", "message": "The pod failed."}]


def _finished_at(container_status: dict[str, Any]) -> datetime | None:
    terminated = _get(container_status, "lastState", "terminated")
    if terminated is None:
        return None
    return parse_time(terminated.get("finishedAt")) or _ZERO_TIME


def _restartable(container: dict[str, Any] | None) -> bool:
    return bool(container) and container.get("restartPolicy") == "Always"  # type: ignore[union-attr]


def _pod_ip(status: dict[str, Any]) -> str:
    if status.get("podIP"):
        return status["podIP"]
    ips = status.get("podIPs") or []
    return (ips[0] or {}).get("ip", "") if ips else ""


def _pod_cells(pod: dict[str, Any], now: datetime) -> Cells:
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    restarts = restartable_restarts = 0
    total = len(spec.get("containers") or [])
    ready = 0
    last_restart = last_restartable_restart = _ZERO_TIME
    phase = status.get("phase", "")
    reason = status.get("reason") or phase
    for c in status.get("conditions") or []:
        if c.get("type") == "PodScheduled" and c.get("reason") == "SchedulingGated":
            reason = "SchedulingGated"

    init_specs: dict[str, dict[str, Any]] = {}
    for c in spec.get("initContainers") or []:
        init_specs[c.get("name", "")] = c
        if _restartable(c):
            total += 1

    initializing = False
    init_count = len(spec.get("initContainers") or [])
    for i, cs in enumerate(status.get("initContainerStatuses") or []):
        restarts += int(cs.get("restartCount") or 0)
        finished = _finished_at(cs)
        if finished is not None and finished > last_restart:
            last_restart = finished
        restartable = _restartable(init_specs.get(cs.get("name", "")))
        if restartable:
            restartable_restarts += int(cs.get("restartCount") or 0)
            if finished is not None and finished > last_restartable_restart:
                last_restartable_restart = finished
        state = cs.get("state") or {}
        terminated, waiting = state.get("terminated"), state.get("waiting")
        if terminated is not None and not terminated.get("exitCode"):
            continue
        if restartable and cs.get("started") is True:
            if cs.get("ready"):
                ready += 1
            continue
        if terminated is not None:
            if not terminated.get("reason"):
                if terminated.get("signal"):
                    reason = f"Init:Signal:{terminated['signal']}"
                else:
                    reason = f"Init:ExitCode:{terminated.get('exitCode', 0)}"
            else:
                reason = "Init:" + terminated["reason"]
        elif waiting is not None and waiting.get("reason") and waiting["reason"] != "PodInitializing":
            reason = "Init:" + waiting["reason"]
        else:
            reason = f"Init:{i}/{init_count}"
        initializing = True
        break

    if not initializing or _has_true_condition(status.get("conditions"), "Initialized"):
        restarts = restartable_restarts
        last_restart = last_restartable_restart
        has_running = False
        for cs in reversed(status.get("containerStatuses") or []):
            restarts += int(cs.get("restartCount") or 0)
            finished = _finished_at(cs)
            if finished is not None and finished > last_restart:
                last_restart = finished
            state = cs.get("state") or {}
            terminated, waiting = state.get("terminated"), state.get("waiting")
            if waiting is not None and waiting.get("reason"):
                reason = waiting["reason"]
            elif terminated is not None and terminated.get("reason"):
                reason = terminated["reason"]
            elif terminated is not None:
                if terminated.get("signal"):
                    reason = f"Signal:{terminated['signal']}"
                else:
                    reason = f"ExitCode:{terminated.get('exitCode', 0)}"
            elif cs.get("ready") and state.get("running") is not None:
                has_running = True
                ready += 1
        # A pod whose first container completed while another still runs is not "Completed".
        if reason == "Completed" and has_running:
            reason = "Running" if _has_true_condition(status.get("conditions"), "Ready") else "NotReady"

    deleting = bool(_get(pod, "metadata", "deletionTimestamp"))
    if deleting and status.get("reason") == "NodeLost":
        reason = "Unknown"
    elif deleting and phase not in ("Succeeded", "Failed"):
        reason = "Terminating"

    restarts_text = str(restarts)
    if restarts and last_restart != _ZERO_TIME:
        restarts_text = f"{restarts} ({human_duration(now - last_restart)} ago)"

    gates = spec.get("readinessGates") or []
    readiness = "<none>"
    if gates:
        true_count = 0
        for gate in gates:
            c = _condition(status.get("conditions"), gate.get("conditionType", ""))
            if c is not None and c.get("status") == "True":
                true_count += 1
        readiness = f"{true_count}/{len(gates)}"
    return [
        _name(pod),
        f"{ready}/{total}",
        reason,
        restarts_text,
        _age(pod, now),
        _pod_ip(status) or "<none>",
        spec.get("nodeName") or "<none>",
        status.get("nominatedNodeName") or "<none>",
        readiness,
    ]


def _pod_conditions(pod: dict[str, Any]) -> list[dict[str, str]] | None:
    phase = _get(pod, "status", "phase")
    if phase == "Succeeded":
        return [dict(c) for c in _POD_SUCCEEDED]
    if phase == "Failed":
        return [dict(c) for c in _POD_FAILED]
    return None


_POD = Printer(
    (
        NAME_COLUMN,
        Column("Ready", doc="The aggregate readiness state of this pod for accepting traffic."),
        Column("Status", doc="The aggregate status of the containers in this pod."),
        Column(
            "Restarts",
            doc="The number of times the containers in this pod have been restarted and when the last "
            "container in this pod has restarted.",
        ),
        AGE_COLUMN,
        Column("IP", priority=1, doc=_api("core.v1.PodStatus", "podIP")),
        Column("Node", priority=1, doc=_api("core.v1.PodSpec", "nodeName")),
        Column("Nominated Node", priority=1, doc=_api("core.v1.PodStatus", "nominatedNodeName")),
        Column("Readiness Gates", priority=1, doc=_api("core.v1.PodSpec", "readinessGates")),
    ),
    _pod_cells,
    _pod_conditions,
)

_POD_TEMPLATE = Printer(
    (
        NAME_COLUMN,
        Column("Containers", doc="Names of each container in the template."),
        Column("Images", doc="Images referenced by each container in the template."),
        Column("Pod Labels", doc="The labels for the pod template."),
    ),
    lambda o, now: [
        _name(o),
        *_containers(_get(o, "template", "spec")),
        format_labels(_get(o, "template", "metadata", "labels")),
    ],
)

# ---------------------------------------------------------------------------------------------
# Nodes


def _node_cells(node: dict[str, Any], now: datetime) -> Cells:
    status = node.get("status") or {}
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    states = []
    if "Ready" in conditions:
        states.append("Ready" if conditions["Ready"].get("status") == "True" else "NotReady")
    if not states:
        states.append("Unknown")
    if _get(node, "spec", "unschedulable"):
        states.append("SchedulingDisabled")
    roles: set[str] = set()
    for key, value in (_get(node, "metadata", "labels") or {}).items():
        if key.startswith("node-role.kubernetes.io/"):
            role = key[len("node-role.kubernetes.io/") :]
            if role:
                roles.add(role)
        elif key == "kubernetes.io/role" and value:
            roles.add(value)
    info = status.get("nodeInfo") or {}

    def address(kind: str) -> str:
        for a in status.get("addresses") or []:
            if a.get("type") == kind:
                return a.get("address", "")
        return "<none>"

    return [
        _name(node),
        ",".join(states),
        ",".join(sorted(roles)) or "<none>",
        _age(node, now),
        info.get("kubeletVersion", ""),
        address("InternalIP"),
        address("ExternalIP"),
        info.get("osImage") or "<unknown>",
        info.get("kernelVersion") or "<unknown>",
        info.get("containerRuntimeVersion") or "<unknown>",
    ]


_NODE = Printer(
    (
        NAME_COLUMN,
        Column("Status", doc="The status of the node"),
        Column("Roles", doc="The roles of the node"),
        AGE_COLUMN,
        Column("Version", doc=_api("core.v1.NodeSystemInfo", "kubeletVersion")),
        Column("Internal-IP", priority=1, doc=_api("core.v1.NodeStatus", "addresses")),
        Column("External-IP", priority=1, doc=_api("core.v1.NodeStatus", "addresses")),
        Column("OS-Image", priority=1, doc=_api("core.v1.NodeSystemInfo", "osImage")),
        Column("Kernel-Version", priority=1, doc=_api("core.v1.NodeSystemInfo", "kernelVersion")),
        Column("Container-Runtime", priority=1, doc=_api("core.v1.NodeSystemInfo", "containerRuntimeVersion")),
    ),
    _node_cells,
)

# ---------------------------------------------------------------------------------------------
# Services, endpoints, ingresses


def _service_external_ip(svc: dict[str, Any]) -> str:
    spec = svc.get("spec") or {}
    svc_type = spec.get("type", "")
    external_ips = spec.get("externalIPs") or []
    if svc_type in ("ClusterIP", "NodePort"):
        return ",".join(external_ips) if external_ips else "<none>"
    if svc_type == "LoadBalancer":
        lb = _lb_status(_get(svc, "status", "loadBalancer", "ingress"))
        if external_ips:
            return ",".join([*(lb.split(",") if lb else []), *external_ips])
        return lb or "<pending>"
    if svc_type == "ExternalName":
        return spec.get("externalName", "")
    return "<unknown>"


def _service_cells(svc: dict[str, Any], now: datetime) -> Cells:
    spec = svc.get("spec") or {}
    cluster_ips = spec.get("clusterIPs") or ([spec["clusterIP"]] if spec.get("clusterIP") else [])
    ports = []
    for p in spec.get("ports") or []:
        protocol = p.get("protocol") or "TCP"
        if p.get("nodePort"):
            ports.append(f"{p.get('port', 0)}:{p['nodePort']}/{protocol}")
        else:
            ports.append(f"{p.get('port', 0)}/{protocol}")
    return [
        _name(svc),
        spec.get("type", ""),
        cluster_ips[0] if cluster_ips else "<none>",
        _service_external_ip(svc),
        ",".join(ports) or "<none>",
        _age(svc, now),
        format_labels(spec.get("selector")),
    ]


_SERVICE = Printer(
    (
        NAME_COLUMN,
        Column("Type", doc=_api("core.v1.ServiceSpec", "type")),
        Column("Cluster-IP", doc=_api("core.v1.ServiceSpec", "clusterIP")),
        Column("External-IP", doc=_api("core.v1.ServiceSpec", "externalIPs")),
        Column("Port(s)", doc=_api("core.v1.ServiceSpec", "ports")),
        AGE_COLUMN,
        Column("Selector", priority=1, doc=_api("core.v1.ServiceSpec", "selector")),
    ),
    _service_cells,
)


def _format_endpoints(subsets: list[dict[str, Any]] | None) -> str:
    if not subsets:
        return "<none>"
    shown: list[str] = []
    limit, more, count = 3, False, 0
    for subset in subsets:
        addresses = subset.get("addresses") or []
        ports = subset.get("ports") or []
        if not ports:
            # headless services may have no ports
            count += len(addresses)
            for a in addresses:
                if len(shown) == limit:
                    more = True
                    break
                shown.append(a.get("ip", ""))
            continue
        for port in ports:
            count += len(addresses)
            for a in addresses:
                if len(shown) == limit:
                    more = True
                    break
                shown.append(_join_host_port(a.get("ip", ""), port.get("port", 0)))
    text = ",".join(shown)
    return f"{text} + {count - limit} more..." if more else text


_ENDPOINTS = Printer(
    (NAME_COLUMN, Column("Endpoints", doc=_api("core.v1.Endpoints", "subsets")), AGE_COLUMN),
    lambda o, now: [_name(o), _format_endpoints(o.get("subsets")), _age(o, now)],
)


def _slice_ports(ports: list[dict[str, Any]] | None) -> str:
    shown: list[str] = []
    limit, more, count = 3, False, 0
    for p in ports or []:
        if len(shown) < limit:
            if p.get("port") is not None:
                shown.append(str(p["port"]))
            elif p.get("name") is not None:
                shown.append(p["name"])
            else:
                shown.append("*")
        elif len(shown) == limit:
            more = True
        count += 1
    return _list_with_more(shown, more, count, limit)


def _slice_endpoints(endpoints: list[dict[str, Any]] | None) -> str:
    shown: list[str] = []
    limit, more, count = 3, False, 0
    for e in endpoints or []:
        for address in e.get("addresses") or []:
            if len(shown) < limit:
                shown.append(address)
            elif len(shown) == limit:
                more = True
            count += 1
    return _list_with_more(shown, more, count, limit)


_ENDPOINT_SLICE = Printer(
    (
        NAME_COLUMN,
        Column("AddressType", doc=_api("discovery.v1.EndpointSlice", "addressType")),
        Column("Ports", doc=_api("discovery.v1.EndpointSlice", "ports")),
        Column("Endpoints", doc=_api("discovery.v1.EndpointSlice", "endpoints")),
        AGE_COLUMN,
    ),
    lambda o, now: [
        _name(o),
        o.get("addressType", ""),
        _slice_ports(o.get("ports")),
        _slice_endpoints(o.get("endpoints")),
        _age(o, now),
    ],
)


def _ingress_hosts(rules: list[dict[str, Any]] | None) -> str:
    rules = rules or []
    shown: list[str] = []
    limit, more = 3, False
    for rule in rules:
        if len(shown) == limit:
            more = True
        if not more and rule.get("host"):
            shown.append(rule["host"])
    if not shown:
        return "*"
    text = ",".join(shown)
    return f"{text} + {len(rules) - limit} more..." if more else text


_INGRESS = Printer(
    (
        NAME_COLUMN,
        Column(
            "Class",
            doc="The name of the IngressClass resource that should be used for additional configuration",
        ),
        Column("Hosts", doc="Hosts that incoming requests are matched against before the ingress rule"),
        Column("Address", doc="Address is a list containing ingress points for the load-balancer"),
        Column("Ports", doc="Ports of TLS configurations that open"),
        AGE_COLUMN,
    ),
    lambda o, now: [
        _name(o),
        _get(o, "spec", "ingressClassName") or "<none>",
        _ingress_hosts(_get(o, "spec", "rules")),
        _lb_status(_get(o, "status", "loadBalancer", "ingress")),
        "80, 443" if _get(o, "spec", "tls") else "80",
        _age(o, now),
    ],
)


def _ingress_class_parameters(o: dict[str, Any]) -> str:
    params = _get(o, "spec", "parameters")
    if params is None:
        return "<none>"
    text = params.get("kind", "")
    if params.get("apiGroup") is not None:
        text += "." + params["apiGroup"]
    return text + "/" + params.get("name", "")


_INGRESS_CLASS = Printer(
    (
        NAME_COLUMN,
        Column("Controller", doc="Controller that is responsible for handling this class"),
        Column("Parameters", doc="A reference to a resource with additional parameters"),
        AGE_COLUMN,
    ),
    lambda o, now: [_name(o), _get(o, "spec", "controller", default=""), _ingress_class_parameters(o), _age(o, now)],
)


def _network_policy_cells(o: dict[str, Any], now: datetime) -> Cells:
    # podSelector is not a pointer: an absent one is the empty selector, printed as <none>.
    return [_name(o), format_label_selector(_get(o, "spec", "podSelector", default={})), _age(o, now)]


_NETWORK_POLICY = Printer(
    (
        NAME_COLUMN,
        Column("Pod-Selector", doc=_api("networking.v1.NetworkPolicySpec", "podSelector")),
        AGE_COLUMN,
    ),
    _network_policy_cells,
)

# ---------------------------------------------------------------------------------------------
# Workloads


def _replicas(o: dict[str, Any]) -> int:
    # Defaulting sets spec.replicas to 1 where the client left it out.
    value = _get(o, "spec", "replicas")
    return 1 if value is None else int(value)


def _status_int(o: dict[str, Any], key: str) -> int:
    return int(_get(o, "status", key, default=0))


def _deployment_cells(o: dict[str, Any], now: datetime) -> Cells:
    names, images = _containers(_get(o, "spec", "template", "spec"))
    return [
        _name(o),
        f"{_status_int(o, 'readyReplicas')}/{_replicas(o)}",
        _status_int(o, "updatedReplicas"),
        _status_int(o, "availableReplicas"),
        _age(o, now),
        names,
        images,
        _selector_string(_get(o, "spec", "selector")),
    ]


_DEPLOYMENT = Printer(
    (
        NAME_COLUMN,
        Column("Ready", doc="Number of the pod with ready state"),
        Column("Up-to-date", doc=_api("apps.v1.DeploymentStatus", "updatedReplicas")),
        Column("Available", doc=_api("apps.v1.DeploymentStatus", "availableReplicas")),
        AGE_COLUMN,
        _CONTAINERS,
        _IMAGES,
        Column("Selector", priority=1, doc=_api("apps.v1.DeploymentSpec", "selector")),
    ),
    _deployment_cells,
)


def _replica_set_cells(o: dict[str, Any], now: datetime) -> Cells:
    names, images = _containers(_get(o, "spec", "template", "spec"))
    return [
        _name(o),
        _replicas(o),
        _status_int(o, "replicas"),
        _status_int(o, "readyReplicas"),
        _age(o, now),
        names,
        images,
        format_label_selector(_get(o, "spec", "selector")),
    ]


_REPLICA_SET = Printer(
    (
        NAME_COLUMN,
        Column("Desired", "integer", doc=_api("apps.v1.ReplicaSetSpec", "replicas")),
        Column("Current", "integer", doc=_api("apps.v1.ReplicaSetStatus", "replicas")),
        Column("Ready", "integer", doc=_api("apps.v1.ReplicaSetStatus", "readyReplicas")),
        AGE_COLUMN,
        _CONTAINERS,
        _IMAGES,
        Column("Selector", priority=1, doc=_api("apps.v1.ReplicaSetSpec", "selector")),
    ),
    _replica_set_cells,
)


def _rc_cells(o: dict[str, Any], now: datetime) -> Cells:
    names, images = _containers(_get(o, "spec", "template", "spec"))
    return [
        _name(o),
        _replicas(o),
        _status_int(o, "replicas"),
        _status_int(o, "readyReplicas"),
        _age(o, now),
        names,
        images,
        format_labels(_get(o, "spec", "selector")),
    ]


_REPLICATION_CONTROLLER = Printer(
    (
        NAME_COLUMN,
        Column("Desired", "integer", doc=_api("core.v1.ReplicationControllerSpec", "replicas")),
        Column("Current", "integer", doc=_api("core.v1.ReplicationControllerStatus", "replicas")),
        Column("Ready", "integer", doc=_api("core.v1.ReplicationControllerStatus", "readyReplicas")),
        AGE_COLUMN,
        _CONTAINERS,
        _IMAGES,
        Column("Selector", priority=1, doc=_api("core.v1.ReplicationControllerSpec", "selector")),
    ),
    _rc_cells,
)


def _daemon_set_cells(o: dict[str, Any], now: datetime) -> Cells:
    pod_spec = _get(o, "spec", "template", "spec")
    names, images = _containers(pod_spec)
    return [
        _name(o),
        _status_int(o, "desiredNumberScheduled"),
        _status_int(o, "currentNumberScheduled"),
        _status_int(o, "numberReady"),
        _status_int(o, "updatedNumberScheduled"),
        _status_int(o, "numberAvailable"),
        format_labels(_get(pod_spec, "nodeSelector")),
        _age(o, now),
        names,
        images,
        format_label_selector(_get(o, "spec", "selector")),
    ]


_DAEMON_SET = Printer(
    (
        NAME_COLUMN,
        Column("Desired", "integer", doc=_api("apps.v1.DaemonSetStatus", "desiredNumberScheduled")),
        Column("Current", "integer", doc=_api("apps.v1.DaemonSetStatus", "currentNumberScheduled")),
        Column("Ready", "integer", doc=_api("apps.v1.DaemonSetStatus", "numberReady")),
        Column("Up-to-date", "integer", doc=_api("apps.v1.DaemonSetStatus", "updatedNumberScheduled")),
        Column("Available", "integer", doc=_api("apps.v1.DaemonSetStatus", "numberAvailable")),
        Column("Node Selector", doc=_api("core.v1.PodSpec", "nodeSelector")),
        AGE_COLUMN,
        _CONTAINERS,
        _IMAGES,
        Column("Selector", priority=1, doc=_api("apps.v1.DaemonSetSpec", "selector")),
    ),
    _daemon_set_cells,
)


def _stateful_set_cells(o: dict[str, Any], now: datetime) -> Cells:
    names, images = _containers(_get(o, "spec", "template", "spec"))
    return [_name(o), f"{_status_int(o, 'readyReplicas')}/{_replicas(o)}", _age(o, now), names, images]


_STATEFUL_SET = Printer(
    (NAME_COLUMN, Column("Ready", doc="Number of the pod with ready state"), AGE_COLUMN, _CONTAINERS, _IMAGES),
    _stateful_set_cells,
)


def _job_status(o: dict[str, Any]) -> str:
    conditions = _get(o, "status", "conditions")
    if _has_true_condition(conditions, "Complete"):
        return "Complete"
    if _has_true_condition(conditions, "Failed"):
        return "Failed"
    if _get(o, "metadata", "deletionTimestamp"):
        return "Terminating"
    if _has_true_condition(conditions, "Suspended"):
        return "Suspended"
    if _has_true_condition(conditions, "FailureTarget"):
        return "FailureTarget"
    return "Running"


def _job_cells(o: dict[str, Any], now: datetime) -> Cells:
    spec = o.get("spec") or {}
    succeeded = _status_int(o, "succeeded")
    if spec.get("completions") is not None:
        completions = f"{succeeded}/{spec['completions']}"
    elif int(spec.get("parallelism") or 0) > 1:
        completions = f"{succeeded}/1 of {spec['parallelism']}"
    else:
        completions = f"{succeeded}/1"
    start = parse_time(_get(o, "status", "startTime"))
    end = parse_time(_get(o, "status", "completionTime"))
    duration = "" if start is None else human_duration((end or now) - start)
    names, images = _containers(_get(spec, "template", "spec"))
    return [
        _name(o),
        _job_status(o),
        completions,
        duration,
        _age(o, now),
        names,
        images,
        format_label_selector(spec.get("selector")),
    ]


_JOB = Printer(
    (
        NAME_COLUMN,
        Column("Status", doc="Status of the job."),
        Column("Completions", doc=_api("batch.v1.JobStatus", "succeeded")),
        Column("Duration", doc="Time required to complete the job."),
        AGE_COLUMN,
        _CONTAINERS,
        _IMAGES,
        Column("Selector", priority=1, doc=_api("batch.v1.JobSpec", "selector")),
    ),
    _job_cells,
)


def _cron_job_cells(o: dict[str, Any], now: datetime) -> Cells:
    spec = o.get("spec") or {}
    last = _get(o, "status", "lastScheduleTime")
    job_spec = _get(spec, "jobTemplate", "spec")
    names, images = _containers(_get(job_spec, "template", "spec"))
    return [
        _name(o),
        spec.get("schedule", ""),
        spec.get("timeZone") if spec.get("timeZone") is not None else "<none>",
        _bool_text(spec.get("suspend")),
        len(_get(o, "status", "active", default=[])),
        "<none>" if last is None else translate_timestamp_since(last, now),
        _age(o, now),
        names,
        images,
        format_label_selector(_get(job_spec, "selector")),
    ]


_CRON_JOB = Printer(
    (
        NAME_COLUMN,
        Column("Schedule", doc=_api("batch.v1.CronJobSpec", "schedule")),
        Column("Timezone", doc=_api("batch.v1.CronJobSpec", "timeZone")),
        Column("Suspend", "boolean", doc=_api("batch.v1.CronJobSpec", "suspend")),
        Column("Active", "integer", doc=_api("batch.v1.CronJobStatus", "active")),
        Column("Last Schedule", doc=_api("batch.v1.CronJobStatus", "lastScheduleTime")),
        AGE_COLUMN,
        _CONTAINERS,
        _IMAGES,
        Column("Selector", priority=1, doc=_api("batch.v1.JobSpec", "selector")),
    ),
    _cron_job_cells,
)


def _controller_revision_cells(o: dict[str, Any], now: datetime) -> Cells:
    controller = "<none>"
    for ref in _get(o, "metadata", "ownerReferences", default=[]):
        if ref.get("controller"):
            api_version = ref.get("apiVersion", "")
            group = api_version.split("/")[0] if "/" in api_version else ""
            kind = ref.get("kind", "")
            group_kind = f"{kind}.{group}" if group else kind
            controller = f"{group_kind.lower()}/{ref.get('name', '')}" if group_kind else ref.get("name", "")
            break
    return [_name(o), controller, int(o.get("revision") or 0), _age(o, now)]


_CONTROLLER_REVISION = Printer(
    (
        NAME_COLUMN,
        Column("Controller", doc="Controller of the object"),
        Column("Revision", doc=_api("apps.v1.ControllerRevision", "revision")),
        AGE_COLUMN,
    ),
    _controller_revision_cells,
)

# ---------------------------------------------------------------------------------------------
# Events


def _event_cells(o: dict[str, Any], now: datetime) -> Cells:
    first = translate_timestamp_since(o.get("firstTimestamp"), now)
    if parse_time(o.get("firstTimestamp")) is None:
        first = translate_timestamp_since(o.get("eventTime"), now)
    last = translate_timestamp_since(o.get("lastTimestamp"), now)
    if parse_time(o.get("lastTimestamp")) is None:
        last = first
    count = int(o.get("count") or 0)
    series = o.get("series")
    if series is not None:
        last = translate_timestamp_since(series.get("lastObservedTime"), now)
        count = int(series.get("count") or 0)
    elif count == 0:
        count = 1  # singleton events of the new API carry no count
    involved = o.get("involvedObject") or {}
    kind = involved.get("kind", "").lower()
    target = f"{kind}/{involved['name']}" if involved.get("name") else kind
    source = o.get("source") or {}
    component = source.get("component") or o.get("reportingController") or ""
    host = source.get("host") or o.get("reportingInstance") or ""
    return [
        last,
        o.get("type", ""),
        o.get("reason", ""),
        target,
        involved.get("fieldPath", ""),
        f"{component}, {host}" if host else component,
        (o.get("message") or "").strip(),
        first,
        count,
        _name(o),
    ]


def _events_k8s_io_as_core(o: dict[str, Any]) -> dict[str, Any]:
    """An events.k8s.io/v1 Event in core/v1 field names (the shape kube's printer sees)."""
    return {
        **o,
        "involvedObject": o.get("regarding") or {},
        "message": o.get("note", ""),
        "source": o.get("deprecatedSource") or {},
        "firstTimestamp": o.get("deprecatedFirstTimestamp"),
        "lastTimestamp": o.get("deprecatedLastTimestamp"),
        "count": o.get("deprecatedCount") or 0,
    }


_EVENT_COLUMNS = (
    Column("Last Seen", doc=_api("core.v1.Event", "lastTimestamp")),
    Column("Type", doc=_api("core.v1.Event", "type")),
    Column("Reason", doc=_api("core.v1.Event", "reason")),
    Column("Object", doc=_api("core.v1.Event", "involvedObject")),
    Column("Subobject", priority=1, doc=_api("core.v1.ObjectReference", "fieldPath")),
    Column("Source", priority=1, doc=_api("core.v1.Event", "source")),
    Column("Message", doc=_api("core.v1.Event", "message")),
    Column("First Seen", priority=1, doc=_api("core.v1.Event", "firstTimestamp")),
    Column("Count", priority=1, doc=_api("core.v1.Event", "count")),
    Column("Name", priority=1, format="name", doc=(_META, "name")),
)
_EVENT = Printer(_EVENT_COLUMNS, _event_cells)
_EVENTS_K8S_IO_EVENT = Printer(_EVENT_COLUMNS, lambda o, now: _event_cells(_events_k8s_io_as_core(o), now))

# ---------------------------------------------------------------------------------------------
# Configuration and cluster objects


def _simple(*columns: Column, cells: Callable[[dict[str, Any], datetime], list[Any]]) -> Printer:
    """A printer whose row is name, the given cells, then age."""
    return Printer((NAME_COLUMN, *columns, AGE_COLUMN), lambda o, now: [_name(o), *cells(o, now), _age(o, now)])


_NAMESPACE = _simple(
    Column("Status", doc="The status of the namespace"),
    cells=lambda o, now: [_get(o, "status", "phase", default="")],
)
_SECRET = _simple(
    Column("Type", doc=_api("core.v1.Secret", "type")),
    Column("Data", doc=_api("core.v1.Secret", "data")),
    cells=lambda o, now: [o.get("type", ""), len(set(o.get("data") or {}) | set(o.get("stringData") or {}))],
)
_CONFIG_MAP = _simple(
    Column("Data", doc=_api("core.v1.ConfigMap", "data")),
    cells=lambda o, now: [len(o.get("data") or {}) + len(o.get("binaryData") or {})],
)
_SERVICE_ACCOUNT = _simple(
    Column("Secrets", doc=_api("core.v1.ServiceAccount", "secrets")),
    cells=lambda o, now: [len(o.get("secrets") or [])],
)
_LEASE = _simple(
    Column("Holder", doc=_api("coordination.v1.LeaseSpec", "holderIdentity")),
    cells=lambda o, now: [_get(o, "spec", "holderIdentity", default="")],
)
_RUNTIME_CLASS = _simple(Column("Handler"), cells=lambda o, now: [o.get("handler", "")])
_MUTATING_WEBHOOK = _simple(
    Column("Webhooks", "integer", doc="Webhooks indicates the number of webhooks registered in this configuration"),
    cells=lambda o, now: [len(o.get("webhooks") or [])],
)
_VALIDATING_WEBHOOK = _MUTATING_WEBHOOK


def _vap_param_kind(o: dict[str, Any]) -> str:
    kind = _get(o, "spec", "paramKind")
    return "<unset>" if kind is None else f"{kind.get('apiVersion', '')}/{kind.get('kind', '')}"


def _vapb_param_ref(o: dict[str, Any]) -> str:
    ref = _get(o, "spec", "paramRef")
    if ref is None:
        return "<unset>"
    if ref.get("name"):
        return f"{ref['namespace']}/{ref['name']}" if ref.get("namespace") else f"*/{ref['name']}"
    if ref.get("selector") is not None:
        return format_label_selector(ref["selector"])
    return "<unset>"


_VALIDATING_ADMISSION_POLICY = _simple(
    Column(
        "Validations",
        "integer",
        doc="Validations indicates the number of validation rules defined in this configuration",
    ),
    Column("ParamKind", doc="ParamKind specifies the kind of resources used to parameterize this policy"),
    cells=lambda o, now: [len(_get(o, "spec", "validations", default=[])), _vap_param_kind(o)],
)
_VALIDATING_ADMISSION_POLICY_BINDING = _simple(
    Column("PolicyName", doc="PolicyName indicates the policy definition which the policy binding binded to"),
    Column("ParamRef", doc="ParamRef indicates the param resource which sets the configration param"),
    cells=lambda o, now: [_get(o, "spec", "policyName", default=""), _vapb_param_ref(o)],
)

_PRIORITY_CLASS = Printer(
    (
        NAME_COLUMN,
        Column("Value", "integer", doc=_api("scheduling.v1.PriorityClass", "value")),
        Column("Global-Default", "boolean", doc=_api("scheduling.v1.PriorityClass", "globalDefault")),
        AGE_COLUMN,
        Column("PreemptionPolicy", doc=_api("scheduling.v1.PriorityClass", "preemptionPolicy")),
    ),
    lambda o, now: [
        _name(o),
        int(o.get("value") or 0),
        bool(o.get("globalDefault")),
        _age(o, now),
        o.get("preemptionPolicy") or "",
    ],
)


def _subjects(o: dict[str, Any]) -> tuple[str, str, str]:
    users, groups, service_accounts = [], [], []
    for s in o.get("subjects") or []:
        kind = s.get("kind")
        if kind == "ServiceAccount":
            service_accounts.append(f"{s.get('namespace', '')}/{s.get('name', '')}")
        elif kind == "User":
            users.append(s.get("name", ""))
        elif kind == "Group":
            groups.append(s.get("name", ""))
    return ", ".join(users), ", ".join(groups), ", ".join(service_accounts)


def _binding_printer(kind: str) -> Printer:
    label = "roleBinding" if kind == "RoleBinding" else "clusterRoleBinding"
    return Printer(
        (
            NAME_COLUMN,
            Column("Role", doc=_api(f"rbac.v1.{kind}", "roleRef")),
            AGE_COLUMN,
            Column("Users", priority=1, doc=f"Users in the {label}"),
            Column("Groups", priority=1, doc=f"Groups in the {label}"),
            Column("ServiceAccounts", priority=1, doc=f"ServiceAccounts in the {label}"),
        ),
        lambda o, now: [
            _name(o),
            f"{_get(o, 'roleRef', 'kind', default='')}/{_get(o, 'roleRef', 'name', default='')}",
            _age(o, now),
            *_subjects(o),
        ],
    )


_PDB = _simple(
    Column("Min Available", doc="The minimum number of pods that must be available."),
    Column("Max Unavailable", doc="The maximum number of pods that may be unavailable."),
    Column("Allowed Disruptions", "integer", doc="Calculated number of pods that may be disrupted at this time."),
    cells=lambda o, now: [
        "N/A" if _get(o, "spec", "minAvailable") is None else _int_or_string(o["spec"]["minAvailable"]),
        "N/A" if _get(o, "spec", "maxUnavailable") is None else _int_or_string(o["spec"]["maxUnavailable"]),
        _status_int(o, "disruptionsAllowed"),
    ],
)

# ----- autoscaling


def _hpa_v1_as_v2(o: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    spec = o.get("spec") or {}
    if "metrics" in spec or "targetCPUUtilizationPercentage" not in spec:
        return spec.get("metrics") or [], _get(o, "status", "currentMetrics", default=[])
    specs = [
        {
            "type": "Resource",
            "resource": {
                "name": "cpu",
                "target": {"type": "Utilization", "averageUtilization": spec["targetCPUUtilizationPercentage"]},
            },
        }
    ]
    current = _get(o, "status", "currentCPUUtilizationPercentage")
    statuses = (
        []
        if current is None
        else [{"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": current}}}]
    )
    return specs, statuses


def _hpa_targets(specs: list[dict[str, Any]], statuses: list[dict[str, Any]]) -> str:
    if not specs:
        return "<none>"
    shown: list[str] = []
    for i, spec in enumerate(specs):
        status = statuses[i] if i < len(statuses) else {}
        kind = spec.get("type")
        if kind in ("External", "Object", "Pods"):
            key = kind.lower()
            target = _get(spec, key, "target", default={})
            current = _get(status, key, "current")
            if kind != "Pods" and target.get("averageValue") is None:
                now_value = "<unknown>" if current is None else str(current.get("value", "0"))
                shown.append(f"{now_value}/{target.get('value', '0')}")
            else:
                avg = None if current is None else current.get("averageValue")
                suffix = "" if kind == "Pods" else " (avg)"
                now_value = "<unknown>" if avg is None else str(avg)
                shown.append(f"{now_value}/{target.get('averageValue', '0')}{suffix}")
        elif kind in ("Resource", "ContainerResource"):
            key = "resource" if kind == "Resource" else "containerResource"
            name = _get(spec, key, "name", default="")
            target = _get(spec, key, "target", default={})
            current = _get(status, key, "current")
            if target.get("averageValue") is not None:
                avg = None if current is None else current.get("averageValue")
                shown.append(f"{name}: {'<unknown>' if avg is None else avg}/{target['averageValue']}")
            else:
                util = None if current is None else current.get("averageUtilization")
                want = target.get("averageUtilization")
                have = "<unknown>" if util is None else f"{util}%"
                shown.append(f"{name}: {have}/{'<auto>' if want is None else f'{want}%'}")
        else:
            shown.append("<unknown type>")
    limit = 2
    if len(shown) > limit:
        return ", ".join(shown[:limit]) + f" + {len(shown) - limit} more..."
    return ", ".join(shown)


def _hpa_cells(o: dict[str, Any], now: datetime) -> Cells:
    spec = o.get("spec") or {}
    specs, statuses = _hpa_v1_as_v2(o)
    ref = spec.get("scaleTargetRef") or {}
    return [
        _name(o),
        f"{ref.get('kind', '')}/{ref.get('name', '')}",
        _hpa_targets(specs, statuses),
        "<unset>" if spec.get("minReplicas") is None else str(spec["minReplicas"]),
        int(spec.get("maxReplicas") or 0),
        _status_int(o, "currentReplicas"),
        _age(o, now),
    ]


_HPA = Printer(
    (
        NAME_COLUMN,
        Column("Reference", doc=_api("autoscaling.v2.HorizontalPodAutoscalerSpec", "scaleTargetRef")),
        Column("Targets", doc=_api("autoscaling.v2.HorizontalPodAutoscalerSpec", "metrics")),
        Column("MinPods", doc=_api("autoscaling.v2.HorizontalPodAutoscalerSpec", "minReplicas")),
        Column("MaxPods", doc=_api("autoscaling.v2.HorizontalPodAutoscalerSpec", "maxReplicas")),
        Column("Replicas", doc=_api("autoscaling.v2.HorizontalPodAutoscalerStatus", "currentReplicas")),
        AGE_COLUMN,
    ),
    _hpa_cells,
)


def _quota_cells(o: dict[str, Any], now: datetime) -> Cells:
    hard = _get(o, "status", "hard", default={})
    used = _get(o, "status", "used", default={})
    requests, limits = [], []
    for resource in sorted(hard):
        pieces = resource.split(".")
        target = limits if len(pieces) > 1 and pieces[0] == "limits" else requests
        target.append(f"{resource}: {used.get(resource, '0')}/{hard[resource]}")
    return [_name(o), ", ".join(requests), ", ".join(limits), _age(o, now)]


_RESOURCE_QUOTA = Printer(
    (
        NAME_COLUMN,
        Column("Request", doc="Request represents a minimum amount of cpu/memory that a container may consume."),
        Column(
            "Limit",
            doc="Limits control the maximum amount of cpu/memory that a container may use independent of "
            "contention on the node.",
        ),
        AGE_COLUMN,
    ),
    _quota_cells,
)

# ----- storage

_ACCESS_MODES = (
    ("ReadWriteOnce", "RWO"),
    ("ReadOnlyMany", "ROX"),
    ("ReadWriteMany", "RWX"),
    ("ReadWriteOncePod", "RWOP"),
)


def _access_modes(modes: list[str] | None) -> str:
    present = set(modes or [])
    return ",".join(short for full, short in _ACCESS_MODES if full in present)


def _pv_cells(o: dict[str, Any], now: datetime) -> Cells:
    spec = o.get("spec") or {}
    claim = spec.get("claimRef")
    claim_text = f"{claim.get('namespace', '')}/{claim.get('name', '')}" if claim is not None else ""
    phase = "Terminating" if _get(o, "metadata", "deletionTimestamp") else _get(o, "status", "phase", default="")
    storage_class = _get(o, "metadata", "annotations", "volume.beta.kubernetes.io/storage-class")
    if storage_class is None:
        storage_class = spec.get("storageClassName", "")
    return [
        _name(o),
        str(_get(spec, "capacity", "storage", default="0")),
        _access_modes(spec.get("accessModes")),
        spec.get("persistentVolumeReclaimPolicy", ""),
        phase,
        claim_text,
        storage_class,
        spec.get("volumeAttributesClassName") or "<unset>",
        _get(o, "status", "reason", default=""),
        _age(o, now),
        spec.get("volumeMode") or "<unset>",
    ]


_PV = Printer(
    (
        NAME_COLUMN,
        Column("Capacity", doc=_api("core.v1.PersistentVolumeSpec", "capacity")),
        Column("Access Modes", doc=_api("core.v1.PersistentVolumeSpec", "accessModes")),
        Column("Reclaim Policy", doc=_api("core.v1.PersistentVolumeSpec", "persistentVolumeReclaimPolicy")),
        Column("Status", doc=_api("core.v1.PersistentVolumeStatus", "phase")),
        Column("Claim", doc=_api("core.v1.PersistentVolumeSpec", "claimRef")),
        Column("StorageClass", doc="StorageClass of the pv"),
        Column("VolumeAttributesClass", doc="VolumeAttributesClass of the pv"),
        Column("Reason", doc=_api("core.v1.PersistentVolumeStatus", "reason")),
        AGE_COLUMN,
        Column("VolumeMode", priority=1, doc=_api("core.v1.PersistentVolumeSpec", "volumeMode")),
    ),
    _pv_cells,
)


def _pvc_cells(o: dict[str, Any], now: datetime) -> Cells:
    spec = o.get("spec") or {}
    phase = "Terminating" if _get(o, "metadata", "deletionTimestamp") else _get(o, "status", "phase", default="")
    capacity = access = ""
    if spec.get("volumeName"):
        access = _access_modes(_get(o, "status", "accessModes"))
        capacity = str(_get(o, "status", "capacity", "storage", default="0"))
    storage_class = _get(o, "metadata", "annotations", "volume.beta.kubernetes.io/storage-class")
    if storage_class is None:
        storage_class = spec.get("storageClassName") or ""
    return [
        _name(o),
        phase,
        spec.get("volumeName", ""),
        capacity,
        access,
        storage_class,
        spec.get("volumeAttributesClassName") or "<unset>",
        _age(o, now),
        spec.get("volumeMode") or "<unset>",
    ]


_PVC = Printer(
    (
        NAME_COLUMN,
        Column("Status", doc=_api("core.v1.PersistentVolumeClaimStatus", "phase")),
        Column("Volume", doc=_api("core.v1.PersistentVolumeClaimSpec", "volumeName")),
        Column("Capacity", doc=_api("core.v1.PersistentVolumeClaimStatus", "capacity")),
        Column("Access Modes", doc=_api("core.v1.PersistentVolumeClaimStatus", "accessModes")),
        Column("StorageClass", doc="StorageClass of the pvc"),
        Column("VolumeAttributesClass", doc="VolumeAttributesClass of the pvc"),
        AGE_COLUMN,
        Column("VolumeMode", priority=1, doc=_api("core.v1.PersistentVolumeClaimSpec", "volumeMode")),
    ),
    _pvc_cells,
)


def _storage_class_cells(o: dict[str, Any], now: datetime) -> Cells:
    annotations = _get(o, "metadata", "annotations", default={})
    default = "true" in (
        annotations.get("storageclass.kubernetes.io/is-default-class"),
        annotations.get("storageclass.beta.kubernetes.io/is-default-class"),
    )
    return [
        _name(o) + (" (default)" if default else ""),
        o.get("provisioner", ""),
        o.get("reclaimPolicy") or "Delete",
        o.get("volumeBindingMode") or "Immediate",
        bool(o.get("allowVolumeExpansion")),
        _age(o, now),
    ]


_STORAGE_CLASS = Printer(
    (
        NAME_COLUMN,
        Column("Provisioner", doc=_api("storage.v1.StorageClass", "provisioner")),
        Column("ReclaimPolicy", doc=_api("storage.v1.StorageClass", "reclaimPolicy")),
        Column("VolumeBindingMode", doc=_api("storage.v1.StorageClass", "volumeBindingMode")),
        Column("AllowVolumeExpansion", doc=_api("storage.v1.StorageClass", "allowVolumeExpansion")),
        AGE_COLUMN,
    ),
    _storage_class_cells,
)


def _csi_driver_cells(o: dict[str, Any], now: datetime) -> Cells:
    spec = o.get("spec") or {}
    requests = spec.get("tokenRequests")
    return [
        _name(o),
        True if spec.get("attachRequired") is None else bool(spec["attachRequired"]),
        bool(spec.get("podInfoOnMount")),
        bool(spec.get("storageCapacity")),
        "<unset>" if requests is None else ",".join(r.get("audience", "") for r in requests),
        bool(spec.get("requiresRepublish")),
        ",".join(spec.get("volumeLifecycleModes") or []) or "<none>",
        _age(o, now),
    ]


_CSI_DRIVER = Printer(
    (
        NAME_COLUMN,
        Column("AttachRequired", "boolean", doc=_api("storage.v1.CSIDriverSpec", "attachRequired")),
        Column("PodInfoOnMount", "boolean", doc=_api("storage.v1.CSIDriverSpec", "podInfoOnMount")),
        Column("StorageCapacity", "boolean", doc=_api("storage.v1.CSIDriverSpec", "storageCapacity")),
        Column("TokenRequests", doc=_api("storage.v1.CSIDriverSpec", "tokenRequests")),
        Column("RequiresRepublish", "boolean", doc=_api("storage.v1.CSIDriverSpec", "requiresRepublish")),
        Column("Modes", doc=_api("storage.v1.CSIDriverSpec", "volumeLifecycleModes")),
        AGE_COLUMN,
    ),
    _csi_driver_cells,
)
_CSI_NODE = _simple(
    Column("Drivers", "integer", doc="Drivers indicates the number of CSI drivers registered on the node"),
    cells=lambda o, now: [len(_get(o, "spec", "drivers", default=[]))],
)
_VOLUME_ATTACHMENT = _simple(
    Column("Attacher", format="name", doc=_api("storage.v1.VolumeAttachmentSpec", "attacher")),
    Column("PV", doc=_api("storage.v1.VolumeAttachmentSource", "persistentVolumeName")),
    Column("Node", doc=_api("storage.v1.VolumeAttachmentSpec", "nodeName")),
    Column("Attached", "boolean", doc=_api("storage.v1.VolumeAttachmentStatus", "attached")),
    cells=lambda o, now: [
        _get(o, "spec", "attacher", default=""),
        _get(o, "spec", "source", "persistentVolumeName", default=""),
        _get(o, "spec", "nodeName", default=""),
        bool(_get(o, "status", "attached")),
    ],
)

# ----- certificates and the aggregator


def _csr_condition(o: dict[str, Any]) -> str:
    kinds = {c.get("type") for c in _get(o, "status", "conditions", default=[])}
    text = "Denied" if "Denied" in kinds else "Approved" if "Approved" in kinds else "Pending"
    if "Failed" in kinds:
        text += ",Failed"
    if _get(o, "status", "certificate"):
        text += ",Issued"
    return text


def _csr_cells(o: dict[str, Any], now: datetime) -> Cells:
    spec = o.get("spec") or {}
    seconds = spec.get("expirationSeconds")
    return [
        _name(o),
        _age(o, now),
        spec.get("signerName") or "<none>",
        spec.get("username", ""),
        "<none>" if seconds is None else human_duration(timedelta(seconds=int(seconds))),
        _csr_condition(o),
    ]


_CSR = Printer(
    (
        NAME_COLUMN,
        AGE_COLUMN,
        Column("SignerName", doc=_api("certificates.v1.CertificateSigningRequestSpec", "signerName")),
        Column("Requestor", doc=_api("certificates.v1.CertificateSigningRequestSpec", "request")),
        Column("RequestedDuration", doc=_api("certificates.v1.CertificateSigningRequestSpec", "expirationSeconds")),
        Column("Condition", doc=_api("certificates.v1.CertificateSigningRequestStatus", "conditions")),
    ),
    _csr_cells,
)


def _api_service_cells(o: dict[str, Any], now: datetime) -> Cells:
    service = _get(o, "spec", "service")
    where = "Local" if service is None else f"{service.get('namespace', '')}/{service.get('name', '')}"
    available = "Unknown"
    c = _condition(_get(o, "status", "conditions"), "Available")
    if c is not None:
        if c.get("status") == "True" or not c.get("reason"):
            available = c.get("status", "")
        else:
            available = f"{c.get('status', '')} ({c['reason']})"
    return [_name(o), where, available, _age(o, now)]


_API_SERVICE = Printer(
    (
        NAME_COLUMN,
        Column("Service", doc="The reference to the service that hosts this API endpoint."),
        Column("Available", doc="Whether this service is available."),
        AGE_COLUMN,
    ),
    _api_service_cells,
)

# ---------------------------------------------------------------------------------------------

PRINTERS: dict[tuple[str, str], Printer] = {
    ("", "pods"): _POD,
    ("", "podtemplates"): _POD_TEMPLATE,
    ("", "nodes"): _NODE,
    ("", "services"): _SERVICE,
    ("", "endpoints"): _ENDPOINTS,
    ("", "events"): _EVENT,
    ("", "namespaces"): _NAMESPACE,
    ("", "secrets"): _SECRET,
    ("", "configmaps"): _CONFIG_MAP,
    ("", "serviceaccounts"): _SERVICE_ACCOUNT,
    ("", "persistentvolumes"): _PV,
    ("", "persistentvolumeclaims"): _PVC,
    ("", "replicationcontrollers"): _REPLICATION_CONTROLLER,
    ("", "resourcequotas"): _RESOURCE_QUOTA,
    ("apps", "deployments"): _DEPLOYMENT,
    ("apps", "replicasets"): _REPLICA_SET,
    ("apps", "daemonsets"): _DAEMON_SET,
    ("apps", "statefulsets"): _STATEFUL_SET,
    ("apps", "controllerrevisions"): _CONTROLLER_REVISION,
    ("batch", "jobs"): _JOB,
    ("batch", "cronjobs"): _CRON_JOB,
    ("autoscaling", "horizontalpodautoscalers"): _HPA,
    ("policy", "poddisruptionbudgets"): _PDB,
    ("discovery.k8s.io", "endpointslices"): _ENDPOINT_SLICE,
    ("events.k8s.io", "events"): _EVENTS_K8S_IO_EVENT,
    ("networking.k8s.io", "ingresses"): _INGRESS,
    ("networking.k8s.io", "ingressclasses"): _INGRESS_CLASS,
    ("networking.k8s.io", "networkpolicies"): _NETWORK_POLICY,
    ("coordination.k8s.io", "leases"): _LEASE,
    ("rbac.authorization.k8s.io", "rolebindings"): _binding_printer("RoleBinding"),
    ("rbac.authorization.k8s.io", "clusterrolebindings"): _binding_printer("ClusterRoleBinding"),
    ("scheduling.k8s.io", "priorityclasses"): _PRIORITY_CLASS,
    ("storage.k8s.io", "storageclasses"): _STORAGE_CLASS,
    ("storage.k8s.io", "csidrivers"): _CSI_DRIVER,
    ("storage.k8s.io", "csinodes"): _CSI_NODE,
    ("storage.k8s.io", "volumeattachments"): _VOLUME_ATTACHMENT,
    ("node.k8s.io", "runtimeclasses"): _RUNTIME_CLASS,
    ("admissionregistration.k8s.io", "mutatingwebhookconfigurations"): _MUTATING_WEBHOOK,
    ("admissionregistration.k8s.io", "validatingwebhookconfigurations"): _VALIDATING_WEBHOOK,
    ("admissionregistration.k8s.io", "validatingadmissionpolicies"): _VALIDATING_ADMISSION_POLICY,
    ("admissionregistration.k8s.io", "validatingadmissionpolicybindings"): _VALIDATING_ADMISSION_POLICY_BINDING,
    ("certificates.k8s.io", "certificatesigningrequests"): _CSR,
    ("apiregistration.k8s.io", "apiservices"): _API_SERVICE,
}


@functools.cache
def printer_columns(group: str, resource: str) -> list[dict[str, Any]] | None:
    """The resolved column definitions of a built-in printer (cached), or None."""
    printer = PRINTERS.get((group, resource))
    return None if printer is None else column_definitions(printer.columns)
