"""The error every patch engine raises for a patch it cannot apply."""

from __future__ import annotations

from k3p.apiserver.errors import APIError


class PatchError(APIError):
    """A patch that cannot be applied; ``code`` is the HTTP status the API answers with.

    400 for a patch that is malformed in itself, 422 for a well-formed patch that does
    not apply to the object (a failing ``test``, a missing path), 413 for too many
    operations. ``status()`` gives the ``Status`` object.
    """

    def __init__(self, message: str, code: int = 422) -> None:
        super().__init__(code, message)
