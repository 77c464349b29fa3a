"""What the patch engines need to know about a schema node.

A schema node is a JSON-schema dict in the dialect of the ``kubernetes-validate``
definitions (``$ref`` into ``$defs``, ``x-kubernetes-*`` extensions) or of a CRD's
``openAPIV3Schema`` (the same, inline). ``None`` stands for "unknown": the value is
then treated as plain JSON (maps merge key by key, lists are atomic).

Extensions can sit on a property node (``strategy: {$ref: ..., x-kubernetes-patch-strategy:
retainKeys}``) or on the definition it points to (``LabelSelector`` carries
``x-kubernetes-map-type: atomic``), so lookups walk the ``$ref`` chain.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from k3p.apiserver import schemas

Schema = dict[str, Any] | None

# The upstream OpenAPI marks these list-map key fields with ``default: "TCP"``; the
# JSON schemas shipped in kubernetes-validate drop ``default``, and without it an applied
# port without ``protocol`` would not match the defaulted live port.
_KEY_DEFAULTS: dict[str, dict[str, Any]] = {
    "io.k8s.api.core.v1.ContainerPort": {"protocol": "TCP"},
    "io.k8s.api.core.v1.ServicePort": {"protocol": "TCP"},
}


def _next(node: dict[str, Any]) -> dict[str, Any] | None:
    if "$ref" not in node and "allOf" not in node:
        return None
    if "$ref" in node:
        return schemas.definitions().get(schemas.ref_name(node["$ref"]))
    all_of = node.get("allOf")
    if isinstance(all_of, list) and len(all_of) == 1 and isinstance(all_of[0], dict) and "$ref" in all_of[0]:
        return schemas.definitions().get(schemas.ref_name(all_of[0]["$ref"]))
    return None


def resolve(node: Schema) -> Schema:
    """The node itself, or the definition its ``$ref`` chain ends at."""
    seen = 0
    while node is not None:
        nxt = _next(node)
        if nxt is None:
            return node
        node = nxt
        seen += 1
        if seen > 32:  # a cyclic $ref chain is a broken schema; stop rather than spin
            return None
    return None


def ref_name(node: Schema) -> str | None:
    """The definition name a node points to (the last one of its ``$ref`` chain)."""
    name = None
    while node is not None:
        if "$ref" in node:
            name = schemas.ref_name(node["$ref"])
        elif len(node.get("allOf", ())) == 1 and "$ref" in node["allOf"][0]:
            name = schemas.ref_name(node["allOf"][0]["$ref"])
        else:
            return name
        node = schemas.definitions().get(name)
    return name


def extension(node: Schema, key: str) -> Any:
    """An ``x-kubernetes-*`` value from the node or from any definition it points to."""
    hops = 0
    while node is not None and hops < 32:
        if key in node:
            return node[key]
        node = _next(node)
        hops += 1
    return None


def property_schema(node: Schema, name: str) -> Schema:
    """The schema of key ``name`` in an object node: its property or the map's value type."""
    node = resolve(node)
    if node is None:
        return None
    props = node.get("properties")
    if isinstance(props, dict) and name in props:
        return props[name]
    extra = node.get("additionalProperties")
    if isinstance(extra, dict):
        return extra
    return None


def is_declared_field(node: Schema, name: str) -> bool:
    """Whether ``name`` is a named property (a struct field), not a map key."""
    node = resolve(node)
    return node is not None and isinstance(node.get("properties"), dict) and name in node["properties"]


def items_schema(node: Schema) -> Schema:
    """The element schema of an array node."""
    node = resolve(node)
    if node is None:
        return None
    items = node.get("items")
    return items if isinstance(items, dict) else None


def patch_strategies(node: Schema) -> frozenset[str]:
    """``x-kubernetes-patch-strategy`` split on commas, e.g. {"merge", "retainKeys"}."""
    value = extension(node, "x-kubernetes-patch-strategy")
    if not isinstance(value, str):
        return frozenset()
    return frozenset(part.strip() for part in value.split(",") if part.strip())


def patch_merge_key(node: Schema) -> str | None:
    value = extension(node, "x-kubernetes-patch-merge-key")
    return value if isinstance(value, str) and value else None


def map_is_atomic(node: Schema) -> bool:
    """An object to be owned and replaced as a whole (``x-kubernetes-map-type: atomic``)."""
    return extension(node, "x-kubernetes-map-type") == "atomic"


@dataclass(frozen=True)
class ListInfo:
    """How server-side apply treats a list: ``atomic``, ``set`` or ``map`` (by ``keys``)."""

    kind: str
    keys: tuple[str, ...] = ()


ATOMIC = ListInfo("atomic")


def list_info(node: Schema) -> ListInfo:
    """The list topology, as the API server derives it from the OpenAPI extensions.

    ``x-kubernetes-list-type`` wins; without it a list whose patch strategy is exactly
    ``merge`` is a map keyed by its merge key (a set when it has none); anything else
    is atomic.
    """
    if node is None:
        return ATOMIC
    list_type = extension(node, "x-kubernetes-list-type")
    if list_type == "set":
        return ListInfo("set")
    if list_type == "map":
        keys = extension(node, "x-kubernetes-list-map-keys")
        if isinstance(keys, list) and keys and all(isinstance(k, str) for k in keys):
            return ListInfo("map", tuple(keys))
        merge_key = patch_merge_key(node)
        return ListInfo("map", (merge_key,)) if merge_key else ListInfo("set")
    if list_type is not None:
        return ATOMIC
    if extension(node, "x-kubernetes-patch-strategy") == "merge":
        merge_key = patch_merge_key(node)
        return ListInfo("map", (merge_key,)) if merge_key else ListInfo("set")
    return ATOMIC


def key_default(items_node: Schema, key: str) -> Any:
    """The default of a list-map key field that an item leaves out, or None."""
    prop = property_schema(items_node, key)
    if prop is not None:
        resolved = resolve(prop)
        for candidate in (prop, resolved):
            if isinstance(candidate, dict) and "default" in candidate:
                return candidate["default"]
    name = ref_name(items_node)
    if name is not None:
        return _KEY_DEFAULTS.get(name, {}).get(key)
    return None
