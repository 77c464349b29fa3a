"""Endpoints and EndpointSlices of Services with selectors, from the pods they select."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import structlog

from k3p.client import ApiError, Obj, key_of, split_key
from k3p.client.objects import controller_ref, is_deleting, labels_of, meta, name_of, owner_reference, uid_of
from k3p.client.resources import ENDPOINTS, ENDPOINTSLICES, NODES, PODS, SERVICES
from k3p.selectors import LabelSelector
from k3p_plugins.controller_manager.base import BaseController
from k3p_plugins.controller_manager.pods import is_ready, phase

log = structlog.get_logger(__name__)

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
MANAGED_BY_LABEL = "endpointslice.kubernetes.io/managed-by"
MANAGED_BY = "endpointslice-controller.k8s.io"
HEADLESS_LABEL = "service.kubernetes.io/headless"
SKIP_MIRROR_LABEL = "endpointslice.kubernetes.io/skip-mirror"
ZONE_LABEL = "topology.kubernetes.io/zone"
MAX_ENDPOINTS_PER_SLICE = 100


class PortNotFound(Exception):
    pass


def find_port(pod: Mapping[str, Any], svc_port: Mapping[str, Any]) -> int:
    """The pod's port for a Service port: a number as is, a name looked up in the containers' ports."""
    target = svc_port.get("targetPort", svc_port.get("port"))
    if isinstance(target, int):
        return target
    protocol = svc_port.get("protocol", "TCP")
    for c in (pod.get("spec") or {}).get("containers") or []:
        for p in c.get("ports") or []:
            if p.get("name") == target and p.get("protocol", "TCP") == protocol:
                return int(p["containerPort"])
    raise PortNotFound(f"no container port named {target!r}")


def pod_included(pod: Mapping[str, Any], include_terminating: bool) -> bool:
    """kube's ShouldPodBeInEndpoints: has an IP, not finished for good, not deleted (unless asked)."""
    status = pod.get("status") or {}
    if not status.get("podIP") and not status.get("podIPs"):
        return False
    if not include_terminating and is_deleting(pod):
        return False
    policy = (pod.get("spec") or {}).get("restartPolicy", "Always")
    if policy == "Never":
        return phase(pod) not in ("Failed", "Succeeded")
    if policy == "OnFailure":
        return phase(pod) != "Succeeded"
    return True


def pod_ips(pod: Mapping[str, Any], family: str) -> list[str]:
    status = pod.get("status") or {}
    ips = [p.get("ip") for p in status.get("podIPs") or [] if p.get("ip")] or (
        [status["podIP"]] if status.get("podIP") else [])
    want_v6 = family == "IPv6"
    return [ip for ip in ips if (":" in ip) == want_v6]


def service_selector(svc: Mapping[str, Any]) -> LabelSelector | None:
    selector = (svc.get("spec") or {}).get("selector")
    if not selector:
        return None
    return LabelSelector.from_set(selector)


def is_headless(svc: Mapping[str, Any]) -> bool:
    return (svc.get("spec") or {}).get("clusterIP") == "None"


def _port_key(port: Obj) -> tuple[str, int, str]:
    return (port.get("name", ""), int(port.get("port", 0)), port.get("protocol", "TCP"))


def endpoints_subsets(svc: Obj, pods: list[Obj]) -> list[Obj]:
    """The ``subsets`` of a Service's Endpoints, packed as kube's RepackSubsets does."""
    spec = svc.get("spec") or {}
    publish = bool(spec.get("publishNotReadyAddresses"))
    svc_ports = spec.get("ports") or []
    groups: dict[tuple[tuple[str, int, str], ...], dict[str, list[Obj]]] = {}
    for pod in pods:
        if not pod_included(pod, publish):
            continue
        ips = pod_ips(pod, "IPv4") or pod_ips(pod, "IPv6")
        if not ips:
            continue
        address: Obj = {"ip": ips[0], "targetRef": {"kind": "Pod", "namespace": meta(pod).get("namespace"),
                                                    "name": name_of(pod), "uid": uid_of(pod)}}
        node_name = (pod.get("spec") or {}).get("nodeName")
        if node_name:
            address["nodeName"] = node_name
        pspec = pod.get("spec") or {}
        if pspec.get("hostname") and pspec.get("subdomain") == name_of(svc):
            address["hostname"] = pspec["hostname"]
        ports: list[Obj] = []
        for sp in svc_ports:
            try:
                number = find_port(pod, sp)
            except PortNotFound:
                continue
            port: Obj = {"port": number, "protocol": sp.get("protocol", "TCP")}
            if sp.get("name"):
                port["name"] = sp["name"]
            if sp.get("appProtocol"):
                port["appProtocol"] = sp["appProtocol"]
            ports.append(port)
        if svc_ports and not ports:
            continue
        key = tuple(sorted(_port_key(p) for p in ports))
        group = groups.setdefault(key, {"ports": ports, "ready": [], "notReady": []})
        group["ready" if publish or is_ready(pod) else "notReady"].append(address)
    subsets = []
    for key in sorted(groups):
        group = groups[key]
        subset: Obj = {}
        if group["ready"]:
            subset["addresses"] = sorted(group["ready"], key=lambda a: (a["ip"], a["targetRef"]["uid"]))
        if group["notReady"]:
            subset["notReadyAddresses"] = sorted(group["notReady"], key=lambda a: (a["ip"], a["targetRef"]["uid"]))
        if group["ports"]:
            subset["ports"] = sorted(group["ports"], key=_port_key)
        subsets.append(subset)
    return subsets


