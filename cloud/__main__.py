"""`python -m cloud`: the cloud on this machine and its API (see cloud.provider, cloud.server).

Needs root (namespaces, nftables), runc, conmon and busybox, as real nodes do. SIGTERM or Ctrl-C
deletes every instance, load balancer and namespace it made."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading

from cloud.provider import INSTANCE_TYPES, ZONES, Cloud, CloudError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m cloud", description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", required=True, help="instances' disks (nodes/n<i>) and logs")
    p.add_argument("--server", required=True, help="the apiserver the instances' kubelets join")
    p.add_argument("--address", default="127.0.0.1")
    p.add_argument("--port", type=int, default=7070, help="the API's port (0: any free one)")
    p.add_argument("--port-file", default="", help="write the port listened on here, once listening")
    p.add_argument("--prefix", default="", help="name prefix of everything made (default: a new kpXXXX)")
    p.add_argument("--zones", default=",".join(ZONES))
    p.add_argument("--node-group", action="append", default=[], metavar="NAME:MIN:MAX:TYPE",
                   help=f"a node group to create at start (types: {', '.join(INSTANCE_TYPES)})")
    p.add_argument("--kubelet-arg", action="append", default=[], help="one more kubelet argument")
    p.add_argument("--proxy-arg", action="append", default=[], help="one more kube-proxy argument")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return p


def main(argv: list[str] | None = None) -> int:
    from cloud.server import make_server

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if os.geteuid() != 0:
        print("python -m cloud needs root: instances are network namespaces with runc containers",
              file=sys.stderr)
        return 2
    groups = []
    for spec in args.node_group:
        try:
            name, lo, hi, type_ = spec.split(":")
            groups.append((name, int(lo), int(hi), type_))
        except ValueError:
            print(f"--node-group {spec!r}: expected NAME:MIN:MAX:TYPE, e.g. pool:1:3:small", file=sys.stderr)
            return 2
    cloud = Cloud(args.data_dir, args.server, prefix=args.prefix or None,
                  zones=tuple(z for z in args.zones.split(",") if z),
                  kubelet_args=tuple(args.kubelet_arg), proxy_args=tuple(args.proxy_arg))
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    try:
        cloud.start()
        server = make_server(cloud, args.address, args.port)
        threading.Thread(target=server.serve_forever, name="cloud-api", daemon=True).start()
        port = server.server_address[1]
        if args.port_file:
            tmp = args.port_file + ".tmp"
            with open(tmp, "w") as f:
                f.write(f"{port}\n")
            os.replace(tmp, args.port_file)
        for name, lo, hi, type_ in groups:
            cloud.create_group(name, lo, hi, type_)
        logging.getLogger("cloud").info("cloud %s serving on %s:%d", cloud.prefix, args.address, port)
        while not done.wait(1.0):
            pass
        server.shutdown()
    except CloudError as e:
        print(f"python -m cloud: {e}", file=sys.stderr)
        return 1
    finally:
        problems = cloud.stop()
        if problems:
            print(f"python -m cloud: left behind: {problems}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
