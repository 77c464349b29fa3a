"""Trimming by packaging, proven on what is committed: installs into fresh venvs from a clean clone.

* *minimal*: ``pip install . plugins/datastore_sql`` in a fresh venv: the server serves
  kubectl, lists exactly one plugin, pulls in none of the plugins' libraries, and starts
  with no containerd (nor anything else but kubectl) on PATH.
* *trimmed*: ``PYTHON=<venv python> ./install.sh --without traefik`` (needs root; apt is
  skipped when the host packages are present): no traefik in ``k3p plugins list``, no
  ``--traefik-*`` flags, and a server whose node runs in a network namespace made by the
  test has nothing on ports 80/443 there and no IngressClass ``traefik``.
* *offline*: ``./install.sh --wheels DIR`` for the minimal set, then the ``pip install
  --no-index --find-links DIR ...`` it prints, into a fresh venv with pip's configuration
  switched off (no other index or wheel folder can help).

Each venv is built once per session from ``git clone`` of this repository's HEAD, so
uncommitted changes are not what is tested. pip fetches the dependencies from PyPI.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from k3p.testing import K3pServer, wait_for
from k3p.testing.netns import NetnsLab

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
#: libraries only plugins need: a core-and-datastore install must not have them
PLUGIN_ONLY_LIBRARIES = ("aiohttp", "pyroute2", "dnslib", "grpcio")
PIP_QUIET = ("--quiet", "--disable-pip-version-check")


def log(message: str) -> None:
    print(f"[packaging] {message}", flush=True)


def run(cmd: list[str], timeout: float = 600, **kwargs) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` to completion; AssertionError with its output when it fails."""
    began = time.monotonic()
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
                            **kwargs)
    log(f"{' '.join(str(c) for c in cmd[:6])}{' ...' if len(cmd) > 6 else ''}: {time.monotonic() - began:.1f} s")
    if result.returncode != 0:
        raise AssertionError(f"{cmd} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result


def clean_clone(dest: Path) -> Path:
    """A clone of the committed HEAD (the working tree's edits are not in it)."""
    run(["git", "clone", "--quiet", str(ROOT), str(dest)])
    head = run(["git", "-C", str(dest), "rev-parse", "--short", "HEAD"]).stdout.strip()
    log(f"clean clone of {head} in {dest}")
    return dest


def bundled_plugins(src: Path) -> dict[str, str]:
    """Plugin name -> distribution of every bundled plugin in ``src`` (as install.sh reads them)."""
    found = {}
    for pyproject in sorted(src.glob("plugins/*/pyproject.toml")):
        project = tomllib.loads(pyproject.read_text())["project"]
        for name in project.get("entry-points", {}).get("k3p.plugins", {}):
            found[name] = project["name"]
    return found


@dataclass
class Venv:
    path: Path

    @property
    def bin(self) -> Path:
        return self.path / "bin"

    @property
    def python(self) -> str:
        return str(self.bin / "python")

    def env(self, **extra: str) -> dict[str, str]:
        """What the venv's programs run with: nothing from this test process's Python setup leaks in."""
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("K3P_") and k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
        return {**env, **self.server_env(), **extra}

    def server_env(self, **extra: str) -> dict[str, str]:
        """What K3pServer (which starts from this process's environment) applies on top.

        An empty PYTHONPATH is ignored by Python. PYTHONSAFEPATH: ``python -m k3p`` would put
        the working directory first on sys.path, and a checkout's stray ``k3p.egg-info`` there
        would announce the plugins of another install."""
        return {"PYTHONPATH": "", "PYTHONNOUSERSITE": "1", "PYTHONSAFEPATH": "1", **extra}

    def distributions(self) -> set[str]:
        out = run([self.python, "-m", "pip", "list", "--format", "json", *PIP_QUIET[1:]], env=self.env()).stdout
        return {d["name"].lower().replace("_", "-") for d in json.loads(out)}

    def plugins(self, workdir: Path) -> list[dict]:
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "config.yaml").touch()
        out = run([str(self.bin / "k3p"), "plugins", "list", "-o", "json", "--config", str(workdir / "config.yaml"),
                   "--data-dir", str(workdir / "data")], env=self.env()).stdout
        return json.loads(out)

    def server(self, workdir: Path, args: list[str] | tuple[str, ...] = (), **kwargs) -> K3pServer:
        env = self.server_env(**kwargs.pop("env", {}))
        return K3pServer(workdir, args=args, python=self.python, env=env, **kwargs)


