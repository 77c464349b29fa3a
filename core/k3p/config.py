"""One option schema for flags, config files and environment variables.

Every option has one name (``data-dir``) and is reachable in four ways, each overriding
the one before: its default, ``config.yaml``, the drop-ins in ``config.yaml.d/*.yaml``
(alphabetical; ``key+:`` appends to a list instead of replacing it), the environment
variable ``K3P_DATA_DIR``, and the flag ``--data-dir``. Core options are declared here;
plugins add theirs through the ``k3p_add_options`` hook.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import os
from collections.abc import Container, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import yaml

DEFAULT_CONFIG_FILE = "/etc/rancher/k3p/config.yaml"
COMMANDS = ("server", "agent")


class ConfigError(Exception):
    """Bad input from the user: printed as one line, exit code 2."""


@dataclass(frozen=True)
class Option:
    """One setting. ``type`` is str, int, bool or list (a list of strings)."""

    name: str
    type: type = str
    default: Any = None
    help: str = ""
    commands: tuple[str, ...] = COMMANDS
    owner: str = "core"
    choices: tuple[str, ...] | None = None
    env: str | None = None
    metavar: str | None = None
    #: config-file/flag-only settings (such as ``config`` itself) have no K3P_ variable
    no_env: bool = False

    @property
    def dest(self) -> str:
        return self.name.replace("-", "_")

    @property
    def env_name(self) -> str | None:
        if self.no_env:
            return None
        return self.env or "K3P_" + self.dest.upper()


class OptionSchema:
    """The set of options one command accepts; plugins add to it through ``k3p_add_options``."""

    def __init__(self) -> None:
        self._options: dict[str, Option] = {}
        #: set by the plugin manager while it calls a plugin's k3p_add_options
        self.current_owner = "core"

    def add(
        self,
        name: str,
        *,
        type: type = str,
        default: Any = None,
        help: str = "",
        commands: Iterable[str] = COMMANDS,
        choices: Iterable[str] | None = None,
        env: str | None = None,
        metavar: str | None = None,
        no_env: bool = False,
    ) -> Option:
        """Declare an option; see the module docstring for how users reach it."""
        if type not in (str, int, bool, list):
            raise ValueError(f"option {name}: type must be str, int, bool or list")
        if not help:
            raise ValueError(f"option {name}: every option needs help text")
        if name in self._options:
            other = self._options[name].owner
            raise ValueError(f"option --{name} of {self.current_owner} is already defined by {other}")
        if default is None and type is list:
            default = []
        opt = Option(
            name=name,
            type=type,
            default=default,
            help=help,
            commands=tuple(commands),
            owner=self.current_owner,
            choices=tuple(choices) if choices else None,
            env=env,
            metavar=metavar,
            no_env=no_env,
        )
        self._options[name] = opt
        return opt

    def options(self, command: str | None = None) -> list[Option]:
        return [o for o in self._options.values() if command is None or command in o.commands]

    def get(self, name: str) -> Option | None:
        return self._options.get(name)


def add_core_options(schema: OptionSchema) -> None:
    """The options of k3p itself, named and defaulted like K3s's where K3s has the concept."""
    both = COMMANDS
    server = ("server",)
    schema.current_owner = "core"
    add = schema.add
    add("config", default=DEFAULT_CONFIG_FILE, env="K3P_CONFIG_FILE", metavar="FILE", commands=both,
        help="Load configuration from FILE (drop-ins from FILE.d/*.yaml)")
    add("debug", type=bool, default=False, help="Turn on debug logs")
    add("data-dir", default=default_data_dir(), metavar="DIR",
        help="Folder to hold state (default /var/lib/rancher/k3p as root, ~/.rancher/k3p otherwise)")
    add("disable", type=list, commands=server, metavar="NAME",
        help="Do not load the named plugin (repeatable, comma-separated); its objects are removed. On the "
             "command line it replaces the config file's disable list, as in K3s (disable+: in a drop-in adds)")
    add("bind-address", default="0.0.0.0", commands=server, metavar="IP",
        help="Address the API server listens on")
    add("https-listen-port", type=int, default=6443, commands=server, metavar="PORT",
        help="HTTPS port of the API server and supervisor")
    add("advertise-address", default="", commands=server, metavar="IP",
        help="Address the API server advertises to cluster members (default: node IP)")
    add("tls-san", type=list, commands=server, metavar="NAME",
        help="Extra hostname or IP as a Subject Alternative Name in the serving certificate")
    add("token", default="", env="K3P_TOKEN", metavar="TOKEN",
        help="Shared secret to join nodes (server: generated at first start when empty)")
    add("server", default="", env="K3P_URL", metavar="URL",
        help="Server to connect to (agents; servers joining an HA cluster)")
    add("write-kubeconfig", default="/etc/rancher/k3p/k3p.yaml", commands=server, metavar="FILE",
        help="Write the admin kubeconfig to FILE (default for another --data-dir: <data-dir>/kubeconfig-k3p.yaml; "
             "without root: ~/.kube/k3p.yaml)")
    add("write-kubeconfig-mode", default="", commands=server, metavar="MODE",
        help="Octal file mode of the kubeconfig (default 0600)")
    add("token-file", default="", env="K3P_TOKEN_FILE", commands=("agent",), metavar="FILE",
        help="Read the join token from FILE")
    add("node-name", default="", env="K3P_NODE_NAME", metavar="NAME",
        help="Node name (default: the hostname)")
    add("node-ip", default="", env="K3P_NODE_IP", metavar="IP",
        help="IP address to advertise for the node (default: the host's first address)")
    add("node-label", type=list, metavar="KEY=VALUE", help="Label to register the node with (repeatable)")
    add("node-taint", type=list, metavar="KEY=VALUE:EFFECT",
        help="Taint to register the node with (repeatable)")
    add("cluster-cidr", default="10.42.0.0/16", commands=server, metavar="CIDR",
        help="IP range for pod IPs")
    add("service-cidr", default="10.43.0.0/16", commands=server, metavar="CIDR",
        help="IP range for service cluster IPs")
    add("service-node-port-range", default="30000-32767", commands=server, metavar="RANGE",
        help="Port range reserved for NodePort services")
    add("cluster-dns", default="10.43.0.10", commands=server, metavar="IP",
        help="Cluster IP of the DNS service")
    add("cluster-domain", default="cluster.local", commands=server, metavar="DOMAIN",
        help="Cluster domain")
    add("datastore-endpoint", default="", env="K3P_DATASTORE_ENDPOINT", commands=server, metavar="URL",
        help="Datastore to use: sqlite://PATH (default: sqlite in the data dir), or what a plugin serves")
    add("service-account-issuer", type=list, default=["https://kubernetes.default.svc.cluster.local"],
        commands=server, metavar="URL",
        help="Issuer (iss) of service-account tokens (repeatable): the first signs new tokens, every one is "
             "accepted")
    add("api-audiences", type=list, commands=server, metavar="AUDIENCE",
        help="Audiences a token must be for to be accepted by the API server (repeatable, comma-separated; "
             "default: the service-account issuers)")
    add("watch-cache-size", type=int, default=1000, commands=server, metavar="N",
        help="Recent changes kept per resource type for watch replay; older resourceVersions get 410 Expired")
    add("max-requests-inflight", type=int, default=400, commands=server, metavar="N",
        help="Most read-only requests (get, list) the API server serves at once, watches and other "
             "long-running requests not counted; beyond it 429 with Retry-After (0: no limit)")
    add("max-mutating-requests-inflight", type=int, default=200, commands=server, metavar="N",
        help="Most mutating requests (create, update, patch, delete) the API server serves at once; beyond "
             "it 429 with Retry-After (0: no limit)")
    add("max-connections", type=int, default=2048, commands=server, metavar="N",
        help="Most connections the API server keeps open; beyond it new connections are closed at once, "
             "before TLS. A quarter is kept for clients that present a client certificate (0: no limit; "
             "lowered to what the open-files limit allows)")
    add("max-connections-per-client", type=int, default=256, commands=server, metavar="N",
        help="Most connections one client address may hold without a client certificate (in the TLS "
             "handshake, or through it without one); beyond it its new connections are closed at once "
             "(0: no limit)")
    add("request-header-timeout", default="32s", commands=server, metavar="DURATION",
        help="Time a client has for the TLS handshake, and then for each request's headers, before its "
             "connection is closed")
    add("idle-connection-timeout", default="90s", commands=server, metavar="DURATION",
        help="How long a keep-alive connection may stay idle between requests before the server closes it")
    add("max-request-header-bytes", type=int, default=64 * 1024, commands=server, metavar="BYTES",
        help="Largest request line and headers the API server reads; larger requests get 431 (0: no limit)")
    add("kubelet-port", type=int, default=10250, metavar="PORT",
        help="Port of the kubelet's HTTPS endpoint, which serves logs to the API server")
    add("simulate", type=int, default=0, commands=("agent",), metavar="N",
        help="Run N simulated (hollow) nodes in this process instead of a real node: for tests and scale "
             "benchmarks, never for workloads")
    add("node-monitor-grace-period", default="50s", commands=server, metavar="DURATION",
        help="How long a node may go without renewing its Lease before it is marked NotReady/Unknown")
    add("node-cidr-mask-size", type=int, default=24, commands=server, metavar="BITS",
        help="Prefix length of the pod range each node gets from --cluster-cidr")
    add("disable-agent", type=bool, default=False, commands=server,
        help="Run only the control plane on this machine, no workloads")
    add("resolv-conf", default="", env="K3P_RESOLV_CONF", metavar="FILE",
        help="resolv.conf for pods with dnsPolicy Default and for names the cluster DNS forwards "
             "(default: /etc/resolv.conf)")


