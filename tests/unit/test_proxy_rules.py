"""The service proxy's nftables ruleset, rendered from Services and EndpointSlices.

Every rendered ruleset also goes through ``nft -c -f -`` (check mode: parsed and
validated by the kernel, nothing committed) when running as root with nft installed.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import subprocess
from typing import Any

import pytest

from k3p_plugins.kube_proxy import render_ruleset
from k3p_plugins.kube_proxy.nft import TableContents, replace_script, update_script
from k3p_plugins.kube_proxy.rules import build_ruleset

NODE = "node-a"
CIDR = "10.42.0.0/16"
_CAN_CHECK = os.geteuid() == 0 and shutil.which("nft") is not None


def service(name: str, cluster_ip: str = "10.43.0.10", ports: list[dict[str, Any]] | None = None,
            namespace: str = "default", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"type": "ClusterIP", "clusterIP": cluster_ip, "clusterIPs": [cluster_ip],
                 "ports": ports if ports is not None else [{"name": "http", "port": 80, "protocol": "TCP"}],
                 **spec},
    }


def endpoint(ip: str, node: str | None = NODE, **conditions: bool) -> dict[str, Any]:
    ep: dict[str, Any] = {"addresses": [ip], "conditions": conditions}
    if node:
        ep["nodeName"] = node
    return ep


def endpoint_slice(svc: str, endpoints: list[dict[str, Any]], ports: list[dict[str, Any]] | None = None,
                   name: str | None = None, namespace: str = "default",
                   address_type: str = "IPv4") -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name or f"{svc}-abcde", "namespace": namespace,
                     "labels": {"kubernetes.io/service-name": svc}},
        "addressType": address_type,
        "ports": ports if ports is not None else [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": endpoints,
    }


def nft_check(text: str) -> None:
    if not _CAN_CHECK:
        return
    result = subprocess.run(["nft", "-c", "-f", "-"], input=text, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, f"nft -c rejected the ruleset:\n{result.stderr}\n{text}"


def render(services: list[dict[str, Any]], slices: list[dict[str, Any]], node: str = NODE) -> str:
    text = render_ruleset(services, slices, node_name=node, cluster_cidr=CIDR)
    nft_check(text)
    return text


def chain(text: str, kind: str, svc: str = "default/web", name: str = "") -> list[str]:
    """The rules of the ``kind`` chain (service, local, external, endpoint) of ``svc``, or [] if absent."""
    found = [body for base, body in re.findall(rf"\tchain {kind}-[A-Z2-7]{{8}}-(\S+) {{\n(.*?)\n\t}}", text, re.S)
             if (base == svc or base.startswith((svc + "/", svc + "__"))) and name in base]
    assert len(found) <= 1, f"several {kind} chains match"
    return [line.strip() for line in found[0].splitlines()] if found else []


def chain_names(text: str, kind: str) -> list[str]:
    return re.findall(rf"\tchain ({kind}-\S+) {{", text)


def map_elements(text: str, name: str) -> list[str]:
    m = re.search(rf"\tmap {name} {{\n(.*?)\n\t}}", text, re.S)
    assert m, f"map {name} missing"
    return [line.strip().rstrip(",") for line in m.group(1).splitlines()
            if " : " in line and not line.strip().startswith("type ")]


def dnat_targets(text: str) -> set[str]:
    return set(re.findall(r"dnat to (\S+)", text))


def test_cluster_ip_balances_over_two_endpoints() -> None:
    text = render([service("web")], [endpoint_slice("web", [endpoint("10.42.0.5"), endpoint("10.42.1.7", "b")])])
    elements = map_elements(text, "service-ips")
    assert len(elements) == 1
    assert re.fullmatch(r'10\.43\.0\.10 \. tcp \. 80 comment "default/web:http" : goto service-\S+/web/tcp/http',
                        elements[0])
    rules = chain(text, "service")
    assert rules[0] == f"ip daddr 10.43.0.10 tcp dport 80 ip saddr != {CIDR} jump mark-for-masquerade"
    assert rules[-1].startswith("numgen random mod 2 vmap { 0 : goto endpoint-")
    assert dnat_targets(text) == {"10.42.0.5:8080", "10.42.1.7:8080"}
    ep = chain(text, "endpoint", name="10.42.1.7/8080")
    # hairpin traffic (the endpoint reaching itself) is masqueraded before the DNAT
    assert ep == ["ip saddr 10.42.1.7 jump mark-for-masquerade", "meta l4proto tcp dnat to 10.42.1.7:8080"]
    assert "masquerade fully-random" in text
    assert map_elements(text, "no-endpoint-services") == []


def test_endpoint_port_follows_the_port_name() -> None:
    svc = service("web", ports=[{"name": "http", "port": 80, "protocol": "TCP"},
                                {"name": "metrics", "port": 9090, "protocol": "TCP"},
                                {"name": "dns", "port": 53, "protocol": "UDP"}])
    slice_ = endpoint_slice("web", [endpoint("10.42.0.5")], ports=[
        {"name": "metrics", "port": 9100, "protocol": "TCP"},
        {"name": "http", "port": 8080, "protocol": "TCP"},
        {"name": "dns", "port": 5353, "protocol": "UDP"},
    ])
    text = render([svc], [slice_])
    assert chain(text, "endpoint", "default/web/tcp/http") == [
        "ip saddr 10.42.0.5 jump mark-for-masquerade", "meta l4proto tcp dnat to 10.42.0.5:8080"]
    assert chain(text, "endpoint", "default/web/tcp/metrics")[-1] == "meta l4proto tcp dnat to 10.42.0.5:9100"
    assert chain(text, "endpoint", "default/web/udp/dns")[-1] == "meta l4proto udp dnat to 10.42.0.5:5353"
    assert any(e.startswith("10.43.0.10 . udp . 53 ") for e in map_elements(text, "service-ips"))


def test_slice_port_with_another_name_gives_no_endpoints() -> None:
    text = render([service("web")], [endpoint_slice("web", [endpoint("10.42.0.5")],
                                                    ports=[{"name": "https", "port": 8443}])])
    assert dnat_targets(text) == set()
    assert map_elements(text, "no-endpoint-services")[0].startswith("10.43.0.10 . tcp . 80 ")


def test_unnamed_single_port() -> None:
    svc = service("web", ports=[{"port": 80, "protocol": "TCP"}])
    text = render([svc], [endpoint_slice("web", [endpoint("10.42.0.5")], ports=[{"port": 8080}])])
    assert dnat_targets(text) == {"10.42.0.5:8080"}


def test_not_ready_endpoints_are_left_out() -> None:
    eps = [endpoint("10.42.0.5", ready=True), endpoint("10.42.0.6", ready=False), endpoint("10.42.0.7"),
           endpoint("10.42.0.8", ready=False, serving=True, terminating=True)]
    text = render([service("web")], [endpoint_slice("web", eps)])
    # an absent ready condition means ready; terminating endpoints wait while any is ready
    assert dnat_targets(text) == {"10.42.0.5:8080", "10.42.0.7:8080"}
    assert "numgen random mod 2 " in text


def test_serving_terminating_endpoints_used_when_none_is_ready() -> None:
    eps = [endpoint("10.42.0.6", ready=False),
           endpoint("10.42.0.8", ready=False, serving=True, terminating=True),
           endpoint("10.42.0.9", ready=False, serving=False, terminating=True)]
    text = render([service("web")], [endpoint_slice("web", eps)])
    assert dnat_targets(text) == {"10.42.0.8:8080"}


def test_no_endpoints_rejects_cluster_ip_and_node_port() -> None:
    svc = service("web", type="NodePort", ports=[{"name": "http", "port": 80, "nodePort": 30080}])
    for slices in ([], [endpoint_slice("web", [endpoint("10.42.0.6", ready=False)])]):
        text = render([svc], slices)
        assert map_elements(text, "service-ips") == []
        assert map_elements(text, "service-nodeports") == []
        assert map_elements(text, "no-endpoint-services") == [
            '10.43.0.10 . tcp . 80 comment "default/web:http" : goto reject-chain']
        assert map_elements(text, "no-endpoint-nodeports") == [
            'tcp . 30080 comment "default/web:http" : goto reject-chain']
        assert chain_names(text, "service") == []
    assert "\tchain reject-chain {\n\t\tmeta l4proto tcp reject with tcp reset\n\t\treject\n\t}" in text
    for hook in ("input", "forward", "output"):
        assert re.search(rf"chain filter-{hook} {{\n\t\ttype filter hook {hook} priority -110; policy accept;\n"
                         r"\t\tct state new jump endpoints-check\n", text)


def test_node_port_masquerades_and_uses_every_endpoint() -> None:
    svc = service("web", type="NodePort", ports=[{"name": "http", "port": 80, "nodePort": 30080}])
    text = render([svc], [endpoint_slice("web", [endpoint("10.42.0.5"), endpoint("10.42.1.7", "node-b")])])
    [element] = map_elements(text, "service-nodeports")
    assert re.fullmatch(r'tcp \. 30080 comment "default/web:http" : goto external-\S+/web/tcp/http', element)
    ext = chain(text, "external")
    assert ext[0] == "jump mark-for-masquerade"
    assert re.fullmatch(r"goto service-\S+-default/web/tcp/http", ext[1])
    assert "fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @service-nodeports" in text
    assert dnat_targets(text) == {"10.42.0.5:8080", "10.42.1.7:8080"}


def test_external_traffic_policy_local_with_a_local_endpoint() -> None:
    svc = service("web", type="NodePort", externalTrafficPolicy="Local",
                  ports=[{"name": "http", "port": 80, "nodePort": 30080}])
    text = render([svc], [endpoint_slice("web", [endpoint("10.42.0.5"), endpoint("10.42.1.7", "node-b")])])
    ext = chain(text, "external")
    assert "jump mark-for-masquerade" not in ext  # external clients keep their source address
    assert ext[0].startswith(f"ip saddr {CIDR} goto service-")  # pods: as if via the load balancer
    assert ext[1] == "fib saddr type local jump mark-for-masquerade"
    assert re.fullmatch(r"goto local-\S+-default/web/tcp/http", ext[-1])
    local = chain(text, "local")
    assert re.fullmatch(r"numgen random mod 1 vmap \{ 0 : goto endpoint-\S+__10\.42\.0\.5/8080 \}", local[-1])
    # the ClusterIP still reaches every endpoint
    assert "numgen random mod 2 " in "\n".join(chain(text, "service"))
    assert map_elements(text, "no-endpoint-nodeports") == []


def test_external_traffic_policy_local_without_a_local_endpoint_drops_node_port() -> None:
    svc = service("web", type="NodePort", externalTrafficPolicy="Local",
                  ports=[{"name": "http", "port": 80, "nodePort": 30080}])
    text = render([svc], [endpoint_slice("web", [endpoint("10.42.1.7", "node-b")])])
    assert chain(text, "local") == []
    assert not any(r.startswith("goto local-") for r in chain(text, "external"))
    assert map_elements(text, "no-endpoint-nodeports") == ['tcp . 30080 comment "default/web:http" : drop']
    assert map_elements(text, "no-endpoint-services") == []
    assert len(map_elements(text, "service-ips")) == 1  # ClusterIP traffic is unaffected
    # the same Service seen from the node that has the endpoint
    text_b = render([svc], [endpoint_slice("web", [endpoint("10.42.1.7", "node-b")])], node="node-b")
    assert map_elements(text_b, "no-endpoint-nodeports") == []
    assert "10.42.1.7/8080" in chain(text_b, "local")[-1]


def test_internal_traffic_policy_local() -> None:
    svc = service("web", internalTrafficPolicy="Local")
    text = render([svc], [endpoint_slice("web", [endpoint("10.42.1.7", "node-b")])])
    assert map_elements(text, "no-endpoint-services") == ['10.43.0.10 . tcp . 80 comment "default/web:http" : drop']
    text = render([svc], [endpoint_slice("web", [endpoint("10.42.0.5"), endpoint("10.42.1.7", "node-b")])])
    assert re.search(r": goto local-\S+-default/web/tcp/http$", map_elements(text, "service-ips")[0])
    assert dnat_targets(text) == {"10.42.0.5:8080"}


def test_client_ip_affinity() -> None:
    svc = service("web", sessionAffinity="ClientIP")
    eps = [endpoint("10.42.0.5"), endpoint("10.42.1.7", "node-b")]
    text = render([svc], [endpoint_slice("web", eps)])
    sets = re.findall(r"\tset (affinity-\S+) {\n\t\ttype ipv4_addr\n\t\tflags dynamic,timeout\n\t\ttimeout (\d+)s",
                      text)
    assert len(sets) == 2 and {t for _, t in sets} == {"10800"}
    rules = chain(text, "service")
    # remembered clients go to their endpoint before the random pick
    assert [r.split(" goto ")[0] for r in rules[1:3]] == [f"ip saddr @{name}" for name, _ in sorted(
        sets, key=lambda s: "10.42.1.7" in s[0])]
    assert rules[3].startswith("numgen random mod 2 ")
    ep = chain(text, "endpoint", name="10.42.0.5/8080")
    assert re.fullmatch(r"update @affinity-\S+10\.42\.0\.5/8080 \{ ip saddr \}", ep[1])
    assert ep[2] == "meta l4proto tcp dnat to 10.42.0.5:8080"

    svc["spec"]["sessionAffinityConfig"] = {"clientIP": {"timeoutSeconds": 60}}
    text60 = render([svc], [endpoint_slice("web", eps)])
    assert re.findall(r"timeout (\d+)s", text60) == ["60", "60"]
    # a new timeout needs new sets (a set's timeout cannot change in place)
    assert set(re.findall(r"\tset (\S+) {", text60)).isdisjoint(name for name, _ in sets)


def test_headless_and_external_name_services_are_skipped() -> None:
    headless = service("headless", cluster_ip="None")
    external = {"metadata": {"name": "ext", "namespace": "default"},
                "spec": {"type": "ExternalName", "externalName": "example.org", "ports": [{"port": 80}]}}
    unallocated = service("pending", cluster_ip="")
    slices = [endpoint_slice(name, [endpoint("10.42.0.5")]) for name in ("headless", "ext", "pending")]
    text = render([headless, external, unallocated], slices)
    for name in ("service-ips", "service-nodeports", "no-endpoint-services", "no-endpoint-nodeports"):
        assert map_elements(text, name) == []
    assert dnat_targets(text) == set()
    assert chain_names(text, "service") == chain_names(text, "endpoint") == []


def test_slices_of_other_services_families_and_duplicates() -> None:
    slices = [
        endpoint_slice("web", [endpoint("10.42.0.5")], name="web-1"),
        endpoint_slice("web", [endpoint("10.42.0.5", ready=False), endpoint("10.42.0.6")], name="web-2"),
        endpoint_slice("web", [endpoint("fd00::5")], name="web-3", address_type="IPv6"),
        endpoint_slice("web", [endpoint("10.42.0.9")], name="web-4", namespace="other"),
        endpoint_slice("api", [endpoint("10.42.0.7")], name="api-1"),
    ]
    text = render([service("web")], slices)
    # the address in two slices counts once (ready wins); other namespaces and families stay out
    assert dnat_targets(text) == {"10.42.0.5:8080", "10.42.0.6:8080"}
    assert "numgen random mod 2 " in text


def test_external_and_load_balancer_ips() -> None:
    svc = service("web", type="LoadBalancer", externalIPs=["192.0.2.10"],
                  ports=[{"name": "http", "port": 80, "nodePort": 30080}])
    svc["status"] = {"loadBalancer": {"ingress": [{"ip": "192.0.2.20"}]}}
    text = render([svc], [endpoint_slice("web", [endpoint("10.42.0.5")])])
    elements = map_elements(text, "service-ips")
    assert [e.split(" ")[0] for e in elements] == ["10.43.0.10", "192.0.2.10", "192.0.2.20"]
    assert all(": goto external-" in e for e in elements[1:])
    assert len(map_elements(text, "service-nodeports")) == 1


def test_text_is_stable() -> None:
    services = [service(f"svc{i}", cluster_ip=f"10.43.1.{i}", sessionAffinity="ClientIP" if i % 2 else "None",
                        type="NodePort" if i % 3 == 0 else "ClusterIP",
                        ports=[{"name": "http", "port": 80, "nodePort": 30000 + i}]) for i in range(1, 12)]
    slices = [endpoint_slice(f"svc{i}", [endpoint(f"10.42.{i}.{j}", f"node-{j % 3}") for j in range(1, 5)])
              for i in range(1, 12)]
    first = render(services, slices)
    for seed in range(3):
        rng = random.Random(seed)
        shuffled_slices = [dict(s, endpoints=rng.sample(s["endpoints"], len(s["endpoints"]))) for s in slices]
        again = render_ruleset(rng.sample(services, len(services)), rng.sample(shuffled_slices, len(slices)),
                               node_name=NODE, cluster_cidr=CIDR)
        assert again == first
    names = re.findall(r"\tchain (\S+) {", first)
    assert len(names) == len(set(names))
    assert all(len(n) < 256 for n in names)


def test_build_ruleset_inventory_matches_text() -> None:
    rs = build_ruleset([service("web", sessionAffinity="ClientIP")],
                       [endpoint_slice("web", [endpoint("10.42.0.5"), endpoint("10.42.0.6")])],
                       node_name=NODE, cluster_cidr=CIDR)
    assert rs.chains == re.findall(r"\tchain (\S+) {", rs.text)
    assert rs.sets == re.findall(r"\tset (\S+) {", rs.text)
    assert rs.maps == re.findall(r"\tmap (\S+) {", rs.text)
    assert (rs.service_ports, rs.endpoints) == (1, 2)


def test_update_script_flushes_and_deletes_only_stale_objects() -> None:
    rs = build_ruleset([service("web", sessionAffinity="ClientIP")], [endpoint_slice("web", [endpoint("10.42.0.5")])],
                       node_name=NODE, cluster_cidr=CIDR)
    assert update_script(rs, None) == rs.text
    current = TableContents(chains={*rs.chains, "service-OLD00000-default/gone/tcp/"}, maps=set(rs.maps),
                            sets={*rs.sets, "affinity-OLD00000-default/gone/tcp/__10.42.0.9/80"})
    head = update_script(rs, current).split("table ip k3p-proxy {")[0].splitlines()
    assert head[0] == "add table ip k3p-proxy"
    assert sum(line.startswith("flush chain ") for line in head) == len(current.chains)
    assert sum(line.startswith("flush map ") for line in head) == len(rs.maps)
    assert [line for line in head if line.startswith("delete")] == [
        "delete chain ip k3p-proxy service-OLD00000-default/gone/tcp/",
        "delete set ip k3p-proxy affinity-OLD00000-default/gone/tcp/__10.42.0.9/80",
    ]
    assert not any(line.startswith("flush set") for line in head)  # affinity memory survives
    assert replace_script(rs).startswith("add table ip k3p-proxy\ndelete table ip k3p-proxy\ntable ip k3p-proxy {")


@pytest.mark.skipif(not _CAN_CHECK, reason="nft check mode needs root and nft")
def test_nft_check_catches_a_broken_ruleset() -> None:
    text = render_ruleset([service("web")], [], node_name=NODE, cluster_cidr=CIDR)
    with pytest.raises(AssertionError, match="nft -c rejected"):
        nft_check(text.replace("goto reject-chain", "goto no-such-chain"))
