"""Ingress proxy benchmark: requests/s and latency through the traefik plugin's proxy vs straight to the backend.

    python bench/ingress.py [--quick] [--static] [--seconds S] [--connections N]

The backend is a small aiohttp server (uvloop, keep-alive, a ~100-byte answer) in its
own process on a free loopback port. The proxy is the plugin's ``IngressProxy`` in
another process. By default it is driven by the plugin's controller against a real
``k3p server`` (its own temporary data dir and port) in which the benchmark has created a
Service, its EndpointSlice and an Ingress: the routing table is the one the cluster
produced. ``--static`` runs the proxy alone with the same table built from those objects
in memory (no server). ``wrk`` (``--latency``) measures both targets in the same run:

* latency: 1 connection, one request at a time; the proxy's added p50 is the difference;
* throughput: ``--connections`` keep-alive connections from one wrk thread (a second thread
  only takes CPU from the proxy on a 2-core machine).

Goals (checked at the end, PASS/MISS): at least 3,000 requests/s through the proxy and
less than 1 ms added p50 latency. Everything shares the machine's cores: wrk, the backend
and the proxy compete for them, so the figures are lower than with each on its own cores.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from _common import CpuWindow, Progress, WrkResult, banner, capacity_line, parse_wrk, process_cpu_seconds

GOAL_RPS = 3000.0
GOAL_ADDED_P50 = 0.001
HOST = "bench.test"
NAMESPACE = "default"
SERVICE = "bench-backend"

progress = Progress()


@dataclass
class Sizes:
    seconds: float
    warmup: float
    connections: int


FULL = Sizes(seconds=10.0, warmup=2.0, connections=32)
QUICK = Sizes(seconds=3.0, warmup=1.0, connections=32)


# --- the processes under test ---------------------------------------------------------------


def run_backend(port_file: str) -> None:
    """Child: the backend (aiohttp low-level server on uvloop); writes its port to ``port_file``."""
    import uvloop
    from aiohttp import web

    body = b'{"hello": "from the backend", "padding": "' + b"x" * 50 + b'"}\n'

    async def handle(_request: web.BaseRequest) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    async def main() -> None:
        runner = web.ServerRunner(web.Server(handle, access_log=None), handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
        await site.start()
        Path(port_file).write_text(str(runner.addresses[0][1]))
        await asyncio.Event().wait()

    uvloop.run(main())


def bench_objects(backend_port: int) -> list[dict[str, Any]]:
    """The Service, EndpointSlice and Ingress that route ``bench.test`` to the backend."""
    return [
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": SERVICE, "namespace": NAMESPACE},
         "spec": {"ports": [{"name": "http", "port": 80, "targetPort": backend_port, "protocol": "TCP"}]}},
        {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
         "metadata": {"name": f"{SERVICE}-1", "namespace": NAMESPACE,
                      "labels": {"kubernetes.io/service-name": SERVICE}},
         "addressType": "IPv4", "ports": [{"name": "http", "port": backend_port, "protocol": "TCP"}],
         "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": True}}]},
        {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": "bench", "namespace": NAMESPACE},
         "spec": {"ingressClassName": "traefik", "rules": [{"host": HOST, "http": {"paths": [
             {"path": "/", "pathType": "Prefix",
              "backend": {"service": {"name": SERVICE, "port": {"name": "http"}}}}]}}]}},
    ]


def run_proxy(port_file: str, backend_port: int, kubeconfig: str) -> None:
    """Child: the proxy, fed by the controller against a server (``kubeconfig``) or by a static table."""
    import uvloop

    from k3p_plugins.traefik import IngressProxy, build_routing_table

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))

    async def main() -> None:
        proxy = IngressProxy(0, None, "127.0.0.1")
        if kubeconfig:
            from k3p.client import Client
            from k3p_plugins.traefik import IngressController

            client = Client.from_kubeconfig(kubeconfig, user_agent="k3p-traefik-bench")
            controller = IngressController(client, proxy, write_status=False)
            listening = asyncio.Event()
            task = asyncio.create_task(controller.run(on_listening=listening.set))
            await listening.wait()
        else:
            objs = bench_objects(backend_port)
            proxy.set_table(build_routing_table([objs[2]], [], [objs[0]], [objs[1]]))
            await proxy.start()
            task = None
        Path(port_file).write_text(str(proxy.http_port))
        await asyncio.Event().wait()
        if task:
            task.cancel()

    uvloop.run(main())


def start_child(role: str, workdir: Path, *extra: str) -> tuple[subprocess.Popen[bytes], int]:
    port_file = workdir / f"{role}.port"
    with (workdir / f"{role}.log").open("ab") as log_file:
        proc = subprocess.Popen([sys.executable, __file__, "--role", role, "--port-file", str(port_file), *extra],
                                stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while not (port_file.exists() and port_file.read_text().strip()):
        if proc.poll() is not None or time.monotonic() > deadline:
            stop(proc)
            raise RuntimeError(f"{role} did not start:\n{(workdir / f'{role}.log').read_text()[-2000:]}")
        time.sleep(0.05)
    return proc, int(port_file.read_text())


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --- wrk ------------------------------------------------------------------------------------


def wrk(url: str, seconds: float, connections: int, threads: int, proxy_pid: int | None = None) -> WrkResult:
    argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency",
            "-H", f"Host: {HOST}", url]
    before = process_cpu_seconds(proxy_pid) if proxy_pid else 0.0
    began = time.perf_counter()
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    if out.returncode != 0:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stderr or out.stdout}")
    result = parse_wrk(out.stdout)
    if proxy_pid:
        result.cpu["proxy"] = (process_cpu_seconds(proxy_pid) - before) / (time.perf_counter() - began)
    return result


# --- main -----------------------------------------------------------------------------------


def setup_server(workdir: Path, backend_port: int) -> Any:
    from k3p.testing import K3pServer

    server = K3pServer(workdir / "server", args=["--disable-agent", "--disable-scheduler",
                                                 "--disable-controller-manager"])

    async def create() -> None:
        from k3p.client.resources import ENDPOINTSLICES, INGRESSES, SERVICES

        async with server.admin_client("k3p-bench") as client:
            for res, obj in zip((SERVICES, ENDPOINTSLICES, INGRESSES), bench_objects(backend_port), strict=True):
                await client.create(res, obj)

    try:
        server.start(timeout=120)
        asyncio.run(create())
    except BaseException:
        server.stop()
        raise
    return server


def wait_for_route(url: str, timeout: float = 30) -> None:
    """Wait until the proxy answers 200 for the benchmark's host."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers={"Host": HOST}), timeout=5) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"the proxy never answered 200 for {HOST}")
        time.sleep(0.1)