#: K3s's switches for its built-in components, each the same as ``--disable NAME``
DISABLE_ALIASES: dict[str, tuple[str, tuple[str, ...], str]] = {
    "disable-scheduler": ("scheduler", ("server",), "pods stay Pending unless something else binds them"),
    "disable-controller-manager": ("controller-manager", ("server",),
                                   "no Deployments, ReplicaSets, Jobs, GC or node lifecycle"),
    "disable-kube-proxy": ("kube-proxy", COMMANDS,
                           "no ClusterIP or NodePort rules on this node; rules an earlier run left are removed"),
}


DISABLE_ALIASES_PLUGINS = tuple(plugin for plugin, _commands, _effect in DISABLE_ALIASES.values())


def add_disable_aliases(schema: OptionSchema, installed: Container[str]) -> None:
    """The aliases of the installed plugins only: a trimmed install shows no trace of the others.

    ``--disable``'s help gains the names of the installed plugins, the values it takes."""
    disable = schema.get("disable")
    if disable is not None and isinstance(installed, Iterable):
        names = ", ".join(sorted(installed))
        schema._options["disable"] = dataclasses.replace(disable, help=f"{disable.help} (installed: {names})")
    for flag, (plugin, commands, effect) in DISABLE_ALIASES.items():
        if plugin in installed:
            schema.add(flag, type=bool, default=False, commands=commands,
                       help=f"Same as --disable {plugin}: {effect}")


