"""``/openapi/v3``: the index and one OpenAPI 3.0 document per group-version.

Schemas come from :mod:`k3p.apiserver.schemas` (built-in types) or from the resource type
itself (custom resources), converted from the JSON-schema 2020-12 forms of the
``kubernetes-validate`` files (``"type": ["string", "null"]``, ``#/$defs/`` refs) to the
OpenAPI 3.0 forms kubectl parses. kubectl uses these documents for three things:

* ``kubectl explain``: finds the GVK on a resource path's operation
  (``x-kubernetes-group-version-kind``, an object) and then the component schema whose
  ``x-kubernetes-group-version-kind`` list contains it;
* server-side field validation: a PATCH operation of the GVK must list the
  ``fieldValidation`` query parameter, else kubectl validates on the client;
* client-side ``apply``: strategic merge patches are built from the schemas when the PATCH
  operation accepts ``application/strategic-merge-patch+json``.

The serverRelativeURL of each document carries ``?hash=`` (uppercase hex SHA-512 of the
document, as kube) which clients use to cache documents forever.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
from collections.abc import Iterable
from typing import Any

from k3p.apiserver import schemas
from k3p.apiserver.registry import Registry, ResourceType

Doc = dict[str, Any]
_COMPONENTS = "#/components/schemas/"
_META = "io.k8s.apimachinery.pkg.apis.meta.v1."
_INT_OR_STRING = "io.k8s.apimachinery.pkg.util.intstr.IntOrString"
_STATUS = _META + "Status"
_DELETE_OPTIONS = _META + "DeleteOptions"
_PATCH = _META + "Patch"
_RESOURCE_LIST = _META + "APIResourceList"
_OBJECT_META = _META + "ObjectMeta"
_LIST_META = _META + "ListMeta"

_BUILTIN_PATCH_TYPES = (
    "application/apply-patch+yaml",
    "application/json-patch+json",
    "application/merge-patch+json",
    "application/strategic-merge-patch+json",
)
# Strategic merge patch needs Go struct tags: custom resources do not take it.
_CUSTOM_PATCH_TYPES = _BUILTIN_PATCH_TYPES[:3]

# Query parameters: name -> (OpenAPI type, description).
_PARAMS: dict[str, tuple[str, str]] = {
    "allowWatchBookmarks": ("boolean", "Ask a watch for BOOKMARK events."),
    "continue": ("string", "The continue token of the previous page of a list."),
    "dryRun": ("string", "'All' processes the request fully but persists nothing."),
    "fieldManager": ("string", "Name of the actor making the change, for managedFields."),
    "fieldSelector": ("string", "Restrict the returned objects by their fields."),
    "fieldValidation": ("string", "What to do with unknown or duplicate fields: Ignore, Warn or Strict."),
    "force": ("boolean", "Server-side apply: take over fields owned by other managers."),
    "gracePeriodSeconds": ("integer", "Seconds before the object is deleted; 0 deletes at once."),
    "ignoreStoreReadErrorWithClusterBreakingPotential": (
        "boolean", "Delete an object even if it cannot be read from storage."),
    "labelSelector": ("string", "Restrict the returned objects by their labels."),
    "limit": ("integer", "Largest number of objects to return; more come through continue."),
    "orphanDependents": ("boolean", "Deprecated: use propagationPolicy."),
    "pretty": ("string", "Pretty-print the output if 'true'."),
    "propagationPolicy": ("string", "Garbage collection of dependents: Orphan, Background or Foreground."),
    "resourceVersion": ("string", "Which version of the data a read may be served from."),
    "resourceVersionMatch": ("string", "How resourceVersion applies to a list: Exact or NotOlderThan."),
    "sendInitialEvents": ("boolean", "Begin a watch with synthetic events for the current objects."),
    "timeoutSeconds": ("integer", "Upper bound on the duration of a list or watch."),
    "watch": ("boolean", "Stream changes instead of returning a list."),
    "container": ("string", "The container to use; may be omitted if the pod has one."),
    "follow": ("boolean", "Keep streaming the log as it grows."),
    "limitBytes": ("integer", "Stop the log after this many bytes."),
    "previous": ("boolean", "The log of the previous, terminated container."),
    "sinceSeconds": ("integer", "Only log lines newer than this many seconds."),
    "sinceTime": ("string", "Only log lines after this RFC 3339 time."),
    "tailLines": ("integer", "Only this many lines from the end of the log."),
    "timestamps": ("boolean", "Prefix every log line with its RFC 3339 timestamp."),
    "insecureSkipTLSVerifyBackend": ("boolean", "Skip verifying the kubelet's serving certificate."),
    "command": ("string", "The command to execute, one argument per parameter."),
    "stdin": ("boolean", "Attach standard input."),
    "stdout": ("boolean", "Attach standard output."),
    "stderr": ("boolean", "Attach standard error."),
    "tty": ("boolean", "Allocate a terminal."),
    "ports": ("integer", "Pod ports to forward."),
}
_LIST_PARAMS = ("allowWatchBookmarks", "continue", "fieldSelector", "labelSelector", "limit",
                "resourceVersion", "resourceVersionMatch", "sendInitialEvents", "timeoutSeconds", "watch")
_WRITE_PARAMS = ("dryRun", "fieldManager", "fieldValidation")
_PATCH_PARAMS = (*_WRITE_PARAMS, "force")
_DELETE_PARAMS = ("dryRun", "gracePeriodSeconds", "ignoreStoreReadErrorWithClusterBreakingPotential",
                  "orphanDependents", "propagationPolicy")
_DELETECOLLECTION_PARAMS = ("continue", "dryRun", "fieldSelector", "gracePeriodSeconds",
                            "ignoreStoreReadErrorWithClusterBreakingPotential", "labelSelector", "limit",
                            "orphanDependents", "propagationPolicy", "resourceVersion", "resourceVersionMatch",
                            "sendInitialEvents", "timeoutSeconds")
_CONNECT_PARAMS = {
    "log": ("container", "follow", "insecureSkipTLSVerifyBackend", "limitBytes", "previous", "sinceSeconds",
            "sinceTime", "tailLines", "timestamps"),
    "exec": ("command", "container", "stderr", "stdin", "stdout", "tty"),
    "attach": ("container", "stderr", "stdin", "stdout", "tty"),
    "portforward": ("ports",),
}


# --- schema conversion ---------------------------------------------------------------------

def _ref(name: str) -> Doc:
    return {"$ref": _COMPONENTS + name}


def _to_openapi3(node: Any, refs: set[str]) -> Any:
    """Convert one JSON-schema 2020-12 node to OpenAPI 3.0, collecting referenced names."""
    if isinstance(node, list):
        return [_to_openapi3(x, refs) for x in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        name = schemas.ref_name(node["$ref"])
        refs.add(name)
        siblings = {k: _to_openapi3(v, refs) for k, v in node.items() if k != "$ref"}
        # OpenAPI 3.0 ignores siblings of $ref; kube wraps the ref in allOf to keep them.
        return {**siblings, "allOf": [_ref(name)]} if siblings else _ref(name)
    out: Doc = {}
    for key, value in node.items():
        if key == "type" and isinstance(value, list):
            types = [t for t in value if t != "null"]
            out["type"] = types[0] if len(types) == 1 else value
        elif key == "properties":
            out[key] = {
                # The apiVersion/kind enums are the validator package's addition, not kube's.
                name: _to_openapi3({k: v for k, v in prop.items() if k != "enum"}
                                   if name in ("apiVersion", "kind") else prop, refs)
                for name, prop in value.items()
            }
        elif key in ("items", "additionalProperties", "not"):
            out[key] = _to_openapi3(value, refs)
        elif key in ("allOf", "oneOf", "anyOf"):
            out[key] = [_to_openapi3(x, refs) for x in value]
        else:
            out[key] = copy.deepcopy(value)
    return out


@functools.cache
def _converted() -> dict[str, tuple[Doc, frozenset[str]]]:
    """Every built-in definition in OpenAPI 3.0 form, with the names it references."""
    result = {}
    for name, definition in schemas.definitions().items():
        refs: set[str] = set()
        converted = _to_openapi3(definition, refs)
        if name == _INT_OR_STRING:
            converted["format"] = "int-or-string"
        result[name] = (converted, frozenset(refs))
    return result


def _closure(roots: Iterable[str]) -> list[str]:
    """The named definitions and everything they reference, transitively."""
    converted = _converted()
    seen: set[str] = set()
    stack = [r for r in roots if r in converted]
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        stack.extend(r for r in converted[name][1] if r not in seen)
    return sorted(seen)


def component_name(rt: ResourceType, kind: str | None = None) -> str:
    """Schema name of a type: the definition name, or kube's ``<reversed group>.<version>.<Kind>``."""
    kind = kind or rt.kind
    if rt.definition and kind == rt.kind:
        return rt.definition
    if rt.definition:
        return schemas.definition_name_for(rt.group, rt.version, kind) or f"{rt.definition}{kind}"
    return ".".join([*reversed(rt.group.split(".")), rt.version, kind])


