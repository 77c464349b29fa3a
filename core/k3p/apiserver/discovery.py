"""Discovery documents built from a :class:`~k3p.apiserver.registry.Registry`.

Legacy discovery (``/api``, ``/api/v1``, ``/apis``, ``/apis/{g}``, ``/apis/{g}/{v}``) and
aggregated discovery (``apidiscovery.k8s.io/v2`` APIGroupDiscoveryList for ``/api`` and
``/apis``), which kubectl 1.32 asks for first and uses for ``kubectl api-resources``.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

from k3p.apiserver.registry import Registry, ResourceType

AGGREGATED_CONTENT_TYPE = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
_AGGREGATED_PARAMS = {"g": "apidiscovery.k8s.io", "v": "v2", "as": "APIGroupDiscoveryList"}

Doc = dict[str, Any]


def wants_aggregated(accept: str | None) -> bool:
    """True if an ``Accept`` header asks for aggregated discovery v2 (with a non-zero q)."""
    if not accept:
        return False
    for media_range in accept.split(","):
        parts = [p.strip() for p in media_range.split(";")]
        if parts[0].lower() != "application/json":
            continue
        params: dict[str, str] = {}
        for p in parts[1:]:
            key, _, value = p.partition("=")
            params[key.strip().lower()] = value.strip().strip('"')
        if all(params.get(k) == v for k, v in _AGGREGATED_PARAMS.items()):
            try:
                if float(params.get("q", "1")) <= 0:
                    continue
            except ValueError:
                continue
            return True
    return False


def storage_version_hash(rt: ResourceType) -> str:
    """kube's storageVersionHash: base64 of the first 8 bytes of sha256("group/version/kind")."""
    text = f"{rt.storage_group}/{rt.storage_version}/{rt.kind}"
    return base64.b64encode(hashlib.sha256(text.encode()).digest()[:8]).decode()


def _group_version(group: str, version: str) -> str:
    return f"{group}/{version}" if group else version


def api_versions(server_address: str | None = None) -> Doc:
    """``GET /api``: the core group's versions."""
    doc: Doc = {"kind": "APIVersions", "versions": ["v1"]}
    if server_address:
        doc["serverAddressByClientCIDRs"] = [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}]
    return doc


def _api_group(registry: Registry, name: str) -> Doc | None:
    info = registry.group(name)
    if info is None:
        return None
    return {
        "name": name,
        "versions": [{"groupVersion": f"{name}/{v}", "version": v} for v in info.versions],
        "preferredVersion": {"groupVersion": f"{name}/{info.preferred_version}",
                             "version": info.preferred_version},
    }


def api_group_list(registry: Registry) -> Doc:
    """``GET /apis``: every named group (the core group is at ``/api``)."""
    groups = [_api_group(registry, g.name) for g in registry.groups() if g.name]
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}


def api_group(registry: Registry, group: str) -> Doc | None:
    """``GET /apis/{group}``, or None if the group is not served."""
    if not group:
        return None
    body = _api_group(registry, group)
    if body is None:
        return None
    return {"kind": "APIGroup", "apiVersion": "v1", **body}


def _api_resources(rt: ResourceType) -> list[Doc]:
    entry: Doc = {
        "name": rt.resource,
        "singularName": rt.singular,
        "namespaced": rt.namespaced,
        "kind": rt.kind,
        "verbs": list(rt.verbs),
    }
    if rt.short_names:
        entry["shortNames"] = list(rt.short_names)
    if rt.categories:
        entry["categories"] = list(rt.categories)
    if rt.verbs != ("create",):
        entry["storageVersionHash"] = storage_version_hash(rt)
    out = [entry]
    for name in rt.subresources:
        sub = rt.subresource(name)
        sub_entry: Doc = {"name": f"{rt.resource}/{name}", "singularName": "", "namespaced": rt.namespaced}
        if (sub.group, sub.version) != (rt.group, rt.version):
            sub_entry["group"] = sub.group
            sub_entry["version"] = sub.version
        sub_entry["kind"] = sub.kind
        sub_entry["verbs"] = list(sub.verbs)
        out.append(sub_entry)
    return out


