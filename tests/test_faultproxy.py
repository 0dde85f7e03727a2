"""FaultProxy / Partitioner against a real echo server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import os
import socket
import statistics
import threading
import time

import pytest

from harness import faultproxy
from harness.faultproxy import FaultProxy, Partitioner, wait_until

DEADLINE = 3.0


# --------------------------------------------------------------------------- helpers

class EchoServer:
    """Threaded echo server: counts connections and bytes received."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(256)
        self.sock.settimeout(0.05)
        self.port = self.sock.getsockname()[1]
        self.lock = threading.Lock()
        self.accepted = 0
        self.active = 0
        self.received = 0
        self.conns: list[socket.socket] = []
        self.threads: list[threading.Thread] = []
        self.stopping = threading.Event()
        self.acceptor = threading.Thread(target=self._accept_loop, name="echo-accept", daemon=True)
        self.acceptor.start()

    def _accept_loop(self):
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, BlockingIOError):
                continue
            except OSError:
                return
            conn.settimeout(0.05)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self.lock:
                self.accepted += 1
                self.active += 1
                self.conns.append(conn)
            t = threading.Thread(target=self._serve, args=(conn,), name="echo-conn", daemon=True)
            self.threads.append(t)
            t.start()

    def _serve(self, conn):
        try:
            while not self.stopping.is_set():
                try:
                    data = conn.recv(65536)
                except TimeoutError:
                    continue
                except OSError:
                    return
                if not data:
                    return
                with self.lock:
                    self.received += len(data)
                try:
                    conn.sendall(data)
                except OSError:
                    return
        finally:
            with self.lock:
                self.active -= 1
            conn.close()

    def close(self):
        self.stopping.set()
        self.acceptor.join(DEADLINE)
        self.sock.close()
        for t in list(self.threads):
            t.join(DEADLINE)
        assert not self.acceptor.is_alive()
        assert not any(t.is_alive() for t in self.threads)


@pytest.fixture
def echo():
    server = EchoServer()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(autouse=True)
def _close_proxies():
    yield
    faultproxy.close_all()
    assert faultproxy.live_proxies() == []
    assert not [t for t in threading.enumerate() if t.name.startswith("faultproxy-")]


def connect(port, timeout=DEADLINE):
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def connect_doomed(port):
    """Connect where the proxy is expected to kill the connection at once. The RST
    can beat connect() itself, so a reset there counts as dead (returns None)."""
    try:
        return connect(port)
    except (ConnectionResetError, ConnectionAbortedError):
        return None


