"""node/kubelet/crilog and logs: CRI-format log files read as `kubectl logs` shows them.

The pure parts first (records, timestamps, joining, options), then whole files: the tail of
randomly interleaved files is checked against a plain model (render every line, keep the last
N), with blocks small enough that records straddle them. Following is tested against a writer
thread that appends records the way conmon does (sometimes half a record, then the rest),
rotates the file, and then "exits".
"""

from __future__ import annotations

import asyncio
import os
import random
import threading
import time

import pytest

from node.kubelet import logs
from node.kubelet.crilog import LineJoiner, format_timestamp, parse_record, parse_timestamp
from node.kubelet.logs import LogOptions, LogReader, aread_log, log_options, read_log

T0 = 1_700_000_000 * 1_000_000_000  # 2023-11-14T22:13:20Z


def stamp(i: int) -> str:
    """The i-th record's time: T0 + i milliseconds, as conmon writes it (local offset form)."""
    return format_timestamp(T0 + i * 1_000_000, 0).replace("Z", "+00:00")


def record(i: int, stream: str, tag: str, content: str) -> bytes:
    return f"{stamp(i)} {stream} {tag} {content}\n".encode()


def read_all(path, **opts) -> bytes:
    return b"".join(read_log(str(path), log_options(**opts)))


# ---- pure parts ----

def test_records_parse_and_bad_lines_are_refused():
    r = parse_record(b"2016-10-06T00:17:09.669794202Z stdout P log content 1")
    assert (r.stream, r.partial, r.content) == ("stdout", True, b"log content 1")
    r = parse_record(b"2016-10-06T00:17:09.669794203Z stderr F:x:y  two  spaces ")
    assert (r.stream, r.partial, r.content) == ("stderr", False, b" two  spaces ")
    assert parse_record(b"2016-10-06T00:17:09Z stdout F ").content == b""
    for bad in (b"", b"hello world", b"2016-10-06T00:17:09Z stdin F x", b"2016-10-06T00:17:09Z stdout",
                b"yesterday stdout F x"):
        with pytest.raises(ValueError):
            parse_record(bad)


def test_timestamps_read_and_written_as_kubernetes_does():
    assert parse_timestamp("2016-10-06T00:17:09.669794202Z") == (1475713029_669794202, 0)
    assert parse_timestamp(b"2016-10-06T02:17:09.5+02:00") == (1475713029_500000000, 7200)
    assert parse_timestamp("2016-10-06T00:17:09Z") == (1475713029_000000000, 0)
    # RFC3339NanoFixed: nine digits always, Z for UTC, else the offset written
    assert format_timestamp(1475713029_500000000, 0) == "2016-10-06T00:17:09.500000000Z"
    assert format_timestamp(1475713029_000000007, 7200) == "2016-10-06T02:17:09.000000007+02:00"
    assert format_timestamp(*parse_timestamp("2016-10-05T20:17:09.1-04:00")) == \
        "2016-10-05T20:17:09.100000000-04:00"
    for bad in ("2016-13-06T00:17:09Z", "2016-10-06 00:17:09Z", "2016-10-06T00:17:09", "5m"):
        with pytest.raises(ValueError):
            parse_timestamp(bad)


def test_options_as_the_kubelet_makes_them():
    now = T0
    o = log_options(since_seconds=60, now_ns=now)
    assert o.since_ns == now - 60 * 10**9
    # both since fields: the later time wins
    later = format_timestamp(now - 10 * 10**9)
    assert log_options(since_seconds=60, since_time=later, now_ns=now).since_ns == now - 10 * 10**9
    assert log_options(stream="Stderr").streams == ("stderr",)
    assert log_options(tail_lines=-1).tail_lines is None
    with pytest.raises(ValueError, match="unsupported stream"):
        log_options(stream="stdin")


def test_fragments_join_per_stream_with_one_timestamp():
    j = LineJoiner(timestamps=True)
    out = [j.add(parse_record(r.rstrip(b"\n"))) for r in (
        record(0, "stdout", "P", "hel"),
        record(1, "stderr", "F", "oops"),
        record(2, "stdout", "P", "lo "),
        record(3, "stdout", "F", "world"),
    )]
    assert out == [None, f"{format_timestamp(T0 + 1_000_000)} oops\n".encode(), None,
                   f"{format_timestamp(T0)} hello world\n".encode()]
    # a follower flushes an open line; its continuation gets no second timestamp
    assert j.add(parse_record(record(4, "stdout", "P", "abc").rstrip())) is None
    assert j.flush() == f"{format_timestamp(T0 + 4_000_000)} abc".encode()
    assert j.add(parse_record(record(5, "stdout", "F", "def").rstrip())) == b"def\n"


