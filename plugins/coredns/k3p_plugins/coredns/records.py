"""The cluster's DNS names, indexed from Services and EndpointSlices.

Names follow the Kubernetes DNS specification as CoreDNS's kubernetes plugin serves it:

- ``<svc>.<ns>.svc.<zone>``: the ClusterIPs; for a headless Service the ready endpoints'
  addresses; for an ExternalName Service a CNAME to the external name.
- ``<endpoint>.<svc>.<ns>.svc.<zone>``: one endpoint, named by its ``hostname`` (set for
  pods whose ``subdomain`` names the Service) or else by its address with dashes.
- ``_<port>._<proto>.<svc>.<ns>.svc.<zone>`` SRV: the Service (or, headless, each endpoint)
  with the port; the SRV query on the Service name itself lists every port.
- ``<a-b-c-d>.<ns>.pod.<zone>``: the address in the name (``pods insecure``).
- PTR for ClusterIPs and headless endpoint addresses.

The index is rebuilt per Service as informer events arrive, so a query is a dict lookup
plus building the answer. Nothing here does I/O.
"""

from __future__ import annotations

import ipaddress
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from dnslib import AAAA, CNAME, NS, PTR, QTYPE, RCODE, RR, SOA, SRV, TXT, A, DNSLabel

#: CoreDNS's kubernetes plugin answers with this TTL (seconds), negative answers included
DEFAULT_TTL = 5
DEFAULT_ZONE = "cluster.local"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
#: CNAMEs between the cluster's own names followed in one answer
MAX_CNAME_CHAIN = 8
#: the version of the Kubernetes DNS specification these names follow (``dns-version.<zone>`` TXT)
SPEC_VERSION = "1.1.0"

ServiceKey = tuple[str, str]
SliceKey = tuple[str, str]


@dataclass
class Answer:
    """What the index says about one question.

    ``chase`` is set when the answer ends in a CNAME to a name outside the zone that the
    server should resolve upstream and append (as CoreDNS does for ExternalName Services).
    """

    rcode: int = RCODE.NOERROR
    answer: list[RR] = field(default_factory=list)
    authority: list[RR] = field(default_factory=list)
    additional: list[RR] = field(default_factory=list)
    chase: str = ""


@dataclass(slots=True)
class _Name:
    """The records of one owner name."""

    a: list[str] = field(default_factory=list)
    aaaa: list[str] = field(default_factory=list)
    cname: str = ""
    #: (priority, weight, port, target)
    srv: list[tuple[int, int, int, str]] = field(default_factory=list)


@dataclass(slots=True)
class _Endpoint:
    addresses: tuple[str, ...]
    hostname: str
    ready: bool


@dataclass(slots=True)
class _Slice:
    service: str
    endpoints: list[_Endpoint]
    #: (name, port, protocol)
    ports: list[tuple[str, int, str]]


@dataclass(slots=True)
class _Service:
    kind: str  # "cluster", "headless" or "external"
    cluster_ips: list[str]
    external_name: str
    ports: list[tuple[str, int, str]]


def _norm(name: str | DNSLabel) -> str:
    return str(name).rstrip(".").lower()


def endpoint_label(address: str, hostname: str = "") -> str:
    """The first label of an endpoint's name: its hostname, else its address with dashes."""
    if hostname:
        return hostname.lower()
    return address.replace(".", "-").replace(":", "-").lower()


def _valid_ips(ips: Iterable[Any]) -> list[str]:
    """The well-formed addresses among ``ips``, normalised; bad ones are skipped, not served."""
    out = []
    for ip in ips:
        try:
            out.append(str(ipaddress.ip_address(ip)))
        except ValueError:
            continue
    return out


def _split_ips(ips: Iterable[str]) -> tuple[list[str], list[str]]:
    v4: list[str] = []
    v6: list[str] = []
    for ip in ips:
        (v6 if ":" in ip else v4).append(ip)
    return v4, v6


def _ports(raw: Iterable[Mapping[str, Any]] | None) -> list[tuple[str, int, str]]:
    out = []
    for p in raw or ():
        if p.get("port") is None:
            continue
        out.append(((p.get("name") or "").lower(), int(p["port"]), (p.get("protocol") or "TCP").lower()))
    return out


def _service_of(obj: Mapping[str, Any]) -> _Service:
    spec = obj.get("spec") or {}
    if spec.get("type") == "ExternalName":
        return _Service("external", [], _norm(spec.get("externalName") or ""), _ports(spec.get("ports")))
    if spec.get("clusterIP") == "None":
        return _Service("headless", [], "", _ports(spec.get("ports")))
    ips = _valid_ips(spec.get("clusterIPs") or [spec.get("clusterIP")])
    return _Service("cluster", ips, "", _ports(spec.get("ports")))


