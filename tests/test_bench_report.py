"""benchmarks/report.py: which watch receiver's figures judge the watch bar; disturbed repetitions."""

from __future__ import annotations

from benchmarks import report


def _target(receiver, py_p99, go_p99, cores=0.03, ms_per_put=12.0):
    watch = {}
    for shape in ("1x1000", "100x10"):
        watch[shape] = {"p99_ms": py_p99, "receiver_cpu_cores_max": cores, "receiver_cpu_ms_per_put_max": ms_per_put}
        if receiver is not None:
            watch[shape]["receiver"] = receiver
        watch["go_" + shape] = {"p99_ms": go_p99, "receiver_cpu_cores": 0.1}
    return {"watch": watch}


def _bar(T):
    return report.watch_bar(T)


def test_lean_receiver_judges_the_bar_when_it_is_not_the_bottleneck():
    T = {"etcdlite1": _target("h2", 20.0, 70.0), "etcdlite3": _target("h2", 30.0, 80.0)}
    text, ok, detail = _bar(T)
    assert "lean h2watch" in text and ok is True
    assert "70" in detail and "80" in detail  # the Go figures are shown beside


def test_go_receivers_judge_the_bar_when_the_lean_one_is_busy():
    # 0.4 cores on average looks idle, but 200 ms of CPU per put is what delays a burst
    T = {"etcdlite1": _target("h2", 20.0, 45.0, cores=0.4, ms_per_put=200.0)}
    text, ok, detail = _bar(T)
    assert "Go etcdctl" in text and ok is True
    assert "not judged with it" in detail and "20.0" in detail
    T = {"etcdlite1": _target("h2", 20.0, 45.0, cores=0.9, ms_per_put=5.0)}
    assert "Go etcdctl" in _bar(T)[0]


def test_old_results_without_a_receiver_field_came_from_grpc_aio():
    T = {"etcdlite1": _target(None, 218.0, 45.0)}
    text, ok, detail = _bar(T)
    assert "Go etcdctl" in text and ok is True
    assert "grpc.aio receiver" in detail
    assert any("grpc.aio receiver, 1 stream" in r.label for r in report.rows(report.watch_receiver(T)))


def test_disturbed_put_repetitions_are_listed_with_their_parts():
    level = {"other_cpu_cores_runs": [0.6, 0.58, 0.02], "irq_softirq_cores_runs": [0.05, 0.04, 0.04],
             "steal_cores_runs": [0.0, 0.3, 0.0], "ops_per_s_runs": [66874.0, 66831.5, 97094.0]}
    calm = {"other_cpu_cores_runs": [0.0, 0.19, 0.01]}
    T = {"etcdlite1": {"label": "etcdlite 1", "put": {"256": level, "64": calm}},
         "bare": {"label": "bare gRPC", "put": {"256": {"ops_per_s": 1.0}}}}  # older results: no runs
    (line,) = report.disturbed_runs(T)
    assert line.startswith("- etcdlite 1, 256 clients: everything else 0.60 / 0.58 / 0.02 cores")
    assert "steal 0.00 / 0.30 / 0.00" in line and "66,874 / 66,832 / 97,094" in line
    assert report.disturbed_runs({"etcdlite1": {"put": {"64": calm}}}) == []


def test_check_perf_l_against_the_bare_server_is_shown_as_the_ceiling():
    def perf(l):
        return {"checkperf": {"l": {"writes_per_s": l}}}
    T = {"etcdlite1": {"label": "etcdlite 1", **perf(4800.0)}, "etcd1": {"label": "etcd 1", **perf(5000.0)},
         "bare": {"label": "bare gRPC", **perf(7000.0)}}
    text = report.render({"targets": T})
    (row,) = [ln for ln in text.splitlines() if ln.startswith("| writes/s |")]
    assert row == "| writes/s | 7,000 | 4,800 | 0.69x | 5,000 | 1.40x | 0.96x |"
    assert "bare + fdatasync w/s" not in text  # not run
    T["bare_sync"] = {"label": "bare gRPC + fdatasync", **perf(4700.0)}
    (row,) = [ln for ln in report.render({"targets": T}).splitlines()
              if ln.startswith("| writes/s |") and "4,700" in ln]
    assert row == "| writes/s | 4,700 | 4,800 | 1.02x | 5,000 | 0.94x |"
    # results from before the bare server answered check perf: no such table
    del T["bare"]["checkperf"]
    assert "| check perf l | bare w/s" not in report.render({"targets": T})
