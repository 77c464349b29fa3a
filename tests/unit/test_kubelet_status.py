"""Pod status from runtime facts: phase, container statuses, conditions, the status patch."""

from __future__ import annotations

from k3p.agent import podstatus
from k3p.agent.podstatus import PodView, ProbeState
from k3p.client.objects import format_unix_time
from k3p.protocols.runtime import (
    ANNOTATION_RESTART_COUNT,
    ContainerState,
    ContainerStatus,
    SandboxState,
    SandboxStatus,
)

T0 = 1_700_000_000.0


def pod(restart="Always", containers=("app",), inits=(), sidecars=(), status=None, **spec) -> dict:
    init = [{"name": n, "image": "busybox"} for n in inits] + \
        [{"name": n, "image": "busybox", "restartPolicy": "Always"} for n in sidecars]
    body = {"restartPolicy": restart, "containers": [{"name": n, "image": "busybox"} for n in containers], **spec}
    if init:
        body["initContainers"] = init
    return {"metadata": {"name": "p", "namespace": "default", "uid": "u"}, "spec": body, "status": status or {}}


def ctr(name, state, attempt=0, exit_code=0, cid=None, started=T0, finished=0.0, reason="") -> ContainerStatus:
    finished = finished or (T0 + 5 if state == ContainerState.EXITED else 0)
    return ContainerStatus(id=cid or f"{name}-{attempt}", sandbox_id="sb", name=name, state=state, image="busybox",
                           image_ref="docker.io/library/busybox@sha256:abc", created_at=T0 + attempt,
                           started_at=started, finished_at=finished,
                           exit_code=exit_code, reason=reason, attempt=attempt,
                           annotations={ANNOTATION_RESTART_COUNT: str(attempt)})


SANDBOX = SandboxStatus(id="sb", state=SandboxState.READY, ip="10.42.0.9", created_at=T0)
RUNNING, EXITED, CREATED = ContainerState.RUNNING, ContainerState.EXITED, ContainerState.CREATED


def view(*containers, **kw) -> PodView:
    kw.setdefault("sandboxes", [SANDBOX])
    kw.setdefault("host_ips", ["192.168.1.5"])
    return PodView(containers=list(containers), **kw)


def conditions(status) -> dict:
    return {c["type"]: c for c in status["conditions"]}


def test_running_pod() -> None:
    status = podstatus.generate(pod(), view(ctr("app", RUNNING)), T0 + 10)
    assert status["phase"] == "Running"
    assert status["podIP"] == "10.42.0.9" and status["podIPs"] == [{"ip": "10.42.0.9"}]
    assert status["hostIP"] == "192.168.1.5" and status["hostIPs"] == [{"ip": "192.168.1.5"}]
    assert status["qosClass"] == "BestEffort" and status["startTime"] == format_unix_time(T0 + 10)
    (cs,) = status["containerStatuses"]
    assert cs["state"] == {"running": {"startedAt": format_unix_time(T0)}}
    assert cs["ready"] and cs["started"] and cs["restartCount"] == 0
    assert cs["containerID"] == "containerd://app-0" and cs["imageID"].endswith("@sha256:abc")
    conds = conditions(status)
    assert [c["type"] for c in status["conditions"]] == ["PodReadyToStartContainers", "Initialized", "Ready",
                                                          "ContainersReady", "PodScheduled"]
    assert all(c["status"] == "True" for c in conds.values())
    assert all(c["lastTransitionTime"] == format_unix_time(T0 + 10) and c["lastProbeTime"] is None
               for c in conds.values())


def test_pending_before_anything_runs() -> None:
    status = podstatus.generate(pod(containers=("b", "a")), view(sandboxes=[]), T0)
    assert status["phase"] == "Pending"
    assert [s["name"] for s in status["containerStatuses"]] == ["a", "b"]  # sorted by name, as kube does
    assert status["containerStatuses"][0]["state"] == {"waiting": {"reason": "ContainerCreating"}}
    conds = conditions(status)
    assert conds["PodReadyToStartContainers"]["status"] == "False"
    assert conds["Ready"] == {**conds["Ready"], "status": "False", "reason": "ContainersNotReady",
                              "message": "containers with unready status: [b a]"}
    assert "podIP" not in status


def test_readiness_probe_gates_ready() -> None:
    c = ctr("app", RUNNING)
    status = podstatus.generate(pod(), view(c, probes={c.id: ProbeState(started=True, ready=False)}), T0)
    assert status["phase"] == "Running"
    assert not status["containerStatuses"][0]["ready"] and status["containerStatuses"][0]["started"]
    assert conditions(status)["ContainersReady"]["status"] == "False"
    not_started = podstatus.generate(pod(), view(c, probes={c.id: ProbeState(started=False, ready=False)}), T0)
    assert not not_started["containerStatuses"][0]["started"]


