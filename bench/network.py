"""Pod network benchmark: HTTP latency and throughput between pods, and cluster DNS latency, on real nodes.

    python bench/network.py [--quick]        (as root)

Brings up two small clusters, one after the other, each a ``k3p server`` node ``srv`` and a
``k3p agent`` node ``a`` in their own network namespaces behind a switch namespace
(``k3p.testing.netns.NetnsLab``): the first with flannel's default vxlan backend, the
second with ``--flannel-backend=host-gw``. The busybox image comes from each node's
airgap images folder, so no registry is needed. In each cluster three long-running
busybox ``sleep`` pods own the network namespaces measured: ``client`` and ``web-srv`` on
``srv``, ``web-a`` on ``a``; in the vxlan cluster a Service ``web`` (port 80 -> 8080) selects
``web-a`` alone, so its ClusterIP leads across nodes too.

HTTP: busybox httpd forks a process per connection and closes it, which would measure
fork cost, so the answering side is a small keep-alive aiohttp server (uvloop) started
with ``nsenter --net`` inside each web pod's network namespace (found by the pod's IP
among this run's containers): the packets take the pod's own path (its veth, the node's
bridge, flannel's vxlan device or host-gw routes, the service proxy's nftables rules),
while the process itself shares the host's mount, PID and cgroup namespaces (no
container limits). ``wrk --latency`` runs the same
way in the client pod's namespace: latency with 1 connection (p50/p99), throughput with
16 keep-alive connections from one wrk thread, 5 s each (2 s with ``--quick``: wrk counts
whole seconds) after a 1 s warm-up. Every path is also given as a ratio against the
same-node pod-IP figure of the same cluster.

DNS: 2,000 (300 with ``--quick``) sequential UDP queries (dnslib for the wire format) from the client pod's
namespace to the cluster DNS at 10.43.0.10, which the server node answers itself: the
A record of ``web.default.svc.cluster.local``, a new name each time under a domain
the cluster does not own (forwarded to the upstream named in the server's
``--resolv-conf``) and one such name repeated (answered from the forwarder's cache).
The upstream is a tiny fake DNS server the benchmark runs on 127.0.0.1:53 inside the
server node's namespace: no query leaves the namespaces this run made.

Everything shares the machine's cores: wrk, the HTTP server, both k3p nodes and the
kernel's packet path compete for them. Everything the run starts is stopped at the end,
also on failure, and the namespaces and temporary files are removed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from _common import Progress, WrkResult, banner, capacity_line, parse_wrk, percentile, process_cpu_seconds

import k3p_plugins.containerd.ocibuild as ocibuild
from k3p.testing import descendants, stop_process, wait_for
from k3p.testing.netns import NETNS_DIR, NetnsLab, NetnsNode

IMAGE = "docker.io/library/busybox:1.35"
DNS_IP = "10.43.0.10"
HTTP_PORT = 8080
SERVICE_PORT = 80
SERVICE = "web"
CLUSTER_NAME = f"{SERVICE}.default.svc.cluster.local"
#: a reserved name (RFC 2606) the cluster does not own: its queries are forwarded upstream
FORWARDED_DOMAIN = "upstream.bench.example"
#: the fake upstream's address, inside the server node's namespace, and what it answers (TEST-NET-1)
UPSTREAM_IP = "127.0.0.1"
UPSTREAM_ANSWER = "192.0.2.7"
#: the cluster's nodes: the server first
NODES = ("srv", "a")
#: plugins the measurement does not need: fewer processes competing for the cores
DISABLED = "traefik,local-storage"

progress = Progress()


@dataclass
class Sizes:
    seconds: int  # per wrk measurement; wrk counts whole seconds
    warmup: int  # a throughput run before each pair of measurements: connections up, neighbours learnt
    connections: int  # for the throughput run
    dns_queries: int
    dns_warmup: int


FULL = Sizes(seconds=5, warmup=1, connections=16, dns_queries=2000, dns_warmup=50)
QUICK = Sizes(seconds=2, warmup=1, connections=16, dns_queries=300, dns_warmup=20)


# --- the programs run inside the namespaces -----------------------------------------------------

#: the keep-alive HTTP server in a web pod's network namespace; argv: port
HTTP_SERVER = textwrap.dedent("""
    import asyncio, sys
    import uvloop
    from aiohttp import web

    BODY = b"hello from a pod\\n"

    async def handle(request):
        return web.Response(body=BODY, content_type="text/plain")

    async def main():
        runner = web.ServerRunner(web.Server(handle, access_log=None), handle_signals=False)
        await runner.setup()
        await web.TCPSite(runner, "0.0.0.0", int(sys.argv[1]), backlog=1024).start()
        print("serving", flush=True)
        await asyncio.Event().wait()

    uvloop.run(main())
