"""`k3p server` as a user runs it: HTTPS probes, credentials on disk, clean stop, bad input."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import ssl
import stat
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from k3p.testing import K3pServer, descendants, wait_for
from k3p.testing.process import pid_alive


def anonymous_get(server: K3pServer, path: str) -> tuple[int, bytes]:
    """GET verified against the generated CA only, with no client credentials."""
    ctx = ssl.create_default_context(cafile=str(server.ca_file))
    with urllib.request.urlopen(server.url + path, context=ctx, timeout=5) as r:
        return r.status, r.read()


def test_serves_readyz_over_https_and_writes_credentials(k3p_server: K3pServer) -> None:
    assert anonymous_get(k3p_server, "/readyz") == (200, b"ok")
    status, body = anonymous_get(k3p_server, "/version")
    assert status == 200 and json.loads(body)["minor"] == "32"
    # A client that does not trust the cluster CA must not get through.
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
        urllib.request.urlopen(k3p_server.url + "/readyz", context=ssl.create_default_context(), timeout=5)

    kubeconfig = k3p_server.kubeconfig
    assert stat.S_IMODE(kubeconfig.stat().st_mode) == 0o600
    doc = yaml.safe_load(kubeconfig.read_text())
    assert doc["clusters"][0]["cluster"]["server"] == k3p_server.url
    token = (k3p_server.data_dir / "server" / "token").read_text().strip()
    ca_hash = hashlib.sha256(k3p_server.ca_file.read_bytes()).hexdigest()
    assert token.startswith(f"K10{ca_hash}::server:")


def test_restart_reuses_ca_token_and_data(k3p_server: K3pServer) -> None:
    ca = k3p_server.ca_file.read_bytes()
    token = (k3p_server.data_dir / "server" / "token").read_text()
    assert k3p_server.stop() == 0
    k3p_server.start()
    assert k3p_server.ca_file.read_bytes() == ca
    assert (k3p_server.data_dir / "server" / "token").read_text() == token


def test_kubeconfig_mode_flag(k3p_server_factory) -> None:
    server = k3p_server_factory(args=["--write-kubeconfig-mode", "0644"])
    assert stat.S_IMODE(server.kubeconfig.stat().st_mode) == 0o644


def test_sigterm_in_steady_state_stops_everything(k3p_server_factory, hello_plugin_env) -> None:
    server = k3p_server_factory(env=hello_plugin_env)
    # The example plugin runs a child process: it must not outlive k3p.
    kids = wait_for(lambda: descendants(server.proc.pid), 10, what="the plugin's child process")
    assert kids
    started = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    assert server.wait_exit(10) == 0
    assert time.monotonic() - started < 10
    assert [pid for pid in kids if pid_alive(pid)] == []


@pytest.mark.parametrize("delay", [0.1, 0.3, 0.8, 1.5])
def test_sigterm_during_startup(tmp_path: Path, hello_plugin_env, delay: float) -> None:
    server = K3pServer(tmp_path, env=hello_plugin_env).start(wait=False)
    try:
        # Counted from the first log line: before it, the interpreter may not yet run k3p's
        # code (a loaded machine takes longer than 0.1 s to import), and no program can
        # handle a signal it has not yet set a handler for.
        wait_for(lambda: server.log_path.exists() and server.log_path.stat().st_size > 0, 20, 0.01,
                 "the server's first log line")
        time.sleep(delay)
        kids = descendants(server.proc.pid)
        server.proc.send_signal(signal.SIGTERM)
        assert server.wait_exit(10) == 0, server.logs()[-2000:]
        time.sleep(0.2)
        assert [pid for pid in kids + descendants(server.proc.pid) if pid_alive(pid)] == []
    finally:
        server.stop()


def tree_digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() + oct(p.stat().st_mode)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def used_data_dir(tmp_path_factory: pytest.TempPathFactory) -> K3pServer:
    """A data dir that a server has run on and been stopped."""
    server = K3pServer(tmp_path_factory.mktemp("used")).start()
    server.stop()
    return server


def run_cli(server: K3pServer, *args: str, config: str | None = None) -> subprocess.CompletedProcess[str]:
    if config is not None:
        server.config_file.write_text(config)
    try:
        return subprocess.run(
            [*server.command(), *args], capture_output=True, text=True, timeout=30,
            env={k: v for k, v in os.environ.items() if not k.startswith("K3P_")},
        )
    finally:
        server.config_file.write_text("")


@pytest.mark.parametrize(
    ("args", "config", "message"),
    [
        (["--no-such-flag"], None, "unrecognized arguments: --no-such-flag"),
        (["--disable", "nonexistent"], None, "cannot disable unknown plugin nonexistent (available: "),
        ([], "disable: [nonexistent]\n", "cannot disable unknown plugin nonexistent"),
        ([], "cluster-cidr: [unclosed\n", "malformed YAML in "),
        ([], "https-listen-port: lots\n", "invalid value for https-listen-port in "),
        (["--https-listen-port", "x"], None, "invalid value for https-listen-port in flag --https-listen-port"),
        ([], "debug: sometimes\n", "invalid value for debug in "),
        (["--write-kubeconfig-mode", "rw"], None, "write-kubeconfig-mode"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_leaves_data_alone(
    used_data_dir: K3pServer, args: list[str], config: str | None, message: str
) -> None:
    before = tree_digest(used_data_dir.data_dir)
    result = run_cli(used_data_dir, *args, config=config)
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("k3p: error:")]
    assert len(errors) == 1 and message in errors[0], result.stderr
    assert tree_digest(used_data_dir.data_dir) == before


def test_unknown_config_key_warns_with_file(k3p_server_factory) -> None:
    server = k3p_server_factory(config="not-an-option: 1\n")
    assert f"unknown config key 'not-an-option' in {server.config_file}" in server.logs()


def test_python_version_and_help() -> None:
    out = subprocess.run([sys.executable, "-m", "k3p", "server", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for flag in ("--data-dir", "--disable", "--https-listen-port", "--tls-san", "--datastore-endpoint"):
        assert flag in out.stdout
