"""Joining with `k3p agent --server URL --token T`: the token is checked before anything happens."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from k3p.testing import K3pServer, free_port


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    s = K3pServer(tmp_path_factory.mktemp("join"), args=["--disable-agent"]).start()
    yield s
    s.stop()


def agent(tmp_path, *args: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "c.yaml").write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith("K3P_")}
    return subprocess.run([sys.executable, "-m", "k3p", "agent", "--config", str(tmp_path / "c.yaml"),
                           "--data-dir", str(tmp_path / "data"), *args],
                          capture_output=True, text=True, timeout=60, env=env)


def token(server: K3pServer) -> str:
    return (server.data_dir / "server" / "token").read_text().strip()


def nodes(server: K3pServer) -> str:
    return server.kubectl("get", "nodes", "-o", "name", check=True).stdout


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    errors = [line for line in result.stderr.splitlines() if line.startswith("k3p: error:")]
    assert len(errors) == 1, result.stderr
    return errors[0]


def test_wrong_token_is_refused_and_no_node_appears(server: K3pServer, tmp_path) -> None:
    good = token(server)
    wrong = good.rsplit(":", 1)[0] + ":not-the-secret"
    result = agent(tmp_path, "--server", server.url, "--token", wrong, "--node-name", "intruder")
    assert result.returncode == 1
    assert "refused the join token" in one_error_line(result)
    assert "intruder" not in nodes(server)


def test_token_for_another_ca_is_refused(server: K3pServer, tmp_path) -> None:
    other = "K10" + "ab" * 32 + "::server:" + token(server).rsplit(":", 1)[1]
    result = agent(tmp_path, "--server", server.url, "--token", other, "--node-name", "elsewhere")
    assert result.returncode == 1
    assert "does not match the token's CA hash" in one_error_line(result)


def test_unreachable_server(tmp_path) -> None:
    result = agent(tmp_path, "--server", f"https://127.0.0.1:{free_port()}", "--token", "x")
    assert result.returncode == 1
    assert "cannot reach the server" in one_error_line(result)


def test_missing_server_and_token(server: K3pServer, tmp_path) -> None:
    result = agent(tmp_path, "--token", token(server))
    assert result.returncode == 2 and "--server" in one_error_line(result)
    result = agent(tmp_path, "--server", server.url)
    assert result.returncode == 1 and "join token is needed" in one_error_line(result)