def _builtin_description(prop: str) -> str | None:
    """The description kube gives a standard field (apiVersion, kind, metadata) on every type."""
    pod = schemas.definitions().get("io.k8s.api.core.v1.Pod", {})
    return pod.get("properties", {}).get(prop, {}).get("description")


def _standard_field(prop: str, schema: Doc) -> Doc:
    description = _builtin_description(prop)
    return {**schema, "description": description} if description else schema


def _custom_schemas(rt: ResourceType, refs: set[str]) -> dict[str, Doc]:
    """Component schemas for a custom resource and its list."""
    gvk = {"group": rt.group, "kind": rt.kind, "version": rt.version}
    schema = copy.deepcopy(rt.schema) if rt.schema else {"type": "object",
                                                         "x-kubernetes-preserve-unknown-fields": True}
    schema.setdefault("type", "object")
    props = schema.setdefault("properties", {})
    props["apiVersion"] = _standard_field("apiVersion", {"type": "string"})
    props["kind"] = _standard_field("kind", {"type": "string"})
    props["metadata"] = _standard_field("metadata", {"allOf": [_ref(_OBJECT_META)]})
    schema["x-kubernetes-group-version-kind"] = [gvk]
    refs.update((_OBJECT_META, _LIST_META))
    list_schema: Doc = {
        "type": "object",
        "required": ["items"],
        "properties": {
            "apiVersion": _standard_field("apiVersion", {"type": "string"}),
            "items": {"type": "array", "items": _ref(component_name(rt))},
            "kind": _standard_field("kind", {"type": "string"}),
            "metadata": {"allOf": [_ref(_LIST_META)]},
        },
        "x-kubernetes-group-version-kind": [{**gvk, "kind": rt.list_kind}],
    }
    return {component_name(rt): schema, component_name(rt, rt.list_kind): list_schema}


