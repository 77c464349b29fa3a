"""Server-side apply and ``metadata.managedFields`` bookkeeping.

Every write records who set which field (``managedFields``, one entry per manager,
operation, apiVersion and subresource, the fields in FieldsV1). This follows what
kube-apiserver (structured-merge-diff) does, so kubectl 1.32 and the Kubernetes clients
read the same entries:

- :func:`update_managed_fields` for create, update and the non-apply patches: the fields
  the write added or changed become the manager's (an ``Update`` entry, merged with its
  earlier one) and leave every other entry, removed fields leave every entry. Fields the
  server owns are never recorded (``apiVersion``, ``kind``, ``metadata.name``,
  ``namespace``, ``uid``, ``resourceVersion``, ``generation``, ``creationTimestamp``,
  ``selfLink``, ``managedFields``), nor ``status`` for the main resource and ``spec``
  for the ``status`` subresource (``reset_fields`` overrides this). A request that sends
  ``managedFields: []`` (or ``[{}]``) clears them, and an existing object without
  ``managedFields`` stays untracked until it is applied to. More than ten ``Update``
  entries are folded, oldest first, into ``ancient-changes``.
- :func:`server_side_apply` for ``application/apply-patch+yaml``: merges the applied
  configuration into the live object by the schema's list and map semantics, removes the
  fields this manager applied last time and no longer applies (unless another manager
  owns them too), records the applied fields as the manager's ``Apply`` entry, and raises
  :class:`ApplyConflictError` when a field another manager owns would change value,
  unless ``force`` moves the ownership. Applying to an object without ``managedFields``
  first gives all its fields to ``before-first-apply``. For manager ``kubectl`` the
  client-side-apply upgrade rules hold: conflicts on fields whose live value still
  equals the ``last-applied-configuration`` annotation are forced, and that annotation is
  rewritten when present.

Limitations: one API version per resource (no conversion of entries recorded at another
version); no ``scale`` subresource field mapping; malformed live ``managedFields`` are
dropped on update (as kube-apiserver does) and refused on apply.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

import structlog

import k3p.apiserver.patch.fieldpath as fieldpath
import k3p.apiserver.patch.structured as structured
from k3p.apiserver.patch.errors import PatchError
from k3p.apiserver.patch.fieldpath import Path, make_path
from k3p.client.objects import format_time

log = structlog.get_logger(__name__)

APPLY = "Apply"
UPDATE = "Update"
FIELDS_V1 = "FieldsV1"
LAST_APPLIED_ANNOTATION = "kubectl.kubernetes.io/last-applied-configuration"
BEFORE_FIRST_APPLY = "before-first-apply"
ANCIENT_CHANGES = "ancient-changes"
MAX_UPDATE_MANAGERS = 10

SERVER_OWNED: frozenset[Path] = frozenset(
    {
        make_path("apiVersion"),
        make_path("kind"),
        make_path("metadata"),
        make_path("metadata", "name"),
        make_path("metadata", "namespace"),
        make_path("metadata", "creationTimestamp"),
        make_path("metadata", "selfLink"),
        make_path("metadata", "uid"),
        make_path("metadata", "clusterName"),
        make_path("metadata", "generation"),
        make_path("metadata", "managedFields"),
        make_path("metadata", "resourceVersion"),
    }
)


class ApplyError(PatchError):
    """An apply request that cannot be carried out (400 for a bad request)."""


class Conflict(NamedTuple):
    """A field another manager owns and the apply would change; ``[:2]`` is (manager, field)."""

    manager: str
    path: str
    operation: str = APPLY
    api_version: str = ""
    subresource: str = ""

    def describe(self) -> str:
        """The manager as the API server names it: ``"kube-controller-manager" using apps/v1``."""
        text = json.dumps(self.manager, ensure_ascii=False)
        if self.subresource:
            text += f" with subresource {json.dumps(self.subresource, ensure_ascii=False)}"
        if self.operation == UPDATE:
            text += f" using {self.api_version}"
        return text


class ApplyConflictError(ApplyError):
    """409: fields other managers own would change. ``status()`` carries one cause per field."""

    def __init__(self, conflicts: Sequence[Conflict]) -> None:
        self.conflicts: list[Conflict] = list(conflicts)
        causes = [
            {"reason": "FieldManagerConflict", "message": f"conflict with {c.describe()}", "field": c.path}
            for c in self.conflicts
        ]
        super().__init__(_conflict_message(self.conflicts), 409)
        self.reason = "Conflict"
        self.details = {"causes": causes}


def _conflict_message(conflicts: list[Conflict]) -> str:
    if len(conflicts) == 1:
        c = conflicts[0]
        return f"Apply failed with 1 conflict: conflict with {c.describe()}: {c.path}"
    lines: list[str] = []
    by_manager: dict[str, list[Conflict]] = {}
    for c in conflicts:
        by_manager.setdefault(c.describe(), []).append(c)
    for described, items in by_manager.items():
        lines.append(f"conflicts with {described}:")
        lines.extend(f"- {c.path}" for c in items)
    return f"Apply failed with {len(conflicts)} conflicts: " + "\n".join(lines)


@dataclass
class _Entry:
    manager: str
    operation: str
    api_version: str
    subresource: str
    time: str | None
    fields: set[Path] = field(default_factory=set)

    @property
    def identity(self) -> str:
        return _identity(self.manager, self.operation, self.api_version, self.subresource)

    def copy(self) -> _Entry:
        return _Entry(self.manager, self.operation, self.api_version, self.subresource, self.time, set(self.fields))


def _identity(manager: str, operation: str, api_version: str, subresource: str) -> str:
    """A manager's identity as kube-apiserver keys it: an Apply entry ignores the apiVersion."""
    ident: dict[str, str] = {}
    if manager:
        ident["manager"] = manager
    if operation:
        ident["operation"] = operation
    if api_version and operation != APPLY:
        ident["apiVersion"] = api_version
    if subresource:
        ident["subresource"] = subresource
    return json.dumps(ident, separators=(",", ":"))


