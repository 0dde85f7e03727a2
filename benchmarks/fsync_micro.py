"""fdatasync after a journal-sized append, into space the file already has
(allocated ahead, as etcdlite.raft.journal.JournalFile does) or growing it.

    python -m benchmarks.fsync_micro [--dir DIR] [--rounds 15] [--syncs 100]

Rounds alternate the two ways (the machine is shared: noise hits both
alike); each round appends `--syncs` 300-byte records to a fresh file,
rewriting a 4-byte header in its first page as pysyncobj's format does,
and times the fdatasync after each. Prints percentiles per way.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

RECORD = b"x" * 300
AHEAD = 4 * 1024 * 1024
# allocated ahead with fallocate (unwritten extents), written ahead with zeros, or grown by the
# appends; with the 4-byte header rewrite in the first page, or (zeros) without it
WAYS = ("allocated ahead", "zeros ahead", "zeros ahead, no header", "growing")


def one_round(directory: str, way: str, syncs: int) -> list[float]:
    fd, path = tempfile.mkstemp(dir=directory, prefix="fsync-micro-")
    try:
        if way.startswith("allocated"):
            os.posix_fallocate(fd, 0, AHEAD)
            os.fsync(fd)
        elif way.startswith("zeros"):
            os.pwrite(fd, bytes(AHEAD), 0)
            os.fsync(fd)
        times = []
        for i in range(syncs):
            os.pwrite(fd, RECORD, 4096 + i * len(RECORD))
            if not way.endswith("no header"):
                os.pwrite(fd, i.to_bytes(4, "little"), 36)
            t = time.perf_counter()
            os.fdatasync(fd)
            times.append(time.perf_counter() - t)
        return times
    finally:
        os.close(fd)
        os.unlink(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", default=tempfile.gettempdir(), help="where the files go (the disk measured)")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--syncs", type=int, default=100)
    args = ap.parse_args()
    results: dict[str, list[float]] = {way: [] for way in WAYS}
    for _ in range(args.rounds):
        for way in WAYS:
            results[way] += one_round(args.dir, way, args.syncs)
    for way, times in results.items():
        times.sort()
        n = len(times)
        p50, p90, p99 = (times[min(n - 1, int(n * q))] * 1e3 for q in (0.5, 0.9, 0.99))
        print(f"{way:24s} n={n}  fdatasync p50 {p50:.3f} ms  p90 {p90:.3f} ms  p99 {p99:.3f} ms")


if __name__ == "__main__":
    main()
