"""Joining with `k3p agent --server URL --token T`: the token is checked before anything happens."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
import time

import httpx
import pytest

from k3p.agent.run import reserve_hollow_kubelet_port
from k3p.testing import HollowNodes, K3pServer, free_port, wait_for


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    s = K3pServer(tmp_path_factory.mktemp("join"), args=["--disable-agent"]).start()
    yield s
    s.stop()


def agent(tmp_path, *args: str) -> subprocess.CompletedProcess[str]:
    tmp_path.mkdir(parents=True, exist_ok=True)
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


def k3p_token(server: K3pServer, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("K3P_")}
    return subprocess.run([sys.executable, "-m", "k3p", "token", "--kubeconfig", str(server.kubeconfig), *args],
                          capture_output=True, text=True, timeout=60, env=env)


def test_duplicate_node_name_with_another_password_is_refused(server: K3pServer, tmp_path) -> None:
    first = HollowNodes(server, tmp_path / "first", 1, "twin")
    try:
        wait_for(lambda: "node/twin-0" in nodes(server), timeout=60)
        # Another machine (another data dir, so another node password) with the same name.
        result = agent(tmp_path / "second", "--server", server.url, "--token", token(server),
                       "--node-name", "twin", "--simulate", "1")
        assert result.returncode == 1
        line = one_error_line(result)
        assert "node password rejected" in line and "twin-0" in line
        secret = server.kubectl("get", "secret", "-n", "kube-system", "twin-0.node-password.k3p", "-o",
                                "jsonpath={.type}", check=True).stdout
        assert secret == "k3p.io/node-password"
    finally:
        first.stop()
    # The same machine comes back with its own password: accepted.
    again = HollowNodes(server, tmp_path / "first", 1, "twin")
    try:
        wait_for(lambda: "twin-0" in server.kubectl("get", "nodes", "--no-headers").stdout
                 and "Ready" in server.kubectl("get", "node", "twin-0", "--no-headers").stdout, timeout=60)
        assert again.proc.poll() is None
    finally:
        again.stop()
    # Once the node is deleted, its name is free for another machine.
    server.kubectl("delete", "node", "twin-0", check=True)
    other = HollowNodes(server, tmp_path / "second", 1, "twin")
    try:
        wait_for(lambda: "node/twin-0" in nodes(server), timeout=60)
        assert other.proc.poll() is None
    finally:
        other.stop()
        server.kubectl("delete", "node", "twin-0", "--ignore-not-found")


def test_bootstrap_tokens_join_until_deleted_or_expired(server: K3pServer, tmp_path) -> None:
    created = k3p_token(server, "create", "--ttl", "1h", "--description", "for the lab")
    assert created.returncode == 0, created.stderr
    joined_with = created.stdout.strip()
    ca_hash, _, cred = joined_with.removeprefix("K10").partition("::")
    assert ca_hash == token(server).removeprefix("K10").partition("::")[0]
    token_id = cred.split(".")[0]
    listed = k3p_token(server, "list").stdout
    assert token_id in listed and "for the lab" in listed and "authentication" in listed

    nodes_ = HollowNodes(server, tmp_path / "boot", 1, "booted", "--token", joined_with)
    try:
        wait_for(lambda: "node/booted-0" in nodes(server), timeout=60)
    finally:
        nodes_.stop()
        server.kubectl("delete", "node", "booted-0", "--ignore-not-found")

    deleted = k3p_token(server, "delete", token_id)
    assert deleted.returncode == 0 and token_id in deleted.stdout
    result = agent(tmp_path / "late", "--server", server.url, "--token", joined_with, "--node-name", "late")
    assert result.returncode == 1 and "refused the join token" in one_error_line(result)
    assert k3p_token(server, "delete", token_id).returncode == 1

    short = k3p_token(server, "create", "--ttl", "1s").stdout.strip()
    time.sleep(1.5)
    result = agent(tmp_path / "expired", "--server", server.url, "--token", short, "--node-name", "expired")
    assert result.returncode == 1 and "refused the join token" in one_error_line(result)
    assert "<expired>" in k3p_token(server, "list").stdout
    assert "late" not in nodes(server) and "expired" not in nodes(server)


def test_bad_token_arguments_are_one_line_errors(server: K3pServer) -> None:
    result = k3p_token(server, "create", "NOT-A-TOKEN")
    assert result.returncode == 2 and "invalid token" in result.stderr
    result = k3p_token(server, "create", "--ttl", "soon")
    assert result.returncode == 2 and "invalid --ttl" in result.stderr


def test_component_credentials_need_the_token(server: K3pServer) -> None:
    import httpx
    from cryptography import x509

    secret = token(server).rsplit(":", 1)[1]
    url = f"{server.url}/v1-k3p/component-credentials"
    with httpx.Client(verify=server.ssl_context()) as http:
        assert http.post(url, json={"component": "coredns"}).status_code == 401
        assert http.post(url, json={"component": "Bad Name"}, auth=("node", secret)).status_code == 422
        r = http.post(url, json={"component": "coredns"}, auth=("node", secret))
        assert r.status_code == 200
        cert = x509.load_pem_x509_certificate(r.json()["certificate"].encode())
        assert cert.subject.rfc4514_string() == "CN=system:k3p:coredns"
        proxy = http.post(url, json={"component": "kube-proxy"}, auth=("node", secret)).json()
        assert "CN=system:kube-proxy" == x509.load_pem_x509_certificate(
            proxy["certificate"].encode()).subject.rfc4514_string()


def test_hollow_kubelet_ports_stay_reserved_until_served() -> None:
    reserved = reserve_hollow_kubelet_port()
    try:
        port = reserved.getsockname()[1]
        with socket.socket() as other:  # what another agent's listener does with a port it was given
            other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            with pytest.raises(OSError) as e:
                other.bind(("127.0.0.1", port))
            assert e.value.errno == errno.EADDRINUSE
    finally:
        reserved.close()


def test_two_simulating_agents_get_distinct_kubelet_ports(server: K3pServer, tmp_path) -> None:
    agents = [HollowNodes(server, tmp_path / name, 5, name) for name in ("left", "right")]
    names = [f"{a}-{i}" for a in ("left", "right") for i in range(5)]
    try:
        def ports() -> dict[str, str] | None:
            out = server.kubectl("get", "nodes", "-o", "jsonpath={range .items[*]}{.metadata.name}="
                                 "{.status.daemonEndpoints.kubeletEndpoint.Port}={.status.conditions[-1:].status}"
                                 "{\"\\n\"}{end}").stdout
            found = {n: p for n, p, ready in (line.split("=") for line in out.split()) if ready == "True"}
            return found if all(n in found for n in names) else None

        found = wait_for(ports, timeout=90)
        assert len({found[n] for n in names}) == len(names)
        assert all(a.proc.poll() is None for a in agents)
        for n in names:  # each node's own kubelet answers on its port
            assert httpx.get(f"https://127.0.0.1:{found[n]}/healthz", verify=False).text == "ok"
    finally:
        for a in agents:
            a.stop()
        server.kubectl("delete", "node", *names, "--ignore-not-found")
