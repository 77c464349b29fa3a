"""The ``k3p`` command line: server, plugins, check-config, kubectl."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import structlog

import k3p
from k3p import config as cfg
from k3p import log as logsetup
from k3p.checks import HostCheckFailed
from k3p.datadir_lock import DataDirBusy
from k3p.plugins import PluginError, PluginManager, installed_plugins

USAGE = """\
usage: k3p COMMAND [options]

commands:
  server         Run the control plane (and, unless --disable-agent, a node)
  agent          Join a server as a node (--server URL --token TOKEN)
  plugins        list: show plugins and whether they are enabled; new NAME [DIR]: write a plugin skeleton
  check-config   Check that this host can run k3p
  datastore      datastore backup FILE: copy the datastore while the server runs
  kubectl        Run kubectl against this server (uses the admin kubeconfig)
  token          token create|list|delete: join tokens with a time to live
  version        Print the k3p version
  crictl, ctr    Inspect this node's containers (provided by the containerd plugin)
  images         images import FILE...: image archives into this node; images ls (containerd plugin)

'k3p COMMAND --help' shows a command's options.
"""


def fail(message: str, code: int = 2) -> int:
    print(f"k3p: error: {message}", file=sys.stderr)
    return code


def load(command: str, argv: Sequence[str], inspect_disabled: bool = False,
         extra_flags: argparse.ArgumentParser | None = None,
         prog: str | None = None) -> tuple[cfg.Config, PluginManager, argparse.Namespace]:
    """Resolve config and plugins for ``command``: file and drop-ins first (they may disable
    plugins), then every enabled plugin's options, then the full parse of flags."""
    path, explicit = cfg.config_file_location(argv)
    layers = cfg.read_file_layers(cfg.config_files(path, explicit))
    installed = installed_plugins()
    disabled, where = cfg.early_disable_list(command, argv, layers, installed=installed)
    plugins = PluginManager(disabled, where, inspect_disabled=inspect_disabled)
    schema = cfg.OptionSchema()
    cfg.add_core_options(schema)
    cfg.add_disable_aliases(schema, installed)
    plugins.add_options(schema)
    parser = cfg.build_parser(command, schema, prog or f"k3p {command}", _DESCRIPTIONS[command])
    if extra_flags is not None:
        for action in extra_flags._actions:
            if "-h" not in action.option_strings:
                parser._add_action(action)
    namespace = parser.parse_args(list(argv))
    extra = {a.dest for a in (extra_flags._actions if extra_flags else [])}
    flags = {k: v for k, v in vars(namespace).items() if k not in extra}
    config = cfg.resolve(command, schema, flags, layers)
    for warning in config.warnings:
        print(f"k3p: warning: {warning}", file=sys.stderr)
    return config, plugins, namespace


_DESCRIPTIONS = {
    "server": "Run the k3p control plane: API server, datastore, controllers and the bundled plugins.",
    "agent": "Run a k3p node that joins a server.",
}


def cmd_server(argv: Sequence[str]) -> int:
    # disabled plugins are loaded too (never registered): their k3p_node_cleanup runs on this node
    config, plugins, _ = load("server", argv, inspect_disabled=True)
    plugins.check_runnable()
    logsetup.configure(debug=config.get("debug"))
    from k3p.server import run_server  # imported late: `k3p --help` stays fast

    try:
        import uvloop

        return uvloop.run(run_server(config, plugins))
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.run(run_server(config, plugins))


def cmd_agent(argv: Sequence[str]) -> int:
    # every installed plugin is loaded: the server's list of disabled ones may change while we run
    config, plugins, _ = load("agent", argv, inspect_disabled=True)
    plugins.check_runnable()
    logsetup.configure(debug=config.get("debug"))
    from k3p.agent.join import JoinError
    from k3p.agent.run import run_agent

    try:
        import uvloop

        return uvloop.run(run_agent(config, plugins))
    except JoinError as e:
        return fail(str(e), 1)


def cmd_plugins(argv: Sequence[str]) -> int:
    if argv and argv[0] == "new":
        from k3p.scaffold import main as new_plugin

        return new_plugin(argv[1:])
    if not argv or argv[0] != "list":
        return fail("usage: k3p plugins list [-o table|json] [--disable NAME] [--config FILE]"
                    " | k3p plugins new NAME [DIR]")
    extra = argparse.ArgumentParser(add_help=False)
    extra.add_argument("-o", "--output", choices=("table", "json"), default=None,
                       help="Output format (default: table on a terminal, json otherwise)")
    _, plugins, ns = load("server", argv[1:], inspect_disabled=True, extra_flags=extra, prog="k3p plugins list")
    output = ns.output or ("table" if sys.stdout.isatty() else "json")
    print(plugins.as_table() if output == "table" else plugins.as_json())
    return 0


def cmd_datastore(argv: Sequence[str]) -> int:
    """``k3p datastore backup FILE``: an online, consistent copy of the datastore."""
    if not argv or argv[0] != "backup":
        return fail("usage: k3p datastore backup FILE [--data-dir DIR] [--datastore-endpoint URL]")
    extra = argparse.ArgumentParser(add_help=False)
    extra.add_argument("file", metavar="FILE", help="Where to write the backup")
    config, plugins, ns = load("server", argv[1:], extra_flags=extra, prog="k3p datastore backup")
    from k3p.protocols.datastore import BackupNotSupported
    from k3p.server import select_datastore

    store = select_datastore(config, plugins)
    try:
        asyncio.run(store.backup(ns.file))
    except BackupNotSupported as e:
        return fail(str(e), 1)
    except FileNotFoundError as e:
        return fail(f"no datastore to back up: {e}", 1)
    print(f"backup written to {ns.file}")
    return 0


