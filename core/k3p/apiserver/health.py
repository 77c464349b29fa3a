"""Health, version and CA endpoints: the parts of the API that need no credentials."""

from __future__ import annotations

import platform
from collections.abc import Callable
from pathlib import Path

from fastapi import APIRouter, Response

import k3p

KUBERNETES_MAJOR = "1"
KUBERNETES_MINOR = "32"
GIT_VERSION = f"v1.32.0+k3p{k3p.__version__}"


def version_info() -> dict[str, str]:
    """The /version document. kubectl on these machines picks its own version from major/minor."""
    return {
        "major": KUBERNETES_MAJOR,
        "minor": KUBERNETES_MINOR,
        "gitVersion": GIT_VERSION,
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "",
        "goVersion": f"python{platform.python_version()}",
        "compiler": "cpython",
        "platform": f"linux/{platform.machine().replace('x86_64', 'amd64').replace('aarch64', 'arm64')}",
    }


def health_router(ready: Callable[[], dict[str, bool]], ca_file: Path) -> APIRouter:
    """``/healthz``, ``/livez``, ``/readyz`` (with ``?verbose``), ``/version`` and ``/cacerts``.

    ``ready`` returns each component's readiness; /readyz is 200 only when all are ready.
    """
    router = APIRouter()

    def probe(kind: str, checks: dict[str, bool], verbose: bool) -> Response:
        healthy = all(checks.values())
        if verbose:
            lines = [f"[{'+' if ok else '-'}]{name} {'ok' if ok else 'failed'}" for name, ok in checks.items()]
            lines.append(f"{kind} check {'passed' if healthy else 'failed'}")
            body = "\n".join(lines) + "\n"
        else:
            body = "ok" if healthy else f"{kind} check failed"
        return Response(body, status_code=200 if healthy else 500, media_type="text/plain; charset=utf-8")

    @router.get("/healthz")
    @router.get("/livez")
    async def livez(verbose: str | None = None) -> Response:
        return probe("livez", {"ping": True}, verbose is not None)

    @router.get("/readyz")
    async def readyz(verbose: str | None = None) -> Response:
        return probe("readyz", {"ping": True, **ready()}, verbose is not None)

    @router.get("/version")
    async def version() -> dict[str, str]:
        return version_info()

    ca_pem = ca_file.read_bytes()  # the CA never changes while the server runs

    @router.get("/cacerts")
    async def cacerts() -> Response:
        # Joining agents fetch this anonymously and check it against the token's CA hash.
        return Response(ca_pem, media_type="text/plain")

    return router
