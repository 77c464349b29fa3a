"""Joining a cluster with a server URL and a token: CA check, node credentials, cluster settings."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from k3p import pki as pki_mod
from k3p.log import error_text

#: the header a joining node sends its node password in
PASSWORD_HEADER = "K3p-Node-Password"


class JoinError(Exception):
    """Joining failed for a reason the user can act on (one line)."""


@dataclass(frozen=True)
class NodeCredentials:
    """Where a node's credentials are: its API client certificate, its kubelet serving
    certificate (for port 10250) and the CAs to check the server and the server's calls."""

    server_url: str
    ca_file: Path
    cert_file: Path
    key_file: Path
    cluster: dict[str, Any]
    serving_cert_file: Path | None = None
    serving_key_file: Path | None = None
    client_ca_file: Path | None = None
    #: the join token, for fetching component certificates later
    token: str = ""


async def fetch_ca(server_url: str, token: str) -> bytes:
    """The server's CA bundle, checked against the hash in a ``K10...`` token."""
    # Nothing can be verified before we have the CA: trust comes from the token's hash.
    try:
        async with httpx.AsyncClient(verify=False, timeout=10) as http:
            r = await http.get(f"{server_url}/cacerts")
    except httpx.HTTPError as e:
        raise JoinError(f"cannot reach the server at {server_url}: {error_text(e)}") from None
    if r.status_code != 200:
        raise JoinError(f"the server at {server_url} did not hand out its CA (HTTP {r.status_code})")
    wanted = pki_mod.parse_token(token).ca_hash
    if wanted and hashlib.sha256(r.content).hexdigest() != wanted:
        raise JoinError(f"the CA of {server_url} does not match the token's CA hash: wrong token or server")
    return r.content


def node_password(agent_dir: Path, node_name: str) -> str:
    """The password this machine proves ``node_name`` with (K3s keeps one per host).

    A random secret is made once in ``<agent dir>/node-password``; each node name gets its
    own password derived from it, so the simulated nodes of one process differ too.
    """
    path = agent_dir / "node-password"
    try:
        base = path.read_text().strip()
    except FileNotFoundError:
        base = ""
    if not base:
        base = secrets.token_hex(16)
        pki_mod.write_private(path, base.encode())
    return hmac.new(base.encode(), node_name.encode(), hashlib.sha256).hexdigest()


def _refusal(response: httpx.Response) -> str:
    try:
        return response.json().get("message") or response.text
    except ValueError:
        return response.text


async def join(server_url: str, token: str, node_name: str, folder: Path,
               addresses: list[str] | None = None, password: str = "") -> NodeCredentials:
    """Get credentials for ``node_name`` and write them under ``folder``; raises JoinError.

    ``password`` is the node password (see ``node_password``) that binds the name to this machine.
    """
    server_url = server_url.rstrip("/")
    if not token:
        raise JoinError("a join token is needed: --token, --token-file or K3P_TOKEN")
    ca = await fetch_ca(server_url, token)
    folder.mkdir(parents=True, exist_ok=True)
    ca_file = folder / "server-ca.crt"
    pki_mod.write_private(ca_file, ca, 0o644)
    secret = pki_mod.parse_token(token).secret
    ctx = ssl.create_default_context(cafile=str(ca_file))
    try:
        async with httpx.AsyncClient(base_url=server_url, verify=ctx, auth=("node", secret), timeout=15) as http:
            creds = await http.post("/v1-k3p/node-credentials",
                                    json={"nodeName": node_name, "addresses": addresses or []},
                                    headers={PASSWORD_HEADER: password})
            if creds.status_code == 401:
                raise JoinError(f"the server at {server_url} refused the join token")
            if creds.status_code != 200:
                raise JoinError(f"the server refused node {node_name!r}: {_refusal(creds)}")
            cluster = await http.get("/v1-k3p/config")
            cluster.raise_for_status()
    except httpx.HTTPError as e:
        raise JoinError(f"cannot reach the server at {server_url}: {error_text(e)}") from None
    data = creds.json()
    cert_file, key_file = folder / f"client-kubelet-{node_name}.crt", folder / f"client-kubelet-{node_name}.key"
    pki_mod.write_private(key_file, data["key"].encode())
    pki_mod.write_private(cert_file, data["certificate"].encode(), 0o644)
    serving_cert, serving_key = folder / f"serving-kubelet-{node_name}.crt", folder / f"serving-kubelet-{node_name}.key"
    pki_mod.write_private(serving_key, data["servingKey"].encode())
    pki_mod.write_private(serving_cert, data["servingCertificate"].encode(), 0o644)
    client_ca = folder / "client-ca.crt"
    pki_mod.write_private(client_ca, data["clientCA"].encode(), 0o644)
    return NodeCredentials(server_url, ca_file, cert_file, key_file, cluster.json(), serving_cert, serving_key,
                           client_ca, token=token)


async def fetch_cluster_settings(creds: NodeCredentials) -> dict[str, Any]:
    """The cluster settings the server hands out now (``/v1-k3p/config``); raises httpx.HTTPError."""
    secret = pki_mod.parse_token(creds.token).secret
    verify = ssl.create_default_context(cafile=str(creds.ca_file))
    async with httpx.AsyncClient(base_url=creds.server_url, verify=verify, auth=("node", secret), timeout=15) as http:
        response = await http.get("/v1-k3p/config")
        response.raise_for_status()
        return response.json()


def component_credentials(creds: NodeCredentials, component: str, folder: Path) -> tuple[Path, Path]:
    """A client certificate for one of the node's components (``system:k3p:<component>``), kept in ``folder``.

    Fetched from the server once and reused. Blocking: components ask for their client
    once, when they start.
    """
    cert_file, key_file = folder / f"client-{component}.crt", folder / f"client-{component}.key"
    if cert_file.exists() and key_file.exists():
        return cert_file, key_file
    secret = pki_mod.parse_token(creds.token).secret
    try:
        with httpx.Client(base_url=creds.server_url, verify=ssl.create_default_context(cafile=str(creds.ca_file)),
                          auth=("node", secret),
                          timeout=15) as http:
            r = http.post("/v1-k3p/component-credentials", json={"component": component})
    except httpx.HTTPError as e:
        raise JoinError(f"cannot reach the server at {creds.server_url}: {error_text(e)}") from None
    if r.status_code != 200:
        raise JoinError(f"the server refused credentials for component {component!r}: {_refusal(r)}")
    data = r.json()
    pki_mod.write_private(key_file, data["key"].encode())
    pki_mod.write_private(cert_file, data["certificate"].encode(), 0o644)
    return cert_file, key_file
