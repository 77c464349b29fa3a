"""The pod network plugin's pure parts: annotations, peers, CNI config, nft rules, entry plans, hooks."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from k3p.checks import CheckReport
from k3p.config import Config, OptionSchema
from k3p_plugins import flannel as plugin
from k3p_plugins.flannel import annotations as ann
from k3p_plugins.flannel.annotations import Peer, peer_from_node, peers_from_nodes
from k3p_plugins.flannel.backends import ROUTE_PROTO, HostGwBackend, Underlay, VxlanBackend
from k3p_plugins.flannel.cni import CONFLIST_NAME, backend_mtu, cni_conflist, readiness_check, write_conflist
from k3p_plugins.flannel.masq import ruleset
from k3p_plugins.flannel.plan import (
    EMPTY,
    DataPlane,
    FdbEntry,
    NeighEntry,
    Plan,
    RouteEntry,
    diff,
    host_gw_entries,
    vxlan_entries,
)

MAC_A = "0a:58:0a:2a:01:00"
MAC_B = "0a:58:0a:2a:02:00"


def node(name: str, pod_cidr: str | None = "10.42.2.0/24", annotations: dict[str, str] | None = None) -> dict:
    spec = {"podCIDR": pod_cidr, "podCIDRs": [pod_cidr]} if pod_cidr else {}
    return {"metadata": {"name": name, "annotations": annotations or {}}, "spec": spec}


def vxlan_node(name: str, pod_cidr: str, public_ip: str, mac: str) -> dict:
    return node(name, pod_cidr, ann.node_annotations("vxlan", public_ip, mac))


# --- annotations ---------------------------------------------------------------------------


def test_vxlan_annotations_use_flannels_names_and_json():
    got = ann.node_annotations("vxlan", "10.0.0.5", "0A:58:0A:2A:01:00")
    assert got == {
        "flannel.alpha.coreos.com/backend-type": "vxlan",
        "flannel.alpha.coreos.com/backend-data": '{"VNI":1,"VtepMAC":"0a:58:0a:2a:01:00"}',
        "flannel.alpha.coreos.com/public-ip": "10.0.0.5",
        "flannel.alpha.coreos.com/kube-subnet-manager": "true",
    }
    assert ann.decode_backend_data(got[ann.BACKEND_DATA]) == {"VNI": 1, "VtepMAC": MAC_A}


def test_host_gw_backend_data_is_json_null():
    got = ann.node_annotations("host-gw", "10.0.0.5")
    assert got[ann.BACKEND_DATA] == "null"
    assert ann.decode_backend_data("null") is None
    assert ann.decode_backend_data("not json") is None
    assert ann.decode_backend_data("") is None


def test_bad_input_is_refused():
    with pytest.raises(ValueError):
        ann.normalize_mac("0a:58:0a")
    with pytest.raises(ValueError):
        ann.node_annotations("vxlan", "not-an-ip", MAC_A)


def test_stored_mac_and_public_ip_override():
    n = vxlan_node("a", "10.42.1.0/24", "10.0.0.1", MAC_A)
    assert ann.stored_vtep_mac(n) == MAC_A
    assert ann.stored_vtep_mac(node("b")) == ""
    assert ann.public_ip_override(n) == ""
    n["metadata"]["annotations"][ann.PUBLIC_IP_OVERWRITE] = " 203.0.113.7 "
    assert ann.public_ip_override(n) == "203.0.113.7"
    n["metadata"]["annotations"][ann.PUBLIC_IP_OVERWRITE] = "nonsense"
    assert ann.public_ip_override(n) == ""


# --- peers ---------------------------------------------------------------------------------


def test_peer_from_a_vxlan_node():
    peer = peer_from_node(vxlan_node("b", "10.42.2.0/24", "10.0.0.2", MAC_B.upper()))
    assert peer == Peer("b", ipaddress.IPv4Network("10.42.2.0/24"), "10.0.0.2", "vxlan", MAC_B, 1)
    assert peer.vtep_ip == "10.42.2.0"  # flannel's VTEP address: the subnet's network address


def test_peer_prefers_the_ipv4_entry_of_pod_cidrs():
    n = vxlan_node("b", "10.42.2.0/24", "10.0.0.2", MAC_B)
    n["spec"] = {"podCIDR": "fd00:42::/64", "podCIDRs": ["fd00:42::/64", "10.42.2.0/24"]}
    assert str(peer_from_node(n).subnet) == "10.42.2.0/24"


@pytest.mark.parametrize("change", [
    lambda n: n["metadata"]["annotations"].pop(ann.KUBE_SUBNET_MANAGER),
    lambda n: n["metadata"]["annotations"].update({ann.KUBE_SUBNET_MANAGER: "false"}),
    lambda n: n.update(spec={}),
    lambda n: n["metadata"]["annotations"].pop(ann.PUBLIC_IP),
    lambda n: n["metadata"]["annotations"].update({ann.BACKEND_DATA: '{"VNI":1,"VtepMAC":"zz"}'}),
    lambda n: n["metadata"]["annotations"].update({ann.BACKEND_DATA: "null"}),
    lambda n: n["metadata"]["annotations"].update({ann.BACKEND_TYPE: "wireguard"}),
])
def test_incomplete_nodes_are_not_peers(change):
    n = vxlan_node("b", "10.42.2.0/24", "10.0.0.2", MAC_B)
    change(n)
    assert peer_from_node(n) is None


def test_peers_skip_self_unannotated_other_backends_and_own_subnet():
    nodes = [
        vxlan_node("a", "10.42.1.0/24", "10.0.0.1", MAC_A),  # this node
        vxlan_node("b", "10.42.2.0/24", "10.0.0.2", MAC_B),
        node("c", "10.42.3.0/24"),  # no annotations yet
        node("d", None),  # no podCIDR yet
        node("e", "10.42.5.0/24", ann.node_annotations("host-gw", "10.0.0.5")),  # another backend
        vxlan_node("f", "10.42.1.0/24", "10.0.0.6", "0a:58:0a:2a:06:00"),  # claims this node's range
    ]
    peers = peers_from_nodes(nodes, "a", "vxlan", ipaddress.IPv4Network("10.42.1.0/24"))
    assert list(peers) == ["b"]
    assert peers["b"].public_ip == "10.0.0.2"
    assert list(peers_from_nodes(nodes, "a", "host-gw")) == ["e"]


# --- CNI config ----------------------------------------------------------------------------


def test_conflist_shape():
    conf = cni_conflist("10.42.7.0/24", mtu=1450, ipam_data_dir="/data/agent/cni/networks")
    assert conf["cniVersion"] == "1.0.0"
    bridge, portmap = conf["plugins"]
    assert bridge["type"] == "bridge" and bridge["bridge"] == "cni0"
    assert bridge["isGateway"] is True and bridge["hairpinMode"] is True
    assert bridge["ipMasq"] is False
    assert bridge["mtu"] == 1450
    assert bridge["ipam"] == {"type": "host-local", "ranges": [[{"subnet": "10.42.7.0/24"}]],
                              "routes": [{"dst": "0.0.0.0/0"}], "dataDir": "/data/agent/cni/networks"}
    assert portmap == {"type": "portmap", "capabilities": {"portMappings": True}, "snat": True}


def test_mtu_per_backend():
    assert backend_mtu("vxlan", 1500) == 1450
    assert backend_mtu("host-gw", 1500) == 1500
    assert backend_mtu("vxlan", 9000) == 8950


def test_write_conflist_reports_changes_and_leaves_no_temp_file(tmp_path: Path):
    agent = tmp_path / "agent"
    assert write_conflist(agent, "10.42.1.0/24", mtu=1450) is True
    path = agent / "etc" / "cni" / "net.d" / CONFLIST_NAME
    assert CONFLIST_NAME == "10-flannel.conflist"
    assert json.loads(path.read_text())["plugins"][0]["ipam"]["dataDir"] == str(agent / "cni" / "networks")
    assert write_conflist(agent, "10.42.1.0/24", mtu=1450) is False
    assert write_conflist(agent, "10.42.1.0/24", mtu=1500) is True
    assert write_conflist(agent, "10.42.9.0/24", mtu=1500) is True
    assert json.loads(path.read_text())["plugins"][0]["ipam"]["ranges"] == [[{"subnet": "10.42.9.0/24"}]]
    assert sorted(p.name for p in path.parent.iterdir()) == [CONFLIST_NAME]


def test_readiness_waits_for_the_conflist(tmp_path: Path):
    check = readiness_check(tmp_path / "agent")
    ready, why = check()
    assert not ready and "CNI config" in why
    write_conflist(tmp_path / "agent", "10.42.1.0/24", mtu=1450)
    assert check() == (True, "")


# --- nftables ------------------------------------------------------------------------------


def test_masquerade_rules_follow_flannel():
    text = ruleset("10.42.0.0/16", "10.42.1.0/24")
    assert text.startswith("table ip k3p-flannel {\n}\ndelete table ip k3p-flannel\n")  # atomic replace
    rules = [line.strip() for line in text.splitlines() if line.startswith("\t\t") and "type " not in line]
    assert rules == [
        "meta mark & 0x4000 == 0x4000 return",
        "ip saddr 10.42.1.0/24 ip daddr 10.42.0.0/16 return",
        "ip saddr 10.42.0.0/16 ip daddr 10.42.1.0/24 return",
        "ip saddr != 10.42.0.0/16 ip daddr 10.42.1.0/24 return",
        "ip saddr 10.42.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random",
        "ip saddr != 10.42.0.0/16 ip daddr 10.42.0.0/16 masquerade fully-random",
        "ip saddr 10.42.0.0/16 accept",
        "ip daddr 10.42.0.0/16 accept",
    ]
    assert "hook postrouting priority srcnat" in text and "hook forward priority filter" in text


# --- entry plans ---------------------------------------------------------------------------


PEER_B = Peer("b", ipaddress.IPv4Network("10.42.2.0/24"), "10.0.0.2", "vxlan", MAC_B)
PEER_C = Peer("c", ipaddress.IPv4Network("10.42.3.0/24"), "10.0.0.3", "vxlan", "0a:58:0a:2a:03:00")


def test_vxlan_entries_of_a_peer():
    plane = vxlan_entries(PEER_B, 7)
    assert plane.routes == {RouteEntry("10.42.2.0/24", "10.42.2.0", 7, onlink=True)}
    assert plane.neighbours == {NeighEntry("10.42.2.0", MAC_B)}
    assert plane.fdb == {FdbEntry(MAC_B, "10.0.0.2")}


def test_host_gw_entries_of_a_peer():
    assert host_gw_entries(PEER_B, 2) == DataPlane(routes=frozenset({RouteEntry("10.42.2.0/24", "10.0.0.2", 2)}))


def test_diff_removes_stale_and_adds_missing():
    current = vxlan_entries(PEER_B, 7) | vxlan_entries(PEER_C, 7)
    desired = vxlan_entries(PEER_B, 7)
    plan = diff(current, desired)
    assert plan.add == EMPTY
    assert plan.remove == vxlan_entries(PEER_C, 7)
    assert not diff(desired, desired)
    assert diff(EMPTY, desired) == Plan(add=desired)


def test_diff_of_a_peer_with_a_new_mac_keeps_its_route():
    moved = Peer("b", PEER_B.subnet, "10.0.0.9", "vxlan", "0a:58:0a:2a:09:00")
    plan = diff(vxlan_entries(PEER_B, 7), vxlan_entries(moved, 7))
    assert plan.remove.routes == plan.add.routes == frozenset()
    assert plan.remove.neighbours == {NeighEntry("10.42.2.0", MAC_B)}
    assert plan.add.neighbours == {NeighEntry("10.42.2.0", "0a:58:0a:2a:09:00")}
    assert plan.remove.fdb == {FdbEntry(MAC_B, "10.0.0.2")}
    assert plan.add.fdb == {FdbEntry("0a:58:0a:2a:09:00", "10.0.0.9")}


class RecordingIPRoute:
    """Just enough of pyroute2's IPRoute to see what a backend asks the kernel to do."""

    def __init__(self, routes: list[dict] | None = None) -> None:
        self.calls: list[tuple[str, str, dict[str, Any]]] = []
        self._routes = routes or []

    def link_lookup(self, ifname: str) -> list[int]:
        return [7] if ifname == "flannel.1" else []

    def route(self, command: str, **kw: Any) -> Any:
        if command == "dump":
            return [r for r in self._routes if r["proto"] == kw.get("proto", r["proto"])]
        self.calls.append(("route", command, kw))
        return []

    def neigh(self, command: str, **kw: Any) -> Any:
        if command == "dump":
            return []
        self.calls.append(("neigh", command, kw))
        return []

    def fdb(self, command: str, **kw: Any) -> Any:
        if command == "dump":
            return []
        self.calls.append(("fdb", command, kw))
        return []


