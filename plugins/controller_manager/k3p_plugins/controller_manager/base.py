"""What every k3p controller shares: its options and fire-and-forget events."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

import structlog

from k3p.client import Client, Controller, EventRecorder, InformerFactory, Obj

log = structlog.get_logger(__name__)


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
