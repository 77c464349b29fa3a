"""Several real nodes: a server and agents, each in its own network namespace on one bridge.

Each node runs its own k3p (server or agent) with its own containerd, flannel (vxlan, or
host-gw), service proxy and cluster DNS. Traffic stays on the test's bridge and inside
the namespaces it made. Shown: pods reach pods on other nodes by IP, Services by DNS
name with load balancing, NodePorts on every node, proxy updates after scaling, the data
plane surviving agent and server restarts, a duplicate node name refused, and a deleted
node's routes removed from the others.
"""

from __future__ import annotations

import ipaddress
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from containerd_host import IMAGE, REAL_NODE
from lab_cluster import SERVE, Cluster, http_get, pod_network_namespace

from k3p.testing import wait_for
from k3p.testing.netns import NetnsLab

pytestmark = REAL_NODE

@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("vxlan"), ["a", "b"], [])
    yield c
    c.close()


def test_nodes_get_distinct_pod_cidrs_and_pods_talk_over_vxlan(cluster: Cluster) -> None:
    nodes = {n["metadata"]["name"]: n for n in cluster.json("nodes")["items"]}
    cidrs = {name: n["spec"]["podCIDR"] for name, n in nodes.items()}
    assert len(set(cidrs.values())) == 3, cidrs
    # each node's range is given once: a second one would move its pod network away from
    # the routes the other nodes built for the first
    assigned = [json.loads(line)["node"] for line in cluster.server.logs().splitlines()
                if '"pod range assigned"' in line]
    assert sorted(assigned) == sorted(cidrs), assigned
    annotations = nodes["b"]["metadata"]["annotations"]
    assert annotations["flannel.alpha.coreos.com/backend-type"] == "vxlan"
    assert annotations["flannel.alpha.coreos.com/public-ip"] == cluster.nodes["b"].ip
    link = cluster.nodes["a"].run("ip", "-d", "link", "show", "flannel.1").stdout
    assert "vxlan id 1 " in link and "dstport 8472" in link

    ip_a, ip_b = cluster.run_pod("pod-a", "a"), cluster.run_pod("pod-b", "b")
    assert ipaddress.ip_address(ip_a) in ipaddress.ip_network(cidrs["a"])
    cluster.reaches("pod-a", f"http://{ip_b}:8080/", "pod-b")
    cluster.reaches("pod-b", f"http://{ip_a}:8080/", "pod-a")
    # the route to b's pods goes through the overlay
    assert f"{cidrs['b']} via" in cluster.nodes["a"].run("ip", "route").stdout


def test_service_by_dns_name_balances_nodeport_answers_everywhere_and_scaling_updates_fast(
        cluster: Cluster) -> None:
    cluster.kubectl("create", "deployment", "web", f"--image={IMAGE}", "--replicas=3", "--", "sh", "-c", SERVE)
    cluster.kubectl("expose", "deployment", "web", "--port=80", "--target-port=8080", "--type=NodePort")
    cluster.kubectl("rollout", "status", "deployment/web", "--timeout=120s")
    if "pod-a" not in cluster.kubectl("get", "pods", "-o", "name"):
        cluster.run_pod("pod-a", "a")
    replicas = {p["metadata"]["name"] for p in cluster.json("pods", "-l", "app=web")["items"]}

    cluster.reaches("pod-a", "http://web.default.svc.cluster.local/", replicas)
    answers = [cluster.fetch("pod-a", "http://web.default.svc.cluster.local/").stdout.strip() for _ in range(12)]
    assert set(answers) <= replicas and len(set(answers)) > 1, answers
    # short names through the pod's search path too
    assert cluster.fetch("pod-a", "http://web/").stdout.strip() in replicas

    port = cluster.json("service", "web")["spec"]["ports"][0]["nodePort"]
    for node in cluster.nodes.values():
        assert http_get(f"http://{node.ip}:{port}/") in replicas

    cluster.kubectl("scale", "deployment/web", "--replicas=0")
    wait_for(lambda: not cluster.json("pods", "-l", "app=web")["items"], 60, 0.5, "web scaled to 0")
    failed = cluster.fetch("pod-a", "http://web/")
    assert failed.returncode != 0

    cluster.kubectl("scale", "deployment/web", "--replicas=1")
    slices = ("/apis/discovery.k8s.io/v1/namespaces/default/endpointslices"
              "?labelSelector=kubernetes.io/service-name%3Dweb")

    def endpoint_ready() -> bool:
        items = json.loads(cluster.server.get(slices)[1])["items"]
        return any((e.get("conditions") or {}).get("ready") for s in items for e in s.get("endpoints") or [])

    wait_for(endpoint_ready, 120, 0.02, "a ready endpoint")
    ready_at = time.monotonic()

    def answers_again() -> bool:
        try:
            return bool(http_get(f"http://{cluster.nodes['a'].ip}:{port}/", timeout=0.5))
        except OSError:
            return False

    wait_for(answers_again, 10, 0.02, "the NodePort answering again")
    lag = time.monotonic() - ready_at
    print(f"proxy updated {lag * 1000:.0f} ms after the EndpointSlice had a ready endpoint")
    assert lag < 1.0