# --- paths ---------------------------------------------------------------------------------

def _camel(text: str) -> str:
    return "".join(p[:1].upper() + p[1:] for p in text.replace("-", ".").split(".") if p)


def _group_label(group: str) -> str:
    if not group:
        return "Core"
    return _camel(group.removesuffix(".k8s.io"))


def _tag(group: str, version: str) -> str:
    label = _group_label(group)
    return f"{label[:1].lower()}{label[1:]}_{version}"


def _param(name: str, location: str = "query") -> Doc:
    kind, description = _PARAMS.get(name, ("string", ""))
    param: Doc = {"name": name, "in": location, "description": description,
                  "schema": {"type": kind, "uniqueItems": True}}
    if location == "path":
        param["required"] = True
    return param


_PATH_NAME = {"name": "name", "in": "path", "description": "name of the object", "required": True,
              "schema": {"type": "string", "uniqueItems": True}}
_PATH_NAMESPACE = {"name": "namespace", "in": "path", "description": "object name and auth scope",
                   "required": True, "schema": {"type": "string", "uniqueItems": True}}


def _content(schema: Doc | None, media_types: Iterable[str]) -> Doc:
    body = {"schema": schema} if schema is not None else {"schema": {"type": "string"}}
    return {media: copy.deepcopy(body) for media in media_types}


