"""What a newcomer meets in the first hour: two servers on one machine, config surprises, start-up
logs, exit codes, and the README's instructions run as written."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from k3p import config as cfg
from k3p.datadir_lock import LOCK_FILE
from k3p.ports import free_port
from k3p.testing import K3pServer, wait_for

README = Path(__file__).resolve().parents[2] / "README.md"


def k3p(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("K3P_")}
    return subprocess.run([sys.executable, "-m", "k3p", *args], capture_output=True, text=True,
                          env={**clean, **(env or {})}, timeout=timeout)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[K3pServer]:
    s = K3pServer(tmp_path_factory.mktemp("first-hour"))
    # a lock file a killed server left behind (its PID long gone) must not block the start
    s.data_dir.mkdir(parents=True)
    (s.data_dir / LOCK_FILE).write_text("999999999\n")
    s.start()
    yield s
    s.stop()


# --- 1. two servers on one machine ------------------------------------------------------------


def test_second_server_on_a_held_data_dir_is_refused_with_the_pid(server: K3pServer, tmp_path: Path) -> None:
    assert server.proc is not None
    kubeconfig_before = server.kubeconfig.read_bytes(), server.kubeconfig.stat().st_mtime_ns
    assert (server.data_dir / LOCK_FILE).read_text().strip() == str(server.proc.pid)
    started = time.monotonic()
    result = k3p("server", "--config", str(server.config_file), "--data-dir", str(server.data_dir),
                 "--https-listen-port", str(free_port()), "--bind-address", "127.0.0.1", "--disable-agent",
                 "--write-kubeconfig", str(server.kubeconfig))
    assert time.monotonic() - started < 15
    assert result.returncode == 1, result.stderr
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and f"PID {server.proc.pid}" in lines[0], result.stderr
    assert (server.kubeconfig.read_bytes(), server.kubeconfig.stat().st_mtime_ns) == kubeconfig_before
    assert server.get("/readyz")[0] == 200


def test_taken_api_port_is_one_line_naming_port_and_flag(server: K3pServer, tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("")
    result = k3p("server", "--config", str(tmp_path / "config.yaml"), "--data-dir", str(tmp_path / "data"),
                 "--https-listen-port", str(server.port), "--bind-address", "127.0.0.1", "--disable-agent",
                 "--write-kubeconfig", str(tmp_path / "kubeconfig.yaml"))
    assert result.returncode == 1, result.stderr
    lines = error_lines(result.stderr)
    assert len(lines) == 1, result.stderr
    assert f"port {server.port}" in lines[0] and "--https-listen-port" in lines[0], lines[0]
    assert not (tmp_path / "kubeconfig.yaml").exists()


def test_check_config_reports_a_taken_port(server: K3pServer, tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("")
    result = k3p("check-config", "--config", str(tmp_path / "config.yaml"), "--data-dir", str(tmp_path / "data"),
                 "--https-listen-port", str(server.port), "--bind-address", "127.0.0.1", "--disable-agent")
    assert result.returncode == 1, result.stdout + result.stderr
    failing = [line for line in result.stdout.splitlines() if line.startswith("FAIL")]
    assert failing and f"port {server.port}/tcp" in failing[0] and "--https-listen-port" in failing[0], result.stdout


def test_default_kubeconfig_belongs_to_the_default_data_dir(tmp_path: Path) -> None:
    from k3p.server import kubeconfig_path

    schema = cfg.OptionSchema()
    cfg.add_core_options(schema)
    other = cfg.resolve("server", schema, {"data_dir": str(tmp_path / "data")}, [], {})
    assert kubeconfig_path(other) == tmp_path / "data" / "kubeconfig-k3p.yaml"
    explicit = cfg.resolve("server", schema, {"data_dir": str(tmp_path / "data"),
                                              "write_kubeconfig": str(tmp_path / "k.yaml")}, [], {})
    assert kubeconfig_path(explicit) == tmp_path / "k.yaml"
    default = cfg.resolve("server", schema, {"data_dir": cfg.default_data_dir()}, [], {})
    assert kubeconfig_path(default) == Path("/etc/rancher/k3p/k3p.yaml")


# --- 2. config surprises ----------------------------------------------------------------------


def resolved(tmp_path: Path, text: str, flags: dict | None = None) -> cfg.Config:
    (tmp_path / "config.yaml").write_text(text)
    schema = cfg.OptionSchema()
    cfg.add_core_options(schema)
    return cfg.resolve("server", schema, flags or {}, cfg.read_file_layers([tmp_path / "config.yaml"]), {})


@pytest.mark.parametrize("written", ["0644", "644", '"0644"', "'644'"])
def test_unquoted_kubeconfig_mode_is_octal(tmp_path: Path, written: str) -> None:
    from k3p.server import _kubeconfig_mode

    # YAML 1.1 reads an unquoted 0644 as the integer 420
    assert _kubeconfig_mode(resolved(tmp_path, f"write-kubeconfig-mode: {written}\n")) == 0o644


def test_unknown_config_key_names_the_closest_known_key(tmp_path: Path) -> None:
    config = resolved(tmp_path, "write-kubeconfig-mod: '0644'\ntls-sans: [x]\n")
    assert [w.split(" (", 1)[1] for w in config.warnings] == ["did you mean 'write-kubeconfig-mode'?)",
                                                                "did you mean 'tls-san'?)"]
    assert len(resolved(tmp_path, "zzzz: 1\n").warnings[0].splitlines()) == 1


def test_disable_flag_replaces_the_file_list_as_k3s_and_says_so(tmp_path: Path) -> None:
    # K3s: "For repeatable arguments such as --node-label, the CLI arguments will overwrite all values in the list."
    names, _ = cfg.early_disable_list("server", ["--disable", "traefik"],
                                      [("f.yaml", {"disable": ["coredns"]})], {})
    assert names == ["traefik"]
    out = k3p("server", "--help").stdout
    assert "replaces the config file's disable list" in " ".join(out.split())
    readme = README.read_text()
    assert "replaces the `disable:` list" in readme



def test_readme_config_example_works_as_written(tmp_path: Path) -> None:
    text = README.read_text()
    example = text[text.index("### Configuration"):].split("```yaml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "config.yaml").write_text(example)
    listed = k3p("plugins", "list", "-o", "json", "--config", str(tmp_path / "config.yaml"))
    assert listed.returncode == 0 and listed.stderr == "", listed.stderr
    disabled = {p["name"] for p in json.loads(listed.stdout) if not p["enabled"]}
    assert disabled == {"traefik"} & {p["name"] for p in json.loads(listed.stdout)}
    from k3p.server import _kubeconfig_mode

    assert _kubeconfig_mode(resolved(tmp_path, example)) == 0o644

# --- 3. start-up logs -------------------------------------------------------------------------


def log_records(text: str) -> list[dict]:
    """The server's log as records; a line that is not JSON (a library writing to stderr) is kept raw."""
    records = []
    for line in text.splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            records.append({"level": "raw", "event": line})
    return records


