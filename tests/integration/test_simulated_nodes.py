"""Simulated nodes against a real server: registration, leases, pod lifecycle, deletion, kubelet restart.

The server runs with --disable-agent; the nodes (node agent + kubelet + SimulatedRuntime)
run in the test's own event loop through ``agent_components``, with the admin
credentials standing in for node credentials.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from k3p.agent.components import agent_components
from k3p.client import ApiError, Client
from k3p.client.resources import CONFIGMAPS, EVENTS, LEASES, NODES, PODS
from k3p.protocols.runtime import LABEL_POD_UID, RuntimeError_
from k3p.supervisor import Supervisor
from k3p.testing import K3pServer
from k3p_plugins.simulated import SimulatedRuntime

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    s = K3pServer(tmp_path_factory.mktemp("simnodes"), args=["--disable-agent"]).start()
    yield s
    s.stop()


def client_factory(server: K3pServer) -> Callable[[str], Client]:
    tls = server.data_dir / "server" / "tls"

    def new_client(user_agent: str) -> Client:
        return Client(server.url, ca_file=server.ca_file, cert_file=tls / "client-admin.crt",
                      key_file=tls / "client-admin.key", user_agent=user_agent)

    return new_client


class Nodes:
    """Simulated nodes running in this event loop for the duration of an ``async with``."""

    def __init__(self, server: K3pServer, folder: Path, names: list[str], *,
                 runtimes: dict[str, SimulatedRuntime] | None = None, config: dict[str, Any] | None = None,
                 lease_renew_interval: float = 0.5, **kubelet: Any) -> None:
        self.server = server
        self.folder = folder
        self.names = names
        self.runtimes = runtimes or {name: SimulatedRuntime(name) for name in names}
        self.config = {"node_label": [], "node_taint": [], **(config or {})}
        self.kubelet = {"relist_period": 0.2, **kubelet}
        self.lease_renew_interval = lease_renew_interval
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.supervisor: Supervisor | None = None

    async def __aenter__(self) -> Nodes:
        components = []
        for name in self.names:
            components += agent_components(client_factory(self.server), self.runtimes[name], name, self.config,
                                           self.folder / name, kubelet_overrides=self.kubelet,
                                           node_overrides={"lease_renew_interval": self.lease_renew_interval})
        self.supervisor = Supervisor(components)
        self._task = asyncio.create_task(self.supervisor.run(self._stop))
        deadline = time.monotonic() + 20
        while not self.supervisor.is_ready():
            assert time.monotonic() < deadline, f"nodes not ready: {self.supervisor.status()}"
            assert not self._task.done(), "the supervisor stopped"
            await asyncio.sleep(0.05)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._task is not None
        await self._task


@pytest.fixture
async def api(server: K3pServer):
    c = client_factory(server)("test")
    yield c
    await c.close()


async def eventually(check: Callable[[], Any], timeout: float = 15.0, what: str = "") -> Any:
    """Await ``check()`` until it returns something truthy (exceptions count as not yet)."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            result = await check()
            if result:
                return result
        except (AssertionError, ApiError, KeyError, IndexError, TypeError) as e:
            last = e
        await asyncio.sleep(0.1)
    raise TimeoutError(f"timed out waiting for {what}") from last


def pod(name: str, node: str, command: list[str] | None = None, restart: str = "Always", **extra: Any) -> dict:
    container = {"name": "c", "image": "busybox:1.35", **({"command": command} if command else {})}
    container.update(extra.pop("container", {}))
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"},
            "spec": {"nodeName": node, "restartPolicy": restart, "containers": [container], **extra}}


def condition(obj: dict, kind: str) -> dict:
    return next(c for c in obj["status"].get("conditions") or [] if c["type"] == kind)


async def events_for(api: Client, name: str) -> list[dict]:
    items = (await api.list(EVENTS, "default"))["items"]
    return [e for e in items if e["involvedObject"].get("name") == name]


