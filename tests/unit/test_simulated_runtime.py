"""The simulated runtime: programs it understands, sandbox IPs, container lifecycle, the plugin hooks."""

from __future__ import annotations

import asyncio
import ipaddress

import pytest

from k3p.config import ConfigError, OptionSchema
from k3p.protocols.runtime import ContainerConfig, ContainerState, Runtime, RuntimeError_, SandboxConfig, SandboxState
from k3p_plugins import simulated
from k3p_plugins.simulated.runtime import FOREVER, Program, SimulatedRuntime, interpret


@pytest.mark.parametrize(("argv", "program"), [
    ([], FOREVER),
    (["nginx", "-g", "daemon off;"], FOREVER),
    (["true"], Program(0, 0)),
    (["/bin/false"], Program(0, 1)),
    (["sleep", "2"], Program(2, 0)),
    (["sleep", "3600"], FOREVER),  # beyond the finite limit: a "run forever" idiom
    (["sh", "-c", "exit 3"], Program(0, 3)),
    (["/bin/sh", "-ec", "sleep 1; echo done && exit 7"], Program(1, 7)),
    (["sh", "-c", "sleep 0.5; false"], Program(0.5, 1)),
    (["busybox", "sh", "-c", "true"], Program(0, 0)),
    (["sh", "-c", "while true; do sleep 1; done"], FOREVER),
    (["sh", "-c", "httpd -f"], FOREVER),
    (["sh"], FOREVER),
])
def test_interpret(argv, program) -> None:
    assert interpret(argv) == program


def sandbox(name: str = "p", uid: str = "u", host_network: bool = False) -> SandboxConfig:
    return SandboxConfig(name=name, namespace="default", uid=uid, labels={"io.kubernetes.pod.uid": uid},
                         host_network=host_network)


async def started(rt: SimulatedRuntime, sid: str, command: list[str], name: str = "app") -> str:
    cid = await rt.create_container(sid, ContainerConfig(name=name, image="busybox:1.35", command=command,
                                                         labels={"k": "v"}, annotations={"a": "1"}), sandbox())
    await rt.start_container(cid)
    return cid


def test_follows_the_runtime_protocol() -> None:
    assert isinstance(SimulatedRuntime(), Runtime)


async def test_sandbox_ips_from_the_pod_cidr_or_a_private_range() -> None:
    rt = SimulatedRuntime("n1")
    early = await rt.pod_sandbox_status(await rt.run_pod_sandbox(sandbox(uid="a")))
    assert ipaddress.ip_address(early.ip) in ipaddress.ip_network("100.64.0.0/10")
    other = SimulatedRuntime("n2")
    other_ip = (await other.pod_sandbox_status(await other.run_pod_sandbox(sandbox()))).ip
    assert ipaddress.ip_network(early.ip + "/24", strict=False) != ipaddress.ip_network(other_ip + "/24", strict=False)
    await rt.update_runtime_config("10.42.7.0/24")
    sids = [await rt.run_pod_sandbox(sandbox(uid=str(i))) for i in range(3)]
    ips = [(await rt.pod_sandbox_status(s)).ip for s in sids]
    assert ips == ["10.42.7.2", "10.42.7.3", "10.42.7.4"]  # .1 is the gateway
    await rt.stop_pod_sandbox(sids[0])
    again = await rt.pod_sandbox_status(await rt.run_pod_sandbox(sandbox(uid="x")))
    assert again.ip == "10.42.7.2"  # released on stop, reused
    host = await rt.pod_sandbox_status(await rt.run_pod_sandbox(sandbox(host_network=True)))
    assert host.ip == ""
    listed = {s.labels["io.kubernetes.pod.uid"] for s in await rt.list_pod_sandboxes()}
    assert {"a", "0", "1", "2", "x"} <= listed


