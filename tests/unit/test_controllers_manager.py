"""Controller manager settings from the server config."""

from __future__ import annotations

from pathlib import Path

import pytest

from k3p.config import Config
from k3p.context import PluginContext
from k3p.durations import parse_duration
from k3p_plugins.controller_manager.manager import CONTROLLERS, ControllerManager, options_from_context


@pytest.mark.parametrize(("text", "seconds"), [("40s", 40), ("5m", 300), ("1m30s", 90), ("250ms", 0.25), (7, 7),
                                               ("2.5", 2.5)])
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["", "s", "10x", "1m5"])
def test_bad_durations(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


def test_options_from_context() -> None:
    config = Config("server", {"cluster_cidr": "10.50.0.0/16", "https_listen_port": 7443,
                               "advertise_address": "192.0.2.10", "node_monitor_grace_period": "20s",
                               "node_cidr_mask_size": "26"})
    opts = options_from_context(PluginContext(config=config, data_dir=Path("/nowhere")))
    assert (opts.cluster_cidr, opts.apiserver_address, opts.apiserver_port) == ("10.50.0.0/16", "192.0.2.10", 7443)
    assert opts.node_monitor_grace_period == 20 and opts.node_cidr_mask_size_ipv4 == 26
    assert opts.node_monitor_period == 5 and opts.root_ca_pem == ""
    # no advertise address: the node's first address, else the bind address, else loopback
    config = Config("server", {"bind_address": "0.0.0.0"})
    assert options_from_context(PluginContext(config=config, data_dir=Path("/"), node_ips=["192.0.2.7"],
                                              ca_pem="PEM")).apiserver_address == "192.0.2.7"
    assert options_from_context(PluginContext(config=config, data_dir=Path("/"), ca_pem="PEM")).root_ca_pem == "PEM"
    config = Config("server", {"bind_address": "192.0.2.9"})
    assert options_from_context(PluginContext(config=config, data_dir=Path("/"))).apiserver_address == "192.0.2.9"


def test_controller_names_and_selection() -> None:
    assert {"deployment", "replicaset", "replicationcontroller", "daemonset", "statefulset", "job", "cronjob",
            "ttl-after-finished", "garbagecollector", "serviceaccount", "root-ca-cert-publisher", "endpoint",
            "endpointslice", "kubernetes-endpoints", "nodeipam", "nodelifecycle", "taint-eviction",
            "podgc", "persistentvolume-binder", "pvc-protection", "disruption"} == set(CONTROLLERS)
    manager = ControllerManager(None, disabled={"podgc", "cronjob"})  # type: ignore[arg-type]
    assert "podgc" not in manager.controllers and "deployment" in manager.controllers
    with pytest.raises(ValueError, match="unknown controllers: nope"):
        ControllerManager(None, disabled={"nope"})  # type: ignore[arg-type]
