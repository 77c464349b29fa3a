"""Shared fixtures of k3p's own suite (the reusable ones live in k3p.testing)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def hello_plugin_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The example third-party plugin pip-installed into a private folder; the env to see it.

    Installing into a folder on PYTHONPATH (rather than site-packages) keeps the test
    environment unchanged for every other test.
    """
    target = tmp_path_factory.mktemp("hello-plugin")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
         "--no-build-isolation", "--target", str(target), str(ROOT / "examples" / "k3p-hello")],
        check=True,
        cwd=tmp_path_factory.mktemp("pip-cwd"),
    )
    path = os.pathsep.join(p for p in (str(target), os.environ.get("PYTHONPATH", "")) if p)
    return {"PYTHONPATH": path}
