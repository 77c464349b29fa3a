"""The scheduling queue: pending pods by priority, with back-off and retry on cluster changes.

Three places, as in kube-scheduler:

- *active*: ready to be tried, highest ``spec.priority`` first, then oldest first;
- *backoff*: failed recently; they become active when their back-off (1 s doubling to
  10 s per attempt) has passed;
- *unschedulable*: no node fits. They wait for a cluster change that could help (a node
  added or changed, a pod deleted, ...) and are retried then, or after 5 minutes anyway,
  never in a hot loop.

A cluster change that arrives while a pod is being tried counts for that pod too: it goes
to back-off rather than waiting for the next change.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Callable, Iterable

from k3p_plugins.scheduler.model import PodInfo

INITIAL_BACKOFF = 1.0
MAX_BACKOFF = 10.0
MAX_UNSCHEDULABLE = 300.0

ACTIVE, BACKOFF, UNSCHEDULABLE, IN_FLIGHT = "active", "backoff", "unschedulable", "in-flight"


class QueuedPod:
    """A pending pod and its scheduling history."""

    __slots__ = ("attempts", "cycle", "last_attempt", "place", "plugins", "pod", "seq", "since", "updated")

    def __init__(self, pod: PodInfo, seq: int, now: float) -> None:
        self.pod = pod
        self.seq = seq
        self.attempts = 0
        self.last_attempt = 0.0
        self.since = now  # when it entered its current place
        self.place = ACTIVE
        self.plugins: frozenset[str] = frozenset()
        self.cycle = 0
        self.updated = False

    def backoff_until(self) -> float:
        if self.attempts == 0:
            return 0.0
        return self.last_attempt + min(MAX_BACKOFF, INITIAL_BACKOFF * 2 ** (self.attempts - 1))


class SchedulingQueue:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._entries: dict[str, QueuedPod] = {}
        self._active: list[tuple[int, int, str]] = []  # (-priority, seq, key); stale items skipped on pop
        self._backoff: list[tuple[float, int, str]] = []
        self._unschedulable: dict[str, QueuedPod] = {}
        self._seq = itertools.count()
        self._move_cycle = 0
        self._wakeup = asyncio.Event()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def place_of(self, key: str) -> str | None:
        entry = self._entries.get(key)
        return entry.place if entry else None

    def counts(self) -> dict[str, int]:
        out = {ACTIVE: 0, BACKOFF: 0, UNSCHEDULABLE: 0, IN_FLIGHT: 0}
        for entry in self._entries.values():
            out[entry.place] += 1
        return out

    # --- places ------------------------------------------------------------------------

    def _to_active(self, entry: QueuedPod) -> None:
        entry.place = ACTIVE
        entry.since = self.clock()
        self._unschedulable.pop(entry.pod.key, None)
        heapq.heappush(self._active, (-entry.pod.priority, entry.seq, entry.pod.key))
        self._wakeup.set()

    def _to_backoff(self, entry: QueuedPod) -> None:
        until = entry.backoff_until()
        if until <= self.clock():
            self._to_active(entry)
            return
        entry.place = BACKOFF
        entry.since = self.clock()
        self._unschedulable.pop(entry.pod.key, None)
        heapq.heappush(self._backoff, (until, entry.seq, entry.pod.key))
        self._wakeup.set()  # a waiting pop() must now wake up when this back-off ends

    def _to_unschedulable(self, entry: QueuedPod) -> None:
        entry.place = UNSCHEDULABLE
        entry.since = self.clock()
        self._unschedulable[entry.pod.key] = entry

    # --- informer side -----------------------------------------------------------------

    def add(self, pod: PodInfo) -> None:
        """A new pending pod, or a new version of one (``update`` semantics then)."""
        entry = self._entries.get(pod.key)
        if entry is not None:
            self.update(pod)
            return
        entry = self._entries[pod.key] = QueuedPod(pod, next(self._seq), self.clock())
        self._to_active(entry)

    def update(self, pod: PodInfo, relevant: bool = True) -> None:
        """A pending pod changed; ``relevant`` if the change could alter where it fits."""
        entry = self._entries.get(pod.key)
        if entry is None:
            self.add(pod)
            return
        entry.pod = pod
        if not relevant:
            return
        if entry.place == IN_FLIGHT:
            entry.updated = True
        elif entry.place == UNSCHEDULABLE:
            self._to_backoff(entry)

    def delete(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._unschedulable.pop(key, None)

    def move(self, plugins: Iterable[str] | None = None) -> int:
        """A cluster change: retry unschedulable pods that any of ``plugins`` (None: all) rejected."""
        self._move_cycle += 1
        wanted = None if plugins is None else frozenset(plugins)
        moved = 0
        for entry in list(self._unschedulable.values()):
            if wanted is None or "*" in entry.plugins or entry.plugins & wanted:
                self._to_backoff(entry)
                moved += 1
        return moved

    # --- scheduler side ----------------------------------------------------------------

    def flush(self) -> None:
        """Activate pods whose back-off is over and pods left unschedulable for too long."""
        now = self.clock()
        while self._backoff and self._backoff[0][0] <= now:
            _, seq, key = heapq.heappop(self._backoff)
            entry = self._entries.get(key)
            if entry is not None and entry.place == BACKOFF and entry.seq == seq:
                self._to_active(entry)
        for entry in list(self._unschedulable.values()):
            if now - entry.since >= MAX_UNSCHEDULABLE:
                self._to_backoff(entry)

    def next_backoff_expiry(self) -> float | None:
        return self._backoff[0][0] if self._backoff else None

    def pop_nowait(self) -> QueuedPod | None:
        while self._active:
            _, seq, key = heapq.heappop(self._active)
            entry = self._entries.get(key)
            if entry is None or entry.place != ACTIVE or entry.seq != seq:
                continue  # deleted, or moved since it was pushed
            entry.place = IN_FLIGHT
            entry.attempts += 1
            entry.last_attempt = self.clock()
            entry.cycle = self._move_cycle
            entry.updated = False
            return entry
        return None

    async def pop(self) -> QueuedPod:
        """The next pod to try (waits while there is none)."""
        while True:
            self.flush()
            entry = self.pop_nowait()
            if entry is not None:
                return entry
            self._wakeup.clear()
            expiry = self.next_backoff_expiry()
            timeout = None if expiry is None else max(0.0, expiry - self.clock()) + 0.001
            try:
                await asyncio.wait_for(self._wakeup.wait(), timeout)
            except TimeoutError:
                pass

    def done(self, key: str) -> None:
        """The pod was bound (or is being bound): it leaves the queue."""
        entry = self._entries.get(key)
        if entry is not None and entry.place == IN_FLIGHT:
            del self._entries[key]

    def unschedulable(self, entry: QueuedPod, plugins: frozenset[str]) -> None:
        """No node fitted. It waits for a relevant change, unless one came while it was tried."""
        if self._entries.get(entry.pod.key) is not entry:
            return  # deleted (or replaced) meanwhile
        entry.plugins = plugins
        if entry.updated or self._move_cycle > entry.cycle:
            self._to_backoff(entry)
        else:
            self._to_unschedulable(entry)

    def retry(self, entry: QueuedPod) -> None:
        """Something went wrong on the way (an API error): try again after the back-off.

        Not if the pod left the queue meanwhile: it was deleted, or reported bound after all.
        """
        if self._entries.get(entry.pod.key) is entry:
            self._to_backoff(entry)