_JSON_YAML = ("application/json", "application/yaml")
_LIST_MEDIA = ("application/json", "application/json;stream=watch", "application/yaml")
_UNAUTHORIZED = {"401": {"description": "Unauthorized"}}


def _operation(rt: ResourceType, action: str, verb: str, kind_label: str, gvk: Doc, *,
               params: Iterable[str] = (), body: Doc | None = None,
               responses: Doc, description: str, all_namespaces: bool = False) -> Doc:
    scope = "" if not rt.namespaced or all_namespaces else "Namespaced"
    suffix = "ForAllNamespaces" if all_namespaces else ""
    op: Doc = {
        "tags": [_tag(rt.group, rt.version)],
        "description": description,
        "operationId": f"{verb}{_group_label(rt.group)}{_camel(rt.version)}{scope}{kind_label}{suffix}",
    }
    if params:
        op["parameters"] = [_param(p) for p in params]
    if body is not None:
        op["requestBody"] = body
    op["responses"] = {**responses, **_UNAUTHORIZED}
    op["x-kubernetes-action"] = action
    op["x-kubernetes-group-version-kind"] = gvk
    return op


def _ok(schema: Doc | None, codes: Iterable[str] = ("200",), media: Iterable[str] = _JSON_YAML) -> Doc:
    labels = {"200": "OK", "201": "Created", "202": "Accepted"}
    return {code: {"description": labels[code], "content": _content(schema, media)} for code in codes}


