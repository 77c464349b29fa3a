"""The node's service proxy (kube-proxy's job) on nftables.

Services and EndpointSlices become one nftables table, ``ip k3p-proxy``: ClusterIPs,
NodePorts (on every local address but loopback), externalIPs and load-balancer IPs are
DNATed to ready endpoints picked at random, with ClientIP session affinity,
``externalTrafficPolicy``/``internalTrafficPolicy: Local``, masquerading of traffic from
outside the pod network and of hairpin traffic, and a reject for services without
endpoints. ``render_ruleset`` is the pure rule generation, ``proxy_component`` the
supervised task that keeps the table current, ``remove_proxy_rules`` the clean-up for
nodes where the proxy is disabled.
"""

from k3p.agent.proxy.controller import proxy_component
from k3p.agent.proxy.nft import remove_proxy_rules
from k3p.agent.proxy.rules import render_ruleset

__all__ = ["proxy_component", "remove_proxy_rules", "render_ruleset"]