def make_venv(path: Path) -> Venv:
    # sys.executable may itself be a venv's: the new venv is made from its base interpreter
    run([sys.executable, "-m", "venv", str(path)])
    return Venv(path)


def offline_pip_env(venv: Venv) -> dict[str, str]:
    """pip with no configuration file and no PIP_* settings: only what the command line names counts."""
    env = {k: v for k, v in venv.env().items() if not k.startswith("PIP_")}
    return {**env, "PIP_CONFIG_FILE": os.devnull}


@pytest.fixture(scope="session")
def minimal_venv(tmp_path_factory: pytest.TempPathFactory) -> Venv:
    """``pip install . plugins/datastore_sql`` from a clean clone into a fresh venv."""
    top = tmp_path_factory.mktemp("minimal")
    src = clean_clone(top / "src")
    venv = make_venv(top / "venv")
    # without build isolation pip builds both projects with the venv's own setuptools: faster
    run([venv.python, "-m", "pip", "install", *PIP_QUIET, "setuptools>=68", "wheel"], env=venv.env())
    run([venv.python, "-m", "pip", "install", *PIP_QUIET, "--no-build-isolation", ".", "plugins/datastore_sql"],
        cwd=src, env=venv.env())
    return venv


@pytest.fixture(scope="session")
def trimmed_venv(tmp_path_factory: pytest.TempPathFactory) -> tuple[Venv, Path, str]:
    """``PYTHON=<venv python> ./install.sh --without traefik`` in a clean clone; (venv, clone, its output)."""
    if os.geteuid() != 0:
        pytest.skip("install.sh runs as root only (it installs host packages)")
    top = tmp_path_factory.mktemp("trimmed")
    src = clean_clone(top / "src")
    venv = make_venv(top / "venv")
    out = run(["./install.sh", "--without", "traefik"], cwd=src, env=venv.env(PYTHON=venv.python)).stdout
    return venv, src, out


def test_minimal_install_serves_kubectl_with_one_plugin(minimal_venv: Venv, tmp_path: Path) -> None:
    where = run([minimal_venv.python, "-c", "import k3p; print(k3p.__file__)"], env=minimal_venv.env()).stdout
    assert where.startswith(str(minimal_venv.path)), where  # the venv's copy, not this checkout
    dists = minimal_venv.distributions()
    assert {"k3p", "k3p-datastore-sql"} <= dists
    assert sorted(d for d in dists if d.startswith("k3p")) == ["k3p", "k3p-datastore-sql"]
    assert [lib for lib in PLUGIN_ONLY_LIBRARIES if lib in dists] == []
    listed = minimal_venv.plugins(tmp_path / "list")
    assert [(p["name"], p["enabled"]) for p in listed] == [("datastore_sql", True)]

    server = minimal_venv.server(tmp_path / "server", ["--disable-agent"])
    try:
        server.start()
        assert server.proc is not None
        assert f"{minimal_venv.bin}/python" in " ".join(server.command())
        server.kubectl("create", "configmap", "hello", "--from-literal=k=v", check=True)
        got = json.loads(server.kubectl("get", "configmap", "hello", "-o", "json", check=True).stdout)
        assert got["data"] == {"k": "v"}
        namespaces = server.kubectl("get", "namespaces", "-o", "name", check=True).stdout.split()
        assert {"namespace/default", "namespace/kube-system"} <= set(namespaces)
        assert '"plugins": "datastore_sql"' in server.logs()
    finally:
        server.stop()
    assert server.proc.returncode == 0


