"""Reading Prometheus' text exposition format (0.0.4): the samples of a scrape, for a client
that needs a few families of it (the apiserver's resource metrics read the kubelets'
/metrics/resource as metrics-server does).

HELP and TYPE lines and other comments are skipped; a sample line is
``name[{label="value",...}] value [timestamp_ms]``, label values with the format's escapes
(``\\\\``, ``\\"``, ``\\n``). A line that is none of these is a ValueError naming it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

_ESCAPES = {"\\": "\\", '"': '"', "n": "\n"}


@dataclass(frozen=True)
class Sample:
    name: str
    labels: dict[str, str]
    value: float
    timestamp_ms: int | None = None


def _float(text: str) -> float:
    """A sample value as the format writes it (Go's ParseFloat: NaN, +Inf, -Inf as well)."""
    if text in ("+Inf", "Inf"):
        return math.inf
    if text == "-Inf":
        return -math.inf
    if text == "NaN":
        return math.nan
    return float(text)


def _labels(line: str, i: int, lineno: int) -> tuple[dict[str, str], int]:
    """The labels of ``line`` from just after its ``{``, and the index after the ``}``."""
    labels: dict[str, str] = {}
    n = len(line)
    while True:
        while i < n and line[i] in " \t":
            i += 1
        if i < n and line[i] == "}":
            return labels, i + 1
        eq = line.find("=", i)
        if eq < 0:
            raise ValueError(f"line {lineno}: a label without a value")
        key = line[i:eq].strip()
        if not key or not (key[0].isalpha() or key[0] == "_"):
            raise ValueError(f"line {lineno}: invalid label name {key!r}")
        i = eq + 1
        if i >= n or line[i] != '"':
            raise ValueError(f"line {lineno}: label {key!r}: a value must be quoted")
        i += 1
        value = []
        while True:
            if i >= n:
                raise ValueError(f"line {lineno}: label {key!r}: its value is not closed")
            c = line[i]
            if c == '"':
                i += 1
                break
            if c == "\\" and i + 1 < n:
                value.append(_ESCAPES.get(line[i + 1], "\\" + line[i + 1]))
                i += 2
                continue
            value.append(c)
            i += 1
        labels[key] = "".join(value)
        while i < n and line[i] in " \t":
            i += 1
        if i < n and line[i] == ",":
            i += 1
        elif i >= n or line[i] != "}":
            raise ValueError(f"line {lineno}: expected , or }} after label {key!r}")


def samples(text: str) -> Iterator[Sample]:
    """Every sample of ``text``, in order."""
    for lineno, raw in enumerate(text.split("\n"), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        end = 0
        while end < len(line) and line[end] not in "{ \t":
            end += 1
        name = line[:end]
        if not name or not (name[0].isalpha() or name[0] in "_:"):
            raise ValueError(f"line {lineno}: invalid metric name {name!r}")
        labels: dict[str, str] = {}
        if end < len(line) and line[end] == "{":
            labels, end = _labels(line, end + 1, lineno)
        rest = line[end:].split()
        if len(rest) not in (1, 2):
            raise ValueError(f"line {lineno}: expected a value and at most a timestamp")
        try:
            value = _float(rest[0])
            stamp = int(rest[1]) if len(rest) == 2 else None
        except ValueError:
            raise ValueError(f"line {lineno}: invalid value or timestamp {' '.join(rest)!r}") from None
        yield Sample(name, labels, value, stamp)
