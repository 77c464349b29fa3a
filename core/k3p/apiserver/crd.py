"""CustomResourceDefinitions: checking them, serving them, and the status the server sets.

Works on ``apiextensions.k8s.io/v1`` objects as plain dicts. Messages follow kube's
field-error wording (``spec.versions: Invalid value: ...: must have exactly one version marked
as storage version``) so clients see what they would see from a real cluster.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from k3p.apiserver.registry import VERBS_CUSTOM_RESOURCE, Registry, ResourceType
from k3p.apiserver.validation import Cause
from k3p.client.objects import format_time

CRD = dict[str, Any]

_OBJECT_META_REF = "#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1035_MESSAGE = (
    "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an "
    "alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', "
    "regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')"
)
_DNS1123_SUBDOMAIN_MESSAGE = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', "
    "and must start and end with an alphanumeric character (e.g. 'example.com', regex used for "
    "validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
)
_SCALAR_TYPES = {"string", "integer", "number", "boolean"}
_ALL_TYPES = {*_SCALAR_TYPES, "object", "array"}


def _value(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True, default=str)


def _invalid(path: str, value: Any, detail: str) -> Cause:
    return Cause("FieldValueInvalid", f"Invalid value: {_value(value)}: {detail}", path)


def _required(path: str, detail: str = "") -> Cause:
    return Cause("FieldValueRequired", "Required value" + (f": {detail}" if detail else ""), path)


def _forbidden(path: str, detail: str) -> Cause:
    return Cause("FieldValueForbidden", f"Forbidden: {detail}", path)


def _not_supported(path: str, value: Any, supported: Iterable[str]) -> Cause:
    values = ", ".join(_value(s) for s in supported)
    return Cause("FieldValueNotSupported", f"Unsupported value: {_value(value)}: supported values: {values}", path)


def _is_subdomain(value: str) -> bool:
    return len(value) <= 253 and all(_DNS1123_LABEL.match(p) for p in value.split("."))


def with_defaults(crd: CRD) -> CRD:
    """A copy with the defaults kube fills in: singular, listKind, conversion strategy."""
    out = copy.deepcopy(crd)
    spec = out.setdefault("spec", {})
    names = spec.setdefault("names", {})
    kind = names.get("kind") or ""
    if kind and not names.get("singular"):
        names["singular"] = kind.lower()
    if kind and not names.get("listKind"):
        names["listKind"] = kind + "List"
    spec.setdefault("conversion", {"strategy": "None"})
    return out


def served_versions(crd: CRD) -> list[dict[str, Any]]:
    """The entries of spec.versions with ``served: true``."""
    return [v for v in (crd.get("spec") or {}).get("versions") or () if v.get("served")]


def storage_version(crd: CRD) -> str | None:
    """The name of the version marked ``storage: true`` (None if there is none)."""
    return next((v.get("name") for v in (crd.get("spec") or {}).get("versions") or () if v.get("storage")), None)


def resource_types(crd: CRD) -> list[ResourceType]:
    """One ResourceType per served version of a valid CRD (under its accepted names, if any)."""
    crd = with_defaults(crd)
    spec = crd["spec"]
    names = spec["names"]
    # kube serves a CRD under the names it accepted (they lag the spec while a name conflicts).
    accepted = (crd.get("status") or {}).get("acceptedNames") or {}
    if accepted.get("plural") and accepted.get("kind"):
        names = {**accepted, "listKind": accepted.get("listKind") or accepted["kind"] + "List"}
    group = spec["group"]
    stored = storage_version(crd)
    types = []
    for version in served_versions(crd):
        subresources = version.get("subresources") or {}
        subs = tuple(s for s in ("scale", "status") if s in subresources)
        scale = subresources.get("scale")
        schema = (version.get("schema") or {}).get("openAPIV3Schema")
        types.append(ResourceType(
            group=group,
            version=version["name"],
            resource=names["plural"],
            kind=names["kind"],
            singular=names.get("singular") or names["kind"].lower(),
            namespaced=spec.get("scope") == "Namespaced",
            short_names=tuple(names.get("shortNames") or ()),
            categories=tuple(names.get("categories") or ()),
            verbs=VERBS_CUSTOM_RESOURCE,
            subresources=subs,
            definition=None,
            schema=copy.deepcopy(schema) if schema is not None else None,
            list_kind=names.get("listKind") or names["kind"] + "List",
            storage_group=group,
            storage_version=stored,
            printer_columns=tuple(copy.deepcopy(c) for c in version.get("additionalPrinterColumns") or ()),
            scale_paths=dict(scale) if scale is not None else None,
            selectable_fields=tuple(f.get("jsonPath", "") for f in version.get("selectableFields") or ()),
            deprecation_warning=(version.get("deprecationWarning")
                                 or (f"{group}/{version['name']} {names['kind']} is deprecated"
                                     if version.get("deprecated") else None)),
            custom=True,
        ))
    return types


def validation_schema(rt: ResourceType) -> dict[str, Any]:
    """The schema to validate a custom resource with: apiVersion, kind and metadata are implicit."""
    schema = rt.schema or {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    properties = dict(schema.get("properties") or {})
    properties["apiVersion"] = {"type": "string"}
    properties["kind"] = {"type": "string"}
    # kube validates metadata as ObjectMeta whatever the CRD says about it.
    properties["metadata"] = {"$ref": _OBJECT_META_REF}
    return {**schema, "properties": properties}


# --- validating a CRD ----------------------------------------------------------------------

def validate_crd(crd: CRD) -> list[Cause]:
    """Static checks of a (defaulted) CRD: names, versions, scope, structural schemas."""
    causes: list[Cause] = []
    spec = crd.get("spec") or {}
    names = spec.get("names") or {}
    group = spec.get("group") or ""
    plural = names.get("plural") or ""
    name = (crd.get("metadata") or {}).get("name") or ""

    if not name:
        causes.append(_required("metadata.name", "name or generateName is required"))
    elif name != f"{plural}.{group}":
        causes.append(_invalid("metadata.name", name, 'must be spec.names.plural+"."+spec.group'))

    if not group:
        causes.append(_required("spec.group"))
    elif not _is_subdomain(group):
        causes.append(_invalid("spec.group", group, _DNS1123_SUBDOMAIN_MESSAGE))
    elif "." not in group:
        causes.append(_invalid("spec.group", group, "should be a domain with at least one dot"))

    scope = spec.get("scope") or ""
    if not scope:
        causes.append(_required("spec.scope"))
    elif scope not in ("Cluster", "Namespaced"):
        causes.append(_not_supported("spec.scope", scope, ("Cluster", "Namespaced")))

    causes.extend(_validate_names(names, "spec.names", for_spec=True))
    causes.extend(_validate_versions(spec.get("versions") or []))

    conversion = (spec.get("conversion") or {}).get("strategy", "None")
    if conversion not in ("None", "Webhook"):
        causes.append(_not_supported("spec.conversion.strategy", conversion, ("None", "Webhook")))
    return causes


def _validate_names(names: dict[str, Any], path: str, *, for_spec: bool) -> list[Cause]:
    causes = []
    if for_spec:
        for key in ("plural", "singular", "kind", "listKind"):
            if not names.get(key):
                causes.append(_required(f"{path}.{key}"))
    for key in ("plural", "singular"):
        value = names.get(key)
        if value and not _DNS1035.match(value):
            causes.append(_invalid(f"{path}.{key}", value, _DNS1035_MESSAGE))
    for key in ("kind", "listKind"):
        value = names.get(key)
        if value and not _DNS1035.match(value.lower()):
            causes.append(_invalid(f"{path}.{key}", value,
                                   "may have mixed case, but should otherwise match: " + _DNS1035_MESSAGE))
    for key in ("shortNames", "categories"):
        for i, value in enumerate(names.get(key) or ()):
            if not _DNS1035.match(value or ""):
                causes.append(_invalid(f"{path}.{key}[{i}]", value, _DNS1035_MESSAGE))
    if names.get("kind") and names.get("kind") == names.get("listKind"):
        causes.append(_invalid(f"{path}.listKind", names["listKind"], "kind and listKind may not be the same"))
    return causes


def _validate_versions(versions: list[dict[str, Any]]) -> list[Cause]:
    causes: list[Cause] = []
    if not versions:
        return [_required("spec.versions", "must have exactly one version marked as storage version")]
    seen: set[str] = set()
    duplicate = False
    storage_count = 0
    for i, version in enumerate(versions):
        path = f"spec.versions[{i}]"
        name = version.get("name") or ""
        if not name:
            causes.append(_required(f"{path}.name"))
        elif not _DNS1035.match(name):
            causes.append(_invalid(f"{path}.name", name, _DNS1035_MESSAGE))
        duplicate |= name in seen
        seen.add(name)
        storage_count += bool(version.get("storage"))
        schema = (version.get("schema") or {}).get("openAPIV3Schema")
        schema_path = f"{path}.schema.openAPIV3Schema"
        if schema is None:
            causes.append(_required(schema_path, "schemas are required"))
        else:
            causes.extend(_validate_structural(schema, schema_path, root=True))
        scale = (version.get("subresources") or {}).get("scale")
        if scale is not None:
            for key in ("specReplicasPath", "statusReplicasPath"):
                if not scale.get(key):
                    causes.append(_required(f"{path}.subresources.scale.{key}"))
        for j, column in enumerate(version.get("additionalPrinterColumns") or ()):
            column_path = f"{path}.additionalPrinterColumns[{j}]"
            for key in ("name", "type", "jsonPath"):
                if not column.get(key):
                    causes.append(_required(f"{column_path}.{key}"))
    if duplicate:
        causes.append(_invalid("spec.versions", [v.get("name") for v in versions], "must contain unique version names"))
    if storage_count != 1:
        causes.append(_invalid("spec.versions", [v.get("name") for v in versions],
                               "must have exactly one version marked as storage version"))
    return causes


def _validate_structural(node: Any, path: str, *, root: bool = False, item: bool = False) -> list[Cause]:
    """The basics of a structural schema: every specified field has a type, root is an object."""
    causes: list[Cause] = []
    if not isinstance(node, dict):
        return [_invalid(path, node, "must be a schema object")]
    t = node.get("type")
    int_or_string = node.get("x-kubernetes-int-or-string") is True
    preserve = node.get("x-kubernetes-preserve-unknown-fields")
    if "$ref" in node:
        causes.append(_forbidden(f"{path}.$ref", "$ref is not supported"))
    if preserve is False:
        causes.append(_invalid(f"{path}.x-kubernetes-preserve-unknown-fields", False, "must be true or undefined"))
    if t is not None and t not in _ALL_TYPES:
        causes.append(_not_supported(f"{path}.type", t, sorted(_ALL_TYPES)))
    if root:
        if not t:
            causes.append(_required(f"{path}.type", "must not be empty at the root"))
        elif t != "object":
            causes.append(_invalid(f"{path}.type", t, "must be object at the root"))
    elif not t and not int_or_string and preserve is not True:
        what = "array items" if item else "object fields"
        causes.append(_required(f"{path}.type", f"must not be empty for specified {what}"))
    if node.get("x-kubernetes-embedded-resource") and t != "object":
        causes.append(_invalid(f"{path}.type", t, "must be object if x-kubernetes-embedded-resource is true"))
    properties = node.get("properties") or {}
    extra = node.get("additionalProperties")
    if properties and extra is not None and extra is not True:
        causes.append(_forbidden(f"{path}.additionalProperties",
                                 "additionalProperties and properties are mutual exclusive"))
    if extra is False:
        causes.append(_forbidden(f"{path}.additionalProperties", "must not be false"))
    for name, child in properties.items():
        causes.extend(_validate_structural(child, f"{path}.properties[{name}]"))
    if isinstance(extra, dict):
        causes.extend(_validate_structural(extra, f"{path}.additionalProperties"))
    if t == "array":
        items = node.get("items")
        if items is None:
            causes.append(_required(f"{path}.items", "must be specified"))
        elif isinstance(items, dict):
            causes.extend(_validate_structural(items, f"{path}.items", item=True))
        else:
            causes.append(_forbidden(f"{path}.items", "items must be a schema object and not an array"))
    return causes


# --- status --------------------------------------------------------------------------------

_NAME_CONFLICT_REASONS = (
    ("plural", "PluralConflict"),
    ("singular", "SingularConflict"),
    ("shortNames", "ShortNamesConflict"),
    ("kind", "KindConflict"),
    ("listKind", "ListKindConflict"),
)


def _names_in_use(registry: Registry | None, group: str, own_plural: str) -> dict[str, set[str]]:
    """Names other resources of the group already serve, by what they are used as."""
    used: dict[str, set[str]] = {"resource": set(), "shortNames": set(), "kind": set()}
    for rt in registry or ():
        if rt.group != group or rt.resource == own_plural:
            continue
        used["resource"] |= {rt.resource, rt.singular}
        used["shortNames"] |= set(rt.short_names)
        used["kind"] |= {rt.kind, rt.list_kind}
    return used


def _condition(old: list[dict[str, Any]], type_: str, status: str, reason: str, message: str,
               now: str) -> dict[str, Any]:
    previous = next((c for c in old if c.get("type") == type_), None)
    changed = previous is None or previous.get("status") != status
    return {
        "type": type_,
        "status": status,
        "lastTransitionTime": now if changed else previous.get("lastTransitionTime", now),
        "reason": reason,
        "message": message,
    }


def crd_status(crd: CRD, registry: Registry | None = None, now: datetime | None = None) -> dict[str, Any]:
    """The status the API server writes when it takes a CRD into service.

    ``acceptedNames`` are the spec's names unless another resource of the same group already
    uses one of them; then ``NamesAccepted`` is False with kube's conflict reason and a CRD that
    was never established stays un-established.
    """
    crd = with_defaults(crd)
    spec = crd["spec"]
    names = spec["names"]
    old_status = crd.get("status") or {}
    old_conditions = old_status.get("conditions") or []
    timestamp = format_time(now)
    used = _names_in_use(registry, spec["group"], names.get("plural", ""))

    conflict: tuple[str, str] | None = None
    if names.get("plural") in used["resource"]:
        conflict = ("PluralConflict", names["plural"])
    elif names.get("singular") in used["resource"]:
        conflict = ("SingularConflict", names["singular"])
    elif used["shortNames"] & set(names.get("shortNames") or ()) or used["resource"] & set(
            names.get("shortNames") or ()):
        clash = sorted((used["shortNames"] | used["resource"]) & set(names.get("shortNames") or ()))
        conflict = ("ShortNamesConflict", clash[0])
    elif names.get("kind") in used["kind"]:
        conflict = ("KindConflict", names["kind"])
    elif names.get("listKind") in used["kind"]:
        conflict = ("ListKindConflict", names["listKind"])

    accepted = old_status.get("acceptedNames") or {}
    if conflict is None:
        accepted_names = {k: copy.deepcopy(names[k]) for k in
                          ("plural", "singular", "shortNames", "kind", "listKind", "categories") if names.get(k)}
        names_accepted = _condition(old_conditions, "NamesAccepted", "True", "NoConflicts", "no conflicts found",
                                    timestamp)
    else:
        accepted_names = copy.deepcopy(accepted)
        names_accepted = _condition(old_conditions, "NamesAccepted", "False", conflict[0],
                                    f'"{conflict[1]}" is already in use', timestamp)

    was_established = any(c.get("type") == "Established" and c.get("status") == "True" for c in old_conditions)
    if conflict is None or was_established:
        established = _condition(old_conditions, "Established", "True", "InitialNamesAccepted",
                                 "the initial names have been accepted", timestamp)
    else:
        established = _condition(old_conditions, "Established", "False", "NotAccepted",
                                 "not all names are accepted", timestamp)

    stored = list(old_status.get("storedVersions") or [])
    storage = storage_version(crd)
    if storage and storage not in stored:
        stored.append(storage)

    others = [c for c in old_conditions if c.get("type") not in ("NamesAccepted", "Established")]
    return {
        "conditions": [names_accepted, established, *others],
        "acceptedNames": accepted_names,
        "storedVersions": stored,
    }


def is_established(crd: CRD) -> bool:
    """True once the CRD's Established condition is True (its resources are served)."""
    conditions = (crd.get("status") or {}).get("conditions") or ()
    return any(c.get("type") == "Established" and c.get("status") == "True" for c in conditions)
