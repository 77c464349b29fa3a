"""Joining a cluster with a server URL and a token: CA check, node credentials, cluster settings."""

from __future__ import annotations

import hashlib
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from k3p import pki as pki_mod


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


async def fetch_ca(server_url: str, token: str) -> bytes:
    """The server's CA bundle, checked against the hash in a ``K10...`` token."""
    # Nothing can be verified before we have the CA: trust comes from the token's hash.
    try:
        async with httpx.AsyncClient(verify=False, timeout=10) as http:
            r = await http.get(f"{server_url}/cacerts")
    except httpx.HTTPError as e:
        raise JoinError(f"cannot reach the server at {server_url}: {e or type(e).__name__}") from None
    if r.status_code != 200:
        raise JoinError(f"the server at {server_url} did not hand out its CA (HTTP {r.status_code})")
    wanted = pki_mod.parse_token(token).ca_hash
    if wanted and hashlib.sha256(r.content).hexdigest() != wanted:
        raise JoinError(f"the CA of {server_url} does not match the token's CA hash: wrong token or server")
    return r.content


async def join(server_url: str, token: str, node_name: str, folder: Path,
               addresses: list[str] | None = None) -> NodeCredentials:
    """Get credentials for ``node_name`` and write them under ``folder``; raises JoinError."""
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
                                    json={"nodeName": node_name, "addresses": addresses or []})
            if creds.status_code == 401:
                raise JoinError(f"the server at {server_url} refused the join token")
            if creds.status_code != 200:
                raise JoinError(f"the server refused node {node_name!r}: {creds.json().get('message', creds.text)}")
            cluster = await http.get("/v1-k3p/config")
            cluster.raise_for_status()
    except httpx.HTTPError as e:
        raise JoinError(f"cannot reach the server at {server_url}: {e or type(e).__name__}") from None
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
                           client_ca)
