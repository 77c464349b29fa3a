"""``k3p plugins new NAME [DIR]``: the skeleton of a third-party plugin distribution.

The skeleton installs as it is (``pip install DIR``) and passes its own tests
(``pytest DIR``): a ``pyproject.toml`` with the ``k3p.plugins`` entry point, a package
``k3p_<name>`` whose hooks add an option, grant the plugin's user RBAC and run a small
controller (ConfigMaps with a label get an annotation), a README, and tests that use the
``k3p.testing`` fixtures, one of them against a real ``k3p server``.

A refusal (a bad name, a name an installed plugin already has, a folder that is not
empty) is a :class:`ScaffoldError`: one line, exit code 2, and nothing written.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from string import Template
from typing import NoReturn

from k3p.config import ConfigError
from k3p.plugins import ENTRY_POINT_GROUP

#: lowercase letters, digits and single dashes between them, starting with a letter: the
#: name must work as an entry-point name, an option prefix, a DNS label (label keys) and,
#: with dashes as underscores, a Python identifier
NAME_PATTERN = re.compile(r"[a-z][a-z0-9]*(-[a-z0-9]+)*")
#: the name ends up in the user ``system:k3p:<name>``, the common name of its certificate
#: (at most 64 characters) and label prefixes; 40 leaves room for all of them
MAX_NAME_LENGTH = 40


class ScaffoldError(ConfigError):
    """Why no skeleton was written (printed as one line; exit code 2)."""


def package_name(name: str) -> str:
    """The import package of plugin ``name``: ``my-thing`` is ``k3p_my_thing``."""
    return "k3p_" + name.replace("-", "_")


def _normalized(distribution: str) -> str:
    return re.sub(r"[-_.]+", "-", distribution).lower()


def check_name(name: str) -> None:
    """Raise ScaffoldError unless ``name`` is a valid plugin name no installed plugin uses."""
    if not NAME_PATTERN.fullmatch(name):
        raise ScaffoldError(f"invalid plugin name {name!r}: use lowercase letters, digits and dashes,"
                            " starting with a letter (e.g. my-thing)")
    if len(name) > MAX_NAME_LENGTH:
        raise ScaffoldError(f"invalid plugin name {name!r}: at most {MAX_NAME_LENGTH} characters")
    # Two plugins with one name shadow each other, and a distribution of the same name would
    # be replaced by `pip install`: refuse rather than generate something that breaks k3p.
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name:
            owner = f" (distribution {ep.dist.name})" if ep.dist else ""
            raise ScaffoldError(f"plugin name {name!r} is taken by an installed plugin{owner}")
    dist = f"k3p-{name}"
    for installed in metadata.distributions():
        if _normalized(installed.metadata["Name"] or "") == dist:
            raise ScaffoldError(f"plugin name {name!r}: a distribution {dist} is already installed")
    package = package_name(name)
    spec = importlib.util.find_spec(package)
    if spec is not None:
        where = spec.origin or ", ".join(spec.submodule_search_locations or ()) or "?"
        raise ScaffoldError(f"plugin name {name!r}: the package {package} already exists ({where})")


def check_target(target: Path) -> None:
    """Raise ScaffoldError if ``target`` exists and is not an empty folder."""
    if target.is_dir():
        if any(target.iterdir()):
            raise ScaffoldError(f"{target} exists and is not empty")
    elif target.exists():
        raise ScaffoldError(f"{target} exists and is not a folder")


def render(name: str) -> dict[str, str]:
    """The skeleton's files for plugin ``name``: ``{relative path: text}``."""
    values = {
        "name": name,
        "dist": f"k3p-{name}",
        "package": package_name(name),
        "dest": name.replace("-", "_"),
        "env": "K3P_" + name.replace("-", "_").upper(),
    }
    package = values["package"]
    return {
        "pyproject.toml": Template(_PYPROJECT).substitute(values),
        "README.md": Template(_README).substitute(values),
        f"{package}/__init__.py": Template(_INIT).substitute(values),
        f"{package}/controller.py": Template(_CONTROLLER).substitute(values),
        f"tests/test_{values['dest']}.py": Template(_TEST).substitute(values),
    }


def write(name: str, target: Path) -> list[Path]:
    """Check ``name`` and ``target``, then write the skeleton there; the files written."""
    check_name(name)
    check_target(target)
    files = render(name)
    written = []
    for relative, text in files.items():
        path = target / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)
    return written


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise ScaffoldError(f"{message} (see '{self.prog} --help')")


