"""The containerd plugin's generated files and hooks (no root, no containerd: fast)."""

from __future__ import annotations

import json
import tarfile
import tomllib
from pathlib import Path

import pytest

import k3p_plugins.containerd.ocibuild as ocibuild
from k3p.config import Config, OptionSchema
from k3p.context import PluginContext
from k3p.protocols.runtime import Runtime
from k3p_plugins import containerd as plugin
from k3p_plugins.containerd.config import ContainerdSettings, write_config
from k3p_plugins.containerd.images import ImportMarker
from k3p_plugins.containerd.paths import ContainerdPaths
from k3p_plugins.containerd.runtime import socket_path


def _config(tmp_path: Path, **values) -> Config:
    base = {"data_dir": str(tmp_path), "pause_image": plugin.DEFAULT_PAUSE_IMAGE, "snapshotter": "overlayfs",
            "container_runtime_endpoint": "", "simulate": 0}
    return Config(command="agent", values={**base, **values})


def test_generated_config_has_what_these_hosts_need(tmp_path: Path):
    paths = ContainerdPaths.from_data_dir(tmp_path)
    write_config(ContainerdSettings(paths=paths, sandbox_image="localhost/k3p/pause:3.6", cni_bin_dir="/usr/lib/cni"))
    conf = tomllib.loads(paths.config_file.read_text())
    assert conf["version"] == 2
    assert conf["root"] == str(tmp_path / "agent/containerd/root")
    assert conf["state"] == str(tmp_path / "agent/containerd/state")
    assert conf["grpc"]["address"] == str(tmp_path / "agent/containerd/containerd.sock")
    cri = conf["plugins"]["io.containerd.grpc.v1.cri"]
    assert cri["sandbox_image"] == "localhost/k3p/pause:3.6"
    assert cri["restrict_oom_score_adj"] is True
    runc = cri["containerd"]["runtimes"]["runc"]
    assert runc["runtime_type"] == "io.containerd.runc.v2"
    assert runc["options"] == {"SystemdCgroup": False, "Root": str(tmp_path / "agent/containerd/runc")}
    assert cri["cni"] == {"bin_dir": "/usr/lib/cni", "conf_dir": str(tmp_path / "agent/etc/cni/net.d")}
    assert paths.images_dir.is_dir()


def test_template_replaces_the_generated_config(tmp_path: Path):
    paths = ContainerdPaths.from_data_dir(tmp_path)
    paths.config_dir.mkdir(parents=True)
    paths.config_template.write_text('{{ template "base" . }}\n[debug]\n  level = "debug"\n')
    write_config(ContainerdSettings(paths=paths, sandbox_image="x/pause:1"))
    conf = tomllib.loads(paths.config_file.read_text())
    assert conf["debug"]["level"] == "debug"
    assert conf["plugins"]["io.containerd.grpc.v1.cri"]["sandbox_image"] == "x/pause:1"


@pytest.mark.parametrize(("name", "full"), [
    ("busybox", "docker.io/library/busybox:latest"),
    ("rancher/pause:3.6", "docker.io/rancher/pause:3.6"),
    ("localhost/k3p/pause:3.6", "localhost/k3p/pause:3.6"),
    ("registry:5000/app", "registry:5000/app:latest"),
    ("quay.io/a/b@sha256:00", "quay.io/a/b@sha256:00"),
])
def test_normalize_image_name(name: str, full: str):
    assert ocibuild.normalize_image_name(name) == full


def test_oci_archive_layout(tmp_path: Path):
    layer = ocibuild.Layer().add_file("/etc/motd", b"hi\n").add_symlink("/bin/sh", "/bin/busybox")
    built = ocibuild.write_oci_archive(tmp_path / "img.tar", ["app:1", "app:latest"], [layer],
                                       ocibuild.ImageConfig(entrypoint=["/bin/sh"]))
    assert built.names == ["docker.io/library/app:1", "docker.io/library/app:latest"]
    with tarfile.open(built.path) as tar:
        index = json.load(tar.extractfile("index.json"))
        assert json.load(tar.extractfile("oci-layout")) == {"imageLayoutVersion": "1.0.0"}
        names = [m["annotations"][ocibuild.ANNOTATION_IMAGE_NAME] for m in index["manifests"]]
        assert names == built.names
        manifest = json.load(tar.extractfile(f"blobs/sha256/{built.manifest_digest[7:]}"))
        config = json.load(tar.extractfile(f"blobs/sha256/{built.config_digest[7:]}"))
        layer_digest = manifest["layers"][0]["digest"]
        assert config["rootfs"]["diff_ids"] == [layer_digest]  # uncompressed: digest == diff ID
        assert config["config"]["Entrypoint"] == ["/bin/sh"]
        with tarfile.open(fileobj=tar.extractfile(f"blobs/sha256/{layer_digest[7:]}")) as inner:
            assert inner.getnames() == ["etc", "etc/motd", "bin", "bin/sh"]
    again = ocibuild.write_oci_archive(tmp_path / "again.tar", ["app:1", "app:latest"],
                                       [ocibuild.Layer().add_file("/etc/motd", b"hi\n")
                                        .add_symlink("/bin/sh", "/bin/busybox")],
                                       ocibuild.ImageConfig(entrypoint=["/bin/sh"]))
    assert again.manifest_digest == built.manifest_digest  # reproducible


def test_import_marker_notices_changed_files(tmp_path: Path):
    archive = tmp_path / "a.tar"
    archive.write_bytes(b"x")
    marker = ImportMarker(tmp_path / "m.json")
    assert marker.names_if_unchanged(archive) is None
    marker.record(archive, ["docker.io/library/a:1"])
    assert ImportMarker(tmp_path / "m.json").names_if_unchanged(archive) == ["docker.io/library/a:1"]
    archive.write_bytes(b"xy")
    assert ImportMarker(tmp_path / "m.json").names_if_unchanged(archive) is None


def test_options_and_runtime_hook(tmp_path: Path):
    schema = OptionSchema()
    plugin.k3p_add_options(schema)
    assert {o.name for o in schema.options("agent")} >= {"container-runtime-endpoint", "pause-image"}
    rt = plugin.k3p_runtime(_config(tmp_path))
    assert isinstance(rt, Runtime)
    assert rt.socket == str(tmp_path / "agent/containerd/containerd.sock")
    rt = plugin.k3p_runtime(_config(tmp_path, container_runtime_endpoint="unix:///run/other.sock"))
    assert rt.socket == "/run/other.sock"
    assert plugin.k3p_runtime(_config(tmp_path, simulate=3)) is None
    ctx = PluginContext(config=_config(tmp_path, container_runtime_endpoint="/run/other.sock"), data_dir=tmp_path)
    assert plugin.k3p_agent_components(ctx) == []
    ctx.config = _config(tmp_path)
    [component] = plugin.k3p_agent_components(ctx)
    assert component.name == "containerd"
    assert component.argv[1:] == ["--config", str(tmp_path / "agent/etc/containerd/config.toml")]
    assert (tmp_path / "agent/etc/containerd/config.toml").exists()
    assert socket_path("/a/b.sock") == "/a/b.sock"
    with pytest.raises(ValueError):
        socket_path("tcp://127.0.0.1:1")
