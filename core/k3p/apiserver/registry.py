"""The resource types the API server serves.

Everything about a type's *shape* (fields, descriptions, required fields, GVKs) comes from
:mod:`k3p.apiserver.schemas`. What the schemas do not say (plural names, short names,
categories, scope, verbs, subresources, where objects are stored) is the compact table
below, taken from the discovery documents of a Kubernetes v1.32 API server.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from k3p.apiserver import schemas

VERBS_ALL = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")
# Namespaces cannot be deleted as a collection.
VERBS_NAMESPACE = ("create", "delete", "get", "list", "patch", "update", "watch")
VERBS_CREATE_ONLY = ("create",)
# Custom resources list their verbs in this (unsorted) order in kube's discovery.
VERBS_CUSTOM_RESOURCE = ("delete", "deletecollection", "get", "list", "patch", "create", "update", "watch")


@dataclass(frozen=True)
class Subresource:
    """What a subresource returns (``group``/``version`` None: those of its parent) and allows."""

    kind: str | None
    verbs: tuple[str, ...]
    group: str | None = None
    version: str | None = None


# kind None: the parent's kind.
SUBRESOURCES: Mapping[str, Subresource] = {
    "status": Subresource(None, ("get", "patch", "update")),
    "scale": Subresource("Scale", ("get", "patch", "update"), "autoscaling", "v1"),
    "finalize": Subresource(None, ("update",)),
    "log": Subresource("Pod", ("get",)),
    "exec": Subresource("PodExecOptions", ("create", "get")),
    "attach": Subresource("PodAttachOptions", ("create", "get")),
    "portforward": Subresource("PodPortForwardOptions", ("create", "get")),
    "binding": Subresource("Binding", ("create",)),
    "eviction": Subresource("Eviction", ("create",), "policy", "v1"),
    "ephemeralcontainers": Subresource("Pod", ("get", "patch", "update")),
    "token": Subresource("TokenRequest", ("create",), "authentication.k8s.io", "v1"),
}


@dataclass(frozen=True)
class ResourceType:
    """One resource of one group-version, e.g. apps/v1 deployments."""

    group: str
    version: str
    resource: str
    kind: str
    singular: str
    namespaced: bool
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    verbs: tuple[str, ...] = VERBS_ALL
    subresources: tuple[str, ...] = ()
    # OpenAPI definition name of a built-in type; None for custom resources.
    definition: str | None = None
    # The openAPIV3Schema of a custom resource (or a plugin's own type).
    schema: dict[str, Any] | None = field(default=None, compare=False, repr=False)
    list_kind: str = ""
    # The group-version objects are stored as (others are converted on the way).
    storage_group: str | None = None
    storage_version: str | None = None
    # Where objects live in the datastore, e.g. "/registry/services/specs".
    storage_prefix: str = ""
    # additionalPrinterColumns of a custom resource, for the Table printer.
    printer_columns: tuple[dict[str, Any], ...] = field(default=(), compare=False, repr=False)
    # The CRD's scale subresource paths (specReplicasPath, statusReplicasPath, labelSelectorPath).
    scale_paths: dict[str, str] | None = field(default=None, compare=False, repr=False)
    # spec.versions[].selectableFields[].jsonPath of a custom resource.
    selectable_fields: tuple[str, ...] = ()
    deprecation_warning: str | None = None
    custom: bool = False

    def __post_init__(self) -> None:
        if not self.list_kind:
            object.__setattr__(self, "list_kind", self.kind + "List")
        if self.storage_group is None:
            object.__setattr__(self, "storage_group", self.group)
        if self.storage_version is None:
            object.__setattr__(self, "storage_version", self.version)
        if not self.storage_prefix:
            prefix = f"/registry/{self.group}/{self.resource}" if self.custom else f"/registry/{self.resource}"
            object.__setattr__(self, "storage_prefix", prefix)

    @property
    def api_version(self) -> str:
        """``v1`` for the core group, ``group/version`` otherwise."""
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def group_resource(self) -> str:
        """``deployments.apps``, or ``pods`` for the core group (kube's error-message form)."""
        return f"{self.resource}.{self.group}" if self.group else self.resource

    @property
    def storage_api_version(self) -> str:
        """The apiVersion objects are stored as, e.g. ``autoscaling/v2`` for both HPA versions."""
        g, v = self.storage_group, self.storage_version
        return f"{g}/{v}" if g else str(v)

    @property
    def scope(self) -> str:
        """``Namespaced`` or ``Cluster``, as discovery spells it."""
        return "Namespaced" if self.namespaced else "Cluster"

    def key_prefix(self, namespace: str | None = None) -> str:
        """The datastore prefix of all objects, or of those of one namespace (trailing slash)."""
        if self.namespaced and namespace:
            return f"{self.storage_prefix}/{namespace}/"
        return f"{self.storage_prefix}/"

    def storage_key(self, namespace: str | None, name: str) -> str:
        """``/registry/pods/default/x``; cluster-scoped objects have no namespace segment."""
        if self.namespaced:
            if not namespace:
                raise ValueError(f"{self.group_resource} is namespaced: a namespace is needed")
            return f"{self.storage_prefix}/{namespace}/{name}"
        return f"{self.storage_prefix}/{name}"

    def subresource(self, name: str) -> Subresource:
        """Kind and verbs of one of this type's subresources (group/version filled in)."""
        if name not in self.subresources:
            raise KeyError(name)
        sub = SUBRESOURCES[name]
        if sub.kind is None:
            return Subresource(self.kind, sub.verbs, self.group, self.version)
        if sub.group is None:
            return Subresource(sub.kind, sub.verbs, self.group, self.version)
        return sub

    def schema_node(self) -> dict[str, Any] | None:
        """The type's schema: a definition from :mod:`schemas`, or the custom schema."""
        if self.definition:
            return schemas.definitions()[self.definition]
        return self.schema


# group/version, resource, kind, N(amespaced)|C(luster), short names, categories, subresources, verbs.
_C, _N = False, True
_BUILTINS: tuple[tuple[Any, ...], ...] = (
    ("v1", "bindings", "Binding", _N, "", "", "", VERBS_CREATE_ONLY),
    ("v1", "configmaps", "ConfigMap", _N, "cm", "", ""),
    ("v1", "endpoints", "Endpoints", _N, "ep", "", ""),
    ("v1", "events", "Event", _N, "ev", "", ""),
    ("v1", "limitranges", "LimitRange", _N, "limits", "", ""),
    ("v1", "namespaces", "Namespace", _C, "ns", "", "finalize status", VERBS_NAMESPACE),
    ("v1", "nodes", "Node", _C, "no", "", "status"),
    ("v1", "persistentvolumeclaims", "PersistentVolumeClaim", _N, "pvc", "", "status"),
    ("v1", "persistentvolumes", "PersistentVolume", _C, "pv", "", "status"),
    ("v1", "pods", "Pod", _N, "po", "all",
     "attach binding ephemeralcontainers eviction exec log portforward status"),
    ("v1", "replicationcontrollers", "ReplicationController", _N, "rc", "all", "scale status"),
    ("v1", "resourcequotas", "ResourceQuota", _N, "quota", "", "status"),
    ("v1", "secrets", "Secret", _N, "", "", ""),
    ("v1", "serviceaccounts", "ServiceAccount", _N, "sa", "", "token"),
    ("v1", "services", "Service", _N, "svc", "all", "status"),
    ("apps/v1", "controllerrevisions", "ControllerRevision", _N, "", "", ""),
    ("apps/v1", "daemonsets", "DaemonSet", _N, "ds", "all", "status"),
    ("apps/v1", "deployments", "Deployment", _N, "deploy", "all", "scale status"),
    ("apps/v1", "replicasets", "ReplicaSet", _N, "rs", "all", "scale status"),
    ("apps/v1", "statefulsets", "StatefulSet", _N, "sts", "all", "scale status"),
    ("events.k8s.io/v1", "events", "Event", _N, "ev", "", ""),
    ("authentication.k8s.io/v1", "selfsubjectreviews", "SelfSubjectReview", _C, "", "", "", VERBS_CREATE_ONLY),
    ("authentication.k8s.io/v1", "tokenreviews", "TokenReview", _C, "", "", "", VERBS_CREATE_ONLY),
    ("authorization.k8s.io/v1", "localsubjectaccessreviews", "LocalSubjectAccessReview", _N, "", "", "",
     VERBS_CREATE_ONLY),
    ("authorization.k8s.io/v1", "selfsubjectaccessreviews", "SelfSubjectAccessReview", _C, "", "", "",
     VERBS_CREATE_ONLY),
    ("authorization.k8s.io/v1", "selfsubjectrulesreviews", "SelfSubjectRulesReview", _C, "", "", "",
     VERBS_CREATE_ONLY),
    ("authorization.k8s.io/v1", "subjectaccessreviews", "SubjectAccessReview", _C, "", "", "", VERBS_CREATE_ONLY),
    ("autoscaling/v2", "horizontalpodautoscalers", "HorizontalPodAutoscaler", _N, "hpa", "all", "status"),
    ("autoscaling/v1", "horizontalpodautoscalers", "HorizontalPodAutoscaler", _N, "hpa", "all", "status"),
    ("batch/v1", "cronjobs", "CronJob", _N, "cj", "all", "status"),
    ("batch/v1", "jobs", "Job", _N, "", "all", "status"),
    ("networking.k8s.io/v1", "ingressclasses", "IngressClass", _C, "", "", ""),
    ("networking.k8s.io/v1", "ingresses", "Ingress", _N, "ing", "", "status"),
    ("networking.k8s.io/v1", "networkpolicies", "NetworkPolicy", _N, "netpol", "", ""),
    ("policy/v1", "poddisruptionbudgets", "PodDisruptionBudget", _N, "pdb", "", "status"),
    ("rbac.authorization.k8s.io/v1", "clusterrolebindings", "ClusterRoleBinding", _C, "", "", ""),
    ("rbac.authorization.k8s.io/v1", "clusterroles", "ClusterRole", _C, "", "", ""),
    ("rbac.authorization.k8s.io/v1", "rolebindings", "RoleBinding", _N, "", "", ""),
    ("rbac.authorization.k8s.io/v1", "roles", "Role", _N, "", "", ""),
    ("storage.k8s.io/v1", "storageclasses", "StorageClass", _C, "sc", "", ""),
    ("apiextensions.k8s.io/v1", "customresourcedefinitions", "CustomResourceDefinition", _C, "crd crds",
     "api-extensions", "status"),
    ("scheduling.k8s.io/v1", "priorityclasses", "PriorityClass", _C, "pc", "", ""),
    ("coordination.k8s.io/v1", "leases", "Lease", _N, "", "", ""),
    ("discovery.k8s.io/v1", "endpointslices", "EndpointSlice", _N, "", "", ""),
)

# Where kube keeps what is not under "/registry/<resource>", and versions that share storage.
_STORAGE_PREFIX = {
    ("", "services"): "/registry/services/specs",
    ("", "endpoints"): "/registry/services/endpoints",
    ("", "nodes"): "/registry/minions",
    ("", "replicationcontrollers"): "/registry/controllers",
    ("networking.k8s.io", "ingresses"): "/registry/ingress",
    ("apiextensions.k8s.io", "customresourcedefinitions"): "/registry/apiextensions.k8s.io/customresourcedefinitions",
}
_STORAGE_VERSION = {
    ("autoscaling", "horizontalpodautoscalers"): ("autoscaling", "v2"),
    ("events.k8s.io", "events"): ("", "v1"),
}

# Group order in discovery: kube's APIService groupPriorityMinimum of the built-in groups.
GROUP_PRIORITY: Mapping[str, int] = {
    "": 18000,
    "apps": 17800,
    "events.k8s.io": 17750,
    "authentication.k8s.io": 17700,
    "authorization.k8s.io": 17600,
    "autoscaling": 17500,
    "batch": 17400,
    "certificates.k8s.io": 17300,
    "networking.k8s.io": 17200,
    "policy": 17100,
    "rbac.authorization.k8s.io": 17000,
    "storage.k8s.io": 16800,
    "admissionregistration.k8s.io": 16700,
    "apiextensions.k8s.io": 16700,
    "scheduling.k8s.io": 16600,
    "coordination.k8s.io": 16500,
    "node.k8s.io": 16300,
    "discovery.k8s.io": 16200,
    "flowcontrol.apiserver.k8s.io": 16100,
}
# What kube gives the APIServices of CRD groups.
CUSTOM_GROUP_PRIORITY = 1000

_KUBE_VERSION = re.compile(r"^v(\d+)(?:(alpha|beta)(\d+))?$")


def version_sort_key(version: str) -> tuple[int, int, int, str]:
    """Sort key giving kube's version order: v2 > v1 > v1beta2 > v1beta1 > v1alpha1 > others (by name)."""
    m = _KUBE_VERSION.match(version)
    if not m:
        return (3, 0, 0, version)
    major, stage, minor = int(m.group(1)), m.group(2), int(m.group(3) or 0)
    rank = {None: 0, "beta": 1, "alpha": 2}[stage]
    return (rank, -major, -minor, "")


@dataclass(frozen=True)
class GroupInfo:
    """One API group as discovery shows it: versions in preference order."""

    name: str
    versions: tuple[str, ...]

    @property
    def preferred_version(self) -> str:
        """The version clients use when they do not name one."""
        return self.versions[0]


class Registry:
    """The served resource types; CRDs and plugins add and remove types at run time."""

    def __init__(self, types: Iterable[ResourceType] = ()) -> None:
        self._by_gvr: dict[tuple[str, str, str], ResourceType] = {}
        self._by_gvk: dict[tuple[str, str, str], ResourceType] = {}
        self._gv_generation: dict[tuple[str, str], int] = {}
        self.generation = 0
        for rt in types:
            self.add(rt)

    def __iter__(self) -> Iterator[ResourceType]:
        return iter(list(self._by_gvr.values()))

    def __len__(self) -> int:
        return len(self._by_gvr)

    def __contains__(self, gvr: object) -> bool:
        return gvr in self._by_gvr

    def _changed(self, group: str, version: str) -> None:
        self.generation += 1
        self._gv_generation[(group, version)] = self.generation

    def gv_generation(self, group: str, version: str) -> int:
        """Changes whenever a type of this group-version is added or removed (cache key)."""
        return self._gv_generation.get((group, version), 0)

    def add(self, rt: ResourceType) -> None:
        """Add or replace the type at (group, version, resource)."""
        key = (rt.group, rt.version, rt.resource)
        old = self._by_gvr.get(key)
        if old is not None:
            self._by_gvk.pop((old.group, old.version, old.kind), None)
        self._by_gvr[key] = rt
        self._by_gvk[(rt.group, rt.version, rt.kind)] = rt
        self._changed(rt.group, rt.version)

    def remove(self, group: str, version: str, resource: str) -> ResourceType | None:
        """Remove one type; returns it, or None if it was not there."""
        rt = self._by_gvr.pop((group, version, resource), None)
        if rt is not None:
            if self._by_gvk.get((rt.group, rt.version, rt.kind)) is rt:
                del self._by_gvk[(rt.group, rt.version, rt.kind)]
            self._changed(group, version)
        return rt

    def set_resource_versions(self, group: str, resource: str, types: Iterable[ResourceType]) -> None:
        """Make ``types`` the only versions of group/resource served (a CRD created or changed)."""
        for rt in [rt for rt in self._by_gvr.values() if rt.group == group and rt.resource == resource]:
            self.remove(rt.group, rt.version, rt.resource)
        for rt in types:
            self.add(rt)

    def get(self, group: str, version: str, resource: str) -> ResourceType | None:
        """The type served at /apis/{group}/{version}/{resource}, or None."""
        return self._by_gvr.get((group, version, resource))

    def by_kind(self, group: str, version: str, kind: str) -> ResourceType | None:
        """Look a type up by its GVK (e.g. from an object's apiVersion and kind)."""
        return self._by_gvk.get((group, version, kind))

    def by_api_version(self, api_version: str, kind: str) -> ResourceType | None:
        """Look a type up by an object's ``apiVersion`` and ``kind``."""
        group, _, version = api_version.rpartition("/")
        return self.by_kind(group, version, kind)

    def versions_of(self, group: str, resource: str) -> list[ResourceType]:
        """Every served version of one resource, preferred first."""
        found = [rt for rt in self._by_gvr.values() if rt.group == group and rt.resource == resource]
        return sorted(found, key=lambda rt: version_sort_key(rt.version))

    def find(self, name: str) -> list[ResourceType]:
        """Types a user may mean by ``name`` (plural, singular, short name, kind, ``plural.group``).

        Preferred versions of higher-priority groups come first, as kubectl would resolve them.
        """
        wanted = name.lower()
        group_filter: str | None = None
        if "." in wanted:
            wanted, _, group_filter = wanted.partition(".")
        hits = []
        for rt in self._by_gvr.values():
            if group_filter is not None and rt.group != group_filter:
                continue
            if wanted in (rt.resource, rt.singular, rt.kind.lower()) or wanted in rt.short_names:
                hits.append(rt)
        order = {g.name: i for i, g in enumerate(self.groups())}
        return sorted(hits, key=lambda rt: (order.get(rt.group, 1 << 30), version_sort_key(rt.version)))

    def groups(self) -> list[GroupInfo]:
        """Served groups in kube's discovery order, each with its versions preferred first."""
        versions: dict[str, set[str]] = {}
        for group, version, _ in self._by_gvr:
            versions.setdefault(group, set()).add(version)
        names = sorted(versions, key=lambda g: (-GROUP_PRIORITY.get(g, CUSTOM_GROUP_PRIORITY), g))
        return [GroupInfo(g, tuple(sorted(versions[g], key=version_sort_key))) for g in names]

    def group(self, name: str) -> GroupInfo | None:
        """One served group, or None."""
        return next((g for g in self.groups() if g.name == name), None)

    def resources(self, group: str, version: str) -> list[ResourceType]:
        """The types of one group-version, by resource name."""
        found = [rt for (g, v, _), rt in self._by_gvr.items() if g == group and v == version]
        return sorted(found, key=lambda rt: rt.resource)


def _builtin_types() -> Iterator[ResourceType]:
    for row in _BUILTINS:
        gv, resource, kind, namespaced, short, categories, subresources = row[:7]
        verbs = row[7] if len(row) > 7 else VERBS_ALL
        group, _, version = gv.rpartition("/")
        definition = schemas.definition_name_for(group, version, kind)
        if definition is None:
            raise LookupError(f"no schema for {gv} {kind}")
        storage_group, storage_version = _STORAGE_VERSION.get((group, resource), (group, version))
        prefix = _STORAGE_PREFIX.get((group, resource), f"/registry/{resource}")
        yield ResourceType(
            group=group,
            version=version,
            resource=resource,
            kind=kind,
            singular=kind.lower(),
            namespaced=namespaced,
            short_names=tuple(short.split()),
            categories=tuple(categories.split()),
            verbs=tuple(verbs),
            subresources=tuple(subresources.split()),
            definition=definition,
            storage_group=storage_group,
            storage_version=storage_version,
            storage_prefix=prefix,
        )


def builtin_registry() -> Registry:
    """A registry holding the built-in types k3p serves."""
    return Registry(_builtin_types())


def is_stored(rt: ResourceType) -> bool:
    """False for create-only types that are answered at once and never written."""
    return not (rt.verbs == VERBS_CREATE_ONLY and not rt.custom)
