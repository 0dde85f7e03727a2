"""The processes behind the runtime's streams: a command run in a container with its stdio
given to a client (``runc exec``, with pipes or a terminal), and a client joined to a running
container's stdio (conmon's attach socket).

A terminal exec: runc only runs a command on a terminal of its own when its own stdin is a
terminal (it copies between that one and the container's, and passes a SIGWINCH on its
terminal to the container's), so it gets the slave of a pty made here, as its controlling
terminal (``setsid -c``); resizing the master here is what a user's terminal resize is to runc.

Attach: conmon (``--full-attach``) listens on ``<bundle>/attach``, a SOCK_SEQPACKET socket:
each packet it sends is one read of the container's output, its first byte the pipe (2 stdout,
3 stderr); what a client sends goes to the container's stdin when conmon holds one (the
container was created with stdin). A resize is a line "1 <height> <width>" on conmon's
``<bundle>/ctl`` fifo. Connected through /proc/self/fd/<dir> as conmon binds it, since the
bundle's path may pass the 108 bytes a socket address holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import secrets
import socket
import struct
import subprocess
import termios
import time

from node.runtime.runc import Runc

READ_CHUNK = 32 * 1024
ATTACH_PACKET = 8192 + 1  # conmon's buffer and its pipe byte
STDOUT_PIPE, STDERR_PIPE = 2, 3
_WIN_RESIZE = 1
RESIZE_SETTLE = 1.0  # seconds a resize waits for conmon to read the one before


def _fifo_pending(fd: int) -> int:
    """Bytes written to a fifo and not read yet (FIONREAD works on either end)."""
    return struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]


def _fifo_pending_at(path: str) -> int:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    except OSError:
        return 0
    try:
        return _fifo_pending(fd)
    finally:
        os.close(fd)


def set_size(fd: int, width: int, height: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", height, width, 0, 0))


class ExecProcess:
    """``runc exec`` of ``command`` in container ``cid``. Output goes to ``on_output(stream,
    data)`` (stream 1 or 2; a terminal's is all 1); ``wait`` answers the exit code (128+n for
    a signal, 126/127 when runc could not start the command, with runc's words on stderr)."""

    def __init__(self, runc: Runc, cid: str, command: list[str], *, tty: bool, stdin: bool,
                 bundle: str = "") -> None:
        self.runc, self.cid, self.command = runc, cid, command
        self.tty, self.stdin = tty, stdin
        self.bundle = bundle
        self._process_file = ""
        self.proc: subprocess.Popen | asyncio.subprocess.Process | None = None
        self.master = -1
        self._stderr_tail = b""

    def _process_spec(self, width: int, height: int) -> str:
        """The container's process settings (env, cwd, user, capabilities) with this command on
        a terminal of the client's size: runc makes the container's terminal that size before
        the command starts (its resize after the start would race the command's first look)."""
        with open(os.path.join(self.bundle, "config.json")) as f:
            process = json.load(f)["process"]
        process.update(args=self.command, terminal=True, consoleSize={"height": height, "width": width})
        path = os.path.join(self.bundle, f"exec-{secrets.token_hex(6)}.json")
        with open(path, "w") as f:
            json.dump(process, f)
        return path

    async def start(self, on_output, size: tuple[int, int] = (80, 24)) -> None:
        """Start the command; ``size``: (width, height) of a terminal."""
        self._on_output = on_output
        if self.tty:
            master, slave = os.openpty()
            set_size(master, *size)
            try:
                if self.bundle:
                    self._process_file = self._process_spec(*size)
                    argv = self.runc.argv("exec", "--process", self._process_file, self.cid)
                else:
                    argv = self.runc.argv("exec", "-t", self.cid, *self.command)
                self.proc = subprocess.Popen(["setsid", "-c", *argv], stdin=slave, stdout=slave,
                                             stderr=slave, close_fds=True)
            finally:
                os.close(slave)
            self.master = master
            self._pumps = [asyncio.ensure_future(self._pump_tty())]
        else:
            self.proc = await asyncio.create_subprocess_exec(
                *self.runc.argv("exec", self.cid, *self.command),
                stdin=subprocess.PIPE if self.stdin else subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                limit=READ_CHUNK)
            self._pumps = [asyncio.ensure_future(self._pump(self.proc.stdout, 1)),
                           asyncio.ensure_future(self._pump(self.proc.stderr, 2))]

    async def _pump(self, stream: asyncio.StreamReader, n: int) -> None:
        while True:
            data = await stream.read(READ_CHUNK)
            if not data:
                return
            if n == 2 and data.startswith(b"time=") and b"exec failed" in data:
                self._stderr_tail = data  # runc's own failure: said once the exit code is known
                continue
            await self._on_output(n, data)

    async def _pump_tty(self) -> None:
        while True:
            try:
                data = await asyncio.to_thread(os.read, self.master, READ_CHUNK)
            except OSError:  # EIO: every slave is closed (runc exited)
                return
            if not data:
                return
            await self._on_output(1, data)

    async def write_stdin(self, data: bytes) -> None:
        if self.tty:
            view = memoryview(data)
            while view:
                n = await asyncio.to_thread(os.write, self.master, view)
                view = view[n:]
        elif self.stdin and self.proc.stdin is not None and not self.proc.stdin.is_closing():
            self.proc.stdin.write(data)
            with contextlib.suppress(ConnectionError):
                await self.proc.stdin.drain()

    async def close_stdin(self) -> None:
        if self.tty:
            with contextlib.suppress(OSError):
                await self.write_stdin(b"\x04")  # end of input, as a terminal user types it
        elif self.stdin and self.proc.stdin is not None:
            self.proc.stdin.close()

    async def resize(self, width: int, height: int) -> None:
        if self.tty and self.master >= 0:
            with contextlib.suppress(OSError):
                set_size(self.master, width, height)

    async def wait(self) -> int:
        if self.tty:
            code = await asyncio.to_thread(self.proc.wait)
        else:
            code = await self.proc.wait()
        await asyncio.gather(*self._pumps, return_exceptions=True)
        if self.master >= 0:
            os.close(self.master)
            self.master = -1
        if self._process_file:
            with contextlib.suppress(OSError):
                os.unlink(self._process_file)
        if code < 0:
            code = 128 - code
        if code != 0 and self._stderr_tail:
            from node.runtime.runc import _logfmt_msg
            msg = _logfmt_msg(self._stderr_tail.decode(errors="replace"))
            code = 127 if "not found" in msg or "no such file" in msg else 126
            await self._on_output(2, msg.encode() + b"\n")
        return code

    def kill(self) -> None:
        """The client went away: the command goes with runc. Without a terminal the command is
        in runc's process group (runc started in a session of its own); with one, killing runc
        closes the container's terminal and the command gets SIGHUP."""
        if self.proc is None or self.proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if self.tty:
                self.proc.kill()
            else:
                os.killpg(self.proc.pid, 9)


class Attachment:
    """A client joined to a running container's stdio through its conmon."""

    def __init__(self, bundle: str) -> None:
        self.bundle = bundle
        self.sock: socket.socket | None = None

    async def connect(self) -> None:
        dirfd = os.open(self.bundle, os.O_PATH | os.O_CLOEXEC)
        try:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            sock.setblocking(False)
            try:
                await asyncio.get_running_loop().sock_connect(sock, f"/proc/self/fd/{dirfd}/attach")
            except OSError:
                sock.close()
                raise
        finally:
            os.close(dirfd)
        self.sock = sock

    async def pump_output(self, on_output) -> None:
        """Until conmon closes the socket (the container exited) or the client goes."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                packet = await loop.sock_recv(self.sock, ATTACH_PACKET)
            except OSError:
                return
            if not packet:
                return
            pipe, data = packet[0], packet[1:]
            if data:
                await on_output(2 if pipe == STDERR_PIPE else 1, data)

    async def write_stdin(self, data: bytes) -> None:
        loop = asyncio.get_running_loop()
        for i in range(0, len(data), ATTACH_PACKET - 1):
            with contextlib.suppress(OSError):
                await loop.sock_sendall(self.sock, data[i:i + ATTACH_PACKET - 1])

    async def close_stdin(self) -> None:
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_WR)

    async def resize(self, width: int, height: int) -> None:
        """One line on conmon's control fifo, written once conmon has read every earlier one
        from it and from its internal ``winsz`` fifo: conmon before 2.2.0 (Debian has 2.1.6)
        handles a read holding two lines as its first line twice, so kubectl attach's two
        resizes in a row (the size plus one, then the size) would leave the wrong one."""
        def write():
            fd = os.open(os.path.join(self.bundle, "ctl"), os.O_WRONLY | os.O_NONBLOCK)
            try:
                deadline = time.monotonic() + RESIZE_SETTLE
                while time.monotonic() < deadline and (
                        _fifo_pending(fd) or _fifo_pending_at(os.path.join(self.bundle, "winsz"))):
                    time.sleep(0.005)
                os.write(fd, f"{_WIN_RESIZE} {height} {width}\n".encode())
            finally:
                os.close(fd)
        with contextlib.suppress(OSError):
            await asyncio.to_thread(write)

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
