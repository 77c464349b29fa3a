"""The REST verbs on resources: get, list, watch, create, update, patch, delete, deletecollection.

Reads come from the watch cache; writes go to the datastore with compare-and-swap on the
object's revision, and the cache catches up from the datastore's watch before the next
read of the same client (``wait_fresh`` on the revision the write returned).
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import structlog
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from k3p.apiserver import bodies, strategy
from k3p.apiserver.admission import Admission, AdmissionAttributes
from k3p.apiserver.conversion import ConversionError, convert
from k3p.apiserver.errors import APIError, already_exists, bad_request, conflict, expired, invalid, not_found
from k3p.apiserver.patch import (
    apply_json_patch,
    apply_merge_patch,
    apply_strategic_merge_patch,
    server_side_apply,
    update_managed_fields,
)
from k3p.apiserver.registry import ResourceType
from k3p.apiserver.request_info import RequestAttributes
from k3p.apiserver.validation import drop_typed_nulls
from k3p.apiserver.watchcache import WATCH_WRITE_BYTES, CachedObject, Expired, WatchCache, WatchEvent, encode
from k3p.client.objects import format_time
from k3p.protocols.datastore import CompactedError, ConflictError, Datastore, KeyExistsError, NotFoundError
from k3p.selectors import SelectorError, go_quote, parse_field_selector, parse_label_selector

log = structlog.get_logger(__name__)
Obj = dict[str, Any]


@dataclass
class Listing:
    """What a list or watch asks for, from its query."""

    label: Any = None
    field: Any = None

    def matches(self, rt: ResourceType, obj: Obj) -> bool:
        if self.label is not None and not self.label.matches(obj.get("metadata", {}).get("labels") or {}):
            return False
        return self.field is None or self.field.matches(obj, rt.resource, rt.group, custom=rt.custom,
                                                        namespaced=rt.namespaced,
                                                        selectable_fields=rt.selectable_fields)


def parse_listing(query: dict[str, str], rt: ResourceType | None = None) -> Listing:
    """The selectors of a list or watch; 400 for bad syntax or (given ``rt``) a field the type lacks."""
    try:
        label = parse_label_selector(query["labelSelector"]) if query.get("labelSelector") else None
        field = parse_field_selector(query["fieldSelector"]) if query.get("fieldSelector") else None
        if field is not None and rt is not None:
            # checked up front, as kube does: an unknown field fails even when nothing would match
            field.check(rt.group, rt.resource, custom=rt.custom, namespaced=rt.namespaced,
                        selectable_fields=rt.selectable_fields)
    except SelectorError as e:
        raise bad_request(str(e)) from None
    return Listing(label, field)


def _manager(request: Request, query: dict[str, str], default_op: str) -> str:
    manager = query.get("fieldManager")
    if manager:
        if len(manager) > 128:
            raise bad_request("fieldManager: Too long: may not be longer than 128")
        return manager
    agent = request.headers.get("user-agent", "unknown")
    # kube uses the client binary name of the user agent as the default manager
    return agent.split("/")[0] or "unknown"


def encode_continue(rv: int, start: str) -> str:
    raw = json.dumps({"v": "meta.k8s.io/v1", "rv": rv, "start": start}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_continue(token: str) -> tuple[int, str]:
    try:
        pad = "=" * (-len(token) % 4)
        data = json.loads(base64.urlsafe_b64decode(token + pad))
        rv, start = data["rv"], data["start"]
    except (ValueError, KeyError, TypeError):
        raise bad_request("continue key is not valid: incorrect encoded start resourceVersion") from None
    # kube's token holds an int64 resourceVersion above zero and a key
    if type(rv) is not int or not 0 < rv < 1 << 63 or not isinstance(start, str):
        raise bad_request("continue key is not valid: incorrect encoded start resourceVersion")
    return rv, start


class ResourceHandlers:
    """The verbs for every registered resource type, over one datastore and its watch cache."""

    def __init__(
        self,
        datastore: Datastore,
        cache: WatchCache,
        *,
        admission: list[Admission] | None = None,
        validate: Callable[[ResourceType, Obj, str], list[str]] | None = None,
        to_table: Callable[..., Obj] | None = None,
    ) -> None:
        self.datastore = datastore
        self.cache = cache
        self.admission = admission or []
        #: schema validation: returns warnings, raises APIError for Strict failures
        self.validate = validate
        self.to_table = to_table
        self.last_write = 0

    # --- helpers ------------------------------------------------------------------------------

    def _output(self, rt: ResourceType, obj: Obj) -> Obj:
        if obj.get("apiVersion") not in (None, rt.api_version):
            try:
                obj = convert(obj, rt.api_version)
            except ConversionError as e:
                raise APIError(500, str(e)) from None
        return obj

    def _raw(self, rt: ResourceType, item: CachedObject) -> bytes:
        if item.obj.get("apiVersion") == rt.api_version:
            return item.raw
        return encode(self._output(rt, item.obj))

    async def _fresh(self) -> None:
        await self.cache.wait_fresh(self.last_write)

    async def _wait_for_revision(self, revision: int) -> None:
        """Wait (a little) for the cache to reach a resourceVersion a list or watch asked for;
        kube's 504 ResourceVersionTooLarge when it does not get there."""
        try:
            await self.cache.wait_fresh(revision, timeout=3)
        except TimeoutError:
            raise APIError(504, f"Too large resource version: {revision}, current: {self.cache.revision}",
                           "Timeout", {"causes": [{"reason": "ResourceVersionTooLarge",
                                                   "message": "Too large resource version"}],
                                       "retryAfterSeconds": 1}) from None

    def _wrote(self, revision: int) -> None:
        self.last_write = max(self.last_write, revision)

    async def _current(self, rt: ResourceType, ns: str | None, name: str) -> CachedObject:
        await self._fresh()
        item = self.cache.get(rt.key_prefix(None), rt.storage_key(ns, name))
        if item is None:
            raise not_found(rt.group, rt.resource, name)
        return item

    def _namespace_checks(self, rt: ResourceType, ns: str | None, creating: bool) -> None:
        if not rt.namespaced or not creating:
            return
        ns_item = self.cache.get("/registry/namespaces/", f"/registry/namespaces/{ns}")
        if ns_item is None:
            raise not_found("", "namespaces", ns or "")
        if ns_item.obj.get("metadata", {}).get("deletionTimestamp") or \
                ns_item.obj.get("status", {}).get("phase") == "Terminating":
            raise APIError(403, f"{rt.kind.lower()}s \"{'' }\" is forbidden: unable to create new content in "
                                f"namespace {ns} because it is being terminated", "Forbidden",
                           {"causes": [{"reason": "NamespaceTerminating",
                                        "message": f"namespace {ns} is being terminated",
                                        "field": "metadata.namespace"}]})

    async def _admit(self, operation: str, rt: ResourceType, obj: Obj | None, old: Obj | None,
                     attrs: RequestAttributes | None = None, dry: bool = False) -> None:
        request = AdmissionAttributes.build(operation, rt, obj, old, attrs, dry)
        for hook in self.admission:
            result = hook(request)
            if asyncio.iscoroutine(result):
                await result

    def _check_body(self, rt: ResourceType, body: Any, ns: str | None, name: str | None) -> Obj:
        if not isinstance(body, dict):
            raise bad_request(f"the object provided is not a {rt.kind}: expected a JSON object")
        kind, api_version = body.get("kind"), body.get("apiVersion")
        if kind and kind != rt.kind:
            raise bad_request(
                f"the API version in the data ({api_version}) does not match the expected API version "
                f"({rt.api_version})" if api_version and api_version != rt.api_version else
                f'the kind in the data ("{kind}") does not match the expected kind ("{rt.kind}")'
            )
        if api_version and api_version != rt.api_version:
            raise bad_request(f"the API version in the data ({api_version}) does not match the expected API "
                              f"version ({rt.api_version})")
        body["kind"], body["apiVersion"] = rt.kind, rt.api_version
        if not rt.custom:
            drop_typed_nulls(body, rt.schema_node())
        meta = body.get("metadata")
        if meta is None:
            meta = body["metadata"] = {}
        if not isinstance(meta, dict):
            raise bad_request("metadata: must be an object")
        if rt.namespaced:
            body_ns = meta.get("namespace")
            if body_ns and ns and body_ns != ns:
                raise bad_request("the namespace of the provided object does not match the namespace sent on the "
                                  "request")
            if ns:
                meta["namespace"] = ns
        else:
            meta.pop("namespace", None)
        if name is not None:
            body_name = meta.get("name")
            if body_name and body_name != name:
                raise bad_request(f"the name of the object ({body_name}) does not match the name on the URL "
                                  f"({name})")
            meta["name"] = name
        return body

    def _validate(self, rt: ResourceType, obj: Obj, mode: str) -> list[str]:
        if self.validate is None:
            return []
        return self.validate(rt, obj, mode)

    def _name_check(self, rt: ResourceType, obj: Obj) -> None:
        name = obj["metadata"].get("name", "")
        problems = strategy.name_problems(rt, name)
        if problems:
            raise invalid(rt.group, rt.kind, name, [
                {"reason": "FieldValueRequired" if not name else "FieldValueInvalid",
                 "message": ("Required value: " + p) if not name else f'Invalid value: "{name}": {p}',
                 "field": "metadata.name"}
                for p in problems
            ])

    @staticmethod
    def _warning_headers(warnings: list[str]) -> dict[str, str]:
        if not warnings:
            return {}
        # Several Warning values in one header, comma-separated, as HTTP allows; each text
        # quoted with its control characters escaped (no line break may reach the header).
        # The text goes out as UTF-8, as kube's does: starlette writes a header string as
        # latin-1, so it is handed the UTF-8 bytes as latin-1 characters.
        value = ", ".join("299 - " + go_quote(w) for w in warnings)
        return {"warning": value.encode("utf-8", "replace").decode("latin-1")}

    # --- reads --------------------------------------------------------------------------------

    async def get(self, rt: ResourceType, attrs: RequestAttributes) -> Obj:
        item = await self._current(rt, attrs.namespace or None, attrs.name)
        return self._output(rt, item.obj)

    async def get_raw(self, rt: ResourceType, attrs: RequestAttributes) -> bytes:
        """The object as JSON bytes: the cache's own serialization when the versions match."""
        item = await self._current(rt, attrs.namespace or None, attrs.name)
        return self._raw(rt, item)

    async def list(self, request: Request, rt: ResourceType, attrs: RequestAttributes, query: dict[str, str],
                   as_table: bool = False, include_object: str = "Metadata") -> Response:
        listing = parse_listing(query, rt)
        # kube pages only for a positive limit: zero or less lists everything
        limit = max(bodies.query_int(query, "limit") or 0, 0)
        cont = query.get("continue")
        ns = attrs.namespace or None
        if cont:
            return await self._list_continue(rt, ns, listing, limit, cont, as_table, include_object)
        rv_param = query.get("resourceVersion", "")
        if rv_param not in ("", "0"):
            try:
                wanted = int(rv_param)
            except ValueError:
                raise bad_request(f"invalid resource version: {rv_param}") from None
            await self._wait_for_revision(wanted)
        elif rv_param == "":
            await self._fresh()
        revision = self.cache.revision
        prefix = rt.key_prefix(None)
        key_prefix = rt.key_prefix(ns) if ns else None
        items = [o for o in self.cache.items(prefix, key_prefix) if listing.matches(rt, o.obj)]
        items.sort(key=lambda o: o.key)
        meta: Obj = {"resourceVersion": str(revision)}
        if limit and len(items) > limit:
            items = items[:limit]
            meta["continue"] = encode_continue(revision, items[-1].key + "\x00")
            meta["remainingItemCount"] = None
        return self._list_response(rt, items, meta, as_table, include_object)

    async def _list_continue(self, rt: ResourceType, ns: str | None, listing: Listing, limit: int, token: str,
                             as_table: bool, include_object: str) -> Response:
        revision, start = decode_continue(token)
        prefix = rt.key_prefix(ns)
        found: list[CachedObject] = []
        more = False
        try:
            while True:
                page = await self.datastore.list(prefix, start_key=start, limit=max(limit, 100), revision=revision)
                for kv in page.kvs:
                    start = kv.key + "\x00"
                    item = CachedObject.from_value(kv.key, kv.value, kv.mod_revision)
                    if listing.matches(rt, item.obj):
                        found.append(item)
                        if limit and len(found) >= limit:
                            break
                if limit and len(found) >= limit:
                    more = page.more or kv.key != page.kvs[-1].key
                    if not more:
                        probe = await self.datastore.list(prefix, start_key=start, limit=1, revision=revision)
                        more = bool(probe.kvs)
                    break
                if not page.more:
                    break
        except CompactedError:
            raise APIError(410, "The provided continue parameter is too old to display a consistent list result. "
                                "You can start a new list without the continue parameter, or use the continue "
                                "token in this response to retrieve the remainder of the results. Continuing with "
                                "the provided token results in an inconsistent list - objects that were created, "
                                "modified, or deleted between the time the first chunk was returned and now may "
                                "show up in the list.", "Expired") from None
        meta: Obj = {"resourceVersion": str(revision)}
        if more:
            meta["continue"] = encode_continue(revision, start)
        return self._list_response(rt, found, meta, as_table, include_object)

    def _list_response(self, rt: ResourceType, items: list[CachedObject], meta: Obj, as_table: bool,
                       include_object: str) -> Response:
        if as_table and self.to_table is not None:
            table = self.to_table(rt, [self._output(rt, o.obj) for o in items], include_object, meta)
            return bodies.json_response(table)
        meta = {k: v for k, v in meta.items() if v is not None}
        head = json.dumps({"kind": rt.list_kind, "apiVersion": rt.api_version, "metadata": meta},
                          separators=(",", ":")).encode()
        # The items are spliced in as the bytes the cache already holds: no re-encoding per list.
        body = head[:-1] + b',"items":[' + b",".join(self._raw(rt, o) for o in items) + b"]}"
        return bodies.json_response(body)

    async def watch(self, request: Request, rt: ResourceType, attrs: RequestAttributes, query: dict[str, str],
                    as_table: bool = False) -> Response:
        listing = parse_listing(query, rt)
        ns = attrs.namespace or None
        if bodies.query_bool(query, "sendInitialEvents"):
            raise invalid("meta.k8s.io", "ListOptions", "", [{
                "reason": "FieldValueForbidden", "field": "sendInitialEvents",
                "message": "Forbidden: sendInitialEvents is not supported by this server"}])
        rv_param = query.get("resourceVersion", "")
        name = attrs.name or None
        key_prefix = rt.key_prefix(ns) if ns else None

        def wanted(obj: Obj) -> bool:
            meta = obj.get("metadata", {})
            if ns and meta.get("namespace") != ns:
                return False
            if name and meta.get("name") != name:
                return False
            return listing.matches(rt, obj)

        timeout = bodies.query_int(query, "timeoutSeconds")
        bookmarks = bodies.query_bool(query, "allowWatchBookmarks")
        prefix = rt.key_prefix(None)
        first_error: bytes | None = None
        if rv_param in ("", "0"):
            if rv_param == "":
                await self._fresh()
            watcher, first = self.cache.watch(prefix, None, wanted, key_prefix)
        else:
            try:
                after = int(rv_param)
            except ValueError:
                raise bad_request(f"invalid resource version: {rv_param}") from None
            await self._wait_for_revision(after)
            try:
                watcher, first = self.cache.watch(prefix, after, wanted, key_prefix)
            except Expired as e:
                # kube answers 200 and sends the 410 as an ERROR event in the stream
                watcher, first = None, []
                first_error = b'{"type":"ERROR","object":' + encode(expired(str(e)).status()) + b"}\n"

        render = None
        key = None
        if as_table and self.to_table is not None:
            key = ("table", rt.group, rt.version, rt.resource)

            def render(ev: WatchEvent) -> bytes:
                table = self.to_table(rt, [self._output(rt, ev.item.obj)], "Object", {})
                return b'{"type":"' + ev.type.encode() + b'","object":' + encode(table) + b"}\n"
        elif rt.api_version != rt.storage_api_version:
            key = ("as", rt.api_version)

            def render(ev: WatchEvent) -> bytes:
                return b'{"type":"' + ev.type.encode() + b'","object":' + encode(self._output(rt, ev.item.obj)) + \
                    b"}\n"

        async def stream() -> AsyncIterator[bytes]:
            if first_error is not None:
                yield first_error
                return
            assert watcher is not None
            deadline = time.monotonic() + timeout if timeout else None
            last_rv = 0
            try:
                for ev in first:
                    last_rv = max(last_rv, ev.rv)
                    yield ev.line(render, key)
                if bookmarks and rv_param in ("", "0"):
                    pass
                while True:
                    # What is queued goes out in writes of at most WATCH_WRITE_BYTES (one bigger
                    # event alone): each write waits until the connection has taken the last.
                    while watcher.pending():
                        lines = [ev.line(render, key) for ev in watcher.take(WATCH_WRITE_BYTES)]
                        yield lines[0] if len(lines) == 1 else b"".join(lines)
                    if watcher.closed:
                        return
                    wait = 30.0 if bookmarks else 300.0
                    if deadline is not None:
                        wait = min(wait, deadline - time.monotonic())
                        if wait <= 0:
                            return
                    try:
                        # asyncio.timeout, unlike wait_for, makes no task per event
                        async with asyncio.timeout(wait):
                            if not await watcher.wait():
                                return
                    except TimeoutError:
                        if bookmarks:
                            yield self._bookmark(rt, self.cache.revision)
                        continue
            finally:
                watcher.close()

        return StreamingResponse(stream(), media_type="application/json",
                                 headers={"Cache-Control": "no-cache, private"})

    @staticmethod
    def _bookmark(rt: ResourceType, rv: int) -> bytes:
        obj = {"kind": rt.kind, "apiVersion": rt.api_version, "metadata": {"resourceVersion": str(rv)}}
        return b'{"type":"BOOKMARK","object":' + encode(obj) + b"}\n"

    # --- writes -------------------------------------------------------------------------------

    async def create(self, request: Request, rt: ResourceType, attrs: RequestAttributes, query: dict[str, str],
                     body: Any, subresource_result: bool = False) -> Response:
        mode = bodies.field_validation(query)
        dry = bodies.dry_run(query, request)
        ns = attrs.namespace or None
        obj = self._check_body(rt, body, ns, None)
        meta = obj["metadata"]
        if rt.namespaced and not ns:
            raise bad_request("the server could not find the requested resource (namespace is required)")
        # decoding (wrong types: 400) comes before every check of the values, as in kube
        warnings = self._validate(rt, obj, mode)
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = strategy.generate_name(meta["generateName"])
        self._name_check(rt, obj)
        await self._fresh()
        self._namespace_checks(rt, ns, creating=True)
        strategy.prepare_create(rt, obj)
        await self._admit("CREATE", rt, obj, None, attrs, dry)
        manager = _manager(request, query, "Update")
        obj = update_managed_fields(None, obj, manager, "Update", "", rt.schema_node(), format_time())
        key = rt.storage_key(ns, meta["name"])
        headers = self._warning_headers(warnings)
        if dry:
            if self.cache.get(rt.key_prefix(None), key) is not None:
                raise already_exists(rt.group, rt.resource, meta["name"])
            return bodies.json_response(self._output(rt, obj), 201, headers)
        try:
            revision = await self.datastore.create(key, encode(obj))
        except KeyExistsError:
            raise already_exists(rt.group, rt.resource, meta["name"]) from None
        self._wrote(revision)
        obj["metadata"]["resourceVersion"] = str(revision)
        return bodies.json_response(self._output(rt, obj), 201, headers)

    async def _store_update(self, rt: ResourceType, key: str, old: CachedObject, new: Obj) -> Obj:
        """CAS-write ``new`` over ``old``; a finished deletion (nothing holds it any more) deletes instead."""
        meta = new["metadata"]
        if meta.get("deletionTimestamp") and not _removal_blocked(rt, new):
            try:
                kv = await self.datastore.delete(key, old.rv)
            except (ConflictError, NotFoundError) as e:
                raise _Retry from e
            self._wrote(kv.mod_revision)
            new["metadata"]["resourceVersion"] = str(kv.mod_revision)
            return new
        meta.pop("resourceVersion", None)
        try:
            kv = await self.datastore.update(key, encode(new), old.rv)
        except ConflictError as e:
            raise _Retry from e
        except NotFoundError:
            raise not_found(rt.group, rt.resource, meta.get("name", "")) from None
        self._wrote(kv.mod_revision)
        meta["resourceVersion"] = str(kv.mod_revision)
        return new

    async def update(self, request: Request, rt: ResourceType, attrs: RequestAttributes, query: dict[str, str],
                     body: Any) -> Response:
        mode = bodies.field_validation(query)
        dry = bodies.dry_run(query, request)
        ns, name, sub = attrs.namespace or None, attrs.name, attrs.subresource
        obj = self._check_body(rt, body, ns, name)
        warnings = self._validate(rt, _status_view(obj) if sub == "status" else obj, mode)
        wanted_rv = obj["metadata"].get("resourceVersion")
        key = rt.storage_key(ns, name)
        manager = _manager(request, query, "Update")
        for _ in range(20):
            try:
                current = await self._current(rt, ns, name)
            except APIError:
                if sub or wanted_rv:
                    raise
                # PUT of a missing object creates it (kube's AllowCreateOnUpdate for most types)
                return await self.create(request, rt, attrs, query, body)
            if wanted_rv and wanted_rv != str(current.rv):
                raise conflict(rt.group, rt.resource, name,
                               "the object has been modified; please apply your changes to the latest version "
                               "and try again")
            old = current.obj
            new = strategy.prepare_update(rt, old, obj, sub)
            self._immutable_checks(rt, old, new)
            await self._admit("UPDATE", rt, new, old, attrs, dry)
            new = update_managed_fields(old, new, manager, "Update", sub, rt.schema_node(), format_time())
            try:
                return await self._answer_update(rt, key, current, new, dry, warnings)
            except _Retry:
                if wanted_rv:
                    raise conflict(rt.group, rt.resource, name,
                                   "the object has been modified; please apply your changes to the latest "
                                   "version and try again") from None
                continue
        raise conflict(rt.group, rt.resource, name, "too many concurrent writes; try again")

    async def _answer_update(self, rt: ResourceType, key: str, current: CachedObject, new: Obj, dry: bool,
                             warnings: list[str]) -> Response:
        """Store an update (unless it is a dry run or changes nothing) and answer it; _Retry on a lost race."""
        headers = self._warning_headers(warnings)
        if dry:
            return bodies.json_response(self._output(rt, new), 200, headers)
        if _same(current.obj, new):
            return bodies.json_response(self._output(rt, current.obj), 200, headers)
        stored = await self._store_update(rt, key, current, new)
        return bodies.json_response(self._output(rt, stored), 200, headers)

    def _immutable_checks(self, rt: ResourceType, old: Obj, new: Obj) -> None:
        if (rt.group, rt.resource) == ("", "services"):
            old_ip = old.get("spec", {}).get("clusterIP")
            new_ip = new.get("spec", {}).get("clusterIP")
            if old_ip and new_ip != old_ip and new.get("spec", {}).get("type") != "ExternalName":
                if not new_ip:
                    new["spec"]["clusterIP"] = old_ip
                    new["spec"]["clusterIPs"] = old.get("spec", {}).get("clusterIPs", [old_ip])
                else:
                    raise invalid(rt.group, rt.kind, new["metadata"]["name"], [{
                        "reason": "FieldValueInvalid", "field": "spec.clusterIPs[0]",
                        "message": f'Invalid value: []string{{"{new_ip}"}}: may not change once set'}])
        if (rt.group, rt.resource) == ("", "nodes"):
            # The node's pod range may be set once ("" to valid), never changed: the pod
            # network on the node and the routes on every other node were built from it.
            old_spec, new_spec = old.get("spec") or {}, new.get("spec") or {}
            for field in ("podCIDR", "podCIDRs", "providerID"):
                if old_spec.get(field) and new_spec.get(field) != old_spec[field]:
                    what = "providerID" if field == "providerID" else "podCIDR"
                    raise invalid(rt.group, rt.kind, new["metadata"]["name"], [{
                        "reason": "FieldValueForbidden", "field": f"spec.{field}",
                        "message": f'Forbidden: node updates may not change {what} except from "" to valid'}])
        if rt.resource == "configmaps" or rt.resource == "secrets":
            if old.get("immutable") and (old.get("data") != new.get("data")
                                         or old.get("binaryData") != new.get("binaryData")):
                raise invalid(rt.group, rt.kind, new["metadata"]["name"], [{
                    "reason": "FieldValueForbidden", "field": "data",
                    "message": "Forbidden: field is immutable when `immutable` is set"}])

    async def patch(self, request: Request, rt: ResourceType, attrs: RequestAttributes, query: dict[str, str],
                    body: bytes) -> Response:
        ctype = bodies.media_type(request)
        kind = bodies.PATCH_TYPES.get(ctype)
        if kind is None:
            raise APIError(415, f"the body of the request was in an unknown format - accepted media types include: "
                                f"{', '.join(t for t, k in bodies.PATCH_TYPES.items() if k)}",
                           "UnsupportedMediaType")
        if kind == "strategic" and rt.custom:
            raise APIError(415, "strategic merge patch is not supported for custom resources; use a merge patch",
                           "UnsupportedMediaType")
        mode = bodies.field_validation(query)
        dry = bodies.dry_run(query, request)
        ns, name, sub = attrs.namespace or None, attrs.name, attrs.subresource
        patch_doc = bodies.decode(body, ctype)
        force = bodies.query_bool(query, "force")
        if kind == "apply":
            manager = query.get("fieldManager")
            if not manager:
                raise bad_request("fieldManager: Required value: is required for apply patch")
            if force is False and "force" in query and query["force"] not in ("false", "False", "0"):
                raise bad_request("force: Invalid value")
        else:
            if force:
                raise bad_request("force: Forbidden: may not be specified for non-apply patch")
            manager = _manager(request, query, "Update")
        key = rt.storage_key(ns, name)
        schema = rt.schema_node()
        for _ in range(20):
            try:
                current = await self._current(rt, ns, name)
            except APIError:
                if kind != "apply":
                    raise
                return await self._apply_create(request, rt, attrs, query, patch_doc, manager, dry, mode)
            old = current.obj
            base = self._output(rt, old)
            if kind == "json":
                if not isinstance(patch_doc, list):
                    raise bad_request("json: cannot unmarshal object into Go value of type jsonpatch.Patch")
                patched = apply_json_patch(base, patch_doc)
            elif kind == "merge":
                if not isinstance(patch_doc, dict):
                    raise bad_request("merge patch must be a JSON object")
                patched = apply_merge_patch(base, patch_doc)
            elif kind == "strategic":
                if not isinstance(patch_doc, dict):
                    raise bad_request("strategic merge patch must be a JSON object")
                patched = apply_strategic_merge_patch(base, patch_doc, schema)
            else:
                applied = self._check_body(rt, copy.deepcopy(patch_doc), ns, name)
                # the applied configuration must decode as the type before it is merged
                self._validate(rt, applied, "Ignore")
                # An ApplyConflictError is already the 409 Status kube answers with.
                patched = server_side_apply(base, applied, manager, schema, force, format_time())
            if not isinstance(patched, dict):
                raise bad_request("the patch did not result in an object")
            if not isinstance(patched.get("metadata", {}), dict):
                raise bad_request("metadata: must be an object")
            wanted_rv = None
            if kind != "apply":
                wanted_rv = (patched.get("metadata") or {}).get("resourceVersion")
                if wanted_rv == str(current.rv):
                    wanted_rv = None
            patched.setdefault("metadata", {})["resourceVersion"] = str(current.rv)
            patched = self._check_body(rt, patched, ns, name)
            warnings = self._validate(rt, _status_view(patched) if sub == "status" else patched, mode)
            if wanted_rv:
                raise conflict(rt.group, rt.resource, name,
                               "the object has been modified; please apply your changes to the latest version "
                               "and try again")
            new = strategy.prepare_update(rt, old, patched, sub)
            self._immutable_checks(rt, old, new)
            await self._admit("UPDATE", rt, new, old, attrs, dry)
            if kind != "apply":
                new = update_managed_fields(old, new, manager, "Update", sub, schema, format_time())
            try:
                return await self._answer_update(rt, key, current, new, dry, warnings)
            except _Retry:
                continue
        raise conflict(rt.group, rt.resource, name, "too many concurrent writes; try again")

    async def _apply_create(self, request: Request, rt: ResourceType, attrs: RequestAttributes,
                            query: dict[str, str], patch_doc: Any, manager: str, dry: bool, mode: str) -> Response:
        ns = attrs.namespace or None
        obj = self._check_body(rt, copy.deepcopy(patch_doc), ns, attrs.name)
        warnings = self._validate(rt, obj, mode)
        self._name_check(rt, obj)
        self._namespace_checks(rt, ns, creating=True)
        obj = server_side_apply(None, obj, manager, rt.schema_node(), True, format_time())
        strategy.prepare_create(rt, obj)
        await self._admit("CREATE", rt, obj, None, attrs, dry)
        key = rt.storage_key(ns, attrs.name)
        headers = self._warning_headers(warnings)
        if dry:
            return bodies.json_response(self._output(rt, obj), 201, headers)
        try:
            revision = await self.datastore.create(key, encode(obj))
        except KeyExistsError:
            raise conflict(rt.group, rt.resource, attrs.name, "object was created concurrently; try again") from None
        self._wrote(revision)
        obj["metadata"]["resourceVersion"] = str(revision)
        return bodies.json_response(self._output(rt, obj), 201, headers)

    async def delete(self, request: Request, rt: ResourceType, attrs: RequestAttributes, query: dict[str, str],
                     body: bytes) -> Response:
        options: Obj = {}
        if body.strip():
            options = bodies.decode(body, bodies.media_type(request) or bodies.JSON)
            if not isinstance(options, dict):
                raise bad_request("the body of a delete must be DeleteOptions")
        grace = bodies.query_int(query, "gracePeriodSeconds")
        if grace is None:
            grace = options.get("gracePeriodSeconds")
        policy = query.get("propagationPolicy") or options.get("propagationPolicy")
        if policy and policy not in ("Orphan", "Background", "Foreground"):
            raise bad_request(f'propagationPolicy: Unsupported value: "{policy}": supported values: '
                              f'"Foreground", "Background", "Orphan"')
        if bodies.query_bool(query, "orphanDependents") or options.get("orphanDependents"):
            policy = policy or "Orphan"
        preconditions = options.get("preconditions") or {}
        dry = bodies.dry_run(query, request) or options.get("dryRun") == ["All"]
        if self.admission:
            current = await self._current(rt, attrs.namespace or None, attrs.name)
            await self._admit("DELETE", rt, None, current.obj, attrs, dry)
        result = await self.delete_object(rt, attrs.namespace or None, attrs.name, grace, policy, preconditions, dry)
        return bodies.json_response(result)

    async def delete_object(self, rt: ResourceType, ns: str | None, name: str, grace: int | None = None,
                            policy: str | None = None, preconditions: Obj | None = None,
                            dry: bool = False) -> Obj:
        key = rt.storage_key(ns, name)
        for _ in range(20):
            current = await self._current(rt, ns, name)
            obj = copy.deepcopy(current.obj)
            meta = obj["metadata"]
            pre = preconditions or {}
            if pre.get("uid") and pre["uid"] != meta.get("uid"):
                raise conflict(rt.group, rt.resource, name,
                               f"Precondition failed: UID in precondition: {pre['uid']}, UID in object meta: "
                               f"{meta.get('uid')}")
            if pre.get("resourceVersion") and pre["resourceVersion"] != str(current.rv):
                raise conflict(rt.group, rt.resource, name,
                               f"Precondition failed: ResourceVersion in precondition: {pre['resourceVersion']}, "
                               f"ResourceVersion in object meta: {current.rv}")
            finalizers = list(meta.get("finalizers") or [])
            if policy == "Foreground" and "foregroundDeletion" not in finalizers:
                finalizers.append("foregroundDeletion")
            if policy == "Orphan" and "orphan" not in finalizers:
                finalizers.append("orphan")
            graceful = self._grace_period(rt, obj, grace)
            marked = copy.deepcopy(obj)
            marked["metadata"]["finalizers"] = finalizers
            marked["metadata"]["deletionGracePeriodSeconds"] = graceful or 0
            if _removal_blocked(rt, marked):
                if meta.get("deletionTimestamp") and finalizers == (meta.get("finalizers") or []) and (
                        graceful or 0) >= (meta.get("deletionGracePeriodSeconds") or 0):
                    return self._output(rt, current.obj)  # already being deleted, no shorter grace asked
                obj = marked
                meta = obj["metadata"]
                if not finalizers:
                    meta.pop("finalizers", None)
                if not meta.get("deletionTimestamp"):
                    meta["deletionTimestamp"] = format_time()
                if (rt.group, rt.resource) == ("", "namespaces"):
                    obj.setdefault("status", {})["phase"] = "Terminating"
                if dry:
                    return self._output(rt, obj)
                try:
                    stored = await self._store_update(rt, key, current, obj)
                except _Retry:
                    continue
                return self._output(rt, stored)
            if dry:
                return self._output(rt, obj)
            try:
                kv = await self.datastore.delete(key, current.rv)
            except ConflictError:
                continue
            except NotFoundError:
                raise not_found(rt.group, rt.resource, name) from None
            self._wrote(kv.mod_revision)
            obj["metadata"]["resourceVersion"] = str(kv.mod_revision)
            return self._output(rt, obj)
        raise conflict(rt.group, rt.resource, name, "too many concurrent writes; try again")

    @staticmethod
    def _grace_period(rt: ResourceType, obj: Obj, grace: int | None) -> int | None:
        """Seconds of graceful deletion for a pod on a node (its kubelet finishes it), else None."""
        if (rt.group, rt.resource) != ("", "pods"):
            return None
        spec, status = obj.get("spec", {}), obj.get("status", {})
        if not spec.get("nodeName") or status.get("phase") in ("Succeeded", "Failed"):
            return None
        if grace is None:
            grace = spec.get("terminationGracePeriodSeconds", 30)
        return grace if grace and grace > 0 else None

    async def delete_collection(self, request: Request, rt: ResourceType, attrs: RequestAttributes,
                                query: dict[str, str], body: bytes) -> Response:
        listing = parse_listing(query, rt)
        ns = attrs.namespace or None
        await self._fresh()
        targets = [o.obj["metadata"] for o in self.cache.items(rt.key_prefix(None), rt.key_prefix(ns) if ns else None)
                   if listing.matches(rt, o.obj)]
        dry = bodies.dry_run(query, request)
        grace = bodies.query_int(query, "gracePeriodSeconds")
        deleted = []
        for meta in targets:
            try:
                deleted.append(await self.delete_object(rt, meta.get("namespace"), meta["name"], grace,
                                                        query.get("propagationPolicy"), None, dry))
            except APIError as e:
                if e.code != 404:
                    raise
        doc = {"kind": rt.list_kind, "apiVersion": rt.api_version,
               "metadata": {"resourceVersion": str(self.cache.revision)}, "items": deleted}
        return bodies.json_response(doc)


