"""The supervisor: start order, readiness, restart with back-off, clean stop of children."""

from __future__ import annotations

import asyncio
import sys

import pytest

from k3p.supervisor import ProcessComponent, Supervisor, TaskComponent, start_order
from k3p.testing.process import pid_alive


def test_start_order_follows_requires_and_rejects_cycles() -> None:
    a = TaskComponent("a", None, requires=["b"])  # type: ignore[arg-type]
    b = TaskComponent("b", None)  # type: ignore[arg-type]
    assert [c.name for c in start_order([a, b])] == ["b", "a"]
    with pytest.raises(ValueError, match="cycle"):
        start_order([TaskComponent("x", None, ["y"]), TaskComponent("y", None, ["x"])])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="requires z"):
        start_order([TaskComponent("x", None, ["z"])])  # type: ignore[arg-type]


async def test_dependents_start_after_ready_and_stop_in_reverse() -> None:
    events: list[str] = []

    def comp(name: str, requires: tuple[str, ...] = ()) -> TaskComponent:
        async def run(ready) -> None:
            events.append(f"start {name}")
            await asyncio.sleep(0.05)
            ready()
            try:
                await asyncio.Event().wait()
            finally:
                events.append(f"stop {name}")

        return TaskComponent(name, run, requires)

    sup = Supervisor([comp("api", ("db",)), comp("db")])
    stop = asyncio.Event()
    runner = asyncio.create_task(sup.run(stop))
    while not sup.is_ready():
        await asyncio.sleep(0.01)
    stop.set()
    await runner
    assert events == ["start db", "start api", "stop api", "stop db"]


async def test_crashed_component_restarts_with_backoff() -> None:
    starts: list[float] = []

    async def flaky(ready) -> None:
        starts.append(asyncio.get_running_loop().time())
        if len(starts) < 3:
            raise RuntimeError("boom")
        ready()
        await asyncio.Event().wait()

    sup = Supervisor([TaskComponent("flaky", flaky)], backoff_initial=0.05)
    stop = asyncio.Event()
    runner = asyncio.create_task(sup.run(stop))
    while not sup.is_ready("flaky"):
        await asyncio.sleep(0.01)
    stop.set()
    await runner
    assert len(starts) == 3
    # back-off doubles: 0.05 then 0.1
    assert starts[2] - starts[1] > (starts[1] - starts[0]) * 1.5


async def test_component_that_may_not_restart_stops_everything() -> None:
    async def dies(ready) -> None:
        raise RuntimeError("corrupt")

    sup = Supervisor([TaskComponent("db", dies, restart=False)])
    with pytest.raises(Exception, match="component db stopped: RuntimeError: corrupt"):
        await asyncio.wait_for(sup.run(asyncio.Event()), 5)


async def test_child_process_is_terminated_on_stop(tmp_path) -> None:
    # A child that ignores SIGTERM must still be gone after stop (SIGKILL after the timeout).
    script = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(60)"
    )
    proc = ProcessComponent("stubborn", [sys.executable, "-c", script], stop_timeout=0.5,
                            log_file=tmp_path / "out.log")

    async def check() -> bool:
        return "up" in (tmp_path / "out.log").read_text()

    proc.ready_check = check
    sup = Supervisor([proc])
    stop = asyncio.Event()
    runner = asyncio.create_task(sup.run(stop))
    while not sup.is_ready():
        await asyncio.sleep(0.02)
    pid = proc.pid
    assert pid and pid_alive(pid)
    stop.set()
    await asyncio.wait_for(runner, 5)
    assert not pid_alive(pid)


async def test_exited_process_is_restarted(tmp_path) -> None:
    marker = tmp_path / "runs"
    script = f"open({str(marker)!r}, 'a').write('x')"
    proc = ProcessComponent("short", [sys.executable, "-c", script])
    sup = Supervisor([proc], backoff_initial=0.05)
    stop = asyncio.Event()
    runner = asyncio.create_task(sup.run(stop))
    for _ in range(200):
        if marker.exists() and len(marker.read_text()) >= 2:
            break
        await asyncio.sleep(0.02)
    stop.set()
    await runner
    assert len(marker.read_text()) >= 2
