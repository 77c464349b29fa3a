"""A first start of `k3p server` with its containerd node says nothing at warning level or above
when nothing is wrong, and its start-up ends with the "k3p is ready" line."""

from __future__ import annotations

import json
import time

from containerd_host import REAL_NODE, HostNode

from k3p.testing import wait_for

pytestmark = REAL_NODE


def records(text: str) -> list[dict]:
    found = []
    for line in text.splitlines():
        try:
            found.append(json.loads(line))
        except ValueError:  # a library writing to stderr directly (grpc's C core) counts as loud
            found.append({"level": "raw", "event": line})
    return found


def test_first_start_with_a_node_is_quiet_and_ends_ready() -> None:
    with HostNode("k3pq") as node:
        server = node.server
        wait_for(lambda: "k3p is ready" in server.logs(), 60, what="the ready line")
        time.sleep(10)  # the node's first reconciles after start-up (taints, pod network, proxy rules)
        logged = records(server.logs())
    loud = [r for r in logged if r.get("level") not in ("info", "debug")]
    assert loud == [], loud
    ready = [i for i, r in enumerate(logged) if r.get("event") == "k3p is ready"]
    assert len(ready) == 1, ready
    last_component = max(i for i, r in enumerate(logged) if r.get("event") == "component ready")
    assert last_component < ready[0]
    line = logged[ready[0]]
    assert line["kubeconfig"] == str(server.kubeconfig) and line["node"]
