"""Turn an HTTP request into the attributes that authorization decides on.

The rules are the ones of the Kubernetes API server's request-info parsing, so that a
RBAC rule written for a real cluster means the same thing here:

- ``/api/{version}/...`` and ``/apis/{group}/{version}/...`` with at least a resource
  after the version are resource requests; everything else (``/version``, ``/healthz``,
  ``/api``, ``/apis/apps/v1``, ``/openapi/v3``...) is a non-resource request whose verb
  is the lower-cased HTTP method.
- ``.../namespaces/{ns}/{resource}/{name}/{subresource}`` and the cluster-scoped
  ``.../{resource}/{name}/{subresource}``; ``namespaces/{ns}/status`` and
  ``namespaces/{ns}/finalize`` are subresources of the namespace itself.
- Verbs: POST create, GET/HEAD get, PUT update, PATCH patch, DELETE delete; a GET
  without a name is list, or watch when ``watch`` is set to anything but ``0``/``false``;
  a DELETE without a name is deletecollection; the legacy ``/watch/`` and ``/proxy/``
  path prefixes set the verb to watch and proxy.
- A list or watch whose field selector pins ``metadata.name`` is checked against that
  name, so a ``resourceNames`` rule can allow ``kubectl get pod x --watch``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from k3p.selectors import SelectorError, parse_field_selector

# Path prefixes that carry resources; "api" is the one without an API group segment.
_API_PREFIXES = frozenset({"api", "apis"})
_GROUPLESS_API_PREFIXES = frozenset({"api"})

# Path segments that act as a verb rather than a resource.
_SPECIAL_VERBS = frozenset({"proxy", "watch"})
# After these special verbs the rest of the path is not parsed for a subresource.
_SPECIAL_VERBS_NO_SUBRESOURCES = frozenset({"proxy"})
# Tell a subresource of a namespace apart from a resource inside the namespace.
_NAMESPACE_SUBRESOURCES = frozenset({"status", "finalize"})

_METHOD_VERBS = {
    "POST": "create",
    "GET": "get",
    "HEAD": "get",
    "PUT": "update",
    "PATCH": "patch",
    "DELETE": "delete",
}


class RequestInfoError(ValueError):
    """The path names a special verb (``/watch``, ``/proxy``) but no resource after it.

    Kubernetes answers such a request with an internal error (500).
    """


@dataclass(frozen=True)
class UserInfo:
    """An authenticated (or anonymous) user as the authenticator reports it."""

    name: str
    groups: tuple[str, ...] = ()
    uid: str = ""
    # Not part of the hash: a dict is unhashable and two users are told apart by the rest.
    extra: dict[str, list[str]] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class RequestAttributes:
    """What a request asks to do, in the terms authorization rules are written in."""

    user: UserInfo
    verb: str
    api_group: str = ""
    api_version: str = ""
    resource: str = ""
    subresource: str = ""
    namespace: str = ""
    name: str = ""
    path: str = ""
    is_resource_request: bool = False


def request_attributes(method: str, path: str, query: Mapping[str, str], user: UserInfo) -> RequestAttributes:
    """Parse ``method`` + URL ``path`` + ``query`` into the request's attributes for ``user``.

    ``path`` is the URL path without the query string; ``query`` holds the decoded query
    parameters (one value per key). Raises :class:`RequestInfoError` for a special-verb
    path without a resource, e.g. ``/api/v1/watch``.
    """
    path = path or "/"
    non_resource = RequestAttributes(user=user, verb=method.lower(), path=path)

    parts = _split_path(path)
    if len(parts) < 3 or parts[0] not in _API_PREFIXES:
        return non_resource
    prefix, parts = parts[0], parts[1:]

    api_group = ""
    if prefix not in _GROUPLESS_API_PREFIXES:
        # /apis/{group}/{version} alone is discovery, not a resource.
        if len(parts) < 3:
            return non_resource
        api_group, parts = parts[0], parts[1:]

    api_version, parts = parts[0], parts[1:]

    if parts[0] in _SPECIAL_VERBS:
        if len(parts) < 2:
            raise RequestInfoError(f"unable to determine kind and namespace from url {path}")
        verb, parts = parts[0], parts[1:]
    else:
        verb = _METHOD_VERBS.get(method.upper(), "")

    namespace = ""
    if parts[0] == "namespaces" and len(parts) > 1:
        namespace = parts[1]
        # /namespaces/{ns}/{resource}/...: continue relative to the resource, unless the
        # segment is a subresource of the namespace object itself.
        if len(parts) > 2 and parts[2] not in _NAMESPACE_SUBRESOURCES:
            parts = parts[2:]

    resource = parts[0]
    name = parts[1] if len(parts) >= 2 else ""
    subresource = parts[2] if len(parts) >= 3 and verb not in _SPECIAL_VERBS_NO_SUBRESOURCES else ""

    if not name and verb == "get":
        verb = "watch" if _query_bool(query.get("watch")) else "list"
        name = _name_from_field_selector(query.get("fieldSelector", ""))
    if not name and verb == "delete":
        verb = "deletecollection"

    return RequestAttributes(
        user=user,
        verb=verb,
        api_group=api_group,
        api_version=api_version,
        resource=resource,
        subresource=subresource,
        namespace=namespace,
        name=name,
        path=path,
        is_resource_request=True,
    )


def _split_path(path: str) -> list[str]:
    trimmed = path.strip("/")
    return trimmed.split("/") if trimmed else []


def _query_bool(value: str | None) -> bool:
    """Kubernetes' query booleans: absent, ``0`` and ``false`` (any case) are false, all else true."""
    if value is None:
        return False
    return not (value == "0" or value.lower() == "false")


def _name_from_field_selector(selector: str) -> str:
    """The name a field selector pins with ``metadata.name=x`` (or ``==x``), else ``""``."""
    if not selector:
        return ""
    try:
        name = parse_field_selector(selector).requires_exact_match("metadata.name")
    except SelectorError:
        # Kubernetes falls back to no name when the list options do not parse.
        return ""
    if name is None or not _is_valid_path_segment_name(name):
        return ""
    return name


def _is_valid_path_segment_name(name: str) -> bool:
    return name not in (".", "..") and "/" not in name and "%" not in name
