"""Per-type rules applied on every write: names, defaults, generation, what status writes may change.

This is the part of each Kubernetes registry ``strategy`` that clients can observe. The
type schemas come from :mod:`k3p.apiserver.schemas`; what is here is behaviour.
"""

from __future__ import annotations

import copy
import re
import secrets
import uuid
from typing import Any

from k3p.apiserver.registry import ResourceType
from k3p.client.objects import format_time

Obj = dict[str, Any]

_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
#: generateName suffix alphabet of Kubernetes (no vowels, no look-alike digits)
_SUFFIX_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"

#: kinds whose names must be DNS-1123 labels rather than subdomains
_LABEL_NAMED = {("", "namespaces")}
#: kinds whose names must be DNS-1035 labels (they become DNS names inside the cluster)
_DNS1035_NAMED = {("", "services")}
#: kinds named by free path segments (RBAC objects allow ':' as in system:masters)
_PATH_SEGMENT_NAMED = {
    ("rbac.authorization.k8s.io", r)
    for r in ("roles", "clusterroles", "rolebindings", "clusterrolebindings")
}
#: built-in kinds whose spec changes count as a new generation
_GENERATION_EXEMPT = {("", "pods"), ("", "nodes"), ("", "namespaces"), ("", "persistentvolumes"),
                      ("", "persistentvolumeclaims"), ("", "services")}


def generate_name(prefix: str) -> str:
    return prefix + "".join(secrets.choice(_SUFFIX_ALPHABET) for _ in range(5))


def name_problems(rt: ResourceType, name: str) -> list[str]:
    """Kubernetes' messages for an invalid object name (empty list if it is fine)."""
    if not name:
        return ["name or generateName is required"]
    gr = (rt.group, rt.resource)
    if gr in _PATH_SEGMENT_NAMED:
        if name in (".", "..") or "/" in name or "%" in name:
            return [f'"{name}" may not contain \'/\' or \'%\' and may not be \'.\' or \'..\'']
        return []
    if gr in _LABEL_NAMED:
        pattern, what, example, limit = _DNS1123_LABEL, "RFC 1123 label", "'my-name',  or '123-abc'", 63
        regex = "[a-z0-9]([-a-z0-9]*[a-z0-9])?"
    elif gr in _DNS1035_NAMED:
        pattern, what, example, limit = _DNS1035_LABEL, "RFC 1035 label", "'my-name',  or 'abc-123'", 63
        regex = "[a-z]([-a-z0-9]*[a-z0-9])?"
    else:
        pattern, what, example, limit = _DNS1123_SUBDOMAIN, "RFC 1123 subdomain", "'example.com'", 253
        regex = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
    problems = []
    if len(name) > limit:
        problems.append(f"must be no more than {limit} characters")
    if not pattern.match(name):
        if what == "RFC 1123 subdomain":
            problems.append(
                f"a lowercase {what} must consist of lower case alphanumeric characters, '-' or '.', and must "
                f"start and end with an alphanumeric character (e.g. {example}, regex used for validation is "
                f"'{regex}')"
            )
        elif what == "RFC 1035 label":
            problems.append(
                f"a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an "
                f"alphabetic character, and end with an alphanumeric character (e.g. {example}, regex used for "
                f"validation is '{regex}')"
            )
        else:
            problems.append(
                f"a lowercase {what} must consist of lower case alphanumeric characters or '-', and must start "
                f"and end with an alphanumeric character (e.g. {example}, regex used for validation is "
                f"'{regex}')"
            )
    return problems


def has_status(rt: ResourceType) -> bool:
    return "status" in rt.subresources


def tracks_generation(rt: ResourceType) -> bool:
    return (rt.group, rt.resource) not in _GENERATION_EXEMPT


def spec_of(obj: Obj) -> Obj:
    """Everything but metadata and status: what a generation change is measured on."""
    return {k: v for k, v in obj.items() if k not in ("metadata", "status", "apiVersion", "kind")}


def prepare_create(rt: ResourceType, obj: Obj) -> None:
    """Server-set metadata and per-type defaults of a new object (in place)."""
    meta = obj.setdefault("metadata", {})
    meta["uid"] = str(uuid.uuid4())
    meta["creationTimestamp"] = format_time()
    for key in ("resourceVersion", "deletionTimestamp", "deletionGracePeriodSeconds", "selfLink"):
        meta.pop(key, None)
    if tracks_generation(rt):
        meta["generation"] = 1
    else:
        meta.pop("generation", None)
    if has_status(rt) and rt.custom:
        obj.pop("status", None)  # a custom resource's status is written through /status only
    default = _DEFAULTS.get((rt.group, rt.resource))
    if default:
        default(obj)


