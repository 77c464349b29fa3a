"""k3p: a lightweight Kubernetes distribution in Python."""

from k3p.hookspecs import HOOK_API_VERSION, hookimpl

__version__ = "0.1.0"
__all__ = ["HOOK_API_VERSION", "__version__", "hookimpl"]