def _resource_paths(rt: ResourceType, prefix: str) -> dict[str, Doc]:
    """Paths and operations of one resource type, kube's layout."""
    gvk = {"group": rt.group, "version": rt.version, "kind": rt.kind}
    obj = _ref(component_name(rt))
    lst = _ref(component_name(rt, rt.list_kind))
    patch_types = _BUILTIN_PATCH_TYPES if rt.definition else _CUSTOM_PATCH_TYPES
    ns_params = [_PATH_NAMESPACE] if rt.namespaced else []
    collection = f"{prefix}/namespaces/{{namespace}}/{rt.resource}" if rt.namespaced else f"{prefix}/{rt.resource}"
    item = f"{collection}/{{name}}"
    verbs = set(rt.verbs)
    paths: dict[str, Doc] = {}
    pretty = _param("pretty")

    coll: Doc = {}
    if "list" in verbs:
        coll["get"] = _operation(rt, "list", "list", rt.kind, gvk, params=_LIST_PARAMS,
                                 responses=_ok(lst, media=_LIST_MEDIA),
                                 description=f"list or watch objects of kind {rt.kind}")
    if "create" in verbs:
        coll["post"] = _operation(rt, "post", "create", rt.kind, gvk, params=_WRITE_PARAMS,
                                  body={"content": _content(obj, ("*/*",)), "required": True},
                                  responses=_ok(obj, ("200", "201", "202")),
                                  description=f"create {'a' if rt.kind[0] not in 'AEIOU' else 'an'} {rt.kind}")
    if "deletecollection" in verbs:
        coll["delete"] = _operation(rt, "deletecollection", "deleteCollection", rt.kind, gvk,
                                    params=_DELETECOLLECTION_PARAMS,
                                    body={"content": _content(_ref(_DELETE_OPTIONS), ("*/*",))},
                                    responses=_ok(_ref(_STATUS)),
                                    description=f"delete collection of {rt.kind}")
    if coll:
        coll["parameters"] = [*ns_params, pretty]
        paths[collection] = coll

    one: Doc = {}
    if "get" in verbs:
        one["get"] = _operation(rt, "get", "read", rt.kind, gvk, responses=_ok(obj),
                                description=f"read the specified {rt.kind}")
    if "update" in verbs:
        one["put"] = _operation(rt, "put", "replace", rt.kind, gvk, params=_WRITE_PARAMS,
                                body={"content": _content(obj, ("*/*",)), "required": True},
                                responses=_ok(obj, ("200", "201")),
                                description=f"replace the specified {rt.kind}")
    if "patch" in verbs:
        one["patch"] = _operation(rt, "patch", "patch", rt.kind, gvk, params=_PATCH_PARAMS,
                                  body={"content": _content(_ref(_PATCH), patch_types), "required": True},
                                  responses=_ok(obj, ("200", "201")),
                                  description=f"partially update the specified {rt.kind}")
    if "delete" in verbs:
        one["delete"] = _operation(rt, "delete", "delete", rt.kind, gvk, params=_DELETE_PARAMS,
                                   body={"content": _content(_ref(_DELETE_OPTIONS), ("*/*",))},
                                   responses={**_ok(obj), **_ok(_ref(_STATUS), ("202",))},
                                   description=f"delete {'a' if rt.kind[0] not in 'AEIOU' else 'an'} {rt.kind}")
    if one:
        one["parameters"] = [_PATH_NAME, *ns_params, pretty]
        paths[item] = one

    if rt.namespaced and "list" in verbs:
        paths[f"{prefix}/{rt.resource}"] = {
            "get": _operation(rt, "list", "list", rt.kind, gvk, params=_LIST_PARAMS,
                              responses=_ok(lst, media=_LIST_MEDIA), all_namespaces=True,
                              description=f"list or watch objects of kind {rt.kind}"),
            "parameters": [pretty],
        }

    for name in rt.subresources:
        sub = rt.subresource(name)
        sub_gvk = {"group": sub.group, "version": sub.version, "kind": sub.kind}
        sub_definition = schemas.definition_name_for(sub.group or "", sub.version or "", sub.kind or "")
        if (sub.group, sub.version, sub.kind) == (rt.group, rt.version, rt.kind):
            schema: Doc | None = obj
        else:
            schema = _ref(sub_definition) if sub_definition else None
        label = rt.kind + _camel(name)
        ops: Doc = {}
        if name in _CONNECT_PARAMS:
            actions = ("get",) if name == "log" else ("get", "post")
            for method in actions:
                verb = "read" if name == "log" else f"connect{method.capitalize()}"
                ops[method] = _operation(rt, "get" if name == "log" else "connect", verb, label, sub_gvk,
                                         params=_CONNECT_PARAMS[name],
                                         responses=_ok(None, media=("*/*",)),
                                         description=f"{name} of {rt.kind}")
        else:
            sub_verbs = set(sub.verbs)
            if "get" in sub_verbs:
                ops["get"] = _operation(rt, "get", "read", label, sub_gvk, responses=_ok(schema),
                                        description=f"read {name} of the specified {rt.kind}")
            if "update" in sub_verbs:
                ops["put"] = _operation(rt, "put", "replace", label, sub_gvk, params=_WRITE_PARAMS,
                                        body={"content": _content(schema, ("*/*",)), "required": True},
                                        responses=_ok(schema, ("200", "201")),
                                        description=f"replace {name} of the specified {rt.kind}")
            if "patch" in sub_verbs:
                ops["patch"] = _operation(rt, "patch", "patch", label, sub_gvk, params=_PATCH_PARAMS,
                                          body={"content": _content(_ref(_PATCH), patch_types), "required": True},
                                          responses=_ok(schema, ("200", "201")),
                                          description=f"partially update {name} of the specified {rt.kind}")
            if "create" in sub_verbs:
                ops["post"] = _operation(rt, "post", "create", label, sub_gvk, params=_WRITE_PARAMS,
                                         body={"content": _content(schema, ("*/*",)), "required": True},
                                         responses=_ok(schema, ("200", "201", "202")),
                                         description=f"create {name} of {rt.kind}")
        ops["parameters"] = [_PATH_NAME, *ns_params, pretty]
        paths[f"{item}/{name}"] = ops
    return paths


