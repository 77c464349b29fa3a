"""Build small OCI image archives from local files, with no registry and no image builder.

No registry is reachable on many nodes (the airgap model), yet a node needs at least a
pause image, and tests need something to run. This module writes an OCI image layout as
one tar file (``oci-layout``, ``index.json``, ``blobs/sha256/...``) that ``ctr images
import`` and other OCI tools accept. Layers are uncompressed tars, so a layer's digest is
also its diff ID. Every timestamp is fixed, so the same inputs give the same digests: a
rebuilt image is recognised as the one already imported.

A statically linked busybox makes a useful base of about 2 MB: ``sh``, ``sleep``,
``httpd``, ``wget``, ``nc`` and the other applets.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar"
#: the index annotation containerd's importer takes the image name from
ANNOTATION_IMAGE_NAME = "io.containerd.image.name"
ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_BUSYBOX = "/bin/busybox"
#: what a pause process does: nothing, for as long as a signed 32-bit number of seconds lasts
PAUSE_ENTRYPOINT = ("/bin/sleep", "2147483647")

_EPOCH = "1970-01-01T00:00:00Z"
_GOARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64", "armv7l": "arm",
           "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64"}


def host_architecture() -> str:
    """The host's architecture in OCI (Go) terms, e.g. "amd64"."""
    machine = platform.machine().lower()
    return _GOARCH.get(machine, machine)


def normalize_image_name(name: str) -> str:
    """The fully qualified form container runtimes use: ``busybox`` -> ``docker.io/library/busybox:latest``."""
    if "/" in name:
        first, rest = name.split("/", 1)
        if "." not in first and ":" not in first and first != "localhost":
            first, rest = "docker.io", name
    else:
        first, rest = "docker.io", name
    if first == "docker.io" and "/" not in rest:
        rest = "library/" + rest
    last = rest.rsplit("/", 1)[-1]
    if "@" not in last and ":" not in last:
        rest += ":latest"
    return f"{first}/{rest}"


class Layer:
    """An uncompressed layer tar assembled in memory, with fixed owners and timestamps."""

    def __init__(self) -> None:
        self._buf = io.BytesIO()
        self._tar = tarfile.open(fileobj=self._buf, mode="w", format=tarfile.PAX_FORMAT)
        self._seen: set[str] = set()
        self._data: bytes | None = None

    def _info(self, path: str, kind: bytes, mode: int) -> tarfile.TarInfo | None:
        name = path.strip("/")
        if not name or name in self._seen:
            return None
        if self._data is not None:
            raise ValueError("the layer is already finished")
        # a layer must hold a path's parents before the path itself
        parent = os.path.dirname(name)
        if parent and parent not in self._seen:
            self.add_dir(parent)
        self._seen.add(name)
        info = tarfile.TarInfo(name)
        info.type = kind
        info.mode = mode
        info.mtime = 0
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        return info

    def add_dir(self, path: str, mode: int = 0o755) -> Layer:
        info = self._info(path, tarfile.DIRTYPE, mode)
        if info is not None:
            self._tar.addfile(info)
        return self

    def add_file(self, path: str, data: bytes, mode: int = 0o644) -> Layer:
        info = self._info(path, tarfile.REGTYPE, mode)
        if info is not None:
            info.size = len(data)
            self._tar.addfile(info, io.BytesIO(data))
        return self

    def add_host_file(self, path: str, source: str | Path, mode: int | None = None) -> Layer:
        """Copy a file of this machine into the layer (its mode too, unless given)."""
        src = Path(source)
        return self.add_file(path, src.read_bytes(), src.stat().st_mode & 0o7777 if mode is None else mode)

    def add_symlink(self, path: str, target: str) -> Layer:
        info = self._info(path, tarfile.SYMTYPE, 0o777)
        if info is not None:
            info.linkname = target
            self._tar.addfile(info)
        return self

    def tar_bytes(self) -> bytes:
        """The finished tar (nothing may be added afterwards)."""
        if self._data is None:
            self._tar.close()
            self._data = self._buf.getvalue()
        return self._data


@dataclass
class ImageConfig:
    """The runtime part of an image config (what ``docker inspect`` shows under Config)."""

    entrypoint: list[str] | None = None
    cmd: list[str] | None = None
    env: list[str] = field(default_factory=lambda: [f"PATH={DEFAULT_PATH}"])
    working_dir: str = ""
    user: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    stop_signal: str = ""

    def to_json(self) -> dict:
        out: dict = {"Env": list(self.env)}
        if self.entrypoint is not None:
            out["Entrypoint"] = list(self.entrypoint)
        if self.cmd is not None:
            out["Cmd"] = list(self.cmd)
        if self.working_dir:
            out["WorkingDir"] = self.working_dir
        if self.user:
            out["User"] = self.user
        if self.labels:
            out["Labels"] = dict(self.labels)
        if self.stop_signal:
            out["StopSignal"] = self.stop_signal
        return out


