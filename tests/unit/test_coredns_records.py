"""The cluster DNS name index: Services and EndpointSlices in, DNS answers out."""

from __future__ import annotations

from typing import Any

import pytest
from dnslib import QTYPE, RCODE, DNSRecord

import k3p_plugins.coredns as plugin
from k3p_plugins.coredns.forward import parse_resolv_conf
from k3p_plugins.coredns.records import ClusterRecords
from k3p_plugins.coredns.server import fit_udp

ZONE = "cluster.local"


def service(name: str, ns: str = "default", cluster_ip: str | None = "10.43.0.20",
            ports: list[dict[str, Any]] | None = None, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"ports": ports if ports is not None else [{"name": "http", "port": 80,
                                                                         "protocol": "TCP"}]}
    if cluster_ip is not None:
        body["clusterIP"] = cluster_ip
        body["clusterIPs"] = [cluster_ip] if cluster_ip != "None" else ["None"]
    body.update(spec)
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns}, "spec": body}


def endpoint_slice(name: str, svc: str, endpoints: list[tuple[str, str, bool | None]], ns: str = "default",
                   ports: list[dict[str, Any]] | None = None, address_type: str = "IPv4") -> dict[str, Any]:
    eps = []
    for address, hostname, ready in endpoints:
        ep: dict[str, Any] = {"addresses": [address]}
        if hostname:
            ep["hostname"] = hostname
        if ready is not None:
            ep["conditions"] = {"ready": ready}
        eps.append(ep)
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": name, "namespace": ns, "labels": {"kubernetes.io/service-name": svc}},
            "addressType": address_type, "endpoints": eps,
            "ports": ports if ports is not None else [{"name": "http", "port": 8080, "protocol": "TCP"}]}


def values(answer: Any, rtype: str = "A") -> list[str]:
    return sorted(str(rr.rdata) for rr in answer.answer if rr.rtype == getattr(QTYPE, rtype))


@pytest.fixture
def records() -> ClusterRecords:
    r = ClusterRecords(ZONE, dns_ips=["10.43.0.10"])
    r.on_service("ADDED", service("web"))
    r.on_endpoint_slice("ADDED", endpoint_slice("web-abc", "web", [("10.42.0.5", "", True)]))
    r.on_service("ADDED", service("db", cluster_ip="None", ports=[{"name": "pg", "port": 5432}]))
    r.on_endpoint_slice("ADDED", endpoint_slice(
        "db-1", "db", [("10.42.1.1", "db-0", True), ("10.42.1.2", "db-1", True), ("10.42.1.3", "db-2", False)],
        ports=[{"name": "pg", "port": 5432, "protocol": "TCP"}]))
    r.on_service("ADDED", service("ext", cluster_ip=None, type="ExternalName", externalName="example.org"))
    return r


def test_cluster_ip_service_a_record(records: ClusterRecords) -> None:
    answer = records.lookup("web.default.svc.cluster.local.", QTYPE.A)
    assert answer is not None and answer.rcode == RCODE.NOERROR
    assert values(answer) == ["10.43.0.20"]
    assert all(rr.ttl == 5 for rr in answer.answer)
    # The owner name is the question's, as asked
    assert str(answer.answer[0].rname) == "web.default.svc.cluster.local."


def test_headless_service_answers_every_ready_endpoint(records: ClusterRecords) -> None:
    answer = records.lookup("db.default.svc.cluster.local", QTYPE.A)
    assert values(answer) == ["10.42.1.1", "10.42.1.2"]  # not the unready 10.42.1.3


def test_endpoint_hostname_and_dashed_address(records: ClusterRecords) -> None:
    assert values(records.lookup("db-1.db.default.svc.cluster.local", QTYPE.A)) == ["10.42.1.2"]
    # an endpoint without hostname is named by its address
    assert values(records.lookup("10-42-0-5.web.default.svc.cluster.local", QTYPE.A)) == ["10.42.0.5"]
    # an unready endpoint has no name
    assert records.lookup("db-2.db.default.svc.cluster.local", QTYPE.A).rcode == RCODE.NXDOMAIN


