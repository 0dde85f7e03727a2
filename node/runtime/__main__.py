"""`python -m node.runtime`: one node's CRI runtime (RuntimeService + ImageService) on a unix
socket, as containerd serves /run/containerd/containerd.sock.

SIGTERM/SIGINT stop serving and exit; the containers keep running under their conmons, and the
next runtime started with the same --root and --prefix adopts them. ``--cleanup`` instead
removes everything the node's runtime made (see node.runtime.cleanup) and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

log = logging.getLogger("node.runtime")

# a fork bomb in one pod must not take the machine the whole plane shares
DEFAULT_PIDS_LIMIT = 4096
REAP_INTERVAL = 5.0  # seconds between collections of exited conmons (our children)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m node.runtime",
                                description="A CRI v1 runtime driving runc + conmon.")
    p.add_argument("--listen", default="", help="unix:///path/cri.sock (or a bare path)")
    p.add_argument("--root", required=True, help="state directory: records, bundles, rootfs mounts, IPAM")
    p.add_argument("--prefix", required=True,
                   help="the node's name prefix (e.g. kp3fa2-n0): pod netns <prefix>-<id>, "
                        "cgroups /<prefix>/..., runc state /run/<prefix>")
    p.add_argument("--node-netns", default="", help="the node's network namespace (default: --prefix)")
    p.add_argument("--image-store", default="", help="image store directory (default: <root>/images)")
    p.add_argument("--pids-limit", type=int, default=DEFAULT_PIDS_LIMIT,
                   help="processes one container may have (0: no limit); CRI has no field for it")
    p.add_argument("--stream-address", default="127.0.0.1",
                   help="where the streaming server (exec, attach, port-forward URLs) listens")
    p.add_argument("--stream-port", type=int, default=0, help="its port (0: a free one)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--cleanup", action="store_true",
                   help="remove every container, mount, cgroup and pod netns of --prefix, then exit")
    return p


def socket_path(listen: str) -> str:
    if listen.startswith("unix://"):
        return listen[len("unix://"):]
    if listen.startswith("/"):
        return listen
    raise SystemExit(f"--listen {listen!r}: expected unix:///path/to/cri.sock")


async def serve(args) -> int:
    from grpclite import GrpcServer
    from grpclite.servicer import add_servicer
    from node.pb import cri_pb2_grpc
    from node.runtime.runtime_service import RuntimeService
    from node.runtime.images import ImageStore
    from node.runtime.image_service import ImageService

    store = ImageStore(args.image_store or os.path.join(args.root, "images"))
    runtime = RuntimeService(args.root, args.prefix, args.node_netns or args.prefix, store,
                             pids_limit=args.pids_limit)
    await asyncio.get_running_loop().run_in_executor(None, runtime.load)
    server = GrpcServer(max_receive_message_length=16 << 20)
    add_servicer(cri_pb2_grpc.add_RuntimeServiceServicer_to_server, runtime, server)
    add_servicer(cri_pb2_grpc.add_ImageServiceServicer_to_server, ImageService(store), server)
    path = socket_path(args.listen)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    await runtime.start_streaming(args.stream_address, args.stream_port)
    await server.listen_unix(path)
    await server.start()
    log.info("serving CRI on unix://%s (root %s, prefix %s)", path, args.root, args.prefix)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), REAP_INTERVAL)
        except asyncio.TimeoutError:
            await loop.run_in_executor(None, runtime.containers.reap_conmons)
    await server.stop(1.0)
    await runtime.stop_streaming()
    runtime.close()
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level.upper()),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if os.geteuid() != 0:
        print("node.runtime needs root (namespaces, cgroups, mounts)", file=sys.stderr)
        return 2
    if args.cleanup:
        from node.runtime.cleanup import cleanup
        problems = cleanup(args.prefix, args.root)
        for p in problems:
            print(p, file=sys.stderr)
        return 1 if problems else 0
    from node.runtime.runc import binaries_missing
    missing = binaries_missing()
    if missing:
        print(f"missing {', '.join(missing)}: run `make node-deps` (Debian's runc and conmon)", file=sys.stderr)
        return 2
    if not args.listen:
        print("--listen unix:///path/cri.sock is required", file=sys.stderr)
        return 2
    return asyncio.run(serve(args))


if __name__ == "__main__":
    sys.exit(main())
