"""``POST pods/NAME/eviction``: a pod deletion that respects its PodDisruptionBudget.

The rules are upstream's (pkg/registry/core/pod/storage/eviction.go): a pod that is
terminal, pending or already being deleted is simply deleted; so is one no budget
selects. With one budget, a healthy pod is deleted only when ``status.disruptionsAllowed``
is above zero, after the budget's status records the disruption (decrement plus
``disruptedPods[pod]``) with a compare-and-swap write; otherwise the answer is 429, which
``kubectl drain`` retries. An unready pod follows the budget's
``unhealthyPodEvictionPolicy``. More than one budget is a 500, as upstream answers.
"""

from __future__ import annotations

import asyncio
import copy
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from k3p.apiserver import bodies
from k3p.apiserver.errors import APIError, bad_request, conflict, method_not_allowed
from k3p.apiserver.handlers import ResourceHandlers, _Retry
from k3p.apiserver.registry import Registry
from k3p.apiserver.request_info import RequestAttributes
from k3p.client.objects import format_time, set_condition
from k3p.selectors import SelectorError, label_selector_from_dict

Obj = dict[str, Any]

#: Eviction bodies of these group-versions are accepted (upstream's AcceptsGroupVersion)
ACCEPTED_VERSIONS = ("policy/v1", "policy/v1beta1")
#: evictions approved but not yet seen by the disruption controller, past which more are refused
MAX_DISRUPTED_PODS = 2000
#: conflicts retried before giving up (upstream: 20 steps)
RETRIES = 20
RETRY_PAUSE = 0.05

VIOLATION = "Cannot evict pod as it would violate the pod's disruption budget."
MULTIPLE_BUDGETS = "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support."


def _too_many_requests(cause: str, retry_after: int) -> APIError:
    details: Obj = {"causes": [{"reason": "DisruptionBudget", "message": cause}]}
    if retry_after:
        details["retryAfterSeconds"] = retry_after
    return APIError(429, VIOLATION, "TooManyRequests", details)


def _still_processing(pdb_name: str) -> APIError:
    return _too_many_requests(f"The disruption budget {pdb_name} is still being processed by the server.", 10)


def _forbidden(pdb_name: str, why: str) -> APIError:
    return APIError(403, f'poddisruptionbudget.policy "{pdb_name}" is forbidden: {why}', "Forbidden",
                    {"name": pdb_name, "group": "policy", "kind": "poddisruptionbudget"})


def is_pod_ready(pod: Obj) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (pod.get("status") or {}).get("conditions") or [])