def _seconds(time: str | None) -> int:
    if not time:
        return 0
    try:
        return int(datetime.fromisoformat(time.replace("Z", "+00:00")).timestamp())
    except ValueError:
        return 0


def decode_managed_fields(entries: Any) -> dict[str, _Entry]:
    """Parse ``metadata.managedFields``; raises ValueError for a malformed list."""
    if entries is None:
        return {}
    if not isinstance(entries, list):
        raise ValueError("managedFields must be a list")
    managed: dict[str, _Entry] = {}
    for i, raw in enumerate(entries):
        if not isinstance(raw, dict):
            raise ValueError(f"managed fields entry {i} is not an object")
        operation = raw.get("operation")
        if operation not in (APPLY, UPDATE):
            raise ValueError("operation must be `Apply` or `Update`")
        api_version = raw.get("apiVersion")
        if not isinstance(api_version, str) or not api_version:
            raise ValueError("apiVersion must not be empty")
        fields_type = raw.get("fieldsType")
        if not fields_type:
            raise ValueError(f"missing fieldsType in managed fields entry {i}")
        if fields_type != FIELDS_V1:
            raise ValueError(f"invalid fieldsType {fields_type!r} in managed fields entry {i}")
        entry = _Entry(
            manager=str(raw.get("manager") or ""),
            operation=operation,
            api_version=api_version,
            subresource=str(raw.get("subresource") or ""),
            time=raw.get("time") if isinstance(raw.get("time"), str) else None,
            fields=fieldpath.from_fields_v1(raw.get("fieldsV1") or {}),
        )
        managed[entry.identity] = entry
    return managed


