"""Runs the controllers as one :class:`k3p.client.ControllerGroup`: one informer factory shared by all.

``controller_manager_component(ctx)`` is the ``k3p server`` component; :class:`ControllerManager`
runs the same controllers against any API server (tests use it with an admin client).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from k3p import components
from k3p.client import Client, ControllerGroup, InformerFactory
from k3p.client.group import ClientSource, MakeController
from k3p.durations import parse_duration
from k3p.supervisor import Component, Ready, TaskComponent
from k3p_plugins.controller_manager.base import BaseController, ControllerOptions
from k3p_plugins.controller_manager.cronjob import CronJobController
from k3p_plugins.controller_manager.daemonset import DaemonSetController
from k3p_plugins.controller_manager.deployment import DeploymentController
from k3p_plugins.controller_manager.disruption import DisruptionController
from k3p_plugins.controller_manager.endpoints import (
    ApiServerEndpointsController,
    EndpointsController,
    EndpointSliceController,
)
from k3p_plugins.controller_manager.garbagecollector import GarbageCollector
from k3p_plugins.controller_manager.job import JobController
from k3p_plugins.controller_manager.nodeipam import NodeIpamController
from k3p_plugins.controller_manager.nodelifecycle import NodeLifecycleController, TaintEvictionController
from k3p_plugins.controller_manager.persistentvolume import PersistentVolumeController, PVCProtectionController
from k3p_plugins.controller_manager.podgc import PodGCController
from k3p_plugins.controller_manager.replicaset import ReplicaSetController, ReplicationControllerController
from k3p_plugins.controller_manager.serviceaccount import RootCACertPublisher, ServiceAccountController
from k3p_plugins.controller_manager.statefulset import StatefulSetController
from k3p_plugins.controller_manager.ttlafterfinished import TTLAfterFinishedController

if TYPE_CHECKING:
    from k3p.context import PluginContext

#: the component's name, and the user it acts as (upstream's ``system:kube-controller-manager``)
COMPONENT = "controller-manager"

#: every controller by the name ``disabled`` uses (kube-controller-manager's --controllers names)
CONTROLLERS: dict[str, type[BaseController]] = {
    c.name: c for c in (
        DeploymentController, ReplicaSetController, ReplicationControllerController, DaemonSetController,
        StatefulSetController, JobController, CronJobController, TTLAfterFinishedController, GarbageCollector,
        ServiceAccountController, RootCACertPublisher, EndpointsController, EndpointSliceController,
        ApiServerEndpointsController, NodeIpamController, NodeLifecycleController, TaintEvictionController,
        PodGCController, PersistentVolumeController, PVCProtectionController, DisruptionController,
    )
}


class ControllerManager(ControllerGroup):
    """The controllers of :data:`CONTROLLERS` (less ``disabled``, or ``only`` those) as one group.

    ``client`` and ``gc_client`` are clients of yours or factories of clients the manager
    makes at every start and closes at stop. ``gc_client`` (optional) carries the garbage
    collector's watches of the types no other controller watches, so they do not crowd the
    main client's connection pool.
    """

    def __init__(self, client: ClientSource, options: ControllerOptions | None = None, disabled: Iterable[str] = (),
                 gc_client: ClientSource | None = None, only: Iterable[str] | None = None) -> None:
        unknown = (set(disabled) | set(only or ())) - set(CONTROLLERS)
        if unknown:
            raise ValueError(f"unknown controllers: {', '.join(sorted(unknown))} (known: {', '.join(CONTROLLERS)})")
        self.options = options or ControllerOptions()
        self._gc_client = gc_client
        self.gc_factory: InformerFactory | None = None
        wanted = [n for n in CONTROLLERS if n not in set(disabled) and (only is None or n in set(only))]
        super().__init__(COMPONENT, client, [self._maker(CONTROLLERS[name]) for name in wanted],
                         requires=[components.ADDONS])

    def _maker(self, cls: type[BaseController]) -> MakeController:
        if cls is not GarbageCollector:
            return lambda client, informers: cls(client, informers, self.options)

        def make_gc(client: Client, informers: InformerFactory) -> BaseController:
            self.gc_factory = None if self._gc_client is None else self.extra_informers(self._gc_client)
            return GarbageCollector(client, informers, self.options, own_informers=self.gc_factory)

        return make_gc

    @property
    def factory(self) -> InformerFactory | None:
        """The informers every controller shares (this run's)."""
        return self.informers

    async def start(self, sync_timeout: float | None = None) -> None:
        """Set every controller up, start the informers, wait for their caches, start the workers."""
        if sync_timeout is not None:
            self.sync_timeout = sync_timeout
        await super().start()


def options_from_context(ctx: PluginContext) -> ControllerOptions:
    """Controller settings from a ``k3p server`` run's config."""
    config = ctx.config
    bind = config.get("bind_address") or ""
    address = (config.get("advertise_address") or (ctx.node_ips[0] if ctx.node_ips else "")
               or (bind if bind and bind not in ("0.0.0.0", "::") else "127.0.0.1"))
    opts = ControllerOptions(
        cluster_cidr=config.get("cluster_cidr") or "10.42.0.0/16",
        apiserver_address=address,
        apiserver_port=int(config.get("https_listen_port") or 6443),
        root_ca_pem=ctx.ca_pem,
    )
    kind: Callable[[object], object]
    for option, attr, kind in (("node_cidr_mask_size", "node_cidr_mask_size_ipv4", int),
                               ("node_cidr_mask_size_ipv6", "node_cidr_mask_size_ipv6", int),
                               ("node_monitor_grace_period", "node_monitor_grace_period", parse_duration),
                               ("node_monitor_period", "node_monitor_period", parse_duration),
                               ("terminated_pod_gc_threshold", "terminated_pod_gc_threshold", int)):
        value = config.get(option)
        if value not in (None, ""):
            setattr(opts, attr, kind(value))
    return opts


def controller_manager_component(ctx: PluginContext, disabled: Iterable[str] = ()) -> Component:
    """The ``controller-manager`` component of ``k3p server``.

    It acts as ``system:kube-controller-manager``, whose rights come from the plugin's
    manifests, so it starts once the addon deployer has applied them.
    """

    def client(user_agent: str) -> Callable[[], Client]:
        return lambda: ctx.component_client(COMPONENT, user_agent)

    async def run(ready: Ready) -> None:
        # made anew at every (re)start: a bad option fails the component, not the server
        manager = ControllerManager(client("k3p-controller-manager"), options_from_context(ctx), disabled,
                                    gc_client=client("k3p-garbage-collector"))
        await manager.run(ready)

    return TaskComponent(COMPONENT, run, requires=[components.ADDONS])
