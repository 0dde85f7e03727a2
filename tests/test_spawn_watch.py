"""The ``process`` marker is enforced: harness.spawn_watch sees a process however it is started,
and tests/conftest.py fails a test that starts one without the marker."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import time
from pathlib import Path

import pytest

from harness.spawn_watch import SpawnWatch

pytest_plugins = ["pytester"]

pytestmark = pytest.mark.process


def test_every_door_a_process_comes_through_is_seen():
    watch = SpawnWatch()
    watch.install()
    try:
        subprocess.run(["true"], check=True)
        assert watch.take() == ["subprocess.Popen(['true'])"]
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
        assert [s.split(" in thread")[0] for s in watch.take()] == ["os.fork()"]
        child = multiprocessing.get_context("spawn").Process(target=time.sleep, args=(0,))
        child.start()
        child.join(30)
        assert child.exitcode == 0
        spawned = watch.take()  # the child, and multiprocessing's resource tracker the first time
        assert spawned and all(s.startswith("multiprocessing spawn of ") for s in spawned), spawned
    finally:
        watch.uninstall()
    subprocess.run(["true"], check=True)
    assert watch.take() == []


UNDER_TEST = """
import subprocess

import pytest


def test_pure():
    pass


def test_unmarked_starts_a_process():
    subprocess.run(["true"], check=True)


@pytest.mark.process
def test_marked_starts_a_process():
    subprocess.run(["true"], check=True)


@pytest.fixture(scope="module")
def server():
    subprocess.run(["true"], check=True)


def test_unmarked_with_a_module_fixture_that_starts_a_process(server):
    pass
"""


def test_an_unmarked_test_that_starts_a_process_fails(pytester):
    pytester.makeconftest(Path(__file__).with_name("conftest.py").read_text())
    pytester.makeini("[pytest]\nmarkers =\n    process: starts processes\n")
    pytester.makepyfile(test_under_test=UNDER_TEST)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    # an unmarked test that started a process errors at teardown; the others pass
    result.assert_outcomes(passed=4, errors=2)
    result.stdout.fnmatch_lines([
        "*ERROR at teardown of test_unmarked_starts_a_process*",
        "*ERROR at teardown of test_unmarked_with_a_module_fixture_that_starts_a_process*",
    ])
    assert "without @pytest.mark.process" in result.stdout.str()
