"""The scheduler's bookkeeping between informer events, decisions, bindings and reports (no server)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from k3p.client import ApiError, Client
from k3p_plugins.scheduler import Scheduler
from k3p_plugins.scheduler.queue import BACKOFF, UNSCHEDULABLE


class FakeClient(Client):
    """Answers the scheduler's writes locally and records them."""

    def __init__(self) -> None:
        super().__init__("https://127.0.0.1:1")
        self.calls: list[tuple[str, str, Any]] = []
        self.fail_binding: ApiError | None = None

    async def request(self, method: str, path: str, *, params: Any = None, body: Any = None,
                      content_type: str = "application/json") -> Any:
        self.calls.append((method, path, body))
        if path.endswith("/binding") and self.fail_binding is not None:
            raise self.fail_binding
        return {}

    def paths(self, suffix: str) -> list[Any]:
        return [body for method, path, body in self.calls if path.endswith(suffix)]


def node(name: str, cpu: str = "2") -> dict[str, Any]:
    return {"metadata": {"name": name, "resourceVersion": "1", "labels": {"kubernetes.io/hostname": name}},
            "spec": {}, "status": {"allocatable": {"cpu": cpu, "memory": "4Gi", "pods": "110"},
                                   "conditions": [{"type": "Ready", "status": "True"}]}}


def pod(name: str, cpu: str = "1", node_name: str = "", phase: str = "Pending", rv: str = "1",
        **spec: Any) -> dict[str, Any]:
    body = {"metadata": {"name": name, "namespace": "ns", "uid": f"uid-{name}", "resourceVersion": rv},
            "spec": {"schedulerName": "default-scheduler",
                     "containers": [{"name": "c", "resources": {"requests": {"cpu": cpu}}}], **spec},
            "status": {"phase": phase}}
    if node_name:
        body["spec"]["nodeName"] = node_name
    return body


@pytest.fixture
async def scheduler() -> AsyncIterator[Scheduler]:
    s = Scheduler(FakeClient())
    events = asyncio.create_task(s.events.run())  # run() starts it with the informers
    yield s
    events.cancel()
    await asyncio.gather(events, return_exceptions=True)
    await s.client.close()


async def step(s: Scheduler) -> None:
    """Pop one pod, decide, and let the binding / report finish."""
    entry = s.queue.pop_nowait()
    assert entry is not None
    await s.schedule_one(entry)
    await s.settle(5)


async def test_bind_assume_confirm(scheduler: Scheduler) -> None:
    s = scheduler
    s._on_node("ADDED", node("a"), None)
    s._on_pod("ADDED", pod("p1"), None)
    await step(s)
    [binding] = s.client.paths("/binding")
    assert binding["target"] == {"apiVersion": "v1", "kind": "Node", "name": "a"}
    assert binding["metadata"] == {"name": "p1", "namespace": "ns", "uid": "uid-p1"}
    assert s.cache.is_assumed("ns/p1") and s.cache.nodes["a"].requested.milli_cpu == 1000
    # An update of the still-unbound pod (our binding is on its way) does not queue it again.
    s._on_pod("MODIFIED", pod("p1", rv="2"), pod("p1"))
    assert "ns/p1" not in s.queue
    s._on_pod("MODIFIED", pod("p1", node_name="a", rv="3"), pod("p1", rv="2"))
    assert not s.cache.is_assumed("ns/p1")
    assert s.cache.nodes["a"].requested.milli_cpu == 1000  # counted once
    [event] = s.client.paths("/events")
    assert (event["reason"], event["type"], event["message"]) == (
        "Scheduled", "Normal", "Successfully assigned ns/p1 to a")
    assert event["source"]["component"] == "default-scheduler"


async def test_unschedulable_report_and_no_rewrite_of_the_same_condition(scheduler: Scheduler) -> None:
    s = scheduler
    s._on_node("ADDED", node("a"), None)
    s._on_pod("ADDED", pod("big", cpu="4"), None)
    await step(s)
    [patch] = s.client.paths("/status")
    condition = patch["status"]["conditions"][0]
    assert condition["type"] == "PodScheduled" and condition["status"] == "False"
    assert condition["reason"] == "Unschedulable"
    assert condition["message"].startswith("0/1 nodes are available: 1 Insufficient cpu.")
    assert s.queue.place_of("ns/big") == UNSCHEDULABLE
    # Our own status write comes back as an update: it must not trigger another attempt.
    reported = pod("big", cpu="4", rv="2")
    reported["status"]["conditions"] = [condition]
    s._on_pod("MODIFIED", reported, pod("big", cpu="4"))
    s.pods.store["ns/big"] = reported
    assert s.queue.place_of("ns/big") == UNSCHEDULABLE
    # A retry with the same outcome writes no new condition (the event is still recorded).
    s.queue._entries["ns/big"].attempts = 0  # no back-off to sit out
    s.queue.move()
    await step(s)
    assert len(s.client.paths("/status")) == 1
    # the same event again: counted by a patch of the one already written
    events = [(method, body) for method, path, body in s.client.calls if "/events" in path]
    assert [method for method, _ in events] == ["POST", "PATCH"]
    assert events[0][1]["reason"] == "FailedScheduling" and events[1][1]["count"] == 2


