"""DaemonSets: one pod on every eligible node, bound to it through node affinity for the scheduler."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import structlog

from k3p.client import ApiError, Obj, Requeue, key_of, split_key
from k3p.client.nodeaffinity import pod_fits_node, untolerated_taints
from k3p.client.objects import (
    controller_ref,
    is_deleting,
    labels_of,
    meta,
    name_of,
    owner_reference,
    sort_by_creation,
)
from k3p.client.resources import CONTROLLERREVISIONS, DAEMONSETS, NODES, PODS
from k3p.selectors import LabelSelector, SelectorError, label_selector_from_dict
from k3p_plugins.controller_manager.base import BaseController
from k3p_plugins.controller_manager.claims import claim, recheck_owner
from k3p_plugins.controller_manager.expectations import Expectations
from k3p_plugins.controller_manager.intorpercent import scaled_value
from k3p_plugins.controller_manager.pods import (
    is_available,
    is_ready,
    phase,
    pod_from_template,
    seconds_until_available,
)
from k3p_plugins.controller_manager.replicaset import slow_start_batches
from k3p_plugins.controller_manager.revisions import (
    REVISION_HASH_LABEL,
    RevisionCollision,
    ensure_current_revision,
    hash_of,
    owned_revisions,
    truncate_history,
)

log = structlog.get_logger(__name__)

TEMPLATE_GENERATION_LABEL = "pod-template-generation"
TEMPLATE_GENERATION_ANNOTATION = "deprecated.daemonset.template.generation"

#: what kube adds to every daemon pod: daemons stay through node trouble
DAEMON_TOLERATIONS = [
    {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute"},
    {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute"},
    {"key": "node.kubernetes.io/disk-pressure", "operator": "Exists", "effect": "NoSchedule"},
    {"key": "node.kubernetes.io/memory-pressure", "operator": "Exists", "effect": "NoSchedule"},
    {"key": "node.kubernetes.io/pid-pressure", "operator": "Exists", "effect": "NoSchedule"},
    {"key": "node.kubernetes.io/unschedulable", "operator": "Exists", "effect": "NoSchedule"},
]
HOST_NETWORK_TOLERATION = {"key": "node.kubernetes.io/network-unavailable", "operator": "Exists",
                           "effect": "NoSchedule"}


def daemon_pod_spec(template_spec: Obj) -> Obj:
    """The template's pod spec with the daemon tolerations added or replaced."""
    spec = copy.deepcopy(template_spec)
    tolerations = list(spec.get("tolerations") or [])
    extra = list(DAEMON_TOLERATIONS)
    if spec.get("hostNetwork"):
        extra.append(HOST_NETWORK_TOLERATION)
    for tol in extra:
        tolerations = [t for t in tolerations if not (t.get("key") == tol["key"] and t.get("effect") == tol["effect"])]
        tolerations.append(dict(tol))
    spec["tolerations"] = tolerations
    return spec


def node_name_affinity(affinity: Obj | None, node_name: str) -> Obj:
    """``affinity`` with its required node terms replaced by "metadata.name In [node]" (how kube binds daemons)."""
    affinity = copy.deepcopy(affinity or {})
    node_affinity = affinity.setdefault("nodeAffinity", {})
    node_affinity["requiredDuringSchedulingIgnoredDuringExecution"] = {"nodeSelectorTerms": [
        {"matchFields": [{"key": "metadata.name", "operator": "In", "values": [node_name]}]}]}
    return affinity


def target_node(pod: Obj) -> str | None:
    """The node a daemon pod runs on or is meant for (spec.nodeName or its node-name affinity)."""
    spec = pod.get("spec") or {}
    if spec.get("nodeName"):
        return spec["nodeName"]
    required = (((spec.get("affinity") or {}).get("nodeAffinity") or {})
                .get("requiredDuringSchedulingIgnoredDuringExecution") or {})
    terms = required.get("nodeSelectorTerms") or []
    if len(terms) != 1:
        return None
    for field in terms[0].get("matchFields") or []:
        values = field.get("values") or []
        if field.get("key") == "metadata.name" and field.get("operator") == "In" and len(values) == 1:
            return field["values"][0]
    return None


def should_run_on(ds: Obj, node: Obj) -> tuple[bool, bool]:
    """(should run a new pod there, may keep running an existing one) — kube's nodeShouldRunDaemonPod."""
    spec = daemon_pod_spec((ds["spec"].get("template") or {}).get("spec") or {})
    if spec.get("nodeName") and spec["nodeName"] != name_of(node):
        return False, False
    if not pod_fits_node({k: v for k, v in spec.items() if k != "nodeName"}, node):
        return False, False
    taints = (node.get("spec") or {}).get("taints") or []
    tolerations = spec.get("tolerations") or []
    if untolerated_taints(taints, tolerations, ("NoSchedule", "NoExecute")):
        return False, not untolerated_taints(taints, tolerations, ("NoExecute",))
    return True, True


