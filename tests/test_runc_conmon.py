"""runc + conmon driven directly (below the CRI server): a busybox bundle created under conmon,
started, exec'd into, killed; conmon's CRI-format log, exit file (128+signal) and OOM file; the
errors runc gives for what cannot run. Needs root, runc, conmon and busybox-static."""

from __future__ import annotations

import json
import os
import signal
import re
import shutil
import subprocess
import time

import pytest

from node import capable, network
from node.pb import cri_pb2
from node.runtime import cgroups, oci, runc
from node.runtime.cleanup import cleanup

pytestmark = pytest.mark.process

BUSYBOX = shutil.which("busybox") or "/usr/bin/busybox"
CRI_LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+[+-]\d\d:\d\d (stdout|stderr) [FP] (.*)$")


def need_runtime():
    reason = capable.why_not()
    if reason:
        pytest.skip(f"real nodes cannot run here: {reason}")


def busybox_rootfs(path) -> str:
    """A root filesystem holding busybox-static and its applet links (what the busybox image is)."""
    bin_dir = path / "bin"
    bin_dir.mkdir(parents=True)
    shutil.copy2(BUSYBOX, bin_dir / "busybox")
    applets = subprocess.run([BUSYBOX, "--list"], capture_output=True, text=True, check=True).stdout.split()
    for applet in applets:
        if applet != "busybox":
            os.symlink("busybox", bin_dir / applet)
    for d in ("proc", "sys", "dev", "etc", "tmp"):
        (path / d).mkdir(exist_ok=True)
    return str(path)


@pytest.fixture
def node(tmp_path):
    need_runtime()
    prefix = network.new_prefix() + "-n0"
    rootfs = busybox_rootfs(tmp_path / "rootfs")
    r = runc.Runc(f"/run/{prefix}")
    yield prefix, rootfs, r
    assert cleanup(prefix, str(tmp_path)) == []
    assert not cgroups.tree(prefix)
    assert not os.path.exists(f"/run/{prefix}")


def bundle(tmp_path, prefix, rootfs, name, command, memory=0) -> str:
    d = tmp_path / name
    d.mkdir()
    res = cri_pb2.LinuxContainerResources(memory_limit_in_bytes=memory)
    cfg = cri_pb2.ContainerConfig(metadata=cri_pb2.ContainerMetadata(name=name), command=command,
                                  linux=cri_pb2.LinuxContainerConfig(resources=res))
    spec = oci.build_spec(cfg, cri_pb2.PodSandboxConfig(), {}, oci.SandboxFiles(netns_path="", hostname=name),
                          oci.ContainerPaths(rootfs=rootfs, cgroups_path=f"/{prefix}/sb/{name}"))
    for ns in spec["linux"]["namespaces"]:
        ns.pop("path", None)  # a new, empty network namespace: no pod network needed here
    (d / "config.json").write_text(json.dumps(spec))
    return str(d)


