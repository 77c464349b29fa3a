"""Who is calling: client certificates, service-account tokens and static bearer tokens."""

from __future__ import annotations

import hmac
import ssl
from collections.abc import Sequence
from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from k3p.apiserver.request_headers import RequestHeaderLimits
from k3p.apiserver.request_info import UserInfo
from k3p.apiserver.service_account_tokens import ServiceAccountTokens, TokenRejected

#: bytes of outgoing TLS data a connection buffers in the process before the app is paused
WRITE_HIGH_WATER = 64 * 1024
ANONYMOUS = UserInfo("system:anonymous", ("system:unauthenticated",))
#: what kube answers for a bearer token no authenticator knows
INVALID_TOKEN = "invalid bearer token"


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
        # What a connection may buffer here before a stream's next write waits for its client.
        # uvloop's TLS default (512 KiB) times a few hundred watches that are never read was
        # most of the server's memory.
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        ssl_object: ssl.SSLObject | None = transport.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object else None
        self._k3p_user = _user_from_der(der) if der else None

    def _stamp(self) -> None:
        scope = getattr(self, "scope", None)
        if scope is not None:
            scope.setdefault("extensions", {})["k3p.client_cert_user"] = self._k3p_user


class CertHttpToolsProtocol(_PeerCertMixin, RequestHeaderLimits, HttpToolsProtocol):
    """uvicorn's httptools protocol with the client certificate's user and the header limits."""

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


class Authenticator:
    """Turns a request's credentials into a user; None means no credentials were given."""

    def __init__(self, sa_tokens: ServiceAccountTokens | None = None,
                 static_tokens: dict[str, UserInfo] | None = None) -> None:
        self.sa_tokens = sa_tokens
        self.static_tokens = static_tokens or {}

    @property
    def api_audiences(self) -> list[str]:
        """The audiences a token must be for to be accepted on this API."""
        return list(self.sa_tokens.api_audiences) if self.sa_tokens else []

    def authenticate_token(self, token: str, audiences: Sequence[str] | None = None) -> tuple[UserInfo, list[str]]:
        """The user a bearer token speaks for and the audiences (of ``audiences``, default: the
        API audiences) it was accepted for; raises PermissionError saying why it is refused."""
        wanted = list(audiences or self.api_audiences)
        for known, user in self.static_tokens.items():
            if hmac.compare_digest(known, token):
                # Static tokens know no audience: good for the API audiences only, as upstream.
                matched = [a for a in wanted if a in self.api_audiences] if self.api_audiences else wanted
                if matched or not wanted:
                    return user, matched
                raise PermissionError(INVALID_TOKEN)
        if self.sa_tokens:
            try:
                found = self.sa_tokens.authenticate(token, wanted)
            except TokenRejected as e:
                raise PermissionError(f"[{INVALID_TOKEN}, {e}]") from None
            if found:
                return found.user, found.audiences
        raise PermissionError(INVALID_TOKEN)

    def authenticate(self, scope: dict[str, Any], authorization: str | None) -> UserInfo | None:
        """The caller; raises PermissionError for credentials that are present but wrong."""
        if authorization:
            scheme, _, token = authorization.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise PermissionError("invalid authorization header")
            return self.authenticate_token(token.strip())[0]
        return scope.get("extensions", {}).get("k3p.client_cert_user")

    def review(self, token: str, audiences: Sequence[str] | None = None) -> dict[str, Any]:
        """The ``status`` of a TokenReview: the same answer the API gives a request with ``token``."""
        try:
            user, matched = self.authenticate_token(token, audiences)
        except PermissionError as e:
            return {"authenticated": False, "error": str(e)}
        info: dict[str, Any] = {"username": user.name, "groups": list(user.groups)}
        if user.uid:
            info["uid"] = user.uid
        if user.extra:
            info["extra"] = {k: list(v) for k, v in user.extra.items()}
        return {"authenticated": True, "user": info, "audiences": matched}
