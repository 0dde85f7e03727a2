"""etcd's --listen-metrics-urls on etcdlite: /health, /metrics in Prometheus' text format
with etcd 3.4's names, the counters moving as a member works, the HTTP listener's bounds,
and the families served checked against a real etcd 3.4's."""

from __future__ import annotations

import http.client
import math
import re
import socket
import time

import pytest

from etcdlite.cli import build_parser, config_from_args
from etcdlite.config import ConfigError
from etcdlite.server.metrics import FAMILIES
from etcdlite.server.metrics_listener import MAX_CONNECTIONS
from harness.etcd_client import Client, leader_of, wait_until
from harness.procs import free_port, start_etcdlite_cluster

# ---------------------------------------------------------------------------
# a strict reader of the text exposition format 0.0.4

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_SAMPLE = re.compile(rf"^({_NAME})(?:\{{(.*)\}})? (\S+)(?: (-?\d+))?$")
_LABEL = re.compile(rf'({_NAME})="((?:[^"\\\n]|\\[\\"n])*)"(,|$)')
_TYPES = {"counter", "gauge", "histogram", "summary", "untyped"}


def parse_labels(text: str) -> dict[str, str]:
    labels, at = {}, 0
    while at < len(text):
        m = _LABEL.match(text, at)
        assert m, f"bad labels {text!r} at {at}"
        assert m.group(1) not in labels, f"label {m.group(1)} twice in {text!r}"
        labels[m.group(1)] = m.group(2)
        at = m.end()
    return labels


def parse_exposition(text: str) -> dict[str, dict]:
    """{family: {"type", "help", "samples": [(name, labels, value)]}}; asserts
    every rule the format sets that a reader relies on: HELP and TYPE at most
    once and before the family's samples, samples under their family's name
    (a histogram's _bucket/_sum/_count), a family's samples together, values
    that parse, a histogram's buckets cumulative with +Inf equal to _count."""
    assert text.endswith("\n"), "the text must end with a newline"
    families: dict[str, dict] = {}
    current = None
    for line in text[:-1].split("\n"):
        if line.startswith("#"):
            parts = line.split(" ", 3)
            if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                name = parts[2]
                assert re.fullmatch(_NAME, name), line
                fam = families.setdefault(name, {"type": None, "help": None, "samples": []})
                assert not fam["samples"], f"{parts[1]} after samples of {name}"
                key = parts[1].lower()
                assert fam[key] is None, f"second {parts[1]} for {name}"
                fam[key] = parts[3] if len(parts) > 3 else ""
                if key == "type":
                    assert fam["type"] in _TYPES, line
                current = name
            continue
        assert line, "blank line inside the exposition"
        m = _SAMPLE.match(line)
        assert m, f"not a sample line: {line!r}"
        name, labels, value = m.group(1), parse_labels(m.group(2) or ""), float(m.group(3))
        assert current is not None, f"sample before any TYPE: {line!r}"
        fam = families[current]
        allowed = {current}
        if fam["type"] == "histogram":
            allowed = {current + "_bucket", current + "_sum", current + "_count"}
        elif fam["type"] == "summary":
            allowed = {current, current + "_sum", current + "_count"}
        assert name in allowed, f"{name} under family {current}"
        fam["samples"].append((name, labels, value))
    for name, fam in families.items():
        if fam["type"] == "histogram":
            buckets = [(float(lb["le"]), v) for n, lb, v in fam["samples"] if n.endswith("_bucket")]
            assert buckets and buckets[-1][0] == math.inf, f"{name}: no +Inf bucket"
            assert [b for b, _ in buckets] == sorted(b for b, _ in buckets), f"{name}: buckets out of order"
            counts = [v for _, v in buckets]
            assert counts == sorted(counts), f"{name}: buckets not cumulative"
            count = [v for n, _, v in fam["samples"] if n == name + "_count"]
            assert count == [counts[-1]], f"{name}: _count is not the +Inf bucket"
    return families


def value(families, name: str) -> float:
    """The value of the sample `name` (unlabelled; a histogram's _sum or _count too)."""
    family = re.sub(r"_(sum|count)$", "", name) if name not in families else name
    (sample,) = [s for s in families[family]["samples"] if s[0] == name]
    return sample[2]


# ---------------------------------------------------------------------------
# HTTP


def get(port: int, path: str, method: str = "GET") -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def scrape(port: int) -> dict[str, dict]:
    status, headers, body = get(port, "/metrics")
    assert status == 200
    assert headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    return parse_exposition(body.decode())


def raw(port: int, data: bytes) -> bytes:
    """What the listener answers to `data` before it closes (or 3 s pass)."""
    with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
        s.sendall(data)
        got = b""
        try:
            while chunk := s.recv(65536):
                got += chunk
        except (socket.timeout, ConnectionResetError):
            pass
        return got


# ---------------------------------------------------------------------------
# one member


