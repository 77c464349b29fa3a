"""Reaching a node's kubelet from the API server, for ``pods/log`` (and later exec/attach/port-forward)."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import httpx
from k3p.apiserver.errors import APIError, bad_request
from starlette.responses import Response, StreamingResponse

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


class KubeletProxy:
    """HTTPS to kubelets with the API server's kubelet-client certificate, verifying their serving certs."""

    def __init__(self, ca_file: Path, cert_file: Path, key_file: Path) -> None:
        ctx = ssl.create_default_context(cafile=str(ca_file))
        ctx.load_cert_chain(str(cert_file), str(key_file))
        self._http = httpx.AsyncClient(verify=ctx, timeout=httpx.Timeout(10.0, read=None))

    async def close(self) -> None:
        await self._http.aclose()

    async def logs(self, node: Mapping[str, Any], pod: Mapping[str, Any], query: Mapping[str, str]) -> Response:
        meta = pod["metadata"]
        containers = [c["name"] for c in (pod.get("spec") or {}).get("containers") or []]
        container = query.get("container")
        if not container:
            if len(containers) != 1:
                raise bad_request(f"a container name must be specified for pod {meta['name']}, choose one of: "
                                  f"[{' '.join(containers)}]")
            container = containers[0]
        known = containers + [c["name"] for c in (pod.get("spec") or {}).get("initContainers") or []]
        if container not in known:
            raise bad_request(f"container {container} is not valid for pod {meta['name']}")
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
