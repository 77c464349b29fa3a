"""The cluster's certificates, keys, join token and admin kubeconfig.

Made at first start under ``<data-dir>/server/tls`` and reused afterwards, as K3s does:
a server CA (signs serving certificates; its hash is part of the join token), a client CA
(signs client certificates: admin, nodes), a service-account signing key, the API
server's serving certificate (regenerated when its names change) and the admin client
certificate. Keys are ECDSA P-256.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import hashlib
import ipaddress
import os
import secrets
import socket
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_DAYS = 3650
LEAF_DAYS = 365
TOKEN_PREFIX = "K10"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def write_private(path: Path, data: bytes, mode: int = 0o600) -> bool:
    """Write a file atomically, created with ``mode`` from the start (keys never world-readable).

    A file that already holds ``data`` is left as it is (only its mode is set): a restart
    rewrites nothing, so it needs no free space. Returns whether the file was written.
    On failure (a full disk) no partial temporary file is left behind.
    """
    try:
        unchanged = path.stat().st_size == len(data) and path.read_bytes() == data
    except OSError:
        unchanged = False
    if unchanged:
        if stat.S_IMODE(path.stat().st_mode) != mode:
            os.chmod(path, mode)
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return True


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


def load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


@dataclass(frozen=True)
class CA:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    cert_path: Path
    key_path: Path

    def issue(
        self,
        common_name: str,
        organizations: Iterable[str] = (),
        *,
        server: bool = False,
        client: bool = False,
        dns_names: Iterable[str] = (),
        ips: Iterable[str] = (),
        key: ec.EllipticCurvePrivateKey | None = None,
        days: int = LEAF_DAYS,
    ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        """A leaf certificate signed by this CA (a new key unless ``key`` is given)."""
        key = key or _new_key()
        name = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in organizations]
        name.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
        usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if server else []) + (
            [ExtendedKeyUsageOID.CLIENT_AUTH] if client else []
        )
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name(name))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_now() - dt.timedelta(minutes=5))
            .not_valid_after(_now() + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, key_encipherment=True, content_commitment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                    encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False
            )
        )
        alt: list[x509.GeneralName] = [x509.DNSName(d) for d in dict.fromkeys(dns_names)]
        alt += [x509.IPAddress(ipaddress.ip_address(i)) for i in dict.fromkeys(ips)]
        if alt:
            builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
        return builder.sign(self.key, hashes.SHA256()), key


def ensure_ca(folder: Path, name: str, common_name: str) -> CA:
    """Load ``<name>.crt``/``.key`` from ``folder``, creating a self-signed CA the first time."""
    cert_path, key_path = folder / f"{name}.crt", folder / f"{name}.key"
    if cert_path.exists() and key_path.exists():
        return CA(load_cert(cert_path), load_key(key_path), cert_path, key_path)
    key = _new_key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{common_name}@{int(_now().timestamp())}")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - dt.timedelta(minutes=5))
        .not_valid_after(_now() + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_encipherment=False, content_commitment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    write_private(key_path, _key_pem(key))
    write_private(cert_path, _cert_pem(cert), 0o644)
    return CA(cert, key, cert_path, key_path)


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def host_addresses() -> list[str]:
    """The IPv4 addresses of this host's interfaces that are up (loopback excluded).

    Safe to call from a coroutine: pyroute2's synchronous API runs an event loop of its
    own, which cannot nest in a running one, so it then runs on a helper thread.
    """
    import asyncio
    import concurrent.futures

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return _host_addresses()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(_host_addresses).result()


#: interfaces k3p itself makes (pod bridge, overlay, node-local DNS) and pods' veth ends:
#: their addresses are never the host's own
K3P_INTERFACE_PREFIXES = ("cni", "flannel.", "k3p-", "veth")


def _host_addresses() -> list[str]:
    # SIOCGIFADDR per interface: the stdlib is enough for the primary IPv4 address of each,
    # which keeps netlink libraries out of the core.
    import fcntl
    import struct

    siocgifaddr = 0x8915
    found: list[str] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _index, name in socket.if_nameindex():
            if name.startswith(K3P_INTERFACE_PREFIXES):
                continue
            try:
                packed = fcntl.ioctl(s.fileno(), siocgifaddr, struct.pack("256s", name.encode()[:15]))
            except OSError:  # no IPv4 address on this interface
                continue
            ip = socket.inet_ntoa(packed[20:24])
            if not ip.startswith("127."):
                found.append(ip)
    return found


@dataclass(frozen=True)
class ServerPKI:
    """Paths of the server's TLS material (all under ``<data-dir>/server/tls``)."""

    tls_dir: Path
    server_ca: CA
    client_ca: CA
    serving_cert: Path
    serving_key: Path
    admin_cert: Path
    admin_key: Path
    service_account_key: Path

    @property
    def ca_hash(self) -> str:
        """sha256 of the server CA bundle as served at /cacerts: the hash in join tokens."""
        return hashlib.sha256(self.server_ca.cert_path.read_bytes()).hexdigest()