def test_vxlan_backend_deletes_first_and_adds_routes_last():
    ipr = RecordingIPRoute()
    backend = VxlanBackend(ipr, Underlay("eth0", 2, "10.0.0.1", 1500))
    backend.index = 7
    moved = Peer("b", PEER_B.subnet, "10.0.0.9", "vxlan", "0a:58:0a:2a:09:00")
    backend.update_peer(PEER_B, moved)
    assert [(kind, cmd) for kind, cmd, _ in ipr.calls] == [
        ("neigh", "del"), ("fdb", "del"), ("fdb", "replace"), ("neigh", "replace")]
    ipr.calls.clear()
    backend.add_peer(PEER_C)
    assert [(kind, cmd) for kind, cmd, _ in ipr.calls] == [("fdb", "replace"), ("neigh", "replace"),
                                                          ("route", "replace")]
    route = ipr.calls[-1][2]
    assert route["proto"] == ROUTE_PROTO and route["flags"] == 4 and route["gateway"] == "10.42.3.0"


def test_host_gw_sync_removes_only_stale_routes_of_its_own_protocol():
    stale = {"dst": "10.42.9.0", "dst_len": 24, "gateway": "10.0.0.9", "oif": 2, "flags": 0, "proto": ROUTE_PROTO}
    kept = {"dst": "10.42.2.0", "dst_len": 24, "gateway": "10.0.0.2", "oif": 2, "flags": 0, "proto": ROUTE_PROTO}
    foreign = {"dst": "10.42.8.0", "dst_len": 24, "gateway": "10.0.0.8", "oif": 2, "flags": 0, "proto": 4}
    ipr = RecordingIPRoute([stale, kept, foreign])
    backend = HostGwBackend(ipr, Underlay("eth0", 2, "10.0.0.1", 1500))
    peer_b = Peer("b", PEER_B.subnet, "10.0.0.2", "host-gw")
    plan = backend.sync([peer_b])
    assert plan.add == EMPTY
    assert plan.remove.routes == {RouteEntry("10.42.9.0/24", "10.0.0.9", 2)}
    assert [(cmd, kw["dst"]) for _, cmd, kw in ipr.calls] == [("del", "10.42.9.0/24")]


