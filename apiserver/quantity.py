"""Kubernetes resource quantities ("100m", "1.5Gi", "2e3") as exact fractions.

Grammar (Kubernetes' resource.Quantity):
    quantity ::= [+-] number suffix
    number   ::= digits | digits "." [digits] | "." digits
    suffix   ::= "" | binarySI | decimalSI | ("e"|"E") [+-] digits
    binarySI ::= Ki | Mi | Gi | Ti | Pi | Ei        (powers of 1024)
    decimalSI::= n | u | m | k | M | G | T | P | E  (powers of 1000)

Values are exact (``fractions.Fraction``); the integer views round up as
Kubernetes' ``Value()`` and ``MilliValue()`` do, so "1.5m" CPU is 2 millicores
and "0.5" bytes is 1 byte.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

_BINARY = {"Ki": 1024, "Mi": 1024 ** 2, "Gi": 1024 ** 3, "Ti": 1024 ** 4,
           "Pi": 1024 ** 5, "Ei": 1024 ** 6}
_DECIMAL = {"n": Fraction(1, 10 ** 9), "u": Fraction(1, 10 ** 6), "m": Fraction(1, 1000),
            "": Fraction(1), "k": Fraction(10 ** 3), "M": Fraction(10 ** 6),
            "G": Fraction(10 ** 9), "T": Fraction(10 ** 12), "P": Fraction(10 ** 15),
            "E": Fraction(10 ** 18)}
_QUANTITY = re.compile(
    r"(?P<sign>[+-])?(?P<number>[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
    r"(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]|[eE][+-]?[0-9]+)?")
# an exponent beyond this is not a resource anyone has; refusing it keeps a
# hostile "1e999999999" from building a huge integer
_MAX_EXPONENT = 64


def parse_quantity(s: str) -> Fraction:
    """The exact value of a quantity string; ValueError when it is not one."""
    m = _QUANTITY.fullmatch(s) if isinstance(s, str) else None
    if m is None:
        raise ValueError(f"quantities must match the regular expression "
                         f"'^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$': {s!r}")
    value = Fraction(m["number"])
    suffix = m["suffix"] or ""
    if suffix in _BINARY:
        value *= _BINARY[suffix]
    elif suffix in _DECIMAL:
        value *= _DECIMAL[suffix]
    else:
        exponent = int(suffix[1:])
        if abs(exponent) > _MAX_EXPONENT:
            raise ValueError(f"quantity exponent out of range: {s!r}")
        value *= Fraction(10) ** exponent
    return -value if m["sign"] == "-" else value


def is_quantity(s: str) -> bool:
    try:
        parse_quantity(s)
    except ValueError:
        return False
    return True


def milli_cpu(s: str) -> int:
    """A CPU quantity in millicores, rounded up ("100m" -> 100, "1" -> 1000)."""
    return math.ceil(parse_quantity(s) * 1000)


def bytes_of(s: str) -> int:
    """A memory/storage quantity in bytes, rounded up ("64Mi" -> 67108864)."""
    return math.ceil(parse_quantity(s))


def format_quantity(value: Fraction | int, *, binary: bool = False) -> str:
    """A short string that parses back to exactly ``value``: the largest
    binary (``binary=True``, integers only) or decimal suffix that divides it,
    else milli/micro/nano units, else a plain decimal fraction."""
    value = Fraction(value)
    sign = "-" if value < 0 else ""
    mag = -value if value < 0 else value
    if mag == 0:
        return "0"
    if binary and mag.denominator == 1:
        for suffix, factor in reversed(list(_BINARY.items())):
            if mag % factor == 0:
                return f"{sign}{mag // factor}{suffix}"
    for suffix, factor in sorted(_DECIMAL.items(), key=lambda kv: -kv[1]):
        scaled = mag / factor
        if scaled.denominator == 1:
            return f"{sign}{scaled.numerator}{suffix}"
    # not a whole number of nano-units: write the decimal digits if finite
    denominator = mag.denominator
    twos = fives = 0
    while denominator % 2 == 0:
        denominator //= 2
        twos += 1
    while denominator % 5 == 0:
        denominator //= 5
        fives += 1
    if denominator != 1:
        raise ValueError(f"{value} has no finite decimal form")
    digits = max(twos, fives)
    scaled = mag * 10 ** digits
    return f"{sign}{scaled.numerator}e-{digits}"
