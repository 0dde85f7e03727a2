"""Container logs as the kubelet serves them to `kubectl logs`: CRI-format files
(node.kubelet.crilog) read with tail, since, timestamps, byte limits, stream selection, and
follow.

Where this differs from upstream's pkg/kubelet/kuberuntime/logs (on purpose):
- fragments are joined per stream into one line with one timestamp (upstream prefixes every
  fragment with its own), and ``tail_lines`` counts those joined lines (upstream counts
  records, so a long line can take several of the N);
- a followed file replaced by log rotation is reopened, and a truncated one read again from
  its start (upstream keeps reading the old file);
- following waits by polling the file (every ``poll`` seconds) rather than by inotify, and asks
  whether the container still runs every ``state_check`` seconds (upstream: at each wake-up,
  at least every second).

``LogReader`` reads a file through crilog's parts without blocking; ``read_log`` (threads) and
``aread_log`` (asyncio) drive a reader, following until the container has exited and its file
is drained.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass

from node.kubelet.crilog import STDERR, STDOUT, LineJoiner, parse_record, parse_timestamp, tail_offset

# PodLogOptions.stream values -> the CRI streams they select
STREAMS = {"": (STDOUT, STDERR), "All": (STDOUT, STDERR), "Stdout": (STDOUT,), "Stderr": (STDERR,)}

READ_CHUNK = 64 * 1024  # bytes read from the file per step: one step's output is about this big
POLL_INTERVAL = 0.1  # seconds between looks at a followed file that had nothing new
STATE_CHECK_INTERVAL = 1.0  # seconds between asking whether a followed container still runs


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
        self.joiner = LineJoiner(opts.streams, opts.since_ns, opts.timestamps)
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
