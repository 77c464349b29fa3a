"""The k3p API server: authentication, authorization, discovery, OpenAPI and the resource verbs.

One ASGI app. Requests for ``/api`` and ``/apis`` are parsed into Kubernetes request
attributes, authenticated (client certificate, service-account or static bearer token),
authorized with RBAC, then served from the registry of resource types.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import gc
from collections import Counter
from collections.abc import Callable
from typing import Any

import structlog
from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response
from starlette.websockets import WebSocket

from k3p.apiserver import bodies, bootstrap_policy, crd, discovery, protobuf, schemas, strategy, streaming, tables
from k3p.apiserver.admission import AdmissionAttributes
from k3p.apiserver.allocators import ServiceAllocator
from k3p.apiserver.auth import ANONYMOUS, Authenticator
from k3p.apiserver.authorizers import AuthorizerChain
from k3p.apiserver.errors import (
    APIError,
    bad_request,
    conflict,
    insufficient_storage,
    invalid,
    method_not_allowed,
    not_found,
)
from k3p.apiserver.eviction import Evictor
from k3p.apiserver.handlers import ResourceHandlers, _Retry
from k3p.apiserver.impersonation import impersonate
from k3p.apiserver.node_authorizer import NodeAuthorizer, NodeGraph
from k3p.apiserver.node_proxy import KubeletProxy, pod_container
from k3p.apiserver.noderestriction import NodeRestriction
from k3p.apiserver.openapi import OpenAPIV3
from k3p.apiserver.openapi_v2 import MEDIA_TYPE as OPENAPI_V2_PROTOBUF
from k3p.apiserver.openapi_v2 import OpenAPIV2
from k3p.apiserver.rbac import RBACAuthorizer, forbidden_status
from k3p.apiserver.registry import Registry, ResourceType, builtin_registry
from k3p.apiserver.request_info import RequestAttributes, RequestInfoError, UserInfo, request_attributes
from k3p.apiserver.validation import validate
from k3p.apiserver.watchcache import WatchCache, encode
from k3p.client.objects import format_time, format_unix_time, set_condition
from k3p.protocols.datastore import Datastore, StorageFull

log = structlog.get_logger(__name__)
Obj = dict[str, Any]

#: what answers without credentials (everything else needs them: 401)
ANONYMOUS_PATHS = frozenset({"/version", "/healthz", "/livez", "/readyz", "/cacerts"})
SYSTEM_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
_VIRTUAL = {
    ("authorization.k8s.io", "selfsubjectaccessreviews"),
    ("authorization.k8s.io", "subjectaccessreviews"),
    ("authorization.k8s.io", "localsubjectaccessreviews"),
    ("authorization.k8s.io", "selfsubjectrulesreviews"),
    ("authentication.k8s.io", "tokenreviews"),
    ("authentication.k8s.io", "selfsubjectreviews"),
}
#: the namespace deleter's conditions that report no trouble here (type, reason, message)
_NAMESPACE_OK_CONDITIONS = (
    ("NamespaceDeletionDiscoveryFailure", "ResourcesDiscovered", "All resources successfully discovered"),
    ("NamespaceDeletionGroupVersionParsingFailure", "ParsedGroupVersions", "All legacy kube types successfully parsed"),
    ("NamespaceDeletionContentFailure", "ContentDeleted", "All content successfully deleted, may be waiting on "
                                                          "finalization"),
)


class CacheRBACSource:
    """RBAC objects straight from the watch cache; its version changes with every RBAC write."""

    def __init__(self, cache: WatchCache, registry: Registry) -> None:
        self.cache = cache
        self.types = {r: registry.get("rbac.authorization.k8s.io", "v1", r)
                      for r in ("clusterroles", "clusterrolebindings", "roles", "rolebindings")}

    def _items(self, resource: str, namespace: str | None = None) -> list[Obj]:
        rt = self.types[resource]
        key_prefix = rt.key_prefix(namespace) if namespace else None
        return [o.obj for o in self.cache.items(rt.key_prefix(None), key_prefix)]

    def _get(self, resource: str, namespace: str | None, name: str) -> Obj | None:
        rt = self.types[resource]
        item = self.cache.get(rt.key_prefix(None), rt.storage_key(namespace, name))
        return item.obj if item else None

    def version(self) -> tuple[int, ...]:
        return tuple(self.cache.bucket(rt.key_prefix(None)).changes for rt in self.types.values())

    def cluster_roles(self) -> list[Obj]:
        return self._items("clusterroles")

    def cluster_role_bindings(self) -> list[Obj]:
        return self._items("clusterrolebindings")

    def roles(self, namespace: str) -> list[Obj]:
        return self._items("roles", namespace)

    def role_bindings(self, namespace: str) -> list[Obj]:
        return self._items("rolebindings", namespace)

    def cluster_role(self, name: str) -> Obj | None:
        return self._get("clusterroles", None, name)

    def role(self, namespace: str, name: str) -> Obj | None:
        return self._get("roles", namespace, name)


class APIServer:
    """Everything behind port 6443 except health probes (see :mod:`k3p.apiserver.health`)."""

    def __init__(
        self,
        datastore: Datastore,
        authenticator: Authenticator,
        *,
        service_cidr: str = "10.43.0.0/16",
        node_port_range: str = "30000-32767",
        watch_cache_size: int = 1000,
        admission: list[Callable[..., Any]] | None = None,
        kubelets: KubeletProxy | None = None,
    ) -> None:
        #: how pods/log reaches kubelets (None: no node can be reached)
        self.kubelets = kubelets
        self.datastore = datastore
        self.registry: Registry = builtin_registry()
        self.cache = WatchCache(datastore, watch_cache_size)
        self.authn = authenticator
        self.node_graph = NodeGraph()
        self._lookup_types: dict[tuple[str, str], ResourceType] = {}
        self.authz = AuthorizerChain(NodeAuthorizer(self.node_graph, self._lookup),
                                     RBACAuthorizer(CacheRBACSource(self.cache, self.registry)))
        self.discovery = discovery.DiscoveryCache(self.registry)
        self.openapi = OpenAPIV3(self.registry)
        self.openapi_v2 = OpenAPIV2(self.openapi)
        self.allocator = ServiceAllocator(self._services, service_cidr, node_port_range)
        self.handlers = ResourceHandlers(
            datastore, self.cache, admission=[
                self.allocator, self._admit_crd,
                NodeRestriction(lambda resource, ns, name: self._lookup("", resource, ns, name)),
                *(admission or [])],
            validate=self._validate, to_table=self._table,
        )
        self.evictor = Evictor(self.handlers, self.registry)
        self._crd_versions: dict[str, int] = {}
        self._tasks: list[asyncio.Task[None]] = []
        if authenticator.sa_tokens is not None:
            authenticator.sa_tokens.use_lookup(self._cached_object)
        #: why recent WebSocket streams failed, told to the SPDY retry kubectl makes right after
        self._stream_failures = streaming.RecentFailures()

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        # Loading the protobuf descriptors takes a few hundred ms: not on the first request.
        await asyncio.to_thread(protobuf.available)
        for rt in self.registry:
            self.cache.register(rt.key_prefix(None))
        await self.cache.start()
        # before any later event is applied, so the graph never misses one
        pods, volumes = (self.registry.get("", "v1", r).key_prefix(None) for r in ("pods", "persistentvolumes"))
        self.node_graph.load(self.cache.listen(pods, self.node_graph.on_pod),
                             self.cache.listen(volumes, self.node_graph.on_volume))
        # The cache's objects live as long as the server: keep the collector from walking
        # them on every full collection (those pauses showed up as write and watch p99s).
        gc.collect()
        gc.freeze()
        self._sync_crds()
        await self._bootstrap()
        self._tasks.append(asyncio.create_task(self._controllers(), name="apiserver-controllers"))

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.cache.close()
        if self.kubelets is not None:
            await self.kubelets.close()

    async def _bootstrap(self) -> None:
        """System namespaces, default RBAC and the ``kubernetes`` Service, as a new cluster has them."""
        ns_rt = self.registry.get("", "v1", "namespaces")
        for name in SYSTEM_NAMESPACES:
            await self.ensure(ns_rt, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
        for obj in bootstrap_policy.default_objects(node_authorizer=True):
            rt = self.registry.by_api_version(obj["apiVersion"], obj["kind"])
            if rt is not None:
                await self.ensure(rt, obj)
        await self._unbind_nodes_group()
        svc_rt = self.registry.get("", "v1", "services")
        await self.ensure(svc_rt, {
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "kubernetes", "namespace": "default",
                         "labels": {"component": "apiserver", "provider": "kubernetes"}},
            "spec": {"clusterIP": self.allocator.kubernetes_ip, "type": "ClusterIP", "sessionAffinity": "None",
                     "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": 6443}]},
        })

    async def ensure(self, rt: ResourceType, obj: Obj) -> Obj:
        """Create ``obj`` unless an object of that name exists (server-internal, no admission of users)."""
        meta = obj["metadata"]
        existing = self.cache.get(rt.key_prefix(None), rt.storage_key(meta.get("namespace"), meta["name"]))
        if existing is not None:
            return existing.obj
        obj = copy.deepcopy(obj)
        strategy.prepare_create(rt, obj)
        for hook in self.handlers.admission:
            hook(AdmissionAttributes.build("CREATE", rt, obj, None))
        try:
            rv = await self.datastore.create(rt.storage_key(meta.get("namespace"), meta["name"]), encode(obj))
        except Exception as e:
            log.debug("bootstrap object exists", name=meta["name"], error=str(e))
            return obj
        self.handlers._wrote(rv)
        return obj

    async def _unbind_nodes_group(self) -> None:
        """Take the ``system:nodes`` group out of an older cluster's ``system:node`` binding.

        Before the Node authorizer, that binding gave every node the whole ClusterRole; now
        the authorizer grants it node by node, and the group in the binding would undo that.
        A binding an administrator took over (autoupdate not "true") is left alone.
        """
        rt = self.registry.get("rbac.authorization.k8s.io", "v1", "clusterrolebindings")
        item = self.cache.get(rt.key_prefix(None), rt.storage_key(None, "system:node"))
        if item is None:
            return
        meta = item.obj.get("metadata") or {}
        if (meta.get("annotations") or {}).get(bootstrap_policy.AUTOUPDATE_ANNOTATION) != "true":
            return
        nodes_group = bootstrap_policy.group_subject(bootstrap_policy.NODES_GROUP)
        subjects = item.obj.get("subjects") or []
        if nodes_group not in subjects:
            return
        new = copy.deepcopy(item.obj)
        new["subjects"] = [s for s in subjects if s != nodes_group]
        try:
            await self.handlers._store_update(rt, item.key, item, new)
        except Exception as e:  # a concurrent change (another server did it): the next start looks again
            log.warning("could not take system:nodes out of the system:node binding", error=str(e))

    def _lookup(self, group: str, resource: str, namespace: str, name: str) -> Obj | None:
        """An object of a built-in type straight from the watch cache, or None."""
        rt = self._lookup_types.get((group, resource))
        if rt is None:
            rt = next((t for t in self.registry if (t.group, t.resource) == (group, resource) and not t.custom), None)
            if rt is None:
                return None
            self._lookup_types[(group, resource)] = rt
        item = self.cache.get(rt.key_prefix(None), rt.storage_key(namespace or None, name))
        return item.obj if item else None

    @staticmethod
    def _admit_crd(attrs: AdmissionAttributes) -> None:
        """CRDs are defaulted (listKind, singular, conversion) and then checked as kube does."""
        rt, obj = attrs.resource_type, attrs.object
        if attrs.group_resource != ("apiextensions.k8s.io", "customresourcedefinitions") or obj is None:
            return
        obj.update(crd.with_defaults(obj))
        causes = crd.validate_crd(obj)
        if causes:
            raise invalid(rt.group, rt.kind, obj["metadata"].get("name", ""), [
                {"reason": c.reason, "message": c.message, "field": c.field} for c in causes])

    def _services(self) -> list[Obj]:
        services = self.registry.get("", "v1", "services")
        return [o.obj for o in self.cache.items(services.key_prefix(None))]

    # --- in-process controllers of the API server itself ---------------------------------------

    async def _controllers(self) -> None:
        """CRD establishment and namespace finalization: the API server's own housekeeping."""
        while True:
            try:
                self._sync_crds()
                await self._finalize_namespaces()
                await self._establish_crds()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("api server housekeeping failed")
            await asyncio.sleep(0.5)

    def _sync_crds(self) -> None:
        """Serve every stored CRD's versions; stop serving removed ones."""
        seen: set[str] = set()
        crds = self.registry.get("apiextensions.k8s.io", "v1", "customresourcedefinitions")
        for item in list(self.cache.items(crds.key_prefix(None))):
            obj = item.obj
            name = obj["metadata"]["name"]
            seen.add(name)
            if self._crd_versions.get(name) == item.rv:
                continue
            if obj["metadata"].get("deletionTimestamp"):
                continue
            self._crd_versions[name] = item.rv
            group, plural = obj["spec"]["group"], obj["spec"]["names"]["plural"]
            types = crd.resource_types(obj)
            self.registry.set_resource_versions(group, plural, types)
            for rt in types:
                self.cache.register(rt.key_prefix(None))
            log.info("serving custom resource", crd=name)
        for name in [n for n in self._crd_versions if n not in seen]:
            del self._crd_versions[name]
            plural, _, group = name.partition(".")
            self.registry.set_resource_versions(group, plural, [])

    async def _establish_crds(self) -> None:
        rt = self.registry.get("apiextensions.k8s.io", "v1", "customresourcedefinitions")
        for item in list(self.cache.items(rt.key_prefix(None))):
            obj = item.obj
            if obj["metadata"].get("deletionTimestamp"):
                await self._finish_crd_deletion(obj)
                continue
            status = crd.crd_status(obj, self.registry)
            if crd.is_established(obj) and (obj.get("status") or {}).get("acceptedNames") == status["acceptedNames"]:
                continue
            new = copy.deepcopy(obj)
            new["status"] = status
            try:
                await self.handlers._store_update(rt, item.key, item, new)
            except Exception:
                pass

    async def _finish_crd_deletion(self, obj: Obj) -> None:
        group, plural = obj["spec"]["group"], obj["spec"]["names"]["plural"]
        for rt in self.registry.versions_of(group, plural)[:1]:
            for item in list(self.cache.items(rt.key_prefix(None))):
                meta = item.obj["metadata"]
                try:
                    await self.handlers.delete_object(rt, meta.get("namespace"), meta["name"])
                except APIError:
                    pass
            if any(True for _ in self.cache.items(rt.key_prefix(None))):
                return
        await self._drop_finalizer(self.registry.get("apiextensions.k8s.io", "v1", "customresourcedefinitions"),
                                   obj, "customresourcecleanup.apiextensions.k8s.io")

    async def _drop_finalizer(self, rt: ResourceType, obj: Obj, finalizer: str, in_spec: bool = False) -> None:
        meta = obj["metadata"]
        item = self.cache.get(rt.key_prefix(None), rt.storage_key(meta.get("namespace"), meta["name"]))
        if item is None:
            return
        new = copy.deepcopy(item.obj)
        holder = new["spec"] if in_spec else new["metadata"]
        holder["finalizers"] = [f for f in holder.get("finalizers") or [] if f != finalizer]
        if in_spec and not holder["finalizers"] and not new["metadata"].get("finalizers"):
            new["metadata"]["finalizers"] = []
        try:
            await self.handlers._store_update(rt, item.key, item, new)
        except Exception:
            pass

    async def _finalize_namespaces(self) -> None:
        ns_rt = self.registry.get("", "v1", "namespaces")
        for item in list(self.cache.items(ns_rt.key_prefix(None))):
            ns = item.obj
            if not ns["metadata"].get("deletionTimestamp"):
                continue
            name = ns["metadata"]["name"]
            remaining = 0
            #: what is left after this pass, by "resource.group" and by finalizer (the namespace's conditions)
            left: Counter[str] = Counter()
            finalizers: Counter[str] = Counter()
            for rt in self._namespaced_storage_types():
                for obj_item in list(self.cache.items(rt.key_prefix(None), rt.key_prefix(name))):
                    remaining += 1
                    obj = obj_item.obj
                    if not obj["metadata"].get("deletionTimestamp"):
                        try:
                            obj = await self.handlers.delete_object(rt, name, obj["metadata"]["name"], grace=0)
                        except APIError:
                            pass
                        if not obj["metadata"].get("deletionTimestamp"):
                            continue  # gone
                    left[f"{rt.resource}.{rt.group}"] += 1
                    finalizers.update(obj["metadata"].get("finalizers") or [])
            if remaining == 0 and "kubernetes" in (ns.get("spec", {}).get("finalizers") or []):
                await self._drop_finalizer(ns_rt, ns, "kubernetes", in_spec=True)
            elif left:
                await self._set_namespace_conditions(ns_rt, item, left, finalizers)

    async def _set_namespace_conditions(self, ns_rt: ResourceType, item: Any, left: Counter[str],
                                        finalizers: Counter[str]) -> None:
        """What holds a Terminating namespace, in the conditions upstream's namespace deleter sets."""
        status = copy.deepcopy(item.obj.get("status") or {})
        wanted = [(t, "False", reason, message) for t, reason, message in _NAMESPACE_OK_CONDITIONS]
        wanted.append(("NamespaceContentRemaining", "True", "SomeResourcesRemain",
                       "Some resources are remaining: " + ", ".join(
                           sorted(f"{r} has {n} resource instances" for r, n in left.items()))))
        if finalizers:
            wanted.append(("NamespaceFinalizersRemaining", "True", "SomeFinalizersRemain",
                           "Some content in the namespace has finalizers remaining: " + ", ".join(
                               sorted(f"{f} in {n} resource instances" for f, n in finalizers.items()))))
        else:
            wanted.append(("NamespaceFinalizersRemaining", "False", "ContentHasNoFinalizers",
                           "All content-preserving finalizers finished"))
        changed = False
        for type_, cond_status, reason, message in wanted:
            changed = set_condition(status, type_, cond_status, reason, message) or changed
        if not changed:
            return
        new = copy.deepcopy(item.obj)
        new["status"] = status
        try:
            await self.handlers._store_update(ns_rt, item.key, item, new)
        except Exception as e:
            log.debug("namespace conditions not written; next pass", namespace=item.obj["metadata"]["name"],
                      error=str(e))

    def _namespaced_storage_types(self) -> list[ResourceType]:
        seen: set[str] = set()
        out = []
        for rt in self.registry:
            if rt.namespaced and "delete" in rt.verbs and rt.storage_prefix not in seen \
                    and rt.version == rt.storage_version and rt.group == rt.storage_group:
                seen.add(rt.storage_prefix)
                out.append(rt)
        return out

    # --- hooks for the handlers -------------------------------------------------------------

    def _validate(self, rt: ResourceType, obj: Obj, mode: str) -> list[str]:
        schema = crd.validation_schema(rt) if rt.custom else rt.schema_node()
        if schema is None:
            return []
        result = validate(obj, schema, mode)
        decode_error = result.decode_error(rt.kind, rt.version)
        if decode_error:
            raise bad_request(decode_error)
        strict = result.strict_error()
        if strict:
            raise bad_request(strict)
        causes = result.causes()
        if causes:
            raise invalid(rt.group, rt.kind, obj.get("metadata", {}).get("name", ""), [
                {"reason": c.reason, "message": c.message, "field": c.field} for c in causes])
        return result.warnings()

    def _table(self, rt: ResourceType, objects: list[Obj], include_object: str, meta: Obj) -> Obj:
        return tables.to_table(
            rt.group, rt.resource, objects, include_object, meta,
            list(rt.printer_columns) if rt.custom else None, custom=rt.custom,
        )

    # --- the ASGI entry -----------------------------------------------------------------------

    def mount(self, app: FastAPI) -> None:
        methods = ["GET", "POST", "PUT", "PATCH", "DELETE"]
        app.add_route("/api", self._serve, methods=methods)
        app.add_route("/apis", self._serve, methods=methods)
        app.add_route("/api/{rest:path}", self._serve, methods=methods)
        app.add_route("/apis/{rest:path}", self._serve, methods=methods)
        app.router.add_websocket_route("/api/{rest:path}", self.handle_websocket)
        app.router.add_websocket_route("/apis/{rest:path}", self.handle_websocket)
        app.add_route("/openapi/v2", self.handle_openapi_v2, methods=["GET"])
        app.add_route("/openapi/v3", self.handle_openapi, methods=["GET"])
        app.add_route("/openapi/v3/{rest:path}", self.handle_openapi, methods=["GET"])

    def _user(self, request: Request) -> UserInfo | None:
        try:
            return self.authn.authenticate(request.scope, request.headers.get("authorization"))
        except PermissionError:
            raise APIError(401, "Unauthorized", "Unauthorized") from None

    async def handle_openapi_v2(self, request: Request) -> Response:
        """The Swagger 2.0 definitions: protobuf when asked for (kubectl), JSON otherwise."""
        try:
            if self._user(request) is None:
                raise APIError(401, "Unauthorized", "Unauthorized")
        except APIError as e:
            return bodies.status_response(e)
        protobuf, as_json, digest = self.openapi_v2.bodies()
        etag = f'"{digest}"'
        headers = {"ETag": etag, "Cache-Control": "no-cache, private", "Vary": "Accept"}
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers=headers)
        if OPENAPI_V2_PROTOBUF in request.headers.get("accept", ""):
            # Go's media type parser rejects the '@' of the name it asks by: answer as plain bytes
            return Response(protobuf, media_type="application/octet-stream", headers=headers)
        return Response(as_json, media_type="application/json", headers=headers)

    async def handle_openapi(self, request: Request) -> Response:
        try:
            if self._user(request) is None:
                raise APIError(401, "Unauthorized", "Unauthorized")
            path = request.url.path.rstrip("/")
            if path == "/openapi/v3":
                return bodies.json_response(self.openapi.index_bytes())
            try:
                data, digest = self.openapi.document_by_path(path[len("/openapi/v3/"):])
            except KeyError:
                raise APIError(404, "the server could not find the requested resource", "NotFound") from None
            wanted = request.query_params.get("hash")
            if wanted and wanted != digest:
                # A client holding an old index gets sent to the current document, as kube does.
                return Response(status_code=301, headers={"Location": f"{path}?hash={digest}"})
            etag = f'"{digest}"'
            headers = {"ETag": etag, "Cache-Control": "public, immutable" if wanted else "no-cache, private"}
            if request.headers.get("if-none-match") == etag:
                return Response(status_code=304, headers=headers)
            return Response(data, media_type="application/json", headers=headers)
        except APIError as e:
            return bodies.status_response(e)

    async def _serve(self, request: Request) -> Response:
        response = await self.handle(request)
        if response.status_code != 413:
            await bodies.drain(request)
        else:
            # A body refused as too large is not waited for, whatever limit refused it, and
            # the connection ends with this answer: saying so keeps a keep-alive client from
            # sending its next request into a closing connection (Go's server does the same).
            response.headers["connection"] = "close"
        return response

    async def handle(self, request: Request) -> Response:
        try:
            return await self._handle(request)
        except APIError as e:
            return bodies.status_response(e)
        except StorageFull as e:
            # not a server bug: one line, no traceback, and the message says what to free
            log.warning("write refused: datastore full", path=request.url.path, method=request.method,
                        error=str(e))
            return bodies.status_response(insufficient_storage(
                f"{e}: free space there or delete objects (reads and deletes keep working)"))
        except Exception as e:
            log.exception("request failed", path=request.url.path, method=request.method)
            return bodies.status_response(APIError(500, f"Internal error occurred: {type(e).__name__}: {e}"))

    async def _handle(self, request: Request) -> Response:
        if request.headers.get("authorization"):
            # a token is checked against the objects it names: see this server's own deletes
            await self.handlers._fresh()
        user = self._user(request)
        path = request.url.path
        if len(path) > 1:
            path = path.rstrip("/")
        if user is None and path not in ANONYMOUS_PATHS:
            raise APIError(401, "Unauthorized", "Unauthorized")
        user = impersonate(request.headers.items(), user or ANONYMOUS, self.authz.authorize)
        query = dict(request.query_params)
        try:
            attrs = request_attributes(request.method, path, query, user or ANONYMOUS)
        except RequestInfoError as e:
            raise APIError(404, str(e) or "the server could not find the requested resource", "NotFound") from None
        decision = self.authz.authorize(attrs)
        if not decision.allowed:
            status = forbidden_status(attrs, decision.reason)
            return bodies.json_response(status, 403)
        if not attrs.is_resource_request:
            return self._discovery(request, path)
        rt = self.registry.get(attrs.api_group, attrs.api_version, attrs.resource)
        if rt is None:
            raise APIError(404, "the server could not find the requested resource", "NotFound")
        return await self._resource(request, rt, attrs, query)

    def _discovery(self, request: Request, path: str) -> Response:
        accept = request.headers.get("accept")
        parts = path.strip("/").split("/")
        if parts in (["api"], ["apis"]) and discovery.wants_aggregated(accept):
            data, etag = self.discovery.aggregated(legacy=parts == ["api"])
            return Response(data, media_type=discovery.AGGREGATED_CONTENT_TYPE,
                            headers={"ETag": f'"{etag}"', "Vary": "Accept"})
        if parts == ["api"]:
            return bodies.json_response(discovery.api_versions(), headers={"Vary": "Accept"})
        if parts == ["apis"]:
            return Response(self.discovery.group_list()[0], media_type=bodies.JSON, headers={"Vary": "Accept"})
        found = None
        if len(parts) == 2 and parts[0] == "api":
            found = self.discovery.resource_list("", parts[1])
        elif len(parts) == 2 and parts[0] == "apis":
            found = self.discovery.group(parts[1])
        elif len(parts) == 3 and parts[0] == "apis":
            found = self.discovery.resource_list(parts[1], parts[2])
        if found is None:
            raise APIError(404, "the server could not find the requested resource", "NotFound")
        return Response(found[0], media_type=bodies.JSON)

    async def _resource(self, request: Request, rt: ResourceType, attrs: RequestAttributes,
                        query: dict[str, str]) -> Response:
        verb, sub = attrs.verb, attrs.subresource
        if verb not in rt.verbs and not sub:
            raise method_not_allowed()
        if sub and sub not in rt.subresources:
            raise APIError(404, "the server could not find the requested resource", "NotFound")
        h = self.handlers
        accept = request.headers.get("accept", "")
        table = tables.table_version_from_accept(accept) is not None
        include = query.get("includeObject") or "Metadata"
        if table and include not in tables.INCLUDE_OBJECT_POLICIES:
            raise bad_request(f'includeObject: Unsupported value: "{include}": supported values: '
                              + ", ".join(f'"{p}"' for p in sorted(tables.INCLUDE_OBJECT_POLICIES)))
        if verb in ("create", "update", "patch") or (verb == "delete" and True):
            raw = await bodies.read_body(request)
        else:
            raw = b""
        if (rt.group, rt.resource) in _VIRTUAL:
            if verb != "create":
                raise method_not_allowed()
            return self._review(rt, attrs, bodies.decode(raw, bodies.media_type(request)))
        if sub == "scale":
            return await self._scale(request, rt, attrs, query, raw)
        if sub == "log" and verb == "get":
            return await self._pod_log(rt, attrs, query)
        if sub in streaming.STREAM_SUBRESOURCES:
            return await self._pod_stream_without_websocket(rt, attrs, query)
        if sub in ("log", "proxy", "ephemeralcontainers"):
            raise APIError(503, f"pods/{sub} needs the pod's node agent, which this cluster does not run yet",
                           "ServiceUnavailable")
        if sub == "token":
            return await self._token_request(request, rt, attrs, raw)
        if sub == "eviction":
            eviction = bodies.decode(raw, bodies.media_type(request)) if raw.strip() else None
            await h._admit("CREATE", rt, eviction if isinstance(eviction, dict) else None, None, attrs,
                           bodies.dry_run(query, request))
            return await self.evictor.handle(request, attrs, raw)
        if sub == "binding" or (rt.resource == "bindings" and verb == "create"):
            return await self._bind(request, rt, attrs, query, raw)
        if verb == "get":
            if table:
                obj = await h.get(rt, attrs)
                return bodies.json_response(self._table(rt, [obj], include, {"resourceVersion": ""}))
            return bodies.json_response(await h.get_raw(rt, attrs))
        if verb == "list":
            return await h.list(request, rt, attrs, query, table, include)
        if verb == "watch":
            return await h.watch(request, rt, attrs, query, table)
        if verb == "create":
            body = bodies.decode(raw, bodies.media_type(request), strict=query.get("fieldValidation") == "Strict")
            return await h.create(request, rt, attrs, query, body)
        if verb == "update":
            body = bodies.decode(raw, bodies.media_type(request), strict=query.get("fieldValidation") == "Strict")
            return await h.update(request, rt, attrs, query, body)
        if verb == "patch":
            return await h.patch(request, rt, attrs, query, raw)
        if verb == "delete":
            return await h.delete(request, rt, attrs, query, raw)
        if verb == "deletecollection":
            return await h.delete_collection(request, rt, attrs, query, raw)
        raise method_not_allowed()

    # --- subresources and virtual resources ---------------------------------------------------

    async def _scale(self, request: Request, rt: ResourceType, attrs: RequestAttributes, query: dict[str, str],
                     raw: bytes) -> Response:
        from k3p.selectors import format_label_selector

        paths = rt.scale_paths or {"specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas",
                                   "labelSelectorPath": ".status.selector"}

        def read(obj: Obj, path: str | None) -> Any:
            node: Any = obj
            for part in (path or "").strip(".").split("."):
                if not part:
                    continue
                node = node.get(part) if isinstance(node, dict) else None
            return node

        def scale_of(obj: Obj) -> Obj:
            meta = obj["metadata"]
            selector = read(obj, paths.get("labelSelectorPath")) if rt.custom else \
                format_label_selector(obj.get("spec", {}).get("selector")) if rt.group == "apps" else \
                ",".join(f"{k}={v}" for k, v in (obj.get("spec", {}).get("selector") or {}).items())
            return {
                "kind": "Scale", "apiVersion": "autoscaling/v1",
                "metadata": {k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")
                             if k in meta},
                "spec": {"replicas": read(obj, paths["specReplicasPath"]) or 0},
                "status": {"replicas": read(obj, paths["statusReplicasPath"]) or 0, "selector": selector or ""},
            }

        h = self.handlers
        ns, name = attrs.namespace or None, attrs.name
        current = await h._current(rt, ns, name)
        if attrs.verb == "get":
            return bodies.json_response(scale_of(current.obj))
        if attrs.verb not in ("update", "patch"):
            raise method_not_allowed()
        ctype = bodies.media_type(request)
        kind = "update" if attrs.verb == "update" else bodies.PATCH_TYPES.get(ctype)
        if kind is None:
            raise APIError(415, f"the body of the request was in an unknown format - accepted media types include: "
                                f"{', '.join(t for t, k in bodies.PATCH_TYPES.items() if k)}",
                           "UnsupportedMediaType")
        doc = bodies.decode(raw, ctype)
        manager = query.get("fieldManager", "")
        if kind == "apply" and not manager:
            raise bad_request("fieldManager: Required value: is required for apply patch")
        for _ in range(20):
            body = _scale_request(scale_of(current.obj), doc, kind, manager, bodies.query_bool(query, "force"))
            replicas = (body.get("spec") or {}).get("replicas")
            if not isinstance(replicas, int) or replicas < 0:
                raise invalid("autoscaling", "Scale", name, [{
                    "reason": "FieldValueInvalid", "field": "spec.replicas",
                    "message": f"Invalid value: {replicas}: must be greater than or equal to 0"}])
            wanted_rv = (body.get("metadata") or {}).get("resourceVersion") if kind != "apply" else None
            if wanted_rv and wanted_rv != str(current.rv):
                raise conflict(rt.group, rt.resource, name, "the object has been modified; please apply your "
                                                            "changes to the latest version and try again")
            patched = copy.deepcopy(current.obj)
            target = patched
            parts = paths["specReplicasPath"].strip(".").split(".")
            for part in parts[:-1]:
                target = target.setdefault(part, {})
            target[parts[-1]] = replicas
            new = strategy.prepare_update(rt, current.obj, patched)
            if bodies.dry_run(query, request):
                return bodies.json_response(scale_of(new))
            try:
                stored = await h._store_update(rt, current.key, current, new)
            except _Retry:
                # the object changed meanwhile (a controller's status write): patch the new one
                current = await h._current(rt, ns, name)
                continue
            return bodies.json_response(scale_of(stored))
        raise conflict(rt.group, rt.resource, name, "too many concurrent writes; try again")

    async def _bind(self, request: Request, rt: ResourceType, attrs: RequestAttributes, query: dict[str, str],
                    raw: bytes) -> Response:
        body = bodies.decode(raw, bodies.media_type(request))
        if not isinstance(body, dict):
            raise bad_request("the body of a binding must be a Binding object")
        decode_error = validate(body, schemas.schema_for("", "v1", "Binding") or {}, "Ignore").decode_error(
            "Binding", "v1")
        if decode_error:
            raise bad_request(decode_error)
        dry = bodies.dry_run(query, request)
        pods = self.registry.get("", "v1", "pods")
        name = attrs.name if attrs.subresource == "binding" else (body.get("metadata") or {}).get("name") or ""
        target = (body.get("target") or {}).get("name")
        if not target:
            raise invalid("", "Binding", name, [{"reason": "FieldValueRequired", "field": "target.name",
                                                 "message": "Required value"}])
        for _ in range(10):
            current = await self.handlers._current(pods, attrs.namespace, name)
            if current.obj.get("spec", {}).get("nodeName"):
                from k3p.apiserver.errors import conflict

                raise conflict("", "pods/binding", name, f"pod {name} is already assigned to node "
                                                         f"\"{current.obj['spec']['nodeName']}\"")
            new = copy.deepcopy(current.obj)
            new["spec"]["nodeName"] = target
            conditions = [c for c in new.setdefault("status", {}).get("conditions", []) if c["type"] != "PodScheduled"]
            conditions.append({"type": "PodScheduled", "status": "True", "lastProbeTime": None,
                               "lastTransitionTime": format_time()})
            new["status"]["conditions"] = conditions
            if dry:
                return bodies.json_response(bodies.success_status(), 201)
            try:
                await self.handlers._store_update(pods, current.key, current, new)
            except _Retry:
                continue
            return bodies.json_response(bodies.success_status(), 201)
        raise APIError(409, "binding kept conflicting; try again", "Conflict")

    async def _pod_log(self, rt: ResourceType, attrs: RequestAttributes, query: dict[str, str]) -> Response:
        pod = (await self.handlers._current(rt, attrs.namespace, attrs.name)).obj
        node_name = (pod.get("spec") or {}).get("nodeName")
        if not node_name or self.kubelets is None:
            raise bad_request(f'pod "{attrs.name}" is not running on a node yet: no logs')
        nodes = self.registry.get("", "v1", "nodes")
        node = self.cache.get(nodes.key_prefix(None), nodes.storage_key(None, node_name))
        if node is None:
            raise APIError(503, f'node "{node_name}" of pod "{attrs.name}" is gone', "ServiceUnavailable")
        return await self.kubelets.logs(node.obj, pod, query)

    # --- pods/exec, pods/attach, pods/portforward ----------------------------------------------

    async def handle_websocket(self, websocket: WebSocket) -> None:
        """WebSocket upgrades: pods/exec, pods/attach and pods/portforward, relayed to the pod's kubelet."""
        try:
            upstream, protocol = await self._open_pod_stream(websocket)
        except _Refused as e:
            await websocket.send_denial_response(e.response)
            return
        except Exception as e:
            log.exception("stream failed", path=websocket.url.path)
            error = APIError(500, f"Internal error occurred: {type(e).__name__}: {e}")
            await websocket.send_denial_response(bodies.status_response(error))
            return
        await websocket.accept(subprotocol=protocol or None)
        await streaming.relay(websocket, upstream)

    async def _open_pod_stream(self, websocket: WebSocket) -> tuple[Any, str]:
        token, offered = streaming.bearer_token_from_protocols(list(websocket.scope.get("subprotocols") or []))
        authorization = websocket.headers.get("authorization") or (f"Bearer {token}" if token else None)
        try:
            if authorization:
                await self.handlers._fresh()
            user = self.authn.authenticate(websocket.scope, authorization)
        except PermissionError:
            user = None
        if user is None:
            raise _Refused(bodies.status_response(APIError(401, "Unauthorized", "Unauthorized")))
        try:
            user = impersonate(websocket.headers.items(), user, self.authz.authorize)
        except APIError as e:
            raise _Refused(bodies.status_response(e)) from None
        path = websocket.url.path.rstrip("/")
        query = websocket.query_params.multi_items()
        try:
            attrs = request_attributes("GET", path, dict(query), user)
        except RequestInfoError as e:
            raise _Refused(bodies.status_response(APIError(404, str(e) or "not found", "NotFound"))) from None
        # A GET that upgrades runs commands: since kube 1.31 it needs "create" too, like the POST.
        for wanted in (attrs, dataclasses.replace(attrs, verb="create")):
            decision = self.authz.authorize(wanted)
            if not decision.allowed:
                raise _Refused(bodies.json_response(forbidden_status(wanted, decision.reason), 403))
        sub = attrs.subresource
        if (attrs.api_group, attrs.resource) != ("", "pods") or sub not in streaming.STREAM_SUBRESOURCES \
                or not attrs.name:
            raise _Refused(bodies.status_response(APIError(
                400, f"{path} does not speak WebSocket: only pods/exec, pods/attach and pods/portforward do")))
        key = (user.name, attrs.namespace, attrs.name, sub)
        try:
            protocol = streaming.negotiate(offered, streaming.protocols_for(sub))
            if protocol is None:
                raise bad_request(f"none of the requested WebSocket protocols [{', '.join(offered)}] is supported "
                                  f"for pods/{sub}; supported: "
                                  f"{', '.join(p for p in streaming.protocols_for(sub) if p)}")
            rt = self.registry.get("", "v1", "pods")
            pod = (await self.handlers._current(rt, attrs.namespace, attrs.name)).obj
            node = self._stream_node(pod, attrs.name)
            if self.kubelets is None:
                raise APIError(503, "this API server cannot reach kubelets", "ServiceUnavailable")
            upstream = await self.kubelets.open_stream(node, pod, sub, query, protocol)
        except APIError as e:
            self._stream_failures.remember(key, e)
            raise _Refused(bodies.status_response(e)) from None
        return upstream, protocol

    def _stream_node(self, pod: Obj, name: str) -> Obj:
        node_name = (pod.get("spec") or {}).get("nodeName")
        if not node_name:
            raise bad_request(f'pod "{name}" is not running on a node yet')
        nodes = self.registry.get("", "v1", "nodes")
        node = self.cache.get(nodes.key_prefix(None), nodes.storage_key(None, node_name))
        if node is None:
            raise APIError(503, f'node "{node_name}" of pod "{name}" is gone', "ServiceUnavailable")
        return node.obj

    async def _pod_stream_without_websocket(self, rt: ResourceType, attrs: RequestAttributes,
                                            query: dict[str, str]) -> Response:
        """A SPDY (or plain) request for a stream: the same checks, then why it cannot be served."""
        earlier = self._stream_failures.pop((attrs.user.name, attrs.namespace, attrs.name, attrs.subresource))
        pod = (await self.handlers._current(rt, attrs.namespace, attrs.name)).obj
        if attrs.subresource != "portforward":
            pod_container(pod, query.get("container"))
        if earlier is not None:
            raise earlier
        raise bad_request(streaming.SPDY_UNSUPPORTED.format(sub=attrs.subresource))

    def _cached_object(self, resource: str, namespace: str, name: str) -> Obj | None:
        """A core/v1 object from the watch cache (what service-account tokens are checked against)."""
        rt = self.registry.get("", "v1", resource)
        if rt is None:
            return None
        item = self.cache.get(rt.key_prefix(None), rt.storage_key(namespace or None, name))
        return item.obj if item else None

    async def _token_request(self, request: Request, rt: ResourceType, attrs: RequestAttributes,
                             raw: bytes) -> Response:
        """TokenRequest: a signed, expiring token for a service account (``serviceaccounts/token``)."""
        if attrs.verb != "create":
            raise method_not_allowed()
        body = bodies.decode(raw, bodies.media_type(request)) if raw.strip() else {}
        if not isinstance(body, dict):
            raise bad_request("the body must be a TokenRequest")
        sa = await self.handlers._current(rt, attrs.namespace, attrs.name)
        spec = body.get("spec") or {}
        if not isinstance(spec, dict):
            raise bad_request("spec must be a TokenRequestSpec")
        seconds = spec.get("expirationSeconds") or 3600
        if not isinstance(seconds, int) or seconds < 600 or seconds > 1 << 32:
            why = "may not specify a duration less than 10 minutes" if not isinstance(seconds, int) or seconds < 600 \
                else "may not specify a duration larger than 2^32 seconds"
            raise invalid("authentication.k8s.io", "TokenRequest", "", [{
                "reason": "FieldValueInvalid", "field": "spec.expirationSeconds",
                "message": f"Invalid value: {seconds}: {why}"}])
        audiences = spec.get("audiences") or []
        if not isinstance(audiences, list) or not all(isinstance(a, str) and a for a in audiences):
            raise bad_request("spec.audiences must be a list of non-empty strings")
        if self.authn.sa_tokens is None:
            raise APIError(503, "service account token signing is not configured", "ServiceUnavailable")
        await self.handlers._admit("CREATE", rt, body, None, attrs, bodies.dry_run({}, request))
        audiences = audiences or self.authn.sa_tokens.api_audiences
        bound = self._bound_objects(attrs, spec.get("boundObjectRef"))
        token, expires = self.authn.sa_tokens.issue(
            attrs.namespace, attrs.name, sa.obj["metadata"]["uid"], audiences, seconds, **bound)
        out = {
            "kind": "TokenRequest", "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"name": attrs.name, "namespace": attrs.namespace,
                         "creationTimestamp": format_time()},
            "spec": {"audiences": audiences, "expirationSeconds": seconds,
                     "boundObjectRef": spec.get("boundObjectRef")},
            "status": {"token": token,
                       "expirationTimestamp": format_unix_time(expires)},
        }
        return bodies.json_response(out, 201)

    def _bound_objects(self, attrs: RequestAttributes, ref: Any) -> dict[str, dict[str, str]]:
        """The Pod, Secret or Node a TokenRequest binds its token to, as ``issue`` takes them."""
        if not ref:
            return {}
        if not isinstance(ref, dict):
            raise bad_request("spec.boundObjectRef must be an object reference")
        api_version, kind = str(ref.get("apiVersion") or ""), str(ref.get("kind") or "")
        name = str(ref.get("name") or "")
        group, _, version = api_version.rpartition("/")
        resource = {"Pod": "pods", "Secret": "secrets", "Node": "nodes"}.get(kind) if group == "" else None
        if resource is None:
            raise bad_request(f"cannot bind token to object of type {group}/{version}, Kind={kind}")
        obj = self._cached_object(resource, "" if kind == "Node" else attrs.namespace, name)
        if obj is None:
            raise not_found("", resource, name)
        uid = str(obj["metadata"].get("uid") or "")
        if ref.get("uid") and ref["uid"] != uid:
            raise conflict("", kind, name, f"the UID in the bound object reference ({ref['uid']}) does not match "
                                           "the UID in record. The object might have been deleted and then recreated")
        found = {kind.lower(): {"name": name, "uid": uid}}
        if kind == "Pod":
            if (obj.get("spec") or {}).get("serviceAccountName") != attrs.name:
                raise bad_request(f'cannot bind token for serviceaccount "{attrs.name}" to pod running with '
                                  "different serviceaccount name.")
            node_name = (obj.get("spec") or {}).get("nodeName")
            if node_name:
                # the pod's node, for information (kube names it even when the Node is gone)
                node = self._cached_object("nodes", "", node_name)
                found["node"] = {"name": node_name, "uid": str(node["metadata"].get("uid") or "") if node else ""}
        return found

    def _review(self, rt: ResourceType, attrs: RequestAttributes, body: Any) -> Response:
        if not isinstance(body, dict):
            raise bad_request(f"the body must be a {rt.kind}")
        # decoded as kube decodes a review: a field of the wrong type is a 400
        self._validate(rt, body, "Ignore")
        spec = body.get("spec") or {}
        out = {"kind": rt.kind, "apiVersion": rt.api_version, "metadata": body.get("metadata") or {}, "spec": spec}
        user = attrs.user
        if rt.resource in ("selfsubjectaccessreviews", "subjectaccessreviews", "localsubjectaccessreviews"):
            try:
                out["status"] = self.authz.evaluate_access_review(
                    spec, user if rt.resource == "selfsubjectaccessreviews" else None)
            except ValueError as e:
                raise invalid(rt.group, rt.kind, "", [{"reason": "FieldValueInvalid",
                                                       "field": "spec.resourceAttributes",
                                                       "message": f"Invalid value: \"null\": {e}"}]) from None
        elif rt.resource == "selfsubjectrulesreviews":
            out["status"] = self.authz.rules_review_status(user, spec.get("namespace", ""))
        elif rt.resource == "selfsubjectreviews":
            out["status"] = {"userInfo": {"username": user.name, "groups": list(user.groups),
                                          **({"uid": user.uid} if user.uid else {}),
                                          **({"extra": user.extra} if user.extra else {})}}
        elif rt.resource == "tokenreviews":
            audiences = spec.get("audiences") or None
            if audiences is not None and (not isinstance(audiences, list)
                                          or not all(isinstance(a, str) for a in audiences)):
                raise bad_request("spec.audiences must be a list of strings")
            out["status"] = self.authn.review(str(spec.get("token") or ""), audiences)
        return bodies.json_response(out, 201)


