"""The kubelet's exec/attach/port-forward endpoints over real TLS WebSockets, against fake runtimes.

The kubelet app is served as k3p serves it (uvicorn, client certificates, the WebSocket
protocol that stamps the certificate's user) on a free loopback port; the API server's
side is ``KubeletProxy.open_stream``. The runtime's CRI streaming server is faked on
another free port: a small SPDY/3 server for exec/attach and kubectl's port-forward
tunnel, and a ``websockets`` server for the v4 WebSocket port-forward.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import websockets
from websockets.asyncio.server import serve as ws_serve

from k3p import pki as pki_mod
from k3p.agent import streaming as kubelet
from k3p.agent.server import kubelet_app
from k3p.apiserver import streaming as api
from k3p.apiserver.auth import CertHttpToolsProtocol, CertWebSocketProtocol
from k3p.apiserver.errors import APIError
from k3p.apiserver.listener import serve_https
from k3p.apiserver.node_proxy import KubeletProxy
from k3p.protocols.runtime import (
    LABEL_CONTAINER_NAME,
    LABEL_POD_NAME,
    LABEL_POD_NAMESPACE,
    ContainerState,
    ContainerStatus,
    RuntimeError_,
    SandboxState,
    SandboxStatus,
)
from k3p.testing.process import free_port

NS, POD, CONTAINER = "default", "web", "web"
TIMEOUT = 5


def exit_status(code: int) -> bytes:
    if code == 0:
        return json.dumps({"metadata": {}, "status": "Success"}).encode()
    return json.dumps({"metadata": {}, "status": "Failure", "reason": "NonZeroExitCode",
                       "message": f"command terminated with non-zero exit code: {code}",
                       "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]}}).encode()


# --- a fake CRI streaming server -----------------------------------------------------------


class SpdyPeer:
    """The server side of a remotecommand SPDY session, driven by a test script."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.codec = kubelet.HeaderCodec()
        self.ids: dict[str, int] = {}

    async def frame(self) -> kubelet.Frame | None:
        try:
            head = await self.reader.readexactly(8)
            payload = await self.reader.readexactly(int.from_bytes(head[5:8], "big"))
        except asyncio.IncompleteReadError:
            return None
        return kubelet.parse_frame(head, payload, self.codec)

    async def accept_streams(self, kinds: set[str]) -> None:
        """Wait for the client to open exactly these streams, replying to each as kube's server does."""
        while set(self.ids) != kinds:
            frame = await self.frame()
            assert frame is not None and frame.kind == kubelet.SYN_STREAM, frame
            kind = frame.headers["streamtype"][0]
            assert kind in kinds, kind
            self.ids[kind] = frame.stream_id
            self.writer.write(kubelet.control_frame(kubelet.SYN_REPLY, struct.pack(">I", frame.stream_id) +
                                                    self.codec.encode({})))
        await self.writer.drain()

    async def data(self) -> AsyncIterator[kubelet.Frame]:
        while (frame := await self.frame()) is not None:
            if frame.kind == 0:
                yield frame

    async def send(self, kind: str, data: bytes, fin: bool = False) -> None:
        self.writer.write(kubelet.data_frame(self.ids[kind], data, fin))
        await self.writer.drain()

    async def finish(self, status: bytes) -> None:
        """What kube's server does when the command ended: status on the error stream, then GOAWAY."""
        await self.send("error", status)
        self.writer.write(kubelet.control_frame(kubelet.GOAWAY, struct.pack(">II", 0, 0)))
        await self.writer.drain()


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, dict[str, str]], Awaitable[None]]


class FakeStreamingServer:
    """Answers one-time URLs like containerd's streaming server; unknown tokens get 404."""

    def __init__(self) -> None:
        self.handlers: dict[str, Handler] = {}
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.done = asyncio.Event()
        self.errors: list[BaseException] = []

    async def __aenter__(self) -> FakeStreamingServer:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()
        await self.server.wait_closed()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode()
            method, path, _ = head.split("\r\n")[0].split(" ")
            headers = {k.strip().lower(): v.strip() for k, _, v in
                       (line.partition(":") for line in head.split("\r\n")[1:] if line)}
            self.requests.append((method, path, headers))
            handler = self.handlers.pop(path, None)
            if handler is None:
                writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\nnot found")
            else:
                writer.write(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n"
                             b"X-Stream-Protocol-Version: " + headers["x-stream-protocol-version"].encode() +
                             b"\r\n\r\n")
                await handler(reader, writer, headers)
        except BaseException as e:  # surfaced by the test, not lost in a server task
            self.errors.append(e)
        finally:
            writer.close()
            self.done.set()