async def test_nodes_register_ready_with_renewed_leases(server: K3pServer, api: Client, tmp_path: Path) -> None:
    config = {"node_label": ["zone=z1"], "node_taint": ["dedicated=sim:NoSchedule"]}
    async with Nodes(server, tmp_path, ["reg-a", "reg-b"], config=config):
        for name in ("reg-a", "reg-b"):
            node = await api.get(NODES, name)
            labels = node["metadata"]["labels"]
            assert labels["kubernetes.io/hostname"] == name and labels["kubernetes.io/os"] == "linux"
            assert labels["node.kubernetes.io/instance-type"] == "k3p" and labels["zone"] == "z1"
            assert "kubernetes.io/arch" in labels
            assert node["spec"]["taints"] == [{"key": "dedicated", "value": "sim", "effect": "NoSchedule"}]
            ready = condition(node, "Ready")
            assert (ready["status"], ready["reason"], ready["message"]) == \
                ("True", "KubeletReady", "kubelet is posting ready status")
            assert condition(node, "MemoryPressure")["reason"] == "KubeletHasSufficientMemory"
            assert condition(node, "DiskPressure")["status"] == "False"
            assert condition(node, "PIDPressure")["reason"] == "KubeletHasSufficientPID"
            info = node["status"]["nodeInfo"]
            assert info["containerRuntimeVersion"] == "simulated://1.0"
            assert info["kubeletVersion"] == "v1.32.0+k3p" and info["operatingSystem"] == "linux"
            assert node["status"]["capacity"]["cpu"] == "4" and node["status"]["capacity"]["memory"] == "8Gi"
            assert node["status"]["allocatable"]["pods"] == "110"
            types = [a["type"] for a in node["status"]["addresses"]]
            assert types == ["InternalIP", "Hostname"]
            assert node["status"]["daemonEndpoints"] == {"kubeletEndpoint": {"Port": 10250}}
            lease = await api.get(LEASES, name, "kube-node-lease")
            assert lease["spec"]["holderIdentity"] == name and lease["spec"]["leaseDurationSeconds"] == 40
            assert lease["metadata"]["ownerReferences"][0]["uid"] == node["metadata"]["uid"]
            first = lease["spec"]["renewTime"]
            assert first.endswith("Z") and "." in first  # MicroTime

            async def renewed(name: str = name, first: str = first) -> bool:
                return (await api.get(LEASES, name, "kube-node-lease"))["spec"]["renewTime"] > first

            await eventually(renewed, 5, "the lease to be renewed")
        table = server.kubectl("get", "nodes", "reg-a", "reg-b", "--no-headers", check=True).stdout
        assert table.count(" Ready ") == 2, table


async def test_pods_run_ready_with_ips_from_each_nodes_cidr(server: K3pServer, api: Client, tmp_path: Path) -> None:
    async with Nodes(server, tmp_path, ["run-a", "run-b"]):
        cidrs = {}
        for i, name in enumerate(("run-a", "run-b")):
            async def assigned(name: str = name) -> str:
                return (await api.get(NODES, name))["spec"].get("podCIDR", "")

            try:  # the server's node IPAM controller assigns one; without it, the test does
                cidrs[name] = await eventually(assigned, 3, "a podCIDR")
            except TimeoutError:
                cidrs[name] = f"10.42.{200 + i}.0/24"
                await api.patch(NODES, name, {"spec": {"podCIDR": cidrs[name], "podCIDRs": [cidrs[name]]}})
        assert cidrs["run-a"] != cidrs["run-b"]
        await asyncio.sleep(0.5)  # the node agents see the podCIDR and tell their runtimes
        probe = {"exec": {"command": ["cat", "/tmp/ready"]}, "periodSeconds": 1}
        for name in ("run-a", "run-b"):
            await api.create(PODS, pod(f"web-{name}", name, ["sleep", "3600"], container={"readinessProbe": probe}))
        for name in ("run-a", "run-b"):
            async def ready(name: str = name) -> dict | None:
                p = await api.get(PODS, f"web-{name}", "default")
                return p if p["status"].get("phase") == "Running" and condition(p, "Ready")["status"] == "True" \
                    else None

            p = await eventually(ready, 15, f"web-{name} to be Running and Ready")
            status = p["status"]
            assert ipaddress.ip_address(status["podIP"]) in ipaddress.ip_network(cidrs[name])
            assert status["podIPs"] == [{"ip": status["podIP"]}]
            assert status["hostIP"] and status["hostIPs"] == [{"ip": status["hostIP"]}]
            assert status["qosClass"] == "BestEffort" and status["startTime"]
            (cs,) = status["containerStatuses"]
            assert cs["ready"] and cs["started"] and cs["restartCount"] == 0 and "running" in cs["state"]
            assert cs["containerID"].startswith("simulated://") and cs["image"] == "busybox:1.35"
            assert cs["imageID"].startswith("docker.io/library/busybox@sha256:")
            for kind in ("PodReadyToStartContainers", "Initialized", "ContainersReady", "PodScheduled"):
                assert condition(p, kind)["status"] == "True"
            reasons = {e["reason"] for e in await events_for(api, f"web-{name}")}
            assert {"Pulling", "Pulled", "Created", "Started"} <= reasons or {"Created", "Started"} <= reasons