@pytest.fixture(scope="module")
def member(tmp_path_factory):
    from harness.procs import Registry

    reg = Registry()
    port = free_port()
    m = reg.start_etcdlite(tmp_path_factory.mktemp("metrics"), name="metrics0",
                           listen_metrics_urls=f"http://127.0.0.1:{port}")
    m.metrics_port = port
    yield m
    reg.cleanup()


@pytest.mark.process
def test_health_is_etcds_answer(member):
    status, headers, body = get(member.metrics_port, "/health")
    assert (status, body) == (200, b'{"health":"true"}')
    assert headers["content-type"] == "text/plain; charset=utf-8"
    # as etcd: GET only
    status, headers, _ = get(member.metrics_port, "/health", "HEAD")
    assert status == 405 and headers["allow"] == "GET"


@pytest.mark.process
def test_puts_move_the_proposals_the_fsyncs_and_the_store_figures(member):
    before = scrape(member.metrics_port)
    assert value(before, "etcd_server_has_leader") == 1
    assert value(before, "etcd_server_is_leader") == 1
    assert value(before, "etcd_server_leader_changes_seen_total") >= 1
    with Client(member.endpoint) as c:
        for i in range(5):
            c.put(f"metrics/{i}".encode(), b"v" * 100)
        revision = c.get(b"metrics/0").header.revision
    after = scrape(member.metrics_port)
    for name in ("etcd_server_proposals_committed_total", "etcd_server_proposals_applied_total",
                 "etcd_disk_wal_fsync_duration_seconds_count"):
        assert value(after, name) >= value(before, name) + 5, name  # one entry (and sync) a put at 1 client
    assert value(after, "etcd_server_proposals_applied_total") == value(after, "etcd_server_proposals_committed_total")
    assert value(after, "etcd_disk_wal_fsync_duration_seconds_sum") > value(before, "etcd_disk_wal_fsync_duration_seconds_sum")
    assert value(after, "etcd_server_proposals_pending") == 0
    assert value(after, "etcd_server_proposals_failed_total") == 0
    assert value(after, "etcd_debugging_mvcc_keys_total") >= 5
    assert value(after, "etcd_debugging_mvcc_current_revision") == revision
    assert value(after, "etcd_mvcc_db_total_size_in_bytes") >= 5 * 100
    les = [lb["le"] for n, lb, _ in after["etcd_disk_wal_fsync_duration_seconds"]["samples"] if "le" in lb]
    assert les == [repr(0.001 * 2**i) for i in range(14)] + ["+Inf"]
    (server_id,) = after["etcd_server_id"]["samples"]
    assert int(server_id[1]["server_id"], 16) != 0 and server_id[2] == 1
    assert value(after, "process_resident_memory_bytes") > 1 << 20
    assert value(after, "process_open_fds") > 3
    assert abs(value(after, "process_start_time_seconds") - time.time()) < 600
    assert value(after, "etcd_server_health_success") >= 0