class _ServicePodsController(BaseController):
    """Shared wiring: a Service is queued when it or a pod it selects (before or after) changes."""

    def setup(self) -> None:
        self.services = self.informers.informer(SERVICES)
        self.pods = self.informers.informer(PODS)
        self.watch_objects(self.services)
        self.pods.add_listener(self._on_pod)

    def _on_pod(self, type_: str, pod: Obj, old: Obj | None) -> None:
        ns = meta(pod).get("namespace")
        label_sets = [labels_of(pod)] + ([labels_of(old)] if old is not None else [])
        for svc in self.services.items(ns):
            selector = service_selector(svc)
            if selector is not None and any(selector.matches(labels) for labels in label_sets):
                self.enqueue(svc)

    def selected_pods(self, svc: Obj) -> list[Obj] | None:
        selector = service_selector(svc)
        if selector is None:
            return None
        return [p for p in self.pods.items(meta(svc)["namespace"]) if selector.matches(labels_of(p))]


class EndpointsController(_ServicePodsController):
    name = "endpoint"
    component = "endpoint-controller"
    workers = 4

    def setup(self) -> None:
        super().setup()
        self.endpoints = self.informers.informer(ENDPOINTS)
        self.endpoints.add_listener(lambda t, ep, _o: self.enqueue(ep) if t == "DELETED" else None)

    async def reconcile(self, key: str) -> None:
        ns, name = split_key(key)
        svc = self.services.get(key)
        current = self.endpoints.get(key)
        if svc is None:
            if current is not None and not (ns == "default" and name == "kubernetes"):
                try:
                    await self.client.delete(ENDPOINTS, name, ns)
                except ApiError as e:
                    if not e.not_found:
                        raise
            return
        pods = self.selected_pods(svc)
        if pods is None or (svc.get("spec") or {}).get("type") == "ExternalName":
            return
        subsets = endpoints_subsets(svc, pods)
        labels = dict(labels_of(svc))
        if is_headless(svc):
            labels[HEADLESS_LABEL] = ""
        else:
            labels.pop(HEADLESS_LABEL, None)
        if current is not None and (current.get("subsets") or []) == subsets and labels_of(current) == labels:
            return
        body: Obj = {"apiVersion": "v1", "kind": "Endpoints",
                     "metadata": {"name": name, "namespace": ns, "labels": labels}}
        if subsets:
            body["subsets"] = subsets
        if current is None:
            try:
                await self.client.create(ENDPOINTS, body, ns)
            except ApiError as e:
                if not e.already_exists:
                    raise
                raise ApiError(409, {"reason": "Conflict", "message": "endpoints appeared meanwhile"}) from None
            return
        updated = copy.deepcopy(current)
        updated["metadata"]["labels"] = labels
        updated["subsets"] = subsets
        if not subsets:
            updated.pop("subsets")
        await self.client.update(ENDPOINTS, updated)


def slice_endpoint(pod: Obj, ip: str, svc: Obj, zone: str | None) -> Obj:
    publish = bool((svc.get("spec") or {}).get("publishNotReadyAddresses"))
    terminating = is_deleting(pod)
    ready = is_ready(pod)
    endpoint: Obj = {
        "addresses": [ip],
        "conditions": {"ready": publish or (ready and not terminating), "serving": publish or ready,
                       "terminating": terminating},
        "targetRef": {"kind": "Pod", "namespace": meta(pod).get("namespace"), "name": name_of(pod),
                      "uid": uid_of(pod)},
    }
    pspec = pod.get("spec") or {}
    if pspec.get("hostname") and pspec.get("subdomain") == name_of(svc):
        endpoint["hostname"] = pspec["hostname"]
    if pspec.get("nodeName"):
        endpoint["nodeName"] = pspec["nodeName"]
    if zone:
        endpoint["zone"] = zone
    return endpoint


