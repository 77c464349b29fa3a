"""The scheduling queue: priority order, back-off, and waiting for a cluster change."""

from __future__ import annotations

import asyncio
import time

import pytest

from k3p_plugins.scheduler import queue as queue_module
from k3p_plugins.scheduler.model import PodInfo
from k3p_plugins.scheduler.queue import ACTIVE, BACKOFF, MAX_UNSCHEDULABLE, UNSCHEDULABLE, SchedulingQueue


def pod(name: str, priority: int = 0, **spec: object) -> PodInfo:
    return PodInfo({"metadata": {"name": name, "namespace": "ns"}, "spec": {"priority": priority, **spec}})


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def drain(q: SchedulingQueue) -> list[str]:
    out = []
    while (entry := q.pop_nowait()) is not None:
        out.append(entry.pod.name)
    return out


def test_priority_then_arrival_order() -> None:
    q = SchedulingQueue(Clock())
    for name, prio in (("low-1", 0), ("high", 1000), ("low-2", 0), ("mid", 10)):
        q.add(pod(name, prio))
    assert drain(q) == ["high", "mid", "low-1", "low-2"]


def test_unschedulable_pods_wait_for_a_relevant_change_then_back_off() -> None:
    clock = Clock()
    q = SchedulingQueue(clock)
    q.add(pod("p"))
    entry = q.pop_nowait()
    q.unschedulable(entry, frozenset({"NodeResourcesFit"}))
    assert q.place_of("ns/p") == UNSCHEDULABLE
    clock.now += 100
    q.flush()
    assert q.pop_nowait() is None  # no hot loop: nothing changed
    assert q.move(["InterPodAffinity"]) == 0
    assert q.move(["NodeResourcesFit"]) == 1
    assert q.place_of("ns/p") == ACTIVE  # its 1 s back-off ended long ago
    entry = q.pop_nowait()
    assert entry.attempts == 2
    q.unschedulable(entry, frozenset({"NodeResourcesFit"}))
    q.move()  # right after the second attempt: 2 s of back-off first
    assert q.place_of("ns/p") == BACKOFF
    clock.now += 1.5
    q.flush()
    assert q.pop_nowait() is None
    clock.now += 0.6
    q.flush()
    assert q.pop_nowait().pod.name == "p"


def test_backoff_grows_to_ten_seconds() -> None:
    q = SchedulingQueue(Clock())
    q.add(pod("p"))
    entry = q.pop_nowait()
    waits = []
    for _ in range(6):
        waits.append(entry.backoff_until() - entry.last_attempt)
        entry.attempts += 1
    assert waits == [1, 2, 4, 8, 10, 10]


def test_a_change_during_the_attempt_is_not_lost() -> None:
    clock = Clock()
    q = SchedulingQueue(clock)
    q.add(pod("p"))
    entry = q.pop_nowait()
    q.move()  # a node was added while the pod was being tried
    q.unschedulable(entry, frozenset({"NodeResourcesFit"}))
    assert q.place_of("ns/p") == BACKOFF


def test_pod_updates() -> None:
    clock = Clock()
    q = SchedulingQueue(clock)
    q.add(pod("p"))
    entry = q.pop_nowait()
    q.unschedulable(entry, frozenset({"NodeAffinity"}))
    clock.now += 5
    q.update(pod("p"), relevant=False)  # e.g. our own status write
    assert q.place_of("ns/p") == UNSCHEDULABLE
    q.update(pod("p", nodeSelector={"disk": "ssd"}))
    assert q.place_of("ns/p") == ACTIVE
    assert q.pop_nowait().pod.obj["spec"]["nodeSelector"] == {"disk": "ssd"}


def test_delete_and_stale_entries() -> None:
    q = SchedulingQueue(Clock())
    q.add(pod("a"))
    q.add(pod("b"))
    q.delete("ns/a")
    assert drain(q) == ["b"]
    assert len(q) == 1  # b is being tried
    q.done("ns/b")
    assert len(q) == 0


def test_unschedulable_pods_are_retried_after_five_minutes_anyway() -> None:
    clock = Clock()
    q = SchedulingQueue(clock)
    q.add(pod("p"))
    q.unschedulable(q.pop_nowait(), frozenset({"NodeResourcesFit"}))
    clock.now += MAX_UNSCHEDULABLE - 1
    q.flush()
    assert q.pop_nowait() is None
    clock.now += 2
    q.flush()
    assert q.pop_nowait().pod.name == "p"


def test_retry_after_an_error_backs_off() -> None:
    clock = Clock()
    q = SchedulingQueue(clock)
    q.add(pod("p"))
    entry = q.pop_nowait()
    q.retry(entry)
    assert q.place_of("ns/p") == BACKOFF
    clock.now += 1
    q.flush()
    assert q.pop_nowait() is entry


async def test_pop_wakes_when_a_moved_pods_backoff_ends(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(queue_module, "INITIAL_BACKOFF", 0.2)
    q = SchedulingQueue()
    q.add(pod("p"))
    entry = await q.pop()
    q.unschedulable(entry, frozenset({"NodeResourcesFit"}))
    waiter = asyncio.create_task(q.pop())
    await asyncio.sleep(0.05)
    assert not waiter.done()
    began = time.monotonic()
    q.move()  # still backing off: the waiting pop must wake when the back-off ends
    again = await asyncio.wait_for(waiter, 2)
    assert again is entry
    assert time.monotonic() - began < 1
