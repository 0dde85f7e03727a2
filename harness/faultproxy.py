"""A fault-injecting TCP proxy for Raft peer links, for tests (127.0.0.1 only).

    with FaultProxy(0, target_port) as p:      # listens on 127.0.0.1:p.port
        ...                                     # point a peer's dial address at p.port
        p.block()                               # partition ("reset" mode: RST everything)
        p.block("blackhole")                    # partition that stalls, connections stay open
        p.unblock()                             # heal
        p.delay(0.05)                           # add 50 ms one-way latency to new data
        p.stats().bytes_to_target               # traffic really flowed through

One background thread per proxy runs a selector loop over all of its
connections; every control call (block/unblock/delay/retarget/close) is handed
to that thread and returns once the loop has applied it, so it is thread-safe
and in effect when the call returns.

Block modes:

* ``"reset"`` (default): every proxied connection is closed abruptly on both
  sides (SO_LINGER 0, so the peers get an RST), and while blocked each new
  connection is accepted and immediately reset.
* ``"blackhole"``: nothing is delivered in either direction and connections
  stay open, the way a real partition looks to TCP. The proxy keeps reading
  until about ``buffer_limit`` bytes are held per direction, then stops reading,
  so the sender's socket buffers fill up and its sends block. New connections
  are accepted and held without dialing the target. On ``unblock()`` the held
  bytes (and FINs) are delivered in order and held connections dial the target:
  what TCP shows after a partition heals before anyone gave up. A held new
  connection that its client closes before the heal is dropped (RST) at once
  rather than delivered late. An established connection closed by one side
  during the partition still gets its pending bytes and FIN delivered after the
  heal, as TCP retransmission would.
* ``"drop"``: bytes read while blocked are discarded for good (counted in
  ``bytes_dropped``); connections stay open and resume forwarding after
  ``unblock()`` with a hole in the stream. TCP never does that, and a framed
  protocol (pysyncobj's) is desynchronised by it, so use it only on purpose.

``close_all()`` closes every proxy still open (for fixture teardown).
``Partitioner`` drives a set of per-link proxies by member name.
"""

from __future__ import annotations

import collections
import errno
import itertools
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Self

from harness.procs import free_port

__all__ = ["FaultProxy", "Partitioner", "ProxyStats", "close_all", "live_proxies", "wait_until"]

HOST = "127.0.0.1"
MODES = ("reset", "blackhole", "drop")
_RECV_SIZE = 256 * 1024
_CONTROL_TIMEOUT = 10.0

_registry: list[FaultProxy] = []
_registry_lock = threading.Lock()
_ids = itertools.count(1)


def live_proxies() -> list[FaultProxy]:
    """The proxies created and not yet closed."""
    with _registry_lock:
        return list(_registry)


def close_all(timeout: float = 5.0) -> None:
    """Close every proxy not yet closed. Raises the first error after trying all."""
    first_error = None
    for proxy in live_proxies():
        try:
            proxy.close(timeout)
        except Exception as exc:  # noqa: BLE001  (keep closing the others)
            first_error = first_error or exc
    if first_error is not None:
        raise first_error


