"""One etcdlite member: Raft, the state machine, watchers, the leader's
lease clock and the gRPC services, wired together on one asyncio loop.

Writes: handler -> `propose` -> Raft -> applied (in the event loop, where
pysyncobj runs) -> the events reach the `WatchHub` in the next turn of the
loop and the result resolves the handler's future, so in apply order.
Reads: served from the local state machine under the raft lock, after a
read barrier through Raft unless `serializable` (or a one-member cluster,
where applied state already holds every acknowledged write).
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging

import grpc

from etcdlite import errors
from etcdlite.apply import Op, events_of
from etcdlite.config import GRPC_OVERHEAD_BYTES, MemberConfig, host_port, is_tls_url
from etcdlite.lessor import Lessor
from etcdlite.pb.etcdserverpb import rpc_pb2 as pb
from etcdlite.pb.etcdserverpb import rpc_pb2_grpc
from etcdlite.raft import FAILURES, RaftNode
from etcdlite.server.h2grpc import GrpcServer, server_ssl_context
from etcdlite.watch_hub import WatchHub, varint

log = logging.getLogger("etcdlite")

# etcd's request timeout with default settings: 5 s + 2 x election timeout
REQUEST_TIMEOUT = 7.0
# grpc.aio's server (--experimental-grpc-server=grpcio), besides the message sizes
GRPCIO_SERVER_OPTIONS = [
    ("grpc.max_concurrent_streams", 2**31 - 1),
    # etcd clients ping every few seconds, even when idle
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 5000),
    ("grpc.http2.max_ping_strikes", 0),
]
# a batch of proposals goes to Raft early once it holds this much
MAX_BATCH_BYTES = 512 * 1024
# batches proposed and not yet applied here (or failed) at one time; further
# requests wait and leave together as the next batch (group commit)
MAX_BATCHES_IN_FLIGHT = 2
# a batch gives up its place after this long even unanswered (pysyncobj can
# lose a forwarded proposal's answer; its requests still time out on their own)
BATCH_SLOT_SECONDS = 1.0
# how often batches in flight are checked against those two limits
SWEEP_SECONDS = 0.25
# lease and membership commands whose application the event loop hears of
_NOTIFY_OPS = frozenset({Op.LEASE_GRANT, Op.LEASE_RENEW, Op.MEMBER_REMOVE})
_PUT_VALUE = int(Op.PUT_VALUE)
# a varint's first byte when more bytes follow, by its low 7 bits
_VARINT_FIRST = [bytes((low | 0x80,)) for low in range(0x80)]


def _settle(waiters: list, applied, reason) -> None:
    """Hand a batch's results (or its failure) to its waiters: each is an
    on_done(result, error), called straight from here (the hot path), with
    the result in the command's (op, result, events, revision). A batch is
    settled once (see _Batch.settled), so each waiter is called once."""
    if reason:
        _fail(waiters, FAILURES.get(reason, errors.TIMEOUT))
        return
    for on_done, (_, result, _, _) in zip(waiters, applied):
        try:
            if isinstance(result, errors.EtcdError):
                on_done(None, result)
            else:
                on_done(result, None)
        except Exception:  # a bug there must not keep the batch's other waiters waiting
            log.exception("request callback failed")


def _fail(waiters: list, error: errors.EtcdError) -> None:
    for on_done in waiters:
        try:
            on_done(None, error)
        except Exception:
            log.exception("request callback failed")


def _resolve(fut: asyncio.Future, result, error) -> None:
    """A waiter for propose(): the answer goes to its future (unless the
    caller gave up on it)."""
    if not fut.done():
        if error is None:
            fut.set_result(result)
        else:
            fut.set_exception(error)


class _Batch:
    """Requests proposed together, while they are in flight."""

    __slots__ = ("released", "sent", "settled", "waiters")

    def __init__(self, waiters: list, sent: float) -> None:
        self.waiters = waiters  # on_done(result, error) of each request, in order
        self.sent = sent
        self.released = False  # its in-flight place given up
        self.settled = False  # its waiters answered: applied, failed or timed out


class Member:
    def __init__(self, cfg: MemberConfig):
        self.cfg = cfg
        self.id = cfg.id
        self.cluster_id = cfg.cluster_id
        self.loop: asyncio.AbstractEventLoop | None = None
        self.raft: RaftNode | None = None
        self.hub = WatchHub(1)
        self.lessor = Lessor(self)
        self.servers: list = []  # GrpcServer, or grpc.aio.Server with --experimental-grpc-server=grpcio
        self._h2_servers: list[GrpcServer] = []  # those of them that are GrpcServers
        self.client_ports: list[int] = []
        self._ready = asyncio.Event()
        # set once this member applies its own removal from the cluster
        self.removed = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._barrier_next: asyncio.Future | None = None
        # requests waiting for the next batch: commands as proposed (see apply), and their waiters
        self._outbox: list[tuple] = []
        self._waiters: list = []
        self._outbox_bytes = 0
        self._max_request_bytes = cfg.max_request_bytes
        self._flush_pending = False
        self._flush_waited = False  # the outbox waited a turn for more requests
        self._in_flight = 0
        self._deliveries = 0  # applied batches waiting for _deliver
        self._batches: collections.deque[_Batch] = collections.deque()
        self._sweeper: asyncio.TimerHandle | None = None
        self._barrier_inflight = False
        self._header_term = self._header_cluster = self._header_revision = None
        self._header_field = b""
        self._header_parts = (b"", b"")
        self._header_block = None
        self._header_around = (b"", b"")

    # --- lifecycle -------------------------------------------------------

    async def start(self) -> None:
        self.loop = loop = asyncio.get_running_loop()
        cfg = self.cfg
        self.raft = RaftNode(
            loop,
            cfg.raft_address,
            cfg.raft_peers,
            cfg.data_dir,
            bind_address=host_port(cfg.listen_peer_urls[0]),
            on_applied=self._on_applied,
            on_restored=lambda: loop.call_soon(self._on_restored),
            on_ready=lambda: loop.call_soon(self._ready.set),
            password=cfg.peer_password,
            dial=cfg.raft_dial,
            desired_peers=self._desired_peers,
            snapshot_count=cfg.snapshot_count,
        )
        log.info("member %x: replaying the raft log in %s", self.id, cfg.data_dir)
        await self._ready.wait()
        with self.raft.lock:
            self.hub.revision = self.raft.machine.kv.current_revision
        log.info("member %x: ready at revision %d, raft term %d", self.id, self.hub.revision, self.raft.term)
        self._check_removed()
        tls = cfg.load_client_tls()
        for url in cfg.listen_client_urls:
            # https: TLS; http: plain text, as etcd
            server = await self._serve(url, tls if is_tls_url(url) else None)
            self.servers.append(server)
            if isinstance(server, GrpcServer):
                self._h2_servers.append(server)
        self._tasks.append(loop.create_task(self._publish()))
        self._tasks.append(loop.create_task(self.lessor.run()))
        self._tasks.append(loop.create_task(self._progress_loop()))

    async def _serve(self, url: str, tls):
        """A gRPC server for one client URL, with every etcd service on it."""
        from etcdlite.server.cluster import ClusterService
        from etcdlite.server.kv import KVService
        from etcdlite.server.kv import add_to_server as add_kv_service
        from etcdlite.server.lease import LeaseService
        from etcdlite.server.maintenance import MaintenanceService
        from etcdlite.server.watch import WatchService
        from etcdlite.server.watch import add_to_server as add_watch_service

        cfg = self.cfg
        max_receive = cfg.max_request_bytes + GRPC_OVERHEAD_BYTES
        address = host_port(url)
        if cfg.grpc_server == "grpcio":
            server = grpc.aio.server(options=[
                ("grpc.max_receive_message_length", max_receive),
                ("grpc.max_send_message_length", 2**31 - 1),
                *GRPCIO_SERVER_OPTIONS,
            ])
        else:
            server = GrpcServer(max_receive_message_length=max_receive)
        add_kv_service(KVService(self), server)
        add_watch_service(WatchService(self), server)
        rpc_pb2_grpc.add_LeaseServicer_to_server(LeaseService(self), server)
        rpc_pb2_grpc.add_ClusterServicer_to_server(ClusterService(self), server)
        rpc_pb2_grpc.add_MaintenanceServicer_to_server(MaintenanceService(self), server)
        if isinstance(server, GrpcServer):
            host, _, port = address.rpartition(":")
            host = host.strip("[]")
            ssl_context = tls and server_ssl_context(
                cfg.cert_file, cfg.key_file, cfg.trusted_ca_file or None, tls.client_cert_auth)
            try:
                port = await server.listen("127.0.0.1" if host == "localhost" else host, int(port), ssl_context)
            except OSError as err:
                raise OSError(f"cannot listen for clients on {url}: {err.strerror or err}: is the port in use?") from None
        else:
            if tls:
                creds = grpc.ssl_server_credentials(
                    [(tls.private_key, tls.cert_chain)],
                    root_certificates=tls.trusted_ca if tls.client_cert_auth else None,
                    require_client_auth=tls.client_cert_auth,
                )
                port = server.add_secure_port(address, creds)
            else:
                port = server.add_insecure_port(address)
            if port == 0:
                raise OSError(f"cannot listen for clients on {url}: is the port in use?")
        self.client_ports.append(port)
        await server.start()
        return server

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*(s.stop(grace=1.0) for s in self.servers), return_exceptions=True)
        if self.raft is not None:
            self.raft.stop()

    def _on_applied(self, applied) -> None:
        """Runs inside a raft tick for every applied batch, in log order:
        delivery is left to a later turn of the loop (not done inside
        pysyncobj's apply). Two turns later: the batch's own requests are
        answered (their futures settle after this, in the same tick) and
        their responses written before the watch fan-out, as etcd
        acknowledges a put without waiting for its watchers. A batch that
        changed keys while nobody watches, with no delivery still on its
        way, only moves the hub's revision, here; one that neither changed
        keys nor touched leases or members is not delivered at all."""
        changed = False
        for op, _, events, _ in applied:
            if op in _NOTIFY_OPS:
                break
            if events:
                changed = True
        else:
            if not changed:
                return
            if not self._deliveries and not self.hub.live():
                self.hub.revision = applied[-1][3]
                return
        self._deliveries += 1
        self.loop.call_soon(self.loop.call_soon, self._deliver, applied)

    def _deliver(self, applied) -> None:
        self._deliveries -= 1
        for op, result, events, revision in applied:
            if events:
                self.hub.publish(events_of(events), revision)
            if op == Op.MEMBER_REMOVE:
                self._check_removed()
            elif (op == Op.LEASE_GRANT or op == Op.LEASE_RENEW) and getattr(result, "TTL", 0) > 0:
                self.lessor.touched(result.ID, result.TTL)

    def _desired_peers(self) -> set[str] | None:
        """Raft addresses of the other members in the replicated member
        table (None until it is filled)."""
        members = self.raft.machine.members
        if not members.bootstrapped:
            return None
        with self.raft.lock:
            urls = members.peer_urls()
        return {host_port(u[0]) for i, u in urls.items() if i != self.id and u}

    def _check_removed(self) -> None:
        if self.id in self.raft.machine.members.removed and not self.removed.is_set():
            log.warning("member %x was removed from the cluster; shutting down", self.id)
            self.removed.set()

    def _on_restored(self) -> None:
        with self.raft.lock:
            revision = self.raft.machine.kv.current_revision
        self.hub.reset(revision)

    # --- requests --------------------------------------------------------

    def header_field(self, revision: int) -> bytes:
        """A response's `header` field (number 1) on the wire, for responses
        put together from bytes (a plain Put's whole response is this); the
        last one is kept (every watcher of an event gets the same). Only the
        revision's varint is new per revision, and of it only the first byte
        for 128 revisions in a row: the bytes around it are kept while the
        term, the cluster ID and revision >> 7 stay."""
        self.check_header()
        return self.batch_header_field(revision)

    def check_header(self) -> None:
        """Make the header's bytes anew if the term or the cluster ID moved."""
        raft = self.raft
        term = raft.term
        cluster_id = raft.machine.members.cluster_id or self.cluster_id
        if term != self._header_term or cluster_id != self._header_cluster:
            # fields in number order, zeros left out, as protobuf writes them
            head = (b"\x08" + varint(cluster_id) if cluster_id else b"") + b"\x10" + varint(self.id)
            self._header_parts = (head, b"\x20" + varint(term) if term else b"")
            self._header_term, self._header_cluster = term, cluster_id
            self._header_revision = self._header_block = None

    def batch_header_field(self, revision: int) -> bytes:
        """header_field for the answers of a batch being settled: `check_header`
        ran once for all of them (neither the term nor the cluster ID moves
        while they are answered, in one go)."""
        if revision == self._header_revision:
            return self._header_field
        if revision >> 7 == self._header_block:
            field = self._header_around[0] + _VARINT_FIRST[revision & 0x7F] + self._header_around[1]
        else:
            head, tail = self._header_parts
            body = head + b"\x18" + varint(revision) + tail if revision else head + tail
            # at most 4 varints of 10 bytes and their tags: the length is one byte
            field = b"\x0a" + bytes((len(body),)) + body
            if revision >= 0x80:  # a varint of 2 bytes or more: keep what is around its first
                at = 3 + len(head)
                self._header_around = (field[:at], field[at + 1:])
                self._header_block = revision >> 7
        self._header_revision = revision
        self._header_field = field
        return field

    def header(self, h, revision: int | None = None) -> None:
        h.cluster_id = self.raft.machine.members.cluster_id or self.cluster_id
        h.member_id = self.id
        h.raft_term = self.raft.term
        if revision is not None:
            h.revision = revision

    async def propose(self, op: Op, request) -> object:
        """Replicate one request and return its result once applied here.

        Requests proposed in the same turn of the event loop travel as one
        Raft entry, and while MAX_BATCHES_IN_FLIGHT entries are on their way
        the next one fills up: under load a single log append, replication
        round and hand-back serve many requests."""
        fut = self.loop.create_future()
        self._enqueue(op, request, functools.partial(_resolve, fut))
        return await fut

    def submit(self, op: Op, request, on_done, data: bytes | None = None) -> None:
        """propose() for callers without a coroutine: on_done(result, error)
        runs once the request is applied here (or failed), inside the apply.
        `data`: the request's bytes, when the caller has them (else it is
        serialized). Raises EtcdError at once for a request too large."""
        self._enqueue(op, request, on_done, data)

    def submit_put_value(self, key: bytes, value: bytes, on_done, size: int) -> None:
        """submit() for a Put of only a key and a value (no lease, prev_kv or
        ignore_*): it travels as (Op.PUT_VALUE, key, value), nothing to parse
        where it is applied. `size`: the request's bytes on the wire."""
        self._queue((_PUT_VALUE, key, value), size, on_done)

    def _enqueue(self, op: Op, request, on_done, data: bytes | None = None) -> None:
        if data is None:
            data = request.SerializeToString() if request is not None else b""
        self._queue((int(op), data), len(data), on_done)

    def _queue(self, command: tuple, size: int, on_done) -> None:
        if size > self._max_request_bytes:
            raise errors.REQUEST_TOO_LARGE
        self._outbox.append(command)
        self._waiters.append(on_done)
        self._outbox_bytes += size
        if self._outbox_bytes >= MAX_BATCH_BYTES:
            self._send_batch()
        elif not self._flush_pending:
            self._flush_pending = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        # a turn of the loop of its own (every request read in the previous
        # turn is in the outbox): the batch is proposed and ticked at once.
        # Requests that came several in one turn wait one turn more, for
        # those read in it (group commit: under load, a batch twice as large,
        # and half the ticks, journal appends and answering sends per
        # request); a lone request leaves at once.
        self._flush_pending = False
        if not self._outbox:
            return
        if self._in_flight >= MAX_BATCHES_IN_FLIGHT:
            self._flush_waited = True  # it waits for a place instead
            return
        if not self._flush_waited and len(self._outbox) > 1:
            self._flush_waited = self._flush_pending = True
            self.loop.call_soon(self._flush)
            return
        self._send_batch(now=True)

    def _send_batch(self, now: bool = False) -> None:
        batch, self._outbox, self._outbox_bytes = self._outbox, [], 0
        self._flush_waited = False
        sent = _Batch(self._waiters, self.loop.time())
        self._waiters = []
        self._in_flight += 1
        self._batches.append(sent)
        if self._sweeper is None:
            self._sweeper = self.loop.call_later(SWEEP_SECONDS, self._sweep)

        def applied(entries, reason) -> None:
            self._release(sent)
            if sent.settled:  # timed out by the sweep: already answered
                return
            sent.settled = True
            waiters, sent.waiters = sent.waiters, ()
            batches = self._batches
            while batches and batches[0].settled:
                batches.popleft()
            if not reason:
                self.check_header()  # for batch_header_field
            _settle(waiters, entries, reason)
            # the answers leave now, not after the next turn's reads
            for server in self._h2_servers:
                server.flush_now()

        self.raft.propose(batch, applied, now=now)

    def _release(self, batch: _Batch) -> None:
        """Give the batch's in-flight place to the next one."""
        if not batch.released:
            batch.released = True
            self._in_flight -= 1
            if self._outbox and not self._flush_pending:
                self._flush_pending = True
                self.loop.call_soon(self._flush)

    def _sweep(self) -> None:
        """A batch unanswered for BATCH_SLOT_SECONDS gives up its place; its
        requests fail after REQUEST_TIMEOUT. One timer for all batches in
        flight (sent in order, so the oldest are at the front), instead of
        two per batch, nearly all cancelled."""
        self._sweeper = None
        now = self.loop.time()
        batches = self._batches
        for batch in list(batches):
            if now - batch.sent < BATCH_SLOT_SECONDS:
                break
            self._release(batch)
            if not batch.settled and now - batch.sent >= REQUEST_TIMEOUT:
                batch.settled = True
                waiters, batch.waiters = batch.waiters, ()
                _fail(waiters, errors.TIMEOUT)
        while batches and batches[0].settled:
            batches.popleft()
        if batches:
            self._sweeper = self.loop.call_later(SWEEP_SECONDS, self._sweep)

    async def read_barrier(self, serializable: bool = False) -> None:
        """Return once the local state holds every write acknowledged before
        the call (linearizable), unless `serializable`. Concurrent readers
        share one barrier entry: each waits for the first barrier proposed
        after it arrived."""
        if serializable or self.raft.single:
            return
        fut = self._barrier_next
        if fut is None:
            fut = self._barrier_next = self.loop.create_future()
            if not self._barrier_inflight:
                self._launch_barrier()
        await asyncio.shield(fut)

    def _launch_barrier(self) -> None:
        fut, self._barrier_next = self._barrier_next, None
        self._barrier_inflight = True
        task = self.loop.create_task(self.propose(Op.BARRIER, None))

        def done(t: asyncio.Task) -> None:
            self._barrier_inflight = False
            if t.cancelled():
                fut.cancel()
            elif t.exception() is not None:
                fut.set_exception(t.exception())
            else:
                fut.set_result(None)
            if self._barrier_next is not None:
                self._launch_barrier()

        task.add_done_callback(done)

    async def _publish(self) -> None:
        """Announce this member's name and client URLs to the cluster
        (MemberList shows them), retrying until a leader takes it. The first
        publish applied also records the initial cluster and its ID."""
        cfg = self.cfg
        me = pb.MemberAddResponse(
            member=pb.Member(ID=self.id, name=cfg.name, clientURLs=cfg.advertise_client_urls),
            members=[
                pb.Member(ID=cfg.member_ids[name], name=name, peerURLs=urls)
                for name, urls in cfg.initial_cluster.items()
            ],
        )
        me.header.cluster_id = self.cluster_id
        while True:
            try:
                await self.propose(Op.MEMBER_PUBLISH, me)
                return
            except errors.EtcdError as err:
                log.info("publishing member attributes failed (%s); retrying", err.message)
                await asyncio.sleep(1.0)

    # --- watch progress --------------------------------------------------

    async def _progress_loop(self) -> None:
        interval = self.cfg.progress_notify_interval
        while True:
            await asyncio.sleep(interval)
            for w in list(self.hub.watchers()):
                if w.progress_notify:
                    w.stream.send_progress(w, self.hub.revision)