async def test_exit_code_with_restart_never_fails_the_pod(server: K3pServer, api: Client, tmp_path: Path) -> None:
    async with Nodes(server, tmp_path, ["never-a"]):
        await api.create(PODS, pod("exit3", "never-a", ["sh", "-c", "exit 3"], restart="Never"))

        async def failed() -> dict | None:
            p = await api.get(PODS, "exit3", "default")
            return p if p["status"].get("phase") == "Failed" else None

        p = await eventually(failed, 15, "the pod to fail")
        term = p["status"]["containerStatuses"][0]["state"]["terminated"]
        assert term["exitCode"] == 3 and term["reason"] == "Error"
        assert condition(p, "Ready")["reason"] == "PodFailed"
        assert p["status"]["containerStatuses"][0]["restartCount"] == 0


async def test_crash_loop_back_off(server: K3pServer, api: Client, tmp_path: Path) -> None:
    async with Nodes(server, tmp_path, ["crash-a"], backoff_initial=1.0):
        await api.create(PODS, pod("crash", "crash-a", ["sh", "-c", "exit 1"]))
        seen: list[dict] = []

        async def looping() -> bool:
            p = await api.get(PODS, "crash", "default")
            cs = p["status"]["containerStatuses"][0]
            seen.append(cs)
            return cs["restartCount"] >= 3 and any(
                s["state"].get("waiting", {}).get("reason") == "CrashLoopBackOff" for s in seen)

        await eventually(looping, 20, "restarts with CrashLoopBackOff")
        waiting = next(s for s in seen if s["state"].get("waiting", {}).get("reason") == "CrashLoopBackOff")
        assert waiting["state"]["waiting"]["message"].startswith("back-off ")
        assert "restarting failed container=c pod=crash_default(" in waiting["state"]["waiting"]["message"]
        assert waiting["lastState"]["terminated"]["exitCode"] == 1
        p = await api.get(PODS, "crash", "default")
        assert p["status"]["phase"] == "Running"
        assert "BackOff" in {e["reason"] for e in await events_for(api, "crash")}


