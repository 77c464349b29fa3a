"""The kubelet's own HTTPS endpoint (port 10250): what the API server proxies ``pods/log``,
``pods/exec``, ``pods/attach`` and ``pods/portforward`` to (the streams: :mod:`k3p.agent.streaming`).

Only the API server may call it: requests must carry a client certificate from the
cluster's client CA whose user is ``system:kube-apiserver`` or in ``system:masters``.
"""

from __future__ import annotations

import datetime as dt
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

from k3p.agent.streaming import KubeletStreams
from k3p.protocols.runtime import (
    LABEL_CONTAINER_NAME,
    LABEL_POD_NAME,
    LABEL_POD_NAMESPACE,
    ContainerStatus,
    Runtime,
)
from k3p.supervisor import Component, Ready, TaskComponent

ALLOWED_USERS = {"system:kube-apiserver"}
ALLOWED_GROUPS = {"system:masters"}


def parse_cri_line(line: bytes) -> tuple[str, str, bool, bytes]:
    """``<RFC3339Nano> <stdout|stderr> <P|F> <text>`` -> (timestamp, stream, partial, text)."""
    parts = line.rstrip(b"\n").split(b" ", 3)
    if len(parts) < 4:
        return "", "stdout", False, line.rstrip(b"\n")
    ts, stream, tag, text = parts
    return ts.decode(errors="replace"), stream.decode(errors="replace"), tag == b"P", text


def _since_ok(ts: str, since: dt.datetime | None) -> bool:
    if since is None or not ts:
        return True
    try:
        # RFC3339Nano: trim the fraction to microseconds for fromisoformat
        head, _, frac = ts.rstrip("Z").partition(".")
        when = dt.datetime.fromisoformat(head + ("." + frac[:6] if frac else "")).replace(tzinfo=dt.UTC)
    except ValueError:
        return True
    return when >= since


async def _raw_lines(runtime: Runtime, status: ContainerStatus, follow: bool, tail: int | None
                     ) -> AsyncIterator[bytes]:
    if tail is None:
        async for raw in runtime.read_log(status, follow=follow):
            yield raw
        return
    existing = [raw async for raw in runtime.read_log(status, follow=False)]
    for raw in existing[-tail:] if tail > 0 else []:
        yield raw
    if follow:
        # read_log starts at the beginning: skip what was already there, then go on live
        seen = 0
        async for raw in runtime.read_log(status, follow=True):
            seen += 1
            if seen > len(existing):
                yield raw


async def container_log(runtime: Runtime, status: ContainerStatus, *, follow: bool, tail: int | None,
                        since: dt.datetime | None, timestamps: bool, limit_bytes: int | None) -> AsyncIterator[bytes]:
    """The container's output as ``kubectl logs`` shows it (CRI framing removed)."""
    sent = 0
    async for raw in _raw_lines(runtime, status, follow, tail):
        ts, _stream, partial, text = parse_cri_line(raw)
        if not _since_ok(ts, since):
            continue
        out = (ts.encode() + b" " if timestamps and ts else b"") + text + (b"" if partial else b"\n")
        if limit_bytes is not None and sent + len(out) > limit_bytes:
            yield out[: max(0, limit_bytes - sent)]
            return
        sent += len(out)
        yield out


def kubelet_app(runtime: Runtime, node_name: str) -> FastAPI:
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)

    def allowed_scope(scope: dict[str, Any]) -> bool:
        user = scope.get("extensions", {}).get("k3p.client_cert_user")
        return user is not None and (user.name in ALLOWED_USERS or bool(set(user.groups) & ALLOWED_GROUPS))

    def allowed(request: Request) -> bool:
        return allowed_scope(request.scope)

    streams = KubeletStreams(runtime, allowed_scope)
    app.router.add_websocket_route("/exec/{namespace}/{pod}/{container}", streams.exec)
    app.router.add_websocket_route("/attach/{namespace}/{pod}/{container}", streams.attach)
    app.router.add_websocket_route("/portForward/{namespace}/{pod}", streams.port_forward)

    @app.get("/healthz")
    async def healthz() -> PlainTextResponse:
        return PlainTextResponse("ok")

    @app.get("/containerLogs/{namespace}/{pod}/{container}")
    async def logs(request: Request, namespace: str, pod: str, container: str) -> Response:
        if not allowed(request):
            return JSONResponse({"message": "Unauthorized"}, 401)
        q = request.query_params
        previous = q.get("previous") in ("true", "1")
        candidates = [
            c for c in await runtime.list_containers()
            if c.labels.get(LABEL_POD_NAMESPACE) == namespace and c.labels.get(LABEL_POD_NAME) == pod
            and c.labels.get(LABEL_CONTAINER_NAME) == container
        ]
        candidates.sort(key=lambda c: (c.attempt, c.created_at))
        if previous:
            candidates = candidates[:-1]
        if not candidates:
            what = "previous terminated container" if previous else "container"
            return PlainTextResponse(f'{what} "{container}" in pod "{pod}" not found', 404)
        status = candidates[-1]
        since = None
        if q.get("sinceTime"):
            since = dt.datetime.fromisoformat(q["sinceTime"].replace("Z", "+00:00"))
        elif q.get("sinceSeconds"):
            since = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=int(q["sinceSeconds"]))
        tail = int(q["tailLines"]) if q.get("tailLines") not in (None, "") else None
        limit = int(q["limitBytes"]) if q.get("limitBytes") not in (None, "") else None
        stream = container_log(runtime, status, follow=q.get("follow") in ("true", "1"), tail=tail, since=since,
                               timestamps=q.get("timestamps") in ("true", "1"), limit_bytes=limit)
        return StreamingResponse(stream, media_type="text/plain")

    return app


def kubelet_server_component(runtime: Runtime, node_name: str, *, host: str, port: int, certfile: Path,
                             keyfile: Path, client_ca: Path, bound: socket.socket | None = None) -> Component:
    """The kubelet endpoint of one node as a component (``kubelet-api-<node>``); ``bound``: the
    socket reserved for it (hollow nodes), else it binds ``host``:``port``."""
    from k3p.apiserver.auth import CertHttpToolsProtocol, CertWebSocketProtocol
    from k3p.apiserver.listener import serve_https

    app = kubelet_app(runtime, node_name)

    async def run(ready: Ready) -> None:
        await serve_https(app, host=host, port=port, certfile=certfile, keyfile=keyfile, client_ca=client_ca,
                          ready=ready, http=CertHttpToolsProtocol, ws=CertWebSocketProtocol,
                          # a restart binds the port again: the reserved socket closed with the first run
                          bound=bound if bound is not None and bound.fileno() != -1 else None)

    return TaskComponent(f"kubelet-api-{node_name}", run)
