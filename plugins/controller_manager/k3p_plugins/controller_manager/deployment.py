"""Deployments: a ReplicaSet per pod template, rolled from old to new by RollingUpdate or Recreate."""

from __future__ import annotations

import copy
from typing import Any

import structlog

import k3p_plugins.controller_manager.deployment_util as du
from k3p.client import ApiError, Obj, split_key
from k3p.client.objects import (
    controller_ref,
    format_time,
    get_condition,
    is_controlled_by,
    is_deleting,
    labels_of,
    meta,
    name_of,
    owner_reference,
    remove_condition,
    set_condition,
    uid_of,
    utcnow,
)
from k3p.client.resources import DEPLOYMENTS, PODS, REPLICASETS
from k3p.selectors import LabelSelector, SelectorError, label_selector_from_dict
from k3p_plugins.controller_manager.base import BaseController, require_workload_spec
from k3p_plugins.controller_manager.claims import claim, recheck_owner
from k3p_plugins.controller_manager.hashing import compute_hash
from k3p_plugins.controller_manager.pods import is_terminal
from k3p_plugins.controller_manager.status import omit_zero

log = structlog.get_logger(__name__)


class DeploymentController(BaseController):
    name = "deployment"
    component = "deployment-controller"
    workers = 4

    def setup(self) -> None:
        self.deployments = self.informers.informer(DEPLOYMENTS)
        self.replicasets = self.informers.informer(REPLICASETS)
        self.pods = self.informers.informer(PODS)
        self.watch_objects(self.deployments)
        self.replicasets.add_listener(self._on_rs)
        self.pods.add_listener(self._on_pod)

    # --- events -----------------------------------------------------------------------------

    def _selector(self, d: Obj) -> LabelSelector:
        try:
            return label_selector_from_dict(d["spec"].get("selector"))
        except SelectorError:
            return LabelSelector.match_nothing()

    def _on_rs(self, type_: str, rs: Obj, old: Obj | None) -> None:
        ns = meta(rs).get("namespace")
        ref = controller_ref(rs)
        if ref is not None:
            if ref.get("kind") == "Deployment":
                self.queue.add(f"{ns}/{ref['name']}")
        elif type_ != "DELETED":
            for d in self.deployments.items(ns):
                if self._selector(d).matches(labels_of(rs)):
                    self.enqueue(d)
        if old is not None:
            old_ref = controller_ref(old)
            if old_ref is not None and old_ref.get("kind") == "Deployment" and old_ref != ref:
                self.queue.add(f"{ns}/{old_ref['name']}")

    def _on_pod(self, type_: str, pod: Obj, _old: Obj | None) -> None:
        # Only Recreate waits on pods (all old pods gone before new ones start).
        if type_ != "DELETED":
            return
        ref = controller_ref(pod)
        if ref is None or ref.get("kind") != "ReplicaSet":
            return
        rs = self.replicasets.get(f"{meta(pod).get('namespace')}/{ref['name']}")
        if rs is None:
            return
        d_ref = controller_ref(rs)
        if d_ref is not None and d_ref.get("kind") == "Deployment":
            d = self.deployments.get(f"{meta(rs).get('namespace')}/{d_ref['name']}")
            if d is not None and not du.is_rolling(d):
                self.enqueue(d)

    # --- reconcile --------------------------------------------------------------------------

    async def reconcile(self, key: str) -> None:
        cached = self.deployments.get(key)
        if cached is None:
            return
        d = copy.deepcopy(cached)
        require_workload_spec(d)
        ns, _ = split_key(key)
        selector = self._selector(d)
        if selector.empty:
            self.record(d, "Warning", "SelectingAll",
                        "This deployment is selecting all pods. A non-empty selector is required.")
            if d.get("status", {}).get("observedGeneration") != meta(d).get("generation"):
                await self._write_status(d, {**(d.get("status") or {}),
                                             "observedGeneration": meta(d).get("generation")})
            return
        candidates = [rs for rs in self.replicasets.items(ns)]
        rs_list = await claim(self.client, REPLICASETS, d, selector, candidates,
                              can_adopt=recheck_owner(self.client, DEPLOYMENTS, d))
        if is_deleting(d):
            await self._sync_status_only(d, rs_list)
            return
        await self._check_paused_conditions(d)
        if d["spec"].get("paused"):
            await self._sync(d, rs_list)
            return
        if await self._is_scaling_event(d, rs_list):
            await self._sync(d, rs_list)
            return
        if du.is_rolling(d):
            await self._rollout_rolling(d, rs_list)
        else:
            await self._rollout_recreate(d, rs_list)

    # --- revision bookkeeping ---------------------------------------------------------------

    async def _all_rss(self, d: Obj, rs_list: list[Obj], create: bool) -> tuple[Obj | None, list[Obj]]:
        existing = du.find_new_rs(d, rs_list)
        old = [rs for rs in rs_list if existing is None or uid_of(rs) != uid_of(existing)]
        new_rs = await self._new_rs(d, rs_list, old, existing, create)
        return new_rs, old

    async def _new_rs(self, d: Obj, rs_list: list[Obj], old: list[Obj], existing: Obj | None,
                      create: bool) -> Obj | None:
        max_old = max((du.revision_of(rs) for rs in old), default=0)
        new_revision = max_old + 1
        if existing is not None:
            rs = copy.deepcopy(existing)
            changed = du.set_new_rs_annotations(d, rs, new_revision, exists=True)
            min_ready = d["spec"].get("minReadySeconds") or 0
            if changed or (rs["spec"].get("minReadySeconds") or 0) != min_ready:
                rs["spec"]["minReadySeconds"] = min_ready
                existing = await self.client.update(REPLICASETS, rs)
            await self._set_deployment_revision(d, du.revision_of(existing))
            status = copy.deepcopy(d.get("status") or {})
            if du.has_progress_deadline(d) and get_condition(status, "Progressing") is None:
                set_condition(status, "Progressing", "True", du.FOUND_NEW_RS,
                              f'Found new replica set "{name_of(existing)}"', update_time=True)
                await self._write_status(d, status)
            return existing
        if not create:
            return None
        collisions = (d.get("status") or {}).get("collisionCount")
        template = copy.deepcopy(d["spec"]["template"])
        pod_hash = compute_hash(du.template_for_hash(template), collisions)
        template.setdefault("metadata", {}).setdefault("labels", {})[du.POD_TEMPLATE_HASH] = pod_hash
        selector = copy.deepcopy(d["spec"]["selector"])
        selector.setdefault("matchLabels", {})[du.POD_TEMPLATE_HASH] = pod_hash
        rs: Obj = {
            "apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {"name": f"{name_of(d)}-{pod_hash}", "namespace": meta(d)["namespace"],
                         "labels": dict(template["metadata"]["labels"]), "ownerReferences": [owner_reference(d)],
                         "annotations": {}},
            "spec": {"replicas": 0, "minReadySeconds": d["spec"].get("minReadySeconds") or 0,
                     "selector": selector, "template": template},
        }
        rs["spec"]["replicas"] = du.new_rs_new_replicas(d, [*old, rs], rs)
        du.set_new_rs_annotations(d, rs, new_revision, exists=False)
        try:
            created = await self.client.create(REPLICASETS, rs)
        except ApiError as e:
            if not e.already_exists:
                status = copy.deepcopy(d.get("status") or {})
                set_condition(status, "ReplicaFailure", "True", du.FAILED_RS_CREATE, str(e.message or e),
                              update_time=True)
                await self._write_status(d, status)
                raise
            found = await self.client.get(REPLICASETS, rs["metadata"]["name"], meta(d)["namespace"])
            if is_controlled_by(found, d) and du.templates_equal(found["spec"].get("template"),
                                                                   d["spec"]["template"]):
                return found
            # Same name, other template: a hash collision. Count it so the next hash differs.
            status = copy.deepcopy(d.get("status") or {})
            status["collisionCount"] = int(status.get("collisionCount") or 0) + 1
            await self._write_status(d, status)
            raise
        replicas = du.replicas(created)
        if replicas > 0:
            self.record(d, "Normal", "ScalingReplicaSet",
                        f"Scaled up replica set {name_of(created)} from 0 to {replicas}")
        await self._set_deployment_revision(d, new_revision)
        if du.has_progress_deadline(d):
            status = copy.deepcopy(d.get("status") or {})
            set_condition(status, "Progressing", "True", du.NEW_RS_CREATED,
                          f'Created new replica set "{name_of(created)}"', update_time=True)
            await self._write_status(d, status)
        return created

    async def _set_deployment_revision(self, d: Obj, revision: int) -> None:
        annotations = meta(d).get("annotations") or {}
        if annotations.get(du.REVISION) == str(revision):
            return
        updated = await self.client.patch(DEPLOYMENTS, name_of(d),
                                          {"metadata": {"annotations": {du.REVISION: str(revision)}}},
                                          meta(d)["namespace"])
        d["metadata"] = updated["metadata"]

    async def report_malformed(self, obj: Obj, message: str) -> None:
        # kube's condition for "cannot make the ReplicaSet" (there: the API refused it)
        d = copy.deepcopy(obj)
        status = copy.deepcopy(d.get("status") or {})
        set_condition(status, "ReplicaFailure", "True", du.FAILED_RS_CREATE, message, update_time=True)
        await self._write_status(d, status)

    async def _write_status(self, d: Obj, status: dict[str, Any]) -> None:
        status = omit_zero(status)
        if status == omit_zero(d.get("status") or {}):
            return
        patch: dict[str, Any] = dict(status)
        for k in d.get("status") or {}:
            if k not in status:
                patch[k] = None
        updated = await self.client.patch(DEPLOYMENTS, name_of(d), {"status": patch}, meta(d)["namespace"],
                                          subresource="status")
        d["status"] = updated.get("status") or {}
        d["metadata"] = updated["metadata"]

    # --- scaling ----------------------------------------------------------------------------

    async def _scale_rs(self, rs: Obj, size: int, d: Obj) -> tuple[bool, Obj]:
        size_changed = du.replicas(rs) != size
        want, max_total = du.replicas(d), du.replicas(d) + du.max_surge(d)
        if not size_changed and not du.replicas_annotations_need_update(rs, want, max_total):
            return False, rs
        old = du.replicas(rs)
        new = copy.deepcopy(rs)
        new["spec"]["replicas"] = size
        du.set_replicas_annotations(new, want, max_total)
        stored = await self.client.update(REPLICASETS, new)
        if size_changed:
            verb = "up" if size > old else "down"
            self.record(d, "Normal", "ScalingReplicaSet",
                        f"Scaled {verb} replica set {name_of(rs)} from {old} to {size}")
        return size_changed, stored

    async def _is_scaling_event(self, d: Obj, rs_list: list[Obj]) -> bool:
        new_rs, old = await self._all_rss(d, rs_list, create=False)
        for rs in [*([new_rs] if new_rs else []), *old]:
            if du.replicas(rs) <= 0:
                continue
            desired = (meta(rs).get("annotations") or {}).get(du.DESIRED_REPLICAS)
            if desired is not None and desired != str(du.replicas(d)):
                return True
        return False

    async def _sync(self, d: Obj, rs_list: list[Obj]) -> None:
        """Scaling and status only (paused Deployments, replica count changes mid-rollout)."""
        new_rs, old = await self._all_rss(d, rs_list, create=False)
        sizes = du.proportional_sizes(d, new_rs, old)
        by_name = {name_of(rs): rs for rs in [*([new_rs] if new_rs else []), *old]}
        for name, size in sizes.items():
            _, by_name[name] = await self._scale_rs(by_name[name], size, d)
        new_rs = by_name.get(name_of(new_rs)) if new_rs else None
        old = [by_name[name_of(rs)] for rs in old]
        if d["spec"].get("paused"):
            await self._cleanup(d, old)
        all_rss = [*([new_rs] if new_rs else []), *old]
        status = du.calculate_status(d, all_rss, new_rs)
        self._set_available(d, status)
        await self._write_status(d, status)

    async def _sync_status_only(self, d: Obj, rs_list: list[Obj]) -> None:
        new_rs, old = await self._all_rss(d, rs_list, create=False)
        all_rss = [*([new_rs] if new_rs else []), *old]
        status = du.calculate_status(d, all_rss, new_rs)
        self._set_available(d, status)
        await self._write_status(d, status)

    async def _check_paused_conditions(self, d: Obj) -> None:
        if not du.has_progress_deadline(d):
            return
        status = copy.deepcopy(d.get("status") or {})
        cond = get_condition(status, "Progressing")
        if cond is not None and cond.get("reason") == du.TIMED_OUT:
            return
        paused = bool(d["spec"].get("paused"))
        changed = False
        if paused and (cond is None or cond.get("reason") != du.PAUSED):
            changed = set_condition(status, "Progressing", "Unknown", du.PAUSED, "Deployment is paused",
                                    update_time=True)
        elif not paused and cond is not None and cond.get("reason") == du.PAUSED:
            changed = set_condition(status, "Progressing", "Unknown", du.RESUMED, "Deployment is resumed",
                                    update_time=True)
        if changed:
            await self._write_status(d, status)

    # --- strategies -------------------------------------------------------------------------

    async def _rollout_rolling(self, d: Obj, rs_list: list[Obj]) -> None:
        new_rs, old = await self._all_rss(d, rs_list, create=True)
        assert new_rs is not None
        all_rss = [new_rs, *old]
        # 1. scale the new ReplicaSet up (within maxSurge)
        want = du.replicas(d)
        if du.replicas(new_rs) > want:
            scaled, new_rs = await self._scale_rs(new_rs, want, d)
        elif du.replicas(new_rs) < want:
            scaled, new_rs = await self._scale_rs(new_rs, du.new_rs_new_replicas(d, all_rss, new_rs), d)
        else:
            scaled = False
        all_rss = [new_rs, *old]
        if scaled:
            await self._sync_rollout_status(d, all_rss, new_rs)
            return
        # 2. scale old ReplicaSets down (within maxUnavailable)
        active_old = [rs for rs in old if du.replicas(rs) > 0]
        plan = du.old_replicas_scale_down(d, all_rss, active_old, new_rs)
        if plan:
            by_name = {name_of(rs): rs for rs in old}
            for name, size in plan.items():
                _, by_name[name] = await self._scale_rs(by_name[name], size, d)
            old = [by_name[name_of(rs)] for rs in old]
            await self._sync_rollout_status(d, [new_rs, *old], new_rs)
            return
        if du.deployment_complete(d, d.get("status") or {}):
            await self._cleanup(d, old)
        await self._sync_rollout_status(d, [new_rs, *old], new_rs)

    async def _rollout_recreate(self, d: Obj, rs_list: list[Obj]) -> None:
        new_rs, old = await self._all_rss(d, rs_list, create=False)
        scaled = False
        by_name = {name_of(rs): rs for rs in old}
        for rs in old:
            if du.replicas(rs) > 0:
                changed, by_name[name_of(rs)] = await self._scale_rs(rs, 0, d)
                scaled = scaled or changed
        old = [by_name[name_of(rs)] for rs in old]
        all_rss = [*([new_rs] if new_rs else []), *old]
        if scaled or self._old_pods_running(old):
            await self._sync_rollout_status(d, all_rss, new_rs)
            return
        if new_rs is None:
            new_rs, old = await self._all_rss(d, rs_list, create=True)
            assert new_rs is not None
        if du.replicas(new_rs) != du.replicas(d):
            _, new_rs = await self._scale_rs(new_rs, du.replicas(d), d)
        if du.deployment_complete(d, d.get("status") or {}):
            await self._cleanup(d, old)
        await self._sync_rollout_status(d, [new_rs, *old], new_rs)

    def _old_pods_running(self, old: list[Obj]) -> bool:
        if sum(du.status_int(rs, "replicas") for rs in old) > 0:
            return True
        uids = {uid_of(rs) for rs in old}
        ns = next((meta(rs).get("namespace") for rs in old), None)
        if ns is None:
            return False
        for pod in self.pods.items(ns):
            ref = controller_ref(pod)
            if ref is not None and ref.get("uid") in uids and not is_terminal(pod):
                return True
        return False

    async def _cleanup(self, d: Obj, old: list[Obj]) -> None:
        """Delete the oldest unused ReplicaSets beyond revisionHistoryLimit."""
        limit = d["spec"].get("revisionHistoryLimit")
        if limit is None:
            return
        alive = [rs for rs in old if not is_deleting(rs)]
        extra = len(alive) - int(limit)
        if extra <= 0:
            return
        for rs in sorted(alive, key=lambda r: (du.revision_of(r), meta(r).get("creationTimestamp") or ""))[:extra]:
            if (du.status_int(rs, "replicas") != 0 or du.replicas(rs) != 0
                    or int(meta(rs).get("generation") or 0) > du.status_int(rs, "observedGeneration")):
                continue
            try:
                await self.client.delete(REPLICASETS, name_of(rs), meta(rs)["namespace"],
                                         preconditions={"uid": uid_of(rs)})
            except ApiError as e:
                if not (e.not_found or e.conflict):
                    raise

    # --- status -----------------------------------------------------------------------------

    def _set_available(self, d: Obj, status: dict[str, Any]) -> None:
        if int(status.get("availableReplicas") or 0) >= du.replicas(d) - du.max_unavailable(d):
            set_condition(status, "Available", "True", du.MIN_AVAILABLE, "Deployment has minimum availability.",
                          update_time=True)
        else:
            set_condition(status, "Available", "False", du.MIN_UNAVAILABLE,
                          "Deployment does not have minimum availability.", update_time=True)

    async def _sync_rollout_status(self, d: Obj, all_rss: list[Obj], new_rs: Obj | None) -> None:
        status = du.calculate_status(d, all_rss, new_rs)
        self._set_available(d, status)
        now = utcnow()
        if not du.has_progress_deadline(d):
            remove_condition(status, "Progressing")
        current = get_condition(status, "Progressing")
        complete = (int(status.get("replicas") or 0) == int(status.get("updatedReplicas") or 0)
                    and current is not None and current.get("reason") == du.NEW_RS_AVAILABLE)
        what = f'ReplicaSet "{name_of(new_rs)}"' if new_rs is not None else f'Deployment "{name_of(d)}"'
        if du.has_progress_deadline(d) and not complete:
            if du.deployment_complete(d, status):
                set_condition(status, "Progressing", "True", du.NEW_RS_AVAILABLE,
                              f"{what} has successfully progressed.", now=format_time(now), update_time=True)
            elif du.deployment_progressing(d, status):
                # Progress moves lastUpdateTime even with the same reason: the deadline counts from it.
                stamp = format_time(now)
                cond = {"type": "Progressing", "status": "True", "lastUpdateTime": stamp,
                        "lastTransitionTime": current.get("lastTransitionTime", stamp)
                        if current is not None and current.get("status") == "True" else stamp,
                        "reason": du.RS_UPDATED, "message": f"{what} is progressing."}
                status["conditions"] = [c for c in status.get("conditions") or []
                                        if c.get("type") != "Progressing"] + [cond]
            elif du.progress_deadline_passed(d, status, now):
                set_condition(status, "Progressing", "False", du.TIMED_OUT, f"{what} has timed out progressing.",
                              now=format_time(now), update_time=True)
        failures = [c for rs in all_rss for c in (rs.get("status") or {}).get("conditions") or []
                    if c.get("type") == "ReplicaFailure" and c.get("status") == "True"]
        if failures:
            set_condition(status, "ReplicaFailure", "True", failures[0].get("reason", ""),
                          failures[0].get("message", ""), update_time=True)
        else:
            remove_condition(status, "ReplicaFailure")
        await self._write_status(d, status)
        wait = du.seconds_to_deadline(d, status, now)
        if wait is not None:
            self.queue.add_after(f"{meta(d)['namespace']}/{name_of(d)}", wait)
