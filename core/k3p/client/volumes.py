"""Facts and pure functions about PersistentVolumes and claims, shared by every component that binds them.

The PV binder (controller-manager), the scheduler's volume binding and storage
provisioners all decide the same questions (which volume fits a claim, whether a claim
waits for its first consumer, which class is the default), as Kubernetes'
``component-helpers/storage/volume`` package does for its components.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from k3p.client.api import Obj
from k3p.client.nodeaffinity import node_selector_matches
from k3p.client.objects import annotations_of, is_deleting, meta, name_of, namespace_of, uid_of
from k3p.quantity import QuantityError, value
from k3p.selectors import SelectorError, label_selector_from_dict

ANN_BIND_COMPLETED = "pv.kubernetes.io/bind-completed"
ANN_BOUND_BY_CONTROLLER = "pv.kubernetes.io/bound-by-controller"
ANN_PROVISIONED_BY = "pv.kubernetes.io/provisioned-by"
ANN_STORAGE_PROVISIONER = "volume.kubernetes.io/storage-provisioner"
ANN_BETA_STORAGE_PROVISIONER = "volume.beta.kubernetes.io/storage-provisioner"
ANN_SELECTED_NODE = "volume.kubernetes.io/selected-node"
ANN_BETA_STORAGE_CLASS = "volume.beta.kubernetes.io/storage-class"
ANN_DEFAULT_CLASS = "storageclass.kubernetes.io/is-default-class"
ANN_BETA_DEFAULT_CLASS = "storageclass.beta.kubernetes.io/is-default-class"
#: the provisioner of classes for volumes that are only ever created by hand (local volumes)
NO_PROVISIONER = "kubernetes.io/no-provisioner"
WAIT_FOR_FIRST_CONSUMER = "WaitForFirstConsumer"
FILESYSTEM = "Filesystem"

# --- reading claims, volumes and classes --------------------------------------------------------


def claim_class(pvc: Mapping[str, Any]) -> str:
    """The claim's class name ("" for none); the beta annotation wins, as in kube."""
    beta = annotations_of(pvc).get(ANN_BETA_STORAGE_CLASS)
    if beta is not None:
        return beta
    return (pvc.get("spec") or {}).get("storageClassName") or ""


def class_unset(pvc: Mapping[str, Any]) -> bool:
    """Whether the claim names no class at all (``storageClassName: ""`` is a choice, not unset)."""
    return ANN_BETA_STORAGE_CLASS not in annotations_of(pvc) and (pvc.get("spec") or {}).get(
        "storageClassName") is None


def volume_class(pv: Mapping[str, Any]) -> str:
    """The volume's class name ("" for none); the beta annotation wins, as in kube."""
    beta = annotations_of(pv).get(ANN_BETA_STORAGE_CLASS)
    if beta is not None:
        return beta
    return (pv.get("spec") or {}).get("storageClassName") or ""


def _bytes(quantity: Any) -> int:
    if quantity is None:
        return 0
    try:
        return value(quantity)
    except QuantityError:
        return 0


def requested_storage(pvc: Mapping[str, Any]) -> int:
    """What the claim asks for, in bytes (0 when it names no size)."""
    resources = (pvc.get("spec") or {}).get("resources") or {}
    return _bytes((resources.get("requests") or {}).get("storage"))


def volume_capacity(pv: Mapping[str, Any]) -> int:
    return _bytes(((pv.get("spec") or {}).get("capacity") or {}).get("storage"))


def volume_mode(spec: Mapping[str, Any] | None) -> str:
    """A claim's or volume's volumeMode (the API's default is Filesystem)."""
    return (spec or {}).get("volumeMode") or FILESYSTEM


def access_modes(obj: Mapping[str, Any]) -> frozenset[str]:
    return frozenset((obj.get("spec") or {}).get("accessModes") or ())


def phase_of(obj: Mapping[str, Any]) -> str:
    return (obj.get("status") or {}).get("phase") or ""


def reclaim_policy(pv: Mapping[str, Any]) -> str:
    """The volume's reclaim policy (the API's default for a volume made by hand is Retain)."""
    return (pv.get("spec") or {}).get("persistentVolumeReclaimPolicy") or "Retain"


def claim_ref(pvc: Mapping[str, Any]) -> Obj:
    """The ObjectReference a volume's ``claimRef`` holds for ``pvc``."""
    ref = {"kind": "PersistentVolumeClaim", "namespace": namespace_of(pvc), "name": name_of(pvc),
           "uid": uid_of(pvc), "apiVersion": "v1", "resourceVersion": meta(pvc).get("resourceVersion")}
    return {k: v for k, v in ref.items() if v}


def is_bound_to_claim(pv: Mapping[str, Any], pvc: Mapping[str, Any]) -> bool:
    """The volume's claimRef names this claim (and, when it records a uid, this very claim)."""
    ref = (pv.get("spec") or {}).get("claimRef")
    if not ref:
        return False
    if ref.get("name") != name_of(pvc) or ref.get("namespace") != namespace_of(pvc):
        return False
    return not ref.get("uid") or ref.get("uid") == uid_of(pvc)


