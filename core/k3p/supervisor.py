"""Runs k3p's components: asyncio tasks and child processes.

Components start in the order their ``requires`` give (a component starts once every
component it requires has reported ready), a crashed component is restarted with
exponential back-off, and shutdown stops them in reverse order within a deadline. Child
processes run in their own session and get SIGKILL from the kernel if k3p dies, so no
child outlives k3p even after ``kill -9``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)

Ready = Callable[[], None]


class ComponentExited(Exception):
    """A component's run() returned or its process ended while k3p still needed it."""


class Component:
    """Something long-running. Subclasses implement ``run``.

    ``run(ready)`` works until cancelled, calling ``ready()`` once it can serve. Returning
    or raising counts as a crash: the supervisor restarts it after a back-off if
    ``restart`` is true, and stops k3p otherwise.
    """

    name: str = "component"
    requires: tuple[str, ...] = ()
    restart: bool = True

    async def run(self, ready: Ready) -> None:
        raise NotImplementedError


class TaskComponent(Component):
    """An asyncio coroutine function ``fn(ready)`` run as a component."""

    def __init__(
        self,
        name: str,
        fn: Callable[[Ready], Awaitable[None]],
        requires: Sequence[str] = (),
        restart: bool = True,
    ) -> None:
        self.name = name
        self.fn = fn
        self.requires = tuple(requires)
        self.restart = restart

    async def run(self, ready: Ready) -> None:
        await self.fn(ready)


_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    # Linux only: the kernel sends SIGKILL to the child when the k3p thread that forked it
    # ends, which covers k3p being killed with SIGKILL (no chance to clean up).
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class ProcessComponent(Component):
    """A child process (containerd, etcd) run as a component.

    ``ready_check`` is polled until it returns True (while the process lives) to decide
    readiness; without one the process is ready once started. Output goes to ``log_file``
    (appended) or, without one, line by line to the log at debug level.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        cwd: str | Path | None = None,
        ready_check: Callable[[], Awaitable[bool]] | None = None,
        log_file: str | Path | None = None,
        requires: Sequence[str] = (),
        restart: bool = True,
        stop_timeout: float = 5.0,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = env
        self.cwd = cwd
        self.ready_check = ready_check
        self.log_file = Path(log_file) if log_file else None
        self.requires = tuple(requires)
        self.restart = restart
        self.stop_timeout = stop_timeout
        self.pid: int | None = None

    async def run(self, ready: Ready) -> None:
        out = None
        if self.log_file:
            self.log_file.parent.mkdir(parents=True, exist_ok=True)
            out = self.log_file.open("ab")
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out or asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        finally:
            if out:
                out.close()
        self.pid = proc.pid
        log.info("process started", component=self.name, pid=proc.pid, argv=" ".join(self.argv[:3]))
        pump = asyncio.create_task(self._pump(proc)) if proc.stdout else None
        try:
            if self.ready_check is None:
                ready()
            else:
                while proc.returncode is None:
                    if await self.ready_check():
                        ready()
                        break
                    await asyncio.sleep(0.05)
            code = await proc.wait()
            raise ComponentExited(f"process exited with code {code}")
        finally:
            if proc.returncode is None:
                await asyncio.shield(self._terminate(proc))
            if pump:
                pump.cancel()
            self.pid = None

    async def _pump(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        async for line in proc.stdout:
            log.debug(line.decode(errors="replace").rstrip(), component=self.name)

    async def _terminate(self, proc: asyncio.subprocess.Process) -> None:
        """SIGTERM to the child's whole process group, SIGKILL after ``stop_timeout``."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), self.stop_timeout)
        except TimeoutError:
            log.warning("process did not stop in time, killing", component=self.name, pid=proc.pid)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
        log.info("process stopped", component=self.name, pid=proc.pid, code=proc.returncode)


def start_order(components: Sequence[Component]) -> list[Component]:
    """Components sorted so each comes after what it requires; errors on unknown names or cycles."""
    by_name = {c.name: c for c in components}
    if len(by_name) != len(components):
        raise ValueError("two components share a name")
    order: list[Component] = []
    state: dict[str, int] = {}

    def visit(c: Component, path: tuple[str, ...]) -> None:
        if state.get(c.name) == 2:
            return
        if state.get(c.name) == 1:
            raise ValueError(f"components require each other in a cycle: {' -> '.join((*path, c.name))}")
        state[c.name] = 1
        for need in c.requires:
            if need not in by_name:
                raise ValueError(f"component {c.name} requires {need}, which is not running")
            visit(by_name[need], (*path, c.name))
        state[c.name] = 2
        order.append(c)

    for c in components:
        visit(c, ())
    return order


