"""``k3p token create|list|delete``: bootstrap tokens for joining nodes, with a time to live.

Tokens are Kubernetes bootstrap tokens (Secrets ``kube-system/bootstrap-token-<id>`` of
type ``bootstrap.kubernetes.io/token``), as K3s and kubeadm keep them; the server's
join endpoints accept them beside the server token. The printed token carries the CA
hash like every k3p token: ``K10<sha256 of the CA>::<id>.<secret>``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import os
import re
import secrets
import string
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from k3p import pki as pki_mod
from k3p.client import ApiError, Client
from k3p.client.objects import format_time, utcnow
from k3p.client.resources import SECRETS
from k3p.config import ConfigError, default_data_dir
from k3p.durations import parse_duration

NAMESPACE = "kube-system"
SECRET_TYPE = "bootstrap.kubernetes.io/token"
TOKEN = re.compile(r"^([a-z0-9]{6})\.([a-z0-9]{16})$")
_ALPHABET = string.ascii_lowercase + string.digits


def new_bootstrap_token() -> str:
    """A random ``<6>.<16>`` token of lower-case letters and digits."""
    pick = secrets.choice
    return "".join(pick(_ALPHABET) for _ in range(6)) + "." + "".join(pick(_ALPHABET) for _ in range(16))


def token_secret(token: str, ttl: timedelta | None, description: str, usages: Sequence[str],
                 now: datetime | None = None) -> dict[str, Any]:
    """The Secret that makes ``<id>.<secret>`` a bootstrap token."""
    m = TOKEN.match(token)
    if not m:
        raise ConfigError(f"invalid token {token!r}: it must look like [a-z0-9]{{6}}.[a-z0-9]{{16}}")
    data = {"token-id": m.group(1), "token-secret": m.group(2)}
    if ttl:
        data["expiration"] = format_time((now or utcnow()) + ttl)
    if description:
        data["description"] = description
    for usage in usages:
        data[f"usage-bootstrap-{usage}"] = "true"
    data["auth-extra-groups"] = "system:bootstrappers:k3p:default-node-token"
    return {"apiVersion": "v1", "kind": "Secret", "type": SECRET_TYPE,
            "metadata": {"name": f"bootstrap-token-{m.group(1)}", "namespace": NAMESPACE},
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}}


def _field(secret: dict[str, Any], key: str) -> str:
    raw = (secret.get("data") or {}).get(key)
    return base64.b64decode(raw).decode() if raw else ""


def token_rows(items: list[dict[str, Any]], now: datetime | None = None) -> list[list[str]]:
    """TOKEN-ID, TTL, EXPIRES, USAGES, DESCRIPTION for each bootstrap-token Secret."""
    now = now or datetime.now(UTC)
    rows = []
    for s in items:
        if s.get("type") != SECRET_TYPE:
            continue
        expires = _field(s, "expiration")
        ttl = "<forever>"
        if expires:
            left = datetime.fromisoformat(expires.replace("Z", "+00:00")) - now
            ttl = "<expired>" if left.total_seconds() <= 0 else _human(left)
        usages = sorted(k.removeprefix("usage-bootstrap-") for k in (s.get("data") or {})
                        if k.startswith("usage-bootstrap-") and _field(s, k) == "true")
        rows.append([_field(s, "token-id"), ttl, expires or "<never>", ",".join(usages) or "<none>",
                     _field(s, "description") or "<none>"])
    return rows


def _human(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds >= 86400:
        return f"{seconds // 86400}d"
    if seconds >= 3600:
        return f"{seconds // 3600}h"
    return f"{max(seconds // 60, 1)}m"


def _kubeconfig(given: str) -> str:
    if given:
        return given
    for candidate in (os.environ.get("KUBECONFIG", ""), "/etc/rancher/k3p/k3p.yaml",
                      str(Path(os.environ.get("K3P_DATA_DIR") or default_data_dir()) / "server/cred/admin.kubeconfig")):
        if candidate and Path(candidate).exists():
            return candidate
    raise ConfigError("no kubeconfig found: pass --kubeconfig (is k3p server running on this machine?)")


async def _ca_hash(client: Client) -> str:
    """The CA hash for the token, from the server's own ``/cacerts`` (what agents check)."""
    pem = await client.request("GET", "/cacerts")
    return hashlib.sha256(pem.encode()).hexdigest()


async def _run(ns: argparse.Namespace) -> int:
    client = Client.from_kubeconfig(_kubeconfig(ns.kubeconfig), user_agent="k3p-token")
    try:
        if ns.action == "create":
            token = ns.token or new_bootstrap_token()
            try:
                seconds = parse_duration(ns.ttl or "0")
            except ValueError:
                raise ConfigError(f"invalid --ttl {ns.ttl!r}: use a duration such as 30m or 24h") from None
            body = token_secret(token, timedelta(seconds=seconds) if seconds > 0 else None, ns.description,
                                [u.strip() for u in ns.usages.split(",") if u.strip()])
            try:
                await client.create(SECRETS, body, NAMESPACE)
            except ApiError as e:
                if e.already_exists:
                    raise ConfigError(f"token {token.split('.')[0]} already exists") from None
                raise
            print(f"{pki_mod.TOKEN_PREFIX}{await _ca_hash(client)}::{token}")
        elif ns.action == "list":
            items = (await client.list(SECRETS, NAMESPACE, field_selector=f"type={SECRET_TYPE}")).get("items", [])
            rows = [["TOKEN", "TTL", "EXPIRES", "USAGES", "DESCRIPTION"], *token_rows(items)]
            widths = [max(len(r[i]) for r in rows) for i in range(4)]
            for r in rows:
                print("   ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "   " + r[4])
        else:
            code = 0
            for given in ns.ids:
                token_id = given.split(".")[0].rsplit(":", 1)[-1]
                try:
                    await client.delete(SECRETS, f"bootstrap-token-{token_id}", NAMESPACE)
                    print(f"bootstrap token {token_id!r} deleted")
                except ApiError as e:
                    if not e.not_found:
                        raise
                    print(f"k3p: error: bootstrap token {token_id!r} not found", file=sys.stderr)
                    code = 1
            return code
        return 0
    finally:
        await client.close()


def token_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="k3p token", description="Manage bootstrap tokens for joining nodes")
    parser.add_argument("--kubeconfig", default="", help="Admin kubeconfig (default: $KUBECONFIG, "
                        "/etc/rancher/k3p/k3p.yaml, then the data dir's admin kubeconfig)")
    sub = parser.add_subparsers(dest="action", required=True)
    create = sub.add_parser("create", help="Create a join token and print it")
    create.add_argument("token", nargs="?", default="", help="The token to create, [a-z0-9]{6}.[a-z0-9]{16} "
                        "(default: a random one)")
    create.add_argument("--ttl", default="24h", help="How long the token is valid (e.g. 30m, 24h; 0 = forever)")
    create.add_argument("--description", default="", help="A note shown by `k3p token list`")
    create.add_argument("--usages", default="signing,authentication",
                        help="Comma-separated usages (authentication is what joining needs)")
    sub.add_parser("list", help="List bootstrap tokens with their time to live")
    delete = sub.add_parser("delete", help="Delete bootstrap tokens")
    delete.add_argument("ids", nargs="+", metavar="ID", help="Token id (the 6 characters before the dot) or token")
    ns = parser.parse_args(list(argv))
    return asyncio.run(_run(ns))