def _collect_refs(node: Any, refs: set[str]) -> None:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith(_COMPONENTS):
            refs.add(ref[len(_COMPONENTS):])
        for value in node.values():
            _collect_refs(value, refs)
    elif isinstance(node, list):
        for value in node:
            _collect_refs(value, refs)


def build_document(registry: Registry, group: str, version: str) -> Doc | None:
    """The OpenAPI 3.0 document of one group-version, or None if nothing is served there."""
    types = registry.resources(group, version)
    if not types:
        return None
    prefix = f"/apis/{group}/{version}" if group else f"/api/{version}"
    paths: dict[str, Doc] = {
        f"{prefix}/": {"get": {
            "tags": [_tag(group, version)],
            "description": "get available resources",
            "operationId": f"get{_group_label(group)}{_camel(version)}APIResources",
            "responses": {**_ok(_ref(_RESOURCE_LIST)), **_UNAUTHORIZED},
        }},
    }
    custom: dict[str, Doc] = {}
    refs: set[str] = {_RESOURCE_LIST}
    for rt in types:
        paths.update(_resource_paths(rt, prefix))
        if rt.definition is None:
            custom.update(_custom_schemas(rt, refs))
    _collect_refs(paths, refs)
    _collect_refs(custom, refs)
    converted = _converted()
    component_schemas = {name: converted[name][0] for name in _closure(r for r in refs if r not in custom)}
    component_schemas.update(custom)
    return {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": schemas.KUBERNETES_VERSION},
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": dict(sorted(component_schemas.items())),
            "securitySchemes": {"BearerToken": {"type": "apiKey", "description": "Bearer Token authentication",
                                                "name": "authorization", "in": "header"}},
        },
    }


def document_path(group: str, version: str) -> str:
    """``api/v1`` or ``apis/<group>/<version>``: the key in the index and the URL tail."""
    return f"apis/{group}/{version}" if group else f"api/{version}"


class OpenAPIV3:
    """Serialized ``/openapi/v3`` documents, cached until the registry changes that group-version."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self._docs: dict[tuple[str, str], tuple[int, bytes, str]] = {}

    def document(self, group: str, version: str) -> tuple[bytes, str]:
        """(JSON body, uppercase hex SHA-512) of one group-version; KeyError if not served."""
        generation = self.registry.gv_generation(group, version)
        cached = self._docs.get((group, version))
        if cached is not None and cached[0] == generation:
            return cached[1], cached[2]
        doc = build_document(self.registry, group, version)
        if doc is None:
            self._docs.pop((group, version), None)
            raise KeyError(document_path(group, version))
        data = json.dumps(doc, separators=(",", ":")).encode()
        digest = hashlib.sha512(data).hexdigest().upper()
        self._docs[(group, version)] = (generation, data, digest)
        return data, digest

    def document_by_path(self, path: str) -> tuple[bytes, str]:
        """The document for an index key such as ``apis/apps/v1``; KeyError if unknown."""
        parts = path.strip("/").split("/")
        if len(parts) == 2 and parts[0] == "api":
            return self.document("", parts[1])
        if len(parts) == 3 and parts[0] == "apis":
            return self.document(parts[1], parts[2])
        raise KeyError(path)

    def index(self) -> Doc:
        """The ``/openapi/v3`` root: every group-version with its hash-pinned URL."""
        paths = {}
        for info in self.registry.groups():
            for version in info.versions:
                _, digest = self.document(info.name, version)
                key = document_path(info.name, version)
                paths[key] = {"serverRelativeURL": f"/openapi/v3/{key}?hash={digest}"}
        # Forget documents of group-versions that are gone.
        served = {(g.name, v) for g in self.registry.groups() for v in g.versions}
        for key in [k for k in self._docs if k not in served]:
            del self._docs[key]
        return {"paths": paths}

    def index_bytes(self) -> bytes:
        """The index as the JSON body of ``GET /openapi/v3``."""
        return json.dumps(self.index(), separators=(",", ":")).encode()