def _can_ignore_budget(pod: Obj) -> bool:
    return (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed", "Pending") or \
        bool(pod["metadata"].get("deletionTimestamp"))


def _should_enforce_resource_version(pod: Obj) -> bool:
    return (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed") and \
        not pod["metadata"].get("deletionTimestamp")


def update_disruption_allowed_condition(pdb: Obj) -> None:
    """The ``DisruptionAllowed`` condition from ``status.disruptionsAllowed`` (upstream's pdb helper)."""
    status = pdb.setdefault("status", {})
    allowed = (status.get("disruptionsAllowed") or 0) > 0
    set_condition(status, "DisruptionAllowed", "True" if allowed else "False",
                  "SufficientPods" if allowed else "InsufficientPods")
    for cond in status["conditions"]:
        if cond["type"] == "DisruptionAllowed":
            cond["observedGeneration"] = status.get("observedGeneration", 0)
            cond.setdefault("message", "")


class Evictor:
    """The eviction subresource over the API server's handlers (reads from its watch cache)."""

    def __init__(self, handlers: ResourceHandlers, registry: Registry) -> None:
        self.handlers = handlers
        self.pods = registry.get("", "v1", "pods")
        self.pdbs = registry.get("policy", "v1", "poddisruptionbudgets")

    async def handle(self, request: Request, attrs: RequestAttributes, raw: bytes) -> Response:
        if attrs.verb != "create":
            raise method_not_allowed()
        body = bodies.decode(raw, bodies.media_type(request))
        options = self._options(request, attrs, body)
        ns, name = attrs.namespace, attrs.name
        status = await self.evict(ns, name, options)
        if status.get("status") != "Success":
            return bodies.json_response(status, status["code"])
        return bodies.json_response({**status, "code": 201}, 201)

    @staticmethod
    def _options(request: Request, attrs: RequestAttributes, body: Any) -> Obj:
        if not isinstance(body, dict):
            raise bad_request("the object provided is not an Eviction: expected a JSON object")
        kind, api_version = body.get("kind"), body.get("apiVersion")
        if api_version and api_version not in ACCEPTED_VERSIONS:
            raise bad_request(f"the API version in the data ({api_version}) does not match the expected API "
                              f"version (policy/v1)")
        if kind and kind != "Eviction":
            raise bad_request(f'the kind in the data ("{kind}") does not match the expected kind ("Eviction")')
        meta = body.get("metadata") or {}
        if not isinstance(meta, dict):
            raise bad_request("metadata: must be an object")
        if meta.get("namespace") and meta["namespace"] != attrs.namespace:
            raise bad_request("the namespace of the provided object does not match the namespace sent on the "
                              "request")
        if meta.get("name") != attrs.name:
            raise bad_request("name in URL does not match name in Eviction object")
        options = body.get("deleteOptions") or {}
        if not isinstance(options, dict):
            raise bad_request("deleteOptions: must be an object")
        options = copy.deepcopy(options)
        query_dry = ["All"] if bodies.dry_run({}, request) else []
        body_dry = options.get("dryRun") or []
        if not isinstance(body_dry, list) or any(v != "All" for v in body_dry):
            raise bad_request(f'deleteOptions.dryRun: Unsupported value: "{body_dry}": supported values: "All"')
        if query_dry and body_dry and query_dry != body_dry:
            raise APIError(500, f"Non-matching dry-run options in request and content: {query_dry} and {body_dry}")
        options["dryRun"] = body_dry or query_dry
        policy = options.get("propagationPolicy")
        if policy and policy not in ("Orphan", "Background", "Foreground"):
            raise bad_request(f'propagationPolicy: Unsupported value: "{policy}": supported values: '
                              f'"Foreground", "Background", "Orphan"')
        grace = options.get("gracePeriodSeconds")
        if grace is not None and (not isinstance(grace, int) or isinstance(grace, bool)):
            raise bad_request("deleteOptions.gracePeriodSeconds: must be an integer")
        return options

    # --- the eviction ---------------------------------------------------------------------

    async def evict(self, ns: str, name: str, options: Obj) -> Obj:
        """Evict one pod; the answer is a ``Status`` (Success, or the 500 of several budgets)."""
        user_rv = (options.get("preconditions") or {}).get("resourceVersion")
        pod: Obj = {}
        pod_rv = ""
        for attempt in range(RETRIES):
            current = await self.handlers._current(self.pods, ns, name)
            pod, pod_rv = current.obj, str(current.rv)
            if not _can_ignore_budget(pod):
                break
            wanted = options
            if _should_enforce_resource_version(pod) and not user_rv:
                wanted = _with_resource_version(options, pod_rv)
            try:
                await self._delete(ns, name, wanted)
            except APIError as e:
                # a user's own resourceVersion precondition is not retried, as upstream
                if e.code != 409 or user_rv or attempt == RETRIES - 1:
                    raise
                await asyncio.sleep(RETRY_PAUSE)
                continue
            return bodies.success_status()

        budgets = self._budgets_of(pod)
        if len(budgets) > 1:
            return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                    "message": MULTIPLE_BUDGETS, "code": 500}
        pin_version = False
        pdb_name = ""
        if budgets:
            pdb = budgets[0]
            pdb_name = pdb["metadata"]["name"]
            spec, status = pdb.get("spec") or {}, pdb.get("status") or {}
            unhealthy_ok = False
            if not is_pod_ready(pod):
                if spec.get("unhealthyPodEvictionPolicy") == "AlwaysAllow":
                    unhealthy_ok = True
                elif (status.get("currentHealthy") or 0) >= (status.get("desiredHealthy") or 0) > 0:
                    # the application is not disrupted now: an unready pod may go without counting
                    unhealthy_ok = True
            if unhealthy_ok:
                pin_version = True
            else:
                await self._check_and_decrement(ns, name, pdb_name, bool(options.get("dryRun")))

        wanted = options
        if pin_version:
            wanted = _with_resource_version(options, pod_rv)
        try:
            await self._delete(ns, name, wanted)
        except APIError as e:
            if e.code == 409 and pin_version and not user_rv:
                # the pod changed (maybe became ready) since the budget was judged: let the client retry
                raise _still_processing(pdb_name) from None
            raise
        return bodies.success_status()

    def _budgets_of(self, pod: Obj) -> list[Obj]:
        ns = pod["metadata"].get("namespace")
        labels = pod["metadata"].get("labels") or {}
        found = []
        for item in self.handlers.cache.items(self.pdbs.key_prefix(None), self.pdbs.key_prefix(ns)):
            try:
                selector = label_selector_from_dict((item.obj.get("spec") or {}).get("selector"))
            except SelectorError:
                continue  # an invalid selector matches no pod
            if selector.matches(labels):
                found.append(item.obj)
        return found

    async def _check_and_decrement(self, ns: str, pod_name: str, pdb_name: str, dry: bool) -> None:
        """Record the disruption in the budget's status, or refuse it (429/403)."""
        for _ in range(RETRIES):
            item = await self.handlers._current(self.pdbs, ns, pdb_name)
            pdb = copy.deepcopy(item.obj)
            status = pdb.setdefault("status", {})
            allowed = status.get("disruptionsAllowed") or 0
            if (status.get("observedGeneration") or 0) < (pdb["metadata"].get("generation") or 0):
                raise _still_processing(pdb_name)
            if allowed < 0:
                raise _forbidden(pdb_name, "pdb disruptions allowed is negative")
            if len(status.get("disruptedPods") or {}) > MAX_DISRUPTED_PODS:
                raise _forbidden(pdb_name, "DisruptedPods map too big - too many evictions not confirmed by "
                                           "PDB controller")
            if allowed == 0:
                raise _too_many_requests(
                    f"The disruption budget {pdb_name} needs {status.get('desiredHealthy') or 0} healthy pods "
                    f"and has {status.get('currentHealthy') or 0} currently", 0)
            status["disruptionsAllowed"] = allowed - 1
            if allowed - 1 == 0:
                update_disruption_allowed_condition(pdb)
            if dry:
                return
            status["disruptedPods"] = {**(status.get("disruptedPods") or {}), pod_name: format_time()}
            try:
                await self.handlers._store_update(self.pdbs, item.key, item, pdb)
            except _Retry:
                continue
            return
        raise APIError(504, f'Timeout: couldn\'t update PodDisruptionBudget "{pdb_name}" due to conflicts',
                       "Timeout", {"retryAfterSeconds": 10})

    async def _delete(self, ns: str, name: str, options: Obj) -> None:
        """Mark the pod as a disruption target (unless dry run), then delete it with ``options``."""
        pre = dict(options.get("preconditions") or {})
        dry = bool(options.get("dryRun"))
        if not dry:
            pre = await self._mark_disruption_target(ns, name, pre)
        grace = options.get("gracePeriodSeconds")
        await self.handlers.delete_object(self.pods, ns, name, grace, options.get("propagationPolicy"), pre, dry)

    async def _mark_disruption_target(self, ns: str, name: str, pre: Obj) -> Obj:
        for _ in range(RETRIES):
            current = await self.handlers._current(self.pods, ns, name)
            meta = current.obj["metadata"]
            if pre.get("uid") and pre["uid"] != meta.get("uid"):
                raise conflict("", "Pod", name, f"the UID in the precondition ({pre['uid']}) does not match the "
                                                f"UID in record ({meta.get('uid')}). The object might have been "
                                                "deleted and then recreated")
            if pre.get("resourceVersion") and pre["resourceVersion"] != str(current.rv):
                raise conflict("", "Pod", name, f"the ResourceVersion in the precondition "
                                                f"({pre['resourceVersion']}) does not match the ResourceVersion "
                                                f"in record ({current.rv}). The object might have been modified")
            pod = copy.deepcopy(current.obj)
            status = pod.setdefault("status", {})
            if not set_condition(status, "DisruptionTarget", "True", "EvictionByEvictionAPI",
                                 "Eviction API: evicting"):
                return pre
            try:
                stored = await self.handlers._store_update(self.pods, current.key, current, pod)
            except _Retry:
                continue
            if pre.get("resourceVersion"):
                # our own write moved the version the caller pinned
                pre = {**pre, "resourceVersion": stored["metadata"]["resourceVersion"]}
            return pre
        raise conflict("", "pods", name, "too many concurrent writes; try again")


def _with_resource_version(options: Obj, rv: str) -> Obj:
    out = copy.deepcopy(options)
    out["preconditions"] = {**(out.get("preconditions") or {}), "resourceVersion": rv}
    return out

