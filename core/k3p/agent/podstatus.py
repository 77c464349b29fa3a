"""A pod's status from what the runtime reports: phase, conditions, container statuses, IPs.

Pure functions that follow kube's kubelet (``getPhase``, the container status conversion,
and the condition generators of its status package): container statuses sorted by name
(init containers in spec order), the newest instance's state with the previous one as
``lastState``, a waiting reason for a container that will be restarted (CrashLoopBackOff,
ErrImagePull, ...), and a phase that never leaves Succeeded or Failed once the API shows it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from k3p.agent import podspec
from k3p.client.objects import format_unix_time
from k3p.protocols.runtime import ANNOTATION_RESTART_COUNT, ContainerState, ContainerStatus, SandboxState, SandboxStatus
from k3p.quantity import parse_quantity

Obj = dict[str, Any]

TERMINAL_PHASES = ("Succeeded", "Failed")
#: the pod conditions the kubelet owns (others, e.g. DisruptionTarget or readiness gates, are kept)
KUBELET_CONDITIONS = ("PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady", "PodScheduled")
#: the status fields the kubelet writes (the rest belongs to others, e.g. nominatedNodeName)
KUBELET_FIELDS = ("phase", "conditions", "containerStatuses", "initContainerStatuses", "podIP", "podIPs", "hostIP",
                  "hostIPs", "startTime", "qosClass")


def go_duration(seconds: float) -> str:
    """A whole-second duration the way Go prints it: 10s, 1m20s, 5m0s."""
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    m, s = divmod(s, 60)
    if m < 60:
        return f"{m}m{s}s"
    h, m = divmod(m, 60)
    return f"{h}h{m}m{s}s"


def restart_count(c: ContainerStatus) -> int:
    try:
        return int(c.annotations.get(ANNOTATION_RESTART_COUNT, c.attempt))
    except ValueError:
        return c.attempt


def newest_first(instances: Iterable[ContainerStatus]) -> list[ContainerStatus]:
    return sorted(instances, key=lambda c: (restart_count(c), c.created_at), reverse=True)


def qos_class(spec: Mapping[str, Any]) -> str:
    """Guaranteed, Burstable or BestEffort from the containers' cpu/memory requests and limits."""
    containers = [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]
    any_set, guaranteed = False, True
    for c in containers:
        res = c.get("resources") or {}
        req, lim = res.get("requests") or {}, res.get("limits") or {}
        if any(r in req or r in lim for r in ("cpu", "memory")):
            any_set = True
        for r in ("cpu", "memory"):
            if r not in lim or (r in req and parse_quantity(req[r]) != parse_quantity(lim[r])):
                guaranteed = False
    if not any_set:
        return "BestEffort"
    return "Guaranteed" if guaranteed else "Burstable"


@dataclass
class ProbeState:
    """What the probes say about one container instance."""

    started: bool = True
    ready: bool = True


@dataclass
class PodView:
    """Everything the status is computed from (runtime facts and the kubelet's own knowledge)."""

    sandboxes: list[SandboxStatus] = field(default_factory=list)
    containers: list[ContainerStatus] = field(default_factory=list)
    #: container ID -> probe results (absent: no probes, i.e. started and ready once running)
    probes: Mapping[str, ProbeState] = field(default_factory=dict)
    #: container name -> (waiting reason, message) for a container that will be (re)started
    waiting: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    host_ips: list[str] = field(default_factory=list)
    runtime_name: str = "containerd"
    #: the pod is being deleted or has finished: containers will not be restarted
    terminal: bool = False
    #: reads a container's termination message: (container name, restart count) -> text
    termination_message: Callable[[str, int], str] | None = None


def latest_sandbox(sandboxes: Iterable[SandboxStatus]) -> SandboxStatus | None:
    found = sorted(sandboxes, key=lambda s: (s.attempt, s.created_at), reverse=True)
    return found[0] if found else None


def _state_of(c: ContainerStatus, runtime_name: str, message: str = "") -> Obj:
    cid = f"{runtime_name}://{c.id}"
    if c.state == ContainerState.RUNNING:
        return {"running": {"startedAt": format_unix_time(c.started_at)}}
    if c.state == ContainerState.EXITED:
        term: Obj = {"exitCode": c.exit_code, "reason": c.reason or ("Completed" if c.exit_code == 0 else "Error"),
                     "startedAt": format_unix_time(c.started_at) if c.started_at else None,
                     "finishedAt": format_unix_time(c.finished_at) if c.finished_at else None, "containerID": cid}
        text = c.message or message
        if text:
            term["message"] = text
        return {"terminated": term}
    return {"waiting": {}}


