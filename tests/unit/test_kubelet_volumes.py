"""Pod volumes on disk: the atomic writer, configMap/secret/downwardAPI/projected, hostPath, mounts."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest

from k3p.agent.volumes import VolumeError, VolumeManager, write_atomic


class FakeClient:
    """Answers TokenRequests with numbered tokens."""

    def __init__(self) -> None:
        self.requests: list[tuple] = []

    async def create_subresource(self, res, name, sub, body, namespace):
        self.requests.append((res.plural, name, sub, body, namespace))
        return {"status": {"token": f"token-{len(self.requests)}", "expirationTimestamp": "2099-01-01T00:00:00Z"}}


def pod(volumes, **extra) -> dict:
    return {"metadata": {"name": "web", "namespace": "shop", "uid": "uid-1", "labels": {"app": "web"}},
            "spec": {"serviceAccountName": "builder", "volumes": volumes,
                     "containers": [{"name": "app", "resources": {"limits": {"memory": "32Mi"}}}], **extra}}


def read_tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): p.read_text() for p in sorted(root.iterdir())
            if not p.name.startswith("..") and p.is_file()}


def test_atomic_writer_swaps_content(tmp_path) -> None:
    target = tmp_path / "vol"
    assert write_atomic(target, {"a": (b"1", 0o644), "dir/b": (b"2", 0o600)})
    assert (target / "a").read_text() == "1" and (target / "dir" / "b").read_text() == "2"
    assert (target / "a").is_symlink() and os.readlink(target / "a") == "..data/a"
    assert stat.S_IMODE((target / "dir" / "b").stat().st_mode) == 0o600
    first = os.readlink(target / "..data")
    assert not write_atomic(target, {"a": (b"1", 0o644), "dir/b": (b"2", 0o600)})  # unchanged: nothing written
    assert write_atomic(target, {"a": (b"new", 0o644)})
    assert (target / "a").read_text() == "new"
    assert not (target / "dir").exists()  # removed key disappears
    assert not (target / first).exists()  # the old generation is gone
    assert [p.name for p in target.iterdir() if p.name.startswith("..") and p.is_dir() and not p.is_symlink()] \
        == [os.readlink(target / "..data")]


async def test_configmap_secret_downward_and_empty_dir(tmp_path) -> None:
    vm = VolumeManager(FakeClient(), tmp_path)
    p = pod([
        {"name": "cfg", "configMap": {"name": "settings",
                                      "items": [{"key": "a", "path": "conf/a.txt", "mode": 0o600}]}},
        {"name": "all", "configMap": {"name": "settings", "defaultMode": 0o640}},
        {"name": "creds", "secret": {"secretName": "db"}},
        {"name": "info", "downwardAPI": {"items": [
            {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
            {"path": "mem", "resourceFieldRef": {"containerName": "app", "resource": "limits.memory",
                                                 "divisor": "1Mi"}}]}},
        {"name": "scratch", "emptyDir": {}},
    ])
    configmaps = {"settings": {"data": {"a": "alpha", "b": "beta"},
                               "binaryData": {"c": base64.b64encode(b"\x00").decode()}}}
    secrets = {"db": {"data": {"password": base64.b64encode(b"pw").decode()}}}
    paths = await vm.setup(p, configmaps, secrets)
    base = tmp_path / "uid-1" / "volumes"
    assert paths["cfg"] == str(base / "kubernetes.io~configmap" / "cfg")
    assert (Path(paths["cfg"]) / "conf" / "a.txt").read_text() == "alpha"
    assert not (Path(paths["cfg"]) / "b").exists()
    assert stat.S_IMODE((Path(paths["cfg"]) / "conf" / "a.txt").stat().st_mode) == 0o600
    assert read_tree(Path(paths["all"])) == {"a": "alpha", "b": "beta", "c": "\x00"}
    assert stat.S_IMODE((Path(paths["all"]) / "a").stat().st_mode) == 0o640
    assert paths["creds"] == str(base / "kubernetes.io~secret" / "creds")
    assert (Path(paths["creds"]) / "password").read_text() == "pw"
    assert read_tree(Path(paths["info"])) == {"labels": 'app="web"', "mem": "32"}
    assert Path(paths["scratch"]).is_dir() and stat.S_IMODE(Path(paths["scratch"]).stat().st_mode) == 0o777

    configmaps["settings"]["data"]["b"] = "changed"
    await vm.setup(p, configmaps, secrets)  # a refresh rewrites what changed
    assert (Path(paths["all"]) / "b").read_text() == "changed"

    await vm.cleanup("uid-1")
    assert not (tmp_path / "uid-1").exists()


async def test_missing_sources_fail_unless_optional(tmp_path) -> None:
    vm = VolumeManager(FakeClient(), tmp_path)
    with pytest.raises(VolumeError, match=r'MountVolume.SetUp failed for volume "cfg" : configmap "nope" not found'):
        await vm.setup(pod([{"name": "cfg", "configMap": {"name": "nope"}}]), {"nope": None}, {})
    paths = await vm.setup(pod([{"name": "cfg", "configMap": {"name": "nope", "optional": True}}]), {"nope": None}, {})
    assert read_tree(Path(paths["cfg"])) == {}
    with pytest.raises(VolumeError, match="non-existent config key: zz"):
        await vm.setup(pod([{"name": "cfg", "configMap": {"name": "c", "items": [{"key": "zz", "path": "z"}]}}]),
                       {"c": {"data": {}}}, {})
    with pytest.raises(VolumeError, match="not supported"):
        await vm.setup(pod([{"name": "x", "nfs": {"server": "s", "path": "/"}}]), {}, {})


async def test_projected_service_account_token(tmp_path) -> None:
    client = FakeClient()
    vm = VolumeManager(client, tmp_path)
    p = pod([{"name": "kube-api-access", "projected": {"defaultMode": 0o644, "sources": [
        {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607, "audience": "api"}},
        {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
        {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}]}},
    ]}}])
    paths = await vm.setup(p, {"kube-root-ca.crt": {"data": {"ca.crt": "PEM"}}}, {})
    assert read_tree(Path(paths["kube-api-access"])) == {"token": "token-1", "ca.crt": "PEM", "namespace": "shop"}
    (res, name, sub, body, ns) = client.requests[0]
    assert (res, name, sub, ns) == ("serviceaccounts", "builder", "token", "shop")
    assert body["spec"]["expirationSeconds"] == 3607 and body["spec"]["audiences"] == ["api"]
    assert body["spec"]["boundObjectRef"] == {"apiVersion": "v1", "kind": "Pod", "name": "web", "uid": "uid-1"}
    await vm.setup(p, {"kube-root-ca.crt": {"data": {"ca.crt": "PEM"}}}, {})
    assert len(client.requests) == 1  # the token is reused until 80% of its life has passed


async def test_host_path_types(tmp_path) -> None:
    vm = VolumeManager(FakeClient(), tmp_path / "pods")
    made = tmp_path / "made" / "deep"
    paths = await vm.setup(pod([{"name": "d", "hostPath": {"path": str(made), "type": "DirectoryOrCreate"}},
                                {"name": "f", "hostPath": {"path": str(tmp_path / "f.txt"), "type": "FileOrCreate"}}]),
                           {}, {})
    assert made.is_dir() and (tmp_path / "f.txt").is_file() and paths["d"] == str(made)
    with pytest.raises(VolumeError, match="is not a directory"):
        await vm.setup(pod([{"name": "d", "hostPath": {"path": str(tmp_path / "f.txt"), "type": "Directory"}}]), {}, {})
    simulated = VolumeManager(FakeClient(), tmp_path / "pods", host_paths=False)
    ghost = tmp_path / "never-created"
    await simulated.setup(pod([{"name": "d", "hostPath": {"path": str(ghost), "type": "DirectoryOrCreate"}}]), {}, {})
    assert not ghost.exists()


def test_mounts(tmp_path) -> None:
    vm = VolumeManager(FakeClient(), tmp_path)
    p = pod([{"name": "cfg", "configMap": {"name": "c"}}, {"name": "data", "emptyDir": {}}])
    data = tmp_path / "data"
    data.mkdir()
    container = {"name": "app", "terminationMessagePath": "/dev/termination-log", "volumeMounts": [
        {"name": "cfg", "mountPath": "/etc/cfg"},
        {"name": "data", "mountPath": "/data", "subPathExpr": "$(POD)/logs"},
    ]}
    mounts = vm.mounts(p, container, {"cfg": "/v/cfg", "data": str(data)}, {"POD": "web"}, etc_hosts="/p/etc-hosts",
                       termination_file="/p/term")
    got = [(m.container_path, m.host_path, m.readonly) for m in mounts]
    assert got == [("/etc/cfg", "/v/cfg", True), ("/data", str(data / "web" / "logs"), False),
                   ("/etc/hosts", "/p/etc-hosts", False), ("/dev/termination-log", "/p/term", False)]
    assert (data / "web" / "logs").is_dir()
    with pytest.raises(VolumeError, match="relative path"):
        vm.mounts(p, {"name": "app", "volumeMounts": [{"name": "data", "mountPath": "/x", "subPath": "../up"}]},
                  {"data": str(data)})


def test_etc_hosts_and_termination_message(tmp_path) -> None:
    vm = VolumeManager(FakeClient(), tmp_path)
    p = pod([], hostname="db-0", subdomain="db", hostAliases=[{"ip": "10.0.0.1", "hostnames": ["a", "b"]}])
    path = Path(vm.write_etc_hosts(p, ["10.42.0.5"], "cluster.local"))
    text = path.read_text()
    assert "10.42.0.5\tdb-0.db.shop.svc.cluster.local\tdb-0" in text
    assert "127.0.0.1\tlocalhost" in text and "10.0.0.1\ta\tb" in text
    term = Path(vm.termination_message_file("uid-1", "app", 2))
    term.write_text("bye")
    assert vm.read_termination_message("uid-1", "app", 2) == "bye"
    assert vm.read_termination_message("uid-1", "app", 3) == ""