def test_crash_loop_shows_waiting_with_last_state() -> None:
    older = ctr("app", EXITED, attempt=1, exit_code=2)
    newest = ctr("app", EXITED, attempt=2, exit_code=1)
    msg = "back-off 20s restarting failed container=app pod=p_default(u)"
    status = podstatus.generate(pod(), view(older, newest, waiting={"app": ("CrashLoopBackOff", msg)}), T0)
    (cs,) = status["containerStatuses"]
    assert cs["state"] == {"waiting": {"reason": "CrashLoopBackOff", "message": msg}}
    assert cs["lastState"]["terminated"]["exitCode"] == 1 and cs["restartCount"] == 2
    assert cs["lastState"]["terminated"]["reason"] == "Error"
    assert status["phase"] == "Running"  # Always: it will be restarted


def test_last_state_is_the_previous_instance() -> None:
    status = podstatus.generate(pod(), view(ctr("app", EXITED, attempt=0, exit_code=137, reason="OOMKilled"),
                                            ctr("app", RUNNING, attempt=1)), T0)
    (cs,) = status["containerStatuses"]
    assert "running" in cs["state"] and cs["restartCount"] == 1
    assert cs["lastState"]["terminated"] == {**cs["lastState"]["terminated"], "exitCode": 137, "reason": "OOMKilled",
                                             "containerID": "containerd://app-0"}


def test_never_and_onfailure_phases() -> None:
    failed = podstatus.generate(pod("Never"), view(ctr("app", EXITED, exit_code=3)), T0)
    assert failed["phase"] == "Failed"
    term = failed["containerStatuses"][0]["state"]["terminated"]
    assert term["exitCode"] == 3 and term["reason"] == "Error"
    assert conditions(failed)["Ready"]["reason"] == "PodFailed"
    done = podstatus.generate(pod("OnFailure"), view(ctr("app", EXITED, exit_code=0)), T0)
    assert done["phase"] == "Succeeded"
    assert done["containerStatuses"][0]["state"]["terminated"]["reason"] == "Completed"
    assert conditions(done)["Ready"]["reason"] == "PodCompleted"
    assert conditions(done)["Initialized"] == {**conditions(done)["Initialized"], "reason": "PodCompleted"}
    retrying = podstatus.generate(pod("OnFailure"), view(ctr("app", EXITED, exit_code=1)), T0)
    assert retrying["phase"] == "Running"


def test_terminal_when_deleted() -> None:
    v = view(ctr("app", EXITED, exit_code=0), terminal=True)
    assert podstatus.generate(pod("Always"), v, T0)["phase"] == "Succeeded"
    v = view(ctr("app", EXITED, exit_code=137), terminal=True)
    assert podstatus.generate(pod("Always"), v, T0)["phase"] == "Failed"


def test_terminal_phase_is_never_left() -> None:
    status = podstatus.generate(pod(status={"phase": "Failed"}), view(ctr("app", RUNNING)), T0)
    assert status["phase"] == "Failed"


def test_init_containers() -> None:
    p = pod(inits=("one", "two"))
    status = podstatus.generate(p, view(ctr("one", EXITED, exit_code=0), ctr("two", RUNNING)), T0)
    assert status["phase"] == "Pending"
    one, two = status["initContainerStatuses"]
    assert one["ready"] and one["state"]["terminated"]["reason"] == "Completed"
    assert two["started"] and not two["ready"]
    assert status["containerStatuses"][0]["state"] == {"waiting": {"reason": "PodInitializing"}}
    init = conditions(status)["Initialized"]
    assert init["status"] == "False" and init["reason"] == "ContainersNotInitialized"
    assert init["message"] == "containers with incomplete status: [two]"

    done = podstatus.generate(p, view(ctr("one", EXITED), ctr("two", EXITED), ctr("app", RUNNING)), T0)
    assert done["phase"] == "Running" and conditions(done)["Initialized"]["status"] == "True"

    failed = podstatus.generate(pod("Never", inits=("one",)), view(ctr("one", EXITED, exit_code=1)), T0)
    assert failed["phase"] == "Failed"
    backoff = podstatus.generate(pod("Always", inits=("one",)),
                                 view(ctr("one", EXITED, exit_code=1), waiting={"one": ("CrashLoopBackOff", "x")}), T0)
    assert backoff["phase"] == "Pending"
    assert backoff["initContainerStatuses"][0]["state"]["waiting"]["reason"] == "CrashLoopBackOff"


