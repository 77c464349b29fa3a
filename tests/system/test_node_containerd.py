"""The real node end to end: `k3p server` running its own containerd node.

One server for the module. The busybox image is built on the spot and put into the node's
airgap images folder before start. Covered: pods outlive a kill -9 of k3p and are adopted
by the restarted kubelet; configMap and secret volumes and env (and their refresh); memory
limits in the container's cgroup; graceful deletion leaves no sandbox nor network namespace.

The node and its teardown are ``containerd_host.HostNode``: it deletes the pods, stops
the server (which kills the shims it finds, unmounts what containerd mounted under the
data dir and removes the links and tables the node made), then removes the pods' network
namespaces, CNI cache entries and the temp dir.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from containerd_host import IMAGE, REAL_NODE, HostNode

PAGE = b"<h1>k3p node</h1>\n"
MiB = 1024 * 1024


pytestmark = REAL_NODE




def _verbose_info(inspected: str) -> dict:
    """containerd's verbose status of `crictl inspect`/`inspectp` (pid, runtimeSpec, ...)."""
    info = json.loads(inspected)["info"]
    return info.get("info", info)


def _eventually(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.5) -> Any:
    """The first truthy result of ``check`` within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = check()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s (last: {last!r})")
        time.sleep(interval)


class Node(HostNode):
    """A `k3p server` with its own containerd node, and everything needed to undo it."""

    def __init__(self) -> None:
        # nothing here needs ports 80/443 of the host
        super().__init__("k3pn-", ["--disable", "traefik"], PAGE)

    def pod(self, name: str) -> dict:
        return self.get("pod", name)

    def exec(self, pod: str, *command: str) -> str:
        got = self.kubectl("exec", pod, "--", *command)
        assert got.returncode == 0, got.stderr
        return got.stdout

    def crictl(self, *args: str) -> subprocess.CompletedProcess:
        env = {**os.environ, "K3P_DATA_DIR": str(self.data)}
        return subprocess.run([sys.executable, "-m", "k3p", "crictl", *args], capture_output=True, text=True,
                              env=env, timeout=60)

    def container_pid(self, container_id: str) -> int:
        got = self.crictl("inspect", container_id.split("://")[-1])
        assert got.returncode == 0, got.stderr
        return int(_verbose_info(got.stdout)["pid"])


@pytest.fixture(scope="module")
def node():
    with Node() as n:
        yield n


def _ready(pod: dict) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod.get("status", {}).get("conditions", []))


def _http_get(ip: str, port: int = 8080) -> bytes:
    with urllib.request.urlopen(f"http://{ip}:{port}/index.html", timeout=5) as r:
        return r.read()


def test_pod_survives_kill_9_and_is_adopted_after_restart(node: Node) -> None:
    before = node.run_pod("survivor", ["httpd", "-f", "-p", "8080", "-h", "/www"],
                          ports=[{"containerPort": 8080}],
                          readinessProbe={"httpGet": {"path": "/index.html", "port": 8080}, "periodSeconds": 1})
    ip = before["status"]["podIP"]
    container_id = before["status"]["containerStatuses"][0]["containerID"]
    assert _http_get(ip) == PAGE

    proc = node.server.proc
    assert proc is not None
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    # containerd dies with k3p; the shim and the workload do not
    _eventually(lambda: not node.paths.socket.exists() or subprocess.run(
        ["pgrep", "-f", f"containerd --config {node.paths.config_file}"], capture_output=True).returncode != 0,
        10, "containerd gone")
    assert _http_get(ip) == PAGE

    node.server.start(timeout=120)

    def adopted() -> dict | None:
        pod = node.pod("survivor")
        statuses = pod["status"].get("containerStatuses") or [{}]
        return pod if _ready(pod) and statuses[0].get("ready") else None

    after = _eventually(adopted, 15, "survivor Ready after the restart")
    status = after["status"]["containerStatuses"][0]
    assert (status["restartCount"], status["containerID"]) == (0, container_id)
    assert after["status"]["podIP"] == ip
    assert _http_get(ip) == PAGE
    # the new kubelet knows the container: exec goes through it
    assert node.exec("survivor", "cat", "/www/index.html") == PAGE.decode()


def test_configmap_and_secret_volumes_and_env(node: Node) -> None:
    def secret(value: str) -> dict:
        return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds"},
                "data": {"password": base64.b64encode(value.encode()).decode()}}

    node.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"},
                "data": {"key": "first", "val": "from-env"}})
    node.apply(secret("s3cret"))
    node.run_pod("reader", ["sleep", "3600"],
                 spec={"volumes": [{"name": "cfg", "configMap": {"name": "settings"}},
                                   {"name": "sec", "secret": {"secretName": "creds"}}]},
                 volumeMounts=[{"name": "cfg", "mountPath": "/cfg"}, {"name": "sec", "mountPath": "/sec"}],
                 env=[{"name": "VAL", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "val"}}}])
    assert node.exec("reader", "cat", "/cfg/key") == "first"
    assert node.exec("reader", "sh", "-c", "echo $VAL") == "from-env\n"
    assert node.exec("reader", "cat", "/sec/password") == "s3cret"

    node.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"},
                "data": {"key": "second", "val": "changed"}})
    node.apply(secret("rotated"))
    # the kubelet refreshes volumes every resync period (60 s, as kube's sync frequency)
    _eventually(lambda: node.exec("reader", "cat", "/cfg/key") == "second", 90, "configMap volume refreshed", 2)
    _eventually(lambda: node.exec("reader", "cat", "/sec/password") == "rotated", 30, "secret volume refreshed", 2)
    # environment variables are fixed when the container starts
    assert node.exec("reader", "sh", "-c", "echo $VAL") == "from-env\n"


def test_memory_limit_in_the_container_cgroup(node: Node) -> None:
    pod = node.run_pod("limited", ["sleep", "3600"], resources={"limits": {"memory": "64Mi"}})
    pid = node.container_pid(pod["status"]["containerStatuses"][0]["containerID"])
    paths = dict(line.split(":", 2)[1:] for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines())
    memory = next(path for controllers, path in paths.items() if "memory" in controllers.split(","))
    limit = Path("/sys/fs/cgroup/memory", memory.lstrip("/"), "memory.limit_in_bytes").read_text()
    assert int(limit) == 64 * MiB


def test_deleted_pod_leaves_no_sandbox_nor_netns(node: Node) -> None:
    node.run_pod("doomed", ["sleep", "3600"], spec={"terminationGracePeriodSeconds": 3})
    listed = node.crictl("pods", "--name", "doomed")
    assert listed.returncode == 0, listed.stderr
    line = next(row for row in listed.stdout.splitlines()[1:] if " doomed " in row)
    sandbox_id = line.split()[0]
    inspected = node.crictl("inspectp", sandbox_id)
    assert inspected.returncode == 0, inspected.stderr
    namespaces = _verbose_info(inspected.stdout)["runtimeSpec"]["linux"]["namespaces"]
    netns = next(ns["path"] for ns in namespaces if ns["type"] == "network")
    assert netns.startswith("/var/run/netns/cni-") and Path(netns).exists()

    started = time.monotonic()
    got = node.kubectl("delete", "pod", "doomed", "--wait=true", "--timeout=30s", timeout=40)
    assert got.returncode == 0, got.stderr
    # `sleep` ignores SIGTERM as PID 1: the kubelet must SIGKILL it when the grace period ends
    assert time.monotonic() - started < 3 + 5

    def gone() -> bool:
        out = node.crictl("pods").stdout
        return "doomed" not in out and sandbox_id not in out

    _eventually(gone, 10, "the sandbox removed")
    assert not Path(netns).exists()


def test_crash_loop_liveness_restart_and_init_order(node: Node) -> None:
    """Done-when 2 of the agent issue, on real containers: back-off, liveness, init containers."""
    node.apply({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "crasher"},
                "spec": {"terminationGracePeriodSeconds": 1, "containers": [
                    {"name": "c", "image": IMAGE, "imagePullPolicy": "IfNotPresent",
                     "command": ["sh", "-c", "exit 1"]}]}})

    def crash_looping() -> dict | None:
        status = (node.pod("crasher").get("status") or {}).get("containerStatuses") or [{}]
        waiting = (status[0].get("state") or {}).get("waiting") or {}
        return status[0] if waiting.get("reason") == "CrashLoopBackOff" and status[0].get("restartCount", 0) >= 2 \
            else None

    looping = _eventually(crash_looping, 90, "CrashLoopBackOff with restarts")
    assert looping["lastState"]["terminated"]["exitCode"] == 1
    assert "back-off" in looping["state"]["waiting"].get("message", "")

    marker = "/tmp/alive"
    pod = node.run_pod("liveness", ["sh", "-c", f"touch {marker}; sleep 3600"],
                       livenessProbe={"exec": {"command": ["cat", marker]}, "periodSeconds": 1,
                                      "failureThreshold": 1})
    first = pod["status"]["containerStatuses"][0]["containerID"]
    node.exec("liveness", "rm", marker)

    def restarted() -> bool:
        status = node.pod("liveness")["status"]["containerStatuses"][0]
        return status.get("restartCount", 0) >= 1 and status.get("containerID") != first

    _eventually(restarted, 60, "the container restarted by its liveness probe")

    node.apply({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "inits"},
                "spec": {"terminationGracePeriodSeconds": 1,
                         "volumes": [{"name": "shared", "emptyDir": {}}],
                         "initContainers": [
                             {"name": f"init{i}", "image": IMAGE, "imagePullPolicy": "IfNotPresent",
                              "command": ["sh", "-c", f"echo init{i} >> /shared/order"],
                              "volumeMounts": [{"name": "shared", "mountPath": "/shared"}]} for i in (1, 2)],
                         "containers": [{"name": "main", "image": IMAGE, "imagePullPolicy": "IfNotPresent",
                                         "command": ["sh", "-c", "echo main >> /shared/order; sleep 3600"],
                                         "volumeMounts": [{"name": "shared", "mountPath": "/shared"}]}]}})
    got = node.kubectl("wait", "--for=condition=Ready", "pod/inits", "--timeout=90s", timeout=100)
    assert got.returncode == 0, got.stderr
    assert node.exec("inits", "cat", "/shared/order").split() == ["init1", "init2", "main"]