# ---- whole files ----

def test_reading_a_file_with_every_option(tmp_path):
    path = tmp_path / "0.log"
    path.write_bytes(b"".join([
        record(0, "stdout", "F", "one"),
        record(1, "stderr", "F", "err one"),
        record(2, "stdout", "P", "tw"),
        record(3, "stdout", "F", "o"),
        b"garbage that is no record\n",
        record(4, "stderr", "F", "err two"),
        record(5, "stdout", "F", "three"),
    ]))
    assert read_all(path) == b"one\nerr one\ntwo\nerr two\nthree\n"
    assert read_all(path, stream="Stdout") == b"one\ntwo\nthree\n"
    assert read_all(path, stream="Stderr") == b"err one\nerr two\n"
    assert read_all(path, tail_lines=2) == b"err two\nthree\n"
    assert read_all(path, tail_lines=3) == b"two\nerr two\nthree\n"
    assert read_all(path, tail_lines=99) == read_all(path)
    assert read_all(path, tail_lines=0) == b""
    assert read_all(path, limit_bytes=6) == b"one\ner"
    assert read_all(path, tail_lines=2, limit_bytes=3) == b"err"
    # since: lines whose first record is earlier are left out
    assert read_all(path, since_time=format_timestamp(T0 + 2_000_000)) == b"two\nerr two\nthree\n"
    assert read_all(path, since_time=format_timestamp(T0 + 3_000_000)) == b"err two\nthree\n"
    with_ts = read_all(path, timestamps=True, tail_lines=1)
    assert with_ts == f"{format_timestamp(T0 + 5_000_000)} three\n".encode()
    assert read_all(path, since_seconds=3600) == b""  # written in 2023


def test_a_last_line_without_its_end_is_shown_and_counts_for_tail(tmp_path):
    path = tmp_path / "0.log"
    path.write_bytes(record(0, "stdout", "F", "a") + record(1, "stdout", "F", "b")
                     + record(2, "stdout", "P", "no newline yet"))
    assert read_all(path) == b"a\nb\nno newline yet"
    assert read_all(path, tail_lines=1) == b"no newline yet"
    assert read_all(path, tail_lines=2) == b"b\nno newline yet"


def _random_log(rng: random.Random, n: int) -> tuple[bytes, list[tuple[int, bytes, bool]]]:
    """A file of n records with both streams' fragments interleaved, and its lines as a reader
    must see them: (number of the line's last record, text, still open at the end), in the
    order they are shown (completed lines as they complete, then open ones as they began)."""
    out, done, open_, last_fragment = [], [], {}, {}
    for i in range(n):
        stream = rng.choice(("stdout", "stderr"))
        partial = rng.random() < 0.4
        content = f"{stream[3:]}{i}-" + "x" * rng.randrange(0, 30)
        out.append(record(i, stream, "P" if partial else "F", content))
        parts = open_.setdefault(stream, [])
        parts.append(content.encode())
        if not partial:
            done.append((i, b"".join(open_.pop(stream)) + b"\n", False))
        else:
            open_[stream] = parts
            last_fragment[stream] = i
    still_open = [(last_fragment[s], b"".join(parts), True) for s, parts in open_.items()]
    return b"".join(out), done + still_open


@pytest.mark.parametrize("seed", range(12))
def test_tail_of_interleaved_fragments_matches_a_plain_model(tmp_path, monkeypatch, seed):
    rng = random.Random(seed)
    monkeypatch.setattr(logs, "READ_CHUNK", rng.choice((7, 40, 113, 4096)))
    data, lines = _random_log(rng, rng.randrange(1, 60))
    path = tmp_path / "0.log"
    path.write_bytes(data)
    assert read_all(path) == b"".join(text for _, text, _ in lines)
    for n in (0, 1, 2, 3, 5, 8, 13, 40, 100):
        # the last n by their last record, shown in the reader's order
        last = sorted(last for last, _, _ in lines)[-n:] if n else []
        want = b"".join(text for last_record, text, _ in lines if last_record in last)
        assert read_all(path, tail_lines=n) == want, f"tail {n}"