class EndpointSliceController(_ServicePodsController):
    name = "endpointslice"
    component = "endpointslice-controller"
    workers = 4

    def setup(self) -> None:
        super().setup()
        self.slices = self.informers.informer(ENDPOINTSLICES)
        self.nodes = self.informers.informer(NODES)
        self.slices.add_listener(self._on_slice)

    def _on_slice(self, _t: str, s: Obj, _old: Obj | None) -> None:
        if labels_of(s).get(MANAGED_BY_LABEL) == MANAGED_BY and labels_of(s).get(SERVICE_NAME_LABEL):
            self.queue.add(f"{meta(s)['namespace']}/{labels_of(s)[SERVICE_NAME_LABEL]}")

    def desired(self, svc: Obj, pods: list[Obj]) -> dict[tuple[str, tuple[Any, ...]], tuple[list[Obj], list[Obj]]]:
        """(addressType, port set) -> (ports, endpoints) for the Service's pods."""
        spec = svc.get("spec") or {}
        families = spec.get("ipFamilies") or ["IPv4"]
        svc_ports = spec.get("ports") or []
        out: dict[tuple[str, tuple[Any, ...]], tuple[list[Obj], list[Obj]]] = {}
        for pod in pods:
            if not pod_included(pod, include_terminating=True):
                continue
            ports: list[Obj] = []
            for sp in svc_ports:
                try:
                    number = find_port(pod, sp)
                except PortNotFound:
                    continue
                port: Obj = {"name": sp.get("name", ""), "port": number, "protocol": sp.get("protocol", "TCP")}
                if sp.get("appProtocol"):
                    port["appProtocol"] = sp["appProtocol"]
                ports.append(port)
            node = self.nodes.get((pod.get("spec") or {}).get("nodeName") or "")
            zone = labels_of(node).get(ZONE_LABEL) if node else None
            for family in families:
                for ip in pod_ips(pod, family)[:1]:
                    key = (family, tuple(sorted(_port_key(p) for p in ports)))
                    entry = out.setdefault(key, (sorted(ports, key=_port_key), []))
                    entry[1].append(slice_endpoint(pod, ip, svc, zone))
        return out

    async def reconcile(self, key: str) -> None:
        ns, name = split_key(key)
        svc = self.services.get(key)
        owned = [s for s in self.slices.items(ns) if labels_of(s).get(SERVICE_NAME_LABEL) == name
                 and labels_of(s).get(MANAGED_BY_LABEL) == MANAGED_BY and not is_deleting(s)]
        if svc is None:
            return  # the slices are owned by the Service: the garbage collector removes them
        pods = self.selected_pods(svc)
        if pods is None or (svc.get("spec") or {}).get("type") == "ExternalName":
            for s in owned:
                await self._delete(s)
            return
        owned = [s for s in owned if controller_ref(s) is None or controller_ref(s).get("uid") == uid_of(svc)]
        wanted = self.desired(svc, pods)
        labels = {k: v for k, v in labels_of(svc).items() if k not in (SERVICE_NAME_LABEL, MANAGED_BY_LABEL)}
        labels[SERVICE_NAME_LABEL] = name
        labels[MANAGED_BY_LABEL] = MANAGED_BY
        if is_headless(svc):
            labels[HEADLESS_LABEL] = ""
        chunks: list[tuple[str, list[Obj] | None, list[Obj]]] = []
        for (family, _), (ports, endpoints) in sorted(wanted.items(), key=lambda kv: kv[0]):
            endpoints.sort(key=lambda e: (e["targetRef"]["name"], e["addresses"][0]))
            for i in range(0, len(endpoints), MAX_ENDPOINTS_PER_SLICE):
                chunks.append((family, ports, endpoints[i:i + MAX_ENDPOINTS_PER_SLICE]))
        if not chunks:
            # a placeholder slice says "no endpoints" rather than "not processed yet"
            family = ((svc.get("spec") or {}).get("ipFamilies") or ["IPv4"])[0]
            chunks.append((family, None, []))
        remaining = sorted(owned, key=name_of)
        for family, ports, endpoints in chunks:
            match = next((s for s in remaining if s.get("addressType") == family
                          and _ports_of(s) == _ports_of({"ports": ports})), None)
            if match is None:
                match = next((s for s in remaining if s.get("addressType") == family), None)
            if match is not None:
                remaining.remove(match)
                await self._update(match, svc, labels, ports, endpoints)
            else:
                await self._create(svc, labels, family, ports, endpoints)
        for s in remaining:
            await self._delete(s)

    async def _create(self, svc: Obj, labels: dict[str, str], family: str, ports: list[Obj] | None,
                      endpoints: list[Obj]) -> None:
        body: Obj = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                     "metadata": {"generateName": f"{name_of(svc)}-", "namespace": meta(svc)["namespace"],
                                  "labels": labels, "ownerReferences": [owner_reference(svc)]},
                     "addressType": family, "endpoints": endpoints}
        if ports is not None:
            body["ports"] = ports
        await self.client.create(ENDPOINTSLICES, body, meta(svc)["namespace"])

    async def _update(self, current: Obj, svc: Obj, labels: dict[str, str], ports: list[Obj] | None,
                      endpoints: list[Obj]) -> None:
        if (labels_of(current) == labels and (current.get("endpoints") or []) == endpoints
                and current.get("ports") == ports and controller_ref(current) is not None):
            return
        updated = copy.deepcopy(current)
        updated["metadata"]["labels"] = labels
        if controller_ref(current) is None:
            updated["metadata"]["ownerReferences"] = [owner_reference(svc)]
        updated["endpoints"] = endpoints
        if ports is None:
            updated.pop("ports", None)
        else:
            updated["ports"] = ports
        await self.client.update(ENDPOINTSLICES, updated)

    async def _delete(self, s: Obj) -> None:
        try:
            await self.client.delete(ENDPOINTSLICES, name_of(s), meta(s)["namespace"])
        except ApiError as e:
            if not e.not_found:
                raise