def prepare_update(rt: ResourceType, old: Obj, new: Obj, subresource: str = "") -> Obj:
    """What an update of ``old`` to ``new`` stores: immutable metadata kept, status rules applied."""
    new = copy.deepcopy(new)
    meta = new.setdefault("metadata", {})
    old_meta = old.get("metadata", {})
    for key in ("uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "generation"):
        if key in old_meta:
            meta[key] = old_meta[key]
        else:
            meta.pop(key, None)
    meta.pop("selfLink", None)
    if subresource == "status":
        # A status write changes status only (and may touch labels/annotations, as in kube).
        result = copy.deepcopy(old)
        result["status"] = new.get("status", {})
        for key in ("labels", "annotations"):
            if key in meta:
                result["metadata"][key] = meta[key]
        result["metadata"]["managedFields"] = meta.get("managedFields", old_meta.get("managedFields"))
        if result["metadata"]["managedFields"] is None:
            result["metadata"].pop("managedFields")
        return result
    if has_status(rt):
        if "status" in old:
            new["status"] = copy.deepcopy(old["status"])
        else:
            new.pop("status", None)
    default = _DEFAULTS.get((rt.group, rt.resource))
    if default:
        default(new)
    if tracks_generation(rt) and spec_of(old) != spec_of(new):
        meta["generation"] = int(old_meta.get("generation", 1)) + 1
        if (rt.group, rt.resource) == ("apps", "daemonsets"):
            meta.setdefault("annotations", {})["deprecated.daemonset.template.generation"] = str(meta["generation"])
    return new


# --- defaults clients see ---------------------------------------------------------------------


def _container_defaults(c: Obj) -> None:
    c.setdefault("terminationMessagePath", "/dev/termination-log")
    c.setdefault("terminationMessagePolicy", "File")
    image = c.get("image", "")
    tagless = ":" not in image.rsplit("/", 1)[-1] and "@" not in image
    c.setdefault("imagePullPolicy", "Always" if tagless or image.endswith(":latest") else "IfNotPresent")
    c.setdefault("resources", {})
    for port in c.get("ports", []) or []:
        port.setdefault("protocol", "TCP")


def _pod_spec_defaults(spec: Obj) -> None:
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("securityContext", {})
    spec.setdefault("schedulerName", "default-scheduler")
    spec.setdefault("enableServiceLinks", True)
    for c in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]:
        _container_defaults(c)