@pytest.mark.process
def test_bad_requests_get_http_errors_and_serving_goes_on(member):
    port = member.metrics_port
    assert raw(port, b"garbage\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    assert raw(port, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    assert raw(port, b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 9000 + b"\r\n\r\n").startswith(b"HTTP/1.1 431 ")
    # /metrics takes any method (etcd's is Prometheus' handler); the body is not read
    answer = raw(port, b"POST /metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc")
    assert answer.startswith(b"HTTP/1.1 200 ") and b"etcd_server_has_leader" in answer
    answer = raw(port, b"DELETE /health HTTP/1.1\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 405 ") and b"Allow: GET" in answer
    assert get(port, "/nope")[0] == 404
    assert get(port, "/metrics", "HEAD")[2] == b""
    # keep-alive: two requests on one connection, pipelined
    two = raw(port, b"GET /health HTTP/1.1\r\n\r\nGET /health HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert two.count(b'{"health":"true"}') == 2
    # at most MAX_CONNECTIONS at once: one more is closed at once; then they go
    # (accepted in the order they came: the held ones first)
    held = [socket.create_connection(("127.0.0.1", port), timeout=3) for _ in range(MAX_CONNECTIONS)]
    try:
        assert raw(port, b"GET /health HTTP/1.1\r\n\r\n") == b""
    finally:
        for s in held:
            s.close()
    wait_until(lambda: get(port, "/health")[0] == 200, 5, what="served again once the connections closed")
    scrape(port)


def test_https_metrics_urls_are_refused_with_a_reason():
    args = build_parser().parse_args(["--listen-metrics-urls", "http://127.0.0.1:1,https://127.0.0.1:2"])
    with pytest.raises(ConfigError, match="https is not served on metrics URLs"):
        config_from_args(args)
    args = build_parser().parse_args(["--listen-metrics-urls", "http://127.0.0.1:1,http://127.0.0.1:2"])
    assert config_from_args(args).listen_metrics_urls == ["http://127.0.0.1:1", "http://127.0.0.1:2"]


# ---------------------------------------------------------------------------
# three members


@pytest.mark.process
def test_three_members_leader_gauges_changes_and_health_without_a_leader(procs, tmp_path):
    def give_ports(members):
        for m in members:
            m.metrics_port = free_port()
            m.extra_flags["listen_metrics_urls"] = f"http://127.0.0.1:{m.metrics_port}"

    members = start_etcdlite_cluster(tmp_path, 3, procs, before_launch=give_ports)
    leader = leader_of(members)
    followers = [m for m in members if m is not leader]
    for m in members:
        wait_until(lambda: value(scrape(m.metrics_port), "etcd_server_has_leader") == 1, 10,
                   what=f"{m.name} knows the leader")
    f = scrape(followers[0].metrics_port)
    assert value(f, "etcd_server_is_leader") == 0
    assert value(scrape(leader.metrics_port), "etcd_server_is_leader") == 1
    status, _, body = get(followers[0].metrics_port, "/health")
    assert (status, body) == (200, b'{"health":"true"}')
    seen = value(f, "etcd_server_leader_changes_seen_total")

    leader.kill()
    wait_until(lambda: value(scrape(followers[0].metrics_port), "etcd_server_leader_changes_seen_total") > seen,
               20, what="a survivor counts the new leader")
    new_leader = leader_of(followers)
    survivor = next(m for m in followers if m is not new_leader)
    new_leader.kill()  # the survivor alone: no leader can be elected
    # the leader it knew is dropped at its election timeout (1-2 s), as etcd's follower does
    wait_until(lambda: value(scrape(survivor.metrics_port), "etcd_server_has_leader") == 0, 15,
               what="the survivor has no leader")
    status, headers, body = get(survivor.metrics_port, "/health")
    assert (status, body) == (503, b'{"health":"false"}\n')
    assert value(scrape(survivor.metrics_port), "etcd_server_health_failures") >= 1


# ---------------------------------------------------------------------------
# side by side with the real etcd 3.4


@pytest.mark.process
def test_the_families_served_are_etcd_34s(procs, tmp_path, etcd_binaries, member):
    port = free_port()
    ref = procs.start_real_etcd(tmp_path, name="etcdref", listen_metrics_urls=f"http://127.0.0.1:{port}")
    with Client(ref.endpoint) as c:
        c.put(b"k", b"v")
    status, _, body = get(port, "/health")
    assert (status, body) == (200, b'{"health":"true"}')
    theirs = scrape(port)
    ours = scrape(member.metrics_port)
    assert set(ours) == set(FAMILIES)
    for name, fam in ours.items():
        assert name in theirs, f"{name}: etcd 3.4 has no such metric"
        assert (fam["type"], fam["help"]) == (theirs[name]["type"], theirs[name]["help"]), name
        assert [(n, set(lb)) for n, lb, _ in fam["samples"] if "le" not in lb] == \
            [(n, set(lb)) for n, lb, _ in theirs[name]["samples"] if "le" not in lb], f"{name}: samples differ"
    name = "etcd_disk_wal_fsync_duration_seconds"
    assert [lb["le"] for _, lb, _ in ours[name]["samples"] if "le" in lb] == \
        [lb["le"] for _, lb, _ in theirs[name]["samples"] if "le" in lb]


def test_a_request_head_not_done_in_time_closes_its_connection(monkeypatch):
    """A slow client (a slowloris, or an idle keep-alive connection) is closed
    after HEAD_TIMEOUT, and the listener goes on serving."""
    import asyncio

    from etcdlite.server import metrics_listener

    monkeypatch.setattr(metrics_listener, "HEAD_TIMEOUT", 0.2)

    class Raft:
        has_leader = True

    async def barrier():
        pass

    metrics = type("Counts", (), {"health_success": 0, "health_failures": 0})()

    async def run():
        listener = metrics_listener.MetricsListener(metrics, Raft(), barrier)
        port = await listener.listen("127.0.0.1", 0)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # never finished
            began = time.monotonic()
            assert await asyncio.wait_for(reader.read(), 5) == b""
            assert time.monotonic() - began < 2
            writer.close()
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /health HTTP/1.1\r\nConnection: close\r\n\r\n")
            answer = await asyncio.wait_for(reader.read(), 5)
            writer.close()
            return answer
        finally:
            await listener.stop()

    answer = asyncio.run(run())
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b'{"health":"true"}')
    assert metrics.health_success == 1


def test_each_journal_fdatasync_is_timed_in_the_loop_and_in_a_thread(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from etcdlite.raft import durable, journal

    assert durable.SYNC
    f = journal.JournalFile(str(tmp_path / "j"))
    try:
        before, seconds = sum(journal.fsync_counts), journal.fsync_seconds[0]
        f.write(0, b"x" * 100)
        f.sync()
        f.sync()  # nothing written since: no fdatasync, nothing counted
        assert sum(journal.fsync_counts) == before + 1
        f.write(100, b"y" * 100)
        with ThreadPoolExecutor(1) as pool:
            f.sync_in(pool).result()
        assert sum(journal.fsync_counts) == before + 2
        assert journal.fsync_seconds[0] > seconds
    finally:
        f._destroy()
