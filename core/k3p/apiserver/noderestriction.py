"""NodeRestriction admission: a node writes only its own objects.

The facts of Kubernetes' NodeRestriction plugin, for requests of a node (see
:func:`~k3p.apiserver.node_authorizer.node_identity`):

- pods: create only mirror pods (``kubernetes.io/config.mirror``) bound to itself, owned by
  its Node (one controller reference with the Node's uid, no blockOwnerDeletion) and using
  no service account, secret, configmap, claim or cluster trust bundle; delete only pods
  bound to itself; update only the ``status`` of pods bound to itself, without changing
  their labels; evict only pods bound to itself;
- nodes: only its own Node; never set labels under ``node-restriction.kubernetes.io/``;
  never change its taints after creation, nor set a new ``configSource``;
- persistentvolumeclaims: only ``status.capacity`` and ``status.conditions``;
- serviceaccounts/token: only tokens bound to a pod (by name and uid) on itself;
- leases: only its own, in ``kube-node-lease``; csinodes: only its own.

Events are not restricted (nor are they upstream). Unlike upstream, labels in the
``kubernetes.io`` and ``k8s.io`` namespaces outside the kubelet's own set are not refused:
k3p's node agent still sets ``node-role.kubernetes.io/*`` on a server's node, and
``--node-label`` values, with the node's credentials.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from k3p.apiserver.admission import CREATE, DELETE, UPDATE, AdmissionAttributes, forbidden
from k3p.apiserver.errors import not_found
from k3p.apiserver.node_authorizer import NODE_LEASE_NAMESPACE, node_identity, pod_refs

Obj = dict[str, Any]
#: (resource, namespace, name) -> the stored object or None
Lookup = Callable[[str, str, str], Obj | None]

MIRROR_POD_ANNOTATION = "kubernetes.io/config.mirror"
RESTRICTED_LABEL_NAMESPACE = "node-restriction.kubernetes.io"


def _meta(obj: Obj | None) -> Obj:
    return (obj or {}).get("metadata") or {}


def _spec(obj: Obj | None) -> Obj:
    return (obj or {}).get("spec") or {}


def _modified_labels(new: Obj | None, old: Obj | None) -> set[str]:
    a, b = _meta(new).get("labels") or {}, _meta(old).get("labels") or {}
    return {k for k in set(a) | set(b) if a.get(k) != b.get(k)}


def _restricted(label: str) -> bool:
    namespace = label.split("/", 1)[0] if "/" in label else ""
    return namespace == RESTRICTED_LABEL_NAMESPACE or namespace.endswith("." + RESTRICTED_LABEL_NAMESPACE)


class NodeRestriction:
    """The admission hook; ``lookup`` reads pods and nodes from the watch cache."""

    def __init__(self, lookup: Lookup) -> None:
        self.lookup = lookup

    def __call__(self, attrs: AdmissionAttributes) -> None:
        if attrs.user is None:
            return
        node, is_node = node_identity(attrs.user)
        if not is_node:
            return
        if not node:
            raise forbidden(attrs, f'could not determine node from user "{attrs.user.name}"')
        check = {
            ("", "pods"): self._pod,
            ("", "nodes"): self._node,
            ("", "persistentvolumeclaims"): self._claim,
            ("", "serviceaccounts"): self._token,
            ("coordination.k8s.io", "leases"): self._lease,
            ("storage.k8s.io", "csinodes"): self._csinode,
        }.get(attrs.group_resource)
        if check is not None:
            check(node, attrs)

    # -- pods

    def _pod(self, node: str, attrs: AdmissionAttributes) -> None:
        if attrs.subresource == "status":
            if attrs.operation != UPDATE:
                raise forbidden(attrs, f'unexpected operation "{attrs.operation}"')
            if _spec(attrs.old_object).get("nodeName") != node:
                raise forbidden(attrs, f'node "{node}" can only update pod status for pods with spec.nodeName '
                                       "set to itself")
            if _modified_labels(attrs.object, attrs.old_object):
                raise forbidden(attrs, f'node "{node}" cannot update labels through pod status')
            return
        if attrs.subresource == "eviction":
            pod = self._existing_pod(attrs, attrs.name or _meta(attrs.object).get("name") or "")
            if _spec(pod).get("nodeName") != node:
                raise forbidden(attrs, f"node {node} can only evict pods with spec.nodeName set to itself")
            return
        if attrs.subresource:
            raise forbidden(attrs, f'unexpected pod subresource "{attrs.subresource}", only \'status\' and '
                                   "'eviction' are allowed")
        if attrs.operation == DELETE:
            if _spec(self._existing_pod(attrs, attrs.name)).get("nodeName") != node:
                raise forbidden(attrs, f'node "{node}" can only delete pods with spec.nodeName set to itself')
            return
        if attrs.operation != CREATE:
            raise forbidden(attrs, f'unexpected operation "{attrs.operation}", node "{node}" can only create and '
                                   "delete mirror pods")
        self._mirror_pod(node, attrs)

    def _existing_pod(self, attrs: AdmissionAttributes, name: str) -> Obj:
        pod = self.lookup("pods", attrs.namespace, name) if name else None
        if pod is None:
            if not name:
                raise forbidden(attrs, "could not determine pod from request data")
            raise not_found("", "pods", name)
        return pod

    def _mirror_pod(self, node: str, attrs: AdmissionAttributes) -> None:
        pod = attrs.object or {}
        meta, spec = _meta(pod), _spec(pod)
        if MIRROR_POD_ANNOTATION not in (meta.get("annotations") or {}):
            raise forbidden(attrs, f'pod does not have "{MIRROR_POD_ANNOTATION}" annotation, node "{node}" can '
                                   "only create mirror pods")
        if spec.get("nodeName") != node:
            raise forbidden(attrs, f'node "{node}" can only create pods with spec.nodeName set to itself')
        owners = meta.get("ownerReferences") or []
        if len(owners) > 1:
            raise forbidden(attrs, f'node "{node}" can only create pods with a single owner reference set to itself')
        if not owners:
            raise forbidden(attrs, f'node "{node}" can only create pods with an owner reference set to itself')
        owner = owners[0]
        if owner.get("apiVersion") != "v1" or owner.get("kind") != "Node" or owner.get("name") != node:
            raise forbidden(attrs, f'node "{node}" can only create pods with an owner reference set to itself')
        if not owner.get("controller"):
            raise forbidden(attrs, f'node "{node}" can only create pods with a controller owner reference set to '
                                   "itself")
        if owner.get("blockOwnerDeletion"):
            raise forbidden(attrs, f'node "{node}" must not set blockOwnerDeletion on an owner reference')
        stored = self.lookup("nodes", "", node)
        if stored is None:
            raise not_found("", "nodes", node)
        node_uid = _meta(stored).get("uid")
        if owner.get("uid") != node_uid:
            raise forbidden(attrs, f"node {node} UID mismatch: expected {owner.get('uid')} got {node_uid}")
        # Defaulting has named the "default" service account by now: only an explicit one counts.
        if spec.get("serviceAccountName") not in (None, "", "default"):
            raise forbidden(attrs, f'node "{node}" can not create pods that reference a service account')
        refs = {r[0] for r in pod_refs(pod)}
        for resource in ("secrets", "configmaps"):
            if resource in refs:
                raise forbidden(attrs, f'node "{node}" can not create pods that reference {resource}')
        volumes = spec.get("volumes") or []
        if any(s.get("clusterTrustBundle") for v in volumes for s in (v.get("projected") or {}).get("sources") or ()):
            raise forbidden(attrs, f'node "{node}" can not create pods that reference clustertrustbundles')
        if any(v.get("persistentVolumeClaim") for v in volumes):
            raise forbidden(attrs, f'node "{node}" can not create pods that reference persistentvolumeclaims')

    # -- the node's own objects

    def _node(self, node: str, attrs: AdmissionAttributes) -> None:
        if attrs.name != node:
            raise forbidden(attrs, f'node "{node}" is not allowed to modify node "{attrs.name}"')
        if attrs.operation == CREATE:
            if _spec(attrs.object).get("configSource") is not None:
                raise forbidden(attrs, f'node "{node}" is not allowed to create pods with a non-nil configSource')
            labels = sorted(k for k in _modified_labels(attrs.object, None) if _restricted(k))
            if labels:
                raise forbidden(attrs, f'node "{node}" is not allowed to set the following labels: '
                                       f"{', '.join(labels)}")
        elif attrs.operation == UPDATE:
            new, old = _spec(attrs.object), _spec(attrs.old_object)
            if new.get("configSource") is not None and new.get("configSource") != old.get("configSource"):
                raise forbidden(attrs, f'node "{node}" is not allowed to update configSource to a new non-nil '
                                       "configSource")
            if (new.get("taints") or []) != (old.get("taints") or []):
                raise forbidden(attrs, f'node "{node}" is not allowed to modify taints')
            labels = sorted(k for k in _modified_labels(attrs.object, attrs.old_object) if _restricted(k))
            if labels:
                raise forbidden(attrs, f"is not allowed to modify labels: {', '.join(labels)}")

    def _claim(self, node: str, attrs: AdmissionAttributes) -> None:
        if attrs.subresource != "status":
            raise forbidden(attrs, "may only update PVC status")
        if attrs.operation != UPDATE:
            raise forbidden(attrs, f'unexpected operation "{attrs.operation}"')

        def comparable(claim: Obj | None) -> Obj:
            c = copy.deepcopy(claim or {})
            meta = c.setdefault("metadata", {})
            meta.pop("resourceVersion", None)
            meta.pop("managedFields", None)
            status = c.setdefault("status", {})
            for field in ("capacity", "conditions", "allocatedResources", "allocatedResourceStatuses"):
                status.pop(field, None)
            return c

        if comparable(attrs.object) != comparable(attrs.old_object):
            raise forbidden(attrs, f'node "{node}" is not allowed to update fields other than status.capacity and '
                                   "status.conditions")

    def _token(self, node: str, attrs: AdmissionAttributes) -> None:
        if attrs.operation != CREATE or attrs.subresource != "token":
            return
        ref = _spec(attrs.object).get("boundObjectRef") or {}
        if ref.get("apiVersion") != "v1" or ref.get("kind") != "Pod" or not ref.get("name"):
            raise forbidden(attrs, "node requested token not bound to a pod")
        if not ref.get("uid"):
            raise forbidden(attrs, "node requested token with a pod binding without a uid")
        pod = self._existing_pod(attrs, ref["name"])
        if ref["uid"] != _meta(pod).get("uid"):
            raise forbidden(attrs, f"the UID in the bound object reference ({ref['uid']}) does not match the UID in "
                                   "record. The object might have been deleted and then recreated")
        if _spec(pod).get("nodeName") != node:
            raise forbidden(attrs, "node requested token bound to a pod scheduled on a different node")

    @staticmethod
    def _lease(node: str, attrs: AdmissionAttributes) -> None:
        if attrs.namespace != NODE_LEASE_NAMESPACE:
            raise forbidden(attrs, f'can only access leases in the "{NODE_LEASE_NAMESPACE}" system namespace')
        name = _meta(attrs.object).get("name") if attrs.operation == CREATE else attrs.name
        if name != node:
            raise forbidden(attrs, "can only access node lease with the same name as the requesting node")

    @staticmethod
    def _csinode(node: str, attrs: AdmissionAttributes) -> None:
        name = _meta(attrs.object).get("name") if attrs.operation == CREATE else attrs.name
        if name != node:
            raise forbidden(attrs, "can only access CSINode with the same name as the requesting node")
