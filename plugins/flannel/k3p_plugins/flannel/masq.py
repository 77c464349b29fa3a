"""Masquerading and forwarding for pod traffic: one nftables table, ``ip k3p-flannel``.

The rules follow flannel's (its iptables ``FLANNEL-POSTRTG``/``FLANNEL-FWD`` chains):

- packets the service proxy marked for masquerading (mark 0x4000) are left to it;
- traffic between this node's pods and the cluster range keeps its addresses, both ways;
- traffic from outside the cluster range to this node's pods keeps its source;
- pods talking to anything outside the cluster range (multicast aside) are masqueraded;
- the host talking to pods of other nodes is masqueraded (so replies come back over the overlay).

There is no rule for the service range: service addresses are rewritten to pod addresses
before postrouting. Forwarding to and from the cluster range is accepted. The table is
replaced in one ``nft -f`` transaction, so there is never a moment without rules.
"""

from __future__ import annotations

import asyncio
import ipaddress
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

TABLE = "k3p-flannel"
#: kube-proxy's masquerade mark, which flannel leaves alone
KUBE_PROXY_MARK = 0x4000
MULTICAST = "224.0.0.0/4"


class CommandError(Exception):
    """A host command (nft, sysctl) failed."""


def ruleset(cluster_cidr: str, pod_cidr: str) -> str:
    """The nft script that (re)creates the table for this node's ``pod_cidr`` inside ``cluster_cidr``."""
    cluster = ipaddress.IPv4Network(cluster_cidr, strict=False)
    pods = ipaddress.IPv4Network(pod_cidr, strict=False)
    return f"""\
table ip {TABLE} {{
}}
delete table ip {TABLE}
table ip {TABLE} {{
	chain postrouting {{
		type nat hook postrouting priority srcnat; policy accept;
		meta mark & {KUBE_PROXY_MARK:#x} == {KUBE_PROXY_MARK:#x} return
		ip saddr {pods} ip daddr {cluster} return
		ip saddr {cluster} ip daddr {pods} return
		ip saddr != {cluster} ip daddr {pods} return
		ip saddr {cluster} ip daddr != {MULTICAST} masquerade fully-random
		ip saddr != {cluster} ip daddr {cluster} masquerade fully-random
	}}
	chain forward {{
		type filter hook forward priority filter; policy accept;
		ip saddr {cluster} accept
		ip daddr {cluster} accept
	}}
}}
"""


def delete_script() -> str:
    """An nft script that removes the table, and succeeds when there is none."""
    return f"table ip {TABLE} {{\n}}\ndelete table ip {TABLE}\n"


async def run_command(argv: Sequence[str], stdin: str | None = None) -> str:
    """Run ``argv`` (optionally feeding ``stdin``); its output, or CommandError with its stderr."""
    # stdin from an unlinked temporary file, not a pipe: under uvloop, feeding a pipe to a child
    # that exits without reading it raises RuntimeError instead of reporting the child's error
    with tempfile.TemporaryFile() as source:
        if stdin is not None:
            source.write(stdin.encode())
            source.seek(0)
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=source if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = await proc.communicate()
    if proc.returncode != 0:
        raise CommandError(f"{' '.join(argv)} failed ({proc.returncode}): {err.decode(errors='replace').strip()}")
    return out.decode(errors="replace")


async def apply_rules(cluster_cidr: str, pod_cidr: str, prefix: Sequence[str] = ()) -> None:
    """Install the table. ``prefix`` runs nft elsewhere, e.g. ``("ip", "netns", "exec", NAME)``."""
    await run_command([*prefix, "nft", "-f", "-"], ruleset(cluster_cidr, pod_cidr))


async def enable_ip_forward(prefix: Sequence[str] = ()) -> None:
    """``net.ipv4.ip_forward=1``: the node routes between pods, overlay and underlay."""
    if prefix:
        await run_command([*prefix, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])
        return
    path = Path("/proc/sys/net/ipv4/ip_forward")
    if path.read_text().strip() != "1":
        path.write_text("1\n")


def delete_rules_sync(prefix: Sequence[str] = ()) -> None:
    """Remove the table (blocking; for teardown)."""
    result = subprocess.run([*prefix, "nft", "-f", "-"], input=delete_script(), text=True, capture_output=True,
                            check=False)
    if result.returncode != 0:
        raise CommandError(f"nft failed ({result.returncode}): {result.stderr.strip()}")