def _slice_of(obj: Mapping[str, Any]) -> _Slice | None:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    service = labels.get(SERVICE_NAME_LABEL)
    if not service or obj.get("addressType", "IPv4") not in ("IPv4", "IPv6"):
        return None
    endpoints = []
    for ep in obj.get("endpoints") or ():
        addresses = tuple(_valid_ips(ep.get("addresses") or ()))
        if not addresses:
            continue
        # A missing ready condition means ready (the EndpointSlice API's rule).
        ready = (ep.get("conditions") or {}).get("ready") is not False
        endpoints.append(_Endpoint(addresses, ep.get("hostname") or "", ready))
    return _Slice(service, endpoints, _ports(obj.get("ports")))


def _key(obj: Mapping[str, Any]) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return (meta.get("namespace") or "default", meta.get("name") or "")


def reverse_name(ip: str) -> str:
    """``10.43.0.1`` → ``1.0.43.10.in-addr.arpa`` (nibbles under ip6.arpa for IPv6)."""
    return ipaddress.ip_address(ip).reverse_pointer


class ClusterRecords:
    """An always-current index of the cluster's DNS names, fed by informer events.

    Use :meth:`on_service` and :meth:`on_endpoint_slice` as informer listeners (or call
    them with ``"ADDED"``/``"MODIFIED"``/``"DELETED"`` and the object), and
    :meth:`lookup` to answer a question. ``dns_ips`` are the cluster DNS server's own
    addresses, served as ``ns.dns.<zone>``.
    """

    def __init__(self, zone: str = DEFAULT_ZONE, ttl: int = DEFAULT_TTL, dns_ips: Iterable[str] = ()) -> None:
        self.zone = _norm(zone)
        self.ttl = ttl
        self._zone_suffix = "." + self.zone
        self._svc_suffix = ".svc." + self.zone
        self._pod_suffix = ".pod." + self.zone
        self._ns_name = "ns.dns." + self.zone
        self._dns_v4, self._dns_v6 = _split_ips(dns_ips)
        self._services: dict[ServiceKey, _Service] = {}
        self._slices: dict[SliceKey, _Slice] = {}
        self._slices_of: dict[ServiceKey, set[SliceKey]] = {}
        self._names: dict[str, _Name] = {}
        self._owned: dict[ServiceKey, list[str]] = {}
        #: reverse name -> {service: target}; an address may briefly belong to two Services
        self._ptr: dict[str, dict[ServiceKey, str]] = {}
        self._owned_ptr: dict[ServiceKey, list[str]] = {}
        #: how many names lie at or below each name: a name with none below it does not exist
        self._below: Counter[str] = Counter()
        self.serial = 0
        self._soa: RR = self._make_soa()

    # --- feeding the index ---------------------------------------------------------------

    def on_service(self, type_: str, obj: Mapping[str, Any], old: Mapping[str, Any] | None = None) -> None:
        """Informer listener for Services."""
        key = _key(obj)
        if type_ == "DELETED":
            self._services.pop(key, None)
        else:
            self._services[key] = _service_of(obj)
        self._rebuild(key)

    def on_endpoint_slice(self, type_: str, obj: Mapping[str, Any], old: Mapping[str, Any] | None = None) -> None:
        """Informer listener for EndpointSlices."""
        key = _key(obj)
        previous = self._slices.pop(key, None)
        if previous is not None:
            owner = (key[0], previous.service)
            self._slices_of.get(owner, set()).discard(key)
            if not self._slices_of.get(owner):
                self._slices_of.pop(owner, None)
        current = None if type_ == "DELETED" else _slice_of(obj)
        if current is not None:
            self._slices[key] = current
            self._slices_of.setdefault((key[0], current.service), set()).add(key)
        if previous is not None and (current is None or previous.service != current.service):
            self._rebuild((key[0], previous.service))
        if current is not None:
            self._rebuild((key[0], current.service))

    def service_names(self) -> list[str]:
        """Every owner name in the index (for diagnostics and tests)."""
        return sorted(self._names)

    def _rebuild(self, key: ServiceKey) -> None:
        for name in self._owned.pop(key, ()):
            del self._names[name]
            self._count(name, -1)
        for rev in self._owned_ptr.pop(key, ()):
            owners = self._ptr.get(rev)
            if owners is not None:
                owners.pop(key, None)
                if not owners:
                    del self._ptr[rev]
        self._make_soa()
        svc = self._services.get(key)
        if svc is None:
            return
        names, ptrs = self._names_of(key, svc)
        for name, rec in names.items():
            self._names[name] = rec
            self._count(name, 1)
        self._owned[key] = list(names)
        for rev, target in ptrs.items():
            self._ptr.setdefault(rev, {})[key] = target
        self._owned_ptr[key] = list(ptrs)

    def _make_soa(self) -> RR:
        """The zone's SOA; its serial is the time of the last change, as CoreDNS's."""
        serial = int(time.time())
        if serial != self.serial:
            self.serial = serial
            self._soa = RR(self.zone + ".", QTYPE.SOA, ttl=self.ttl, rdata=SOA(
                self._ns_name + ".", "hostmaster." + self.zone + ".", (serial, 7200, 1800, 86400, self.ttl)))
        return self._soa

    def _count(self, name: str, delta: int) -> None:
        # The name and each ancestor up to the zone's apex.
        while name != self.zone and name.endswith(self._zone_suffix):
            self._below[name] += delta
            if self._below[name] <= 0:
                del self._below[name]
            name = name.partition(".")[2]

    def _names_of(self, key: ServiceKey, svc: _Service) -> tuple[dict[str, _Name], dict[str, str]]:
        ns, name = key
        base = f"{name}.{ns}{self._svc_suffix}".lower()
        names: dict[str, _Name] = {}
        ptrs: dict[str, str] = {}
        if svc.kind == "external":
            if svc.external_name:
                names[base] = _Name(cname=svc.external_name)
            return names, ptrs
        top = names[base] = _Name()

        # Endpoints (ready ones only), each under its own name below the Service.
        port_targets: dict[tuple[str, str], list[tuple[int, str]]] = {}
        for slice_key in sorted(self._slices_of.get(key, ())):
            sl = self._slices[slice_key]
            for ep in sl.endpoints:
                if not ep.ready:
                    continue
                ep_name = f"{endpoint_label(ep.addresses[0], ep.hostname)}.{base}"
                rec = names.setdefault(ep_name, _Name())
                v4, v6 = _split_ips(ep.addresses)
                _extend_unique(rec.a, v4)
                _extend_unique(rec.aaaa, v6)
                if svc.kind == "headless":
                    _extend_unique(top.a, v4)
                    _extend_unique(top.aaaa, v6)
                    for ip in ep.addresses:
                        ptrs[reverse_name(ip)] = ep_name
                    for pname, port, proto in sl.ports:
                        targets = port_targets.setdefault((pname, proto), [])
                        if (port, ep_name) not in targets:
                            targets.append((port, ep_name))

        if svc.kind == "cluster":
            top.a, top.aaaa = _split_ips(svc.cluster_ips)
            for ip in svc.cluster_ips:
                ptrs[reverse_name(ip)] = base
            for pname, port, proto in svc.ports:
                port_targets.setdefault((pname, proto), []).append((port, base))

        for (pname, proto), targets in sorted(port_targets.items()):
            weight = max(1, 100 // len(targets))
            records = [(0, weight, port, target) for port, target in targets]
            top.srv.extend(records)
            if pname:  # the specification gives SRV names to named ports only
                names[f"_{pname}._{proto}.{base}"] = _Name(srv=records)
        return names, ptrs

    # --- answering -----------------------------------------------------------------------

    def lookup(self, qname: str | DNSLabel, qtype: int) -> Answer | None:
        """The answer to ``qname``/``qtype``, or None when the name is not the cluster's to answer.

        Names inside the zone always get an answer (NXDOMAIN when unknown); reverse names
        get one only for addresses the cluster knows, so other PTR queries go upstream.
        """
        owner = qname if isinstance(qname, DNSLabel) else DNSLabel(qname)
        name = _norm(qname)
        if not (name == self.zone or name.endswith(self._zone_suffix)):
            if name.endswith((".in-addr.arpa", ".ip6.arpa")):
                return self._reverse(owner, name, qtype)
            return None
        rec = self._names.get(name)
        if rec is not None:
            return self._answer(owner, rec, qtype)
        if name.endswith(self._pod_suffix):
            return self._pod(owner, name, qtype)
        if name == self.zone:
            return self._apex(owner, qtype)
        if name == self._ns_name and (self._dns_v4 or self._dns_v6):
            return self._answer(owner, _Name(a=self._dns_v4, aaaa=self._dns_v6), qtype)
        if name == "dns-version." + self.zone:
            if qtype in (QTYPE.TXT, QTYPE.ANY):
                return Answer(answer=[RR(owner, QTYPE.TXT, ttl=self.ttl, rdata=TXT(SPEC_VERSION))])
            return self._nodata()
        if name in self._below or name in ("svc." + self.zone, "pod." + self.zone):
            return self._nodata()
        return self._nxdomain()

    def _answer(self, owner: DNSLabel, rec: _Name, qtype: int, depth: int = 0) -> Answer:
        ttl = self.ttl
        if rec.cname:
            # A CNAME owner has no other records: it answers every type with the CNAME.
            answer = Answer(answer=[RR(owner, QTYPE.CNAME, ttl=ttl, rdata=CNAME(rec.cname + "."))])
            if qtype != QTYPE.CNAME:
                target = self._names.get(rec.cname)
                if target is not None:
                    if depth < MAX_CNAME_CHAIN:  # ExternalName Services may point at each other in a loop
                        inner = self._answer(DNSLabel(rec.cname + "."), target, qtype, depth + 1)
                        answer.answer.extend(inner.answer)
                        answer.chase = inner.chase
                elif not (rec.cname == self.zone or rec.cname.endswith(self._zone_suffix)):
                    answer.chase = rec.cname
            return answer
        out = Answer()
        any_ = qtype == QTYPE.ANY
        if qtype == QTYPE.A or any_:
            out.answer.extend(RR(owner, QTYPE.A, ttl=ttl, rdata=A(ip)) for ip in rec.a)
        if qtype == QTYPE.AAAA or any_:
            out.answer.extend(RR(owner, QTYPE.AAAA, ttl=ttl, rdata=AAAA(ip)) for ip in rec.aaaa)
        if qtype == QTYPE.SRV or any_:
            glue: dict[str, None] = {}
            for prio, weight, port, target in rec.srv:
                out.answer.append(RR(owner, QTYPE.SRV, ttl=ttl, rdata=SRV(prio, weight, port, target + ".")))
                glue[target] = None
            for target in glue:
                found = self._names.get(target)
                if found is not None:
                    label = DNSLabel(target + ".")
                    out.additional.extend(RR(label, QTYPE.A, ttl=ttl, rdata=A(ip)) for ip in found.a)
                    out.additional.extend(RR(label, QTYPE.AAAA, ttl=ttl, rdata=AAAA(ip)) for ip in found.aaaa)
        if not out.answer:
            out.authority.append(self._soa)
        return out

    def _pod(self, owner: DNSLabel, name: str, qtype: int) -> Answer:
        labels = name[: -len(self._pod_suffix)].split(".")
        if len(labels) == 1:  # <ns>.pod.<zone>
            return self._nodata()
        if len(labels) != 2:
            return self._nxdomain()
        dashed = labels[0]
        try:
            if dashed.count("-") == 3:
                ip = ipaddress.IPv4Address(dashed.replace("-", "."))
            else:
                ip = ipaddress.IPv6Address(dashed.replace("-", ":"))
        except ValueError:
            return self._nxdomain()
        if ip.version == 4:
            return self._answer(owner, _Name(a=[str(ip)]), qtype)
        return self._answer(owner, _Name(aaaa=[str(ip)]), qtype)

    def _apex(self, owner: DNSLabel, qtype: int) -> Answer:
        out = Answer()
        if qtype in (QTYPE.SOA, QTYPE.ANY):
            out.answer.append(self._soa)
        if qtype in (QTYPE.NS, QTYPE.ANY):
            out.answer.append(RR(owner, QTYPE.NS, ttl=self.ttl, rdata=NS(self._ns_name + ".")))
            label = DNSLabel(self._ns_name + ".")
            out.additional.extend(RR(label, QTYPE.A, ttl=self.ttl, rdata=A(ip)) for ip in self._dns_v4)
            out.additional.extend(RR(label, QTYPE.AAAA, ttl=self.ttl, rdata=AAAA(ip)) for ip in self._dns_v6)
        if not out.answer:
            out.authority.append(self._soa)
        return out

    def _reverse(self, owner: DNSLabel, name: str, qtype: int) -> Answer | None:
        owners = self._ptr.get(name)
        if not owners:
            return None
        if qtype not in (QTYPE.PTR, QTYPE.ANY):
            return Answer()
        targets = sorted(set(owners.values()))
        return Answer(answer=[RR(owner, QTYPE.PTR, ttl=self.ttl, rdata=PTR(t + ".")) for t in targets])

    def _nodata(self) -> Answer:
        return Answer(authority=[self._soa])

    def _nxdomain(self) -> Answer:
        return Answer(rcode=RCODE.NXDOMAIN, authority=[self._soa])


def _extend_unique(target: list[str], items: Iterable[str]) -> None:
    for item in items:
        if item not in target:
            target.append(item)
