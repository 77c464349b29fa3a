"""The scheduler of ``k3p server``: places pending pods on nodes, as kube-scheduler does.

``scheduler_component(ctx)`` is the supervisor component; :class:`Scheduler` runs against
any API client (tests and benchmarks drive it directly).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from k3p.scheduler.scheduler import DEFAULT_SCHEDULER_NAME, Scheduler

if TYPE_CHECKING:
    from k3p.context import RunContext
    from k3p.supervisor import Component

__all__ = ["DEFAULT_SCHEDULER_NAME", "Scheduler", "scheduler_component"]


def scheduler_component(ctx: RunContext) -> Component:
    """The ``scheduler`` component: runs once the API server is up, with the ``k3p-scheduler`` identity."""
    from k3p.supervisor import TaskComponent

    async def run(ready: Callable[[], None]) -> None:
        assert ctx.new_client is not None, "the scheduler needs ctx.new_client"
        client = ctx.new_client("k3p-scheduler")
        try:
            await Scheduler(client).run(ready)
        finally:
            await client.close()

    return TaskComponent("scheduler", run, requires=["apiserver"])