def _ports_of(s: Mapping[str, Any]) -> tuple[Any, ...] | None:
    ports = s.get("ports")
    if ports is None:
        return None
    return tuple(sorted(_port_key(p) for p in ports))


class ApiServerEndpointsController(BaseController):
    """The ``kubernetes`` Service's Endpoints and EndpointSlice: the API server's own address and port.

    In kube the API server's endpoint reconciler writes these; here the controller manager
    does, from the advertised address and the HTTPS port.
    """

    name = "kubernetes-endpoints"
    component = "kube-apiserver"
    KEY = "default/kubernetes"

    def setup(self) -> None:
        # cluster-wide informers: the same ones the endpoint controllers share
        self.endpoints = self.informers.informer(ENDPOINTS)
        self.slices = self.informers.informer(ENDPOINTSLICES)
        for inf in (self.endpoints, self.slices):
            inf.add_listener(lambda _t, o, _old: self.queue.add(self.KEY) if key_of(o) == self.KEY else None)

    async def start(self) -> None:
        self.queue.add(self.KEY)

    async def reconcile(self, key: str) -> None:
        address = self.options.apiserver_address
        if not address:
            return
        port = {"name": "https", "port": int(self.options.apiserver_port), "protocol": "TCP"}
        subsets = [{"addresses": [{"ip": address}], "ports": [port]}]
        labels = {SKIP_MIRROR_LABEL: "true"}
        current = self.endpoints.get(self.KEY)
        try:
            if current is None:
                await self.client.create(ENDPOINTS, {"apiVersion": "v1", "kind": "Endpoints", "metadata": {
                    "name": "kubernetes", "namespace": "default", "labels": labels}, "subsets": subsets}, "default")
            elif current.get("subsets") != subsets or labels_of(current) != labels:
                updated = copy.deepcopy(current)
                updated["subsets"] = subsets
                updated["metadata"]["labels"] = labels
                await self.client.update(ENDPOINTS, updated)
        except ApiError as e:
            if not (e.already_exists or e.conflict):
                raise
        family = "IPv6" if ":" in address else "IPv4"
        slice_body: Obj = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                           "metadata": {"name": "kubernetes", "namespace": "default",
                                        "labels": {SERVICE_NAME_LABEL: "kubernetes"}},
                           "addressType": family,
                           "endpoints": [{"addresses": [address], "conditions": {"ready": True}}],
                           "ports": [port]}
        current_slice = self.slices.get(self.KEY)
        try:
            if current_slice is None:
                await self.client.create(ENDPOINTSLICES, slice_body, "default")
            elif (current_slice.get("endpoints") != slice_body["endpoints"]
                  or current_slice.get("ports") != slice_body["ports"]
                  or current_slice.get("addressType") != family):
                updated = copy.deepcopy(current_slice)
                updated.update({k: slice_body[k] for k in ("addressType", "endpoints", "ports")})
                await self.client.update(ENDPOINTSLICES, updated)
        except ApiError as e:
            if not (e.already_exists or e.conflict):
                raise