# --- a fake runtime ------------------------------------------------------------------------


class FakeRuntime:
    """Just what the kubelet's endpoints call; the streaming URLs point at the fake server."""

    name = "fake"

    def __init__(self, streaming: FakeStreamingServer, *, running: bool = True) -> None:
        self.streaming = streaming
        self.calls: list[tuple[Any, ...]] = []
        self.refuse: str | None = None
        self.portforward_url: str | None = None
        labels = {LABEL_POD_NAMESPACE: NS, LABEL_POD_NAME: POD, LABEL_CONTAINER_NAME: CONTAINER}
        state = ContainerState.RUNNING if running else ContainerState.EXITED
        self.containers = [ContainerStatus("old", "sb", CONTAINER, ContainerState.EXITED, labels=labels, attempt=0),
                           ContainerStatus("cid", "sb", CONTAINER, state, labels=labels, attempt=1)]
        self.sandboxes = [SandboxStatus("sb", SandboxState.READY, labels=labels)]

    async def list_containers(self, sandbox_id: str | None = None) -> list[ContainerStatus]:
        return self.containers

    async def list_pod_sandboxes(self) -> list[SandboxStatus]:
        return self.sandboxes

    async def exec_url(self, container_id: str, cmd: list[str], tty: bool, stdin: bool, stdout: bool,
                       stderr: bool) -> str:
        self.calls.append(("exec", container_id, cmd, tty, stdin, stdout, stderr))
        if self.refuse:
            raise RuntimeError_(self.refuse)
        return self.streaming.url("/exec/token")

    async def attach_url(self, container_id: str, tty: bool, stdin: bool, stdout: bool, stderr: bool) -> str:
        self.calls.append(("attach", container_id, tty, stdin, stdout, stderr))
        return self.streaming.url("/attach/token")

    async def port_forward_url(self, sandbox_id: str, ports: list[int]) -> str:
        self.calls.append(("portforward", sandbox_id, ports))
        if self.refuse:
            raise RuntimeError_(self.refuse)
        return self.portforward_url or self.streaming.url("/portforward/token")


# --- the kubelet endpoint and the API server's side -----------------------------------------


class Kubelet:
    def __init__(self, tls: pki_mod.ServerPKI, runtime: FakeRuntime, port: int) -> None:
        self.pki, self.runtime, self.port = tls, runtime, port
        self.node = {"metadata": {"name": "n1"},
                     "status": {"addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
                                "daemonEndpoints": {"kubeletEndpoint": {"Port": port}}}}
        self.pod = {"metadata": {"namespace": NS, "name": POD}, "spec": {"containers": [{"name": CONTAINER}]}}
        self.proxy = KubeletProxy(tls.server_ca.cert_path, tls.admin_cert, tls.admin_key)

    async def open(self, sub: str, query: list[tuple[str, str]], protocol: str) -> Any:
        """What the API server does for a client's WebSocket: dial the kubelet with the same subprotocol."""
        return await asyncio.wait_for(self.proxy.open_stream(self.node, self.pod, sub, query, protocol), TIMEOUT)


@pytest.fixture
async def streaming() -> AsyncIterator[FakeStreamingServer]:
    async with FakeStreamingServer() as server:
        yield server


@pytest.fixture
def tls(tmp_path: Path) -> pki_mod.ServerPKI:
    return pki_mod.ensure_server_pki(tmp_path, hostname="localhost")