async def test_container_lifecycle() -> None:
    rt = SimulatedRuntime()
    sid = await rt.run_pod_sandbox(sandbox())
    server = await started(rt, sid, ["nginx"])
    status = await rt.container_status(server)
    assert status.state == ContainerState.RUNNING and status.labels == {"k": "v"} and status.annotations == {"a": "1"}
    assert status.image_ref.startswith("docker.io/library/busybox@sha256:")
    quick = await started(rt, sid, ["sh", "-c", "exit 3"], name="quick")
    await asyncio.sleep(0.01)
    done = await rt.container_status(quick)
    assert (done.state, done.exit_code, done.reason) == (ContainerState.EXITED, 3, "Error")
    timed = await started(rt, sid, ["sleep", "0.2"], name="timed")
    await asyncio.sleep(0.05)
    assert (await rt.container_status(timed)).state == ContainerState.RUNNING
    await asyncio.sleep(0.3)
    finished = await rt.container_status(timed)
    assert (finished.state, finished.exit_code, finished.reason) == (ContainerState.EXITED, 0, "Completed")
    assert finished.finished_at - finished.started_at >= 0.19
    with pytest.raises(RuntimeError_):
        await rt.start_container(timed)  # only a created container starts
    assert (await rt.exec_sync(server, ["sh", "-c", "exit 5"], 1)).exit_code == 5
    assert (await rt.exec_sync(server, ["cat", "/ready"], 1)).exit_code == 0
    await rt.stop_container(server, 10)
    assert (await rt.container_status(server)).state == ContainerState.EXITED
    assert len(await rt.list_containers(sid)) == 3
    await rt.remove_container(server)
    with pytest.raises(RuntimeError_) as missing:
        await rt.container_status(server)
    assert missing.value.not_found
    await rt.stop_pod_sandbox(sid)
    assert (await rt.pod_sandbox_status(sid)).state == SandboxState.NOTREADY
    await rt.remove_pod_sandbox(sid)
    assert await rt.list_containers() == [] and await rt.list_pod_sandboxes() == []


async def test_stopping_the_sandbox_kills_its_containers() -> None:
    rt = SimulatedRuntime()
    sid = await rt.run_pod_sandbox(sandbox())
    cid = await started(rt, sid, [])
    await rt.stop_pod_sandbox(sid)
    status = await rt.container_status(cid)
    assert status.state == ContainerState.EXITED and status.exit_code == 137
    with pytest.raises(RuntimeError_):
        await rt.create_container(sid, ContainerConfig(name="late", image="x"), sandbox())


async def test_state_survives_close_and_start() -> None:
    rt = SimulatedRuntime()
    await rt.start()
    sid = await rt.run_pod_sandbox(sandbox())
    cid = await started(rt, sid, [])
    await rt.close()
    await rt.start()
    assert (await rt.container_status(cid)).state == ContainerState.RUNNING


async def test_logs_images_and_stats() -> None:
    rt = SimulatedRuntime()
    sid = await rt.run_pod_sandbox(sandbox())
    cid = await started(rt, sid, ["sh", "-c", "exit 0"])
    await asyncio.sleep(0.01)
    status = await rt.container_status(cid)
    lines = [line async for line in rt.read_log(status)]
    assert len(lines) == 2 and b" stdout F simulated container app started" in lines[0]
    assert lines[1].endswith(b"exited with code 0\n")
    assert await rt.image_present("anything:1")
    ref = await rt.pull_image("registry.example/team/app:2")
    assert ref.startswith("registry.example/team/app@sha256:")
    assert {t for i in await rt.list_images() for t in i.tags} >= {"busybox:1.35", "registry.example/team/app:2"}
    assert (await rt.container_stats(cid)).memory_working_set_bytes == 0
    with pytest.raises(RuntimeError_):
        await rt.exec_url(cid, ["sh"], False, False, True, True)


class Config(dict):
    def get(self, key, default=None):
        return super().get(key.replace("-", "_"), default)


def test_plugin_claims_the_runtime_only_when_asked() -> None:
    assert simulated.k3p_runtime(Config()) is None
    assert simulated.k3p_runtime(Config(simulate=0, simulate_runtime=False)) is None
    a, b = simulated.k3p_runtime(Config(simulate=3)), simulated.k3p_runtime(Config(simulate=3))
    assert isinstance(a, SimulatedRuntime) and a is not b  # one runtime per node
    custom = simulated.k3p_runtime(Config(simulate_runtime=True, simulate_capacity="cpu=16,memory=64Gi"))
    assert custom.node_capacity["cpu"] == "16" and custom.node_capacity["memory"] == "64Gi"
    assert custom.node_capacity["pods"] == "110"
    with pytest.raises(ConfigError, match="simulate-capacity"):
        simulated.k3p_runtime(Config(simulate_runtime=True, simulate_capacity="cpu"))


def test_plugin_options() -> None:
    schema = OptionSchema()
    simulated.k3p_add_options(schema)
    opt = schema.get("simulate-runtime")
    assert opt is not None and opt.type is bool and set(opt.commands) == {"agent", "server"}
    assert schema.get("simulate-capacity") is not None
