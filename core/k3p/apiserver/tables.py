"""Server-side printing: objects as a ``meta.k8s.io`` Table, for ``kubectl get``.

A client asks for a Table with ``Accept: application/json;as=Table;v=v1;g=meta.k8s.io`` (or
``v1beta1``). Built-in kinds print the columns of kube's printers (:mod:`.printers`); custom
resources print their CRD's ``additionalPrinterColumns`` (evaluated as Kubernetes JSONPath), or
``Name`` and ``Age`` without any; other built-in kinds (Roles, ClusterRoles, LimitRanges, CRDs,
...) get kube's default ``Name`` / ``Created At`` table. Each row carries the object as asked by
``?includeObject=`` (``None``, ``Metadata`` as a PartialObjectMetadata, or ``Object``).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import structlog

from k3p import jsonpath
from k3p.apiserver.printers import (
    AGE_COLUMN,
    NAME_COLUMN,
    PRINTERS,
    Column,
    column_definitions,
    human_duration,
    parse_time,
    printer_columns,
    translate_timestamp_since,
)
from k3p.client.objects import format_time
from k3p.selectors import BUILTIN_GROUPS

__all__ = [
    "INCLUDE_OBJECT_POLICIES",
    "human_duration",
    "table_version_from_accept",
    "to_table",
]

log = structlog.get_logger(__name__)

INCLUDE_OBJECT_POLICIES = ("None", "Metadata", "Object")
_TABLE_VERSIONS = ("v1", "v1beta1")
#: Go's zero time, what an object without a creationTimestamp prints as
_ZERO_TIME = datetime(1, 1, 1, tzinfo=UTC)


_DEFAULT_COLUMNS = (NAME_COLUMN, Column("Created At", "date", doc=AGE_COLUMN.doc))
_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")


def table_version_from_accept(accept: str | None) -> str | None:
    """The ``meta.k8s.io`` Table version an Accept header asks for (``v1``/``v1beta1``), or None."""
    if not accept:
        return None
    ranges = []
    for position, media_range in enumerate(accept.split(",")):
        parts = [p.strip() for p in media_range.split(";")]
        params = {}
        for p in parts[1:]:
            key, _, value = p.partition("=")
            params[key.strip().lower()] = value.strip()
        try:
            q = float(params.get("q", "1"))
        except ValueError:
            q = 0.0
        ranges.append((-q, position, parts[0].lower(), params))
    for _, _, media_type, params in sorted(ranges):
        if media_type not in ("application/json", "*/*", "application/*"):
            continue
        if params.get("as") == "Table" and params.get("g") == "meta.k8s.io" and params.get("v") in _TABLE_VERSIONS:
            return params["v"]
    return None


def _go_json(value: Any) -> str:
    # Go's json.Marshal sorts map keys and escapes HTML characters.
    text = json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _go_text(value: Any) -> str:
    """A scalar as Go's fmt.Fprint prints it (JSONPath text output)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return _go_float(value)
    return str(value)


def _go_float(f: float) -> str:
    """Go's %v for a float64: shortest digits, exponent form below 1e-4 and from 1e6 on."""
    if math.isnan(f):
        return "NaN"
    if math.isinf(f):
        return "+Inf" if f > 0 else "-Inf"
    if f == 0:
        return "-0" if math.copysign(1.0, f) < 0 else "0"
    sign, digit_tuple, exponent = Decimal(repr(f)).normalize().as_tuple()
    digits = "".join(map(str, digit_tuple))
    point = int(exponent) + len(digits) - 1
    prefix = "-" if sign else ""
    if point < -4 or point >= 6:
        mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        return f"{prefix}{mantissa}e{'-' if point < 0 else '+'}{abs(point):02d}"
    if point < 0:
        return f"{prefix}0.{'0' * (-point - 1)}{digits}"
    whole, frac = digits[: point + 1].ljust(point + 1, "0"), digits[point + 1 :]
    return f"{prefix}{whole}.{frac}" if frac else f"{prefix}{whole}"


def _custom_cell(column_type: str, value: Any, now: datetime) -> Any:
    if value is None:
        return None
    if column_type == "string":
        if isinstance(value, str):
            return value
        if isinstance(value, dict | list):
            return _go_json(value)
        return _go_text(value)
    if column_type == "integer":
        if isinstance(value, bool):
            return None
        if isinstance(value, int):
            return value
        if isinstance(value, float):
            return int(value)
        return None
    if column_type == "number":
        if isinstance(value, bool):
            return None
        if isinstance(value, int | float):
            return float(value)
        return None
    if column_type == "boolean":
        return value if isinstance(value, bool) else None
    if column_type == "date":
        if not isinstance(value, str):
            return None
        if value in ("", "null"):
            return "<unknown>"
        if not _RFC3339.match(value) or parse_time(value) is None:
            return "<invalid>"
        return translate_timestamp_since(value, now)
    return None


