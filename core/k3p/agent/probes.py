"""Container probes and lifecycle hooks: exec through the runtime, httpGet and tcpSocket to the pod IP.

One :class:`ContainerProbes` watches one container instance (one container ID) with its
startup, liveness and readiness probes, following kube's rules: liveness and readiness
wait until the startup probe has succeeded; a result flips only after
``successThreshold`` / ``failureThreshold`` equal outcomes in a row; readiness starts
false and liveness true. The owner hears every flip through a callback and decides what
follows (restart on liveness failure, Ready condition on readiness).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import structlog

from k3p.agent.podspec import resolve_port
from k3p.log import error_text
from k3p.protocols.runtime import Runtime, RuntimeError_

log = structlog.get_logger(__name__)

Obj = dict[str, Any]

USER_AGENT = "kube-probe/1.32"
#: kube reads at most this much of an HTTP probe's body (for the failure message)
MAX_BODY = 10 * 1024


@dataclass
class Outcome:
    success: bool
    message: str = ""


@dataclass
class ActionTarget:
    """Where a probe or hook runs: the container (exec) and the pod's IP (network checks)."""

    runtime: Runtime
    container_id: str
    container: Obj
    pod_ip: str
    #: False on simulated nodes: network checks are not made and count as successes
    network: bool = True


async def run_action(action: Obj, target: ActionTarget, timeout: float) -> Outcome:
    """Run one probe or hook handler (exec, httpGet, tcpSocket, grpc, sleep) and judge it."""
    try:
        if "exec" in action:
            cmd = list((action["exec"] or {}).get("command") or [])
            result = await target.runtime.exec_sync(target.container_id, cmd, timeout)
            if result.exit_code == 0:
                return Outcome(True)
            out = (result.stdout + result.stderr).decode(errors="replace").strip()
            return Outcome(False, out or f"command {cmd!r} exited with {result.exit_code}")
        if "sleep" in action:
            await asyncio.sleep(float((action["sleep"] or {}).get("seconds") or 0))
            return Outcome(True)
        if not target.network:
            return Outcome(True)
        if "httpGet" in action:
            return await _http_get(action["httpGet"] or {}, target, timeout)
        if "tcpSocket" in action:
            return await _tcp(action["tcpSocket"] or {}, target, timeout)
        if "grpc" in action:
            return await _tcp({"port": (action["grpc"] or {}).get("port")}, target, timeout)
        return Outcome(False, "the probe has no handler")
    except TimeoutError:
        return Outcome(False, f"timeout: the check did not finish within {timeout:g}s")
    except RuntimeError_ as e:
        return Outcome(False, str(e))


async def _http_get(spec: Obj, target: ActionTarget, timeout: float) -> Outcome:
    host = spec.get("host") or target.pod_ip
    port = resolve_port(spec.get("port"), target.container)
    scheme = (spec.get("scheme") or "HTTP").lower()
    path = spec.get("path") or "/"
    if not path.startswith("/"):
        path = "/" + path
    shown = f"[{host}]" if ":" in host else host
    url = f"{scheme}://{shown}:{port}{path}"
    headers = {"User-Agent": USER_AGENT, "Accept": "*/*"}
    for h in spec.get("httpHeaders") or []:
        headers[h.get("name", "")] = h.get("value", "")
    try:
        async with httpx.AsyncClient(verify=False, timeout=timeout, follow_redirects=False) as http:
            async with http.stream("GET", url, headers=headers) as r:
                body = b""
                async for chunk in r.aiter_bytes():
                    body += chunk
                    if len(body) >= MAX_BODY:
                        break
                code = r.status_code
    except httpx.TimeoutException:
        return Outcome(False, f'Get "{url}": context deadline exceeded (Client.Timeout exceeded while awaiting '
                              'headers)')
    except httpx.HTTPError as e:
        return Outcome(False, f'Get "{url}": {error_text(e)}')
    # kube: 2xx and 3xx succeed (a redirect elsewhere is a success with a warning)
    if 200 <= code < 400:
        return Outcome(True)
    return Outcome(False, f"HTTP probe failed with statuscode: {code}")


async def _tcp(spec: Obj, target: ActionTarget, timeout: float) -> Outcome:
    host = spec.get("host") or target.pod_ip
    port = resolve_port(spec.get("port"), target.container)
    try:
        _reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except TimeoutError:
        return Outcome(False, f"dial tcp {host}:{port}: i/o timeout")
    except OSError as e:
        return Outcome(False, f"dial tcp {host}:{port}: {e.strerror or e}")
    writer.close()
    with contextlib.suppress(Exception):
        await writer.wait_closed()
    return Outcome(True)