def test_srv_of_a_cluster_ip_service(records: ClusterRecords) -> None:
    answer = records.lookup("_http._tcp.web.default.svc.cluster.local", QTYPE.SRV)
    assert [(rr.rdata.port, str(rr.rdata.target)) for rr in answer.answer] == [
        (80, "web.default.svc.cluster.local.")]
    assert [(str(rr.rname), str(rr.rdata)) for rr in answer.additional] == [
        ("web.default.svc.cluster.local.", "10.43.0.20")]
    # wrong protocol or port name: no such name
    assert records.lookup("_http._udp.web.default.svc.cluster.local", QTYPE.SRV).rcode == RCODE.NXDOMAIN
    assert records.lookup("_dns._tcp.web.default.svc.cluster.local", QTYPE.SRV).rcode == RCODE.NXDOMAIN


def test_srv_of_a_headless_service_names_each_endpoint(records: ClusterRecords) -> None:
    answer = records.lookup("_pg._tcp.db.default.svc.cluster.local", QTYPE.SRV)
    assert sorted((rr.rdata.port, str(rr.rdata.target)) for rr in answer.answer) == [
        (5432, "db-0.db.default.svc.cluster.local."), (5432, "db-1.db.default.svc.cluster.local.")]
    assert sorted((str(rr.rname), str(rr.rdata)) for rr in answer.additional) == [
        ("db-0.db.default.svc.cluster.local.", "10.42.1.1"), ("db-1.db.default.svc.cluster.local.", "10.42.1.2")]
    # SRV on the Service name itself lists every port
    assert len(records.lookup("db.default.svc.cluster.local", QTYPE.SRV).answer) == 2


def test_ptr_of_service_and_headless_endpoint(records: ClusterRecords) -> None:
    answer = records.lookup("20.0.43.10.in-addr.arpa", QTYPE.PTR)
    assert values(answer, "PTR") == ["web.default.svc.cluster.local."]
    assert values(records.lookup("1.1.42.10.in-addr.arpa.", QTYPE.PTR), "PTR") == [
        "db-0.db.default.svc.cluster.local."]
    # addresses the cluster does not know go upstream
    assert records.lookup("8.8.8.8.in-addr.arpa", QTYPE.PTR) is None


def test_external_name_is_a_cname_chased_upstream(records: ClusterRecords) -> None:
    answer = records.lookup("ext.default.svc.cluster.local", QTYPE.A)
    assert [(QTYPE[rr.rtype], str(rr.rdata)) for rr in answer.answer] == [("CNAME", "example.org.")]
    assert answer.chase == "example.org"
    assert records.lookup("ext.default.svc.cluster.local", QTYPE.CNAME).chase == ""


def test_external_name_inside_the_zone_is_followed_locally(records: ClusterRecords) -> None:
    records.on_service("ADDED", service("alias", cluster_ip=None, type="ExternalName",
                                        externalName="web.default.svc.cluster.local"))
    answer = records.lookup("alias.default.svc.cluster.local", QTYPE.A)
    assert [QTYPE[rr.rtype] for rr in answer.answer] == ["CNAME", "A"]
    assert values(answer) == ["10.43.0.20"]
    assert answer.chase == ""


def test_external_name_chains_and_loops(records: ClusterRecords) -> None:
    records.on_service("ADDED", service("hop", cluster_ip=None, type="ExternalName",
                                        externalName="ext.default.svc.cluster.local"))
    answer = records.lookup("hop.default.svc.cluster.local", QTYPE.A)
    assert [str(rr.rdata) for rr in answer.answer] == ["ext.default.svc.cluster.local.", "example.org."]
    assert answer.chase == "example.org"
    for a, b in (("loop-a", "loop-b"), ("loop-b", "loop-a")):
        records.on_service("ADDED", service(a, cluster_ip=None, type="ExternalName",
                                            externalName=f"{b}.default.svc.cluster.local"))
    looped = records.lookup("loop-a.default.svc.cluster.local", QTYPE.A)
    assert 1 < len(looped.answer) < 12 and looped.chase == ""