""")

#: the fake upstream nameserver: any A question gets one fixed address; argv: address, answer
FAKE_UPSTREAM = textwrap.dedent("""
    import socket, sys
    from dnslib import QTYPE, RR, A, DNSRecord

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((sys.argv[1], 53))
    print("serving", flush=True)
    while True:
        data, peer = sock.recvfrom(4096)
        try:
            query = DNSRecord.parse(data)
        except Exception:
            continue
        reply = query.reply()
        if query.q.qtype == QTYPE.A:
            reply.add_answer(RR(query.q.qname, QTYPE.A, rdata=A(sys.argv[2]), ttl=30))
        sock.sendto(reply.pack(), peer)
""")

#: sequential A queries over UDP, timed one by one; argv: server, mode (same|unique), name, count, warmup,
#: expected address. Prints the latencies of the good answers and the number of failures as JSON.
DNS_CLIENT = textwrap.dedent("""
    import json, socket, sys, time
    from dnslib import QTYPE, RCODE, DNSRecord

    server, mode, name = sys.argv[1], sys.argv[2], sys.argv[3]
    count, warmup, expect = int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect((server, 53))
    sock.settimeout(2)
    latencies, failed, last = [], 0, ""
    for i in range(warmup + count):
        wire = DNSRecord.question(f"q{i}.{name}" if mode == "unique" else name, "A").pack()
        began = time.perf_counter()
        sock.send(wire)
        try:
            data = sock.recv(4096)
            while data[:2] != wire[:2]:
                data = sock.recv(4096)
        except TimeoutError:
            if i >= warmup:
                failed += 1
            continue
        took = time.perf_counter() - began
        reply = DNSRecord.parse(data)
        answers = [str(rr.rdata) for rr in reply.rr if rr.rtype == QTYPE.A]
        last = f"{RCODE[reply.header.rcode]} {' '.join(answers)}"
        if i >= warmup:
            if reply.header.rcode == RCODE.NOERROR and expect in answers:
                latencies.append(took)
            else:
                failed += 1
    print(json.dumps({"latencies": latencies, "failed": failed, "last": last}))