def encode_managed_fields(managed: dict[str, _Entry]) -> list[dict[str, Any]]:
    """Entries in the API server's order: Apply before Update, then by time, manager, version."""
    out = []
    for entry in managed.values():
        item: dict[str, Any] = {}
        if entry.manager:
            item["manager"] = entry.manager
        item["operation"] = entry.operation
        if entry.api_version:
            item["apiVersion"] = entry.api_version
        if entry.time:
            item["time"] = entry.time
        item["fieldsType"] = FIELDS_V1
        item["fieldsV1"] = fieldpath.to_fields_v1(entry.fields)
        if entry.subresource:
            item["subresource"] = entry.subresource
        out.append(item)
    out.sort(
        key=lambda e: (
            e["operation"],
            _seconds(e.get("time")),
            e.get("manager", ""),
            e.get("apiVersion", ""),
            e.get("subresource", ""),
        )
    )
    return out


def _is_reset(entries: Any) -> bool:
    return isinstance(entries, list) and (entries == [] or entries == [{}])


def _managed_fields_of(obj: dict[str, Any] | None) -> Any:
    if not obj:
        return None
    meta = obj.get("metadata")
    return meta.get("managedFields") if isinstance(meta, dict) else None


def _without_managed_fields(obj: dict[str, Any]) -> dict[str, Any]:
    clean = copy.deepcopy(obj)
    meta = clean.get("metadata")
    if isinstance(meta, dict):
        meta.pop("managedFields", None)
    return clean


def _store(obj: dict[str, Any], managed: dict[str, _Entry]) -> None:
    meta = obj.setdefault("metadata", {})
    if managed:
        meta["managedFields"] = encode_managed_fields(managed)
    else:
        meta.pop("managedFields", None)


def _reset_paths(reset_fields: Iterable[Sequence[str]] | None, subresource: str) -> set[Path]:
    if reset_fields is None:
        if not subresource:
            reset_fields = [("status",)]
        elif subresource == "status":
            reset_fields = [("spec",)]
        else:
            reset_fields = []
    return {make_path(*parts) for parts in reset_fields}


def _cap_update_managers(managed: dict[str, _Entry]) -> None:
    updaters = [e for e in managed.values() if e.operation == UPDATE]
    if len(updaters) <= MAX_UPDATE_MANAGERS:
        return
    updaters.sort(key=lambda e: (_seconds(e.time), e.identity))
    first_by_version: dict[str, str] = {}
    length = len(updaters)
    for entry in updaters:
        if length <= MAX_UPDATE_MANAGERS:
            break
        bucket = _identity(ANCIENT_CHANGES, UPDATE, entry.api_version, "")
        first = first_by_version.get(entry.api_version)
        if first is None:
            first_by_version[entry.api_version] = entry.identity
            continue
        if bucket not in managed:
            moved = managed.pop(first)
            managed[bucket] = _Entry(ANCIENT_CHANGES, UPDATE, entry.api_version, "", moved.time, moved.fields)
        managed[bucket].fields |= entry.fields
        managed[bucket].time = entry.time
        del managed[entry.identity]
        length -= 1


def update_managed_fields(
    old: dict[str, Any] | None,
    new: dict[str, Any],
    manager: str,
    operation: str = UPDATE,
    subresource: str = "",
    schema: dict[str, Any] | None = None,
    now: str | None = None,
    *,
    api_version: str | None = None,
    reset_fields: Iterable[Sequence[str]] | None = None,
) -> dict[str, Any]:
    """``new`` (a copy) with ``managedFields`` updated for a non-apply write by ``manager``.

    ``old`` is the stored object (None on create). ``managedFields`` sent in ``new`` are
    taken as the starting point when valid (that is how clients reset them), except for
    subresource writes; otherwise the stored ones are.
    """
    result = copy.deepcopy(new)
    meta = result.get("metadata")
    if not isinstance(meta, dict):
        return result
    requested = meta.pop("managedFields", None)
    stored = _managed_fields_of(old)
    try:
        managed = _starting_point(requested, stored, subresource)
    except ValueError:
        managed = {}
    exists = old is not None and bool((old.get("metadata") or {}).get("uid"))
    if not managed and exists:
        return result
    try:
        managed = _record_update(
            old, result, managed, manager or "unknown", operation, subresource, schema, now or format_time(),
            api_version or str(result.get("apiVersion") or ""), _reset_paths(reset_fields, subresource),
        )
    except structured.StructureError as exc:
        log.warning(
            "managed fields not updated", error=str(exc), name=meta.get("name"), namespace=meta.get("namespace")
        )
        if stored:
            meta["managedFields"] = copy.deepcopy(stored)
        return result
    _store(result, managed)
    return result


