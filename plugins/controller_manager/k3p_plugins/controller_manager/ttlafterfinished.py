"""Deletes finished Jobs ``ttlSecondsAfterFinished`` after they finish (kube's ttl-after-finished controller)."""

from __future__ import annotations

import datetime as dt

from k3p.client import ApiError, Obj, Requeue
from k3p.client.objects import is_deleting, meta, name_of, parse_time, uid_of, utcnow
from k3p.client.resources import JOBS
from k3p_plugins.controller_manager.base import BaseController


def finish_time(job: Obj) -> dt.datetime | None:
    for c in (job.get("status") or {}).get("conditions") or []:
        if c.get("type") in ("Complete", "Failed") and c.get("status") == "True":
            return parse_time((job.get("status") or {}).get("completionTime")) or parse_time(
                c.get("lastTransitionTime"))
    return None


class TTLAfterFinishedController(BaseController):
    name = "ttl-after-finished"
    component = "ttl-after-finished-controller"

    def setup(self) -> None:
        self.jobs = self.informers.informer(JOBS)
        self.jobs.add_listener(self._on_job)

    def _on_job(self, type_: str, job: Obj, _old: Obj | None) -> None:
        if type_ != "DELETED" and job.get("spec", {}).get("ttlSecondsAfterFinished") is not None:
            self.enqueue(job)

    async def reconcile(self, key: str) -> None:
        job = self.jobs.get(key)
        if job is None or is_deleting(job):
            return
        ttl = job["spec"].get("ttlSecondsAfterFinished")
        finished = finish_time(job)
        if ttl is None or finished is None:
            return
        left = (finished + dt.timedelta(seconds=int(ttl)) - utcnow()).total_seconds()
        if left > 0:
            raise Requeue(left)
        try:
            fresh = await self.client.get(JOBS, name_of(job), meta(job)["namespace"])
        except ApiError as e:
            if e.not_found:
                return
            raise
        if fresh["spec"].get("ttlSecondsAfterFinished") is None or finish_time(fresh) is None:
            return
        try:
            await self.client.delete(JOBS, name_of(job), meta(job)["namespace"], propagation_policy="Foreground",
                                     preconditions={"uid": uid_of(fresh)})
        except ApiError as e:
            if not (e.not_found or e.conflict):
                raise
