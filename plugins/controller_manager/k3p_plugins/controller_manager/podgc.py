"""Pod garbage collection: pods of vanished nodes, unscheduled pods being deleted, too many finished pods."""

from __future__ import annotations

import asyncio
import time

import structlog

from k3p.client import ApiError, Obj
from k3p.client.objects import format_time, is_deleting, meta, name_of, sort_by_creation
from k3p.client.resources import NODES, PODS
from k3p_plugins.controller_manager.base import BaseController
from k3p_plugins.controller_manager.pods import is_terminal

log = structlog.get_logger(__name__)

#: how often kube's pod GC runs, and how long a missing node must stay missing
GC_PERIOD = 20.0
QUARANTINE = 40.0


class PodGCController(BaseController):
    name = "podgc"
    component = "pod-garbage-collector"
    workers = 1

    def setup(self) -> None:
        self.pods = self.informers.informer(PODS)
        self.nodes = self.informers.informer(NODES)
        self.missing_since: dict[str, float] = {}
        self.period = GC_PERIOD

    async def start(self) -> None:
        self.spawn(self._loop())

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.period)
            self.queue.add("gc")

    async def reconcile(self, key: str) -> None:
        pods = list(self.pods.items())
        await self._terminated(pods)
        await self._orphaned(pods)
        for pod in pods:
            if is_deleting(pod) and not (pod.get("spec") or {}).get("nodeName"):
                await self._force_delete(pod)

    async def _terminated(self, pods: list[Obj]) -> None:
        threshold = self.options.terminated_pod_gc_threshold
        if threshold <= 0:
            return
        done = [p for p in pods if is_terminal(p) and not is_deleting(p)]
        extra = len(done) - threshold
        for pod in sort_by_creation(done)[:max(extra, 0)]:
            await self._force_delete(pod)

    async def _orphaned(self, pods: list[Obj]) -> None:
        now = time.monotonic()
        known = {name_of(n) for n in self.nodes.items()}
        missing = {(p.get("spec") or {}).get("nodeName") for p in pods} - known - {None, ""}
        for node in list(self.missing_since):
            if node not in missing:
                del self.missing_since[node]
        for node in missing:
            self.missing_since.setdefault(node, now)
        for pod in pods:
            node = (pod.get("spec") or {}).get("nodeName")
            if not node or node not in missing or now - self.missing_since[node] < QUARANTINE:
                continue
            try:
                await self.client.get(NODES, node)
                continue  # the cache lagged: the node exists
            except ApiError as e:
                if not e.not_found:
                    raise
            log.info("deleting pod of a node that no longer exists", namespace=meta(pod).get("namespace"),
                     pod=name_of(pod), node=node)
            cond = {"type": "DisruptionTarget", "status": "True", "reason": "DeletionByPodGC",
                    "message": "PodGC: node no longer exists", "lastTransitionTime": format_time()}
            status: Obj = {"conditions": [cond]}
            if not is_terminal(pod):
                status["phase"] = "Failed"
            try:
                await self.client.patch(PODS, name_of(pod), {"status": status}, meta(pod)["namespace"],
                                        patch_type="strategic", subresource="status")
            except ApiError as e:
                if not e.not_found:
                    raise
            await self._force_delete(pod)

    async def _force_delete(self, pod: Obj) -> None:
        try:
            await self.client.delete(PODS, name_of(pod), meta(pod)["namespace"], grace_period_seconds=0,
                                     preconditions={"uid": meta(pod).get("uid")})
        except ApiError as e:
            if not (e.not_found or e.conflict):
                raise