@pytest.fixture
async def node(tls: pki_mod.ServerPKI, streaming: FakeStreamingServer) -> AsyncIterator[Kubelet]:
    runtime = FakeRuntime(streaming)
    port = free_port()
    started = asyncio.Event()
    task = asyncio.create_task(serve_https(
        kubelet_app(runtime, "n1"), host="127.0.0.1", port=port, certfile=tls.serving_cert,  # type: ignore[arg-type]
        keyfile=tls.serving_key, client_ca=tls.client_ca.cert_path, ready=started.set,
        http=CertHttpToolsProtocol, ws=CertWebSocketProtocol))
    await asyncio.wait_for(started.wait(), TIMEOUT)
    k = Kubelet(tls, runtime, port)
    yield k
    await k.proxy.close()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def recv(conn: Any) -> Any:
    return await asyncio.wait_for(conn.recv(), TIMEOUT)


async def closed(conn: Any) -> int:
    with pytest.raises(websockets.exceptions.ConnectionClosed):
        await recv(conn)
    return conn.close_code


# --- exec and attach ------------------------------------------------------------------------


async def test_exec_v5_relays_output_and_stdin_then_close_and_exit_code(node: Kubelet,
                                                                       streaming: FakeStreamingServer) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, headers: dict[str, str]) -> None:
        peer = SpdyPeer(reader, writer)
        await peer.accept_streams({"error", "stdin", "stdout", "stderr"})
        await peer.send("stdout", b"hello\n")
        await peer.send("stderr", b"warn\n")
        async for frame in peer.data():
            assert frame.stream_id == peer.ids["stdin"]
            if frame.data:
                await peer.send("stdout", frame.data.upper())
            if frame.fin:
                break
        await peer.finish(exit_status(3))

    streaming.handlers["/exec/token"] = script
    conn = await node.open("exec", [("command", "sh"), ("command", "-c"), ("command", "exit 3"), ("stdin", "true"),
                                    ("stdout", "true"), ("stderr", "true")], api.CHANNEL_V5)
    assert conn.subprotocol == "v5.channel.k8s.io"
    assert await recv(conn) == b"\x01hello\n"
    assert await recv(conn) == b"\x02warn\n"
    await conn.send(b"\x00abc")
    assert await recv(conn) == b"\x01ABC"
    await conn.send(bytes([api.CLOSE, api.STDIN]))  # v5: stdin is done
    status = await recv(conn)
    assert status[0] == api.ERROR
    assert json.loads(status[1:])["details"]["causes"][0]["message"] == "3"
    assert await closed(conn) == 1000
    await asyncio.wait_for(streaming.done.wait(), TIMEOUT)
    assert not streaming.errors, streaming.errors
    method, path, headers = streaming.requests[0]
    assert (method, path) == ("POST", "/exec/token")
    assert headers["upgrade"] == "SPDY/3.1" and headers["x-stream-protocol-version"] == "v4.channel.k8s.io"
    # the newest running container of that name, with the options asked for
    assert node.runtime.calls == [("exec", "cid", ["sh", "-c", "exit 3"], False, True, True, True)]


async def test_tty_exec_has_no_stderr_and_forwards_resizes(node: Kubelet, streaming: FakeStreamingServer) -> None:
    resized: list[bytes] = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, headers: dict[str, str]) -> None:
        peer = SpdyPeer(reader, writer)
        await peer.accept_streams({"error", "stdin", "stdout", "resize"})
        async for frame in peer.data():
            if frame.stream_id == peer.ids["resize"]:
                resized.append(frame.data)
                await peer.send("stdout", b"$ ")
                break
        await peer.finish(exit_status(0))

    streaming.handlers["/exec/token"] = script
    conn = await node.open("exec", [("command", "sh"), ("stdin", "true"), ("tty", "true")], api.CHANNEL_V4)
    assert conn.subprotocol == "v4.channel.k8s.io"
    await conn.send(b'\x04{"Width":80,"Height":24}')
    assert await recv(conn) == b"\x01$ "
    assert json.loads((await recv(conn))[1:]) == {"metadata": {}, "status": "Success"}
    assert await closed(conn) == 1000
    assert resized == [b'{"Width":80,"Height":24}']
    assert node.runtime.calls == [("exec", "cid", ["sh"], True, True, True, False)]