""")

#: one GET, for checking that a path works before it is measured; argv: url
HTTP_CHECK = "import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=2).read().decode())"


# --- wrk --------------------------------------------------------------------------------------------


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _busy_cpu_seconds() -> float:
    """CPU time the machine spent busy so far (every core), interrupt work included.

    With tick-based accounting a tick in a softirq counts in /proc/stat as softirq but in
    the interrupted process's system time, and packet processing is mostly softirqs: both
    sides of the subtraction in :func:`wrk` must count it.
    """
    with open("/proc/stat") as f:
        user, nice, system, _idle, _iowait, irq, softirq = (int(v) for v in f.readline().split()[1:8])
    return (user + nice + system + irq + softirq) / _CLOCK_TICKS


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def wrk(netns: str, url: str, seconds: int, connections: int, server_pid: int) -> WrkResult:
    """``wrk`` in the network namespace ``netns`` (one thread) against ``url``."""
    argv = ["nsenter", f"--net={netns}", "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", url]
    server_before, wrk_before = process_cpu_seconds(server_pid), _children_cpu()
    machine_before = _busy_cpu_seconds()
    began = time.perf_counter()
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    wall = time.perf_counter() - began
    if out.returncode != 0:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stderr or out.stdout}")
    result = parse_wrk(out.stdout)
    server = process_cpu_seconds(server_pid) - server_before
    client = _children_cpu() - wrk_before
    result.cpu.update(server=server / wall, wrk=client / wall)
    result.cpu["other"] = max(0.0, _busy_cpu_seconds() - machine_before - server - client) / wall
    return result


@dataclass
class PathResult:
    """One network path: latency at 1 connection and throughput at many."""

    path: str
    cluster: str
    latency: WrkResult
    throughput: WrkResult


# --- a cluster ---------------------------------------------------------------------------------------


def pod(name: str, node: str, labels: dict[str, str]) -> dict[str, Any]:
    """A busybox pod that only sleeps: it owns a network namespace the benchmark's processes enter."""
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels},
            "spec": {"nodeName": node,
                     # busybox sleep as PID 1 ignores SIGTERM: a short grace period keeps the cleanup quick
                     "terminationGracePeriodSeconds": 1,
                     "containers": [{"name": "sleep", "image": IMAGE, "imagePullPolicy": "IfNotPresent",
                                     "command": ["sleep", "2147483647"]}]}}


