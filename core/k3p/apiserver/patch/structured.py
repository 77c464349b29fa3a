"""Schema-aware operations on JSON values for server-side apply: the field set of a value,
the comparison of two values, the merge of an applied configuration into a live object,
and the removal of fields.

The semantics are those of structured-merge-diff, which kube-apiserver uses:

- an object merges field by field unless it is ``x-kubernetes-map-type: atomic``;
- a list is atomic (replaced and owned as a whole) unless ``x-kubernetes-list-type`` says
  ``set`` (items are their own values) or ``map`` (items are identified by their
  ``x-kubernetes-list-map-keys``); lists with patch strategy ``merge`` and no list type
  count as maps keyed by the merge key (see :func:`typeinfo.list_info`);
- a value without schema is plain JSON: objects are granular, lists atomic;
- an object's ``metadata`` is always read as ``ObjectMeta`` (CRD schemas leave it open).

For updates kube-apiserver compares a created Kubernetes object with the Go zero value
of its type, in which struct fields and required fields already exist; so creating them
does not make their node itself owned (no ``".": {}``), only what they contain. The JSON
schemas do not say which struct fields are pointers (absent from the zero value), so
those are treated like the others here: a cosmetic difference in ``managedFields``.
Custom resources (inline schemas) are compared with an empty object, as upstream.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import k3p.apiserver.patch.fieldpath as fieldpath
import k3p.apiserver.patch.typeinfo as typeinfo
from k3p.apiserver.patch.fieldpath import Path, PathElement
from k3p.apiserver.patch.typeinfo import Schema

OBJECT_META = {"$ref": "#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"}


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


MISSING: Any = _Missing()


class StructureError(ValueError):
    """A value that does not fit its schema's list semantics (e.g. duplicate map keys)."""

    def __init__(self, path: Path, message: str) -> None:
        where = fieldpath.path_string(path) or "."
        super().__init__(f"{where}: {message}")
        self.path = path


def object_schema(node: Schema) -> dict[str, Any]:
    """The schema of a whole API object, with ``metadata`` read as ``ObjectMeta``."""
    resolved = typeinfo.resolve(node) or {}
    props = dict(resolved.get("properties") or {})
    meta = props.get("metadata")
    if meta is None or not (typeinfo.resolve(meta) or {}).get("properties"):
        props["metadata"] = OBJECT_META
    return {**resolved, "properties": props}


