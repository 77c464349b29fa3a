"""What every k3p controller shares: its options, fire-and-forget events, and what to do with
a stored object it cannot work with."""

from __future__ import annotations

import asyncio
import os
import traceback
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

import structlog

from k3p.client import Client, Controller, EventRecorder, Informer, InformerFactory, Obj

log = structlog.get_logger(__name__)



class InvalidObject(ValueError):
    """A stored object a controller cannot work with; ``field`` is the path of the bad part."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


#: what reconciling an object of an unexpected shape raises (a missing field, a string
#: where a number belongs): such an object was stored without validation, e.g. by an
#: older version, and retrying cannot help until it changes
MALFORMED_ERRORS = (KeyError, TypeError, ValueError, AttributeError, IndexError)


def require_workload_spec(obj: Obj, *, template: bool = True) -> dict[str, Any]:
    """The spec of a workload (Deployment, ReplicaSet, Job, ...) if its shape can be worked
    with; InvalidObject naming the field otherwise."""
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        raise InvalidObject("spec", "Required value: the object has no spec")
    replicas = spec.get("replicas")
    if replicas is not None and (isinstance(replicas, bool) or not isinstance(replicas, int)):
        raise InvalidObject("spec.replicas", f"Invalid value: {replicas!r}: must be an integer")
    if template and not isinstance(spec.get("template"), dict):
        raise InvalidObject("spec.template", "Required value: no pod template to create pods from")
    selector = spec.get("selector")
    if selector is not None and not isinstance(selector, dict):
        raise InvalidObject("spec.selector", f"Invalid value: {selector!r}: must be a label selector")
    return spec


def describe_malformed(error: BaseException) -> str:
    """What is wrong with an object, from the error reconciling it raised."""
    if isinstance(error, InvalidObject):
        return str(error)
    if isinstance(error, KeyError):
        return f"Required value: field {error.args[0]!r} is missing"
    return f"{type(error).__name__}: {error}"


@dataclass
class ControllerOptions:
    """Settings of the controllers (kube-controller-manager's flags that k3p exposes)."""

    #: pod IP ranges, comma-separated (IPv4 and/or IPv6), split into one block per node
    cluster_cidr: str = "10.42.0.0/16"
    #: prefix length of each node's IPv4 pod range (K3s' default /24)
    node_cidr_mask_size_ipv4: int = 24
    #: prefix length of each node's IPv6 pod range
    node_cidr_mask_size_ipv6: int = 64
    #: a node whose kubelet has not been heard from for this long is marked Unknown (kube 1.32: 50 s)
    node_monitor_grace_period: float = 50.0
    #: how often node health is checked
    node_monitor_period: float = 5.0
    #: the API server's address and port, published as the endpoints of the ``kubernetes`` Service
    apiserver_address: str = ""
    apiserver_port: int = 6443
    #: PEM of the cluster CA published as the ``kube-root-ca.crt`` ConfigMap in every namespace
    root_ca_pem: str = ""
    #: finished pods kept before the oldest are deleted (kube's terminated-pod-gc-threshold)
    terminated_pod_gc_threshold: int = 12500
    extra: dict[str, Any] = field(default_factory=dict)


class BaseController(Controller):
    """A :class:`k3p.client.Controller` with options and events that never slow a reconcile down."""

    #: the component name events are recorded under (kube's controller names)
    component = "controller-manager"

    def __init__(self, client: Client, informers: InformerFactory, options: ControllerOptions | None = None,
                 events: EventRecorder | None = None) -> None:
        super().__init__(client, informers, events or EventRecorder(client, self.component))
        self.options = options or ControllerOptions()
        self._pending_events: set[asyncio.Task[None]] = set()
        #: the informer of the objects the queue's keys name (the first one watch_objects gets)
        self.primary: Informer | None = None
        #: key -> (uid, generation) of the malformed version already reported
        self._malformed: dict[str, tuple[Any, Any]] = {}

    def watch_objects(self, informer: Informer) -> None:
        if self.primary is None:
            self.primary = informer
        super().watch_objects(informer)

    async def reconcile_failed(self, key: str, error: Exception) -> None:
        """A malformed stored object: one Warning event and log line per version (no traceback),
        :meth:`report_malformed` for a condition, and no retry until the object changes (its
        informer queues it again then). Anything else: logged and retried with back-off."""
        obj = self.primary.get(key) if self.primary is not None and isinstance(error, MALFORMED_ERRORS) else None
        if obj is None:
            await super().reconcile_failed(key, error)
            return
        self.queue.forget(key)
        metadata = obj.get("metadata") or {}
        version = (metadata.get("uid"), metadata.get("generation") or metadata.get("resourceVersion"))
        if self._malformed.get(key) == version:
            return
        self._malformed[key] = version
        kind = obj.get("kind") or "object"
        message = f"cannot reconcile this {kind}: {describe_malformed(error)}"
        # where in the controller it gave up: the line a real bug would need, without a traceback
        frames = [f for f in traceback.extract_tb(error.__traceback__) if f.filename != __file__]
        frame = frames[-1] if frames else None
        log.warning("object cannot be reconciled; waiting for it to change", controller=self.name, key=key,
                    error=message, at=f"{os.path.basename(frame.filename)}:{frame.lineno}" if frame else None)
        self.record(obj, "Warning", "InvalidObject", message)
        try:
            await self.report_malformed(obj, message)
        except Exception as e:  # the event says it already; a failed status write must not loop
            log.warning("cannot report the object's condition", controller=self.name, key=key, error=str(e))

    async def report_malformed(self, obj: Obj, message: str) -> None:
        """Set the condition that tells users ``obj`` cannot be reconciled (kinds that have one)."""

    def record(self, obj: Obj, type_: str, reason: str, message: str) -> None:
        """Emit an Event in the background (best effort, as kube's broadcaster)."""
        task = asyncio.get_running_loop().create_task(self.events.emit(obj, type_, reason, message))
        self._pending_events.add(task)
        task.add_done_callback(self._pending_events.discard)

    async def start(self) -> None:
        """Extra work before the workers run (informers are synced by then); e.g. ``self.spawn(loop())``."""

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` beside the workers, for as long as they run (cancelled with them)."""
        self._background.append(asyncio.get_running_loop().create_task(work))

    async def run(self) -> None:
        self._background: list[asyncio.Task[None]] = []
        try:
            await self.start()
            await super().run()
        finally:
            # a stopped or restarted controller must leave no loop behind on a dead queue or client
            for task in self._background:
                task.cancel()
            await asyncio.gather(*self._background, return_exceptions=True)
