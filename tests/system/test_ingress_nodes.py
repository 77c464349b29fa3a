"""Ingress on real nodes: the traefik plugin on ports 80/443 of every node, and ``--disable traefik``.

A server and an agent in network namespaces (ports 80 and 443 are the namespaces' own):
Deployments of busybox httpd behind Services, an Ingress for ``web.example`` with two
paths and TLS, requests from the host to each node's address. Then the server restarts
with ``--disable traefik`` on the same data dir (port 80 closed, IngressClass gone,
the plugin listed as disabled) and again without it (all restored).
"""

from __future__ import annotations

import datetime
import http.client
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from containerd_host import IMAGE, REAL_NODE
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from lab_cluster import Cluster

from k3p.testing import wait_for

pytestmark = REAL_NODE

#: each pod answers with its name on / and on /api/x
SERVE_API = "echo $HOSTNAME > /tmp/index.html; mkdir -p /tmp/api; cp /tmp/index.html /tmp/api/x; " \
            "exec httpd -f -p 8080 -h /tmp"


def request(ip: str, host: str, path: str = "/", timeout: float = 3) -> tuple[int, str]:
    conn = http.client.HTTPConnection(ip, 80, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Host": host})
        r = conn.getresponse()
        return r.status, r.read().decode().strip()
    finally:
        conn.close()


def self_signed(host: str) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
            .sign(key, hashes.SHA256()))
    return (cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))


def plugins_list(cluster: Cluster, *args: str) -> dict[str, bool]:
    server = cluster.server
    env = {k: v for k, v in os.environ.items() if not k.startswith("K3P_")}
    out = subprocess.run([sys.executable, "-m", "k3p", "plugins", "list", "-o", "json", "--config",
                          str(server.config_file), "--data-dir", str(server.data_dir), *args],
                         capture_output=True, text=True, env=env, check=True).stdout
    return {p["name"]: p["enabled"] for p in json.loads(out)}


def port_open(ip: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex((ip, port)) == 0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("ingress"), ["a"], [], disable="")
    yield c
    c.close()


@pytest.fixture(scope="module")
def site(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Path:
    for name, replicas in (("web", 2), ("api", 1)):
        cluster.kubectl("create", "deployment", name, f"--image={IMAGE}", f"--replicas={replicas}", "--",
                        "sh", "-c", SERVE_API)
        cluster.kubectl("expose", "deployment", name, "--port=80", "--target-port=8080")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = self_signed("web.example")
    (folder / "tls.crt").write_bytes(cert)
    (folder / "tls.key").write_bytes(key)
    cluster.kubectl("create", "secret", "tls", "web-tls", f"--cert={folder / 'tls.crt'}",
                    f"--key={folder / 'tls.key'}")
    cluster.apply({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": "site"},
                   "spec": {"tls": [{"hosts": ["web.example"], "secretName": "web-tls"}],
                            "rules": [{"host": "web.example", "http": {"paths": [
                                {"path": "/", "pathType": "Prefix",
                                 "backend": {"service": {"name": "web", "port": {"number": 80}}}},
                                {"path": "/api", "pathType": "Prefix",
                                 "backend": {"service": {"name": "api", "port": {"number": 80}}}}]}}]}})
    for name in ("web", "api"):
        cluster.kubectl("rollout", "status", f"deployment/{name}", "--timeout=120s")
    return folder / "tls.crt"


def names(cluster: Cluster, app: str) -> set[str]:
    return {p["metadata"]["name"] for p in cluster.json("pods", "-l", f"app={app}")["items"]
            if not p["metadata"].get("deletionTimestamp")}


def test_host_and_path_routing_on_every_node_and_tls_by_sni(cluster: Cluster, site: Path) -> None:
    web, api = names(cluster, "web"), names(cluster, "api")
    for node in cluster.nodes.values():
        wait_for(lambda ip=node.ip: request(ip, "web.example")[0] == 200, 30, 0.3, f"the ingress on {node.name}")
        status, body = request(node.ip, "web.example")
        assert status == 200 and body in web
        status, body = request(node.ip, "web.example", "/api/x")
        assert status == 200 and body in api
        assert request(node.ip, "unknown.example")[0] == 404

    ctx = ssl.create_default_context(cafile=str(site))
    ip = cluster.nodes["a"].ip
    with socket.create_connection((ip, 443), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname="web.example") as tls:
        presented = x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))
        tls.sendall(b"GET / HTTP/1.1\r\nHost: web.example\r\nConnection: close\r\n\r\n")
        reply = b""
        while chunk := tls.recv(65536):
            reply += chunk
    assert presented.subject.rfc4514_string() == "CN=web.example"
    assert reply.startswith(b"HTTP/1.1 200") and reply.rsplit(b"\r\n\r\n", 1)[1].decode().strip() in web

    addresses = {i["ip"] for i in cluster.json("ingress", "site")["status"]["loadBalancer"].get("ingress", [])}
    assert addresses == {n.ip for n in cluster.nodes.values()}


