"""The Node authorizer: a kubelet reads only what the pods bound to its node need.

Requests of a node (user ``system:node:<name>`` in group ``system:nodes``) are decided as
Kubernetes' Node authorizer decides them:

- Secrets and ConfigMaps: ``get``, ``list`` and ``watch`` of one named object (a list or
  watch pins the name with ``fieldSelector=metadata.name=x``), only when a pod bound to the
  node refers to it (volumes, projected sources, env, envFrom, imagePullSecrets, or through
  a PersistentVolume of one of the pod's claims).
- PersistentVolumeClaims and PersistentVolumes: ``get`` of the claims of the node's pods and
  the volumes bound to them; claims' ``status`` may be updated; VolumeAttachments of the
  node may be read.
- ``serviceaccounts/token``: ``create`` for the service accounts the node's pods run as.
- Leases and CSINodes: only the node's own (leases in ``kube-node-lease``).
- Everything else: the static rules of the ``system:node`` ClusterRole.

"Refused" here means no opinion with a reason, so a RoleBinding an administrator made for
the node can still allow a request. Which node a request may touch among objects it is
allowed to write (its own Node, its pods' status) is the NodeRestriction admission's job.

The relations come from a :class:`NodeGraph` kept beside the watch cache: every pod with a
``spec.nodeName`` adds edges from the objects it uses to its node, every bound
PersistentVolume from its secrets to its claim.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import structlog

from k3p.apiserver.bootstrap_policy import NODES_GROUP, node_rules
from k3p.apiserver.rbac import Decision, rule_allows
from k3p.apiserver.request_info import RequestAttributes, UserInfo
from k3p.apiserver.watchcache import CachedObject, WatchEvent

log = structlog.get_logger(__name__)

Obj = dict[str, Any]
#: (resource, namespace, name) of an object a pod or a volume refers to
Ref = tuple[str, str, str]

NODE_USER_PREFIX = "system:node:"
NODE_LEASE_NAMESPACE = "kube-node-lease"


def node_identity(user: UserInfo) -> tuple[str, bool]:
    """``(node name, is a node)`` as Kubernetes' default node identifier tells them.

    A node is a user named ``system:node:<name>`` in the ``system:nodes`` group; such a user
    with nothing after the prefix is a node whose name is unknown.
    """
    if not user.name.startswith(NODE_USER_PREFIX) or NODES_GROUP not in user.groups:
        return "", False
    return user.name[len(NODE_USER_PREFIX):], True


# --- what objects refer to ------------------------------------------------------------------

# Volume sources that name a Secret of the pod's namespace, and the field that names it.
_POD_VOLUME_SECRETS = (("azureFile", "secretName"), ("cephfs", "secretRef"), ("cinder", "secretRef"),
                       ("flexVolume", "secretRef"), ("iscsi", "secretRef"), ("rbd", "secretRef"),
                       ("scaleIO", "secretRef"), ("storageos", "secretRef"), ("csi", "nodePublishSecretRef"))
# PersistentVolume sources with secret references (which may name their own namespace).
_PV_SECRETS = (("azureFile", ("secretName",)), ("cephfs", ("secretRef",)), ("cinder", ("secretRef",)),
               ("flexVolume", ("secretRef",)), ("iscsi", ("secretRef",)), ("rbd", ("secretRef",)),
               ("scaleIO", ("secretRef",)), ("storageos", ("secretRef",)),
               ("csi", ("controllerPublishSecretRef", "nodeStageSecretRef", "nodePublishSecretRef",
                        "controllerExpandSecretRef", "nodeExpandSecretRef")))


def _name_of(value: Any, key: str = "name") -> str:
    if isinstance(value, str):
        return value
    return str(value.get(key) or "") if isinstance(value, Mapping) else ""


def pod_refs(pod: Obj) -> set[Ref]:
    """Every Secret, ConfigMap, PersistentVolumeClaim and ServiceAccount ``pod`` uses."""
    meta, spec = pod.get("metadata") or {}, pod.get("spec") or {}
    ns = meta.get("namespace") or ""
    refs: set[tuple[str, str]] = set()
    for s in spec.get("imagePullSecrets") or ():
        refs.add(("secrets", _name_of(s)))
    containers = [*(spec.get("initContainers") or ()), *(spec.get("containers") or ()),
                  *(spec.get("ephemeralContainers") or ())]
    for c in containers:
        for ef in c.get("envFrom") or ():
            if ef.get("secretRef"):
                refs.add(("secrets", _name_of(ef["secretRef"])))
            if ef.get("configMapRef"):
                refs.add(("configmaps", _name_of(ef["configMapRef"])))
        for e in c.get("env") or ():
            src = e.get("valueFrom") or {}
            if src.get("secretKeyRef"):
                refs.add(("secrets", _name_of(src["secretKeyRef"])))
            if src.get("configMapKeyRef"):
                refs.add(("configmaps", _name_of(src["configMapKeyRef"])))
    for v in spec.get("volumes") or ():
        if v.get("secret"):
            refs.add(("secrets", _name_of(v["secret"], "secretName")))
        if v.get("configMap"):
            refs.add(("configmaps", _name_of(v["configMap"])))
        for source, field in _POD_VOLUME_SECRETS:
            if isinstance(v.get(source), Mapping) and v[source].get(field):
                refs.add(("secrets", _name_of(v[source][field])))
        for p in (v.get("projected") or {}).get("sources") or ():
            if p.get("secret"):
                refs.add(("secrets", _name_of(p["secret"])))
            if p.get("configMap"):
                refs.add(("configmaps", _name_of(p["configMap"])))
        if v.get("persistentVolumeClaim"):
            refs.add(("persistentvolumeclaims", _name_of(v["persistentVolumeClaim"], "claimName")))
        if v.get("ephemeral"):
            # the claim a generic ephemeral volume gets is named after the pod and the volume
            refs.add(("persistentvolumeclaims", f"{meta.get('name', '')}-{v.get('name', '')}"))
    refs.add(("serviceaccounts", spec.get("serviceAccountName") or spec.get("serviceAccount") or "default"))
    return {(resource, ns, name) for resource, name in refs if name}


def pv_claim(pv: Obj) -> tuple[str, str] | None:
    """``(namespace, name)`` of the claim a PersistentVolume is bound to, if any."""
    ref = (pv.get("spec") or {}).get("claimRef") or {}
    if ref.get("namespace") and ref.get("name"):
        return ref["namespace"], ref["name"]
    return None


def pv_secret_refs(pv: Obj) -> set[Ref]:
    """The Secrets a PersistentVolume's source names (in the claim's namespace when it gives none)."""
    spec = pv.get("spec") or {}
    claim = pv_claim(pv)
    default_ns = claim[0] if claim else ""
    refs: set[Ref] = set()
    for source, fields in _PV_SECRETS:
        src = spec.get(source)
        if not isinstance(src, Mapping):
            continue
        for field in fields:
            ref = src.get(field)
            if isinstance(ref, str):
                ns = src.get("secretNamespace") or default_ns
                name = ref
            elif isinstance(ref, Mapping):
                ns, name = ref.get("namespace") or default_ns, ref.get("name") or ""
            else:
                continue
            if ns and name:
                refs.add(("secrets", ns, name))
    return refs


class _Edges:
    """Objects (by storage key) pointing at targets on behalf of an owner, with reverse counts."""

    def __init__(self) -> None:
        self._out: dict[str, tuple[str, frozenset[Ref]]] = {}
        self._in: dict[Ref, dict[str, int]] = {}

    def put(self, key: str, owner: str, refs: Iterable[Ref]) -> None:
        frozen = frozenset(refs)
        if self._out.get(key) == (owner, frozen):
            return
        self.drop(key)
        if not owner or not frozen:
            return
        self._out[key] = (owner, frozen)
        for ref in frozen:
            owners = self._in.setdefault(ref, {})
            owners[owner] = owners.get(owner, 0) + 1

    def drop(self, key: str) -> None:
        old = self._out.pop(key, None)
        if old is None:
            return
        owner, refs = old
        for ref in refs:
            owners = self._in[ref]
            owners[owner] -= 1
            if not owners[owner]:
                del owners[owner]
                if not owners:
                    del self._in[ref]

    def owners(self, ref: Ref) -> Mapping[str, int]:
        return self._in.get(ref) or {}


class NodeGraph:
    """Which node may read what, kept current from the watch cache's pod and volume events.

    Each pod bound to a node adds an edge from everything it uses to that node; each bound
    PersistentVolume adds edges from its secrets to its claim. Each change costs the size of
    the changed object, and each question a dictionary lookup or two: nothing scans pods.
    """

    def __init__(self) -> None:
        self._pods = _Edges()  # pod key -> its node
        self._volumes = _Edges()  # PV key -> its claim ("ns/name")

    def load(self, pods: Iterable[CachedObject], volumes: Iterable[CachedObject]) -> None:
        for item in pods:
            self._put_pod(item.key, item.obj)
        for item in volumes:
            self._put_volume(item.key, item.obj)

    def on_pod(self, event: WatchEvent) -> None:
        if event.type == "DELETED":
            self._pods.drop(event.item.key)
        else:
            self._put_pod(event.item.key, event.item.obj)

    def on_volume(self, event: WatchEvent) -> None:
        if event.type == "DELETED":
            self._volumes.drop(event.item.key)
        else:
            self._put_volume(event.item.key, event.item.obj)

    def _put_pod(self, key: str, pod: Obj) -> None:
        node = (pod.get("spec") or {}).get("nodeName") or ""
        self._pods.put(key, node, pod_refs(pod) if node else ())

    def _put_volume(self, key: str, pv: Obj) -> None:
        claim = pv_claim(pv)
        self._volumes.put(key, f"{claim[0]}/{claim[1]}" if claim else "", pv_secret_refs(pv) if claim else ())

    def used_by_node(self, node: str, ref: Ref) -> bool:
        """Whether a pod bound to ``node`` uses ``ref``, directly or (secrets) through a volume of its claims."""
        if node in self._pods.owners(ref):
            return True
        if ref[0] != "secrets":
            return False
        for claim in self._volumes.owners(ref):
            ns, _, name = claim.partition("/")
            if node in self._pods.owners(("persistentvolumeclaims", ns, name)):
                return True
        return False

    def claim_used_by_node(self, node: str, namespace: str, name: str) -> bool:
        return node in self._pods.owners(("persistentvolumeclaims", namespace, name))


#: looks an object up in the watch cache: (group, resource, namespace, name) -> object or None
Lookup = Callable[[str, str, str, str], Obj | None]


def _no_relationship(node: str) -> Decision:
    return Decision(False, f"no relationship found between node '{node}' and this object")


class NodeAuthorizer:
    """Decides the requests of nodes; every other user gets no opinion (see the module doc)."""

    def __init__(self, graph: NodeGraph, lookup: Lookup) -> None:
        self.graph = graph
        self.lookup = lookup
        self.rules = node_rules()

    def authorize(self, attrs: RequestAttributes) -> Decision | None:
        """The decision for a node's request, or None when the user is not a node."""
        node, is_node = node_identity(attrs.user)
        if not is_node:
            return None
        if not node:
            return Decision(False, f'unknown node for user "{attrs.user.name}"')
        if attrs.is_resource_request:
            decide = self._subdivided.get((attrs.api_group, attrs.resource))
            if decide is not None:
                return decide(self, node, attrs)
        if any(rule_allows(attrs, rule) for rule in self.rules):
            return Decision(True, "")
        return Decision(False, "")

    # -- resources whose access depends on the node's pods

    def _read_namespaced(self, node: str, attrs: RequestAttributes) -> Decision:
        if attrs.verb not in ("get", "list", "watch"):
            return Decision(False, "can only read resources of this type")
        if attrs.subresource:
            return Decision(False, "cannot read subresource")
        if not attrs.namespace:
            return Decision(False, "can only read namespaced object of this type")
        return self._related(node, attrs)

    def _related(self, node: str, attrs: RequestAttributes) -> Decision:
        if not attrs.name:
            return Decision(False, "No Object name found")
        if self.graph.used_by_node(node, (attrs.resource, attrs.namespace, attrs.name)):
            return Decision(True, "")
        return _no_relationship(node)

    def _claims(self, node: str, attrs: RequestAttributes) -> Decision:
        if attrs.subresource == "status":
            if attrs.verb not in ("update", "patch"):
                return Decision(False, "can only get/update/patch this type")
            return self._related(node, attrs)
        return self._get(node, attrs, self._related)

    def _volumes(self, node: str, attrs: RequestAttributes) -> Decision:
        def bound(node: str, attrs: RequestAttributes) -> Decision:
            if not attrs.name:
                return Decision(False, "No Object name found")
            pv = self.lookup("", "persistentvolumes", "", attrs.name)
            claim = pv_claim(pv) if pv else None
            if claim and self.graph.claim_used_by_node(node, *claim):
                return Decision(True, "")
            return _no_relationship(node)

        return self._get(node, attrs, bound)

    def _attachments(self, node: str, attrs: RequestAttributes) -> Decision:
        def attached(node: str, attrs: RequestAttributes) -> Decision:
            if not attrs.name:
                return Decision(False, "No Object name found")
            va = self.lookup("storage.k8s.io", "volumeattachments", "", attrs.name)
            if va and (va.get("spec") or {}).get("nodeName") == node:
                return Decision(True, "")
            return _no_relationship(node)

        return self._get(node, attrs, attached)

    @staticmethod
    def _get(node: str, attrs: RequestAttributes,
             then: Callable[[str, RequestAttributes], Decision]) -> Decision:
        if attrs.verb != "get":
            return Decision(False, "can only get individual resources of this type")
        if attrs.subresource:
            return Decision(False, "cannot get subresource")
        return then(node, attrs)

    def _tokens(self, node: str, attrs: RequestAttributes) -> Decision:
        if attrs.verb != "create" or not attrs.name:
            return Decision(False, "can only create tokens for individual service accounts")
        if attrs.subresource != "token":
            return Decision(False, "can only create token subresource of serviceaccount")
        return self._related(node, attrs)

    # -- the node's own objects

    def _lease(self, node: str, attrs: RequestAttributes) -> Decision:
        if attrs.verb not in ("get", "create", "update", "patch", "delete"):
            return Decision(False, "can only get, create, update, patch, or delete a node lease")
        if attrs.namespace != NODE_LEASE_NAMESPACE:
            return Decision(False, f'can only access leases in the "{NODE_LEASE_NAMESPACE}" system namespace')
        # the name of a create is in the body: NodeRestriction checks it
        if attrs.verb != "create" and attrs.name != node:
            return Decision(False, "can only access node lease with the same name as the requesting node")
        return Decision(True, "")

    def _csinode(self, node: str, attrs: RequestAttributes) -> Decision:
        if attrs.verb not in ("get", "create", "update", "patch", "delete"):
            return Decision(False, "can only get, create, update, patch, or delete a CSINode")
        if attrs.subresource:
            return Decision(False, "cannot authorize CSINode subresources")
        if attrs.verb != "create" and attrs.name != node:
            return Decision(False, "can only access CSINode with the same name as the requesting node")
        return Decision(True, "")

    _subdivided: dict[tuple[str, str], Callable[[NodeAuthorizer, str, RequestAttributes], Decision]] = {
        ("", "secrets"): _read_namespaced,
        ("", "configmaps"): _read_namespaced,
        ("", "persistentvolumeclaims"): _claims,
        ("", "persistentvolumes"): _volumes,
        ("storage.k8s.io", "volumeattachments"): _attachments,
        ("", "serviceaccounts"): _tokens,
        ("coordination.k8s.io", "leases"): _lease,
        ("storage.k8s.io", "csinodes"): _csinode,
    }
