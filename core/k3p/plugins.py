"""Finding, checking and registering plugins.

Plugins are announced in the ``k3p.plugins`` entry-point group; stevedore loads them and
pluggy calls their hooks. The bundled components are found the same way as third-party
ones, so removing a plugin from the bundle (or ``--disable NAME``) removes the component.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from importlib import metadata
from typing import Any

import pluggy
import structlog
from stevedore import NamedExtensionManager

from k3p import hookspecs

ENTRY_POINT_GROUP = "k3p.plugins"
log = structlog.get_logger(__name__)


class PluginError(Exception):
    """A plugin set that cannot run (unknown name, missing requirement, rejected plugin)."""


@dataclass
class PluginInfo:
    """What ``k3p plugins list`` shows about one plugin."""

    name: str
    distribution: str = ""
    version: str = ""
    target: str = ""
    hooks: list[str] = field(default_factory=list)
    requires: list[str] = field(default_factory=list)
    enabled: bool = True
    reason: str = ""

    @property
    def state(self) -> str:
        return "enabled" if self.enabled else "disabled"


def _entry_points(group: str) -> dict[str, metadata.EntryPoint]:
    found: dict[str, metadata.EntryPoint] = {}
    for ep in metadata.entry_points(group=group):
        # An editable install and a regular one of the same distribution may both be
        # visible; the first on sys.path wins, as for imports.
        found.setdefault(ep.name, ep)
    return found


def installed_plugins(group: str = ENTRY_POINT_GROUP) -> set[str]:
    """The names of every installed plugin (entry points; nothing is imported)."""
    return set(_entry_points(group))


def _hook_names(pm: pluggy.PluginManager, plugin: object) -> list[str]:
    return sorted(caller.name for caller in pm.get_hookcallers(plugin) or ())


def _argnames(fn: Any) -> tuple[str, ...]:
    return pluggy._hooks.varnames(fn)[0]


def new_plugin_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager("k3p")
    pm.add_hookspecs(hookspecs)
    return pm


def check_plugin(pm: pluggy.PluginManager, name: str, plugin: object) -> str:
    """Register ``plugin``; return "" if it is valid, else why it was rejected (and unregister it)."""
    try:
        pm.register(plugin, name=name)
    except pluggy.PluginValidationError as e:
        return f"rejected: {e}"
    except ValueError as e:  # already registered under another name, name clash
        return f"rejected: {e}"
    unknown = [c.name for c in pm.get_hookcallers(plugin) or () if not c.has_spec()]
    if unknown:
        pm.unregister(plugin)
        hooks = ", ".join(sorted(unknown))
        return f"rejected: plugin {name} implements unknown hook {hooks}"
    return ""


class PluginManager:
    """The plugins of one k3p run: discovered, checked, and registered unless disabled."""

    def __init__(
        self,
        disabled: Iterable[str] = (),
        disabled_by: Mapping[str, str] | None = None,
        group: str = ENTRY_POINT_GROUP,
        extra: Mapping[str, object] | None = None,
        inspect_disabled: bool = False,
    ) -> None:
        """Load the group's plugins, leaving out ``disabled`` ones.

        ``extra`` registers plugin objects without an entry point (the test harness uses
        it to load one plugin in isolation). ``inspect_disabled`` also imports disabled
        plugins, without registering them, so their hooks can be listed.
        """
        self.pm = new_plugin_manager()
        self.infos: dict[str, PluginInfo] = {}
        self.plugins: dict[str, object] = {}
        #: installed plugins that are disabled, loaded only for ``k3p_node_cleanup`` and listing
        self.disabled_plugins: dict[str, object] = {}
        disabled = list(dict.fromkeys(disabled))
        disabled_by = dict(disabled_by or {})
        eps = _entry_points(group)
        available = sorted({*eps, *(extra or {})})
        unknown = [n for n in disabled if n not in available]
        if unknown:
            raise PluginError(
                f"cannot disable unknown plugin {', '.join(unknown)}"
                f" (available: {', '.join(available) or 'none'})"
            )
        for name, ep in eps.items():
            dist = ep.dist
            self.infos[name] = PluginInfo(
                name=name,
                distribution=dist.name if dist else "",
                version=dist.version if dist else "",
                target=ep.value,
            )
        for name in extra or {}:
            self.infos.setdefault(name, PluginInfo(name=name, target="(registered directly)"))
        for name in disabled:
            info = self.infos[name]
            info.enabled = False
            where = disabled_by.get(name)
            info.reason = f"disabled by {where}" if where else "disabled"
        to_load = [n for n in eps if n not in disabled or inspect_disabled]
        loaded: dict[str, object] = dict(self._load(to_load, group))
        loaded.update(extra or {})
        scratch = new_plugin_manager()
        for name, plugin in loaded.items():
            info = self.infos[name]
            info.requires = list(getattr(plugin, "K3P_REQUIRES", ()))
            if not info.enabled:
                # Only to list its hooks and clean up after it: never registered for real.
                if not check_plugin(scratch, name, plugin):
                    info.hooks = _hook_names(scratch, plugin)
                    self.disabled_plugins[name] = plugin
                continue
            problem = check_plugin(self.pm, name, plugin)
            if problem:
                info.enabled = False
                info.reason = problem
                log.error("plugin rejected", plugin=name, reason=problem)
                continue
            info.hooks = _hook_names(self.pm, plugin)
            self.plugins[name] = plugin

    def _load(self, names: list[str], group: str) -> Iterable[tuple[str, object]]:
        failures: dict[str, str] = {}

        def failed(_manager: Any, ep: metadata.EntryPoint, err: BaseException) -> None:
            failures[ep.name] = f"failed to load: {type(err).__name__}: {err}"

        mgr = NamedExtensionManager(
            group,
            names=names,
            invoke_on_load=False,
            on_load_failure_callback=failed,
            name_order=True,
        )
        for ext in mgr.extensions:
            yield ext.name, ext.plugin
        for name, why in failures.items():
            info = self.infos[name]
            if not info.enabled:  # a disabled plugin that cannot load holds nothing up
                log.debug("disabled plugin failed to load", plugin=name, reason=why)
                continue
            info.enabled = False
            info.reason = why
            log.error("plugin failed to load", plugin=name, reason=why)

    @property
    def hook(self) -> Any:
        return self.pm.hook

    def call_each(self, hook: str, **kwargs: Any) -> list[tuple[str, Any]]:
        """Call ``hook`` on every enabled plugin that implements it: ``[(plugin name, result)]``.

        For hooks whose results must stay attributed to their plugin (the addon deployer
        labels and removes objects per plugin).
        """
        found = []
        for impl in getattr(self.pm.hook, hook).get_hookimpls():
            args = {name: kwargs[name] for name in impl.argnames}
            found.append((impl.plugin_name, impl.function(**args)))
        return found

    def call_one(self, plugin: str, hook: str, **kwargs: Any) -> Any:
        """Call one enabled plugin's implementation of ``hook`` (None when it has none)."""
        for impl in getattr(self.pm.hook, hook).get_hookimpls():
            if impl.plugin_name == plugin:
                return impl.function(**{name: kwargs[name] for name in impl.argnames})
        return None

    def add_options(self, schema: Any) -> None:
        """Every enabled plugin's ``k3p_add_options``, each option owned by its plugin (for --help)."""
        for impl in self.pm.hook.k3p_add_options.get_hookimpls():
            schema.current_owner = impl.plugin_name
            try:
                impl.function(**{name: schema for name in impl.argnames})
            except ValueError as e:
                raise PluginError(f"plugin {impl.plugin_name}: {e}") from None
        schema.current_owner = "core"

    def cleanup_disabled(self, disabled: Iterable[str], **kwargs: Any) -> None:
        """``k3p_node_cleanup`` of the installed plugins named in ``disabled`` (those loaded)."""
        for name in disabled:
            plugin = self.disabled_plugins.get(name) or self.plugins.get(name)
            hook = getattr(plugin, "k3p_node_cleanup", None)
            if hook is None:
                continue
            try:
                hook(**{n: kwargs[n] for n in _argnames(hook)})
            except Exception:
                log.exception("clean-up of a disabled plugin failed", plugin=name)

    def enabled(self) -> list[str]:
        return [n for n, i in self.infos.items() if i.enabled]

    def check_runnable(self) -> None:
        """Raise PluginError unless every enabled plugin loaded and has what it requires."""
        broken = [i for i in self.infos.values() if i.reason.startswith(("rejected", "failed"))]
        if broken:
            first = broken[0]
            raise PluginError(f"plugin {first.name} {first.reason} (fix it or --disable {first.name})")
        for info in self.infos.values():
            if not info.enabled:
                continue
            for need in info.requires:
                other = self.infos.get(need)
                if other is None:
                    raise PluginError(f"plugin {info.name} requires plugin {need}, which is not installed")
                if not other.enabled:
                    raise PluginError(
                        f"plugin {info.name} requires plugin {need}, which is {other.reason or 'disabled'}"
                        f" (disable {info.name} too, or enable {need})"
                    )

    def as_json(self) -> str:
        rows = [{**asdict(i), "state": i.state} for i in sorted(self.infos.values(), key=lambda i: i.name)]
        return json.dumps(rows, indent=2)

    def as_table(self) -> str:
        rows = [["NAME", "STATE", "DISTRIBUTION", "VERSION", "HOOKS", "REASON"]]
        for i in sorted(self.infos.values(), key=lambda i: i.name):
            rows.append([i.name, i.state, i.distribution or "-", i.version or "-",
                         ",".join(h.removeprefix("k3p_") for h in i.hooks) or "-", i.reason or ""])
        widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
        return "\n".join("   ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows)
