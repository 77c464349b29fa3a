"""Jobs: run pods until enough succeed, counting every finished pod exactly once.

Pods carry the ``batch.kubernetes.io/job-tracking`` finalizer; a finished pod's uid goes to
``status.uncountedTerminatedPods`` first, then its finalizer is removed, then it moves into
the ``succeeded``/``failed`` counters, so a count survives the pod's deletion and a crash at
any step (kube's job tracking with finalizers). Terminal conditions are preceded by the
interim ``SuccessCriteriaMet``/``FailureTarget`` conditions and set once no pod is left
terminating, as in Kubernetes 1.32.
"""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
from typing import Any

import structlog

from k3p.client import ApiError, Obj, Requeue, key_of, split_key
from k3p.client.objects import (
    controller_ref,
    format_time,
    get_condition,
    is_deleting,
    meta,
    name_of,
    owner_reference,
    parse_time,
    set_condition,
    uid_of,
    utcnow,
)
from k3p.client.resources import JOBS, PODS
from k3p.selectors import LabelSelector, SelectorError, label_selector_from_dict
from k3p_plugins.controller_manager.base import BaseController, require_workload_spec
from k3p_plugins.controller_manager.claims import claim, recheck_owner
from k3p_plugins.controller_manager.expectations import Expectations
from k3p_plugins.controller_manager.pods import (
    deletion_order,
    is_active,
    is_ready,
    is_terminating,
    phase,
    pod_from_template,
)
from k3p_plugins.controller_manager.replicaset import slow_start_batches

log = structlog.get_logger(__name__)

TRACKING_FINALIZER = "batch.kubernetes.io/job-tracking"
CONTROLLER_UID = "batch.kubernetes.io/controller-uid"
JOB_NAME = "batch.kubernetes.io/job-name"
LEGACY_CONTROLLER_UID = "controller-uid"
LEGACY_JOB_NAME = "job-name"
COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"

BACKOFF_BASE = 10.0
BACKOFF_MAX = 600.0
MAX_PODS_PER_SYNC = 500


def is_finished(job: Obj) -> bool:
    return any(c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
               for c in (job.get("status") or {}).get("conditions") or [])


def is_indexed(job: Obj) -> bool:
    return job["spec"].get("completionMode") == "Indexed"


def completion_index(pod: Obj) -> int | None:
    try:
        return int((meta(pod).get("annotations") or {}).get(COMPLETION_INDEX, ""))
    except ValueError:
        return None


def has_finalizer(pod: Obj) -> bool:
    return TRACKING_FINALIZER in (meta(pod).get("finalizers") or [])


def only_replace_failed(job: Obj) -> bool:
    return job["spec"].get("podReplacementPolicy") == "Failed" or job["spec"].get("podFailurePolicy") is not None


def is_pod_failed(pod: Obj, job: Obj) -> bool:
    """Failed, or (unless only failed pods are replaced) deleted before it succeeded."""
    if phase(pod) == "Failed":
        return True
    if only_replace_failed(job):
        return False
    return is_deleting(pod) and phase(pod) != "Succeeded"


def parse_indexes(text: str | None) -> set[int]:
    """``"1,3-5,7"`` as a set of ints (status.completedIndexes)."""
    out: set[int] = set()
    for part in (text or "").split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part:
            lo, hi = part.split("-", 1)
            out.update(range(int(lo), int(hi) + 1))
        else:
            out.add(int(part))
    return out


def format_indexes(indexes: set[int]) -> str:
    """Ascending ranges, ``"0-2,5"`` (kube's compact interval form)."""
    parts: list[str] = []
    ordered = sorted(indexes)
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        parts.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(parts)


def want_active(job: Obj, succeeded: int) -> int:
    parallelism = int(job["spec"].get("parallelism", 1))
    completions = job["spec"].get("completions")
    if completions is None:
        return 0 if succeeded > 0 else parallelism
    return max(min(int(completions) - succeeded, parallelism), 0)


