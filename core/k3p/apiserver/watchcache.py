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

from k3p.heap import TrimAfterFrees
from k3p.protocols.datastore import CompactedError, Datastore, Event, EventType

log = structlog.get_logger(__name__)

ROOT = "/registry/"
#: events kept per bucket for watch replay by default; older resourceVersions get 410 Expired
WINDOW = 1000
#: serialized bytes of the object versions the events of one bucket's window may keep alive
#: (an update's event keeps the new version and the one before): a few megabyte-sized
#: objects written over and over must not keep a thousand old versions in memory
WINDOW_BYTES = 16 * 2**20
#: events a watcher may have queued (not yet taken by its connection) before it is closed
WATCHER_BACKLOG_EVENTS = 10_000
#: serialized bytes of the object versions those queued events may keep alive; a watcher
#: past either bound has fallen behind and is closed: its stream ends and its client
#: watches again from its last event
WATCHER_BACKLOG_BYTES = 8 * 2**20
#: bytes of events a watch stream joins into one write; the connection buffers about one
#: write beyond its transport's high-water mark before the stream waits for the client
WATCH_WRITE_BYTES = 16 * 1024


def encode(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


class CachedObject:
    """One object at one resourceVersion, decoded and serialized."""

    __slots__ = ("key", "obj", "raw", "rv")

    @property
    def size(self) -> int:
        """Serialized bytes: what the bounds on windows and watcher backlogs count."""
        return len(self.raw)

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

    @property
    def size(self) -> int:
        """Serialized bytes of the object versions the event keeps alive (the new one and the one before)."""
        return self.item.size + (self.prev.size if self.prev is not None else 0)

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
    """One client's watch on a bucket; ``filter`` picks the objects it wants.

    Events wait in the watcher's backlog until its connection takes them. The backlog is
    bounded (``WATCHER_BACKLOG_EVENTS`` events, ``WATCHER_BACKLOG_BYTES`` of serialized
    objects): a client that does not read would otherwise keep every event since it
    stopped alive. Past the bound the watcher is closed and its backlog dropped, as
    kube-apiserver terminates an unresponsive watcher; the client's next watch from its
    last resourceVersion gets the dropped events from the window (or 410 and relists).
    """

    def __init__(self, bucket: Bucket, filter_: Callable[[dict[str, Any]], bool],
                 max_events: int = WATCHER_BACKLOG_EVENTS, max_bytes: int = WATCHER_BACKLOG_BYTES) -> None:
        self.bucket = bucket
        self.filter = filter_
        self.max_events = max_events
        self.max_bytes = max_bytes
        self._backlog: collections.deque[WatchEvent] = collections.deque()
        #: serialized bytes of the objects in the backlog
        self.backlog_bytes = 0
        self._ready = asyncio.Event()
        self.closed = False
        #: closed because its backlog passed the bound
        self.fell_behind = False

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
        size = seen.size
        if len(self._backlog) >= self.max_events or self.backlog_bytes + size > self.max_bytes:
            log.warning("watcher fell too far behind; closing it", bucket=self.bucket.prefix,
                        events=len(self._backlog), bytes=self.backlog_bytes)
            self.fell_behind = True
            if self.bucket.trimmer is not None:
                self.bucket.trimmer.freed(self.backlog_bytes)
            self.close()
            return
        self._backlog.append(seen)
        self.backlog_bytes += size
        self._ready.set()

    def close(self) -> None:
        """End the watch: no more events, and the queued ones are dropped."""
        if not self.closed:
            self.closed = True
            self.bucket.watchers.discard(self)
            self._backlog.clear()
            self.backlog_bytes = 0
            self._ready.set()

    def pending(self) -> int:
        """How many events are queued."""
        return len(self._backlog)

    def take(self, max_bytes: int) -> list[WatchEvent]:
        """Queued events, oldest first, whose objects come to at most ``max_bytes`` serialized (at least one)."""
        out: list[WatchEvent] = []
        written = 0
        backlog = self._backlog
        while backlog and (not out or written + backlog[0].item.size <= max_bytes):
            ev = backlog.popleft()
            written += ev.item.size
            self.backlog_bytes -= ev.size
            out.append(ev)
        if not backlog and not self.closed:
            self._ready.clear()
        return out

    async def wait(self) -> bool:
        """Wait until an event is queued or the watch has ended; False once it has ended."""
        if not self._backlog and not self.closed:
            await self._ready.wait()
        return not self.closed

    async def next(self) -> WatchEvent | None:
        """The next event, or None when the watch has ended."""
        if not await self.wait():
            return None
        return self.take(0)[0]


@dataclass
class Bucket:
    """The objects of one storage prefix, the recent events on them, and their watchers."""

    prefix: str
    objects: dict[str, CachedObject] = field(default_factory=dict)
    window: int = WINDOW
    window_bytes: int = WINDOW_BYTES
    events: collections.deque[WatchEvent] = field(init=False)
    #: serialized bytes of the objects of the events in ``events``
    events_bytes: int = 0
    #: every event after this revision is in ``events``
    window_start: int = 0
    watchers: set[Watcher] = field(default_factory=set)
    #: bumped by every change: a cheap version for caches derived from the bucket
    changes: int = 0
    #: told the size of old object versions that leave the window (their memory is freed)
    trimmer: TrimAfterFrees | None = None
    #: called with every event before watchers see it (indexes kept beside the cache)
    listeners: list[Callable[[WatchEvent], None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.events = collections.deque()

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
        self.events.append(event)
        self.events_bytes += event.size
        # The newest event always stays, however big: a watch from the revision before it must resume.
        while len(self.events) > 1 and (len(self.events) > self.window or self.events_bytes > self.window_bytes):
            old = self.events.popleft()
            self.events_bytes -= old.size
            self.window_start = old.rv
            if self.trimmer is not None and self.objects.get(old.item.key) is not old.item:
                self.trimmer.freed(old.item.size)
        for w in list(self.watchers):
            w.offer(event)


class WatchCache:
    """All objects under /registry/, kept current from one datastore watch."""

    def __init__(self, datastore: Datastore, window: int = WINDOW, window_bytes: int = WINDOW_BYTES) -> None:
        self.datastore = datastore
        self.window = window
        self.window_bytes = window_bytes
        #: large objects replaced or deleted leave freed memory in the heap: give it back
        self.trimmer = TrimAfterFrees()
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
        self.trimmer.cancel()
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
        bucket = Bucket(prefix, window_start=self.revision, window=self.window,
                        window_bytes=self.window_bytes, trimmer=self.trimmer)
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
                bucket = self._buckets[head] = Bucket(head, window_start=self.revision, window=self.window,
                                                      window_bytes=self.window_bytes, trimmer=self.trimmer)
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