def _covers(cert_path: Path, dns_names: set[str], ips: set[str]) -> bool:
    if not cert_path.exists():
        return False
    cert = load_cert(cert_path)
    if cert.not_valid_after_utc - _now() < dt.timedelta(days=90):
        return False  # renew well before it expires, like K3s does at start
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    have_dns = set(san.get_values_for_type(x509.DNSName))
    have_ips = {str(i) for i in san.get_values_for_type(x509.IPAddress)}
    return dns_names <= have_dns and ips <= have_ips


def ensure_server_pki(
    data_dir: Path,
    *,
    tls_sans: Iterable[str] = (),
    node_ips: Iterable[str] = (),
    hostname: str | None = None,
    service_ip: str | None = None,
) -> ServerPKI:
    """Create what is missing (CA, keys, certificates) and reuse what exists."""
    tls = data_dir / "server" / "tls"
    tls.mkdir(parents=True, exist_ok=True)
    os.chmod(tls, 0o700)
    server_ca = ensure_ca(tls, "server-ca", "k3p-server-ca")
    client_ca = ensure_ca(tls, "client-ca", "k3p-client-ca")

    names = {"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
             "kubernetes.default.svc.cluster.local", hostname or socket.gethostname()}
    ips = {"127.0.0.1", *node_ips}
    if service_ip:
        ips.add(service_ip)
    for san in tls_sans:
        (ips if _is_ip(san) else names).add(san)
    serving_cert, serving_key = tls / "serving-kube-apiserver.crt", tls / "serving-kube-apiserver.key"
    if not _covers(serving_cert, names, ips):
        key = load_key(serving_key) if serving_key.exists() else None
        cert, key = server_ca.issue("kube-apiserver", server=True, dns_names=sorted(names), ips=sorted(ips),
                                    key=key)
        write_private(serving_key, _key_pem(key))
        write_private(serving_cert, _cert_pem(cert) + _cert_pem(server_ca.cert), 0o644)

    admin_cert, admin_key = tls / "client-admin.crt", tls / "client-admin.key"
    if not admin_cert.exists() or not admin_key.exists():
        cert, key = client_ca.issue("system:admin", ["system:masters"], client=True)
        write_private(admin_key, _key_pem(key))
        write_private(admin_cert, _cert_pem(cert) + _cert_pem(client_ca.cert), 0o644)

    sa_key = tls / "service.key"
    if not sa_key.exists():
        write_private(sa_key, _key_pem(_new_key()))
    return ServerPKI(tls, server_ca, client_ca, serving_cert, serving_key, admin_cert, admin_key, sa_key)


def ensure_client_cert(pki: ServerPKI, name: str, common_name: str, organizations: Iterable[str] = (),
                       days: int = LEAF_DAYS) -> tuple[Path, Path]:
    """A client certificate from the cluster's client CA, kept as ``client-<name>.crt/.key``."""
    cert_path, key_path = pki.tls_dir / f"client-{name}.crt", pki.tls_dir / f"client-{name}.key"
    if cert_path.exists() and key_path.exists():
        cert = load_cert(cert_path)
        if cert.not_valid_after_utc - _now() > dt.timedelta(days=90):
            return cert_path, key_path
    cert, key = pki.client_ca.issue(common_name, organizations, client=True, days=days)
    write_private(key_path, _key_pem(key))
    write_private(cert_path, _cert_pem(cert) + _cert_pem(pki.client_ca.cert), 0o644)
    return cert_path, key_path