def main(argv: Sequence[str]) -> int:
    """``k3p plugins new NAME [DIR]`` (argv without ``plugins new``)."""
    parser = _Parser(prog="k3p plugins new",
                     description="Write the skeleton of a k3p plugin distribution: it installs with"
                                 " 'pip install DIR' and passes its own tests with 'pytest DIR'.")
    parser.add_argument("name", metavar="NAME", help="The plugin's name: lowercase letters, digits, dashes")
    parser.add_argument("dir", metavar="DIR", nargs="?", default=None,
                        help="Where to write it (default: ./k3p-NAME; must not exist or be empty)")
    ns = parser.parse_args(list(argv))
    target = Path(ns.dir if ns.dir is not None else f"k3p-{ns.name}")
    written = write(ns.name, target)
    print(f"wrote plugin {ns.name} (distribution k3p-{ns.name}, package {package_name(ns.name)}) to {target}:")
    for path in written:
        print(f"  {path.relative_to(target)}")
    print(f"next: pip install -e {target} && pytest {target}")
    return 0


# --- the skeleton's files ------------------------------------------------------------------
# string.Template placeholders: ${name} my-thing, ${dist} k3p-my-thing, ${package}
# k3p_my_thing, ${dest} my_thing (option and module names), ${env} K3P_MY_THING.

_PYPROJECT = """\
# ${dist}: a k3p plugin. It is an ordinary Python distribution: once installed
# (pip install .), k3p finds it through the entry point below, with no change to k3p.
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "${dist}"
version = "0.1.0"
description = "A k3p plugin: annotates labelled ConfigMaps (made with 'k3p plugins new ${name}')"
readme = "README.md"
requires-python = ">=3.11"
dependencies = ["k3p"]

[project.optional-dependencies]
# The fixtures the tests use (k3p_server, k3p_plugin_manager) come with k3p itself.
test = ["pytest>=8"]

# The key is the plugin's name (k3p plugins list, --disable ${name}); the value is the
# module whose @hookimpl functions k3p calls.
[project.entry-points."k3p.plugins"]
${name} = "${package}"

[tool.setuptools]
packages = ["${package}"]

[tool.pytest.ini_options]
testpaths = ["tests"]
markers = ["slow: starts a real k3p server (deselect with -m 'not slow')"]
addopts = "-ra --strict-markers"

[tool.ruff]
line-length = 120
target-version = "py311"

[tool.ruff.lint]
select = ["E", "F", "W", "I", "B", "UP", "ASYNC", "RUF"]

[tool.ruff.lint.isort]
# this package's imports sort after k3p's wherever ruff is run from
known-first-party = ["${package}"]
"""

_README = """\
# ${dist}

A k3p plugin, made with `k3p plugins new ${name}`.

As generated it runs one controller in `k3p server`: every ConfigMap labelled
`${name}.example.com/greet=true` gets the annotation `${name}.example.com/greeting` with
the text of `--${name}-greeting`. Replace that with what your plugin should do; the
shape (an option, RBAC for the plugin's own user, a controller) fits most plugins.

## Try it

```sh
pip install -e .                # k3p now finds the plugin through its entry point
k3p plugins list                # ${name} is listed as enabled, with its hooks
pytest                          # quick tests, then one against a real k3p server
pytest -m "not slow"            # only the quick ones
k3p server --${name}-greeting hi
kubectl create configmap demo
kubectl label configmap demo ${name}.example.com/greet=true
kubectl get configmap demo -o jsonpath='{.metadata.annotations}'
k3p server --disable ${name}    # runs without it; its RBAC objects are deleted
```

The option is also `${name}-greeting:` in `config.yaml` and `${env}_GREETING` in the
environment.

## Layout

- `${package}/__init__.py`: the hooks k3p calls (`k3p_add_options`, `k3p_manifests`,
  `k3p_server_components`). Keep it light: every k3p command that loads plugins imports it.
- `${package}/controller.py`: the controller and the component that runs it.
- `tests/test_${dest}.py`: tests with the fixtures of k3p's pytest plugin (`k3p.testing`).

## Next steps

- Every hook, with what k3p expects of it: the docstrings of `k3p.hookspecs`.
- What a component gets: `k3p.context.PluginContext`; what it may wait for: `k3p.components`.
- `example.com` in the label and annotation keys is a placeholder: use a domain you own.
"""