def test_only_network_facts_of_a_node_wake_the_component():
    from k3p_plugins.flannel.agent import _network_facts

    before = vxlan_node("b", "10.42.2.0/24", "10.0.0.2", MAC_B)
    heartbeat = {**before, "status": {"conditions": [{"type": "Ready", "status": "True"}]}}
    heartbeat["metadata"] = {**before["metadata"], "resourceVersion": "9",
                             "annotations": {**before["metadata"]["annotations"], "other/x": "1"}}
    assert _network_facts(heartbeat) == _network_facts(before)
    moved = vxlan_node("b", "10.42.2.0/24", "10.0.0.9", MAC_B)
    assert _network_facts(moved) != _network_facts(before)
    assert _network_facts(node("b", "10.42.7.0/24", before["metadata"]["annotations"])) != _network_facts(before)


# --- hooks ---------------------------------------------------------------------------------


def _ctx(tmp_path: Path, **over: Any) -> SimpleNamespace:
    values = {"flannel_backend": "vxlan", "flannel_iface": "", "cluster_cidr": "10.42.0.0/16", "simulate": 0}
    base = {"config": Config(command="server", values=values), "node_name": "n1", "data_dir": tmp_path,
            "runs_workloads": True, "node_ips": ["10.0.0.1"], "new_client": lambda ua: None,
            "cluster": {"clusterCIDR": "10.42.0.0/16", "flannelBackend": "vxlan"}}
    base.update(over)
    return SimpleNamespace(**base)


