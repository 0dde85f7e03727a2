"""Prometheus' text exposition format (0.0.4), and client_golang's process collector.

Shared by every server here that answers a scrape (etcdlite's metrics listener, the kubelet's
/metrics endpoints): each keeps its own families' names and help texts, as the upstream
component it stands for does; this only writes them.
"""

from __future__ import annotations

import os
import resource

# the Content-Type of the text exposition format
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

COUNTER, GAUGE, HISTOGRAM = "counter", "gauge", "histogram"


def _value(v) -> str:
    if isinstance(v, int):
        return str(v)
    if v != v:
        return "NaN"
    if v in (float("inf"), float("-inf")):
        return "+Inf" if v > 0 else "-Inf"
    return repr(v)


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def family_text(name: str, kind: str, help_text: str, samples) -> str:
    """One family: its HELP and TYPE lines, then `samples`, each (suffix, labels, value) or
    (suffix, labels, value, timestamp in ms): suffix appended to the name (a histogram's
    _bucket, _sum, _count), labels a tuple of (name, value) pairs."""
    lines = [f"# HELP {name} {_escape_help(help_text)}", f"# TYPE {name} {kind}"]
    for suffix, labels, value, *stamp in samples:
        line = f"{name}{suffix}"
        if labels:
            line += "{" + ",".join(f'{k}="{_escape_label(v)}"' for k, v in labels) + "}"
        line += f" {_value(value)}"
        if stamp:
            line += f" {int(stamp[0])}"
        lines.append(line)
    return "\n".join(lines) + "\n"


def histogram_samples(bounds, counts, total: float) -> list:
    """The samples of a histogram kept as `counts` per bucket (the last:
    above every bound): cumulative buckets, +Inf, _sum, _count (the +Inf
    bucket's, so the two always agree)."""
    samples, seen = [], 0
    for bound, n in zip(bounds, counts):
        seen += n
        samples.append(("_bucket", (("le", repr(bound)),), seen))
    seen += counts[len(bounds)]
    samples.append(("_bucket", (("le", "+Inf"),), seen))
    samples.append(("_sum", (), total))
    samples.append(("_count", (), seen))
    return samples


# ---------------------------------------------------------------------------
# the process, from /proc (client_golang's process collector)

PROCESS_FAMILIES: dict[str, tuple[str, str]] = {
    "process_cpu_seconds_total": (COUNTER, "Total user and system CPU time spent in seconds."),
    "process_max_fds": (GAUGE, "Maximum number of open file descriptors."),
    "process_open_fds": (GAUGE, "Number of open file descriptors."),
    "process_resident_memory_bytes": (GAUGE, "Resident memory size in bytes."),
    "process_start_time_seconds": (GAUGE, "Start time of the process since unix epoch in seconds."),
    "process_virtual_memory_bytes": (GAUGE, "Virtual memory size in bytes."),
}

_PAGE = os.sysconf("SC_PAGE_SIZE")
_TICKS = os.sysconf("SC_CLK_TCK")


def boot_time() -> float:
    """The machine's boot, in seconds since the epoch (/proc/stat's btime; 0 without it)."""
    try:
        with open("/proc/stat", "rb") as f:
            return float(next(int(line.split()[1]) for line in f if line.startswith(b"btime ")))
    except (OSError, StopIteration, IndexError, ValueError):
        return 0.0


def _start_time() -> float:
    """Seconds since the epoch at which this process started (its start in
    clock ticks after boot, plus the boot time)."""
    try:
        with open("/proc/self/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return boot_time() + int(fields[19]) / _TICKS
    except (OSError, IndexError, ValueError):
        return 0.0


_START_TIME = _start_time()


def _process(name: str, value) -> str:
    kind, help_text = PROCESS_FAMILIES[name]
    return family_text(name, kind, help_text, [("", (), value)])


def process_text() -> str:
    times = os.times()
    parts = [_process("process_cpu_seconds_total", times.user + times.system)]
    try:
        parts.append(_process("process_max_fds", resource.getrlimit(resource.RLIMIT_NOFILE)[0]))
        parts.append(_process("process_open_fds", len(os.listdir("/proc/self/fd"))))
        with open("/proc/self/statm", "rb") as f:
            size, resident = f.read().split()[:2]
        parts.append(_process("process_resident_memory_bytes", int(resident) * _PAGE))
        parts.append(_process("process_start_time_seconds", _START_TIME))
        parts.append(_process("process_virtual_memory_bytes", int(size) * _PAGE))
    except (OSError, ValueError):
        pass  # no /proc: only what the OS gives without it
    return "".join(parts)


class Histogram:
    """Observations counted per bucket (``bounds`` ascending; the last count: above them all),
    for ``histogram_samples``. Thread-safe enough for counters: one lock around each change."""

    def __init__(self, bounds) -> None:
        import threading

        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.total = 0.0
        self._lock = threading.Lock()

    def observe(self, value: float) -> None:
        i = next((i for i, b in enumerate(self.bounds) if value <= b), len(self.bounds))
        with self._lock:
            self.counts[i] += 1
            self.total += value

    def samples(self) -> list:
        with self._lock:
            return histogram_samples(self.bounds, list(self.counts), self.total)