def default_data_dir() -> str:
    if os.geteuid() == 0:
        return "/var/lib/rancher/k3p"
    return str(Path.home() / ".rancher" / "k3p")


@dataclass
class Config:
    """The resolved settings of one command run, each with where it came from."""

    command: str
    values: dict[str, Any]
    sources: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def get(self, name: str, default: Any = None) -> Any:
        """The value of option ``name`` (dashes or underscores), or ``default`` if unknown."""
        return self.values.get(name.replace("-", "_"), default)

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["values"][name]
        except KeyError:
            raise AttributeError(name) from None

    def source(self, name: str) -> str:
        return self.sources.get(name.replace("-", "_"), "default")

    @property
    def data_path(self) -> Path:
        return Path(self.values["data_dir"])


# --- reading the sources ---------------------------------------------------------------------


class _YamlOctal(int):
    """An integer YAML 1.1 read from a leading-zero literal such as ``0644``, with that text kept:
    a string option (a file mode) given without quotes means the digits, not the number 420."""

    text: str


class _Loader(yaml.SafeLoader):
    pass


def _construct_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    value = loader.construct_yaml_int(node)
    text = str(node.value).replace("_", "")
    if len(text) > 1 and text.startswith("0") and text.isdigit():
        octal = _YamlOctal(value)
        octal.text = text
        return octal
    return value


_Loader.add_constructor("tag:yaml.org,2002:int", _construct_int)


