"""local-path volumes on a real node: `k3p server` with its own containerd node (root).

A claim of the default class gets a folder under ``<data-dir>/storage`` on the node, the
pod writes into it, a second pod mounting the claim read-only cannot, and deleting the
claim removes the folder and the volume (the node's agent does it, as local-path's
teardown helper does upstream).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from containerd_host import REAL_NODE
from test_node_containerd import Node

from k3p.testing import wait_for

pytestmark = REAL_NODE


@pytest.fixture(scope="module")
def node():
    with Node() as n:
        yield n


def _get(node: Node, *what: str) -> dict | None:
    got = node.kubectl("get", *what, "-o", "json")
    return json.loads(got.stdout) if got.returncode == 0 else None


def test_claim_folder_written_read_only_mount_and_removed_with_the_claim(node: Node) -> None:
    node.apply({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "notes"},
                "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "64Mi"}}}})
    volumes = [{"name": "data", "persistentVolumeClaim": {"claimName": "notes"}}]
    node.run_pod("writer", ["sh", "-c", "echo hello > /data/greeting; sleep 3600"], spec={"volumes": volumes},
                 volumeMounts=[{"name": "data", "mountPath": "/data"}])
    claim = _get(node, "pvc", "notes")
    assert claim["status"]["phase"] == "Bound"
    volume = _get(node, "pv", claim["spec"]["volumeName"])
    folder = Path(volume["spec"]["hostPath"]["path"])
    assert folder.parent == node.data / "storage"
    assert folder.name == f"pvc-{claim['metadata']['uid']}_default_notes"
    assert wait_for(lambda: (folder / "greeting").exists() and (folder / "greeting").read_text(), 30, 0.5,
                    "the pod's file on the host") == "hello\n"

    read_only = [{"name": "data", "persistentVolumeClaim": {"claimName": "notes", "readOnly": True}}]
    node.run_pod("reader", ["sleep", "3600"], spec={"volumes": read_only},
                 volumeMounts=[{"name": "data", "mountPath": "/data"}])
    assert node.exec("reader", "cat", "/data/greeting") == "hello\n"
    denied = node.kubectl("exec", "reader", "--", "touch", "/data/other")
    assert denied.returncode != 0 and "Read-only file system" in denied.stderr
    assert not (folder / "other").exists()

    for pod in ("writer", "reader"):
        got = node.kubectl("delete", "pod", pod, "--grace-period=1", "--wait=true", "--timeout=60s", timeout=70)
        assert got.returncode == 0, got.stderr
    got = node.kubectl("delete", "pvc", "notes", "--wait=true", "--timeout=60s", timeout=70)
    assert got.returncode == 0, got.stderr
    wait_for(lambda: _get(node, "pv", volume["metadata"]["name"]) is None, 60, 0.5, "the volume deleted")
    assert not folder.exists()
