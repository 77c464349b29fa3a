"""The ingress proxy: the plugin's component against a real k3p server, backends on loopback.

No kubelet runs: the tests create Services without selectors and write their
EndpointSlices by hand, pointing at small aiohttp servers on 127.0.0.1. The component runs
in this process as the user ``system:k3p:traefik`` with only the RBAC rules the plugin's
manifests grant. The first tests drive the proxy alone with a fixed routing table.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import itertools
import json
import socket
import ssl
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from k3p import pki
from k3p.client import ApiError, Client
from k3p.client.resources import ENDPOINTSLICES, INGRESSES, NODES, SECRETS, SERVICES
from k3p.testing import K3pServer, async_wait_for, free_port
from k3p_plugins.traefik import IngressProxy, build_routing_table, ingress_component
from k3p_plugins.traefik.certs import DEFAULT_CERT_NAME

NS = "default"


# --- backends -----------------------------------------------------------------------------


class Backend:
    """An aiohttp server on a free loopback port that says who it is and what it got.

    ``/ws`` echoes WebSocket messages, ``/stream`` sends a first chunk and waits for
    ``release`` before the rest, ``/upload`` counts a streamed request body, ``/slow``
    answers after 1 second.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.port = 0
        self.hits = 0
        self.release = asyncio.Event()
        self.first_upload_chunk = asyncio.Event()
        self._runner: web.ServerRunner | None = None

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        self.hits += 1
        if request.path == "/ws":
            ws = web.WebSocketResponse(protocols=("echo",))
            await ws.prepare(request)
            async for msg in ws:
                if msg.type is aiohttp.WSMsgType.TEXT:
                    await ws.send_str(msg.data)
                elif msg.type is aiohttp.WSMsgType.BINARY:
                    await ws.send_bytes(msg.data)
            return ws
        if request.path == "/stream":
            response = web.StreamResponse()
            await response.prepare(request)
            await response.write(b"first chunk;")
            await asyncio.wait_for(self.release.wait(), 10)
            for _ in range(64):
                await response.write(b"x" * 65536)
            await response.write_eof()
            return response
        if request.path == "/upload":
            size = 0
            async for chunk in request.content.iter_any():
                size += len(chunk)
                self.first_upload_chunk.set()
            return web.json_response({"name": self.name, "size": size})
        if request.path == "/slow":
            await asyncio.sleep(1)
        body = {"name": self.name, "path": request.path_qs, "method": request.method,
                "headers": {k: v for k, v in request.headers.items()}}
        return web.json_response(body, headers={"X-Backend": self.name, "Keep-Alive": "timeout=5"})

    async def start(self) -> Backend:
        self._runner = web.ServerRunner(web.Server(self.handle, access_log=None), handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        if self._runner:
            await self._runner.cleanup()


@pytest.fixture
async def backends() -> AsyncIterator[Callable[..., Any]]:
    started: list[Backend] = []

    async def make(name: str) -> Backend:
        b = await Backend(name).start()
        started.append(b)
        return b

    yield make
    for b in started:
        await b.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
        yield session


async def get(session: aiohttp.ClientSession, port: int, host: str, path: str = "/",
              **kw: Any) -> tuple[int, Any]:
    async with session.get(f"http://127.0.0.1:{port}{path}", headers={"Host": host, **kw.pop("headers", {})},
                           **kw) as r:
        text = await r.text()
        try:
            return r.status, json.loads(text)
        except ValueError:
            return r.status, text


# --- objects ------------------------------------------------------------------------------


def service_obj(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": NS},
            "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]}}


def slice_obj(service: str, port: int, suffix: str, address: str = "127.0.0.1") -> dict[str, Any]:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": f"{service}-{suffix}", "namespace": NS,
                         "labels": {"kubernetes.io/service-name": service}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
            "endpoints": [{"addresses": [address], "conditions": {"ready": True}}]}


def ingress_obj(name: str, host: str, paths: dict[str, str], tls: list[dict[str, Any]] | None = None
                ) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "ingressClassName": "traefik",
        "rules": [{"host": host, "http": {"paths": [
            {"path": p, "pathType": "Prefix", "backend": {"service": {"name": s, "port": {"name": "http"}}}}
            for p, s in paths.items()]}}],
    }
    if tls:
        spec["tls"] = tls
    return {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": name, "namespace": NS},
            "spec": spec}


