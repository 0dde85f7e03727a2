"""Watch over HTTP: the registry's watch as newline-delimited JSON events
({"type", "object"}) in a chunked response, as kube-apiserver streams them.

An error after the stream started (a resourceVersion too old: 410 Expired,
a watcher that fell behind) is an ERROR event whose object is the Status,
then the stream ends; ``timeoutSeconds`` ends it cleanly. Bookmarks carry
only the kind, apiVersion and resourceVersion, as Kubernetes sends them.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import OrderedDict

from apiserver.errors import ApiError
from apiserver.rest import convert, tables
from apiserver.rest.status import status_dict


def _line(kind: str, obj: dict) -> bytes:
    return json.dumps({"type": kind, "object": obj}, separators=(",", ":")).encode() + b"\n"


INITIAL_EVENTS_END = "k8s.io/initial-events-end"


class SharedLines:
    """The JSON line of a cached object's event, built once and shared by every
    REST watch that sends it (the watch cache hands every watcher the same,
    never modified, object), as service.SharedWatchEvents does for gRPC. Keeps
    the last ``capacity`` lines with the objects they were built from, so an
    id() is never reused while its entry lives."""

    def __init__(self, capacity: int = 4096) -> None:
        self.capacity = capacity
        self._lines: OrderedDict[tuple[str, int], tuple[object, bytes]] = OrderedDict()

    def line(self, kind: str, msg) -> bytes:
        key = (kind, id(msg))
        hit = self._lines.get(key)
        if hit is not None and hit[0] is msg:
            return hit[1]
        data = _line(kind, convert.to_json(msg))
        self._lines[key] = (msg, data)
        if len(self._lines) > self.capacity:
            self._lines.popitem(last=False)
        return data


async def stream(events, res, *, timeout: float | None, table_type: str = "", include: str = "",
                 initial: tuple[list, int] | None = None, shared: SharedLines | None = None):
    """The bytes of each event of ``events`` (the registry's watch iterator).
    ``initial`` (objects, revision): sendInitialEvents' ADDED events first, then
    the bookmark that ends them, annotated as Kubernetes does."""
    deadline = time.monotonic() + timeout if timeout else None
    it = aiter(events)
    first_table = True
    try:
        if initial is not None:
            objects, revision = initial
            for msg in objects:
                obj = convert.to_json(msg)
                if table_type:
                    t = tables.table(res.name, [obj], {"resourceVersion": str(revision)}, include)
                    if not first_table:
                        t["columnDefinitions"] = []
                    first_table = False
                    obj = t
                yield _line("ADDED", obj)
            yield _line("BOOKMARK", {"kind": res.kind, "apiVersion": res.api_version,
                                     "metadata": {"resourceVersion": str(revision),
                                                  "annotations": {INITIAL_EVENTS_END: "true"}}})
        while True:
            try:
                if deadline is None:
                    kind, msg = await anext(it)
                else:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return
                    kind, msg = await asyncio.wait_for(anext(it), left)
            except (StopAsyncIteration, asyncio.TimeoutError):
                return
            except ApiError as e:
                yield _line("ERROR", status_dict(e))
                return
            if kind == "BOOKMARK":
                obj = {"kind": res.kind, "apiVersion": res.api_version,
                       "metadata": {"resourceVersion": msg.metadata.resource_version}}
                yield _line(kind, obj)
                continue
            if not table_type and shared is not None:
                yield shared.line(kind, msg)
                continue
            obj = convert.to_json(msg)
            if table_type:
                # a Table per event; only the first carries the column definitions
                t = tables.table(res.name, [obj], {"resourceVersion": msg.metadata.resource_version},
                                 include)
                if not first_table:
                    t["columnDefinitions"] = []
                first_table = False
                obj = t
            yield _line(kind, obj)
    finally:
        if hasattr(events, "aclose"):
            await events.aclose()