async def test_base64_channels_and_attach(node: Kubelet, streaming: FakeStreamingServer) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, headers: dict[str, str]) -> None:
        peer = SpdyPeer(reader, writer)
        await peer.accept_streams({"error", "stdout"})
        await peer.send("stdout", b"attached")
        await peer.finish(exit_status(0))

    streaming.handlers["/attach/token"] = script
    conn = await node.open("attach", [("stdout", "true"), ("stderr", "false")], api.CHANNEL_V4_BASE64)
    assert await recv(conn) == "1" + "YXR0YWNoZWQ="
    assert (await recv(conn))[0] == "3"
    assert await closed(conn) == 1000
    assert node.runtime.calls == [("attach", "cid", False, False, True, False)]


async def test_the_client_going_away_ends_the_runtime_session(node: Kubelet,
                                                              streaming: FakeStreamingServer) -> None:
    ended = asyncio.Event()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, headers: dict[str, str]) -> None:
        peer = SpdyPeer(reader, writer)
        await peer.accept_streams({"error", "stdout", "stderr"})
        await peer.send("stdout", b"running")
        assert await peer.frame() is None  # the kubelet hung up
        ended.set()

    streaming.handlers["/exec/token"] = script
    conn = await node.open("exec", [("command", "sleep")], api.CHANNEL_V5)
    assert await recv(conn) == b"\x01running"
    await conn.close()
    await asyncio.wait_for(ended.wait(), TIMEOUT)
    assert not streaming.errors


# --- port-forward ----------------------------------------------------------------------------


async def test_kubectl_port_forward_tunnel_copies_spdy_bytes(node: Kubelet, streaming: FakeStreamingServer) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, headers: dict[str, str]) -> None:
        while chunk := await reader.read(1024):
            writer.write(chunk[::-1])
            await writer.drain()

    streaming.handlers["/portforward/token"] = script
    conn = await node.open("portforward", [], api.SPDY_TUNNEL_PORTFORWARD)
    # the subprotocol holds a '/': accepted by both of k3p's WebSocket sides anyway
    assert conn.subprotocol == "SPDY/3.1+portforward.k8s.io"
    await conn.send(b"\x80\x03\x00\x01spdy")
    assert await recv(conn) == b"ydps\x01\x00\x03\x80"
    await conn.close()
    await asyncio.wait_for(streaming.done.wait(), TIMEOUT)
    assert not streaming.errors
    _, path, headers = streaming.requests[0]
    assert path == "/portforward/token"
    assert headers["x-stream-protocol-version"] == "portforward.k8s.io"
    assert node.runtime.calls == [("portforward", "sb", [])]


async def test_v4_port_forward_is_relayed_to_the_runtime_websocket(node: Kubelet) -> None:
    seen: list[Any] = []

    async def runtime_ws(ws: Any) -> None:
        seen.append((ws.request.path, ws.subprotocol))
        port = struct.pack("<H", 8080)
        await ws.send(b"\x00" + port)
        await ws.send(b"\x01" + port)
        async for message in ws:
            await ws.send(b"\x00" + message[1:] + b"!")
            break

    async with ws_serve(runtime_ws, "127.0.0.1", 0, subprotocols=["v4.channel.k8s.io"]) as server:  # type: ignore[list-item]
        port = server.sockets[0].getsockname()[1]
        node.runtime.portforward_url = f"http://127.0.0.1:{port}/portforward/tok"
        conn = await node.open("portforward", [("ports", "8080")], api.CHANNEL_V4)
        assert await recv(conn) == b"\x00\x90\x1f"
        assert await recv(conn) == b"\x01\x90\x1f"
        await conn.send(b"\x00GET /")
        assert await recv(conn) == b"\x00GET /!"
        assert await closed(conn) == 1000
    assert seen == [("/portforward/tok", "v4.channel.k8s.io")]
    assert node.runtime.calls == [("portforward", "sb", [8080])]


# --- refusals --------------------------------------------------------------------------------


async def test_no_running_container_is_a_404(node: Kubelet) -> None:
    node.runtime.containers[-1].state = ContainerState.EXITED
    with pytest.raises(APIError) as e:
        await node.open("exec", [("command", "ls")], api.CHANNEL_V5)
    assert e.value.code == 404 and e.value.message == 'container not found ("web")'


