"""A full disk under the data dir: 507 for writes, reads and deletes keep working, writes come
back once deletes have freed space, nothing acknowledged is lost, and the server restarts on
the full disk."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from k3p.testing import K3pServer

CM_URL = "/api/v1/namespaces/default/configmaps"
VALUE = "v" * (192 << 10)  # a ConfigMap of ~200 KiB: the 24 MiB disk fills after some dozens

pytestmark = pytest.mark.slow


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """(workdir, data dir) with the data dir on a 24 MiB tmpfs of its own."""
    data = tmp_path / "data"
    data.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m,mode=0700", "tmpfs", str(data)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield tmp_path, data
    finally:
        if subprocess.run(["umount", str(data)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(data)], capture_output=True)


def fill(path: Path) -> None:
    """Take every byte left on the file system of ``path``."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        chunk = b"\0" * (64 << 10)
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, chunk)
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, b"\0" * 512)
    finally:
        os.close(fd)
    with pytest.raises(OSError) as e:
        (path.parent / "probe").write_bytes(b"\0" * 4096)
    assert e.value.errno == errno.ENOSPC
    (path.parent / "probe").unlink(missing_ok=True)


def configmap(name: str) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"v": VALUE}}


def assert_full(r: httpx.Response, data: Path) -> None:
    assert r.status_code == 507, r.text[:500]
    body = r.json()
    assert body["kind"] == "Status" and body["status"] == "Failure"
    assert body["reason"] == "InsufficientStorage" and body["code"] == 507
    assert str(data) in body["message"], body["message"]


def names(http: httpx.Client) -> set[str]:
    r = http.get(CM_URL)
    r.raise_for_status()
    return {i["metadata"]["name"] for i in r.json()["items"] if i["metadata"]["name"].startswith("fill-")}


def test_full_disk_refuses_writes_keeps_deletes_and_restarts(small_disk: tuple[Path, Path]) -> None:
    workdir, data = small_disk
    server = K3pServer(workdir)
    try:
        server.start()
        with httpx.Client(base_url=server.url, verify=server.ssl_context(), timeout=30) as http:
            acked: list[str] = []
            for i in range(200):
                r = http.post(CM_URL, json=configmap(f"fill-{i:03d}"))
                if r.status_code == 507:
                    assert_full(r, data)
                    break
                assert r.status_code == 201, r.text[:500]
                acked.append(f"fill-{i:03d}")
            else:
                pytest.fail("the disk never filled")
            assert len(acked) > 10
            fill(data / "filler")

            # reads work; writes are refused with 507, small ones too
            assert names(http) == set(acked)
            assert http.get(f"{CM_URL}/{acked[0]}").json()["data"]["v"] == VALUE
            assert_full(http.post(CM_URL, json={"apiVersion": "v1", "kind": "ConfigMap",
                                                "metadata": {"name": "small"}}), data)

            # deletes work on the full disk, and free space: writes come back
            deleted = acked[: len(acked) // 2]
            for name in deleted:
                r = http.delete(f"{CM_URL}/{name}")
                assert r.status_code == 200, r.text[:500]
            kept = [n for n in acked if n not in deleted]
            deadline = time.monotonic() + 30
            while True:
                r = http.post(CM_URL, json=configmap("after-deletes"))
                if r.status_code == 201:
                    break
                assert_full(r, data)
                assert time.monotonic() < deadline, "writes never came back after deletes"
                time.sleep(0.5)
            assert names(http) == set(kept)
        server.stop()

        # fill the disk to the last byte again, then restart on it
        fill(data / "filler2")
        server.start(timeout=90)
        assert "Traceback" not in server.logs()
        with httpx.Client(base_url=server.url, verify=server.ssl_context(), timeout=30) as http:
            assert names(http) == set(kept)
            assert http.get(f"{CM_URL}/after-deletes").json()["data"]["v"] == VALUE
            assert_full(http.post(CM_URL, json=configmap("on-full-restart")), data)
            assert http.delete(f"{CM_URL}/{kept[0]}").status_code == 200
    finally:
        server.stop()