def test_agent_and_server_restarts_keep_the_data_plane(cluster: Cluster) -> None:
    ip_a = cluster.run_pod("pod-a", "a") if "pod-a" not in cluster.kubectl("get", "pods", "-o", "name") \
        else cluster.json("pod", "pod-a")["status"]["podIP"]
    ip_b = cluster.run_pod("pod-b", "b") if "pod-b" not in cluster.kubectl("get", "pods", "-o", "name") \
        else cluster.json("pod", "pod-b")["status"]["podIP"]
    before = cluster.json("pod", "pod-b")["status"]["containerStatuses"][0]["containerID"]

    cluster.stop_agent("b")
    assert cluster.fetch("pod-a", f"http://{ip_b}:8080/").stdout.strip() == "pod-b"  # b's agent is down
    cluster.start_agent("b")
    wait_for(lambda: "b" in cluster.ready_nodes(), 60, 0.5, "b Ready again")
    assert cluster.json("pod", "pod-b")["status"]["containerStatuses"][0]["containerID"] == before
    assert cluster.fetch("pod-a", f"http://{ip_b}:8080/").stdout.strip() == "pod-b"

    # While the server (and its API) is down, pods on the agents keep talking, also by Service IP.
    cluster.apply({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "bee"},
                   "spec": {"selector": {"app": "pod-b"}, "ports": [{"port": 81, "targetPort": 8080}]}})
    cluster_ip = cluster.json("service", "bee")["spec"]["clusterIP"]
    wait_for(lambda: cluster.fetch("pod-a", f"http://{cluster_ip}:81/").stdout.strip() == "pod-b", 30, 0.5)
    cluster.server.stop()
    try:
        pod_a_netns = pod_network_namespace(ip_a)
        out = subprocess.run(["nsenter", f"--net={pod_a_netns}", "busybox", "wget", "-qO-",
                              f"http://{cluster_ip}:81/"], capture_output=True, text=True, timeout=20)
        assert out.stdout.strip() == "pod-b", out.stderr
    finally:
        cluster.server.start(timeout=120)
    wait_for(lambda: cluster.ready_nodes() == set(cluster.nodes), 120, 1, "all nodes Ready after the restart")
    assert cluster.fetch("pod-a", f"http://{ip_b}:8080/").stdout.strip() == "pod-b"


def test_disabling_the_service_proxy_removes_its_rules(cluster: Cluster) -> None:
    node = cluster.nodes["a"]
    assert "table ip k3p-proxy" in node.run("nft", "list", "tables").stdout
    cluster.stop_agent("a")
    cluster.agent_procs["a"] = cluster.lab.agent(node, cluster.server, "--disable-kube-proxy")
    wait_for(lambda: "table ip k3p-proxy" not in node.run("nft", "list", "tables").stdout, 60, 0.5,
             "the proxy's table removed")
    cluster.stop_agent("a")
    cluster.start_agent("a")
    wait_for(lambda: "table ip k3p-proxy" in node.run("nft", "list", "tables").stdout, 60, 0.5,
             "the proxy's table back")