def test_pod_names(records: ClusterRecords) -> None:
    assert values(records.lookup("10-42-3-7.anyns.pod.cluster.local", QTYPE.A)) == ["10.42.3.7"]
    assert records.lookup("10-42-3-7.anyns.pod.cluster.local", QTYPE.AAAA).answer == []
    assert records.lookup("10-42-3.anyns.pod.cluster.local", QTYPE.A).rcode == RCODE.NXDOMAIN
    assert records.lookup("not-an-ip.anyns.pod.cluster.local", QTYPE.A).rcode == RCODE.NXDOMAIN


def test_nxdomain_and_nodata_carry_the_soa(records: ClusterRecords) -> None:
    missing = records.lookup("nope.default.svc.cluster.local", QTYPE.A)
    assert missing.rcode == RCODE.NXDOMAIN and missing.answer == []
    assert [QTYPE[rr.rtype] for rr in missing.authority] == ["SOA"]
    assert str(missing.authority[0].rname) == "cluster.local."
    assert missing.authority[0].rdata.times[-1] == 5
    # a search-path expansion of an outside name is NXDOMAIN too
    assert records.lookup("example.org.default.svc.cluster.local", QTYPE.A).rcode == RCODE.NXDOMAIN
    # a known name with a type it does not have: NOERROR, no answer, the SOA
    nodata = records.lookup("web.default.svc.cluster.local", QTYPE.AAAA)
    assert nodata.rcode == RCODE.NOERROR and nodata.answer == []
    assert [QTYPE[rr.rtype] for rr in nodata.authority] == ["SOA"]
    # names above a known name exist (empty non-terminals)
    assert records.lookup("default.svc.cluster.local", QTYPE.A).rcode == RCODE.NOERROR
    assert records.lookup("other.svc.cluster.local", QTYPE.A).rcode == RCODE.NXDOMAIN


def test_apex_and_outside_names(records: ClusterRecords) -> None:
    assert values(records.lookup("cluster.local", QTYPE.SOA), "SOA")
    ns = records.lookup("cluster.local", QTYPE.NS)
    assert values(ns, "NS") == ["ns.dns.cluster.local."]
    assert [str(rr.rdata) for rr in ns.additional] == ["10.43.0.10"]
    assert values(records.lookup("ns.dns.cluster.local", QTYPE.A)) == ["10.43.0.10"]
    assert values(records.lookup("dns-version.cluster.local", QTYPE.TXT), "TXT") == ['"1.1.0"']
    assert records.lookup("example.org", QTYPE.A) is None
    assert records.lookup("notcluster.local", QTYPE.A) is None


def test_names_are_case_insensitive(records: ClusterRecords) -> None:
    answer = records.lookup("WeB.DeFault.SVC.Cluster.Local.", QTYPE.A)
    assert values(answer) == ["10.43.0.20"]
    assert str(answer.answer[0].rname) == "WeB.DeFault.SVC.Cluster.Local."
    assert values(records.lookup("_HTTP._TCP.web.default.svc.cluster.local", QTYPE.SRV), "SRV")