def recv_exactly(s, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise EOFError(f"EOF after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def roundtrip(s, payload):
    s.sendall(payload)
    assert recv_exactly(s, len(payload)) == payload


def assert_dead(s, timeout=DEADLINE):
    """The connection ends (EOF or reset) within ``timeout``; anything received first fails."""
    if s is None:  # already reset during connect()
        return
    s.settimeout(timeout)
    try:
        data = s.recv(4096)
    except (ConnectionResetError, ConnectionAbortedError, BrokenPipeError):
        return
    except TimeoutError:
        pytest.fail("connection still alive after the deadline")
    assert data == b"", f"received {data!r} from a connection that should be dead"


def assert_stays(predicate, duration, message):
    """A negative check: ``predicate`` holds for the whole (short) window; fails at once if not."""
    end = time.monotonic() + duration
    while time.monotonic() < end:
        assert predicate(), message
        time.sleep(0.005)


# --------------------------------------------------------------------------- forwarding

def test_roundtrip_and_counts(echo):
    with FaultProxy(0, echo.port, name="faultproxy-count") as p:
        assert p.port and p.address == f"127.0.0.1:{p.port}"
        s = connect(p.port)
        total = 0
        for i in range(20):
            msg = f"message {i} ".encode() * (i + 1)
            roundtrip(s, msg)
            total += len(msg)
        # Counters are bumped right after send() returns in the proxy thread, so a
        # peer may see the bytes a moment before the stats do: poll.
        wait_until(lambda: p.stats().bytes_from_target == total, DEADLINE, message="counts")
        st = p.stats()
        assert st.bytes_to_target == total == st.bytes_from_target
        assert (st.accepted, st.active, st.reset) == (1, 1, 0)
        assert echo.received == total and echo.accepted == 1
        s.close()
        wait_until(lambda: p.stats().active == 0, DEADLINE, message="connection closed")
        wait_until(lambda: echo.active == 0, DEADLINE, message="server side closed")


def test_half_close_is_forwarded(echo):
    with FaultProxy(0, echo.port) as p:
        s = connect(p.port)
        s.sendall(b"last words")
        s.shutdown(socket.SHUT_WR)
        assert recv_exactly(s, 10) == b"last words"
        assert s.recv(10) == b""  # the server's FIN, forwarded back
        s.close()
        wait_until(lambda: p.stats().active == 0, DEADLINE, message="connection closed")


def test_many_concurrent_connections(echo):
    n = 64
    with FaultProxy(0, echo.port) as p:
        socks = [connect(p.port) for _ in range(n)]
        errors = []

        def talk(i, s):
            try:
                for j in range(10):
                    roundtrip(s, f"{i}:{j}|".encode() * 50)
            except Exception as exc:  # noqa: BLE001  (reported below)
                errors.append(exc)

        threads = [threading.Thread(target=talk, args=(i, s)) for i, s in enumerate(socks)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(DEADLINE * 2)
        assert not errors and not any(t.is_alive() for t in threads)
        wait_until(lambda: p.stats().bytes_from_target == echo.received, DEADLINE,
                   message="counts settle")
        st = p.stats()
        assert (st.accepted, st.active) == (n, n)
        assert st.bytes_to_target == st.bytes_from_target == echo.received
        for s in socks:
            s.close()
        wait_until(lambda: p.stats().active == 0, DEADLINE, message="all closed")


def test_bulk_transfer_intact(echo):
    payload = os.urandom(4 * 1024 * 1024)
    with FaultProxy(0, echo.port) as p:
        s = connect(p.port, timeout=10)
        sender = threading.Thread(target=s.sendall, args=(payload,))
        sender.start()
        got = recv_exactly(s, len(payload))
        sender.join(DEADLINE)
        assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()
        wait_until(lambda: p.stats().bytes_from_target == len(payload), DEADLINE, message="counts")
        st = p.stats()
        assert st.bytes_to_target == st.bytes_from_target == len(payload)
        s.close()


def test_added_latency_is_small(echo):
    def median_rtt(port):
        s = connect(port)
        roundtrip(s, b"warm-up")
        samples = []
        for _ in range(200):
            t0 = time.perf_counter()
            roundtrip(s, b"ping")
            samples.append(time.perf_counter() - t0)
        s.close()
        return statistics.median(samples)

    with FaultProxy(0, echo.port) as p:
        direct = median_rtt(echo.port)
        proxied = median_rtt(p.port)
    # Two extra hops (one each way) through a Python selector loop.
    assert proxied - direct < 0.002, f"direct {direct * 1e3:.3f} ms, proxied {proxied * 1e3:.3f} ms"


def test_delay(echo):
    with FaultProxy(0, echo.port) as p:
        s = connect(p.port)
        p.delay(0.1)
        t0 = time.monotonic()
        roundtrip(s, b"slow")
        assert time.monotonic() - t0 >= 0.2  # 0.1 s each way
        p.delay(0)
        t0 = time.monotonic()
        roundtrip(s, b"fast")
        assert time.monotonic() - t0 < 0.1
        s.close()


def test_target_down_resets_client():
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    dead_port = free.getsockname()[1]
    free.close()  # nothing listens there now
    with FaultProxy(0, dead_port) as p:
        s = connect_doomed(p.port)
        assert_dead(s)
        wait_until(lambda: p.stats().upstream_failures == 1, DEADLINE, message="failure counted")
        assert p.stats().active == 0
        if s is not None:
            s.close()


# --------------------------------------------------------------------------- faults

def test_block_reset_kills_existing_and_new(echo):
    with FaultProxy(0, echo.port) as p:
        a, b = connect(p.port), connect(p.port)
        roundtrip(a, b"hello")
        roundtrip(b, b"hello")
        p.block()
        assert p.blocked == "reset"
        assert p.stats().active == 0  # gone by the time block() returns
        assert_dead(a)
        assert_dead(b)
        wait_until(lambda: echo.active == 0, DEADLINE, message="server side killed too")
        # A new connection during the partition dies without reaching the target.
        accepted_before = echo.accepted
        c = connect_doomed(p.port)
        if c is not None:
            try:
                c.sendall(b"anyone?")
            except OSError:
                pass
        assert_dead(c)
        assert echo.accepted == accepted_before
        st = p.stats()
        assert st.reset == 3 and st.accepted == 3
        # Heal.
        p.unblock()
        assert p.blocked is None
        d = connect(p.port)
        roundtrip(d, b"back again")
        assert echo.accepted == accepted_before + 1
        for s in (a, b, c, d):
            if s is not None:
                s.close()


def test_block_blackhole_stalls_then_heals(echo):
    with FaultProxy(0, echo.port, mode="blackhole") as p:
        a = connect(p.port)
        roundtrip(a, b"before")
        p.block()
        assert p.blocked == "blackhole"
        received = echo.received
        a.sendall(b"during")
        # a connection opened during the partition is held, not passed on
        accepted = echo.accepted
        b = connect(p.port)
        b.sendall(b"newcomer")
        wait_until(lambda: p.stats().accepted == 2, DEADLINE, message="proxy accepted b")
        assert_stays(lambda: echo.received == received and echo.accepted == accepted, 0.3,
                     "bytes or a connection got through a blackholed link")
        # Both stay open and silent.
        for s in (a, b):
            s.settimeout(0.05)
            with pytest.raises(socket.timeout):
                s.recv(10)
            s.settimeout(DEADLINE)
        assert p.stats().active == 2
        # Heal: what was withheld is delivered, in order, and the streams go on.
        p.unblock()
        assert recv_exactly(a, 6) == b"during"
        assert recv_exactly(b, 8) == b"newcomer"
        roundtrip(a, b"after")
        roundtrip(b, b"after")
        assert echo.accepted == accepted + 1
        a.close()
        b.close()


def test_blackhole_backpressure_bounds_memory(echo):
    limit = 64 * 1024
    with FaultProxy(0, echo.port, mode="blackhole", buffer_limit=limit) as p:
        s = connect(p.port)
        roundtrip(s, b"x")
        p.block()
        s.setblocking(False)
        sent, chunk = 0, b"y" * 65536
        # keep sending until the kernel buffers and the proxy's limit are all full
        deadline = time.monotonic() + DEADLINE
        stalled_since = None
        while time.monotonic() < deadline:
            try:
                sent += s.send(chunk)
                stalled_since = None
            except BlockingIOError:
                stalled_since = stalled_since or time.monotonic()
                if time.monotonic() - stalled_since > 0.2:
                    break
                time.sleep(0.005)
        assert stalled_since is not None, "sender never blocked: the proxy buffers without bound"
        p.unblock()
        s.setblocking(True)
        s.settimeout(DEADLINE)
        got = recv_exactly(s, sent)
        assert got == b"y" * sent
        s.close()


def test_blackhole_abandoned_newcomer_is_not_delivered_late(echo):
    with FaultProxy(0, echo.port, mode="blackhole") as p:
        p.block()
        s = connect(p.port)
        s.sendall(b"stale hello")
        wait_until(lambda: p.stats().active == 1, DEADLINE, message="held connection")
        s.close()  # the client gives up before the heal
        wait_until(lambda: p.stats().active == 0, DEADLINE, message="abandoned one dropped")
        p.unblock()
        with connect(p.port) as s2:
            roundtrip(s2, b"fresh")
        assert echo.accepted == 1 and echo.received == 5


def test_retarget_and_reset_connections(echo):
    other = EchoServer()
    try:
        with FaultProxy(0, echo.port) as p:
            s = connect(p.port)
            roundtrip(s, b"one")
            p.retarget(other.port)
            assert p.target_port == other.port
            roundtrip(s, b"still the old target")  # existing connections stay put
            with connect(p.port) as s2:
                roundtrip(s2, b"new target")
            assert other.received == len(b"new target")
            wait_until(lambda: p.stats().active == 1, DEADLINE, message="s2 fully closed")
            assert p.reset_connections() == 1
            assert_dead(s)
            s.close()
            with connect(p.port) as s3:  # not blocked: new ones still work
                roundtrip(s3, b"ok")
    finally:
        other.close()


def test_block_drop_discards(echo):
    with FaultProxy(0, echo.port) as p:
        s = connect(p.port)
        roundtrip(s, b"before")
        p.block("drop")
        s.sendall(b"lost forever")
        wait_until(lambda: p.stats().bytes_dropped == 12, DEADLINE, message="bytes dropped")
        assert echo.received == 6
        p.unblock()
        roundtrip(s, b"after")
        assert p.stats().active == 1
        s.close()


def test_switching_blackhole_to_reset_kills_held(echo):
    with FaultProxy(0, echo.port) as p:
        p.block("blackhole")
        s = connect(p.port)
        wait_until(lambda: p.stats().active == 1, DEADLINE, message="held connection")
        p.block("reset")
        assert_dead(s)
        assert p.stats().active == 0
        s.close()


def test_controls_are_thread_safe_under_traffic(echo):
    with FaultProxy(0, echo.port) as p:
        stop = threading.Event()
        errors = []

        def client():
            while not stop.is_set():
                try:
                    with connect(p.port, timeout=0.5) as s:
                        roundtrip(s, b"ping")
                except (OSError, EOFError):
                    pass  # partitions kill connections; that is the point
                except Exception as exc:  # noqa: BLE001
                    errors.append(exc)

        def toggler():
            for i in range(30):
                p.block(("reset", "blackhole", "drop")[i % 3])
                p.delay(0.001 * (i % 2))
                p.unblock()

        workers = [threading.Thread(target=client) for _ in range(4)]
        togglers = [threading.Thread(target=toggler) for _ in range(3)]
        for t in workers + togglers:
            t.start()
        for t in togglers:
            t.join(DEADLINE * 2)
        stop.set()
        for t in workers:
            t.join(DEADLINE)
        assert not errors and p.error is None
        assert not any(t.is_alive() for t in workers + togglers)
        p.delay(0)
        p.unblock()
        with connect(p.port) as s:
            roundtrip(s, b"still fine")


# --------------------------------------------------------------------------- lifecycle

def test_close_stops_thread_and_frees_port(echo):
    p = FaultProxy(0, echo.port, name="faultproxy-lifecycle")
    port = p.port
    s = connect(port)
    roundtrip(s, b"hi")
    assert any(t.name == "faultproxy-lifecycle" for t in threading.enumerate())
    p.close()
    p.close()  # idempotent
    assert p.closed
    assert not any(t.name == "faultproxy-lifecycle" for t in threading.enumerate())
    assert p not in faultproxy.live_proxies()
    assert_dead(s)
    s.close()
    with pytest.raises(ConnectionRefusedError):
        connect(port).close()
    # The port can be listened on again (here: by a new proxy, as after a restart).
    with FaultProxy(port, echo.port) as q:
        assert q.port == port
        with connect(port) as s2:
            roundtrip(s2, b"again")
    p.block()  # controls on a closed proxy are harmless no-ops
    p.unblock()


def test_close_all_closes_everything(echo):
    proxies = [FaultProxy(0, echo.port) for _ in range(5)]
    socks = [connect(p.port) for p in proxies]
    for s in socks:
        roundtrip(s, b"x")
    assert set(proxies) <= set(faultproxy.live_proxies())
    faultproxy.close_all()
    assert faultproxy.live_proxies() == []
    assert all(p.closed for p in proxies)
    for s in socks:
        assert_dead(s)
        s.close()


# --------------------------------------------------------------------------- Partitioner

def test_partitioner(echo):
    names = ["a", "b", "c"]
    links = {(x, y): FaultProxy(0, echo.port, name=f"faultproxy-{x}{y}")
             for x in names for y in names if x != y}
    part = Partitioner(links)
    assert part.members == set(names)

    part.isolate("a")
    assert part.blocked_links() == {("a", "b"), ("b", "a"), ("a", "c"), ("c", "a")}
    with connect(links[("b", "c")].port) as s:
        roundtrip(s, b"b->c still up")
    s = connect_doomed(links[("b", "a")].port)
    assert_dead(s)
    if s is not None:
        s.close()

    part.heal()
    assert part.blocked_links() == set()
    with connect(links[("b", "a")].port) as s:
        roundtrip(s, b"healed")

    part.split(["a"], ["b", "c"], mode="blackhole")
    assert part.blocked_links() == {("a", "b"), ("b", "a"), ("a", "c"), ("c", "a")}
    assert {p.blocked for p in links.values() if p.blocked} == {"blackhole"}
    part.heal()

    part.split(["a", "b"], ["c"])
    assert part.blocked_links() == {("a", "c"), ("c", "a"), ("b", "c"), ("c", "b")}
    part.heal()

    with pytest.raises(KeyError):
        part.isolate("z")
    with pytest.raises(ValueError):
        part.split(["a"], ["a", "b"])