def wait_until(predicate: Callable[[], object], timeout: float = 5.0, interval: float = 0.002,
               message: str = "condition") -> object:
    """Poll ``predicate`` until it returns something truthy; return that, or raise
    TimeoutError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


@dataclass(frozen=True)
class ProxyStats:
    bytes_to_target: int      # client -> target, bytes actually written to the target side
    bytes_from_target: int    # target -> client, bytes actually written to the client side
    bytes_dropped: int        # discarded in "drop" mode (either direction)
    accepted: int             # connections accepted on the listen port, ever
    active: int               # connections currently open (incl. held ones)
    reset: int                # connections killed by block()/reset mode (existing + new)
    upstream_failures: int    # connections whose dial to the target failed


def _abort(sock: socket.socket | None) -> None:
    """Close with RST (SO_LINGER 0)."""
    if sock is None:
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


def _nodelay(sock: socket.socket) -> None:
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        pass


class _Pipe:
    """One direction of a proxied connection: bytes read from ``src`` queued for ``dst``."""

    __slots__ = ("buffered", "chunks", "eof", "fin_sent", "name")

    def __init__(self, name: str):
        self.name = name                      # "up" (client->target) or "down"
        self.chunks: collections.deque = collections.deque()  # [release_time, memoryview]
        self.buffered = 0
        self.eof = False                      # src sent FIN
        self.fin_sent = False                 # FIN forwarded to dst

    def done(self) -> bool:
        return self.fin_sent


class _Conn:
    __slots__ = ("client", "down", "id", "masks", "state", "up", "upstream")

    def __init__(self, cid: int, client: socket.socket):
        self.id = cid
        self.client = client
        self.upstream: socket.socket | None = None
        self.state = "held"                   # "held" | "connecting" | "open" | "closed"
        self.up = _Pipe("up")
        self.down = _Pipe("down")
        self.masks: dict = {}                 # socket -> registered event mask


class FaultProxy:
    """TCP proxy 127.0.0.1:listen_port -> 127.0.0.1:target_port with fault injection."""

    def __init__(self, listen_port: int, target_port: int, *, mode: str = "reset",
                 name: str | None = None, buffer_limit: int = 1 << 20, backlog: int = 512):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        self.name = name or f"faultproxy-{next(_ids)}"
        self.default_mode = mode
        self.buffer_limit = buffer_limit
        self._target_port = int(target_port)
        self._blocked: str | None = None      # None or the active block mode
        self._delay = 0.0
        self._closed = False
        self.error: BaseException | None = None   # set if the loop thread crashed
        self._lock = threading.Lock()         # guards _commands and _closed
        self._commands: collections.deque = collections.deque()
        # counters: written only by the loop thread
        self._bytes_to_target = 0
        self._bytes_from_target = 0
        self._bytes_dropped = 0
        self._accepted = 0
        self._reset = 0
        self._upstream_failures = 0
        self._conns: dict[int, _Conn] = {}
        self._delayed: set = set()            # (conn, pipe) whose head chunk is not yet due
        self._cid = itertools.count(1)

        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            # port 0: one from procs.free_port, so that it is never a port already handed out
            # to a server of ours that has not bound it yet
            self._listener.bind((HOST, int(listen_port) or free_port()))
            self._listener.listen(backlog)
            self._listener.setblocking(False)
        except BaseException:
            self._listener.close()
            raise
        self.port: int = self._listener.getsockname()[1]
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._listener, selectors.EVENT_READ, "listen")
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        with _registry_lock:
            _registry.append(self)
        self._thread.start()

    # ------------------------------------------------------------------ public API

    @property
    def target_port(self) -> int:
        return self._target_port

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def blocked(self) -> str | None:
        """None when forwarding, else the block mode in effect."""
        return self._blocked

    @property
    def closed(self) -> bool:
        return self._closed

    def block(self, mode: str | None = None) -> None:
        """Partition this link (see the module doc for the modes). Blocking again
        with another mode switches mode; switching to "reset" kills what is open."""
        mode = mode or self.default_mode
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        self._call(lambda: self._do_block(mode))

    def unblock(self) -> None:
        """Heal: forward again (held bytes/connections of "blackhole" go through)."""
        self._call(self._do_unblock)

    def delay(self, seconds: float) -> None:
        """Hold every chunk read from now on for ``seconds`` before writing it on
        (one-way latency, both directions). 0 turns it off."""
        seconds = float(seconds)
        if seconds < 0:
            raise ValueError("delay must be >= 0")

        def apply():
            self._delay = seconds
        self._call(apply)

    def retarget(self, target_port: int) -> None:
        """Send connections accepted from now on to another port."""
        port = int(target_port)

        def apply():
            self._target_port = port
        self._call(apply)

    def reset_connections(self) -> int:
        """Kill every open connection with RST without blocking new ones; returns how many."""
        box = []
        self._call(lambda: box.append(self._abort_all()))
        return box[0] if box else 0

    def stats(self) -> ProxyStats:
        return ProxyStats(
            bytes_to_target=self._bytes_to_target,
            bytes_from_target=self._bytes_from_target,
            bytes_dropped=self._bytes_dropped,
            accepted=self._accepted,
            active=len(self._conns),
            reset=self._reset,
            upstream_failures=self._upstream_failures,
        )

    def close(self, timeout: float = 5.0) -> None:
        """Stop the loop, RST every connection, close the listener; join the thread.
        Idempotent. Raises RuntimeError if the thread does not end within ``timeout``."""
        with self._lock:
            already = self._closed
            self._closed = True
        if not already:
            self._wake()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise RuntimeError(f"{self.name}: loop thread did not stop within {timeout}s")
        if self.error is not None and not already:
            raise RuntimeError(f"{self.name}: loop thread had crashed") from self.error

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else (f"blocked:{self._blocked}" if self._blocked else "open")
        return f"<FaultProxy {self.name} :{self.port} -> :{self._target_port} {state}>"

    # ------------------------------------------------------------------ control plumbing

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except (BlockingIOError, OSError):
            pass  # pipe already full (a wake-up is pending) or closed

    def _call(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the loop thread and wait for it. After close(), state-only
        changes are applied directly (there is nothing left to act on)."""
        if threading.current_thread() is self._thread:
            fn()
            return
        done = threading.Event()
        errors: list = []
        with self._lock:
            if self.error is not None:
                raise RuntimeError(f"{self.name}: loop thread crashed ({self._accepted} connections accepted, "
                                   f"{len(self._conns)} open)") from self.error
            if self._closed:
                return
            self._commands.append((fn, done, errors))
        self._wake()
        finished = done.wait(_CONTROL_TIMEOUT)
        if self.error is not None:
            raise RuntimeError(f"{self.name}: loop thread crashed") from self.error
        if not finished and not self._closed:
            raise RuntimeError(f"{self.name}: control call not processed within {_CONTROL_TIMEOUT}s")
        if errors:
            raise errors[0]

    def _run_commands(self) -> None:
        while True:
            with self._lock:
                if not self._commands:
                    return
                fn, done, errors = self._commands.popleft()
            try:
                fn()
            except BaseException as exc:  # noqa: BLE001  (report to the caller, keep the loop alive)
                errors.append(exc)
            finally:
                done.set()

    # ------------------------------------------------------------------ loop

    def _run(self) -> None:
        try:
            while True:
                with self._lock:
                    closing = self._closed
                if closing:
                    break
                timeout = self._next_timeout()
                events = self._sel.select(timeout)
                for key, mask in events:
                    tag = key.data
                    if tag == "wake":
                        try:
                            while self._wake_r.recv(4096):
                                pass
                        except (BlockingIOError, OSError):
                            pass
                    elif tag == "listen":
                        self._accept()
                    else:
                        conn, which = tag
                        if conn.state != "closed":
                            self._on_event(conn, which, mask)
                self._run_commands()
                if self._delayed:
                    self._release_due()
        except BaseException as exc:
            self.error = exc  # surfaced by the next control call
            raise
        finally:
            self._shutdown()

    def _shutdown(self) -> None:
        for conn in list(self._conns.values()):
            self._kill(conn, count=False)
        for sock in (self._listener, self._wake_r, self._wake_w):
            try:
                self._sel.unregister(sock)
            except (KeyError, ValueError, OSError):
                pass
            try:
                sock.close()
            except OSError:
                pass
        self._sel.close()
        with _registry_lock:
            if self in _registry:
                _registry.remove(self)
        # release anyone waiting on a control call that raced with close()
        with self._lock:
            pending = list(self._commands)
            self._commands.clear()
        for _fn, done, _errors in pending:
            done.set()

    def _next_timeout(self) -> float | None:
        if not self._delayed:
            return None
        now = time.monotonic()
        due = min((pipe.chunks[0][0] for _conn, pipe in self._delayed if pipe.chunks), default=now)
        return max(0.0, due - now)

    def _release_due(self) -> None:
        now = time.monotonic()
        for conn, pipe in list(self._delayed):
            if not pipe.chunks or pipe.chunks[0][0] <= now:
                self._delayed.discard((conn, pipe))
                if conn.state != "closed":
                    self._pump(conn)

    # ------------------------------------------------------------------ connections

    def _accept(self) -> None:
        while True:
            try:
                client, _addr = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    return  # out of resources: leave it in the backlog
                if exc.errno in (errno.ECONNABORTED, errno.EPROTO):
                    continue
                raise
            self._accepted += 1
            if self._blocked == "reset":
                self._reset += 1
                _abort(client)
                continue
            client.setblocking(False)
            _nodelay(client)
            conn = _Conn(next(self._cid), client)
            self._conns[conn.id] = conn
            if self._blocked is None:
                self._dial(conn)
            self._update(conn)

    def _dial(self, conn: _Conn) -> None:
        up = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        up.setblocking(False)
        _nodelay(up)
        conn.upstream = up
        rc = up.connect_ex((HOST, self._target_port))
        if rc in (0, errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EAGAIN):
            conn.state = "open" if rc == 0 else "connecting"
        else:
            self._kill(conn, count=False)
            self._upstream_failures += 1

    def _finish_connect(self, conn: _Conn) -> None:
        err = conn.upstream.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self._kill(conn, count=False)
            self._upstream_failures += 1
            return
        conn.state = "open"
        self._pump(conn)

    def _kill(self, conn: _Conn, count: bool = True) -> None:
        """RST both sides and forget the connection."""
        if conn.state == "closed":
            return
        conn.state = "closed"
        if count:
            self._reset += 1
        self._unregister(conn)
        _abort(conn.client)
        _abort(conn.upstream)
        self._conns.pop(conn.id, None)
        self._delayed.discard((conn, conn.up))
        self._delayed.discard((conn, conn.down))

    def _unregister(self, conn: _Conn) -> None:
        for sock in list(conn.masks):
            try:
                self._sel.unregister(sock)
            except (KeyError, ValueError, OSError):
                pass
        conn.masks.clear()

    def _close_gracefully(self, conn: _Conn) -> None:
        conn.state = "closed"
        self._unregister(conn)
        for sock in (conn.client, conn.upstream):
            if sock is not None:
                try:
                    sock.close()
                except OSError:
                    pass
        self._conns.pop(conn.id, None)

    def _abort_all(self) -> int:
        conns = list(self._conns.values())
        for conn in conns:
            self._kill(conn)
        return len(conns)

    # ------------------------------------------------------------------ control actions

    def _do_block(self, mode: str) -> None:
        self._blocked = mode
        if mode == "reset":
            self._abort_all()
        else:
            for conn in list(self._conns.values()):
                self._update(conn)

    def _do_unblock(self) -> None:
        if self._blocked is None:
            return
        self._blocked = None
        for conn in list(self._conns.values()):
            if conn.state == "held":
                self._dial(conn)
            if conn.state != "closed":
                self._pump(conn)

    # ------------------------------------------------------------------ data path

    def _on_event(self, conn: _Conn, which: str, mask: int) -> None:
        try:
            if which == "u" and conn.state == "connecting":
                if mask & (selectors.EVENT_WRITE | selectors.EVENT_READ):
                    self._finish_connect(conn)
                return
            if mask & selectors.EVENT_READ:
                if which == "c":
                    self._read(conn, conn.client, conn.up)
                else:
                    self._read(conn, conn.upstream, conn.down)
            if conn.state != "closed":
                self._pump(conn)
        except OSError:
            self._kill(conn, count=False)

    def _read(self, conn: _Conn, src: socket.socket, pipe: _Pipe) -> None:
        try:
            data = src.recv(_RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        if not data:
            pipe.eof = True
            if conn.state == "held":
                # Accepted during a partition and given up on before it could reach
                # the target: in a real network that SYN never arrived, so it must
                # not turn up at the target (with its stale bytes) after the heal.
                self._kill(conn, count=False)
            return
        if self._blocked == "drop":
            self._bytes_dropped += len(data)
            return
        release = time.monotonic() + self._delay if self._delay else 0.0
        pipe.chunks.append([release, memoryview(data)])
        pipe.buffered += len(data)

    def _pump(self, conn: _Conn) -> None:
        """Write what is due on both pipes, forward FINs, then refresh interest."""
        try:
            if self._blocked is None and conn.state == "open":
                self._flush(conn, conn.up, conn.upstream)
                self._flush(conn, conn.down, conn.client)
                if conn.up.fin_sent and conn.down.fin_sent:
                    self._close_gracefully(conn)
                    return
        except OSError:
            self._kill(conn, count=False)
            return
        self._update(conn)

    def _flush(self, conn: _Conn, pipe: _Pipe, dst: socket.socket) -> None:
        now = None
        while pipe.chunks:
            head = pipe.chunks[0]
            if head[0]:
                now = now or time.monotonic()
                if head[0] > now:
                    self._delayed.add((conn, pipe))
                    return
            try:
                n = dst.send(head[1])
            except (BlockingIOError, InterruptedError):
                return
            if pipe is conn.up:
                self._bytes_to_target += n
            else:
                self._bytes_from_target += n
            pipe.buffered -= n
            if n == len(head[1]):
                pipe.chunks.popleft()
            else:
                head[1] = head[1][n:]
                return
        if pipe.eof and not pipe.fin_sent:
            pipe.fin_sent = True
            dst.shutdown(socket.SHUT_WR)

    def _update(self, conn: _Conn) -> None:
        """(Re-)register both sockets with the events they need now."""
        if conn.state == "closed":
            return
        forwarding = self._blocked is None and conn.state == "open"
        dropping = self._blocked == "drop"
        limit = self.buffer_limit

        def wants_read(pipe: _Pipe) -> bool:
            return not pipe.eof and (dropping or pipe.buffered < limit)

        def wants_write(pipe: _Pipe) -> bool:
            return forwarding and bool(pipe.chunks) and (conn, pipe) not in self._delayed

        c_mask = 0
        if wants_read(conn.up):
            c_mask |= selectors.EVENT_READ
        if wants_write(conn.down):
            c_mask |= selectors.EVENT_WRITE
        self._set_mask(conn, conn.client, c_mask, "c")
        if conn.upstream is not None:
            if conn.state == "connecting":
                u_mask = selectors.EVENT_WRITE
            else:
                u_mask = 0
                if conn.state == "open" and wants_read(conn.down):
                    u_mask |= selectors.EVENT_READ
                if wants_write(conn.up):
                    u_mask |= selectors.EVENT_WRITE
            self._set_mask(conn, conn.upstream, u_mask, "u")

    def _set_mask(self, conn: _Conn, sock: socket.socket, mask: int, which: str) -> None:
        old = conn.masks.get(sock, 0)
        if mask == old:
            return
        if mask == 0:
            self._sel.unregister(sock)
            del conn.masks[sock]
        elif old == 0:
            self._sel.register(sock, mask, (conn, which))
            conn.masks[sock] = mask
        else:
            self._sel.modify(sock, mask, (conn, which))
            conn.masks[sock] = mask


class Partitioner:
    """Drive per-link proxies by member name.

    ``links`` maps directed links ``(src_name, dst_name)`` to the FaultProxy that
    ``src`` dials to reach ``dst``. ``isolate`` and ``split`` add to what is
    blocked already; ``heal`` unblocks every link.

    With pysyncobj only one member of each pair dials (the one whose advertised
    address string is greater), and that one connection carries Raft traffic
    both ways. So of the links (a, b) and (b, a) only one ever carries traffic,
    and blocking a single directed link cuts the pair completely or not at all;
    isolate() and split() always block both directions.
    """

    def __init__(self, links: Mapping[tuple[str, str], FaultProxy], mode: str | None = None):
        self.links: dict[tuple[str, str], FaultProxy] = dict(links)
        self.mode = mode
        self.members: set[str] = {name for link in self.links for name in link}

    def _check(self, names: Iterable[str]) -> set[str]:
        names = set(names)
        unknown = names - self.members
        if unknown:
            raise KeyError(f"unknown members {sorted(unknown)}; known: {sorted(self.members)}")
        return names

    def block_link(self, src: str, dst: str, mode: str | None = None) -> None:
        self.links[(src, dst)].block(mode or self.mode)

    def unblock_link(self, src: str, dst: str) -> None:
        self.links[(src, dst)].unblock()

    def isolate(self, name: str, mode: str | None = None) -> None:
        """Cut every link to or from ``name``."""
        self._check([name])
        for (src, dst), proxy in self.links.items():
            if name in (src, dst):
                proxy.block(mode or self.mode)

    def split(self, group_a: Iterable[str], group_b: Iterable[str], mode: str | None = None) -> None:
        """Cut every link between a member of ``group_a`` and one of ``group_b``
        (both directions). Members in neither group keep their links."""
        a, b = self._check(group_a), self._check(group_b)
        if a & b:
            raise ValueError(f"groups overlap: {sorted(a & b)}")
        for (src, dst), proxy in self.links.items():
            if (src in a and dst in b) or (src in b and dst in a):
                proxy.block(mode or self.mode)

    def heal(self) -> None:
        for proxy in self.links.values():
            proxy.unblock()

    def blocked_links(self) -> set[tuple[str, str]]:
        return {link for link, proxy in self.links.items() if proxy.blocked}