class Objects:
    """Creates API objects for one test and deletes them afterwards."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.created: list[tuple[Any, str, str | None]] = []

    async def create(self, res: Any, obj: dict[str, Any]) -> dict[str, Any]:
        out = await self.client.create(res, obj)
        self.created.append((res, obj["metadata"]["name"], obj["metadata"].get("namespace")))
        return out

    async def service(self, name: str, *ports: int) -> None:
        """A Service without selector and one EndpointSlice per backend port."""
        await self.create(SERVICES, service_obj(name))
        for i, port in enumerate(ports):
            await self.create(ENDPOINTSLICES, slice_obj(name, port, str(i)))

    async def cleanup(self) -> None:
        for res, name, namespace in reversed(self.created):
            with contextlib.suppress(ApiError):
                await self.client.delete(res, name, namespace)
        await self.client.close()


# --- the server and the component ---------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    # No controllers: they would judge the test's hand-made Node NotReady (it sends no heartbeats).
    s = K3pServer(tmp_path_factory.mktemp("traefik"),
                  args=["--disable-agent", "--disable-scheduler", "--disable-controller-manager"]).start()
    yield s
    s.stop()


def traefik_client_factory(server: K3pServer, folder: Path) -> Callable[[], Client]:
    """Clients that act as ``system:k3p:traefik``, the user the plugin's manifests grant its rules to."""
    ca = pki.ensure_ca(server.data_dir / "server" / "tls", "client-ca", "k3p-client-ca")
    cert, key = ca.issue("system:k3p:traefik", client=True)
    cert_file, key_file = folder / "traefik.crt", folder / "traefik.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pki.write_private(key_file, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                  serialization.NoEncryption()))
    return lambda: Client(server.url, ca_file=server.ca_file, cert_file=cert_file, key_file=key_file,
                          user_agent="k3p-traefik")


class Running:
    def __init__(self, objects: Objects, http_port: int, https_port: int) -> None:
        self.objects = objects
        self.http_port = http_port
        self.https_port = https_port


@pytest.fixture
async def ingress(server: K3pServer, tmp_path: Path) -> AsyncIterator[Running]:
    """The plugin's component on free loopback ports, and an admin object helper."""
    http_port, https_port = free_port(), free_port()
    component = ingress_component(traefik_client_factory(server, tmp_path), "test-node", http_port, https_port,
                                  host="127.0.0.1")
    assert component.name == "traefik-test-node"
    ready = asyncio.Event()
    task = asyncio.create_task(component.run(ready.set))
    objects = Objects(server.admin_client("traefik-test"))
    try:
        await asyncio.wait_for(asyncio.wait([task, asyncio.ensure_future(ready.wait())],
                                            return_when=asyncio.FIRST_COMPLETED), 30)
        if task.done():
            task.result()  # raise what made it fail
        yield Running(objects, http_port, https_port)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await objects.cleanup()


async def until_status(session: aiohttp.ClientSession, port: int, host: str, path: str = "/",
                       status: int = 200, timeout: float = 10) -> Any:
    async def check() -> Any:
        got, body = await get(session, port, host, path)
        return body if got == status else None

    return await async_wait_for(check, timeout, 0.05, f"{status} from {host}{path}")


# --- the proxy alone, with a fixed table ---------------------------------------------------


def static_table(routes: dict[str, list[int]]) -> Any:
    """A table for host "<name>.static" -> service <name> whose endpoints are these loopback ports."""
    ingresses, services, slices = [], [], []
    for name, ports in routes.items():
        ingresses.append({"metadata": {"name": name, "namespace": NS}, "spec": {
            "ingressClassName": "traefik",
            "rules": [{"host": f"{name}.static", "http": {"paths": [
                {"path": "/", "pathType": "Prefix",
                 "backend": {"service": {"name": name, "port": {"number": 80}}}}]}}]}})
        services.append(service_obj(name))
        slices += [slice_obj(name, port, str(i)) for i, port in enumerate(ports)]
    return build_routing_table(ingresses, [], services, slices)


@pytest.fixture
async def static_proxy() -> AsyncIterator[IngressProxy]:
    proxy = IngressProxy(0, None, "127.0.0.1", response_timeout=0.5)
    await proxy.start()
    yield proxy
    await proxy.close()


