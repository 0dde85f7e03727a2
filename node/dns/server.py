"""The DNS server's sockets: UDP and TCP on one address, answering through a ``Responder``.

UDP is one thread that drains what the socket holds into a queue per client address, then
answers the clients in turns, one query each per turn: a client flooding the server fills its
own queue (at most ``PER_CLIENT`` waiting; beyond that its queries are dropped, as an
overloaded server drops) while another client's query waits at most one turn, not behind the
flood. TCP: a thread per connection (at most ``MAX_TCP``), several length-prefixed queries per
connection, closed after ``TCP_IDLE`` seconds without one (RFC 7766 asks for idle timeouts).

The sockets may be made inside a network namespace (``netns``: a node's, so pods reach the
server at the node's address) while the process itself stays in its own namespace, where the
apiserver is.
"""

from __future__ import annotations

import collections
import logging
import select
import socket
import struct
import threading

from node.dns.wire import TCP_MAX, UDP_MIN, Responder

log = logging.getLogger("node.dns.server")

PER_CLIENT = 64  # queries waiting per client address
DRAIN_MAX = 512  # datagrams read before answering a turn
MAX_TCP = 64
TCP_IDLE = 10.0
RCVBUF = 1 << 20


def _socket(netns: str, kind: int) -> socket.socket:
    if netns:
        from node.network.netns import socket_in
        return socket_in(netns, socket.AF_INET, kind)
    return socket.socket(socket.AF_INET, kind)


class DnsServer:
    def __init__(self, responder: Responder, host: str = "127.0.0.1", port: int = 53,
                 netns: str = "") -> None:
        self.responder = responder
        self._lock = threading.Lock()  # the responder (its cache) is not thread-safe
        self.udp = _socket(netns, socket.SOCK_DGRAM)
        self.tcp = _socket(netns, socket.SOCK_STREAM)
        try:
            self.udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
            self.udp.bind((host, port))
            port = self.udp.getsockname()[1]  # port 0: TCP takes the same free port
            self.tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.tcp.bind((host, port))
            self.tcp.listen(128)
        except OSError:
            self.udp.close()
            self.tcp.close()
            raise
        self.address = (host, port)
        self._stop = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()
        self._threads: list[threading.Thread] = []
        self._tcp_slots = threading.BoundedSemaphore(MAX_TCP)

    def start(self) -> "DnsServer":
        for target, name in ((self._serve_udp, "dns-udp"), (self._serve_tcp, "dns-tcp")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake_w.send(b"x")
        for t in self._threads:
            t.join(5)
        for s in (self.udp, self.tcp, self._wake_r, self._wake_w):
            s.close()

    def answer(self, wire: bytes, limit: int) -> bytes | None:
        with self._lock:
            try:
                return self.responder.respond(wire, limit)
            except Exception:  # a bug must cost one answer, never the server
                log.exception("no answer to a %d-byte query", len(wire))
                return None

    # ---- UDP ----

    def _serve_udp(self) -> None:
        queues: dict[str, collections.deque] = {}
        sock = self.udp
        sock.setblocking(False)
        while not self._stop.is_set():
            if not queues:
                ready, _, _ = select.select([sock, self._wake_r], [], [])
                if self._wake_r in ready:
                    return
            self._drain(sock, queues)
            # one turn: one query of each client that has one waiting
            for client in list(queues):
                q = queues[client]
                data, addr = q.popleft()
                if not q:
                    del queues[client]
                out = self.answer(data, UDP_MIN)
                if out is not None:
                    try:
                        sock.sendto(out, addr)
                    except OSError as e:  # full buffer, unreachable client: that answer is lost
                        log.debug("send to %s: %s", addr, e)

    def _drain(self, sock: socket.socket, queues: dict) -> None:
        for _ in range(DRAIN_MAX):
            try:
                data, addr = sock.recvfrom(TCP_MAX)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # e.g. an ICMP error reported on the socket
                log.debug("recvfrom: %s", e)
                continue
            q = queues.get(addr[0])
            if q is None:
                q = queues[addr[0]] = collections.deque()
            if len(q) < PER_CLIENT:
                q.append((data, addr))
            else:
                self.responder.stats["dropped"] += 1

    # ---- TCP ----

    def _serve_tcp(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self.tcp, self._wake_r], [], [])
            if self._wake_r in ready:
                return
            try:
                conn, addr = self.tcp.accept()
            except OSError:
                continue
            if not self._tcp_slots.acquire(blocking=False):
                conn.close()  # too many connections: the client retries later
                continue
            threading.Thread(target=self._tcp_connection, args=(conn, addr), daemon=True,
                             name=f"dns-tcp-{addr[0]}:{addr[1]}").start()

    def _tcp_connection(self, conn: socket.socket, addr) -> None:
        try:
            conn.settimeout(TCP_IDLE)
            while not self._stop.is_set():
                head = _recv_exactly(conn, 2)
                if head is None:
                    return
                (length,) = struct.unpack("!H", head)
                data = _recv_exactly(conn, length)
                if data is None:
                    return
                out = self.answer(data, TCP_MAX)
                if out is None:
                    return  # nothing to say to garbage: close
                conn.sendall(struct.pack("!H", len(out)) + out)
        except OSError as e:
            log.debug("tcp %s: %s", addr, e)
        finally:
            conn.close()
            self._tcp_slots.release()


def _recv_exactly(conn: socket.socket, n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)
