"""Service ClusterIP and NodePort allocation, from the objects the watch cache holds."""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Iterable
from typing import Any

from k3p.apiserver.admission import AdmissionAttributes
from k3p.apiserver.errors import invalid

Obj = dict[str, Any]


class ServiceAllocator:
    """Admission that gives Services a ClusterIP from ``--service-cidr`` and NodePorts from the range.

    Allocation state is derived from the stored Services (nothing extra to keep in sync):
    an address or port is free when no stored Service holds it, so deleting a Service
    frees them. Concurrent creates that pick the same address are serialized by a lock.
    """

    def __init__(self, services: callable, service_cidr: str, node_port_range: str) -> None:  # type: ignore[valid-type]
        self.services = services
        self.network = ipaddress.ip_network(service_cidr, strict=False)
        low, _, high = node_port_range.partition("-")
        self.ports = range(int(low), int(high or low) + 1)
        #: first host of the range is the `kubernetes` service, as in kube
        self.kubernetes_ip = str(self.network.network_address + 1)
        # Handed out but maybe not yet in the cache (the create is still being stored):
        # held for a few seconds so two concurrent creates never get the same address.
        self._pending: dict[str | int, float] = {}

    def _used(self, exclude_uid: str | None) -> tuple[set[str], set[int]]:
        cutoff = time.monotonic() - 10
        self._pending = {k: t for k, t in self._pending.items() if t > cutoff}
        ips = {k for k in self._pending if isinstance(k, str)}
        ports = {k for k in self._pending if isinstance(k, int)}
        for svc in self.services():
            if exclude_uid and svc.get("metadata", {}).get("uid") == exclude_uid:
                continue
            spec = svc.get("spec", {})
            ips.update(spec.get("clusterIPs") or ([spec["clusterIP"]] if spec.get("clusterIP") else []))
            ports.update(p["nodePort"] for p in spec.get("ports") or [] if p.get("nodePort"))
        return ips, ports

    def __call__(self, attrs: AdmissionAttributes) -> None:
        if attrs.group_resource != ("", "services") or attrs.object is None:
            return
        obj, old = attrs.object, attrs.old_object
        spec = obj.setdefault("spec", {})
        name = obj.get("metadata", {}).get("name", "")
        used_ips, used_ports = self._used(obj.get("metadata", {}).get("uid") if old else None)
        svc_type = spec.get("type", "ClusterIP")
        if svc_type == "ExternalName":
            spec.pop("clusterIP", None)
            spec.pop("clusterIPs", None)
        else:
            ip = spec.get("clusterIP")
            if ip in (None, ""):
                ip = self._free_ip(used_ips)
                if ip is None:
                    raise invalid("", "Service", name, [{"reason": "FieldValueInvalid", "field": "spec.clusterIPs",
                                                         "message": "Internal error: range is full"}])
            elif ip != "None":
                self._check_ip(name, ip, used_ips, old)
            spec["clusterIP"] = ip
            spec["clusterIPs"] = [ip]
            if ip != "None":
                self._pending[ip] = time.monotonic()
        node_ports = svc_type in ("NodePort", "LoadBalancer")
        taken = set(used_ports)
        for i, port in enumerate(spec.get("ports") or []):
            if not node_ports:
                port.pop("nodePort", None)
                continue
            wanted = port.get("nodePort")
            if wanted:
                if wanted not in self.ports:
                    raise invalid("", "Service", name, [{
                        "reason": "FieldValueInvalid", "field": f"spec.ports[{i}].nodePort",
                        "message": f"Invalid value: {wanted}: provided port is not in the valid range. "
                                   f"The range of valid ports is {self.ports.start}-{self.ports.stop - 1}"}])
                old_ports = {p.get("nodePort") for p in ((old or {}).get("spec", {}).get("ports") or [])}
                if wanted in taken and wanted not in old_ports:
                    raise invalid("", "Service", name, [{
                        "reason": "FieldValueInvalid", "field": f"spec.ports[{i}].nodePort",
                        "message": f"Invalid value: {wanted}: provided port is already allocated"}])
            else:
                wanted = next((p for p in self.ports if p not in taken), None)
                if wanted is None:
                    raise invalid("", "Service", name, [{"reason": "FieldValueInvalid",
                                                         "field": f"spec.ports[{i}].nodePort",
                                                         "message": "Internal error: range is full"}])
                port["nodePort"] = wanted
            taken.add(wanted)
            self._pending[wanted] = time.monotonic()

    def _free_ip(self, used: set[str]) -> str | None:
        # .1 is reserved for the kubernetes service; start from .10 upwards like kube's
        # habit of leaving the low addresses for well-known services (cluster DNS at .10).
        hosts: Iterable[ipaddress.IPv4Address | ipaddress.IPv6Address] = self.network.hosts()
        for addr in hosts:
            ip = str(addr)
            if ip not in used and ip != self.kubernetes_ip and int(addr) - int(self.network.network_address) > 10:
                return ip
        return None

    def _check_ip(self, name: str, ip: str, used: set[str], old: Obj | None) -> None:
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            raise invalid("", "Service", name, [{"reason": "FieldValueInvalid", "field": "spec.clusterIPs[0]",
                                                 "message": f'Invalid value: "{ip}": must be a valid IP address'}]) \
                from None
        if addr not in self.network:
            raise invalid("", "Service", name, [{
                "reason": "FieldValueInvalid", "field": "spec.clusterIPs",
                "message": f'Invalid value: []string{{"{ip}"}}: failed to allocate IP {ip}: the provided IP '
                           f"({ip}) is not in the valid range. The range of valid IPs is {self.network}"}])
        if ip in used and (old or {}).get("spec", {}).get("clusterIP") != ip:
            raise invalid("", "Service", name, [{
                "reason": "FieldValueInvalid", "field": "spec.clusterIPs",
                "message": f'Invalid value: []string{{"{ip}"}}: failed to allocate IP {ip}: provided IP is '
                           f"already allocated"}])
