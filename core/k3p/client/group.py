"""Run a set of controllers as one unit, as controller-runtime's Manager does.

A plugin with controllers of its own writes none of the start/stop glue::

    from k3p.client import ControllerGroup

    def k3p_server_components(ctx):
        group = ControllerGroup(
            "my-plugin",
            lambda: ctx.component_client("my-plugin", "k3p-my-plugin"),
            [lambda client, informers: MyController(client, informers)],
            requires=("addons",),  # k3p.components.ADDONS: my-plugin's RBAC is applied by then
        )
        return [group.component()]

For every run the group makes the client (when given a factory), one
:class:`~k3p.client.InformerFactory` shared by its controllers (two controllers asking for
the same informer get one list + watch), and the controllers; calls each controller's
``setup()``; starts the informers and waits until every cache is synced; starts each
controller's ``run()`` as a task and only then reports ready. It ends when a controller's
``run()`` raises (or returns), so the supervisor restarts the whole group with back-off, or
when cancelled; either way it cancels the workers, shuts the queues down, stops the
informers and closes the clients it made.

Tests that run controllers against a live server without a supervisor use it as an async
context manager: ``async with ControllerGroup("t", client, [...], sync_timeout=30) as g:``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable, Sequence
from typing import Self, TypeAlias

import structlog

from k3p.client.api import Client
from k3p.client.controller import Controller
from k3p.client.informer import InformerFactory
from k3p.supervisor import Ready, TaskComponent

log = structlog.get_logger(__name__)

#: a Client, or a function making one (called at every start; the group closes what it made)
ClientSource: TypeAlias = Client | Callable[[], Client]
#: ``make(client, informers)``: one controller over the group's client and shared informers
MakeController: TypeAlias = Callable[[Client, InformerFactory], Controller]


class ControllerStopped(Exception):
    """A controller's ``run()`` returned, which a controller must never do while it is needed."""


class ControllerGroup:
    """Controllers that share one client and one informer factory, set up, run and stopped together.

    ``client`` is a :class:`~k3p.client.Client` (yours: the group never closes it) or a
    function returning one (called at every start, closed at stop), e.g.
    ``lambda: ctx.component_client(COMPONENT, "k3p-my-plugin")``. Each of ``controllers`` is
    a ``make(client, informers)`` returning a :class:`~k3p.client.Controller`; the group
    calls them anew for every run, so a restarted group starts from fresh caches and
    queues. With a Client (not a factory) the first set is made at once, so
    :attr:`controllers` can be looked at before :meth:`start`.

    Controllers must not start their informers or wait for them: the group does. A
    controller's ``run()`` may do extra work before its workers (as
    ``BaseController.start()`` in the controller-manager plugin) and must work until
    cancelled. ``name`` and ``requires`` are those of :meth:`component`; ``sync_timeout``
    (seconds, default: no limit) bounds the wait for the caches, after which :meth:`start`
    raises :class:`TimeoutError`.
    """

    def __init__(self, name: str, client: ClientSource, controllers: Iterable[MakeController] = (), *,
                 requires: Sequence[str] = (), sync_timeout: float | None = None) -> None:
        self.name = name
        self.requires = tuple(requires)
        self.sync_timeout = sync_timeout
        self._client_source = client
        self._makers = list(controllers)
        #: this run's client (None before the first start when the group makes it)
        self.client: Client | None = None if callable(client) else client
        #: this run's informers, shared by every controller of the group
        self.informers: InformerFactory | None = None
        #: this run's controllers by name
        self.controllers: dict[str, Controller] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        # what stop() undoes, last made first: workers, queues, informers, then clients
        self._cleanup: contextlib.AsyncExitStack | None = None
        if not callable(client):
            self._build()

    def _open(self, source: ClientSource, cleanup: contextlib.AsyncExitStack) -> Client:
        if not callable(source):
            return source
        client = source()
        cleanup.push_async_callback(client.close)
        return client

    def _build(self) -> None:
        self._cleanup = cleanup = contextlib.AsyncExitStack()
        self.controllers = {}
        self.client = client = self._open(self._client_source, cleanup)
        self.informers = informers = InformerFactory(client)
        cleanup.push_async_callback(informers.stop)
        for make in self._makers:
            self._add_controller(make(client, informers))

    def _add_controller(self, controller: Controller) -> None:
        if controller.name in self.controllers:
            # names key the tasks and the logs: two of one name could not be told apart
            raise ValueError(f"two controllers of group {self.name} are named {controller.name}")
        self.controllers[controller.name] = controller
        assert self._cleanup is not None
        self._cleanup.callback(controller.queue.shutdown)

    def extra_informers(self, client: ClientSource) -> InformerFactory:
        """Another informer factory, over ``client``, stopped with the group (for ``make`` callables).

        For a controller whose many watches should not crowd the main client's connection
        pool (the garbage collector watches every type). A client made from a factory here is
        closed at stop too. The group neither starts these informers nor waits for them: the
        controller that asked does.
        """
        if self._cleanup is None:
            raise RuntimeError("extra_informers() is for make callables, while the group builds its controllers")
        factory = InformerFactory(self._open(client, self._cleanup))
        self._cleanup.push_async_callback(factory.stop)
        return factory

    # --- running ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Make and set up the controllers, start the informers, wait for their caches, start the workers.

        On any failure (a ``setup()`` raising, the caches not synced within
        ``sync_timeout``, cancellation) everything started so far is stopped again.
        """
        if self._tasks:
            raise RuntimeError(f"controller group {self.name} is already running")
        try:
            if self._cleanup is None:
                self._build()
            assert self._cleanup is not None and self.informers is not None
            for controller in self.controllers.values():
                controller.setup()
            self.informers.start()
            await asyncio.wait_for(self.informers.wait_synced(), self.sync_timeout)
            self._cleanup.push_async_callback(self._cancel_workers)
            for name, controller in self.controllers.items():
                self._tasks[name] = asyncio.create_task(self._run(name, controller), name=f"controller-{name}")
        except BaseException:
            await self.stop()
            raise
        log.info("controllers started", group=self.name, controllers=",".join(self.controllers))

    async def _run(self, name: str, controller: Controller) -> None:
        try:
            await controller.run()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("controller stopped", group=self.name, controller=name)
            raise
        raise ControllerStopped(f"controller {name} returned")

    async def wait(self) -> None:
        """Until a controller fails (raising its exception, or :class:`ControllerStopped`) or this is cancelled."""
        if not self._tasks:
            await asyncio.get_running_loop().create_future()  # nothing to fail: until cancelled
        done, _ = await asyncio.wait(self._tasks.values(), return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            task.result()

    async def stop(self) -> None:
        """Cancel the workers, shut the queues down, stop the informers, close the clients the group made.

        Safe to call more than once; the next :meth:`start` makes everything anew.
        """
        cleanup, self._cleanup = self._cleanup, None
        if cleanup is not None:
            await cleanup.aclose()

    async def _cancel_workers(self) -> None:
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def run(self, ready: Ready) -> None:
        """Start, call ``ready()``, work until a controller fails or this is cancelled, then stop."""
        await self.start()
        try:
            ready()
            await self.wait()
        finally:
            await self.stop()

    def component(self) -> TaskComponent:
        """The group as a supervised component named ``name`` that starts after ``requires``."""
        return TaskComponent(self.name, self.run, requires=self.requires)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