def test_startup_is_quiet_and_ends_with_the_ready_line(server: K3pServer) -> None:
    wait_for(lambda: any(r.get("event") == "k3p is ready" for r in log_records(server.logs())), 30,
             what="the ready line")
    time.sleep(1)  # whatever start-up still had to say, loud or not
    records = log_records(server.logs())
    loud = [r for r in records if r.get("level") not in ("info", "debug")]
    assert loud == [], loud
    ready = [i for i, r in enumerate(records) if r.get("event") == "k3p is ready"]
    assert len(ready) == 1, ready
    # start-up ends there: every component had said it was ready before
    assert max(i for i, r in enumerate(records) if r.get("event") == "component ready") < ready[0]
    assert records[ready[0]]["kubeconfig"] == str(server.kubeconfig)
    assert records[ready[0]]["node"] == "none (--disable-agent)"
    assert "Uvicorn running on" not in server.logs()  # said at debug: k3p's own lines say what listens


def test_informer_retries_at_start_are_debug_then_warnings() -> None:
    import asyncio

    import httpx
    import structlog

    from k3p.client import informer as informer_mod
    from k3p.client.api import ApiError
    from k3p.client.resources import PODS

    class Unreachable:
        def __init__(self, error: Exception) -> None:
            self.error = error

        async def list(self, *args: object, **kwargs: object) -> dict:
            raise self.error

    async def levels(error: Exception, grace: float) -> set[str]:
        informer_mod.STARTUP_GRACE, before = grace, informer_mod.STARTUP_GRACE
        try:
            with structlog.testing.capture_logs() as logs:
                task = asyncio.create_task(informer_mod.Informer(Unreachable(error), PODS).run())
                await asyncio.sleep(0.5)
                task.cancel()
        finally:
            informer_mod.STARTUP_GRACE = before
        return {r["log_level"] for r in logs}

    refused = httpx.ConnectError("All connection attempts failed")
    forbidden = ApiError(403, {"message": "pods is forbidden"})
    assert asyncio.run(levels(refused, 60)) == {"debug"}
    assert asyncio.run(levels(forbidden, 60)) == {"debug"}
    assert asyncio.run(levels(refused, 0)) == {"info"}
    assert asyncio.run(levels(forbidden, 0)) == {"warning"}


