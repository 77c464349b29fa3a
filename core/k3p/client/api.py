"""An asyncio Kubernetes API client: the one way k3p components talk to the cluster.

Objects are plain dicts (the JSON the API serves). Resources are named by
:class:`Resource` (group, version, plural, namespaced); the common ones are constants in
:mod:`k3p.client.resources`. Works against k3p and against any Kubernetes API server.
"""

from __future__ import annotations

import json
import shutil
import ssl
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

Obj = dict[str, Any]

PATCH_TYPES = {
    "merge": "application/merge-patch+json",
    "strategic": "application/strategic-merge-patch+json",
    "json": "application/json-patch+json",
    "apply": "application/apply-patch+yaml",
}


@dataclass(frozen=True)
class Resource:
    """A resource type as the API addresses it, e.g. Resource("apps", "v1", "deployments", True, "Deployment")."""

    group: str
    version: str
    plural: str
    namespaced: bool
    kind: str

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(self, namespace: str | None = None, name: str | None = None, subresource: str | None = None) -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespaced and namespace:
            base += f"/namespaces/{namespace}"
        base += f"/{self.plural}"
        if name:
            base += f"/{name}"
            if subresource:
                base += f"/{subresource}"
        return base


class ApiError(Exception):
    """A non-2xx answer; ``status`` is the HTTP code, ``reason`` the Status reason."""

    def __init__(self, status: int, body: Any) -> None:
        self.status = status
        self.body = body
        if isinstance(body, dict):
            self.reason = body.get("reason", "")
            message = body.get("message", "")
        else:
            self.reason = ""
            message = str(body)[:500]
        super().__init__(f"{status} {self.reason}: {message}")
        self.message = message

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def conflict(self) -> bool:
        return self.status == 409

    @property
    def already_exists(self) -> bool:
        return self.status == 409 and self.reason == "AlreadyExists"


def key_of(obj: Mapping[str, Any]) -> str:
    """The cache key of an object: ``namespace/name``, or ``name`` when cluster-scoped."""
    meta = obj.get("metadata") or {}
    ns = meta.get("namespace")
    return f"{ns}/{meta.get('name')}" if ns else str(meta.get("name"))


def split_key(key: str) -> tuple[str | None, str]:
    ns, sep, name = key.partition("/")
    return (ns, name) if sep else (None, ns)