def wait_exit(persist, cgroups_path, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ex = runc.read_exit(persist, cgroups_path)
        if ex is not None:
            return ex
        time.sleep(0.02)
    raise AssertionError(f"no exit file in {persist} after {timeout}s")


def test_create_start_log_exec_kill(node, tmp_path):
    prefix, rootfs, r = node
    b = bundle(tmp_path, prefix, rootfs, "c1", ["sh", "-c", "echo hi; echo oops >&2; exec sleep 1000"])
    log = str(tmp_path / "logs" / "c1.log")
    persist = os.path.join(b, "persist")
    pid, mon = runc.create(r, "c1", b, log, str(tmp_path / "exits"), persist)
    assert pid > 0 and r.state("c1")["status"] == "created"
    r.start("c1", pid)
    assert r.state("c1")["status"] == "running"
    with pytest.raises(runc.RuncError, match="running"):  # the fifo is gone: runc start says why
        r.start("c1", pid)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and open(log).read().count("\n") < 2:
        time.sleep(0.02)
    lines = open(log).read().splitlines()
    parsed = sorted(CRI_LOG_LINE.match(line).groups() for line in lines)
    assert parsed == [("stderr", "oops"), ("stdout", "hi")]

    res = r.exec("c1", ["sh", "-c", "echo out; echo err >&2; exit 3"], 5, str(tmp_path / "e.pid"))
    assert (res.stdout, res.stderr, res.exit_code, res.timed_out) == (b"out\n", b"err\n", 3, False)
    missing = r.exec("c1", ["no-such-command"], 5, str(tmp_path / "e.pid"))
    assert missing.exit_code == 127 and b"no-such-command" in missing.stderr
    t = time.monotonic()
    slow = r.exec("c1", ["sh", "-c", "sleep 30 & sleep 30"], 1, str(tmp_path / "e.pid"))
    assert slow.timed_out and time.monotonic() - t < 4

    assert r.kill("c1", "SIGKILL")
    ex = wait_exit(persist, f"/{prefix}/sb/c1")
    assert (ex.exit_code, ex.oom_killed) == (137, False)
    exit_file = os.path.join(str(tmp_path / "exits"), "c1")  # conmon writes it after the persist dir's
    deadline = time.monotonic() + 5
    while not os.path.exists(exit_file) and time.monotonic() < deadline:
        time.sleep(0.02)
    with open(exit_file) as f:
        assert f.read().strip() == "137"
    deadline = time.monotonic() + 5
    while not mon.reap() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert mon.reap(), "conmon outlived its container"
    assert r.kill("c1", "SIGKILL") is False
    r.delete("c1")
    r.delete("c1")  # deleting twice is fine
    assert r.state("c1") is None


def test_start_of_a_container_whose_init_died_fails(node, tmp_path):
    prefix, rootfs, r = node
    b = bundle(tmp_path, prefix, rootfs, "dead", ["sleep", "1000"])
    pid, mon = runc.create(r, "dead", b, str(tmp_path / "dead.log"), str(tmp_path / "exits"),
                           os.path.join(b, "persist"))
    os.kill(pid, signal.SIGKILL)  # runc init, waiting on the exec fifo
    with pytest.raises(runc.RuncError, match="dead|stopped"):
        r.start("dead", pid, timeout=10)
    r.delete("dead")


def test_exit_code_and_oom_kill(node, tmp_path):
    prefix, rootfs, r = node
    b = bundle(tmp_path, prefix, rootfs, "done", ["sh", "-c", "exit 7"])
    runc.create(r, "done", b, str(tmp_path / "done.log"), str(tmp_path / "exits"), os.path.join(b, "persist"))
    r.start("done")
    ex = wait_exit(os.path.join(b, "persist"), f"/{prefix}/sb/done")
    assert (ex.exit_code, ex.oom_killed) == (7, False)

    b = bundle(tmp_path, prefix, rootfs, "hog", ["sh", "-c", "x=a; while true; do x=$x$x; done"], memory=32 << 20)
    runc.create(r, "hog", b, str(tmp_path / "hog.log"), str(tmp_path / "exits"), os.path.join(b, "persist"))
    r.start("hog")
    ex = wait_exit(os.path.join(b, "persist"), f"/{prefix}/sb/hog", timeout=30)
    assert (ex.exit_code, ex.oom_killed) == (137, True)
    assert runc.oom_kills(f"/{prefix}/sb/hog") >= 1


def test_create_failure_carries_runc_message(node, tmp_path):
    prefix, rootfs, r = node
    b = bundle(tmp_path, prefix, rootfs, "bad", ["/no/such/binary"])
    with pytest.raises(runc.RuncError, match="no/such/binary"):
        runc.create(r, "bad", b, str(tmp_path / "bad.log"), str(tmp_path / "exits"), os.path.join(b, "persist"))
    r.delete("bad")
