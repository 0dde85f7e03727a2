"""The apiserver's TLS layer alone: grpclite.tls (OpenSSL through pyOpenSSL, memory BIOs) against
asyncio's own SSL transport (Python's ssl, CERT_OPTIONAL with the client CA: the apiserver before
grpclite.tls), alternated in one process so both see the same machine.

    python -m benchmarks.tls_layer [--connections 200] [--megabytes 64] [--turns 3]

- handshakes: a new connection with a client certificate (verified) and one 4-byte echo, one at a
  time (kubectl opens a connection per invocation): ms per connection, p50 and p99;
- throughput: one connection sends ``--megabytes`` in 1 MiB writes to a protocol that only counts.
The client is Python's ssl in the same event loop, the same for both servers.
"""

from __future__ import annotations

import argparse
import asyncio
import ssl
import statistics
import tempfile
import time

from apiserver.auth import pki
from grpclite import tls


class Echo(asyncio.Protocol):
    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


class Sink(asyncio.Protocol):
    received = 0

    def data_received(self, data: bytes) -> None:
        Sink.received += len(data)


async def _server(kind: str, certs, app):
    server_cert, ca = certs["server"], certs["ca"]
    loop = asyncio.get_running_loop()
    if kind == "grpclite.tls":
        st = tls.ServerTLS(str(server_cert.cert), str(server_cert.key), str(ca.cert_path), alpn=("http/1.1", "h2"))
        server = await loop.create_server(st.protocol_factory(app), "127.0.0.1", 0)
    else:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(str(server_cert.cert), str(server_cert.key))
        ctx.set_alpn_protocols(["http/1.1", "h2"])
        ctx.load_verify_locations(cafile=str(ca.cert_path))
        ctx.verify_mode = ssl.CERT_OPTIONAL
        server = await loop.create_server(app, "127.0.0.1", 0, ssl=ctx)
    return server, server.sockets[0].getsockname()[1]


def _client(certs) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(certs["ca"].cert_path))
    ctx.load_cert_chain(str(certs["client"].cert), str(certs["client"].key))
    return ctx


async def handshakes(kind: str, certs, n: int) -> list[float]:
    server, port = await _server(kind, certs, Echo)
    ctx = _client(certs)
    times = []
    for _ in range(n):
        start = time.perf_counter()
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
        writer.write(b"ping")
        await reader.readexactly(4)
        times.append((time.perf_counter() - start) * 1000)
        writer.close()
    server.close()
    return times


async def throughput(kind: str, certs, megabytes: int) -> float:
    Sink.received = 0
    server, port = await _server(kind, certs, Sink)
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=_client(certs))
    chunk = b"x" * (1 << 20)
    start = time.perf_counter()
    for _ in range(megabytes):
        writer.write(chunk)
        await writer.drain()
    while Sink.received < megabytes << 20:
        await asyncio.sleep(0.001)
    took = time.perf_counter() - start
    writer.close()
    server.close()
    return megabytes * (1 << 20) / took / 1e6


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.tls_layer", description=__doc__.split("\n\n")[0])
    p.add_argument("--connections", type=int, default=200)
    p.add_argument("--megabytes", type=int, default=64)
    p.add_argument("--turns", type=int, default=3)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="tls-layer-") as d:
        ca = pki.CA(d)
        certs = {"ca": ca, "server": ca.issue("server", "server", server=True, client=False, ips=("127.0.0.1",)),
                 "client": ca.issue("client", "client")}
        kinds = ("asyncio ssl", "grpclite.tls")
        hs = {k: [] for k in kinds}
        mbs = {k: [] for k in kinds}
        for _ in range(args.turns):
            for k in kinds:
                hs[k] += asyncio.run(handshakes(k, certs, args.connections))
                mbs[k].append(asyncio.run(throughput(k, certs, args.megabytes)))
    print("| server | handshake + echo p50 / p99 (ms) | throughput, median of turns (MB/s) |")
    print("|---|---|---|")
    for k in kinds:
        s = sorted(hs[k])
        print(f"| {k} | {statistics.median(s):.2f} / {s[int(0.99 * (len(s) - 1))]:.2f} | "
              f"{statistics.median(mbs[k]):.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