async def test_bodies_stream_both_ways(static_proxy: IngressProxy, backends: Any,
                                       http: aiohttp.ClientSession) -> None:
    b = await backends("streamer")
    static_proxy.set_table(static_table({"s": [b.port]}))
    port = static_proxy.http_port
    # response: the first chunk arrives while the backend still holds the rest back
    async with http.get(f"http://127.0.0.1:{port}/stream", headers={"Host": "s.static"}) as r:
        assert r.status == 200
        first = await asyncio.wait_for(r.content.readexactly(len(b"first chunk;")), 5)
        assert first == b"first chunk;"
        b.release.set()
        rest = await r.read()
        assert len(rest) == 64 * 65536

    # request: the backend reads the first chunk before the client has sent the rest
    async def body() -> AsyncIterator[bytes]:
        yield b"a" * 1000
        await asyncio.wait_for(b.first_upload_chunk.wait(), 5)
        for _ in range(100):
            yield b"b" * 10000

    async with http.post(f"http://127.0.0.1:{port}/upload", data=body(), headers={"Host": "s.static"}) as r:
        assert r.status == 200
        assert (await r.json())["size"] == 1000 + 100 * 10000


async def test_errors(static_proxy: IngressProxy, backends: Any, http: aiohttp.ClientSession) -> None:
    b = await backends("slow")
    dead = free_port()
    static_proxy.set_table(static_table({"slow": [b.port], "dead": [dead], "empty": []}))
    port = static_proxy.http_port
    status, body = await get(http, port, "nothing.static")
    assert (status, body) == (404, "404 page not found\n")
    status, body = await get(http, port, "slow.static", "/slow")
    assert status == 504 and "Timeout" in body
    status, body = await get(http, port, "dead.static")
    assert status == 502
    status, body = await get(http, port, "empty.static")
    assert status == 503
    # HEAD keeps the backend's headers and sends no body
    async with http.head(f"http://127.0.0.1:{port}/", headers={"Host": "slow.static"}) as r:
        assert r.status == 200
        assert r.headers["X-Backend"] == "slow"
        assert int(r.headers["Content-Length"]) > 0
        # hop-by-hop headers of the backend's answer stay between it and the proxy
        assert "Keep-Alive" not in r.headers
        assert await r.read() == b""


# --- the component against a real server ---------------------------------------------------


@pytest.mark.slow
async def test_host_and_path_routing(ingress: Running, backends: Any, http: aiohttp.ClientSession) -> None:
    one, two = await backends("one"), await backends("two")
    # the Ingress first: the Services and endpoints that show up later are picked up too
    await ingress.objects.create(INGRESSES, ingress_obj("routes", "app.test", {"/one": "route-one",
                                                                               "/two": "route-two"}))
    await until_status(http, ingress.http_port, "app.test", "/one", status=503)
    await ingress.objects.service("route-one", one.port)
    await ingress.objects.service("route-two", two.port)
    body = await until_status(http, ingress.http_port, "app.test", "/one/page?q=1")
    assert body["name"] == "one" and body["path"] == "/one/page?q=1"
    status, body = await get(http, ingress.http_port, "APP.test:80", "/two")
    assert (status, body["name"]) == (200, "two")
    # element-wise prefix: /onex is not under /one
    assert (await get(http, ingress.http_port, "app.test", "/onex"))[0] == 404
    assert (await get(http, ingress.http_port, "unknown.test", "/one"))[0] == 404


@pytest.mark.slow
async def test_forwarded_headers(ingress: Running, backends: Any, http: aiohttp.ClientSession) -> None:
    b = await backends("fwd")
    await ingress.objects.service("fwd", b.port)
    await ingress.objects.create(INGRESSES, ingress_obj("fwd", "fwd.test", {"/": "fwd"}))
    await until_status(http, ingress.http_port, "fwd.test")
    status, body = await get(http, ingress.http_port, "fwd.test", headers={
        "X-Forwarded-For": "203.0.113.9", "Connection": "keep-alive, X-Private", "X-Private": "secret",
        "X-Custom": "kept"})
    assert status == 200
    seen = {k.lower(): v for k, v in body["headers"].items()}
    assert seen["host"] == "fwd.test"
    assert seen["x-forwarded-for"] == "127.0.0.1"  # a client's own value is not trusted
    assert seen["x-real-ip"] == "127.0.0.1"
    assert seen["x-forwarded-proto"] == "http"
    assert seen["x-forwarded-host"] == "fwd.test"
    assert seen["x-forwarded-port"] == str(ingress.http_port)
    assert seen["x-custom"] == "kept"
    assert "x-private" not in seen  # named in Connection: hop-by-hop