def _pod_defaults(pod: Obj) -> None:
    spec = pod.setdefault("spec", {})
    _pod_spec_defaults(spec)
    spec.setdefault("serviceAccountName", spec.get("serviceAccount") or "default")
    spec.setdefault("serviceAccount", spec["serviceAccountName"])
    spec.setdefault("priority", 0)
    spec.setdefault("preemptionPolicy", "PreemptLowerPriority")
    tolerations = spec.setdefault("tolerations", [])
    # What kube's DefaultTolerationSeconds admission adds: pods leave an unreachable node after 5 min.
    for key in ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"):
        if not any(t.get("key") == key for t in tolerations):
            tolerations.append({"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300})
    status = pod.setdefault("status", {})
    status.setdefault("phase", "Pending")
    status.setdefault("qosClass", qos_class(spec))


def qos_class(spec: Obj) -> str:
    """Guaranteed, Burstable or BestEffort, from the containers' requests and limits."""
    containers = [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]
    any_set = False
    guaranteed = True
    for c in containers:
        res = c.get("resources") or {}
        req, lim = res.get("requests") or {}, res.get("limits") or {}
        if req or lim:
            any_set = True
        for r in ("cpu", "memory"):
            if r not in lim or (r in req and str(req[r]) != str(lim[r])):
                guaranteed = False
    if not any_set:
        return "BestEffort"
    return "Guaranteed" if guaranteed else "Burstable"


def _template_defaults(obj: Obj) -> None:
    template = obj.get("spec", {}).get("template")
    if isinstance(template, dict):
        _pod_spec_defaults(template.setdefault("spec", {}))
        template.setdefault("metadata", {}).setdefault("creationTimestamp", None)


def _deployment_defaults(d: Obj) -> None:
    spec = d.setdefault("spec", {})
    spec.setdefault("replicas", 1)
    spec.setdefault("revisionHistoryLimit", 10)
    spec.setdefault("progressDeadlineSeconds", 600)
    strategy = spec.setdefault("strategy", {})
    strategy.setdefault("type", "RollingUpdate")
    if strategy["type"] == "RollingUpdate":
        ru = strategy.setdefault("rollingUpdate", {})
        ru.setdefault("maxUnavailable", "25%")
        ru.setdefault("maxSurge", "25%")
    _template_defaults(d)


def _replicaset_defaults(rs: Obj) -> None:
    rs.setdefault("spec", {}).setdefault("replicas", 1)
    _template_defaults(rs)


def _statefulset_defaults(s: Obj) -> None:
    spec = s.setdefault("spec", {})
    spec.setdefault("replicas", 1)
    spec.setdefault("podManagementPolicy", "OrderedReady")
    spec.setdefault("revisionHistoryLimit", 10)
    strategy = spec.setdefault("updateStrategy", {"type": "RollingUpdate"})
    if strategy.get("type") == "RollingUpdate":
        strategy.setdefault("rollingUpdate", {}).setdefault("partition", 0)
    _template_defaults(s)


def _daemonset_defaults(ds: Obj) -> None:
    spec = ds.setdefault("spec", {})
    meta = ds.setdefault("metadata", {})
    if meta.get("generation"):
        meta.setdefault("annotations", {})["deprecated.daemonset.template.generation"] = str(meta["generation"])
    spec.setdefault("revisionHistoryLimit", 10)
    strategy = spec.setdefault("updateStrategy", {"type": "RollingUpdate"})
    if strategy.get("type") == "RollingUpdate":
        ru = strategy.setdefault("rollingUpdate", {})
        ru.setdefault("maxUnavailable", 1)
        ru.setdefault("maxSurge", 0)
    _template_defaults(ds)


def _job_defaults(job: Obj) -> None:
    spec = job.setdefault("spec", {})
    meta = job.get("metadata") or {}
    uid, name = meta.get("uid"), meta.get("name")
    if uid and not spec.get("manualSelector"):
        # kube's job strategy: the selector and pod labels tie the Job's pods to this Job's uid
        labels = {"batch.kubernetes.io/controller-uid": uid, "batch.kubernetes.io/job-name": name,
                  "controller-uid": uid, "job-name": name}
        spec.setdefault("selector", {"matchLabels": {"batch.kubernetes.io/controller-uid": uid}})
        template_meta = spec.setdefault("template", {}).setdefault("metadata", {})
        template_meta["labels"] = {**(template_meta.get("labels") or {}), **labels}
    spec.setdefault("completions", 1) if "parallelism" not in spec or spec.get("completions") is not None else None
    spec.setdefault("parallelism", 1)
    spec.setdefault("backoffLimit", 6)
    spec.setdefault("completionMode", "NonIndexed")
    spec.setdefault("suspend", False)
    template = spec.get("template")
    if isinstance(template, dict):
        _pod_spec_defaults(template.setdefault("spec", {}))


def _cronjob_defaults(cj: Obj) -> None:
    spec = cj.setdefault("spec", {})
    spec.setdefault("concurrencyPolicy", "Allow")
    spec.setdefault("suspend", False)
    spec.setdefault("successfulJobsHistoryLimit", 3)
    spec.setdefault("failedJobsHistoryLimit", 1)


def _service_defaults(svc: Obj) -> None:
    spec = svc.setdefault("spec", {})
    spec.setdefault("type", "ClusterIP")
    spec.setdefault("sessionAffinity", "None")
    if spec["type"] != "ExternalName":
        spec.setdefault("internalTrafficPolicy", "Cluster")
        spec.setdefault("ipFamilies", ["IPv4"])
        spec.setdefault("ipFamilyPolicy", "SingleStack")
    if spec["type"] in ("NodePort", "LoadBalancer"):
        spec.setdefault("externalTrafficPolicy", "Cluster")
    for port in spec.get("ports") or []:
        port.setdefault("protocol", "TCP")
        port.setdefault("targetPort", port.get("port"))
    svc.setdefault("status", {}).setdefault("loadBalancer", {})


def _namespace_defaults(ns: Obj) -> None:
    ns.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
    ns.setdefault("status", {}).setdefault("phase", "Active")
    labels = ns["metadata"].setdefault("labels", {})
    labels["kubernetes.io/metadata.name"] = ns["metadata"].get("name", "")


def _secret_defaults(secret: Obj) -> None:
    secret.setdefault("type", "Opaque")


def _claim_defaults(pvc: Obj) -> None:
    pvc.setdefault("spec", {}).setdefault("volumeMode", "Filesystem")
    pvc.setdefault("status", {}).setdefault("phase", "Pending")


def _volume_defaults(pv: Obj) -> None:
    spec = pv.setdefault("spec", {})
    spec.setdefault("persistentVolumeReclaimPolicy", "Retain")
    spec.setdefault("volumeMode", "Filesystem")
    pv.setdefault("status", {}).setdefault("phase", "Pending")


def _storage_class_defaults(sc: Obj) -> None:
    sc.setdefault("reclaimPolicy", "Delete")
    sc.setdefault("volumeBindingMode", "Immediate")


_DEFAULTS = {
    ("", "pods"): _pod_defaults,
    ("", "persistentvolumeclaims"): _claim_defaults,
    ("", "persistentvolumes"): _volume_defaults,
    ("storage.k8s.io", "storageclasses"): _storage_class_defaults,
    ("", "services"): _service_defaults,
    ("", "namespaces"): _namespace_defaults,
    ("", "secrets"): _secret_defaults,
    ("apps", "deployments"): _deployment_defaults,
    ("apps", "replicasets"): _replicaset_defaults,
    ("", "replicationcontrollers"): _replicaset_defaults,
    ("apps", "statefulsets"): _statefulset_defaults,
    ("apps", "daemonsets"): _daemonset_defaults,
    ("batch", "jobs"): _job_defaults,
    ("batch", "cronjobs"): _cronjob_defaults,
}
