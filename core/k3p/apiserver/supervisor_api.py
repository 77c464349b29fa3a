"""The endpoints joining nodes use on port 6443, authenticated by a join token (K3s's model).

An agent knows only the server URL and a token. It fetches ``/cacerts`` anonymously and
checks it against the CA hash inside the token, then asks for its node credentials, the
cluster's settings and its components' client certificates here, proving itself with
``Authorization: Basic node:<secret>``. The secret is the server token's, or the
``<id>.<secret>`` of a bootstrap token made with ``k3p token create``.

A node also proves that it is the same machine as the last time its name was used: it
sends the password it keeps in its data dir (``K3p-Node-Password``); the server keeps a
hash of it in the Secret ``kube-system/<node>.node-password.k3p``. Another machine with
the same name and another password is refused while that Node exists.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from k3p import pki as pki_mod
from k3p.agent.join import PASSWORD_HEADER
from k3p.apiserver import bodies
from k3p.apiserver.errors import APIError
from k3p.apiserver.registry import builtin_registry
from k3p.apiserver.strategy import name_problems
from k3p.client import ApiError, Client
from k3p.client.resources import NODES, SECRETS

if TYPE_CHECKING:
    from collections.abc import Callable

PREFIX = "/v1-k3p"
PASSWORD_SECRET_TYPE = "k3p.io/node-password"
BOOTSTRAP_SECRET_TYPE = "bootstrap.kubernetes.io/token"
BOOTSTRAP_TOKEN = re.compile(r"^([a-z0-9]{6})\.([a-z0-9]{16})$")
COMPONENT_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
#: a join request names a node and a few addresses: 64 KiB is far more than any needs
MAX_BODY = 64 * 1024


#: components that act as the users upstream's bootstrap policy names
UPSTREAM_USERS = {
    "kube-proxy": "system:kube-proxy",
    "scheduler": "system:kube-scheduler",
    "controller-manager": "system:kube-controller-manager",
}


#: server-only components, whose credentials an agent's token cannot get
CONTROL_PLANE_COMPONENTS = frozenset({"scheduler", "controller-manager"})


def component_user(component: str) -> str:
    """The user a component acts as: ``system:k3p:<component>``, or upstream's name for its own components."""
    return UPSTREAM_USERS.get(component, f"system:k3p:{component}")


def password_secret_name(node: str) -> str:
    return f"{node}.node-password.k3p"


def hash_password(password: str, salt: bytes | None = None) -> str:
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=2**14, r=8, p=1)
    return f"scrypt${salt.hex()}${digest.hex()}"


def check_password(password: str, stored: str) -> bool:
    try:
        scheme, salt, _ = stored.split("$")
        return scheme == "scrypt" and hmac.compare_digest(hash_password(password, bytes.fromhex(salt)), stored)
    except ValueError:
        return False


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


def _status(code: int, reason: str, message: str) -> JSONResponse:
    return JSONResponse({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code,
                         "reason": reason, "message": message}, code)


def _decoded(secret: dict[str, Any], key: str) -> str:
    raw = (secret.get("data") or {}).get(key)
    if raw is None:
        return (secret.get("stringData") or {}).get(key, "")
    try:
        return base64.b64decode(raw).decode()
    except (ValueError, UnicodeDecodeError):
        return ""


