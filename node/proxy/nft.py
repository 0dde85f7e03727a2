"""Running ``nft`` and ``conntrack`` inside a node's network namespace.

The proxy runs in the root namespace (like the kubelet) and programs the node's namespace: each
call is ``nsenter --net=/run/netns/<ns> nft ...``, so no thread of ours ever changes namespace and
the root namespace's netfilter is never touched. One ``nft -f -`` is one kernel transaction: all
of it applies, or none.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

from node.network.netns import netns_path

from .rules import FAMILY, TABLE


class NftError(Exception):
    """An nft (or conntrack) call failed; ``stderr`` is what it said."""

    def __init__(self, what: str, stderr: str, hint: str = "") -> None:
        self.stderr = stderr.strip()
        msg = f"{what} failed: {self.stderr or '(no output)'}"
        if hint:
            msg += f" ({hint})"
        super().__init__(msg)


def nft_binary() -> str | None:
    return shutil.which("nft") or next(
        (p for p in ("/usr/sbin/nft", "/sbin/nft") if os.access(p, os.X_OK)), None)


def conntrack_binary() -> str | None:
    return shutil.which("conntrack") or next(
        (p for p in ("/usr/sbin/conntrack", "/sbin/conntrack") if os.access(p, os.X_OK)), None)


def _in_netns(netns: str, argv: list[str]) -> list[str]:
    path = netns_path(netns)
    if not os.path.exists(path):
        raise NftError(f"enter network namespace {netns}", "no such namespace",
                       "is the node's namespace created (Fabric.add_node)?")
    return ["nsenter", f"--net={path}", *argv]


def run_script(netns: str, script: str, timeout: float = 120.0) -> None:
    """Apply ``script`` (nft commands, one a line) as one transaction in ``netns``."""
    exe = nft_binary()
    if exe is None:
        raise NftError("nft", "not found", "install Debian's nftables (apt-get install nftables)")
    proc = subprocess.run(_in_netns(netns, [exe, "-f", "-"]), input=script, capture_output=True,
                          text=True, timeout=timeout)
    if proc.returncode != 0:
        raise NftError(f"nft -f - in {netns}", proc.stderr or proc.stdout,
                       "the whole transaction was refused; nothing changed")


def nft(netns: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    exe = nft_binary()
    if exe is None:
        raise NftError("nft", "not found", "install Debian's nftables (apt-get install nftables)")
    proc = subprocess.run(_in_netns(netns, [exe, *args]), capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise NftError(f"nft {' '.join(args)} in {netns}", proc.stderr)
    return proc


def _json_objects(netns: str, what: str) -> list[dict]:
    proc = nft(netns, "-j", "list", what, FAMILY, check=False)
    if proc.returncode != 0:
        return []
    out = []
    for item in json.loads(proc.stdout or '{"nftables": []}').get("nftables", []):
        obj = item.get(what[:-1])  # "chains" -> "chain"
        if obj and obj.get("table") == TABLE:
            out.append(obj)
    return out


def table_exists(netns: str) -> bool:
    return nft(netns, "list", "table", FAMILY, TABLE, check=False).returncode == 0


def list_chains(netns: str) -> set[str]:
    """Names of the chains in our table (empty when there is no table)."""
    return {c["name"] for c in _json_objects(netns, "chains")}


def list_sets(netns: str) -> set[str]:
    return {s["name"] for s in _json_objects(netns, "sets")}


def list_table(netns: str) -> str:
    """``nft list table ip kube-proxy`` (the rules as nft prints them), "" when absent."""
    proc = nft(netns, "list", "table", FAMILY, TABLE, check=False)
    return proc.stdout if proc.returncode == 0 else ""


def delete_table(netns: str) -> None:
    """Remove everything kube-proxy made in ``netns`` (``--cleanup``). Absent is fine."""
    run_script(netns, f"add table {FAMILY} {TABLE}\ndelete table {FAMILY} {TABLE}\n")


def conntrack_delete(netns: str, *filters: str) -> int:
    """``conntrack -D FILTERS`` in ``netns``; returns how many entries went. None matching is not
    an error (conntrack exits 1 then)."""
    exe = conntrack_binary()
    if exe is None:
        raise NftError("conntrack", "not found", "apt-get install conntrack")
    proc = subprocess.run(_in_netns(netns, [exe, "-D", *filters]), capture_output=True, text=True)
    text = proc.stderr + proc.stdout
    m = re.search(r"(\d+) flow entries have been deleted", text)
    if m is None and proc.returncode != 0:
        raise NftError(f"conntrack -D {' '.join(filters)} in {netns}", text)
    return int(m.group(1)) if m else 0
