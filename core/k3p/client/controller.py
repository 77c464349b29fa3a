"""The shape every k3p controller has: informers feed a work queue, workers run ``reconcile(key)``.

Subclasses set ``name``, create their informers in ``setup()`` (through ``self.informers``)
and implement ``reconcile``, which must be idempotent: it reads the current state from the
informers, changes the world through the client, and may be re-run at any time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog

from k3p.client.api import ApiError, Client, Obj, key_of
from k3p.client.events import EventRecorder
from k3p.client.informer import Informer, InformerFactory
from k3p.client.workqueue import WorkQueue

log = structlog.get_logger(__name__)


class Requeue(Exception):
    """Raise from reconcile to run the key again after ``after`` seconds (not an error)."""

    def __init__(self, after: float) -> None:
        super().__init__(f"requeue after {after}s")
        self.after = after


class Controller:
    name = "controller"
    workers = 2

    def __init__(self, client: Client, informers: InformerFactory, events: EventRecorder | None = None) -> None:
        self.client = client
        self.informers = informers
        self.events = events or EventRecorder(client, self.name)
        self.queue = WorkQueue()

    def setup(self) -> None:
        """Create informers and listeners (called before informers start)."""

    async def reconcile(self, key: str) -> None:
        raise NotImplementedError

    # --- helpers for listeners ----------------------------------------------------------

    def enqueue(self, obj: Obj) -> None:
        self.queue.add(key_of(obj))

    def watch_objects(self, informer: Informer) -> None:
        """Queue an object's own key on every change."""
        informer.add_listener(lambda _t, obj, _old: self.enqueue(obj))

    def watch_owned(self, informer: Informer, owner_kind: str,
                    resolve: Callable[[Obj], list[str]] | None = None) -> None:
        """Queue the owner (``namespace/ownerName`` of the controller ownerReference) on each change."""

        def listener(_t: str, obj: Obj, old: Obj | None) -> None:
            for o in (obj, old):
                if o is None:
                    continue
                for ref in o.get("metadata", {}).get("ownerReferences") or []:
                    if ref.get("kind") == owner_kind and ref.get("controller"):
                        ns = o["metadata"].get("namespace")
                        self.queue.add(f"{ns}/{ref['name']}" if ns else ref["name"])
                if resolve:
                    for key in resolve(o):
                        self.queue.add(key)

        informer.add_listener(listener)

    # --- running ------------------------------------------------------------------------

    async def run(self) -> None:
        """Work until cancelled (informers must be started and synced by the caller)."""
        await asyncio.gather(*(self._worker() for _ in range(self.workers)))

    async def _worker(self) -> None:
        while True:
            key = await self.queue.get()
            try:
                await self.reconcile(key)
                self.queue.forget(key)
            except asyncio.CancelledError:
                raise
            except Requeue as r:
                self.queue.forget(key)
                self.queue.add_after(key, r.after)
            except ApiError as e:
                if e.status == 409:
                    log.debug("conflict; retrying", controller=self.name, key=key)
                else:
                    log.warning("reconcile failed", controller=self.name, key=key, error=str(e))
                self.queue.add_rate_limited(key)
            except Exception as e:
                await self.reconcile_failed(key, e)
            finally:
                self.queue.done(key)

    async def reconcile_failed(self, key: str, error: Exception) -> None:
        """``reconcile(key)`` raised ``error`` (not an ApiError): log it and retry with back-off.

        Controllers that can tell a malformed object from a bug override this (e.g. record an
        event and wait for the object to change instead of retrying).
        """
        log.error("reconcile failed", controller=self.name, key=key, exc_info=error)
        self.queue.add_rate_limited(key)
