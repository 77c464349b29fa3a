"""An outside plugin, pip-installed, is discovered, listed, run, and can be disabled."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from k3p.testing import wait_for


def k3p(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("K3P_")}
    full.update(env or {})
    full["K3P_CONFIG_FILE"] = os.devnull  # never the host's /etc/rancher config
    return subprocess.run([sys.executable, "-m", "k3p", *args], capture_output=True, text=True, env=full,
                          timeout=60)


def rows(result: subprocess.CompletedProcess[str]) -> dict[str, dict]:
    assert result.returncode == 0, result.stderr
    return {row["name"]: row for row in json.loads(result.stdout)}


def test_plugins_list_shows_bundled_plugins() -> None:
    listed = rows(k3p("plugins", "list", "-o", "json"))
    assert listed["datastore_sql"]["state"] == "enabled"
    # every bundled plugin is a distribution of its own, found like a third-party one
    assert listed["datastore_sql"]["distribution"] == "k3p-datastore-sql"
    assert "hello" not in listed


def test_installed_plugin_is_listed_with_its_hooks(hello_plugin_env) -> None:
    hello = rows(k3p("plugins", "list", "-o", "json", env=hello_plugin_env))["hello"]
    assert hello["distribution"] == "k3p-hello" and hello["version"] == "1.2.3"
    assert hello["state"] == "enabled"
    assert set(hello["hooks"]) == {"k3p_add_options", "k3p_server_components", "k3p_agent_components",
                                   "k3p_node_cleanup"}


def test_disabled_plugin_is_listed_as_disabled_with_reason(hello_plugin_env) -> None:
    hello = rows(k3p("plugins", "list", "-o", "json", "--disable", "hello", env=hello_plugin_env))["hello"]
    assert hello["state"] == "disabled" and hello["reason"] == "disabled by flag --disable"
    assert "k3p_server_components" in hello["hooks"]  # still inspectable, never run


def test_plugins_list_table(hello_plugin_env) -> None:
    out = k3p("plugins", "list", "-o", "table", env=hello_plugin_env)
    header, *lines = out.stdout.splitlines()
    assert header.split()[:3] == ["NAME", "STATE", "DISTRIBUTION"]
    assert any(line.split()[:4] == ["hello", "enabled", "k3p-hello", "1.2.3"] for line in lines)


def test_plugin_options_appear_in_help(hello_plugin_env) -> None:
    out = k3p("server", "--help", env=hello_plugin_env)
    assert "plugin hello:" in out.stdout and "--hello-greeting" in out.stdout
    without = k3p("server", "--help", "--disable", "hello", env=hello_plugin_env)
    assert "--hello-greeting" not in without.stdout


def test_plugin_hook_runs_at_server_start_with_its_config(k3p_server_factory, hello_plugin_env) -> None:
    server = k3p_server_factory(config="hello-greeting: hi from config.yaml\n", env=hello_plugin_env)
    greeting = server.data_dir / "hello" / "greeting"
    wait_for(greeting.exists, 10, what="the hello plugin's component")
    assert greeting.read_text() == "hi from config.yaml"


def test_disabled_plugin_does_not_run(k3p_server_factory, hello_plugin_env) -> None:
    server = k3p_server_factory(args=["--disable", "hello"], env=hello_plugin_env)
    assert server.get("/readyz")[0] == 200
    assert not (server.data_dir / "hello").exists()
