"""What every kctl command works with: the client, the namespace flags, the
output streams, and how failures are shown.

A command raises ``CommandError`` for a problem found on this side (printed
as ``error: ...``, as kubectl does) and lets ``ApiError`` through for what the
server refused; ``report`` prints either in kubectl's words.
"""

from __future__ import annotations

import socket
import sys
from dataclasses import dataclass, field
from typing import TextIO

from apiserver.client import Client
from apiserver.errors import ApiError

DEFAULT_SERVER = "127.0.0.1:6443"
SERVER_ENV = "KCTL_SERVER"
CONNECT_TIMEOUT = 3.0


class CommandError(Exception):
    """A failure kctl found itself; shown as ``error: <message>``."""


class Unreachable(Exception):
    """Nothing answers at the server address."""


@dataclass
class Session:
    server: str
    namespace: str = "default"
    namespace_given: bool = False  # -n was on the command line
    all_namespaces: bool = False
    out: TextIO = field(default_factory=lambda: sys.stdout)
    err: TextIO = field(default_factory=lambda: sys.stderr)
    request_timeout: float = 30.0
    _client: Client | None = None

    @property
    def client(self) -> Client:
        """The apiserver client, made on first use after checking that
        something listens at ``server`` (a missing plane fails at once
        instead of after the client's wait-for-ready timeout)."""
        if self._client is None:
            check_reachable(self.server)
            self._client = Client(self.server, timeout=self.request_timeout)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()

    def list_namespace(self) -> str:
        """The namespace a list or watch reads: "" for every namespace."""
        return "" if self.all_namespaces else self.namespace

    def print(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    def warn(self, text: str) -> None:
        print(text, file=self.err, flush=True)


def check_reachable(server: str, timeout: float = CONNECT_TIMEOUT) -> None:
    """Raises Unreachable when no TCP listener answers at ``server``
    ("host:port"); addresses in other forms are left to gRPC."""
    host, sep, port = server.rpartition(":")
    if not sep or not port.isdigit():
        return
    host = host.strip("[]") or "127.0.0.1"
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as e:
        raise Unreachable(str(e)) from None


def unreachable_hint(server: str) -> str:
    return (f"error: cannot reach the apiserver at {server}: is `make run` running? "
            f"use --server (or {SERVER_ENV}) to name another")


def format_api_error(err: ApiError, context: str = "") -> str:
    """An ApiError as kubectl prints it; ``context`` ('error when creating
    "web.yaml": ') goes before the server's message."""
    message = err.message
    if err.reason == "Invalid" and err.kind:
        return f"The {message}"
    return f"Error from server ({err.reason}): {context}{message}"


def report(session: Session, exc: BaseException) -> None:
    """Prints a failure (CommandError, ApiError, Unreachable) on stderr."""
    if isinstance(exc, Unreachable):
        session.warn(unreachable_hint(session.server))
    elif isinstance(exc, ApiError):
        if exc.reason in ("ServiceUnavailable", "Timeout") and _is_transport(exc):
            session.warn(unreachable_hint(session.server))
        else:
            session.warn(format_api_error(exc))
    else:
        session.warn(f"error: {exc}")


def _is_transport(err: ApiError) -> bool:
    """An UNAVAILABLE/DEADLINE_EXCEEDED that gRPC made up (no server status)."""
    return not err.kind and not err.name and (
        "connect" in err.message.lower() or "deadline" in err.message.lower()
        or "unavailable" in err.message.lower())