def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1000:.3f}"


def main(args: argparse.Namespace) -> int:
    sizes = QUICK if args.quick else FULL
    if args.seconds:
        sizes.seconds = args.seconds
    if args.connections:
        sizes.connections = args.connections
    if not shutil.which("wrk"):
        sys.exit("wrk is needed (apt-get install wrk)")
    print(banner("k3p ingress proxy benchmark"))
    cores = os.cpu_count() or 1
    print(capacity_line("before the run"))
    mode = ("static table (proxy alone, no k3p server)" if args.static
            else "routing table from a real k3p server (Service + EndpointSlice + Ingress, the plugin's controller)")
    print(f"proxy: the traefik plugin's IngressProxy in a subprocess (uvloop); {mode}")
    print("backend: aiohttp low-level server in a subprocess (uvloop, keep-alive); load: wrk on loopback, all on "
          f"{cores} shared cores")
    print(f"{'quick' if args.quick else 'full'} run: {sizes.seconds:.0f} s per measurement, latency with 1 connection, "
          f"throughput with {sizes.connections} connections / 1 wrk thread\n")
    procs: list[subprocess.Popen[bytes]] = []
    server = None
    with tempfile.TemporaryDirectory(prefix="k3p-bench-ingress-") as tmp:
        workdir = Path(tmp)
        try:
            backend, backend_port = start_child("backend", workdir)
            procs.append(backend)
            kubeconfig = ""
            if not args.static:
                progress("starting k3p server")
                server = setup_server(workdir, backend_port)
                kubeconfig = str(server.kubeconfig)
            progress("starting proxy")
            proxy, proxy_port = start_child("proxy", workdir, "--backend-port", str(backend_port),
                                            "--kubeconfig", kubeconfig)
            procs.append(proxy)
            direct_url = f"http://127.0.0.1:{backend_port}/"
            proxy_url = f"http://127.0.0.1:{proxy_port}/"
            wait_for_route(proxy_url)
            progress("warming up")
            wrk(direct_url, sizes.warmup, sizes.connections, 1)
            wrk(proxy_url, sizes.warmup, sizes.connections, 1)
            results: dict[tuple[str, str], WrkResult] = {}
            window = CpuWindow()
            for kind, conns, threads in (("latency", 1, 1), ("throughput", sizes.connections, 1)):
                for target, url in (("direct", direct_url), ("proxy", proxy_url)):
                    progress(f"{kind}: {target}")
                    results[(kind, target)] = wrk(url, sizes.seconds, conns, threads,
                                                  proxy.pid if target == "proxy" else None)
            machine = window.machine_share()
        finally:
            for p in reversed(procs):
                stop(p)
            if server is not None:
                server.stop()

    print(f"\n{'measurement':<28}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'errors':>8}{'proxy CPU':>11}")
    for (kind, target), r in results.items():
        cpu = f"{r.cpu['proxy']:.2f}" if "proxy" in r.cpu else "-"
        print(f"{kind + ' ' + target:<28}{r.rps:>10.0f}{fmt_ms(r.p50):>10}{fmt_ms(r.p99):>10}{r.errors:>8}{cpu:>11}")
    lat_d, lat_p = results[("latency", "direct")], results[("latency", "proxy")]
    thr_d, thr_p = results[("throughput", "direct")], results[("throughput", "proxy")]
    added = lat_p.p50 - lat_d.p50
    print(f"\nratios proxy/direct: latency run req/s {lat_p.rps / lat_d.rps:.2f}, p50 {lat_p.p50 / lat_d.p50:.2f}x; "
          f"throughput run req/s {thr_p.rps / thr_d.rps:.2f}, p50 {thr_p.p50 / thr_d.p50:.2f}x")
    print(f"added p50 latency (1 connection): {fmt_ms(added)} ms; machine CPU during the runs: "
          f"{machine:.2f} of {cores} cores (proxy CPU is a share of one core)")
    if thr_p.cpu.get("proxy"):
        print(f"proxy CPU per request {thr_p.cpu['proxy'] / thr_p.rps * 1e6:.0f} us: one full core would carry about "
              f"{thr_p.rps / thr_p.cpu['proxy']:.0f} req/s")
    print("\ngoals:")
    goals = [
        (thr_p.rps >= GOAL_RPS, f"throughput through the proxy {thr_p.rps:.0f} req/s >= {GOAL_RPS:.0f}"),
        (added < GOAL_ADDED_P50, f"added p50 latency {fmt_ms(added)} ms < {fmt_ms(GOAL_ADDED_P50)} ms"),
        (thr_p.errors == 0 and lat_p.errors == 0, f"no errors through the proxy ({thr_p.errors + lat_p.errors})"),
    ]
    for ok, text in goals:
        print(f"  {'PASS' if ok else 'MISS'}  {text}")
    return 0 if all(ok for ok, _ in goals) else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short run (3 s per measurement)")
    parser.add_argument("--static", action="store_true",
                        help="run the proxy alone with a static routing table instead of against a k3p server")
    parser.add_argument("--seconds", type=float, default=0, help="seconds per measurement (default 10, quick 3)")
    parser.add_argument("--connections", type=int, default=0, help="connections of the throughput run (default 32)")
    parser.add_argument("--role", choices=("backend", "proxy"), help=argparse.SUPPRESS)
    parser.add_argument("--port-file", help=argparse.SUPPRESS)
    parser.add_argument("--backend-port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--kubeconfig", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "backend":
        run_backend(args.port_file)
    elif args.role == "proxy":
        run_proxy(args.port_file, args.backend_port, args.kubeconfig)
    else:
        structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
        sys.exit(main(args))
