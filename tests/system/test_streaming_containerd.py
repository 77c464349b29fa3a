"""exec, attach and port-forward end to end: real kubectl and the Python client against
`k3p server` running its own node on containerd.

The busybox image is built on the spot and put into the node's airgap images folder.
The teardown (``containerd_host.HostNode``) deletes the pods, stops the server and
removes whatever is still left of this run.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import pty
import random
import signal
import struct
import subprocess
import termios
import time
import urllib.request

import pytest
from containerd_host import REAL_NODE, HostNode

from k3p.testing import free_port

PAGE = b"<h1>served from a k3p pod</h1>\n"


pytestmark = REAL_NODE




class Node(HostNode):
    """A `k3p server` with its own containerd node, and everything needed to undo it."""

    def __init__(self) -> None:
        super().__init__("k3ps-", ["--disable", "traefik"], PAGE)  # nothing here needs ports 80/443

    def kubectl(self, *args: str, input: str | bytes | None = None, timeout: float = 60
                ) -> subprocess.CompletedProcess:
        """kubectl that also takes bytes on stdin (binary streams through attach and exec)."""
        return subprocess.run(["kubectl", *args], input=input, capture_output=True, env=self.env(),
                              timeout=timeout, text=not isinstance(input, bytes))

    def env(self) -> dict[str, str]:
        return {**os.environ, "KUBECONFIG": str(self.server.kubeconfig), "KUBECACHEDIR": str(self.tmp / "cache")}


@pytest.fixture(scope="module")
def node():
    with Node() as n:
        n.run_pod("web", ["httpd", "-f", "-p", "8080", "-h", "/www"])
        yield n


# --- kubectl -------------------------------------------------------------------------------


def test_exec_exit_code(node: Node) -> None:
    got = node.kubectl("exec", "web", "--", "sh", "-c", "exit 3")
    assert got.returncode == 3, got.stderr


def test_exec_prints_output(node: Node) -> None:
    got = node.kubectl("exec", "web", "--", "cat", "/www/index.html")
    assert got.returncode == 0, got.stderr
    assert got.stdout == PAGE.decode()


def test_exec_separates_stdout_and_stderr(node: Node) -> None:
    got = node.kubectl("exec", "web", "--", "sh", "-c", "echo out; echo err >&2")
    assert (got.returncode, got.stdout, got.stderr) == (0, "out\n", "err\n")


def test_exec_reads_stdin_to_its_end(node: Node) -> None:
    got = node.kubectl("exec", "-i", "web", "--", "cat", input="line one\nline two\n")
    assert (got.returncode, got.stdout) == (0, "line one\nline two\n"), got.stderr
    # more than any SPDY window would allow without flow control, and binary
    data = random.Random(7).randbytes(3 * 1024 * 1024 + 17)
    got = node.kubectl("exec", "-i", "web", "--", "md5sum", input=data)
    assert got.returncode == 0, got.stderr
    assert got.stdout.split()[0].decode() == hashlib.md5(data).hexdigest()


def test_exec_with_a_terminal(node: Node) -> None:
    """`kubectl exec -it` on a pseudo-terminal of 33 rows x 101 columns: the size reaches the container.

    containerd 1.6 starts the command before it applies the first size, hence the pause.
    """
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 101, 0, 0))
    proc = subprocess.Popen(["kubectl", "exec", "-it", "web", "--", "sh", "-c", "tty; sleep 0.5; stty size; exit 5"],
                            stdin=slave, stdout=slave, stderr=slave, env=node.env(), start_new_session=True)
    os.close(slave)
    out = b""
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # the terminal closed: every process on it has ended
                break
            if not chunk:
                break
            out += chunk
        assert proc.wait(timeout=30) == 5, out
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = out.decode(errors="replace")
    assert "/dev/pts/" in text and "33 101" in text, text


def test_port_forward(node: Node) -> None:
    local = free_port()
    proc = subprocess.Popen(["kubectl", "port-forward", "pod/web", f"{local}:8080"], env=node.env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        assert "Forwarding from 127.0.0.1" in line, line + (proc.stderr.read() if proc.poll() is not None
                                                            and proc.stderr else "")
        for _ in range(3):  # each connection is a new pair of SPDY streams in the same tunnel
            with urllib.request.urlopen(f"http://127.0.0.1:{local}/index.html", timeout=10) as r:
                assert r.read() == PAGE
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_attach(node: Node) -> None:
    from kubernetes import client
    from kubernetes.stream import stream

    node.run_pod("echo", ["sh", "-c", "while read line; do echo got:$line; done"], stdin=True)
    core = client.CoreV1Api(node.server.api_client())
    resp = stream(core.connect_get_namespaced_pod_attach, "echo", "default", stdin=True, stdout=True,
                  stderr=True, tty=False, _preload_content=False)
    try:
        resp.write_stdin("hello\n")
        out = ""
        deadline = time.monotonic() + 20
        while "got:hello" not in out and time.monotonic() < deadline:
            resp.update(timeout=1)
            out += resp.read_stdout()
        assert "got:hello" in out
    finally:
        resp.close()


# --- the Python client -------------------------------------------------------------------------


def test_python_client_exec(node: Node) -> None:
    from kubernetes import client
    from kubernetes.stream import stream

    core = client.CoreV1Api(node.server.api_client())
    out = stream(core.connect_get_namespaced_pod_exec, "web", "default", command=["cat", "/www/index.html"],
                 stderr=True, stdin=False, stdout=True, tty=False)
    assert out == PAGE.decode()
    resp = stream(core.connect_get_namespaced_pod_exec, "web", "default", command=["sh", "-c", "cat; exit 4"],
                  stderr=True, stdin=True, stdout=True, tty=False, _preload_content=False)
    resp.write_stdin(b"typed\n")
    resp.close_channel(0)  # v5: end of stdin
    resp.run_forever(timeout=20)
    assert resp.read_stdout() == "typed\n"
    assert resp.returncode == 4


def test_python_client_port_forward(node: Node) -> None:
    from kubernetes import client
    from kubernetes.stream import portforward

    core = client.CoreV1Api(node.server.api_client())
    pf = portforward(core.connect_get_namespaced_pod_portforward, "web", "default", ports="8080")
    sock = pf.socket(8080)
    try:
        sock.sendall(b"GET /index.html HTTP/1.0\r\nHost: web\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    finally:
        sock.close()
        pf.close()
    assert data.startswith(b"HTTP/1.") and data.endswith(PAGE), data
    assert pf.error(8080) is None
