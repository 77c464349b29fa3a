"""What the containerd system tests need from this host, shared by their modules."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

import k3p_plugins.containerd.ocibuild as ocibuild
from k3p.testing import K3pServer
from k3p.testing.process import pod_network_namespaces, remove_network_namespaces
from k3p_plugins.containerd.paths import ContainerdPaths

IMAGE = "docker.io/library/busybox:1.35"
BRIDGE = "cni0"


def missing_reason() -> str:
    """Why a real node cannot run here ("" when it can)."""
    if os.geteuid() != 0:
        return "needs root"
    for binary in ("containerd", "containerd-shim-runc-v2", "runc", "kubectl", "ip", "iptables"):
        if not shutil.which(binary):
            return f"{binary} is not installed"
    if not Path("/bin/busybox").exists():
        return "busybox-static is not installed"
    from k3p_plugins.containerd.config import find_cni_bin_dir

    if not Path(find_cni_bin_dir(), "bridge").exists():
        return "the CNI plugins are not installed"
    return ""


def bridge_network() -> str | None:
    """The subnet of an existing cni0: a second k3p node on this host must share it, not fight over it."""
    out = subprocess.run(["ip", "-4", "-o", "addr", "show", BRIDGE], capture_output=True, text=True).stdout.split()
    if "inet" not in out:
        return None
    return str(ipaddress.ip_interface(out[out.index("inet") + 1]).network)


#: the marks of a module that runs a real node: slow, root, skipped when the host cannot
REAL_NODE = [pytest.mark.slow, pytest.mark.root,
             pytest.mark.skipif(bool(missing_reason()), reason=missing_reason() or "ok")]


def remove_new_dirs(dirs: Sequence[Path]) -> None:
    """Remove host folders a run made (containerd's and CNI's fixed paths), if nothing else is in them."""
    for top in dirs:
        for folder in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            with contextlib.suppress(OSError):
                folder.rmdir()
        with contextlib.suppress(OSError):
            top.rmdir()


class HostNode:
    """A `k3p server` with its own containerd node in the host's namespace, and everything to undo it.

    ``prefix`` names its temp folder (short: containerd's socket path is limited); ``args``
    are extra server flags. The node imports a busybox image serving ``page`` at
    /www/index.html. ``cleanup()`` stops the server (which kills the node's containers,
    unmounts what they used and removes the links and tables the node made), removes the
    pods' network namespaces and CNI cache entries, and the folders first made by this run.
    """

    def __init__(self, prefix: str, args: Sequence[str] = (), page: bytes = b"<h1>k3p</h1>\n") -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
        self.data = self.tmp / "data"
        self.paths = ContainerdPaths.from_data_dir(self.data)
        self.page = page
        self.ip_forward = Path("/proc/sys/net/ipv4/ip_forward").read_text().strip()
        self.host_dirs = [d for d in (Path("/run/containerd"), Path("/var/lib/cni"), Path("/run/netns"))
                          if not d.exists()]
        shared = bridge_network()
        self.server = K3pServer(self.tmp, args=[*args, *(["--cluster-cidr", shared] if shared else [])],
                                agent=True)

    def start(self) -> None:
        self.paths.images_dir.mkdir(parents=True)
        ocibuild.build_busybox_image(self.paths.images_dir / "busybox.tar", IMAGE, files={"www/index.html": self.page})
        self.server.start(timeout=120)

    def kubectl(self, *args: str, input: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
        return self.server.kubectl(*args, input=input, timeout=timeout)

    def apply(self, obj: dict[str, Any]) -> None:
        got = self.kubectl("apply", "-f", "-", input=json.dumps(obj))
        assert got.returncode == 0, got.stderr

    def get(self, *what: str) -> dict[str, Any]:
        got = self.kubectl("get", *what, "-o", "json")
        assert got.returncode == 0, got.stderr
        return json.loads(got.stdout)

    def run_pod(self, name: str, command: list[str], spec: dict | None = None, **container: Any) -> dict:
        """Create the pod, wait until it is Ready and return it."""
        self.apply({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
                    "spec": {"terminationGracePeriodSeconds": 1, **(spec or {}), "containers": [
                        {"name": name, "image": IMAGE, "imagePullPolicy": "IfNotPresent", "command": command,
                         **container}]}})
        got = self.kubectl("wait", "--for=condition=Ready", f"pod/{name}", "--timeout=90s", timeout=100)
        assert got.returncode == 0, got.stderr + self.kubectl("describe", "pod", name).stdout
        return self.get("pod", name)

    def sandbox_ids(self) -> set[str]:
        """The sandbox ids of this node's container shims."""
        found = set()
        socket = str(self.paths.socket).encode()
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    argv = (entry / "cmdline").read_bytes().split(b"\0")
                    if argv[0].endswith(b"containerd-shim-runc-v2") and socket in argv and b"-id" in argv:
                        found.add(argv[argv.index(b"-id") + 1].decode())
        return found

    def cleanup(self) -> None:
        with contextlib.suppress(Exception):
            if self.server.proc is not None and self.server.proc.poll() is None:
                self.kubectl("delete", "pods", "--all", "--wait=true", "--timeout=60s", timeout=90)
        sandboxes = self.sandbox_ids()
        namespaces = pod_network_namespaces(str(self.data))
        self.server.stop()
        remove_network_namespaces(namespaces)
        # what CNI DEL would have removed for sandboxes the kubelet did not tear down
        results = Path("/var/lib/cni/results")
        for f in results.iterdir() if results.is_dir() else ():
            if any(sid in f.name for sid in sandboxes):
                with contextlib.suppress(OSError):
                    f.unlink()
        Path("/proc/sys/net/ipv4/ip_forward").write_text(self.ip_forward)
        remove_new_dirs(self.host_dirs)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> HostNode:
        try:
            self.start()
        except BaseException:
            self.cleanup()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()
