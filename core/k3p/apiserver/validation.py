"""Schema checks of request bodies: unknown fields, JSON types, required fields.

One walker serves both kinds of schema:

* built-in types (nodes reached through a definition of :mod:`k3p.apiserver.schemas`) behave
  like kube's Go decoder: an object without ``properties`` (``RawExtension``, ``FieldsV1``)
  takes anything, and a wrong JSON type is reported in ``encoding/json``'s words
  (``json: cannot unmarshal string into Go struct field ContainerPort.spec.containers.ports.containerPort
  of type int32``), which kube sends as a 400 BadRequest;
* custom-resource schemas (structural OpenAPI v3) behave like kube's pruning and OpenAPI
  validation: an object keeps only its ``properties`` unless
  ``x-kubernetes-preserve-unknown-fields`` is set, and wrong types and enums become causes of
  a 422 Invalid.

Unknown-field paths are kube's: ``spec.containers[0].foo``. Duplicate fields are the JSON
parser's concern and not looked at here.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from typing import Any, Literal

from k3p.apiserver import schemas
from k3p.selectors import go_quote

Mode = Literal["Strict", "Warn", "Ignore"]
MODES: tuple[str, ...] = ("Strict", "Warn", "Ignore")

_OBJECT_META = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
_INT32 = (-(2**31), 2**31 - 1)
_INT64 = (-(2**63), 2**63 - 1)


@dataclass
class Cause:
    """One entry of a Status's ``details.causes``."""

    reason: str
    message: str
    field: str

    def as_dict(self) -> dict[str, str]:
        """The cause as it appears in a Status object."""
        return {"reason": self.reason, "message": self.message, "field": self.field}

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message


@dataclass
class ValidationResult:
    """What a body got wrong; the API layer turns this into kube's responses."""

    mode: str = "Strict"
    unknown_fields: list[str] = field(default_factory=list)
    type_errors: list[Cause] = field(default_factory=list)
    required: list[Cause] = field(default_factory=list)
    invalid: list[Cause] = field(default_factory=list)
    # True when type errors are Go decoder errors (400) rather than schema errors (422).
    decoder_errors: bool = True

    @property
    def ok(self) -> bool:
        """True if nothing makes the request fail (Warn-mode unknown fields do not)."""
        return not (self.strict_error() or self.type_errors or self.required or self.invalid)

    def strict_error(self) -> str | None:
        """The 400 BadRequest message for unknown fields in Strict mode, else None."""
        if self.mode != "Strict" or not self.unknown_fields:
            return None
        return "strict decoding error: " + ", ".join(f"unknown field {go_quote(p)}" for p in self.unknown_fields)

    def warnings(self) -> list[str]:
        """One ``Warning`` header text per unknown field in Warn mode."""
        if self.mode != "Warn":
            return []
        return [f"unknown field {go_quote(p)}" for p in self.unknown_fields]

    def decode_error(self, kind: str, version: str) -> str | None:
        """kube's 400 message when a built-in body cannot be decoded, else None.

        ``Deployment in version "v1" cannot be handled as a Deployment: json: cannot unmarshal ...``
        """
        if not (self.decoder_errors and self.type_errors):
            return None
        return f'{kind} in version "{version}" cannot be handled as a {kind}: {self.type_errors[0].message}'

    def causes(self) -> list[Cause]:
        """Causes for a 422 Invalid: required fields, schema type errors, unsupported values."""
        typed = [] if self.decoder_errors else self.type_errors
        return [*typed, *self.required, *self.invalid]


@functools.cache
def _definition_ids() -> dict[int, str]:
    return {id(node): name for name, node in schemas.definitions().items()}


def _go_type_name(definition: str) -> str:
    parts = definition.split(".")
    return f"{parts[-2]}.{parts[-1]}" if len(parts) >= 2 else definition


