"""``k3p plugins new NAME [DIR]`` writes a plugin skeleton that installs and passes its own tests.

The quick tests check the refusals and the files without installing anything. The slow
one pip-installs the skeleton into a private folder put on PYTHONPATH (as tests/conftest.py
does for the example plugin), runs the skeleton's own tests, a real server included, and
checks ``k3p plugins list`` shows the plugin. Its PYTHONPATH never holds the example plugin,
whose entry point is also called ``hello``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

from k3p.scaffold import NAME_PATTERN


def env_with(pythonpath: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("K3P_")}
    env["K3P_CONFIG_FILE"] = os.devnull  # never the host's /etc/rancher config
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (pythonpath, os.environ.get("PYTHONPATH", "")) if p)
    return env


def k3p(*args: str, cwd: Path, pythonpath: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "k3p", *args], capture_output=True, text=True, cwd=cwd,
                          env=env_with(pythonpath), timeout=60)


def refused(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("k3p: error: "), result.stderr
    for word in words:
        assert word in lines[0]


# --- quick: refusals and the files, nothing installed -------------------------------------


@pytest.mark.parametrize("name", ["Hello", "my_thing", "1abc", "-x", "x-", "a--b", "a.b", "hé", "x" * 41])
def test_invalid_names_are_refused(tmp_path: Path, name: str) -> None:
    # after "--": a name starting with a dash reaches the name check, not argparse's options
    result = k3p("plugins", "new", "--", name, str(tmp_path / "out"), cwd=tmp_path)
    refused(result, "invalid plugin name")
    assert not (tmp_path / "out").exists()


def test_non_empty_folder_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    refused(k3p("plugins", "new", "hello", str(target), cwd=tmp_path), "exists and is not empty")
    assert [p.name for p in target.iterdir()] == ["keep.txt"]
    (tmp_path / "file").write_text("")
    refused(k3p("plugins", "new", "hello", str(tmp_path / "file"), cwd=tmp_path), "not a folder")


def test_default_folder_is_refused_when_not_empty(tmp_path: Path) -> None:
    (tmp_path / "k3p-hello").mkdir()
    (tmp_path / "k3p-hello" / "x").write_text("")
    refused(k3p("plugins", "new", "hello", cwd=tmp_path), "k3p-hello exists and is not empty")


def test_name_of_an_installed_plugin_is_refused(tmp_path: Path) -> None:
    # pip install of a second plugin of that name would shadow it (or replace its distribution)
    taken = sorted(ep.name for ep in metadata.entry_points(group="k3p.plugins") if NAME_PATTERN.fullmatch(ep.name))
    if not taken:
        pytest.skip("no installed plugin has a name the scaffold accepts")
    refused(k3p("plugins", "new", taken[0], str(tmp_path / "out"), cwd=tmp_path), "taken by an installed plugin")
    assert not (tmp_path / "out").exists()


def test_name_whose_package_exists_is_refused(tmp_path: Path) -> None:
    if importlib.util.find_spec("k3p_plugins") is None:
        pytest.skip("the bundled plugins' package k3p_plugins is not installed")
    # `plugins` would make a package k3p_plugins that hides the bundled plugins
    refused(k3p("plugins", "new", "plugins", str(tmp_path / "out"), cwd=tmp_path), "k3p_plugins already exists")


def test_usage_names_both_subcommands(tmp_path: Path) -> None:
    result = k3p("plugins", "frobnicate", cwd=tmp_path)
    assert result.returncode == 2 and "plugins list" in result.stderr and "plugins new NAME [DIR]" in result.stderr
    assert "new NAME [DIR]" in k3p("--help", cwd=tmp_path).stdout
    refused(k3p("plugins", "new", cwd=tmp_path), "NAME")


def test_dashed_name_skeleton(tmp_path: Path) -> None:
    # into the default folder ./k3p-NAME, and an existing empty folder is fine too
    (tmp_path / "k3p-my-thing").mkdir()
    result = k3p("plugins", "new", "my-thing", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    target = tmp_path / "k3p-my-thing"
    files = sorted(str(p.relative_to(target)) for p in target.rglob("*") if p.is_file())
    assert files == ["README.md", "k3p_my_thing/__init__.py", "k3p_my_thing/controller.py", "pyproject.toml",
                     "tests/test_my_thing.py"]
    project = tomllib.loads((target / "pyproject.toml").read_text())
    assert project["project"]["name"] == "k3p-my-thing"
    assert project["project"]["dependencies"] == ["k3p"]
    assert project["project"]["entry-points"]["k3p.plugins"] == {"my-thing": "k3p_my_thing"}
    assert project["tool"]["setuptools"]["packages"] == ["k3p_my_thing"]
    init = (target / "k3p_my_thing" / "__init__.py").read_text()
    for needle in ('"my-thing-greeting"', '"my_thing_greeting"', "system:k3p:{PLUGIN}", "def k3p_add_options",
                   "def k3p_manifests", "def k3p_server_components"):
        assert needle in init
    controller = (target / "k3p_my_thing" / "controller.py").read_text()
    assert "class GreetingController(Controller)" in controller and "components.ADDONS" in controller
    assert "ctx.component_client(PLUGIN" in controller
    for path in target.rglob("*.py"):
        compile(path.read_text(), str(path), "exec")


def test_skeleton_is_ruff_clean(tmp_path: Path) -> None:
    if importlib.util.find_spec("ruff") is None:
        pytest.skip("ruff is not installed")
    target = tmp_path / "k3p-my-thing"
    assert k3p("plugins", "new", "my-thing", str(target), cwd=tmp_path).returncode == 0
    # with the skeleton's own config (pyproject.toml), as its author will run it
    lint = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "."], capture_output=True,
                          text=True, cwd=target)
    assert lint.returncode == 0, lint.stdout + lint.stderr


# --- slow: install it and run its own tests -----------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", ["hello", "my-thing"])
def test_skeleton_installs_and_passes_its_own_tests(tmp_path: Path, name: str) -> None:
    target = tmp_path / "skeleton"
    result = k3p("plugins", "new", name, str(target), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
         "--no-build-isolation", "--target", str(site), str(target)],
        check=True, cwd=tmp_path, capture_output=True,
    )
    # cwd outside the skeleton: the tests import the installed copy, as after `pip install`
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    run = subprocess.run([sys.executable, "-m", "pytest", str(target), "-p", "no:cacheprovider"],
                         capture_output=True, text=True, cwd=elsewhere, env=env_with(str(site)), timeout=300)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert "4 passed" in run.stdout, run.stdout[-3000:]

    listed = k3p("plugins", "list", "-o", "json", cwd=elsewhere, pythonpath=str(site))
    assert listed.returncode == 0, listed.stderr
    row = {r["name"]: r for r in json.loads(listed.stdout)}[name]
    assert row["state"] == "enabled" and row["distribution"] == f"k3p-{name}" and row["version"] == "0.1.0"
    assert set(row["hooks"]) == {"k3p_add_options", "k3p_manifests", "k3p_server_components"}
