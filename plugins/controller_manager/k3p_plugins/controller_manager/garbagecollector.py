"""The garbage collector: objects whose owners are gone are deleted; Foreground and Orphan deletion.

It keeps a graph of ownerReferences over every resource type the API serves (found through
discovery, custom resources included) and acts like kube's garbage collector:

- a dependent whose owners all vanished (by uid) is deleted, with the propagation its own
  finalizers ask for (Background by default);
- an owner deleted with ``propagationPolicy=Foreground`` carries the ``foregroundDeletion``
  finalizer: its dependents are deleted, and once none with ``blockOwnerDeletion`` is left
  the finalizer is removed, which completes the owner's deletion;
- an owner deleted with ``propagationPolicy=Orphan`` carries the ``orphan`` finalizer: its
  dependents lose their reference to it, then the finalizer is removed.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import structlog

from k3p.client import ApiError, Client, InformerFactory, Obj, Resource
from k3p.client.resources import (
    CONTROLLERREVISIONS,
    CRONJOBS,
    DAEMONSETS,
    DEPLOYMENTS,
    ENDPOINTS,
    ENDPOINTSLICES,
    JOBS,
    NAMESPACES,
    NODES,
    PERSISTENTVOLUMECLAIMS,
    PODS,
    REPLICASETS,
    REPLICATIONCONTROLLERS,
    SERVICES,
    STATEFULSETS,
)
from k3p_plugins.controller_manager.base import BaseController, ControllerOptions

log = structlog.get_logger(__name__)

FOREGROUND = "foregroundDeletion"
ORPHAN = "orphan"
#: types the other controllers watch anyway: their informers are shared
SHARED = (PODS, REPLICASETS, DEPLOYMENTS, DAEMONSETS, STATEFULSETS, CONTROLLERREVISIONS, JOBS, CRONJOBS,
          REPLICATIONCONTROLLERS, SERVICES, ENDPOINTS, ENDPOINTSLICES, NODES, NAMESPACES, PERSISTENTVOLUMECLAIMS)
#: kube's garbage collector ignores events: they are many and never own anything
IGNORED = {("", "events"), ("events.k8s.io", "events")}


@dataclass
class GraphNode:
    uid: str
    res: Resource
    namespace: str | None
    name: str
    owners: list[Obj] = field(default_factory=list)
    finalizers: list[str] = field(default_factory=list)
    deleting: bool = False
    dependents: set[str] = field(default_factory=set)

    def ref_to(self, owner_uid: str) -> Obj | None:
        return next((r for r in self.owners if r.get("uid") == owner_uid), None)


def owner_decision(owners: list[Obj], state: dict[str, str]) -> tuple[str, list[str]]:
    """What to do with a dependent given each owner's state ("solid", "dangling" or "waiting").

    Returns ("keep", []), ("unlink", [owner uids to drop]), ("delete-foreground", []) or
    ("delete", []), as kube's attemptToDeleteItem decides.
    """
    solid = [r["uid"] for r in owners if state.get(r["uid"]) == "solid"]
    dangling = [r["uid"] for r in owners if state.get(r["uid"]) == "dangling"]
    waiting = [r["uid"] for r in owners if state.get(r["uid"]) == "waiting"]
    if not dangling and not waiting:
        return "keep", []
    if solid:
        return "unlink", dangling + waiting
    if waiting:
        return "delete-foreground", []
    return "delete", []


class GarbageCollector(BaseController):
    name = "garbagecollector"
    component = "garbage-collector-controller"
    workers = 4

    def __init__(self, client: Client, informers: InformerFactory, options: ControllerOptions | None = None,
                 own_informers: InformerFactory | None = None, discovery_interval: float = 30.0) -> None:
        super().__init__(client, informers, options)
        #: informers for the types no other controller watches (ideally over a client of its own)
        self.own = own_informers or informers
        self.discovery_interval = discovery_interval
        self.nodes: dict[str, GraphNode] = {}
        #: owner uid -> dependent uids (also for owners not seen yet)
        self.dependents: dict[str, set[str]] = {}
        self.kinds: dict[tuple[str, str], Resource] = {}
        self.watched: set[Resource] = set()

    def setup(self) -> None:
        for res in SHARED:
            self._watch(self.informers, res)

    def _watch(self, factory: InformerFactory, res: Resource) -> None:
        if res in self.watched:
            return
        self.watched.add(res)
        factory.informer(res).add_listener(lambda t, obj, old, res=res: self._on_change(res, t, obj, old))

    async def start(self) -> None:
        await self._discover()
        await self.own.wait_synced()
        self.spawn(self._rediscover())

    async def _rediscover(self) -> None:
        while True:
            await asyncio.sleep(self.discovery_interval)
            try:
                await self._discover()
            except Exception as e:  # discovery trouble: try again next round
                log.info("garbage collector discovery failed", error=str(e))

    async def _discover(self) -> None:
        found: list[tuple[Resource, list[str]]] = []
        core = await self.client.request("GET", "/api/v1")
        found += _resources("", "v1", core)
        groups = await self.client.request("GET", "/apis")
        for group in groups.get("groups") or []:
            version = (group.get("preferredVersion") or {}).get("version")
            if not version:
                continue
            try:
                doc = await self.client.request("GET", f"/apis/{group['name']}/{version}")
            except ApiError:
                continue
            found += _resources(group["name"], version, doc)
        for res, verbs in found:
            self.kinds[(res.group, res.kind)] = res
            if (res.group, res.plural) in IGNORED or not {"list", "watch", "delete"} <= set(verbs):
                continue
            if res not in self.watched:
                self._watch(self.own, res)
        self.own.start()

    # --- graph ------------------------------------------------------------------------------

    def _on_change(self, res: Resource, type_: str, obj: Obj, old: Obj | None) -> None:
        meta = obj.get("metadata") or {}
        uid = meta.get("uid")
        if not uid:
            return
        previous = self.nodes.get(uid)
        if type_ == "DELETED":
            self.nodes.pop(uid, None)
            for ref in (previous.owners if previous else meta.get("ownerReferences") or []):
                deps = self.dependents.get(ref.get("uid", ""))
                if deps is not None:
                    deps.discard(uid)
                owner = self.nodes.get(ref.get("uid", ""))
                if owner is not None and owner.deleting:
                    self.queue.add(owner.uid)
            for dep in self.dependents.get(uid, set()):
                self.queue.add(dep)
            return
        owners = list(meta.get("ownerReferences") or [])
        node = GraphNode(uid, res, meta.get("namespace"), meta.get("name", ""), owners,
                         list(meta.get("finalizers") or []), bool(meta.get("deletionTimestamp")),
                         self.dependents.setdefault(uid, set()))
        self.nodes[uid] = node
        old_owner_uids = {r.get("uid") for r in previous.owners} if previous else set()
        new_owner_uids = {r.get("uid") for r in owners}
        for gone in old_owner_uids - new_owner_uids:
            self.dependents.get(gone or "", set()).discard(uid)
            owner = self.nodes.get(gone or "")
            if owner is not None and owner.deleting:
                self.queue.add(owner.uid)
        for ref in owners:
            self.dependents.setdefault(ref.get("uid", ""), set()).add(uid)
        if owners and (previous is None or old_owner_uids != new_owner_uids):
            self.queue.add(uid)
        if node.deleting and (FOREGROUND in node.finalizers or ORPHAN in node.finalizers):
            self.queue.add(uid)
        if node.deleting and (previous is None or not previous.deleting):
            # a dependent started going away: its foreground-deleting owners may be done
            for ref in owners:
                owner = self.nodes.get(ref.get("uid", ""))
                if owner is not None and owner.deleting:
                    self.queue.add(owner.uid)
            for dep in node.dependents:
                self.queue.add(dep)

    # --- reconcile --------------------------------------------------------------------------

    async def reconcile(self, key: str) -> None:
        node = self.nodes.get(key)
        if node is None:
            return
        if node.deleting:
            if FOREGROUND in node.finalizers:
                await self._foreground(node)
            elif ORPHAN in node.finalizers:
                await self._orphan(node)
            return
        if not node.owners:
            return
        state: dict[str, str] = {}
        for ref in node.owners:
            state[ref["uid"]] = await self._owner_state(node, ref)
        action, drop = owner_decision(node.owners, state)
        if action == "keep":
            return
        if action == "unlink":
            kept = [r for r in node.owners if r.get("uid") not in drop]
            await self._patch_owners(node, kept)
            return
        policy = "Foreground" if action == "delete-foreground" else "Background"
        if action == "delete":
            if ORPHAN in node.finalizers:
                policy = "Orphan"
            if FOREGROUND in node.finalizers:
                policy = "Foreground"
        log.info("deleting object whose owners are gone", kind=node.res.kind, namespace=node.namespace,
                 name=node.name, propagation=policy)
        try:
            await self.client.delete(node.res, node.name, node.namespace, propagation_policy=policy,
                                     preconditions={"uid": node.uid})
        except ApiError as e:
            if not (e.not_found or e.conflict):
                raise

    async def _owner_state(self, node: GraphNode, ref: Obj) -> str:
        owner = self.nodes.get(ref["uid"])
        if owner is not None:
            return "waiting" if owner.deleting and FOREGROUND in owner.finalizers else "solid"
        group = (ref.get("apiVersion") or "").rpartition("/")[0]
        res = self.kinds.get((group, ref.get("kind", "")))
        if res is None:
            return "solid"  # a kind nobody serves (yet): never delete on a guess
        if res.namespaced and not node.namespace:
            return "dangling"  # a cluster-scoped object cannot be owned by a namespaced one
        try:
            fresh = await self.client.get(res, ref.get("name", ""), node.namespace if res.namespaced else None)
        except ApiError as e:
            if e.not_found:
                return "dangling"
            raise
        fmeta = fresh.get("metadata") or {}
        if fmeta.get("uid") != ref["uid"]:
            return "dangling"
        if fmeta.get("deletionTimestamp") and FOREGROUND in (fmeta.get("finalizers") or []):
            return "waiting"
        return "solid"

    async def _patch_owners(self, node: GraphNode, refs: list[Obj]) -> None:
        ops: list[Obj] = [{"op": "test", "path": "/metadata/uid", "value": node.uid},
                          {"op": "add", "path": "/metadata/ownerReferences", "value": refs}]
        try:
            await self.client.patch(node.res, node.name, ops, node.namespace, patch_type="json")
        except ApiError as e:
            if not (e.not_found or e.status == 422):
                raise

    async def _remove_finalizer(self, node: GraphNode, finalizer: str) -> None:
        try:
            current = await self.client.get(node.res, node.name, node.namespace)
        except ApiError as e:
            if e.not_found:
                return
            raise
        meta = current.get("metadata") or {}
        if meta.get("uid") != node.uid or finalizer not in (meta.get("finalizers") or []):
            return
        kept = [f for f in meta.get("finalizers") or [] if f != finalizer]
        ops: list[Obj] = [{"op": "test", "path": "/metadata/resourceVersion", "value": meta.get("resourceVersion")},
                          {"op": "add", "path": "/metadata/finalizers", "value": kept}]
        await self.client.patch(node.res, node.name, ops, node.namespace, patch_type="json")

    async def _foreground(self, owner: GraphNode) -> None:
        blocking = []
        for dep_uid in list(owner.dependents):
            dep = self.nodes.get(dep_uid)
            if dep is None:
                continue
            ref = dep.ref_to(owner.uid)
            if ref is not None and ref.get("blockOwnerDeletion"):
                blocking.append(dep)
        if not blocking:
            await self._remove_finalizer(owner, FOREGROUND)
            return
        for dep in blocking:
            if not dep.deleting:
                self.queue.add(dep.uid)

    async def _orphan(self, owner: GraphNode) -> None:
        for dep_uid in list(owner.dependents):
            dep = self.nodes.get(dep_uid)
            if dep is None:
                continue
            kept = [r for r in dep.owners if r.get("uid") != owner.uid]
            if len(kept) != len(dep.owners):
                await self._patch_owners(dep, kept)
        await self._remove_finalizer(owner, ORPHAN)


def _resources(group: str, version: str, doc: Obj) -> list[tuple[Resource, list[str]]]:
    out = []
    for r in doc.get("resources") or []:
        if "/" in r.get("name", ""):
            continue
        out.append((Resource(group, version, r["name"], bool(r.get("namespaced")), r.get("kind", "")),
                    list(r.get("verbs") or [])))
    return out
