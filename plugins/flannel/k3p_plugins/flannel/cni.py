"""The node's CNI network config: the ``cni0`` bridge with host-local IPAM on the node's podCIDR.

containerd's CRI plugin reads the first config (by name) in its conf_dir and reloads it
when the folder changes. The file name is K3s's ``10-flannel.conflist``. The bridge does
no masquerading of its own (``ipMasq: false``): the plugin's nftables table does it for
the whole cluster range, so traffic between pods of different nodes keeps its source.
"""

from __future__ import annotations

import ipaddress
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from k3p_plugins.flannel.annotations import VXLAN

CONFLIST_NAME = "10-flannel.conflist"
#: K3s's network name
NETWORK_NAME = "cbr0"
BRIDGE = "cni0"
#: what VXLAN encapsulation adds to each packet (outer Ethernet, IP, UDP and VXLAN headers)
VXLAN_OVERHEAD = 50


def conf_dir(agent_dir: str | Path) -> Path:
    """Where containerd reads CNI configs: ``<agent dir>/etc/cni/net.d``."""
    return Path(agent_dir) / "etc" / "cni" / "net.d"


def ipam_dir(agent_dir: str | Path) -> Path:
    """host-local's allocation records, kept with the node's other state."""
    return Path(agent_dir) / "cni" / "networks"


def backend_mtu(backend: str, underlay_mtu: int) -> int:
    """The pods' MTU: the underlay's, less the encapsulation overhead for vxlan."""
    return underlay_mtu - VXLAN_OVERHEAD if backend == VXLAN else underlay_mtu


def cni_conflist(pod_cidr: str, *, mtu: int, ipam_data_dir: str | Path, bridge: str = BRIDGE,
                 network_name: str = NETWORK_NAME) -> dict[str, Any]:
    """The conflist as a dict: bridge (gateway, hairpin, MTU) with host-local IPAM, then portmap."""
    net = ipaddress.ip_network(pod_cidr, strict=False)
    if len(bridge) > 15:
        raise ValueError(f"bridge name {bridge!r} is longer than the kernel's 15 characters")
    return {
        "cniVersion": "1.0.0",
        "name": network_name,
        "plugins": [
            {
                "type": "bridge",
                "bridge": bridge,
                "isGateway": True,  # the bridge holds the subnet's first address: the pods' default gateway
                "ipMasq": False,
                "hairpinMode": True,  # a pod reaches itself through a service IP
                # after a podCIDR change the bridge takes the new gateway address instead of failing
                "forceAddress": True,
                "mtu": mtu,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": str(net)}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(ipam_data_dir),
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}, "snat": True},
        ],
    }


def write_conflist(agent_dir: str | Path, pod_cidr: str, *, mtu: int) -> bool:
    """Write ``<agent dir>/etc/cni/net.d/10-flannel.conflist``; returns whether the file changed.

    The file is replaced atomically, so containerd never reads half of it.
    """
    folder = conf_dir(agent_dir)
    folder.mkdir(parents=True, exist_ok=True)
    text = json.dumps(cni_conflist(pod_cidr, mtu=mtu, ipam_data_dir=ipam_dir(agent_dir)), indent=2) + "\n"
    path = folder / CONFLIST_NAME
    if path.exists() and path.read_text() == text:
        return False
    tmp = folder / f".{CONFLIST_NAME}.tmp"
    tmp.write_text(text)
    os.replace(tmp, path)
    return True


def readiness_check(agent_dir: str | Path) -> Callable[[], tuple[bool, str]]:
    """A node readiness check: ready once this plugin's conflist exists (message says why not)."""
    path = conf_dir(agent_dir) / CONFLIST_NAME

    def check() -> tuple[bool, str]:
        if path.exists():
            return True, ""
        return False, "container runtime network not ready: the pod network has not written its CNI config yet"

    return check