# --- periodic probes of one container instance ---------------------------------------------


@dataclass
class ProbeSettings:
    initial_delay: float = 0
    period: float = 10
    timeout: float = 1
    success_threshold: int = 1
    failure_threshold: int = 3

    @classmethod
    def of(cls, probe: Obj) -> ProbeSettings:
        return cls(
            initial_delay=float(probe.get("initialDelaySeconds") or 0),
            period=float(probe.get("periodSeconds") or 10),
            timeout=float(probe.get("timeoutSeconds") or 1),
            success_threshold=int(probe.get("successThreshold") or 1),
            failure_threshold=int(probe.get("failureThreshold") or 3),
        )


#: (probe kind "startup"/"liveness"/"readiness", new result, message of the last check)
ChangeCallback = Callable[[str, bool, str], None]


class ContainerProbes:
    """The probes of one running container instance; results readable at any time."""

    def __init__(self, container: Obj, target: ActionTarget, started_at: float, on_change: ChangeCallback,
                 runner: Callable[[Obj, ActionTarget, float], Awaitable[Outcome]] = run_action) -> None:
        self.container = container
        self.target = target
        self.started_at = started_at or time.time()
        self.on_change = on_change
        self.runner = runner
        self.specs = {kind: container.get(f"{kind}Probe") for kind in ("startup", "liveness", "readiness")}
        self.started = self.specs["startup"] is None
        self.live = True
        self.failed_startup = False
        self.ready = self.specs["readiness"] is None
        self.message = ""
        self._started_event = asyncio.Event()
        if self.started:
            self._started_event.set()
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def has_probes(self) -> bool:
        return any(self.specs.values())

    def resume(self, started: bool, ready: bool) -> None:
        """Start from earlier results (a restarted kubelet adopting a running container)."""
        if self.specs["startup"] is not None and started:
            self.started = True
            self._started_event.set()
        if self.specs["readiness"] is not None:
            self.ready = ready

    def start(self) -> None:
        for kind, probe in self.specs.items():
            if probe:
                self._tasks.append(asyncio.create_task(self._loop(kind, probe), name=f"probe-{kind}"))

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    def _set(self, kind: str, value: bool, message: str) -> None:
        if kind == "startup":
            self.started = value
            if value:
                self._started_event.set()
        elif kind == "liveness":
            self.live = value
        else:
            self.ready = value
        self.message = message
        self.on_change(kind, value, message)

    async def _loop(self, kind: str, probe: Obj) -> None:
        settings = ProbeSettings.of(probe)
        if kind != "startup":
            await self._started_event.wait()
        wait = self.started_at + settings.initial_delay - time.time()
        if wait > 0:
            await asyncio.sleep(wait)
        current = {"startup": self.started, "liveness": True, "readiness": self.ready}[kind]
        if kind == "startup" and current:
            return
        streak_value: bool | None = None
        streak = 0
        while True:
            try:
                outcome = await asyncio.wait_for(self.runner(probe, self.target, settings.timeout),
                                                 settings.timeout + 1)
            except TimeoutError:
                outcome = Outcome(False, f"timeout: the check did not finish within {settings.timeout:g}s")
            except Exception as e:  # a broken probe is a failed probe, never a crashed kubelet
                outcome = Outcome(False, str(e))
            if outcome.success == streak_value:
                streak += 1
            else:
                streak_value, streak = outcome.success, 1
            threshold = settings.success_threshold if outcome.success else settings.failure_threshold
            if kind != "readiness" and outcome.success:
                threshold = 1  # successThreshold must be 1 for liveness and startup
            if outcome.success != current and streak >= threshold:
                current = outcome.success
                self._set(kind, current, outcome.message)
            elif kind == "startup" and not outcome.success and streak >= threshold:
                self.failed_startup = True
                self._set(kind, False, outcome.message)
                return  # the owner restarts the container
            elif not outcome.success:
                self.message = outcome.message
            if kind == "startup" and current:
                return  # a started container is never startup-probed again
            if kind == "liveness" and not current:
                return  # the owner restarts the container; a new instance gets new probes
            await asyncio.sleep(settings.period)