def template_generation(ds: Obj) -> str:
    ann = meta(ds).get("annotations") or {}
    return str(ann.get(TEMPLATE_GENERATION_ANNOTATION) or meta(ds).get("generation") or 1)


def is_updated(pod: Obj, pod_hash: str, generation: str) -> bool:
    labels = labels_of(pod)
    return (bool(pod_hash) and labels.get(REVISION_HASH_LABEL) == pod_hash) or \
        labels.get(TEMPLATE_GENERATION_LABEL) == generation


def surge_and_unavailable(ds: Obj, desired: int) -> tuple[int, int]:
    ru = ((ds["spec"].get("updateStrategy") or {}).get("rollingUpdate") or {})
    unavailable = scaled_value(ru.get("maxUnavailable", 1), desired, True)
    surge = scaled_value(ru.get("maxSurge", 0), desired, True)
    if unavailable == 0 and surge == 0:
        unavailable = 1
    return surge, unavailable


def _scheduling_facts(node: Obj) -> tuple[Any, ...]:
    spec, status = node.get("spec") or {}, node.get("status") or {}
    return (labels_of(node), spec.get("taints"), spec.get("unschedulable"),
            [(c.get("type"), c.get("status")) for c in status.get("conditions") or []])


def owned_by(pod: Obj, owner: Obj) -> bool:
    ref = controller_ref(pod)
    return ref is not None and ref.get("uid") == meta(owner).get("uid")


