"""The watch cache: every stored object in memory, fed by one datastore watch.

Lists and watches are served from here, never from the datastore. The whole keyspace
under ``/registry/`` is loaded once and then kept current by a single watch; objects are
grouped in *buckets*, one per resource type's storage prefix. Each object is kept both
decoded (for filtering) and serialized (with its ``resourceVersion`` set), and each change
is serialized into a watch-event line once: the same bytes go to every watcher. This is
what keeps a thousand watchers or a ten-thousand-object list cheap.
"""

from __future__ import annotations

import asyncio
import collections
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import structlog

from k3p.protocols.datastore import CompactedError, Datastore, Event, EventType

log = structlog.get_logger(__name__)

ROOT = "/registry/"
#: events kept per bucket for watch replay by default; older resourceVersions get 410 Expired
WINDOW = 1000
#: events a watcher may fall behind by before it is closed (its client watches again)
WATCHER_QUEUE = 20000


def encode(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


class CachedObject:
    """One object at one resourceVersion, decoded and serialized."""

    __slots__ = ("key", "obj", "raw", "rv")

    def __init__(self, key: str, obj: dict[str, Any], rv: int) -> None:
        obj.setdefault("metadata", {})["resourceVersion"] = str(rv)
        self.key = key
        self.obj = obj
        self.rv = rv
        self.raw = encode(obj)

    @classmethod
    def from_value(cls, key: str, value: bytes, rv: int) -> CachedObject:
        return cls(key, json.loads(value), rv)


_TYPES = {EventType.CREATE: "ADDED", EventType.UPDATE: "MODIFIED", EventType.DELETE: "DELETED"}


class WatchEvent:
    """A change as a watch event; its JSON line is built once and shared by all watchers."""

    __slots__ = ("_lines", "item", "prev", "type")

    def __init__(self, type_: str, item: CachedObject, prev: CachedObject | None = None) -> None:
        self.type = type_
        self.item = item
        self.prev = prev
        self._lines: dict[Any, bytes] = {}

    @property
    def rv(self) -> int:
        return self.item.rv

    def line(self, render: Callable[[WatchEvent], bytes] | None = None, key: Any = None) -> bytes:
        """The event as one JSON line; ``render`` makes another format (e.g. a Table row), cached by ``key``."""
        cached = self._lines.get(key)
        if cached is None:
            if render is None:
                cached = b'{"type":"' + self.type.encode() + b'","object":' + self.item.raw + b"}\n"
            else:
                cached = render(self)
            self._lines[key] = cached
        return cached


class Expired(Exception):
    """A resourceVersion older than the cache's window (the API answers 410 Expired)."""

    def __init__(self, requested: int, oldest: int) -> None:
        super().__init__(f"too old resource version: {requested} ({oldest})")
        self.requested = requested
        self.oldest = oldest


class Watcher:
    """One client's watch on a bucket; ``filter`` picks the objects it wants."""

    def __init__(self, bucket: Bucket, filter_: Callable[[dict[str, Any]], bool]) -> None:
        self.bucket = bucket
        self.filter = filter_
        self.queue: asyncio.Queue[WatchEvent | None] = asyncio.Queue(WATCHER_QUEUE)
        self.closed = False

    def view(self, event: WatchEvent) -> WatchEvent | None:
        """The event as this watcher sees it through its filter, or None if it does not see it.

        A change that moves an object into or out of the filter is an ADDED or DELETED for
        this watcher, as in Kubernetes.
        """
        now = self.filter(event.item.obj)
        before = event.prev is not None and self.filter(event.prev.obj)
        if event.type == "MODIFIED":
            if now and before:
                return event
            if now or before:
                return WatchEvent("ADDED" if now else "DELETED", event.item)
            return None
        if event.type == "DELETED":
            return event if (now or before) else None
        return event if now else None

    def offer(self, event: WatchEvent) -> None:
        if self.closed:
            return
        seen = self.view(event)
        if seen is None:
            return
        event = seen
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            log.warning("watcher fell too far behind; closing it", bucket=self.bucket.prefix)
            self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.bucket.watchers.discard(self)
            try:
                self.queue.put_nowait(None)
            except asyncio.QueueFull:
                # Make room for the end marker: the client re-watches from its last event anyway.
                self.queue.get_nowait()
                self.queue.put_nowait(None)

    async def next(self) -> WatchEvent | None:
        """The next event, or None when the watch has ended."""
        return await self.queue.get()


@dataclass
class Bucket:
    """The objects of one storage prefix, the recent events on them, and their watchers."""

    prefix: str
    objects: dict[str, CachedObject] = field(default_factory=dict)
    window: int = WINDOW
    events: collections.deque[WatchEvent] = field(init=False)
    #: every event after this revision is in ``events``
    window_start: int = 0
    watchers: set[Watcher] = field(default_factory=set)
    #: bumped by every change: a cheap version for caches derived from the bucket
    changes: int = 0
    #: called with every event before watchers see it (indexes kept beside the cache)
    listeners: list[Callable[[WatchEvent], None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.events = collections.deque(maxlen=self.window)

    def apply(self, event: WatchEvent) -> None:
        self.changes += 1
        if event.type == "DELETED":
            self.objects.pop(event.item.key, None)
        else:
            self.objects[event.item.key] = event.item
        for listen in self.listeners:
            try:
                listen(event)
            except Exception:
                # an index must never stop the feed that every list and watch depends on
                log.exception("watch cache listener failed", bucket=self.prefix)
        if len(self.events) == self.events.maxlen:
            self.window_start = self.events[0].rv
        self.events.append(event)
        for w in list(self.watchers):
            w.offer(event)


class WatchCache:
    """All objects under /registry/, kept current from one datastore watch."""

    def __init__(self, datastore: Datastore, window: int = WINDOW) -> None:
        self.datastore = datastore
        self.window = window
        self.revision = 0
        self._buckets: dict[str, Bucket] = {}
        #: prefixes of known resource types (the other buckets are guesses for unknown keys)
        self._registered: set[str] = set()
        self._task: asyncio.Task[None] | None = None
        self._advanced = asyncio.Event()
        self._error: BaseException | None = None

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Load everything at one revision and follow changes from there."""
        revision = await self.datastore.current_revision()
        start_key = ROOT
        while True:
            page = await self.datastore.list(ROOT, start_key=start_key, limit=5000, revision=revision)
            for kv in page.kvs:
                item = CachedObject.from_value(kv.key, kv.value, kv.mod_revision)
                self.bucket_for_key(kv.key).objects[kv.key] = item
            if not page.more or not page.kvs:
                break
            start_key = page.kvs[-1].key + "\x00"
        self.revision = revision
        for b in self._buckets.values():
            b.window_start = revision
        self._task = asyncio.create_task(self._follow(revision), name="watch-cache")
        log.info("watch cache loaded", revision=revision, objects=sum(len(b.objects) for b in self._buckets.values()))

    async def close(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for b in self._buckets.values():
            for w in list(b.watchers):
                w.close()

    async def _follow(self, revision: int) -> None:
        try:
            async for event in self.datastore.watch(ROOT, revision):
                self._apply(event)
        except asyncio.CancelledError:
            raise
        except CompactedError as e:
            # Only possible if compaction outran a stalled cache: nothing to do but reload.
            self._error = e
            log.error("watch cache fell behind compaction", error=str(e))
            raise
        except Exception as e:
            self._error = e
            log.exception("watch cache feed failed")
            raise

    def _apply(self, event: Event) -> None:
        kv = event.kv
        bucket = self.bucket_for_key(kv.key)
        prev = bucket.objects.get(kv.key)
        if event.type is EventType.DELETE:
            if prev is not None:
                # The deleted object as clients see it: its last state, at the delete's revision.
                item = CachedObject(kv.key, json.loads(prev.raw), kv.mod_revision)
            else:
                item = CachedObject.from_value(kv.key, kv.value, kv.mod_revision)
        else:
            item = CachedObject.from_value(kv.key, kv.value, kv.mod_revision)
        type_ = _TYPES[event.type]
        if type_ == "ADDED" and prev is not None:
            type_ = "MODIFIED"
        bucket.apply(WatchEvent(type_, item, prev))
        self.revision = kv.mod_revision
        self._advanced.set()
        self._advanced = asyncio.Event()

    # --- buckets --------------------------------------------------------------------------

    def register(self, prefix: str) -> Bucket:
        """Make ``prefix`` (a resource type's storage prefix, ending in '/') a bucket of its own.

        Objects already loaded under a broader guess move into it, so a custom resource
        type registered after its objects were stored still sees them.
        """
        bucket = self._buckets.get(prefix)
        if bucket is not None:
            self._registered.add(prefix)
            return bucket
        bucket = Bucket(prefix, window_start=self.revision, window=self.window)
        # Keys seen before their type was known were grouped by a guess one level too deep
        # (<prefix><namespace>/): fold those guesses into the real bucket.
        for other in [b for b in self._buckets.values()
                      if b.prefix.startswith(prefix) and b.prefix not in self._registered]:
            bucket.objects.update(other.objects)
            del self._buckets[other.prefix]
        self._buckets[prefix] = bucket
        self._registered.add(prefix)
        return bucket

    def bucket_for_key(self, key: str) -> Bucket:
        # Namespaced keys are <prefix><ns>/<name>, cluster-scoped ones <prefix><name>.
        head = key[: key.rfind("/") + 1]
        bucket = self._buckets.get(head)
        if bucket is None:
            head2 = head[: head.rfind("/", 0, len(head) - 1) + 1]
            bucket = self._buckets.get(head2)
            if bucket is None:
                bucket = self._buckets[head] = Bucket(head, window_start=self.revision, window=self.window)
        return bucket

    def listen(self, prefix: str, listener: Callable[[WatchEvent], None]) -> Iterable[CachedObject]:
        """Call ``listener`` with every later event of a registered bucket; returns its current objects.

        The listener runs synchronously as each change is applied, before any watcher or
        reader sees it, so an index it keeps is never behind the cache.
        """
        bucket = self.bucket(prefix)
        bucket.listeners.append(listener)
        return list(bucket.objects.values())

    def bucket(self, prefix: str) -> Bucket:
        """The bucket of a registered resource type's storage prefix."""
        bucket = self._buckets.get(prefix)
        if bucket is None or prefix not in self._registered:
            raise KeyError(f"no resource type stores its objects under {prefix}")
        return bucket

    # --- reads ----------------------------------------------------------------------------

    async def wait_fresh(self, revision: int, timeout: float = 5.0) -> None:
        """Wait until the cache has applied every change up to ``revision``."""
        if self._error is not None:
            raise RuntimeError(f"watch cache is not following the datastore: {self._error}")
        deadline = asyncio.get_running_loop().time() + timeout
        while self.revision < revision:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                raise TimeoutError(f"watch cache is at revision {self.revision}, waited for {revision}")
            try:
                await asyncio.wait_for(self._advanced.wait(), left)
            except TimeoutError:
                continue

    def get(self, prefix: str, key: str) -> CachedObject | None:
        return self.bucket(prefix).objects.get(key)

    def items(self, prefix: str, key_prefix: str | None = None) -> Iterable[CachedObject]:
        objects = self.bucket(prefix).objects
        if key_prefix is None or key_prefix == prefix:
            return objects.values()
        return (o for k, o in objects.items() if k.startswith(key_prefix))

    def watch(
        self,
        prefix: str,
        after: int | None,
        filter_: Callable[[dict[str, Any]], bool],
        key_prefix: str | None = None,
    ) -> tuple[Watcher, list[WatchEvent]]:
        """Start watching; returns the watcher and the events to send first.

        ``after`` None: the current state as ADDED events, then changes. ``after`` R: the
        changes after R from the window (Expired if R is older than the window).
        ``key_prefix`` narrows the initial state cheaply (a namespace); ``filter_`` must
        still check everything it wants.
        """
        bucket = self.bucket(prefix)
        watcher = Watcher(bucket, filter_)
        if after is None:
            first = [WatchEvent("ADDED", o) for o in self.items(prefix, key_prefix) if filter_(o.obj)]
        else:
            if after < bucket.window_start:
                raise Expired(after, bucket.window_start)
            first = []
            for ev in bucket.events:
                if ev.rv > after:
                    seen = watcher.view(ev)
                    if seen is not None:
                        first.append(seen)
        bucket.watchers.add(watcher)
        return watcher, first
