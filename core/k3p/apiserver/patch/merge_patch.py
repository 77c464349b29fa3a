"""RFC 7386 JSON merge patch (``application/merge-patch+json``).

Objects merge key by key, ``null`` deletes a key, anything else (lists included) replaces
the target value. A patch that is not a JSON object cannot describe an API object and is
refused with 400, as kube-apiserver does.
"""

from __future__ import annotations

import copy
from typing import Any

from k3p.apiserver.patch.errors import PatchError


def apply_merge_patch(obj: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """Merge ``patch`` into a copy of ``obj``; the input is never changed."""
    if not isinstance(patch, dict):
        raise PatchError("Invalid JSON Patch", 400)
    return _merge(obj if isinstance(obj, dict) else {}, patch)


def _merge(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = _merge(result.get(key), value)
    # Keys the patch leaves alone still share structure with the input; copy them so the
    # caller may mutate the result freely.
    for key in result.keys() - patch.keys():
        result[key] = copy.deepcopy(result[key])
    return result
