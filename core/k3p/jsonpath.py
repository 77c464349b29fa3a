"""Kubernetes-style JSONPath (``.spec.replicas``, ``.status.conditions[?(@.type=="Ready")].status``).

Kubernetes writes paths relative to the object with a leading dot, optionally wrapped in
``{...}`` as kubectl's ``-o jsonpath`` does. Evaluation is delegated to ``jsonpath-ng``
(its extended dialect has the filter expressions kube uses); this module only translates the
notation and caches compiled paths, which are costly to build.
"""

from __future__ import annotations

import functools
import re
from typing import Any

from jsonpath_ng.ext import parse as _ng_parse

__all__ = ["JSONPathError", "compile_path", "find"]


class JSONPathError(ValueError):
    """A path that cannot be parsed."""


_PLAIN_NAME = re.compile(r"^([A-Za-z_][A-Za-z0-9_-]*|\*)$")


def _to_ng(path: str) -> str:
    """kube notation -> jsonpath-ng notation (``\\.`` escapes in names become ``['a.b']``)."""
    text = path.strip()
    if text.startswith("{") and text.endswith("}"):
        text = text[1:-1].strip()
    if text.startswith("$"):
        text = text[1:]
    out = ["$"]
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == "[":
            # brackets (indexes, slices, filters, quoted keys) pass through unchanged
            depth, quote, j = 0, "", i
            while j < n:
                c = text[j]
                if quote:
                    if c == quote:
                        quote = ""
                elif c in "'\"":
                    quote = c
                elif c == "[":
                    depth += 1
                elif c == "]":
                    depth -= 1
                    if depth == 0:
                        break
                j += 1
            out.append(text[i : j + 1])
            i = j + 1
        elif ch == ".":
            if text.startswith("..", i):
                out.append("..")
                i += 2
            else:
                i += 1
        else:
            name = []
            while i < n and text[i] not in ".[":
                if text[i] == "\\" and i + 1 < n:
                    i += 1
                name.append(text[i])
                i += 1
            word = "".join(name)
            if _PLAIN_NAME.match(word):
                out.append(word if out[-1] == ".." else "." + word)
            else:
                quoted = word.replace("\\", "\\\\").replace("'", "\\'")
                out.append(f"['{quoted}']")
    return "".join(out)


@functools.lru_cache(maxsize=512)
def compile_path(path: str) -> Any:
    """Compile a kube-style path once; raises :class:`JSONPathError` when it does not parse."""
    try:
        return _ng_parse(_to_ng(path))
    except Exception as err:  # the parser raises several unrelated types
        raise JSONPathError(f"unrecognized column definition {path!r}: {err}") from None


def find(path: str, obj: Any) -> list[Any]:
    """All values ``path`` selects in ``obj`` (missing keys select nothing)."""
    return [match.value for match in compile_path(path).find(obj)]