def _resolve(node: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """Follow $ref (plain or wrapped in a one-entry allOf); returns the node and definition name."""
    name = None
    while True:
        ref = node.get("$ref")
        if ref is None and len(node.get("allOf", ())) == 1:
            ref = node["allOf"][0].get("$ref")
        if ref is None:
            return node, name
        name = schemas.ref_name(ref)
        node = schemas.definitions()[name]


def _types(node: dict[str, Any]) -> frozenset[str] | None:
    """The JSON types a node accepts (None: any), ``null`` left out."""
    if node.get("x-kubernetes-int-or-string") or node.get("format") == "int-or-string":
        return frozenset(("integer", "string"))
    t = node.get("type")
    if t is None:
        alternatives = node.get("oneOf") or node.get("anyOf")
        if not alternatives:
            return None
        union: set[str] = set()
        for alt in alternatives:
            sub = _types(_resolve(alt)[0])
            if sub is None:
                return None
            union |= sub
        return frozenset(union)
    types = {t} if isinstance(t, str) else set(t)
    types.discard("null")
    return frozenset(types) or None


def _json_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "integer" if value.is_integer() else "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return "null"


def _accepts(types: frozenset[str], kind: str) -> bool:
    return kind in types or (kind == "integer" and "number" in types)


# encoding/json's names for what it found.
_GO_VALUE = {"boolean": "bool", "integer": "number", "number": "number", "string": "string",
             "array": "array", "object": "object"}


def _go_type(node: dict[str, Any]) -> str:
    """Go's name for the type a (possibly $ref) node decodes into: ``int32``, ``[]v1.Container``."""
    name = _resolve(node)[1]
    if name:
        return _go_type_name(name)
    t = node.get("type")
    types = [t] if isinstance(t, str) else [x for x in (t or ()) if x != "null"]
    kind = types[0] if types else None
    if kind == "array":
        return "[]" + _go_type(node.get("items") or {})
    if kind == "object":
        extra = node.get("additionalProperties")
        if isinstance(extra, dict):
            return "map[string]" + _go_type(extra)
        return "map[string]interface {}"
    if kind == "integer":
        return "int32" if node.get("format") == "int32" else "int64"
    if kind == "number":
        return "float64"
    if kind == "string":
        return "[]uint8" if node.get("format") == "byte" else "string"
    if kind == "boolean":
        return "bool"
    return "interface {}"


def _quote(value: Any) -> str:
    return json.dumps(value) if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


class _Walker:
    def __init__(self, result: ValidationResult, collect_unknown: bool) -> None:
        self.result = result
        self.collect_unknown = collect_unknown

    def walk(self, value: Any, node: dict[str, Any], path: str, go_path: str, struct: str | None,
             builtin: bool) -> None:
        resolved, name = _resolve(node)
        builtin = builtin or name is not None
        if value is None:
            # Go decodes null to the zero value; kube prunes nulls from custom resources.
            return
        types = _types(resolved)
        kind = _json_kind(value)
        if types is not None and not _accepts(types, kind):
            # Go names the number it could not fit into an integer field.
            literal = builtin and kind == "number" and "integer" in types
            self._type_error(value, kind, node, types, path, go_path, struct, builtin, literal=literal)
            return
        if builtin and kind == "integer" and "integer" in (types or ()) and "string" not in (types or ()):
            low, high = _INT32 if resolved.get("format") == "int32" else _INT64
            if isinstance(value, float) or not low <= value <= high:
                self._type_error(value, "number", node, types or frozenset(), path, go_path, struct, builtin,
                                 literal=True)
                return
        if not builtin and "enum" in resolved and value not in resolved["enum"]:
            supported = ", ".join(_quote(v) for v in resolved["enum"])
            self.result.invalid.append(Cause("FieldValueNotSupported",
                                             f"Unsupported value: {_quote(value)}: supported values: {supported}",
                                             path))
        if kind == "object":
            self._object(value, resolved, path, go_path, name or struct, builtin)
        elif kind == "array":
            items = resolved.get("items")
            if isinstance(items, dict):
                for i, item in enumerate(value):
                    self.walk(item, items, f"{path}[{i}]", go_path, name or struct, builtin)

    def _object(self, value: dict[str, Any], node: dict[str, Any], path: str, go_path: str,
                struct: str | None, builtin: bool) -> None:
        properties: dict[str, Any] = node.get("properties") or {}
        extra = node.get("additionalProperties")
        preserve = node.get("x-kubernetes-preserve-unknown-fields") is True
        embedded = node.get("x-kubernetes-embedded-resource") is True
        for required in node.get("required", ()):
            if value.get(required) is None:
                self.result.required.append(Cause("FieldValueRequired", "Required value", _join(path, required)))
        if embedded and not builtin:
            # An embedded object carries its own apiVersion, kind and metadata.
            properties = {"apiVersion": {"type": "string"}, "kind": {"type": "string"},
                          "metadata": {"$ref": "#/$defs/" + _OBJECT_META}, **properties}
        free_form = not properties and extra is None and (builtin or preserve)
        for key, child in value.items():
            if key in properties:
                self.walk(child, properties[key], _join(path, key), _join(go_path, key), struct, builtin)
            elif isinstance(extra, dict):
                self.walk(child, extra, f"{path}[{key}]", go_path, struct, builtin)
            elif extra is True or preserve or free_form:
                continue
            elif self.collect_unknown:
                self.result.unknown_fields.append(_join(path, key))

    def _type_error(self, value: Any, kind: str, node: dict[str, Any], types: frozenset[str], path: str,
                    go_path: str, struct: str | None, builtin: bool, literal: bool = False) -> None:
        if builtin:
            found = _GO_VALUE.get(kind, kind)
            if literal:
                found = f"number {value}"
            where = (f"Go struct field {struct.rsplit('.', 1)[-1]}.{go_path}" if struct and go_path
                     else "Go value")
            message = f"json: cannot unmarshal {found} into {where} of type {_go_type(node)}"
        else:
            expected = ",".join(sorted(types))
            message = (f'Invalid value: "{kind}": {path or "<root>"} in body must be of type {expected}: '
                       f'"{kind}"')
        self.result.type_errors.append(Cause("FieldValueTypeInvalid", message, path))


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def validate(obj: Any, schema: dict[str, Any], mode: str = "Strict", *, builtin: bool | None = None,
             ) -> ValidationResult:
    """Check ``obj`` against ``schema`` (a built-in definition or a custom-resource schema).

    ``mode`` is the request's fieldValidation: unknown fields are collected for Strict and
    Warn and ignored for Ignore. Type errors and missing required fields are found in every
    mode. ``builtin`` (found out from ``schema`` when None) picks Go-decoder semantics.
    """
    if mode not in MODES:
        raise ValueError(f"fieldValidation must be one of {', '.join(MODES)}, not {mode!r}")
    definition = _definition_ids().get(id(schema))
    if builtin is None:
        builtin = definition is not None
    result = ValidationResult(mode=mode, decoder_errors=builtin)
    node: dict[str, Any] = {"$ref": "#/$defs/" + definition} if definition else schema
    _Walker(result, collect_unknown=mode != "Ignore").walk(obj, node, "", "", None, builtin)
    return result


def drop_typed_nulls(obj: dict[str, Any], schema: dict[str, Any] | None) -> None:
    """Remove the null fields of a built-in object where its schema gives the field a type.

    Go decodes a null into a nil or zero field, so none reaches kube's storage (the
    strategies rely on that too). Free-form parts (RawExtension such as a ControllerRevision's
    ``data``, JSON values, preserved unknown fields) keep their nulls, as Go keeps their bytes.
    """
    if schema is None:
        return
    stack: list[tuple[Any, dict[str, Any]]] = [(obj, schema)]
    while stack:
        value, node = stack.pop()
        node = _resolve(node)[0]
        if isinstance(value, dict):
            props = node.get("properties")
            extra = node.get("additionalProperties")
            if props:
                for key in [k for k, v in value.items() if v is None and k in props]:
                    del value[key]
                stack.extend((v, props[k]) for k, v in value.items() if k in props and isinstance(v, dict | list))
            elif isinstance(extra, dict) and extra:
                stack.extend((v, extra) for v in value.values() if isinstance(v, dict | list))
        elif isinstance(value, list) and isinstance(node.get("items"), dict):
            items = node["items"]
            stack.extend((v, items) for v in value if isinstance(v, dict | list))