class DaemonSetController(BaseController):
    name = "daemonset"
    component = "daemonset-controller"
    workers = 2

    def setup(self) -> None:
        self.expectations = Expectations()
        self.daemonsets = self.informers.informer(DAEMONSETS)
        self.pods = self.informers.informer(PODS)
        self.nodes = self.informers.informer(NODES)
        self.revisions = self.informers.informer(CONTROLLERREVISIONS)
        self.watch_objects(self.daemonsets)
        self.pods.add_listener(self._on_pod)
        self.nodes.add_listener(self._on_node)
        self.watch_owned(self.revisions, "DaemonSet")

    def _on_pod(self, type_: str, pod: Obj, old: Obj | None) -> None:
        ref = controller_ref(pod)
        if ref is None or ref.get("kind") != "DaemonSet":
            return
        owner = f"{meta(pod).get('namespace')}/{ref['name']}"
        if type_ == "ADDED":
            self.expectations.creation_observed(owner, key_of(pod))
        if type_ == "DELETED" or is_deleting(pod):
            self.expectations.deletion_observed(owner, key_of(pod))
        self.queue.add(owner)

    def _on_node(self, type_: str, node: Obj, old: Obj | None) -> None:
        if old is not None and type_ == "MODIFIED" and _scheduling_facts(old) == _scheduling_facts(node):
            return
        for ds in self.daemonsets.items():
            self.enqueue(ds)

    # --- reconcile --------------------------------------------------------------------------

    async def reconcile(self, key: str) -> None:
        cached = self.daemonsets.get(key)
        if cached is None:
            self.expectations.forget(key)
            return
        ds = copy.deepcopy(cached)
        ns, _ = split_key(key)
        try:
            selector = label_selector_from_dict(ds["spec"].get("selector"))
        except SelectorError:
            selector = LabelSelector.match_nothing()
        if selector.empty:
            self.record(ds, "Warning", "SelectingAll",
                        "This daemon set is selecting all pods. A non-empty selector is required.")
            return
        pods = await claim(self.client, PODS, ds, selector, list(self.pods.items(ns)),
                           can_adopt=recheck_owner(self.client, DAEMONSETS, ds))
        nodes = list(self.nodes.items())
        if is_deleting(ds):
            await self._update_status(ds, nodes, self._by_node(pods), "")
            return
        try:
            current, revs = await ensure_current_revision(self.client, self.revisions, ds)
        except RevisionCollision:
            status = dict(ds.get("status") or {})
            status["collisionCount"] = int(status.get("collisionCount") or 0) + 1
            await self.client.patch(DAEMONSETS, name_of(ds), {"status": status}, ns, subresource="status")
            raise
        pod_hash = hash_of(current)
        if not self.expectations.satisfied(key):
            await self._update_status(ds, nodes, self._by_node(pods), pod_hash)
            return
        await self._manage(key, ds, nodes, pods, pod_hash)
        if self.expectations.satisfied(key) and \
                (ds["spec"].get("updateStrategy") or {}).get("type", "RollingUpdate") == "RollingUpdate":
            await self._rolling_update(key, ds, nodes, pod_hash)
        in_use = {name_of(current)}
        hashes = {labels_of(p).get(REVISION_HASH_LABEL) for p in self.pods.items(ns) if owned_by(p, ds)}
        in_use |= {name_of(r) for r in owned_revisions(self.revisions, ds) if hash_of(r) in hashes}
        await truncate_history(self.client, [r for r in revs if name_of(r) != name_of(current)], in_use,
                               ds["spec"].get("revisionHistoryLimit"))
        fresh = [p for p in self.pods.items(ns) if owned_by(p, ds)]
        await self._update_status(ds, nodes, self._by_node(fresh), pod_hash)

    def _by_node(self, pods: list[Obj]) -> dict[str, list[Obj]]:
        out: dict[str, list[Obj]] = {}
        for pod in pods:
            if phase(pod) in ("Succeeded", "Failed") and is_deleting(pod):
                continue
            node = target_node(pod)
            if node:
                out.setdefault(node, []).append(pod)
        return out

    async def _manage(self, key: str, ds: Obj, nodes: list[Obj], pods: list[Obj], pod_hash: str) -> None:
        by_node = self._by_node(pods)
        node_names = {name_of(n) for n in nodes}
        surge, _ = surge_and_unavailable(ds, len(nodes))
        to_create: list[str] = []
        to_delete: list[Obj] = []
        for node in nodes:
            run, keep = should_run_on(ds, node)
            here = by_node.get(name_of(node), [])
            if run and not here:
                to_create.append(name_of(node))
            elif keep:
                running = []
                for pod in here:
                    if is_deleting(pod):
                        continue
                    if phase(pod) == "Failed":
                        self.record(ds, "Warning", "FailedDaemonPod",
                                    f"Found failed daemon pod {meta(pod)['namespace']}/{name_of(pod)} on node "
                                    f"{name_of(node)}, will try to kill it")
                        to_delete.append(pod)
                    else:
                        running.append(pod)
                if not running and run and not any(is_deleting(p) for p in here):
                    to_create.append(name_of(node))
                if len(running) > 1:
                    ordered = sort_by_creation(running)
                    if surge > 0:
                        new = [p for p in ordered if is_updated(p, pod_hash, template_generation(ds))]
                        old = [p for p in ordered if p not in new]
                        keep_pods = new[:1] + old[:1]
                        to_delete.extend(p for p in ordered if p not in keep_pods)
                    else:
                        to_delete.extend(ordered[1:])
            else:
                to_delete.extend(p for p in here if not is_deleting(p))
        for node_name, here in by_node.items():
            if node_name not in node_names:
                to_delete.extend(p for p in here if not is_deleting(p) and not (p.get("spec") or {}).get("nodeName"))
        await self._sync_nodes(key, ds, to_delete, to_create, pod_hash)

    async def _sync_nodes(self, key: str, ds: Obj, to_delete: list[Obj], to_create: list[str], pod_hash: str) -> None:
        template = copy.deepcopy(ds["spec"].get("template") or {})
        template["spec"] = daemon_pod_spec(template.get("spec") or {})
        labels = template.setdefault("metadata", {}).setdefault("labels", {})
        labels[REVISION_HASH_LABEL] = pod_hash
        labels[TEMPLATE_GENERATION_LABEL] = template_generation(ds)
        ref = owner_reference(ds)
        ns = meta(ds)["namespace"]
        queue = list(to_create)
        for batch in slow_start_batches(len(queue)):
            names, queue = queue[:batch], queue[batch:]
            results = await asyncio.gather(*(self._create(key, ds, template, ref, ns, n) for n in names),
                                           return_exceptions=True)
            errors = [r for r in results if isinstance(r, BaseException)]
            if errors:
                self.record(ds, "Warning", "FailedCreate", f"Error creating: {errors[0]}")
                break
        await asyncio.gather(*(self._delete(key, ds, p) for p in to_delete))

    async def _create(self, key: str, ds: Obj, template: Obj, ref: Obj, ns: str, node_name: str) -> None:
        pod_template = copy.deepcopy(template)
        pod_template["spec"]["affinity"] = node_name_affinity(pod_template["spec"].get("affinity"), node_name)
        pod = pod_from_template(pod_template, ref, generate_name=f"{name_of(ds)}-", namespace=ns)
        created = await self.client.create(PODS, pod, ns)
        if self.pods.get(key_of(created)) is None:
            self.expectations.expect_creation(key, key_of(created))
        self.record(ds, "Normal", "SuccessfulCreate", f"Created pod: {name_of(created)}")

    async def _delete(self, key: str, ds: Obj, pod: Obj) -> None:
        try:
            await self.client.delete(PODS, name_of(pod), meta(pod)["namespace"],
                                     preconditions={"uid": meta(pod).get("uid")})
        except ApiError as e:
            if e.not_found or e.conflict:
                return
            raise
        current = self.pods.get(key_of(pod))
        if current is not None and not is_deleting(current):
            self.expectations.expect_deletion(key, key_of(pod))
        self.record(ds, "Normal", "SuccessfulDelete", f"Deleted pod: {name_of(pod)}")

    async def _rolling_update(self, key: str, ds: Obj, nodes: list[Obj], pod_hash: str) -> None:
        ns = meta(ds)["namespace"]
        mine = [p for p in self.pods.items(ns) if owned_by(p, ds)]
        by_node = self._by_node(mine)
        eligible = {name_of(n): n for n in nodes if should_run_on(ds, n)[0]}
        surge, max_unavailable = surge_and_unavailable(ds, len(eligible))
        min_ready = int(ds["spec"].get("minReadySeconds") or 0)
        generation = template_generation(ds)

        def split(pods: list[Obj]) -> tuple[Obj | None, Obj | None, bool]:
            new = old = None
            for p in pods:
                if is_deleting(p):
                    continue
                if is_updated(p, pod_hash, generation):
                    if new is not None:
                        return None, None, False
                    new = p
                else:
                    if old is not None:
                        return None, None, False
                    old = p
            return new, old, True

        to_delete: list[Obj] = []
        to_create: list[str] = []
        if surge == 0:
            unavailable = 0
            replace: list[Obj] = []
            candidates: list[Obj] = []
            for _node_name, pods in sorted(by_node.items()):
                new, old, ok = split(pods)
                if not ok:
                    unavailable += 1
                    continue
                if old is None:
                    if new is None or not is_available(new, min_ready):
                        unavailable += 1
                    continue
                if new is not None:
                    unavailable += 1
                    continue
                if not is_available(old, min_ready):
                    replace.append(old)
                elif unavailable < max_unavailable:
                    candidates.append(old)
            room = max(max_unavailable - unavailable, 0)
            to_delete = replace + candidates[:room]
        else:
            surged = 0
            allowed: list[str] = []
            candidates_nodes: list[str] = []
            for node_name, pods in sorted(by_node.items()):
                new, old, ok = split(pods)
                if not ok or old is None:
                    continue
                if node_name not in eligible:
                    to_delete.append(old)
                    continue
                if new is None:
                    if not is_available(old, min_ready):
                        allowed.append(node_name)
                    elif surged < surge:
                        candidates_nodes.append(node_name)
                    continue
                if not is_available(new, min_ready):
                    surged += 1
                    continue
                to_delete.append(old)
            room = max(surge - surged, 0)
            to_create = allowed + candidates_nodes[:room]
        if to_delete or to_create:
            await self._sync_nodes(key, ds, to_delete, to_create, pod_hash)

    async def _update_status(self, ds: Obj, nodes: list[Obj], by_node: dict[str, list[Obj]], pod_hash: str) -> None:
        desired = current = ready = available = updated = misscheduled = 0
        min_ready = int(ds["spec"].get("minReadySeconds") or 0)
        generation = template_generation(ds)
        wait: list[float] = []
        for node in nodes:
            run, _ = should_run_on(ds, node)
            pods = [p for p in by_node.get(name_of(node), []) if not is_deleting(p)] or by_node.get(name_of(node), [])
            if run:
                desired += 1
                if not pods:
                    continue
                current += 1
                pod = sort_by_creation(pods)[0]
                if is_ready(pod):
                    ready += 1
                    if is_available(pod, min_ready):
                        available += 1
                    elif (w := seconds_until_available(pod, min_ready)) is not None:
                        wait.append(w)
                if is_updated(pod, pod_hash, generation):
                    updated += 1
            elif pods:
                misscheduled += 1
        status: dict[str, Any] = {
            "currentNumberScheduled": current, "numberMisscheduled": misscheduled,
            "desiredNumberScheduled": desired, "numberReady": ready,
            "observedGeneration": meta(ds).get("generation"),
        }
        if updated:
            status["updatedNumberScheduled"] = updated
        if available:
            status["numberAvailable"] = available
        if desired - available:
            status["numberUnavailable"] = desired - available
        old = ds.get("status") or {}
        if old.get("collisionCount") is not None:
            status["collisionCount"] = old["collisionCount"]
        if old.get("conditions"):
            status["conditions"] = old["conditions"]
        if status != old:
            patch = dict(status)
            for k in old:
                if k not in status:
                    patch[k] = None
            await self.client.patch(DAEMONSETS, name_of(ds), {"status": patch}, meta(ds)["namespace"],
                                    subresource="status")
        if wait:
            raise Requeue(min(wait) + 0.5)
