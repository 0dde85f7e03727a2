"""Tests for the linearizability checker in tests/linearizability.py.

Hand-written histories (good and bad), randomly generated histories from a correct register
(must pass) with one corrupted read (must fail whenever the corruption provably breaks
linearizability), a brute-force cross-check on tiny histories, the recorder, and performance.
"""

from __future__ import annotations

import itertools
import math
import random
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from linearizability import History, Op, Result, check, drop_unknown_reads, format_op

INF = math.inf


# ---------------------------------------------------------------- helpers

def put(c, k, v, t0, t1=INF):
    return Op(c, "put", k, value=v, invoke=t0, ret=t1)


def get(c, k, r, t0, t1):
    return Op(c, "get", k, result=r, invoke=t0, ret=t1)


def cas(c, k, exp, new, r, t0, t1=INF):
    return Op(c, "cas", k, value=new, expected=exp, result=r, invoke=t0, ret=t1)


def delete(c, k, t0, t1=INF):
    return Op(c, "delete", k, invoke=t0, ret=t1)


def assert_ok(ops, **kw):
    res = check(ops, **kw)
    assert res.ok, res.explanation
    assert res.key is None and not res.timed_out
    return res


def assert_violation(ops, key="x", blocked=None, **kw):
    res = check(ops, **kw)
    assert not res.ok, "expected a violation"
    assert not res.timed_out, res.explanation
    assert res.key == key
    assert "NOT linearizable" in res.explanation
    if blocked is not None:   # the op the search got stuck on is shown, marked ">>"
        assert f">> {format_op(blocked, min(o.invoke for o in ops if o.key == key))}" \
            in res.explanation, res.explanation
    return res


# ---------------------------------------------------------------- linearizable by hand

def test_empty_and_trivial():
    assert_ok([])
    assert_ok([get(0, "x", None, 0, 1)])
    assert_ok([get(0, "x", "a", 0, 1)], initial={"x": "a"})


def test_overlapping_put_and_gets():
    ops = [put(0, "x", 1, 0, 10),
           get(1, "x", 1, 1, 2),       # put already took effect
           get(2, "x", None, 1, 3),    # ...or not yet: concurrent, both fine
           get(3, "x", 1, 11, 12)]
    assert_ok(ops)


def test_concurrent_puts_either_order():
    ops = [put(0, "x", "a", 0, 5), put(1, "x", "b", 1, 6),
           get(2, "x", "a", 7, 8), get(3, "x", "a", 9, 10)]
    assert_ok(ops)   # b then a
    ops[2].result = ops[3].result = "b"
    assert_ok(ops)   # a then b


def test_cas_chain_and_delete():
    ops = [cas(0, "x", None, "a", True, 0, 1),
           cas(1, "x", "a", "b", True, 2, 5),
           cas(2, "x", "a", "c", False, 3, 6),   # lost the race to client 1
           get(3, "x", "b", 7, 8),
           cas(0, "x", "b", "c", True, 9, 10),
           cas(1, "x", None, "z", False, 11, 12),  # key exists: create fails
           delete(2, "x", 13, 14),
           get(3, "x", None, 15, 16),
           cas(0, "x", None, "n", True, 17, 18)]   # create after delete
    assert_ok(ops)


def test_unknown_write_that_happened():
    ops = [put(0, "x", 1, 0, 1),
           put(1, "x", 2, 2),            # timed out ...
           get(2, "x", 1, 3, 4),         # ... not visible yet
           get(2, "x", 2, 10, 11),       # ... took effect much later
           get(3, "x", 2, 12, 13)]
    assert_ok(ops)


def test_unknown_write_that_did_not_happen():
    ops = [put(0, "x", 1, 0, 1), put(1, "x", 2, 2),
           get(2, "x", 1, 3, 4), get(2, "x", 1, 100, 101)]
    assert_ok(ops)


def test_unknown_cas_both_ways():
    base = [put(0, "x", "a", 0, 1), cas(1, "x", "a", "b", None, 2)]
    assert_ok(base + [get(2, "x", "b", 5, 6)])
    assert_ok(base + [get(2, "x", "a", 5, 6)])
    # a known-failed cas may be explained by the unknown cas having applied first
    assert_ok(base + [cas(2, "x", "a", "c", False, 5, 6), get(2, "x", "b", 7, 8)])


def test_unknown_write_overwritten_and_unobserved():
    ops = [put(0, "x", "a", 0, 1), put(1, "x", "lost", 2), put(0, "x", "c", 3, 4),
           get(2, "x", "c", 5, 6), cas(3, "x", "c", "d", True, 7, 8), get(2, "x", "d", 9, 10)]
    assert_ok(ops)


def test_keys_are_independent():
    ops = [put(0, "x", 1, 0, 1), put(0, "y", 2, 0, 1),
           get(1, "x", 1, 2, 3), get(1, "y", 2, 2, 3),
           get(1, b"z", None, 2, 3)]
    assert_ok(ops)


