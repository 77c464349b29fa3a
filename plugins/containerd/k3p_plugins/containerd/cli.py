"""``k3p crictl`` and ``k3p ctr``: look at the node's containers from a shell.

crictl itself is not packaged everywhere, so the everyday subset is here, speaking CRI to
the node's containerd: ``pods``, ``ps [-a]``, ``images``, ``logs [-f] [--tail N]``,
``exec CONTAINER CMD...``, ``inspect ID`` (``inspectp``, ``inspecti``), ``info`` and
``version``. Tables and IDs look like crictl's. ``k3p ctr`` runs containerd's own ``ctr``
against the node's socket in the CRI namespace.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

import grpc
from cri_api.v1 import api_pb2 as api
from cri_api.v1 import api_pb2_grpc as api_grpc
from google.protobuf import json_format

from k3p_plugins.containerd.images import ctr_binary
from k3p_plugins.containerd.logs import read_cri_log
from k3p_plugins.containerd.paths import NAMESPACE, ContainerdPaths
from k3p_plugins.containerd.runtime import socket_path

_SANDBOX_STATES = {api.SANDBOX_READY: "Ready", api.SANDBOX_NOTREADY: "NotReady"}
_CONTAINER_STATES = {api.CONTAINER_CREATED: "Created", api.CONTAINER_RUNNING: "Running",
                     api.CONTAINER_EXITED: "Exited", api.CONTAINER_UNKNOWN: "Unknown"}


class CliError(Exception):
    """A message for the user; the command exits with status 1."""


def _socket(data_dir: str | Path, endpoint: str) -> str:
    return socket_path(endpoint) if endpoint else str(ContainerdPaths.from_data_dir(data_dir).socket)


def ago(ns: int, now: float | None = None) -> str:
    """crictl's CREATED column: "12 seconds ago", "3 minutes ago", "About an hour ago"."""
    secs = max(0, int((now or time.time()) - ns / 1e9))
    if secs < 60:
        return "Less than a second ago" if secs < 1 else f"{secs} second{'s' if secs != 1 else ''} ago"
    minutes = secs // 60
    if minutes < 60:
        return "About a minute ago" if minutes == 1 else f"{minutes} minutes ago"
    hours = minutes // 60
    if hours < 48:
        return "About an hour ago" if hours == 1 else f"{hours} hours ago"
    return f"{hours // 24} days ago"


