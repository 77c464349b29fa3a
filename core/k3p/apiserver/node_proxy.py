"""Reaching a node's kubelet from the API server: ``pods/log`` over HTTPS, ``pods/exec``,
``pods/attach`` and ``pods/portforward`` over WebSocket (see :mod:`k3p.apiserver.streaming`)."""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncIterator, Iterable, Mapping
from pathlib import Path
from typing import Any

import httpx
import websockets
from starlette.responses import Response, StreamingResponse
from websockets.asyncio.client import ClientConnection

from k3p.apiserver import streaming
from k3p.apiserver.errors import APIError, bad_request

DEFAULT_KUBELET_PORT = 10250
LOG_PARAMS = ("container", "follow", "previous", "sinceSeconds", "sinceTime", "timestamps", "tailLines",
              "limitBytes")


def kubelet_address(node: Mapping[str, Any]) -> tuple[str, int]:
    """(InternalIP or Hostname, kubelet port) of a Node, as the API server dials it."""
    status = node.get("status") or {}
    addresses = {a.get("type"): a.get("address") for a in status.get("addresses") or []}
    host = addresses.get("InternalIP") or addresses.get("Hostname")
    if not host:
        raise APIError(503, f"node {node['metadata']['name']} has no address to reach its kubelet",
                       "ServiceUnavailable")
    port = ((status.get("daemonEndpoints") or {}).get("kubeletEndpoint") or {}).get("Port") or DEFAULT_KUBELET_PORT
    return host, int(port)


def pod_container(pod: Mapping[str, Any], container: str | None) -> str:
    """The container a request is for: the one named, or the pod's only one (400 otherwise)."""
    meta = pod["metadata"]
    spec = pod.get("spec") or {}
    containers = [c["name"] for c in spec.get("containers") or []]
    if not container:
        if len(containers) != 1:
            raise bad_request(f"a container name must be specified for pod {meta['name']}, choose one of: "
                              f"[{' '.join(containers)}]")
        return containers[0]
    known = containers + [c["name"] for key in ("initContainers", "ephemeralContainers")
                          for c in spec.get(key) or []]
    if container not in known:
        raise bad_request(f"container {container} is not valid for pod {meta['name']}")
    return container


class KubeletProxy:
    """HTTPS to kubelets with the API server's kubelet-client certificate, verifying their serving certs."""

    def __init__(self, ca_file: Path, cert_file: Path, key_file: Path) -> None:
        ctx = ssl.create_default_context(cafile=str(ca_file))
        ctx.load_cert_chain(str(cert_file), str(key_file))
        self._ssl = ctx
        self._http = httpx.AsyncClient(verify=ctx, timeout=httpx.Timeout(10.0, read=None))

    async def close(self) -> None:
        await self._http.aclose()

    async def logs(self, node: Mapping[str, Any], pod: Mapping[str, Any], query: Mapping[str, str]) -> Response:
        meta = pod["metadata"]
        container = pod_container(pod, query.get("container"))
        host, port = kubelet_address(node)
        params = {k: v for k, v in query.items() if k in LOG_PARAMS and k != "container"}
        url = f"https://{host}:{port}/containerLogs/{meta['namespace']}/{meta['name']}/{container}"
        request = self._http.build_request("GET", url, params=params)
        try:
            upstream = await self._http.send(request, stream=True)
        except httpx.HTTPError as e:
            raise APIError(502, f"cannot reach the kubelet of node {node['metadata']['name']}: {e}",
                           "ServiceUnavailable") from None
        if upstream.status_code != 200:
            body = (await upstream.aread()).decode(errors="replace")
            await upstream.aclose()
            raise bad_request(body.strip() or f"kubelet answered {upstream.status_code}")

        async def relay() -> AsyncIterator[bytes]:
            try:
                async for chunk in upstream.aiter_raw():
                    yield chunk
            finally:
                await upstream.aclose()

        return StreamingResponse(relay(), media_type="text/plain")

    async def open_stream(self, node: Mapping[str, Any], pod: Mapping[str, Any], subresource: str,
                          query: Iterable[tuple[str, str]], protocol: str) -> ClientConnection:
        """The kubelet's WebSocket for ``pods/exec|attach|portforward`` with the client's subprotocol.

        Raises APIError with the kubelet's own message when it refuses (no such container,
        a runtime that cannot stream) or cannot be reached.
        """
        meta = pod["metadata"]
        items = list(query)
        container = ""
        if subresource != "portforward":
            container = pod_container(pod, dict(items).get("container"))
        try:
            path = streaming.kubelet_path(subresource, meta["namespace"], meta["name"], container, items)
        except ValueError as e:
            raise bad_request(str(e)) from None
        host, port = kubelet_address(node)
        url = f"wss://{host}:{port}{path}"
        try:
            return await streaming.dial(url, protocol, self._ssl)
        except websockets.exceptions.InvalidStatus as e:
            raise _kubelet_refusal(e.response.status_code, e.response.body or b"") from None
        except (OSError, TimeoutError, websockets.exceptions.WebSocketException) as e:
            raise APIError(502, f"cannot reach the kubelet of node {node['metadata']['name']}: {e}",
                           "ServiceUnavailable") from None


def _kubelet_refusal(code: int, body: bytes) -> APIError:
    """The kubelet's refusal (a Status, or plain text) as the error the client gets."""
    message, reason = body.decode(errors="replace").strip(), ""
    try:
        status = json.loads(body)
        message, reason = status.get("message") or message, status.get("reason") or ""
    except (ValueError, AttributeError):
        pass
    if code not in (400, 404):
        code, reason = 500, ""
    return APIError(code, message or f"the kubelet answered {code}", reason or None)
