"""Where the containerd plugin keeps its files, all under ``<data-dir>/agent`` (K3s's layout)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

#: the CRI namespace in containerd; kube's kubelet and K3s use the same one
NAMESPACE = "k8s.io"


@dataclass(frozen=True)
class ContainerdPaths:
    """Every path of one node's containerd, derived from the node's agent folder."""

    agent_dir: Path

    @classmethod
    def from_data_dir(cls, data_dir: str | Path) -> ContainerdPaths:
        return cls(Path(data_dir) / "agent")

    @property
    def config_dir(self) -> Path:
        return self.agent_dir / "etc" / "containerd"

    @property
    def config_file(self) -> Path:
        return self.config_dir / "config.toml"

    @property
    def config_template(self) -> Path:
        """A user's template: when present it replaces the generated config (as in K3s)."""
        return self.config_dir / "config.toml.tmpl"

    @property
    def containerd_dir(self) -> Path:
        return self.agent_dir / "containerd"

    @property
    def root(self) -> Path:
        return self.containerd_dir / "root"

    @property
    def state(self) -> Path:
        return self.containerd_dir / "state"

    @property
    def socket(self) -> Path:
        return self.containerd_dir / "containerd.sock"

    @property
    def runc_root(self) -> Path:
        """runc's state folder; runc adds the namespace (``<runc_root>/k8s.io/<container id>``)."""
        return self.containerd_dir / "runc"

    @property
    def log_file(self) -> Path:
        return self.containerd_dir / "containerd.log"

    @property
    def import_marker(self) -> Path:
        """Which airgap tarballs were imported already (size and mtime of each)."""
        return self.containerd_dir / "imported-images.json"

    @property
    def images_dir(self) -> Path:
        """Airgap image tarballs to import at start (K3s: ``agent/images``)."""
        return self.agent_dir / "images"

    @property
    def cni_conf_dir(self) -> Path:
        return self.agent_dir / "etc" / "cni" / "net.d"

    @property
    def pod_logs_dir(self) -> Path:
        """Container logs: ``<pod_logs_dir>/<namespace>_<name>_<uid>/<container>/<attempt>.log``.

        kube's /var/log/pods layout, under the node's folder (where the kubelet puts it too).
        """
        return self.agent_dir / "logs" / "pods"
