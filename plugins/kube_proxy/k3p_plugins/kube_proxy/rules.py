"""The service proxy's nftables ruleset, computed from Services and EndpointSlices alone.

Pure functions: no I/O, the same inputs always give the same text, so a caller can skip
applying a ruleset that has not changed. The layout follows kube-proxy's nftables mode:

* base chains ``nat-prerouting`` and ``nat-output`` jump to ``services``, which looks the
  destination up in two verdict maps: ``service-ips`` (ClusterIP, externalIPs and
  load-balancer IPs) and ``service-nodeports`` (NodePorts, on every local address of the
  node except 127.0.0.0/8);
* per service port, a policy chain (``service-*`` for Cluster traffic policy, ``local-*``
  for Local) picks an endpoint with ``numgen random mod N``, after the ClientIP affinity
  sets (``affinity-*``) had their say; traffic from NodePorts and other external
  addresses passes through an ``external-*`` chain first;
* per endpoint, an ``endpoint-*`` chain marks hairpin traffic, records affinity and DNATs;
* packets marked ``0x4000`` are masqueraded in ``nat-postrouting``;
* destinations without usable endpoints are listed in ``no-endpoint-services`` and
  ``no-endpoint-nodeports``, checked from filter chains on the input, forward and output
  hooks: rejected when the Service has no endpoints at all, dropped when only the Local
  traffic policy leaves it without any.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

TABLE = "k3p-proxy"
FAMILY = "ip"
MASQ_MARK = "0x4000"
DEFAULT_AFFINITY_TIMEOUT = 10800
SERVICE_NAME_LABEL = "kubernetes.io/service-name"

# Priorities as numbers: nft 1.0.6 accepts the names "dstnat" and "srcnat" on a few hooks
# only. DNAT runs at -100 (dstnat), masquerading at 100 (srcnat); the filter chains run
# before DNAT (-110) so that they see the service address the client used.
_DNAT_PRIORITY = "-100"
_SNAT_PRIORITY = "100"
_FILTER_PRIORITY = "-110"
_NO_LOCALHOST = "ip daddr != 127.0.0.0/8"
_PROTOCOLS = {"TCP": "tcp", "UDP": "udp", "SCTP": "sctp"}


@dataclass(frozen=True)
class Endpoint:
    """One address:port of a service port, with the EndpointSlice conditions that matter."""

    ip: str
    port: int
    node_name: str | None = None
    ready: bool = True
    serving: bool = True
    terminating: bool = False

    def sort_key(self) -> tuple[int, int]:
        return int(ipaddress.IPv4Address(self.ip)), self.port


@dataclass(frozen=True)
class ServicePort:
    """One port of a Service, with what the proxy needs to know about its Service."""

    namespace: str
    name: str
    port_name: str
    protocol: str  # lower case: tcp, udp, sctp
    port: int
    cluster_ip: str
    node_port: int = 0
    external_ips: tuple[str, ...] = ()
    load_balancer_ips: tuple[str, ...] = ()
    affinity_timeout: int | None = None  # seconds, for sessionAffinity: ClientIP
    external_local: bool = False
    internal_local: bool = False

    @property
    def key(self) -> tuple[str, str, str, str]:
        return self.namespace, self.name, self.port_name, self.protocol

    @property
    def label(self) -> str:
        """``namespace/name:port`` as kube-proxy names a service port."""
        return f"{self.namespace}/{self.name}:{self.port_name}"

    @property
    def base(self) -> str:
        return f"{self.namespace}/{self.name}/{self.protocol}/{self.port_name}"

    @property
    def externally_accessible(self) -> bool:
        return bool(self.node_port or self.external_ips or self.load_balancer_ips)


@dataclass
class Ruleset:
    """A rendered table: its nft text and the names of the objects in it."""

    text: str
    chains: list[str] = field(default_factory=list)
    maps: list[str] = field(default_factory=list)
    sets: list[str] = field(default_factory=list)
    service_ports: int = 0
    endpoints: int = 0
    rules: int = 0
    elements: int = 0


def _hashed(prefix: str, name: str, salt: str = "") -> str:
    # A hash of the full name keeps names unique and tells apart names that differ only
    # slightly; the readable part after it is for people reading `nft list table`.
    digest = hashlib.sha256((name + salt).encode()).digest()
    return f"{prefix}-{base64.b32encode(digest).decode()[:8]}-{name}"


def cluster_chain(sp: ServicePort) -> str:
    return _hashed("service", sp.base)


def local_chain(sp: ServicePort) -> str:
    return _hashed("local", sp.base)


def external_chain(sp: ServicePort) -> str:
    return _hashed("external", sp.base)


def endpoint_chain(sp: ServicePort, ep: Endpoint) -> str:
    return _hashed("endpoint", f"{sp.base}__{ep.ip}/{ep.port}")


def affinity_set(sp: ServicePort, ep: Endpoint) -> str:
    # The timeout is part of the hash: a set's timeout cannot be changed in place, so a new
    # timeout gives a new set and the old one goes away as stale.
    return _hashed("affinity", f"{sp.base}__{ep.ip}/{ep.port}", f"@{sp.affinity_timeout}")


def _ipv4(value: Any) -> str | None:
    try:
        addr = ipaddress.ip_address(str(value))
    except ValueError:
        return None
    return str(addr) if addr.version == 4 else None


def service_ports(service: Mapping[str, Any]) -> list[ServicePort]:
    """The proxied ports of a Service: none for ExternalName, headless or IPv6-only ones."""
    meta = service.get("metadata") or {}
    spec = service.get("spec") or {}
    if spec.get("type") == "ExternalName":
        return []
    candidates = [*(spec.get("clusterIPs") or []), spec.get("clusterIP")]
    cluster_ip = next((ip for ip in map(_ipv4, candidates) if ip), None)
    if cluster_ip is None:  # headless ("None"), not allocated yet, or not IPv4
        return []
    external_ips = tuple(ip for ip in map(_ipv4, spec.get("externalIPs") or []) if ip)
    lb_ips: tuple[str, ...] = ()
    if spec.get("type") == "LoadBalancer":
        ingress = ((service.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
        lb_ips = tuple(ip for ip in (_ipv4(i.get("ip")) for i in ingress) if ip)
    timeout = None
    if spec.get("sessionAffinity") == "ClientIP":
        config = (spec.get("sessionAffinityConfig") or {}).get("clientIP") or {}
        timeout = int(config.get("timeoutSeconds") or DEFAULT_AFFINITY_TIMEOUT)
    node_ports = spec.get("type") in ("NodePort", "LoadBalancer")
    result = []
    for p in spec.get("ports") or []:
        protocol = _PROTOCOLS.get(str(p.get("protocol") or "TCP").upper())
        if protocol is None or not p.get("port"):
            continue
        result.append(ServicePort(
            namespace=meta.get("namespace") or "default",
            name=meta.get("name") or "",
            port_name=p.get("name") or "",
            protocol=protocol,
            port=int(p["port"]),
            cluster_ip=cluster_ip,
            node_port=int(p.get("nodePort") or 0) if node_ports else 0,
            external_ips=external_ips,
            load_balancer_ips=lb_ips,
            affinity_timeout=timeout,
            external_local=spec.get("externalTrafficPolicy") == "Local",
            internal_local=spec.get("internalTrafficPolicy") == "Local",
        ))
    return result


def endpoints_by_port(slices: Iterable[Mapping[str, Any]]) -> dict[tuple[str, str, str, str], list[Endpoint]]:
    """The endpoints of every (namespace, service, port name, protocol), merged over slices.

    An address listed in several slices counts once (a ready entry wins); the lists are
    sorted by address so the ruleset does not depend on the order slices arrive in.
    """
    merged: dict[tuple[str, str, str, str], dict[tuple[str, int], Endpoint]] = {}
    for s in slices:
        if s.get("addressType", "IPv4") != "IPv4":
            continue
        meta = s.get("metadata") or {}
        service = (meta.get("labels") or {}).get(SERVICE_NAME_LABEL)
        if not service:
            continue
        namespace = meta.get("namespace") or "default"
        for port in s.get("ports") or []:
            protocol = _PROTOCOLS.get(str(port.get("protocol") or "TCP").upper())
            if protocol is None or port.get("port") is None:
                continue
            found = merged.setdefault((namespace, service, port.get("name") or "", protocol), {})
            for e in s.get("endpoints") or []:
                ip = _ipv4((e.get("addresses") or [None])[0])
                if ip is None:
                    continue
                cond = e.get("conditions") or {}
                # The API says an unknown (absent) ready or serving condition means ready.
                ready = cond.get("ready") is not False
                ep = Endpoint(ip=ip, port=int(port["port"]), node_name=e.get("nodeName"), ready=ready,
                              serving=cond.get("serving", ready) is not False,
                              terminating=cond.get("terminating") is True)
                prev = found.get((ip, ep.port))
                if prev is None or (ep.ready and not prev.ready):
                    found[(ip, ep.port)] = ep
    return {key: sorted(eps.values(), key=Endpoint.sort_key) for key, eps in merged.items()}


@dataclass
class _Categorized:
    cluster: list[Endpoint]
    local: list[Endpoint]
    has_any: bool


def categorize(endpoints: list[Endpoint], node_name: str) -> _Categorized:
    """Endpoints for Cluster and Local traffic policy, as kube-proxy chooses them.

    Ready endpoints when there are any; otherwise those still serving while terminating,
    so a rolling update with no ready pod left keeps answering.
    """

    def usable(eps: list[Endpoint]) -> list[Endpoint]:
        ready = [e for e in eps if e.ready]
        return ready or [e for e in eps if e.serving and e.terminating]

    cluster = usable(endpoints)
    local = usable([e for e in endpoints if e.node_name == node_name])
    return _Categorized(cluster=cluster, local=local, has_any=bool(cluster))


class _Builder:
    def __init__(self) -> None:
        self.chains: dict[str, list[str]] = {}
        self.map_elements: dict[str, dict[str, str]] = {
            "service-ips": {}, "service-nodeports": {}, "no-endpoint-services": {}, "no-endpoint-nodeports": {},
        }
        self.sets: dict[str, int] = {}

    def chain(self, name: str, *rules: str) -> list[str]:
        body = self.chains.setdefault(name, [])
        body.extend(rules)
        return body

    def element(self, map_name: str, key: str, verdict: str, comment: str | None = None) -> None:
        elements = self.map_elements[map_name]
        if key in elements:  # two Services claiming one address:port; the first one keeps it
            return
        note = f' comment "{comment}"' if comment else ""
        elements[key] = f"{key}{note} : {verdict}"


_MAP_TYPES = {
    "service-ips": ("ipv4_addr . inet_proto . inet_service : verdict", "ClusterIP, external and load-balancer IPs"),
    "service-nodeports": ("inet_proto . inet_service : verdict", "NodePorts"),
    "no-endpoint-services": ("ipv4_addr . inet_proto . inet_service : verdict",
                             "reject or drop traffic to services without endpoints"),
    "no-endpoint-nodeports": ("inet_proto . inet_service : verdict",
                              "reject or drop traffic to NodePorts without endpoints"),
}

_BASE_CHAINS = {
    "filter-input": f"type filter hook input priority {_FILTER_PRIORITY}; policy accept;",
    "filter-forward": f"type filter hook forward priority {_FILTER_PRIORITY}; policy accept;",
    "filter-output": f"type filter hook output priority {_FILTER_PRIORITY}; policy accept;",
    "nat-prerouting": f"type nat hook prerouting priority {_DNAT_PRIORITY}; policy accept;",
    "nat-output": f"type nat hook output priority {_DNAT_PRIORITY}; policy accept;",
    "nat-postrouting": f"type nat hook postrouting priority {_SNAT_PRIORITY}; policy accept;",
}


def _cidr_match(cidrs: list[str]) -> str:
    return cidrs[0] if len(cidrs) == 1 else "{ " + ", ".join(cidrs) + " }"


def parse_cluster_cidr(cluster_cidr: str) -> list[str]:
    """The IPv4 networks of a (comma-separated) cluster CIDR, normalised."""
    nets = []
    for part in str(cluster_cidr or "").split(","):
        part = part.strip()
        if not part:
            continue
        net = ipaddress.ip_network(part, strict=False)
        if net.version == 4:
            nets.append(str(net))
    return nets


def _fixed_chains(b: _Builder) -> None:
    for name in _BASE_CHAINS:
        b.chain(name)
    for hook in ("filter-input", "filter-forward", "filter-output"):
        b.chain(hook, "ct state new jump endpoints-check")
    b.chain("nat-prerouting", "jump services")
    b.chain("nat-output", "jump services")
    b.chain("nat-postrouting", "jump masquerading")
    b.chain("endpoints-check",
            "ip daddr . meta l4proto . th dport vmap @no-endpoint-services",
            f"fib daddr type local {_NO_LOCALHOST} meta l4proto . th dport vmap @no-endpoint-nodeports")
    # A TCP reset refuses the connection at once; other protocols get ICMP port unreachable.
    b.chain("reject-chain", "meta l4proto tcp reject with tcp reset", "reject")
    b.chain("services",
            "ip daddr . meta l4proto . th dport vmap @service-ips",
            f"fib daddr type local {_NO_LOCALHOST} meta l4proto . th dport vmap @service-nodeports")
    b.chain("mark-for-masquerade", f"mark set mark or {MASQ_MARK}")
    b.chain("masquerading",
            f"mark and {MASQ_MARK} == 0 return",
            f"mark set mark xor {MASQ_MARK}",
            "masquerade fully-random")


def _pick_rules(b: _Builder, sp: ServicePort, chain: str, endpoints: list[Endpoint]) -> None:
    """Affinity checks, then a random pick among ``endpoints``, into ``chain``."""
    if sp.affinity_timeout is not None:
        for ep in endpoints:
            b.chain(chain, f"ip saddr @{affinity_set(sp, ep)} goto {endpoint_chain(sp, ep)}")
    choices = ", ".join(f"{i} : goto {endpoint_chain(sp, ep)}" for i, ep in enumerate(endpoints))
    b.chain(chain, f"numgen random mod {len(endpoints)} vmap {{ {choices} }}")


def _service_port(b: _Builder, sp: ServicePort, eps: _Categorized, cluster_cidrs: list[str]) -> int:
    """Add one service port's chains, sets and map elements; returns its endpoint count."""
    dest = f"{sp.protocol} . {sp.port}"
    if not eps.has_any:
        b.element("no-endpoint-services", f"{sp.cluster_ip} . {dest}", "goto reject-chain", sp.label)
        for ip in (*sp.external_ips, *sp.load_balancer_ips):
            b.element("no-endpoint-services", f"{ip} . {dest}", "goto reject-chain", sp.label)
        if sp.node_port:
            b.element("no-endpoint-nodeports", f"{sp.protocol} . {sp.node_port}", "goto reject-chain", sp.label)
        return 0

    cluster, local = cluster_chain(sp), local_chain(sp)
    # The Cluster chain is also where Local-policy services send their own pods' and the
    # host's traffic to external addresses (as if it went out to a load balancer and back).
    uses_cluster = not sp.internal_local or sp.externally_accessible
    uses_local = bool(eps.local) and (sp.internal_local or (sp.externally_accessible and sp.external_local))
    reachable: dict[tuple[str, int], Endpoint] = {}
    if uses_cluster:
        reachable.update(((e.ip, e.port), e) for e in eps.cluster)
    if uses_local:
        reachable.update(((e.ip, e.port), e) for e in eps.local)

    internal = local if sp.internal_local else cluster
    if sp.internal_local and not eps.local:
        b.element("no-endpoint-services", f"{sp.cluster_ip} . {dest}", "drop", sp.label)
    else:
        b.element("service-ips", f"{sp.cluster_ip} . {dest}", f"goto {internal}", sp.label)
        # Traffic from outside the pod network (the host, other hosts routing the service
        # range here) is masqueraded so that replies come back through this node.
        rule = f"ip daddr {sp.cluster_ip} {sp.protocol} dport {sp.port}"
        if cluster_cidrs:
            rule += f" ip saddr != {_cidr_match(cluster_cidrs)}"
        b.chain(internal, f"{rule} jump mark-for-masquerade")

    if sp.externally_accessible:
        ext = external_chain(sp)
        for ip in (*sp.external_ips, *sp.load_balancer_ips):
            b.element("service-ips", f"{ip} . {dest}", f"goto {ext}", sp.label)
        if sp.node_port:
            b.element("service-nodeports", f"{sp.protocol} . {sp.node_port}", f"goto {ext}", sp.label)
        if not sp.external_local:
            b.chain(ext, "jump mark-for-masquerade", f"goto {cluster}")
        else:
            if cluster_cidrs:
                b.chain(ext, f"ip saddr {_cidr_match(cluster_cidrs)} goto {cluster}")
            b.chain(ext, "fib saddr type local jump mark-for-masquerade", f"fib saddr type local goto {cluster}")
            if eps.local:
                b.chain(ext, f"goto {local}")
            else:
                # Nothing local: what falls through is dropped by the endpoints check.
                for ip in (*sp.external_ips, *sp.load_balancer_ips):
                    b.element("no-endpoint-services", f"{ip} . {dest}", "drop", sp.label)
                if sp.node_port:
                    b.element("no-endpoint-nodeports", f"{sp.protocol} . {sp.node_port}", "drop", sp.label)

    if uses_cluster:
        _pick_rules(b, sp, cluster, eps.cluster)
    if uses_local:
        _pick_rules(b, sp, local, eps.local)
    for ep in sorted(reachable.values(), key=Endpoint.sort_key):
        chain = endpoint_chain(sp, ep)
        # An endpoint reaching itself through the service (hairpin) must be masqueraded,
        # or it would answer itself directly and the connection would never be set up.
        b.chain(chain, f"ip saddr {ep.ip} jump mark-for-masquerade")
        if sp.affinity_timeout is not None:
            b.sets[affinity_set(sp, ep)] = sp.affinity_timeout
            b.chain(chain, f"update @{affinity_set(sp, ep)} {{ ip saddr }}")
        b.chain(chain, f"meta l4proto {sp.protocol} dnat to {ep.ip}:{ep.port}")
    return len(reachable)