_INIT = '''\
"""${dist}: a k3p plugin (made with ``k3p plugins new ${name}``).

As generated, a controller in ``k3p server`` gives every ConfigMap labelled
``${name}.example.com/greet=true`` the annotation ``${name}.example.com/greeting`` with the
text of ``--${name}-greeting``. k3p calls the ``@hookimpl`` functions below at the phases
their names say; every hook is documented in ``k3p.hookspecs``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from k3p import hookimpl

if TYPE_CHECKING:  # only for type hints: nothing heavy is imported when k3p loads the plugin
    from k3p.config import Config, OptionSchema
    from k3p.context import PluginContext
    from k3p.supervisor import Component

#: the plugin's name: its entry point in pyproject.toml and what ``--disable`` takes
PLUGIN = "${name}"
#: the controller acts as the API user ``system:k3p:${name}`` (``ctx.component_client``),
#: which may do only what the ClusterRole in ``k3p_manifests`` allows
USER = f"system:k3p:{PLUGIN}"
#: ConfigMaps with this label set to "true" are the ones the controller looks after
#: (example.com is a placeholder: label prefixes should be a domain you own)
LABEL = "${name}.example.com/greet"
#: the annotation the controller writes on them
ANNOTATION = "${name}.example.com/greeting"
RBAC_GROUP = "rbac.authorization.k8s.io"


@hookimpl
def k3p_add_options(schema: OptionSchema) -> None:
    """--${name}-greeting: the text the controller writes."""
    # The option is also "${name}-greeting:" in config.yaml and ${env}_GREETING in the
    # environment. Its name starts with the plugin's so it cannot clash with k3p's options
    # or another plugin's; only `k3p server` runs the controller, so only it takes the flag.
    schema.add("${name}-greeting", default="hello from ${dist}", commands=("server",),
               help="Text the ${name} controller writes into labelled ConfigMaps")


@hookimpl
def k3p_manifests(config: Config) -> list[dict[str, Any]]:
    """ClusterRole and ClusterRoleBinding ``system:k3p:${name}``: what the controller's user may do."""
    # The server applies these at every start and deletes them once the plugin is disabled,
    # so a disabled plugin leaves no rights behind. Grant only what the controller does:
    # read and watch ConfigMaps, and patch the annotation in.
    return [
        {"apiVersion": f"{RBAC_GROUP}/v1", "kind": "ClusterRole", "metadata": {"name": USER},
         "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list", "watch", "patch"]}]},
        {"apiVersion": f"{RBAC_GROUP}/v1", "kind": "ClusterRoleBinding", "metadata": {"name": USER},
         "roleRef": {"apiGroup": RBAC_GROUP, "kind": "ClusterRole", "name": USER},
         "subjects": [{"apiGroup": RBAC_GROUP, "kind": "User", "name": USER}]},
    ]


@hookimpl
def k3p_server_components(ctx: PluginContext) -> list[Component]:
    """The greeting controller, run and restarted by k3p's supervisor."""
    # Imported here rather than at the top: `k3p plugins list` and `k3p server --help` load
    # every plugin, and only a running server needs the controller and its API client.
    from ${package}.controller import greeting_component

    return [greeting_component(ctx, ctx.config.get("${dest}_greeting"))]
'''

_CONTROLLER = '''\
"""The greeting controller: labelled ConfigMaps get an annotation with the greeting.

It has the shape of every Kubernetes controller: an informer keeps a local, always-current
copy of the objects it cares about, each change puts the object's key ("namespace/name")
on a work queue, and workers call ``reconcile(key)``. ``reconcile`` compares what is with
what should be and acts; k3p may run it again for any key at any time (a relist, a
restart, a retry after an error), so it must do nothing when things already look right.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from k3p import components
from k3p.client import Client, Controller, ControllerGroup, InformerFactory, split_key
from k3p.client.objects import annotations_of
from k3p.client.resources import CONFIGMAPS
from k3p.supervisor import TaskComponent

from ${package} import ANNOTATION, LABEL, PLUGIN

if TYPE_CHECKING:
    from k3p.context import PluginContext


class GreetingController(Controller):
    """Writes ``greeting`` into the annotation ``ANNOTATION`` of every ConfigMap labelled ``LABEL=true``."""

    #: shown in k3p's log lines about this controller
    name = f"{PLUGIN}-greeter"

    def __init__(self, client: Client, informers: InformerFactory, greeting: str) -> None:
        super().__init__(client, informers)
        self.greeting = greeting

    def setup(self) -> None:
        # The label selector makes the API server send only the labelled ConfigMaps, so the
        # cache (memory) and the watch (traffic) stay small however many ConfigMaps exist.
        self.configmaps = self.informers.informer(CONFIGMAPS, label_selector=f"{LABEL}=true")
        self.watch_objects(self.configmaps)

    async def reconcile(self, key: str) -> None:
        configmap = self.configmaps.get(key)
        if configmap is None:
            return  # deleted (or unlabelled) since it was queued: nothing to do
        if annotations_of(configmap).get(ANNOTATION) == self.greeting:
            return  # already right; our own patch below brings every ConfigMap back here once
        namespace, name = split_key(key)
        # A merge patch sets just this annotation: no read-modify-write, so no conflict with
        # whoever else edits the ConfigMap. An error here (the API down, a 403 because the RBAC
        # is missing) makes the Controller base retry the key later, with back-off.
        await self.client.patch(CONFIGMAPS, name, {"metadata": {"annotations": {ANNOTATION: self.greeting}}},
                                namespace, field_manager=self.name)


def greeting_component(ctx: PluginContext, greeting: str) -> TaskComponent:
    """The supervised component that runs the controller as the plugin's own user."""
    group = ControllerGroup(
        f"{PLUGIN}-greeter",
        # The plugin's user (system:k3p:<PLUGIN>), not the control plane's: the controller
        # can do no more than the ClusterRole of k3p_manifests allows.
        lambda: ctx.component_client(PLUGIN, f"k3p-{PLUGIN}"),
        [lambda client, informers: GreetingController(client, informers, greeting)],
        # ADDONS is ready once every plugin's k3p_manifests are applied: our RBAC is in place
        # before the first request, so the first list is not refused.
        requires=[components.ADDONS],
    )
    # The group fills the informers' caches before it reports ready, restarts from fresh
    # caches after a crash, and closes the client at shutdown.
    return group.component()
'''

