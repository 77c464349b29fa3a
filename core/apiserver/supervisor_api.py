"""The endpoints joining nodes use on port 6443, authenticated by the join token (K3s's model).

An agent knows only the server URL and the token. It fetches ``/cacerts`` anonymously and
checks it against the CA hash inside the token, then asks for its node credentials and
the cluster's settings here, proving itself with ``Authorization: Basic node:<secret>``.
"""

from __future__ import annotations

import base64
import hmac
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from k3p import pki as pki_mod
from k3p.apiserver.registry import builtin_registry
from k3p.apiserver.strategy import name_problems

PREFIX = "/v1-k3p"


def _secret_from(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, _, secret = base64.b64decode(value).decode().partition(":")
    except (ValueError, UnicodeDecodeError):
        return None
    return secret if user == "node" else None


def supervisor_router(server_pki: pki_mod.ServerPKI, token: str, cluster_config: Callable[[], dict[str, Any]]
                      ) -> APIRouter:
    """``POST /v1-k3p/node-credentials`` and ``GET /v1-k3p/config`` for joining nodes."""
    router = APIRouter()
    secret = pki_mod.parse_token(token).secret
    nodes = builtin_registry().get("", "v1", "nodes")

    def authorized(request: Request) -> bool:
        given = _secret_from(request)
        return given is not None and hmac.compare_digest(given.encode(), secret.encode())

    def denied() -> JSONResponse:
        return JSONResponse({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 401,
                             "reason": "Unauthorized", "message": "the join token was not accepted"}, 401)

    @router.post(f"{PREFIX}/node-credentials")
    async def node_credentials(request: Request) -> JSONResponse:
        if not authorized(request):
            return denied()
        try:
            body = await request.json()
        except ValueError:
            body = None
        name = body.get("nodeName", "") if isinstance(body, dict) else ""
        problems = name_problems(nodes, name) if isinstance(name, str) else ["nodeName must be a string"]
        if problems:
            return JSONResponse({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 422,
                                 "reason": "Invalid", "message": f"invalid node name {name!r}: {problems[0]}"}, 422)
        cert, key = pki_mod.issue_client_pem(server_pki, f"system:node:{name}", ["system:nodes"])
        addresses = [a for a in body.get("addresses") or [] if isinstance(a, str)][:16]
        serving, serving_key = pki_mod.issue_serving_pem(server_pki, f"system:node:{name}",
                                                         [name, "localhost"], ["127.0.0.1", *addresses])
        return JSONResponse({"certificate": cert.decode(), "key": key.decode(),
                             "servingCertificate": serving.decode(), "servingKey": serving_key.decode(),
                             "serverCA": server_pki.server_ca.cert_path.read_text(),
                             "clientCA": server_pki.client_ca.cert_path.read_text()})

    @router.get(f"{PREFIX}/config")
    async def config(request: Request) -> JSONResponse:
        if not authorized(request):
            return denied()
        return JSONResponse(cluster_config())

    return router