def cmd_check_config(argv: Sequence[str]) -> int:
    config, plugins, _ = load("server", argv, prog="k3p check-config")
    from k3p.server import preflight

    report = preflight(config, plugins)
    print(report.render())
    return 1 if report.failed else 0


def kubectl_kubeconfig(environ: dict[str, str]) -> tuple[str, str]:
    """The kubeconfig ``k3p kubectl`` hands to kubectl, or "" and why there is none readable.

    ``$KUBECONFIG`` when set; else the default server's kubeconfig, then those of the data dir
    (``$K3P_DATA_DIR`` or the default one). kubectl itself would quietly fall back to
    localhost:8080 and fail there with a message that names none of this.
    """
    data_dir = Path(environ.get("K3P_DATA_DIR") or cfg.default_data_dir())
    given = [p for p in environ.get("KUBECONFIG", "").split(os.pathsep) if p]
    # without root, a server's kubeconfig is ~/.kube/k3p.yaml (k3p.server.user_kubeconfig)
    own = [str(Path.home() / ".kube" / "k3p.yaml")] if os.geteuid() != 0 else []
    candidates = given or [*own, "/etc/rancher/k3p/k3p.yaml", str(data_dir / "kubeconfig-k3p.yaml"),
                           str(data_dir / "server" / "cred" / "admin.kubeconfig")]
    problems = []
    for path in candidates:
        try:
            with open(path, "rb"):
                return path, ""
        except OSError as e:
            problems.append(f"{path}: {e.strerror}")
    where = "$KUBECONFIG" if given else "k3p's kubeconfigs"
    hint = "run as root or start the server with --write-kubeconfig-mode 0644" if any(
        "denied" in p for p in problems) else "is k3p server running on this machine?"
    return "", f"no readable kubeconfig in {where} ({'; '.join(problems)}): {hint}"


def cmd_kubectl(argv: Sequence[str]) -> int:
    env = dict(os.environ)
    if not any(a == "--kubeconfig" or a.startswith("--kubeconfig=") for a in argv):
        kubeconfig, problem = kubectl_kubeconfig(env)
        if problem:
            return fail(problem, 1)
        env.setdefault("KUBECONFIG", kubeconfig)
    try:
        os.execvpe("kubectl", ["kubectl", *argv], env)
    except FileNotFoundError:
        return fail("kubectl is not installed (not found on PATH)", 1)
    return 0  # pragma: no cover - exec does not return


def cmd_token(argv: Sequence[str]) -> int:
    from k3p.tokens import token_main

    return token_main(argv)


def plugin_command(command: str, argv: Sequence[str]) -> int:
    """A command a plugin adds through ``k3p_commands`` (``k3p crictl``, ``k3p ctr``)."""
    try:
        plugins = PluginManager()
    except PluginError as e:
        return fail(str(e))
    found: dict[str, object] = {}
    for batch in plugins.hook.k3p_commands():
        found.update(batch or {})
    handler = found.get(command)
    if handler is None:
        known = sorted([*COMMANDS, *found])
        return fail(f"unknown command {command!r} (commands: {', '.join(known)})")
    data_dir = os.environ.get("K3P_DATA_DIR") or cfg.default_data_dir()
    return int(handler(list(argv), data_dir))  # type: ignore[operator]


COMMANDS = {
    "server": cmd_server,
    "agent": cmd_agent,
    "plugins": cmd_plugins,
    "check-config": cmd_check_config,
    "datastore": cmd_datastore,
    "kubectl": cmd_kubectl,
    "token": cmd_token,
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        return 0 if argv else 2
    if argv[0] in ("version", "--version", "-v"):
        print(f"k3p version v{k3p.__version__} (Kubernetes v1.32)")
        return 0
    command, rest = argv[0], argv[1:]
    from k3p.__main__ import hold_stop_signals, release_stop_signals

    if command in ("server", "agent"):
        hold_stop_signals()  # released once their event loop handles SIGTERM (server.py, agent/run.py)
    else:
        release_stop_signals()  # plugin commands too: Ctrl-C stops `k3p crictl logs -f`
        # `k3p plugins list | head -1`: end quietly when the reader goes away, as Unix filters do
        # (and so does the kubectl that `k3p kubectl` execs); servers keep Python's EPIPE errors
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    handler = COMMANDS.get(command)
    if handler is None:
        return plugin_command(command, rest)
    logsetup.configure()
    try:
        return handler(rest)
    except (cfg.ConfigError, PluginError) as e:
        return fail(str(e))
    except (DataDirBusy, HostCheckFailed) as e:
        return fail(str(e), 1)
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:
        # stdout's reader is gone: nothing more can be said there, nor at the interpreter's last flush
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except Exception as e:
        structlog.get_logger(__name__).debug("fatal error", exc_info=True)
        return fail(f"{type(e).__name__}: {e}", 1)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
