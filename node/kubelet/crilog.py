"""The CRI container log format, as runtimes write it and `kubectl logs` reads it.

A CRI runtime (conmon, containerd) writes one record a line:
``<RFC3339Nano timestamp> <stdout|stderr> <P|F>[:more tags] <content>``, where P marks a
fragment of a longer line that the next records of the same stream continue and F ends it.
What a user reads is the content, lines joined, optionally prefixed by their timestamp.

Pure parts, no waiting: the timestamp functions, ``parse_record``, ``LineJoiner`` (records in,
lines out) and ``tail_offset`` (where the last N lines of a file start, read backwards).
node.kubelet.logs reads and follows files with them.
"""

from __future__ import annotations

import calendar
import os
import re
import time
from dataclasses import dataclass, field

STDOUT, STDERR = "stdout", "stderr"
_STREAM_NAMES = {b"stdout": STDOUT, b"stderr": STDERR}
TAIL_BLOCK = 64 * 1024  # bytes tail_offset reads at a time, backwards

_TIMESTAMP = re.compile(
    rb"(\d{4})-(\d\d)-(\d\d)[Tt](\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?([Zz]|[+-]\d\d:\d\d)\Z")


# ---- timestamps ----

def parse_timestamp(text: bytes | str) -> tuple[int, int]:
    """An RFC 3339 time (fractions to nanoseconds, as CRI logs write them) as (nanoseconds since
    the epoch, the UTC offset in seconds it was written with); ValueError if it is not one."""
    raw = text.encode() if isinstance(text, str) else text
    m = _TIMESTAMP.match(raw)
    if m is None:
        raise ValueError(f"not an RFC 3339 time: {raw.decode(errors='replace')!r}")
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    fraction = m.group(7) or b""
    nanos = int(fraction.ljust(9, b"0")) if fraction else 0
    zone = m.group(8)
    offset = 0
    if zone not in (b"Z", b"z"):
        sign = -1 if zone[:1] == b"-" else 1
        offset = sign * (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60)
    if not (1 <= month <= 12 and 1 <= day <= 31 and hour < 24 and minute < 60 and second < 61):
        raise ValueError(f"not an RFC 3339 time: {raw.decode(errors='replace')!r}")
    seconds = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0)) - offset
    return seconds * 1_000_000_000 + nanos, offset