def test_minimal_server_starts_without_containerd_on_path(minimal_venv: Venv, tmp_path: Path) -> None:
    # PATH: the venv's scripts and a folder holding only kubectl (the server reads its protobuf
    # descriptors from it; without it the server runs too and answers protobuf bodies with 415)
    tools = tmp_path / "tools"
    tools.mkdir()
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is needed to check the server"
    (tools / "kubectl").symlink_to(kubectl)
    path = f"{minimal_venv.bin}{os.pathsep}{tools}"
    for binary in ("containerd", "runc", "containerd-shim-runc-v2", "ip", "iptables", "nft"):
        assert shutil.which(binary, path=path) is None, binary

    server = minimal_venv.server(tmp_path / "server", ["--disable-agent"], env={"PATH": path})
    try:
        server.start()
        assert server.kubectl("get", "namespace", "default", "-o", "name", check=True).stdout.strip() == \
            "namespace/default"
        server.kubectl("create", "namespace", "no-runtime", check=True)
        assert server.get("/readyz") == (200, b"ok")
        assert "protobuf request bodies cannot be decoded" not in server.logs()
    finally:
        server.stop()
    assert server.proc is not None and server.proc.returncode == 0


def test_offline_install_from_the_wheel_set(minimal_venv: Venv, tmp_path_factory: pytest.TempPathFactory) -> None:
    top = tmp_path_factory.mktemp("offline")
    src = clean_clone(top / "src")
    others = sorted(set(bundled_plugins(src)) - {"datastore_sql"})
    wheels = top / "wheels"
    # --wheels needs no root: the minimal venv's pip builds the wheels of core + datastore_sql and fetches the rest
    out = run(["./install.sh", "--wheels", str(wheels), "--without", ",".join(others)], cwd=src,
              env=minimal_venv.env(PYTHON=minimal_venv.python)).stdout
    names = sorted(w.name for w in wheels.glob("*.whl"))
    assert any(n.startswith("k3p-0.1.0-") for n in names) and any(n.startswith("k3p_datastore_sql-") for n in names)
    assert not [n for n in names if re.match(r"(aiohttp|pyroute2|dnslib|grpcio)-", n)], names
    # the command install.sh printed, as an offline machine runs it
    advice = re.search(r"install offline with pip install (.*)$", out, re.M)
    assert advice, out
    args = advice.group(1).split()
    assert args[:3] == ["--no-index", "--find-links", str(wheels)] and set(args[3:]) == {"k3p", "k3p-datastore-sql"}

    venv = make_venv(top / "venv")
    run([venv.python, "-m", "pip", "install", "--quiet", *args], env=offline_pip_env(venv))
    run([venv.python, "-m", "pip", "check"], env=offline_pip_env(venv))
    assert [p["name"] for p in venv.plugins(top / "list")] == ["datastore_sql"]
    server = venv.server(top / "server", ["--disable-agent"])
    try:
        server.start()
        assert "namespace/kube-system" in server.kubectl("get", "namespaces", "-o", "name", check=True).stdout
    finally:
        server.stop()


# --- the trimmed bundle --------------------------------------------------------------------


def node_missing() -> str:
    """Why a real node cannot run in a network namespace here ("" when it can)."""
    if os.geteuid() != 0:
        return "needs root"
    for binary in ("containerd", "containerd-shim-runc-v2", "runc", "nsenter", "ip", "ss", "nft", "kubectl"):
        if not shutil.which(binary):
            return f"{binary} is not installed"
    if not Path("/bin/busybox").exists():
        return "busybox-static is not installed (the node builds its pause image from it)"
    try:
        from k3p_plugins.containerd.config import find_cni_bin_dir
    except ImportError:
        return "the containerd plugin is not installed in the test environment (it finds the CNI plugins)"
    if not Path(find_cni_bin_dir(), "bridge").exists():
        return "the CNI plugins are not installed"
    return ""