@pytest.mark.slow
async def test_round_robin_and_retry_of_refused_endpoint(ingress: Running, backends: Any,
                                                         http: aiohttp.ClientSession) -> None:
    a, b = await backends("rr-a"), await backends("rr-b")
    await ingress.objects.service("rr", a.port, b.port)
    await ingress.objects.create(INGRESSES, ingress_obj("rr", "rr.test", {"/": "rr"}))
    await until_status(http, ingress.http_port, "rr.test")
    names = [(await get(http, ingress.http_port, "rr.test"))[1]["name"] for _ in range(10)]
    assert names.count("rr-a") == names.count("rr-b") == 5
    assert all(x != y for x, y in itertools.pairwise(names))

    # one endpoint refuses connections: every request still succeeds, on the others
    c, d = await backends("retry-c"), await backends("retry-d")
    await ingress.objects.service("retry", c.port, free_port(), d.port)
    await ingress.objects.create(INGRESSES, ingress_obj("retry", "retry.test", {"/": "retry"}))
    await until_status(http, ingress.http_port, "retry.test")
    results = [await get(http, ingress.http_port, "retry.test") for _ in range(30)]
    assert all(status == 200 for status, _ in results)
    assert {body["name"] for _, body in results} == {"retry-c", "retry-d"}


@pytest.mark.slow
async def test_websocket_echo(ingress: Running, backends: Any, http: aiohttp.ClientSession) -> None:
    b = await backends("ws")
    await ingress.objects.service("ws", b.port)
    await ingress.objects.create(INGRESSES, ingress_obj("ws", "ws.test", {"/": "ws"}))
    await until_status(http, ingress.http_port, "ws.test")
    async with http.ws_connect(f"http://127.0.0.1:{ingress.http_port}/ws", headers={"Host": "ws.test"},
                               protocols=("echo",)) as ws:
        assert ws.protocol == "echo"
        await ws.send_str("hello")
        assert await ws.receive_str(timeout=5) == "hello"
        await ws.send_bytes(b"\x00\x01" * 50000)
        assert await ws.receive_bytes(timeout=5) == b"\x00\x01" * 50000
        await ws.close()
    assert ws.close_code == 1000


