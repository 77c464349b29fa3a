"""A first start of `k3p server` with its containerd node says nothing at warning level or above
when nothing is wrong, and its start-up ends with the "k3p is ready" line. The README's way
of getting an image into a running node (`k3p ctr images import FILE`) works as written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from containerd_host import REAL_NODE, HostNode

import k3p_plugins.containerd.ocibuild as ocibuild
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


def k3p(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "k3p", *args], capture_output=True, text=True, env=env, timeout=60)


def test_first_start_with_a_node_is_quiet_and_ends_ready() -> None:
    with HostNode("k3pq") as node:
        server = node.server
        wait_for(lambda: "k3p is ready" in server.logs(), 60, what="the ready line")
        time.sleep(10)  # the node's first reconciles after start-up (taints, pod network, proxy rules)
        logged = records(server.logs())
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("K3P_")}, "K3P_DATA_DIR": str(node.data)}
        said = {}
        for tag, command in (("readme", ["images", "import"]), ("ctr", ["ctr", "images", "import"])):
            archive = node.tmp / f"{tag}.tar"
            ocibuild.build_busybox_image(archive, f"docker.io/library/busybox:{tag}")
            done = k3p(*command, str(archive), env=env)
            assert done.returncode == 0, done.stderr
            said[tag] = done.stdout
        assert said["readme"] == f"{node.tmp / 'readme.tar'}: docker.io/library/busybox:readme\n", said
        listed = k3p("images", "ls", env=env).stdout
        assert "readme" in listed and "ctr" in listed, listed
        bad = k3p("images", "import", str(node.tmp / "missing.tar"), env=env)
        assert bad.returncode == 1 and len(bad.stderr.splitlines()) == 1, bad.stderr
    loud = [r for r in logged if r.get("level") not in ("info", "debug")]
    assert loud == [], loud
    ready = [i for i, r in enumerate(logged) if r.get("event") == "k3p is ready"]
    assert len(ready) == 1, ready
    last_component = max(i for i, r in enumerate(logged) if r.get("event") == "component ready")
    assert last_component < ready[0]
    line = logged[ready[0]]
    assert line["kubeconfig"] == str(server.kubeconfig) and line["node"]
    # one pod range per node, given once: a second one would move the node's pod network
    assigned = [r for r in logged if r.get("event") == "pod range assigned"]
    assert [r["node"] for r in assigned] == [line["node"]], assigned