def test_debug_brings_the_startup_lines_back() -> None:
    import logging

    from k3p import log as logsetup

    try:
        logsetup.configure(debug=False)
        assert not logging.getLogger("uvicorn.error").isEnabledFor(logging.INFO)
        logsetup.configure(debug=True)
        assert logging.getLogger("uvicorn.error").isEnabledFor(logging.INFO)
    finally:
        logsetup.configure(debug=False)
        logging.getLogger().handlers[:] = []


# --- 4. exit codes and the command line ------------------------------------------------------


def test_exit_codes_output_cut_short_help_heading_and_disable_names(tmp_path: Path) -> None:
    from k3p.plugins import installed_plugins

    (tmp_path / "config.yaml").write_text("")
    config = ["--config", str(tmp_path / "config.yaml"), "--data-dir", str(tmp_path / "data")]
    assert k3p("no-such-command").returncode == 2
    assert k3p("plugins", "bogus").returncode == 2
    assert k3p("server", *config, "--https-listen-port", "x").returncode == 2
    clean = {k: v for k, v in os.environ.items() if not k.startswith("K3P_")}
    for reader in ("head -1", "true"):
        cut = subprocess.run(f"{sys.executable} -m k3p plugins list | {reader}", shell=True, capture_output=True,
                             text=True, env=clean, timeout=60)
        assert cut.stderr == "", cut.stderr
    helped = k3p("server", "--help").stdout
    assert [line for line in helped.splitlines() if line == "options:"] == ["options:"]
    disable_help = " ".join(helped[helped.index("--disable NAME  "):].split("\n  --")[0].split())
    assert all(name in disable_help for name in installed_plugins()), disable_help
    readme = README.read_text()
    assert "| 1 | a runtime failure" in readme and "| 2 | a usage or config error" in readme


