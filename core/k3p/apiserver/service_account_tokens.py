"""Service-account JWTs: issued by TokenRequest, checked on every request as kube-apiserver checks them.

A token authenticates only while its issuer is one this server accepts, its audiences meet
the audiences asked for (the API audiences unless a TokenReview names others), it has not
expired, and the objects it names still exist with the UIDs it names: the ServiceAccount
always, and the Pod, Secret or Node it is bound to. Objects deleted (``deletionTimestamp``)
more than a minute ago count as gone, as upstream allows one minute of clock skew.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey

from k3p.apiserver.request_info import UserInfo
from k3p.client.objects import parse_time

DEFAULT_ISSUER = "https://kubernetes.default.svc.cluster.local"
#: go-jose's leeway: how far exp, nbf, iat and deletions may be off
LEEWAY_SECONDS = 60
#: the user extra keys kube-apiserver sets for service-account tokens
EXTRA_POD_NAME = "authentication.kubernetes.io/pod-name"
EXTRA_POD_UID = "authentication.kubernetes.io/pod-uid"
EXTRA_NODE_NAME = "authentication.kubernetes.io/node-name"
EXTRA_NODE_UID = "authentication.kubernetes.io/node-uid"
EXTRA_CREDENTIAL_ID = "authentication.kubernetes.io/credential-id"

Obj = dict[str, Any]
#: an object the token names, by resource ("serviceaccounts", "pods", "secrets", "nodes"),
#: namespace ("" for nodes) and name; None when it does not exist
ObjectLookup = Callable[[str, str, str], Obj | None]


class TokenRejected(Exception):
    """A token this server issued (its issuer is ours) that does not authenticate; the message says why."""


@dataclass(frozen=True)
class Authenticated:
    """Who a token speaks for, and which of the wanted audiences it was issued for."""

    user: UserInfo
    audiences: list[str]


def _go_quoted(values: Sequence[str]) -> str:
    # how Go's %q prints a []string, which is how kube words its audience error
    return "[" + " ".join(json.dumps(v) for v in values) + "]"


def _unverified_payload(token: str) -> Obj | None:
    parts = token.split(".")
    if len(parts) != 3 or token.lstrip().startswith("{"):
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (binascii.Error, ValueError):
        return None
    return payload if isinstance(payload, dict) else None


def _ref(value: Any) -> dict[str, str] | None:
    if not isinstance(value, dict):
        return None
    return {"name": str(value.get("name") or ""), "uid": str(value.get("uid") or "")}


def _audiences(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value] if value else []
    if isinstance(value, list):
        return [str(a) for a in value if isinstance(a, str)]
    return []


def _deleted_before(obj: Obj, cutoff: float) -> bool:
    when = parse_time((obj.get("metadata") or {}).get("deletionTimestamp"))
    return when is not None and when.timestamp() < cutoff


def _uid(obj: Obj) -> str:
    return str((obj.get("metadata") or {}).get("uid") or "")


class ServiceAccountTokens:
    """Issues and checks service-account JWTs (ES256) signed with the cluster's service-account key.

    ``issuers``: the first signs new tokens, every one is accepted (as kube's repeated
    ``--service-account-issuer``). ``api_audiences``: what a token must be for to
    authenticate on this API (kube's ``--api-audiences``); default: the issuers.
    """

    def __init__(self, key_file: Path, issuers: Sequence[str] = (DEFAULT_ISSUER,),
                 api_audiences: Sequence[str] = ()) -> None:
        if not issuers:
            raise ValueError("at least one service-account issuer is needed")
        self.key = ECKey.import_key(key_file.read_bytes())
        self.kid = hashlib.sha256(self.key.as_pem(private=False)).hexdigest()[:43]
        self.issuers = list(dict.fromkeys(issuers))
        self.issuer = self.issuers[0]
        self.api_audiences = list(dict.fromkeys(api_audiences or self.issuers))
        self._lookup: ObjectLookup | None = None

    def use_lookup(self, lookup: ObjectLookup) -> None:
        """Where the objects a token names are read from (the API server's watch cache).

        Until this is called no token authenticates: a token cannot be checked against
        objects that cannot be seen.
        """
        self._lookup = lookup

    def issue(self, namespace: str, name: str, uid: str, audiences: Sequence[str] | None = None,
              expiration_seconds: int = 3600, *, pod: dict[str, str] | None = None,
              secret: dict[str, str] | None = None, node: dict[str, str] | None = None,
              warn_after_seconds: int = 0) -> tuple[str, int]:
        """A signed token for ServiceAccount ``namespace/name`` (``uid``) and when it expires.

        ``pod``/``secret``/``node`` are ``{"name", "uid"}`` of the object the token is bound
        to (a pod-bound token may name the pod's node as well, for information).
        """
        now = int(time.time())
        info: dict[str, Any] = {"namespace": namespace, "serviceaccount": {"name": name, "uid": uid}}
        for kind, ref in (("pod", pod), ("secret", secret), ("node", node)):
            if ref:
                info[kind] = {k: v for k, v in (("name", ref.get("name")), ("uid", ref.get("uid"))) if v}
        if warn_after_seconds:
            info["warnafter"] = now + warn_after_seconds
        claims: dict[str, Any] = {
            "aud": list(audiences or self.api_audiences),
            "exp": now + expiration_seconds,
            "iat": now,
            "iss": self.issuer,
            "jti": str(uuid.uuid4()),
            "kubernetes.io": info,
            "nbf": now,
            "sub": f"system:serviceaccount:{namespace}:{name}",
        }
        token = jwt.encode({"alg": "ES256", "kid": self.kid}, claims, self.key)
        return token, now + expiration_seconds

    def authenticate(self, token: str, audiences: Sequence[str] | None = None) -> Authenticated | None:
        """The user ``token`` speaks for, checked against ``audiences`` (default: the API audiences).

        None: not a token of an issuer this server accepts (another authenticator may know
        it). Raises :class:`TokenRejected` for one of ours that does not authenticate.
        """
        unverified = _unverified_payload(token)
        if unverified is None or unverified.get("iss") not in self.issuers:
            return None
        claims = self._verified_claims(token)
        token_auds = _audiences(claims.get("aud")) or self.api_audiences
        wanted = list(audiences or self.api_audiences)
        matched = [a for a in token_auds if a in wanted]
        if not matched:
            raise TokenRejected(f"token audiences {_go_quoted(token_auds)} is invalid for the target audiences "
                                f"{_go_quoted(wanted)}")
        return Authenticated(self._validate(claims), matched)

    def _verified_claims(self, token: str) -> Obj:
        try:
            decoded = jwt.decode(token, self.key, algorithms=["ES256"])
        except (JoseError, ValueError):
            raise TokenRejected("invalid signature") from None
        if decoded.header.get("kid") not in (None, "", self.kid):
            raise TokenRejected("invalid signature, no keys found")
        claims = decoded.claims
        if claims.get("iss") not in self.issuers:
            raise TokenRejected(f'token issuer "{claims.get("iss")}" is invalid')
        return claims

    def _validate(self, claims: Obj) -> UserInfo:
        now = time.time()
        try:
            exp, nbf, iat = (float(claims.get(k) or 0) for k in ("exp", "nbf", "iat"))
        except (TypeError, ValueError):
            raise TokenRejected("service account token claims could not be validated due to unexpected "
                                "validation error") from None
        if exp and now - LEEWAY_SECONDS > exp:
            raise TokenRejected("service account token has expired")
        if nbf and now + LEEWAY_SECONDS < nbf:
            raise TokenRejected("service account token is not valid yet")
        if iat and now + LEEWAY_SECONDS < iat:
            raise TokenRejected("service account token claims could not be validated due to unexpected "
                                "validation error")
        if self._lookup is None:
            raise TokenRejected("service account token has been invalidated")
        info = claims.get("kubernetes.io")
        info = info if isinstance(info, dict) else {}
        ns = str(info.get("namespace") or "")
        sa_ref = _ref(info.get("serviceaccount")) or {"name": "", "uid": ""}
        cutoff = now - LEEWAY_SECONDS
        sa = self._lookup("serviceaccounts", ns, sa_ref["name"]) if ns and sa_ref["name"] else None
        if sa is None:
            raise TokenRejected(f'serviceaccounts "{sa_ref["name"]}" not found')
        if _deleted_before(sa, cutoff):
            raise TokenRejected(f"service account {ns}/{sa_ref['name']} has been deleted")
        if _uid(sa) != sa_ref["uid"]:
            raise TokenRejected(f"service account UID ({_uid(sa)}) does not match claim ({sa_ref['uid']})")
        extra: dict[str, list[str]] = {}
        secret_ref = _ref(info.get("secret"))
        if secret_ref is not None:
            self._check_bound("secrets", ns, secret_ref, cutoff, "secret UID ({}) does not match service "
                              "account secret ref claim ({})")
        pod_ref = _ref(info.get("pod"))
        if pod_ref is not None:
            self._check_bound("pods", ns, pod_ref, cutoff, "pod UID ({}) does not match service account pod "
                              "ref claim ({})")
            extra[EXTRA_POD_NAME], extra[EXTRA_POD_UID] = [pod_ref["name"]], [pod_ref["uid"]]
        node_ref = _ref(info.get("node"))
        if node_ref is not None:
            # A pod-bound token names its pod's node for information only; a node-bound one lives with the node.
            if pod_ref is None:
                self._check_bound("nodes", "", node_ref, cutoff, "node UID ({}) does not match service account "
                                  "node ref claim ({})")
            extra[EXTRA_NODE_NAME] = [node_ref["name"]]
            if node_ref["uid"]:
                extra[EXTRA_NODE_UID] = [node_ref["uid"]]
        if claims.get("jti"):
            extra[EXTRA_CREDENTIAL_ID] = [f"JTI={claims['jti']}"]
        return UserInfo(f"system:serviceaccount:{ns}:{sa_ref['name']}",
                        ("system:serviceaccounts", f"system:serviceaccounts:{ns}", "system:authenticated"),
                        uid=sa_ref["uid"], extra=extra)

    def _check_bound(self, resource: str, ns: str, ref: dict[str, str], cutoff: float, uid_message: str) -> None:
        assert self._lookup is not None
        obj = self._lookup(resource, ns, ref["name"]) if ref["name"] else None
        if obj is None or _deleted_before(obj, cutoff):
            raise TokenRejected("service account token has been invalidated")
        if _uid(obj) != ref["uid"]:
            raise TokenRejected(uid_message.format(_uid(obj), ref["uid"]))

