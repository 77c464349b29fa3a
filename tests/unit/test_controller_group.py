"""ControllerGroup: shared informers, readiness after sync, failure and shutdown (a fake API, no server)."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest

from k3p.client import Client, Controller, ControllerGroup, InformerFactory, Resource
from k3p.client.group import ControllerStopped
from k3p.client.resources import NODES, PODS
from k3p.supervisor import Supervisor


class FakeApi(Client):
    """Lists one pod per resource (once ``synced`` is set) and watches forever; records lists, watches, close."""

    def __init__(self) -> None:
        super().__init__("https://127.0.0.1:1")
        self.synced = asyncio.Event()
        self.synced.set()
        self.lists: Counter[str] = Counter()
        self.watching: set[str] = set()
        self.closed = False

    async def list(self, res: Resource, namespace: str | None = None, **_kw: Any) -> dict[str, Any]:
        self.lists[res.plural] += 1
        await self.synced.wait()
        return {"metadata": {"resourceVersion": "1"},
                "items": [{"metadata": {"name": "a", "resourceVersion": "1",
                                        **({"namespace": "ns"} if res.namespaced else {})}}]}

    async def watch(self, res: Resource, namespace: str | None = None, **_kw: Any) -> AsyncIterator[Any]:
        self.watching.add(res.plural)
        try:
            await asyncio.Event().wait()
        finally:
            self.watching.discard(res.plural)
        yield  # an async generator that never yields an event

    async def close(self) -> None:
        self.closed = True
        await super().close()


class Watcher(Controller):
    """Watches ``resources``; ``fail`` makes its run raise once the workers would start."""

    workers = 1

    def __init__(self, client: Client, informers: InformerFactory, name: str, *resources: Resource,
                 fail: BaseException | None = None, returns: bool = False) -> None:
        self.name = name
        super().__init__(client, informers)
        self.resources = resources
        self.fail = fail
        self.returns = returns
        self.reconciled: list[str] = []
        self.running = False
        self.cancelled = False

    def setup(self) -> None:
        self.watched = [self.informers.informer(res) for res in self.resources]
        for inf in self.watched:
            self.watch_objects(inf)

    async def reconcile(self, key: str) -> None:
        self.reconciled.append(key)

    async def run(self) -> None:
        self.running = True
        if self.fail is not None:
            raise self.fail
        if self.returns:
            return
        try:
            await super().run()
        except asyncio.CancelledError:
            self.cancelled = True
            raise


class Made(list[FakeApi]):
    """A client factory that keeps every client it made."""

    def __call__(self) -> FakeApi:
        self.append(FakeApi())
        return self[-1]


def watcher(name: str, *resources: Resource, **kw: Any) -> Any:
    return lambda client, informers: Watcher(client, informers, name, *resources, **kw)


async def eventually(check: Any, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.01)


async def test_controllers_share_one_informer_per_resource() -> None:
    api = FakeApi()
    group = ControllerGroup("g", api, [watcher("one", PODS), watcher("two", PODS, NODES)])
    async with group:
        one, two = group.controllers["one"], group.controllers["two"]
        assert one.watched[0] is two.watched[0]  # type: ignore[attr-defined]
        assert api.lists == {"pods": 1, "nodes": 1}
        # both hear the shared informer's objects
        await eventually(lambda: one.reconciled == ["ns/a"] and sorted(two.reconciled) == ["a", "ns/a"])
    assert not api.closed  # a client passed in stays the caller's


async def test_ready_only_once_the_caches_are_synced() -> None:
    api = FakeApi()
    api.synced.clear()
    seen: list[bool] = []
    group = ControllerGroup("g", lambda: api, [watcher("w", PODS)])
    ready = asyncio.Event()

    def on_ready() -> None:
        seen.append(all(inf.synced for inf in group.controllers["w"].watched))  # type: ignore[attr-defined]
        ready.set()

    task = asyncio.create_task(group.run(on_ready))
    await eventually(lambda: api.lists["pods"] == 1)
    await asyncio.sleep(0.05)
    assert not ready.is_set() and not group.controllers["w"].running  # type: ignore[attr-defined]
    api.synced.set()
    await asyncio.wait_for(ready.wait(), 5)
    assert seen == [True]
    await eventually(lambda: group.controllers["w"].running)  # type: ignore[attr-defined]
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_a_failing_controller_fails_the_component_and_stops_the_others() -> None:
    made = Made()

    group = ControllerGroup("g", made, [watcher("good", PODS), watcher("bad", NODES, fail=RuntimeError("boom"))],
                            requires=("addons",))
    component = group.component()
    assert (component.name, component.requires) == ("g", ("addons",))
    ready = asyncio.Event()
    with pytest.raises(RuntimeError, match="boom"):
        await asyncio.wait_for(component.run(ready.set), 5)
    assert ready.is_set()
    good = group.controllers["good"]
    assert good.cancelled  # type: ignore[attr-defined]
    assert made[0].closed and not made[0].watching


async def test_a_controller_that_returns_fails_the_component() -> None:
    group = ControllerGroup("g", FakeApi, [watcher("quits", PODS, returns=True)])
    with pytest.raises(ControllerStopped, match="quits"):
        await asyncio.wait_for(group.run(lambda: None), 5)


async def test_the_supervisor_restarts_a_failed_group_with_a_fresh_client_and_controllers() -> None:
    made = Made()
    runs: list[Controller] = []

    def flaky(client: Client, informers: InformerFactory) -> Controller:
        runs.append(Watcher(client, informers, "flaky", PODS, fail=RuntimeError("boom") if not runs else None))
        return runs[-1]

    sup = Supervisor([ControllerGroup("g", made, [flaky]).component()], backoff_initial=0.01)
    stop = asyncio.Event()
    task = asyncio.create_task(sup.run(stop))
    await asyncio.wait_for(sup.wait_ready("g"), 5)
    await eventually(lambda: len(runs) == 2 and runs[1].running)  # type: ignore[attr-defined]
    assert runs[0] is not runs[1] and made[0].closed and not made[1].closed
    stop.set()
    await asyncio.wait_for(task, 5)
    assert made[1].closed and not made[1].watching


async def test_shutdown_cancels_workers_stops_informers_and_closes_the_clients_it_made() -> None:
    made = Made()

    def with_own_informers(client: Client, informers: InformerFactory) -> Controller:
        w = Watcher(client, informers, "gc", PODS)
        w.own = group.extra_informers(made)  # type: ignore[attr-defined]
        w.own.informer(NODES)  # type: ignore[attr-defined]
        w.own.start()  # type: ignore[attr-defined]
        return w

    group = ControllerGroup("g", made, [watcher("w", PODS, NODES), with_own_informers])
    ready = asyncio.Event()
    task = asyncio.create_task(group.run(ready.set))
    await asyncio.wait_for(ready.wait(), 5)
    main, extra = made
    await eventually(lambda: main.watching == {"pods", "nodes"} and extra.watching == {"nodes"})
    w = group.controllers["w"]
    w.queue.add_after("later", 60)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert w.cancelled  # type: ignore[attr-defined]
    assert not w.queue._timers  # the queue was shut down: no retry fires after the stop
    assert main.closed and extra.closed and not main.watching and not extra.watching
    await group.stop()  # twice is fine


async def test_sync_timeout_stops_what_was_started() -> None:
    api = FakeApi()
    api.synced.clear()
    group = ControllerGroup("g", lambda: api, [watcher("w", PODS)], sync_timeout=0.05)
    with pytest.raises(TimeoutError):
        await group.start()
    assert api.closed and not group.controllers["w"].running  # type: ignore[attr-defined]


async def test_controllers_need_distinct_names() -> None:
    async with FakeApi() as api:
        with pytest.raises(ValueError, match="named w"):
            ControllerGroup("g", api, [watcher("w", PODS), watcher("w", NODES)])
