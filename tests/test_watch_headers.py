"""Differential test: the header revision of every kind of Watch response, etcd 3.4 against
etcdlite, from one script run on a fresh server of each.

What a client can learn from a watch response's header is "the store was at this revision
when this was sent", and clients use it (a progress notification's revision is how far the
watcher has seen). etcd 3.4 stamps:
  * a created response, a cancel and a progress request's answer with the store's revision;
  * live events with their own revision (the current one when they are sent);
  * history replayed to a watcher that starts in the past or fell behind with the store's
    revision when the history was read, not with the last event's (its syncWatchers), every
    part of a replay of more than 1000 revisions too;
  * a periodic progress notification with the store's revision;
  * the cancel of a watcher whose start was compacted with revision 0.
The script makes each of these happen with writes that make the two differ if one gets it
wrong (a write to another key after the history a watcher replays, a filter that leaves the
newest events out), and the two transcripts (per response: watch ID, flags, header revision,
the events' revisions) must be equal. Both servers start at revision 1, so the revisions of
the same writes are the same.
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from harness.etcd_client import Client
from harness.procs import ETCD_BIN, Registry, require_binary
from etcdlite.pb.etcdserverpb import rpc_pb2 as pb

pytestmark = pytest.mark.process

WAIT = 15.0  # seconds a step's responses may take (etcd catches watchers up every 100 ms)
MAX_REQUEST_BYTES = 64 * 1024
FLAGS = dict(max_request_bytes=MAX_REQUEST_BYTES, experimental_watch_progress_notify_interval="1s")
NOPUT = pb.WatchCreateRequest.NOPUT


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    require_binary(ETCD_BIN, "etcd (the real etcd 3.4 server)")
    reg = Registry()
    tmp = tmp_path_factory.mktemp("watchheaders")
    try:
        with ThreadPoolExecutor(2) as pool:
            ref = pool.submit(reg.start_real_etcd, tmp / "etcd", name="wh", **FLAGS)
            got = pool.submit(reg.start_etcdlite, tmp / "etcdlite", name="wh", **FLAGS)
            yield ref.result(), got.result()
    finally:
        reg.cleanup()


def summary(resp: pb.WatchResponse) -> tuple:
    """What the transcript compares of one response: its kind, watch ID, header revision and
    its events' revisions (first, last, how many: a replay of 1000 revisions stays short)."""
    revs = [e.kv.mod_revision for e in resp.events]
    kind = ("created" if resp.created else "") + ("canceled" if resp.canceled else "") \
        + ("fragment" if resp.fragment else "") + ("events" if revs else "") or "progress"
    events = (revs[0], revs[-1], len(revs)) if revs else ()
    return kind, resp.watch_id, resp.header.revision, resp.compact_revision, events


class Recorder:
    """One Watch stream: requests through a queue, responses read by a thread, and a
    transcript of `summary` lines, step by step."""

    def __init__(self, client: Client):
        self._requests: queue.Queue = queue.Queue()
        self._responses: queue.Queue = queue.Queue()
        self.call = client.watch.Watch(iter(self._requests.get, None))
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()
        self.transcript: list[str] = []
        # watchers whose periodic progress notifications arrive at times of their own: left
        # out of the steps after the one that waits for one
        self.ticking: set[int] = set()

    def _pump(self):
        try:
            for resp in self.call:
                self._responses.put(resp)
        except Exception as err:  # the stream failed or was cancelled
            self._responses.put(err)

    def send(self, **request) -> None:
        self._requests.put(pb.WatchRequest(**request))

    def step(self, title: str, done) -> list[pb.WatchResponse]:
        """Collect responses until `done(responses)`; record them, grouped by watch ID (each
        watcher's in the order sent: etcd sends different watchers' responses from two
        goroutines, in no fixed order between them)."""
        got: list[pb.WatchResponse] = []
        deadline = time.monotonic() + WAIT
        while not done(got):
            try:
                resp = self._responses.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"step {title!r}: responses so far {[summary(r) for r in got]}, "
                                     f"then nothing for {WAIT}s") from None
            if isinstance(resp, Exception):
                raise AssertionError(f"step {title!r}: the watch stream failed: {resp}")
            if resp.watch_id in self.ticking and not (resp.events or resp.created or resp.canceled):
                continue
            got.append(resp)
        self.transcript.append(f"-- {title}")
        lines = sorted(enumerate(summary(r) for r in got), key=lambda item: (item[1][1], item[0]))
        self.transcript += [repr(line) for _, line in lines]
        return got

    def close(self) -> None:
        self._requests.put(None)
        self.call.cancel()
        self._thread.join(timeout=5)


