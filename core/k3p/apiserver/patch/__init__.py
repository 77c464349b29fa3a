"""Patch engines of the API server: JSON patch, JSON merge patch, strategic merge patch and
server-side apply with ``managedFields``. Pure functions on JSON-like dicts; the HTTP layer
decides which one a request asks for and turns their errors into ``Status`` answers."""

from k3p.apiserver.patch.apply import (
    ApplyConflictError,
    ApplyError,
    Conflict,
    server_side_apply,
    update_managed_fields,
)
from k3p.apiserver.patch.errors import PatchError
from k3p.apiserver.patch.json_patch import apply_json_patch
from k3p.apiserver.patch.merge_patch import apply_merge_patch
from k3p.apiserver.patch.strategic import apply_strategic_merge_patch

__all__ = [
    "ApplyConflictError",
    "ApplyError",
    "Conflict",
    "PatchError",
    "apply_json_patch",
    "apply_merge_patch",
    "apply_strategic_merge_patch",
    "server_side_apply",
    "update_managed_fields",
]
