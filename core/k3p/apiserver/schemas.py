"""Kubernetes v1.32 type schemas, read from the ``kubernetes-validate`` package.

Nothing about the Kubernetes types is typed by hand in k3p: descriptions, required
fields, patch strategies and merge keys, list-map keys and GVKs all come from the JSON
schema definitions shipped in that package (one ``_definitions.json`` with ``$defs``).
"""

from __future__ import annotations

import functools
import json
from importlib import resources
from typing import Any

KUBERNETES_VERSION = "v1.32.0"
_REF_PREFIX = "#/$defs/"


@functools.cache
def definitions() -> dict[str, dict[str, Any]]:
    """Every definition by its OpenAPI name, e.g. ``io.k8s.api.apps.v1.Deployment``."""
    folder = resources.files("kubernetes_validate") / "kubernetes-json-schema" / f"{KUBERNETES_VERSION}-local"
    with (folder / "_definitions.json").open("rb") as f:
        return json.load(f)["$defs"]


def ref_name(ref: str) -> str:
    """``#/$defs/io.k8s.api.core.v1.Pod`` -> ``io.k8s.api.core.v1.Pod``."""
    return ref[len(_REF_PREFIX) :] if ref.startswith(_REF_PREFIX) else ref


def resolve(node: dict[str, Any]) -> dict[str, Any]:
    """Follow a ``$ref`` (also one wrapped in ``allOf``) to its definition; other nodes as they are."""
    while True:
        if "$ref" in node:
            node = definitions()[ref_name(node["$ref"])]
        elif len(node.get("allOf", ())) == 1 and "$ref" in node["allOf"][0]:
            node = definitions()[ref_name(node["allOf"][0]["$ref"])]
        else:
            return node


@functools.cache
def _gvk_index() -> dict[tuple[str, str, str], str]:
    index: dict[tuple[str, str, str], str] = {}
    for name, schema in definitions().items():
        for gvk in schema.get("x-kubernetes-group-version-kind", ()):
            # meta/v1 types (DeleteOptions, WatchEvent) are listed under every group; keep
            # the first owner only where a real type claims the GVK.
            index.setdefault((gvk["group"], gvk["version"], gvk["kind"]), name)
    return index


def definition_name_for(group: str, version: str, kind: str) -> str | None:
    """The definition name of a GVK, e.g. ("apps", "v1", "Deployment")."""
    return _gvk_index().get((group, version, kind))


def schema_for(group: str, version: str, kind: str) -> dict[str, Any] | None:
    """The (unresolved-children) schema of a GVK, or None if Kubernetes has no such type."""
    name = definition_name_for(group, version, kind)
    return definitions()[name] if name else None