def test_options_carry_k3s_names():
    schema = OptionSchema()
    plugin.k3p_add_options(schema)
    backend = schema.get("flannel-backend")
    assert backend.default == "vxlan" and backend.choices == ("vxlan", "host-gw", "none")
    assert backend.commands == ("server",)
    assert schema.get("flannel-iface").commands == ("server", "agent")


def test_one_component_per_workload_node(tmp_path: Path):
    (component,) = plugin.k3p_agent_components(_ctx(tmp_path))
    assert component.name == "flannel-n1"
    assert plugin.k3p_agent_components(_ctx(tmp_path, runs_workloads=False)) == []


def test_backend_comes_from_the_cluster_settings(tmp_path: Path):
    ctx = _ctx(tmp_path, cluster={"flannelBackend": "none"})
    assert plugin.backend_of(ctx) == "none"
    assert plugin.k3p_agent_components(ctx) == []
    ctx = _ctx(tmp_path, cluster={"flannelBackend": "host-gw"})
    (component,) = plugin.k3p_agent_components(ctx)
    assert component.fn.__self__.settings.backend == "host-gw"
    assert component.fn.__self__.settings.agent_dir == tmp_path / "agent"


def test_the_server_hands_its_backend_to_every_node():
    assert plugin.k3p_cluster_settings(Config(command="server", values={"flannel_backend": "host-gw"})) == {
        "flannelBackend": "host-gw"}
    assert plugin.k3p_cluster_settings(Config(command="server", values={})) == {"flannelBackend": "vxlan"}


def test_check_config_looks_at_vxlan_and_nft():
    report = CheckReport()
    plugin.k3p_check_config(Config(command="server", values={"flannel_backend": "vxlan"}), report, True)
    # the VXLAN port is checked unless an earlier run's flannel.1 (which holds it) is there
    port = set() if Path("/sys/class/net/flannel.1").exists() else {"port 8472/udp"}
    assert {f.name for f in report.findings} == {"vxlan", "nft", *port}
    report = CheckReport()
    plugin.k3p_check_config(Config(command="server", values={"flannel_backend": "none"}), report, True)
    assert [f.level for f in report.findings] == ["ok"]
    report = CheckReport()
    plugin.k3p_check_config(Config(command="server", values={"flannel_backend": "vxlan"}), report, False)
    assert report.findings == []  # no node here: nothing of the pod network to check