def test_equal_timestamps_count_as_concurrent():
    assert_ok([put(0, "x", 1, 0, 1), get(1, "x", None, 1, 2)])


# ---------------------------------------------------------------- violations by hand

def test_stale_read_after_completed_put():
    stale = get(2, "x", 1, 4, 5)
    ops = [put(0, "x", 1, 0, 1), put(1, "x", 2, 2, 3), stale]
    res = assert_violation(ops, blocked=stale)
    assert "register holds 2" in res.explanation
    assert "put('x', 2) -> ok" in res.explanation


def test_read_of_value_never_written():
    bad = get(1, "x", "ghost", 3, 4)
    ops = [put(0, "x", "a", 0, 2), put(2, "x", "b", 1, 5), bad, get(3, "x", "b", 6, 7)]
    res = assert_violation(ops, blocked=bad)
    assert "'ghost'" in res.explanation


def test_read_of_initial_value_that_never_existed():
    assert_violation([get(0, "x", "a", 0, 1)])
    assert_violation([get(0, "x", None, 0, 1)], initial={"x": "a"})


def test_two_successful_cas_from_same_expected():
    ops = [put(0, "x", "a", 0, 1),
           cas(1, "x", "a", "b", True, 2, 5),
           cas(2, "x", "a", "c", True, 3, 6)]
    res = assert_violation(ops)
    assert "cas('x', 'a' -> 'c') -> True" in res.explanation
    assert "cas('x', 'a' -> 'b') -> True" in res.explanation


def test_read_goes_back_in_time():
    old = get(3, "x", 1, 5, 6)
    ops = [put(0, "x", 1, 0, 1),
           put(1, "x", 2, 2, 10),       # still in flight during both reads
           get(2, "x", 2, 3, 4),        # sees the new value ...
           old]                         # ... then a later read sees the old one
    assert_violation(ops, blocked=old)
    # the same reads overlapping each other would be fine
    old.invoke = 3.5
    assert_ok(ops)


def test_lost_update():
    # two increments of 0 both succeed; the final value shows only one of them
    ops = [put(0, "x", 0, 0, 1),
           cas(1, "x", 0, 1, True, 2, 5),
           cas(2, "x", 0, 1, True, 3, 6),
           get(3, "x", 1, 7, 8)]
    assert_violation(ops)
    # an acknowledged write that disappears
    gone = get(1, "y", None, 2, 3)
    assert_violation([put(0, "y", "v", 0, 1), gone], key="y", blocked=gone)


def test_failed_cas_that_should_have_succeeded():
    bad = cas(1, "x", "a", "b", False, 2, 3)
    assert_violation([put(0, "x", "a", 0, 1), bad], blocked=bad)


def test_unknown_write_cannot_explain_a_read_from_the_future():
    ops = [get(0, "x", 1, 0, 1), put(1, "x", 1, 2)]   # put invoked after the read returned
    assert_violation(ops)


def test_violation_on_one_key_among_many():
    ops = [put(0, "a", 1, 0, 1), get(0, "a", 1, 2, 3),
           put(0, "b", 1, 0, 1), get(1, "b", None, 2, 3)]
    assert_violation(ops, key="b")


# ---------------------------------------------------------------- API details

def test_result_truthiness_and_validation():
    assert bool(check([put(0, "x", 1, 0, 1)])) is True
    assert bool(check([get(0, "x", 1, 0, 1)])) is False
    assert isinstance(check([]), Result)
    with pytest.raises(ValueError):
        check([Op(0, "append", "x", invoke=0, ret=1)])
    with pytest.raises(ValueError):
        check([put(0, "x", 1, 2, 1)])                  # returns before invoked
    with pytest.raises(ValueError):
        check([put(0, "x", None, 0, 1)])               # None means absent
    with pytest.raises(ValueError):
        check([cas(0, "x", None, "a", None, 0, 1)])    # completed cas without bool


def test_drop_unknown_reads():
    ops = [get(0, "x", "junk", 0, INF), put(0, "x", 1, 0)]
    assert drop_unknown_reads(ops) == [ops[1]]
    assert_ok(ops)   # check drops them too