class Writer:
    """Appends records to a log file from a thread, as a runtime does: some records in two
    writes with a pause between (a reader sees half a record), a rotation in the middle
    (the file renamed away, a new one created), then the "container" exits."""

    def __init__(self, path, lines: int, rotate_at: int | None = None, delay: float = 0.002):
        self.path = path
        self.lines = lines
        self.rotate_at = rotate_at
        self.delay = delay
        self.running = True
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        f = open(self.path, "ab", buffering=0)
        try:
            for i in range(self.lines):
                if i == self.rotate_at:
                    f.close()
                    os.rename(self.path, f"{self.path}.rotated")
                    f = open(self.path, "ab", buffering=0)
                rec = record(i, "stdout", "F", f"line {i}")
                if i % 7 == 3:
                    f.write(rec[:10])
                    time.sleep(self.delay * 5)
                    f.write(rec[10:])
                elif i % 11 == 5:
                    f.write(record(i, "stderr", "P", f"frag {i} "))
                    f.write(record(i, "stderr", "F", "end"))
                    f.write(rec)
                else:
                    f.write(rec)
                time.sleep(self.delay)
        finally:
            f.close()
            self.running = False


def _expected(lines: int) -> bytes:
    out = []
    for i in range(lines):
        if i % 11 == 5 and i % 7 != 3:
            out.append(f"frag {i} end\n")
        out.append(f"line {i}\n")
    return "".join(out).encode()


def test_follow_reads_to_the_end_across_half_records_and_a_rotation(tmp_path):
    path = tmp_path / "0.log"
    path.write_bytes(record(0, "stdout", "F", "before"))
    w = Writer(path, 120, rotate_at=60)
    w.thread.start()
    started = time.monotonic()
    got = b"".join(read_log(str(path), LogOptions(follow=True), lambda: w.running,
                            poll=0.01, state_check=0.05))
    w.thread.join(10)
    assert got == b"before\n" + _expected(120)
    assert time.monotonic() - started < 10


def test_follow_with_tail_then_new_lines_and_a_byte_limit_ends_it(tmp_path):
    path = tmp_path / "0.log"
    path.write_bytes(b"".join(record(i, "stdout", "F", f"old {i}") for i in range(5)))
    stop = threading.Event()
    w = Writer(path, 50)
    chunks = read_log(str(path), log_options(tail_lines=2, follow=True), lambda: True,
                      poll=0.01, stop=stop)
    first = next(chunks)
    assert first == b"old 3\nold 4\n"
    w.thread.start()
    got = first
    for chunk in chunks:
        got += chunk
        if got.count(b"\n") >= 10:
            break
    chunks.close()  # the reader closes its file when the consumer leaves
    w.thread.join(10)
    assert got.startswith(b"old 3\nold 4\nline 0\nline 1\nline 2\n")
    # a byte limit ends a follow even though the container keeps running
    limited = b"".join(read_log(str(path), log_options(follow=True, limit_bytes=20), lambda: True,
                                poll=0.01))
    assert limited == b"old 0\nold 1\nold 2\nol"


def test_follow_of_an_exited_container_drains_and_ends_at_once(tmp_path):
    path = tmp_path / "0.log"
    path.write_bytes(record(0, "stdout", "F", "done") + record(1, "stdout", "P", "last words"))
    calls = []

    def running():
        calls.append(1)
        return False
    started = time.monotonic()
    assert b"".join(read_log(str(path), LogOptions(follow=True), running)) == b"done\nlast words"
    assert calls == [1] and time.monotonic() - started < 1


def test_async_follow_is_cancelled_cleanly_and_closes_its_file(tmp_path):
    path = tmp_path / "0.log"
    path.write_bytes(record(0, "stdout", "F", "hello"))
    fds_before = set(os.listdir("/proc/self/fd"))

    async def main():
        got = []

        async def consume():
            async for chunk in aread_log(str(path), LogOptions(follow=True), lambda: True, poll=0.01):
                got.append(chunk)
        task = asyncio.create_task(consume())
        deadline = time.monotonic() + 5
        while not got and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        with open(path, "ab") as f:
            f.write(record(1, "stdout", "F", "world"))
        while len(got) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return got
    assert asyncio.run(main()) == [b"hello\n", b"world\n"]
    leaked = [fd for fd in set(os.listdir("/proc/self/fd")) - fds_before
              if os.path.exists(f"/proc/self/fd/{fd}") and os.readlink(f"/proc/self/fd/{fd}") == str(path)]
    assert not leaked


def test_a_missing_file_is_an_oserror(tmp_path):
    with pytest.raises(FileNotFoundError):
        LogReader(str(tmp_path / "none.log"), LogOptions())
