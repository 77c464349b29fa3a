"""The scheduler at work: informers feed the cache and the queue; one loop decides, binds run beside it.

Decisions are made one at a time (each sees every earlier one through the cache's
assumed pods), while up to ``bind_concurrency`` bindings are in flight to the API.
A pod no node can take gets ``PodScheduled=False`` (reason ``Unschedulable``) through the
status subresource and a ``FailedScheduling`` event; a bound pod gets a ``Scheduled``
event. Events go out through a bounded buffer and are dropped, not waited for, when the
API is too slow to take them all (kube's event broadcaster does the same).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Coroutine
from typing import Any

import structlog

import k3p_plugins.scheduler.messages as messages
from k3p.client import ApiError, Client, EventRecorder, InformerFactory
from k3p.client.objects import format_time
from k3p.client.resources import NAMESPACES, NODES, PERSISTENTVOLUMECLAIMS, PERSISTENTVOLUMES, PODS, STORAGECLASSES
from k3p_plugins.scheduler.algorithm import Algorithm
from k3p_plugins.scheduler.cache import SchedulerCache
from k3p_plugins.scheduler.filters import (
    INTER_POD_AFFINITY,
    NODE_PORTS,
    NODE_RESOURCES_FIT,
    POD_TOPOLOGY_SPREAD,
)
from k3p_plugins.scheduler.model import Obj, PodInfo
from k3p_plugins.scheduler.queue import QueuedPod, SchedulingQueue
from k3p_plugins.scheduler.volumes import VOLUME_BINDING, VolumeBinder, VolumeBindingError, VolumePlan

log = structlog.get_logger(__name__)

DEFAULT_SCHEDULER_NAME = "default-scheduler"

#: which rejections a cluster change may cure (a coarse form of kube's queueing hints)
_ON_POD_DELETED = (NODE_RESOURCES_FIT, NODE_PORTS, INTER_POD_AFFINITY, POD_TOPOLOGY_SPREAD)
_ON_POD_ADDED = (INTER_POD_AFFINITY, POD_TOPOLOGY_SPREAD)
_ON_NODE_DELETED = (INTER_POD_AFFINITY, POD_TOPOLOGY_SPREAD)
_ON_NAMESPACE = (INTER_POD_AFFINITY,)
_ON_STORAGE = (VOLUME_BINDING,)


def _meaningful_change(old: Obj | None, new: Obj) -> bool:
    """Whether a pending pod's update could change where it fits (status and bookkeeping cannot)."""
    if old is None:
        return True
    om, nm = old.get("metadata") or {}, new.get("metadata") or {}
    return (old.get("spec") != new.get("spec") or om.get("labels") != nm.get("labels")
            or om.get("annotations") != nm.get("annotations")
            or om.get("deletionTimestamp") != nm.get("deletionTimestamp"))


class EventSink:
    """Events sent by a few workers from a bounded buffer; when it is full, new events are dropped."""

    def __init__(self, recorder: EventRecorder, capacity: int = 1000, workers: int = 1) -> None:
        self.recorder = recorder
        self.workers = workers
        self._queue: asyncio.Queue[tuple[Obj, str, str, str]] = asyncio.Queue(capacity)
        self.dropped = 0
        self.sent = 0

    def emit(self, obj: Obj, type_: str, reason: str, message: str) -> None:
        try:
            self._queue.put_nowait((obj, type_, reason, message))
        except asyncio.QueueFull:
            self.dropped += 1

    async def run(self) -> None:
        await asyncio.gather(*(self._worker() for _ in range(self.workers)))

    async def _worker(self) -> None:
        while True:
            obj, type_, reason, message = await self._queue.get()
            await self.recorder.emit(obj, type_, reason, message)
            self.sent += 1
            self._queue.task_done()

    async def drain(self) -> None:
        """Wait until every buffered event has been sent (tests and benchmarks)."""
        await self._queue.join()