def _removal_blocked(rt: ResourceType, obj: Obj) -> bool:
    """Whether an object marked for deletion must stay: finalizers (a namespace's spec.finalizers
    too) or a graceful pod deletion its kubelet has not finished."""
    meta = obj.get("metadata") or {}
    if meta.get("finalizers") or meta.get("deletionGracePeriodSeconds"):
        return True
    return (rt.group, rt.resource) == ("", "namespaces") and bool((obj.get("spec") or {}).get("finalizers"))


class _Retry(Exception):
    """The object changed between read and write: read again and retry."""


def _status_view(obj: Obj) -> Obj:
    """What a status write is validated on: it keeps the stored spec (prepare_update), so, as in
    kube, only metadata and status are checked, and a stored spec that does not validate (an
    older version's) cannot block the status a controller reports about it."""
    return {k: v for k, v in obj.items() if k != "spec"}


def _same(old: Obj, new: Obj) -> bool:
    """A write that changes nothing is not stored (no new resourceVersion), as in kube."""
    a = {k: v for k, v in old.items() if k != "metadata"}
    b = {k: v for k, v in new.items() if k != "metadata"}
    if a != b:
        return False
    ma = {k: v for k, v in old.get("metadata", {}).items() if k not in ("resourceVersion", "managedFields")}
    mb = {k: v for k, v in new.get("metadata", {}).items() if k not in ("resourceVersion", "managedFields")}
    return ma == mb