def _starting_point(requested: Any, stored: Any, subresource: str) -> dict[str, _Entry]:
    if not subresource and requested is not None:
        if _is_reset(requested):
            return {}
        try:
            managed = decode_managed_fields(requested)
        except ValueError:
            managed = {}
        if managed:
            return managed
    return decode_managed_fields(stored)


def _record_update(
    old: dict[str, Any] | None,
    new: dict[str, Any],
    managed: dict[str, _Entry],
    manager: str,
    operation: str,
    subresource: str,
    schema: dict[str, Any] | None,
    now: str,
    api_version: str,
    ignored: set[Path],
) -> dict[str, _Entry]:
    before = _without_managed_fields(old) if old is not None else {}
    diff = structured.compare(before, new, schema).without(ignored)
    changed = diff.changed
    for entry in managed.values():
        entry.fields -= changed
        entry.fields -= diff.removed
    managed = {ident: entry for ident, entry in managed.items() if entry.fields}
    mine = changed - SERVER_OWNED
    if mine:
        ident = _identity(manager, operation, api_version, subresource)
        previous = managed.get(ident)
        fields = mine | (previous.fields if previous else set())
        managed[ident] = _Entry(manager, operation, api_version, subresource, now, fields)
    _cap_update_managers(managed)
    return managed


class _Conflicted(Exception):
    def __init__(self, hits: list[tuple[_Entry, set[Path]]]) -> None:
        super().__init__("conflicts")
        self.hits = hits

    def conflicts(self, allowed: set[Path] | None = None) -> list[Conflict]:
        out = []
        for entry, paths in sorted(self.hits, key=lambda h: h[0].identity):
            for path in fieldpath.sorted_paths(paths):
                if allowed is not None and path in allowed:
                    continue
                out.append(
                    Conflict(
                        entry.manager,
                        fieldpath.path_string(path),
                        entry.operation,
                        entry.api_version,
                        entry.subresource,
                    )
                )
        return out


def server_side_apply(
    live: dict[str, Any] | None,
    applied: dict[str, Any],
    manager: str,
    schema: dict[str, Any] | None = None,
    force: bool = False,
    now: str | None = None,
    *,
    api_version: str | None = None,
    subresource: str = "",
    reset_fields: Iterable[Sequence[str]] | None = None,
) -> dict[str, Any]:
    """The object after ``manager`` applies ``applied`` to ``live`` (None: create).

    Raises :class:`ApplyConflictError` (409) on conflicts unless ``force``, and
    :class:`ApplyError` for a request that cannot be applied.
    """
    if not isinstance(applied, dict):
        raise ApplyError("the apply patch must be a JSON object", 400)
    applied_meta = applied.get("metadata")
    if isinstance(applied_meta, dict) and applied_meta.get("managedFields") is not None:
        raise ApplyError("metadata.managedFields must be nil", 400)
    if api_version and applied.get("apiVersion") != api_version:
        raise ApplyError(
            "Incorrect version specified in apply patch. "
            f"Specified patch version: {applied.get('apiVersion', '')}, expected: {api_version}",
            400,
        )
    version = api_version or str(applied.get("apiVersion") or "")
    manager = manager or "unknown"
    now = now or format_time()
    config = _without_managed_fields(applied)
    current = _without_managed_fields(live) if live is not None else {}
    try:
        managed = decode_managed_fields(_managed_fields_of(live))
    except ValueError as exc:
        raise ApplyError(f"failed to decode managed fields: {exc}", 500) from exc
    ignored = _reset_paths(reset_fields, subresource)

    try:
        if live is not None and not managed:
            existing = structured.compare({}, current, schema).without(ignored).changed - SERVER_OWNED
            if existing:
                entry = _Entry(BEFORE_FIRST_APPLY, UPDATE, version, subresource, now, existing)
                managed[entry.identity] = entry
        args = (current, config, managed, manager, version, subresource, schema, now, ignored)
        try:
            result, managed = _apply(*args, force=force)
        except _Conflicted as conflicted:
            allowed = _unchanged_since_last_applied(current, schema, version) if manager == "kubectl" else None
            remaining = conflicted.conflicts(allowed)
            if remaining:
                raise ApplyConflictError(remaining) from None
            result, managed = _apply(*args, force=True)
    except structured.StructureError as exc:
        raise ApplyError(f"failed to create typed patch object: {exc}", 422) from exc

    if manager == "kubectl":
        _update_last_applied(result, config)
    _store(result, managed)
    return result