def test_history_recorder():
    ticks = itertools.count()
    h = History(clock=lambda: float(next(ticks)))
    a = h.invoke(0, "put", "x", value="a")       # t=0
    b = h.invoke(1, "get", "x")                  # t=1
    c = h.invoke(2, "put", "x", value="b")       # t=2
    d = h.invoke(3, "get", "x")                  # t=3
    e = h.invoke(4, "cas", "x", value="z", expected="q")   # t=4
    f = h.invoke(5, "delete", "x")               # t=5, never resolved
    h.ok(a)                                      # t=6
    h.ok(b, "a")                                 # t=7
    h.unknown(c)
    h.unknown(d)                                 # unknown read: dropped
    h.fail(e)                                    # definitely not applied: dropped
    with pytest.raises(ValueError):
        h.ok(a)
    ops = h.ops
    assert [(o.kind, o.client, o.invoke, o.ret, o.result) for o in ops] == [
        ("put", 0, 0.0, 6.0, None), ("get", 1, 1.0, 7.0, "a"),
        ("put", 2, 2.0, INF, None), ("delete", 5, 5.0, INF, None)]
    ops[0].value = "mutated"                     # a snapshot, not the live records
    assert h.ops[0].value == "a"
    assert check(h).ok
    with pytest.raises(ValueError):
        h.invoke(0, "scan", "x")


def test_history_with_threads_on_a_locked_register():
    """Real threads against an atomic in-memory register, recorded with History."""
    h = History()
    store: dict = {}
    lock = threading.Lock()

    def worker(cid):
        rng = random.Random(cid)
        for i in range(150):
            key = rng.choice("ab")
            kind = rng.choice(("put", "get", "cas", "delete"))
            val = f"{cid}-{i}"
            exp = rng.choice([None, store.get(key)])
            t = h.invoke(cid, kind, key, value=val if kind in ("put", "cas") else None,
                         expected=exp)
            with lock:
                if kind == "put":
                    store[key] = val
                    out = None
                elif kind == "get":
                    out = store.get(key)
                elif kind == "delete":
                    store.pop(key, None)
                    out = None
                else:
                    out = store.get(key) == exp
                    if out:
                        store[key] = val
            if rng.random() < 0.05 and kind != "cas":
                h.unknown(t)
            else:
                h.ok(t, out)

    threads = [threading.Thread(target=worker, args=(c,)) for c in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert_ok(h.ops, timeout=30)


# ---------------------------------------------------------------- generated histories

def simulate(rng, n_ops, keys, clients, values=None, p_unknown=0.0):
    """A correct register: client intervals are random, each op takes effect at a random
    point inside its interval (unknown-outcome writes: later, or never), results come from
    executing the ops in that order. Returns the ops as the clients would record them."""
    cursor = [rng.uniform(0, 1) for _ in range(clients)]
    recent = {k: [None] for k in keys}
    recs = []
    for i in range(n_ops):
        c = rng.randrange(clients)
        key = rng.choice(keys)
        kind = rng.choices(("put", "get", "cas", "delete"), (4, 4, 3, 1))[0]
        inv = cursor[c] + rng.uniform(0, 0.3)
        ret = inv + rng.uniform(0.2, 2.0)
        cursor[c] = ret
        op = Op(c, kind, key, invoke=inv, ret=ret)
        if kind in ("put", "cas"):
            op.value = rng.choice(values) if values else f"v{i}"
        if kind == "cas":
            op.expected = rng.choice(list(values or recent[key]) + [None])
        if kind in ("put", "cas"):
            recent[key] = (recent[key] + [op.value])[-3:]
        lin = rng.uniform(inv, ret)
        if kind != "get" and rng.random() < p_unknown:
            op.ret = INF
            lin = inv + rng.uniform(0, 5.0) if rng.random() < 0.5 else None
        recs.append((op, lin))
    state: dict = {}
    for op, _ in sorted((r for r in recs if r[1] is not None), key=lambda r: r[1]):
        cur = state.get(op.key)
        if op.kind == "put":
            state[op.key] = op.value
        elif op.kind == "delete":
            state.pop(op.key, None)
        elif op.kind == "get":
            op.result = cur
        else:
            hit = cur == op.expected
            if op.ret != INF:
                op.result = hit
            if hit:
                state[op.key] = op.value
    return [op for op, _ in recs]


def corruption_must_be_detected(ops, r, v):
    """True if making read ``r`` return ``v`` (not None; registers start absent) provably
    breaks linearizability: every op that may write v and may take effect before r returns
    finished before some definitely-applied write of another value that itself finished
    before r was invoked. Then in any linearization the last write before r is not a write of
    v. (Merely "no write of v overlaps r" is not enough: a write of v that finished before r
    may be ordered after a concurrent write of another value.)"""
    writers = [o for o in ops if o.key == r.key and o.invoke < r.ret and o.value == v
               and (o.kind == "put" or (o.kind == "cas" and o.result is not False))]
    fences = [o for o in ops if o.key == r.key and o.ret < r.invoke and o.ret != INF
              and (o.kind == "delete" or (o.kind == "put" and o.value != v)
                   or (o.kind == "cas" and o.result is True and o.value != v))]
    return all(any(x.ret < w.invoke for w in fences) for x in writers)


@pytest.mark.parametrize("seed", range(12))
def test_generated_histories_pass_and_corruptions_are_caught(seed):
    rng = random.Random(seed)
    values = None if seed % 2 else ("a", "b", "c")
    ops = simulate(rng, 300, ["k0", "k1"], 6, values=values, p_unknown=0.03 * (seed % 3))
    assert_ok(ops, timeout=30)

    reads = [o for o in ops if o.kind == "get"]
    detected = guaranteed = 0
    for _ in range(20):
        r = rng.choice(reads)
        written = {o.value for o in ops if o.key == r.key and o.value is not None}
        v = rng.choice(sorted(written - {r.result}) + ["never-written"])
        orig, r.result = r.result, v
        res = check(ops, timeout=30)
        r.result = orig
        assert not res.timed_out, res.explanation
        must = corruption_must_be_detected(ops, r, v)
        guaranteed += must
        detected += not res.ok
        if must:
            assert not res.ok, f"missed corruption of {r} to {v!r}"
            assert res.key == r.key and "NOT linearizable" in res.explanation
    assert guaranteed >= 5            # the guarantee is not vacuous
    assert detected >= guaranteed


# ---------------------------------------------------------------- brute force cross-check

def brute_force_linearizable(ops, init=None):
    """Definition-level check for one key: some subset of the unknown ops plus all known ops,
    in some order that respects real time (a.ret < b.invoke => a first), is a legal register
    execution."""
    ops = drop_unknown_reads(ops)
    known = [o for o in ops if o.ret != INF]
    unknown = [o for o in ops if o.ret == INF]

    def step(state, o):
        if o.kind == "put":
            return True, o.value
        if o.kind == "delete":
            return True, None
        if o.kind == "get":
            return state == o.result, state
        hit = state == o.expected
        if o.ret == INF:
            return True, (o.value if hit else state)
        return hit == o.result, (o.value if hit else state)

    def search(state, left):
        if not left:
            return True
        for o in left:
            if any(p.ret < o.invoke for p in left if p is not o):
                continue
            ok, new = step(state, o)
            if ok and search(new, [p for p in left if p is not o]):
                return True
        return False

    return any(search(init, known + list(sub))
               for n in range(len(unknown) + 1)
               for sub in itertools.combinations(unknown, n))


@st.composite
def tiny_histories(draw):
    ops = []
    for c in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(("put", "get", "cas", "delete")))
        t0 = draw(st.integers(0, 8))
        t1 = t0 + draw(st.integers(0, 4))
        if kind != "get" and draw(st.integers(0, 4)) == 0:
            t1 = INF
        vals = st.sampled_from(("a", "b"))
        op = Op(c, kind, "x", invoke=float(t0), ret=float(t1))
        if kind in ("put", "cas"):
            op.value = draw(vals)
        if kind == "cas":
            op.expected = draw(st.one_of(st.none(), vals))
            op.result = draw(st.booleans()) if t1 != INF else None
        if kind == "get":
            op.result = draw(st.one_of(st.none(), vals))
        ops.append(op)
    return ops, draw(st.sampled_from((None, "a")))


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tiny_histories())
def test_agrees_with_brute_force(hist):
    ops, init = hist
    expected = brute_force_linearizable(ops, init)
    res = check(ops, initial={"x": init})
    assert res.ok == expected, res.explanation


