"""Event floods are dropped and aggregated as client-go's EventCorrelator does."""

from __future__ import annotations

import asyncio
from typing import Any

from k3p.client.api import ApiError
from k3p.client.event_correlator import AGGREGATED_PREFIX, SPAM_BURST, EventCorrelator
from k3p.client.events import EventRecorder


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_spam_filter_allows_a_burst_then_one_per_five_minutes() -> None:
    clock = Clock()
    c = EventCorrelator(clock)
    source = ("kubelet", "n1", "Pod", "default", "p", "uid-1")
    assert all(c.allow(source) for _ in range(SPAM_BURST))
    assert not c.allow(source)
    assert c.allow(("kubelet", "n1", "Pod", "default", "other", "uid-2")), "buckets are per object"
    clock.now += 299
    assert not c.allow(source)
    clock.now += 2
    assert c.allow(source)
    assert not c.allow(source)


def test_similar_events_with_many_messages_are_aggregated() -> None:
    clock = Clock()
    c = EventCorrelator(clock)
    key = ("c", "", "Pod", "ns", "p", "u", "Warning", "FailedCreate")
    written = [c.message(key, f"attempt {i} failed") for i in range(12)]
    assert written[:9] == [f"attempt {i} failed" for i in range(9)]
    assert written[9:] == [AGGREGATED_PREFIX + f"attempt {i} failed" for i in range(9, 12)]
    clock.now += 601
    assert c.message(key, "attempt 99 failed") == "attempt 99 failed", "the window starts again"


class FakeEventsClient:
    """Stores Events by name as the API would; records what was sent."""

    def __init__(self) -> None:
        self.events: dict[str, dict[str, Any]] = {}
        self.writes = 0

    async def create(self, _res: Any, obj: dict[str, Any], _ns: str) -> dict[str, Any]:
        self.writes += 1
        name = obj["metadata"]["name"]
        if name in self.events:
            raise ApiError(409, {"reason": "AlreadyExists", "message": "exists"})
        self.events[name] = obj
        return obj

    async def patch(self, _res: Any, name: str, patch: dict[str, Any], _ns: str) -> dict[str, Any]:
        self.writes += 1
        self.events[name].update(patch)
        return self.events[name]


def test_recorder_stops_writing_a_flood_and_aggregates_it() -> None:
    client = FakeEventsClient()
    recorder = EventRecorder(client, "controller")  # type: ignore[arg-type]
    pod = {"kind": "Pod", "apiVersion": "v1", "metadata": {"name": "p", "namespace": "ns", "uid": "u1"}}

    async def flood() -> None:
        for i in range(100):
            await recorder.emit(pod, "Warning", "FailedMount", f"mount {i} failed")

    asyncio.run(flood())
    assert client.writes == SPAM_BURST
    messages = sorted(e["message"] for e in client.events.values())
    aggregated = [m for m in messages if m.startswith(AGGREGATED_PREFIX)]
    assert len(client.events) == 10 and len(aggregated) == 1
    (combined,) = [e for e in client.events.values() if e["message"].startswith(AGGREGATED_PREFIX)]
    assert combined["count"] == SPAM_BURST - 9