def container_statuses(pod: Mapping[str, Any], specs: list[Obj], view: PodView, old: list[Obj] | None,
                       has_init: bool, is_init: bool) -> list[Obj]:
    """The containerStatuses (or initContainerStatuses) of ``specs``."""
    old_by_name = {s.get("name"): s for s in old or []}
    by_name: dict[str, list[ContainerStatus]] = {}
    for c in view.containers:
        by_name.setdefault(c.name, []).append(c)
    default_reason = "PodInitializing" if has_init else "ContainerCreating"
    out: list[Obj] = []
    for spec in specs:
        name = spec.get("name", "")
        status: Obj = {"name": name, "state": {"waiting": {"reason": default_reason}}, "lastState": {},
                       "ready": False, "restartCount": 0, "image": spec.get("image", ""), "imageID": "",
                       "started": False}
        prev = old_by_name.get(name)
        instances = newest_first(by_name.get(name, []))
        if prev is not None and not instances:
            # nothing in the runtime (e.g. after a sandbox was removed): keep what was known
            if "terminated" in (prev.get("state") or {}):
                status = {**prev}
            else:
                status["restartCount"] = prev.get("restartCount", 0)
                status["lastState"] = prev.get("lastState") or {}
        if instances:
            cur = instances[0]
            count = restart_count(cur)
            message = ""
            if cur.state == ContainerState.EXITED and view.termination_message:
                message = view.termination_message(name, count)
            status.update({"state": _state_of(cur, view.runtime_name, message), "restartCount": count,
                           "imageID": cur.image_ref or "", "containerID": f"{view.runtime_name}://{cur.id}"})
            if len(instances) > 1:
                last = instances[1]
                last_message = view.termination_message(name, restart_count(last)) \
                    if view.termination_message and last.state == ContainerState.EXITED else ""
                status["lastState"] = _state_of(last, view.runtime_name, last_message)
            probes = view.probes.get(cur.id, ProbeState())
            running = cur.state == ContainerState.RUNNING
            if is_init and not podspec.is_restartable_init(spec):
                status["started"] = running
                status["ready"] = cur.state == ContainerState.EXITED and cur.exit_code == 0
            else:
                status["started"] = running and probes.started
                status["ready"] = running and probes.started and probes.ready and not view.terminal
        waiting = view.waiting.get(name)
        if waiting and not view.terminal:
            if "terminated" in status["state"]:
                status["lastState"] = status["state"]
            reason, message = waiting
            status["state"] = {"waiting": {"reason": reason, **({"message": message} if message else {})}}
        mounts = [{"name": vm.get("name"), "mountPath": vm.get("mountPath"),
                   **({"readOnly": True, "recursiveReadOnly": "Disabled"} if vm.get("readOnly") else {})}
                  for vm in spec.get("volumeMounts") or []]
        if mounts:
            status["volumeMounts"] = mounts
        out.append(status)
    if not is_init:
        out.sort(key=lambda s: s["name"])
    return out


def _state_kind(status: Obj) -> str:
    state = status.get("state") or {}
    return next(iter(state), "")


def _has_terminated_last(status: Obj) -> bool:
    return "terminated" in (status.get("lastState") or {})


def any_regular_started(spec: Mapping[str, Any], statuses: list[Obj]) -> bool:
    names = {c.get("name") for c in spec.get("containers") or []}
    return any(s.get("name") in names and s.get("started") for s in statuses)


