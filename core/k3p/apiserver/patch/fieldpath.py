"""Field paths and field sets in the ``FieldsV1`` format of ``metadata.managedFields``.

A path is a tuple of path elements; an element is a ``(kind, payload)`` pair:

- ``("f", name)``: a field of an object (``f:name`` in FieldsV1, ``.name`` in text);
- ``("k", json)``: the item of a list-map identified by its key fields, ``json`` being the
  canonical JSON of those fields (``k:{"name":"nginx"}``, ``[name="nginx"]``);
- ``("v", json)``: the item of a set-list with that value (``v:"a"``, ``[="a"]``);
- ``("i", n)``: a list index (``i:0``); structured-merge-diff reads it, FieldsV1 writers
  in Kubernetes never produce it.

A field set is a plain ``set`` of paths. In FieldsV1 a path is written as nested objects,
one level per element; ``{}`` marks a path in the set, and ``".": {}`` marks a path that
is in the set and also has longer paths below it. Objects are written with their keys in
the order structured-merge-diff uses (fields, then keys, then values, then indexes), so
the output is stable and matches the API server's byte for byte for the usual values.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Iterable
from typing import Any

PathElement = tuple[str, Any]
Path = tuple[PathElement, ...]

_KIND_RANK = {"f": 0, "k": 1, "v": 2, "i": 3}


def canonical_json(value: Any) -> str:
    """Compact JSON with sorted keys, escaped like Go's encoding/json.

    Integral floats are written as integers so that ``80`` and ``80.0`` name the same item.
    """
    text = json.dumps(_normalize_numbers(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return (
        text.replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026")
        .replace("\u2028", "\\u2028")
        .replace("\u2029", "\\u2029")
    )


def _normalize_numbers(value: Any) -> Any:
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _normalize_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_normalize_numbers(v) for v in value]
    return value


def field(name: str) -> PathElement:
    return ("f", name)


def key(fields: dict[str, Any]) -> PathElement:
    """The element of a list-map item with these key field values."""
    return ("k", canonical_json(fields))


def value(item: Any) -> PathElement:
    """The element of a set-list item."""
    return ("v", canonical_json(item))


def index(i: int) -> PathElement:
    return ("i", i)


def make_path(*parts: str | PathElement) -> Path:
    """A path from field names and elements: ``make_path("spec", "replicas")``."""
    return tuple(field(p) if isinstance(p, str) else p for p in parts)


def serialize_element(pe: PathElement) -> str:
    kind, payload = pe
    return f"{kind}:{payload}"


def parse_element(text: str) -> PathElement | None:
    """A FieldsV1 key as an element; None for an element type this version does not know."""
    if len(text) < 2 or text[1] != ":":
        raise ValueError(f"invalid path element {text!r}: missing colon")
    kind, payload = text[0], text[2:]
    if kind == "f":
        return ("f", payload)
    if kind == "k":
        fields = json.loads(payload)
        if not isinstance(fields, dict):
            raise ValueError(f"invalid key element {text!r}")
        return key(fields)
    if kind == "v":
        return value(json.loads(payload))
    if kind == "i":
        return ("i", int(payload))
    return None


def _go_string(item: Any) -> str:
    """A value as structured-merge-diff prints it inside a path."""
    if item is None:
        return "null"
    if isinstance(item, bool):
        return "true" if item else "false"
    if isinstance(item, str):
        return json.dumps(item, ensure_ascii=False)
    if isinstance(item, int | float):
        return str(_normalize_numbers(item))
    if isinstance(item, list):
        return "[" + ",".join(_go_string(v) for v in item) + "]"
    if isinstance(item, dict):
        return "".join(f"{k}={_go_string(v)}" for k, v in item.items())
    return str(item)


def element_string(pe: PathElement) -> str:
    kind, payload = pe
    if kind == "f":
        return "." + payload
    if kind == "k":
        fields = json.loads(payload)
        return "[" + ",".join(f"{k}={_go_string(v)}" for k, v in fields.items()) + "]"
    if kind == "v":
        return "[=" + _go_string(json.loads(payload)) + "]"
    return f"[{payload}]"


def path_string(path: Path) -> str:
    """A path as the API server prints it in conflicts, e.g. ``.spec.containers[name="a"].image``."""
    return "".join(element_string(pe) for pe in path)


# Ordering, as structured-merge-diff sorts elements (and thus FieldsV1 keys).


def _value_rank(item: Any) -> int:
    if isinstance(item, bool):
        return 2
    if isinstance(item, int | float):
        return 0
    if isinstance(item, str):
        return 1
    if isinstance(item, list):
        return 3
    if isinstance(item, dict):
        return 4
    return 5


def _cmp(a: Any, b: Any) -> int:
    return (a > b) - (a < b)


def compare_values(a: Any, b: Any) -> int:
    ra, rb = _value_rank(a), _value_rank(b)
    if ra != rb:
        return _cmp(ra, rb)
    if ra in (0, 1, 2):
        return _cmp(a, b)
    if ra == 3:
        for x, y in zip(a, b, strict=False):
            if c := compare_values(x, y):
                return c
        return _cmp(len(a), len(b))
    if ra == 4:
        return compare_field_lists(sorted(a.items()), sorted(b.items()))
    return 0


def compare_field_lists(a: list[tuple[str, Any]], b: list[tuple[str, Any]]) -> int:
    for (ka, va), (kb, vb) in zip(a, b, strict=False):
        if c := _cmp(ka, kb):
            return c
        if c := compare_values(va, vb):
            return c
    return _cmp(len(a), len(b))


@functools.lru_cache(maxsize=4096)
def _decoded(payload: str) -> Any:
    return json.loads(payload)


def compare_elements(a: PathElement, b: PathElement) -> int:
    if a[0] != b[0]:
        return _cmp(_KIND_RANK[a[0]], _KIND_RANK[b[0]])
    kind = a[0]
    if kind in ("f", "i"):
        return _cmp(a[1], b[1])
    if kind == "k":
        return compare_field_lists(sorted(_decoded(a[1]).items()), sorted(_decoded(b[1]).items()))
    return compare_values(_decoded(a[1]), _decoded(b[1]))


def compare_paths(a: Path, b: Path) -> int:
    for x, y in zip(a, b, strict=False):
        if c := compare_elements(x, y):
            return c
    return _cmp(len(a), len(b))


element_sort_key = functools.cmp_to_key(compare_elements)
path_sort_key = functools.cmp_to_key(compare_paths)


def sorted_paths(paths: Iterable[Path]) -> list[Path]:
    return sorted(paths, key=path_sort_key)


# FieldsV1


def from_fields_v1(fields: dict[str, Any]) -> set[Path]:
    """The set of paths a FieldsV1 object describes. Raises ValueError when malformed."""
    if not isinstance(fields, dict):
        raise ValueError("fieldsV1 must be a JSON object")
    out: set[Path] = set()
    _read(fields, (), out)
    return out


def _read(node: dict[str, Any], prefix: Path, out: set[Path]) -> None:
    for name, child in node.items():
        if name == ".":
            continue
        pe = parse_element(name)
        if pe is None:
            continue
        if not isinstance(child, dict):
            raise ValueError(f"invalid fieldsV1 entry {name!r}: expected an object")
        path = (*prefix, pe)
        grandchildren = [k for k in child if k != "."]
        if not grandchildren or "." in child:
            out.add(path)
        _read(child, path, out)


def to_fields_v1(paths: Iterable[Path]) -> dict[str, Any]:
    """The FieldsV1 object of a set of paths."""
    tree: dict[PathElement, Any] = {}
    members: set[Path] = set()
    for path in paths:
        if not path:
            continue
        members.add(path)
        node = tree
        for pe in path:
            node = node.setdefault(pe, {})
    return _emit(tree, (), members)


def _emit(tree: dict[PathElement, Any], prefix: Path, members: set[Path]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pe in sorted(tree, key=element_sort_key):
        path = (*prefix, pe)
        children = tree[pe]
        if not children:
            out[serialize_element(pe)] = {}
            continue
        body = {".": {}} if path in members else {}
        body.update(_emit(children, path, members))
        out[serialize_element(pe)] = body
    return out


# Set helpers


def with_prefixes(paths: Iterable[Path]) -> set[Path]:
    """Every path and every non-empty prefix of it."""
    out: set[Path] = set()
    for path in paths:
        for i in range(1, len(path) + 1):
            out.add(path[:i])
    return out


def recursive_difference(paths: set[Path], removed: Iterable[Path]) -> set[Path]:
    """``paths`` without every path that is in ``removed`` or lies below one of them."""
    removed = set(removed)
    if not removed:
        return set(paths)
    return {p for p in paths if not any(p[:i] in removed for i in range(1, len(p) + 1))}