def api_resource_list(registry: Registry, group: str, version: str) -> Doc | None:
    """``GET /api/v1`` or ``GET /apis/{g}/{v}``, or None if the group-version is not served."""
    types = registry.resources(group, version)
    if not types:
        return None
    resources = [entry for rt in types for entry in _api_resources(rt)]
    resources.sort(key=lambda e: e["name"])
    doc: Doc = {"kind": "APIResourceList"}
    # kube leaves apiVersion out of the core group's list only.
    if group:
        doc["apiVersion"] = "v1"
    doc["groupVersion"] = _group_version(group, version)
    doc["resources"] = resources
    return doc


def _resource_discovery(rt: ResourceType) -> Doc:
    entry: Doc = {
        "resource": rt.resource,
        "responseKind": {"group": rt.group, "version": rt.version, "kind": rt.kind},
        "scope": rt.scope,
        "singularResource": rt.singular,
        "verbs": list(rt.verbs),
    }
    if rt.short_names:
        entry["shortNames"] = list(rt.short_names)
    if rt.categories:
        entry["categories"] = list(rt.categories)
    subs = []
    for name in sorted(rt.subresources):
        sub = rt.subresource(name)
        subs.append({
            "subresource": name,
            "responseKind": {"group": sub.group, "version": sub.version, "kind": sub.kind},
            "verbs": list(sub.verbs),
        })
    if subs:
        entry["subresources"] = subs
    return entry


def aggregated_discovery(registry: Registry, *, legacy: bool) -> Doc:
    """APIGroupDiscoveryList for ``/api`` (``legacy=True``: the core group) or ``/apis``."""
    items = []
    for info in registry.groups():
        if (info.name == "") != legacy:
            continue
        metadata: Doc = {"name": info.name, "creationTimestamp": None} if info.name else {"creationTimestamp": None}
        versions = [
            {
                "version": v,
                "resources": [_resource_discovery(rt) for rt in registry.resources(info.name, v)],
                "freshness": "Current",
            }
            for v in info.versions
        ]
        items.append({"metadata": metadata, "versions": versions})
    return {"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2", "metadata": {},
            "items": items}


def encode(doc: Doc) -> bytes:
    """Compact JSON, the way kube sends discovery."""
    return json.dumps(doc, separators=(",", ":")).encode()


class DiscoveryCache:
    """Serialized discovery documents, rebuilt only when the registry changes.

    kubectl and every controller ask for discovery often; the documents change only when a CRD
    or plugin adds or removes types.
    """

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self._generation = -1
        self._docs: dict[tuple[str, ...], tuple[bytes, str] | None] = {}

    def _get(self, key: tuple[str, ...], build: Any) -> tuple[bytes, str] | None:
        if self._generation != self.registry.generation:
            self._docs.clear()
            self._generation = self.registry.generation
        if key not in self._docs:
            doc = build()
            if doc is None:
                self._docs[key] = None
            else:
                data = encode(doc)
                self._docs[key] = (data, hashlib.sha512(data).hexdigest().upper())
        return self._docs[key]

    def aggregated(self, *, legacy: bool) -> tuple[bytes, str]:
        """(body, etag) of the aggregated document for ``/api`` or ``/apis``."""
        result = self._get(("agg", "api" if legacy else "apis"),
                           lambda: aggregated_discovery(self.registry, legacy=legacy))
        assert result is not None
        return result

    def group_list(self) -> tuple[bytes, str]:
        """(body, etag) of ``/apis`` (legacy APIGroupList)."""
        result = self._get(("groups",), lambda: api_group_list(self.registry))
        assert result is not None
        return result

    def group(self, group: str) -> tuple[bytes, str] | None:
        """(body, etag) of ``/apis/{group}``, or None if the group is not served."""
        return self._get(("group", group), lambda: api_group(self.registry, group))

    def resource_list(self, group: str, version: str) -> tuple[bytes, str] | None:
        """(body, etag) of ``/api/v1`` or ``/apis/{group}/{version}``, or None if not served."""
        return self._get(("resources", group, version),
                         lambda: api_resource_list(self.registry, group, version))