def format_timestamp(nanos: int, offset: int = 0) -> str:
    """Kubernetes' RFC3339NanoFixed: always nine fraction digits, ``Z`` for UTC, else the offset
    the time was written with (``2024-05-01T10:00:00.120000000+02:00``)."""
    seconds, frac = divmod(nanos, 1_000_000_000)
    t = time.gmtime(seconds + offset)
    zone = "Z"
    if offset:
        sign = "-" if offset < 0 else "+"
        hours, minutes = divmod(abs(offset) // 60, 60)
        zone = f"{sign}{hours:02d}:{minutes:02d}"
    return f"{time.strftime('%Y-%m-%dT%H:%M:%S', t)}.{frac:09d}{zone}"


# ---- records ----

@dataclass(slots=True)
class Record:
    """One line of a CRI log file."""

    timestamp: bytes
    stream: str
    partial: bool
    content: bytes


def parse_record(line: bytes) -> Record:
    """One CRI log line, without its newline; ValueError if it is not one. The timestamp is
    checked for its shape only (parse_timestamp reads it when it is needed)."""
    ts, _, rest = line.partition(b" ")
    stream_name, _, rest = rest.partition(b" ")
    tags, sep, content = rest.partition(b" ")
    stream = _STREAM_NAMES.get(stream_name)
    if stream is None:
        raise ValueError(f"unexpected stream type {stream_name[:16]!r}")
    if not sep and not tags:
        raise ValueError("log tag is not found")
    if len(ts) < 20 or ts[4:5] != b"-" or ts[10:11] not in (b"T", b"t"):
        raise ValueError(f"timestamp is not found in {line[:40]!r}")
    # tags are P or F, maybe followed by ":other" tags (forward compatible, as upstream)
    return Record(ts, stream, tags.split(b":", 1)[0] == b"P", content)


@dataclass
class _OpenLine:
    """A stream's line whose records have not all arrived."""

    first_timestamp: bytes = b""
    parts: list[bytes] = field(default_factory=list)
    started: bool = False  # some of it was written out already
    shown: bool | None = None  # None: not decided yet (since)


class LineJoiner:
    """Records in, the text a user reads out, a line at a time: fragments of a stream joined,
    streams other than ``streams`` dropped, lines whose first record is before ``since_ns``
    left out, their time put in front with ``timestamps``. Pure: no files, no clock."""

    def __init__(self, streams: tuple[str, ...] = (STDOUT, STDERR), since_ns: int | None = None,
                 timestamps: bool = False) -> None:
        self.streams = streams
        self.since_ns = since_ns
        self.timestamps = timestamps
        self._open: dict[str, _OpenLine] = {}

    def add(self, record: Record) -> bytes | None:
        """The line ``record`` completes (b"" if it is left out by ``since``); None if it
        completes none (a fragment, or a stream not shown)."""
        if record.stream not in self.streams:
            return None
        line = self._open.get(record.stream)
        if line is None:
            line = self._open[record.stream] = _OpenLine(record.timestamp)
        line.parts.append(record.content)
        if record.partial:
            return None
        del self._open[record.stream]
        return self._render(line, b"\n")

    def open_streams(self) -> list[str]:
        """The streams with a line begun and not ended, in the order those lines began."""
        return list(self._open)

    def drop(self, stream: str) -> None:
        """Forget the stream's open line (a tail left it out): its later records, if any,
        are shown as they come."""
        line = self._open.get(stream)
        if line is not None:
            line.parts = []
            line.started = True

    def flush(self) -> bytes:
        """What the open lines hold so far, written out now (their next records continue them,
        without a second timestamp): for a follower that reached the end of the file."""
        out = []
        for line in self._open.values():
            if line.parts:
                out.append(self._render(line, b""))
                line.started = True
                line.parts = []
        return b"".join(out)

    def _render(self, line: _OpenLine, end: bytes) -> bytes:
        if line.shown is None:
            line.shown = self.since_ns is None or self._time_of(line.first_timestamp) >= self.since_ns
        if not line.shown:
            return b""
        text = b"".join(line.parts) + end
        if self.timestamps and not line.started:
            nanos, offset = self._parsed(line.first_timestamp)
            text = format_timestamp(nanos, offset).encode() + b" " + text
        return text

    @staticmethod
    def _parsed(raw: bytes) -> tuple[int, int]:
        try:
            return parse_timestamp(raw)
        except ValueError:
            return 0, 0

    def _time_of(self, raw: bytes) -> int:
        return self._parsed(raw)[0]


# ---- where the last N lines start ----

def tail_offset(f, n: int, streams: tuple[str, ...] = (STDOUT, STDERR), block: int = 0) -> int:
    """The offset in the open binary file ``f`` from which the last ``n`` lines (as LineJoiner
    makes them, of ``streams``) can be read, found by reading backwards. It may start earlier
    than the first of them (never later) when the streams' fragments interleave: the reader
    keeps the last n it completes. A trailing line whose F record has not come counts."""
    block = block or TAIL_BLOCK
    f.seek(0, os.SEEK_END)
    end = f.tell()
    if n <= 0:
        # nothing of the past: start after the last whole record
        pos, tail = end, b""
        while pos > 0:
            size = min(block, pos)
            f.seek(pos - size)
            chunk = f.read(size) + tail
            i = chunk.rfind(b"\n")
            if i >= 0:
                return pos - size + i + 1
            pos, tail = pos - size, chunk
        return 0
    counted = 0
    seen: set[str] = set()  # streams met so far (going backwards)
    unfinished: set[str] = set()  # streams whose earliest counted line's start is still ahead
    pos, carry = end, b""
    while pos > 0:
        size = min(block, pos)
        pos -= size
        f.seek(pos)
        chunk = f.read(size) + carry
        lines = chunk.split(b"\n")
        # lines[0] may be cut by the block boundary: keep it for the next block (unless at 0)
        carry = lines.pop(0) if pos > 0 else b""
        line_end = pos + len(chunk)  # offset just past the last line of this chunk
        if chunk.endswith(b"\n"):
            lines.pop()  # the empty piece after the final newline
            line_end -= 1
        for raw in reversed(lines):
            start = line_end - len(raw)
            line_end = start - 1
            try:
                rec = parse_record(raw)
            except ValueError:
                continue
            s = rec.stream
            if s not in streams:
                continue
            if not rec.partial:
                if s in unfinished:
                    unfinished.discard(s)
                    if counted >= n and not unfinished:
                        return start + len(raw) + 1
                if counted < n:
                    counted += 1
                    unfinished.add(s)
            elif s not in seen and counted < n:
                counted += 1  # a line still being written: its F record has not come
                unfinished.add(s)
            seen.add(s)
    return 0
