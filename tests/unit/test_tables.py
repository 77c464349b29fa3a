"""Server-side Table printing: kube v1.32 column sets, cell computations and Table assembly."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from k3p.apiserver.printers import human_duration
from k3p.apiserver.schemas import definitions
from k3p.apiserver.tables import table_version_from_accept, to_table
from k3p.client.objects import format_time

NOW = datetime(2024, 3, 1, 12, 0, 0, tzinfo=UTC)


def ago(seconds: float) -> str:
    """An RFC 3339 timestamp ``seconds`` before NOW."""
    return format_time(NOW - timedelta(seconds=seconds))


def meta(name: str, age: float = 300, **extra: Any) -> dict[str, Any]:
    return {"name": name, "namespace": "default", "creationTimestamp": ago(age), **extra}


def cells(group: str, resource: str, obj: dict[str, Any], **kwargs: Any) -> list[Any]:
    return to_table(group, resource, [obj], now=NOW, **kwargs)["rows"][0]["cells"]


def columns(group: str, resource: str, **kwargs: Any) -> list[tuple[str, str, int]]:
    table = to_table(group, resource, [], now=NOW, **kwargs)
    return [(c["name"], c["type"], c["priority"]) for c in table["columnDefinitions"]]


# ----- HumanDuration ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (-3, "<invalid>"),
        (-2, "<invalid>"),
        (-1.5, "0s"),
        (-1, "0s"),
        (0, "0s"),
        (5, "5s"),
        (119, "119s"),
        (120, "2m"),
        (122, "2m2s"),
        (182, "3m2s"),
        (599, "9m59s"),
        (600, "10m"),
        (659, "10m"),
        (179 * 60 + 59, "179m"),
        (3 * 3600, "3h"),
        (3 * 3600 + 5 * 60 + 30, "3h5m"),
        (8 * 3600 - 60, "7h59m"),
        (8 * 3600, "8h"),
        (47 * 3600 + 3599, "47h"),
        (48 * 3600, "2d"),
        (51 * 3600, "2d3h"),
        (8 * 86400 - 3600, "7d23h"),
        (8 * 86400, "8d"),
        (729 * 86400, "729d"),
        (730 * 86400, "2y"),
        (731 * 86400, "2y1d"),
        (5 * 365 * 86400, "5y"),
        (8 * 365 * 86400 - 86400, "7y364d"),
        (8 * 365 * 86400, "8y"),
        (10 * 365 * 86400 + 86400 * 40, "10y"),
    ],
)
def test_human_duration(seconds: float, text: str) -> None:
    assert human_duration(timedelta(seconds=seconds)) == text


# ----- Table assembly ---------------------------------------------------------------------------


POD = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": meta("web", 300, resourceVersion="11", uid="u1", labels={"app": "web"}),
    "spec": {"nodeName": "node-1", "containers": [{"name": "web", "image": "busybox"}]},
    "status": {
        "phase": "Running",
        "podIP": "10.42.0.5",
        "podIPs": [{"ip": "10.42.0.5"}],
        "conditions": [{"type": "Ready", "status": "True"}],
        "containerStatuses": [
            {
                "name": "web",
                "ready": True,
                "restartCount": 0,
                "state": {"running": {"startedAt": ago(290)}},
            }
        ],
    },
}


def test_table_shape_with_metadata_objects() -> None:
    table = to_table("", "pods", [POD], list_meta={"resourceVersion": "42", "continue": "abc"}, now=NOW)
    assert table["kind"] == "Table"
    assert table["apiVersion"] == "meta.k8s.io/v1"
    assert table["metadata"] == {"resourceVersion": "42", "continue": "abc"}
    assert len(table["rows"]) == 1
    row = table["rows"][0]
    assert set(row) == {"cells", "object"}
    assert row["object"] == {
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": POD["metadata"],
    }
    first = table["columnDefinitions"][0]
    assert set(first) == {"name", "type", "format", "description", "priority"}
    assert first["format"] == "name"
    assert first["description"].startswith("Name must be unique within a namespace.")


def test_include_object_variants_and_v1beta1() -> None:
    none = to_table("", "pods", [POD], include_object="None", now=NOW)
    assert none["rows"][0]["object"] is None
    full = to_table("", "pods", [POD], include_object="Object", now=NOW)
    assert full["rows"][0]["object"] == POD
    beta = to_table("", "pods", [POD], table_version="v1beta1", now=NOW)
    assert beta["apiVersion"] == "meta.k8s.io/v1beta1"
    assert beta["rows"][0]["object"]["apiVersion"] == "meta.k8s.io/v1beta1"
    with pytest.raises(ValueError, match="includeObject"):
        to_table("", "pods", [POD], include_object="Everything", now=NOW)


def test_no_headers_empty_list_and_remaining_count() -> None:
    table = to_table("", "pods", [], list_meta={"resourceVersion": "9", "remainingItemCount": 0}, now=NOW)
    assert table["rows"] == []
    assert table["metadata"] == {"resourceVersion": "9", "remainingItemCount": 0}
    assert to_table("", "pods", [POD], no_headers=True, now=NOW)["columnDefinitions"] is None


@pytest.mark.parametrize(
    ("accept", "version"),
    [
        ("application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io", "v1"),
        ("application/json;as=Table;v=v1beta1;g=meta.k8s.io, application/json", "v1beta1"),
        ("application/json; as=Table; v=v1; g=meta.k8s.io", "v1"),
        ("application/json;as=Table;v=v2;g=meta.k8s.io,application/json", None),
        ("application/json;as=PartialObjectMetadataList;v=v1;g=meta.k8s.io", None),
        ("application/json", None),
        ("application/yaml;as=Table;v=v1;g=meta.k8s.io", None),
        ("", None),
        (None, None),
        ("application/json;as=Table;v=v1beta1;g=meta.k8s.io;q=0.5,application/json;as=Table;v=v1;g=meta.k8s.io", "v1"),
    ],
)
def test_table_version_from_accept(accept: str | None, version: str | None) -> None:
    assert table_version_from_accept(accept) == version


# ----- Pods -------------------------------------------------------------------------------------


def test_pod_columns() -> None:
    assert columns("", "pods") == [
        ("Name", "string", 0),
        ("Ready", "string", 0),
        ("Status", "string", 0),
        ("Restarts", "string", 0),
        ("Age", "string", 0),
        ("IP", "string", 1),
        ("Node", "string", 1),
        ("Nominated Node", "string", 1),
        ("Readiness Gates", "string", 1),
    ]
    ip = to_table("", "pods", [], now=NOW)["columnDefinitions"][5]
    assert ip["description"] == definitions()["io.k8s.api.core.v1.PodStatus"]["properties"]["podIP"]["description"]


def test_running_pod_cells() -> None:
    assert cells("", "pods", POD) == ["web", "1/1", "Running", "0", "5m", "10.42.0.5", "node-1", "<none>", "<none>"]


def pod(containers: list[dict[str, Any]], *, init: list[dict[str, Any]] | None = None, **status: Any) -> dict:
    spec: dict[str, Any] = {"containers": [{"name": c["name"], "image": "img"} for c in containers]}
    if init is not None:
        spec["initContainers"] = [{"name": c["name"], "image": "img", **c.get("spec", {})} for c in init]
    st: dict[str, Any] = {"phase": "Running", **status}
    st["containerStatuses"] = [{k: v for k, v in c.items() if k != "spec"} for c in containers if "state" in c]
    if init is not None:
        st["initContainerStatuses"] = [{k: v for k, v in c.items() if k != "spec"} for c in init if "state" in c]
    return {"metadata": meta("p", 3600), "spec": spec, "status": st}


RUNNING = {"running": {}}


@pytest.mark.parametrize(
    ("obj", "ready", "status", "restarts"),
    [
        pytest.param(
            pod(
                [
                    {
                        "name": "a",
                        "ready": False,
                        "restartCount": 5,
                        "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                        "lastState": {"terminated": {"exitCode": 1, "finishedAt": ago(300)}},
                    }
                ]
            ),
            "0/1",
            "CrashLoopBackOff",
            "5 (5m ago)",
            id="crashloop",
        ),
        pytest.param(
            pod([{"name": "a", "state": {"waiting": {"reason": "ContainerCreating"}}}], phase="Pending"),
            "0/1",
            "ContainerCreating",
            "0",
            id="creating",
        ),
        pytest.param(
            {
                "metadata": meta("p"),
                "spec": {"containers": [{"name": "a"}, {"name": "b"}]},
                "status": {"phase": "Pending"},
            },
            "0/2",
            "Pending",
            "0",
            id="pending-no-statuses",
        ),
        pytest.param(
            pod(
                [{"name": "a", "state": {"waiting": {"reason": "PodInitializing"}}}],
                init=[
                    {"name": "i1", "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}},
                    {"name": "i2", "state": {"running": {}}},
                ],
                phase="Pending",
            ),
            "0/1",
            "Init:1/2",
            "0",
            id="init-progress",
        ),
        pytest.param(
            pod(
                [{"name": "a", "state": {"waiting": {"reason": "PodInitializing"}}}],
                init=[{"name": "i1", "state": {"waiting": {"reason": "PodInitializing"}}}],
                phase="Pending",
            ),
            "0/1",
            "Init:0/1",
            "0",
            id="init-not-started",
        ),
        pytest.param(
            pod(
                [{"name": "a", "state": {"waiting": {"reason": "PodInitializing"}}}],
                init=[
                    {
                        "name": "i1",
                        "restartCount": 3,
                        "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                        "lastState": {"terminated": {"exitCode": 2, "finishedAt": ago(30)}},
                    }
                ],
                phase="Pending",
            ),
            "0/1",
            "Init:CrashLoopBackOff",
            "3 (30s ago)",
            id="init-crashloop",
        ),
        pytest.param(
            pod([{"name": "a"}], init=[{"name": "i1", "state": {"terminated": {"exitCode": 3}}}], phase="Pending"),
            "0/1",
            "Init:ExitCode:3",
            "0",
            id="init-exit-code",
        ),
        pytest.param(
            pod([{"name": "a"}], init=[{"name": "i1", "state": {"terminated": {"exitCode": 137, "signal": 9}}}]),
            "0/1",
            "Init:Signal:9",
            "0",
            id="init-signal",
        ),
        pytest.param(
            pod([{"name": "a"}], init=[{"name": "i1", "state": {"terminated": {"exitCode": 1, "reason": "Error"}}}]),
            "0/1",
            "Init:Error",
            "0",
            id="init-error",
        ),
        pytest.param(
            pod(
                [{"name": "a", "ready": True, "state": RUNNING}],
                init=[
                    {
                        "name": "proxy",
                        "spec": {"restartPolicy": "Always"},
                        "started": True,
                        "ready": True,
                        "state": RUNNING,
                    }
                ],
                conditions=[{"type": "Initialized", "status": "True"}, {"type": "Ready", "status": "True"}],
            ),
            "2/2",
            "Running",
            "0",
            id="sidecar-counts",
        ),
        pytest.param(
            pod(
                [{"name": "a", "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}],
                phase="Succeeded",
            ),
            "0/1",
            "Completed",
            "0",
            id="completed",
        ),
        pytest.param(
            pod(
                [
                    {"name": "a", "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}},
                    {"name": "b", "ready": True, "state": RUNNING},
                ],
                conditions=[{"type": "Ready", "status": "False"}],
            ),
            "1/2",
            "NotReady",
            "0",
            id="completed-but-one-running",
        ),
        pytest.param(
            pod(
                [
                    {"name": "a", "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}},
                    {"name": "b", "ready": True, "state": RUNNING},
                ],
                conditions=[{"type": "Ready", "status": "True"}],
            ),
            "1/2",
            "Running",
            "0",
            id="completed-one-running-ready",
        ),
        pytest.param(
            pod([{"name": "a", "state": {"terminated": {"exitCode": 137}}}]),
            "0/1",
            "ExitCode:137",
            "0",
            id="exit-code",
        ),
        pytest.param(
            pod([{"name": "a", "state": {"terminated": {"exitCode": 0, "signal": 15}}}]),
            "0/1",
            "Signal:15",
            "0",
            id="signal",
        ),
        pytest.param(
            pod([{"name": "a", "ready": False, "state": RUNNING}]),
            "0/1",
            "Running",
            "0",
            id="running-not-ready",
        ),
        pytest.param(
            pod([{"name": "a", "state": RUNNING}], phase="Failed", reason="Evicted"),
            "0/1",
            "Evicted",
            "0",
            id="evicted",
        ),
        pytest.param(
            pod(
                [],
                phase="Pending",
                conditions=[{"type": "PodScheduled", "status": "False", "reason": "SchedulingGated"}],
            ),
            "0/0",
            "SchedulingGated",
            "0",
            id="scheduling-gated",
        ),
    ],
)
def test_pod_status_cells(obj: dict[str, Any], ready: str, status: str, restarts: str) -> None:
    row = cells("", "pods", obj)
    assert row[1:4] == [ready, status, restarts]


def test_deleting_pods_are_terminating_or_unknown() -> None:
    deleting = {**POD, "metadata": {**POD["metadata"], "deletionTimestamp": ago(5)}}
    assert cells("", "pods", deleting)[2] == "Terminating"
    lost = {**deleting, "status": {**POD["status"], "reason": "NodeLost"}}
    assert cells("", "pods", lost)[2] == "Unknown"
    done = {**deleting, "status": {**POD["status"], "phase": "Succeeded", "containerStatuses": []}}
    assert cells("", "pods", done)[2] == "Succeeded"


def test_restarts_take_the_latest_termination_across_containers() -> None:
    obj = pod(
        [
            {
                "name": "a",
                "ready": True,
                "restartCount": 1,
                "state": RUNNING,
                "lastState": {"terminated": {"exitCode": 1, "finishedAt": ago(7200)}},
            },
            {
                "name": "b",
                "ready": True,
                "restartCount": 2,
                "state": RUNNING,
                "lastState": {"terminated": {"exitCode": 1, "finishedAt": ago(65)}},
            },
        ]
    )
    assert cells("", "pods", obj)[1:4] == ["2/2", "Running", "3 (65s ago)"]


def test_pod_wide_cells_and_readiness_gates() -> None:
    obj = {
        "metadata": meta("p"),
        "spec": {
            "containers": [{"name": "a"}],
            "readinessGates": [{"conditionType": "example.com/lb"}, {"conditionType": "example.com/dns"}],
        },
        "status": {
            "phase": "Pending",
            "nominatedNodeName": "node-9",
            "conditions": [
                {"type": "example.com/lb", "status": "True"},
                {"type": "example.com/dns", "status": "False"},
            ],
        },
    }
    assert cells("", "pods", obj)[5:] == ["<none>", "<none>", "node-9", "1/2"]


def test_pod_row_conditions() -> None:
    done = {**POD, "status": {**POD["status"], "phase": "Succeeded"}}
    row = to_table("", "pods", [done], now=NOW)["rows"][0]
    assert row["conditions"] == [
        {"type": "Completed", "status": "True", "reason": "Succeeded", "message": "The pod has completed successfully."}
    ]
    failed = {**POD, "status": {**POD["status"], "phase": "Failed"}}
    assert to_table("", "pods", [failed], now=NOW)["rows"][0]["conditions"][0]["reason"] == "Failed"
    assert "conditions" not in to_table("", "pods", [POD], now=NOW)["rows"][0]


# ----- Nodes ------------------------------------------------------------------------------------


NODE = {
    "metadata": {
        "name": "node-1",
        "creationTimestamp": ago(3 * 86400 + 4 * 3600),
        "labels": {
            "node-role.kubernetes.io/control-plane": "true",
            "node-role.kubernetes.io/master": "true",
            "kubernetes.io/hostname": "node-1",
        },
    },
    "spec": {},
    "status": {
        "conditions": [{"type": "MemoryPressure", "status": "False"}, {"type": "Ready", "status": "True"}],
        "addresses": [{"type": "Hostname", "address": "node-1"}, {"type": "InternalIP", "address": "192.0.2.10"}],
        "nodeInfo": {
            "kubeletVersion": "v1.32.4+k3p1",
            "osImage": "Debian GNU/Linux 12 (bookworm)",
            "kernelVersion": "6.18.0",
            "containerRuntimeVersion": "containerd://1.6.20",
        },
    },
}


def test_node_cells_and_columns() -> None:
    assert columns("", "nodes") == [
        ("Name", "string", 0),
        ("Status", "string", 0),
        ("Roles", "string", 0),
        ("Age", "string", 0),
        ("Version", "string", 0),
        ("Internal-IP", "string", 1),
        ("External-IP", "string", 1),
        ("OS-Image", "string", 1),
        ("Kernel-Version", "string", 1),
        ("Container-Runtime", "string", 1),
    ]
    assert cells("", "nodes", NODE) == [
        "node-1",
        "Ready",
        "control-plane,master",
        "3d4h",
        "v1.32.4+k3p1",
        "192.0.2.10",
        "<none>",
        "Debian GNU/Linux 12 (bookworm)",
        "6.18.0",
        "containerd://1.6.20",
    ]


@pytest.mark.parametrize(
    ("conditions", "unschedulable", "labels", "status", "roles"),
    [
        ([{"type": "Ready", "status": "False"}], False, {}, "NotReady", "<none>"),
        ([{"type": "Ready", "status": "Unknown"}], True, {}, "NotReady,SchedulingDisabled", "<none>"),
        ([], False, {"kubernetes.io/role": "worker"}, "Unknown", "worker"),
        (
            [{"type": "Ready", "status": "True"}],
            True,
            {"node-role.kubernetes.io/": "x"},
            "Ready,SchedulingDisabled",
            "<none>",
        ),
    ],
)
def test_node_status_and_roles(
    conditions: list[dict[str, str]], unschedulable: bool, labels: dict[str, str], status: str, roles: str
) -> None:
    obj = {
        "metadata": {"name": "n", "creationTimestamp": ago(60), "labels": labels},
        "spec": {"unschedulable": unschedulable},
        "status": {"conditions": conditions},
    }
    row = cells("", "nodes", obj)
    assert row[1:3] == [status, roles]
    assert row[7:] == ["<unknown>", "<unknown>", "<unknown>"]


# ----- Workloads --------------------------------------------------------------------------------


def test_deployment_cells() -> None:
    assert columns("apps", "deployments") == [
        ("Name", "string", 0),
        ("Ready", "string", 0),
        ("Up-to-date", "string", 0),
        ("Available", "string", 0),
        ("Age", "string", 0),
        ("Containers", "string", 1),
        ("Images", "string", 1),
        ("Selector", "string", 1),
    ]
    obj = {
        "metadata": meta("web", 2 * 86400 + 3 * 3600),
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": "web"}, "matchExpressions": [{"key": "tier", "operator": "Exists"}]},
            "template": {
                "spec": {"containers": [{"name": "web", "image": "nginx:1"}, {"name": "log", "image": "fluent"}]}
            },
        },
        "status": {"readyReplicas": 2, "updatedReplicas": 3, "availableReplicas": 2},
    }
    assert cells("apps", "deployments", obj) == [
        "web",
        "2/3",
        3,
        2,
        "2d3h",
        "web,log",
        "nginx:1,fluent",
        "app=web,tier",
    ]
    empty = {"metadata": meta("d"), "spec": {"template": {"spec": {"containers": []}}}, "status": {}}
    assert cells("apps", "deployments", empty) == ["d", "0/1", 0, 0, "5m", "", "", ""]


@pytest.mark.parametrize(
    ("group", "resource", "obj", "expected"),
    [
        (
            "apps",
            "replicasets",
            {
                "metadata": meta("web-5d4f"),
                "spec": {
                    "replicas": 2,
                    "selector": {"matchLabels": {"app": "web"}},
                    "template": {"spec": {"containers": [{"name": "web", "image": "nginx"}]}},
                },
                "status": {"replicas": 2, "readyReplicas": 1},
            },
            ["web-5d4f", 2, 2, 1, "5m", "web", "nginx", "app=web"],
        ),
        (
            "apps",
            "daemonsets",
            {
                "metadata": meta("svclb"),
                "spec": {
                    "selector": {"matchLabels": {"app": "svclb"}},
                    "template": {
                        "spec": {
                            "nodeSelector": {"kubernetes.io/os": "linux"},
                            "containers": [{"name": "lb", "image": "klipper"}],
                        }
                    },
                },
                "status": {
                    "desiredNumberScheduled": 3,
                    "currentNumberScheduled": 3,
                    "numberReady": 2,
                    "updatedNumberScheduled": 3,
                    "numberAvailable": 2,
                },
            },
            ["svclb", 3, 3, 2, 3, 2, "kubernetes.io/os=linux", "5m", "lb", "klipper", "app=svclb"],
        ),
        (
            "apps",
            "statefulsets",
            {
                "metadata": meta("db"),
                "spec": {"replicas": 3, "template": {"spec": {"containers": [{"name": "pg", "image": "postgres"}]}}},
                "status": {"readyReplicas": 3},
            },
            ["db", "3/3", "5m", "pg", "postgres"],
        ),
        (
            "",
            "replicationcontrollers",
            {"metadata": meta("rc"), "spec": {"replicas": 1, "selector": {"a": "b"}}, "status": {"replicas": 1}},
            ["rc", 1, 1, 0, "5m", "", "", "a=b"],
        ),
        (
            "batch",
            "cronjobs",
            {
                "metadata": meta("backup"),
                "spec": {
                    "schedule": "*/5 * * * *",
                    "suspend": False,
                    "jobTemplate": {
                        "spec": {"template": {"spec": {"containers": [{"name": "b", "image": "busybox"}]}}}
                    },
                },
                "status": {"active": [{"name": "backup-1"}], "lastScheduleTime": ago(125)},
            },
            ["backup", "*/5 * * * *", "<none>", "False", 1, "2m5s", "5m", "b", "busybox", "<none>"],
        ),
        (
            "apps",
            "controllerrevisions",
            {
                "metadata": {
                    **meta("svclb-6c8"),
                    "ownerReferences": [
                        {"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "svclb", "controller": True, "uid": "x"}
                    ],
                },
                "revision": 2,
            },
            ["svclb-6c8", "daemonset.apps/svclb", 2, "5m"],
        ),
    ],
)
def test_other_workload_cells(group: str, resource: str, obj: dict[str, Any], expected: list[Any]) -> None:
    assert cells(group, resource, obj) == expected


@pytest.mark.parametrize(
    ("spec", "status", "deleting", "expected"),
    [
        (
            {"completions": 1},
            {
                "succeeded": 1,
                "startTime": ago(600),
                "completionTime": ago(590),
                "conditions": [{"type": "Complete", "status": "True"}],
            },
            False,
            ["Complete", "1/1", "10s"],
        ),
        (
            {"completions": 3, "parallelism": 3},
            {"succeeded": 1, "startTime": ago(185)},
            False,
            ["Running", "1/3", "3m5s"],
        ),
        ({"parallelism": 3}, {"succeeded": 0, "startTime": ago(30)}, False, ["Running", "0/1 of 3", "30s"]),
        ({}, {}, False, ["Running", "0/1", ""]),
        (
            {"completions": 1},
            {"startTime": ago(400), "conditions": [{"type": "Failed", "status": "True"}]},
            False,
            ["Failed", "0/1", "6m40s"],
        ),
        (
            {"completions": 1},
            {"conditions": [{"type": "Suspended", "status": "True"}]},
            False,
            ["Suspended", "0/1", ""],
        ),
        (
            {"completions": 1},
            {"conditions": [{"type": "Complete", "status": "False"}]},
            True,
            ["Terminating", "0/1", ""],
        ),
        (
            {"completions": 1},
            {"conditions": [{"type": "FailureTarget", "status": "True"}]},
            False,
            ["FailureTarget", "0/1", ""],
        ),
    ],
)
def test_job_cells(spec: dict[str, Any], status: dict[str, Any], deleting: bool, expected: list[str]) -> None:
    metadata = meta("job", 900, **({"deletionTimestamp": ago(1)} if deleting else {}))
    obj = {
        "metadata": metadata,
        "spec": {
            **spec,
            "selector": {"matchLabels": {"batch.kubernetes.io/controller-uid": "u"}},
            "template": {"spec": {"containers": [{"name": "c", "image": "busybox"}]}},
        },
        "status": status,
    }
    row = cells("batch", "jobs", obj)
    assert row[1:4] == expected
    assert row[0] == "job"
    assert row[4:] == ["15m", "c", "busybox", "batch.kubernetes.io/controller-uid=u"]


def test_job_columns() -> None:
    assert [c[0] for c in columns("batch", "jobs")] == [
        "Name",
        "Status",
        "Completions",
        "Duration",
        "Age",
        "Containers",
        "Images",
        "Selector",
    ]


# ----- Services and networking ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "status", "expected"),
    [
        (
            {
                "type": "ClusterIP",
                "clusterIP": "10.43.0.1",
                "clusterIPs": ["10.43.0.1"],
                "ports": [{"port": 443, "protocol": "TCP"}],
            },
            {},
            ["ClusterIP", "10.43.0.1", "<none>", "443/TCP"],
        ),
        (
            {"type": "ClusterIP", "clusterIP": "None", "clusterIPs": ["None"]},
            {},
            ["ClusterIP", "None", "<none>", "<none>"],
        ),
        (
            {
                "type": "NodePort",
                "clusterIPs": ["10.43.0.9"],
                "ports": [{"port": 80, "nodePort": 30080, "protocol": "TCP"}, {"port": 53, "protocol": "UDP"}],
                "selector": {"app": "web"},
            },
            {},
            ["NodePort", "10.43.0.9", "<none>", "80:30080/TCP,53/UDP"],
        ),
        (
            {"type": "LoadBalancer", "clusterIPs": ["10.43.0.7"], "ports": [{"port": 80, "nodePort": 31000}]},
            {},
            ["LoadBalancer", "10.43.0.7", "<pending>", "80:31000/TCP"],
        ),
        (
            {"type": "LoadBalancer", "clusterIPs": ["10.43.0.7"], "ports": [{"port": 80, "nodePort": 31000}]},
            {"loadBalancer": {"ingress": [{"ip": "192.0.2.20"}, {"ip": "192.0.2.3"}, {"hostname": "lb.example"}]}},
            ["LoadBalancer", "10.43.0.7", "192.0.2.20,192.0.2.3,lb.example", "80:31000/TCP"],
        ),
        (
            {"type": "LoadBalancer", "clusterIPs": ["10.43.0.7"], "externalIPs": ["198.51.100.1"]},
            {"loadBalancer": {"ingress": [{"ip": "192.0.2.3"}]}},
            ["LoadBalancer", "10.43.0.7", "192.0.2.3,198.51.100.1", "<none>"],
        ),
        (
            {"type": "ExternalName", "externalName": "db.example.com"},
            {},
            ["ExternalName", "<none>", "db.example.com", "<none>"],
        ),
        (
            {"type": "ClusterIP", "clusterIP": "10.43.0.2", "externalIPs": ["198.51.100.2", "198.51.100.3"]},
            {},
            ["ClusterIP", "10.43.0.2", "198.51.100.2,198.51.100.3", "<none>"],
        ),
    ],
)
def test_service_cells(spec: dict[str, Any], status: dict[str, Any], expected: list[str]) -> None:
    row = cells("", "services", {"metadata": meta("svc"), "spec": spec, "status": status})
    assert row[0] == "svc"
    assert row[1:5] == expected
    assert row[5] == "5m"
    assert row[6] == ("app=web" if spec.get("selector") else "<none>")


def test_service_columns() -> None:
    assert columns("", "services") == [
        ("Name", "string", 0),
        ("Type", "string", 0),
        ("Cluster-IP", "string", 0),
        ("External-IP", "string", 0),
        ("Port(s)", "string", 0),
        ("Age", "string", 0),
        ("Selector", "string", 1),
    ]


@pytest.mark.parametrize(
    ("subsets", "text"),
    [
        ([], "<none>"),
        ([{"addresses": [{"ip": "10.42.0.5"}], "ports": [{"port": 80}]}], "10.42.0.5:80"),
        ([{"notReadyAddresses": [{"ip": "10.42.0.5"}], "ports": [{"port": 80}]}], ""),
        ([{"addresses": [{"ip": "10.42.0.5"}, {"ip": "10.42.0.6"}]}], "10.42.0.5,10.42.0.6"),
        ([{"addresses": [{"ip": "fd00::5"}], "ports": [{"port": 80}]}], "[fd00::5]:80"),
        (
            [
                {
                    "addresses": [{"ip": f"10.42.0.{i}"} for i in range(1, 4)],
                    "ports": [{"port": 80}, {"port": 443}],
                }
            ],
            "10.42.0.1:80,10.42.0.2:80,10.42.0.3:80 + 3 more...",
        ),
    ],
)
def test_endpoints_cells(subsets: list[dict[str, Any]], text: str) -> None:
    assert cells("", "endpoints", {"metadata": meta("svc"), "subsets": subsets}) == ["svc", text, "5m"]


def test_endpoint_slice_cells() -> None:
    obj = {
        "metadata": meta("svc-abc"),
        "addressType": "IPv4",
        "ports": [{"port": 80}, {"name": "dns"}, {}, {"port": 9}],
        "endpoints": [{"addresses": ["10.42.0.1"]}, {"addresses": ["10.42.0.2", "10.42.0.3", "10.42.0.4"]}],
    }
    assert cells("discovery.k8s.io", "endpointslices", obj) == [
        "svc-abc",
        "IPv4",
        "80,dns,* + 1 more...",
        "10.42.0.1,10.42.0.2,10.42.0.3 + 1 more...",
        "5m",
    ]
    empty = {"metadata": meta("e"), "addressType": "IPv6"}
    assert cells("discovery.k8s.io", "endpointslices", empty) == ["e", "IPv6", "<unset>", "<unset>", "5m"]


def test_ingress_cells() -> None:
    obj = {
        "metadata": meta("web"),
        "spec": {
            "ingressClassName": "traefik",
            "rules": [{"host": "a.example"}, {}, {"host": "b.example"}, {"host": "c.example"}, {"host": "d.example"}],
            "tls": [{"hosts": ["a.example"]}],
        },
        "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.10"}]}},
    }
    assert cells("networking.k8s.io", "ingresses", obj) == [
        "web",
        "traefik",
        "a.example,b.example,c.example + 2 more...",
        "192.0.2.10",
        "80, 443",
        "5m",
    ]
    plain = {"metadata": meta("w"), "spec": {"defaultBackend": {}}}
    assert cells("networking.k8s.io", "ingresses", plain) == ["w", "<none>", "*", "", "80", "5m"]
    klass = {"metadata": meta("traefik"), "spec": {"controller": "traefik.io/ingress-controller"}}
    assert cells("networking.k8s.io", "ingressclasses", klass) == [
        "traefik",
        "traefik.io/ingress-controller",
        "<none>",
        "5m",
    ]


# ----- Events -----------------------------------------------------------------------------------


EVENT = {
    "metadata": meta("web.17b", 600),
    "involvedObject": {"kind": "Pod", "name": "web", "namespace": "default", "fieldPath": "spec.containers{web}"},
    "reason": "Pulled",
    "message": '  Container image "busybox" already present on machine\n',
    "source": {"component": "kubelet", "host": "node-1"},
    "firstTimestamp": ago(600),
    "lastTimestamp": ago(65),
    "count": 4,
    "type": "Normal",
}


def test_event_columns_and_cells() -> None:
    assert columns("", "events") == [
        ("Last Seen", "string", 0),
        ("Type", "string", 0),
        ("Reason", "string", 0),
        ("Object", "string", 0),
        ("Subobject", "string", 1),
        ("Source", "string", 1),
        ("Message", "string", 0),
        ("First Seen", "string", 1),
        ("Count", "string", 1),
        ("Name", "string", 1),
    ]
    assert cells("", "events", EVENT) == [
        "65s",
        "Normal",
        "Pulled",
        "pod/web",
        "spec.containers{web}",
        "kubelet, node-1",
        'Container image "busybox" already present on machine',
        "10m",
        4,
        "web.17b",
    ]


def test_new_style_events() -> None:
    core = {
        "metadata": meta("e"),
        "involvedObject": {"kind": "Node"},
        "reason": "Starting",
        "eventTime": "2024-03-01T11:59:29.750000Z",
        "reportingController": "k3p",
        "reportingInstance": "server-1",
        "type": "Normal",
        "message": "hi",
    }
    assert cells("", "events", core) == ["30s", "Normal", "Starting", "node", "", "k3p, server-1", "hi", "30s", 1, "e"]
    series = {**core, "series": {"count": 7, "lastObservedTime": "2024-03-01T11:59:55.000000Z"}}
    assert cells("", "events", series)[0] == "5s"
    assert cells("", "events", series)[8] == 7
    modern = {
        "metadata": meta("e2"),
        "regarding": {"kind": "Deployment", "name": "web"},
        "reason": "ScalingReplicaSet",
        "note": "Scaled up",
        "eventTime": ago(20),
        "reportingController": "deployment-controller",
        "type": "Normal",
    }
    assert cells("events.k8s.io", "events", modern) == [
        "20s",
        "Normal",
        "ScalingReplicaSet",
        "deployment/web",
        "",
        "deployment-controller",
        "Scaled up",
        "20s",
        1,
        "e2",
    ]
    assert cells("", "events", {"metadata": meta("x"), "involvedObject": {}})[0] == "<unknown>"


# ----- Configuration and cluster objects -------------------------------------------------------


@pytest.mark.parametrize(
    ("group", "resource", "obj", "expected"),
    [
        (
            "",
            "namespaces",
            {"metadata": meta("kube-system", 7200), "status": {"phase": "Active"}},
            ["kube-system", "Active", "120m"],
        ),
        (
            "",
            "configmaps",
            {"metadata": meta("cm"), "data": {"a": "1", "b": "2"}, "binaryData": {"c": "AA=="}},
            ["cm", 3, "5m"],
        ),
        ("", "configmaps", {"metadata": meta("cm")}, ["cm", 0, "5m"]),
        (
            "",
            "secrets",
            {"metadata": meta("tls"), "type": "kubernetes.io/tls", "data": {"tls.crt": "", "tls.key": ""}},
            ["tls", "kubernetes.io/tls", 2, "5m"],
        ),
        ("", "serviceaccounts", {"metadata": meta("default")}, ["default", 0, "5m"]),
        (
            "coordination.k8s.io",
            "leases",
            {"metadata": meta("node-1"), "spec": {"holderIdentity": "node-1"}},
            ["node-1", "node-1", "5m"],
        ),
        ("coordination.k8s.io", "leases", {"metadata": meta("l"), "spec": {}}, ["l", "", "5m"]),
        (
            "scheduling.k8s.io",
            "priorityclasses",
            {"metadata": meta("system-node-critical"), "value": 2000001000, "preemptionPolicy": "PreemptLowerPriority"},
            ["system-node-critical", 2000001000, False, "5m", "PreemptLowerPriority"],
        ),
        (
            "rbac.authorization.k8s.io",
            "rolebindings",
            {
                "metadata": meta("rb"),
                "roleRef": {"kind": "ClusterRole", "name": "edit"},
                "subjects": [
                    {"kind": "User", "name": "alice"},
                    {"kind": "User", "name": "bob"},
                    {"kind": "Group", "name": "devs"},
                    {"kind": "ServiceAccount", "name": "ci", "namespace": "tools"},
                ],
            },
            ["rb", "ClusterRole/edit", "5m", "alice, bob", "devs", "tools/ci"],
        ),
        (
            "rbac.authorization.k8s.io",
            "clusterrolebindings",
            {"metadata": meta("crb"), "roleRef": {"kind": "ClusterRole", "name": "view"}},
            ["crb", "ClusterRole/view", "5m", "", "", ""],
        ),
        (
            "networking.k8s.io",
            "networkpolicies",
            {"metadata": meta("deny"), "spec": {"podSelector": {}}},
            ["deny", "<none>", "5m"],
        ),
        (
            "networking.k8s.io",
            "networkpolicies",
            {"metadata": meta("np"), "spec": {"podSelector": {"matchLabels": {"app": "db"}}}},
            ["np", "app=db", "5m"],
        ),
        (
            "policy",
            "poddisruptionbudgets",
            {"metadata": meta("pdb"), "spec": {"minAvailable": "50%"}, "status": {"disruptionsAllowed": 1}},
            ["pdb", "50%", "N/A", 1, "5m"],
        ),
        (
            "policy",
            "poddisruptionbudgets",
            {"metadata": meta("pdb"), "spec": {"maxUnavailable": 1}, "status": {}},
            ["pdb", "N/A", "1", 0, "5m"],
        ),
        (
            "autoscaling",
            "horizontalpodautoscalers",
            {
                "metadata": meta("web"),
                "spec": {
                    "scaleTargetRef": {"kind": "Deployment", "name": "web"},
                    "minReplicas": 1,
                    "maxReplicas": 5,
                    "metrics": [
                        {
                            "type": "Resource",
                            "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}},
                        },
                        {
                            "type": "Resource",
                            "resource": {"name": "memory", "target": {"type": "AverageValue", "averageValue": "100Mi"}},
                        },
                        {
                            "type": "Pods",
                            "pods": {
                                "metric": {"name": "qps"},
                                "target": {"type": "AverageValue", "averageValue": "10"},
                            },
                        },
                    ],
                },
                "status": {
                    "currentReplicas": 2,
                    "currentMetrics": [
                        {"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": 12}}}
                    ],
                },
            },
            ["web", "Deployment/web", "cpu: 12%/80%, memory: <unknown>/100Mi + 1 more...", "1", 5, 2, "5m"],
        ),
        (
            "autoscaling",
            "horizontalpodautoscalers",
            {
                "metadata": meta("old"),
                "spec": {
                    "scaleTargetRef": {"kind": "Deployment", "name": "old"},
                    "maxReplicas": 3,
                    "targetCPUUtilizationPercentage": 50,
                },
                "status": {"currentReplicas": 1, "currentCPUUtilizationPercentage": 7},
            },
            ["old", "Deployment/old", "cpu: 7%/50%", "<unset>", 3, 1, "5m"],
        ),
        (
            "",
            "resourcequotas",
            {
                "metadata": meta("quota"),
                "status": {
                    "hard": {"pods": "10", "limits.cpu": "2", "requests.memory": "1Gi", "limits.memory": "2Gi"},
                    "used": {"pods": "3", "limits.cpu": "500m", "limits.memory": "0"},
                },
            },
            ["quota", "pods: 3/10, requests.memory: 0/1Gi", "limits.cpu: 500m/2, limits.memory: 0/2Gi", "5m"],
        ),
        (
            "",
            "persistentvolumes",
            {
                "metadata": meta("pv-1"),
                "spec": {
                    "capacity": {"storage": "1Gi"},
                    "accessModes": ["ReadWriteMany", "ReadWriteOnce"],
                    "persistentVolumeReclaimPolicy": "Delete",
                    "claimRef": {"namespace": "default", "name": "data"},
                    "storageClassName": "local-path",
                    "volumeMode": "Filesystem",
                },
                "status": {"phase": "Bound"},
            },
            [
                "pv-1",
                "1Gi",
                "RWO,RWX",
                "Delete",
                "Bound",
                "default/data",
                "local-path",
                "<unset>",
                "",
                "5m",
                "Filesystem",
            ],
        ),
        (
            "",
            "persistentvolumeclaims",
            {
                "metadata": meta("data"),
                "spec": {
                    "volumeName": "pv-1",
                    "storageClassName": "local-path",
                    "resources": {"requests": {"storage": "1Gi"}},
                },
                "status": {"phase": "Bound", "capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"]},
            },
            ["data", "Bound", "pv-1", "1Gi", "RWO", "local-path", "<unset>", "5m", "<unset>"],
        ),
        (
            "",
            "persistentvolumeclaims",
            {
                "metadata": meta("pending"),
                "spec": {"resources": {"requests": {"storage": "1Gi"}}},
                "status": {"phase": "Pending"},
            },
            ["pending", "Pending", "", "", "", "", "<unset>", "5m", "<unset>"],
        ),
        (
            "storage.k8s.io",
            "storageclasses",
            {
                "metadata": {
                    **meta("local-path"),
                    "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
                },
                "provisioner": "rancher.io/local-path",
                "volumeBindingMode": "WaitForFirstConsumer",
            },
            ["local-path (default)", "rancher.io/local-path", "Delete", "WaitForFirstConsumer", False, "5m"],
        ),
        (
            "apiregistration.k8s.io",
            "apiservices",
            {
                "metadata": meta("v1.apps"),
                "spec": {},
                "status": {"conditions": [{"type": "Available", "status": "True"}]},
            },
            ["v1.apps", "Local", "True", "5m"],
        ),
        (
            "apiregistration.k8s.io",
            "apiservices",
            {
                "metadata": meta("v1beta1.metrics.k8s.io"),
                "spec": {"service": {"namespace": "kube-system", "name": "metrics-server"}},
                "status": {"conditions": [{"type": "Available", "status": "False", "reason": "MissingEndpoints"}]},
            },
            ["v1beta1.metrics.k8s.io", "kube-system/metrics-server", "False (MissingEndpoints)", "5m"],
        ),
    ],
)
def test_other_kind_cells(group: str, resource: str, obj: dict[str, Any], expected: list[Any]) -> None:
    assert cells(group, resource, obj) == expected


def test_namespace_and_binding_columns() -> None:
    assert columns("", "namespaces") == [("Name", "string", 0), ("Status", "string", 0), ("Age", "string", 0)]
    assert columns("rbac.authorization.k8s.io", "rolebindings") == [
        ("Name", "string", 0),
        ("Role", "string", 0),
        ("Age", "string", 0),
        ("Users", "string", 1),
        ("Groups", "string", 1),
        ("ServiceAccounts", "string", 1),
    ]


# ----- Default tables ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("group", "resource"),
    [
        ("rbac.authorization.k8s.io", "roles"),
        ("rbac.authorization.k8s.io", "clusterroles"),
        ("", "limitranges"),
        ("apiextensions.k8s.io", "customresourcedefinitions"),
        ("storage.k8s.io", "csistoragecapacities"),
    ],
)
def test_built_ins_without_printer_get_created_at(group: str, resource: str) -> None:
    obj = {"metadata": {"name": "x", "creationTimestamp": "2024-02-29T10:00:00.5+01:00"}}
    table = to_table(group, resource, [obj], now=NOW)
    assert [(c["name"], c["type"], c["format"]) for c in table["columnDefinitions"]] == [
        ("Name", "string", "name"),
        ("Created At", "date", ""),
    ]
    assert table["rows"][0]["cells"] == ["x", "2024-02-29T09:00:00Z"]


def test_custom_resource_without_columns_gets_name_and_age() -> None:
    obj = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": meta("w", 90)}
    for table in (
        to_table("example.com", "widgets", [obj], now=NOW),
        to_table("example.com", "widgets", [obj], additional_printer_columns=[], now=NOW),
    ):
        assert [(c["name"], c["type"]) for c in table["columnDefinitions"]] == [("Name", "string"), ("Age", "date")]
        assert table["rows"][0]["cells"] == ["w", "90s"]


def test_custom_resource_printer_columns() -> None:
    crd_columns = [
        {"name": "Replicas", "type": "integer", "jsonPath": ".spec.replicas"},
        {"name": "Ready", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].status'},
        {"name": "Ratio", "type": "number", "jsonPath": ".status.ratio", "format": "float"},
        {"name": "Paused", "type": "boolean", "jsonPath": ".spec.paused"},
        {"name": "Tags", "type": "string", "jsonPath": ".spec.tags", "priority": 1},
        {"name": "Size", "type": "string", "jsonPath": ".spec.replicas", "priority": 1},
        {"name": "Missing", "type": "string", "jsonPath": ".status.nothing", "description": "Never there"},
        {"name": "Since", "type": "date", "jsonPath": ".status.since"},
        {"name": "Broken", "type": "date", "jsonPath": ".status.bad"},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ]
    obj = {
        "apiVersion": "example.com/v1",
        "kind": "Widget",
        "metadata": meta("w", 4000),
        "spec": {"replicas": 3, "paused": False, "tags": ["b", "a"]},
        "status": {
            "ratio": 2,
            "since": ago(30),
            "bad": "yesterday",
            "conditions": [{"type": "Synced", "status": "False"}, {"type": "Ready", "status": "True"}],
        },
    }
    table = to_table("example.com", "widgets", [obj], additional_printer_columns=crd_columns, now=NOW)
    assert [(c["name"], c["type"], c["format"], c["priority"]) for c in table["columnDefinitions"]] == [
        ("Name", "string", "name", 0),
        ("Replicas", "integer", "", 0),
        ("Ready", "string", "", 0),
        ("Ratio", "number", "float", 0),
        ("Paused", "boolean", "", 0),
        ("Tags", "string", "", 1),
        ("Size", "string", "", 1),
        ("Missing", "string", "", 0),
        ("Since", "date", "", 0),
        ("Broken", "date", "", 0),
        ("Age", "date", "", 0),
    ]
    descriptions = [c["description"] for c in table["columnDefinitions"]]
    assert descriptions[1] == "Custom resource definition column (in JSONPath format): .spec.replicas"
    assert descriptions[7] == "Never there"
    assert table["rows"][0]["cells"] == ["w", 3, "True", 2.0, False, '["b","a"]', "3", None, "30s", "<invalid>", "66m"]


def test_custom_resource_cells_of_mismatched_types_are_empty() -> None:
    crd_columns = [
        {"name": "N", "type": "integer", "jsonPath": ".spec.text"},
        {"name": "B", "type": "boolean", "jsonPath": ".spec.count"},
        {"name": "F", "type": "integer", "jsonPath": ".spec.fraction"},
        {"name": "S", "type": "string", "jsonPath": ".spec.flag"},
        {"name": "Big", "type": "string", "jsonPath": ".spec.big"},
    ]
    obj = {"metadata": meta("w"), "spec": {"text": "x", "count": 1, "fraction": 2.7, "flag": True, "big": 1234567.5}}
    row = cells("example.com", "widgets", obj, additional_printer_columns=crd_columns)
    assert row == ["w", None, None, 2, "true", "1.2345675e+06"]


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (".metadata.labels.app\\.kubernetes\\.io/name", "web"),
        (".metadata.labels['app.kubernetes.io/name']", "web"),
        ("{.spec.replicas}", "3"),
        (".spec.containers[*].image", "nginx"),
        (".spec.containers[1].name", "log"),
        ('.spec.containers[?(@.name=="log")].image', "fluent"),
        ("..image", "nginx"),
    ],
)
def test_custom_column_json_paths(path: str, expected: str) -> None:
    obj = {
        "metadata": {**meta("w"), "labels": {"app.kubernetes.io/name": "web"}},
        "spec": {"replicas": 3, "containers": [{"name": "web", "image": "nginx"}, {"name": "log", "image": "fluent"}]},
    }
    column = [{"name": "X", "type": "string", "jsonPath": path}]
    assert cells("example.com", "widgets", obj, additional_printer_columns=column) == ["w", expected]


def test_many_objects_keep_their_order() -> None:
    objs = [{**POD, "metadata": {**POD["metadata"], "name": f"p{i}"}} for i in range(5)]
    table = to_table("", "pods", objs, include_object="Object", now=NOW)
    assert [r["cells"][0] for r in table["rows"]] == ["p0", "p1", "p2", "p3", "p4"]
    assert [r["object"]["metadata"]["name"] for r in table["rows"]] == ["p0", "p1", "p2", "p3", "p4"]