def _custom_columns(
    printer_columns_spec: Sequence[Mapping[str, Any]],
) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    """Column definitions and (jsonPath, type) pairs of CRD additionalPrinterColumns."""
    definitions = column_definitions((NAME_COLUMN,))
    paths: list[tuple[str, str]] = []
    for col in printer_columns_spec:
        path = col.get("jsonPath") or col.get("JSONPath") or ""
        try:
            jsonpath.compile_path(path)
        except jsonpath.JSONPathError as err:
            # kube keeps the columns before a bad one and logs the rest away
            log.warning("invalid printer column, falling back", column=col.get("name"), error=str(err))
            break
        description = col.get("description") or f"Custom resource definition column (in JSONPath format): {path}"
        definitions.append(
            {
                "name": col.get("name") or "",
                "type": col.get("type") or "string",
                "format": col.get("format") or "",
                "description": description,
                "priority": int(col.get("priority") or 0),
            }
        )
        paths.append((path, col.get("type") or "string"))
    return definitions, paths


def _cr_default_printer_columns() -> list[dict[str, Any]]:
    """apiextensions' columns for a CRD version without additionalPrinterColumns."""
    age = column_definitions((AGE_COLUMN,))[0]
    return [
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp", "description": age["description"]}
    ]


def _is_custom(group: str, custom: bool | None, additional_printer_columns: object) -> bool:
    if custom is not None:
        return custom
    if additional_printer_columns is not None:
        return True
    return group not in BUILTIN_GROUPS


def to_table(
    group: str,
    resource: str,
    objects: Iterable[Mapping[str, Any]],
    include_object: str = "Metadata",
    list_meta: Mapping[str, Any] | None = None,
    additional_printer_columns: Sequence[Mapping[str, Any]] | None = None,
    *,
    now: datetime | None = None,
    table_version: str = "v1",
    no_headers: bool = False,
    custom: bool | None = None,
) -> dict[str, Any]:
    """Print objects (external JSON dicts) of one resource as a ``meta.k8s.io`` Table.

    ``list_meta`` gives the Table's ``resourceVersion``/``continue``/``remainingItemCount``
    (for a single-object GET pass the object's resourceVersion). ``additional_printer_columns``
    (a CRD version's list, possibly empty) or ``custom=True`` selects custom-resource
    printing. ``now`` fixes the clock for ages; ``no_headers`` leaves out the column definitions.
    """
    if include_object not in INCLUDE_OBJECT_POLICIES:
        raise ValueError(f"includeObject must be one of {', '.join(INCLUDE_OBJECT_POLICIES)}, not {include_object!r}")
    if table_version not in _TABLE_VERSIONS:
        raise ValueError(f"unsupported Table version {table_version!r}")
    now = now or datetime.now(UTC)
    items = list(objects)
    rows: list[dict[str, Any]] = []

    printer = None if custom or additional_printer_columns is not None else PRINTERS.get((group, resource))
    if printer is not None:
        definitions = [dict(d) for d in printer_columns(group, resource) or []]
        for obj in items:
            row: dict[str, Any] = {"cells": printer.cells(obj, now)}  # type: ignore[arg-type]
            conditions = printer.conditions(obj)  # type: ignore[arg-type]
            if conditions:
                row["conditions"] = conditions
            rows.append(row)
    elif _is_custom(group, custom, additional_printer_columns):
        spec = additional_printer_columns or _cr_default_printer_columns()
        definitions, paths = _custom_columns(spec)
        for obj in items:
            cells: list[Any] = [(obj.get("metadata") or {}).get("name", "")]
            for path, column_type in paths:
                try:
                    values = jsonpath.find(path, obj)
                except Exception:  # a path that fails on this object prints an empty cell
                    values = []
                cells.append(_custom_cell(column_type, values[0] if values else None, now))
            rows.append({"cells": cells})
    else:
        definitions = column_definitions(_DEFAULT_COLUMNS)
        for obj in items:
            meta = obj.get("metadata") or {}
            created = parse_time(meta.get("creationTimestamp")) or _ZERO_TIME
            rows.append({"cells": [meta.get("name", ""), format_time(created)]})

    for obj, row in zip(items, rows, strict=True):
        if include_object == "None":
            row["object"] = None
        elif include_object == "Metadata":
            row["object"] = {
                "kind": "PartialObjectMetadata",
                "apiVersion": f"meta.k8s.io/{table_version}",
                "metadata": dict(obj.get("metadata") or {}),
            }
        else:
            row["object"] = obj

    metadata: dict[str, Any] = {}
    for key in ("resourceVersion", "continue", "remainingItemCount"):
        value = (list_meta or {}).get(key)
        if value not in (None, ""):
            metadata[key] = value
    return {
        "kind": "Table",
        "apiVersion": f"meta.k8s.io/{table_version}",
        "metadata": metadata,
        "columnDefinitions": None if no_headers else definitions,
        "rows": rows,
    }
