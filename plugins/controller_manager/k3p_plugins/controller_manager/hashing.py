"""Names derived from content: kube's fnv-32a hashes spelled with its "safe" alphabet.

Kubernetes names ReplicaSets ``<deployment>-<pod-template-hash>`` and ControllerRevisions
``<owner>-<hash>`` with a 32-bit FNV-1a hash written in decimal and re-spelled with an
alphabet that has no vowels (no accidental words) and no look-alike characters.
"""

from __future__ import annotations

import json
from typing import Any

_ALPHANUMS = "bcdfghjklmnpqrstvwxz2456789"
_FNV_OFFSET = 0x811C9DC5
_FNV_PRIME = 0x01000193


def fnv32a(data: bytes) -> int:
    h = _FNV_OFFSET
    for byte in data:
        h ^= byte
        h = (h * _FNV_PRIME) & 0xFFFFFFFF
    return h


def safe_encode(text: str) -> str:
    """Each character mapped into the safe alphabet (kube's rand.SafeEncodeString)."""
    return "".join(_ALPHANUMS[ord(ch) % len(_ALPHANUMS)] for ch in text)


def canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def compute_hash(value: Any, collision_count: int | None = None) -> str:
    """The hash of a pod template (plus the owner's collisionCount) as it appears in names and labels."""
    data = canonical_json(value)
    if collision_count:
        data += str(collision_count).encode()
    return safe_encode(str(fnv32a(data)))
