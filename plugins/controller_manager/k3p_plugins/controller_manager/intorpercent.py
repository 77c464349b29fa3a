"""Int-or-percent values (maxSurge, maxUnavailable, ...) resolved against a total, with kube's rounding."""

from __future__ import annotations

import math


class InvalidIntOrPercent(ValueError):
    pass


def scaled_value(value: int | str | None, total: int, round_up: bool, default: int | str = 0) -> int:
    """``value`` as an absolute number: an int stays, ``"25%"`` of ``total`` rounds up or down."""
    if value is None:
        value = default
    if isinstance(value, bool):
        raise InvalidIntOrPercent(f"invalid value {value!r}")
    if isinstance(value, int):
        return value
    text = str(value).strip()
    if text.endswith("%"):
        try:
            pct = int(text[:-1])
        except ValueError:
            raise InvalidIntOrPercent(f"invalid value for IntOrString: invalid value {value!r}") from None
        exact = pct * total / 100
        return math.ceil(exact) if round_up else math.floor(exact)
    try:
        return int(text)
    except ValueError:
        raise InvalidIntOrPercent("invalid value for IntOrString: invalid type: string is not a percentage") from None


def resolve_fenceposts(max_surge: int | str | None, max_unavailable: int | str | None, desired: int) -> tuple[int, int]:
    """(surge, unavailable) for a rolling update: surge rounds up, unavailable down, never both zero."""
    surge = scaled_value(max_surge, desired, True)
    unavailable = scaled_value(max_unavailable, desired, False)
    if surge == 0 and unavailable == 0:
        # Both zero would deadlock the rollout: allow one pod down, as kube does.
        unavailable = 1
    return surge, unavailable
