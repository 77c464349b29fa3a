"""The Kubernetes components are plugins like any other, and the core names none of them.

- scheduler, controller-manager and kube-proxy are listed as plugins; disabling the
  scheduler (by name or by K3s's alias) leaves pods Pending;
- the core imports no plugin and production code does not import the test harness;
- an agent follows the server's list of disabled plugins without a restart;
- a server bound to an address other than 127.0.0.1 still reaches its own API.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from k3p.testing import HollowNodes, K3pServer, free_port, wait_for

ROOT = Path(__file__).resolve().parents[2]
CORE = ROOT / "core" / "k3p"


def k3p(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run([sys.executable, "-m", "k3p", *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


def test_kubernetes_components_are_plugins() -> None:
    rows = {r["name"]: r for r in json.loads(k3p("plugins", "list", "-o", "json").stdout)}
    for name, dist in (("scheduler", "k3p-scheduler"), ("controller-manager", "k3p-controller-manager"),
                       ("kube-proxy", "k3p-kube-proxy")):
        assert rows[name]["distribution"] == dist and rows[name]["state"] == "enabled"
    aliased = {r["name"]: r for r in json.loads(k3p("plugins", "list", "-o", "json", "--disable-scheduler").stdout)}
    assert aliased["scheduler"]["state"] == "disabled"
    assert aliased["scheduler"]["reason"] == "disabled by flag --disable-scheduler"


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
    return found


def test_core_imports_no_plugin_and_no_test_harness() -> None:
    plugin_packages = {p.name for p in (ROOT / "plugins").glob("*/k3p_plugins/*") if p.is_dir()}
    assert {"scheduler", "controller_manager", "kube_proxy", "containerd"} <= plugin_packages
    offenders = []
    for path in CORE.rglob("*.py"):
        in_harness = path.is_relative_to(CORE / "testing")
        for module in _imports(path):
            if module.split(".")[0] == "k3p_plugins" or module.split(".")[0] in {f"k3p_{p}" for p in plugin_packages}:
                offenders.append(f"{path.relative_to(ROOT)} imports {module}")
            if module.startswith("k3p.testing") and not in_harness:
                offenders.append(f"{path.relative_to(ROOT)} imports {module}")
    assert offenders == []


def _pending_pod(server: K3pServer) -> None:
    server.kubectl("run", "waits", "--image=busybox", "--restart=Never", check=True)
    time.sleep(3)  # a scheduler, had it run, binds a pod in milliseconds (there is a node)
    pod = json.loads(server.kubectl("get", "pod", "waits", "-o", "json", check=True).stdout)
    assert pod["status"].get("phase") == "Pending" and not pod["spec"].get("nodeName")
    assert not [c for c in pod["status"].get("conditions") or () if c["type"] == "PodScheduled"]


@pytest.mark.parametrize("flags", [["--disable", "scheduler"], ["--disable-scheduler"]])
def test_disabled_scheduler_leaves_pods_pending(k3p_server_factory, tmp_path: Path, flags: list[str]) -> None:
    server = k3p_server_factory(args=flags)
    nodes = HollowNodes(server, tmp_path / "agent", 1)
    try:
        wait_for(lambda: "Ready" in server.kubectl("get", "nodes", "--no-headers").stdout, 60, 0.5, "a Ready node")
        _pending_pod(server)
        # the controllers still run: a Deployment gets its ReplicaSet and pods, which wait too
        server.kubectl("create", "deployment", "web", "--image=busybox", "--replicas=2", check=True)
        wait_for(lambda: len(server.kubectl("get", "pods", "-l", "app=web", "--no-headers").stdout.splitlines()) == 2,
                 60, 0.3, "the Deployment's pods")
    finally:
        nodes.stop()


def test_agent_follows_the_servers_disabled_plugins(tmp_path: Path, hello_plugin_env, monkeypatch) -> None:
    """The example plugin keeps a marker file while its node component runs on each node."""
    monkeypatch.setenv("PYTHONPATH", hello_plugin_env["PYTHONPATH"])
    port = free_port()
    server = K3pServer(tmp_path / "server", port=port, env=hello_plugin_env).start()
    nodes = HollowNodes(server, tmp_path / "agent", 1, "follow")
    hello = tmp_path / "agent" / "data" / "hello"
    try:
        wait_for(lambda: (hello / "node-follow-0").exists(), 60, 0.3, "the plugin's node component")
        server.stop()
        server = K3pServer(tmp_path / "server", args=["--disable", "hello"], port=port, env=hello_plugin_env).start()
        wait_for(lambda: not (hello / "node-follow-0").exists(), 60, 0.5, "the component stopped on the agent")
        assert (hello / "cleaned-follow-0").exists()  # its k3p_node_cleanup ran there
        server.stop()
        (hello / "cleaned-follow-0").unlink()
        server = K3pServer(tmp_path / "server", port=port, env=hello_plugin_env).start()
        wait_for(lambda: (hello / "node-follow-0").exists(), 60, 0.5, "the component started again")
        assert nodes.proc.poll() is None  # all without restarting the agent
    finally:
        nodes.stop()
        server.stop()


def test_components_reach_an_api_bound_to_another_address(tmp_path: Path) -> None:
    """With --bind-address the API listens only there; the server's own components must dial it too."""
    server = K3pServer(tmp_path, args=["--bind-address", "127.0.0.2"], host="127.0.0.2").start()
    try:
        # the controllers work: the service-account controller makes every namespace's default account
        server.kubectl("create", "namespace", "bound", check=True)
        wait_for(lambda: server.kubectl("get", "serviceaccount", "default", "-n", "bound").returncode == 0,
                 30, 0.3, "the default ServiceAccount")
        assert "All connection attempts failed" not in server.logs()
    finally:
        server.stop()
