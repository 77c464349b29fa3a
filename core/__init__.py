"""k3p: a lightweight Kubernetes distribution in Python."""

from k3p.hookspecs import hookimpl

__version__ = "0.1.0"
__all__ = ["__version__", "hookimpl"]