def test_duplicate_node_name_is_refused_and_a_deleted_nodes_routes_go(cluster: Cluster) -> None:
    intruder = cluster.lab.add_node("dup")
    config = cluster.lab.workdir / "dup.yaml"
    config.write_text("")
    result = subprocess.run(
        [*intruder.prefix(), sys.executable, "-m", "k3p", "agent", "--config", str(config),
         "--data-dir", str(cluster.lab.workdir / "dup"),
         "--server", cluster.server.url, "--token", (cluster.server.data_dir / "server/token").read_text().strip(),
         "--node-name", "b"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "node password rejected" in result.stderr
    assert cluster.json("node", "b")["status"]["addresses"][0]["address"] == cluster.nodes["b"].ip

    cidr_b = cluster.json("node", "b")["spec"]["podCIDR"]
    assert cidr_b in cluster.nodes["a"].run("ip", "route").stdout
    cluster.stop_agent("b")
    cluster.kubectl("delete", "node", "b")
    wait_for(lambda: cidr_b not in cluster.nodes["a"].run("ip", "route").stdout, 30, 0.5,
             "a's route to b's pods removed")
    assert cidr_b not in cluster.nodes["srv"].run("ip", "route").stdout
    fdb = cluster.nodes["a"].run("bridge", "fdb", "show", "dev", "flannel.1").stdout
    assert cluster.nodes["b"].ip not in fdb


@pytest.fixture(scope="module")
def host_gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("hostgw"), ["a"], ["--flannel-backend=host-gw"])
    yield c
    c.close()


def test_host_gw_routes_pods_over_plain_routes(host_gw: Cluster) -> None:
    ip_srv, ip_a = host_gw.run_pod("pod-srv", "srv"), host_gw.run_pod("pod-a", "a")
    cidr_a = host_gw.json("node", "a")["spec"]["podCIDR"]
    routes = host_gw.nodes["srv"].run("ip", "route").stdout
    assert f"{cidr_a} via {host_gw.nodes['a'].ip} dev eth0" in routes, routes
    assert "flannel.1" not in host_gw.nodes["srv"].run("ip", "link").stdout
    host_gw.reaches("pod-srv", f"http://{ip_a}:8080/", "pod-a")
    host_gw.reaches("pod-a", f"http://{ip_srv}:8080/", "pod-srv")



def test_backend_none_leaves_the_node_not_ready_until_a_cni_config_exists() -> None:
    from k3p_plugins.flannel.cni import CONFLIST_NAME, cni_conflist, conf_dir

    workdir = Path(tempfile.mkdtemp(prefix="k3pn-", dir="/tmp"))  # containerd's socket path is limited
    lab = NetnsLab(workdir)
    try:
        node = lab.add_node("srv")
        server = lab.server(node, ["--disable", "traefik", "--flannel-backend=none"]).start(timeout=120)

        def ready_condition() -> dict:
            found = json.loads(server.kubectl("get", "node", "srv", "-o", "json", check=True).stdout)
            return next(c for c in found["status"].get("conditions", []) if c["type"] == "Ready")

        wait_for(lambda: server.kubectl("get", "node", "srv").returncode == 0, 60, 0.5, "the node registered")
        condition = wait_for(lambda: ready_condition() if ready_condition()["status"] == "False" else None, 30)
        assert "NetworkReady=false" in condition["message"]
        assert "flannel.1" not in node.run("ip", "link").stdout
        # bring your own CNI: any config in the node's CNI folder makes the network ready
        agent_dir = server.data_dir / "agent"
        conf_dir(agent_dir).mkdir(parents=True, exist_ok=True)
        (conf_dir(agent_dir) / CONFLIST_NAME).write_text(json.dumps(
            cni_conflist("10.42.0.0/24", mtu=1500, ipam_data_dir=agent_dir / "cni/networks")))
        wait_for(lambda: ready_condition()["status"] == "True", 60, 0.5, "the node Ready")
    finally:
        lab.close()
        shutil.rmtree(workdir, ignore_errors=True)
