"""Container logs as the kubelet serves them to `kubectl logs`: CRI-format files read with
tail, since, timestamps, byte limits, stream selection, and follow.

A CRI runtime (conmon, containerd) writes one record a line:
``<RFC3339Nano timestamp> <stdout|stderr> <P|F>[:more tags] <content>``, where P marks a
fragment of a longer line that the next records of the same stream continue and F ends it.
What a user reads is the content, lines joined, optionally prefixed by their timestamp.

Where this differs from upstream's pkg/kubelet/kuberuntime/logs (on purpose):
- fragments are joined per stream into one line with one timestamp (upstream prefixes every
  fragment with its own), and ``tail_lines`` counts those joined lines (upstream counts
  records, so a long line can take several of the N);
- a followed file replaced by log rotation is reopened, and a truncated one read again from
  its start (upstream keeps reading the old file);
- following waits by polling the file (every ``poll`` seconds) rather than by inotify, and asks
  whether the container still runs every ``state_check`` seconds (upstream: at each wake-up,
  at least every second).

The parts: ``parse_record`` and the timestamp functions are pure; ``LineJoiner`` turns records
into output lines; ``tail_offset`` finds where the last N lines start; ``LogReader`` reads a file
through them without blocking; ``read_log`` (threads) and ``aread_log`` (asyncio) drive a reader,
following until the container has exited and its file is drained.
"""

from __future__ import annotations

import asyncio
import calendar
import os
import re
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field

STDOUT, STDERR = "stdout", "stderr"
# PodLogOptions.stream values -> the CRI streams they select
STREAMS = {"": (STDOUT, STDERR), "All": (STDOUT, STDERR), "Stdout": (STDOUT,), "Stderr": (STDERR,)}
_STREAM_NAMES = {b"stdout": STDOUT, b"stderr": STDERR}

READ_CHUNK = 64 * 1024  # bytes read from the file per step: one step's output is about this big
POLL_INTERVAL = 0.1  # seconds between looks at a followed file that had nothing new
STATE_CHECK_INTERVAL = 1.0  # seconds between asking whether a followed container still runs

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


# ---- options ----

@dataclass(frozen=True)
class LogOptions:
    """What a reader shows. ``tail_lines`` None: every line; ``limit_bytes`` None: no limit;
    ``since_ns``: lines whose (first record's) time is earlier are left out."""

    tail_lines: int | None = None
    limit_bytes: int | None = None
    since_ns: int | None = None
    follow: bool = False
    timestamps: bool = False
    streams: tuple[str, ...] = (STDOUT, STDERR)


