"""TLS for the ingress proxy: a server context that picks each connection's certificate by SNI.

Certificates come from the routing table (the Ingresses' ``spec.tls`` Secrets). A
connection whose server name matches none of them, or that sends no name, gets the
default certificate: one given by the caller, else a self-signed one made at start.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import ssl
import tempfile
from collections.abc import Mapping

import structlog
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from k3p_plugins.traefik.routes import RoutingTable, TlsCertificate

log = structlog.get_logger(__name__)

DEFAULT_CERT_NAME = "K3P INGRESS DEFAULT CERT"


def self_signed_certificate(common_name: str = DEFAULT_CERT_NAME, names: tuple[str, ...] = (),
                            days: int = 365) -> TlsCertificate:
    """A new self-signed certificate (EC P-256) for ``names`` (DNS SANs), as PEM."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]),
                                        critical=False)
    cert = builder.sign(key, hashes.SHA256())
    return TlsCertificate(
        cert.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                          serialization.NoEncryption()),
        "self-signed",
    )


def _load_chain(ctx: ssl.SSLContext, cert: TlsCertificate) -> None:
    """Load PEM material that is in memory: ``ssl`` reads certificates only from files.

    An anonymous memory file keeps the private key off every file system; where that is
    not available, a private temporary file lives only while it is read.
    """
    memfd = getattr(os, "memfd_create", None)
    if memfd is not None:
        fd = memfd("k3p-ingress-tls", os.MFD_CLOEXEC)
        try:
            os.write(fd, cert.cert_pem + b"\n" + cert.key_pem)
            ctx.load_cert_chain(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)
        return
    fd, path = tempfile.mkstemp(prefix="k3p-ingress-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(cert.cert_pem + b"\n" + cert.key_pem)
        ctx.load_cert_chain(path)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)


def server_context(cert: TlsCertificate) -> ssl.SSLContext:
    """A TLS server context presenting ``cert`` (HTTP/1.1 only); ssl.SSLError when the PEM is bad."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["http/1.1"])
    _load_chain(ctx, cert)
    return ctx


class CertificateStore:
    """The SSL context the HTTPS listener uses, and the per-certificate contexts SNI switches to.

    Contexts are cached by certificate content, so a new routing table with the same
    Secrets reuses them instead of parsing keys again.
    """

    def __init__(self, default: TlsCertificate | None = None) -> None:
        self.default = default or self_signed_certificate()
        self.context = server_context(self.default)
        self.context.sni_callback = self._on_server_name
        self._by_name: dict[str, ssl.SSLContext] = {}
        self._cache: dict[tuple[bytes, bytes], ssl.SSLContext] = {}
        self._failed: set[tuple[bytes, bytes]] = set()

    def update(self, table: RoutingTable | Mapping[str, TlsCertificate]) -> None:
        """Use the certificates of ``table`` from now on (new connections only)."""
        certs = table.tls if isinstance(table, RoutingTable) else table
        cache: dict[tuple[bytes, bytes], ssl.SSLContext] = {}
        by_name: dict[str, ssl.SSLContext] = {}
        for name, cert in certs.items():
            key = (cert.cert_pem, cert.key_pem)
            ctx = cache.get(key) or self._cache.get(key)
            if ctx is None:
                if key in self._failed:
                    continue
                try:
                    ctx = server_context(cert)
                except (ssl.SSLError, OSError) as e:
                    self._failed.add(key)
                    log.warning("unusable TLS certificate", component="traefik", secret=cert.source, error=str(e))
                    continue
            cache[key] = ctx
            by_name[name] = ctx
        self._cache = cache
        self._by_name = by_name  # one assignment: a handshake sees the old or the new map

    def context_for(self, server_name: str | None) -> ssl.SSLContext:
        """The context for a TLS server name: exact, then one-label wildcard, else the default."""
        if server_name:
            by_name = self._by_name
            name = server_name.lower().rstrip(".")
            ctx = by_name.get(name)
            if ctx is not None:
                return ctx
            dot = name.find(".")
            if dot > 0:
                ctx = by_name.get("*" + name[dot:])
                if ctx is not None:
                    return ctx
        return self.context

    def _on_server_name(self, sslobj: ssl.SSLObject | ssl.SSLSocket, server_name: str | None,
                        _ctx: ssl.SSLContext) -> None:
        ctx = self.context_for(server_name)
        if ctx is not self.context:
            sslobj.context = ctx