async def test_a_runtime_that_cannot_stream_says_why(node: Kubelet) -> None:
    node.runtime.refuse = "the simulated runtime cannot exec into containers"
    with pytest.raises(APIError) as e:
        await node.open("exec", [("command", "ls")], api.CHANNEL_V5)
    assert e.value.code == 500 and "the simulated runtime cannot exec into containers" in e.value.message
    with pytest.raises(APIError) as e:
        await node.open("portforward", [("ports", "80")], api.CHANNEL_V4)
    assert "the simulated runtime cannot exec" in e.value.message


async def test_a_used_token_is_reported(node: Kubelet, streaming: FakeStreamingServer) -> None:
    with pytest.raises(APIError) as e:  # no handler: the fake server answers 404 like a consumed token
        await node.open("exec", [("command", "ls")], api.CHANNEL_V5)
    assert e.value.code == 500 and "404: not found" in e.value.message


async def test_only_the_api_server_may_connect_and_only_known_protocols(node: Kubelet, tmp_path: Path) -> None:
    import ssl

    base = f"wss://127.0.0.1:{node.port}/exec/{NS}/{POD}/{CONTAINER}?command=ls&output=1"
    tls = ssl.create_default_context(cafile=str(node.pki.server_ca.cert_path))
    tls.load_cert_chain(*pki_mod.ensure_client_cert(node.pki, "someone", "someone", ["developers"]))
    with pytest.raises(websockets.exceptions.InvalidStatus) as e:
        await api.dial(base, api.CHANNEL_V5, tls)
    assert e.value.response.status_code == 401
    admin = ssl.create_default_context(cafile=str(node.pki.server_ca.cert_path))
    admin.load_cert_chain(node.pki.admin_cert, node.pki.admin_key)
    with pytest.raises(websockets.exceptions.InvalidStatus) as e:
        await api.dial(base, "channel.k8s.io", admin)
    assert e.value.response.status_code == 400
    assert b"v5.channel.k8s.io" in e.value.response.body
    assert node.runtime.calls == []


# --- the API server's relay --------------------------------------------------------------------


class Accepted:
    """The accepted (client-facing) side of a relay, as starlette's WebSocket behaves."""

    def __init__(self) -> None:
        self.incoming: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.sent: list[Any] = []
        self.closed_with: int | None = None

    async def receive(self) -> dict[str, Any]:
        return await self.incoming.get()

    async def send_bytes(self, data: bytes) -> None:
        self.sent.append(data)

    async def send_text(self, data: str) -> None:
        self.sent.append(data)

    async def close(self, code: int = 1000, reason: str | None = None) -> None:
        self.closed_with = code


async def test_relay_keeps_message_types_and_passes_the_close_on() -> None:
    received: list[Any] = []

    async def upstream(ws: Any) -> None:
        await ws.send(b"\x01bin")
        await ws.send("1text")
        received.append(await ws.recv())
        received.append(await ws.recv())
        await ws.close(1000)

    async with ws_serve(upstream, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        dialled = await api.dial(f"ws://127.0.0.1:{port}/", "")
        accepted = Accepted()
        await accepted.incoming.put({"type": "websocket.receive", "bytes": b"\x00in"})
        await accepted.incoming.put({"type": "websocket.receive", "text": "0typed"})
        await asyncio.wait_for(api.relay(accepted, dialled), TIMEOUT)
    assert accepted.sent == [b"\x01bin", "1text"]
    assert received == [b"\x00in", "0typed"]
    assert accepted.closed_with == 1000


async def test_relay_closes_upstream_when_the_client_leaves() -> None:
    codes: list[int | None] = []

    async def upstream(ws: Any) -> None:
        with contextlib.suppress(websockets.exceptions.ConnectionClosed):
            await ws.recv()
        codes.append(ws.close_code)

    async with ws_serve(upstream, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        dialled = await api.dial(f"ws://127.0.0.1:{port}/", "")
        accepted = Accepted()
        await accepted.incoming.put({"type": "websocket.disconnect", "code": 1001})
        await asyncio.wait_for(api.relay(accepted, dialled), TIMEOUT)
        for _ in range(100):
            if codes:
                break
            await asyncio.sleep(0.02)
    assert codes == [1001]
    assert accepted.closed_with is None