_TEST = '''\
"""Tests of the ${name} plugin, with the fixtures of k3p's pytest plugin (``k3p.testing``).

Run them with ``pytest`` after ``pip install .``: the end-to-end test starts a real
``k3p server``, which finds the plugin through its installed entry point.
"""

from __future__ import annotations

import asyncio
from importlib import metadata

import pytest
from k3p.client.objects import annotations_of
from k3p.client.resources import CONFIGMAPS
from k3p.config import OptionSchema, resolve
from k3p.testing import K3pServer, async_wait_for

import ${package}


def test_plugin_loads_in_isolation(k3p_plugin_manager) -> None:
    # Only this plugin, none of the installed ones: k3p checks each hook against its spec
    # here, so a misspelt hook or argument name shows up as a rejection with the reason.
    pm = k3p_plugin_manager(**{"${name}": ${package}})
    info = pm.infos["${name}"]
    assert info.enabled, info.reason
    assert set(info.hooks) == {"k3p_add_options", "k3p_manifests", "k3p_server_components"}


def test_option_and_rbac(k3p_plugin_manager) -> None:
    pm = k3p_plugin_manager(**{"${name}": ${package}})
    schema = OptionSchema()
    pm.add_options(schema)
    # resolve() is how k3p turns defaults, config files, K3P_ variables and flags into the
    # Config the hooks get; here with no file, no environment and no flags: the default.
    config = resolve("server", schema, flags={}, file_layers=[], environ={})
    assert config.get("${dest}_greeting") == "hello from ${dist}"
    [objects] = pm.hook.k3p_manifests(config=config)  # one result per plugin that implements it
    binding = next(o for o in objects if o["kind"] == "ClusterRoleBinding")
    assert binding["subjects"] == [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User",
                                    "name": "system:k3p:${name}"}]


def test_plugin_is_installed() -> None:
    # The server below finds plugins only through installed entry points.
    names = {ep.name for ep in metadata.entry_points(group="k3p.plugins")}
    assert "${name}" in names, "install the plugin first: pip install -e ."


@pytest.mark.slow
def test_controller_annotates_labelled_configmaps(k3p_server_factory) -> None:
    # A real `k3p server` in a child process, on free ports with its own data dir, stopped
    # at the end of the test. It runs every installed plugin, this one included; the flag
    # sets the plugin's option as a user would.
    server = k3p_server_factory(args=["--${name}-greeting", "hi from the test"])
    asyncio.run(check_annotations(server))


async def check_annotations(server: K3pServer) -> None:
    # The admin client (system:masters) acts for the test; the controller acts as its own user.
    async with server.admin_client() as client:
        await client.create(CONFIGMAPS, {"apiVersion": "v1", "kind": "ConfigMap",
                                         "metadata": {"name": "plain"}}, "default")
        await client.create(CONFIGMAPS, {"apiVersion": "v1", "kind": "ConfigMap",
                                         "metadata": {"name": "labelled", "labels": {${package}.LABEL: "true"}}},
                            "default")

        async def greeted() -> bool:
            configmap = await client.get(CONFIGMAPS, "labelled", "default")
            return annotations_of(configmap).get(${package}.ANNOTATION) == "hi from the test"

        # The controller starts once the server has applied the plugin's RBAC: poll, do not sleep.
        await async_wait_for(greeted, timeout=30, what="the ${name} controller to annotate the ConfigMap")
        # The unlabelled ConfigMap never reaches the controller (its informer selects by label).
        plain = await client.get(CONFIGMAPS, "plain", "default")
        assert ${package}.ANNOTATION not in annotations_of(plain)
'''
