"""What an admission hook is told about a write, in the terms of Kubernetes' admission attributes.

A hook is a callable taking one :class:`AdmissionAttributes` (sync or async). It may change
``object`` in place (mutating admission) or raise an :class:`~k3p.apiserver.errors.APIError`
to refuse the write (validating admission). Hooks run after defaulting and before storage,
for creates, updates (subresources such as ``status`` included) and deletes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from k3p.apiserver.errors import APIError
from k3p.apiserver.registry import ResourceType
from k3p.apiserver.request_info import RequestAttributes, UserInfo

Obj = dict[str, Any]

CREATE = "CREATE"
UPDATE = "UPDATE"
DELETE = "DELETE"


@dataclass
class AdmissionAttributes:
    """One write as admission sees it.

    ``object`` is the object to be stored (None for a delete); ``old_object`` the stored one
    (None for a create). ``user`` is the effective requester (after impersonation), None for
    the server's own writes. ``name`` is the object's name, or the request's for a delete.
    """

    operation: str
    resource_type: ResourceType
    object: Obj | None
    old_object: Obj | None = None
    subresource: str = ""
    namespace: str = ""
    name: str = ""
    user: UserInfo | None = None
    dry_run: bool = False

    @classmethod
    def build(cls, operation: str, rt: ResourceType, obj: Obj | None, old: Obj | None,
              request: RequestAttributes | None = None, dry_run: bool = False) -> AdmissionAttributes:
        """The attributes of a write of ``obj`` over ``old`` made by ``request`` (None: by the server)."""
        meta = (obj or old or {}).get("metadata") or {}
        namespace = (request.namespace if request else "") or meta.get("namespace") or ""
        name = (request.name if request else "") or meta.get("name") or ""
        return cls(operation, rt, obj, old, request.subresource if request else "", namespace, name,
                   request.user if request else None, dry_run)

    @property
    def group_resource(self) -> tuple[str, str]:
        """``(group, resource)`` of the written type, e.g. ``("", "pods")``."""
        return self.resource_type.group, self.resource_type.resource


#: a hook that sees (and may change or refuse) every write before it is stored
Admission = Callable[[AdmissionAttributes], Any]


def forbidden(attrs: AdmissionAttributes, why: str) -> APIError:
    """Kubernetes' admission refusal: ``<resource> "<name>" is forbidden: <why>`` (403).

    As upstream, the name is the proposed object's (its generateName when it has none yet),
    or ``Unknown`` when the write carries no object (a delete).
    """
    rt = attrs.resource_type
    meta = (attrs.object or {}).get("metadata") or {}
    name = meta.get("name") or meta.get("generateName") or "Unknown"
    qualified = f"{rt.resource}.{rt.group}" if rt.group else rt.resource
    return APIError(403, f'{qualified} "{name}" is forbidden: {why}', "Forbidden",
                    {"name": name, "group": rt.group, "kind": rt.resource})