def pod_phase(pod: Mapping[str, Any], init_statuses: list[Obj], statuses: list[Obj], terminal: bool) -> str:
    """kube's getPhase: Pending, Running, Succeeded or Failed from the container statuses."""
    spec = podspec.spec(pod)
    init_by_name = {s["name"]: s for s in init_statuses}
    by_name = {s["name"]: s for s in statuses}
    pending_init = failed_init = 0
    unknown = running = waiting = stopped = succeeded = 0
    for c in spec.get("initContainers") or []:
        s = init_by_name.get(c.get("name"))
        if podspec.is_restartable_init(c):
            if s is None:
                unknown += 1
                continue
            kind = _state_kind(s)
            if kind == "running":
                if not s.get("started"):
                    pending_init += 1
                running += 1
            elif kind == "waiting" and not _has_terminated_last(s):
                pending_init += 1
                waiting += 1
            continue
        if s is None:
            pending_init += 1
            continue
        kind = _state_kind(s)
        if kind == "terminated":
            if s["state"]["terminated"].get("exitCode") != 0:
                failed_init += 1
        elif kind == "waiting" and _has_terminated_last(s):
            if s["lastState"]["terminated"].get("exitCode") != 0:
                failed_init += 1
        else:
            pending_init += 1
    for c in spec.get("containers") or []:
        s = by_name.get(c.get("name"))
        if s is None:
            unknown += 1
            continue
        kind = _state_kind(s)
        if kind == "running":
            running += 1
        elif kind == "terminated":
            stopped += 1
            if s["state"]["terminated"].get("exitCode") == 0:
                succeeded += 1
        elif kind == "waiting":
            if _has_terminated_last(s):
                stopped += 1
            else:
                waiting += 1
        else:
            unknown += 1
    policy = spec.get("restartPolicy") or "Always"
    if failed_init > 0 and policy == "Never":
        return "Failed"
    if (pending_init > 0 and not any_regular_started(spec, statuses)) or waiting > 0:
        return "Pending"
    if running > 0 and unknown == 0:
        return "Running"
    if running == 0 and stopped > 0 and unknown == 0:
        if terminal:
            return "Succeeded" if stopped == succeeded else "Failed"
        if policy == "Always":
            return "Running"
        if stopped == succeeded:
            return "Succeeded"
        return "Failed" if policy == "Never" else "Running"
    return "Pending"


def _names(names: list[str]) -> str:
    return "[" + " ".join(names) + "]"  # how Go prints a []string


def pod_conditions(pod: Mapping[str, Any], phase: str, init_statuses: list[Obj], statuses: list[Obj],
                   sandbox_ready: bool, foreign: list[Obj]) -> list[Obj]:
    """The kubelet's pod conditions (without times): ReadyToStartContainers, Initialized, Ready, ..."""
    spec = podspec.spec(pod)
    all_statuses = [*init_statuses, *statuses]
    by_name = {s["name"]: s for s in all_statuses}
    conditions: list[Obj] = [{"type": "PodReadyToStartContainers", "status": "True" if sandbox_ready else "False"}]

    # Initialized
    unknown, incomplete = [], []
    for c in spec.get("initContainers") or []:
        s = by_name.get(c.get("name"))
        if s is None:
            unknown.append(c["name"])
        elif (podspec.is_restartable_init(c) and not s.get("started")) or \
                (not podspec.is_restartable_init(c) and not s.get("ready")):
            incomplete.append(c["name"])
    if phase == "Succeeded" and not unknown:
        init = {"type": "Initialized", "status": "True", "reason": "PodCompleted"}
    elif any_regular_started(spec, statuses):
        init = {"type": "Initialized", "status": "True"}
    elif unknown or incomplete:
        parts = []
        if unknown:
            parts.append(f"containers with unknown status: {_names(unknown)}")
        if incomplete:
            parts.append(f"containers with incomplete status: {_names(incomplete)}")
        init = {"type": "Initialized", "status": "False", "reason": "ContainersNotInitialized",
                "message": ", ".join(parts)}
    else:
        init = {"type": "Initialized", "status": "True"}
    conditions.append(init)

    # ContainersReady and Ready
    unknown, unready = [], []
    for c in [*(c for c in spec.get("initContainers") or [] if podspec.is_restartable_init(c)),
              *(spec.get("containers") or [])]:
        s = by_name.get(c.get("name"))
        if s is None:
            unknown.append(c["name"])
        elif not s.get("ready"):
            unready.append(c["name"])
    if phase in TERMINAL_PHASES and (phase == "Failed" or not unknown):
        reason = "PodCompleted" if phase == "Succeeded" else "PodFailed"
        containers_ready = {"type": "ContainersReady", "status": "False", "reason": reason}
    elif unknown or unready:
        parts = []
        if unknown:
            parts.append(f"containers with unknown status: {_names(unknown)}")
        if unready:
            parts.append(f"containers with unready status: {_names(unready)}")
        containers_ready = {"type": "ContainersReady", "status": "False", "reason": "ContainersNotReady",
                            "message": ", ".join(parts)}
    else:
        containers_ready = {"type": "ContainersReady", "status": "True"}
    if containers_ready["status"] != "True":
        ready = {**containers_ready, "type": "Ready"}
    else:
        gates = []
        current = {c.get("type"): c for c in foreign}
        for gate in spec.get("readinessGates") or []:
            ctype = gate.get("conditionType", "")
            cond = current.get(ctype)
            if cond is None:
                gates.append(f'corresponding condition of pod readiness gate "{ctype}" does not exist.')
            elif cond.get("status") != "True":
                gates.append(f'the status of pod readiness gate "{ctype}" is not "True", but {cond.get("status")}')
        ready = {"type": "Ready", "status": "True"} if not gates else \
            {"type": "Ready", "status": "False", "reason": "ReadinessGatesNotReady", "message": ", ".join(gates)}
    conditions += [ready, containers_ready, {"type": "PodScheduled", "status": "True"}]
    return conditions


