"""The listener's connection accounting, the in-flight pools, and their options."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from k3p import config as cfg
from k3p.apiserver.connections import (
    RESERVED_HANDSHAKES_PER_CLIENT,
    ConnectionGate,
    ConnectionLimits,
    client_address,
)
from k3p.apiserver.inflight import MaxInFlight, classify, exempt
from k3p.apiserver.request_info import UserInfo


def server_config(tmp_path: Path, text: str, flags: dict | None = None) -> cfg.Config:
    schema = cfg.OptionSchema()
    cfg.add_core_options(schema)
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return cfg.resolve("server", schema, flags or {}, cfg.read_file_layers(cfg.config_files(path, True)), {})


def test_limits_come_from_config_yaml_and_flags(tmp_path: Path) -> None:
    config = server_config(tmp_path, "max-connections: 100\nmax-connections-per-client: 7\n"
                                     "request-header-timeout: 1m30s\nidle-connection-timeout: 500ms\n"
                                     "max-request-header-bytes: 4096\nmax-requests-inflight: 9\n",
                           {"max_mutating_requests_inflight": 3})
    assert ConnectionLimits.from_config(config) == ConnectionLimits(100, 7, 90.0, 0.5, 4096)
    inflight = MaxInFlight.from_config(None, config)
    assert inflight.limits == {"readonly": 9, "mutating": 3}


def test_defaults(tmp_path: Path) -> None:
    config = server_config(tmp_path, "")
    limits = ConnectionLimits.from_config(config)
    assert (limits.header_timeout, limits.idle_timeout) == (32.0, 90.0)  # kube-apiserver's
    assert MaxInFlight.from_config(None, config).limits == {"readonly": 400, "mutating": 200}


@pytest.mark.parametrize("text", ["request-header-timeout: soon\n", "idle-connection-timeout: 0s\n",
                                  "max-connections: -1\n", "max-requests-inflight: -5\n"])
def test_bad_values_are_config_errors(tmp_path: Path, text: str) -> None:
    config = server_config(tmp_path, text)
    with pytest.raises(cfg.ConfigError, match="invalid value for"):
        ConnectionLimits.from_config(config)
        MaxInFlight.from_config(None, config)


def test_open_files_bound_the_connections() -> None:
    assert ConnectionLimits(max_connections=2048).within_open_files(1 << 20).max_connections == 2048
    lowered = ConnectionLimits(max_connections=2048).within_open_files(1024)
    assert 0 < lowered.max_connections < 1024 - 64
    assert ConnectionLimits(max_connections=0).within_open_files(4096).max_connections < 4096


def gate(max_connections: int = 16, per_client: int = 4) -> ConnectionGate:
    return ConnectionGate(ConnectionLimits(max_connections=max_connections, max_per_client=per_client),
                          ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))


def test_per_client_cap_counts_connections_without_a_certificate() -> None:
    g = gate()
    slots = [g.admit("10.0.0.1") for _ in range(4)]
    assert all(slots)
    assert g.admit("10.0.0.1") is None
    assert g.admit("10.0.0.2") is not None
    # a client that shows its certificate no longer counts against its address
    assert g.established(slots[0], certificate=True)
    assert g.admit("10.0.0.1") is not None
    # releasing is idempotent and frees the address
    g.release(slots[1])
    g.release(slots[1])
    assert g.admit("10.0.0.1") is not None
    assert g.uncertified["10.0.0.1"] == 4


def fill_without_certificates(g: ConnectionGate, count: int) -> None:
    for i in range(count):
        slot = g.admit(f"10.0.1.{i}")
        assert slot is not None and not slot.reserved
        assert g.established(slot, certificate=False)


def test_total_cap_and_the_share_kept_for_certificates() -> None:
    g = gate(max_connections=16, per_client=100)
    # twelve (16 minus a quarter) without a certificate fill the general share...
    fill_without_certificates(g, 12)
    # ...after that a connection is admitted only into the reserve: without a certificate it is closed
    slot = g.admit("10.0.2.1")
    assert slot is not None and slot.reserved
    assert not g.established(slot, certificate=False)
    assert g.total == 12
    for i in range(4):
        slot = g.admit(f"10.0.2.{i}")
        assert slot is not None and g.established(slot, certificate=True)
    assert g.certified == 4
    # and nobody gets past the total
    assert g.total == 16 and g.admit("10.0.5.1") is None


def test_one_address_cannot_hold_the_reserve() -> None:
    g = gate(max_connections=40, per_client=100)
    fill_without_certificates(g, 30)
    held = [g.admit("10.0.3.1") for _ in range(RESERVED_HANDSHAKES_PER_CLIENT)]
    assert all(s is not None and s.reserved for s in held)
    assert g.admit("10.0.3.1") is None
    assert g.admit("10.0.3.2") is not None
    for s in held:
        g.release(s)
    assert g.reserved_handshakes == {"10.0.3.2": 1}


def test_zero_turns_the_caps_off() -> None:
    g = gate(max_connections=0, per_client=0)
    slots = [g.admit("10.0.0.1") for _ in range(1000)]
    assert all(s is not None and not s.reserved for s in slots)


def test_client_address() -> None:
    assert client_address(("::ffff:10.1.2.3", 5, 0, 0)) == "10.1.2.3"
    assert client_address(("10.1.2.3", 5)) == "10.1.2.3"
    assert client_address(("2001:db8::1", 5, 0, 0)) == "2001:db8::1"
    assert client_address(None) == ""


@pytest.mark.parametrize(("method", "path", "query", "pool"), [
    ("GET", "/api/v1/namespaces/default/pods", b"", "readonly"),
    ("GET", "/api/v1/namespaces/default/pods/x", b"", "readonly"),
    ("GET", "/apis", b"", "readonly"),
    ("POST", "/api/v1/namespaces/default/pods", b"", "mutating"),
    ("DELETE", "/api/v1/namespaces/default/pods", b"", "mutating"),
    ("POST", "/v1-k3p/node-credentials", b"", "mutating"),
    ("GET", "/api/v1/namespaces/default/pods", b"watch=1", None),
    ("GET", "/api/v1/namespaces/default/pods", b"watch=false", "readonly"),
    ("GET", "/api/v1/watch/namespaces/default/pods", b"", None),
    ("GET", "/api/v1/namespaces/default/pods/x/log", b"", None),
    ("POST", "/api/v1/namespaces/default/pods/x/exec", b"command=sh", None),
    ("POST", "/api/v1/namespaces/default/pods/x/attach", b"", None),
    ("POST", "/api/v1/namespaces/default/pods/x/portforward", b"", None),
    ("GET", "/api/v1/nodes/n1/proxy/metrics", b"", None),
    ("GET", "/readyz", b"", None),
    ("GET", "/livez/ping", b"", None),
])
def test_pools(method: str, path: str, query: bytes, pool: str | None) -> None:
    assert classify(method, path, query) == pool


def test_exempt_users() -> None:
    assert exempt(UserInfo("admin", ("system:masters", "system:authenticated")))
    assert exempt(UserInfo("system:kube-controller-manager", ("system:authenticated",)))
    assert exempt(UserInfo("system:kube-scheduler", ("system:authenticated",)))
    assert not exempt(UserInfo("system:node:n1", ("system:nodes", "system:authenticated")))
    assert not exempt(UserInfo("system:k3p:coredns", ("system:authenticated",)))
    assert not exempt(None)
