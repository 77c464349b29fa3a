"""containerd for k3p nodes: runs containerd with a generated config and speaks CRI to it.

K3s's model: ``<data-dir>/agent/etc/containerd/config.toml`` is generated at every start
(a ``config.toml.tmpl`` beside it replaces it), containerd's root, state and socket live
in ``<data-dir>/agent/containerd/``, and image archives in ``<data-dir>/agent/images/``
are imported at start because no registry may be reachable. The pause image is built on
the node from the host's static busybox. ``--container-runtime-endpoint`` uses a CRI
socket someone else runs instead.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from k3p.hookspecs import hookimpl
from k3p_plugins.containerd.config import DEFAULT_PAUSE_IMAGE, ContainerdSettings, find_cni_bin_dir
from k3p_plugins.containerd.paths import ContainerdPaths

if TYPE_CHECKING:
    from k3p.checks import CheckReport
    from k3p.config import Config, OptionSchema
    from k3p.context import PluginContext
    from k3p.supervisor import Component
    from k3p_plugins.containerd.runtime import ContainerdRuntime

# grpc's fork handlers serve children that go on using grpc without exec; k3p's children all
# exec, and with the handlers on, every fork while a CRI call is in flight logs "Other threads
# are currently calling into gRPC, skipping fork() handlers". Read by grpc when it loads.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")

# grpc and the CRI stubs load only when a node is started, not for every k3p command
__all__ = ["DEFAULT_PAUSE_IMAGE", "ContainerdPaths", "settings_from_config"]


@hookimpl
def k3p_add_options(schema: OptionSchema) -> None:
    """--container-runtime-endpoint, --pause-image and --snapshotter, named as in K3s."""
    schema.add("container-runtime-endpoint", default="", metavar="SOCKET",
               help="Use the CRI socket of a container runtime already running (unix:///path or a path) "
                    "instead of starting containerd")
    schema.add("pause-image", default=DEFAULT_PAUSE_IMAGE, metavar="IMAGE",
               help="Image of each pod's sandbox process; built on the node from busybox when missing")
    schema.add("snapshotter", default="overlayfs", metavar="NAME",
               help="containerd snapshotter for container file systems (overlayfs, native)")


def settings_from_config(config: Config, data_dir: str | Path | None = None) -> ContainerdSettings:
    """The containerd settings of this node from k3p's config (``data_dir`` overrides the config's)."""
    return ContainerdSettings(
        paths=ContainerdPaths.from_data_dir(data_dir or config.get("data_dir")),
        sandbox_image=config.get("pause_image") or DEFAULT_PAUSE_IMAGE,
        snapshotter=config.get("snapshotter") or "overlayfs",
    )


@hookimpl
def k3p_agent_components(ctx: PluginContext) -> list[Component]:
    """containerd as a child process, unless an external runtime or simulated nodes are used."""
    config = ctx.config
    if config.get("container_runtime_endpoint") or (config.get("simulate") or config.get("simulate_runtime")):
        return []
    from k3p_plugins.containerd.process import containerd_component

    return [containerd_component(settings_from_config(config, ctx.data_dir))]


@hookimpl
def k3p_runtime(config: Config) -> ContainerdRuntime | None:
    """The CRI runtime for a real node (None for simulated nodes: another plugin serves those)."""
    if (config.get("simulate") or config.get("simulate_runtime")):
        return None
    from k3p_plugins.containerd.runtime import ContainerdRuntime

    settings = settings_from_config(config)
    endpoint = config.get("container_runtime_endpoint") or ""
    return ContainerdRuntime(
        endpoint or settings.paths.socket,
        settings.paths,
        pause_image=settings.sandbox_image,
    )


@hookimpl
def k3p_check_config(config: Config, report: CheckReport, runs_node: bool) -> None:
    """containerd, runc, ctr, the CNI plugins and busybox (for the pause image), where a node runs."""
    if not runs_node or config.get("simulate_runtime"):
        return
    external = config.get("container_runtime_endpoint")
    needed = ["ctr"] if external else ["containerd", "containerd-shim-runc-v2", "runc", "ctr"]
    for binary in needed:
        found = shutil.which(binary)
        if found:
            report.ok(binary, found)
        else:
            report.fail(binary, "not found on PATH: install containerd and runc (e.g. apt-get install "
                                "containerd runc)")
    cni = find_cni_bin_dir()
    if Path(cni, "bridge").exists() and Path(cni, "host-local").exists() and Path(cni, "portmap").exists():
        report.ok("cni-plugins", cni)
    else:
        report.fail("cni-plugins", "bridge, host-local and portmap not found in /usr/lib/cni or /opt/cni/bin "
                                   "(e.g. apt-get install containernetworking-plugins)")
    if Path("/bin/busybox").exists():
        report.ok("busybox", "/bin/busybox (builds the pause image)")
    else:
        report.warn("busybox", "/bin/busybox not found: the pause image cannot be built on this node; "
                               "put it in the images folder (e.g. apt-get install busybox-static)")
    if not shutil.which("iptables"):
        report.warn("iptables", "not found: pod traffic leaving the node is not masqueraded")


def _crictl(argv: list[str], data_dir: str) -> int:
    from k3p_plugins.containerd.cli import crictl_main

    return crictl_main(argv, data_dir)


def _ctr(argv: list[str], data_dir: str) -> int:
    from k3p_plugins.containerd.cli import ctr_main

    return ctr_main(argv, data_dir)


def _images(argv: list[str], data_dir: str) -> int:
    from k3p_plugins.containerd.images_cli import images_main

    return images_main(argv, data_dir)


@hookimpl
def k3p_commands() -> dict[str, Callable[[list[str], str], int]]:
    """``k3p crictl`` (crictl is not packaged here), ``k3p ctr`` with this node's socket, and
    ``k3p images import|ls`` for image archives without a registry."""
    return {"crictl": _crictl, "ctr": _ctr, "images": _images}
