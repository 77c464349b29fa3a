"""What client-go's EventCorrelator does before an Event is written: spam filtering and aggregation.

A controller that fails the same way on every retry would otherwise write an Event per
retry: at scale those writes crowd out the work itself (a rollout of 1,000 replicas spent
half its writes on Events). As upstream:

- **spam filter**: each source and object has a token bucket of 25 events, refilled at one
  per 5 minutes; an event beyond it is dropped;
- **aggregation**: once 10 events of the same source, object, type and reason but different
  messages arrive within 10 minutes, later ones are written as one aggregated event
  ``(combined from similar events): <message>`` whose count goes up instead.

Identical repeats are counted by :class:`~k3p.client.events.EventRecorder` itself.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

#: upstream's defaults (client-go tools/record: defaultSpamBurst, defaultSpamQPS,
#: defaultAggregateMaxEvents, defaultAggregateIntervalInSeconds)
SPAM_BURST = 25
SPAM_REFILL_SECONDS = 300.0
AGGREGATE_MAX_EVENTS = 10
AGGREGATE_INTERVAL_SECONDS = 600.0
AGGREGATED_PREFIX = "(combined from similar events): "
#: how many sources/objects are remembered (upstream's LRU caches hold 4096)
CACHE_SIZE = 4096


@dataclass
class _Bucket:
    tokens: float
    stamp: float


@dataclass
class _Similar:
    messages: set[str] = field(default_factory=set)
    first: float = 0.0


class _LRU(OrderedDict):
    def touch(self, key: tuple[str, ...], make: Callable[[], object]) -> object:
        if key in self:
            self.move_to_end(key)
            return self[key]
        value = self[key] = make()
        if len(self) > CACHE_SIZE:
            self.popitem(last=False)
        return value


class EventCorrelator:
    """Decides, per event, whether to write it and with which message."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._buckets = _LRU()
        self._similar = _LRU()

    def allow(self, source: tuple[str, ...]) -> bool:
        """Take a token for ``source`` (component, host and object); False: drop the event."""
        now = self._clock()
        bucket = self._buckets.touch(source, lambda: _Bucket(SPAM_BURST, now))
        assert isinstance(bucket, _Bucket)
        bucket.tokens = min(SPAM_BURST, bucket.tokens + (now - bucket.stamp) / SPAM_REFILL_SECONDS)
        bucket.stamp = now
        if bucket.tokens < 1:
            return False
        bucket.tokens -= 1
        return True

    def message(self, similar: tuple[str, ...], message: str) -> str:
        """The message to write: ``message`` itself, or the aggregated one once ``similar``
        (source, object, type and reason) has had too many different messages lately."""
        now = self._clock()
        entry = self._similar.touch(similar, lambda: _Similar(first=now))
        assert isinstance(entry, _Similar)
        if now - entry.first > AGGREGATE_INTERVAL_SECONDS:
            entry.messages.clear()
            entry.first = now
        entry.messages.add(message)
        if len(entry.messages) < AGGREGATE_MAX_EVENTS:
            return message
        return AGGREGATED_PREFIX + message