def _table(rows: list[list[str]], out: TextIO) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        out.write("   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() + "\n")


class _Crictl:
    def __init__(self, socket: str, out: TextIO, err: TextIO) -> None:
        if not Path(socket).exists():
            raise CliError(f"no container runtime socket at {socket} (is k3p running on this node?)")
        self.socket = socket
        self.channel = grpc.insecure_channel(f"unix://{socket}")
        self.rt = api_grpc.RuntimeServiceStub(self.channel)
        self.img = api_grpc.ImageServiceStub(self.channel)
        self.out, self.err = out, err

    def close(self) -> None:
        self.channel.close()

    # --- lookups --------------------------------------------------------------------------

    def pods(self) -> list[api.PodSandbox]:
        return sorted(self.rt.ListPodSandbox(api.ListPodSandboxRequest(), timeout=30).items,
                      key=lambda p: -p.created_at)

    def containers(self) -> list[api.Container]:
        return sorted(self.rt.ListContainers(api.ListContainersRequest(), timeout=30).containers,
                      key=lambda c: -c.created_at)

    def _resolve(self, prefix: str, ids: Sequence[str], what: str) -> str | None:
        matches = [i for i in ids if i.startswith(prefix)]
        if len(matches) > 1:
            raise CliError(f"{what} ID {prefix} is ambiguous")
        return matches[0] if matches else None

    def container_id(self, prefix: str) -> str:
        found = self._resolve(prefix, [c.id for c in self.containers()], "container")
        if found is None:
            raise CliError(f"no container with ID {prefix}")
        return found

    # --- commands -------------------------------------------------------------------------

    def cmd_pods(self, args: argparse.Namespace) -> int:
        rows = [["POD ID", "CREATED", "STATE", "NAME", "NAMESPACE", "ATTEMPT", "RUNTIME"]]
        for p in self.pods():
            if args.name and args.name not in p.metadata.name:
                continue
            if args.namespace and args.namespace != p.metadata.namespace:
                continue
            rows.append([p.id[:13], ago(p.created_at), _SANDBOX_STATES.get(p.state, "Unknown"), p.metadata.name,
                         p.metadata.namespace, str(p.metadata.attempt), p.runtime_handler or "(default)"])
        _table(rows, self.out)
        return 0

    def cmd_ps(self, args: argparse.Namespace) -> int:
        pods = {p.id: p for p in self.pods()}
        images = {i.id: i for i in self.img.ListImages(api.ListImagesRequest(), timeout=30).images}
        rows = [["CONTAINER", "IMAGE", "CREATED", "STATE", "NAME", "ATTEMPT", "POD ID", "POD"]]
        for c in self.containers():
            if not args.all and c.state != api.CONTAINER_RUNNING:
                continue
            if args.pod and not c.pod_sandbox_id.startswith(args.pod):
                continue
            image = images.get(c.image_ref)
            image_name = image.repo_tags[0] if image and image.repo_tags else c.image.image or c.image_ref
            pod = pods.get(c.pod_sandbox_id)
            rows.append([c.id[:13], image_name, ago(c.created_at), _CONTAINER_STATES.get(c.state, "Unknown"),
                         c.metadata.name, str(c.metadata.attempt), c.pod_sandbox_id[:13],
                         pod.metadata.name if pod else ""])
        _table(rows, self.out)
        return 0

    def cmd_images(self, args: argparse.Namespace) -> int:
        rows = [["IMAGE", "TAG", "IMAGE ID", "SIZE"]]
        for i in sorted(self.img.ListImages(api.ListImagesRequest(), timeout=30).images,
                        key=lambda i: list(i.repo_tags)):
            short = i.id.split(":", 1)[-1][:13]
            size = _size(i.size)
            for tag in i.repo_tags or ["<none>:<none>"]:
                repo, _, name = tag.rpartition(":")
                rows.append([repo, name, short, size])
        _table(rows, self.out)
        return 0

    def cmd_logs(self, args: argparse.Namespace) -> int:
        cid = self.container_id(args.container)
        status = self.rt.ContainerStatus(api.ContainerStatusRequest(container_id=cid), timeout=30).status
        if not status.log_path:
            raise CliError(f"container {cid[:13]} has no log file")

        async def still_running() -> bool:
            try:
                st = self.rt.ContainerStatus(api.ContainerStatusRequest(container_id=cid), timeout=10).status
            except grpc.RpcError:
                return False
            return st.state == api.CONTAINER_RUNNING

        async def run() -> None:
            # With --tail, lines up to the size the file had at the start are held back
            # so only the last N of them are printed; later lines print as they come.
            tail = collections.deque(maxlen=max(0, args.tail)) if args.tail is not None else None
            size = os.path.getsize(status.log_path) if tail is not None else 0
            consumed = 0
            async for line in read_cri_log(status.log_path, follow=args.follow, still_running=still_running):
                consumed += len(line) + 1
                if tail is not None:
                    if consumed <= size:
                        tail.append(line)
                        continue
                    for held in tail:
                        self._write_log_line(held)
                    tail = None
                self._write_log_line(line)
            for held in tail or ():
                self._write_log_line(held)

        asyncio.run(run())
        return 0

    def _write_log_line(self, line: bytes) -> None:
        parts = line.split(b" ", 3)
        if len(parts) < 3:
            return
        stream, tag = parts[1], parts[2]
        text = parts[3] if len(parts) > 3 else b""
        target = self.err if stream == b"stderr" else self.out
        target.write(text.decode(errors="replace") + ("" if tag == b"P" else "\n"))
        target.flush()

    def cmd_exec(self, args: argparse.Namespace) -> int:
        if args.tty or args.interactive:
            raise CliError("interactive exec is not supported here: use 'k3p kubectl exec -it' or 'k3p ctr'")
        cid = self.container_id(args.container)
        resp = self.rt.ExecSync(api.ExecSyncRequest(container_id=cid, cmd=args.cmd, timeout=args.timeout),
                                timeout=args.timeout + 30 if args.timeout else None)
        self.out.write(resp.stdout.decode(errors="replace"))
        self.err.write(resp.stderr.decode(errors="replace"))
        return resp.exit_code

    def cmd_inspect(self, args: argparse.Namespace, kinds: Sequence[str] = ("container", "pod", "image")) -> int:
        docs = []
        for ident in args.ids:
            doc = None
            if "container" in kinds and (cid := self._resolve(ident, [c.id for c in self.containers()], "container")):
                resp = self.rt.ContainerStatus(api.ContainerStatusRequest(container_id=cid, verbose=True), timeout=30)
                doc = _with_info(resp.status, resp.info)
            elif "pod" in kinds and (pid := self._resolve(ident, [p.id for p in self.pods()], "pod")):
                resp = self.rt.PodSandboxStatus(api.PodSandboxStatusRequest(pod_sandbox_id=pid, verbose=True),
                                                timeout=30)
                doc = _with_info(resp.status, resp.info)
            elif "image" in kinds:
                resp = self.img.ImageStatus(api.ImageStatusRequest(image=api.ImageSpec(image=ident), verbose=True),
                                            timeout=30)
                if resp.image.id:
                    doc = _with_info(resp.image, resp.info)
            if doc is None:
                raise CliError(f"no {' or '.join(kinds)} with ID {ident}")
            docs.append(doc)
        json.dump(docs[0] if len(docs) == 1 else docs, self.out, indent=2)
        self.out.write("\n")
        return 0

    def cmd_info(self, args: argparse.Namespace) -> int:
        resp = self.rt.Status(api.StatusRequest(verbose=True), timeout=30)
        json.dump(_with_info(resp.status, resp.info), self.out, indent=2)
        self.out.write("\n")
        return 0

    def cmd_version(self, args: argparse.Namespace) -> int:
        v = self.rt.Version(api.VersionRequest(), timeout=30)
        self.out.write(f"Version:  {v.version}\nRuntimeName:  {v.runtime_name}\n"
                       f"RuntimeVersion:  {v.runtime_version}\nRuntimeApiVersion:  {v.runtime_api_version}\n")
        return 0


def _size(n: float) -> str:
    """Sizes as crictl prints them: decimal units, three significant digits."""
    for unit in ("B", "kB", "MB"):
        if n < 1000:
            return f"{n:.3g}{unit}"
        n /= 1000
    return f"{n:.3g}GB"


def _with_info(message, info) -> dict:
    doc: dict = {"status": json_format.MessageToDict(message)}
    if info:
        doc["info"] = {}
        for key, value in info.items():
            try:
                doc["info"][key] = json.loads(value)
            except ValueError:
                doc["info"][key] = value
    return doc


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="k3p crictl", description="Inspect the node's pods, containers and images "
                                                               "through CRI")
    p.add_argument("-r", "--runtime-endpoint", default="", help="CRI socket (default: the node's containerd)")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("pods", help="List pod sandboxes")
    s.add_argument("--name", default="", help="Only pods whose name contains this")
    s.add_argument("--namespace", default="", help="Only pods of this namespace")
    s = sub.add_parser("ps", help="List containers")
    s.add_argument("-a", "--all", action="store_true", help="Show all containers, not only running ones")
    s.add_argument("-p", "--pod", default="", help="Only containers of this pod sandbox ID (prefix)")
    sub.add_parser("images", help="List images")
    s = sub.add_parser("logs", help="Print a container's logs")
    s.add_argument("-f", "--follow", action="store_true", help="Keep printing new lines while the container runs")
    s.add_argument("--tail", type=int, default=None, help="Only the last N lines")
    s.add_argument("container")
    s = sub.add_parser("exec", help="Run a command in a container and wait for it")
    s.add_argument("-i", "--interactive", action="store_true", help="Not supported: use kubectl exec -it")
    s.add_argument("-t", "--tty", action="store_true", help="Not supported: use kubectl exec -it")
    s.add_argument("--timeout", type=int, default=0, help="Seconds before the command is stopped (0: none)")
    s.add_argument("container")
    s.add_argument("cmd", nargs=argparse.REMAINDER)
    for name, what in (("inspect", "container (or pod sandbox or image)"), ("inspectp", "pod sandbox"),
                       ("inspecti", "image")):
        s = sub.add_parser(name, help=f"Show a {what} as JSON")
        s.add_argument("ids", nargs="+", metavar="ID")
    sub.add_parser("info", help="Show the runtime's status and config")
    sub.add_parser("version", help="Show the runtime's version")
    return p


