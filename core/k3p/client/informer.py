"""Informers: a local, always-current copy of one resource type, kept by list + watch.

An informer lists once, then watches from the list's resourceVersion, relisting when the
watch expires (410) or breaks. Listeners hear every change; controllers turn those into
keys on a work queue and read the current state from the informer's store.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Iterable
from typing import Any

import structlog

from k3p.client.api import ApiError, Client, Obj, Resource, key_of

log = structlog.get_logger(__name__)

#: (event type "ADDED"/"MODIFIED"/"DELETED", the object, the previous version or None)
Listener = Callable[[str, Obj, Obj | None], None]


#: seconds after an informer starts during which failing to list is start-up, not trouble
STARTUP_GRACE = 60.0


class Informer:
    """The objects of ``res`` (optionally one namespace / selector), kept current."""

    def __init__(self, client: Client, res: Resource, namespace: str | None = None, *,
                 label_selector: str | None = None, field_selector: str | None = None,
                 resync_seconds: float = 0) -> None:
        self.client = client
        self.res = res
        self.namespace = namespace
        self.label_selector = label_selector
        self.field_selector = field_selector
        self.resync_seconds = resync_seconds
        self.store: dict[str, Obj] = {}
        self._listeners: list[Listener] = []
        self._synced = asyncio.Event()
        self.resource_version = ""

    def add_listener(self, listener: Listener) -> None:
        """Hear every change; also replays the current objects as ADDED if already synced."""
        self._listeners.append(listener)
        if self._synced.is_set():
            for obj in list(self.store.values()):
                listener("ADDED", obj, None)

    @property
    def synced(self) -> bool:
        return self._synced.is_set()

    async def wait_synced(self) -> None:
        await self._synced.wait()

    def get(self, key: str) -> Obj | None:
        return self.store.get(key)

    def items(self, namespace: str | None = None) -> Iterable[Obj]:
        if namespace is None:
            return list(self.store.values())
        return [o for o in self.store.values() if o["metadata"].get("namespace") == namespace]

    def _notify(self, type_: str, obj: Obj, old: Obj | None) -> None:
        for listener in self._listeners:
            try:
                listener(type_, obj, old)
            except Exception:  # a listener's bug must not stop the informer
                log.exception("informer listener failed", resource=self.res.plural)

    async def _relist(self) -> None:
        items: dict[str, Obj] = {}
        cont = None
        rv = ""
        while True:
            page = await self.client.list(self.res, self.namespace, label_selector=self.label_selector,
                                          field_selector=self.field_selector, limit=500, continue_=cont)
            for item in page.get("items") or []:
                item.setdefault("apiVersion", self.res.api_version)
                item.setdefault("kind", self.res.kind)
                items[key_of(item)] = item
            rv = page["metadata"].get("resourceVersion", "")
            cont = page["metadata"].get("continue")
            if not cont:
                break
        old = self.store
        self.store = items
        self.resource_version = rv
        for key, obj in items.items():
            prev = old.get(key)
            if prev is None:
                self._notify("ADDED", obj, None)
            elif prev["metadata"].get("resourceVersion") != obj["metadata"].get("resourceVersion"):
                self._notify("MODIFIED", obj, prev)
        for key, prev in old.items():
            if key not in items:
                self._notify("DELETED", prev, None)
        self._synced.set()

    async def run(self) -> None:
        """Keep the store current until cancelled."""
        delay = 0.2
        started = time.monotonic()
        while True:
            # At start-up an informer may run before the API server listens, or before the
            # addons give its user RBAC (403): expected, so at debug until it first lists or
            # STARTUP_GRACE seconds pass; afterwards the same errors are worth a line.
            starting = not self._synced.is_set() and time.monotonic() - started < STARTUP_GRACE
            try:
                await self._relist()
                delay = 0.2
                await self._watch()
            except asyncio.CancelledError:
                raise
            except ApiError as e:
                if e.status != 410:
                    (log.debug if starting else log.warning)("informer error; relisting", resource=self.res.plural,
                                                             error=str(e))
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 10)
            except Exception as e:  # connection lost, server restarting
                (log.debug if starting else log.info)("informer lost its watch; relisting", resource=self.res.plural,
                                                      error=str(e) or type(e).__name__)
                await asyncio.sleep(delay + random.random() * delay)
                delay = min(delay * 2, 10)

    async def _watch(self) -> None:
        while True:
            timeout = random.randint(240, 480)
            async for type_, obj in self.client.watch(
                self.res, self.namespace, resource_version=self.resource_version,
                label_selector=self.label_selector, field_selector=self.field_selector, timeout_seconds=timeout,
            ):
                rv = obj.get("metadata", {}).get("resourceVersion")
                if type_ == "BOOKMARK":
                    if rv:
                        self.resource_version = rv
                    continue
                obj.setdefault("apiVersion", self.res.api_version)
                obj.setdefault("kind", self.res.kind)
                key = key_of(obj)
                prev = self.store.get(key)
                if type_ == "DELETED":
                    self.store.pop(key, None)
                    self._notify("DELETED", obj, prev)
                else:
                    self.store[key] = obj
                    self._notify("ADDED" if prev is None else "MODIFIED", obj, prev)
                if rv:
                    self.resource_version = rv


class InformerFactory:
    """One informer per (resource, namespace, selectors), shared by every controller in a process."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self._informers: dict[tuple[Any, ...], Informer] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._running: set[int] = set()

    def informer(self, res: Resource, namespace: str | None = None, *, label_selector: str | None = None,
                 field_selector: str | None = None) -> Informer:
        key = (res, namespace, label_selector, field_selector)
        inf = self._informers.get(key)
        if inf is None:
            inf = self._informers[key] = Informer(self.client, res, namespace, label_selector=label_selector,
                                                  field_selector=field_selector)
            if self._running:  # already started: start the new one too
                self._run(inf)
        return inf

    def _run(self, inf: Informer) -> None:
        if id(inf) not in self._running:
            self._running.add(id(inf))
            self._tasks.append(asyncio.create_task(inf.run(), name=f"informer-{inf.res.plural}"))

    def start(self) -> None:
        for inf in self._informers.values():
            self._run(inf)

    async def wait_synced(self) -> None:
        await asyncio.gather(*(inf.wait_synced() for inf in self._informers.values()))

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        self._running.clear()
