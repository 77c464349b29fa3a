"""CronJobs: a Job per scheduled time, with concurrency policy, deadlines and history limits."""

from __future__ import annotations

import copy
import datetime as dt
from typing import Any

import structlog

from k3p.client import ApiError, Obj, Requeue, split_key
from k3p.client.objects import (
    controller_ref,
    format_time,
    get_condition,
    is_controlled_by,
    is_deleting,
    meta,
    name_of,
    object_reference,
    owner_reference,
    parse_time,
    uid_of,
    utcnow,
)
from k3p.client.resources import CRONJOBS, JOBS
from k3p_plugins.controller_manager.base import BaseController
from k3p_plugins.controller_manager.cron import MAX_MISSED, Schedule, ScheduleError, parse_schedule
from k3p_plugins.controller_manager.job import is_finished
from k3p_plugins.controller_manager.status import write_status

log = structlog.get_logger(__name__)

SCHEDULED_TIMESTAMP = "batch.kubernetes.io/cronjob-scheduled-timestamp"
#: the controller looks again a little after the scheduled time, never just before it
NEXT_SCHEDULE_DELTA = 0.1


def job_name(cronjob_name: str, scheduled: dt.datetime) -> str:
    """``<cronjob>-<scheduled time in minutes since the epoch>``."""
    return f"{cronjob_name}-{int(scheduled.timestamp()) // 60}"


def job_from_template(cj: Obj, scheduled: dt.datetime, tz: dt.tzinfo) -> Obj:
    template = (cj["spec"].get("jobTemplate") or {})
    tmeta = template.get("metadata") or {}
    annotations = dict(tmeta.get("annotations") or {})
    annotations[SCHEDULED_TIMESTAMP] = scheduled.astimezone(tz).isoformat(timespec="seconds").replace("+00:00", "Z")
    job_meta: Obj = {"name": job_name(name_of(cj), scheduled), "namespace": meta(cj)["namespace"],
                     "annotations": annotations, "ownerReferences": [owner_reference(cj)]}
    if tmeta.get("labels"):
        job_meta["labels"] = dict(tmeta["labels"])
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": job_meta,
            "spec": copy.deepcopy(template.get("spec") or {})}


def finished_type(job: Obj) -> str | None:
    for c in (job.get("status") or {}).get("conditions") or []:
        if c.get("type") in ("Complete", "Failed") and c.get("status") == "True":
            return c["type"]
    return None