def crictl_main(argv: Sequence[str], data_dir: str | Path, endpoint: str = "",
                out: TextIO | None = None, err: TextIO | None = None) -> int:
    """``k3p crictl ARGS``: returns the exit status (the command's own status for ``exec``)."""
    out = out or sys.stdout
    err = err or sys.stderr
    args = _parser().parse_args(list(argv))
    if args.command == "exec" and not args.cmd:
        err.write("k3p crictl exec: a command is required\n")
        return 2
    try:
        cli = _Crictl(_socket(data_dir, args.runtime_endpoint or endpoint), out, err)
    except CliError as e:
        err.write(f"k3p crictl: {e}\n")
        return 1
    try:
        if args.command == "inspectp":
            return cli.cmd_inspect(args, ("pod",))
        if args.command == "inspecti":
            return cli.cmd_inspect(args, ("image",))
        return getattr(cli, f"cmd_{args.command}")(args)
    except CliError as e:
        err.write(f"k3p crictl: {e}\n")
        return 1
    except grpc.RpcError as e:
        err.write(f"k3p crictl: {e.details() if hasattr(e, 'details') else e}\n")
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        cli.close()


def ctr_main(argv: Sequence[str], data_dir: str | Path, endpoint: str = "") -> int:
    """``k3p ctr ARGS``: containerd's ``ctr`` on the node's socket, in the CRI namespace (flags still win)."""
    env = dict(os.environ)
    env.setdefault("CONTAINERD_ADDRESS", _socket(data_dir, endpoint))
    env.setdefault("CONTAINERD_NAMESPACE", NAMESPACE)
    try:
        return subprocess.run([ctr_binary(), *argv], env=env).returncode
    except FileNotFoundError:
        sys.stderr.write("k3p ctr: containerd's ctr is not installed\n")
        return 1
    except KeyboardInterrupt:
        return 130
