"""Simulated (hollow) nodes: a runtime that runs nothing, for tests and scale benchmarks.

Claims the runtime when ``k3p agent --simulate N`` runs N simulated nodes, or when a
real node is asked to simulate with ``--simulate-runtime``. Each call of the hook makes
a new runtime, so each simulated node has its own.
"""

from __future__ import annotations

from typing import Any

from k3p.config import ConfigError
from k3p.hookspecs import hookimpl
from k3p_plugins.simulated.runtime import DEFAULT_CAPACITY, SimulatedRuntime

__all__ = ["SimulatedRuntime", "k3p_add_options", "k3p_runtime", "parse_capacity"]


def parse_capacity(text: str) -> dict[str, str]:
    """``cpu=4,memory=8Gi`` over the default capacity of a simulated node."""
    capacity = dict(DEFAULT_CAPACITY)
    for part in (text or "").split(","):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ValueError(f"invalid capacity entry {part!r}: expected RESOURCE=QUANTITY")
        capacity[key.strip()] = value.strip()
    return capacity


@hookimpl
def k3p_add_options(schema: Any) -> None:
    schema.add("simulate-runtime", type=bool, default=False, commands=("agent", "server"),
               help="Run this node's pods in a simulated runtime that starts no containers (tests, benchmarks)")
    schema.add("simulate-capacity", default="", commands=("agent", "server"), metavar="RESOURCE=QTY,...",
               help="Capacity simulated nodes report (default cpu=4,memory=8Gi,pods=110,ephemeral-storage=100Gi)")


@hookimpl
def k3p_runtime(config: Any) -> SimulatedRuntime | None:
    """A new SimulatedRuntime when simulation is asked for; None otherwise (leave it to containerd)."""
    if not (config.get("simulate_runtime") or (config.get("simulate") or 0) > 0):
        return None
    try:
        capacity = parse_capacity(config.get("simulate_capacity") or "")
    except ValueError as e:
        raise ConfigError(f"invalid value for simulate-capacity: {e}") from None
    return SimulatedRuntime(capacity=capacity)