def _load_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
    try:
        data = yaml.load(text, Loader=_Loader)  # a SafeLoader, see _construct_int
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"malformed YAML in {where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of option: value")
    return data


def config_files(main: Path, explicit: bool) -> list[Path]:
    """The main config file (if present) and its drop-ins in alphabetical order."""
    files = []
    if main.exists():
        files.append(main)
    elif explicit:
        raise ConfigError(f"config file {main} does not exist")
    dropins = main.parent / (main.name + ".d")
    if dropins.is_dir():
        files.extend(sorted(p for p in dropins.iterdir() if p.suffix in (".yaml", ".yml")))
    return files


def read_file_layers(files: Sequence[Path]) -> list[tuple[str, dict[str, Any]]]:
    """Each file's mapping, tagged with the file name, in precedence order."""
    return [(str(p), _load_yaml(p)) for p in files]


def _convert(opt: Option, raw: Any, where: str) -> Any:
    """Turn a value from a file, the environment or a flag into the option's type."""
    what = f"invalid value for {opt.name} in {where}"
    if opt.type is bool:
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.lower() in ("true", "1", "yes", "on"):
            return True
        if isinstance(raw, str) and raw.lower() in ("false", "0", "no", "off", ""):
            return False
        raise ConfigError(f"{what}: {raw!r} is not true or false")
    if opt.type is int:
        if isinstance(raw, bool):
            raise ConfigError(f"{what}: {raw!r} is not an integer")
        try:
            return int(raw)
        except (TypeError, ValueError):
            raise ConfigError(f"{what}: {raw!r} is not an integer") from None
    if opt.type is list:
        items = raw if isinstance(raw, list) else [raw]
        out: list[str] = []
        for item in items:
            if isinstance(item, (dict, list)) or item is None:
                raise ConfigError(f"{what}: {item!r} is not a string")
            out.extend(s.strip() for s in str(item).split(",") if s.strip())
        return out
    if isinstance(raw, (dict, list)) or raw is None:
        raise ConfigError(f"{what}: expected a single value, got {raw!r}")
    value = raw.text if isinstance(raw, _YamlOctal) else str(raw)
    if opt.choices and value not in opt.choices:
        raise ConfigError(f"{what}: {value!r} is not one of {', '.join(opt.choices)}")
    return value


