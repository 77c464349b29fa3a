"""Connection and request limits: floods of idle or slow connections, huge headers and bodies,
and too many requests at once cannot take the API server away from authenticated clients."""

from __future__ import annotations

import base64
import json
import resource
import select
import socket
import ssl
import statistics
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from k3p.pki import parse_token
from k3p.testing import K3pServer
from k3p.testing.memory import status_kib

CM_URL = "/api/v1/namespaces/default/configmaps"
HEADER_TIMEOUT = 3
IDLE_TIMEOUT = 2


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[K3pServer]:
    # one read-only and one mutating request at a time: the exempt admin and the
    # server's own controllers are never refused, everyone else is
    s = K3pServer(tmp_path_factory.mktemp("limits"),
                  args=["--max-requests-inflight", "1", "--max-mutating-requests-inflight", "1",
                        "--request-header-timeout", f"{HEADER_TIMEOUT}s",
                        "--idle-connection-timeout", f"{IDLE_TIMEOUT}s"]).start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def admin(server: K3pServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, verify=server.ssl_context(), timeout=10) as c:
        yield c


@pytest.fixture(scope="module")
def sa_token(server: K3pServer, admin: httpx.Client) -> str:
    """A bearer token of a service account bound to cluster-admin: allowed everything, exempt from nothing."""
    admin.post("/api/v1/namespaces/default/serviceaccounts",
               json={"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "busy"}}).raise_for_status()
    admin.post("/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", json={
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": "busy"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
        "subjects": [{"kind": "ServiceAccount", "name": "busy", "namespace": "default"}]}).raise_for_status()
    r = admin.post("/api/v1/namespaces/default/serviceaccounts/busy/token",
                   json={"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {}})
    r.raise_for_status()
    token = r.json()["status"]["token"]
    # wait out the start-up, when the server's own components list and create what they need
    with sa_client(server, token) as c:
        quiet = 0
        deadline = time.monotonic() + 30
        while quiet < 5 and time.monotonic() < deadline:
            ok = c.get(CM_URL).status_code == 200 and c.get("/api/v1/namespaces/default").status_code == 200
            quiet = quiet + 1 if ok else 0
            time.sleep(0.05)
    return token


def sa_client(server: K3pServer, token: str) -> httpx.Client:
    return httpx.Client(base_url=server.url, verify=ssl.create_default_context(cafile=str(server.ca_file)),
                        headers={"Authorization": f"Bearer {token}"}, timeout=10)


def unthrottled(call: Callable[[], httpx.Response], attempts: int = 10) -> httpx.Response:
    """``call()``, retried after a 429 as client-go retries: a request of the server's own
    components may hold the one slot for a moment. A slot that stays taken fails the test."""
    for _ in range(attempts - 1):
        r = call()
        if r.status_code != 429:
            return r
        time.sleep(0.1)
    return call()




def tls_socket(server: K3pServer, *, certificate: bool = False, source: str = "127.0.0.1",
               timeout: float = 10) -> ssl.SSLSocket:
    ctx = server.ssl_context() if certificate else ssl.create_default_context(cafile=str(server.ca_file))
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=timeout, source_address=(source, 0))
    return ctx.wrap_socket(raw, server_hostname="127.0.0.1")


def read_response(sock: ssl.SSLSocket, data: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"connection closed before a response: {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(lines[0].split()[1]), headers, body


def closed_by_peer(sock: ssl.SSLSocket, timeout: float = 5) -> bool:
    """Whether the server closes ``sock`` within ``timeout``."""
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
        return True
    except TimeoutError:
        return False
    except (ConnectionError, ssl.SSLError):
        return True


def send_until_answered(sock: ssl.SSLSocket, parts: Iterable[bytes]) -> bytes:
    """Send ``parts`` until the server answers or stops reading (its answer must not wait for
    all of them); what has arrived of the answer."""
    for part in parts:
        if select.select([sock], [], [], 0.005)[0] or sock.pending():
            sock.setblocking(False)
            try:
                got = sock.recv(65536)
            except ssl.SSLWantReadError:  # only TLS records of its own (session tickets)
                got = None
            except OSError:
                return b""
            finally:
                sock.settimeout(10)
            if got is not None:
                return got
        try:
            sock.sendall(part)
        except OSError:
            break
    return b""


def test_request_headers_over_the_limit_get_431(server: K3pServer) -> None:
    with tls_socket(server, certificate=True) as sock:
        big = b"a" * (1 << 20)
        chunks = (big[i:i + 16384] for i in range(0, len(big), 16384))
        start = time.monotonic()
        sock.sendall(b"GET /version HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Filler: ")
        status, _, body = read_response(sock, send_until_answered(sock, chunks))
        assert status == 431, body
        assert b"Request Header Fields Too Large" in body
        assert time.monotonic() - start < 5
        assert closed_by_peer(sock)
    # an ordinary request on a new connection still works
    assert server.get("/version")[0] == 200


def test_request_headers_within_the_limit_are_fine(admin: httpx.Client) -> None:
    r = admin.get("/version", headers={"X-Filler": "a" * 32768})
    assert r.status_code == 200


def test_connections_that_never_send_a_request_are_closed(server: K3pServer) -> None:
    """No TLS handshake at all, or headers that never end although bytes keep coming: both
    closed after --request-header-timeout."""
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", server.port)) as silent, tls_socket(server) as slow:
        slow.sendall(b"GET /version HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        while time.monotonic() - start < HEADER_TIMEOUT + 5:
            try:
                slow.sendall(b"X")
            except OSError:
                break
            time.sleep(0.25)
        slow_closed = time.monotonic() - start
        silent.settimeout(5)
        assert silent.recv(1) == b""
        silent_closed = time.monotonic() - start
    assert HEADER_TIMEOUT - 0.5 < slow_closed < HEADER_TIMEOUT + 3, slow_closed
    assert HEADER_TIMEOUT - 0.5 < silent_closed < HEADER_TIMEOUT + 3, silent_closed


def test_idle_keep_alive_connections_are_closed(server: K3pServer) -> None:
    with tls_socket(server, certificate=True) as sock:
        sock.sendall(b"GET /version HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert read_response(sock)[0] == 200
        answered = time.monotonic()
        assert closed_by_peer(sock, IDLE_TIMEOUT + 5)
        assert IDLE_TIMEOUT - 0.5 < time.monotonic() - answered < IDLE_TIMEOUT + 3


def basic_auth(server: K3pServer) -> str:
    secret = parse_token((server.data_dir / "server" / "token").read_text().strip()).secret
    return "Basic " + base64.b64encode(f"node:{secret}".encode()).decode()


@pytest.mark.parametrize("path", ["/v1-k3p/node-credentials", "/v1-k3p/component-credentials"])
def test_oversized_join_body_is_refused_unread(server: K3pServer, path: str) -> None:
    """100 MB announced, a few bytes sent: the 413 comes at once, and the rest is never read."""
    for _ in range(10):
        with tls_socket(server) as sock:
            sock.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {basic_auth(server)}\r\n"
                         f"Content-Type: application/json\r\nContent-Length: {100 * 1024 * 1024}\r\n\r\n"
                         '{"nodeName": "x'.encode())
            sock.settimeout(3)
            status, _, body = read_response(sock)
            if status == 429:  # the one mutating slot was taken for a moment (see unthrottled)
                time.sleep(0.1)
                continue
            assert status == 413, body
            doc = json.loads(body)
            assert doc["kind"] == "Status" and doc["reason"] == "RequestEntityTooLarge" and doc["code"] == 413
            assert closed_by_peer(sock)
            return
    raise AssertionError("always 429")


def test_oversized_chunked_join_body_is_cut_off(server: K3pServer) -> None:
    """No Content-Length to go by: refused once more than the limit has arrived."""
    with tls_socket(server) as sock:
        sock.sendall(f"POST /v1-k3p/node-credentials HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     f"Authorization: {basic_auth(server)}\r\nContent-Type: application/json\r\n"
                     "Transfer-Encoding: chunked\r\n\r\n".encode())
        chunk = b"4000\r\n" + b" " * 0x4000 + b"\r\n"
        answer = send_until_answered(sock, iter([chunk] * 1000))  # 16 MB if nobody stopped it
        status, _, body = read_response(sock, answer)
        assert status == 413 and json.loads(body)["reason"] == "RequestEntityTooLarge"


def test_oversized_resource_body_is_refused_unread(server: K3pServer) -> None:
    with tls_socket(server, certificate=True) as sock:
        sock.sendall(f"POST {CM_URL} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {100 * 1024 * 1024}\r\n\r\n{{".encode())
        sock.settimeout(3)
        status, _, body = read_response(sock)
        assert status == 413 and json.loads(body)["reason"] == "RequestEntityTooLarge"
        assert closed_by_peer(sock)


def test_join_endpoints_still_work(server: K3pServer) -> None:
    r = unthrottled(lambda: httpx.post(f"{server.url}/v1-k3p/component-credentials", json={"component": "kube-proxy"},
                                       headers={"Authorization": basic_auth(server)},
                                       verify=ssl.create_default_context(cafile=str(server.ca_file))))
    assert r.status_code == 200 and "BEGIN CERTIFICATE" in r.json()["certificate"]


def slow_list(server: K3pServer, token: str) -> httpx.Response:
    """A list that asks for a resourceVersion the server has not reached waits a few seconds
    for it, then fails: a request in flight for a known time."""
    with sa_client(server, token) as c:
        return c.get(CM_URL, params={"resourceVersion": "999999999"})


def test_requests_beyond_max_inflight_get_429(server: K3pServer, admin: httpx.Client, sa_token: str) -> None:
    with ThreadPoolExecutor(1) as pool, sa_client(server, sa_token) as c:
        slow = pool.submit(slow_list, server, sa_token)
        deadline = time.monotonic() + 2.5
        refused = None
        while refused is None and time.monotonic() < deadline:
            r = c.get(CM_URL)
            if r.status_code == 429:
                refused = r
            else:
                assert r.status_code == 200, r.text
                time.sleep(0.02)
        assert refused is not None, "no 429 while a read-only request was in flight"
        assert refused.headers["retry-after"] == "1"
        doc = refused.json()
        assert doc["kind"] == "Status" and doc["status"] == "Failure" and doc["code"] == 429
        assert doc["reason"] == "TooManyRequests"
        assert doc["message"] == "Too many requests, please try again later."
        # the mutating pool is another pool; system:masters is never refused
        assert not slow.done()
        created = unthrottled(lambda: c.post(CM_URL, json={"apiVersion": "v1", "kind": "ConfigMap",
                                                            "metadata": {"name": "during-list"}}))
        assert created.status_code == 201, created.text
        assert admin.get(CM_URL).status_code == 200
        assert not slow.done(), "the slow list ended before the checks: they proved nothing"
        assert slow.result().status_code != 429  # it was served, and waited
        assert unthrottled(lambda: c.get(CM_URL)).status_code == 200


def test_mutating_requests_beyond_max_mutating_inflight_get_429(server: K3pServer, admin: httpx.Client,
                                                                sa_token: str) -> None:
    body = json.dumps({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "slow-body"}}).encode()
    with tls_socket(server) as sock, sa_client(server, sa_token) as c:
        # a create whose body is still on its way is in flight until the body is complete
        sock.sendall(f"POST {CM_URL} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {sa_token}\r\n"
                     f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body[:10])
        refused = None
        for i in range(50):
            r = c.post(CM_URL, json={"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"other-{i}"}})
            if r.status_code == 429:
                refused = r
                break
            assert r.status_code == 201, r.text
            time.sleep(0.02)
        assert refused is not None, "no 429 while a mutating request was in flight"
        assert refused.headers["retry-after"] == "1"
        assert refused.json()["reason"] == "TooManyRequests"
        # reads are another pool; system:masters is never refused
        assert unthrottled(lambda: c.get(CM_URL)).status_code == 200
        created = admin.post(CM_URL, json={"apiVersion": "v1", "kind": "ConfigMap",
                                           "metadata": {"name": "by-admin"}})
        assert created.status_code == 201, created.text
        sock.sendall(body[10:])
        status, _, answer = read_response(sock)
        assert status == 201, answer
        after = unthrottled(lambda: c.post(CM_URL, json={"apiVersion": "v1", "kind": "ConfigMap",
                                                          "metadata": {"name": "after"}}))
        assert after.status_code == 201, after.text


def test_watches_are_not_counted(server: K3pServer, sa_token: str) -> None:
    clients = [sa_client(server, sa_token) for _ in range(6)]
    try:
        streams = [c.stream("GET", CM_URL, params={"watch": "1"}) for c in clients[:5]]
        responses = [s.__enter__() for s in streams]
        assert all(r.status_code == 200 for r in responses)
        for _ in range(3):
            r = unthrottled(lambda: clients[5].get(CM_URL))
            assert r.status_code == 200, r.text
        # and the limit of one is in force all the same
        with ThreadPoolExecutor(1) as pool:
            slow = pool.submit(slow_list, server, sa_token)
            deadline = time.monotonic() + 2.5
            while time.monotonic() < deadline and clients[5].get(CM_URL).status_code != 429:
                time.sleep(0.02)
            assert time.monotonic() < deadline, "no 429 beside the watches"
            assert slow.result().status_code != 429  # it was served, and waited
        for s in streams:
            s.__exit__(None, None, None)
    finally:
        for c in clients:
            c.close()


# --- floods ------------------------------------------------------------------------------------

SERVER_OPEN_FILES = 4096
MAX_CONNECTIONS = 800
IDLE_ADDRESSES = 6


def rss_mib(pid: int, field: str = "VmRSS") -> float:
    kib = status_kib(pid, field)
    assert kib is not None, f"no {field} for {pid}"
    return kib / 1024


def count_open(socks: list[socket.socket]) -> int:
    """How many of ``socks`` (plain TCP) the server has not closed: the server sends these
    nothing but the end, so a socket that polls readable (or hung up) is closed."""
    poller = select.poll()
    for sock in socks:
        poller.register(sock.fileno(), select.POLLIN | select.POLLRDHUP | select.POLLHUP | select.POLLERR)
    return len(socks) - len(poller.poll(0))


def tls_open(sock: ssl.SSLSocket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(1) != b""
    except ssl.SSLWantReadError:
        return True
    except OSError:
        return False


@pytest.mark.slow
def test_floods_of_idle_and_slow_connections(tmp_path: Path) -> None:
    """Idle TCP connections beyond the server's open-files limit, and slow-header TLS
    connections, from addresses without credentials: the admin's requests stay fast, the
    server's memory stays small, and the server closes the floods' connections itself.

    The idle flood is 25,000 connections where this process's hard open-files limit allows
    that many sockets, otherwise as many as fit below it (15,000 with a limit of 20,000); it
    is always several times the server's own limit of 4,096 descriptors.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    idle_count = min(25_000, hard - 5_000)
    assert idle_count > 2 * SERVER_OPEN_FILES, f"open-files limit {hard} is too low for this test"
    slow_count = 500
    header_timeout = 15.0
    server = K3pServer(tmp_path, args=["--max-connections", str(MAX_CONNECTIONS),
                                       "--request-header-timeout", f"{header_timeout}s"],
                       prefix=["prlimit", f"--nofile={SERVER_OPEN_FILES}:{SERVER_OPEN_FILES}", "--"])
    idle: list[socket.socket] = []
    slow: list[ssl.SSLSocket] = []
    stop = threading.Event()
    trickler: threading.Thread | None = None
    try:
        server.start()
        assert server.proc is not None
        pid = server.proc.pid

        t0 = time.monotonic()
        # slow headers: a request line, then a byte of a header now and then, never the end
        ctx = ssl.create_default_context(cafile=str(server.ca_file))
        for i in range(slow_count):
            raw = socket.create_connection(("127.0.0.1", server.port), timeout=10,
                                           source_address=(f"127.0.0.{3 + i % 2}", 0))
            try:
                sock = ctx.wrap_socket(raw, server_hostname="127.0.0.1")
                sock.sendall(b"GET /api/v1/namespaces HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            except (ConnectionError, ssl.SSLError, OSError):
                # beyond the share kept for certificates: closed after its handshake
                raw.close()
                continue
            slow.append(sock)

        trickling = set(slow)

        def trickle() -> None:
            while not stop.wait(0.5):
                for sock in list(trickling):
                    try:
                        sock.send(b"a")
                    except OSError:  # the server closed it
                        trickling.discard(sock)

        trickler = threading.Thread(target=trickle, daemon=True)
        trickler.start()

        # idle TCP connections that never start TLS, opened in batches from a few addresses
        # (a few thousand ports each: the kernel finds free ports slowly beyond that)
        for i in range(idle_count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            sock.bind((f"127.0.0.{10 + i % IDLE_ADDRESSES}", 0))
            try:
                sock.connect(("127.0.0.1", server.port))
            except BlockingIOError:
                pass
            idle.append(sock)
            if i % 1000 == 999:
                time.sleep(0.02)

        # meanwhile: the admin's GETs, each on a new connection
        latencies = []
        admin_ctx = server.ssl_context()
        for _ in range(50):
            start = time.monotonic()
            with urllib.request.urlopen(server.url + CM_URL, context=admin_ctx, timeout=10) as r:
                assert r.status == 200
                r.read()
            latencies.append(time.monotonic() - start)
        p99 = statistics.quantiles(latencies, n=100)[98]
        assert p99 < 1.0, f"admin GETs during the floods: p99 {p99:.3f}s, max {max(latencies):.3f}s"
        assert time.monotonic() - t0 < header_timeout, "too slow to measure while the floods were held"
        assert rss_mib(pid) < 300

        # connections over the caps were closed at once (before any TLS), the rest wait for the timeout
        time.sleep(1)
        open_idle = count_open(idle)
        assert open_idle < MAX_CONNECTIONS - len(slow), f"{open_idle} of {idle_count} idle connections still open"

        deadline = time.monotonic() + 2 * header_timeout + 5
        while time.monotonic() < deadline:
            open_idle = count_open(idle)
            open_slow = len(trickling)
            if not open_idle and not open_slow:
                break
            time.sleep(0.5)
        stop.set()
        trickler.join(5)
        open_slow = sum(tls_open(s) for s in trickling)
        assert open_idle == 0, f"{open_idle} idle connections outlived --request-header-timeout"
        assert open_slow == 0, f"{open_slow} slow-header connections outlived --request-header-timeout"
        assert rss_mib(pid, "VmHWM") < 300
        assert server.get("/readyz")[0] == 200
    finally:
        stop.set()
        if trickler is not None:
            trickler.join(5)
        for sock in [*idle, *slow]:
            sock.close()
        server.stop()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