async def test_a_failed_binding_is_forgotten_and_retried(scheduler: Scheduler) -> None:
    s = scheduler
    s.client.fail_binding = ApiError(500, {"reason": "InternalError", "message": "boom"})
    s._on_node("ADDED", node("a"), None)
    s._on_pod("ADDED", pod("p"), None)
    await step(s)
    assert s.cache.nodes["a"].requested.milli_cpu == 0
    assert not s.cache.is_assumed("ns/p")
    assert s.queue.place_of("ns/p") == BACKOFF
    assert s.bind_errors == 1


async def test_a_pod_bound_by_someone_else_leaves_the_queue(scheduler: Scheduler) -> None:
    s = scheduler
    s.client.fail_binding = ApiError(409, {"reason": "Conflict", "message": 'pod p is already assigned to node "b"'})
    s._on_node("ADDED", node("a"), None)
    s._on_pod("ADDED", pod("p"), None)
    await step(s)
    assert "ns/p" not in s.queue and s.cache.nodes["a"].requested.milli_cpu == 0


async def test_finished_and_deleted_pods_free_their_node(scheduler: Scheduler) -> None:
    s = scheduler
    s._on_node("ADDED", node("a", cpu="1"), None)
    s._on_pod("ADDED", pod("running", node_name="a", phase="Running"), None)
    s._on_pod("ADDED", pod("waiting"), None)
    await step(s)
    assert s.queue.place_of("ns/waiting") == UNSCHEDULABLE
    s._on_pod("MODIFIED", pod("running", node_name="a", phase="Succeeded", rv="2"),
              pod("running", node_name="a", phase="Running"))
    assert s.cache.nodes["a"].requested.milli_cpu == 0
    assert s.queue.place_of("ns/waiting") in ("active", BACKOFF)
    s._on_pod("ADDED", pod("other", node_name="a"), None)
    s._on_pod("DELETED", pod("other", node_name="a"), None)
    assert s.cache.pod_entry("ns/other") is None


async def test_status_updates_of_bound_pods_are_cheap_and_harmless(scheduler: Scheduler) -> None:
    s = scheduler
    s._on_node("ADDED", node("a"), None)
    running = pod("r", node_name="a", phase="Running")
    s._on_pod("ADDED", running, None)
    entry = s.cache.pod_entry("ns/r")
    again = pod("r", node_name="a", phase="Running", rv="2")
    again["status"]["podIP"] = "10.42.0.5"
    s._on_pod("MODIFIED", again, running)
    assert s.cache.pod_entry("ns/r") is entry  # not rebuilt
    assert s.cache.nodes["a"].requested.milli_cpu == 1000


async def test_other_schedulers_pods_are_left_alone(scheduler: Scheduler) -> None:
    s = scheduler
    s._on_pod("ADDED", pod("mine"), None)
    s._on_pod("ADDED", pod("theirs", schedulerName="custom"), None)
    s._on_pod("ADDED", {**pod("going"), "metadata": {**pod("going")["metadata"],
                                                       "deletionTimestamp": "2024-01-01T00:00:00Z"}}, None)
    assert "ns/mine" in s.queue and "ns/theirs" not in s.queue and "ns/going" not in s.queue


async def test_scheduling_gates_hold_a_pod(scheduler: Scheduler) -> None:
    s = scheduler
    s._on_node("ADDED", node("a"), None)
    s._on_pod("ADDED", pod("gated", schedulingGates=[{"name": "example.com/wait"}]), None)
    assert s.queue.pop_nowait().pod.scheduling_gated


async def test_node_heartbeats_do_not_wake_waiting_pods(scheduler: Scheduler) -> None:
    s = scheduler
    s._on_node("ADDED", node("a"), None)
    s._on_pod("ADDED", pod("big", cpu="4"), None)
    await step(s)
    beat = node("a")
    beat["metadata"]["resourceVersion"] = "2"
    beat["status"]["conditions"][0]["lastHeartbeatTime"] = "2024-01-01T00:00:10Z"
    s._on_node("MODIFIED", beat, node("a"))
    assert s.queue.place_of("ns/big") == UNSCHEDULABLE
    bigger = node("a", cpu="8")
    s._on_node("MODIFIED", bigger, beat)
    assert s.queue.place_of("ns/big") != UNSCHEDULABLE