def test_service_update_and_delete(records: ClusterRecords) -> None:
    records.on_service("MODIFIED", service("web", cluster_ip="10.43.0.99"))
    assert values(records.lookup("web.default.svc.cluster.local", QTYPE.A)) == ["10.43.0.99"]
    assert records.lookup("20.0.43.10.in-addr.arpa", QTYPE.PTR) is None
    assert values(records.lookup("99.0.43.10.in-addr.arpa", QTYPE.PTR), "PTR") == ["web.default.svc.cluster.local."]
    records.on_service("DELETED", service("web", cluster_ip="10.43.0.99"))
    for name in ("web.default.svc.cluster.local", "_http._tcp.web.default.svc.cluster.local",
                 "10-42-0-5.web.default.svc.cluster.local"):
        assert records.lookup(name, QTYPE.A).rcode == RCODE.NXDOMAIN, name
    assert records.lookup("99.0.43.10.in-addr.arpa", QTYPE.PTR) is None
    # the namespace still has db and ext
    assert records.lookup("default.svc.cluster.local", QTYPE.A).rcode == RCODE.NOERROR


def test_endpoint_slice_updates_and_deletes(records: ClusterRecords) -> None:
    records.on_endpoint_slice("MODIFIED", endpoint_slice(
        "db-1", "db", [("10.42.1.1", "db-0", False), ("10.42.1.3", "db-2", True)],
        ports=[{"name": "pg", "port": 5432, "protocol": "TCP"}]))
    assert values(records.lookup("db.default.svc.cluster.local", QTYPE.A)) == ["10.42.1.3"]
    assert records.lookup("db-0.db.default.svc.cluster.local", QTYPE.A).rcode == RCODE.NXDOMAIN
    # a second slice of the same Service adds to it
    records.on_endpoint_slice("ADDED", endpoint_slice("db-2", "db", [("10.42.2.9", "db-9", None)],
                                                      ports=[{"name": "pg", "port": 5432, "protocol": "TCP"}]))
    assert values(records.lookup("db.default.svc.cluster.local", QTYPE.A)) == ["10.42.1.3", "10.42.2.9"]
    assert len(records.lookup("_pg._tcp.db.default.svc.cluster.local", QTYPE.SRV).answer) == 2
    records.on_endpoint_slice("DELETED", endpoint_slice("db-1", "db", []))
    records.on_endpoint_slice("DELETED", endpoint_slice("db-2", "db", []))
    empty = records.lookup("db.default.svc.cluster.local", QTYPE.A)
    assert empty.rcode == RCODE.NOERROR and empty.answer == []  # the Service is still there
    assert records.lookup("db-9.db.default.svc.cluster.local", QTYPE.A).rcode == RCODE.NXDOMAIN


def test_malformed_addresses_are_skipped() -> None:
    records = ClusterRecords(ZONE)
    records.on_service("ADDED", service("bad", cluster_ip="10.43.0.300"))
    assert records.lookup("bad.default.svc.cluster.local", QTYPE.A).answer == []
    records.on_service("ADDED", service("h", cluster_ip="None"))
    records.on_endpoint_slice("ADDED", endpoint_slice("h-1", "h", [("nonsense", "", True), ("10.42.0.9", "", True)]))
    assert values(records.lookup("h.default.svc.cluster.local", QTYPE.A)) == ["10.42.0.9"]


def test_slice_before_its_service_and_other_namespaces() -> None:
    records = ClusterRecords(ZONE)
    records.on_endpoint_slice("ADDED", endpoint_slice("h-1", "h", [("10.42.5.5", "h-0", True)], ns="team"))
    assert records.lookup("h.team.svc.cluster.local", QTYPE.A).rcode == RCODE.NXDOMAIN
    records.on_service("ADDED", service("h", ns="team", cluster_ip="None"))
    assert values(records.lookup("h-0.h.team.svc.cluster.local", QTYPE.A)) == ["10.42.5.5"]
    assert records.lookup("h.default.svc.cluster.local", QTYPE.A).rcode == RCODE.NXDOMAIN


