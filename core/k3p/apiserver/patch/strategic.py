"""Kubernetes strategic merge patch (``application/strategic-merge-patch+json``).

Semantics follow kube-apiserver (apimachinery ``strategicpatch``, applied server side):

- Maps merge key by key; ``null`` deletes a key (a ``null`` for an absent key is dropped).
- A list whose field has patch strategy ``merge`` is merged: lists of objects by the
  field's ``x-kubernetes-patch-merge-key`` (patch items update the live item with the same
  key, new items are added), lists of scalars as sets. Any other list is replaced.
- Order of a merged list: patch items keep the patch's order, live items the patch does
  not mention keep their live order, and the two are interleaved using the live order;
  an item that only the patch has goes before the remaining live-only items.
- ``$setElementOrder/<field>: [...]`` (sent by ``kubectl apply``) gives the final order of
  the items it lists; items it does not list are kept (it never deletes) and are placed
  by their live position.
- ``$deleteFromPrimitiveList/<field>: [...]`` removes those values from a scalar list.
- ``$patch: replace`` on a map replaces the map, ``$patch: delete`` empties it (``{}``);
  ``$patch: merge`` on a map is the default and accepted as a no-op. In a list,
  ``{<mergeKey>: x, $patch: delete}`` removes the items with that key and
  ``{$patch: replace}`` replaces the list with the other patch items.
- ``$retainKeys: [...]`` in a map (fields with strategy ``retainKeys`` such as a
  Deployment's ``strategy``) clears every key of the live map not listed; every key the
  patch sets must be listed.
- New content taken over from the patch has its ``null`` values and directives removed.

Without a schema (``None``) every map merges and every list is replaced.

Errors are :class:`PatchError`: 400 for malformed directives, 422 for lists of lists and
``$retainKeys`` lists that contradict the patch. kube-apiserver answers 500 for some
malformed patches (e.g. an item without its merge key); those are 400 here.
"""

from __future__ import annotations

import copy
from typing import Any

import k3p.apiserver.patch.typeinfo as typeinfo
from k3p.apiserver.patch.errors import PatchError
from k3p.apiserver.patch.typeinfo import Schema

DIRECTIVE = "$patch"
RETAIN_KEYS = "$retainKeys"
SET_ORDER = "$setElementOrder"
DELETE_FROM_PRIMITIVE_LIST = "$deleteFromPrimitiveList"


def apply_strategic_merge_patch(
    original: dict[str, Any], patch: dict[str, Any], schema: dict[str, Any] | None
) -> dict[str, Any]:
    """Apply ``patch`` to a copy of ``original`` guided by the schema node of its type."""
    if not isinstance(patch, dict) or not isinstance(original, dict):
        raise PatchError("invalid JSON document", 400)
    return _merge_map(copy.deepcopy(original), copy.deepcopy(patch), schema)


def is_directive(key: str) -> bool:
    """Whether a map key is a strategic merge patch directive rather than data."""
    return (
        key in (DIRECTIVE, RETAIN_KEYS)
        or key.startswith(SET_ORDER + "/")
        or key.startswith(DELETE_FROM_PRIMITIVE_LIST + "/")
    )


