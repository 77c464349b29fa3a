"""RFC 6902 JSON patch (``application/json-patch+json``), as kube-apiserver applies it.

Operations run one at a time through the ``jsonpatch`` library on a private copy of the
object. Before each one the target is checked here, so that a failure reads like the
API server's own (``testing value /spec/replicas failed: test failed``).

Status codes: a patch that is not a list of well-formed operations is a 400 (kube-apiserver
answers 422 for an unknown ``op`` or a missing member, which it only notices while
applying; a malformed request is reported as such here), an operation that does not apply
to the object is a 422, more than 10,000 operations is a 413.

Two behaviours of the JSON patch library kube-apiserver uses (evanphx/json-patch v4) are
kept on purpose: ``replace`` of a missing key of an existing object adds the key, and
``test`` of a missing key against ``null`` passes.
"""

from __future__ import annotations

import copy
from typing import Any

import jsonpatch
import jsonpointer

from k3p.apiserver.patch.errors import PatchError

MAX_OPERATIONS = 10_000

_NEEDS_VALUE = frozenset({"add", "replace", "test"})
_NEEDS_FROM = frozenset({"move", "copy"})
_KNOWN = _NEEDS_VALUE | _NEEDS_FROM | {"remove"}
_MISSING = object()


def apply_json_patch(obj: dict[str, Any], ops: list[Any]) -> dict[str, Any]:
    """Apply the operations in order to a copy of ``obj``; the input is never changed."""
    if not isinstance(ops, list):
        raise PatchError(
            f"json: cannot unmarshal {_json_kind(ops)} into Go value of type jsonpatch.Patch", 400
        )
    if len(ops) > MAX_OPERATIONS:
        raise PatchError(
            f"The allowed maximum operations in a JSON patch is {MAX_OPERATIONS}, got {len(ops)}", 413
        )
    for op in ops:
        _validate(op)
    doc: Any = copy.deepcopy(obj)
    for op in ops:
        doc = _apply_one(doc, op)
    if not isinstance(doc, dict):
        raise PatchError(f"the patched object must be a JSON object, got {_json_kind(doc)}", 422)
    return doc


def _json_kind(value: Any) -> str:
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "bool"
    if value is None:
        return "null"
    return "number"


def _validate(op: Any) -> None:
    if not isinstance(op, dict):
        raise PatchError(
            f"json: cannot unmarshal {_json_kind(op)} into Go value of type jsonpatch.Operation", 400
        )
    kind = op.get("op")
    if not isinstance(kind, str):
        raise PatchError(f"operation has no valid 'op' member: {op}", 400)
    if kind not in _KNOWN:
        raise PatchError(f"Unexpected kind: {kind}", 400)
    members = ["path"] + (["from"] if kind in _NEEDS_FROM else [])
    for member in members:
        pointer = op.get(member)
        if not isinstance(pointer, str):
            raise PatchError(f"{kind} operation missing {member} field", 400)
        if pointer and not pointer.startswith("/"):
            raise PatchError(f"{kind} operation has an invalid {member} {pointer!r}: it must start with /", 400)
    if kind in _NEEDS_VALUE and "value" not in op:
        raise PatchError(f"{kind} operation missing value field", 400)


def _parts(pointer: str) -> list[str]:
    return jsonpointer.JsonPointer(pointer).parts


def _container(doc: Any, parts: list[str]) -> Any:
    """The object or array that holds the last part of a pointer, or _MISSING."""
    node = doc
    for part in parts[:-1]:
        if isinstance(node, dict):
            if part not in node:
                return _MISSING
            node = node[part]
        elif isinstance(node, list):
            index = _index(part)
            if index is None or not 0 <= index < len(node):
                return _MISSING
            node = node[index]
        else:
            return _MISSING
    return node if isinstance(node, dict | list) else _MISSING


def _index(part: str) -> int | None:
    if part.isdigit() and (part == "0" or not part.startswith("0")):
        return int(part)
    return None


def _invalid_index(kind: str, path: str, part: str) -> PatchError:
    return PatchError(
        f"error in {kind} for path: '{path}': Unable to access invalid index: {part}: invalid index referenced"
    )


def _apply_one(doc: Any, op: dict[str, Any]) -> Any:
    kind = op["op"]
    path = op["path"]
    if kind == "remove":
        _check_remove(doc, path)
    elif kind == "replace" and path:
        parent, key = _target(doc, path)
        if parent is _MISSING:
            raise PatchError(f"replace operation does not apply: doc is missing path: {path}: missing value")
        if isinstance(parent, dict) and key not in parent:
            op = {"op": "add", "path": path, "value": op["value"]}
        elif isinstance(parent, list) and (_index(key) is None or _index(key) >= len(parent)):
            raise _invalid_index("remove", path, key)
    elif kind == "add" and path:
        parent, key = _target(doc, path)
        if parent is _MISSING:
            raise PatchError(f'add operation does not apply: doc is missing path: "{path}": missing value')
        if isinstance(parent, list) and key != "-" and (_index(key) is None or _index(key) > len(parent)):
            raise _invalid_index("add", path, key)
    elif kind == "test" and path:
        parent, key = _target(doc, path)
        if parent is _MISSING:
            raise PatchError(f"test operation does not apply: is missing path: {path}: missing value")
        if isinstance(parent, dict) and key not in parent:
            if op["value"] is None:
                return doc
            raise PatchError(f"testing value {path} failed: test failed")
    elif kind in _NEEDS_FROM:
        source = op["from"]
        parent, key = _target(doc, source)
        missing = parent is _MISSING or (
            isinstance(parent, dict) and key not in parent
        ) or (isinstance(parent, list) and (_index(key) is None or _index(key) >= len(parent)))
        if missing:
            raise PatchError(f"{kind} operation does not apply: doc is missing from path: {source}: missing value")
        if path and _target(doc, path)[0] is _MISSING:
            raise PatchError(
                f"{kind} operation does not apply: doc is missing destination path: {path}: missing value"
            )
    try:
        return jsonpatch.JsonPatch([op]).apply(doc, in_place=True)
    except jsonpatch.JsonPatchTestFailed as exc:
        raise PatchError(f"testing value {path} failed: test failed") from exc
    except jsonpatch.InvalidJsonPatch as exc:
        raise PatchError(str(exc), 400) from exc
    except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as exc:
        raise PatchError(f"error in {kind} for path: '{path}': {exc}") from exc


def _target(doc: Any, pointer: str) -> tuple[Any, str]:
    try:
        parts = _parts(pointer)
    except jsonpointer.JsonPointerException as exc:
        raise PatchError(f"invalid path {pointer!r}: {exc}", 400) from exc
    if not parts:
        return _MISSING, ""
    return _container(doc, parts), parts[-1]


def _check_remove(doc: Any, path: str) -> None:
    parent, key = _target(doc, path)
    if parent is _MISSING:
        raise PatchError(f'remove operation does not apply: doc is missing path: "{path}": missing value')
    if isinstance(parent, dict) and key not in parent:
        raise PatchError(
            f"error in remove for path: '{path}': Unable to remove nonexistent key: {key}: missing value"
        )
    if isinstance(parent, list) and (_index(key) is None or _index(key) >= len(parent)):
        raise _invalid_index("remove", path, key)
