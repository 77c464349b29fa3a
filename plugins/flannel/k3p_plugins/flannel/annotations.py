"""What each node tells the others about its pod network, as flannel's Node annotations.

A node running the plugin writes four annotations on its own Node (flannel's names, so
tools that read flannel's state keep working):

- ``flannel.alpha.coreos.com/backend-type``: ``vxlan`` or ``host-gw``
- ``flannel.alpha.coreos.com/backend-data``: for vxlan ``{"VNI":1,"VtepMAC":"<mac>"}``, for
  host-gw ``null`` (flannel's JSON of an empty backend attribute)
- ``flannel.alpha.coreos.com/public-ip``: the underlay address peers send traffic to
- ``flannel.alpha.coreos.com/kube-subnet-manager``: ``"true"``; nodes without it are not peers

``public-ip-overwrite`` on a Node replaces the address that node announces (flannel's way to
announce an external address). Together with the Node's ``spec.podCIDR`` this is all a peer
needs to reach the node's pods.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

PREFIX = "flannel.alpha.coreos.com/"
BACKEND_TYPE = PREFIX + "backend-type"
BACKEND_DATA = PREFIX + "backend-data"
PUBLIC_IP = PREFIX + "public-ip"
PUBLIC_IP_OVERWRITE = PREFIX + "public-ip-overwrite"
KUBE_SUBNET_MANAGER = PREFIX + "kube-subnet-manager"

VXLAN = "vxlan"
HOST_GW = "host-gw"
NONE = "none"
BACKENDS = (VXLAN, HOST_GW, NONE)

#: flannel's default VXLAN network identifier (its device is ``flannel.<VNI>``)
DEFAULT_VNI = 1

_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


def normalize_mac(mac: str) -> str:
    """``mac`` in the kernel's form (lower case, colons); ValueError when it is not a MAC."""
    text = str(mac).strip().lower().replace("-", ":")
    if not _MAC.match(text):
        raise ValueError(f"not a MAC address: {mac!r}")
    return text


def encode_backend_data(backend: str, vtep_mac: str = "", vni: int = DEFAULT_VNI) -> str:
    """The ``backend-data`` annotation: compact JSON as flannel writes it."""
    if backend == VXLAN:
        return json.dumps({"VNI": vni, "VtepMAC": normalize_mac(vtep_mac)}, separators=(",", ":"))
    return "null"


def decode_backend_data(text: str | None) -> dict[str, Any] | None:
    """The ``backend-data`` annotation as a dict; None when absent, ``null`` or not a JSON object."""
    if not text:
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def node_annotations(backend: str, public_ip: str, vtep_mac: str = "", vni: int = DEFAULT_VNI) -> dict[str, str]:
    """The annotations a node running ``backend`` puts on its own Node."""
    return {
        BACKEND_TYPE: backend,
        BACKEND_DATA: encode_backend_data(backend, vtep_mac, vni),
        PUBLIC_IP: str(ipaddress.IPv4Address(public_ip)),
        KUBE_SUBNET_MANAGER: "true",
    }


def stored_vtep_mac(node: Mapping[str, Any] | None) -> str:
    """The VTEP MAC a node announced earlier ("" if none): reused when flannel.1 is recreated."""
    data = decode_backend_data(_annotations(node).get(BACKEND_DATA))
    try:
        return normalize_mac(data.get("VtepMAC", "")) if data else ""
    except ValueError:
        return ""


def public_ip_override(node: Mapping[str, Any] | None) -> str:
    """The node's ``public-ip-overwrite`` annotation if it holds an IPv4 address, else ""."""
    value = _annotations(node).get(PUBLIC_IP_OVERWRITE, "")
    try:
        return str(ipaddress.IPv4Address(value.strip())) if value else ""
    except ValueError:
        return ""


@dataclass(frozen=True)
class Peer:
    """Another node's pod subnet and how to reach it."""

    name: str
    subnet: ipaddress.IPv4Network
    public_ip: str
    backend: str
    vtep_mac: str = ""
    vni: int = DEFAULT_VNI

    @property
    def vtep_ip(self) -> str:
        """The peer's flannel.1 address: its pod subnet's network address (flannel's convention)."""
        return str(self.subnet.network_address)


def node_pod_cidr(node: Mapping[str, Any] | None) -> ipaddress.IPv4Network | None:
    """The Node's IPv4 pod range (``spec.podCIDRs`` first, then ``spec.podCIDR``), or None."""
    spec = (node or {}).get("spec") or {}
    for cidr in [*(spec.get("podCIDRs") or []), spec.get("podCIDR") or ""]:
        try:
            net = ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            continue
        if isinstance(net, ipaddress.IPv4Network):
            return net
    return None


def peer_from_node(node: Mapping[str, Any]) -> Peer | None:
    """The peer a Node describes, or None when it has no podCIDR or incomplete annotations."""
    ann = _annotations(node)
    if ann.get(KUBE_SUBNET_MANAGER) != "true":
        return None
    subnet = node_pod_cidr(node)
    backend = ann.get(BACKEND_TYPE, "")
    if subnet is None or backend not in (VXLAN, HOST_GW):
        return None
    try:
        public_ip = str(ipaddress.IPv4Address(ann.get(PUBLIC_IP, "").strip()))
    except ValueError:
        return None
    name = str((node.get("metadata") or {}).get("name") or "")
    if backend == HOST_GW:
        return Peer(name, subnet, public_ip, backend)
    data = decode_backend_data(ann.get(BACKEND_DATA))
    if not data:
        return None
    try:
        mac = normalize_mac(data.get("VtepMAC", ""))
        vni = int(data.get("VNI", DEFAULT_VNI))
    except (TypeError, ValueError):
        return None
    return Peer(name, subnet, public_ip, backend, mac, vni)


def peers_from_nodes(nodes: Iterable[Mapping[str, Any]], own_name: str, backend: str,
                     own_subnet: ipaddress.IPv4Network | None = None) -> dict[str, Peer]:
    """The peers this node must reach, by node name.

    Skipped: the node itself, nodes without a podCIDR or without the annotations, nodes on
    another backend (flannel ignores them too), and a node claiming this node's subnet.
    """
    peers: dict[str, Peer] = {}
    for node in nodes:
        name = (node.get("metadata") or {}).get("name")
        if not name or name == own_name:
            continue
        peer = peer_from_node(node)
        if peer is None or peer.backend != backend:
            continue
        if own_subnet is not None and peer.subnet.overlaps(own_subnet):
            continue
        peers[name] = peer
    return peers


def _annotations(node: Mapping[str, Any] | None) -> Mapping[str, str]:
    return ((node or {}).get("metadata") or {}).get("annotations") or {}
