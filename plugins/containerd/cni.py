"""The node's CNI network config: a Linux bridge with host-local IPAM on the node's pod CIDR.

containerd's CRI plugin reads the first config in its conf_dir and reloads it when the
folder changes, so rewriting the file is enough to switch subnets for new pods.
"""

from __future__ import annotations

import ipaddress
import json
import os
from pathlib import Path

#: until the node's spec.podCIDR is known
DEFAULT_POD_CIDR = "10.42.0.0/24"
CONFLIST_NAME = "10-k3p.conflist"
DEFAULT_NETWORK_NAME = "k3p"
DEFAULT_BRIDGE = "cni0"


def cni_config(
    pod_cidr: str,
    *,
    network_name: str = DEFAULT_NETWORK_NAME,
    bridge: str = DEFAULT_BRIDGE,
    ipam_data_dir: str | Path | None = None,
    ip_masq: bool = True,
    mtu: int = 0,
) -> dict:
    """The conflist as a dict: bridge (gateway, hairpin) + host-local IPAM, then portmap.

    The pod's ``lo`` is not in the list: containerd's CRI brings up loopback itself in
    every pod network namespace.
    """
    net = ipaddress.ip_network(pod_cidr, strict=False)
    if len(bridge) > 15:
        raise ValueError(f"bridge name {bridge!r} is longer than the kernel's 15 characters")
    ipam: dict = {
        "type": "host-local",
        "ranges": [[{"subnet": str(net)}]],
        "routes": [{"dst": "0.0.0.0/0" if net.version == 4 else "::/0"}],
    }
    if ipam_data_dir:
        ipam["dataDir"] = str(ipam_data_dir)
    bridge_conf: dict = {
        "type": "bridge",
        "bridge": bridge,
        "isGateway": True,  # the bridge gets the subnet's first address and turns on ip_forward
        "ipMasq": ip_masq,
        "hairpinMode": True,  # a pod reaches itself through a service IP
        "ipam": ipam,
    }
    if mtu:
        bridge_conf["mtu"] = mtu
    return {
        "cniVersion": "1.0.0",
        "name": network_name,
        "plugins": [bridge_conf, {"type": "portmap", "capabilities": {"portMappings": True}, "snat": True}],
    }


def write_cni_config(
    folder: str | Path,
    pod_cidr: str,
    *,
    network_name: str = DEFAULT_NETWORK_NAME,
    bridge: str = DEFAULT_BRIDGE,
    ipam_data_dir: str | Path | None = None,
    ip_masq: bool = True,
    mtu: int = 0,
) -> bool:
    """Write ``<folder>/10-k3p.conflist`` for ``pod_cidr``; returns whether the file changed.

    The file is replaced atomically, so containerd never reads half of it.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    conf = cni_config(pod_cidr, network_name=network_name, bridge=bridge, ipam_data_dir=ipam_data_dir,
                      ip_masq=ip_masq, mtu=mtu)
    text = json.dumps(conf, indent=2) + "\n"
    path = folder / CONFLIST_NAME
    if path.exists() and path.read_text() == text:
        return False
    tmp = folder / f".{CONFLIST_NAME}.tmp"
    tmp.write_text(text)
    os.replace(tmp, path)
    return True
