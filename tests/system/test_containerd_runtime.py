"""The containerd plugin against a real containerd: pods get an IP, serve HTTP, run execs,
write logs, survive a containerd restart and leave nothing behind when removed.

Each run gets its own data dir, CNI network name, bridge and pod subnet, and the teardown
removes everything the run made (processes by PID, mounts, network namespaces, the bridge,
CNI state and NAT rules), then restores net.ipv4.ip_forward.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import io
import ipaddress
import json
import os
import random
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
import pytest_asyncio
from containerd_host import remove_new_dirs

import k3p_plugins.containerd.ocibuild as ocibuild
from k3p.config import Config
from k3p.context import PluginContext
from k3p.protocols.runtime import (
    LABEL_CONTAINER_NAME,
    LABEL_POD_NAME,
    LABEL_POD_NAMESPACE,
    LABEL_POD_UID,
    ContainerConfig,
    ContainerState,
    RuntimeError_,
    SandboxConfig,
    SandboxState,
)
from k3p.supervisor import Supervisor
from k3p_plugins import containerd as plugin
from k3p_plugins.containerd.cli import crictl_main, ctr_main
from k3p_plugins.containerd.paths import ContainerdPaths
from k3p_plugins.containerd.runtime import ContainerdRuntime
from k3p_plugins.flannel.cni import CONFLIST_NAME, cni_conflist

BUSYBOX = "/bin/busybox"
TEST_IMAGE = "k3p.test/busybox:1"
GZ_IMAGE = "k3p.test/compressed:1"
PAGE = b"hello from a k3p pod\n"


def _missing() -> str:
    if os.geteuid() != 0:
        return "needs root"
    for binary in ("containerd", "containerd-shim-runc-v2", "runc", "ctr", "ip", "iptables"):
        if not shutil.which(binary):
            return f"{binary} is not installed"
    if not Path(BUSYBOX).exists():
        return "busybox-static is not installed"
    from k3p_plugins.containerd.config import find_cni_bin_dir

    if not Path(find_cni_bin_dir(), "bridge").exists():
        return "the CNI plugins are not installed"
    return ""


pytestmark = [
    pytest.mark.slow,
    pytest.mark.root,
    pytest.mark.skipif(bool(_missing()), reason=_missing() or "ok"),
    pytest.mark.asyncio(loop_scope="module"),
]


def _free_subnet() -> str:
    """A /24 in 10.200.0.0/13 that no route of this host touches."""
    routes = json.loads(subprocess.run(["ip", "-j", "route", "show", "table", "all"], capture_output=True,
                                       text=True).stdout or "[]")
    taken = []
    for r in routes:
        with contextlib.suppress(ValueError):
            if r.get("dst") and r["dst"] != "default":
                taken.append(ipaddress.ip_network(r["dst"], strict=False))
    candidates = list(ipaddress.ip_network("10.200.0.0/13").subnets(new_prefix=24))
    random.shuffle(candidates)
    for net in candidates:
        if not any(net.overlaps(t) for t in taken if t.version == 4):
            return str(net)
    raise RuntimeError("no free /24 for the test pods")


class Node:
    """One test node: data dir, containerd under a supervisor, and a runtime client."""

    def __init__(self) -> None:
        tag = f"{random.getrandbits(24):06x}"
        self.tmp = Path(tempfile.mkdtemp(prefix="k3pc-", dir="/tmp"))
        self.network = f"k3pt-{tag}"
        self.bridge = f"k3pt{tag}"
        self.subnet = _free_subnet()
        self.paths = ContainerdPaths.from_data_dir(self.tmp)
        self.ip_forward = Path("/proc/sys/net/ipv4/ip_forward").read_text().strip()
        self.netns: set[str] = set()
        self.sandboxes: set[str] = set()
        self.supervisor: Supervisor | None = None
        self.stop: asyncio.Event | None = None
        self.task: asyncio.Task | None = None
        self.runtime: ContainerdRuntime | None = None
        self.containerd_pids: list[int] = []
        # host folders containerd and CNI create on first use; removed again if empty and new
        self.host_dirs = [d for d in (Path("/run/containerd"), Path("/var/lib/cni"), Path("/run/netns"))
                          if not d.exists()]

    def config(self) -> Config:
        return Config(command="agent", values={"data_dir": str(self.tmp), "pause_image": plugin.DEFAULT_PAUSE_IMAGE,
                                               "snapshotter": "overlayfs", "container_runtime_endpoint": "",
                                               "simulate": 0})

    async def start_containerd(self) -> None:
        ctx = PluginContext(config=self.config(), data_dir=self.tmp)
        components = plugin.k3p_agent_components(ctx)
        assert [c.name for c in components] == ["containerd"]
        self.supervisor = Supervisor(components)
        self.stop = asyncio.Event()
        self.task = asyncio.create_task(self.supervisor.run(self.stop))
        await asyncio.wait_for(self.supervisor.wait_ready("containerd"), 30)
        self.containerd_pids.append(components[0].pid)

    async def stop_containerd(self) -> None:
        if self.task is None:
            return
        assert self.stop is not None
        self.stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.task, 30)
        self.task = None

    async def new_runtime(self) -> ContainerdRuntime:
        """A started runtime client, as the kubelet gets it (pod CIDR known before start)."""
        # what the pod network plugin writes on a node, on this run's own bridge and subnet
        conf = cni_conflist(self.subnet, mtu=1500, ipam_data_dir=self.tmp / "ipam", bridge=self.bridge,
                            network_name=self.network)
        self.paths.cni_conf_dir.mkdir(parents=True, exist_ok=True)
        (self.paths.cni_conf_dir / CONFLIST_NAME).write_text(json.dumps(conf))
        rt = ContainerdRuntime(self.paths.socket, self.paths, start_timeout=30)
        self.runtime = rt
        await rt.start()
        await rt.update_runtime_config(self.subnet)  # once connected, containerd is told as well
        return rt

    async def track(self, sandbox_id: str) -> None:
        """Remember a sandbox and its network namespace, so the teardown can remove both."""
        from cri_api.v1 import api_pb2 as api

        self.sandboxes.add(sandbox_id)
        assert self.runtime is not None
        resp = await self.runtime.rt.PodSandboxStatus(api.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id,
                                                                                  verbose=True))
        spec = json.loads(resp.info["info"])["runtimeSpec"]
        for ns in spec["linux"]["namespaces"]:
            if ns["type"] == "network" and ns.get("path"):
                self.netns.add(ns["path"])

    # --- teardown -------------------------------------------------------------------------

    async def remove_pods(self) -> None:
        if self.runtime is None or self.task is None:
            return
        with contextlib.suppress(Exception):
            for s in await self.runtime.list_pod_sandboxes():
                self.sandboxes.add(s.id)
                with contextlib.suppress(Exception):
                    await self.track(s.id)
        for sid in self.sandboxes:
            with contextlib.suppress(Exception):
                await self.runtime.stop_pod_sandbox(sid)
                await self.runtime.remove_pod_sandbox(sid)
        with contextlib.suppress(Exception):
            await self.runtime.close()

    def _shim_pids(self) -> list[int]:
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if argv and argv[0].endswith(b"containerd-shim-runc-v2") and str(self.paths.socket).encode() in argv:
                pids.append(int(entry.name))
        return pids

    def cleanup(self) -> None:
        """Remove what CRI did not: processes, mounts, netns, the bridge, CNI state, NAT rules."""
        for pid in self.containerd_pids:
            # only while that PID is still our containerd (PIDs are reused)
            with contextlib.suppress(OSError):
                if str(self.paths.config_file).encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                    os.kill(pid, signal.SIGKILL)
        runc_root = self.paths.runc_root / "k8s.io"
        if runc_root.is_dir():
            for cid in os.listdir(runc_root):
                subprocess.run(["runc", "--root", str(runc_root), "delete", "--force", cid], capture_output=True)
        for pid in self._shim_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for sid in self.sandboxes:
            # a killed shim leaves its socket, named after containerd's socket, namespace and sandbox
            name = hashlib.sha256(os.path.join(str(self.paths.socket), "k8s.io", sid).encode()).hexdigest()
            Path("/run/containerd/s", name).unlink(missing_ok=True)
        mounts = []
        with open("/proc/self/mountinfo") as f:
            for line in f:
                point = line.split()[4]
                if point.startswith(str(self.tmp) + "/"):
                    mounts.append(point)
        for point in sorted(mounts, key=len, reverse=True):
            subprocess.run(["umount", "-R", "-l", point], capture_output=True)
        for path in self.netns:
            if Path(path).exists():
                subprocess.run(["ip", "netns", "delete", Path(path).name], capture_output=True)
        if Path(f"/sys/class/net/{self.bridge}").exists():
            subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)
        results = Path("/var/lib/cni/results")
        if results.is_dir():
            for f in results.iterdir():
                if f.name.startswith(self.network + "-") or any(s in f.name for s in self.sandboxes):
                    f.unlink(missing_ok=True)
        shutil.rmtree(Path("/var/lib/cni/networks") / self.network, ignore_errors=True)
        Path("/proc/sys/net/ipv4/ip_forward").write_text(self.ip_forward)
        remove_new_dirs(self.host_dirs)
        shutil.rmtree(self.tmp, ignore_errors=True)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def node():
    n = Node()
    try:
        ocibuild.build_busybox_image(n.paths.images_dir / "busybox-test.tar", TEST_IMAGE,
                                     files={"/www/index.html": PAGE}, busybox=BUSYBOX)
        gz = ocibuild.build_busybox_image(n.tmp / "other.tar", GZ_IMAGE, busybox=BUSYBOX).path
        with gz.open("rb") as src, gzip.open(n.paths.images_dir / "other.tar.gz", "wb") as out:
            shutil.copyfileobj(src, out)
        await n.start_containerd()
        await n.new_runtime()
        yield n
    finally:
        try:
            await n.remove_pods()
            await n.stop_containerd()
        finally:
            n.cleanup()
    assert not n._shim_pids(), "a shim of the test's containerd is still running"


def pod(name: str, uid: str) -> SandboxConfig:
    return SandboxConfig(
        name=name, namespace="default", uid=uid, hostname=name,
        labels={LABEL_POD_NAME: name, LABEL_POD_NAMESPACE: "default", LABEL_POD_UID: uid},
    )


def container(name: str, uid: str, command: list[str]) -> ContainerConfig:
    return ContainerConfig(name=name, image=TEST_IMAGE, command=command,
                           labels={LABEL_CONTAINER_NAME: name, LABEL_POD_UID: uid})


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def web(node: Node):
    """A pod running busybox httpd on port 8080."""
    rt = node.runtime
    assert rt is not None
    sandbox = pod("web", "uid-web")
    started = time.monotonic()
    sid = await rt.run_pod_sandbox(sandbox)
    sandbox_seconds = time.monotonic() - started
    await node.track(sid)
    cid = await rt.create_container(sid, container("httpd", "uid-web", ["httpd", "-f", "-p", "8080", "-h", "/www"]),
                                    sandbox)
    await rt.start_container(cid)
    status = await rt.pod_sandbox_status(sid)
    return {"sandbox": sandbox, "sid": sid, "cid": cid, "ip": status.ip, "sandbox_seconds": sandbox_seconds}


def http_get(url: str, timeout: float = 5.0) -> bytes:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                return resp.read()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


async def test_start_imports_airgap_images_and_builds_the_pause_image(node: Node):
    rt = node.runtime
    assert rt is not None
    tags = {t for image in await rt.list_images() for t in image.tags}
    assert {TEST_IMAGE, GZ_IMAGE, plugin.DEFAULT_PAUSE_IMAGE} <= tags
    assert await rt.sandbox_image() == plugin.DEFAULT_PAUSE_IMAGE
    # a second start does not import the unchanged archives again
    assert await rt.import_airgap_images() == {
        str(node.paths.images_dir / "busybox-test.tar"): "skipped",
        str(node.paths.images_dir / "other.tar.gz"): "skipped",
    }
    assert sorted(os.listdir(node.paths.images_dir)) == ["busybox-test.tar", "other.tar.gz"]
    assert (await rt.version()).startswith("1.")


async def test_pod_gets_an_ip_and_serves_http(node: Node, web: dict):
    assert ipaddress.ip_address(web["ip"]) in ipaddress.ip_network(node.subnet)
    assert web["sandbox_seconds"] < 5
    body = await asyncio.to_thread(http_get, f"http://{web['ip']}:8080/index.html")
    assert body == PAGE
    status = await node.runtime.container_status(web["cid"])
    assert status.state == ContainerState.RUNNING
    assert status.sandbox_id == web["sid"]
    assert status.labels[LABEL_CONTAINER_NAME] == "httpd"
    assert status.started_at > 0


async def test_lists_give_back_labels(node: Node, web: dict):
    rt = node.runtime
    sandboxes = {s.id: s for s in await rt.list_pod_sandboxes()}
    assert sandboxes[web["sid"]].state == SandboxState.READY
    assert sandboxes[web["sid"]].labels[LABEL_POD_UID] == "uid-web"
    assert sandboxes[web["sid"]].ip == web["ip"]
    containers = await rt.list_containers(web["sid"])
    assert [c.id for c in containers] == [web["cid"]]
    assert containers[0].labels[LABEL_POD_UID] == "uid-web"


async def test_exec_sync_returns_exit_code_and_output(node: Node, web: dict):
    rt = node.runtime
    result = await rt.exec_sync(web["cid"], ["sh", "-c", "exit 3"], timeout=10)
    assert result.exit_code == 3
    result = await rt.exec_sync(web["cid"], ["sh", "-c", "echo out; echo err >&2; cat /sys/class/net/lo/operstate"],
                                timeout=10)
    assert result.exit_code == 0
    assert result.stdout.startswith(b"out\n")
    assert result.stderr == b"err\n"
    with pytest.raises(RuntimeError_):
        await rt.exec_sync(web["cid"], ["sleep", "10"], timeout=1)


async def test_host_network_pod(node: Node):
    rt = node.runtime
    sandbox = SandboxConfig(name="hostnet", namespace="kube-system", uid="uid-hostnet", hostname="ignored",
                            host_network=True, labels={LABEL_POD_UID: "uid-hostnet"})
    sid = await rt.run_pod_sandbox(sandbox)
    await node.track(sid)
    cid = await rt.create_container(sid, container("sleep", "uid-hostnet", ["sleep", "60"]), sandbox)
    await rt.start_container(cid)
    result = await rt.exec_sync(cid, ["cat", "/proc/sys/kernel/hostname"], timeout=10)
    assert result.stdout.decode().strip() == Path("/proc/sys/kernel/hostname").read_text().strip()
    result = await rt.exec_sync(cid, ["ls", "/sys/class/net"], timeout=10)
    assert "eth0" in result.stdout.decode().split() or len(result.stdout.split()) > 2  # the node's interfaces
    await rt.stop_pod_sandbox(sid)
    await rt.remove_pod_sandbox(sid)
    assert all(s.id != sid for s in await rt.list_pod_sandboxes())


async def test_streaming_urls_point_at_the_local_streaming_server(node: Node, web: dict):
    rt = node.runtime
    for url in (await rt.exec_url(web["cid"], ["sh"], tty=False, stdin=True, stdout=True, stderr=True),
                await rt.attach_url(web["cid"], tty=False, stdin=False, stdout=True, stderr=True),
                await rt.port_forward_url(web["sid"], [8080])):
        assert url.startswith("http://127.0.0.1:")


async def test_logs_follow_until_the_container_exits(node: Node, web: dict):
    rt = node.runtime
    cid = await rt.create_container(
        web["sid"], container("talk", "uid-web", ["sh", "-c", "echo hello; echo oops >&2; sleep 0.5; echo bye"]),
        web["sandbox"])
    await rt.start_container(cid)
    status = await rt.container_status(cid)
    assert status.log_path.startswith(str(node.paths.pod_logs_dir / "default_web_uid-web"))
    lines = [line async for line in rt.read_log(status, follow=True)]
    texts = [(line.split(b" ", 3)[1], line.split(b" ", 3)[3]) for line in lines]
    # the two streams are separate pipes: only the order within each is certain
    assert [t for s, t in texts if s == b"stdout"] == [b"hello", b"bye"]
    assert [t for s, t in texts if s == b"stderr"] == [b"oops"]
    assert all(line.split(b" ", 3)[2] == b"F" for line in lines)
    final = await rt.container_status(cid)
    assert final.state == ContainerState.EXITED
    assert final.exit_code == 0
    assert [line async for line in rt.read_log(final)] == lines
    await rt.remove_container(cid)
    assert not Path(status.log_path).exists()
    with pytest.raises(RuntimeError_) as err:
        await rt.container_status(cid)
    assert err.value.not_found
    await rt.remove_container(cid)  # removing twice is fine


async def test_crictl_and_ctr(node: Node, web: dict, capfd):
    async def crictl(*argv: str) -> tuple[int, str]:
        out = io.StringIO()
        code = await asyncio.to_thread(crictl_main, list(argv), node.tmp, out=out)
        return code, out.getvalue()

    code, out = await crictl("pods")
    assert code == 0 and "web" in out and web["sid"][:13] in out
    code, out = await crictl("ps")
    assert code == 0 and "httpd" in out and web["cid"][:13] in out
    code, out = await crictl("images")
    assert code == 0 and "k3p.test/busybox" in out
    assert await crictl("exec", web["cid"][:12], "sh", "-c", "echo hi; exit 3") == (3, "hi\n")
    code, out = await crictl("inspect", web["cid"][:12])
    assert code == 0 and json.loads(out)["status"]["id"] == web["cid"]
    cid = await node.runtime.create_container(
        web["sid"], container("count", "uid-web", ["sh", "-c", "for i in 1 2 3 4; do echo $i; done"]), web["sandbox"])
    await node.runtime.start_container(cid)
    assert await crictl("logs", "-f", "--tail", "2", cid) == (0, "3\n4\n")
    await node.runtime.remove_container(cid)
    capfd.readouterr()
    assert await asyncio.to_thread(ctr_main, ["images", "ls", "-q"], node.tmp) == 0
    assert "k3p.test/busybox:1" in capfd.readouterr().out


async def test_containers_survive_a_containerd_restart(node: Node, web: dict):
    await node.runtime.close()
    await node.stop_containerd()
    assert not node.paths.socket.exists() or await _no_answer(node)
    # the pod keeps serving while containerd is down
    assert await asyncio.to_thread(http_get, f"http://{web['ip']}:8080/index.html") == PAGE
    await node.start_containerd()
    await node.new_runtime()
    containers = {c.id: c for c in await node.runtime.list_containers()}
    assert containers[web["cid"]].state == ContainerState.RUNNING
    assert containers[web["cid"]].labels[LABEL_POD_UID] == "uid-web"
    assert (await node.runtime.pod_sandbox_status(web["sid"])).ip == web["ip"]
    result = await node.runtime.exec_sync(web["cid"], ["sh", "-c", "exit 3"], timeout=10)
    assert result.exit_code == 3


async def _no_answer(node: Node) -> bool:
    from k3p_plugins.containerd.runtime import cri_version

    return await cri_version(node.paths.socket) is None


async def test_removing_the_sandbox_leaves_nothing(node: Node, web: dict):
    rt = node.runtime
    netns = {p for p in node.netns}
    assert any(Path(p).exists() for p in netns)
    ipam = node.tmp / "ipam" / node.network
    assert (ipam / web["ip"]).exists()
    await rt.stop_pod_sandbox(web["sid"])
    assert (await rt.pod_sandbox_status(web["sid"])).state == SandboxState.NOTREADY
    await rt.remove_pod_sandbox(web["sid"])
    assert not any(Path(p).exists() for p in netns)
    assert not (ipam / web["ip"]).exists()
    assert await rt.list_pod_sandboxes() == []
    assert await rt.list_containers() == []
    assert not (node.paths.pod_logs_dir / "default_web_uid-web").exists()
    await rt.stop_pod_sandbox(web["sid"])  # both are idempotent, as CRI wants
    await rt.remove_pod_sandbox(web["sid"])
    deadline = time.monotonic() + 10
    while node._shim_pids() and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert node._shim_pids() == []
