"""Running a real ``k3p server`` as a child process on free ports, for tests."""

from __future__ import annotations

import contextlib
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from k3p.ports import free_port
from k3p.testing.waiting import wait_for


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (children, grandchildren, ...), from /proc."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: the fields after the last ')' are safe.
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 15.0, sig: int = signal.SIGTERM) -> int:
    """Stop ``proc`` with ``sig`` (SIGKILL after ``timeout``) and kill any descendant it left behind."""
    kids = descendants(proc.pid)  # known before they re-parent to init
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for pid in kids:
        if pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    return proc.returncode


class K3pServer:
    """A ``k3p server`` subprocess with its own data dir, config file and free ports.

    Nothing is read from or written to the host's /etc/rancher or /var/lib/rancher: the
    config file, data dir and kubeconfig all live under ``workdir``. Without ``agent`` the
    server runs no node of its own (``--disable-agent``: no container runtime starts);
    with it, the node's kubelet gets a free port too.
    """

    def __init__(
        self,
        workdir: Path,
        args: Sequence[str] = (),
        config: str = "",
        env: dict[str, str] | None = None,
        port: int | None = None,
        agent: bool = False,
        host: str = "127.0.0.1",
        prefix: Sequence[str] = (),
        python: str | None = None,
    ) -> None:
        """``host`` is where the server is reached; ``prefix`` runs it through another command
        (``nsenter --net=...`` for a server in a network namespace: see ``k3p.testing.netns``);
        ``python`` is the interpreter that runs ``-m k3p`` (default: this one), e.g. a venv's."""
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.data_dir = self.workdir / "data"
        self.kubeconfig = self.workdir / "kubeconfig.yaml"
        self.config_file = self.workdir / "config.yaml"
        if not self.config_file.exists() or config:
            self.config_file.write_text(config)
        self.port = port or free_port()
        self.args = list(args)
        self.agent = agent
        if not agent and "--disable-agent" not in self.args:
            self.args.append("--disable-agent")
        if agent and "--kubelet-port" not in self.args:
            self.args += ["--kubelet-port", str(free_port())]
        if agent and "--resolv-conf" not in self.args:
            # the node's cluster DNS forwards names it does not know: in a test, only to loopback
            resolv = self.workdir / "resolv.conf"
            resolv.write_text("nameserver 127.0.0.1\n")
            self.args += ["--resolv-conf", str(resolv)]
        self.env = env
        self.host = host
        self.prefix = list(prefix)
        self.python = python or sys.executable
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.workdir / "k3p.log"
        #: taken at the first start: a restarted server's own leftovers are still its own
        self._host_network_before: set[str] | None = None

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}"

    @property
    def ca_file(self) -> Path:
        return self.data_dir / "server" / "tls" / "server-ca.crt"

    def command(self) -> list[str]:
        return [
            *self.prefix, self.python, "-m", "k3p", "server",
            "--config", str(self.config_file),
            "--data-dir", str(self.data_dir),
            "--https-listen-port", str(self.port),
            "--bind-address", "127.0.0.1",
            "--write-kubeconfig", str(self.kubeconfig),
            *self.args,
        ]

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("K3P_")}
        env.update(self.env or {})
        return env

    def start(self, wait: bool = True, timeout: float = 60.0) -> K3pServer:
        if self.agent and not self.prefix and self._host_network_before is None:
            self._host_network_before = host_network_objects()
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            self.command(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=self.environment()
        )
        log.close()
        if wait:
            try:
                self.wait_ready(timeout)
            except BaseException:
                # a server that never got ready is still a process this harness started
                self.stop()
                raise
        return self

    def ssl_context(self) -> ssl.SSLContext:
        """Verifies the server with the cluster CA and presents the admin client certificate."""
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        tls = self.data_dir / "server" / "tls"
        ctx.load_cert_chain(str(tls / "client-admin.crt"), str(tls / "client-admin.key"))
        return ctx

    def get(self, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
        """GET ``path`` over HTTPS with the admin credentials; (status, body)."""
        try:
            with urllib.request.urlopen(self.url + path, context=self.ssl_context(), timeout=timeout) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def wait_ready(self, timeout: float = 60.0) -> None:
        exited: list[int] = []

        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                exited.append(self.proc.returncode)
                return True  # stop waiting: it will never get ready
            return self.ca_file.exists() and self.get("/readyz")[0] == 200

        try:
            wait_for(ready, timeout, 0.1, "k3p server /readyz")
        except TimeoutError as e:
            raise TimeoutError(f"{e}\n--- k3p log ---\n{self.logs()[-4000:]}") from None
        if exited:
            raise RuntimeError(f"k3p server exited with {exited[0]}:\n{self.logs()[-4000:]}")

    def kubectl(self, *args: str, input: str | None = None, timeout: float = 60,
                check: bool = False) -> subprocess.CompletedProcess[str]:
        """Run the real kubectl against this server (its own discovery cache, never ~/.kube)."""
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig), "KUBECACHEDIR": str(self.workdir / "kube-cache")}
        # the kubeconfig names 127.0.0.1: a server in a network namespace is reached at its own address
        server = ["--server", self.url] if self.host != "127.0.0.1" else []
        result = subprocess.run(["kubectl", *server, *args], input=input, capture_output=True, text=True, env=env,
                                timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
        return result

    def api_client(self) -> Any:
        """An official ``kubernetes`` Python client configured from the written kubeconfig."""
        from kubernetes import config as kube_config  # the client is a test dependency only

        client = kube_config.new_client_from_config(str(self.kubeconfig))
        client.configuration.host = self.url
        return client

    def admin_client(self, user_agent: str = "k3p-test") -> Any:
        """A ``k3p.client.Client`` with the admin certificate (system:masters)."""
        from k3p.client import Client

        tls = self.data_dir / "server" / "tls"
        return Client(self.url, ca_file=self.ca_file, cert_file=tls / "client-admin.crt",
                      key_file=tls / "client-admin.key", user_agent=user_agent)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; also kills any descendant left behind."""
        if self.proc is None:
            return None
        stop_process(self.proc, timeout)
        if self.agent:
            remove_node_leftovers(self.data_dir)
            if not self.prefix:
                remove_host_network_objects(host_network_objects() - (self._host_network_before or set()))
        return self.proc.returncode

    def wait_exit(self, timeout: float) -> int:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.proc.returncode is None:
            raise TimeoutError(f"k3p server did not exit within {timeout}s")
        return self.proc.returncode


#: what a node makes in its network namespace and keeps across restarts (by design)
HOST_LINKS = ("cni0", "flannel.1", "k3p-dns")
HOST_NFT_TABLES = ("ip k3p-proxy", "ip k3p-flannel")


def host_network_objects() -> set[str]:
    """The node-made links and nftables tables present now, as ``link NAME`` / ``table FAMILY NAME``."""
    found = {f"link {name}" for name in HOST_LINKS if Path("/sys/class/net", name).exists()}
    out = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
    found |= {line.strip() for line in out.splitlines() if line.strip().removeprefix("table ") in HOST_NFT_TABLES}
    return found


def remove_host_network_objects(objects: set[str]) -> None:
    """Delete what ``host_network_objects`` listed (a test's node in the host namespace made them)."""
    for obj in sorted(objects):
        kind, _, name = obj.partition(" ")
        if kind == "link":
            subprocess.run(["ip", "link", "delete", name], capture_output=True)
        else:
            subprocess.run(["nft", "delete", "table", *name.split()], capture_output=True)


def pod_network_namespaces(marker: str) -> set[int]:
    """The network namespaces (by inode) of the pods of the containerd shims whose command line has ``marker``.

    Shims carry their node's data dir in their command line; the pods' processes are
    their descendants and live in the pods' namespaces. Take this before stopping a node:
    its pods' ``/run/netns`` entries are then told apart from other runs' by inode.
    """
    shims = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if marker in Path(f"/proc/{entry}/cmdline").read_bytes().decode(errors="replace"):
                    shims.append(int(entry))
    found = set()
    for pid in [p for shim in shims for p in descendants(shim)]:
        with contextlib.suppress(OSError):
            found.add(os.stat(f"/proc/{pid}/ns/net").st_ino)
    return found


def remove_network_namespaces(inodes: set[int]) -> None:
    """Unmount and remove the ``/run/netns/cni-*`` entries of the given namespaces."""
    folder = Path("/run/netns")
    for path in folder.glob("cni-*") if folder.exists() else ():
        try:
            inode = path.stat().st_ino
        except OSError:
            continue
        if inode in inodes:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)
            with contextlib.suppress(OSError):
                path.unlink()


def remove_node_leftovers(data_dir: Path) -> None:
    """Containers outlive k3p by design (a restart adopts them); a test must not leave them.

    Container shims re-parent to init, so they are found by the data dir in their command
    line; then the mounts containerd made under the data dir are lazily unmounted.
    """
    marker = str(data_dir)
    shims = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmdline:
            shims.append(int(entry))
    # the containers' own processes (pause, workloads) are the shims' children
    for pid in [p for shim in shims for p in descendants(shim)] + shims:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    with open("/proc/mounts") as f:
        mounts = [line.split()[1] for line in f if marker in line.split()[1]]
    for target in sorted(mounts, reverse=True):
        subprocess.run(["umount", "-l", target], capture_output=True)


class HollowNodes:
    """A ``k3p agent --simulate N`` subprocess joined to ``server`` with its token: N hollow nodes.

    The nodes run the real node agent and kubelet over the simulated runtime (no
    containers), so pods go through controllers, scheduler and kubelet as on real nodes.
    They are named ``<name>-0`` ... ``<name>-<N-1>``.
    """

    def __init__(self, server: K3pServer, workdir: Path, count: int, name: str = "hollow", *extra: str) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "config.yaml").write_text("")
        token = (server.data_dir / "server" / "token").read_text().strip()
        self.count = count
        self.log_path = workdir / "agent.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("K3P_")}
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "k3p", "agent", "--config", str(workdir / "config.yaml"),
                 "--data-dir", str(workdir / "data"), "--server", server.url, "--token", token,
                 "--node-name", name, "--simulate", str(count), *extra],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 15.0, sig: int = signal.SIGTERM) -> int:
        """Stop the agent (SIGKILL as ``sig`` simulates a node that vanishes without a goodbye)."""
        return stop_process(self.proc, timeout, sig)