def is_fully_bound(pvc: Mapping[str, Any]) -> bool:
    """The binder finished this claim: it names its volume and carries ``bind-completed``."""
    return bool((pvc.get("spec") or {}).get("volumeName")) and ANN_BIND_COMPLETED in annotations_of(pvc)


def volume_node_affinity_matches(pv: Mapping[str, Any], node: Mapping[str, Any]) -> bool:
    """Whether ``node`` may use the volume (``spec.nodeAffinity.required``; none allows every node)."""
    required = ((pv.get("spec") or {}).get("nodeAffinity") or {}).get("required")
    if required is None:
        return True
    return node_selector_matches(required, node)


def is_default_class(sc: Mapping[str, Any]) -> bool:
    ann = annotations_of(sc)
    return ann.get(ANN_DEFAULT_CLASS) == "true" or ann.get(ANN_BETA_DEFAULT_CLASS) == "true"


def default_class(classes: Iterable[Obj]) -> Obj | None:
    """The default StorageClass; with several, the newest one (kube's choice since 1.26)."""
    defaults = [c for c in classes if is_default_class(c)]
    if not defaults:
        return None
    return max(defaults, key=lambda c: (meta(c).get("creationTimestamp") or "", name_of(c)))


def is_delay_binding(pvc: Mapping[str, Any], classes: Mapping[str, Obj]) -> bool:
    """Whether the claim's class waits for its first consumer (a missing class binds at once)."""
    name = claim_class(pvc)
    if not name:
        return False
    sc = classes.get(name)
    return sc is not None and sc.get("volumeBindingMode") == WAIT_FOR_FIRST_CONSUMER


# --- matching -------------------------------------------------------------------------------------


def _selector_matches(pvc: Mapping[str, Any], pv: Mapping[str, Any]) -> bool:
    selector = (pvc.get("spec") or {}).get("selector")
    if selector is None:
        return True
    try:
        return label_selector_from_dict(selector).matches(meta(pv).get("labels") or {})
    except SelectorError:
        return False


def _match_in(pvc: Mapping[str, Any], volumes: list[Obj], node: Mapping[str, Any] | None,
              delay_binding: bool, excluded: frozenset[str]) -> Obj | None:
    requested = requested_storage(pvc)
    wanted_class = claim_class(pvc)
    wanted_mode = volume_mode(pvc.get("spec"))
    smallest: Obj | None = None
    for pv in volumes:
        if name_of(pv) in excluded:
            continue
        ref = (pv.get("spec") or {}).get("claimRef")
        bound_here = is_bound_to_claim(pv, pvc)
        if ref and not bound_here:
            continue
        size = volume_capacity(pv)
        if size < requested or volume_mode(pv.get("spec")) != wanted_mode or is_deleting(pv):
            continue
        affinity_ok = node is None or volume_node_affinity_matches(pv, node)
        if bound_here:
            # a volume pre-bound to the claim is its only choice
            return pv if affinity_ok else None
        if node is None and delay_binding:
            continue  # the scheduler picks volumes for claims that wait for their consumer
        if phase_of(pv) != "Available" or not _selector_matches(pvc, pv):
            continue
        if volume_class(pv) != wanted_class or not affinity_ok:
            continue
        if smallest is None or size < volume_capacity(smallest):
            smallest = pv
    return smallest


def find_matching_volume(pvc: Mapping[str, Any], volumes: Iterable[Obj], *, node: Mapping[str, Any] | None = None,
                         delay_binding: bool = False, excluded: Iterable[str] = ()) -> Obj | None:
    """The volume the claim should bind to, or None: kube's FindMatchingVolume over its access-mode index.

    Volumes whose access modes include the claim's are tried in groups with the fewest
    modes first; in a group a volume pre-bound to the claim wins, else the smallest fit.
    ``node`` (the scheduler's question) also requires the volume's node affinity to allow
    it; without a node, ``delay_binding`` claims only take volumes pre-bound to them.
    """
    wanted = access_modes(pvc)
    groups: dict[frozenset[str], list[Obj]] = {}
    for pv in volumes:
        modes = access_modes(pv)
        if wanted <= modes:
            groups.setdefault(modes, []).append(pv)
    skip = frozenset(excluded)
    for modes in sorted(groups, key=lambda m: (len(m), sorted(m))):
        found = _match_in(pvc, groups[modes], node, delay_binding, skip)
        if found is not None:
            return found
    return None


def volume_mismatch(pv: Mapping[str, Any], pvc: Mapping[str, Any]) -> str:
    """Why a volume the claim names cannot serve it ("" when it can): kube's checkVolumeSatisfyClaim."""
    if volume_capacity(pv) < requested_storage(pvc):
        return "requested PV is too small"
    if volume_class(pv) != claim_class(pvc):
        return "storageClassName does not match"
    if volume_mode(pv.get("spec")) != volume_mode(pvc.get("spec")):
        return "incompatible volumeMode"
    if not access_modes(pvc) <= access_modes(pv):
        return "incompatible accessMode"
    return ""