def _netns_id(path: str | Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


class Cluster:
    """A server node and an agent node in a :class:`NetnsLab`, plus the processes the benchmark runs in them."""

    def __init__(self, workdir: Path, label: str, server_args: list[str], resolv_conf: Path) -> None:
        self.label = label
        self.server_args = server_args
        self.resolv_conf = resolv_conf
        self.lab = NetnsLab(workdir)
        self.nodes: dict[str, NetnsNode] = {}
        self.helpers: list[subprocess.Popen[bytes]] = []
        self.server: Any = None

    def add_nodes(self) -> None:
        for name in NODES:
            self.nodes[name] = self.lab.add_node(name)
            ocibuild.build_busybox_image(self.lab.workdir / name / "data/agent/images/busybox.tar", IMAGE)

    def start(self) -> None:
        """The server, then the agent; returns once both nodes are Ready."""
        srv, *agents = NODES
        self.server = self.lab.server(self.nodes[srv], ["--disable", DISABLED, "--resolv-conf",
                                                        str(self.resolv_conf), *self.server_args])
        self.server.start(timeout=120)
        for name in agents:
            self.lab.agent(self.nodes[name], self.server, "--resolv-conf", str(self.resolv_conf))
        wait_for(lambda: self.ready_nodes() == set(NODES), 120, 0.5, f"{self.label}: all nodes Ready")

    def kubectl(self, *args: str, input: str | None = None, timeout: float = 60) -> str:
        return self.server.kubectl(*args, input=input, timeout=timeout, check=True).stdout

    def get(self, *args: str) -> dict[str, Any]:
        return json.loads(self.kubectl("get", *args, "-o", "json"))

    def ready_nodes(self) -> set[str]:
        ready = set()
        for node in self.get("nodes").get("items", []):
            if any(c["type"] == "Ready" and c["status"] == "True" for c in node["status"].get("conditions", [])):
                ready.add(node["metadata"]["name"])
        return ready

    def apply(self, *objects: dict[str, Any]) -> None:
        # a stream of JSON objects rather than a List: kubectl validates each against its own schema
        self.kubectl("apply", "-f", "-", input="\n".join(json.dumps(o) for o in objects))

    def pod_ips(self, names: list[str]) -> dict[str, str]:
        """Each pod's IP once all of them are Running."""
        def running() -> dict[str, str] | None:
            pods = {p["metadata"]["name"]: p["status"] for p in self.get("pods")["items"]}
            if all(pods.get(n, {}).get("phase") == "Running" and pods[n].get("podIP") for n in names):
                return {n: pods[n]["podIP"] for n in names}
            return None

        return wait_for(running, 120, 0.5, f"{self.label}: pods {', '.join(names)} Running")

    def pod_netns(self, ip: str) -> str:
        """A path to the network namespace of this cluster's pod with ``ip``: ``/proc/<pid>/ns/net``.

        Other clusters on the host may use the same pod network, so the candidates are
        only the namespaces of this lab's containers: the processes below the shims whose
        command line names the lab's directory. The path goes through one of the pod's
        processes rather than its /run/netns entry, which another run's cleanup on the
        same host may unmount while the namespace lives on.
        """
        marker = str(self.lab.workdir).encode()
        holders: dict[tuple[int, int], int] = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            # the shims only: below them live the containers' processes, as long as the pods
            if marker in cmdline and Path(cmdline.split(b"\0", 1)[0].decode(errors="replace")).name.startswith(
                    "containerd-shim"):
                for pid in descendants(int(entry)):
                    if (ns := _netns_id(f"/proc/{pid}/ns/net")) is not None:
                        holders.setdefault(ns, pid)
        for pid in holders.values():
            path = f"/proc/{pid}/ns/net"
            addresses = subprocess.run(["nsenter", f"--net={path}", "ip", "-4", "-o", "addr"], capture_output=True,
                                       text=True).stdout
            if f" {ip}/" in addresses:
                return path
        raise RuntimeError(f"{self.label}: no network namespace of this cluster's pods holds {ip}")

    def helper(self, netns: str, code: str, *args: str, what: str) -> subprocess.Popen[bytes]:
        """A Python program in the network namespace ``netns``; returns once it printed "serving"."""
        log_path = self.lab.workdir / f"{what.replace(' ', '-')}.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(["nsenter", f"--net={netns}", sys.executable, "-c", code, *args],
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        self.helpers.append(proc)

        def serving_or_gone() -> bool:
            return proc.poll() is not None or b"serving" in log_path.read_bytes()

        try:
            wait_for(serving_or_gone, 30, 0.05, what)
        except TimeoutError:
            pass
        if proc.poll() is not None or b"serving" not in log_path.read_bytes():
            raise RuntimeError(f"{what} did not start (exit {proc.returncode}):\n{log_path.read_text()[-2000:]}")
        return proc

    def check_http(self, netns: str, url: str) -> None:
        """Waits until a GET of ``url`` from ``netns`` answers (routes and proxy rules may come a moment later)."""
        def answers() -> bool:
            out = subprocess.run(["nsenter", f"--net={netns}", sys.executable, "-c", HTTP_CHECK, url],
                                 capture_output=True, text=True, timeout=10)
            return out.returncode == 0 and "hello" in out.stdout

        wait_for(answers, 60, 0.3, f"{self.label}: GET {url} from the client pod")

    def close(self) -> None:
        for proc in self.helpers:
            with contextlib.suppress(Exception):
                stop_process(proc, 5)
        if self.server is not None and self.server.proc is not None and self.server.proc.poll() is None:
            # deleting the pods through the API lets the CNI plugins release what they set up for them
            with contextlib.suppress(Exception):
                self.server.kubectl("delete", "pods,services", "-l", "bench=network", "--grace-period=1",
                                    "--timeout=60s", timeout=90)
        self.lab.close()


# --- the measurements ----------------------------------------------------------------------------------


def measure(cluster: Cluster, client_netns: str, url: str, server: subprocess.Popen[bytes], sizes: Sizes,
            path: str) -> PathResult:
    """Latency at 1 connection and throughput at ``sizes.connections``, after a warm-up run."""
    cluster.check_http(client_netns, url)
    progress(f"{cluster.label}: {path} ({url})")
    wrk(client_netns, url, sizes.warmup, sizes.connections, server.pid)
    latency = wrk(client_netns, url, sizes.seconds, 1, server.pid)
    throughput = wrk(client_netns, url, sizes.seconds, sizes.connections, server.pid)
    return PathResult(path, cluster.label, latency, throughput)


@dataclass
class DnsResult:
    what: str
    p50: float
    p99: float
    count: int
    failed: int
    last: str


def dns_queries(client_netns: str, mode: str, name: str, expect: str, sizes: Sizes, what: str) -> DnsResult:
    """``sizes.dns_queries`` sequential queries from ``client_netns`` to the cluster DNS."""
    out = subprocess.run(["nsenter", f"--net={client_netns}", sys.executable, "-c", DNS_CLIENT, DNS_IP, mode, name,
                          str(sizes.dns_queries), str(sizes.dns_warmup), expect],
                         capture_output=True, text=True, timeout=sizes.dns_queries * 2 + 120)
    if out.returncode != 0:
        raise RuntimeError(f"DNS client failed ({out.returncode}): {out.stderr[-2000:]}")
    data = json.loads(out.stdout)
    lat = data["latencies"]
    return DnsResult(what, percentile(lat, 0.5), percentile(lat, 0.99), len(lat), data["failed"], data["last"])


def run_cluster(workdir: Path, label: str, server_args: list[str], resolv_conf: Path, sizes: Sizes,
                with_service: bool) -> tuple[list[PathResult], list[DnsResult]]:
    """One cluster: bring it up, measure its paths (and, with ``with_service``, the Service and DNS), close it."""
    cluster = Cluster(workdir, label, server_args, resolv_conf)
    paths: list[PathResult] = []
    dns: list[DnsResult] = []
    try:
        cluster.add_nodes()
        if with_service:
            # the upstream the server's --resolv-conf names, inside the server node's namespace
            cluster.helper(str(NETNS_DIR / cluster.nodes["srv"].netns), FAKE_UPSTREAM, UPSTREAM_IP, UPSTREAM_ANSWER,
                           what="fake upstream DNS")
        progress(f"{label}: starting the server and agent nodes")
        began = time.perf_counter()
        cluster.start()
        progress(f"{label}: both nodes Ready after {time.perf_counter() - began:.0f} s; starting the pods")
        objects = [pod("client", "srv", {"bench": "network"}),
                   pod("web-srv", "srv", {"bench": "network", "app": "web-srv"}),
                   pod("web-a", "a", {"bench": "network", "app": SERVICE})]
        if with_service:
            objects.append({"apiVersion": "v1", "kind": "Service",
                            "metadata": {"name": SERVICE, "labels": {"bench": "network"}},
                            "spec": {"selector": {"app": SERVICE},
                                     "ports": [{"port": SERVICE_PORT, "targetPort": HTTP_PORT}]}})
        cluster.apply(*objects)
        ips = cluster.pod_ips(["client", "web-srv", "web-a"])
        netns = {name: cluster.pod_netns(ip) for name, ip in ips.items()}
        servers = {name: cluster.helper(netns[name], HTTP_SERVER, str(HTTP_PORT), what=f"HTTP server in {name}")
                   for name in ("web-srv", "web-a")}
        client = netns["client"]
        backend = label.split()[0]
        paths.append(measure(cluster, client, f"http://{ips['web-srv']}:{HTTP_PORT}/", servers["web-srv"], sizes,
                             "same node, pod IP"))
        paths.append(measure(cluster, client, f"http://{ips['web-a']}:{HTTP_PORT}/", servers["web-a"], sizes,
                             f"cross node {backend}, pod IP"))
        if with_service:
            cluster_ip = cluster.get("service", SERVICE)["spec"]["clusterIP"]
            paths.append(measure(cluster, client, f"http://{cluster_ip}:{SERVICE_PORT}/", servers["web-a"], sizes,
                                 f"cross node {backend}, ClusterIP"))
            progress(f"{label}: DNS, {sizes.dns_queries} queries each")
            dns.append(dns_queries(client, "same", CLUSTER_NAME, cluster_ip, sizes,
                                   f"{CLUSTER_NAME} A (cluster record)"))
            dns.append(dns_queries(client, "unique", FORWARDED_DOMAIN, UPSTREAM_ANSWER, sizes,
                                   f"q<n>.{FORWARDED_DOMAIN} A (forwarded, a new name each time)"))
            dns.append(dns_queries(client, "same", f"cached.{FORWARDED_DOMAIN}", UPSTREAM_ANSWER, sizes,
                                   f"cached.{FORWARDED_DOMAIN} A (forwarded once, then cached)"))
    finally:
        progress(f"{label}: stopping")
        cluster.close()
    return paths, dns


# --- report --------------------------------------------------------------------------------------------


def _ms(v: float) -> str:
    return "-" if v != v else f"{v * 1e3:.3f}"


def _ratio(a: float, b: float) -> str:
    if b <= 0 or a != a or b != b:
        return "-"
    return f"{a / b:.2f}x"


def _share(v: float | None) -> str:
    return "-" if v is None else f"{v:.0%}"


def report(paths: list[PathResult], dns: list[DnsResult], sizes: Sizes) -> None:
    print()
    print(f"HTTP GET pod to pod, keep-alive, 17-byte answer. Latency: 1 connection for {sizes.seconds} s; "
          f"throughput: {sizes.connections} connections from one wrk thread for {sizes.seconds} s.")
    print("The answering server runs with nsenter --net in the web pod's network namespace (the pod's own network "
          "path; host mount/PID/cgroup namespaces), wrk likewise in the client pod's.")
    print("vs same node: against the same-node pod-IP figures of the same cluster (latency: times slower; req/s: "
          "share of the same-node throughput). CPU: share of one core used by the HTTP server, by wrk and by "
          "everything else on the machine (other: the nodes, interrupt work no process was charged for, any other "
          "load) during the throughput run; other is also given for the latency run, whose p99 it disturbs most.")
    head = (f"{'path':<32}{'cluster':<9}| {'p50 ms':>8}{'p99 ms':>8}{'other':>6} | {'req/s':>7}{'p50 ms':>7}"
            f"{'p99 ms':>7}{'server':>7}{'wrk':>5}{'other':>6} | {'vs same node: p50':>17}{'p99':>7}{'req/s':>7}")
    groups = (f"{'':<41}| {'latency, 1 connection':<22} | {f'throughput, {sizes.connections} connections':<40}"
              f"| ratios")
    print(groups)
    print(head)
    print("-" * len(head))
    baselines = {p.cluster: p for p in paths if p.path.startswith("same node")}
    for p in paths:
        base = baselines[p.cluster]
        lat, thr = p.latency, p.throughput
        errors = lat.errors + thr.errors
        lat_other, thr_server = _share(lat.cpu.get("other")), _share(thr.cpu.get("server"))
        thr_wrk, thr_other = _share(thr.cpu.get("wrk")), _share(thr.cpu.get("other"))
        print(f"{p.path:<32}{p.cluster.split()[0]:<9}| {_ms(lat.p50):>8}{_ms(lat.p99):>8}{lat_other:>6}"
              f" | {thr.rps:>7.0f}{_ms(thr.p50):>7}{_ms(thr.p99):>7}{thr_server:>7}"
              f"{thr_wrk:>5}{thr_other:>6} | "
              f"{_ratio(lat.p50, base.latency.p50):>17}{_ratio(lat.p99, base.latency.p99):>7}"
              f"{_ratio(thr.rps, base.throughput.rps):>7}" + (f"  ({errors} errors)" if errors else ""))
    print()
    for p in paths:
        if p.path.startswith("same node"):
            continue
        base = baselines[p.cluster]
        print(f"{p.path} / same node: {_ratio(p.latency.p50, base.latency.p50)} latency (p50), "
              f"{_ratio(p.latency.p99, base.latency.p99)} (p99), "
              f"{_ratio(p.throughput.rps, base.throughput.rps)} throughput")
    by_name = {p.path: p for p in paths}
    service = next((p for p in paths if p.path.endswith("ClusterIP")), None)
    direct = by_name.get(service.path.replace("ClusterIP", "pod IP")) if service else None
    if service and direct:
        print(f"ClusterIP / pod IP (both cross node): {_ratio(service.latency.p50, direct.latency.p50)} latency "
              f"(p50), {_ratio(service.latency.p99, direct.latency.p99)} (p99), "
              f"{_ratio(service.throughput.rps, direct.throughput.rps)} throughput")
    bound = [f"{p.path} [{p.cluster.split()[0]}]" for p in paths if p.throughput.cpu.get("server", 0) >= 0.85]
    if bound:
        print(f"note: the HTTP server (one Python process) used most of a core in: {'; '.join(bound)}. There the "
              f"throughput is mostly the server's limit, and the req/s ratios understate the network's own difference.")
    if dns:
        print()
        print(f"DNS over UDP from the client pod's namespace to the cluster DNS at {DNS_IP} (served by the server "
              f"node's k3p process), {sizes.dns_queries} sequential queries each; forwarded names go to a fake "
              f"upstream at {UPSTREAM_IP}:53 in the server node's namespace.")
        head = f"{'query':<72}{'p50 ms':>8}{'p99 ms':>8}{'answers':>9}{'failed':>8}"
        print(head)
        print("-" * len(head))
        for d in dns:
            print(f"{d.what:<72}{_ms(d.p50):>8}{_ms(d.p99):>8}{d.count:>9}{d.failed:>8}"
                  + ("" if not d.failed else f"  (last answer: {d.last})"))


# --- main ----------------------------------------------------------------------------------------------


def missing() -> str:
    """What this machine lacks for the benchmark ("" when nothing)."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, containerd)"
    for binary in ("wrk", "nsenter", "ip", "kubectl", "containerd", "runc", "nft"):
        if shutil.which(binary) is None:
            return f"needs {binary}"
    if not Path("/bin/busybox").exists():
        return "needs busybox-static (/bin/busybox)"
    return ""


def main(args: argparse.Namespace) -> int:
    sizes = QUICK if args.quick else FULL
    began = time.perf_counter()
    # short: containerd's socket path under it must fit in a unix socket address
    workdir = Path(tempfile.mkdtemp(prefix="k3pnet-", dir="/tmp"))
    resolv_conf = workdir / "resolv.conf"
    resolv_conf.write_text(f"nameserver {UPSTREAM_IP}\n")
    paths: list[PathResult] = []
    dns: list[DnsResult] = []
    try:
        found, dns = run_cluster(workdir / "vxlan", "vxlan cluster", [], resolv_conf, sizes, with_service=True)
        paths += found
        found, _ = run_cluster(workdir / "hostgw", "host-gw cluster", ["--flannel-backend=host-gw"], resolv_conf,
                               sizes, with_service=False)
        paths += found
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report(paths, dns, sizes)
    print(f"\ntook {time.perf_counter() - began:.0f} s")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="shorter measurements (2 s each instead of 5 s; wrk counts whole seconds)")
    args = parser.parse_args()
    if reason := missing():
        sys.exit(f"bench/network.py {reason}")
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    # a plain kill should clean up too: SystemExit runs the finally blocks
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    print(banner("k3p pod network benchmark"))
    print(f"{'quick' if args.quick else 'full'} run: two 2-node clusters (vxlan, then host-gw) in network namespaces "
          f"on this machine; all traffic stays inside them. wrk, the HTTP servers and both nodes share the machine's "
          f"{os.cpu_count()} cores.")
    print(capacity_line("before the run"))
    code = main(args)
    print(capacity_line("after the run"))
    sys.exit(code)
