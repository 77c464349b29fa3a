"""Who is calling: client certificates, service-account tokens and static bearer tokens."""

from __future__ import annotations

import hashlib
import hmac
import ssl
import time
import uuid
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from k3p.apiserver.request_info import UserInfo

ANONYMOUS = UserInfo("system:anonymous", ("system:unauthenticated",))
ISSUER = "https://kubernetes.default.svc.cluster.local"
AUDIENCE = "https://kubernetes.default.svc.cluster.local"


def _user_from_der(der: bytes) -> UserInfo:
    cert = x509.load_der_x509_certificate(der)
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    orgs = tuple(str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME))
    name = str(cn[0].value) if cn else ""
    return UserInfo(name, (*orgs, "system:authenticated"))


class _PeerCertMixin:
    """Puts the verified client certificate's user into each request's scope.

    uvicorn does not expose the TLS peer certificate to the app; the certificate is
    verified by OpenSSL against the client CA during the handshake, so reading it once
    per connection is both cheap and safe.
    """

    _k3p_user: UserInfo | None = None

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        ssl_object: ssl.SSLObject | None = transport.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object else None
        self._k3p_user = _user_from_der(der) if der else None

    def _stamp(self) -> None:
        scope = getattr(self, "scope", None)
        if scope is not None:
            scope.setdefault("extensions", {})["k3p.client_cert_user"] = self._k3p_user


class CertHttpToolsProtocol(_PeerCertMixin, HttpToolsProtocol):
    def on_headers_complete(self) -> None:
        self._stamp()
        super().on_headers_complete()


class CertH11Protocol(_PeerCertMixin, H11Protocol):
    def handle_events(self) -> None:
        # h11 builds the scope while handling events; stamp right after each build.
        super().handle_events()
        self._stamp()


class CertWebSocketProtocol(_PeerCertMixin, WebSocketsSansIOProtocol):
    """The protocol a connection switches to on a WebSocket upgrade: the same user in its scope.

    uvicorn hands the TLS transport over to a new protocol object that builds a scope of
    its own, so the client certificate is read again from that transport.
    """

    def handle_connect(self, event: Any) -> None:
        # Kubernetes names subprotocols like "SPDY/3.1+portforward.k8s.io": not the RFC 7230
        # tokens websockets insists on. The app picks the subprotocol and uvicorn writes it
        # into the response itself, so websockets need not see the offer at all.
        offered = [p.strip() for value in event.headers.get_all("Sec-WebSocket-Protocol")
                   for p in value.split(",") if p.strip()]
        if offered:
            del event.headers["Sec-WebSocket-Protocol"]
        super().handle_connect(event)
        scope = getattr(self, "scope", None)
        if scope is not None:
            scope["subprotocols"] = offered
        # the app task was only scheduled: it sees the scope with the user in it
        self._stamp()


class ServiceAccountTokens:
    """Issues and checks service-account JWTs (ES256) signed with the cluster's service key."""

    def __init__(self, key_file: Path) -> None:
        self.key = ECKey.import_key(key_file.read_bytes())
        self.kid = hashlib.sha256(self.key.as_pem(private=False)).hexdigest()[:43]

    def issue(self, namespace: str, name: str, uid: str, audiences: list[str] | None = None,
              expiration_seconds: int = 3600, pod: dict[str, str] | None = None,
              node: dict[str, str] | None = None) -> tuple[str, int]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": ISSUER,
            "sub": f"system:serviceaccount:{namespace}:{name}",
            "aud": audiences or [AUDIENCE],
            "iat": now,
            "nbf": now,
            "exp": now + expiration_seconds,
            "jti": str(uuid.uuid4()),
            "kubernetes.io": {"namespace": namespace, "serviceaccount": {"name": name, "uid": uid}},
        }
        if pod:
            claims["kubernetes.io"]["pod"] = pod
        if node:
            claims["kubernetes.io"]["node"] = node
        token = jwt.encode({"alg": "ES256", "kid": self.kid}, claims, self.key)
        return token, now + expiration_seconds

    def check(self, token: str) -> UserInfo | None:
        try:
            decoded = jwt.decode(token, self.key, algorithms=["ES256"])
        except (JoseError, ValueError):
            return None
        claims = decoded.claims
        now = time.time()
        if claims.get("iss") != ISSUER or float(claims.get("exp", 0)) < now or float(claims.get("nbf", 0)) > now + 60:
            return None
        info = claims.get("kubernetes.io") or {}
        ns = info.get("namespace", "")
        sa = (info.get("serviceaccount") or {}).get("name", "")
        if not ns or not sa:
            return None
        return UserInfo(f"system:serviceaccount:{ns}:{sa}",
                        ("system:serviceaccounts", f"system:serviceaccounts:{ns}", "system:authenticated"),
                        uid=(info.get("serviceaccount") or {}).get("uid", ""))


class Authenticator:
    """Turns a request's credentials into a user; None means no credentials were given."""

    def __init__(self, sa_tokens: ServiceAccountTokens | None = None,
                 static_tokens: dict[str, UserInfo] | None = None) -> None:
        self.sa_tokens = sa_tokens
        self.static_tokens = static_tokens or {}

    def authenticate(self, scope: dict[str, Any], authorization: str | None) -> UserInfo | None:
        """The caller; raises PermissionError for credentials that are present but wrong."""
        if authorization:
            scheme, _, token = authorization.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise PermissionError("invalid authorization header")
            token = token.strip()
            for known, user in self.static_tokens.items():
                if hmac.compare_digest(known, token):
                    return user
            if self.sa_tokens:
                user = self.sa_tokens.check(token)
                if user:
                    return user
            raise PermissionError("invalid bearer token")
        return scope.get("extensions", {}).get("k3p.client_cert_user")