class Client:
    """Verbs on resources over HTTPS. One instance per component; share its connection pool."""

    def __init__(
        self,
        base_url: str,
        *,
        ca_file: str | Path | None = None,
        cert_file: str | Path | None = None,
        key_file: str | Path | None = None,
        token: str | None = None,
        user_agent: str = "k3p",
        timeout: float = 30.0,
        max_connections: int = 100,
    ) -> None:
        ctx = ssl.create_default_context(cafile=str(ca_file)) if ca_file else ssl.create_default_context()
        if cert_file and key_file:
            ctx.load_cert_chain(str(cert_file), str(key_file))
        headers = {"User-Agent": user_agent, "Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.base_url = base_url.rstrip("/")
        self._http = httpx.AsyncClient(
            base_url=self.base_url, verify=ctx, headers=headers, timeout=timeout,
            # Keep connections well past the 10 s lease renewals so they are not re-handshaked.
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections,
                                keepalive_expiry=60),
        )

    @classmethod
    def from_kubeconfig(cls, path: str | Path, user_agent: str = "k3p") -> Client:
        """A client from a kubeconfig with embedded (``*-data``) or file credentials."""
        import base64
        import tempfile

        doc = yaml.safe_load(Path(path).read_text())
        current = doc.get("current-context")
        context = next(c["context"] for c in doc["contexts"] if c["name"] == current)
        cluster = next(c["cluster"] for c in doc["clusters"] if c["name"] == context["cluster"])
        user = next(u["user"] for u in doc["users"] if u["name"] == context["user"])
        folder = Path(tempfile.mkdtemp(prefix="k3p-client-"))

        def material(data_key: str, file_key: str, name: str) -> str | None:
            if user.get(data_key) or cluster.get(data_key):
                target = folder / name
                target.write_bytes(base64.b64decode(user.get(data_key) or cluster.get(data_key)))
                target.chmod(0o600)
                return str(target)
            return user.get(file_key) or cluster.get(file_key)

        try:
            # The SSL context reads the files now; the copies of the key need not outlive that.
            return cls(
                cluster["server"],
                ca_file=material("certificate-authority-data", "certificate-authority", "ca.crt"),
                cert_file=material("client-certificate-data", "client-certificate", "client.crt"),
                key_file=material("client-key-data", "client-key", "client.key"),
                token=user.get("token"),
                user_agent=user_agent,
            )
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    async def close(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- raw requests -----------------------------------------------------------------------

    async def request(self, method: str, path: str, *, params: Mapping[str, Any] | None = None,
                      body: Any = None, content_type: str = "application/json") -> Any:
        """One request; the decoded JSON answer, or ApiError."""
        content = None
        headers = {}
        if body is not None:
            content = body if isinstance(body, bytes) else json.dumps(body).encode()
            headers["Content-Type"] = content_type
        clean = {k: v for k, v in (params or {}).items() if v is not None}
        r = await self._http.request(method, path, params=clean, content=content, headers=headers)
        try:
            data = r.json() if r.content else None
        except ValueError:
            data = r.text
        if r.status_code >= 400:
            raise ApiError(r.status_code, data)
        return data

    # --- discovery --------------------------------------------------------------------------

    async def api_resources(self, api_version: str) -> list[Resource]:
        """The resources served at one group version (``GET /api/v1``, ``/apis/<group>/<version>``).

        Subresources (``pods/status``) are left out; [] when the server does not serve that
        group version. Asks the server every time: CRDs change what is served at run time.
        """
        group, _, version = api_version.rpartition("/")
        if not version or "/" in group:
            return []
        path = f"/apis/{group}/{version}" if group else f"/api/{version}"
        try:
            doc = await self.request("GET", path)
        except ApiError as e:
            if e.not_found:
                return []
            raise
        return [Resource(group, version, r["name"], bool(r.get("namespaced")), r.get("kind", ""))
                for r in (doc or {}).get("resources") or () if "/" not in r.get("name", "/")]

    async def resource_for(self, api_version: str, kind: str) -> Resource | None:
        """The served resource of ``kind`` in ``api_version`` (scope and plural from discovery), or None."""
        return next((r for r in await self.api_resources(api_version) if r.kind == kind), None)

    # --- verbs ------------------------------------------------------------------------------

    async def get(self, res: Resource, name: str, namespace: str | None = None,
                  subresource: str | None = None) -> Obj:
        return await self.request("GET", res.path(namespace, name, subresource))

    async def list(self, res: Resource, namespace: str | None = None, *, label_selector: str | None = None,
                   field_selector: str | None = None, limit: int | None = None, continue_: str | None = None,
                   resource_version: str | None = None) -> Obj:
        params = {"labelSelector": label_selector, "fieldSelector": field_selector, "limit": limit,
                  "continue": continue_, "resourceVersion": resource_version}
        return await self.request("GET", res.path(namespace), params=params)

    async def create(self, res: Resource, obj: Obj, namespace: str | None = None, *,
                     field_manager: str | None = None, dry_run: bool = False) -> Obj:
        ns = namespace or (obj.get("metadata") or {}).get("namespace")
        params = {"fieldManager": field_manager, "dryRun": "All" if dry_run else None}
        return await self.request("POST", res.path(ns), params=params, body=obj)

    async def create_subresource(self, res: Resource, name: str, subresource: str, obj: Obj,
                                 namespace: str | None = None) -> Obj:
        """POST to a subresource: ``pods/binding``, ``pods/eviction``, ``serviceaccounts/token``."""
        return await self.request("POST", res.path(namespace, name, subresource), body=obj)

    async def update(self, res: Resource, obj: Obj, *, subresource: str | None = None,
                     field_manager: str | None = None) -> Obj:
        """PUT ``obj`` (its metadata.resourceVersion makes it a compare-and-swap)."""
        meta = obj["metadata"]
        params = {"fieldManager": field_manager}
        return await self.request("PUT", res.path(meta.get("namespace"), meta["name"], subresource),
                                  params=params, body=obj)

    async def update_status(self, res: Resource, obj: Obj, field_manager: str | None = None) -> Obj:
        return await self.update(res, obj, subresource="status", field_manager=field_manager)

    async def patch(self, res: Resource, name: str, patch: Any, namespace: str | None = None, *,
                    patch_type: str = "merge", subresource: str | None = None, field_manager: str | None = None,
                    force: bool | None = None) -> Obj:
        params = {"fieldManager": field_manager, "force": ("true" if force else "false") if force is not None
                  else None}
        body = yaml.safe_dump(patch).encode() if patch_type == "apply" and not isinstance(patch, bytes) else patch
        return await self.request("PATCH", res.path(namespace, name, subresource), params=params, body=body,
                                  content_type=PATCH_TYPES[patch_type])

    async def delete(self, res: Resource, name: str, namespace: str | None = None, *,
                     grace_period_seconds: int | None = None, propagation_policy: str | None = None,
                     preconditions: Obj | None = None) -> Obj | None:
        body: Obj = {"kind": "DeleteOptions", "apiVersion": "v1"}
        if grace_period_seconds is not None:
            body["gracePeriodSeconds"] = grace_period_seconds
        if propagation_policy:
            body["propagationPolicy"] = propagation_policy
        if preconditions:
            body["preconditions"] = preconditions
        return await self.request("DELETE", res.path(namespace, name), body=body)

    async def watch(self, res: Resource, namespace: str | None = None, *, resource_version: str | None = None,
                    label_selector: str | None = None, field_selector: str | None = None,
                    timeout_seconds: int | None = None, allow_bookmarks: bool = True
                    ) -> AsyncIterator[tuple[str, Obj]]:
        """(type, object) pairs: ADDED, MODIFIED, DELETED, BOOKMARK; ERROR raises ApiError (410 when expired)."""
        params = {"watch": "true", "resourceVersion": resource_version, "labelSelector": label_selector,
                  "fieldSelector": field_selector, "timeoutSeconds": timeout_seconds,
                  "allowWatchBookmarks": "true" if allow_bookmarks else None}
        clean = {k: v for k, v in params.items() if v is not None}
        async with self._http.stream("GET", res.path(namespace), params=clean,
                                     timeout=httpx.Timeout(30.0, read=None)) as r:
            if r.status_code >= 400:
                body = await r.aread()
                try:
                    raise ApiError(r.status_code, json.loads(body))
                except ValueError:
                    raise ApiError(r.status_code, body.decode(errors="replace")) from None
            async for line in r.aiter_lines():
                if not line:
                    continue
                event = json.loads(line)
                if event.get("type") == "ERROR":
                    status = event.get("object") or {}
                    raise ApiError(int(status.get("code") or 500), status)
                yield event["type"], event["object"]
