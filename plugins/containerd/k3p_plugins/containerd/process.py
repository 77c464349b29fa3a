"""containerd as a supervised child process of k3p."""

from __future__ import annotations

import shutil

from k3p.config import ConfigError
from k3p.supervisor import ProcessComponent
from k3p_plugins.containerd.config import ContainerdSettings, write_config
from k3p_plugins.containerd.runtime import cri_version

#: a unix socket path longer than this does not fit in sockaddr_un (108 bytes with the NUL)
MAX_SOCKET_PATH = 100


def containerd_component(settings: ContainerdSettings, containerd: str | None = None) -> ProcessComponent:
    """Write containerd's config and return the component that runs it.

    The component is ready once the socket answers a CRI Version call; containerd's output
    goes to ``<agent>/containerd/containerd.log``. It runs in its own process group and
    containerd starts each shim in another, so stopping the component stops containerd
    while containers keep running.
    """
    paths = settings.paths
    if len(str(paths.socket)) > MAX_SOCKET_PATH:
        raise ConfigError(f"containerd's socket path {paths.socket} is too long for a unix socket: "
                         "choose a shorter --data-dir")
    config_file = write_config(settings)

    async def ready() -> bool:
        return await cri_version(paths.socket) is not None

    return ProcessComponent(
        "containerd",
        [containerd or shutil.which("containerd") or "containerd", "--config", str(config_file)],
        ready_check=ready,
        log_file=paths.log_file,
        stop_timeout=10.0,
    )