class Scheduler:
    """kube-scheduler's job for one cluster: place every pending pod of ``scheduler_name`` on a node."""

    def __init__(self, client: Client, *, scheduler_name: str = DEFAULT_SCHEDULER_NAME,
                 bind_concurrency: int = 8, status_concurrency: int = 8, rng: random.Random | None = None) -> None:
        self.client = client
        self.scheduler_name = scheduler_name
        self.cache = SchedulerCache()
        self.queue = SchedulingQueue()
        self.informers = InformerFactory(client)
        self.volumes = VolumeBinder(self.informers.informer(PERSISTENTVOLUMECLAIMS),
                                    self.informers.informer(PERSISTENTVOLUMES),
                                    self.informers.informer(STORAGECLASSES), nodes=self._node_object)
        self.algorithm = Algorithm(self.cache, rng, self.volumes)
        self.events = EventSink(EventRecorder(client, scheduler_name))
        self._bind_slots = asyncio.Semaphore(bind_concurrency)
        self._status_slots = asyncio.Semaphore(status_concurrency)
        self._tasks: set[asyncio.Task[Any]] = set()
        self.bound = 0
        self.bind_errors = 0
        self.failed_attempts = 0
        self.pods = self.informers.informer(PODS)
        self.nodes = self.informers.informer(NODES)
        self.namespaces = self.informers.informer(NAMESPACES)
        self.nodes.add_listener(self._on_node)
        self.pods.add_listener(self._on_pod)
        self.namespaces.add_listener(self._on_namespace)
        self.volumes.claims.add_listener(self._on_storage)
        self.volumes.volumes.add_listener(self._on_storage)
        self.volumes.classes.add_listener(self._on_storage)

    # --- informer listeners --------------------------------------------------------------

    def _on_node(self, type_: str, node: Obj, _old: Obj | None) -> None:
        if type_ == "DELETED":
            self.cache.remove_node(node["metadata"]["name"])
            self.queue.move(_ON_NODE_DELETED)
        elif self.cache.set_node(node):
            self.queue.move()

    def _on_namespace(self, type_: str, ns: Obj, _old: Obj | None) -> None:
        if type_ == "DELETED":
            self.cache.remove_namespace(ns["metadata"]["name"])
        elif self.cache.set_namespace(ns):
            self.queue.move(_ON_NAMESPACE)

    def _on_storage(self, type_: str, obj: Obj, _old: Obj | None) -> None:
        """A claim, volume or class changed: bindings in progress look again, rejected pods retry."""
        if obj.get("kind") == "PersistentVolume" and type_ != "DELETED":
            self.volumes.volume_seen(obj)
        self.volumes.changed()
        self.queue.move(_ON_STORAGE)

    def _node_object(self, name: str) -> Obj | None:
        info = self.cache.nodes.get(name)
        return info.node if info is not None else None

    def _on_pod(self, type_: str, pod: Obj, old: Obj | None) -> None:
        meta = pod.get("metadata") or {}
        key = f"{meta.get('namespace')}/{meta.get('name')}"
        if type_ == "DELETED":
            self.queue.delete(key)
            if self.cache.remove_pod(key):
                self.queue.move(_ON_POD_DELETED)
            return
        spec = pod.get("spec") or {}
        phase = (pod.get("status") or {}).get("phase")
        if spec.get("nodeName"):
            self.queue.delete(key)
            if phase in ("Succeeded", "Failed"):
                if self.cache.remove_pod(key):
                    self.queue.move(_ON_POD_DELETED)
                return
            entry = self.cache.pod_entry(key)
            if (entry is not None and not self.cache.is_assumed(key) and old is not None
                    and entry[1] == spec["nodeName"] and not _meaningful_change(old, pod)):
                return  # a status update of a pod we already count
            info = PodInfo(pod)
            if self.cache.set_pod(info):
                self.queue.move(_ON_POD_ADDED)
            return
        if (spec.get("schedulerName") or DEFAULT_SCHEDULER_NAME) != self.scheduler_name:
            return
        if phase in ("Succeeded", "Failed") or meta.get("deletionTimestamp"):
            self.queue.delete(key)
            return
        if self.cache.is_assumed(key):
            return  # our binding is on its way
        if key in self.queue:
            self.queue.update(PodInfo(pod), relevant=_meaningful_change(old, pod))
        else:
            self.queue.add(PodInfo(pod))

    # --- the loop ------------------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def run(self, ready: Callable[[], None] | None = None) -> None:
        """Schedule until cancelled; ``ready`` is called once the caches are filled."""
        self.informers.start()
        events = asyncio.get_running_loop().create_task(self.events.run())
        try:
            await self.informers.wait_synced()
            log.info("scheduler caches synced", nodes=len(self.cache.node_list()), pending=len(self.queue))
            if ready is not None:
                ready()
            while True:
                entry = await self.queue.pop()
                if entry.pod.scheduling_gated:
                    self.queue.unschedulable(entry, frozenset())
                    self._spawn(self._report(entry.pod, "SchedulingGated", messages.SCHEDULING_GATED, event=False))
                    continue
                await self.schedule_one(entry)
                # let informer events and binding answers in between decisions
                await asyncio.sleep(0)
        finally:
            events.cancel()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(events, *self._tasks, return_exceptions=True)
            await self.informers.stop()

    async def schedule_one(self, entry: QueuedPod) -> None:
        pod = entry.pod
        try:
            decision = self.algorithm.schedule(pod)
        except Exception:
            log.exception("scheduling failed", pod=pod.key)
            self.queue.retry(entry)
            return
        if decision.node is None:
            self.failed_attempts += 1
            self.queue.unschedulable(entry, decision.plugins)
            log.debug("pod unschedulable", pod=pod.key, message=decision.message)
            self._spawn(self._report(pod, decision.reason, decision.message))
            return
        self.cache.assume(pod, decision.node)
        plan = decision.volumes
        if plan is not None and plan.needs_binding:
            # the claims bind first, which may take a provisioner a while: other pods go on meanwhile
            self.volumes.assume(plan)
            self._spawn(self._bind_volumes(entry, plan))
            return
        await self._bind_slots.acquire()
        self._spawn(self._bind(entry, decision.node))

    async def _bind_volumes(self, entry: QueuedPod, plan: VolumePlan) -> None:
        """kube's PreBind of VolumeBinding, then the pod's own binding."""
        pod = entry.pod

        def still_wanted() -> bool:
            current = self.pods.get(pod.key)
            return (current is not None and (current.get("metadata") or {}).get("uid") == pod.uid
                    and not (current.get("spec") or {}).get("nodeName")
                    and not (current.get("metadata") or {}).get("deletionTimestamp"))

        try:
            await self.volumes.bind(self.client, plan, still_wanted)
        except asyncio.CancelledError:
            self.volumes.forget(plan)
            raise
        except Exception as e:
            self.volumes.forget(plan)
            self.cache.forget(pod.key)
            self.bind_errors += 1
            if not isinstance(e, VolumeBindingError):
                log.exception("volume binding failed", pod=pod.key, node=plan.node)
            else:
                log.info("volume binding failed; will retry", pod=pod.key, node=plan.node, error=str(e))
            if still_wanted():
                self._spawn(self._report(pod, "SchedulerError", f'running PreBind plugin "{VOLUME_BINDING}": {e}'))
            self.queue.retry(entry)
            return
        self.volumes.forget(plan)
        await self._bind_slots.acquire()
        await self._bind(entry, plan.node)

    async def _bind(self, entry: QueuedPod, node: str) -> None:
        pod = entry.pod
        binding = {"apiVersion": "v1", "kind": "Binding",
                   "metadata": {"name": pod.name, "namespace": pod.namespace, "uid": pod.uid},
                   "target": {"apiVersion": "v1", "kind": "Node", "name": node}}
        try:
            await self.client.create_subresource(PODS, pod.name, "binding", binding, pod.namespace)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self.bind_errors += 1
            self.cache.forget(pod.key)
            if isinstance(e, ApiError) and (e.not_found or "already assigned" in e.message):
                self.queue.delete(pod.key)  # gone, or bound by someone else: the informer tells the rest
                log.info("binding dropped", pod=pod.key, node=node, error=str(e))
            else:
                log.warning("binding failed; will retry", pod=pod.key, node=node, error=str(e))
                self.queue.retry(entry)
            return
        finally:
            self._bind_slots.release()
        self.bound += 1
        self.queue.done(pod.key)
        log.debug("pod bound", pod=pod.key, node=node)
        self.events.emit(pod.obj, "Normal", "Scheduled", messages.scheduled(pod.namespace, pod.name, node))

    async def _report(self, pod: PodInfo, reason: str, message: str, event: bool = True) -> None:
        """PodScheduled=False with the reason, and a FailedScheduling event."""
        async with self._status_slots:
            current = self.pods.get(pod.key) or pod.obj
            if (current.get("spec") or {}).get("nodeName"):
                return
            if event:
                self.events.emit(current, "Warning", "FailedScheduling", message)
            old = next((c for c in (current.get("status") or {}).get("conditions") or ()
                        if c.get("type") == "PodScheduled"), None)
            if old and old.get("status") == "False" and old.get("reason") == reason and old.get("message") == message:
                return
            since = old.get("lastTransitionTime") if old and old.get("status") == "False" else None
            condition = {"type": "PodScheduled", "status": "False", "reason": reason, "message": message,
                         "lastProbeTime": None, "lastTransitionTime": since or format_time()}
            try:
                await self.client.patch(PODS, pod.name, {"status": {"conditions": [condition]}}, pod.namespace,
                                        patch_type="strategic", subresource="status")
            except ApiError as e:
                if not e.not_found:
                    log.info("pod condition not written", pod=pod.key, error=str(e))

    async def settle(self, timeout: float = 30.0) -> None:
        """Wait until the bindings and reports started so far are done (tests and benchmarks)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._tasks and loop.time() < deadline:
            await asyncio.wait(list(self._tasks), timeout=max(0.0, deadline - loop.time()))
        await asyncio.wait_for(self.events.drain(), max(0.1, deadline - loop.time()))
