"""The scheduler's picture of the cluster: nodes, the pods on them, and pods it has assumed.

When the scheduler decides, it *assumes* the pod onto its node right away, before the
binding is even sent, so the next decision already sees the node's requests, ports and
replicas counted; the informer later reports the bound pod and the assumption becomes a
confirmed pod with no double counting. A failed binding *forgets* the assumption.

Indexes kept alongside, so a decision does not walk every pod: replicas of one owner per
node (for spreading), pods with affinity terms and pods with required anti-affinity.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

from k3p_plugins.scheduler.model import ZONE_LABEL, NodeInfo, Obj, PodInfo


class SchedulerCache:
    """Nodes and assigned (or assumed) pods, indexed for the filters and scores."""

    def __init__(self) -> None:
        self.nodes: dict[str, NodeInfo] = {}
        #: pod key -> (pod, node name)
        self.pods: dict[str, tuple[PodInfo, str]] = {}
        self.assumed: set[str] = set()
        #: (namespace, controller uid) -> node name -> live replicas there
        self.owner_counts: dict[tuple[str, str], Counter[str]] = {}
        #: pods with any pod (anti-)affinity term, and those with required anti-affinity
        self.affinity_pods: dict[str, tuple[PodInfo, NodeInfo]] = {}
        self.anti_affinity_pods: dict[str, tuple[PodInfo, NodeInfo]] = {}
        self.namespaces: dict[str, Mapping[str, str]] = {}
        self._ready_nodes: list[NodeInfo] | None = None
        self._has_zones: bool | None = None
        #: where the next decision starts looking, so large clusters share the load (kube's rotation)
        self.next_start = 0

    # --- nodes -------------------------------------------------------------------------

    def set_node(self, node: Obj) -> bool:
        """Add or update a Node; True if the change may let a waiting pod fit."""
        name = node["metadata"]["name"]
        info = self.nodes.get(name)
        if info is None:
            self.nodes[name] = NodeInfo(name, node)
            self._ready_nodes = self._has_zones = None
            return True
        before = info.signature
        was_known = info.node is not None
        info.set_node(node)
        if not was_known:
            self._ready_nodes = self._has_zones = None
            return True
        if before != info.signature:
            self._has_zones = None
            return True
        return False

    def remove_node(self, name: str) -> None:
        info = self.nodes.get(name)
        if info is None:
            return
        if info.pods:
            info.set_node(None)  # its pods stay counted until they are deleted too
        else:
            del self.nodes[name]
        self._ready_nodes = self._has_zones = None

    def node_list(self) -> list[NodeInfo]:
        """Every node that exists (not just remembered for its pods), in a stable order."""
        if self._ready_nodes is None:
            self._ready_nodes = [n for _, n in sorted(self.nodes.items()) if n.node is not None]
        return self._ready_nodes

    @property
    def has_zones(self) -> bool:
        """Whether any node carries a zone label (zone spreading is skipped otherwise)."""
        if self._has_zones is None:
            self._has_zones = any(ZONE_LABEL in n.labels for n in self.node_list())
        return self._has_zones

    # --- namespaces --------------------------------------------------------------------

    def set_namespace(self, ns: Obj) -> bool:
        meta = ns.get("metadata") or {}
        labels = meta.get("labels") or {}
        changed = self.namespaces.get(meta.get("name", "")) != labels
        self.namespaces[meta.get("name", "")] = labels
        return changed

    def remove_namespace(self, name: str) -> None:
        self.namespaces.pop(name, None)

    def namespace_labels(self, name: str) -> Mapping[str, str] | None:
        return self.namespaces.get(name)

    # --- pods --------------------------------------------------------------------------

    def _node(self, name: str) -> NodeInfo:
        info = self.nodes.get(name)
        if info is None:
            info = self.nodes[name] = NodeInfo(name)  # a pod bound to a node we have not seen (yet)
        return info

    def _add(self, pod: PodInfo, node_name: str) -> None:
        node = self._node(node_name)
        node.add_pod(pod)
        self.pods[pod.key] = (pod, node_name)
        if pod.owner is not None and not pod.terminating:
            self.owner_counts.setdefault(pod.owner, Counter())[node_name] += 1
        if pod.has_pod_affinity:
            self.affinity_pods[pod.key] = (pod, node)
        if pod.required_anti_affinity:
            self.anti_affinity_pods[pod.key] = (pod, node)

    def _remove(self, key: str) -> tuple[PodInfo, str] | None:
        entry = self.pods.pop(key, None)
        if entry is None:
            return None
        pod, node_name = entry
        node = self.nodes.get(node_name)
        if node is not None:
            node.remove_pod(pod)
            if node.node is None and not node.pods:
                del self.nodes[node_name]
        if pod.owner is not None and not pod.terminating:
            counts = self.owner_counts.get(pod.owner)
            if counts is not None:
                counts[node_name] -= 1
                if counts[node_name] <= 0:
                    del counts[node_name]
                if not counts:
                    del self.owner_counts[pod.owner]
        self.affinity_pods.pop(key, None)
        self.anti_affinity_pods.pop(key, None)
        return entry

    def assume(self, pod: PodInfo, node_name: str) -> None:
        """Count ``pod`` on ``node_name`` now; the binding is on its way."""
        self._remove(pod.key)
        self._add(pod, node_name)
        self.assumed.add(pod.key)

    def forget(self, key: str) -> None:
        """Undo an assumption whose binding failed (a confirmed pod is left alone)."""
        if key in self.assumed:
            self.assumed.discard(key)
            self._remove(key)

    def is_assumed(self, key: str) -> bool:
        return key in self.assumed

    def set_pod(self, pod: PodInfo) -> bool:
        """An assigned pod as the API reports it; True if it is newly bound (an assumption confirmed counts)."""
        entry = self.pods.get(pod.key)
        was_assumed = pod.key in self.assumed
        self.assumed.discard(pod.key)
        self._remove(pod.key)
        self._add(pod, pod.node_name)
        return entry is None or was_assumed

    def remove_pod(self, key: str) -> bool:
        """A pod deleted or finished; True if it had been counted somewhere."""
        self.assumed.discard(key)
        return self._remove(key) is not None

    def pod_entry(self, key: str) -> tuple[PodInfo, str] | None:
        return self.pods.get(key)
