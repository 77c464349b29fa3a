"""The cluster's scheduler, as the ``scheduler`` plugin: places pending pods on nodes, as kube-scheduler does.

``k3p server --disable scheduler`` (or K3s's ``--disable-scheduler``) leaves it out; pods
then stay Pending unless something else binds them. :class:`Scheduler` runs against any
API client (tests and benchmarks drive it directly).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from k3p.hookspecs import hookimpl
from k3p_plugins.scheduler.scheduler import DEFAULT_SCHEDULER_NAME, Scheduler

if TYPE_CHECKING:
    from k3p.context import PluginContext
    from k3p.supervisor import Component

__all__ = ["DEFAULT_SCHEDULER_NAME", "Scheduler", "scheduler_component"]

#: acts as upstream's ``system:kube-scheduler``, which the bootstrap policy binds to the
#: ``system:kube-scheduler`` and ``system:volume-scheduler`` roles
COMPONENT = "scheduler"


def scheduler_component(ctx: PluginContext) -> Component:
    """The ``scheduler`` component: runs once the API server is up."""
    from k3p import components
    from k3p.supervisor import Ready, TaskComponent

    async def run(ready: Ready) -> None:
        client = ctx.component_client(COMPONENT, "k3p-scheduler")
        try:
            await Scheduler(client).run(ready)
        finally:
            await client.close()

    return TaskComponent("scheduler", run, requires=[components.APISERVER])


@hookimpl
def k3p_server_components(ctx: PluginContext) -> list[Component]:
    """The scheduler."""
    return [scheduler_component(ctx)]