class NodeIdentities:
    """Bootstrap tokens and node passwords, both kept as Secrets in kube-system through the API."""

    def __init__(self, new_client: Callable[[str], Client], own_node: str = "") -> None:
        """``own_node``: the name of the server's own node ("" with --disable-agent), never given out."""
        self.new_client = new_client
        self.own_node = own_node
        self._client: Client | None = None

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = self.new_client("k3p-supervisor")
        return self._client

    async def _get(self, res: Any, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        try:
            return await self.client.get(res, name, namespace)
        except ApiError as e:
            if e.not_found:
                return None
            raise

    async def bootstrap_token_valid(self, token: str) -> bool:
        """Whether ``<id>.<secret>`` is an unexpired bootstrap token meant for authentication."""
        m = BOOTSTRAP_TOKEN.match(token)
        if not m:
            return False
        secret = await self._get(SECRETS, f"bootstrap-token-{m.group(1)}", "kube-system")
        if not secret or secret.get("type") != BOOTSTRAP_SECRET_TYPE:
            return False
        if not hmac.compare_digest(_decoded(secret, "token-secret").encode(), m.group(2).encode()):
            return False
        if _decoded(secret, "usage-bootstrap-authentication") != "true":
            return False
        expiration = _decoded(secret, "expiration")
        if expiration:
            try:
                until = datetime.fromisoformat(expiration.replace("Z", "+00:00"))
            except ValueError:
                return False
            if until <= datetime.now(UTC):
                return False
        return True

    async def check_node_password(self, node: str, password: str) -> str | None:
        """None when ``password`` may use ``node``'s name (remembering it), else why not."""
        if not password:
            return "the node did not send its node password"
        if self.own_node and node == self.own_node:
            return f"node name {node!r} is this server's own node: start the agent with another --node-name"
        name = password_secret_name(node)
        stored = await self._get(SECRETS, name, "kube-system")
        if stored is not None and check_password(password, _decoded(stored, "hash")):
            return None
        if stored is not None and await self._get(NODES, node) is not None:
            return (f"node password rejected: a node named {node!r} already exists with another password "
                    "(duplicate node name, or its node-password file changed); use a unique --node-name, "
                    f"or delete the node first (kubectl delete node {node})")
        body = {"apiVersion": "v1", "kind": "Secret", "type": PASSWORD_SECRET_TYPE,
                "metadata": {"name": name, "namespace": "kube-system", "labels": {"k3p.io/node": node}},
                "data": {"hash": base64.b64encode(hash_password(password).encode()).decode()}}
        if stored is None:
            await self.client.create(SECRETS, body, "kube-system")
        else:
            body["metadata"]["resourceVersion"] = stored["metadata"]["resourceVersion"]
            await self.client.update(SECRETS, body)
        return None


def supervisor_router(server_pki: pki_mod.ServerPKI, token: str, cluster_config: Callable[[], dict[str, Any]],
                      identities: NodeIdentities) -> APIRouter:
    """``POST /v1-k3p/node-credentials``, ``POST /v1-k3p/component-credentials`` and ``GET /v1-k3p/config``."""
    router = APIRouter()
    secret = pki_mod.parse_token(token).secret
    nodes = builtin_registry().get("", "v1", "nodes")

    async def authorized(request: Request) -> bool:
        given = _secret_from(request)
        if given is None:
            return False
        if hmac.compare_digest(given.encode(), secret.encode()):
            return True
        return await identities.bootstrap_token_valid(given)

    def denied() -> JSONResponse:
        return _status(401, "Unauthorized", "the join token was not accepted")

    async def json_body(request: Request) -> dict[str, Any]:
        """The request's JSON object ({} for anything else); APIError 413 beyond MAX_BODY, unread."""
        raw = await bodies.read_body(request, MAX_BODY)
        try:
            body = json.loads(raw)
        except ValueError:
            return {}
        return body if isinstance(body, dict) else {}

    @router.post(f"{PREFIX}/node-credentials")
    async def node_credentials(request: Request) -> JSONResponse:
        if not await authorized(request):
            return denied()
        try:
            body = await json_body(request)
        except APIError as e:
            return _status(e.code, e.reason, e.message)
        name = body.get("nodeName", "")
        problems = name_problems(nodes, name) if isinstance(name, str) else ["nodeName must be a string"]
        if problems:
            return _status(422, "Invalid", f"invalid node name {name!r}: {problems[0]}")
        refused = await identities.check_node_password(name, request.headers.get(PASSWORD_HEADER, ""))
        if refused:
            return _status(403, "Forbidden", refused)
        cert, key = pki_mod.issue_client_pem(server_pki, f"system:node:{name}", ["system:nodes"])
        addresses = [a for a in body.get("addresses") or [] if isinstance(a, str)][:16]
        serving, serving_key = pki_mod.issue_serving_pem(server_pki, f"system:node:{name}",
                                                         [name, "localhost"], ["127.0.0.1", *addresses])
        return JSONResponse({"certificate": cert.decode(), "key": key.decode(),
                             "servingCertificate": serving.decode(), "servingKey": serving_key.decode(),
                             "serverCA": server_pki.server_ca.cert_path.read_text(),
                             "clientCA": server_pki.client_ca.cert_path.read_text()})

    @router.post(f"{PREFIX}/component-credentials")
    async def component_credentials(request: Request) -> JSONResponse:
        if not await authorized(request):
            return denied()
        try:
            component = (await json_body(request)).get("component", "")
        except APIError as e:
            return _status(e.code, e.reason, e.message)
        if not isinstance(component, str) or not COMPONENT_NAME.match(component):
            return _status(422, "Invalid", f"invalid component name {component!r}")
        if component in CONTROL_PLANE_COMPONENTS:
            # the control plane's identities never leave the server: a node's token must not open them
            return _status(403, "Forbidden", f"component {component} runs only on servers")
        cert, key = pki_mod.issue_client_pem(server_pki, component_user(component))
        return JSONResponse({"certificate": cert.decode(), "key": key.decode()})

    @router.get(f"{PREFIX}/config")
    async def config(request: Request) -> JSONResponse:
        if not await authorized(request):
            return denied()
        return JSONResponse(cluster_config())

    return router