def ensure_serving_cert(pki: ServerPKI, cert_path: Path, key_path: Path, common_name: str,
                        dns_names: Iterable[str], ips: Iterable[str]) -> None:
    """A serving certificate from the server CA at ``cert_path``/``key_path``, kept while it
    still covers the names and addresses and is far from expiry (a restart writes nothing)."""
    dns_names, ips = list(dns_names), [i for i in ips if _is_ip(i)]
    if key_path.exists() and _covers(cert_path, set(dns_names), set(ips)) \
            and _issued_by(cert_path, pki.server_ca):
        return
    chain, key = issue_serving_pem(pki, common_name, dns_names, ips)
    write_private(key_path, key)
    write_private(cert_path, chain, 0o644)


def _issued_by(cert_path: Path, ca: CA) -> bool:
    return load_cert(cert_path).issuer == ca.cert.subject


def issue_serving_pem(pki: ServerPKI, common_name: str, dns_names: Iterable[str], ips: Iterable[str]
                      ) -> tuple[bytes, bytes]:
    """A serving certificate chain and key as PEM from the server CA (a kubelet's port 10250)."""
    cert, key = pki.server_ca.issue(common_name, server=True, dns_names=dns_names,
                                    ips=[i for i in ips if _is_ip(i)])
    return _cert_pem(cert) + _cert_pem(pki.server_ca.cert), _key_pem(key)


def issue_client_pem(pki: ServerPKI, common_name: str, organizations: Iterable[str] = ()) -> tuple[bytes, bytes]:
    """A new client certificate chain and key as PEM, for a joining node."""
    cert, key = pki.client_ca.issue(common_name, organizations, client=True)
    return _cert_pem(cert) + _cert_pem(pki.client_ca.cert), _key_pem(key)


# --- join token ------------------------------------------------------------------------------


def format_token(ca_hash: str, secret: str, user: str = "server") -> str:
    return f"{TOKEN_PREFIX}{ca_hash}::{user}:{secret}"


@dataclass(frozen=True)
class ParsedToken:
    ca_hash: str  # "" for a bare secret
    user: str
    secret: str


def parse_token(token: str) -> ParsedToken:
    """Split ``K10<hash>::<user>:<secret>``; a bare secret is accepted as K3s does."""
    if token.startswith(TOKEN_PREFIX) and "::" in token:
        head, _, cred = token.partition("::")
        user, sep, secret = cred.partition(":")
        if not sep:
            user, secret = "server", cred
        return ParsedToken(head[len(TOKEN_PREFIX) :], user, secret)
    return ParsedToken("", "server", token)


def ensure_token(data_dir: Path, pki: ServerPKI, given: str = "") -> str:
    """The full server token, kept in ``server/token`` (and ``server/node-token``).

    ``given`` (``--token``) may be a bare secret or a full token; a full token whose CA
    hash does not match this cluster's CA is refused.
    """
    path = data_dir / "server" / "token"
    if given:
        parsed = parse_token(given)
        if parsed.ca_hash and parsed.ca_hash != pki.ca_hash:
            raise ValueError("the token's CA hash does not match this server's CA (data dir of another cluster?)")
        secret = parsed.secret
    elif path.exists():
        secret = parse_token(path.read_text().strip()).secret
    else:
        secret = secrets.token_hex(16)
    token = format_token(pki.ca_hash, secret)
    for name in ("token", "node-token"):
        target = data_dir / "server" / name
        if not target.exists() or target.read_text().strip() != token:
            write_private(target, (token + "\n").encode())
    return token


# --- kubeconfig ------------------------------------------------------------------------------


def kubeconfig(server_url: str, ca_pem: bytes, cert_pem: bytes, key_pem: bytes, name: str = "default") -> str:
    """A kubeconfig document with embedded credentials, laid out as K3s writes it."""

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": name, "cluster": {"server": server_url, "certificate-authority-data": b64(ca_pem)}}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": name}}],
        "current-context": name,
        "preferences": {},
        "users": [{"name": name, "user": {"client-certificate-data": b64(cert_pem), "client-key-data": b64(key_pem)}}],
    }
    return yaml.safe_dump(doc, sort_keys=False)


def write_admin_kubeconfig(pki: ServerPKI, path: Path, server_url: str, mode: int = 0o600) -> bool:
    """Write the admin kubeconfig unless ``path`` holds it already; returns whether it was written."""
    text = kubeconfig(server_url, pki.server_ca.cert_path.read_bytes(), pki.admin_cert.read_bytes(),
                      pki.admin_key.read_bytes())
    return write_private(path, text.encode(), mode)
