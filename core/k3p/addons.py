"""The addon deployer: applies every plugin's manifests and removes those of disabled plugins.

K3s users expect a disabled component to leave no residue, so the deployer remembers
which objects each plugin created in the ConfigMap ``kube-system/k3p-addons`` (one key per
plugin, a JSON list of object references). At start it applies what each enabled plugin
returns from ``k3p_manifests`` with server-side apply, then deletes every remembered
object that no enabled plugin returns any more: all of a disabled plugin's objects, and
objects a plugin dropped from its manifests.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import structlog

from k3p.client import ApiError, Client, Obj
from k3p.client.resources import BY_KIND, CONFIGMAPS, NAMESPACES, Resource
from k3p.supervisor import Component, Ready, TaskComponent

log = structlog.get_logger(__name__)

FIELD_MANAGER = "k3p-deploy"
PLUGIN_LABEL = "k3p.io/plugin"
RECORD_NAMESPACE = "kube-system"
RECORD_NAME = "k3p-addons"

Ref = tuple[str, str, str, str]  # apiVersion, kind, namespace ("" for cluster scope), name


class ManifestError(ValueError):
    """A plugin returned an object the deployer cannot apply."""


def _resource(api_version: str, kind: str) -> Resource:
    res = BY_KIND.get((api_version, kind))
    if res is None:
        raise ManifestError(f"kind {kind} of {api_version} is not one the addon deployer knows")
    return res


def object_ref(plugin: str, obj: Obj) -> Ref:
    """The reference of one manifest object; raises ManifestError when it is incomplete."""
    meta = obj.get("metadata") or {}
    api_version, kind, name = obj.get("apiVersion", ""), obj.get("kind", ""), meta.get("name", "")
    if not (api_version and kind and name):
        raise ManifestError(f"plugin {plugin} returned an object without apiVersion, kind or metadata.name")
    res = _resource(api_version, kind)
    namespace = meta.get("namespace", "") if res.namespaced else ""
    if res.namespaced and not namespace:
        raise ManifestError(f"plugin {plugin}: {kind} {name} needs metadata.namespace")
    return api_version, kind, namespace, name


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

    def __init__(self, client: Client, manifests: list[tuple[str, list[Obj] | None]]) -> None:
        self.client = client
        self.manifests = manifests

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

    async def apply(self, plugin: str, obj: Obj) -> None:
        api_version, kind, namespace, name = object_ref(plugin, obj)
        res = _resource(api_version, kind)
        await self.client.patch(res, name, labelled(plugin, obj), namespace or None, patch_type="apply",
                                field_manager=FIELD_MANAGER, force=True)

    async def delete(self, ref: Ref) -> None:
        api_version, kind, namespace, name = ref
        try:
            await self.client.delete(_resource(api_version, kind), name, namespace or None)
        except ManifestError:
            return
        except ApiError as e:
            if not e.not_found:
                raise
            return
        log.info("removed an object of a disabled or changed plugin", kind=kind, namespace=namespace or None,
                 name=name)

    async def run_once(self) -> dict[str, list[Ref]]:
        """Apply every plugin's manifests, delete stale objects, update the record; returns what was applied."""
        await self._ensure_namespace(RECORD_NAMESPACE)
        wanted: dict[str, list[Ref]] = {}
        objects: list[tuple[str, Obj]] = []
        for plugin, found in self.manifests:
            for obj in found or ():
                wanted.setdefault(plugin, []).append(object_ref(plugin, obj))
                objects.append((plugin, obj))
        recorded = _decode_record(await self._record())
        # Remember first, so a crash half way still knows every object to clean up later.
        await self._write_record({**recorded, **wanted})
        for namespace in sorted({ref[2] for refs in wanted.values() for ref in refs if ref[2]}):
            await self._ensure_namespace(namespace)
        for plugin, obj in objects:
            await self.apply(plugin, obj)
        for ref in stale_refs(recorded, wanted):
            await self.delete(ref)
        await self._write_record(wanted)
        log.info("addons applied", objects=len(objects), plugins=",".join(sorted(wanted)) or None)
        return wanted


def addon_component(new_client: Any, manifests: list[tuple[str, list[Obj] | None]]) -> Component:
    """A server component that runs the deployer once after the API server is up, then idles."""

    async def run(ready: Ready) -> None:
        client = new_client("k3p-deploy")
        try:
            await AddonDeployer(client, manifests).run_once()
        finally:
            await client.close()
        ready()
        await asyncio.Event().wait()

    return TaskComponent("addons", run, requires=["apiserver"])