def _scale_request(base: Obj, doc: Any, kind: str, manager: str, force: bool) -> Obj:
    """The Scale a PUT (``kind`` "update") or a patch of ``doc`` onto ``base`` asks for,
    checked as kube decodes a Scale: 400 for a body of the wrong shape."""
    from k3p.apiserver.patch import (
        apply_json_patch,
        apply_merge_patch,
        apply_strategic_merge_patch,
        server_side_apply,
    )

    schema = schemas.schema_for("autoscaling", "v1", "Scale")
    assert schema is not None
    if kind == "apply" and isinstance(doc, dict):
        # the applied configuration must decode as a Scale before it is merged
        decode_error = validate(doc, schema, "Ignore").decode_error("Scale", "v1")
        if decode_error:
            raise bad_request(decode_error)
    if kind == "update":
        body = doc
    elif kind == "json":
        if not isinstance(doc, list):
            raise bad_request("json: cannot unmarshal object into Go value of type jsonpatch.Patch")
        body = apply_json_patch(base, doc)
    elif not isinstance(doc, dict):
        raise bad_request(f"{'apply' if kind == 'apply' else 'merge'} patch must be a JSON object")
    elif kind == "merge":
        body = apply_merge_patch(base, doc)
    elif kind == "strategic":
        body = apply_strategic_merge_patch(base, doc, schema)
    else:
        body = server_side_apply(base, doc, manager, schema, force, format_time(), api_version="autoscaling/v1",
                                 subresource="scale")
    if not isinstance(body, dict):
        raise bad_request("the object provided is not a Scale: expected a JSON object")
    decode_error = validate(body, schema, "Ignore").decode_error("Scale", "v1")
    if decode_error:
        raise bad_request(decode_error)
    return body


class _Refused(Exception):
    """A WebSocket upgrade answered with an HTTP response instead."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status_code)
        self.response = response
