"""Preflight checks: ``k3p check-config`` and the checks ``k3p server`` runs before it starts."""

from __future__ import annotations

import errno
import os
import shutil
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path

from k3p.config import Config


class HostCheckFailed(Exception):
    """A preflight check failed (a taken port, a missing binary): printed as one line, exit code 1."""


@dataclass
class Finding:
    name: str
    level: str  # "ok", "warn" or "fail"
    detail: str = ""


@dataclass
class CheckReport:
    """Collects findings; plugins add theirs through the ``k3p_check_config`` hook."""

    findings: list[Finding] = field(default_factory=list)

    def ok(self, name: str, detail: str = "") -> None:
        self.findings.append(Finding(name, "ok", detail))

    def warn(self, name: str, detail: str) -> None:
        self.findings.append(Finding(name, "warn", detail))

    def fail(self, name: str, detail: str) -> None:
        self.findings.append(Finding(name, "fail", detail))

    @property
    def failed(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "fail"]

    def render(self) -> str:
        marks = {"ok": "pass", "warn": "warn", "fail": "FAIL"}
        width = max((len(f.name) for f in self.findings), default=0)
        return "\n".join(f"{marks[f.level]}  {f.name.ljust(width)}  {f.detail}".rstrip() for f in self.findings)


def core_checks(config: Config, report: CheckReport) -> None:
    """What k3p itself needs from the host."""
    report.ok("python", sys.version.split()[0])
    node = not (config.get("disable_agent") or config.get("simulate"))
    if node and os.geteuid() != 0:
        report.fail("root", "a node needs root (it runs containerd, the pod network and nftables rules): "
                            "run as root, or with --disable-agent for the control plane alone")
    data_dir = Path(config.get("data_dir"))
    probe = data_dir if data_dir.exists() else next((p for p in data_dir.parents if p.exists()), Path("/"))
    if os.access(probe, os.W_OK):
        report.ok("data-dir", f"{data_dir} is writable")
    else:
        report.fail("data-dir", f"{data_dir} is not writable by this user")
    check_port(report, config.get("https_listen_port"), "--https-listen-port", "API server",
               host=config.get("bind_address") or "0.0.0.0")
    if node:
        check_port(report, config.get("kubelet_port"), "--kubelet-port", "kubelet")
    kubectl = shutil.which("kubectl")
    if kubectl:
        report.ok("kubectl", kubectl)
    else:
        report.warn("kubectl", "not found on PATH: 'k3p kubectl' will not work")


def port_taken(port: int, host: str = "0.0.0.0", udp: bool = False) -> bool:
    """Whether binding ``host:port`` fails because something else holds it.

    ``SO_REUSEADDR`` as the real listeners set it: a port that only lingers in TIME_WAIT
    after a restart counts as free, a port another process listens on does not.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM if udp else socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            return e.errno == errno.EADDRINUSE
    return False


def check_port(report: CheckReport, port: int, flag: str, what: str, host: str = "0.0.0.0",
               udp: bool = False) -> None:
    """A failing finding when ``port`` is taken, naming the flag that moves (or avoids) it.

    ``flag`` is the whole hint, e.g. ``--kubelet-port`` or ``--flannel-backend host-gw``.
    Port 0 means "off" for the options that have it and is not checked.
    """
    if not port:
        return
    proto = "udp" if udp else "tcp"
    name = f"port {port}/{proto}"
    if port_taken(port, host, udp):
        hint = f"move it with {flag} PORT" if flag.endswith("-port") else f"avoid it with {flag}"
        report.fail(name, f"port {port} ({what}) is already in use on {host}: free it or {hint}")
    else:
        report.ok(name, f"{what} on {host}")