def with_transition_times(conditions: list[Obj], old: list[Obj], now: float) -> list[Obj]:
    """Conditions with lastTransitionTime kept from ``old`` when the status did not change."""
    old_by_type = {c.get("type"): c for c in old or []}
    out = []
    for c in conditions:
        prev = old_by_type.get(c["type"])
        since = prev.get("lastTransitionTime") if prev and prev.get("status") == c["status"] else None
        out.append({**c, "lastProbeTime": None, "lastTransitionTime": since or format_unix_time(now)})
    return out


def generate(pod: Mapping[str, Any], view: PodView, now: float) -> Obj:
    """The status the kubelet writes for ``pod`` (its own fields; see KUBELET_FIELDS)."""
    spec = podspec.spec(pod)
    old = pod.get("status") or {}
    has_init = bool(spec.get("initContainers"))
    init_statuses = container_statuses(pod, spec.get("initContainers") or [], view,
                                       old.get("initContainerStatuses"), has_init, True)
    statuses = container_statuses(pod, spec.get("containers") or [], view, old.get("containerStatuses"),
                                  has_init, False)
    phase = pod_phase(pod, init_statuses, statuses, view.terminal)
    if old.get("phase") in TERMINAL_PHASES:
        phase = old["phase"]  # pods never leave a terminal phase
    sandbox = latest_sandbox(view.sandboxes)
    sandbox_ready = sandbox is not None and sandbox.state == SandboxState.READY
    foreign = [c for c in old.get("conditions") or [] if c.get("type") not in KUBELET_CONDITIONS]
    conditions = pod_conditions(pod, phase, init_statuses, statuses, sandbox_ready, foreign)
    status: Obj = {
        "phase": phase,
        "conditions": [*foreign, *with_transition_times(conditions, old.get("conditions") or [], now)],
        "containerStatuses": statuses,
        "qosClass": old.get("qosClass") or qos_class(spec),
        "startTime": old.get("startTime") or format_unix_time(now),
    }
    if init_statuses:
        status["initContainerStatuses"] = init_statuses
    if view.host_ips:
        status["hostIP"] = view.host_ips[0]
        status["hostIPs"] = [{"ip": ip} for ip in view.host_ips]
    ips: list[str] = []
    if spec.get("hostNetwork"):
        ips = list(view.host_ips)
    elif sandbox is not None and sandbox.ip:
        ips = [sandbox.ip, *sandbox.additional_ips]
    if not ips and old.get("podIP"):
        ips = [p.get("ip") for p in old.get("podIPs") or [{"ip": old["podIP"]}]]  # IPs stay once assigned
    if ips:
        status["podIP"] = ips[0]
        status["podIPs"] = [{"ip": ip} for ip in ips]
    return status


def owned(status: Mapping[str, Any]) -> Obj:
    """The kubelet-owned part of a status (for comparing with what the API shows)."""
    return {k: status[k] for k in KUBELET_FIELDS if k in status}


def merged_conditions(old: list[Obj], new: list[Obj]) -> list[Obj]:
    """Conditions for a strategic merge (merged by type): keys a condition lost are sent as null."""
    old_by_type = {c.get("type"): c for c in old}
    out = []
    for c in new:
        prev = old_by_type.get(c.get("type")) or {}
        out.append({**{k: None for k in prev if k not in c}, **c})
    return out


def status_patch(old: Mapping[str, Any], new: Mapping[str, Any]) -> Obj:
    """A strategic-merge patch body turning ``old`` status into ``new`` for the kubelet's fields."""
    patch: Obj = {}
    for key in KUBELET_FIELDS:
        if key in new:
            if old.get(key) != new[key]:
                value = new[key]
                if key in ("podIPs", "hostIPs"):
                    value = [{"$patch": "replace"}, *value]  # merge lists by ip: replace them whole
                elif key == "conditions":
                    value = merged_conditions(old.get(key) or [], value)
                patch[key] = value
        elif key in old:
            patch[key] = None
    return patch