def json_equal(a: Any, b: Any) -> bool:
    """Deep JSON equality: booleans differ from numbers, 1 equals 1.0."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    if type(a) is not type(b):
        return False
    return a == b


def _shape(v: Any) -> str:
    if isinstance(v, dict):
        return "map"
    if isinstance(v, list):
        return "list"
    return "scalar"


def item_element(item: Any, list_node: Schema, info: typeinfo.ListInfo, path: Path) -> PathElement:
    """The path element naming a list item of a ``set`` or ``map`` list."""
    if info.kind == "map":
        if item is None:
            raise StructureError(path, "associative list with keys may not have a null element")
        if not isinstance(item, dict):
            raise StructureError(path, "associative list with keys may not have non-map elements")
        items_node = typeinfo.items_schema(list_node)
        fields: dict[str, Any] = {}
        for name in info.keys:
            if name in item:
                fields[name] = item[name]
            else:
                default = typeinfo.key_default(items_node, name)
                if default is not None:
                    fields[name] = default
        if not fields:
            raise StructureError(
                path,
                f"associative list with keys has an element that omits all key fields {list(info.keys)} "
                "(and doesn't have default values for any key fields)",
            )
        return fieldpath.key(fields)
    if isinstance(item, dict):
        raise StructureError(path, "associative list without keys has an element that's a map type")
    if isinstance(item, list):
        raise StructureError(path, "associative list without keys has an element that's a list type")
    return fieldpath.value(item)


def _child_node(node: Schema, pe: PathElement) -> Schema:
    if pe[0] == "f":
        return typeinfo.property_schema(node, pe[1])
    return typeinfo.items_schema(node)


# Field sets


def to_field_set(value: Any, node: Schema, *, allow_duplicates: bool = True) -> set[Path]:
    """The fields a value sets: its leaves, list items, map entries and empty objects.

    Struct fields that hold non-empty objects are not members themselves, only what they
    contain. Duplicate list items are recorded once, without their content, or refused
    when ``allow_duplicates`` is false (an applied configuration may not have any).
    """
    out: set[Path] = set()
    _collect(value, object_schema(node), (), out, allow_duplicates)
    return out


def _collect(value: Any, node: Schema, path: Path, out: set[Path], dups: bool) -> None:
    if isinstance(value, dict):
        if typeinfo.map_is_atomic(node):
            out.add(path)
            return
        for name, child in value.items():
            child_path = (*path, fieldpath.field(name))
            _collect(child, typeinfo.property_schema(node, name), child_path, out, dups)
            if child is None or child == {} or not typeinfo.is_declared_field(node, name):
                out.add(child_path)
    elif isinstance(value, list):
        info = typeinfo.list_info(node)
        if info.kind == "atomic":
            out.add(path)
            return
        items_node = typeinfo.items_schema(node)
        elements = [item_element(item, node, info, path) for item in value]
        counts: dict[PathElement, int] = {}
        for pe in elements:
            counts[pe] = counts.get(pe, 0) + 1
        for pe, item in zip(elements, value, strict=True):
            item_path = (*path, pe)
            if counts[pe] == 1:
                _collect(item, items_node, item_path, out, dups)
            elif not dups:
                raise StructureError(path, f"duplicate entries for key {fieldpath.element_string(pe)}")
            out.add(item_path)
    else:
        out.add(path)


def ensure_named_fields(paths: set[Path], node: Schema) -> set[Path]:
    """``paths`` plus every prefix that ends in a declared (struct) field of its parent."""
    trie: dict[PathElement, Any] = {}
    for path in paths:
        level = trie
        for pe in path:
            level = level.setdefault(pe, {})
    out = set(paths)

    def visit(level: dict[PathElement, Any], schema: Schema, prefix: Path) -> None:
        for pe, below in level.items():
            if not below:
                continue
            path = (*prefix, pe)
            if pe[0] == "f" and typeinfo.is_declared_field(schema, pe[1]):
                out.add(path)
            visit(below, _child_node(schema, pe), path)

    visit(trie, object_schema(node), ())
    return out


# Comparison


@dataclass
class Comparison:
    """Paths added, modified and removed between two versions of an object."""

    added: set[Path] = field(default_factory=set)
    modified: set[Path] = field(default_factory=set)
    removed: set[Path] = field(default_factory=set)

    def without(self, prefixes: set[Path]) -> Comparison:
        return Comparison(
            fieldpath.recursive_difference(self.added, prefixes),
            fieldpath.recursive_difference(self.modified, prefixes),
            fieldpath.recursive_difference(self.removed, prefixes),
        )

    @property
    def changed(self) -> set[Path]:
        return self.added | self.modified


def compare(old: Any, new: Any, node: Schema, *, allow_duplicates: bool = True) -> Comparison:
    """What changed from ``old`` to ``new`` (both whole objects; ``old`` may be ``{}``)."""
    result = Comparison()
    _compare(old, new, object_schema(node), (), result, allow_duplicates)
    return result


def _as_container(v: Any, other: Any) -> Any:
    """A null facing an object or list counts as an empty one, as typed values do."""
    if v is None and isinstance(other, dict):
        return {}
    if v is None and isinstance(other, list):
        return []
    return v


def _is_named_struct(node: Schema) -> bool:
    return typeinfo.ref_name(node) is not None and bool((typeinfo.resolve(node) or {}).get("properties"))


def _leaf(old: Any, new: Any, path: Path, result: Comparison) -> None:
    if old is MISSING:
        result.added.add(path)
    elif new is MISSING:
        result.removed.add(path)
    elif not json_equal(old, new):
        result.modified.add(path)


def _children(v: Any, node: Schema, path: Path, allow_duplicates: bool) -> list[tuple[PathElement, Any]]:
    if isinstance(v, dict):
        return [(fieldpath.field(k), c) for k, c in v.items()]
    if isinstance(v, list):
        info = typeinfo.list_info(node)
        if info.kind == "atomic":
            return []
        return [(item_element(c, node, info, path), c) for c in v]
    return []


def _zero_fields(node: Schema) -> tuple[bool, frozenset[str]]:
    """Whether a node is a Kubernetes definition, and its required fields.

    Such a field exists (null or zero) in the empty object kube-apiserver compares a
    created object with, so creating the object does not add the field node itself.
    """
    builtin = typeinfo.ref_name(node) is not None or "x-kubernetes-group-version-kind" in (node or {})
    if not builtin:
        return False, frozenset()
    return True, frozenset((typeinfo.resolve(node) or {}).get("required") or ())


def _compare(
    old: Any, new: Any, node: Schema, path: Path, result: Comparison, dups: bool, zero: bool = False
) -> None:
    if old is not MISSING and new is not MISSING:
        old, new = _as_container(old, new), _as_container(new, old)
        if _shape(old) != _shape(new):
            for pe, child in _children(old, node, path, dups):
                _compare(child, MISSING, _child_node(node, pe), (*path, pe), result, dups)
            for pe, child in _children(new, node, path, dups):
                _compare(MISSING, child, _child_node(node, pe), (*path, pe), result, dups)
            if _shape(old) == "scalar" or _shape(new) == "scalar":
                result.modified.add(path)
            return
    present = new if new is not MISSING else old
    shape = _shape(present)
    if shape == "scalar":
        _leaf(old, new, path, result)
        return
    if shape == "map":
        l_map = old if isinstance(old, dict) else {}
        r_map = new if isinstance(new, dict) else {}
        if typeinfo.map_is_atomic(node) or (not l_map and not r_map):
            _leaf(old, new, path, result)
            return
        builtin, required = _zero_fields(node)
        for name in [*l_map, *(k for k in r_map if k not in l_map)]:
            child_node = typeinfo.property_schema(node, name)
            child_zero = (builtin and (name in required or _is_named_struct(child_node))) or (
                not path and name == "metadata"
            )
            child_path = (*path, fieldpath.field(name))
            before, after = l_map.get(name, MISSING), r_map.get(name, MISSING)
            _compare(before, after, child_node, child_path, result, dups, child_zero)
    else:
        l_list = old if isinstance(old, list) else []
        r_list = new if isinstance(new, list) else []
        info = typeinfo.list_info(node)
        if info.kind == "atomic" or (not l_list and not r_list):
            _leaf(old, new, path, result)
            return
        _compare_items(l_list, r_list, node, info, path, result, dups)
    if old is MISSING:
        if path and not zero:
            result.added.add(path)
    elif new is MISSING:
        result.removed.add(path)


def _group(items: list[Any], node: Schema, info: typeinfo.ListInfo, path: Path) -> dict[PathElement, list[Any]]:
    groups: dict[PathElement, list[Any]] = {}
    for item in items:
        groups.setdefault(item_element(item, node, info, path), []).append(item)
    return groups


def _compare_items(
    old: list[Any], new: list[Any], node: Schema, info: typeinfo.ListInfo, path: Path, result: Comparison, dups: bool
) -> None:
    items_node = typeinfo.items_schema(node)
    left = _group(old, node, info, path)
    right = _group(new, node, info, path)
    if not dups and any(len(v) > 1 for v in right.values()):
        pe = next(k for k, v in right.items() if len(v) > 1)
        raise StructureError(path, f"duplicate entries for key {fieldpath.element_string(pe)}")
    for pe in [*left, *(k for k in right if k not in left)]:
        ls, rs = left.get(pe, []), right.get(pe, [])
        item_path = (*path, pe)
        if len(ls) <= 1 and len(rs) <= 1:
            _compare(ls[0] if ls else MISSING, rs[0] if rs else MISSING, items_node, item_path, result, dups)
        elif len(ls) >= 2 and len(rs) >= 2:
            if not json_equal(ls, rs):
                result.modified.add(item_path)
        elif len(ls) >= 2:
            if rs:
                _compare(MISSING, rs[0], items_node, item_path, result, dups)
            result.removed.add(item_path)
        else:
            if ls:
                _compare(ls[0], MISSING, items_node, item_path, result, dups)
            result.added.add(item_path)


# Merge


def merge(live: Any, config: Any, node: Schema) -> Any:
    """The live object with the applied configuration merged in (a new value)."""
    return _merge(live, config, object_schema(node), ())


def _merge(live: Any, config: Any, node: Schema, path: Path) -> Any:
    if config is MISSING:
        return copy.deepcopy(live)
    if live is MISSING:
        return copy.deepcopy(config)
    config_view = _as_container(config, live)
    if _shape(live) != _shape(config_view) or _shape(config_view) == "scalar":
        return copy.deepcopy(config)
    if isinstance(config_view, dict):
        if typeinfo.map_is_atomic(node) or (not live and not config_view):
            return copy.deepcopy(config)
        out: dict[str, Any] = {}
        for name, value in live.items():
            child_node = typeinfo.property_schema(node, name)
            out[name] = _merge(value, config_view.get(name, MISSING), child_node, (*path, fieldpath.field(name)))
        for name, value in config_view.items():
            if name not in live:
                out[name] = copy.deepcopy(value)
        return out
    info = typeinfo.list_info(node)
    if info.kind == "atomic" or (not live and not config_view):
        return copy.deepcopy(config)
    return _merge_items(live, config_view, node, info, path)


def _merge_items(live: list[Any], config: list[Any], node: Schema, info: typeinfo.ListInfo, path: Path) -> list[Any]:
    """Merge list items by their keys.

    The result keeps the applied order for the applied items; live items the
    configuration does not mention stay where they were relative to their neighbours.
    """
    items_node = typeinfo.items_schema(node)
    config_pes = [item_element(item, node, info, path) for item in config]
    config_items: dict[PathElement, Any] = {}
    for pe, item in zip(config_pes, config, strict=True):
        if pe in config_items:
            raise StructureError(path, f"duplicate entries for key {fieldpath.element_string(pe)}")
        config_items[pe] = item
    live_pes = [item_element(item, node, info, path) for item in live]
    live_items: dict[PathElement, Any] = {}
    for pe, item in zip(live_pes, live, strict=True):
        # A key that appears twice in the live list has no single live value to merge with.
        live_items[pe] = MISSING if pe in live_items else item

    shared = [pe for pe in config_pes if pe in live_items]
    shared_at = 0
    done: set[PathElement] = set()
    out: list[Any] = []

    def emit(pe: PathElement, live_item: Any, config_item: Any) -> None:
        if live_item is MISSING and config_item is MISSING:
            return
        out.append(_merge(live_item, config_item, items_node, (*path, pe)))

    li = ri = 0
    while li < len(live_pes) or ri < len(config_pes):
        next_shared = shared[shared_at] if shared_at < len(shared) else None
        if li < len(live_pes) and ri < len(config_pes):
            pe = live_pes[li]
            if pe == config_pes[ri]:
                done.add(pe)
                emit(pe, live_items[pe], config_items[pe])
                li += 1
                ri += 1
                shared_at += 1
                continue
            if pe in config_items and next_shared is not None and next_shared != pe:
                li += 1
                continue
        if li < len(live_pes):
            pe = live_pes[li]
            if pe not in config_items:
                emit(pe, live[li], MISSING)
                li += 1
                continue
            if pe in done:
                li += 1
        if ri < len(config_pes):
            pe = config_pes[ri]
            done.add(pe)
            emit(pe, live_items.get(pe, MISSING), config_items[pe])
            ri += 1
            if next_shared is not None and next_shared == pe:
                shared_at += 1
    return out


# Removal


def remove(value: dict[str, Any], paths: set[Path], node: Schema) -> dict[str, Any]:
    """A copy of an object without the given paths (each taking its subtree along).

    An object or list left empty by the removal disappears too, like the API server
    stores what becomes ``null`` there.
    """
    if not paths:
        return copy.deepcopy(value)
    trie = _trie(paths)
    result = _remove(value, trie, object_schema(node), ())
    return result if isinstance(result, dict) else {}


_GONE: Any = object()


def _trie(paths: set[Path]) -> dict[PathElement, Any]:
    root: dict[PathElement, Any] = {}
    for path in paths:
        node = root
        for pe in path[:-1]:
            entry = node.setdefault(pe, [False, {}])
            node = entry[1]
        if path:
            entry = node.setdefault(path[-1], [False, {}])
            entry[0] = True
    return root


def _remove(value: Any, trie: dict[PathElement, Any], node: Schema, path: Path) -> Any:
    if isinstance(value, dict):
        if not value or typeinfo.map_is_atomic(node):
            return copy.deepcopy(value)
        out: dict[str, Any] = {}
        for name, child in value.items():
            entry = trie.get(fieldpath.field(name))
            if entry is None:
                out[name] = copy.deepcopy(child)
                continue
            exact, below = entry
            if exact:
                continue
            kept = _remove(child, below, typeinfo.property_schema(node, name), (*path, fieldpath.field(name)))
            if kept is not _GONE:
                out[name] = kept
        return out if out else _GONE
    if isinstance(value, list):
        info = typeinfo.list_info(node)
        if not value or info.kind == "atomic":
            return copy.deepcopy(value)
        items_node = typeinfo.items_schema(node)
        kept_items: list[Any] = []
        for item in value:
            try:
                pe = item_element(item, node, info, path)
            except StructureError:
                kept_items.append(copy.deepcopy(item))
                continue
            entry = trie.get(pe)
            if entry is None:
                kept_items.append(copy.deepcopy(item))
                continue
            exact, below = entry
            if exact:
                continue
            kept = _remove(item, below, items_node, (*path, pe))
            if kept is not _GONE:
                kept_items.append(kept)
        return kept_items if kept_items else _GONE
    return copy.deepcopy(value)
