"""Go's flag value syntaxes, as etcd's and Kubernetes' components take them
on their command lines (etcdlite, the apiserver, the kubelet, kube-proxy, kctl).
"""

from __future__ import annotations

import re

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def duration(text: str, *, bare_seconds: bool = False) -> float:
    """Seconds in a Go duration ("1h0m0s", "90s", "250ms", "-1.5h", "0"), as
    Go's time.ParseDuration; ValueError with Go's text otherwise. With
    `bare_seconds`, a plain number is seconds too (flags that took
    integers before they took durations)."""
    if bare_seconds:
        try:
            return float(text)
        except ValueError:
            pass
    body = text[1:] if text[:1] in "+-" else text
    sign = -1.0 if text[:1] == "-" else 1.0
    if body == "0":
        return 0.0
    if not body:
        raise ValueError(f'time: invalid duration "{text}"')
    pos, total = 0, 0.0
    while pos < len(body):
        m = _DURATION_PART.match(body, pos)
        if not m:
            if re.match(r"(\d+(?:\.\d*)?|\.\d+)$", body[pos:]):
                raise ValueError(f'time: missing unit in duration "{text}"')
            raise ValueError(f'time: invalid duration "{text}"')
        total += float(m.group(1)) * _SECONDS[m.group(2)]
        pos = m.end()
    return sign * total