def build_ruleset(services: Iterable[Mapping[str, Any]], endpoint_slices: Iterable[Mapping[str, Any]], *,
                  node_name: str, cluster_cidr: str) -> Ruleset:
    """The whole ``ip k3p-proxy`` table for this node, as nft text plus an inventory."""
    cluster_cidrs = parse_cluster_cidr(cluster_cidr)
    by_port = endpoints_by_port(endpoint_slices)
    ports = sorted((sp for svc in services for sp in service_ports(svc)),
                   key=lambda sp: (*sp.key, sp.port))
    b = _Builder()
    _fixed_chains(b)
    endpoints = 0
    for sp in ports:
        endpoints += _service_port(b, sp, categorize(by_port.get(sp.key, []), node_name), cluster_cidrs)

    lines = [f"table {FAMILY} {TABLE} {{", '\tcomment "k3p service proxy"']
    for name, (type_, comment) in _MAP_TYPES.items():
        lines += [f"\tmap {name} {{", f"\t\ttype {type_}", f'\t\tcomment "{comment}"']
        elements = list(b.map_elements[name].values())
        if elements:
            lines.append("\t\telements = {")
            lines += [f"\t\t\t{e}," for e in elements]
            lines.append("\t\t}")
        lines.append("\t}")
    for name in sorted(b.sets):
        lines += [f"\tset {name} {{", "\t\ttype ipv4_addr", "\t\tflags dynamic,timeout",
                  f"\t\ttimeout {b.sets[name]}s", "\t}"]
    fixed = [name for name in b.chains if "/" not in name]  # per-service names always hold a "/"
    per_service = sorted(name for name in b.chains if "/" in name)
    for name in [*fixed, *per_service]:
        lines.append(f"\tchain {name} {{")
        if name in _BASE_CHAINS:
            lines.append(f"\t\t{_BASE_CHAINS[name]}")
        lines += [f"\t\t{rule}" for rule in b.chains[name]]
        lines.append("\t}")
    lines.append("}")
    return Ruleset(
        text="\n".join(lines) + "\n",
        chains=[*fixed, *per_service],
        maps=list(_MAP_TYPES),
        sets=sorted(b.sets),
        service_ports=len(ports),
        endpoints=endpoints,
        rules=sum(len(r) for r in b.chains.values()),
        elements=sum(len(e) for e in b.map_elements.values()),
    )


def render_ruleset(services: Iterable[Mapping[str, Any]], endpoint_slices: Iterable[Mapping[str, Any]], *,
                   node_name: str, cluster_cidr: str) -> str:
    """The nft text of the ``ip k3p-proxy`` table for ``node_name`` (see the module's docstring).

    ``services`` and ``endpoint_slices`` are API objects (dicts); ``cluster_cidr`` is the
    pod network (comma-separated for several), whose outside is masqueraded.
    """
    return build_ruleset(services, endpoint_slices, node_name=node_name, cluster_cidr=cluster_cidr).text