class CronJobController(BaseController):
    name = "cronjob"
    component = "cronjob-controller"
    workers = 2

    def setup(self) -> None:
        self.cronjobs = self.informers.informer(CRONJOBS)
        self.jobs = self.informers.informer(JOBS)
        self.watch_objects(self.cronjobs)
        self.watch_owned(self.jobs, "CronJob")

    async def reconcile(self, key: str) -> None:
        cached = self.cronjobs.get(key)
        if cached is None:
            return
        cj = copy.deepcopy(cached)
        ns, _ = split_key(key)
        status: dict[str, Any] = copy.deepcopy(cj.get("status") or {})
        jobs = [j for j in self.jobs.items(ns) if is_controlled_by(j, cj)]
        now = utcnow()
        requeue = await self._sync(cj, status, jobs, now)
        await self._cleanup(cj, status, jobs)
        out = {k: v for k, v in status.items() if v not in (None, [])}
        await write_status(self.client, CRONJOBS, cj, out)
        if requeue is not None:
            raise Requeue(requeue)

    async def _sync(self, cj: Obj, status: dict[str, Any], jobs: list[Obj], now: dt.datetime) -> float | None:
        active: list[Obj] = list(status.get("active") or [])
        active_uids = {a.get("uid") for a in active}
        by_uid = {uid_of(j): j for j in jobs}
        for j in jobs:
            found = uid_of(j) in active_uids
            kind = finished_type(j)
            if not found and kind is None:
                self.record(cj, "Warning", "UnexpectedJob",
                            f"Saw a job that the controller did not create or forgot: {name_of(j)}")
            elif found and kind is not None:
                active = [a for a in active if a.get("uid") != uid_of(j)]
                self.record(cj, "Normal", "SawCompletedJob", f"Saw completed job: {name_of(j)}, condition: {kind}")
            if kind == "Complete":
                done = (j.get("status") or {}).get("completionTime")
                last = parse_time(status.get("lastSuccessfulTime"))
                when = parse_time(done)
                if when is not None and (last is None or when > last):
                    status["lastSuccessfulTime"] = done
        for ref in list(active):
            if ref.get("uid") in by_uid:
                continue
            try:
                fresh = await self.client.get(JOBS, ref.get("name", ""), meta(cj)["namespace"])
                if uid_of(fresh) == ref.get("uid"):
                    continue
            except ApiError as e:
                if not e.not_found:
                    raise
            self.record(cj, "Normal", "MissingJob", f"Active job went missing: {ref.get('name')}")
            active = [a for a in active if a.get("uid") != ref.get("uid")]
        status["active"] = active
        if is_deleting(cj):
            return None
        try:
            schedule = parse_schedule(cj["spec"].get("schedule", ""), cj["spec"].get("timeZone"))
        except ScheduleError as e:
            if cj["spec"].get("timeZone") and "time zone" in str(e):
                self.record(cj, "Warning", "UnknownTimeZone", f"invalid timeZone: {cj['spec']['timeZone']!r}: {e}")
            else:
                self.record(cj, "Warning", "UnparseableSchedule",
                            f"unparseable schedule: {cj['spec'].get('schedule')!r} : {e}")
            return None
        if cj["spec"].get("suspend"):
            return None
        scheduled = self._due(cj, status, schedule, now)
        if scheduled is None:
            return self._until_next(schedule, now)
        deadline = cj["spec"].get("startingDeadlineSeconds")
        if deadline is not None and scheduled + dt.timedelta(seconds=int(deadline)) < now:
            when = scheduled.astimezone(dt.UTC)
            self.record(cj, "Warning", "MissSchedule",
                        f"Missed scheduled time to start a job: {when:%a, %d %b %Y %H:%M:%S %z}")
            return self._until_next(schedule, now)
        name = job_name(name_of(cj), scheduled)
        if any(a.get("name") == name for a in active) or status.get("lastScheduleTime") == format_time(scheduled):
            return self._until_next(schedule, now)
        policy = cj["spec"].get("concurrencyPolicy", "Allow")
        if policy == "Forbid" and active:
            self.record(cj, "Normal", "JobAlreadyActive",
                        "Not starting job because prior execution is running and concurrency policy is Forbid")
            return self._until_next(schedule, now)
        if policy == "Replace":
            for ref in list(active):
                job = by_uid.get(ref.get("uid", ""))
                if job is None:
                    continue
                if await self._delete_job(cj, job):
                    active = [a for a in active if a.get("uid") != ref.get("uid")]
            status["active"] = active
        job = job_from_template(cj, scheduled, schedule.tz)
        try:
            created = await self.client.create(JOBS, job, meta(cj)["namespace"])
        except ApiError as e:
            if not e.already_exists:
                self.record(cj, "Warning", "FailedCreate", f"Error creating job: {e.message}")
                raise
            created = await self.client.get(JOBS, name, meta(cj)["namespace"])
            if not is_controlled_by(created, cj):
                raise
        else:
            self.record(cj, "Normal", "SuccessfulCreate", f"Created job {name}")
        if not is_finished(created) and not any(a.get("uid") == uid_of(created) for a in active):
            active.append(object_reference(created))
        status["active"] = active
        status["lastScheduleTime"] = format_time(scheduled)
        return self._until_next(schedule, now)

    def _due(self, cj: Obj, status: dict[str, Any], schedule: Schedule, now: dt.datetime) -> dt.datetime | None:
        earliest = parse_time(status.get("lastScheduleTime")) or parse_time(meta(cj).get("creationTimestamp")) or now
        deadline = cj["spec"].get("startingDeadlineSeconds")
        if deadline is not None:
            floor = now - dt.timedelta(seconds=int(deadline))
            if floor > earliest:
                earliest = floor
        latest, missed = schedule.most_recent(earliest, now)
        if missed > MAX_MISSED:
            self.record(cj, "Warning", "TooManyMissedTimes",
                        f"too many missed start times: {missed}. Set or decrease .spec.startingDeadlineSeconds "
                        "or check clock skew")
        return latest

    @staticmethod
    def _until_next(schedule: Schedule, now: dt.datetime) -> float:
        return max((schedule.next_after(now) - now).total_seconds(), 0) + NEXT_SCHEDULE_DELTA

    async def _delete_job(self, cj: Obj, job: Obj) -> bool:
        try:
            await self.client.delete(JOBS, name_of(job), meta(job)["namespace"], propagation_policy="Background")
        except ApiError as e:
            if not e.not_found:
                self.record(cj, "Warning", "FailedDelete", f"Deleted job: {e.message}")
                return False
        self.record(cj, "Normal", "SuccessfulDelete", f"Deleted job {name_of(job)}")
        return True

    async def _cleanup(self, cj: Obj, status: dict[str, Any], jobs: list[Obj]) -> None:
        """Delete the oldest finished Jobs beyond the history limits."""
        spec = cj["spec"]
        for kind, field in (("Complete", "successfulJobsHistoryLimit"), ("Failed", "failedJobsHistoryLimit")):
            limit = spec.get(field)
            if limit is None:
                continue
            done = [j for j in jobs if finished_type(j) == kind and not is_deleting(j)]
            extra = len(done) - int(limit)
            if extra <= 0:
                continue
            done.sort(key=lambda j: ((j.get("status") or {}).get("startTime") or "", name_of(j)))
            for job in done[:extra]:
                if await self._delete_job(cj, job):
                    status["active"] = [a for a in status.get("active") or [] if a.get("uid") != uid_of(job)]


__all__ = ["CronJobController", "controller_ref", "get_condition", "job_from_template", "job_name"]
