"""Kubernetes resource quantities ("100m", "1.5Gi", "2e3") as exact numbers.

The grammar is the API's: an optional sign, a decimal number, then either a binary
suffix (Ki Mi Gi Ti Pi Ei), a decimal SI suffix (n u m "" k M G T P E) or a decimal
exponent (e3, E-2). The scheduler works in integers as kube-scheduler does: CPU in
millicores and everything else in units, both rounded up.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction
from functools import lru_cache

_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {"n": Fraction(1, 10**9), "u": Fraction(1, 10**6), "m": Fraction(1, 1000), "": Fraction(1),
            "k": Fraction(10**3), "M": Fraction(10**6), "G": Fraction(10**9), "T": Fraction(10**12),
            "P": Fraction(10**15), "E": Fraction(10**18)}
_QUANTITY = re.compile(r"([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))(.*)")
_EXPONENT = re.compile(r"[eE]([+-]?[0-9]+)")


class QuantityError(ValueError):
    """Text that is not a Kubernetes quantity."""


@lru_cache(maxsize=4096)
def parse_quantity(text: str | int | float) -> Fraction:
    """The exact value of a quantity: ``parse_quantity("100m") == Fraction(1, 10)``."""
    if isinstance(text, bool):
        raise QuantityError(f"not a quantity: {text!r}")
    if isinstance(text, int):
        return Fraction(text)
    if isinstance(text, float):
        return Fraction(text)
    s = str(text)
    match = _QUANTITY.fullmatch(s)
    if not match:
        raise QuantityError(f"quantities must match the regular expression "
                            f"'^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$': {text!r}")
    number, suffix = Fraction(match.group(1)), match.group(2)
    if suffix in _BINARY:
        return number * _BINARY[suffix]
    if suffix in _DECIMAL:
        return number * _DECIMAL[suffix]
    exp = _EXPONENT.fullmatch(suffix)
    if exp:
        return number * Fraction(10) ** int(exp.group(1))
    raise QuantityError(f"unable to parse quantity's suffix: {text!r}")


def value(text: str | int | float) -> int:
    """The quantity in whole units, rounded up (kube's ``Quantity.Value()``)."""
    return math.ceil(parse_quantity(text))


def milli_value(text: str | int | float) -> int:
    """The quantity in thousandths, rounded up (kube's ``Quantity.MilliValue()``): CPU in millicores."""
    return math.ceil(parse_quantity(text) * 1000)
