"""The addon deployer: applies every plugin's manifests and removes those of disabled plugins.

K3s users expect a disabled component to leave no residue, so the deployer remembers
which objects each plugin created in the ConfigMap ``kube-system/k3p-addons`` (one key per
plugin, a JSON list of object references). At start it applies what each enabled plugin
returns from ``k3p_manifests`` with server-side apply, then deletes every remembered
object that no enabled plugin returns any more: all of a disabled plugin's objects, and
objects a plugin dropped from its manifests.

Any kind the API serves may be shipped. Built-in kinds are known (``BY_KIND``); others are
found through API discovery. Namespaces and CustomResourceDefinitions are applied first and
each CRD is waited for until it is established, so custom resources of its kinds may follow
in the same list. A kind that is neither served nor defined by a CRD of the list fails the
pass before anything is recorded or applied.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import structlog

from k3p.client import ApiError, Client, Obj
from k3p.client.resources import BY_KIND, CONFIGMAPS, CUSTOMRESOURCEDEFINITIONS, NAMESPACES, Resource
from k3p.supervisor import Component, Ready, TaskComponent

log = structlog.get_logger(__name__)

FIELD_MANAGER = "k3p-deploy"
PLUGIN_LABEL = "k3p.io/plugin"
RECORD_NAMESPACE = "kube-system"
RECORD_NAME = "k3p-addons"
CRD_TIMEOUT = 30.0  # seconds a CRD may take to become established

Ref = tuple[str, str, str, str]  # apiVersion, kind, namespace ("" for cluster scope), name

_CRD = (CUSTOMRESOURCEDEFINITIONS.api_version, CUSTOMRESOURCEDEFINITIONS.kind)
_NAMESPACE = (NAMESPACES.api_version, NAMESPACES.kind)


class ManifestError(ValueError):
    """A plugin returned an object the deployer cannot apply."""


class AddonError(RuntimeError):
    """The cluster did not do what the deployer waited for (a CRD never became established)."""


def object_ref(plugin: str, obj: Obj) -> Ref:
    """The reference of one manifest object; raises ManifestError when it is incomplete.

    Needs no API server: it checks the shape only, and that a namespaced built-in kind has a
    namespace. For other kinds the scope is known at apply time (discovery), so the
    namespace is kept as given here and dropped then if the kind is cluster-scoped.
    """
    if not isinstance(obj, dict):
        raise ManifestError(f"plugin {plugin} returned a manifest that is not an object: {type(obj).__name__}")
    meta = obj.get("metadata")
    meta = meta if isinstance(meta, dict) else {}
    api_version, kind, name = obj.get("apiVersion", ""), obj.get("kind", ""), meta.get("name", "")
    if not (api_version and kind and name) or not all(isinstance(v, str) for v in (api_version, kind, name)):
        raise ManifestError(f"plugin {plugin} returned an object without apiVersion, kind or metadata.name")
    namespace = meta.get("namespace") or ""
    if not isinstance(namespace, str):
        raise ManifestError(f"plugin {plugin}: {kind} {name} has a metadata.namespace that is not a string")
    res = BY_KIND.get((api_version, kind))
    return _scoped(plugin, (api_version, kind, namespace, name), res) if res else (api_version, kind, namespace, name)


def _scoped(plugin: str, ref: Ref, res: Resource) -> Ref:
    """``ref`` with the namespace its resource's scope asks for (none for cluster scope)."""
    api_version, kind, namespace, name = ref
    if not res.namespaced:
        return api_version, kind, "", name
    if not namespace:
        raise ManifestError(f"plugin {plugin}: {kind} {name} needs metadata.namespace")
    return ref


def crd_resources(crd: Obj) -> list[Resource]:
    """The resources a CustomResourceDefinition serves (or will, once established): one per served version."""
    spec = crd.get("spec") or {}
    names = spec.get("names") or {}
    group, plural, kind = spec.get("group"), names.get("plural"), names.get("kind")
    if not (group and plural and kind):
        return []
    namespaced = spec.get("scope") != "Cluster"
    return [Resource(group, v["name"], plural, namespaced, kind)
            for v in spec.get("versions") or () if v.get("name") and v.get("served", True)]


def labelled(plugin: str, obj: Obj) -> Obj:
    """A copy of ``obj`` carrying the plugin label."""
    meta = dict(obj.get("metadata") or {})
    meta["labels"] = {**(meta.get("labels") or {}), PLUGIN_LABEL: plugin}
    return {**obj, "metadata": meta}


def stale_refs(recorded: dict[str, list[Ref]], wanted: dict[str, list[Ref]]) -> list[Ref]:
    """Remembered objects no enabled plugin returns any more (each once, in record order)."""
    keep = {ref for refs in wanted.values() for ref in refs}
    seen: set[Ref] = set()
    stale = []
    for refs in recorded.values():
        for ref in refs:
            if ref not in keep and ref not in seen:
                seen.add(ref)
                stale.append(ref)
    return stale


