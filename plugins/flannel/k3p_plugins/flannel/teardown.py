"""Remove everything the pod network put on a node (for uninstall scripts and tests)."""

from __future__ import annotations

from collections.abc import Sequence

from k3p_plugins.flannel.backends import teardown_links
from k3p_plugins.flannel.cni import BRIDGE
from k3p_plugins.flannel.masq import delete_rules_sync


def teardown(netns: str | None = None, command_prefix: Sequence[str] | None = None, bridge: str = BRIDGE) -> None:
    """Delete ``flannel.1`` (its neighbours, FDB and routes go with it), this plugin's routes,
    the pod bridge and the ``ip k3p-flannel`` nftables table. Blocking; safe to repeat.

    ``netns`` does it inside that network namespace instead of the host's.
    """
    from pyroute2 import IPRoute

    ipr = IPRoute(netns=netns) if netns else IPRoute()
    try:
        teardown_links(ipr, bridge)
    finally:
        ipr.close()
    prefix = tuple(command_prefix) if command_prefix is not None else (
        ("ip", "netns", "exec", netns) if netns else ())
    delete_rules_sync(prefix)