def test_trimmed_install_lists_no_traefik_and_has_no_traefik_flags(trimmed_venv: tuple[Venv, Path, str],
                                                                    tmp_path: Path) -> None:
    venv, src, out = trimmed_venv
    bundle = bundled_plugins(src)
    assert "traefik" in bundle  # what is left out is a bundled plugin of this checkout
    assert f"k3p command: {venv.bin}/k3p" in out
    listed = {p["name"] for p in venv.plugins(tmp_path / "list")}
    assert listed == set(bundle) - {"traefik"}
    dists = venv.distributions()
    assert "k3p-traefik" not in dists and "aiohttp" not in dists  # aiohttp is traefik's library only
    assert {"grpcio", "pyroute2", "dnslib"} <= dists  # the other plugins' libraries came with them
    assert {bundle[name] for name in listed} <= dists

    help_text = run([str(venv.bin / "k3p"), "server", "--help"], env=venv.env()).stdout
    assert "--traefik-" not in help_text
    # the other plugins' options are in the help: plugin flags do show when the plugin is installed
    assert "--flannel-backend" in help_text and "--pause-image" in help_text


@pytest.fixture
def netns_lab() -> Iterator[NetnsLab]:
    # a short folder: containerd's socket under the node's data dir must fit in a unix socket address
    workdir = Path(tempfile.mkdtemp(prefix="k3pk-", dir="/tmp"))
    lab = NetnsLab(workdir)
    try:
        yield lab
    finally:
        lab.close()  # stops the servers added to lab.servers, removes their containers and the namespaces
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.mark.root
@pytest.mark.skipif(bool(node_missing()), reason=node_missing() or "ok")
def test_trimmed_server_with_its_node_has_no_ingress(trimmed_venv: tuple[Venv, Path, str],
                                                     netns_lab: NetnsLab) -> None:
    venv, _, _ = trimmed_venv
    node = netns_lab.add_node("srv")
    # as NetnsLab.server makes it, but run by the venv's interpreter
    server = K3pServer(netns_lab.workdir / node.name,
                       ["--node-name", node.name, "--bind-address", "0.0.0.0", "--kubelet-port", "10250",
                        "--resolv-conf", str(netns_lab.resolv_conf())],
                       port=6443, agent=True, host=node.ip, prefix=node.prefix(), python=venv.python,
                       env=venv.server_env())
    netns_lab.servers.append(server)
    server.start(timeout=120)

    def node_ready() -> bool:
        items = json.loads(server.kubectl("get", "nodes", "-o", "json", check=True).stdout)["items"]
        return any(c["type"] == "Ready" and c["status"] == "True"
                   for n in items for c in (n.get("status") or {}).get("conditions", []))

    wait_for(node_ready, 120, 1, "the node Ready")
    # the plugins' addons are applied (local-storage's StorageClass is one of them) ...
    wait_for(lambda: "local-path" in server.kubectl("get", "storageclass", "-o", "name").stdout, 60, 0.5,
             "the local-path StorageClass")
    # ... and none is traefik's
    assert server.kubectl("get", "ingressclass", "-o", "name", check=True).stdout.strip() == ""
    assert server.kubectl("get", "clusterrole", "system:k3p:traefik").returncode != 0

    def connects(port: int) -> bool:
        with socket.socket() as s:
            s.settimeout(2)
            return s.connect_ex((node.ip, port)) == 0

    assert connects(6443) and connects(10250)  # the probe reaches the node's ports
    assert not connects(80) and not connects(443)
    listening = node.run("ss", "-Hltn", check=True).stdout
    ports = {line.split()[3].rsplit(":", 1)[1] for line in listening.splitlines() if line.strip()}
    assert "80" not in ports and "443" not in ports, listening
