"""The runtime's memory of its sandboxes and containers: one JSON file per object under the
runtime root, written atomically, read back by a restarted runtime.

The files are the truth and the dicts their cache: a restarted runtime (and the kubelet behind
it) must find the containers conmon kept running, with their ids, names, times and exit codes.
Names are reserved as containerd reserves them: one sandbox per (name, namespace, uid, attempt)
and one container per (container name, sandbox, attempt), so a kubelet retrying a create after a
timeout cannot get two.
"""

from __future__ import annotations

import json
import os
import threading


class NameReserved(Exception):
    """The name is taken by another object (the message names it)."""


def write_json(path: str, data: dict) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, separators=(",", ":"))
    os.replace(tmp, path)


def read_json(path: str) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (FileNotFoundError, ValueError):
        return None


class RecordStore:
    """Records (dicts with an "id") kept in ``<dir>/<id>/<filename>``, plus the name index."""

    def __init__(self, directory: str, filename: str):
        self.dir = directory
        self.filename = filename
        os.makedirs(directory, exist_ok=True)
        self.lock = threading.RLock()
        self.records: dict[str, dict] = {}
        self.names: dict[str, str] = {}  # reserved name -> id

    def path(self, rid: str, *parts: str) -> str:
        return os.path.join(self.dir, rid, *parts)

    def load(self) -> list[dict]:
        """Read every record left by a previous runtime; directories without one (a create
        that died half-way) are returned as {"id": ..., "partial": True} for the caller to
        clean."""
        out = []
        for rid in sorted(os.listdir(self.dir)):
            if not os.path.isdir(self.path(rid)):
                continue
            rec = read_json(self.path(rid, self.filename))
            if rec is None or rec.get("id") != rid:
                out.append({"id": rid, "partial": True})
                continue
            with self.lock:
                self.records[rid] = rec
                if rec.get("reserved_name"):
                    self.names[rec["reserved_name"]] = rid
            out.append(rec)
        return out

    def reserve(self, name: str, rid: str) -> None:
        with self.lock:
            holder = self.names.get(name)
            if holder is not None and holder != rid:
                raise NameReserved(f"the name {name!r} is reserved for {holder}")
            self.names[name] = rid

    def release(self, name: str, rid: str) -> None:
        with self.lock:
            if self.names.get(name) == rid:
                del self.names[name]

    def save(self, rec: dict) -> None:
        with self.lock:
            self.records[rec["id"]] = rec
            os.makedirs(self.path(rec["id"]), exist_ok=True)
            write_json(self.path(rec["id"], self.filename), rec)

    def get(self, rid: str) -> dict | None:
        with self.lock:
            return self.records.get(rid)

    def find(self, rid: str) -> dict | None:
        """By full id, or by a unique id prefix (as crictl lets users type them)."""
        with self.lock:
            rec = self.records.get(rid)
            if rec is not None or not rid:
                return rec
            found = [r for k, r in self.records.items() if k.startswith(rid)]
            return found[0] if len(found) == 1 else None

    def all(self) -> list[dict]:
        with self.lock:
            return list(self.records.values())

    def forget(self, rid: str) -> None:
        with self.lock:
            rec = self.records.pop(rid, None)
            if rec and rec.get("reserved_name"):
                self.release(rec["reserved_name"], rid)
