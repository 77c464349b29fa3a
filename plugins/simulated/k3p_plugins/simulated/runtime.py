"""A container runtime that runs nothing: hollow nodes for tests and scale benchmarks.

Sandboxes get IPs from the node's podCIDR (told through ``update_runtime_config``, as
the kubelet tells a CRI runtime) or, before one is known, from a private per-runtime
range. Containers become RUNNING at once (or after a configurable delay); a container
whose command is a finite shell program (``true``, ``false``, ``sleep N``,
``sh -c "sleep 1; exit 3"``) exits with that code after that time, anything else runs
until stopped. Everything is kept in memory with timers, never threads or processes, so a
hundred nodes of thirty pods each fit in one process.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import ipaddress
import itertools
import shlex
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any

import structlog

from k3p.protocols.runtime import (
    ContainerConfig,
    ContainerState,
    ContainerStats,
    ContainerStatus,
    ExecResult,
    ImageInfo,
    RuntimeDefaults,
    RuntimeError_,
    SandboxConfig,
    SandboxState,
    SandboxStatus,
)

log = structlog.get_logger(__name__)

#: the fallback ranges of successive runtimes: /24s of the shared address space 100.64.0.0/10
_FALLBACK = ipaddress.ip_network("100.64.0.0/10")
_fallback_index = itertools.count()

SHELLS = ("sh", "/bin/sh", "bash", "/bin/bash", "ash", "/bin/ash", "dash", "/bin/dash")
DEFAULT_CAPACITY = {"cpu": "4", "memory": "8Gi", "pods": "110", "ephemeral-storage": "100Gi"}


@dataclass(frozen=True)
class Program:
    """What a simulated container does: exit with ``code`` after ``seconds``, or run forever (None)."""

    seconds: float | None
    code: int = 0


FOREVER = Program(None)


def _exit_code(word: str) -> int | None:
    try:
        return int(word) & 0xFF
    except ValueError:
        return None


def _number(word: str) -> float | None:
    try:
        value = float(word.rstrip("s"))
    except ValueError:
        return None
    return value if value >= 0 else None


def interpret_script(script: str, max_seconds: float) -> Program:
    """A shell script made of ``sleep N``, ``exit N``, ``true``, ``false``, ``echo ...`` and ``:``."""
    seconds, code = 0.0, 0
    statements = [s.strip() for part in script.replace("&&", ";").replace("\n", ";").split(";")
                  for s in [part] if s.strip()]
    for statement in statements:
        try:
            words = shlex.split(statement)
        except ValueError:
            return FOREVER
        if not words:
            continue
        head = words[0].rsplit("/", 1)[-1]
        if head == "exit":
            found = _exit_code(words[1]) if len(words) > 1 else code
            return Program(seconds, code if found is None else found)
        if head in ("true", ":"):
            code = 0
        elif head == "false":
            code = 1
        elif head in ("echo", "printf"):
            code = 0
        elif head == "sleep" and len(words) == 2:
            n = _number(words[1])
            if n is None or seconds + n > max_seconds:
                return FOREVER
            seconds += n
            code = 0
        else:
            return FOREVER
    return Program(seconds, code)


def interpret(argv: list[str], max_seconds: float = 600) -> Program:
    """What a command line does in the simulation (see the module docstring)."""
    if not argv:
        return FOREVER  # the image's entrypoint: a server, presumably
    head = argv[0].rsplit("/", 1)[-1]
    if head == "busybox" and len(argv) > 1:
        return interpret(argv[1:], max_seconds)
    if argv[0] in SHELLS or head in ("sh", "bash", "ash", "dash"):
        rest = argv[1:]
        while rest and rest[0].startswith("-") and rest[0] != "-c" and "c" not in rest[0]:
            rest = rest[1:]
        if len(rest) >= 2 and rest[0].startswith("-") and "c" in rest[0]:
            return interpret_script(rest[1], max_seconds)
        return FOREVER
    return interpret_script(shlex.join(argv), max_seconds)


@functools.lru_cache(maxsize=1024)
def _image_ref(image: str) -> str:
    """``docker.io/library/busybox@sha256:...`` for ``busybox:1.35`` (a made-up but stable digest)."""
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        name = name[: len(name) - len(last)] + last.split(":", 1)[0]
    if "/" not in name:
        name = f"docker.io/library/{name}"
    elif "." not in name.split("/", 1)[0] and ":" not in name.split("/", 1)[0]:
        name = f"docker.io/{name}"
    return f"{name}@sha256:{hashlib.sha256(image.encode()).hexdigest()}"


@dataclass
class _Sandbox:
    id: str
    config: SandboxConfig
    state: SandboxState
    ip: str
    created_at: float


@dataclass
class _Container:
    id: str
    sandbox_id: str
    config: ContainerConfig
    state: ContainerState
    created_at: float
    started_at: float = 0.0
    finished_at: float = 0.0
    exit_code: int = 0
    reason: str = ""
    timer: asyncio.TimerHandle | None = None
    exited: asyncio.Event = field(default_factory=asyncio.Event)


class SimulatedRuntime(RuntimeDefaults):
    """The Runtime protocol with no containers at all (kwok-style hollow nodes)."""

    name = "simulated"
    #: tells the kubelet that nothing really runs: no hostPath creation, no network probes
    runs_workloads = False

    def __init__(self, node_name: str = "", *, capacity: dict[str, str] | None = None,
                 sandbox_delay: float = 0.0, start_delay: float = 0.0, max_finite_seconds: float = 600,
                 stop_exit_code: int = 0) -> None:
        self.node_name = node_name
        #: the node's fixed capacity (the node agent reports it instead of the host's)
        self.node_capacity = dict(capacity or DEFAULT_CAPACITY)
        self.sandbox_delay = sandbox_delay
        self.start_delay = start_delay
        self.max_finite_seconds = max_finite_seconds
        self.stop_exit_code = stop_exit_code
        self.pod_cidr = ""
        self._sandboxes: dict[str, _Sandbox] = {}
        self._containers: dict[str, _Container] = {}
        self._images: dict[str, ImageInfo] = {}
        self._used_ips: set[str] = set()
        self._fallback = list(_FALLBACK.subnets(new_prefix=24))[next(_fallback_index) % 16384]
        self.started = False

    # --- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        self.started = True

    async def close(self) -> None:
        # Containers "keep running" across a close: the state stays in this object.
        self.started = False

    async def version(self) -> str:
        return "1.0"

    async def update_runtime_config(self, pod_cidr: str) -> None:
        """The node's podCIDR, from which new sandboxes take their IPs."""
        self.pod_cidr = pod_cidr

    # --- sandboxes ----------------------------------------------------------------------

    def _allocate_ip(self) -> str:
        network = self._fallback
        if self.pod_cidr:
            try:
                network = ipaddress.ip_network(self.pod_cidr, strict=False)
            except ValueError:
                log.warning("ignoring an invalid podCIDR", pod_cidr=self.pod_cidr, node=self.node_name)
        hosts = network.hosts()
        next(hosts, None)  # .1 is the bridge's gateway on a real node
        for ip in hosts:
            text = str(ip)
            if text not in self._used_ips:
                self._used_ips.add(text)
                return text
        raise RuntimeError_(f"no free IP address left in {network}")

    async def run_pod_sandbox(self, config: SandboxConfig, runtime_handler: str = "") -> str:
        if self.sandbox_delay:
            await asyncio.sleep(self.sandbox_delay)
        sid = uuid.uuid4().hex
        ip = "" if config.host_network else self._allocate_ip()
        self._sandboxes[sid] = _Sandbox(sid, config, SandboxState.READY, ip, time.time())
        return sid

    def _sandbox(self, sandbox_id: str) -> _Sandbox:
        sb = self._sandboxes.get(sandbox_id)
        if sb is None:
            raise RuntimeError_(f"pod sandbox {sandbox_id} not found", not_found=True)
        return sb

    async def stop_pod_sandbox(self, sandbox_id: str) -> None:
        sb = self._sandboxes.get(sandbox_id)
        if sb is None:
            return  # CRI: stopping a missing sandbox is not an error
        for c in self._containers.values():
            if c.sandbox_id == sandbox_id and c.state in (ContainerState.RUNNING, ContainerState.CREATED):
                self._exit(c, 137 if c.state == ContainerState.RUNNING else 0, "Error")
        sb.state = SandboxState.NOTREADY
        self._used_ips.discard(sb.ip)

    async def remove_pod_sandbox(self, sandbox_id: str) -> None:
        sb = self._sandboxes.pop(sandbox_id, None)
        if sb is None:
            return
        self._used_ips.discard(sb.ip)
        for cid in [c.id for c in self._containers.values() if c.sandbox_id == sandbox_id]:
            await self.remove_container(cid)

    def _sandbox_status(self, sb: _Sandbox) -> SandboxStatus:
        return SandboxStatus(id=sb.id, state=sb.state, ip=sb.ip if sb.state == SandboxState.READY else "",
                             created_at=sb.created_at, labels=dict(sb.config.labels),
                             annotations=dict(sb.config.annotations), attempt=sb.config.attempt)

    async def pod_sandbox_status(self, sandbox_id: str) -> SandboxStatus:
        return self._sandbox_status(self._sandbox(sandbox_id))

    async def list_pod_sandboxes(self) -> list[SandboxStatus]:
        return [self._sandbox_status(sb) for sb in self._sandboxes.values()]

    # --- containers ---------------------------------------------------------------------

    async def create_container(self, sandbox_id: str, config: ContainerConfig, sandbox: SandboxConfig) -> str:
        sb = self._sandbox(sandbox_id)
        if sb.state != SandboxState.READY:
            raise RuntimeError_(f"pod sandbox {sandbox_id} is not ready")
        cid = uuid.uuid4().hex
        self._containers[cid] = _Container(cid, sandbox_id, replace(config), ContainerState.CREATED, time.time())
        self._images.setdefault(config.image, ImageInfo(id=_image_ref(config.image).split("@")[1],
                                                        tags=[config.image]))
        return cid

    def _container(self, container_id: str) -> _Container:
        c = self._containers.get(container_id)
        if c is None:
            raise RuntimeError_(f"container {container_id} not found", not_found=True)
        return c

    async def start_container(self, container_id: str) -> None:
        c = self._container(container_id)
        if c.state != ContainerState.CREATED:
            raise RuntimeError_(f"container {container_id} is {c.state.value}, not created")
        if self.start_delay:
            await asyncio.sleep(self.start_delay)
        c.state = ContainerState.RUNNING
        c.started_at = time.time()
        program = interpret([*c.config.command, *c.config.args], self.max_finite_seconds)
        if program.seconds is not None:
            loop = asyncio.get_running_loop()
            c.timer = loop.call_later(program.seconds, self._exit, c, program.code, "")

    def _exit(self, c: _Container, code: int, reason: str) -> None:
        if c.state not in (ContainerState.RUNNING, ContainerState.CREATED):
            return
        if c.timer is not None:
            c.timer.cancel()
            c.timer = None
        c.state = ContainerState.EXITED
        c.finished_at = time.time()
        c.exit_code = code
        c.reason = reason or ("Completed" if code == 0 else "Error")
        c.exited.set()

    async def stop_container(self, container_id: str, timeout: int) -> None:
        c = self._container(container_id)
        if c.state == ContainerState.RUNNING:
            self._exit(c, self.stop_exit_code, "")
        elif c.state == ContainerState.CREATED:
            self._exit(c, 0, "")

    async def remove_container(self, container_id: str) -> None:
        c = self._containers.pop(container_id, None)
        if c is not None and c.timer is not None:
            c.timer.cancel()
        if c is not None:
            c.exited.set()

    def _status(self, c: _Container) -> ContainerStatus:
        return ContainerStatus(
            id=c.id, sandbox_id=c.sandbox_id, name=c.config.name, state=c.state, image=c.config.image,
            image_ref=_image_ref(c.config.image), created_at=c.created_at, started_at=c.started_at,
            finished_at=c.finished_at, exit_code=c.exit_code, reason=c.reason if c.state == ContainerState.EXITED
            else "", log_path=c.config.log_path, attempt=c.config.attempt, labels=dict(c.config.labels),
            annotations=dict(c.config.annotations))

    async def container_status(self, container_id: str) -> ContainerStatus:
        return self._status(self._container(container_id))

    async def list_containers(self, sandbox_id: str | None = None) -> list[ContainerStatus]:
        return [self._status(c) for c in self._containers.values() if sandbox_id is None or c.sandbox_id == sandbox_id]

    async def exec_sync(self, container_id: str, cmd: list[str], timeout: float) -> ExecResult:
        c = self._container(container_id)
        if c.state != ContainerState.RUNNING:
            raise RuntimeError_(f"container {container_id} is not running")
        program = interpret(cmd, max_seconds=0)
        return ExecResult(exit_code=program.code if program.seconds is not None else 0)

    async def container_stats(self, container_id: str) -> ContainerStats:
        self._container(container_id)
        return ContainerStats(container_id=container_id)

    # --- streaming: nothing to stream from --------------------------------------------------

    async def exec_url(self, container_id: str, cmd: list[str], tty: bool, stdin: bool, stdout: bool,
                       stderr: bool) -> str:
        raise RuntimeError_("the simulated runtime cannot exec into containers")

    async def attach_url(self, container_id: str, tty: bool, stdin: bool, stdout: bool, stderr: bool) -> str:
        raise RuntimeError_("the simulated runtime cannot attach to containers")

    async def port_forward_url(self, sandbox_id: str, ports: list[int]) -> str:
        raise RuntimeError_("the simulated runtime cannot forward ports")

    # --- logs ---------------------------------------------------------------------------

    async def read_log(self, status: ContainerStatus, follow: bool = False) -> AsyncIterator[bytes]:
        """A line for the start (and one for the exit) in CRI log format."""
        c = self._containers.get(status.id)
        started = status.started_at or status.created_at
        yield _cri_line(started, f"simulated container {status.name} started (image {status.image})")
        if c is not None and follow and c.state == ContainerState.RUNNING:
            await c.exited.wait()
        current = self._containers.get(status.id)
        if current is not None and current.state == ContainerState.EXITED:
            yield _cri_line(current.finished_at, f"simulated container {status.name} exited with code "
                                                 f"{current.exit_code}")

    # --- images -------------------------------------------------------------------------

    async def image_present(self, image: str) -> bool:
        return True

    async def pull_image(self, image: str) -> str:
        ref = _image_ref(image)
        self._images.setdefault(image, ImageInfo(id=ref.split("@")[1], tags=[image]))
        return ref

    async def list_images(self) -> list[ImageInfo]:
        return list(self._images.values())

    async def import_image(self, path: str) -> list[str]:
        return []

    # --- for tests ----------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Counts of what this runtime holds (sandboxes, containers by state)."""
        states: dict[str, int] = {}
        for c in self._containers.values():
            states[c.state.value] = states.get(c.state.value, 0) + 1
        return {"sandboxes": len(self._sandboxes), "containers": states}


def _cri_line(t: float, text: str) -> bytes:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int((t % 1) * 1e9):09d}Z"
    return f"{stamp} stdout F {text}\n".encode()
