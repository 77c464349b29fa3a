"""Volume binding: which nodes a pod's PersistentVolumeClaims allow, and binding them to the chosen one.

kube-scheduler's VolumeBinding plugin, in its four places:

- *prefilter*: every claim must exist and not be deleting; a claim that is not bound
  and whose class binds at once ("Immediate") makes the pod wait for the binder
  (``pod has unbound immediate PersistentVolumeClaims``).
- *filter*: a bound claim's volume must allow the node (its ``nodeAffinity``); a claim
  that waits for its first consumer needs, on that node, an Available volume that
  matches it or a class whose provisioner can make one there.
- *reserve*: the volumes picked for the chosen node are set aside so the next decision
  does not pick them too.
- *prebind*: pick-ups are written (the volume's ``claimRef``; the claim's
  ``volume.kubernetes.io/selected-node`` for a provisioner), then the scheduler waits
  until the binder and the provisioner report every claim bound, and only then binds the pod.

Every rejection here is one that evicting pods cannot fix (UnschedulableAndUnresolvable).
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog

from k3p.client import ApiError, Client, Informer
from k3p.client.objects import annotations_of, is_deleting, name_of, namespace_of
from k3p.client.resources import PERSISTENTVOLUMECLAIMS, PERSISTENTVOLUMES
from k3p.client.volumes import (
    ANN_BOUND_BY_CONTROLLER,
    ANN_SELECTED_NODE,
    NO_PROVISIONER,
    claim_class,
    claim_ref,
    find_matching_volume,
    is_bound_to_claim,
    is_delay_binding,
    is_fully_bound,
    volume_class,
    volume_node_affinity_matches,
)
from k3p_plugins.scheduler.filters import Status
from k3p_plugins.scheduler.model import NodeInfo, Obj, PodInfo

log = structlog.get_logger(__name__)

VOLUME_BINDING = "VolumeBinding"
REASON_NODE_CONFLICT = "node(s) had volume node affinity conflict"
REASON_BIND_CONFLICT = "node(s) didn't find available persistent volumes to bind"
UNBOUND_IMMEDIATE = "pod has unbound immediate PersistentVolumeClaims"
#: kube-scheduler's default bindTimeoutSeconds
BIND_TIMEOUT = 600.0

_ST_NODE_CONFLICT = Status((REASON_NODE_CONFLICT,), True, VOLUME_BINDING)
_ST_BIND_CONFLICT = Status((REASON_BIND_CONFLICT,), True, VOLUME_BINDING)


class VolumeBindingError(Exception):
    """Binding the pod's volumes failed or timed out: the pod goes back to the queue."""


@dataclass
class ClaimsState:
    """What the prefilter found: bound claims with their volumes, and claims waiting for a node."""

    bound: list[tuple[Obj, Obj]] = field(default_factory=list)
    delayed: list[Obj] = field(default_factory=list)
    #: the classes by name, and for each waiting claim the volumes that could serve it on some node
    classes: dict[str, Obj] = field(default_factory=dict)
    candidates: dict[str, list[Obj]] = field(default_factory=dict)


@dataclass
class VolumePlan:
    """What binding the pod's volumes to its node takes (kube's PodVolumes)."""

    node: str
    #: (volume, claim): the volume's claimRef is set to the claim
    static: list[tuple[Obj, Obj]] = field(default_factory=list)
    #: claims a provisioner makes a volume for on the node
    provision: list[Obj] = field(default_factory=list)
    #: every claim of the pod, by namespace/name: what must be Bound before the pod is
    claims: list[str] = field(default_factory=list)
    #: claim key -> resourceVersion of the selected-node annotation this binding wrote
    written: dict[str, int] = field(default_factory=dict)

    @property
    def needs_binding(self) -> bool:
        return bool(self.static or self.provision)


def _key(namespace: str, name: str) -> str:
    return f"{namespace}/{name}"