def _go(value: Any) -> str:
    """A value rendered roughly like Go's ``%v``, for error messages."""
    if isinstance(value, dict):
        return "map[" + " ".join(f"{k}:{_go(v)}" for k, v in sorted(value.items())) + "]"
    if isinstance(value, list):
        return "[" + " ".join(_go(v) for v in value) + "]"
    if value is None:
        return "<nil>"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _same(a: Any, b: Any) -> bool:
    """JSON equality of scalars as Go compares decoded values: booleans never equal numbers."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if type(a) is not type(b):
        return False
    return a == b


def _kind(value: Any) -> str:
    if isinstance(value, dict):
        return "map"
    if isinstance(value, list):
        return "list"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "bool"
    if value is None:
        return "null"
    return "number"


def _without_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


_DROP = object()


def _strip(value: Any) -> Any:
    """Patch content stored as is: maps carrying ``$patch`` vanish, directive keys go."""
    if isinstance(value, dict):
        if DIRECTIVE in value:
            return _DROP
        out = {}
        for k, v in value.items():
            if is_directive(k):
                continue
            stripped = _strip(v)
            if stripped is not _DROP:
                out[k] = stripped
        return out
    if isinstance(value, list):
        return [s for s in (_strip(v) for v in value) if s is not _DROP]
    return value


def _directive_field(key: str, prefix: str, error: str) -> str:
    head, sep, field = key.partition("/")
    if not sep or head != prefix:
        raise PatchError(error, 400)
    return field


def _merge_map(original: dict[str, Any], patch: dict[str, Any], node: Schema) -> dict[str, Any]:
    if DIRECTIVE in patch:
        directive = patch[DIRECTIVE]
        if directive == "replace":
            replaced = _strip({k: v for k, v in patch.items() if k != DIRECTIVE})
            return replaced if isinstance(replaced, dict) else {}
        if directive == "delete":
            return {}
        if directive != "merge":
            raise PatchError(f"unknown patch type: {_go(directive)} in map: {_go(patch)}", 400)
        patch = {k: v for k, v in patch.items() if k != DIRECTIVE}

    _apply_retain_keys(original, patch)
    _apply_element_orders(original, patch, node)

    deletions: list[tuple[str, Any]] = []
    for key, value in patch.items():
        if key.startswith(DELETE_FROM_PRIMITIVE_LIST):
            field = _directive_field(key, DELETE_FROM_PRIMITIVE_LIST, "invalid patch format of primitive list")
            deletions.append((field, value))
            continue
        if is_directive(key):
            continue
        if value is None:
            original.pop(key, None)
            continue
        field_node = typeinfo.property_schema(node, key)
        current = original.get(key, _DROP)
        if current is _DROP or _kind(current) != _kind(value):
            taken = _strip(_without_nulls(value))
            if taken is _DROP:
                original.pop(key, None)
            else:
                original[key] = taken
        elif isinstance(value, dict):
            if "replace" in typeinfo.patch_strategies(field_node):
                replaced = _strip(value)
                original[key] = replaced if isinstance(replaced, dict) else {}
            else:
                original[key] = _merge_map(current, value, field_node)
        elif isinstance(value, list):
            if "merge" in typeinfo.patch_strategies(field_node):
                original[key] = _merge_list(current, value, field_node)
            else:
                original[key] = _strip(value)
        else:
            original[key] = value

    for field, values in deletions:
        if values is None:
            original.pop(field, None)
            continue
        if not isinstance(values, list):
            raise PatchError("invalid patch format of primitive list", 400)
        current = original.get(field)
        if isinstance(current, list) and values:
            _element_kind(current, values)
            if not any(isinstance(v, dict) for v in current):
                original[field] = [v for v in current if not any(_same(v, d) for d in values)]
    return original


def _apply_retain_keys(original: dict[str, Any], patch: dict[str, Any]) -> None:
    if RETAIN_KEYS not in patch:
        return
    retain = patch.pop(RETAIN_KEYS)
    if not isinstance(retain, list):
        raise PatchError("invalid patch format of retainKeys", 400)
    keep = {k for k in retain if isinstance(k, str)}
    for key, value in patch.items():
        if value is None or is_directive(key):
            continue
        if key not in keep:
            raise PatchError("invalid patch format of retainKeys", 400)
    for key in [k for k in original if k not in keep]:
        del original[key]


def _element_kind(*lists: list[Any]) -> str | None:
    """The common JSON kind of the items of the lists, or None when they are all empty."""
    found = None
    for items in lists:
        for item in items:
            kind = _kind(item)
            if found is None:
                if kind == "list":
                    raise PatchError("lists of lists are not supported", 422)
                found = kind
            elif kind != found:
                raise PatchError(f"list element types are not identical: {_go(list(lists))}", 400)
    return found


def _key_of(item: Any, merge_key: str | None) -> Any:
    if merge_key is None:
        return item
    return item.get(merge_key) if isinstance(item, dict) else None


def _index(items: list[Any], value: Any, merge_key: str | None) -> int:
    wanted = _key_of(value, merge_key)
    for i, item in enumerate(items):
        if _same(_key_of(item, merge_key), wanted):
            return i
    return -1


def _find_keyed(items: list[Any], merge_key: str, value: Any) -> int:
    for i, item in enumerate(items):
        if isinstance(item, dict) and merge_key in item and _same(item[merge_key], value):
            return i
    return -1


def _require_merge_key(items: list[Any], merge_key: str) -> None:
    for item in items:
        if not isinstance(item, dict):
            raise PatchError(f"expected a map, but received a {_kind(item)}", 400)
        if merge_key not in item:
            raise PatchError(f"map: {_go(item)} does not contain declared merge key: {merge_key}", 400)


def _sorted_by(items: list[Any], order: list[Any], merge_key: str | None) -> list[Any]:
    def position(item: Any) -> int:
        found = _index(order, item, merge_key)
        return found if found >= 0 else len(order)

    return sorted(items, key=position)


def _interleave(server_only: list[Any], patch_items: list[Any], server_order: list[Any], key: str | None) -> list[Any]:
    """Insert live-only items among the (ordered) patch items, guided by the live order.

    A live-only item goes first only when the next patch item is also live and comes
    after it in the live list; otherwise the patch item goes first.
    """
    out: list[Any] = []
    i = j = 0
    while i < len(server_only) or j < len(patch_items):
        if i >= len(server_only):
            out.append(patch_items[j])
            j += 1
        elif j >= len(patch_items):
            out.append(server_only[i])
            i += 1
        else:
            li = _index(server_order, server_only[i], key)
            ri = _index(server_order, patch_items[j], key)
            if li >= 0 and ri >= 0 and li < ri:
                out.append(server_only[i])
                i += 1
            else:
                out.append(patch_items[j])
                j += 1
    return out


def _normalize_order(
    merged: list[Any], order: list[Any], server_order: list[Any], merge_key: str | None
) -> list[Any]:
    """Order ``merged``: items listed in ``order`` by it, the rest by ``server_order``."""
    in_order = [item for item in merged if _index(order, item, merge_key) >= 0]
    server_only = [item for item in merged if _index(order, item, merge_key) < 0]
    return _interleave(
        _sorted_by(server_only, server_order, merge_key),
        _sorted_by(in_order, order, merge_key),
        server_order,
        merge_key,
    )


def _unique(items: list[Any]) -> list[Any]:
    out: list[Any] = []
    for item in items:
        if not any(_same(item, seen) for seen in out):
            out.append(item)
    return out


def _merge_list(original: list[Any], patch: list[Any], node: Schema) -> list[Any]:
    """Merge a patch list into a live list of a field whose strategy is ``merge``."""
    if not original and not patch:
        return original
    kind = _element_kind(original, patch)
    merge_key = typeinfo.patch_merge_key(node)
    if kind != "map":
        merged = _unique(original + patch)
        return _normalize_order(merged, patch, original, None)
    if merge_key is None:
        raise PatchError("cannot merge lists without merge key", 400)
    items_node = typeinfo.items_schema(node)
    original, patch, replaced = _special_items(original, patch, merge_key)
    if replaced:
        return [s for s in (_strip(item) for item in original) if s is not _DROP]
    _require_merge_key(patch, merge_key)
    merged = list(original)
    for item in patch:
        at = _find_keyed(merged, merge_key, item[merge_key])
        if at >= 0:
            merged[at] = _merge_map(merged[at], item, items_node)
        else:
            taken = _strip(_without_nulls(item))
            if taken is not _DROP:
                merged.append(taken)
    return _normalize_order(merged, patch, original, merge_key)


def _special_items(
    original: list[Any], patch: list[Any], merge_key: str
) -> tuple[list[Any], list[Any], bool]:
    """Apply ``$patch`` items of a list patch; returns (original, plain patch items, replaced)."""
    plain: list[Any] = []
    replace = False
    for item in patch:
        if not isinstance(item, dict) or DIRECTIVE not in item:
            plain.append(item)
            continue
        directive = item[DIRECTIVE]
        if directive == "delete":
            if merge_key not in item:
                raise PatchError(f"map: {_go(item)} does not contain declared merge key: {merge_key}", 400)
            original = [
                o for o in original if not (isinstance(o, dict) and _same(o.get(merge_key), item[merge_key]))
            ]
        elif directive == "replace":
            replace = True
        elif directive == "merge":
            raise PatchError("merging lists cannot yet be specified in the patch", 400)
        else:
            raise PatchError(f"unknown patch type: {_go(directive)} in map: {_go(item)}", 400)
    if replace:
        return plain, [], True
    return original, plain, False


def _apply_element_orders(original: dict[str, Any], patch: dict[str, Any], node: Schema) -> None:
    """Process ``$setElementOrder/<field>`` with the list it orders, removing both from the patch."""
    for key in [k for k in patch if k.startswith(SET_ORDER)]:
        order = patch.pop(key)
        field = _directive_field(key, SET_ORDER, "invalid patch format of setElementOrder list")
        if not isinstance(order, list):
            raise PatchError("invalid patch format of setElementOrder list", 400)
        field_node = typeinfo.property_schema(node, field)
        merge_key = typeinfo.patch_merge_key(field_node)
        merging = "merge" in typeinfo.patch_strategies(field_node)
        live = original.get(field, _DROP)
        given = patch.get(field, _DROP)
        if live is not _DROP and not isinstance(live, list):
            raise PatchError(f"expected a list at {field}, but received a {_kind(live)}", 400)
        if given is not _DROP and not isinstance(given, list):
            raise PatchError(f"expected a list at {field}, but received a {_kind(given)}", 400)
        if live is _DROP and given is _DROP:
            continue
        if given is not _DROP:
            _check_order(given, order, merge_key)
        if given is _DROP:
            merged = live
        elif live is _DROP:
            merged = [s for s in (_strip(_without_nulls(v)) for v in given) if s is not _DROP]
        elif merging:
            merged = _merge_list(live, given, field_node)
        else:
            merged = _strip(given)
        patch.pop(field, None)
        live_list = live if live is not _DROP else []
        if merging and live is not _DROP and given is not _DROP and merge_key is not None:
            live_list = _live_order_seen_by_kube(live, given, merge_key)
        if not merged:
            original[field] = merged
            continue
        kind = _element_kind(live_list, merged)
        if kind != "map":
            original[field] = _normalize_order(merged, order, live_list, None)
        elif merge_key is None:
            original[field] = merged
        else:
            _require_merge_key(order, merge_key)
            original[field] = _normalize_order(merged, order, live_list, merge_key)


def _live_order_seen_by_kube(live: list[Any], given: list[Any], merge_key: str) -> list[Any]:
    """The live order kube-apiserver uses to place live-only items under ``$setElementOrder``.

    kube-apiserver removes ``$patch: delete`` items and appends new items in the live
    list's own storage, and then reads that storage (at its original length) as the live
    order: deleted items' places are taken by the following items, the freed tail by the
    items the patch adds. Reproducing this keeps the resulting order identical.
    """
    size = len(live)
    slots = list(live)
    length = size
    extra: list[Any] = []

    def find(value: Any) -> int:
        view = slots[:length] if length <= size else slots + extra[: length - size]
        return _find_keyed(view, merge_key, value)

    replace = any(isinstance(i, dict) and i.get(DIRECTIVE) == "replace" for i in given)
    for item in given:
        if isinstance(item, dict) and item.get(DIRECTIVE) == "delete" and merge_key in item:
            while (at := find(item[merge_key])) >= 0:
                slots[at : length - 1] = slots[at + 1 : length]
                length -= 1
    if not replace:
        for item in given:
            if not isinstance(item, dict) or DIRECTIVE in item or merge_key not in item:
                continue
            if find(item[merge_key]) >= 0:
                continue
            if length < size:
                slots[length] = item
            else:
                extra.append(item)
            length += 1
    return slots


def _check_order(items: list[Any], order: list[Any], merge_key: str | None) -> None:
    """Patch items (deletions aside) must appear in ``order`` and in the same relative order."""
    if not items or not order:
        return
    if merge_key is None and any(isinstance(i, dict) for i in items):
        return
    plain = [i for i in items if not (isinstance(i, dict) and i.get(DIRECTIVE) == "delete")]
    pi = oi = 0
    while pi < len(plain) and oi < len(order):
        item = plain[pi]
        if isinstance(item, dict) and DIRECTIVE in item:
            pi += 1
            continue
        if merge_key is not None:
            for candidate in (item, order[oi]):
                if not isinstance(candidate, dict) or merge_key not in candidate:
                    raise PatchError(
                        f"map: {_go(candidate)} does not contain declared merge key: {merge_key}", 400
                    )
        if _same(_key_of(item, merge_key), _key_of(order[oi], merge_key)):
            pi += 1
        oi += 1
    if pi < len(plain):
        raise PatchError(
            f"The order in patch list:\n{_go(items)}\n doesn't match {SET_ORDER} list:\n{_go(order)}\n", 400
        )