def backoff_delay(failures: int) -> float:
    """Seconds to wait before the next pod after ``failures`` failures in a row (10 s doubling, max 10 min)."""
    if failures <= 0:
        return 0.0
    return min(BACKOFF_BASE * 2 ** (failures - 1), BACKOFF_MAX)


class JobController(BaseController):
    name = "job"
    component = "job-controller"
    workers = 4

    def setup(self) -> None:
        self.expectations = Expectations()
        self.jobs = self.informers.informer(JOBS)
        self.pods = self.informers.informer(PODS)
        self.watch_objects(self.jobs)
        self.pods.add_listener(self._on_pod)
        #: key -> (failures since the last success, time of the last failure)
        self._backoff: dict[str, tuple[int, dt.datetime | None]] = {}
        self._counted: dict[str, set[str]] = {}
        #: job key -> uids of pods whose finalizer removal was sent but not seen yet
        self._finalizers_removed: dict[str, set[str]] = {}

    def _on_pod(self, type_: str, pod: Obj, _old: Obj | None) -> None:
        ref = controller_ref(pod)
        if ref is None or ref.get("kind") != "Job":
            return
        owner = f"{meta(pod).get('namespace')}/{ref['name']}"
        if type_ == "DELETED" or not has_finalizer(pod):
            self._finalizers_removed.get(owner, set()).discard(uid_of(pod))
        if type_ == "ADDED":
            self.expectations.creation_observed(owner, key_of(pod))
        if type_ == "DELETED" or is_deleting(pod):
            self.expectations.deletion_observed(owner, key_of(pod))
        self.queue.add(owner)

    def _selector(self, job: Obj) -> LabelSelector:
        raw = job["spec"].get("selector")
        if raw is None:
            return LabelSelector.from_set({CONTROLLER_UID: uid_of(job)})
        try:
            return label_selector_from_dict(raw)
        except SelectorError:
            return LabelSelector.match_nothing()

    # --- reconcile --------------------------------------------------------------------------

    async def reconcile(self, key: str) -> None:
        cached = self.jobs.get(key)
        if cached is None:
            self.expectations.forget(key)
            self._backoff.pop(key, None)
            self._finalizers_removed.pop(key, None)
            self._counted.pop(key, None)
            return
        ns, _ = split_key(key)
        if is_finished(cached):
            self._backoff.pop(key, None)
            await self._release_finished(cached)
            return
        # no condition for it: a Job's conditions are final (Failed), an old spec may be fixed
        require_workload_spec(cached)
        job = copy.deepcopy(cached)
        status: dict[str, Any] = copy.deepcopy(job.get("status") or {})
        uncounted = status.setdefault("uncountedTerminatedPods", {})
        satisfied = self.expectations.satisfied(key)
        pods = await claim(self.client, PODS, job, self._selector(job), list(self.pods.items(ns)),
                           can_adopt=recheck_owner(self.client, JOBS, job), adopt_finalizer=TRACKING_FINALIZER)
        removed = self._finalizers_removed.get(key, set())
        pods = [_without_finalizer(p) if uid_of(p) in removed else p for p in pods]
        active_pods = [p for p in pods if is_active(p)]
        terminating = sum(1 for p in pods if is_terminating(p))
        ready = sum(1 for p in active_pods if is_ready(p))
        active = len(active_pods)
        uncounted_s, uncounted_f = set(uncounted.get("succeeded") or []), set(uncounted.get("failed") or [])
        new_succeeded = [p for p in pods if has_finalizer(p) and phase(p) == "Succeeded"
                         and uid_of(p) not in uncounted_s and uid_of(p) not in uncounted_f]
        new_failed = [p for p in pods if has_finalizer(p) and is_pod_failed(p, job) and uid_of(p) not in uncounted_f
                      and uid_of(p) not in uncounted_s]
        succeeded = int(status.get("succeeded") or 0) + len(new_succeeded) + len(uncounted_s)
        failed = int(status.get("failed") or 0) + len(new_failed) + len(uncounted_f)
        self._note_backoff(key, new_succeeded, new_failed)
        suspended = bool(job["spec"].get("suspend"))
        now = utcnow()
        if not status.get("startTime") and not suspended:
            status["startTime"] = format_time(now)

        finished = self._interim_condition(status)
        if finished is None:
            target = get_condition(status, "FailureTarget")
            if target is not None and target.get("status") == "True":
                finished = {"type": "FailureTarget", "reason": target.get("reason", ""),
                            "message": target.get("message", "")}
        requeue: float | None = None
        if finished is None:
            if failed > int(job["spec"].get("backoffLimit", 6)) or self._past_backoff_on_failure(job, pods):
                finished = {"type": "FailureTarget", "reason": "BackoffLimitExceeded",
                            "message": "Job has reached the specified backoff limit"}
            elif self._past_deadline(job, status, now):
                finished = {"type": "FailureTarget", "reason": "DeadlineExceeded",
                            "message": "Job was active longer than specified deadline"}
            elif job["spec"].get("activeDeadlineSeconds") is not None and not suspended:
                started = parse_time(status.get("startTime")) or now
                requeue = max(int(job["spec"]["activeDeadlineSeconds"]) - (now - started).total_seconds(), 0.1)

        succeeded_indexes: set[int] = set()
        if is_indexed(job):
            succeeded_indexes = self._succeeded_indexes(job, pods)
            succeeded = len(succeeded_indexes)

        if finished is not None:
            deleted = await self._delete_pods(key, job, active_pods)
            if deleted != active or not satisfied:
                finished = None
            active -= deleted
            terminating += deleted
            ready = 0
        else:
            manage_called = False
            if satisfied and not is_deleting(job):
                active, wait = await self._manage(key, job, active_pods, succeeded, succeeded_indexes)
                manage_called = True
                if wait is not None:
                    requeue = wait if requeue is None else min(requeue, wait)
            completions = job["spec"].get("completions")
            if completions is None:
                complete = succeeded > 0 and active == 0
            else:
                complete = succeeded >= int(completions) and active == 0
            if complete:
                finished = {"type": "SuccessCriteriaMet", "reason": "CompletionsReached",
                            "message": "Reached expected number of succeeded pods"}
            elif manage_called:
                self._suspend_conditions(job, status, suspended, now)
        status["active"] = active
        status["ready"] = ready
        status["terminating"] = terminating
        await self._track(job, status, pods, finished, succeeded_indexes, terminating)
        if requeue is not None:
            raise Requeue(requeue)

    def _interim_condition(self, status: Obj) -> Obj | None:
        cond = get_condition(status, "SuccessCriteriaMet")
        if cond is not None and cond.get("status") == "True":
            return {"type": "SuccessCriteriaMet", "reason": cond.get("reason", ""), "message": cond.get("message", "")}
        return None

    def _past_deadline(self, job: Obj, status: Obj, now: dt.datetime) -> bool:
        deadline = job["spec"].get("activeDeadlineSeconds")
        started = parse_time(status.get("startTime"))
        if deadline is None or started is None or job["spec"].get("suspend"):
            return False
        return (now - started).total_seconds() >= int(deadline)

    def _past_backoff_on_failure(self, job: Obj, pods: list[Obj]) -> bool:
        """With restartPolicy OnFailure, container restarts count toward backoffLimit."""
        spec = (job["spec"].get("template") or {}).get("spec") or {}
        if spec.get("restartPolicy") != "OnFailure":
            return False
        restarts = 0
        for pod in pods:
            if phase(pod) in ("Running", "Pending"):
                st = pod.get("status") or {}
                for cs in [*(st.get("initContainerStatuses") or []), *(st.get("containerStatuses") or [])]:
                    restarts += int(cs.get("restartCount") or 0)
        limit = int(job["spec"].get("backoffLimit", 6))
        return restarts > 0 and restarts >= limit if limit == 0 else restarts > limit

    def _note_backoff(self, key: str, new_succeeded: list[Obj], new_failed: list[Obj]) -> None:
        counted = self._counted.setdefault(key, set())
        failures, last = self._backoff.get(key, (0, None))
        if any(uid_of(p) not in counted for p in new_succeeded):
            failures, last = 0, None
        for pod in new_failed:
            if uid_of(pod) in counted:
                continue
            failures += 1
            finished = _finished_at(pod) or utcnow()
            last = finished if last is None or finished > last else last
        counted.update(uid_of(p) for p in [*new_succeeded, *new_failed])
        self._backoff[key] = (failures, last)

    def _backoff_left(self, key: str) -> float:
        failures, last = self._backoff.get(key, (0, None))
        if failures == 0 or last is None:
            return 0.0
        left = backoff_delay(failures) - (utcnow() - last).total_seconds()
        return max(left, 0.0)

    def _succeeded_indexes(self, job: Obj, pods: list[Obj]) -> set[int]:
        completions = int(job["spec"].get("completions") or 0)
        found = parse_indexes((job.get("status") or {}).get("completedIndexes"))
        for pod in pods:
            ix = completion_index(pod)
            if phase(pod) == "Succeeded" and ix is not None and ix < completions:
                found.add(ix)
        return {i for i in found if i < completions}

    def _suspend_conditions(self, job: Obj, status: Obj, suspended: bool, now: dt.datetime) -> None:
        stamp = format_time(now)
        if suspended:
            if set_condition(status, "Suspended", "True", "JobSuspended", "Job suspended", now=stamp, probe_time=True):
                self.record(job, "Normal", "Suspended", "Job suspended")
        elif get_condition(status, "Suspended") is not None:
            if set_condition(status, "Suspended", "False", "JobResumed", "Job resumed", now=stamp, probe_time=True):
                self.record(job, "Normal", "Resumed", "Job resumed")
                status["startTime"] = stamp

    # --- pods -------------------------------------------------------------------------------

    async def _manage(self, key: str, job: Obj, active_pods: list[Obj], succeeded: int,
                      succeeded_indexes: set[int]) -> tuple[int, float | None]:
        active = len(active_pods)
        if job["spec"].get("suspend"):
            deleted = await self._delete_pods(key, job, active_pods)
            return active - deleted, None
        want = want_active(job, succeeded)
        if is_indexed(job):
            completions = int(job["spec"].get("completions") or 0)
            # duplicates of an index, or pods of finished indexes, go
            seen: set[int] = set()
            extra: list[Obj] = []
            for pod in sorted(active_pods, key=lambda p: meta(p).get("creationTimestamp") or ""):
                ix = completion_index(pod)
                if ix is None or ix >= completions or ix in succeeded_indexes or ix in seen:
                    extra.append(pod)
                else:
                    seen.add(ix)
            if extra:
                active -= await self._delete_pods(key, job, extra)
        if active > want:
            victims = deletion_order(active_pods)[:active - want]
            active -= await self._delete_pods(key, job, victims)
            return active, None
        if active >= want:
            return active, None
        wait = self._backoff_left(key)
        if wait > 0:
            return active, wait
        diff = min(want - active, MAX_PODS_PER_SYNC)
        indexes: list[int | None] = [None] * diff
        if is_indexed(job):
            completions = int(job["spec"].get("completions") or 0)
            busy = {completion_index(p) for p in active_pods} | succeeded_indexes
            indexes = [i for i in range(completions) if i not in busy][:diff]  # type: ignore[misc]
        created = 0
        for batch in slow_start_batches(len(indexes)):
            chunk, indexes = indexes[:batch], indexes[batch:]
            results = await asyncio.gather(*(self._create_pod(key, job, ix) for ix in chunk), return_exceptions=True)
            errors = [r for r in results if isinstance(r, BaseException)]
            created += len(chunk) - len(errors)
            if errors:
                self.record(job, "Warning", "FailedCreate", f"Error creating: {errors[0]}")
                break
        return active + created, None

    async def _create_pod(self, key: str, job: Obj, index: int | None) -> None:
        template = copy.deepcopy(job["spec"].get("template") or {})
        labels = template.setdefault("metadata", {}).setdefault("labels", {})
        for label, value in ((CONTROLLER_UID, uid_of(job)), (JOB_NAME, name_of(job)),
                             (LEGACY_CONTROLLER_UID, uid_of(job)), (LEGACY_JOB_NAME, name_of(job))):
            labels.setdefault(label, value)
        prefix = f"{name_of(job)}-"
        if index is not None:
            template["metadata"].setdefault("annotations", {})[COMPLETION_INDEX] = str(index)
            labels[COMPLETION_INDEX] = str(index)
            spec = template.setdefault("spec", {})
            spec.setdefault("hostname", f"{name_of(job)}-{index}")
            env = {"name": "JOB_COMPLETION_INDEX", "valueFrom": {"fieldRef": {
                "fieldPath": f"metadata.labels['{COMPLETION_INDEX}']"}}}
            for c in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]:
                if not any(e.get("name") == "JOB_COMPLETION_INDEX" for e in c.get("env") or []):
                    c.setdefault("env", []).append(copy.deepcopy(env))
            prefix = f"{name_of(job)}-{index}-"
        pod = pod_from_template(template, owner_reference(job), generate_name=prefix, namespace=meta(job)["namespace"])
        finalizers = pod["metadata"].setdefault("finalizers", [])
        if TRACKING_FINALIZER not in finalizers:
            finalizers.append(TRACKING_FINALIZER)
        created = await self.client.create(PODS, pod, meta(job)["namespace"])
        if self.pods.get(key_of(created)) is None:
            self.expectations.expect_creation(key, key_of(created))
        self.record(job, "Normal", "SuccessfulCreate", f"Created pod: {name_of(created)}")

    async def _delete_pods(self, key: str, job: Obj, pods: list[Obj]) -> int:
        async def one(pod: Obj) -> bool:
            try:
                await self.client.delete(PODS, name_of(pod), meta(pod)["namespace"],
                                         preconditions={"uid": uid_of(pod)})
            except ApiError as e:
                if e.not_found:
                    return True
                if e.conflict:
                    return False
                raise
            current = self.pods.get(key_of(pod))
            if current is not None and not is_deleting(current):
                self.expectations.expect_deletion(key, key_of(pod))
            self.record(job, "Normal", "SuccessfulDelete", f"Deleted pod: {name_of(pod)}")
            return True

        results = await asyncio.gather(*(one(p) for p in pods))
        return sum(1 for r in results if r)

    async def _remove_finalizer(self, pod: Obj) -> bool:
        try:
            await self.client.patch(PODS, name_of(pod), {"metadata": {
                "$deleteFromPrimitiveList/finalizers": [TRACKING_FINALIZER]}}, meta(pod)["namespace"],
                patch_type="strategic")
        except ApiError as e:
            if not e.not_found:
                raise
        return True

    async def _release_finished(self, job: Obj) -> None:
        """Pods of a finished Job keep no tracking finalizer."""
        ns = meta(job)["namespace"]
        left = [p for p in self.pods.items(ns) if has_finalizer(p) and controller_ref(p) is not None
                and controller_ref(p).get("uid") == uid_of(job)]
        await asyncio.gather(*(self._remove_finalizer(p) for p in left))

    # --- counting ---------------------------------------------------------------------------

    async def _track(self, job: Obj, status: Obj, pods: list[Obj], finished: Obj | None,
                     succeeded_indexes: set[int], terminating: int) -> None:
        uncounted = status["uncountedTerminatedPods"]
        uncounted.setdefault("succeeded", [])
        uncounted.setdefault("failed", [])
        with_finalizer = {uid_of(p) for p in pods if has_finalizer(p)}
        self._flush_counted(status, with_finalizer)
        indexed = is_indexed(job)
        completions = int(job["spec"].get("completions") or 0)
        to_release: list[Obj] = []
        for pod in pods:
            if not has_finalizer(pod):
                continue
            failed = is_pod_failed(pod, job)
            if not (is_deleting(job) or finished is not None or phase(pod) == "Succeeded" or failed):
                continue
            to_release.append(pod)
            uid = uid_of(pod)
            if phase(pod) == "Succeeded" and uid not in uncounted["failed"]:
                if not indexed and uid not in uncounted["succeeded"]:
                    uncounted["succeeded"].append(uid)
            elif failed or (finished is not None and finished["type"] != "SuccessCriteriaMet"):
                ix = completion_index(pod)
                if uid not in uncounted["failed"] and (not indexed or (ix is not None and ix < completions)):
                    uncounted["failed"].append(uid)
        if indexed:
            status["completedIndexes"] = format_indexes(succeeded_indexes)
            status["succeeded"] = len(succeeded_indexes)
        final: Obj | None = None
        stamp = format_time()
        if finished is not None:
            interim = finished["type"]
            final_type = "Complete" if interim == "SuccessCriteriaMet" else "Failed"
            cond = get_condition(status, interim)
            if cond is None or cond.get("status") != "True":
                set_condition(status, interim, "True", finished["reason"], finished["message"], now=stamp,
                              probe_time=True)
            final = {"type": final_type, "reason": finished["reason"], "message": finished["message"]}
        await self._write(job, status)
        if to_release:
            self._finalizers_removed.setdefault(key_of(job), set()).update(uid_of(p) for p in to_release)
            await asyncio.gather(*(self._remove_finalizer(p) for p in to_release))
            for pod in to_release:
                with_finalizer.discard(uid_of(pod))
        self._flush_counted(status, with_finalizer)
        if final is not None and not uncounted["succeeded"] and not uncounted["failed"] and terminating == 0:
            set_condition(status, final["type"], "True", final["reason"], final["message"], now=stamp,
                          probe_time=True)
            if final["type"] == "Complete":
                status["completionTime"] = stamp
                self.record(job, "Normal", "Completed", "Job completed")
            else:
                self.record(job, "Warning", final["reason"], final["message"])
        await self._write(job, status)

    @staticmethod
    def _flush_counted(status: Obj, with_finalizer: set[str]) -> None:
        uncounted = status["uncountedTerminatedPods"]
        for field in ("succeeded", "failed"):
            kept = [u for u in uncounted.get(field) or [] if u in with_finalizer]
            gone = len(uncounted.get(field) or []) - len(kept)
            if gone:
                status[field] = int(status.get(field) or 0) + gone
            uncounted[field] = kept

    async def _write(self, job: Obj, status: Obj) -> None:
        out = dict(status)
        unc = {k: v for k, v in (status.get("uncountedTerminatedPods") or {}).items() if v}
        out["uncountedTerminatedPods"] = unc
        for field in ("succeeded", "failed", "active"):
            if not out.get(field):
                out.pop(field, None)
        if out == (job.get("status") or {}):
            return
        # A full write guarded by resourceVersion: counting from a stale Job must fail, not double count.
        body = copy.deepcopy(job)
        body["status"] = out
        stored = await self.client.update_status(JOBS, body)
        job["status"] = copy.deepcopy(stored.get("status") or {})
        job["metadata"] = stored["metadata"]


def _without_finalizer(pod: Obj) -> Obj:
    copied = copy.deepcopy(pod)
    copied["metadata"]["finalizers"] = [f for f in copied["metadata"].get("finalizers") or []
                                        if f != TRACKING_FINALIZER]
    return copied


def _finished_at(pod: Obj) -> dt.datetime | None:
    latest = None
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        when = parse_time(((cs.get("state") or {}).get("terminated") or {}).get("finishedAt"))
        if when and (latest is None or when > latest):
            latest = when
    return latest
