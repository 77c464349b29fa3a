"""Cluster PKI: CAs, serving certificate names, admin certificate, token and kubeconfig."""

from __future__ import annotations

import base64
import hashlib
import stat
from pathlib import Path

import yaml
from cryptography import x509

from k3p import pki


def test_first_start_creates_and_restart_reuses(tmp_path: Path) -> None:
    first = pki.ensure_server_pki(tmp_path, tls_sans=["k3p.example", "192.0.2.7"], hostname="node1")
    ca_before = first.server_ca.cert_path.read_bytes()
    serving_before = first.serving_cert.read_bytes()
    second = pki.ensure_server_pki(tmp_path, tls_sans=["k3p.example"], hostname="node1")
    assert second.server_ca.cert_path.read_bytes() == ca_before
    assert second.serving_cert.read_bytes() == serving_before  # the names it needs are covered
    assert stat.S_IMODE(first.server_ca.key_path.stat().st_mode) == 0o600


def test_serving_certificate_names_and_regeneration(tmp_path: Path) -> None:
    p = pki.ensure_server_pki(tmp_path, tls_sans=["k3p.example"], node_ips=["192.0.2.10"], hostname="node1")
    cert = x509.load_pem_x509_certificate(p.serving_cert.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    dns = set(san.get_values_for_type(x509.DNSName))
    ips = {str(i) for i in san.get_values_for_type(x509.IPAddress)}
    assert {"localhost", "node1", "k3p.example", "kubernetes.default.svc"} <= dns
    assert {"127.0.0.1", "192.0.2.10"} <= ips
    p2 = pki.ensure_server_pki(tmp_path, tls_sans=["new.example"], hostname="node1")
    cert2 = x509.load_pem_x509_certificate(p2.serving_cert.read_bytes())
    san2 = cert2.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    dns2 = set(san2.get_values_for_type(x509.DNSName))
    assert "new.example" in dns2
    # signed by the server CA
    cert2.verify_directly_issued_by(p2.server_ca.cert)


def test_admin_certificate_is_system_masters(tmp_path: Path) -> None:
    p = pki.ensure_server_pki(tmp_path, hostname="n")
    cert = x509.load_pem_x509_certificate(p.admin_cert.read_bytes())
    orgs = [a.value for a in cert.subject.get_attributes_for_oid(x509.NameOID.ORGANIZATION_NAME)]
    assert orgs == ["system:masters"]
    cert.verify_directly_issued_by(p.client_ca.cert)


def test_token_has_k3s_format_and_survives_restart(tmp_path: Path) -> None:
    p = pki.ensure_server_pki(tmp_path, hostname="n")
    token = pki.ensure_token(tmp_path, p)
    ca_hash = hashlib.sha256(p.server_ca.cert_path.read_bytes()).hexdigest()
    assert token.startswith(f"K10{ca_hash}::server:")
    assert pki.ensure_token(tmp_path, p) == token
    assert (tmp_path / "server" / "node-token").read_text().strip() == token
    assert stat.S_IMODE((tmp_path / "server" / "token").stat().st_mode) == 0o600


def test_given_token_secret_and_wrong_ca_hash(tmp_path: Path) -> None:
    p = pki.ensure_server_pki(tmp_path, hostname="n")
    assert pki.ensure_token(tmp_path, p, "mysecret").endswith("::server:mysecret")
    try:
        pki.ensure_token(tmp_path, p, "K10" + "0" * 64 + "::server:x")
    except ValueError as e:
        assert "CA hash" in str(e)
    else:
        raise AssertionError("a token for another CA was accepted")
    parsed = pki.parse_token("K10abc::node:sec")
    assert (parsed.ca_hash, parsed.user, parsed.secret) == ("abc", "node", "sec")


def test_kubeconfig_embeds_credentials_with_mode(tmp_path: Path) -> None:
    p = pki.ensure_server_pki(tmp_path, hostname="n")
    path = tmp_path / "kube" / "config.yaml"
    pki.write_admin_kubeconfig(p, path, "https://127.0.0.1:6443", 0o640)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    doc = yaml.safe_load(path.read_text())
    assert doc["clusters"][0]["cluster"]["server"] == "https://127.0.0.1:6443"
    ca = base64.b64decode(doc["clusters"][0]["cluster"]["certificate-authority-data"])
    assert ca == p.server_ca.cert_path.read_bytes()
