"""``/openapi/v2``: the schema definitions as a Swagger 2.0 document, in gnostic's protobuf form.

kubectl validates most objects against ``/openapi/v3``, but a ``kind: List`` (what
``kubectl get -o yaml`` writes for several objects) is checked item by item on the client
against ``/openapi/v2``, fetched as protobuf (the ``openapi.v2.Document`` message of
google/gnostic). The document is made from the same definitions as the v3 documents:
only ``definitions`` matter to kubectl's validator (it finds a kind through each
definition's ``x-kubernetes-group-version-kind``), so no paths are written.

Schemas that accept more than one JSON type (int-or-string, ``anyOf``) carry no type
here: the validator then accepts any value there, as the server still checks it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any

from k3p.apiserver import schemas

Doc = dict[str, Any]

MEDIA_TYPE = "application/com.github.proto-openapi.spec.v2@v1.0+protobuf"
_V3_REF = "#/components/schemas/"
_V2_REF = "#/definitions/"

# Field numbers of gnostic's openapi.v2 messages (openapiv2/OpenAPIv2.proto).
_DOC_SWAGGER, _DOC_INFO, _DOC_PATHS, _DOC_DEFINITIONS = 1, 2, 8, 9
_INFO_TITLE, _INFO_VERSION = 1, 2
_NAMED_NAME, _NAMED_VALUE = 1, 2
_ANY_YAML = 2
_S_REF, _S_FORMAT, _S_DESCRIPTION, _S_REQUIRED = 1, 2, 4, 19
_S_ADDITIONAL, _S_TYPE, _S_ITEMS, _S_ALL_OF, _S_PROPERTIES, _S_EXTENSION = 21, 22, 23, 24, 25, 31
_ADDITIONAL_SCHEMA, _ADDITIONAL_BOOLEAN = 1, 2
_LIST_VALUE = 1  # TypeItem.value, ItemsItem.schema, Properties/Definitions.additional_properties


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _bytes(field: int, data: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(data)) + data


def _text(field: int, value: str) -> bytes:
    return _bytes(field, value.encode())


def _bool(field: int, value: bool) -> bytes:
    return _varint(field << 3) + _varint(1 if value else 0)


def _named(name: str, value: bytes) -> bytes:
    return _text(_NAMED_NAME, name) + _bytes(_NAMED_VALUE, value)


def _v2_ref(ref: str) -> str:
    return _V2_REF + ref[len(_V3_REF):] if ref.startswith(_V3_REF) else ref


def _multi_typed(node: Doc) -> bool:
    return bool(node.get("x-kubernetes-int-or-string") or node.get("anyOf") or node.get("oneOf")
                or node.get("format") == "int-or-string")


def encode_schema(node: Doc, descriptions: bool = False) -> bytes:
    """One JSON schema (v3 form, refs to ``#/components/schemas``) as an ``openapi.v2.Schema``."""
    all_of = node.get("allOf") or []
    if len(all_of) == 1 and "$ref" in all_of[0] and "properties" not in node:
        # the v3 form wraps a reference that has siblings (a default, a description)
        node = {**{k: v for k, v in node.items() if k != "allOf"}, "$ref": all_of[0]["$ref"]}
        all_of = []
    out = bytearray()
    if "$ref" in node:
        return _text(_S_REF, _v2_ref(node["$ref"]))
    multi = _multi_typed(node)
    if node.get("format") and not multi:
        out += _text(_S_FORMAT, str(node["format"]))
    if descriptions and node.get("description"):
        out += _text(_S_DESCRIPTION, node["description"])
    for name in node.get("required") or ():
        out += _text(_S_REQUIRED, name)
    extra = node.get("additionalProperties")
    if isinstance(extra, dict):
        out += _bytes(_S_ADDITIONAL, _bytes(_ADDITIONAL_SCHEMA, encode_schema(extra, descriptions)))
    elif isinstance(extra, bool):
        out += _bytes(_S_ADDITIONAL, _bool(_ADDITIONAL_BOOLEAN, extra))
    kind = node.get("type")
    if kind and not multi:
        types = kind if isinstance(kind, list) else [kind]
        out += _bytes(_S_TYPE, b"".join(_text(_LIST_VALUE, t) for t in types))
    if isinstance(node.get("items"), dict):
        out += _bytes(_S_ITEMS, _bytes(_LIST_VALUE, encode_schema(node["items"], descriptions)))
    for part in all_of:
        out += _bytes(_S_ALL_OF, encode_schema(part, descriptions))
    props = node.get("properties")
    if props:
        out += _bytes(_S_PROPERTIES, b"".join(_bytes(_LIST_VALUE, _named(name, encode_schema(sub, descriptions)))
                                              for name, sub in props.items()))
    for key, value in node.items():
        if key.startswith("x-"):
            out += _bytes(_S_EXTENSION, _named(key, _text(_ANY_YAML, json.dumps(value))))
    return bytes(out)


def definitions(documents: Iterable[Doc]) -> dict[str, Doc]:
    """Every component schema of the given v3 documents, by name (the first one of a name wins)."""
    found: dict[str, Doc] = {}
    for doc in documents:
        for name, schema in ((doc.get("components") or {}).get("schemas") or {}).items():
            found.setdefault(name, schema)
    return dict(sorted(found.items()))


def encode_document(defs: dict[str, Doc]) -> bytes:
    """The ``openapi.v2.Document`` with ``defs`` as its definitions."""
    info = _text(_INFO_TITLE, "Kubernetes") + _text(_INFO_VERSION, schemas.KUBERNETES_VERSION)
    body = b"".join(_bytes(_LIST_VALUE, _named(name, encode_schema(schema))) for name, schema in defs.items())
    return (_text(_DOC_SWAGGER, "2.0") + _bytes(_DOC_INFO, info) + _bytes(_DOC_PATHS, b"")
            + _bytes(_DOC_DEFINITIONS, body))


class OpenAPIV2:
    """The ``/openapi/v2`` bodies, rebuilt when any v3 document changes (a CRD came or went)."""

    def __init__(self, v3: Any) -> None:
        self.v3 = v3
        self._cached: tuple[str, bytes, bytes] | None = None

    def bodies(self) -> tuple[bytes, bytes, str]:
        """(protobuf, JSON, ETag digest) of the current document."""
        keys = sorted(self.v3.index()["paths"])
        found = [self.v3.document_by_path(key) for key in keys]  # cached by the v3 side
        digest = hashlib.sha512("".join(d for _, d in found).encode()).hexdigest().upper()
        if self._cached is None or self._cached[0] != digest:
            defs = definitions(json.loads(data) for data, _ in found)
            as_json = {"swagger": "2.0", "info": {"title": "Kubernetes", "version": schemas.KUBERNETES_VERSION},
                       "paths": {}, "definitions": json.loads(json.dumps(defs).replace(_V3_REF, _V2_REF))}
            self._cached = (digest, encode_document(defs), json.dumps(as_json, separators=(",", ":")).encode())
        return self._cached[1], self._cached[2], self._cached[0]
