"""Pod volumes on the node: what a pod's containers see, materialized under ``<pods-dir>/<uid>``.

Layout (kube's): ``<pods-dir>/<uid>/volumes/kubernetes.io~<plugin>/<volume>``.
ConfigMap, Secret, downwardAPI and projected volumes are written the way kube's atomic
writer does it (the files live in a timestamped folder that the ``..data`` symlink points
at; every visible name is a symlink through ``..data``), so a refresh swaps the content in
one rename and a reader never sees half of an update. Service-account tokens come from
the TokenRequest API and are renewed when 80% of their lifetime has passed.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import os
import shutil
import stat
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from k3p.agent import podspec
from k3p.client import ApiError, Client
from k3p.client.objects import parse_time
from k3p.client.resources import PERSISTENTVOLUMECLAIMS, PERSISTENTVOLUMES, SERVICEACCOUNTS
from k3p.protocols.runtime import Mount

log = structlog.get_logger(__name__)

Obj = dict[str, Any]

DATA_DIR = "..data"
DEFAULT_MODE = 0o644
#: kube's plugin folder names
PLUGIN_DIRS = {
    "emptyDir": "kubernetes.io~empty-dir",
    "configMap": "kubernetes.io~configmap",
    "secret": "kubernetes.io~secret",
    "downwardAPI": "kubernetes.io~downward-api",
    "projected": "kubernetes.io~projected",
}
#: volume types whose content the kubelet writes; containers always get them read-only
WRITTEN_TYPES = ("configMap", "secret", "downwardAPI", "projected")


class VolumeError(Exception):
    """A volume cannot be set up (kube's FailedMount); the pod waits in ContainerCreating."""


# --- the atomic writer ----------------------------------------------------------------------


def _current_payload(target: Path) -> dict[str, tuple[bytes, int]] | None:
    data = target / DATA_DIR
    if not data.is_symlink():
        return None
    out: dict[str, tuple[bytes, int]] = {}
    root = data.resolve()
    for path in root.rglob("*"):
        if path.is_file():
            out[str(path.relative_to(root))] = (path.read_bytes(), stat.S_IMODE(path.stat().st_mode))
    return out


def write_atomic(target: Path, payload: Mapping[str, tuple[bytes, int]]) -> bool:
    """Make ``target`` hold exactly ``payload`` (relative path -> (content, mode)); False if unchanged."""
    target.mkdir(parents=True, exist_ok=True)
    if _current_payload(target) == dict(payload):
        return False
    stamp = dt.datetime.now(dt.UTC).strftime("..%Y_%m_%d_%H_%M_%S.%f")
    new_dir = target / stamp
    new_dir.mkdir()
    for rel, (content, mode) in payload.items():
        path = new_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        path.chmod(mode)
    old = (target / DATA_DIR).resolve() if (target / DATA_DIR).is_symlink() else None
    tmp = target / "..data_tmp"
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    tmp.symlink_to(stamp)
    tmp.replace(target / DATA_DIR)
    wanted = {rel.split("/", 1)[0] for rel in payload}
    for top in wanted:
        link = target / top
        if not link.is_symlink():
            link.symlink_to(f"{DATA_DIR}/{top}")
    for entry in target.iterdir():
        if entry.name.startswith(".."):
            continue
        if entry.name not in wanted and entry.is_symlink():
            entry.unlink()
    if old is not None and old != new_dir and old.parent == target:
        shutil.rmtree(old, ignore_errors=True)
    return True


# --- payloads of each volume type ----------------------------------------------------------


def _mode(item: Mapping[str, Any], default: int | None) -> int:
    if item.get("mode") is not None:
        return int(item["mode"])
    return DEFAULT_MODE if default is None else int(default)


def _keyed_payload(kind: str, source: Mapping[str, Any], obj: Obj | None, namespace: str,
                   default_mode: int | None) -> dict[str, tuple[bytes, int]]:
    """Files of a configMap or secret (volume or projection): ``items`` or every key."""
    name = source.get("name") if kind == "ConfigMap" else source.get("secretName", source.get("name"))
    if obj is None:
        if source.get("optional"):
            return {}
        raise VolumeError(f'{kind.lower()} "{name}" not found')
    values: dict[str, bytes] = {}
    if kind == "ConfigMap":
        values.update({k: str(v).encode() for k, v in (obj.get("data") or {}).items()})
        values.update({k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()})
    else:
        values.update({k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()})
    mode = source.get("defaultMode", default_mode)
    items = source.get("items")
    if not items:
        return {k: (v, _mode({}, mode)) for k, v in values.items()}
    out = {}
    for item in items:
        key = item.get("key", "")
        if key not in values:
            if source.get("optional"):
                continue
            raise VolumeError(f"configmap references non-existent config key: {key}" if kind == "ConfigMap"
                              else f"references non-existent secret key: {key}")
        out[item.get("path") or key] = (values[key], _mode(item, mode))
    return out


def downward_payload(pod: Obj, items: list[Obj], default_mode: int | None, *, pod_ips: list[str],
                     host_ips: list[str], allocatable: Mapping[str, Any] | None) -> dict[str, tuple[bytes, int]]:
    """Files of a downwardAPI volume or projection."""
    out = {}
    for item in items:
        try:
            if "fieldRef" in item:
                value = podspec.field_ref_value(pod, item["fieldRef"].get("fieldPath", ""), pod_ips=pod_ips,
                                                host_ips=host_ips)
            elif "resourceFieldRef" in item:
                ref = item["resourceFieldRef"]
                container = podspec.find_container(pod, ref.get("containerName", "")) or {}
                value = podspec.resource_field_value(container, ref.get("resource", ""), ref.get("divisor"),
                                                     allocatable)
            else:
                continue
        except podspec.ConfigError as e:
            raise VolumeError(str(e)) from None
        out[item.get("path", "")] = (value.encode(), _mode(item, default_mode))
    return out


@dataclass
class _Token:
    token: str
    expires: float
    renew_at: float


class VolumeManager:
    """Sets up and tears down the volumes of the pods on one node."""

    def __init__(self, client: Client, pods_dir: Path, *, host_paths: bool = True,
                 allocatable: Callable[[], Mapping[str, Any]] | None = None) -> None:
        self.client = client
        self.pods_dir = Path(pods_dir)
        #: False on simulated nodes: hostPath volumes are not created or checked on this host
        self.host_paths = host_paths
        self.allocatable = allocatable or dict
        self._tokens: dict[tuple[str, str, int], _Token] = {}

    def pod_dir(self, uid: str) -> Path:
        return self.pods_dir / uid

    async def setup(self, pod: Obj, configmaps: Mapping[str, Obj | None], secrets: Mapping[str, Obj | None], *,
                    pod_ips: list[str] | None = None, host_ips: list[str] | None = None) -> dict[str, str]:
        """Create or refresh every volume of ``pod``; volume name -> host path. Raises VolumeError."""
        uid = podspec.meta(pod).get("uid", "")
        base = self.pod_dir(uid) / "volumes"
        paths: dict[str, str] = {}
        for vol in podspec.spec(pod).get("volumes") or []:
            name = vol.get("name", "")
            try:
                paths[name] = await self._setup_one(pod, vol, base, configmaps, secrets, pod_ips or [],
                                                    host_ips or [])
            except VolumeError as e:
                raise VolumeError(f'MountVolume.SetUp failed for volume "{name}" : {e}') from None
            except OSError as e:
                raise VolumeError(f'MountVolume.SetUp failed for volume "{name}" : {e}') from None
        return paths

    async def _setup_one(self, pod: Obj, vol: Obj, base: Path, configmaps: Mapping[str, Obj | None],
                         secrets: Mapping[str, Obj | None], pod_ips: list[str], host_ips: list[str]) -> str:
        name = vol["name"]
        ns = podspec.meta(pod).get("namespace", "")
        if "hostPath" in vol:
            return self._host_path(vol["hostPath"])
        if "persistentVolumeClaim" in vol:
            return await self._claim_path(ns, vol["persistentVolumeClaim"])
        kind = next((k for k in PLUGIN_DIRS if k in vol), None)
        if kind is None:
            other = next((k for k in vol if k != "name"), "unknown")
            raise VolumeError(f"volume type {other} is not supported by this node")
        target = base / PLUGIN_DIRS[kind] / name
        if kind == "emptyDir":
            target.mkdir(parents=True, exist_ok=True)
            target.chmod(0o777)  # kube's emptyDir is world-writable
            return str(target)
        source = vol[kind]
        payload: dict[str, tuple[bytes, int]]
        if kind == "configMap":
            payload = _keyed_payload("ConfigMap", source, configmaps.get(source.get("name", "")), ns, None)
        elif kind == "secret":
            payload = _keyed_payload("Secret", source, secrets.get(source.get("secretName", "")), ns, None)
        elif kind == "downwardAPI":
            payload = downward_payload(pod, source.get("items") or [], source.get("defaultMode"), pod_ips=pod_ips,
                                       host_ips=host_ips, allocatable=self.allocatable())
        else:
            payload = await self._projected(pod, name, source, configmaps, secrets, pod_ips, host_ips)
        await asyncio.to_thread(write_atomic, target, payload)
        return str(target)

    async def _projected(self, pod: Obj, name: str, source: Obj, configmaps: Mapping[str, Obj | None],
                         secrets: Mapping[str, Obj | None], pod_ips: list[str],
                         host_ips: list[str]) -> dict[str, tuple[bytes, int]]:
        ns = podspec.meta(pod).get("namespace", "")
        default = source.get("defaultMode")
        payload: dict[str, tuple[bytes, int]] = {}
        for index, src in enumerate(source.get("sources") or []):
            if "configMap" in src:
                cm = src["configMap"]
                payload.update(_keyed_payload("ConfigMap", cm, configmaps.get(cm.get("name", "")), ns, default))
            elif "secret" in src:
                sec = src["secret"]
                payload.update(_keyed_payload("Secret", sec, secrets.get(sec.get("name", "")), ns, default))
            elif "downwardAPI" in src:
                payload.update(downward_payload(pod, src["downwardAPI"].get("items") or [], default,
                                                pod_ips=pod_ips, host_ips=host_ips,
                                                allocatable=self.allocatable()))
            elif "serviceAccountToken" in src:
                sat = src["serviceAccountToken"]
                token = await self._token(pod, name, index, sat)
                mode = DEFAULT_MODE if default is None else int(default)
                payload[sat.get("path", "token")] = (token.encode(), mode)
        return payload

    async def _token(self, pod: Obj, volume: str, index: int, source: Obj) -> str:
        m = podspec.meta(pod)
        key = (m.get("uid", ""), volume, index)
        now = time.time()
        cached = self._tokens.get(key)
        if cached and now < cached.renew_at:
            return cached.token
        seconds = int(source.get("expirationSeconds") or 3600)
        body: Obj = {
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
            "spec": {"expirationSeconds": seconds,
                     "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": m.get("name"),
                                        "uid": m.get("uid")}},
        }
        if source.get("audience"):
            body["spec"]["audiences"] = [source["audience"]]
        sa = podspec.spec(pod).get("serviceAccountName") or "default"
        try:
            answer = await self.client.create_subresource(SERVICEACCOUNTS, sa, "token", body, m.get("namespace"))
        except ApiError as e:
            if cached and now < cached.expires:
                return cached.token  # keep the still-valid token; try again next refresh
            raise VolumeError(f"failed to fetch token: {e.message or e}") from None
        token = answer["status"]["token"]
        when = parse_time(answer["status"].get("expirationTimestamp"))
        expires = when.timestamp() if when else now + seconds
        # kube renews at 80% of the lifetime (or after 24 h, whichever comes first)
        renew = now + min((expires - now) * 0.8, 24 * 3600)
        self._tokens[key] = _Token(token, expires, renew)
        return token

    def _host_path(self, source: Obj) -> str:
        path = source.get("path", "")
        kind = source.get("type") or ""
        if not self.host_paths:
            return path
        p = Path(path)
        if kind == "DirectoryOrCreate":
            p.mkdir(mode=0o755, parents=True, exist_ok=True)
        elif kind == "FileOrCreate":
            if not p.exists():
                p.parent.mkdir(parents=True, exist_ok=True)
                p.touch(mode=0o644)
        checks = {
            "Directory": p.is_dir, "DirectoryOrCreate": p.is_dir, "File": p.is_file, "FileOrCreate": p.is_file,
            "Socket": p.is_socket, "CharDevice": p.is_char_device, "BlockDevice": p.is_block_device,
        }
        check = checks.get(kind)
        if check is not None and not check():
            what = {"Directory": "directory", "DirectoryOrCreate": "directory", "File": "file",
                    "FileOrCreate": "file", "Socket": "socket", "CharDevice": "character device",
                    "BlockDevice": "block device"}[kind]
            raise VolumeError(f"hostPath type check failed: {path} is not a {what}")
        return path

    async def _claim_path(self, namespace: str, source: Obj) -> str:
        """The host folder of a bound claim's hostPath or local volume (what local-path volumes are).

        The claim must be Bound and its volume's claimRef must point back at it (kube's
        kubelet checks the same); until then the pod waits in ContainerCreating. Simulated
        nodes mount nothing and take the claim as it is.
        """
        claim_name = source.get("claimName", "")
        if not self.host_paths:
            return ""
        try:
            claim = await self.client.get(PERSISTENTVOLUMECLAIMS, claim_name, namespace)
        except ApiError as e:
            raise VolumeError(f"error processing PVC {namespace}/{claim_name}: failed to fetch PVC from API server: "
                              f"{e.message or e}") from None
        if (claim.get("metadata") or {}).get("deletionTimestamp"):
            raise VolumeError(f"can't start pod because PVC {namespace}/{claim_name} is being deleted")
        phase = (claim.get("status") or {}).get("phase") or ""
        volume_name = (claim.get("spec") or {}).get("volumeName") or ""
        if phase != "Bound" or not volume_name:
            raise VolumeError(f'PVC {namespace}/{claim_name} has non-bound phase ("{phase}") or empty '
                              f'pvc.Spec.VolumeName ("{volume_name}")')
        try:
            pv = await self.client.get(PERSISTENTVOLUMES, volume_name)
        except ApiError as e:
            raise VolumeError(f"failed to fetch PV {volume_name} from API server. err={e.message or e}") from None
        pv_spec = pv.get("spec") or {}
        ref = pv_spec.get("claimRef")
        claim_uid = (claim.get("metadata") or {}).get("uid", "")
        if not ref:
            raise VolumeError(f"found PV object {volume_name} but it has a nil pv.Spec.ClaimRef indicating it is not "
                              "yet bound to the claim")
        if ref.get("uid") != claim_uid:
            raise VolumeError(f"found PV object {volume_name} but its pv.Spec.ClaimRef.UID ({ref.get('uid')}) does "
                              f"not point to claim.UID ({claim_uid})")
        if "hostPath" in pv_spec:
            return self._host_path(pv_spec["hostPath"])
        if "local" in pv_spec:
            return self._host_path({"path": pv_spec["local"].get("path", ""), "type": "Directory"})
        raise VolumeError(f'persistentvolume "{volume_name}" is of a type this node cannot mount')

    # --- per-pod files the kubelet manages -------------------------------------------------

    def write_etc_hosts(self, pod: Obj, pod_ips: list[str], cluster_domain: str) -> str:
        """kube's managed /etc/hosts for the pod (its own name and hostAliases)."""
        s, m = podspec.spec(pod), podspec.meta(pod)
        lines = ["# Kubernetes-managed hosts file.", "127.0.0.1\tlocalhost",
                 "::1\tlocalhost ip6-localhost ip6-loopback", "fe00::0\tip6-localnet", "fe00::0\tip6-mcastprefix",
                 "fe00::1\tip6-allnodes", "fe00::2\tip6-allrouters"]
        hostname = podspec.pod_hostname(pod)
        for ip in pod_ips:
            if s.get("subdomain"):
                fqdn = f"{hostname}.{s['subdomain']}.{m.get('namespace')}.svc.{cluster_domain}"
                lines.append(f"{ip}\t{fqdn}\t{hostname}")
            else:
                lines.append(f"{ip}\t{hostname}")
        aliases = s.get("hostAliases") or []
        if aliases:
            lines += ["", "# Entries added by HostAliases."]
            for alias in aliases:
                lines.append(f"{alias.get('ip')}\t" + "\t".join(alias.get("hostnames") or []))
        path = self.pod_dir(m.get("uid", "")) / "etc-hosts"
        path.parent.mkdir(parents=True, exist_ok=True)
        text = "\n".join(lines) + "\n"
        if not path.exists() or path.read_text() != text:
            tmp = path.with_suffix(".tmp")
            tmp.write_text(text)
            tmp.chmod(0o644)
            tmp.replace(path)
        return str(path)

    def termination_message_file(self, uid: str, container: str, attempt: int) -> str:
        """An empty file the container may write its termination message to."""
        path = self.pod_dir(uid) / "containers" / container / str(attempt)
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            path.touch()
            path.chmod(0o666)  # the container's user is unknown: anyone may write it
        return str(path)

    def read_termination_message(self, uid: str, container: str, attempt: int) -> str:
        path = self.pod_dir(uid) / "containers" / container / str(attempt)
        try:
            with path.open("rb") as f:
                return f.read(4096).decode(errors="replace")
        except OSError:
            return ""

    def mounts(self, pod: Obj, container: Obj, paths: Mapping[str, str], env: Mapping[str, str] | None = None,
               *, etc_hosts: str = "", termination_file: str = "") -> list[Mount]:
        """The container's mounts: its volumeMounts, plus /etc/hosts and the termination-message file."""
        volumes = podspec.spec(pod).get("volumes") or []
        kinds = {v.get("name"): next((k for k in WRITTEN_TYPES if k in v), "") for v in volumes}
        #: a claim mounted with ``readOnly`` is read-only in every container
        read_only = {v.get("name") for v in volumes if (v.get("persistentVolumeClaim") or {}).get("readOnly")}
        out: list[Mount] = []
        for vm in container.get("volumeMounts") or []:
            name = vm.get("name", "")
            if name not in paths:
                raise VolumeError(f"volume {name!r} of container {container.get('name')!r} is not set up")
            host = paths[name]
            sub = vm.get("subPath") or ""
            if vm.get("subPathExpr"):
                sub = podspec.expand(vm["subPathExpr"], env or {})
            if sub:
                if sub.startswith("/") or ".." in Path(sub).parts:
                    raise VolumeError(f"subPath {sub!r} must be a relative path inside the volume")
                host = os.path.join(host, sub)
                if not kinds.get(name) and self.host_paths and not os.path.exists(host):
                    os.makedirs(host, mode=0o755, exist_ok=True)
            out.append(Mount(container_path=vm.get("mountPath", ""), host_path=host,
                             readonly=bool(vm.get("readOnly")) or bool(kinds.get(name)) or name in read_only))
        mounted = {m.container_path for m in out}
        if etc_hosts and "/etc/hosts" not in mounted:
            out.append(Mount(container_path="/etc/hosts", host_path=etc_hosts))
        path = container.get("terminationMessagePath")
        if termination_file and path and path not in mounted:
            out.append(Mount(container_path=path, host_path=termination_file))
        return out

    async def cleanup(self, uid: str) -> None:
        """Remove everything the pod had on this node."""
        for key in [k for k in self._tokens if k[0] == uid]:
            del self._tokens[key]
        target = self.pod_dir(uid)
        if target.exists():
            await asyncio.to_thread(shutil.rmtree, target, True)
