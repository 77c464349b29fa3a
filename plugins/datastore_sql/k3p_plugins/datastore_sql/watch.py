"""In-process watch fan-out: committed events go to every matching watcher.

Each watcher has a bounded buffer. A watcher that falls behind by more than its buffer is
dropped from the live stream (so it never holds up writers or other watchers); it then
reads the events it missed from the database, from the last revision it delivered, and
joins the live stream again. Joining is atomic with publishing (both run on the event
loop), so history read up to the join revision plus live events after it leave no gap
and no duplicate.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

from k3p.protocols.datastore import DatastoreError, Event

#: reads (after, upto] for a prefix, at most ``limit`` events, oldest first; raises
#: CompactedError when ``after`` is below the compaction point
ReadEvents = Callable[[str, int, int, int], Awaitable[list[Event]]]


class _Watcher:
    __slots__ = ("closed", "events", "overflowed", "prefix", "ready")

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.events: collections.deque[Event] = collections.deque()
        self.overflowed = False
        self.closed = False
        self.ready = asyncio.Event()


class WatchHub:
    """Fans out committed events; serves watch streams that start from any revision."""

    def __init__(self, buffer: int = 1000, page: int = 500) -> None:
        self.revision = 0
        self._buffer = buffer
        self._page = page
        self._by_prefix: dict[str, set[_Watcher]] = {}
        self._open = False
        self._closed = False

    def open(self, revision: int) -> None:
        """Start serving watches; ``revision`` is the last committed one."""
        self.revision = revision
        self._open = True

    @property
    def watchers(self) -> int:
        """Number of watchers on the live stream now."""
        return sum(len(s) for s in self._by_prefix.values())

    def publish(self, events: Sequence[Event], revision: int) -> None:
        """Deliver freshly committed ``events`` (in revision order) and advance to ``revision``."""
        self.revision = revision
        if not events:
            return
        for prefix, watchers in list(self._by_prefix.items()):
            matched = [e for e in events if e.kv.key.startswith(prefix)] if prefix else events
            if not matched:
                continue
            for w in list(watchers):
                w.events.extend(matched)
                if len(w.events) > self._buffer:
                    # too slow: let it catch up from the database instead
                    w.overflowed = True
                    w.events.clear()
                    self._leave(w)
                w.ready.set()

    def close(self) -> None:
        """End every watch stream."""
        self._closed = True
        for watchers in list(self._by_prefix.values()):
            for w in list(watchers):
                w.closed = True
                w.ready.set()
        self._by_prefix.clear()

    def _join(self, w: _Watcher) -> int:
        w.overflowed = False
        w.events.clear()
        w.ready.clear()
        self._by_prefix.setdefault(w.prefix, set()).add(w)
        return self.revision

    def _leave(self, w: _Watcher) -> None:
        watchers = self._by_prefix.get(w.prefix)
        if watchers is not None:
            watchers.discard(w)
            if not watchers:
                del self._by_prefix[w.prefix]

    async def stream(self, prefix: str, after_revision: int, read_events: ReadEvents) -> AsyncIterator[Event]:
        """Events for ``prefix`` with revision > ``after_revision``: history, then live."""
        if not self._open:
            raise DatastoreError("datastore is not started")
        if self._closed:
            raise DatastoreError("datastore is closed")
        w = _Watcher(prefix)
        cursor = after_revision  # every matching event up to here has been delivered
        try:
            while True:
                joined = self._join(w)
                while cursor < joined:
                    try:
                        page = await read_events(prefix, cursor, joined, self._page)
                    except Exception:
                        if self._closed:
                            return
                        raise
                    if self._closed:
                        return
                    for event in page:
                        cursor = event.revision
                        yield event
                    if len(page) < self._page:
                        cursor = joined
                while not w.overflowed:
                    if w.events:
                        event = w.events.popleft()
                        if event.revision > cursor:
                            cursor = event.revision
                            yield event
                    elif w.closed:
                        return
                    else:
                        w.ready.clear()
                        await w.ready.wait()
        finally:
            self._leave(w)
