"""Adoption and release: a controller owns exactly the objects its selector matches (kube's ClaimObject).

An orphan that matches the selector is adopted (the owner becomes its controller); an owned
object that stops matching is released (the reference removed). Both are JSON patches that
test the object's uid and resourceVersion, so a concurrent change makes them fail instead
of overwriting.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable

import structlog

from k3p.client import ApiError, Client, Obj, Resource
from k3p.client.objects import controller_ref, is_deleting, labels_of, meta, owner_reference, uid_of
from k3p.selectors import LabelSelector

log = structlog.get_logger(__name__)


async def _patch_refs(client: Client, res: Resource, obj: Obj, refs: list[Obj], finalizers: list[str] | None) -> Obj:
    ops: list[Obj] = [
        {"op": "test", "path": "/metadata/uid", "value": uid_of(obj)},
        {"op": "test", "path": "/metadata/resourceVersion", "value": meta(obj).get("resourceVersion")},
        {"op": "add", "path": "/metadata/ownerReferences", "value": refs},
    ]
    if finalizers is not None:
        ops.append({"op": "add", "path": "/metadata/finalizers", "value": finalizers})
    return await client.patch(res, meta(obj)["name"], ops, meta(obj).get("namespace"), patch_type="json")


async def claim(client: Client, res: Resource, owner: Obj, selector: LabelSelector, candidates: Iterable[Obj], *,
                can_adopt: Callable[[], Awaitable[bool]] | None = None, adopt_finalizer: str | None = None
                ) -> list[Obj]:
    """The candidates ``owner`` controls after adopting matching orphans and releasing non-matching ones."""
    owner_uid = uid_of(owner)
    claimed: list[Obj] = []
    adopt_ok: bool | None = None
    for obj in candidates:
        ref = controller_ref(obj)
        matches = selector.matches(labels_of(obj))
        if ref is not None:
            if ref.get("uid") != owner_uid:
                continue
            if matches or is_deleting(owner):
                claimed.append(obj)
                continue
            refs = [r for r in meta(obj).get("ownerReferences") or [] if r.get("uid") != owner_uid]
            try:
                await _patch_refs(client, res, obj, refs, None)
                log.info("released", kind=res.kind, namespace=meta(obj).get("namespace"), name=meta(obj)["name"],
                         owner=meta(owner)["name"])
            except ApiError as e:
                if not (e.not_found or e.status in (409, 422)):
                    raise
            continue
        if not matches or is_deleting(owner) or is_deleting(obj):
            continue
        if adopt_ok is None:
            adopt_ok = await can_adopt() if can_adopt else True
        if not adopt_ok:
            continue
        refs = [*(meta(obj).get("ownerReferences") or []), owner_reference(owner)]
        finalizers = None
        if adopt_finalizer and adopt_finalizer not in (meta(obj).get("finalizers") or []):
            finalizers = [*(meta(obj).get("finalizers") or []), adopt_finalizer]
        try:
            claimed.append(await _patch_refs(client, res, obj, refs, finalizers))
            log.info("adopted", kind=res.kind, namespace=meta(obj).get("namespace"), name=meta(obj)["name"],
                     owner=meta(owner)["name"])
        except ApiError as e:
            if not (e.not_found or e.status in (409, 422)):
                raise
    return claimed


def recheck_owner(client: Client, res: Resource, owner: Obj) -> Callable[[], Awaitable[bool]]:
    """An uncached read confirming the owner still exists (same uid) and is not being deleted."""

    async def check() -> bool:
        try:
            fresh = await client.get(res, meta(owner)["name"], meta(owner).get("namespace"))
        except ApiError as e:
            if e.not_found:
                return False
            raise
        return uid_of(fresh) == uid_of(owner) and not is_deleting(fresh)

    return check
