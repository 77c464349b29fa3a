"""Preflight checks: ``k3p check-config`` and the checks ``k3p server`` runs before it starts."""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from k3p.config import Config


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
    data_dir = Path(config.get("data_dir"))
    probe = data_dir if data_dir.exists() else next((p for p in data_dir.parents if p.exists()), Path("/"))
    if os.access(probe, os.W_OK):
        report.ok("data-dir", f"{data_dir} is writable")
    else:
        report.fail("data-dir", f"{data_dir} is not writable by this user")
    kubectl = shutil.which("kubectl")
    if kubectl:
        report.ok("kubectl", kubectl)
    else:
        report.warn("kubectl", "not found on PATH: 'k3p kubectl' will not work")
