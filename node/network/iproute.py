"""Running iproute2's ``ip``: one place that spawns it, batches commands and turns a failure into
a ``NetworkError`` carrying the command and its stderr.

``ip -n NS -batch -`` sets up a whole namespace in one process (a few milliseconds), which is what
keeps a pod attach well under the 100 ms a CNI plugin is allowed to feel instant."""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess

from node import namespaces

NETNS_DIR = "/run/netns"  # where ``ip netns add`` bind-mounts the namespaces it names


class NetworkError(Exception):
    """An ``ip`` command (or a namespace operation) failed. ``cmd`` is what ran, ``stderr`` what
    it said; the message ends with what to check next."""

    def __init__(self, cmd: str, stderr: str, hint: str = "") -> None:
        self.cmd = cmd
        self.stderr = stderr.strip()
        msg = f"{cmd!s} failed: {self.stderr or '(no output)'}"
        if hint:
            msg += f" ({hint})"
        super().__init__(msg)


@functools.cache
def ip_binary() -> str | None:
    """The path of ``ip``, or None where iproute2 is not installed; looked up once (a PATH
    search per pod is CPU for nothing)."""
    return shutil.which("ip") or next(
        (p for p in ("/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip") if os.access(p, os.X_OK)), None)


def ip(*args: str, netns: str | None = None, batch: list[str] | None = None,
       force: bool = False, check: bool = True) -> subprocess.CompletedProcess:
    """Run ``ip [-n NETNS] ARGS`` or, given ``batch``, ``ip [-n NETNS] [-force] -batch -`` fed
    those command lines. ``force`` carries on past failing lines (used by cleanup, where "already
    gone" is fine); otherwise the first failing line stops the batch and raises."""
    exe = ip_binary()
    if exe is None:
        raise NetworkError("ip", "not found", "install iproute2")
    argv = [exe]
    if netns is not None:
        argv += ["-n", netns]
    stdin = None
    if batch is not None:
        if force:
            argv.append("-force")
        argv += ["-batch", "-"]
        stdin = "".join(line + "\n" for line in batch)
    argv += list(args)
    proc = subprocess.run(argv, input=stdin, capture_output=True, text=True)
    if check and proc.returncode != 0:
        shown = " ".join(argv[1:]) + ("" if batch is None else " <<< " + "; ".join(batch))
        raise NetworkError("ip " + shown, proc.stderr or proc.stdout,
                           "run it by hand as root to see the state it met")
    return proc


def ip_json(*args: str, netns: str | None = None) -> list[dict]:
    """``ip -j [-n NETNS] ARGS`` parsed; an empty answer is an empty list."""
    out = ip("-j", *args, netns=netns).stdout.strip()
    return json.loads(out) if out else []


def link_names(netns: str | None = None) -> set[str]:
    """The names of every link in a namespace (the root one when ``netns`` is None)."""
    return {link["ifname"] for link in ip_json("link", "show", netns=netns)}


def netns_names() -> list[str]:
    """The named network namespaces (``ip netns list``), read from /run/netns directly: no
    process, and no race with a namespace being added by someone else."""
    try:
        return sorted(os.listdir(NETNS_DIR))
    except FileNotFoundError:
        return []


def netns_exists(name: str) -> bool:
    return os.path.exists(os.path.join(NETNS_DIR, name))


_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,200}")


def check_name(name: str, what: str = "network namespace") -> str:
    """Names go into ``ip -batch`` lines and /run/netns paths: no spaces, slashes or options."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise ValueError(f"bad {what} name {name!r}: letters, digits, '_', '.', '-'")
    return name


def create_netns(name: str) -> None:
    """``ip netns add NAME``, done in-process (node.namespaces: no ``ip`` process per pod); an
    existing namespace of that name is kept (a restarted plane or runtime finds what it made)."""
    check_name(name)
    if netns_exists(name):
        return
    try:
        namespaces.add_named_netns(NETNS_DIR, name)
    except FileExistsError:
        pass  # made meanwhile by someone else: kept, as above
    except OSError as e:
        raise NetworkError(f"ip netns add {name}", e.strerror or str(e),
                           "needs root (CAP_SYS_ADMIN) and a writable /run") from e


def delete_netns(name: str) -> None:
    """``ip netns del NAME``, done in-process; an absent namespace is not an error. The kernel
    frees the namespace (and the veths in it, with their peers) when its last process or open
    handle is gone."""
    check_name(name)
    if not netns_exists(name):
        return
    try:
        namespaces.delete_named_netns(NETNS_DIR, name)
    except FileNotFoundError:
        pass
    except OSError as e:
        raise NetworkError(f"ip netns del {name}", e.strerror or str(e),
                           "is something still mounted on /run/netns/" + name + "?") from e