def test_scaling_spreads_requests_and_a_deleted_pod_costs_no_request(cluster: Cluster, site: Path) -> None:
    cluster.kubectl("scale", "deployment/web", "--replicas=3")
    cluster.kubectl("rollout", "status", "deployment/web", "--timeout=120s")
    ip = cluster.nodes["srv"].ip
    wait_for(lambda: {request(ip, "web.example")[1] for _ in range(12)} == names(cluster, "web"), 30, 0.5,
             "requests reaching all three replicas")

    errors: list[str] = []
    served = 0
    stop = threading.Event()

    def loop() -> None:
        nonlocal served
        while not stop.is_set():
            try:
                status, _ = request(ip, "web.example", timeout=5)
                if status != 200:
                    errors.append(f"HTTP {status}")
                served += 1
            except OSError as e:
                errors.append(repr(e))

    worker = threading.Thread(target=loop)
    worker.start()
    try:
        time.sleep(1)
        victim = sorted(names(cluster, "web"))[0]
        cluster.kubectl("delete", "pod", victim, "--wait=false")
        time.sleep(4)
    finally:
        stop.set()
        worker.join(10)
    print(f"{served} requests while a replica was deleted, {len(errors)} failed: {errors[:3]}")
    # one client, one request in flight: at most that one may fail
    assert len(errors) <= 1, errors
    assert served > 20


def test_disable_traefik_removes_it_and_enabling_restores_it(cluster: Cluster, site: Path) -> None:
    srv = cluster.nodes["srv"]
    assert plugins_list(cluster)["traefik"] is True
    cluster.server.stop()
    cluster.server.args += ["--disable", "traefik"]
    cluster.server.start(timeout=120)
    cluster.stop_agent("a")
    cluster.start_agent("a")  # agents learn the server's disabled plugins when they join
    wait_for(lambda: cluster.ready_nodes() == set(cluster.nodes), 120, 1, "nodes Ready again")
    assert not port_open(srv.ip, 80) and not port_open(srv.ip, 443)
    wait_for(lambda: not port_open(cluster.nodes["a"].ip, 80), 30, 0.5, "port 80 closed on the agent")
    assert "traefik" not in cluster.kubectl("get", "ingressclass", "-o", "name")
    assert cluster.server.kubectl("get", "clusterrole", "system:k3p:traefik").returncode != 0
    assert plugins_list(cluster, "--disable", "traefik")["traefik"] is False
    # the user's own objects stay: only what the plugin made is gone
    assert cluster.json("ingress", "site")["metadata"]["name"] == "site"

    cluster.server.stop()
    cluster.server.args = cluster.server.args[:-2]
    cluster.server.start(timeout=120)
    wait_for(lambda: "ingressclass.networking.k8s.io/traefik" in cluster.kubectl("get", "ingressclass", "-o",
                                                                                 "name"), 60, 0.5)
    wait_for(lambda: port_open(srv.ip, 80), 60, 0.5, "port 80 open again")
    wait_for(lambda: request(srv.ip, "web.example")[0] == 200, 60, 0.5, "the site served again")
