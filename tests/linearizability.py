"""Linearizability checker for etcd-style KV histories (one register per key).

Written from the published algorithms, not from any existing implementation:

* Wing & Gong's search: walk the history's call/return events in time order and try to
  "linearize" (apply to the sequential model) any operation whose call is reached before the
  first still-open return; when a return is reached whose operation has not been linearized,
  backtrack.
* Lowe's optimisations, as popularised by porcupine: the events live in a doubly linked list
  so that linearizing an operation "lifts" its call and return out in O(1) (and undoing puts
  them back), the search is iterative with an explicit stack, and a cache of visited
  (linearized-set, model-state) pairs - the set being a bitset held in a Python int - prunes
  every configuration that was already explored.
* P-compositionality: linearizability is local, so the history is partitioned by key and each
  key's sub-history is checked on its own.

Model (etcd KV under strict serializability, restricted to single keys)::

    put(key, value)           -> ok        register := value
    get(key)                  -> value     value is None when the key is absent
    cas(key, expected, new)   -> bool      a Txn: if register == expected then register := new;
                                           expected None means "key absent" (create_revision 0)
    delete(key)               -> ok        register := None (absent)

Values must be hashable and must not be None for put / cas-new (None *is* "absent").

Operations with an unknown outcome (timeout, connection error) are recorded with
``ret = math.inf``: they may take effect at any moment after their invocation, or never.
A write with unknown outcome stays pending for the rest of the search; an unknown *read*
carries no information and is dropped (``History.unknown`` does so; ``check`` drops any
``get`` with ``ret == inf`` too, see ``drop_unknown_reads``).

Real-time order is strict: A precedes B only if ``A.ret < B.invoke``. Equal timestamps count as
concurrent, which can only make the checker more permissive, never report a false violation.

Usage::

    h = History()
    t = h.invoke(client_id, "put", "k", value="v")
    try:
        client.put("k", "v")
    except TimeoutError:
        h.unknown(t)          # may or may not have happened
    else:
        h.ok(t)
    ...
    res = check(h.ops)        # or check(h)
    assert res.ok, res.explanation     # `assert res` works too: Result is truthy iff ok

Limitations: the search is exponential in the worst case (the problem is NP-complete).
Linearizable histories are usually found quickly (the search is greedy), but *refuting* a
history must exhaust every ordering before the violation, and each unknown-outcome write on a
key stays pending until the end of that key's history, doubling the configurations to explore.
A violation in a long single-key history with more than a handful of unknown writes whose
values are observed (or with cas ops that failed, which disable the pruning below) can therefore hit
the timeout; the result is then ``ok=False, timed_out=True`` with an explanation starting
"unknown:" - never a claim of success. Unknown writes whose value nobody reads are pruned when
no cas on the key failed, so unique write values help a lot.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from dataclasses import dataclass
from typing import Iterable

__all__ = ["Op", "History", "Result", "check", "drop_unknown_reads", "format_op"]

KINDS = ("put", "get", "cas", "delete")


@dataclass
class Op:
    """One client operation. ``ret == math.inf`` means the outcome is unknown."""

    client: int
    kind: str                 # "put" | "get" | "cas" | "delete"
    key: object
    value: object = None      # put: value; cas: new value
    expected: object = None   # cas only (None = key absent)
    result: object = None     # get: value/None; cas: bool; put/delete: None
    invoke: float = 0.0
    ret: float = math.inf     # math.inf = outcome unknown

    def __str__(self) -> str:
        return format_op(self)


@dataclass(frozen=True)
class Result:
    """Outcome of ``check``. ``ok`` is True only with a proof (a linearization was found for
    every key). On failure ``key`` is the offending key and ``explanation`` is human readable;
    ``timed_out`` distinguishes "gave up" (explanation starts with "unknown:") from a proven
    violation. Truthiness is ``ok``, so ``assert check(ops)`` does the right thing."""

    ok: bool
    key: object | None
    explanation: str
    timed_out: bool = False

    def __bool__(self) -> bool:
        return self.ok


class History:
    """Thread-safe recorder. Call ``invoke`` just before sending a request and ``ok`` /
    ``unknown`` / ``fail`` right after its outcome is known; timestamps are taken with
    ``time.monotonic`` (or the ``clock`` given) inside these calls.

    * ``ok(h, result)``  - completed; result is the get value (None = absent), the cas bool, or
      nothing for put/delete.
    * ``unknown(h)``     - timeout / connection error: a write may or may not have happened
      (kept with ``ret = inf``); a read is dropped.
    * ``fail(h)``        - definitely not applied (e.g. an error etcd guarantees was not
      applied): dropped.

    ``ops`` is a snapshot (copies) of the recorded operations; operations still pending (never
    resolved) are reported like ``unknown`` ones.
    """

    _PENDING, _DONE, _DROPPED = 0, 1, 2

    def __init__(self, clock=time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._ops: list[Op] = []
        self._status: list[int] = []

    def invoke(self, client: int, kind: str, key, value=None, expected=None) -> int:
        if kind not in KINDS:
            raise ValueError(f"unknown op kind {kind!r}")
        t = self._clock()
        with self._lock:
            self._ops.append(Op(client, kind, key, value, expected, None, t, math.inf))
            self._status.append(self._PENDING)
            return len(self._ops) - 1

    def _resolve(self, handle: int) -> Op:
        if self._status[handle] != self._PENDING:
            raise ValueError(f"operation {handle} was already resolved")
        return self._ops[handle]

    def ok(self, handle: int, result=None) -> None:
        with self._lock:
            op = self._resolve(handle)
            op.result = result
            op.ret = self._clock()
            self._status[handle] = self._DONE

    def unknown(self, handle: int) -> None:
        with self._lock:
            op = self._resolve(handle)
            self._status[handle] = self._DROPPED if op.kind == "get" else self._DONE

    def fail(self, handle: int) -> None:
        with self._lock:
            self._resolve(handle)
            self._status[handle] = self._DROPPED

    @property
    def ops(self) -> list[Op]:
        with self._lock:
            return drop_unknown_reads(
                dataclasses.replace(op) for op, st in zip(self._ops, self._status)
                if st != self._DROPPED)

    def __len__(self) -> int:
        return len(self.ops)


def drop_unknown_reads(ops: Iterable[Op]) -> list[Op]:
    """Return the ops without reads whose outcome is unknown (``get`` with ``ret == inf``):
    such a read constrains nothing."""
    return [op for op in ops if not (op.kind == "get" and op.ret == math.inf)]


def format_op(op: Op, base: float = 0.0) -> str:
    """``client 3: cas('k', 'a' -> 'b') -> True   [1.000000, 1.250000]`` (times minus base)."""
    k = op.kind
    if k == "put":
        call = f"put({op.key!r}, {op.value!r})"
    elif k == "get":
        call = f"get({op.key!r})"
    elif k == "cas":
        call = f"cas({op.key!r}, {op.expected!r} -> {op.value!r})"
    else:
        call = f"delete({op.key!r})"
    if op.ret == math.inf:
        out, end = " -> ? (outcome unknown)", "inf"
    else:
        out = f" -> {op.result!r}" if k in ("get", "cas") else " -> ok"
        end = f"{op.ret - base:.6f}"
    return f"client {op.client}: {call}{out}   [{op.invoke - base:.6f}, {end}]"


def _validate(op: Op) -> None:
    if op.kind not in KINDS:
        raise ValueError(f"unknown op kind {op.kind!r}: {op!r}")
    if not op.ret >= op.invoke:   # also rejects NaN
        raise ValueError(f"op returns before it is invoked: {op!r}")
    if op.kind in ("put", "cas") and op.value is None:
        raise ValueError(f"{op.kind} of None is not allowed (None means 'absent'): {op!r}")
    if op.kind == "cas" and op.ret != math.inf and not isinstance(op.result, bool):
        raise ValueError(f"completed cas needs a bool result: {op!r}")


def check(ops, initial: dict | None = None, timeout: float = 60.0) -> Result:
    """Check that ``ops`` (a list of Op, or a History) is linearizable w.r.t. a register per
    key. ``initial`` maps key -> starting value (missing keys start absent). ``timeout`` bounds
    the whole check in seconds; hitting it yields ``Result(ok=False, timed_out=True)``."""
    deadline = time.monotonic() + timeout
    if isinstance(ops, History):
        ops = ops.ops
    ops = drop_unknown_reads(ops)
    by_key: dict = {}
    for op in ops:
        _validate(op)
        by_key.setdefault(op.key, []).append(op)
    initial = initial or {}
    for key in sorted(by_key, key=repr):
        res = _check_key(key, by_key[key], initial.get(key), deadline)
        if res is not None:
            return res
    return Result(True, None, f"linearizable: {len(ops)} ops on {len(by_key)} keys")


# Operation codes for the inner loop.
_PUT, _GET, _CAS_T, _CAS_F, _CAS_U, _DEL = range(6)
_TAIL = 8          # linearized ops shown before the point where the search got stuck
_WINDOW_MAX = 40   # ops listed in the failure window


def _prune_unknown(ops: list[Op]) -> list[Op]:
    """Drop unknown-outcome writes that provably cannot matter.

    If an unknown write's value w is never observed (no get returned w, no cas compared
    against w) and no cas on this key failed with a known result, then any linearization
    that applies the write can be turned into one that does not: between it and the next
    write the register holds w, which no get or successful cas accepts, so only no-op
    unknown cases can sit there (which can be dropped too), and the next write overwrites
    the register regardless. (A known-failed cas needs register != expected, which w could
    provide, hence the second condition.)"""
    if any(op.kind == "cas" and op.ret != math.inf and op.result is False for op in ops):
        return ops
    observed = set()
    for op in ops:
        if op.kind == "get":
            observed.add(op.result)
        elif op.kind == "cas":
            observed.add(op.expected)
    out = []
    for op in ops:
        if op.ret == math.inf and op.kind != "get":
            written = None if op.kind == "delete" else op.value
            if written not in observed:
                continue
        out.append(op)
    return out


def _check_key(key, all_ops: list[Op], init, deadline: float) -> Result | None:
    """Search one key. Returns None when linearizable, else a failing Result."""
    ops = _prune_unknown(all_ops)
    n = len(ops)
    kind, val, res, known, bit = [], [], [], [], []
    for i, op in enumerate(ops):
        unk = op.ret == math.inf
        if op.kind == "put":
            kind.append(_PUT)
        elif op.kind == "get":
            kind.append(_GET)
        elif op.kind == "delete":
            kind.append(_DEL)
        elif unk:
            kind.append(_CAS_U)
        else:
            kind.append(_CAS_T if op.result else _CAS_F)
        val.append(op.value)
        res.append(op.expected if op.kind == "cas" else op.result)
        known.append(0 if unk else 1)
        bit.append(1 << i)

    # Events 1..2n in time order; 0 = head sentinel, 2n+1 = tail sentinel.
    # Calls sort before returns at equal times (treated as concurrent).
    evs = sorted([(op.invoke, 0, i) for i, op in enumerate(ops)]
                 + [(op.ret, 1, i) for i, op in enumerate(ops)])
    ev = [0] * (2 * n + 2)          # op index for a call, ~op index (negative) for a return
    ret_ev = [0] * n
    call_ev = [0] * n
    for pos, (_, is_ret, i) in enumerate(evs, start=1):
        if is_ret:
            ev[pos] = ~i
            ret_ev[i] = pos
        else:
            ev[pos] = i
            call_ev[i] = pos
    nxt = list(range(1, 2 * n + 2)) + [0]
    prv = [0] + list(range(0, 2 * n + 1))

    remaining = sum(known)          # completed ops still to linearize
    state = init
    bits = 0
    stack: list[tuple[int, object]] = []    # (call event, state before it)
    cache: set = set()
    best_depth = -1
    best = None
    steps = 0
    entry = nxt[0]
    monotonic = time.monotonic

    while remaining:
        if not steps & 0x3FF and monotonic() > deadline:
            return _timeout_result(key, all_ops, len(cache), len(stack))
        steps += 1
        o = ev[entry]
        if o >= 0:
            k = kind[o]
            if k == _PUT:
                new = val[o]
            elif k == _GET:
                if state != res[o]:
                    entry = nxt[entry]
                    continue
                new = state
            elif k == _DEL:
                new = None
            elif k == _CAS_T:
                if state != res[o]:
                    entry = nxt[entry]
                    continue
                new = val[o]
            elif k == _CAS_F:
                if state == res[o]:
                    entry = nxt[entry]
                    continue
                new = state
            else:  # _CAS_U: applies iff the compare holds; "never happened" = linearized last
                new = val[o] if state == res[o] else state
            nb = bits | bit[o]
            ck = (nb, new)
            if ck in cache:
                entry = nxt[entry]
                continue
            cache.add(ck)
            stack.append((entry, state))
            state = new
            bits = nb
            remaining -= known[o]
            # lift the call and its return out of the list
            p, q = prv[entry], nxt[entry]
            nxt[p] = q
            prv[q] = p
            r = ret_ev[o]
            p, q = prv[r], nxt[r]
            nxt[p] = q
            prv[q] = p
            entry = nxt[0]
        else:
            # A return whose op is not linearized: every continuation from here fails.
            depth = len(stack)
            if depth > best_depth:
                best_depth = depth
                pending = []
                e = nxt[0]
                while e != entry:
                    pending.append(ev[e])
                    e = nxt[e]
                tail = [(ev[c], stack[j + 1][1] if j + 1 < depth else state)
                        for j, (c, _) in enumerate(stack[-_TAIL:], start=max(0, depth - _TAIL))]
                best = (~o, state, tail, pending)
            if not stack:
                return _failure_result(key, all_ops, ops, best_depth, best)
            entry, state = stack.pop()
            o = ev[entry]
            bits ^= bit[o]
            remaining += known[o]
            # unlift in reverse order: return first, then call
            r = ret_ev[o]
            nxt[prv[r]] = r
            prv[nxt[r]] = r
            nxt[prv[entry]] = entry
            prv[nxt[entry]] = entry
            entry = nxt[entry]
    return None


def _timeout_result(key, all_ops, cached, depth) -> Result:
    return Result(False, key,
                  f"unknown: search timed out on key {key!r} ({len(all_ops)} ops on this key; "
                  f"{cached} configurations explored, current depth {depth}). "
                  "Linearizability was neither proven nor refuted.", timed_out=True)


def _failure_result(key, all_ops, ops, depth, best) -> Result:
    blocked_i, state, tail, pending = best
    blocked = ops[blocked_i]
    base = min(op.invoke for op in all_ops)
    known_total = sum(1 for op in ops if op.ret != math.inf)
    lines = [
        f"key {key!r}: NOT linearizable ({len(all_ops)} ops on this key, "
        f"{known_total} with known outcome). Times below are seconds since the first op on "
        f"this key.",
        f"The longest linearizable prefix found has {depth} ops; after it the register holds "
        f"{state!r} ({'absent' if state is None else 'present'}). Every order was tried; this is "
        "the furthest the search got. From there, no pending op can be applied so that this op "
        "takes effect before it returns:",
        f"  >> {format_op(blocked, base)}",
    ]
    if tail:
        lines.append("End of that prefix, in linearization order (=> register after the op):")
        for i, after in tail:
            lines.append(f"     {format_op(ops[i], base)}  => {after!r}")
    others = [i for i in pending if i != blocked_i]
    if others:
        lines.append("Other ops pending at that point (invoked before the blocked op returned, "
                     "not yet linearized):")
        for i in others:
            lines.append(f"     {format_op(ops[i], base)}")
    # Window: every op on the key overlapping [start of the tail / pending ops, blocked return].
    starts = [ops[i].invoke for i, _ in tail] + [ops[i].invoke for i in pending]
    w0 = min(starts + [blocked.invoke])
    w1 = blocked.ret
    window = sorted((op for op in all_ops if op.invoke <= w1 and op.ret >= w0),
                    key=lambda op: (op.invoke, op.ret))
    lines.append(f"All {len(window)} ops on {key!r} overlapping the window "
                 f"[{w0 - base:.6f}, {w1 - base:.6f}] (by invocation time):")
    for op in window[:_WINDOW_MAX]:
        mark = ">>" if op is blocked else "  "
        lines.append(f"  {mark} {format_op(op, base)}")
    if len(window) > _WINDOW_MAX:
        lines.append(f"     ... {len(window) - _WINDOW_MAX} more")
    return Result(False, key, "\n".join(lines))