def test_sidecar_counts_for_readiness_and_initialization() -> None:
    p = pod(sidecars=("proxy",))
    starting = podstatus.generate(p, view(ctr("proxy", RUNNING, cid="px"),
                                          probes={"px": ProbeState(started=False, ready=False)}), T0)
    assert starting["phase"] == "Pending" and conditions(starting)["Initialized"]["status"] == "False"
    running = podstatus.generate(p, view(ctr("proxy", RUNNING), ctr("app", RUNNING)), T0)
    assert running["phase"] == "Running" and conditions(running)["Ready"]["status"] == "True"
    assert running["initContainerStatuses"][0]["ready"]


def test_readiness_gates() -> None:
    p = pod(readinessGates=[{"conditionType": "example.com/lb"}])
    status = podstatus.generate(p, view(ctr("app", RUNNING)), T0)
    ready = conditions(status)["Ready"]
    assert ready["reason"] == "ReadinessGatesNotReady"
    assert ready["message"] == 'corresponding condition of pod readiness gate "example.com/lb" does not exist.'
    assert conditions(status)["ContainersReady"]["status"] == "True"
    p["status"] = {"conditions": [{"type": "example.com/lb", "status": "True"}]}
    status = podstatus.generate(p, view(ctr("app", RUNNING)), T0)
    assert conditions(status)["Ready"]["status"] == "True"
    assert conditions(status)["example.com/lb"]["status"] == "True"  # kept: not the kubelet's


def test_transition_times_are_kept_while_the_status_holds() -> None:
    first = podstatus.generate(pod(), view(ctr("app", RUNNING)), T0)
    again = podstatus.generate(pod(status=first), view(ctr("app", RUNNING)), T0 + 100)
    assert again == first
    stopped = podstatus.generate(pod(status=first), view(ctr("app", EXITED, exit_code=1)), T0 + 200)
    assert conditions(stopped)["Ready"]["lastTransitionTime"] == format_unix_time(T0 + 200)
    assert conditions(stopped)["PodScheduled"]["lastTransitionTime"] == format_unix_time(T0)


def test_pod_ip_stays_after_the_sandbox_is_gone() -> None:
    first = podstatus.generate(pod(), view(ctr("app", RUNNING)), T0)
    later = podstatus.generate(pod(status=first), view(ctr("app", EXITED), sandboxes=[]), T0)
    assert later["podIP"] == "10.42.0.9"
    host = podstatus.generate(pod(hostNetwork=True), view(ctr("app", RUNNING), sandboxes=[]), T0)
    assert host["podIP"] == "192.168.1.5"


def test_qos_class() -> None:
    assert podstatus.qos_class({"containers": [{"resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}]}) \
        == "Guaranteed"
    assert podstatus.qos_class({"containers": [{"resources": {"requests": {"cpu": "1"}}}]}) == "Burstable"
    assert podstatus.qos_class({"containers": [{}]}) == "BestEffort"


def test_status_patch_nulls_what_went_away() -> None:
    old = {"phase": "Pending", "podIP": "1.2.3.4", "podIPs": [{"ip": "1.2.3.4"}], "nominatedNodeName": "x",
           "conditions": [{"type": "Ready", "status": "False", "reason": "ContainersNotReady", "message": "m"}]}
    new = {"phase": "Running", "podIPs": [{"ip": "5.6.7.8"}], "podIP": "5.6.7.8",
           "conditions": [{"type": "Ready", "status": "True"}]}
    patch = podstatus.status_patch(old, new)
    assert patch["phase"] == "Running"
    assert patch["podIPs"] == [{"$patch": "replace"}, {"ip": "5.6.7.8"}]
    assert patch["conditions"] == [{"type": "Ready", "status": "True", "reason": None, "message": None}]
    assert "nominatedNodeName" not in patch  # not the kubelet's field
    assert podstatus.status_patch(new, {**new, "phase": "Running"}) == {}


def test_go_duration() -> None:
    assert [podstatus.go_duration(s) for s in (10, 20, 80, 160, 300, 3700)] == \
        ["10s", "20s", "1m20s", "2m40s", "5m0s", "1h1m40s"]


def test_termination_message_is_read_for_exited_containers() -> None:
    messages = {("app", 0): "disk full"}
    v = view(ctr("app", EXITED, exit_code=1), termination_message=lambda name, n: messages.get((name, n), ""))
    status = podstatus.generate(pod("Never"), v, T0)
    assert status["containerStatuses"][0]["state"]["terminated"]["message"] == "disk full"
