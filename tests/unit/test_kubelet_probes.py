"""Probes and hooks: httpGet/tcpSocket against a local server, exec through a runtime, thresholds."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from k3p.agent.probes import ActionTarget, ContainerProbes, Outcome, ProbeSettings, run_action
from k3p.protocols.runtime import ContainerConfig, SandboxConfig
from k3p_plugins.simulated import SimulatedRuntime


@pytest.fixture
async def http_server() -> AsyncIterator[tuple[int, list[dict]]]:
    """A tiny HTTP server on 127.0.0.1: /ok 200, /moved 302, /bad 500, /slow sleeps; records requests."""
    seen: list[dict] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode()
        request_line, *header_lines = head.split("\r\n")
        path = request_line.split()[1]
        headers = dict(line.split(": ", 1) for line in header_lines if ": " in line)
        seen.append({"path": path, "headers": headers})
        if path == "/slow":
            await asyncio.sleep(2)
        code = {"/ok": "200 OK", "/moved": "302 Found", "/bad": "500 Internal Server Error"}.get(path, "404 Not Found")
        writer.write(f"HTTP/1.1 {code}\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi".encode())
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield port, seen
    finally:
        server.close()
        await server.wait_closed()


def target(port: int = 0, network: bool = True, runtime=None, cid: str = "") -> ActionTarget:
    container = {"name": "app", "ports": [{"name": "http", "containerPort": port}]}
    return ActionTarget(runtime or SimulatedRuntime(), cid, container, "127.0.0.1", network)


async def test_http_get(http_server) -> None:
    port, seen = http_server
    ok = await run_action({"httpGet": {"path": "/ok", "port": "http",
                                       "httpHeaders": [{"name": "X-Probe", "value": "yes"}]}}, target(port), 1)
    assert ok == Outcome(True)
    assert seen[-1]["headers"]["User-Agent"] == "kube-probe/1.32" and seen[-1]["headers"]["X-Probe"] == "yes"
    assert (await run_action({"httpGet": {"path": "/moved", "port": port}}, target(port), 1)).success
    bad = await run_action({"httpGet": {"path": "/bad", "port": port}}, target(port), 1)
    assert not bad.success and bad.message == "HTTP probe failed with statuscode: 500"
    slow = await run_action({"httpGet": {"path": "/slow", "port": port}}, target(port), 0.3)
    assert not slow.success and "deadline exceeded" in slow.message


async def test_tcp_socket(http_server) -> None:
    port, _ = http_server
    assert (await run_action({"tcpSocket": {"port": port}}, target(port), 1)).success
    with __import__("socket").socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    refused = await run_action({"tcpSocket": {"port": closed}}, target(closed), 1)
    assert not refused.success and refused.message.startswith(f"dial tcp 127.0.0.1:{closed}")


async def test_network_checks_are_skipped_on_simulated_nodes() -> None:
    assert (await run_action({"httpGet": {"port": 1}}, target(1, network=False), 1)).success


async def test_exec_goes_through_the_runtime() -> None:
    rt = SimulatedRuntime()
    sid = await rt.run_pod_sandbox(SandboxConfig(name="p", namespace="d", uid="u"))
    cid = await rt.create_container(sid, ContainerConfig(name="app", image="busybox"), SandboxConfig("p", "d", "u"))
    await rt.start_container(cid)
    t = target(runtime=rt, cid=cid)
    assert (await run_action({"exec": {"command": ["cat", "/tmp/healthy"]}}, t, 1)).success
    failed = await run_action({"exec": {"command": ["sh", "-c", "exit 4"]}}, t, 1)
    assert not failed.success and "exited with 4" in failed.message
    await rt.stop_container(cid, 1)
    assert not (await run_action({"exec": {"command": ["true"]}}, t, 1)).success  # not running any more


def test_probe_settings_defaults() -> None:
    s = ProbeSettings.of({})
    assert (s.initial_delay, s.period, s.timeout, s.success_threshold, s.failure_threshold) == (0, 10, 1, 1, 3)


class Script:
    """A fake probe runner answering from a list of outcomes (the last one repeats)."""

    def __init__(self, *answers: bool) -> None:
        self.answers = list(answers)
        self.calls = 0

    async def __call__(self, probe, target, timeout) -> Outcome:
        answer = self.answers[min(self.calls, len(self.answers) - 1)]
        self.calls += 1
        return Outcome(answer, "" if answer else f"failure {self.calls}")


async def wait_until(predicate, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition never held"
        await asyncio.sleep(0.01)


async def test_readiness_thresholds() -> None:
    changes: list[tuple[str, bool]] = []
    probe = {"exec": {"command": ["x"]}, "periodSeconds": 0.02, "successThreshold": 2, "failureThreshold": 3}
    runner = Script(True, True, False, False, False, True)
    probes = ContainerProbes({"readinessProbe": probe}, target(), time.time(),
                             lambda kind, ok, msg: changes.append((kind, ok)), runner=runner)
    assert not probes.ready  # readiness starts false
    probes.start()
    try:
        await wait_until(lambda: len(changes) >= 2)
    finally:
        await probes.stop()
    # ready after 2 successes, unready only after 3 failures in a row
    assert changes[:2] == [("readiness", True), ("readiness", False)]
    assert runner.calls >= 5


async def test_liveness_waits_for_startup_and_reports_failure() -> None:
    changes: list[tuple[str, bool]] = []
    fast = {"exec": {"command": ["x"]}, "periodSeconds": 0.02, "failureThreshold": 2}
    startup = Script(False, True)
    liveness = Script(False)

    async def runner(probe, tgt, timeout):
        return await (startup if probe is fast_startup else liveness)(probe, tgt, timeout)

    fast_startup = dict(fast)
    container = {"startupProbe": fast_startup, "livenessProbe": dict(fast)}
    probes = ContainerProbes(container, target(), time.time(), lambda kind, ok, msg: changes.append((kind, ok)),
                             runner=runner)
    assert probes.live and not probes.started
    probes.start()
    try:
        await wait_until(lambda: ("liveness", False) in changes)
    finally:
        await probes.stop()
    assert changes == [("startup", True), ("liveness", False)]
    assert startup.calls == 2 and not probes.live


async def test_startup_failure_is_reported() -> None:
    changes: list[tuple[str, bool]] = []
    probe = {"exec": {"command": ["x"]}, "periodSeconds": 0.01, "failureThreshold": 3}
    probes = ContainerProbes({"startupProbe": probe}, target(), time.time(),
                             lambda kind, ok, msg: changes.append((kind, ok)), runner=Script(False))
    probes.start()
    try:
        await wait_until(lambda: probes.failed_startup)
    finally:
        await probes.stop()
    assert changes == [("startup", False)]


async def test_initial_delay_is_counted_from_the_container_start() -> None:
    runner = Script(True)
    probe = {"exec": {"command": ["x"]}, "initialDelaySeconds": 0.3, "periodSeconds": 0.05}
    probes = ContainerProbes({"readinessProbe": probe}, target(), time.time(), lambda *a: None, runner=runner)
    probes.start()
    try:
        await asyncio.sleep(0.15)
        assert runner.calls == 0
        await wait_until(lambda: probes.ready)
    finally:
        await probes.stop()