def _apply(
    current: dict[str, Any],
    config: dict[str, Any],
    managed: dict[str, _Entry],
    manager: str,
    version: str,
    subresource: str,
    schema: dict[str, Any] | None,
    now: str,
    ignored: set[Path],
    *,
    force: bool,
) -> tuple[dict[str, Any], dict[str, _Entry]]:
    managed = {ident: entry.copy() for ident, entry in managed.items()}
    merged = structured.merge(current, config, schema)
    applied_set = structured.to_field_set(config, schema, allow_duplicates=False)
    applied_set = fieldpath.recursive_difference(applied_set, ignored)
    me = _identity(manager, APPLY, version, subresource)
    last = managed.get(me)
    managed[me] = _Entry(manager, APPLY, version, subresource, last.time if last else None, applied_set)

    if last is not None and last.fields:
        owned: set[Path] = set().union(*(entry.fields for entry in managed.values()))
        doomed = structured.ensure_named_fields(last.fields, schema) - structured.ensure_named_fields(owned, schema)
        merged = structured.remove(merged, doomed, schema)

    diff = structured.compare(current, merged, schema).without(ignored)
    changed = diff.changed
    hits = [(entry, entry.fields & changed) for ident, entry in managed.items() if ident != me]
    hits = [(entry, paths) for entry, paths in hits if paths]
    if hits and not force:
        raise _Conflicted(hits)
    for entry, paths in hits:
        entry.fields -= paths
    for ident, entry in managed.items():
        if ident != me:
            entry.fields -= diff.removed
    managed[me].fields -= SERVER_OWNED
    managed = {ident: entry for ident, entry in managed.items() if entry.fields}

    if structured.json_equal(merged, current):
        merged = copy.deepcopy(current)
    elif me in managed:
        managed[me].time = now
    return merged, managed


def _unchanged_since_last_applied(
    current: dict[str, Any], schema: dict[str, Any] | None, version: str
) -> set[Path] | None:
    """Fields of the client-side-apply annotation whose live value is still the one applied."""
    annotations = (current.get("metadata") or {}).get("annotations") or {}
    text = annotations.get(LAST_APPLIED_ANNOTATION)
    if not isinstance(text, str) or not text:
        return None
    try:
        last = json.loads(text)
    except ValueError:
        return None
    if not isinstance(last, dict) or last.get("apiVersion") != version:
        return None
    try:
        fields = structured.to_field_set(last, schema)
        diff = structured.compare(last, current, schema)
    except structured.StructureError:
        return None
    return fields - diff.modified - diff.added - diff.removed


def _update_last_applied(result: dict[str, Any], config: dict[str, Any]) -> None:
    """Keep kubectl's client-side-apply annotation in step with what was applied last."""
    annotations = (result.get("metadata") or {}).get("annotations")
    if not isinstance(annotations, dict) or not annotations.get(LAST_APPLIED_ANNOTATION):
        return
    recorded = copy.deepcopy(config)
    recorded_annotations = (recorded.get("metadata") or {}).get("annotations")
    if isinstance(recorded_annotations, dict):
        recorded_annotations.pop(LAST_APPLIED_ANNOTATION, None)
    annotations[LAST_APPLIED_ANNOTATION] = fieldpath.canonical_json(recorded) + "\n"