def test_plugin_commands_stop_on_sigterm(tmp_path: Path) -> None:
    import shutil

    from k3p.testing import descendants
    from k3p.testing.process import stop_process

    if shutil.which("ctr") is None:
        pytest.skip("containerd's ctr is not installed")
    clean = {k: v for k, v in os.environ.items() if not k.startswith("K3P_")}
    # ctr dials a socket nobody serves for ~10 s: long enough to stop k3p while it waits for ctr
    proc = subprocess.Popen([sys.executable, "-m", "k3p", "ctr", "--address", str(tmp_path / "none.sock"), "events"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=clean)
    try:
        wait_for(lambda: descendants(proc.pid), 8, 0.05, "k3p ctr's child")
        proc.send_signal(signal.SIGTERM)
        proc.wait(3)
        assert proc.returncode != 0
    finally:
        stop_process(proc, 1)


def user_namespace_works() -> bool:
    """Whether ``unshare --user`` runs here: a process whose euid is not 0 (it keeps its file access)."""
    try:
        out = subprocess.run(["unshare", "--user", sys.executable, "-c", "import os; print(os.geteuid())"],
                             capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out not in ("", "0")


class ServerWithoutRoot(K3pServer):
    """A server as a user without root runs it: no --data-dir, no --write-kubeconfig (the defaults under HOME)."""

    def __init__(self, workdir: Path, home: Path) -> None:
        super().__init__(workdir, prefix=["unshare", "--user"], env={"HOME": str(home)})
        self.data_dir = home / ".rancher" / "k3p"
        self.kubeconfig = home / ".kube" / "k3p.yaml"

    def command(self) -> list[str]:
        return [*self.prefix, self.python, "-m", "k3p", "server", "--config", str(self.config_file),
                "--https-listen-port", str(self.port), "--bind-address", "127.0.0.1", *self.args]


def test_without_root_a_node_is_refused_and_the_control_plane_lives_in_home(tmp_path: Path) -> None:
    if not user_namespace_works():
        pytest.skip("no user namespaces here (unshare --user)")
    home = tmp_path / "home"
    home.mkdir()
    node = ServerWithoutRoot(tmp_path / "node", home)
    node.args = ["--kubelet-port", str(free_port())]
    refused = subprocess.run(node.command(), capture_output=True, text=True, env=node.environment(), timeout=60)
    assert refused.returncode == 1, refused.stderr
    lines = error_lines(refused.stderr)
    assert len(lines) == 1 and "a node needs root" in lines[0] and "--disable-agent" in lines[0], refused.stderr
    server = ServerWithoutRoot(tmp_path / "control-plane", home).start()
    try:
        assert server.kubeconfig.exists() and (server.data_dir / "server" / "tls" / "server-ca.crt").exists()
        assert server.get("/readyz")[0] == 200
        # and `k3p kubectl` finds that kubeconfig by itself
        env = {k: v for k, v in server.environment().items() if k != "KUBECONFIG"}
        got = subprocess.run(["unshare", "--user", sys.executable, "-m", "k3p", "kubectl", "get", "--raw", "/readyz"],
                             capture_output=True, text=True, env=env, timeout=60)
        assert got.stdout.strip() == "ok", got.stderr
    finally:
        server.stop()


# --- 5. the README's instructions, as written -------------------------------------------------

def readme_block(heading: str) -> str:
    """The first ```sh block after ``heading`` in the README."""
    text = README.read_text()
    after = text[text.index(f"\n{heading}\n"):]
    return after.split("```sh\n", 1)[1].split("```", 1)[0]


def test_readme_background_run_and_stop_work_as_written(tmp_path: Path) -> None:
    block = readme_block("### Running in the background")
    assert "nohup k3p server" in block and "kill -TERM" in block
    # the same commands, pointed at this test's own files and free port instead of the host's
    (tmp_path / "config.yaml").write_text("")
    kubeconfig = tmp_path / "kubeconfig.yaml"
    server = (f"{sys.executable} -m k3p server --config {tmp_path / 'config.yaml'} --data-dir {tmp_path / 'data'} "
              f"--https-listen-port {free_port()} --bind-address 127.0.0.1 --write-kubeconfig {kubeconfig} "
              "--disable-agent")
    script = (block.replace("k3p server", server).replace("k3p kubectl", f"{sys.executable} -m k3p kubectl")
              .replace("/var/log/k3p.log", str(tmp_path / "k3p.log")).replace("/run/k3p.pid", str(tmp_path / "pid")))
    env = {k: v for k, v in os.environ.items() if not k.startswith("K3P_")}
    env.update(KUBECONFIG=str(kubeconfig), KUBECACHEDIR=str(tmp_path / "kube-cache"))
    try:
        done = subprocess.run(["bash", "-e", "-c", script], capture_output=True, text=True, env=env, timeout=90)
    finally:
        if (tmp_path / "pid").exists():
            pid = int((tmp_path / "pid").read_text())
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    assert done.returncode == 0, done.stderr + (tmp_path / "k3p.log").read_text()[-3000:]
    assert done.stdout.strip() == "ok"
    log = (tmp_path / "k3p.log").read_text()
    assert "k3p is ready" in log and "k3p server stopped" in log


def test_kubectl_without_a_readable_kubeconfig_says_so(tmp_path: Path) -> None:
    result = k3p("kubectl", "get", "pods", env={"KUBECONFIG": str(tmp_path / "missing.yaml")})
    assert result.returncode == 1
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and "no readable kubeconfig" in lines[0] and "missing.yaml" in lines[0], result.stderr
    assert "localhost:8080" not in result.stderr


def test_readme_says_what_k3p_needs() -> None:
    text = README.read_text()
    needs = text[text.index("### What it needs"):text.index("### Running in the background")]
    for fact in ("Python 3.11", "root", "kubectl", "6443/tcp", "--https-listen-port", "10250/tcp", "--kubelet-port",
                 "80/tcp, 443/tcp", "--traefik-http-port", "8472/udp", "--flannel-backend host-gw"):
        assert fact in needs, fact
    images = text[text.index("### Images without a registry"):text.index("### Joining nodes")]
    for fact in ("<data-dir>/agent/images/", "k3p ctr images import"):
        assert fact in images, fact
    try:
        from k3p_plugins.containerd.images import ARCHIVE_SUFFIXES
    except ImportError:  # a bundle without containerd
        return
    assert all(f"`{suffix}`" in images for suffix in ARCHIVE_SUFFIXES)
