"""Runs the controllers: one informer factory shared by all, each controller's workers as tasks.

``controller_manager_component(ctx)`` is the ``k3p server`` component; :class:`ControllerManager`
runs the same controllers against any API server (tests use it with an admin client).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import structlog

from k3p import components
from k3p.client import Client, InformerFactory
from k3p.durations import parse_duration
from k3p.supervisor import Component, Ready, TaskComponent
from k3p_plugins.controller_manager.base import BaseController, ControllerOptions
from k3p_plugins.controller_manager.cronjob import CronJobController
from k3p_plugins.controller_manager.daemonset import DaemonSetController
from k3p_plugins.controller_manager.deployment import DeploymentController
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

log = structlog.get_logger(__name__)

#: the component's name, and the user it acts as (upstream's ``system:kube-controller-manager``)
COMPONENT = "controller-manager"

#: every controller by the name ``disabled`` uses (kube-controller-manager's --controllers names)
CONTROLLERS: dict[str, type[BaseController]] = {
    c.name: c for c in (
        DeploymentController, ReplicaSetController, ReplicationControllerController, DaemonSetController,
        StatefulSetController, JobController, CronJobController, TTLAfterFinishedController, GarbageCollector,
        ServiceAccountController, RootCACertPublisher, EndpointsController, EndpointSliceController,
        ApiServerEndpointsController, NodeIpamController, NodeLifecycleController, TaintEvictionController,
        PodGCController, PersistentVolumeController, PVCProtectionController,
    )
}


class ControllerManager:
    """Sets up, starts and stops a set of controllers over one client.

    ``gc_client`` (optional) carries the garbage collector's watches of the types no other
    controller watches, so they do not crowd the main client's connection pool.
    """

    def __init__(self, client: Client, options: ControllerOptions | None = None, disabled: Iterable[str] = (),
                 gc_client: Client | None = None, only: Iterable[str] | None = None) -> None:
        unknown = (set(disabled) | set(only or ())) - set(CONTROLLERS)
        if unknown:
            raise ValueError(f"unknown controllers: {', '.join(sorted(unknown))} (known: {', '.join(CONTROLLERS)})")
        self.client = client
        self.options = options or ControllerOptions()
        self.factory = InformerFactory(client)
        self.gc_factory = InformerFactory(gc_client) if gc_client is not None else None
        wanted = [n for n in CONTROLLERS if n not in set(disabled) and (only is None or n in set(only))]
        self.controllers: dict[str, BaseController] = {}
        for name in wanted:
            cls = CONTROLLERS[name]
            if cls is GarbageCollector:
                self.controllers[name] = GarbageCollector(client, self.factory, self.options,
                                                          own_informers=self.gc_factory)
            else:
                self.controllers[name] = cls(client, self.factory, self.options)
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self, sync_timeout: float | None = None) -> None:
        """Set every controller up, start the informers, wait for their caches, start the workers."""
        for controller in self.controllers.values():
            controller.setup()
        self.factory.start()
        try:
            await asyncio.wait_for(self.factory.wait_synced(), sync_timeout)
        except BaseException:
            await self.stop()
            raise
        for name, controller in self.controllers.items():
            self._tasks.append(asyncio.create_task(self._run(name, controller), name=f"controller-{name}"))
        log.info("controllers started", controllers=",".join(self.controllers))

    async def _run(self, name: str, controller: BaseController) -> None:
        try:
            await controller.run()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("controller stopped", controller=name)
            raise

    async def wait(self) -> None:
        """Until a controller fails (its exception) or the manager is cancelled."""
        await asyncio.gather(*self._tasks)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        for controller in self.controllers.values():
            controller.queue.shutdown()
        await self.factory.stop()
        if self.gc_factory is not None:
            await self.gc_factory.stop()

    async def __aenter__(self) -> ControllerManager:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


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

    async def run(ready: Ready) -> None:
        client = ctx.component_client(COMPONENT, "k3p-controller-manager")
        gc_client = ctx.component_client(COMPONENT, "k3p-garbage-collector")
        manager = ControllerManager(client, options_from_context(ctx), disabled, gc_client=gc_client)
        try:
            await manager.start()
            ready()
            await manager.wait()
        finally:
            await manager.stop()
            await client.close()
            await gc_client.close()

    return TaskComponent(COMPONENT, run, requires=[components.ADDONS])