class Supervisor:
    """Starts, watches and stops a set of components."""

    def __init__(
        self,
        components: Sequence[Component],
        *,
        backoff_initial: float = 1.0,
        backoff_max: float = 30.0,
        shutdown_timeout: float = 8.0,
    ) -> None:
        self.order = start_order(components)
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.shutdown_timeout = shutdown_timeout
        self._ready = {c.name: asyncio.Event() for c in self.order}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self.fatal: str | None = None
        self._stop: asyncio.Event | None = None

    def is_ready(self, name: str | None = None) -> bool:
        """Whether one component (or, with no name, every component) is ready."""
        if name is not None:
            return self._ready[name].is_set()
        return all(e.is_set() for e in self._ready.values())

    def status(self) -> dict[str, bool]:
        return {name: e.is_set() for name, e in self._ready.items()}

    async def wait_ready(self, name: str) -> None:
        await self._ready[name].wait()

    async def wait_all_ready(self) -> None:
        """Until every component is ready at once (components added meanwhile count too)."""
        while not self.is_ready():
            for event in [e for e in self._ready.values() if not e.is_set()]:
                await event.wait()

    async def run(self, stop: asyncio.Event) -> None:
        """Run every component until ``stop`` is set (or one that may not restart ends), then stop them."""
        self._stop = stop
        for comp in self.order:
            self._tasks[comp.name] = asyncio.create_task(self._keep(comp), name=comp.name)
        try:
            await stop.wait()
        finally:
            await self.shutdown()
        if self.fatal:
            raise ComponentExited(self.fatal)

    def add(self, components: Sequence[Component]) -> None:
        """Start more components in a running supervisor (an agent enabling a plugin)."""
        self.order = start_order([*self.order, *components])  # raises on a name already running
        for comp in components:
            self._ready[comp.name] = asyncio.Event()
            self._tasks[comp.name] = asyncio.create_task(self._keep(comp), name=comp.name)

    async def remove(self, names: Sequence[str]) -> None:
        """Stop and forget components (an agent disabling a plugin); what requires them must go too."""
        gone = set(names)
        held = [c.name for c in self.order if c.name not in gone and gone & set(c.requires)]
        if held:
            raise ValueError(f"component {held[0]} requires a component being removed")
        for comp in reversed([c for c in self.order if c.name in gone]):
            task = self._tasks.pop(comp.name, None)
            if task is not None and not task.done():
                task.cancel()
                done, _ = await asyncio.wait({task}, timeout=self.shutdown_timeout)
                if not done:
                    log.error("component did not stop in time", component=comp.name)
            self._ready.pop(comp.name, None)
        self.order = [c for c in self.order if c.name not in gone]

    async def shutdown(self) -> None:
        deadline = time.monotonic() + self.shutdown_timeout
        for comp in reversed(self.order):
            task = self._tasks.pop(comp.name, None)
            if task is None or task.done():
                continue
            task.cancel()
            left = max(0.1, deadline - time.monotonic())
            done, _ = await asyncio.wait({task}, timeout=left)
            if not done:
                log.error("component did not stop in time", component=comp.name)
            self._ready[comp.name].clear()

    async def _keep(self, comp: Component) -> None:
        for need in comp.requires:
            await self._ready[need].wait()
        failures = 0
        while True:
            started = time.monotonic()
            log.debug("starting component", component=comp.name)
            try:
                await comp.run(lambda: self._mark_ready(comp))
                reason = "returned"
            except asyncio.CancelledError:
                raise
            except Exception as e:
                reason = f"{type(e).__name__}: {e}"
            self._ready[comp.name].clear()
            if not comp.restart:
                self.fatal = f"component {comp.name} stopped: {reason}"
                log.error("component stopped and may not restart; shutting down", component=comp.name,
                          reason=reason)
                assert self._stop is not None
                self._stop.set()
                return
            if time.monotonic() - started > 60:
                failures = 0  # it ran well for a while: start the back-off afresh
            delay = min(self.backoff_max, self.backoff_initial * 2**failures)
            failures += 1
            log.warning("component crashed; restarting", component=comp.name, reason=reason,
                        restart_in=f"{delay:.1f}s", failures=failures)
            await asyncio.sleep(delay)

    def _mark_ready(self, comp: Component) -> None:
        if not self._ready[comp.name].is_set():
            log.info("component ready", component=comp.name)
            self._ready[comp.name].set()
