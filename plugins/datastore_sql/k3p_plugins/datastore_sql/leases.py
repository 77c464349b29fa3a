"""Time-to-live for keys written with a lease.

Each row written with ``lease=N`` stores its wall-clock expiry, so expiry survives
restarts: at start the store hands every live leased key to :class:`LeaseKeeper`, and
each later leased write adds one. When a key's time comes it is deleted with a
compare-and-swap on the revision that carried the lease, so a newer write of the key
(which may carry another lease, or none) is never undone by an old timer.
"""

from __future__ import annotations

import asyncio
import heapq
import time
from collections.abc import Awaitable, Callable

import structlog

log = structlog.get_logger(__name__)

#: deletes ``key`` if its mod_revision is still ``revision``; ignores that it changed
Expire = Callable[[str, int], Awaitable[None]]
_RETRY_SECONDS = 1.0


class LeaseKeeper:
    """Deletes leased keys when they expire."""

    def __init__(self, expire: Expire, clock: Callable[[], float] = time.time) -> None:
        self._expire = expire
        self._clock = clock
        self._heap: list[tuple[float, int, str]] = []
        self._changed = asyncio.Event()

    def __len__(self) -> int:
        return len(self._heap)

    def add(self, key: str, revision: int, expires_at: float) -> None:
        """Delete ``key`` at wall-clock time ``expires_at`` unless it changed after ``revision``."""
        first = self._heap[0][0] if self._heap else None
        heapq.heappush(self._heap, (expires_at, revision, key))
        if first is None or expires_at < first:
            self._changed.set()

    async def run(self) -> None:
        """Expire keys as they fall due, until cancelled."""
        while True:
            now = self._clock()
            due: list[tuple[str, int]] = []
            while self._heap and self._heap[0][0] <= now:
                _, revision, key = heapq.heappop(self._heap)
                due.append((key, revision))
            if due:
                results = await asyncio.gather(*(self._expire(k, r) for k, r in due), return_exceptions=True)
                for (key, revision), result in zip(due, results, strict=True):
                    if isinstance(result, Exception):
                        log.warning("lease expiry failed, retrying", component="datastore", key=key,
                                    error=str(result))
                        self.add(key, revision, now + _RETRY_SECONDS)
                continue
            self._changed.clear()
            timeout = self._heap[0][0] - now if self._heap else None
            try:
                await asyncio.wait_for(self._changed.wait(), timeout)
            except TimeoutError:
                pass