class _Parser(argparse.ArgumentParser):
    """argparse that reports bad flags as a ConfigError (one line) instead of exiting."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(f"{message} (see '{self.prog} --help')")


def build_parser(command: str, schema: OptionSchema, prog: str, description: str) -> argparse.ArgumentParser:
    """The argparse parser for ``command``; options are grouped by the plugin that owns them."""
    parser = _Parser(prog=prog, description=description, argument_default=argparse.SUPPRESS)
    # core options join argparse's own "options" group (the one with -h): one heading, not two
    groups: dict[str, argparse._ArgumentGroup] = {"core": parser._optionals}
    for opt in schema.options(command):
        group = groups.get(opt.owner)
        if group is None:
            title = "options" if opt.owner == "core" else f"plugin {opt.owner}"
            group = groups[opt.owner] = parser.add_argument_group(title)
        help_text = opt.help
        if opt.env_name:
            help_text += f" [${opt.env_name}]"
        if opt.default not in (None, "", [], False):
            help_text += f" (default: {opt.default})"
        if opt.type is bool:
            group.add_argument(f"--{opt.name}", dest=opt.dest, action="store_const", const=True, help=help_text)
        elif opt.type is list:
            group.add_argument(f"--{opt.name}", dest=opt.dest, action="append", metavar=opt.metavar, help=help_text)
        else:
            group.add_argument(
                f"--{opt.name}", dest=opt.dest, metavar=opt.metavar or opt.name.split("-")[-1].upper(),
                help=help_text,
            )
    return parser


def resolve(
    command: str,
    schema: OptionSchema,
    flags: dict[str, Any],
    file_layers: Sequence[tuple[str, dict[str, Any]]],
    environ: dict[str, str] | None = None,
) -> Config:
    """Merge defaults < files (in order; ``key+`` appends) < environment < flags."""
    environ = os.environ if environ is None else environ
    opts = {o.name: o for o in schema.options(command)}
    values: dict[str, Any] = {o.dest: o.default for o in opts.values()}
    sources: dict[str, str] = {o.dest: "default" for o in opts.values()}
    warnings: list[str] = []
    for where, data in file_layers:
        for key, raw in data.items():
            append = isinstance(key, str) and key.endswith("+")
            name = str(key)[:-1] if append else str(key)
            opt = opts.get(name)
            if opt is None:
                everywhere = schema.get(name)
                if everywhere is None:
                    known = [o.name for o in schema.options()]
                    close = difflib.get_close_matches(name, known, n=1)
                    hint = f" (did you mean '{close[0]}'?)" if close else ""
                    warnings.append(f"unknown config key '{name}' in {where}{hint}")
                continue  # a key of another command (agent-only in a server run): fine
            value = _convert(opt, raw, where)
            if append:
                if opt.type is not list:
                    raise ConfigError(f"invalid key '{key}' in {where}: {name} is not a list, '+' appends to lists")
                values[opt.dest] = [*values[opt.dest], *value]
            else:
                values[opt.dest] = value
            sources[opt.dest] = where
    for opt in opts.values():
        env = opt.env_name
        if env and env in environ:
            values[opt.dest] = _convert(opt, environ[env], f"environment variable {env}")
            sources[opt.dest] = f"environment variable {env}"
    for dest, raw in flags.items():
        opt = next((o for o in opts.values() if o.dest == dest), None)
        if opt is None:
            continue
        if opt.type is list:
            value = _convert(opt, raw, f"flag --{opt.name}")
        else:
            value = _convert(opt, raw, f"flag --{opt.name}")
        values[dest] = value
        sources[dest] = f"flag --{opt.name}"
    return Config(command=command, values=values, sources=sources, warnings=warnings)


def config_file_location(argv: Sequence[str], environ: dict[str, str] | None = None) -> tuple[Path, bool]:
    """Find ``--config`` before the full parse (plugins and their options depend on the file).

    Returns the path and whether the user named it (a missing named file is an error;
    a missing default file is normal).
    """
    environ = os.environ if environ is None else environ
    pre = _Parser(add_help=False, argument_default=argparse.SUPPRESS)
    pre.add_argument("--config", "-c")
    known, _ = pre.parse_known_args(list(argv))
    if getattr(known, "config", None):
        return Path(known.config), True
    if environ.get("K3P_CONFIG_FILE"):
        return Path(environ["K3P_CONFIG_FILE"]), True
    return Path(DEFAULT_CONFIG_FILE), False


def early_disable_list(
    command: str, argv: Sequence[str], file_layers: Sequence[tuple[str, dict[str, Any]]],
    environ: dict[str, str] | None = None, installed: Container[str] = frozenset(DISABLE_ALIASES_PLUGINS),
) -> tuple[list[str], dict[str, str]]:
    """The plugins to leave out, known before plugins are loaded, with where each was named.

    ``--disable NAME`` (servers) and the K3s aliases such as ``--disable-scheduler`` (and,
    on agents too, ``--disable-kube-proxy``) all count.
    """
    environ = os.environ if environ is None else environ
    schema = OptionSchema()
    schema.add("disable", type=list, help="plugins to leave out", commands=("server",))
    add_disable_aliases(schema, installed)
    pre = _Parser(add_help=False, argument_default=argparse.SUPPRESS)
    for opt in schema.options(command):
        if opt.type is list:
            pre.add_argument(f"--{opt.name}", dest=opt.dest, action="append")
        else:
            pre.add_argument(f"--{opt.name}", dest=opt.dest, action="store_const", const=True)
    known, _ = pre.parse_known_args(list(argv))
    flags: dict[str, Any] = dict(vars(known))
    # One merge for everything, so `disable+:` and precedence behave as for any other option.
    config = resolve(command, schema, flags, file_layers, environ)
    names: dict[str, str] = {}
    for n in config.values.get("disable", []):
        names[n] = config.sources["disable"]
    for flag, (plugin, _commands, _effect) in DISABLE_ALIASES.items():
        dest = flag.replace("-", "_")
        if config.values.get(dest):
            names.setdefault(plugin, config.sources[dest])
    return list(names), names
