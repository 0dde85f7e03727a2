"""One etcdlite member: Raft, the state machine, watchers, the leader's
lease clock and the gRPC services, wired together on one asyncio loop.

Writes: handler -> `propose` (batched: `GroupCommit`) -> Raft -> applied (in
the event loop, where pysyncobj runs, a bounded amount of work a turn:
`etcdlite.raft.apply_pacing`) -> the result resolves the handler's future,
and two turns later the events reach the `WatchHub`, in apply order (a
revision of many events a step a turn too).
Reads: served from the local state machine under the raft lock, after a
read barrier through Raft (`ReadBarrier`) unless `serializable` (or a
one-member cluster, where applied state already holds every acknowledged
write).
The services reach the member through `Backend`, which Member implements.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
from collections import deque

import grpc

from etcdlite import errors
from etcdlite.apply import Op, events_of
from etcdlite.config import GRPC_OVERHEAD_BYTES, MemberConfig, host_port, is_tls_url
from etcdlite.jwt_tokens import tokens_from_spec
from etcdlite.lessor import Lessor
from etcdlite.pb.etcdserverpb import rpc_pb2 as pb
from etcdlite.pb.etcdserverpb import rpc_pb2_grpc
from etcdlite.pb.v3electionpb import v3election_pb2_grpc
from etcdlite.pb.v3lockpb import v3lock_pb2_grpc
from etcdlite.quota import quota_limit
from etcdlite.raft import RaftNode
from etcdlite.raft.apply_pacing import APPLY_SLICE
from etcdlite.server.auth import AuthGate, AuthService
from etcdlite.server.cluster import ClusterService, learner_ready
from etcdlite.server.corruption import CorruptionChecks, corrupt_key_from_env, corrupting
from etcdlite.server.election import ElectionService
from etcdlite.server.gateway import Gateway
from etcdlite.server.group_commit import GroupCommit
from etcdlite.server.kv import KVService
from etcdlite.server.kv import add_to_server as add_kv_service
from etcdlite.server.learner_gate import LearnerInterceptor, refusal
from etcdlite.server.lease import LeaseService
from etcdlite.server.lock import LockService
from etcdlite.server.maintenance import MaintenanceService
from etcdlite.server.metrics import MemberMetrics
from etcdlite.server.metrics_listener import MetricsListener
from etcdlite.server.read_barrier import ReadBarrier
from etcdlite.server.response_header import ResponseHeaders
from etcdlite.server.space_quota import SpaceGuard
from etcdlite.server.watch import WatchService
from etcdlite.tls_policy import apply_cipher_suites
from etcdlite.server.watch import add_to_server as add_watch_service
from etcdlite.watch_hub import STEP_EVENTS, WatchHub
from grpclite import GrpcServer, server_ssl_context

log = logging.getLogger("etcdlite")

# grpc.aio's server (--experimental-grpc-server=grpcio), besides the message sizes
GRPCIO_SERVER_OPTIONS = [
    # etcd clients ping every few seconds, even when idle
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 5000),
    ("grpc.http2.max_ping_strikes", 0),
]
# lease and membership commands whose application the event loop hears of
_NOTIFY_OPS = frozenset({Op.LEASE_GRANT, Op.LEASE_RENEW, Op.MEMBER_ADD, Op.MEMBER_REMOVE, Op.MEMBER_PROMOTE})
_NO_ARG = object()
# seconds of watch fan-out one turn of the event loop may take (then it goes on in the next)
DELIVER_SLICE = APPLY_SLICE


class Member:
    """Implements `Backend` (etcdlite.server.backend): propose, submit,
    submit_put_value, read_barrier, header, header_field and
    batch_header_field are bound by `start` to the parts that answer them."""

    def __init__(self, cfg: MemberConfig):
        self.cfg = cfg
        self.id = cfg.id
        self.cluster_id = cfg.cluster_id
        self.loop: asyncio.AbstractEventLoop | None = None
        self.raft: RaftNode | None = None
        self.hub = WatchHub(1)
        self.lessor = Lessor(self)
        self.auth = AuthGate(self, cfg.auth_token_ttl, cfg.client_cert_auth, tokens_from_spec(cfg.auth_token))
        self.servers: list = []  # GrpcServer, or grpc.aio.Server with --experimental-grpc-server=grpcio
        self._h2_servers: list[GrpcServer] = []  # those of them that are GrpcServers
        self.client_ports: list[int] = []
        self.metrics: MemberMetrics | None = None  # set by start
        self.metrics_listeners: list[MetricsListener] = []
        self.gateway: Gateway | None = None  # set by start: HTTP/1.1 clients of the client URLs
        self.corruption: CorruptionChecks | None = None  # set by start: the corruption checks
        self._ready = asyncio.Event()
        # set once this member applies its own removal from the cluster
        self.removed = asyncio.Event()
        # whether the member table has this member as a learner (see etcdlite.server.learner_gate)
        self.learner = False
        self._tasks: list[asyncio.Task] = []
        self._deliveries = 0  # applied batches not delivered yet
        self._due: deque = deque()  # those whose turn has come, oldest first
        self._delivering = None  # the delivery under way (a generator), if it stopped
        self._deliver_scheduled = False  # _deliver runs in the next turn
        self._epoch = 0  # deliveries from before a snapshot was installed are dropped

    # --- lifecycle -------------------------------------------------------

    async def start(self) -> None:
        self.loop = loop = asyncio.get_running_loop()
        cfg = self.cfg
        self._space_limit = quota_limit(cfg.quota_backend_bytes)
        # as etcd, only a member that had data checks it against its peers' at start
        initialized = any(os.path.exists(os.path.join(cfg.data_dir, name))
                          for name in ("raft.journal", "raft.snapshot"))
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
            learner_peers=self._learner_peers,
            may_campaign=self._may_campaign,
            is_learner=lambda: self.raft.machine.members.is_learner(self.id),
            snapshot_count=cfg.snapshot_count,
            snapshot_bytes=cfg.snapshot_bytes,
            fsync=not cfg.unsafe_no_fsync,
            sync_in_thread=cfg.raft_sync == "thread",
            peer_tls=cfg.load_peer_tls(),
            space_quota=self._space_limit,
        )
        self._wire(loop)
        self.lessor.bind(self.raft.calls)
        self.corruption = CorruptionChecks(self)
        corrupt_key = corrupt_key_from_env()
        if corrupt_key is not None:
            log.warning("member %x: test hook: every put of %r is applied with another value",
                        self.id, corrupt_key)
            self.raft.state.rewrite = corrupting(corrupt_key)
        self.raft.calls.handle("learner_ready", functools.partial(learner_ready, self))
        log.info("member %x: replaying the raft log in %s", self.id, cfg.data_dir)
        await self._ready.wait()
        with self.raft.lock:
            self.hub.revision = self.raft.machine.kv.current_revision
        log.info("member %x: ready at revision %d, raft term %d", self.id, self.hub.revision, self.raft.term)
        self._check_removed()
        self.learner = self.raft.machine.members.is_learner(self.id)
        if cfg.initial_corrupt_check and initialized:
            await self.corruption.initial_check()
        self.corruption.answering = True
        tls = cfg.load_client_tls()
        self.gateway = Gateway(self)
        for url in cfg.listen_client_urls:
            # https: TLS; http: plain text, as etcd
            server = await self._serve(url, tls if is_tls_url(url) else None)
            self.servers.append(server)
            if isinstance(server, GrpcServer):
                self._h2_servers.append(server)
        for url in cfg.listen_metrics_urls:
            await self._serve_metrics(url)
        self._tasks.append(loop.create_task(self._publish()))
        self._tasks.append(loop.create_task(self.lessor.run()))
        self._tasks.append(loop.create_task(self._progress_loop()))
        self._tasks.append(loop.create_task(self.auth.run()))
        if cfg.corrupt_check_time > 0:
            self._tasks.append(loop.create_task(self.corruption.monitor(cfg.corrupt_check_time)))

    async def _serve(self, url: str, tls):
        """A gRPC server for one client URL, with every etcd service on it."""
        cfg = self.cfg
        max_receive = cfg.max_request_bytes + GRPC_OVERHEAD_BYTES
        address = host_port(url)
        if cfg.grpc_server == "grpcio":
            server = grpc.aio.server(options=[
                ("grpc.keepalive_time_ms", int(cfg.grpc_keepalive_interval * 1000)),
                ("grpc.keepalive_timeout_ms", int(cfg.grpc_keepalive_timeout * 1000)),
                ("grpc.max_receive_message_length", max_receive),
                ("grpc.max_send_message_length", 2**31 - 1),
                ("grpc.max_concurrent_streams", cfg.max_concurrent_streams),
                *GRPCIO_SERVER_OPTIONS,
            ], interceptors=[LearnerInterceptor(lambda: self.learner)])
        else:
            server = GrpcServer(max_receive_message_length=max_receive,
                                max_concurrent_streams=cfg.max_concurrent_streams,
                                keepalive_time=cfg.grpc_keepalive_interval,
                                keepalive_timeout=cfg.grpc_keepalive_timeout)
            server.refuse = refusal if self.learner else None
        add_kv_service(KVService(self), server)
        add_watch_service(WatchService(self), server)
        rpc_pb2_grpc.add_LeaseServicer_to_server(LeaseService(self), server)
        rpc_pb2_grpc.add_ClusterServicer_to_server(ClusterService(self), server)
        rpc_pb2_grpc.add_MaintenanceServicer_to_server(MaintenanceService(self), server)
        rpc_pb2_grpc.add_AuthServicer_to_server(AuthService(self, self.auth), server)
        v3lock_pb2_grpc.add_LockServicer_to_server(LockService(self), server)
        v3election_pb2_grpc.add_ElectionServicer_to_server(ElectionService(self), server)
        if isinstance(server, GrpcServer):
            server.http1_protocol = self.gateway.protocol
            host, _, port = address.rpartition(":")
            host = host.strip("[]")
            ssl_context = tls and server_ssl_context(
                cfg.cert_file, cfg.key_file, cfg.trusted_ca_file or None, tls.client_cert_auth)
            if tls:
                apply_cipher_suites(ssl_context, list(tls.cipher_suites))
                if tls.policy:
                    policy, asked = tls.policy, tls.client_cert_auth
                    server.tls_check = lambda t: policy.refusal(t.get_extra_info("ssl_object"), asked)
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

    async def _serve_metrics(self, url: str) -> None:
        """etcd's --listen-metrics-urls: /metrics and /health on `url`."""
        host, _, port = host_port(url).rpartition(":")
        host = host.strip("[]")
        listener = MetricsListener(self.metrics, self.raft, self.read_barrier, self.metrics.alarmed)
        try:
            port = await listener.listen("127.0.0.1" if host == "localhost" else host, int(port))
        except OSError as err:
            raise OSError(f"cannot listen for metrics on {url}: {err.strerror or err}: is the port in use?") from None
        self.metrics_listeners.append(listener)
        log.info("member %x: serving /metrics and /health on %s", self.id, url)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*(m.stop() for m in self.metrics_listeners), return_exceptions=True)
        if self.gateway is not None:
            await self.gateway.close()
        await asyncio.gather(*(s.stop(grace=1.0) for s in self.servers), return_exceptions=True)
        if self.raft is not None:
            self.raft.stop()

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

    def _on_applied(self, applied) -> None:
        """Runs inside a raft tick for every applied batch, in log order:
        delivery is left to a later turn of the loop (not done inside
        pysyncobj's apply). Two turns later: the batch's own requests are
        answered (their futures settle after this, in the same tick) and
        their responses written before the watch fan-out, as etcd
        acknowledges a put without waiting for its watchers. A batch that
        changed keys while nobody watches, with no delivery still on its
        way, only moves the hub's revision, here; one that neither changed
        keys nor touched leases or members is not delivered at all.
        A write applied past this member's space quota has it raise its
        NOSPACE alarm (as etcd's apply loop does), in a later turn."""
        machine = self._replicated.machine
        if machine.space_exceeded:
            machine.space_exceeded = False
            self.loop.call_soon(self.space.raise_alarm)
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
        self.loop.call_soon(self.loop.call_soon, self._deliver_due, applied, self._epoch)

    def _deliver_due(self, applied, epoch: int) -> None:
        if epoch != self._epoch:
            return
        self._due.append(applied)
        if not self._deliver_scheduled:
            self._deliver()

    def _deliver(self) -> None:
        """Deliver the batches whose turn has come, in order, for at most
        DELIVER_SLICE; a delivery that takes longer (a revision of many
        events) goes on in the next turn, and later batches wait for it."""
        self._deliver_scheduled = False
        deadline = time.monotonic() + DELIVER_SLICE
        steps, due = self._delivering, self._due
        while steps is not None or due:
            if steps is None:
                steps = self._delivery_steps(due.popleft())
            try:
                while True:
                    next(steps)
                    if time.monotonic() >= deadline:
                        break
            except StopIteration:
                steps = None
                self._deliveries -= 1
            self._delivering = steps
            if (steps is not None or due) and time.monotonic() >= deadline:
                # the rest in the next turn; batches due meanwhile wait for it
                self._deliver_scheduled = True
                self.loop.call_soon(self._deliver)
                return

    def _delivery_steps(self, applied):
        hub = self.hub
        for op, result, events, revision in applied:
            if events:
                events = events_of(events)
                if len(events) > STEP_EVENTS:
                    yield from hub.publish_steps(events, revision)
                    # nothing needs them now: freed a step at a time (all at once, 300k
                    # events and their key-values took a turn of their own)
                    while events:
                        del events[-4 * STEP_EVENTS:]
                        yield
                else:
                    hub.publish(events, revision)
            if op == Op.MEMBER_REMOVE:
                self._check_removed()
            if op == Op.MEMBER_ADD or op == Op.MEMBER_PROMOTE or op == Op.MEMBER_REMOVE:
                self._note_learner()
            elif (op == Op.LEASE_GRANT or op == Op.LEASE_RENEW) and getattr(result, "TTL", 0) > 0:
                # LEASE_RENEW: keep-alives in journals written before they left the log
                self.lessor.touched(result.ID, result.TTL)

    def _table_urls(self) -> tuple[dict, set] | None:
        """(peer URLs by member ID, the learners' IDs) of the replicated
        member table; None until it is filled."""
        members = self.raft.machine.members
        if not members.bootstrapped:
            return None
        with self.raft.lock:
            return members.peer_urls(), members.learners

    def _desired_peers(self) -> set[str] | None:
        """Raft addresses of the other voting members in the replicated
        member table (None until it is filled)."""
        table = self._table_urls()
        if table is None:
            return None
        urls, learners = table
        return {host_port(u[0]) for i, u in urls.items() if i != self.id and u and i not in learners}

    def _learner_peers(self) -> set[str] | None:
        """Raft addresses of the learners in the replicated member table
        (None until it is filled)."""
        table = self._table_urls()
        if table is None:
            return None
        urls, learners = table
        return {host_port(urls[i][0]) for i in learners if urls.get(i)}

    def _may_campaign(self) -> bool:
        """Whether this member may stand for leader: a voter of the member
        table, or, before the table is known, a member of a new cluster's
        --initial-cluster. A member that joined an existing one waits for
        the table: it may be a learner, which must never campaign (a term of
        its own would make it deaf to the leader)."""
        members = self.raft.machine.members
        if not members.bootstrapped:
            return self.cfg.initial_cluster_state == "new"
        return self.id in members and not members.is_learner(self.id)

    def _note_learner(self) -> None:
        """After a membership change applied here: the learner's limits on
        client calls follow whether this member is one."""
        learner = self.raft.machine.members.is_learner(self.id)
        if learner != self.learner:
            self.learner = learner
            log.info("member %x is %s", self.id, "a learner" if learner else "a voting member")
            for server in self._h2_servers:
                server.refuse = refusal if learner else None

    def _check_removed(self) -> None:
        if self.id in self.raft.machine.members.removed and not self.removed.is_set():
            log.warning("member %x was removed from the cluster; shutting down", self.id)
            self.removed.set()

    def _on_restored(self) -> None:
        with self.raft.lock:
            revision = self.raft.machine.kv.current_revision
        # what was applied before the snapshot is not delivered: the watchers are cancelled
        self._epoch += 1
        self._deliveries = 0
        self._due.clear()
        if self._delivering is not None:
            self._delivering.close()
            self._delivering = None
        self._deliver_scheduled = False
        self.hub.reset(revision)
        self._note_learner()

    # --- Backend: what the services call ---------------------------------

    def _wire(self, loop: asyncio.AbstractEventLoop) -> None:
        """The parts behind Backend's calls, once Raft is there. Each call is
        the part's own bound method, bound once: nothing in between on the
        hot paths (Put, Range, watch events)."""
        self._state_lock, self._replicated = self.raft.lock, self.raft.state
        self.auth.bind(self.raft.state)
        headers = ResponseHeaders(self.id, self.cluster_id, self.raft)
        commit = GroupCommit(loop, self.raft.propose, self.cfg.max_request_bytes,
                             before_answers=headers.check, after_answers=self._flush_answers)
        barrier = ReadBarrier(loop, self.raft, commit.propose)
        self.propose = commit.propose
        self.submit = commit.submit
        self.submit_put_value = commit.submit_put_value
        self.read_barrier = barrier.wait
        self.header = headers.fill
        self.header_field = headers.field
        self.batch_header_field = headers.batch_field
        self.space = SpaceGuard(self.id, self._space_limit, self.raft.state, commit.submit)
        flag = self.cfg.quota_backend_bytes  # etcd's gauge shows a negative one (no quota) as given
        self.metrics = MemberMetrics(self.id, self.raft, commit, self.read, flag if flag < 0 else self._space_limit)

    def read(self, query, arg=_NO_ARG):
        """Backend.read: query(machine) or query(machine, arg), under the raft
        lock. The machine is looked up each time (installing a snapshot
        replaces it), through RaftNode.state rather than its `machine`
        property: Range's path keeps the calls it had."""
        with self._state_lock:
            machine = self._replicated.machine
            return query(machine) if arg is _NO_ARG else query(machine, arg)

    def _flush_answers(self) -> None:
        """The answers of a batch just settled leave now, not after the next
        turn's reads."""
        for server in self._h2_servers:
            server.flush_now()

    # --- watch progress --------------------------------------------------

    async def _progress_loop(self) -> None:
        interval = self.cfg.progress_notify_interval
        while True:
            await asyncio.sleep(interval)
            for w in list(self.hub.watchers()):
                if w.progress_notify:
                    w.stream.send_progress(w, self.hub.revision)