def reached(watch_id: int, revision: int):
    """A step's end: watcher `watch_id` was sent an event at `revision`."""
    return lambda got: any(r.watch_id == watch_id and r.events and r.events[-1].kv.mod_revision >= revision
                           for r in got)


def answered(watch_id: int, **flags):
    return lambda got: any(r.watch_id == watch_id and all(getattr(r, k) == v for k, v in flags.items())
                           for r in got)


def both(*conditions):
    return lambda got: all(c(got) for c in conditions)


def script(c: Client, s: Recorder) -> None:
    def put(key: bytes, value: bytes = b"v") -> int:
        return c.put(key, value).header.revision

    for k in (b"a/1", b"a/2", b"a/3"):
        put(k)
    put(b"b/1")
    deleted = c.kv.DeleteRange(pb.DeleteRangeRequest(key=b"a/1"), timeout=10).header.revision
    put(b"b/2")  # the newest write is not one the watchers below want

    s.send(create_request=pb.WatchCreateRequest(key=b"a/", range_end=b"a0", start_revision=2))
    s.step("replay of a prefix's history, then a write elsewhere", reached(0, deleted))
    s.send(create_request=pb.WatchCreateRequest(key=b"a/", range_end=b"a0", start_revision=2,
                                                filters=[NOPUT]))
    s.step("replay through a filter that leaves out the newest events", reached(1, deleted))
    live = put(b"a/4")
    s.step("a live event", reached(0, live))
    s.send(progress_request=pb.WatchProgressRequest())
    s.step("progress request", answered(-1))
    s.send(cancel_request=pb.WatchCancelRequest(watch_id=1))
    s.step("cancel", answered(1, canceled=True))

    now = c.get(b"x").header.revision
    s.send(create_request=pb.WatchCreateRequest(key=b"f/k", start_revision=now + 2))
    s.step("a watcher starting in the future", answered(2, created=True))
    put(b"f/k")
    future = put(b"f/k")
    s.step("its first event", reached(2, future))

    # more than 1000 revisions of history: etcd replays them 1000 revisions a response
    first = put(b"l/k", b"0")
    with ThreadPoolExecutor(8) as pool:
        last = max(pool.map(lambda i: put(b"l/k", b"%d" % i), range(1, 1005)))
    put(b"l/other")
    s.send(create_request=pb.WatchCreateRequest(key=b"l/k", start_revision=first))
    s.step("a replay of 1005 revisions", reached(3, last))

    # history too big for one response, to a watcher that takes fragments
    big = b"x" * (MAX_REQUEST_BYTES - 4096)
    frag_first = put(b"fr/k", big)
    for _ in range(11):
        frag_last = put(b"fr/k", big)
    put(b"fr/other")
    s.send(create_request=pb.WatchCreateRequest(key=b"fr/k", start_revision=frag_first, fragment=True))
    s.step("a fragmented replay", reached(4, frag_last))

    s.send(create_request=pb.WatchCreateRequest(key=b"pn/k", progress_notify=True))
    s.step("created, then a periodic progress notification",
           lambda got: any(r.watch_id == 5 and not r.created and not r.events for r in got))
    s.ticking.add(5)

    compacted = put(b"c/k")
    c.kv.Compact(pb.CompactionRequest(revision=compacted, physical=True), timeout=10)
    s.send(create_request=pb.WatchCreateRequest(key=b"a/", range_end=b"a0", start_revision=2))
    s.step("a watcher starting before the compaction", answered(6, canceled=True))

    put(b"end")
    s.send(progress_request=pb.WatchProgressRequest())
    s.step("nothing else was sent", answered(-1))


def test_watch_response_headers_match_etcd(servers):
    transcripts = []
    for server in servers:
        with Client(server.endpoint) as c:
            s = Recorder(c)
            try:
                script(c, s)
            finally:
                s.close()
            transcripts.append(s.transcript)
    ref, got = transcripts
    assert got == ref, "\n".join(
        f"{'  ' if a == b else '!='} etcd: {a:<60} etcdlite: {b}" for a, b in zip(ref, got))
