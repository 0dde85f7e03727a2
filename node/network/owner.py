"""Who owns a plane's prefix: a marker ``/run/<prefix>.owner`` holding the owner's pid and start
time. A test run killed by SIGKILL cannot clean up after itself; the next run's ``sweep`` finds
markers whose process is gone and removes what their planes left. A pid alone could be reused by
an unrelated process, hence the start time (field 22 of /proc/PID/stat) beside it."""

from __future__ import annotations

import os
import re

RUN_DIR = "/run"
_PREFIX_RE = re.compile(r"[a-z][a-z0-9]{2,}(-[a-z0-9]+)*")
PLANE_PREFIX_RE = re.compile(r"kp[0-9a-f]{4}")


def check_prefix(prefix: str) -> None:
    """Refuse a prefix that could match things this package did not make (an empty one would
    match every namespace on the machine)."""
    if not isinstance(prefix, str) or not _PREFIX_RE.fullmatch(prefix):
        raise ValueError(f"bad plane prefix {prefix!r}: expected e.g. 'kp3fa2' or 'kp3fa2-n0'")


def marker_path(prefix: str) -> str:
    return os.path.join(RUN_DIR, f"{prefix}.owner")


def _start_time(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22; the comm before ")" may hold spaces


def claim(prefix: str, pid: int | None = None) -> None:
    """Record ``pid`` (default: this process) as the owner of ``prefix``."""
    check_prefix(prefix)
    pid = os.getpid() if pid is None else pid
    path = marker_path(prefix)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(f"{pid} {_start_time(pid)}\n")
    os.replace(tmp, path)


def release(prefix: str) -> None:
    try:
        os.unlink(marker_path(prefix))
    except FileNotFoundError:
        pass


def owner_alive(prefix: str) -> bool | None:
    """True/False for a marked prefix whose owner lives/does not; None when there is no marker."""
    try:
        with open(marker_path(prefix)) as f:
            pid_s, start = f.read().split()
    except FileNotFoundError:
        return None
    except ValueError:
        return False  # a torn or foreign file: nobody can be vouching for it
    return _start_time(int(pid_s)) == start


def marked_prefixes() -> list[str]:
    try:
        names = os.listdir(RUN_DIR)
    except FileNotFoundError:
        return []
    return sorted(n[:-len(".owner")] for n in names
                  if n.endswith(".owner") and PLANE_PREFIX_RE.fullmatch(n[:-len(".owner")]))
