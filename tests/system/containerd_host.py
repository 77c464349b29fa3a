"""What the containerd system tests need from this host, shared by their modules."""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
from pathlib import Path

import pytest

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
