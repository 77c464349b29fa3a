"""Plugin discovery, hook validation, --disable and requirements."""

from __future__ import annotations

import json
import types

import pytest

from k3p import hookimpl
from k3p.plugins import PluginError, PluginManager


def plugin(name: str, **hooks: object) -> types.ModuleType:
    mod = types.ModuleType(name)
    for key, value in hooks.items():
        setattr(mod, key, value)
    return mod


@hookimpl
def _datastore(endpoint, config):
    return "store-for-" + endpoint


@hookimpl
def _bad_signature(endpoint, config, surprise):
    return None


@hookimpl
def _unknown_hook(ctx):
    return None


def test_plugin_in_isolation_runs_its_hook(k3p_plugin_manager) -> None:
    pm = k3p_plugin_manager(good=plugin("good", k3p_datastore=_datastore))
    assert pm.hook.k3p_datastore(endpoint="x://", config=None) == "store-for-x://"
    assert pm.infos["good"].hooks == ["k3p_datastore"]


def test_unknown_hook_is_rejected_naming_plugin_and_hook(k3p_plugin_manager) -> None:
    pm = k3p_plugin_manager(odd=plugin("odd", k3p_frobnicate=_unknown_hook))
    info = pm.infos["odd"]
    assert not info.enabled
    assert "odd" in info.reason and "k3p_frobnicate" in info.reason
    with pytest.raises(PluginError, match=r"plugin odd rejected.*k3p_frobnicate.*--disable odd"):
        pm.check_runnable()


def test_wrong_signature_is_rejected_naming_plugin_and_hook(k3p_plugin_manager) -> None:
    pm = k3p_plugin_manager(sig=plugin("sig", k3p_datastore=_bad_signature))
    info = pm.infos["sig"]
    assert not info.enabled
    assert "sig" in info.reason and "k3p_datastore" in info.reason and "surprise" in info.reason


def test_disable_unknown_name_lists_the_available_plugins() -> None:
    with pytest.raises(PluginError) as e:
        PluginManager(disabled=["nope"], group="k3p.plugins.isolated", extra={"a": plugin("a"), "b": plugin("b")})
    assert "nope" in str(e.value) and "available: a, b" in str(e.value)


def test_disabled_plugin_is_not_registered_and_says_why() -> None:
    pm = PluginManager(
        disabled=["a"], disabled_by={"a": "flag --disable"}, group="k3p.plugins.isolated",
        extra={"a": plugin("a", k3p_datastore=_datastore)},
    )
    assert pm.hook.k3p_datastore(endpoint="", config=None) is None
    rows = json.loads(pm.as_json())
    assert rows[0]["state"] == "disabled" and rows[0]["reason"] == "disabled by flag --disable"


def test_disabling_a_required_plugin_is_an_error_naming_both() -> None:
    needs = plugin("needs", K3P_REQUIRES=("base",))
    pm = PluginManager(disabled=["base"], group="k3p.plugins.isolated", extra={"needs": needs, "base": plugin("base")})
    with pytest.raises(PluginError, match="plugin needs requires plugin base, which is disabled"):
        pm.check_runnable()


def test_missing_required_plugin_is_an_error() -> None:
    pm = PluginManager(group="k3p.plugins.isolated", extra={"needs": plugin("needs", K3P_REQUIRES=("ghost",))})
    with pytest.raises(PluginError, match="requires plugin ghost, which is not installed"):
        pm.check_runnable()


def test_bundled_plugins_are_discovered_through_entry_points() -> None:
    pm = PluginManager()
    info = pm.infos["datastore_sql"]
    assert info.distribution == "k3p-datastore-sql" and info.enabled
    assert "k3p_datastore" in info.hooks
