"""Writing status through the status subresource without fighting other writers over resourceVersion."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from k3p.client import Client, Obj, Resource
from k3p.client.objects import meta


def omit_zero(status: Mapping[str, Any], keep: tuple[str, ...] = ()) -> dict[str, Any]:
    """Drop zero and empty fields, as Go's ``omitempty`` leaves them out of kube's JSON."""
    return {k: v for k, v in status.items() if k in keep or v not in (0, None, "", [], {})}


def merge_patch_for(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> dict[str, Any]:
    """A top-level merge patch turning ``old`` into ``new`` (removed keys become null)."""
    patch: dict[str, Any] = {k: v for k, v in new.items() if (old or {}).get(k) != v}
    for k in old or {}:
        if k not in new:
            patch[k] = None
    return patch


async def write_status(client: Client, res: Resource, obj: Obj, new_status: Mapping[str, Any]) -> Obj | None:
    """Patch ``obj``'s status to ``new_status`` if it differs; the stored object, or None when unchanged."""
    patch = merge_patch_for(obj.get("status") or {}, new_status)
    if not patch:
        return None
    return await client.patch(res, meta(obj)["name"], {"status": patch}, meta(obj).get("namespace"),
                              subresource="status")