def deletion_order(refs: list[Ref]) -> list[Ref]:
    """Objects first, then CRDs (their remaining custom resources go with them), Namespaces last."""
    def rank(ref: Ref) -> int:
        return 2 if ref[:2] == _NAMESPACE else 1 if ref[:2] == _CRD else 0
    return sorted(refs, key=rank)


def merged_record(recorded: dict[str, list[Ref]], wanted: dict[str, list[Ref]]) -> dict[str, list[Ref]]:
    """What to remember while a pass runs: everything wanted and everything still remembered.

    A pass that stops half way (crash, CRD never established) thus still knows, next time,
    both the objects it may have created and the old ones it has not deleted yet.
    """
    merged = {plugin: list(refs) for plugin, refs in recorded.items()}
    for plugin, refs in wanted.items():
        merged[plugin] = list(refs) + [r for r in merged.get(plugin, []) if r not in refs]
    return merged


def _decode_record(cm: Obj | None) -> dict[str, list[Ref]]:
    found: dict[str, list[Ref]] = {}
    for plugin, text in ((cm or {}).get("data") or {}).items():
        try:
            found[plugin] = [tuple(ref) for ref in json.loads(text) if len(ref) == 4]  # type: ignore[misc]
        except (ValueError, TypeError):
            log.warning("ignoring an unreadable addon record", plugin=plugin)
    return found


