"""exec, attach and port-forward end to end: real kubectl and the Python client against
`k3p server` running its own node on containerd.

The busybox image is built on the spot and put into the node's airgap images folder.
The teardown deletes the pods (so the kubelet removes sandboxes and their networks),
stops the server, then removes whatever is still left of this run: shims and their
containers, network namespaces, mounts, CNI state and NAT rules, the bridge if this run
made it, and the temp dir.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import pty
import random
import shlex
import shutil
import signal
import struct
import subprocess
import tempfile
import termios
import time
import urllib.request
from pathlib import Path

import pytest
from containerd_host import BRIDGE, IMAGE, REAL_NODE, bridge_network
from k3p import ocibuild
from k3p.testing import K3pServer, descendants, free_port
from k3p_plugins.containerd.paths import ContainerdPaths

PAGE = b"<h1>served from a k3p pod</h1>\n"


pytestmark = REAL_NODE




class Node:
    """A `k3p server` with its own containerd node, and everything needed to undo it."""

    def __init__(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="k3ps-", dir="/tmp"))
        self.data = self.tmp / "data"
        self.paths = ContainerdPaths.from_data_dir(self.data)
        self.had_bridge = Path(f"/sys/class/net/{BRIDGE}").exists()
        self.ip_forward = Path("/proc/sys/net/ipv4/ip_forward").read_text().strip()
        self.host_dirs = [d for d in (Path("/run/containerd"), Path("/var/lib/cni"), Path("/run/netns"))
                          if not d.exists()]
        args = ["--disable", "traefik"]  # nothing here needs ports 80/443 of the host
        shared = bridge_network()
        if shared:
            args += ["--cluster-cidr", shared]
        self.server = K3pServer(self.tmp, args=args, agent=True)

    def start(self) -> None:
        self.paths.images_dir.mkdir(parents=True)
        ocibuild.build_busybox_image(self.paths.images_dir / "busybox.tar", IMAGE, files={"www/index.html": PAGE})
        self.server.start(timeout=120)

    def kubectl(self, *args: str, input: str | bytes | None = None, timeout: float = 60
                ) -> subprocess.CompletedProcess:
        env = {**os.environ, "KUBECONFIG": str(self.server.kubeconfig), "KUBECACHEDIR": str(self.tmp / "cache")}
        return subprocess.run(["kubectl", *args], input=input, capture_output=True, env=env, timeout=timeout,
                              text=not isinstance(input, bytes))

    def env(self) -> dict[str, str]:
        return {**os.environ, "KUBECONFIG": str(self.server.kubeconfig), "KUBECACHEDIR": str(self.tmp / "cache")}

    def run_pod(self, name: str, command: list[str], **container: object) -> None:
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
               "spec": {"terminationGracePeriodSeconds": 1, "containers": [
                   {"name": name, "image": IMAGE, "imagePullPolicy": "IfNotPresent", "command": command,
                    **container}]}}
        got = self.kubectl("apply", "-f", "-", input=json.dumps(pod))
        assert got.returncode == 0, got.stderr
        got = self.kubectl("wait", "--for=condition=Ready", f"pod/{name}", "--timeout=90s", timeout=100)
        assert got.returncode == 0, got.stderr + self.kubectl("describe", "pod", name).stdout

    # --- teardown -----------------------------------------------------------------------

    def _shims(self) -> list[tuple[int, str]]:
        """(pid, sandbox id) of the shims of this run's containerd."""
        found = []
        socket = str(self.paths.socket).encode()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if argv and argv[0].endswith(b"containerd-shim-runc-v2") and socket in argv and b"-id" in argv:
                found.append((int(entry.name), argv[argv.index(b"-id") + 1].decode()))
        return found

    def cleanup(self) -> None:
        with contextlib.suppress(Exception):
            if self.server.proc is not None and self.server.proc.poll() is None:
                self.kubectl("delete", "pods", "--all", "--wait=true", "--timeout=60s", timeout=90)
        shims = self._shims()
        sandboxes = {sid for _, sid in shims}
        netns = set()
        for pid, _ in shims:
            for child in descendants(pid):
                with contextlib.suppress(OSError):
                    netns.add(os.stat(f"/proc/{child}/ns/net").st_ino)
        self.server.stop()
        runc_root = self.paths.runc_root / "k8s.io"
        if runc_root.is_dir():
            for cid in os.listdir(runc_root):
                subprocess.run(["runc", "--root", str(runc_root), "delete", "--force", cid], capture_output=True)
        for pid, _ in shims:
            for child in [*descendants(pid), pid]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child, signal.SIGKILL)
        for path in Path("/var/run/netns").glob("cni-*"):
            with contextlib.suppress(OSError):
                if os.stat(path).st_ino in netns:
                    subprocess.run(["ip", "netns", "delete", path.name], capture_output=True)
        mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()
                  if line.split()[4].startswith(str(self.tmp) + "/")]
        for point in sorted(mounts, key=len, reverse=True):
            subprocess.run(["umount", "-l", point], capture_output=True)
        self._remove_cni_state(sandboxes)
        if not self.had_bridge and Path(f"/sys/class/net/{BRIDGE}").exists() \
                and not any(Path(f"/sys/class/net/{BRIDGE}/brif").iterdir()):
            subprocess.run(["ip", "link", "del", BRIDGE], capture_output=True)
            Path("/proc/sys/net/ipv4/ip_forward").write_text(self.ip_forward)
        for top in self.host_dirs:
            for folder in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
                with contextlib.suppress(OSError):
                    folder.rmdir()
            with contextlib.suppress(OSError):
                top.rmdir()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def _remove_cni_state(self, sandboxes: set[str]) -> None:
        """What CNI DEL would have removed for sandboxes that were not torn down by the kubelet."""
        if not sandboxes:
            return
        rules = subprocess.run(["iptables", "-t", "nat", "-S"], capture_output=True, text=True).stdout.splitlines()
        chains = set()
        for rule in rules:
            if rule.startswith("-A ") and any(sid in rule for sid in sandboxes):
                args = rule.split()
                if "-j" in args:
                    chains.add(args[args.index("-j") + 1])
                subprocess.run(["iptables", "-t", "nat", "-D", *shlex.split(rule[3:])], capture_output=True)
        for chain in chains:
            if chain.startswith("CNI-"):
                subprocess.run(["iptables", "-t", "nat", "-F", chain], capture_output=True)
                subprocess.run(["iptables", "-t", "nat", "-X", chain], capture_output=True)
        for folder in (Path("/var/lib/cni/results"), Path("/var/lib/cni/networks/k3p")):
            if folder.is_dir():
                for f in folder.iterdir():
                    with contextlib.suppress(OSError):
                        if any(sid in f.name for sid in sandboxes) or \
                                any(sid in f.read_text(errors="replace") for sid in sandboxes):
                            f.unlink()


@pytest.fixture(scope="module")
def node():
    n = Node()
    try:
        n.start()
        n.run_pod("web", ["httpd", "-f", "-p", "8080", "-h", "/www"])
        yield n
    finally:
        n.cleanup()


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