def log_options(*, tail_lines: int | None = None, limit_bytes: int | None = None,
                since_seconds: int | None = None, since_time: str = "", follow: bool = False,
                timestamps: bool = False, stream: str = "", now_ns: int | None = None) -> LogOptions:
    """LogOptions from PodLogOptions' fields, as the kubelet makes them: ``since_seconds`` counts
    back from now; with both since fields the later time wins. ValueError on a bad time or stream."""
    if stream not in STREAMS:
        raise ValueError(f'unsupported stream "{stream}": choose All, Stdout or Stderr')
    since = None
    if since_seconds is not None:
        now = time.time_ns() if now_ns is None else now_ns
        since = now - since_seconds * 1_000_000_000
    if since_time:
        t = parse_timestamp(since_time)[0]
        if since is None or t > since:
            since = t
    return LogOptions(tail_lines=tail_lines if tail_lines is None or tail_lines >= 0 else None,
                      limit_bytes=limit_bytes if limit_bytes is None or limit_bytes > 0 else None,
                      since_ns=since, follow=follow, timestamps=timestamps, streams=STREAMS[stream])


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
    streams the options leave out dropped, lines before ``since`` left out, timestamps put in
    front. Pure: no files, no clock."""

    def __init__(self, opts: LogOptions) -> None:
        self.opts = opts
        self._open: dict[str, _OpenLine] = {}

    def add(self, record: Record) -> bytes | None:
        """The line ``record`` completes (b"" if it is left out by ``since``); None if it
        completes none (a fragment, or a stream not shown)."""
        if record.stream not in self.opts.streams:
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
            line.shown = self.opts.since_ns is None or \
                self._time_of(line.first_timestamp) >= self.opts.since_ns
        if not line.shown:
            return b""
        text = b"".join(line.parts) + end
        if self.opts.timestamps and not line.started:
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
    block = block or READ_CHUNK
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


# ---- reading a file ----

class LogReader:
    """A CRI log file read from where ``opts`` say (the last tail_lines lines, or the start),
    a step at a time without waiting: ``read()`` returns what the file holds now (up to about
    READ_CHUNK bytes of it), ``at_eof`` tells whether the file had nothing more. With a tail,
    nothing comes out until the first end of file (the last lines are known then).
    ``done``: the byte limit was reached. Follows rotation (a new file at the path is opened)
    and truncation (read again from its start)."""

    def __init__(self, path: str, opts: LogOptions) -> None:
        self.path = path
        self.opts = opts
        self.joiner = LineJoiner(opts)
        self.remaining = opts.limit_bytes
        self.done = False
        self.at_eof = False
        self._pending = b""  # a record cut by the end of the file (the writer is mid-line)
        self._f = open(path, "rb")  # noqa: SIM115 (closed by close())
        # with a tail, until the first end of file: the lines completed, with the number of
        # the record that completed each; the number of each open line's last record
        self._tail: deque[tuple[int, bytes]] | None = None
        self._seq = 0
        self._last_record: dict[str, int] = {}
        if opts.tail_lines is not None:
            self._f.seek(tail_offset(self._f, opts.tail_lines, opts.streams, block=READ_CHUNK))
            if opts.tail_lines > 0:
                self._tail = deque(maxlen=opts.tail_lines)

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> "LogReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def read(self) -> bytes:
        if self.done:
            return b""
        data = self._f.read(READ_CHUNK)  # the module's, read at each call (tests make it small)
        if not data:
            self.at_eof = True
            if self.opts.follow and self._reopen_if_replaced():
                self.at_eof = False
                return b""
            return self._end_tail()
        self.at_eof = False
        lines = (self._pending + data).split(b"\n")
        self._pending = lines.pop()
        out = []
        for raw in lines:
            text = self._line(raw)
            if text is None:
                continue
            if self._tail is not None:
                self._tail.append((self._seq, text))
            elif text:
                out.append(text)
        return self._limited(b"".join(out))

    def flush_open_lines(self) -> bytes:
        """Open lines' fragments written now (a follower waiting at the end of the file)."""
        if self.done or self._tail is not None:
            return b""
        return self._limited(self.joiner.flush())

    def finish(self) -> bytes:
        """The end of the log (not following, or the container exited and the file is drained):
        a last record without its newline, and the open lines, written out."""
        if self.done:
            return b""
        out = []
        if self._pending:
            raw, self._pending = self._pending, b""
            text = self._line(raw)
            if text is not None:
                if self._tail is not None:
                    self._tail.append((self._seq, text))
                else:
                    out.append(text)
        out.insert(0, self._end_tail(limit=False))
        out.append(self.joiner.flush())
        return self._limited(b"".join(out))

    def _line(self, raw: bytes) -> bytes | None:
        try:
            rec = parse_record(raw)
        except ValueError:
            return None  # upstream skips a line it cannot parse, too
        self._seq += 1
        if self._tail is not None and rec.partial:
            self._last_record[rec.stream] = self._seq
        return self.joiner.add(rec)

    def _end_tail(self, limit: bool = True) -> bytes:
        """The first end of file: the last tail_lines lines are known, lines ordered by their
        last record (an open line's last fragment is its last record so far). Open lines left
        out are dropped; those kept are written out by the open-line flushes that follow."""
        if self._tail is None:
            return b""
        done, self._tail = list(self._tail), None
        n = self.opts.tail_lines or 0
        lines = [(seq, text, "") for seq, text in done]
        lines += [(self._last_record.get(s, 0), b"", s) for s in self.joiner.open_streams()]
        lines.sort(key=lambda line: line[0])
        kept = lines[len(lines) - n:] if n < len(lines) else lines
        for _, _, stream in lines[:len(lines) - len(kept)]:
            if stream:
                self.joiner.drop(stream)
        text = b"".join(t for _, t, stream in kept if not stream)
        return self._limited(text) if limit else text

    def _limited(self, text: bytes) -> bytes:
        if self.remaining is None or not text:
            return text
        text = text[:self.remaining]
        self.remaining -= len(text)
        if self.remaining <= 0:
            self.done = True
        return text

    def _reopen_if_replaced(self) -> bool:
        """At the end of a followed file: a new file at the path (rotation) is opened, a file
        shorter than what was read (truncation) is read again from its start. True if so."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False  # rotated away, the new file not there yet
        mine = os.fstat(self._f.fileno())
        if (st.st_dev, st.st_ino) != (mine.st_dev, mine.st_ino):
            try:
                new = open(self.path, "rb")  # noqa: SIM115
            except FileNotFoundError:
                return False
            self._f.close()
            self._f = new
            self._pending = b""
            return True
        if st.st_size < self._f.tell():
            self._f.seek(0)
            self._pending = b""
            return True
        return False


# ---- drivers: read, and follow until the container has exited ----

def _step(reader: LogReader, opts: LogOptions, state: dict, running: Callable[[], bool] | None,
          state_check: float) -> tuple[list[bytes], str]:
    """One step of a driver: (output, what next): "more" (read on now), "wait" (nothing new:
    wait, then read on), "check" (ask running() first), "end"."""
    out = [reader.read()]
    if reader.done:
        return out, "end"
    if not reader.at_eof:
        return out, "more"
    if not opts.follow or running is None:
        out.append(reader.finish())
        return out, "end"
    out.append(reader.flush_open_lines())
    if reader.done:
        return out, "end"
    now = time.monotonic()
    if now - state.get("checked", float("-inf")) >= state_check:
        state["checked"] = now
        return out, "check"
    return out, "wait"


def _drain(reader: LogReader) -> Iterator[bytes]:
    """The container exited: what its file still holds, a step at a time, then the end of
    the log."""
    while not reader.done:
        yield reader.read()
        if reader.at_eof:
            break
    yield reader.finish()


def read_log(path: str, opts: LogOptions, running: Callable[[], bool] | None = None, *,
             poll: float = POLL_INTERVAL, state_check: float = STATE_CHECK_INTERVAL,
             stop: threading.Event | None = None) -> Iterator[bytes]:
    """The log's text in chunks. Following (``opts.follow`` and a ``running`` callable): waits
    for more until running() says the container has exited, then drains the file and ends;
    ``stop`` set ends it early. OSError if the file cannot be opened."""
    state: dict = {}
    with LogReader(path, opts) as reader:
        while True:
            out, what = _step(reader, opts, state, running, state_check)
            for chunk in out:
                if chunk:
                    yield chunk
            if what == "end":
                return
            if what == "check" and not running():
                yield from (c for c in _drain(reader) if c)
                return
            if what in ("wait", "check"):
                if stop is not None:
                    if stop.wait(poll):
                        return
                else:
                    time.sleep(poll)


async def aread_log(path: str, opts: LogOptions, running: Callable[[], bool] | None = None, *,
                    poll: float = POLL_INTERVAL,
                    state_check: float = STATE_CHECK_INTERVAL) -> AsyncIterator[bytes]:
    """read_log for an event loop: running() (a runtime call) runs in a worker thread; the file
    is read in the loop (a step reads at most READ_CHUNK bytes of a local file). Cancelling
    the task that iterates it ends it (the file is closed)."""
    state: dict = {}
    with LogReader(path, opts) as reader:
        while True:
            out, what = _step(reader, opts, state, running, state_check)
            for chunk in out:
                if chunk:
                    yield chunk
            if what == "end":
                return
            if what == "check" and not await asyncio.to_thread(running):
                for chunk in _drain(reader):
                    if chunk:
                        yield chunk
                return
            if what in ("wait", "check"):
                await asyncio.sleep(poll)
            else:
                await asyncio.sleep(0)  # let the loop serve others between chunks