class AddonDeployer:
    """Applies manifests and deletes what disabled plugins left; one pass per server start."""

    def __init__(self, client: Client, manifests: list[tuple[str, list[Obj] | None]], *,
                 crd_timeout: float = CRD_TIMEOUT) -> None:
        self.client = client
        self.manifests = manifests
        self.crd_timeout = crd_timeout
        self._served: dict[tuple[str, str], Resource] = {}

    async def resolve(self, api_version: str, kind: str, *, fresh: bool = False) -> Resource | None:
        """The resource of a kind: a built-in one, else what discovery says is served (None if nothing)."""
        key = (api_version, kind)
        res = BY_KIND.get(key) or (None if fresh else self._served.get(key))
        if res is None:
            res = await self.client.resource_for(api_version, kind)
            if res is not None:
                self._served[key] = res
        return res

    async def _record(self) -> Obj | None:
        try:
            return await self.client.get(CONFIGMAPS, RECORD_NAME, RECORD_NAMESPACE)
        except ApiError as e:
            if e.not_found:
                return None
            raise

    async def _write_record(self, refs: dict[str, list[Ref]]) -> None:
        body: Obj = {"apiVersion": "v1", "kind": "ConfigMap",
                     "metadata": {"name": RECORD_NAME, "namespace": RECORD_NAMESPACE},
                     "data": {plugin: json.dumps([list(r) for r in found]) for plugin, found in refs.items() if found}}
        await self.client.patch(CONFIGMAPS, RECORD_NAME, body, RECORD_NAMESPACE, patch_type="apply",
                                field_manager=FIELD_MANAGER, force=True)

    async def _ensure_namespace(self, name: str) -> None:
        body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
        try:
            await self.client.create(NAMESPACES, body)
        except ApiError as e:
            if not e.already_exists:
                raise

    async def apply(self, plugin: str, obj: Obj, res: Resource | None = None) -> None:
        ref = object_ref(plugin, obj)
        if res is None:
            res = await self.resolve(ref[0], ref[1])
            if res is None:
                raise ManifestError(f"plugin {plugin}: kind {ref[1]} of {ref[0]} is not served by the API server")
        _, _, namespace, name = _scoped(plugin, ref, res)
        await self.client.patch(res, name, labelled(plugin, obj), namespace or None, patch_type="apply",
                                field_manager=FIELD_MANAGER, force=True)

    async def wait_established(self, plugin: str, name: str) -> None:
        """Wait until CRD ``name`` has condition Established True; AddonError after ``crd_timeout``."""
        deadline = time.monotonic() + self.crd_timeout
        while True:
            crd = await self.client.get(CUSTOMRESOURCEDEFINITIONS, name)
            conditions = {c.get("type"): c for c in (crd.get("status") or {}).get("conditions") or ()}
            if (conditions.get("Established") or {}).get("status") == "True":
                return
            if time.monotonic() >= deadline:
                why = next((c.get("message") for c in conditions.values()
                            if c.get("status") == "False" and c.get("message")), None)
                raise AddonError(f"plugin {plugin}: CustomResourceDefinition {name} was not established "
                                 f"within {self.crd_timeout:g}s" + (f": {why}" if why else ""))
            await asyncio.sleep(0.1)

    async def _served_after_crds(self, plugin: str, ref: Ref, promised: Resource) -> Resource:
        """The resource of a kind a CRD of the list defines, from discovery once that CRD is established.

        Discovery may lag a CRD that was established before and just gained a version, so
        this asks again until ``crd_timeout``.
        """
        deadline = time.monotonic() + self.crd_timeout
        while True:
            res = await self.resolve(ref[0], ref[1], fresh=True)
            if res is not None:
                if res.namespaced != promised.namespaced:
                    raise ManifestError(f"plugin {plugin}: kind {ref[1]} of {ref[0]} is served "
                                        f"{'namespaced' if res.namespaced else 'cluster-wide'}, "
                                        "not as its CustomResourceDefinition in the manifests says")
                return res
            if time.monotonic() >= deadline:
                raise ManifestError(f"plugin {plugin}: kind {ref[1]} of {ref[0]} is not served by the API server "
                                    "even after its CustomResourceDefinition was established")
            await asyncio.sleep(0.1)

    async def _delete_custom_resources(self, crd_name: str) -> None:
        """Delete every object of a CRD's kind, as the CRD's deletion in kube does.

        k3p's API server drops a CRD at once and would keep its custom resources in storage
        (they came back with a CRD of the same name), so the deployer removes them itself.
        """
        try:
            crd = await self.client.get(CUSTOMRESOURCEDEFINITIONS, crd_name)
        except ApiError as e:
            if e.not_found:
                return
            raise
        for res in crd_resources(crd)[:1]:  # every version shares one storage
            continue_: str | None = None
            while True:
                try:
                    page = await self.client.list(res, limit=500, continue_=continue_)
                except ApiError as e:
                    if e.not_found:
                        break
                    raise
                for item in page.get("items") or ():
                    meta = item.get("metadata") or {}
                    try:
                        await self.client.delete(res, meta["name"], meta.get("namespace"))
                    except ApiError as e:
                        if not e.not_found:
                            raise
                continue_ = (page.get("metadata") or {}).get("continue") or None
                if not continue_:
                    break

    async def delete(self, ref: Ref) -> None:
        api_version, kind, namespace, name = ref
        res = await self.resolve(api_version, kind)
        if res is None:
            # Not served: its CRD is gone, and with it every object of the kind.
            log.debug("not deleting an object of a kind no longer served", kind=kind, name=name)
            return
        try:
            if (api_version, kind) == _CRD:
                await self._delete_custom_resources(name)
            await self.client.delete(res, name, namespace or None)
        except ApiError as e:
            if not e.not_found:
                raise
            return
        log.info("removed an object of a disabled or changed plugin", kind=kind, namespace=namespace or None,
                 name=name)

    async def run_once(self) -> dict[str, list[Ref]]:
        """Apply every plugin's manifests, delete stale objects, update the record; returns what was applied."""
        await self._ensure_namespace(RECORD_NAMESPACE)
        items = [(plugin, obj, object_ref(plugin, obj)) for plugin, found in self.manifests for obj in found or ()]
        # The kinds the CRDs of the list define: served only once those CRDs are established.
        promised = {(r.api_version, r.kind): r for _, obj, ref in items if ref[:2] == _CRD
                    for r in crd_resources(obj)}
        # Every kind is checked before anything is written, so a bad manifest leaves no trace.
        planned: list[tuple[str, Obj, Ref, Resource | None]] = []
        wanted: dict[str, list[Ref]] = {}
        for plugin, obj, ref in items:
            later = promised.get(ref[:2])
            res = None if later else await self.resolve(ref[0], ref[1])
            if res is None and later is None:
                raise ManifestError(f"plugin {plugin}: kind {ref[1]} of {ref[0]} is not served by the API server "
                                    "and no CustomResourceDefinition in the manifests defines it")
            ref = _scoped(plugin, ref, res or later)  # type: ignore[arg-type]
            planned.append((plugin, obj, ref, res))
            wanted.setdefault(plugin, []).append(ref)
        recorded = _decode_record(await self._record())
        # Remember first, so a pass that stops half way still knows every object to clean up later.
        await self._write_record(merged_record(recorded, wanted))
        for namespace in sorted({ref[2] for refs in wanted.values() for ref in refs if ref[2]}):
            await self._ensure_namespace(namespace)
        first = [p for p in planned if p[2][:2] in (_NAMESPACE, _CRD)]
        for plugin, obj, _, res in first:
            await self.apply(plugin, obj, res)
        for plugin, _, ref, _ in first:
            if ref[:2] == _CRD:
                await self.wait_established(plugin, ref[3])
        for plugin, obj, ref, res in planned:
            if ref[:2] in (_NAMESPACE, _CRD):
                continue
            if res is None:
                res = await self._served_after_crds(plugin, ref, promised[ref[:2]])
            await self.apply(plugin, obj, res)
        for ref in deletion_order(stale_refs(recorded, wanted)):
            await self.delete(ref)
        await self._write_record(wanted)
        log.info("addons applied", objects=len(planned), plugins=",".join(sorted(wanted)) or None)
        return wanted


def addon_component(new_client: Any, manifests: list[tuple[str, list[Obj] | None]]) -> Component:
    """A server component that runs the deployer once after the API server is up, then idles.

    A pass that fails (a kind not served, a CRD never established) fails the component with
    one line naming the plugin and the kind; the supervisor restarts it with back-off.
    """

    async def run(ready: Ready) -> None:
        client = new_client("k3p-deploy")
        try:
            await AddonDeployer(client, manifests).run_once()
        finally:
            await client.close()
        ready()
        await asyncio.Event().wait()

    return TaskComponent("addons", run, requires=["apiserver"])
