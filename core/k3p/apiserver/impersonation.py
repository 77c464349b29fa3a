"""User impersonation: ``Impersonate-User``, ``-Group``, ``-Uid`` and ``-Extra-<key>`` headers.

As Kubernetes' impersonation filter: each part asked for is authorized for the real
requester with the ``impersonate`` verb on ``users``, ``groups`` or ``serviceaccounts``
(core group; a ``system:serviceaccount:NS:NAME`` user is the service account NAME in NS),
``uids`` or ``userextras/<key>`` (``authentication.k8s.io``); one refusal refuses the whole
request. Otherwise the request goes on as the impersonated user, whose groups are the ones
asked for (a service account without any gets ``system:serviceaccounts`` and
``system:serviceaccounts:NS``) plus ``system:authenticated`` unless
``system:authenticated`` or ``system:unauthenticated`` is among them (``system:anonymous``
gets ``system:unauthenticated`` instead).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import unquote

from k3p.apiserver.bootstrap_policy import ALL_AUTHENTICATED, ALL_SERVICE_ACCOUNTS, ALL_UNAUTHENTICATED, ANONYMOUS_USER
from k3p.apiserver.errors import APIError
from k3p.apiserver.rbac import SERVICE_ACCOUNT_USERNAME_PREFIX, Decision, forbidden_status_message
from k3p.apiserver.request_info import RequestAttributes, UserInfo

USER_HEADER = "impersonate-user"
GROUP_HEADER = "impersonate-group"
UID_HEADER = "impersonate-uid"
EXTRA_HEADER_PREFIX = "impersonate-extra-"
AUTHENTICATION_GROUP = "authentication.k8s.io"

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")


def split_service_account(username: str) -> tuple[str, str] | None:
    """``(namespace, name)`` of a ``system:serviceaccount:NS:NAME`` user with valid names, else None."""
    if not username.startswith(SERVICE_ACCOUNT_USERNAME_PREFIX):
        return None
    parts = username[len(SERVICE_ACCOUNT_USERNAME_PREFIX):].split(":")
    if len(parts) != 2:
        return None
    namespace, name = parts
    if len(namespace) > 63 or not _DNS_LABEL.match(namespace) or len(name) > 253 or not _DNS_SUBDOMAIN.match(name):
        return None
    return namespace, name


def _extra_key(encoded: str) -> str:
    """An extra key from its header name: lower case, %-escapes decoded (kept as sent when malformed)."""
    key = encoded.lower()
    return key if _BAD_ESCAPE.search(key) else unquote(key)


@dataclass(frozen=True)
class _Part:
    """One thing asked to be impersonated, as the attributes of its ``impersonate`` check."""

    resource: str
    name: str
    api_group: str = ""
    namespace: str = ""
    subresource: str = ""

    def describe(self) -> str:
        kind = {"serviceaccounts": "ServiceAccount", "users": "User", "groups": "Group", "userextras": "UserExtra",
                "uids": "UID"}[self.resource]
        return f"{{{kind} {self.namespace} {self.name} {self.subresource}}}"


def requested(headers: Iterable[tuple[str, str]]) -> list[_Part]:
    """The impersonation asked for by ``headers`` (lower-case names), in the order kube checks it.

    Raises APIError (500, as kube answers) for groups, extras or a uid without a user.
    """
    pairs = [(k.lower(), v) for k, v in headers]
    parts: list[_Part] = []
    user = next((v for k, v in pairs if k == USER_HEADER and v), "")
    if user:
        sa = split_service_account(user)
        parts.append(_Part("serviceaccounts", sa[1], namespace=sa[0]) if sa else _Part("users", user))
    parts.extend(_Part("groups", v) for k, v in pairs if k == GROUP_HEADER)
    for k, v in pairs:
        if k.startswith(EXTRA_HEADER_PREFIX):
            parts.append(_Part("userextras", v, AUTHENTICATION_GROUP,
                               subresource=_extra_key(k[len(EXTRA_HEADER_PREFIX):])))
    uid = next((v for k, v in pairs if k == UID_HEADER and v), "")
    if uid:
        parts.append(_Part("uids", uid, AUTHENTICATION_GROUP))
    if parts and not user:
        listed = " ".join(p.describe() for p in parts)
        raise APIError(500, f"Internal error occurred: requested [{listed}] without impersonating a user")
    return parts


def impersonate(headers: Iterable[tuple[str, str]], requester: UserInfo,
                authorize: Callable[[RequestAttributes], Decision]) -> UserInfo:
    """The user the request acts as: ``requester`` itself without impersonation headers.

    Raises APIError 403 (kube's Forbidden Status) when any part is not allowed.
    """
    parts = requested(headers)
    if not parts:
        return requester
    groups_given = any(p.resource == "groups" for p in parts)
    name, uid = "", ""
    groups: list[str] = []
    extra: dict[str, list[str]] = {}
    for part in parts:
        attrs = RequestAttributes(user=requester, verb="impersonate", api_group=part.api_group,
                                  resource=part.resource, subresource=part.subresource,
                                  namespace=part.namespace, name=part.name, is_resource_request=True)
        decision = authorize(attrs)
        if not decision.allowed:
            details = {"name": part.name, "kind": part.resource, **({"group": part.api_group} if part.api_group
                                                                     else {})}
            raise APIError(403, forbidden_status_message(attrs, decision.reason), "Forbidden", details)
        if part.resource == "serviceaccounts":
            name = f"{SERVICE_ACCOUNT_USERNAME_PREFIX}{part.namespace}:{part.name}"
            if not groups_given:
                groups = [ALL_SERVICE_ACCOUNTS, f"{ALL_SERVICE_ACCOUNTS}:{part.namespace}"]
        elif part.resource == "users":
            name = part.name
        elif part.resource == "groups":
            groups.append(part.name)
        elif part.resource == "userextras":
            extra.setdefault(part.subresource, []).append(part.name)
        else:
            uid = part.name
    if name != ANONYMOUS_USER:
        if ALL_AUTHENTICATED not in groups and ALL_UNAUTHENTICATED not in groups:
            groups.append(ALL_AUTHENTICATED)
    elif ALL_UNAUTHENTICATED not in groups:
        groups.append(ALL_UNAUTHENTICATED)
    return UserInfo(name, tuple(groups), uid=uid, extra=extra)