def make_ca_and_leaf(host: str) -> tuple[bytes, bytes, bytes]:
    """(CA cert, leaf cert, leaf key) as PEM: a test CA and a serving certificate for ``host``."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ingress test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    return (ca.public_bytes(pem), leaf.public_bytes(pem),
            key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))


async def peer_certificate(port: int, server_name: str) -> x509.Certificate:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=server_name)
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        return x509.load_der_x509_certificate(der)
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


@pytest.mark.slow
async def test_https_with_tls_secret_and_sni(ingress: Running, backends: Any, http: aiohttp.ClientSession) -> None:
    ca_pem, cert_pem, key_pem = make_ca_and_leaf("secure.test")
    b = await backends("secure")
    await ingress.objects.service("secure", b.port)
    await ingress.objects.create(SECRETS, {
        "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
        "metadata": {"name": "secure-tls", "namespace": NS},
        "data": {"tls.crt": base64.b64encode(cert_pem).decode(), "tls.key": base64.b64encode(key_pem).decode()}})
    await ingress.objects.create(INGRESSES, ingress_obj("secure", "secure.test", {"/": "secure"},
                                                        tls=[{"hosts": ["secure.test"], "secretName": "secure-tls"}]))
    await until_status(http, ingress.http_port, "secure.test")

    async def certificate_served() -> bool:
        cert = await peer_certificate(ingress.https_port, "secure.test")
        return cert.subject.rfc4514_string() == "CN=secure.test"

    await async_wait_for(certificate_served, 10, 0.05, "the Secret's certificate for SNI secure.test")
    # a client that trusts only the test CA verifies the chain and the name
    verify = ssl.create_default_context(cadata=ca_pem.decode())
    async with http.get(f"https://127.0.0.1:{ingress.https_port}/tls", headers={"Host": "secure.test"},
                        ssl=verify, server_hostname="secure.test") as r:
        assert r.status == 200
        body = await r.json()
    assert body["name"] == "secure"
    assert {k.lower(): v for k, v in body["headers"].items()}["x-forwarded-proto"] == "https"
    # another name gets the proxy's default certificate
    other = await peer_certificate(ingress.https_port, "other.test")
    assert other.subject.rfc4514_string() == f"CN={DEFAULT_CERT_NAME}"


@pytest.mark.slow
async def test_ingress_status_shows_ready_nodes(ingress: Running, backends: Any) -> None:
    b = await backends("status")
    node_name = f"ingress-node-{uuid.uuid4().hex[:6]}"
    client = ingress.objects.client
    await ingress.objects.create(NODES, {"apiVersion": "v1", "kind": "Node", "metadata": {"name": node_name}})
    await client.patch(NODES, node_name, {"status": {
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}],
        "addresses": [{"type": "InternalIP", "address": "10.254.0.7"}, {"type": "Hostname", "address": node_name}],
    }}, subresource="status")
    await ingress.objects.service("status", b.port)
    await ingress.objects.create(INGRESSES, ingress_obj("status", "status.test", {"/": "status"}))

    async def status_ips() -> list[dict[str, Any]]:
        ing = await client.get(INGRESSES, "status", NS)
        return ((ing.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []

    async def shows_node() -> bool:
        return await status_ips() == [{"ip": "10.254.0.7"}]

    await async_wait_for(shows_node, 10, 0.1, "the Ready node's InternalIP in the Ingress status")
    # the node stops being Ready: its address leaves the status
    await client.patch(NODES, node_name, {"status": {"conditions": [
        {"type": "Ready", "status": "False", "reason": "KubeletNotReady"}]}}, subresource="status")

    async def empty() -> bool:
        return await status_ips() == []

    await async_wait_for(empty, 10, 0.1, "an empty Ingress status once no node is Ready")


@pytest.mark.slow
async def test_ingress_updates_drop_no_request(ingress: Running, backends: Any, http: aiohttp.ClientSession) -> None:
    blue, green = await backends("blue"), await backends("green")
    await ingress.objects.service("blue", blue.port)
    await ingress.objects.service("green", green.port)
    await ingress.objects.create(INGRESSES, ingress_obj("steady", "steady.test", {"/": "blue"}))
    await until_status(http, ingress.http_port, "steady.test")

    statuses: list[int] = []
    seen: set[str] = set()
    stop = asyncio.Event()

    async def load() -> None:
        while not stop.is_set():
            status, body = await get(http, ingress.http_port, "steady.test", "/x")
            statuses.append(status)
            if status == 200:
                seen.add(body["name"])

    loaders = [asyncio.create_task(load()) for _ in range(4)]
    try:
        for i in range(12):
            target = "green" if i % 2 == 0 else "blue"
            ing = await ingress.objects.client.get(INGRESSES, "steady", NS)
            ing["spec"] = ingress_obj("steady", "steady.test", {"/": target, f"/extra{i}": "blue"})["spec"]
            await ingress.objects.client.update(INGRESSES, ing)
            await asyncio.sleep(0.15)
    finally:
        stop.set()
        await asyncio.gather(*loaders)
    assert len(statuses) > 100
    assert set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}
    assert seen == {"blue", "green"}


@pytest.mark.slow
async def test_taken_port_does_not_hold_back_readiness(server: K3pServer, tmp_path: Path, backends: Any,
                                                       http: aiohttp.ClientSession) -> None:
    blocker = socket.socket()
    blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    taken = blocker.getsockname()[1]
    component = ingress_component(traefik_client_factory(server, tmp_path), "busy-node", taken, None,
                                  host="127.0.0.1", write_status=False)
    ready = asyncio.Event()
    task = asyncio.create_task(component.run(ready.set))
    try:
        # ready (the node is not held back by an add-on) although the port is someone else's
        await asyncio.wait_for(ready.wait(), 20)
        assert not task.done()
        blocker.close()
        objects = Objects(server.admin_client("traefik-test"))
        try:
            b = await backends("late")
            await objects.service("late", b.port)
            await objects.create(INGRESSES, ingress_obj("late", "late.test", {"/": "late"}))
            # the listener is retried until the port is free
            body = await until_status(http, taken, "late.test", timeout=20)
            assert body["name"] == "late"
        finally:
            await objects.cleanup()
    finally:
        blocker.close()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