def test_dual_stack_and_custom_zone() -> None:
    records = ClusterRecords("k3p.test")
    records.on_service("ADDED", service("web", cluster_ip="10.43.0.5", clusterIPs=["10.43.0.5", "fd00:43::5"]))
    assert values(records.lookup("web.default.svc.k3p.test", QTYPE.AAAA), "AAAA") == ["fd00:43::5"]
    assert values(records.lookup("web.default.svc.k3p.test", QTYPE.A)) == ["10.43.0.5"]
    assert records.lookup("web.default.svc.cluster.local", QTYPE.A) is None
    ptr = records.lookup("5.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.3.4.0.0.0.0.d.f.ip6.arpa", QTYPE.PTR)
    assert values(ptr, "PTR") == ["web.default.svc.k3p.test."]


def test_many_services_stay_fast() -> None:
    import time

    records = ClusterRecords(ZONE)
    start = time.perf_counter()
    for i in range(2000):
        records.on_service("ADDED", service(f"s{i}", ns=f"n{i % 20}", cluster_ip=f"10.43.{i // 250}.{i % 250}"))
    built = time.perf_counter() - start
    start = time.perf_counter()
    for i in range(2000):
        assert records.lookup(f"s{i}.n{i % 20}.svc.cluster.local", QTYPE.A).answer
    asked = time.perf_counter() - start
    assert built < 1.0 and asked < 1.0


def test_parse_resolv_conf() -> None:
    text = ("# comment\nsearch example.com\nnameserver 192.0.2.1\nnameserver 2001:db8::1 # v6\n"
            "nameserver 192.0.2.1\noptions ndots:2\n;nameserver 192.0.2.9\n")
    assert parse_resolv_conf(text) == [("192.0.2.1", 53), ("2001:db8::1", 53)]


def test_fit_udp_drops_additional_then_sets_tc() -> None:
    query = DNSRecord.question("big.example")
    reply = query.reply()
    from dnslib import RR, A

    for i in range(40):
        reply.add_answer(RR("big.example", QTYPE.A, ttl=5, rdata=A(f"10.0.0.{i}")))
    packet = reply.pack()
    assert len(packet) > 512
    cut = DNSRecord.parse(fit_udp(packet, 512))
    assert cut.header.tc == 1 and cut.rr == [] and str(cut.q.qname) == "big.example."
    assert fit_udp(packet, 4096) == packet
    # glue alone over the limit: dropped, no TC
    small = query.reply()
    small.add_answer(RR("big.example", QTYPE.A, ttl=5, rdata=A("10.0.0.1")))
    for i in range(40):
        small.add_ar(RR(f"glue{i}.example", QTYPE.A, ttl=5, rdata=A(f"10.0.1.{i}")))
    cut = DNSRecord.parse(fit_udp(small.pack(), 512))
    assert cut.header.tc == 0 and len(cut.rr) == 1 and cut.ar == []


def test_hooks_rbac_and_components() -> None:
    role, binding = plugin.k3p_manifests(config=None)
    assert role["kind"] == "ClusterRole" and role["metadata"]["name"] == "system:k3p:coredns"
    granted = {(g, r) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]
               if {"get", "list", "watch"} <= set(rule["verbs"])}
    assert {("", "services"), ("discovery.k8s.io", "endpointslices"), ("", "endpoints"), ("", "namespaces"),
            ("", "pods")} <= granted
    assert binding["roleRef"]["name"] == "system:k3p:coredns"
    assert binding["subjects"] == [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User",
                                    "name": "system:k3p:coredns"}]

    from types import SimpleNamespace

    hollow = SimpleNamespace(runs_workloads=False, node_name="h1", cluster={}, config={})
    assert plugin.k3p_agent_components(hollow) == []
    real = SimpleNamespace(runs_workloads=True, node_name="n1", config={}, component_client=None,
                           cluster={"clusterDNS": "10.43.0.10,fd00:43::a", "clusterDomain": "k3p.test"})
    [component] = plugin.k3p_agent_components(real)
    assert component.name == "coredns-n1"
    assert plugin._cluster_dns_ips(real) == ["10.43.0.10", "fd00:43::a"]