async def test_init_containers_then_completion(server: K3pServer, api: Client, tmp_path: Path) -> None:
    async with Nodes(server, tmp_path, ["init-a"]):
        body = pod("job", "init-a", ["sh", "-c", "sleep 0.3; exit 0"], restart="OnFailure",
                   initContainers=[{"name": "first", "image": "busybox:1.35", "command": ["sh", "-c", "sleep 0.2"]},
                                   {"name": "second", "image": "busybox:1.35", "command": ["true"]}])
        await api.create(PODS, body)

        async def succeeded() -> dict | None:
            p = await api.get(PODS, "job", "default")
            return p if p["status"].get("phase") == "Succeeded" else None

        p = await eventually(succeeded, 15, "the pod to succeed")
        first, second = p["status"]["initContainerStatuses"]
        assert (first["name"], second["name"]) == ("first", "second")
        for s in (first, second):
            assert s["state"]["terminated"]["reason"] == "Completed" and s["ready"]
        assert p["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 0
        assert condition(p, "Initialized")["status"] == "True"
        assert condition(p, "Ready")["reason"] == "PodCompleted"
        finished_first = first["state"]["terminated"]["finishedAt"]
        started_second = second["state"]["terminated"]["startedAt"]
        assert started_second >= finished_first  # one after the other


async def test_liveness_failure_restarts_the_container(server: K3pServer, api: Client, tmp_path: Path) -> None:
    async with Nodes(server, tmp_path, ["live-a"]):
        probe = {"exec": {"command": ["sh", "-c", "exit 1"]}, "periodSeconds": 1, "failureThreshold": 1}
        await api.create(PODS, pod("sick", "live-a", ["sleep", "3600"], container={"livenessProbe": probe}))

        async def restarted() -> bool:
            p = await api.get(PODS, "sick", "default")
            return p["status"]["containerStatuses"][0]["restartCount"] >= 1

        await eventually(restarted, 15, "a restart after the liveness failure")
        reasons = [(e["reason"], e["message"]) for e in await events_for(api, "sick")]
        assert any(r == "Unhealthy" and m.startswith("Liveness probe failed") for r, m in reasons), reasons
        assert any(r == "Killing" and "failed liveness probe, will be restarted" in m for r, m in reasons), reasons


async def test_configmaps_in_env_and_volumes(server: K3pServer, api: Client, tmp_path: Path) -> None:
    async with Nodes(server, tmp_path, ["cfg-a"]):
        volume = [{"name": "conf", "configMap": {"name": "later"}}]
        mounts = {"volumeMounts": [{"name": "conf", "mountPath": "/etc/conf"}],
                  "env": [{"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "later", "key": "mode"}}}]}
        made = await api.create(PODS, pod("waits", "cfg-a", ["sleep", "3600"], volumes=volume, container=mounts))

        async def failed_mount() -> bool:
            return any(e["reason"] == "FailedMount" and 'configmap "later" not found' in e["message"]
                       for e in await events_for(api, "waits"))

        await eventually(failed_mount, 10, "a FailedMount event")
        p = await api.get(PODS, "waits", "default")
        assert p["status"]["phase"] == "Pending"
        assert p["status"]["containerStatuses"][0]["state"] == {"waiting": {"reason": "ContainerCreating"}}
        await api.create(CONFIGMAPS, {"apiVersion": "v1", "kind": "ConfigMap",
                                      "metadata": {"name": "later", "namespace": "default"},
                                      "data": {"mode": "fast", "app.conf": "x=1"}})

        async def running() -> bool:
            return (await api.get(PODS, "waits", "default"))["status"].get("phase") == "Running"

        await eventually(running, 15, "the pod to run once the ConfigMap exists")
        folder = tmp_path / "cfg-a" / "pods" / made["metadata"]["uid"] / "volumes" / "kubernetes.io~configmap" / "conf"
        assert (folder / "app.conf").read_text() == "x=1" and (folder / "mode").read_text() == "fast"

        # a key that does not exist keeps the container from being created
        bad = {"env": [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "later", "key": "nope"}}}]}
        await api.create(PODS, pod("badkey", "cfg-a", ["sleep", "3600"], container=bad))

        async def config_error() -> dict | None:
            p = await api.get(PODS, "badkey", "default")
            waiting = p["status"]["containerStatuses"][0]["state"].get("waiting", {})
            return waiting if waiting.get("reason") == "CreateContainerConfigError" else None

        waiting = await eventually(config_error, 10, "CreateContainerConfigError")
        assert waiting["message"] == "couldn't find key nope in ConfigMap default/later"


async def test_graceful_deletion(server: K3pServer, api: Client, tmp_path: Path) -> None:
    runtime = SimulatedRuntime("del-a")
    async with Nodes(server, tmp_path, ["del-a"], runtimes={"del-a": runtime}):
        hook = {"preStop": {"exec": {"command": ["sh", "-c", "sleep 0"]}}}
        made = await api.create(PODS, pod("bye", "del-a", ["sleep", "3600"], terminationGracePeriodSeconds=30,
                                          container={"lifecycle": hook}))
        uid = made["metadata"]["uid"]

        async def running() -> bool:
            return (await api.get(PODS, "bye", "default"))["status"].get("phase") == "Running"

        await eventually(running, 15, "the pod to run")
        deleting = await api.delete(PODS, "bye", "default")
        assert deleting["metadata"]["deletionTimestamp"]  # graceful: the kubelet finishes it

        async def gone() -> bool:
            try:
                await api.get(PODS, "bye", "default")
            except ApiError as e:
                return e.not_found
            return False

        await eventually(gone, 10, "the kubelet to finish the deletion")
        assert not [s for s in await runtime.list_pod_sandboxes() if s.labels.get(LABEL_POD_UID) == uid]
        assert not (tmp_path / "del-a" / "pods" / uid).exists()
        reasons = {e["reason"] for e in await events_for(api, "bye")}
        assert "Killing" in reasons


async def test_kubelet_restart_adopts_running_pods(server: K3pServer, api: Client, tmp_path: Path) -> None:
    runtimes = {"adopt-a": SimulatedRuntime("adopt-a")}
    runtime = runtimes["adopt-a"]
    async with Nodes(server, tmp_path, ["adopt-a"], runtimes=runtimes):
        await api.create(PODS, pod("stays", "adopt-a", ["sleep", "3600"]))
        doomed = await api.create(PODS, pod("doomed", "adopt-a", ["sleep", "3600"]))

        async def both_running() -> bool:
            phases = [(await api.get(PODS, n, "default"))["status"].get("phase") for n in ("stays", "doomed")]
            return phases == ["Running", "Running"]

        await eventually(both_running, 15, "both pods to run")
        before = (await api.get(PODS, "stays", "default"))["status"]["containerStatuses"][0]
    # the kubelet is down: a pod is force-deleted meanwhile
    await api.delete(PODS, "doomed", "default", grace_period_seconds=0)
    doomed_uid = doomed["metadata"]["uid"]
    assert [s for s in await runtime.list_pod_sandboxes() if s.labels.get(LABEL_POD_UID) == doomed_uid]
    async with Nodes(server, tmp_path, ["adopt-a"], runtimes=runtimes):
        async def torn_down() -> bool:
            sandboxes = await runtime.list_pod_sandboxes()
            return not [s for s in sandboxes if s.labels.get(LABEL_POD_UID) == doomed_uid]

        await eventually(torn_down, 10, "the deleted pod to be torn down")
        await asyncio.sleep(0.5)  # a few relists: nothing else may happen
        after = (await api.get(PODS, "stays", "default"))["status"]["containerStatuses"][0]
        assert after["containerID"] == before["containerID"]
        assert after["restartCount"] == 0 and after["state"] == before["state"] and after["ready"]
        assert runtime.snapshot()["containers"] == {"running": 1}


class NoRegistryRuntime(SimulatedRuntime):
    """Images under registry.invalid/ are absent and cannot be pulled."""

    async def image_present(self, image: str) -> bool:
        return not image.startswith("registry.invalid/")

    async def pull_image(self, image: str) -> str:
        if image.startswith("registry.invalid/"):
            raise RuntimeError_(f'failed to pull and unpack image "{image}": no registry is reachable')
        return await super().pull_image(image)


async def test_image_pull_failures(server: K3pServer, api: Client, tmp_path: Path) -> None:
    runtimes = {"img-a": NoRegistryRuntime("img-a")}
    async with Nodes(server, tmp_path, ["img-a"], runtimes=runtimes, backoff_initial=2.0):
        made = await api.create(PODS, pod("nopull", "img-a", ["sleep", "3600"],
                                          container={"image": "registry.invalid/app:1"}))
        await api.create(PODS, pod("never", "img-a", ["sleep", "3600"],
                                   container={"image": "registry.invalid/app:2", "imagePullPolicy": "Never"}))
        seen: list[str] = []

        async def watch_reasons() -> None:
            # a watch sees every status written (ErrImagePull may last only until the next sync)
            async for _type, obj in api.watch(PODS, "default", field_selector="metadata.name=nopull",
                                              resource_version=made["metadata"]["resourceVersion"]):
                for cs in (obj.get("status") or {}).get("containerStatuses") or []:
                    seen.append(cs["state"].get("waiting", {}).get("reason", ""))
                if {"ErrImagePull", "ImagePullBackOff"} <= set(seen):
                    return

        await asyncio.wait_for(watch_reasons(), 10)
        assert seen.index("ErrImagePull") < seen.index("ImagePullBackOff")
        p = await api.get(PODS, "nopull", "default")
        assert p["status"]["phase"] == "Pending"

        async def never() -> dict | None:
            cs = (await api.get(PODS, "never", "default"))["status"]["containerStatuses"][0]
            waiting = cs["state"].get("waiting", {})
            return waiting if waiting.get("reason") == "ErrImageNeverPull" else None

        waiting = await eventually(never, 10, "ErrImageNeverPull")
        assert waiting["message"] == 'Container image "registry.invalid/app:2" is not present with pull policy of Never'
        reasons = {(e["reason"], e["type"]) for e in await events_for(api, "nopull")}
        assert ("Failed", "Warning") in reasons and ("Pulling", "Normal") in reasons


async def test_image_change_recreates_the_container(server: K3pServer, api: Client, tmp_path: Path) -> None:
    async with Nodes(server, tmp_path, ["upd-a"]):
        await api.create(PODS, pod("upd", "upd-a", ["sleep", "3600"]))

        async def running_with(image: str) -> dict | None:
            cs = (await api.get(PODS, "upd", "default"))["status"]["containerStatuses"][0]
            return cs if "running" in cs["state"] and cs["image"] == image else None

        before = await eventually(lambda: running_with("busybox:1.35"), 15, "the first container")
        await api.patch(PODS, "upd", {"spec": {"containers": [{"name": "c", "image": "busybox:1.36"}]}}, "default",
                        patch_type="strategic")
        after = await eventually(lambda: running_with("busybox:1.36"), 15, "a container of the new image")
        assert after["containerID"] != before["containerID"] and after["restartCount"] == 1
        reasons = [(e["reason"], e["message"]) for e in await events_for(api, "upd")]
        assert ("Killing", "Container c definition changed, will be restarted") in reasons


class WorkloadRuntime(SimulatedRuntime):
    """A simulated runtime that claims to run real workloads: the kubelet prepares files as for containerd."""

    runs_workloads = True


async def test_files_prepared_for_real_workloads(server: K3pServer, api: Client, tmp_path: Path) -> None:
    runtime = WorkloadRuntime("files-a")
    host_dir = tmp_path / "host" / "data"
    async with Nodes(server, tmp_path, ["files-a"], runtimes={"files-a": runtime}):
        volumes = [{"name": "host", "hostPath": {"path": str(host_dir), "type": "DirectoryOrCreate"}}]
        mounts = {"volumeMounts": [{"name": "host", "mountPath": "/data"}],
                  "terminationMessagePath": "/dev/termination-log"}
        made = await api.create(PODS, pod("files", "files-a", ["sleep", "3600"], volumes=volumes, container=mounts,
                                          hostAliases=[{"ip": "10.1.2.3", "hostnames": ["db.local"]}]))
        uid = made["metadata"]["uid"]

        async def running() -> dict | None:
            p = await api.get(PODS, "files", "default")
            return p if p["status"].get("phase") == "Running" else None

        p = await eventually(running, 15, "the pod to run")
        hosts = (tmp_path / "files-a" / "pods" / uid / "etc-hosts").read_text()
        assert f"{p['status']['podIP']}\tfiles" in hosts and "10.1.2.3\tdb.local" in hosts
        assert host_dir.is_dir()
        log_dir = tmp_path / "files-a" / "logs" / "pods" / f"default_files_{uid}"
        assert (log_dir / "c").is_dir()
        (container,) = await runtime.list_containers()
        config = runtime._containers[container.id].config
        targets = {m.container_path: m.host_path for m in config.mounts}
        assert targets["/data"] == str(host_dir)
        assert targets["/etc/hosts"].endswith(f"{uid}/etc-hosts")
        assert targets["/dev/termination-log"].endswith(f"{uid}/containers/c/0")
        assert config.log_path == "c/0.log"
        await api.delete(PODS, "files", "default")

        async def cleaned() -> bool:
            return not log_dir.exists() and not (tmp_path / "files-a" / "pods" / uid).exists()

        await eventually(cleaned, 10, "the pod's files to be removed")