@dataclass
class BuiltImage:
    """What ``write_oci_archive`` wrote: the archive, the names it carries and its digests."""

    path: Path
    names: list[str]
    manifest_digest: str
    #: the image ID a container runtime shows (the config's digest)
    config_digest: str


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _canonical(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def write_oci_archive(
    dest: str | Path,
    names: Sequence[str],
    layers: Sequence[Layer | bytes],
    config: ImageConfig | None = None,
    *,
    architecture: str | None = None,
) -> BuiltImage:
    """Write an OCI image layout tar to ``dest`` holding one image under each of ``names``.

    ``layers`` are uncompressed tars, bottom first. The file appears atomically (written
    beside ``dest``, then renamed), so a watcher never imports half an archive.
    """
    if not names:
        raise ValueError("an image needs at least one name")
    config = config or ImageConfig()
    blobs: dict[str, bytes] = {}
    layer_descs = []
    diff_ids = []
    for layer in layers:
        data = layer.tar_bytes() if isinstance(layer, Layer) else layer
        digest = _digest(data)
        blobs[digest] = data
        diff_ids.append(digest)
        layer_descs.append({"mediaType": MEDIA_LAYER, "digest": digest, "size": len(data)})
    config_blob = _canonical({
        "architecture": architecture or host_architecture(),
        "os": "linux",
        "created": _EPOCH,
        "config": config.to_json(),
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created": _EPOCH, "created_by": "k3p ocibuild"} for _ in diff_ids],
    })
    config_digest = _digest(config_blob)
    blobs[config_digest] = config_blob
    manifest_blob = _canonical({
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": {"mediaType": MEDIA_CONFIG, "digest": config_digest, "size": len(config_blob)},
        "layers": layer_descs,
    })
    manifest_digest = _digest(manifest_blob)
    blobs[manifest_digest] = manifest_blob
    full_names = [normalize_image_name(n) for n in names]
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {
                "mediaType": MEDIA_MANIFEST,
                "digest": manifest_digest,
                "size": len(manifest_blob),
                "annotations": {ANNOTATION_IMAGE_NAME: name, ANNOTATION_REF_NAME: name.rsplit(":", 1)[-1]},
            }
            for name in full_names
        ],
    }
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp{os.getpid()}")
    try:
        with tarfile.open(tmp, mode="w", format=tarfile.PAX_FORMAT) as tar:
            entries = [("oci-layout", _canonical({"imageLayoutVersion": "1.0.0"})), ("index.json", _canonical(index))]
            entries += [(f"blobs/sha256/{d.split(':', 1)[1]}", b) for d, b in blobs.items()]
            for folder in ("blobs", "blobs/sha256"):
                info = tarfile.TarInfo(folder)
                info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 0
                tar.addfile(info)
            for name, data in entries:
                info = tarfile.TarInfo(name)
                info.size, info.mode, info.mtime = len(data), 0o644, 0
                tar.addfile(info, io.BytesIO(data))
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return BuiltImage(path=dest, names=full_names, manifest_digest=manifest_digest, config_digest=config_digest)


def _busybox_applets(busybox: str) -> list[str]:
    """Paths (relative to /) of the applets this busybox binary offers."""
    import subprocess

    out = subprocess.run([busybox, "--list-full"], capture_output=True, text=True, check=True).stdout
    return [line.strip() for line in out.splitlines() if line.strip()]


_PASSWD = b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
_GROUP = b"root:x:0:\nnogroup:x:65534:\n"


def busybox_layer(busybox: str | Path = DEFAULT_BUSYBOX, files: Mapping[str, bytes] | None = None) -> Layer:
    """A root file system made of a static busybox, its applet links, /etc basics and ``files``.

    ``files`` maps absolute paths in the image to their content (mode 0644; parents are
    created).
    """
    busybox = str(busybox)
    layer = Layer()
    for folder in ("bin", "sbin", "usr/bin", "usr/sbin", "etc", "root", "var", "proc", "sys", "dev"):
        layer.add_dir(folder)
    layer.add_dir("tmp", 0o1777)
    layer.add_host_file("bin/busybox", busybox, 0o755)
    for applet in _busybox_applets(busybox):
        if applet == "bin/busybox":
            continue
        layer.add_symlink(applet, "/bin/busybox")
    layer.add_file("etc/passwd", _PASSWD)
    layer.add_file("etc/group", _GROUP)
    for path, data in (files or {}).items():
        layer.add_file(path, data)
    return layer


def build_busybox_image(
    dest: str | Path,
    names: str | Sequence[str],
    *,
    entrypoint: Sequence[str] | None = None,
    cmd: Sequence[str] | None = ("sh",),
    files: Mapping[str, bytes] | None = None,
    busybox: str | Path = DEFAULT_BUSYBOX,
) -> BuiltImage:
    """Write a one-layer busybox image archive to ``dest``; see ``busybox_layer`` for ``files``."""
    if isinstance(names, str):
        names = [names]
    config = ImageConfig(
        entrypoint=list(entrypoint) if entrypoint is not None else None,
        cmd=list(cmd) if cmd is not None else None,
    )
    return write_oci_archive(dest, names, [busybox_layer(busybox, files)], config)


def build_pause_image(dest: str | Path, name: str, busybox: str | Path = DEFAULT_BUSYBOX) -> BuiltImage:
    """A pause image: busybox whose entrypoint sleeps forever (the sandbox's placeholder process)."""
    return build_busybox_image(dest, [name], entrypoint=PAUSE_ENTRYPOINT, cmd=None, busybox=busybox)