# ---------------------------------------------------------------- timeout and performance

def test_timeout_is_reported_as_unknown():
    # 24 concurrent puts of distinct values, then a read of a value nobody wrote: refuting it
    # means exploring ~24 * 2**23 configurations.
    ops = [put(c, "x", c, 0.0, 1.0) for c in range(24)] + [get(99, "x", "nope", 2.0, 3.0)]
    t = time.monotonic()
    res = check(ops, timeout=0.3)
    assert time.monotonic() - t < 3
    assert not res.ok and res.timed_out and res.key == "x"
    assert res.explanation.startswith("unknown: search timed out")


def test_performance_5000_ops_5_keys_10_clients():
    rng = random.Random(2024)
    ops = simulate(rng, 5000, [f"k{i}" for i in range(5)], 10, p_unknown=0.01)
    bad = simulate(random.Random(7), 5000, [f"k{i}" for i in range(5)], 10,
                   values=("a", "b", "c"), p_unknown=0.01)
    t = time.monotonic()
    assert_ok(ops, timeout=20)
    assert_ok(bad, timeout=20)
    # a single hot key: all 10 clients contend on it
    one = simulate(random.Random(3), 5000, ["hot"], 10, values=("a", "b", "c", "d"))
    assert_ok(one, timeout=20)
    # and a violation in the middle of a big history is found, not timed out
    reads = [o for o in ops if o.kind == "get"]
    reads[len(reads) // 2].result = "corrupt"
    res = check(ops, timeout=20)
    assert not res.ok and not res.timed_out, res.explanation
    elapsed = time.monotonic() - t
    assert elapsed < 10, f"took {elapsed:.1f}s"