class VolumeBinder:
    """The VolumeBinding plugin over informers of claims, volumes and classes."""

    def __init__(self, claims: Informer, volumes: Informer, classes: Informer, *,
                 nodes: Callable[[str], Obj | None] | None = None, bind_timeout: float = BIND_TIMEOUT) -> None:
        self.claims = claims
        self.volumes = volumes
        self.classes = classes
        #: node name -> Node object, to check the volumes' node affinity once they are bound
        self.nodes = nodes or (lambda _name: None)
        self.bind_timeout = bind_timeout
        #: volume name -> claim key: picked by a decision, its claimRef not written or not seen yet
        self.assumed: dict[str, str] = {}
        self._changed = asyncio.Event()

    def changed(self) -> None:
        """A claim, volume or class changed: waiting bindings look again."""
        self._changed.set()
        self._changed = asyncio.Event()

    def _classes(self) -> dict[str, Obj]:
        return {name_of(c): c for c in self.classes.items()}

    # --- prefilter and filter ----------------------------------------------------------------

    def prefilter(self, pod: PodInfo) -> tuple[ClaimsState | None, str]:
        """The pod's claims sorted out and "", or None and why no node can take the pod."""
        state = ClaimsState()
        classes = self._classes()
        for name in pod.claims:
            pvc = self.claims.get(_key(pod.namespace, name))
            if pvc is None:
                return None, f'persistentvolumeclaim "{name}" not found'
            if is_deleting(pvc):
                return None, f'persistentvolumeclaim "{name}" is being deleted'
            if is_fully_bound(pvc):
                volume_name = pvc["spec"]["volumeName"]
                pv = self.volumes.get(volume_name)
                if pv is None:
                    return None, f'persistentvolume "{volume_name}" not found'
                state.bound.append((pvc, pv))
            elif is_delay_binding(pvc, classes) and not (pvc.get("spec") or {}).get("volumeName"):
                state.delayed.append(pvc)
            else:
                return None, UNBOUND_IMMEDIATE
        if state.delayed:
            # narrowed once per decision, so each node only checks the volumes' node affinity
            state.classes = classes
            volumes = [pv for pv in self.volumes.items() if name_of(pv) not in self.assumed]
            for pvc in state.delayed:
                wanted = claim_class(pvc)
                state.candidates[name_of(pvc)] = [
                    pv for pv in volumes
                    if volume_class(pv) == wanted or is_bound_to_claim(pv, pvc)]
        return state, ""

    def _place(self, state: ClaimsState, node: NodeInfo) -> VolumePlan | None:
        """How the waiting claims would be served on ``node``; None if they cannot be."""
        plan = VolumePlan(node.name)
        node_obj = node.node or {"metadata": {"name": node.name, "labels": node.labels}}
        classes = state.classes
        picked: list[str] = []
        for pvc in state.delayed:
            selected = annotations_of(pvc).get(ANN_SELECTED_NODE)
            if selected:
                if selected != node.name:
                    return None  # a provisioner already works for another node
                plan.provision.append(pvc)
                continue
            pv = find_matching_volume(pvc, state.candidates.get(name_of(pvc), ()), node=node_obj, delay_binding=True,
                                      excluded=picked)
            if pv is not None:
                picked.append(name_of(pv))
                plan.static.append((pv, pvc))
                continue
            sc = classes.get(claim_class(pvc)) or {}
            provisioner = sc.get("provisioner") or ""
            if not provisioner or provisioner == NO_PROVISIONER:
                return None
            if not _topology_allows(sc.get("allowedTopologies"), node.labels):
                return None
            plan.provision.append(pvc)
        return plan

    def filter_node(self, state: ClaimsState, node: NodeInfo) -> Status | None:
        """May the pod's volumes be used on ``node``?"""
        node_obj = node.node or {"metadata": {"name": node.name, "labels": node.labels}}
        for _pvc, pv in state.bound:
            if not volume_node_affinity_matches(pv, node_obj):
                return _ST_NODE_CONFLICT
        if state.delayed and self._place(state, node) is None:
            return _ST_BIND_CONFLICT
        return None

    def plan(self, pod: PodInfo, state: ClaimsState, node: NodeInfo) -> VolumePlan:
        """The binding work for the chosen node (it passed ``filter_node``)."""
        plan = self._place(state, node) if state.delayed else VolumePlan(node.name)
        if plan is None:  # cannot happen for a node that passed the filter; bind nothing then
            plan = VolumePlan(node.name)
        plan.claims = [_key(pod.namespace, n) for n in pod.claims]
        return plan

    # --- reserve and prebind -------------------------------------------------------------------

    def assume(self, plan: VolumePlan) -> None:
        for pv, pvc in plan.static:
            self.assumed[name_of(pv)] = _key(namespace_of(pvc) or "", name_of(pvc))

    def forget(self, plan: VolumePlan) -> None:
        for pv, _pvc in plan.static:
            self.assumed.pop(name_of(pv), None)

    def volume_seen(self, pv: Obj) -> None:
        """The informer reports a volume: an assumption its claimRef now shows is no longer needed."""
        wanted = self.assumed.get(name_of(pv))
        ref = (pv.get("spec") or {}).get("claimRef") or {}
        if wanted is not None and _key(ref.get("namespace", ""), ref.get("name", "")) == wanted:
            self.assumed.pop(name_of(pv), None)

    async def bind(self, client: Client, plan: VolumePlan, still_wanted: Callable[[], bool]) -> None:
        """Write the plan, then wait until every claim is bound; VolumeBindingError if it cannot be."""
        try:
            for pv, pvc in plan.static:
                await self._write_claim_ref(client, pv, pvc)
            for pvc in plan.provision:
                if annotations_of(pvc).get(ANN_SELECTED_NODE) != plan.node:
                    patch = {"metadata": {"annotations": {ANN_SELECTED_NODE: plan.node}}}
                    stored = await client.patch(PERSISTENTVOLUMECLAIMS, name_of(pvc), patch, namespace_of(pvc))
                    plan.written[_key(namespace_of(pvc) or "", name_of(pvc))] = _revision(stored)
        except ApiError as e:
            raise VolumeBindingError(f"binding volumes: {e.message or e}") from None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.bind_timeout
        while True:
            wake = self._changed
            problem = self._check(plan)
            if problem is None:
                return
            if problem:
                raise VolumeBindingError(f"binding volumes: {problem}")
            if not still_wanted():
                raise VolumeBindingError("binding volumes: the pod is gone")
            left = deadline - loop.time()
            if left <= 0:
                raise VolumeBindingError("binding volumes: context deadline exceeded")
            try:
                await asyncio.wait_for(wake.wait(), min(left, 5.0))
            except TimeoutError:
                pass

    async def _write_claim_ref(self, client: Client, pv: Obj, pvc: Obj) -> None:
        current = self.volumes.get(name_of(pv)) or pv
        if is_bound_to_claim(current, pvc) and ((current.get("spec") or {}).get("claimRef") or {}).get("uid"):
            return
        updated = copy.deepcopy(current)
        updated.setdefault("spec", {})["claimRef"] = claim_ref(pvc)
        updated.setdefault("metadata", {}).setdefault("annotations", {})[ANN_BOUND_BY_CONTROLLER] = "yes"
        await client.update(PERSISTENTVOLUMES, updated)
        log.info("volume reserved for claim", volume=name_of(pv), namespace=namespace_of(pvc), claim=name_of(pvc))

    def _check(self, plan: VolumePlan) -> str | None:
        """None when every claim is bound; "" while waiting; else what went wrong."""
        done = True
        provisioned = {_key(namespace_of(p) or "", name_of(p)) for p in plan.provision}
        for key in plan.claims:
            pvc = self.claims.get(key)
            if pvc is None:
                return f'persistentvolumeclaim "{key.split("/", 1)[1]}" not found'
            if _revision(pvc) < plan.written.get(key, 0):
                done = False  # the informer has not seen our annotation yet
                continue
            if key in provisioned and not (pvc.get("spec") or {}).get("volumeName") \
                    and annotations_of(pvc).get(ANN_SELECTED_NODE) != plan.node:
                # the provisioner gave up on the node and asks for another decision
                return f'provisioning failed for PVC "{name_of(pvc)}"'
            if not is_fully_bound(pvc):
                done = False
                continue
            pv = self.volumes.get(pvc["spec"]["volumeName"])
            if pv is None:
                done = False
                continue
            node = self.nodes(plan.node)
            # (a node that vanished meanwhile is left to the pod's binding to report)
            if node is not None and not volume_node_affinity_matches(pv, node):
                return f'pv "{name_of(pv)}" node affinity doesn\'t match node "{plan.node}"'
        return None if done else ""


def _revision(obj: Mapping[str, Any]) -> int:
    try:
        return int((obj.get("metadata") or {}).get("resourceVersion") or 0)
    except ValueError:
        return 0


def _topology_allows(allowed: Any, labels: Mapping[str, str]) -> bool:
    """A class's ``allowedTopologies`` (ORed terms of ANDed label requirements); none allows every node."""
    if not allowed:
        return True
    for term in allowed:
        exprs = term.get("matchLabelExpressions") or []
        if all(labels.get(e.get("key", "")) in (e.get("values") or []) for e in exprs):
            return True
    return False
