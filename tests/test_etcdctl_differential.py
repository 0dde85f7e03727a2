"""Differential test: one scripted etcdctl 3.4 session against a fresh real etcd and a
fresh etcdlite member; the normalised transcripts must be identical.

What is normalised (and nothing else):
  * cluster / member / lease IDs -> <CLUSTER#n>, <MEMBER#n>, <LEASE#n>, numbered by
    first appearance, so identity is still checked (the same lease must print as the
    same placeholder everywhere; hex and decimal spellings of one ID are one ID).
    An ID that is not known from a defining output (a response header, a lease
    grant) is left literal, so e.g. an unknown lease 1234 must print as 1234.
    0 is never replaced.
  * raft term -> <TERM#n> (identity checked), raft (applied) index -> <RAFT_INDEX>
  * client/peer ports, zap log timestamps and client UUIDs, "took" durations,
    server version strings, db sizes, snapshot sizes and paths
  * endpoint hashkv hash values -> <HASH> (only when a non-zero decimal is printed)
  * lease remaining TTLs -> <REMAINING~TTL> only when 0 < remaining <= granted
    and remaining >= granted - 10; otherwise left literal
  * "-w table" output is re-rendered without padding (column widths follow content)
  * `lease list` lines are sorted (the server returns them in map order)
Keys, values, revisions, versions, counts, rc and error texts are compared exactly.

Environment:
  ETCDLITE_DIFF_TARGET=real   run the etcdlite side against a second real etcd
                              (to develop/validate the harness itself)
"""

from __future__ import annotations

import base64
import difflib
import json
import os
import re
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from harness.procs import (
    ETCDCTL_BIN,
    BackgroundEtcdctl,
    Member,
    Registry,
    require_binary,
    run_etcdctl,
)

CMD_TIMEOUT = 15.0
WATCH_TIMEOUT = 15.0
# A wedged server costs etcdctl's 5 s command timeout per step; past this budget the
# remaining steps are recorded as not run instead (keeps the test near a minute).
MAX_DIFF_LINES = 400
SESSION_BUDGET = float(os.environ.get("ETCDLITE_DIFF_BUDGET", "45"))
SENTINEL_KEY = "watch/sentinel"
SENTINEL_VALUE = "done"


# ---------------------------------------------------------------------------
# transcript


@dataclass
class Entry:
    title: str                      # what was run, as written in the script (templated)
    rc: int | None = None
    out: str = ""
    err: str = ""
    stdin: str | None = None
    sort_out_lines: bool = False    # server returns these in unspecified order
    notes: list[str] = field(default_factory=list)


class Session:
    """Runs the script against one member and records every step."""

    def __init__(self, member: Member, workdir: Path, label: str) -> None:
        self.member = member
        self.workdir = workdir
        self.label = label
        self.vars: dict[str, str] = {}
        self.entries: list[Entry] = []
        self.elapsed = 0.0
        self.deadline = time.monotonic() + SESSION_BUDGET
        self.snapdir = workdir / "snapshots"
        self.snapdir.mkdir(parents=True, exist_ok=True)
        self.vars["SNAP"] = str(self.snapdir / "snap.db")

    def over_budget(self, title: str, stdin: str | None = None) -> Entry | None:
        if time.monotonic() < self.deadline:
            return None
        e = Entry(title, None, "", "", stdin,
                  notes=[f"NOT RUN: session time budget ({SESSION_BUDGET:g}s) exhausted"])
        self.entries.append(e)
        return e

    def ctl(self, template: str, stdin: str | None = None, sort_out_lines: bool = False,
            timeout: float = CMD_TIMEOUT) -> Entry:
        skipped = self.over_budget(f"etcdctl {template}", stdin)
        if skipped:
            return skipped
        args = [a.format(**self.vars) for a in shlex.split(template)]
        timeout = max(1.0, min(timeout, self.deadline - time.monotonic() + 5.0))
        rc, out, err = run_etcdctl(self.member, *args, stdin=stdin, timeout=timeout)
        e = Entry(f"etcdctl {template}", rc, out, err, stdin, sort_out_lines)
        self.entries.append(e)
        return e

    def grant(self, var: str, template: str) -> Entry:
        """`lease grant ...`; remember the granted ID (hex) as {var} for later steps."""
        e = self.ctl(template)
        if e.rc is None:  # not run
            self.vars[var] = "ffffffffffff"
            return e
        m = re.search(r"^lease ([0-9a-f]+) granted with TTL", e.out, re.M)
        if m is None:
            try:
                m_id = json.loads(e.out)["ID"]
                self.vars[var] = format(int(m_id), "x")
            except Exception:
                self.vars[var] = "ffffffffffff"  # keep going; the diff will show why
                e.notes.append(f"could not parse a lease ID for {{{var}}}")
        else:
            self.vars[var] = m.group(1)
        return e

    def watch(self, template: str, predicate, flatten_json: bool = False) -> Entry:
        """Run `etcdctl watch ...` in the background until predicate(stdout) holds
        (polled, with a deadline), then kill it."""
        args = [a.format(**self.vars) for a in shlex.split(template)]
        title = f"etcdctl {template}  (background; killed once the sentinel is seen)"
        skipped = self.over_budget(title)
        if skipped:
            return skipped
        e = Entry(title)
        with BackgroundEtcdctl(self.member, *args) as bg:
            ok = bg.wait_for(predicate, WATCH_TIMEOUT)
            exited = bg.proc.poll()
        out, e.err = bg.stdout, bg.stderr
        if not ok:
            e.notes.append(
                f"sentinel not seen within {WATCH_TIMEOUT:g}s"
                + (f" (etcdctl exited rc={exited})" if exited is not None else "")
            )
        e.out = flatten_watch_json(out) if flatten_json else out
        self.entries.append(e)
        return e

    def note(self, title: str, text: str) -> None:
        self.entries.append(Entry(title, None, text))


def flatten_watch_json(out: str) -> str:
    """One line per event (batching into responses is not part of the contract), plus
    one summary of the non-event response fields and the last header revision."""
    lines, flags, last_rev = [], set(), None
    for raw in out.splitlines():
        if not raw.strip():
            continue
        try:
            resp = json.loads(raw)
        except ValueError:
            lines.append("unparsable: " + raw)
            continue
        for ev in resp.get("Events") or []:
            lines.append(json.dumps(ev, sort_keys=True, separators=(",", ":")))
        flags.add(
            f"CompactRevision={resp.get('CompactRevision')} Canceled={resp.get('Canceled')} "
            f"Created={resp.get('Created')}"
        )
        last_rev = (resp.get("Header") or {}).get("revision")
    lines.append("responses: " + " | ".join(sorted(flags)))
    lines.append(f"last response header revision: {last_rev}")
    return "\n".join(lines) + "\n"


def sentinel_simple(out: str) -> bool:
    return out.endswith(f"{SENTINEL_KEY}\n{SENTINEL_VALUE}\n")


def sentinel_json(out: str) -> bool:
    b64 = base64.b64encode(SENTINEL_KEY.encode()).decode()
    return any(b64 in line for line in out.split("\n")[:-1])  # complete lines only


# ---------------------------------------------------------------------------
# the script (revisions in comments; both stores start at revision 1)

TXN_SUCCESS = """\
value("s/1") = "val-a"
version("s/3") = "2"
create("s/2") > "0"
mod("s/2") < "10"
value("s/2") != "zzz"
value("s/2") > "val-b"
version("nokey") = "0"
create("nokey") = "0"

put t/1 yes
get s/ --prefix --limit=1
del zoo --prev-kv
get zoo

put t/1 no

"""

TXN_FAILURE = """\
value("s/1") = "val-a"
mod("s/2") > "9"

put t/2 yes

put t/2 no
get t/ --prefix
del t/1 --prev-kv

"""

TXN_FAILURE_NO_OPS = """\
value("s/1") = "nope"
ver("s/1") = "3"

put t/3 yes


"""

TXN_UNCONDITIONAL = """\

put t/4 x
put t/5 y --prev-kv


"""

TXN_DUPLICATE_KEYS = """\

put d/1 a
del d/ --prefix


"""


def script(s: Session) -> None:
    c = s.ctl
    # --- put ------------------------------------------------------------------
    c("put foo bar")                                  # r2
    c("put foo1 bar1")                                # r3
    c("put foo2 bar2 -w json")                        # r4
    c("put foo bar-2 --prev-kv")                      # r5
    c("put foo --ignore-value --prev-kv -w fields")   # r6 (value stays bar-2)
    c("put nokey --ignore-value")                     # error: key not found
    c("put nokey v --ignore-lease")                   # error: key not found
    c("put s/3 val-b0")                               # r7
    c("put s/1 val-x")                                # r8
    c("put s/2 val-c")                                # r9
    c("put s/1 val-y")                                # r10
    c("put s/1 val-a")                                # r11
    c("put s/3 val-b")                                # r12
    c("put zoo zoo-val --prev-kv")                    # r13 (no prev kv)
    c("put 'key with spaces' 'value with spaces'")    # r14
    c("put empty ''")                                 # r15
    # --- get ------------------------------------------------------------------
    c("get foo")
    c("get foo -w json")
    c("get foo -w fields")
    c("get foo --hex")
    c("get empty -w json")
    c("get 'key with spaces'")
    c("get foo --prefix")
    c("get foo --prefix --keys-only")
    c("get foo --prefix --print-value-only")
    c("get foo --prefix --limit=2")
    c("get foo --prefix --limit=2 -w json")
    c("get foo foo2")
    c("get foo --from-key")
    c("get '' --from-key --keys-only")
    c("get s/ --from-key --limit=2 -w fields")
    c("get s/ --prefix --order=DESCEND")
    for target in ("KEY", "CREATE", "MODIFY", "VALUE", "VERSION"):
        c(f"get s/ --prefix --sort-by={target}")
        c(f"get s/ --prefix --sort-by={target} --order=ASCEND --keys-only")
        c(f"get s/ --prefix --sort-by={target} --order=DESCEND")
    c("get s/ --prefix --sort-by=VALUE --order=DESCEND --limit=2 -w json")
    c("get s/ --prefix --sort-by=MODIFY --order=DESCEND --limit=1 -w fields")
    c("get foo --rev=2")
    c("get foo --rev=4 -w json")
    c("get foo --rev=5 --print-value-only")
    c("get s/1 --rev=9")
    c("get s/ --prefix --rev=8 -w json")
    c("get s/ --prefix --rev=1")
    c("get foo --consistency=s")
    c("get s/ --prefix --keys-only --consistency=s -w json")
    c("get missing")
    c("get missing -w json")
    c("get foo --rev=1000000")                        # error: future revision
    # --- txn ------------------------------------------------------------------
    c("txn", stdin=TXN_SUCCESS)                       # r16: SUCCESS branch
    c("txn --interactive=false -w json", stdin=TXN_FAILURE)   # r17: FAILURE branch
    c("txn -w fields", stdin=TXN_FAILURE_NO_OPS)      # no ops -> no new revision
    c("txn -w json", stdin=TXN_UNCONDITIONAL)         # r18
    c("txn", stdin=TXN_DUPLICATE_KEYS)                # error: duplicate key
    c("get t/ --prefix -w json")
    # --- del ------------------------------------------------------------------
    c("del missing")
    c("del foo1")                                     # r19
    c("del foo --prev-kv")                            # r20
    c("del foo --prefix --prev-kv -w json")           # r21 (foo2)
    c("put zz/1 a")                                   # r22
    c("put zz/2 b")                                   # r23
    c("put zz/3 c")                                   # r24
    c("del zz/2 --from-key --prev-kv")                # r25 (zz/2, zz/3)
    c("del zz/ --prefix -w json")                     # r26 (zz/1)
    c("del t/ --prefix")                              # r27
    # --- leases ---------------------------------------------------------------
    s.grant("L1", "lease grant 300")
    s.grant("L2", "lease grant 600 -w json")
    c("lease list", sort_out_lines=True)
    c("put lk lv --lease={L1}")                       # r28
    c("put lk lv2 --ignore-lease --prev-kv -w fields")  # r29 keeps L1
    c("put lk --ignore-value --ignore-lease")         # r30
    c("put lk2 v1 --lease={L2}")                      # r31
    c("put lk2 v2 -w json")                           # r32 detaches L2
    c("put lk3 v3 --lease={L2}")                      # r33
    c("get lk -w json")
    c("get lk2 -w fields")
    c("lease timetolive {L1}")
    c("lease timetolive {L1} --keys")
    c("lease timetolive {L2} --keys -w json")
    c("lease keep-alive --once {L1}")
    c("lease keep-alive --once {L2} -w json")
    c("lease revoke {L1}")                            # r34: deletes lk
    c("get lk")
    c("get lk -w json")
    c("get lk2 --print-value-only")
    c("lease timetolive {L1}")
    c("lease timetolive {L1} -w json")
    c("lease list", sort_out_lines=True)
    c("lease revoke {L1}")                            # error: not found
    c("lease keep-alive --once {L1}")                 # error: not found
    c("lease revoke 1234")                            # error: not found
    c("lease timetolive 1234 -w json")
    c("put x y --lease=1234")                         # error: not found
    c("put lk4 v4 --lease={L1}")                      # error: revoked lease
    # --- watch (before compaction, from revision 1) ----------------------------
    c(f"put {SENTINEL_KEY} {SENTINEL_VALUE}")         # r35
    s.watch("watch --rev=1 --prefix '' --prev-kv", sentinel_simple)
    s.watch("watch --rev=1 --prefix '' --prev-kv -w json", sentinel_json, flatten_json=True)
    # --- compaction -----------------------------------------------------------
    c("compaction 5")
    c("compaction 5")                                 # error: compacted
    c("compaction 3")                                 # error: compacted
    c("compaction --physical 8")
    c("compaction 1000000")                           # error: future revision
    c("get s/ --prefix --rev=7")                      # error: compacted
    c("get s/ --prefix --rev=8")                      # ok: == compact revision
    c("watch --rev=7 --prefix ''", timeout=CMD_TIMEOUT)  # canceled: compacted
    c("get '' --from-key -w json")                    # the whole final state
    # --- cluster / maintenance ------------------------------------------------
    c("endpoint hashkv")
    c("endpoint hashkv -w json")
    c("endpoint hashkv --rev=20")
    c("endpoint hashkv --rev=1000000")                # error: future revision
    c("member list")
    c("member list -w table")
    c("member list -w json")
    c("endpoint status")
    c("endpoint status -w table")
    c("endpoint status -w json")
    c("endpoint health")
    c("endpoint health -w json")
    c("snapshot save {SNAP}")
    snap = Path(s.vars["SNAP"])
    size = snap.stat().st_size if snap.exists() else -1
    s.note("check: snapshot file", f"exists={snap.exists()} non-empty={size > 0} "
           f"part-file-left={Path(str(snap) + '.part').exists()}\n")
    c("get '' --from-key --keys-only")


# ---------------------------------------------------------------------------
# normalisation

KIND_BY_JSON_KEY = {
    "cluster_id": ("CLUSTER",), "ClusterID": ("CLUSTER",),
    "member_id": ("MEMBER",), "MemberID": ("MEMBER",), "leader": ("MEMBER",),
    "lease": ("LEASE",), "Lease": ("LEASE",), "PrevLease": ("LEASE",),
    "ID": ("MEMBER", "LEASE", "CLUSTER"), "id": ("MEMBER", "LEASE", "CLUSTER"),
}
JSON_ID_RE = re.compile(r'"(' + "|".join(KIND_BY_JSON_KEY) + r')"(\s*:\s*)(\d+)')
TERM_RE = re.compile(r'"(raft_term|RaftTerm|raftTerm)"(\s*:\s*)(\d+)')
DEFINING = [
    (re.compile(r'"(?:cluster_id|ClusterID)"\s*:\s*(\d+)'), "CLUSTER", 10),
    (re.compile(r'"(?:member_id|MemberID)"\s*:\s*(\d+)'), "MEMBER", 10),
    (re.compile(r'^lease ([0-9a-f]+) granted with TTL\(\d+s\)$', re.M), "LEASE", 16),
    (re.compile(r'"ID"\s*:\s*(\d+)\s*,\s*"TTL"\s*:\s*\d+\s*,\s*"Error"'), "LEASE", 10),
]
LONG_HEX_RE = re.compile(r"\b[0-9a-f]{8,16}\b")
LONG_DEC_RE = re.compile(r"\b\d{8,20}\b")


class Normaliser:
    def __init__(self, entries: list[Entry], member: Member, snapdir: Path) -> None:
        self.member = member
        self.snapdir = str(snapdir)
        self.ids: dict[str, dict[int, str]] = {"CLUSTER": {}, "MEMBER": {}, "LEASE": {}}
        self.terms: dict[int, str] = {}
        # Learn IDs in order of first appearance (after port replacement so that
        # ports can never be mistaken for IDs).
        for e in entries:
            for text in (e.out, e.err):
                text = self.ports(text)
                found = []
                for rx, kind, base in DEFINING:
                    for m in rx.finditer(text):
                        found.append((m.start(), kind, int(m.group(1), base)))
                for _, kind, value in sorted(found):
                    if value and value not in self.ids[kind]:
                        self.ids[kind][value] = f"<{kind}#{len(self.ids[kind]) + 1}>"
                for m in TERM_RE.finditer(text):
                    v = int(m.group(3))
                    if v and v not in self.terms:
                        self.terms[v] = f"<TERM#{len(self.terms) + 1}>"

    def _known(self, value: int, kinds=("MEMBER", "LEASE", "CLUSTER")) -> str | None:
        for k in kinds:
            if value in self.ids[k]:
                return self.ids[k][value]
        return None

    def term(self, raw: str) -> str:
        v = int(raw)
        return self.terms.get(v, raw) if v else raw

    # -- individual rules -----------------------------------------------------

    def ports(self, text: str) -> str:
        for port, ph in ((self.member.client_port, "<CLIENT_PORT>"),
                         (self.member.peer_port, "<PEER_PORT>")):
            text = re.sub(rf"(127\.0\.0\.1|localhost|\[::1\]):{port}(?!\d)", rf"\1:{ph}", text)
        return text

    def id_rules(self, text: str, lease_first: bool = False) -> str:
        """Replace known IDs. Kinds may collide (an implementation may number
        members and leases from 1), so every context says which kind it means;
        ambiguous ones ("ID", "id", long bare numbers) prefer leases in the output
        of `lease ...` commands and members elsewhere."""
        ambiguous = ("LEASE", "MEMBER", "CLUSTER") if lease_first else ("MEMBER", "LEASE", "CLUSTER")

        def json_id(m):
            v = int(m.group(3))
            kinds = KIND_BY_JSON_KEY[m.group(1)]
            ph = self._known(v, ambiguous if len(kinds) > 1 else kinds) if v else None
            return f'"{m.group(1)}"{m.group(2)}{ph or m.group(3)}'

        text = JSON_ID_RE.sub(json_id, text)
        text = TERM_RE.sub(lambda m: f'"{m.group(1)}"{m.group(2)}{self.term(m.group(3))}', text)

        def hex_ctx(kind):
            def sub(m):
                ph = self._known(int(m.group(2), 16), (kind,))
                return m.group(1) + (ph or m.group(2)) + m.group(3)
            return sub

        # short hex IDs in known contexts
        text = re.sub(r"(\blease )([0-9a-f]+)(\b)", hex_ctx("LEASE"), text)
        text = re.sub(r"(^)([0-9a-f]+)(, (?:un)?started, )", hex_ctx("MEMBER"), text, flags=re.M)
        text = re.sub(r"(^127\.0\.0\.1:<CLIENT_PORT>, )([0-9a-f]+)(, )", hex_ctx("MEMBER"), text,
                      flags=re.M)
        text = re.sub(r"(^)([0-9a-f]{16})($)", hex_ctx("LEASE"), text, flags=re.M)  # lease list
        # any remaining long spelling of a known ID, hex or decimal
        text = LONG_DEC_RE.sub(lambda m: self._known(int(m.group(0)), ambiguous) or m.group(0), text)
        text = LONG_HEX_RE.sub(lambda m: self._known(int(m.group(0), 16), ambiguous) or m.group(0),
                               text)
        return text

    @staticmethod
    def zap(text: str) -> str:
        text = re.sub(r'"ts":("[^"]*"|[0-9.eE+-]+)', '"ts":"<TS>"', text)
        text = re.sub(r'endpoint://client-[0-9a-f-]+/', "endpoint://client-<UUID>/", text)
        text = re.sub(r'"took":("[^"]*"|[0-9.eE+-]+)', '"took":"<DURATION>"', text)
        text = re.sub(r"took = [0-9.]+(ns|µs|us|ms|s|m[0-9.]+s)", "took = <DURATION>", text)
        text = re.sub(r'"size":"[^"]*"', '"size":"<SIZE>"', text)
        return text

    @staticmethod
    def status_json(text: str) -> str:
        text = re.sub(r'"version":"[^"]*"', '"version":"<VERSION>"', text)  # only the string one
        text = re.sub(r'"(dbSize|dbSizeInUse)":\d+', r'"\1":"<DB_SIZE>"', text)
        text = re.sub(r'"(raftIndex|raftAppliedIndex)":[1-9]\d*', r'"\1":"<RAFT_INDEX>"', text)
        text = re.sub(r'"hash":[1-9]\d*', '"hash":"<HASH>"', text)
        return text

    def status_fields(self, cells: list[str]) -> list[str]:
        """endpoint status columns: ENDPOINT, ID, VERSION, DB SIZE, IS LEADER,
        IS LEARNER, RAFT TERM, RAFT INDEX, RAFT APPLIED INDEX, ERRORS"""
        cells = list(cells)
        cells[1] = self.member_cell(cells[1])
        cells[2] = "<VERSION>"
        if re.fullmatch(r"[0-9.]+ [kMGT]?B", cells[3]):
            cells[3] = "<DB_SIZE>"
        cells[6] = self.term(cells[6]) if cells[6].isdigit() else cells[6]
        for i in (7, 8):
            if cells[i].isdigit() and cells[i] != "0":
                cells[i] = "<RAFT_INDEX>"
        return cells

    def member_cell(self, cell: str) -> str:
        if re.fullmatch(r"[0-9a-f]+", cell):
            return self._known(int(cell, 16), ("MEMBER",)) or cell
        return cell

    def simple_lines(self, text: str) -> str:
        out = []
        for line in text.split("\n"):
            if line.startswith("127.0.0.1:<CLIENT_PORT>, "):
                cells = line.split(", ")
                if len(cells) == 10:      # endpoint status (simple)
                    line = ", ".join(self.status_fields(cells))
                elif len(cells) == 2 and re.fullmatch(r"[1-9]\d*", cells[1]):  # hashkv
                    line = f"{cells[0]}, <HASH>"
            out.append(line)
        return "\n".join(out)

    def tables(self, text: str) -> str:
        out, header = [], None
        for line in text.split("\n"):
            if re.fullmatch(r"\+[-+]+\+", line):
                out.append("+-+")
                continue
            if line.startswith("|") and line.endswith("|"):
                cells = [c.strip() for c in line[1:-1].split("|")]
                if header is None:
                    header = cells
                elif header[:3] == ["ENDPOINT", "ID", "VERSION"] and len(cells) == 10:
                    cells = self.status_fields(cells)
                elif header[:2] == ["ID", "STATUS"] and cells:  # member list
                    cells[0] = self.member_cell(cells[0])
                out.append("| " + " | ".join(cells) + " |")
                continue
            header = None
            out.append(line)
        return "\n".join(out)

    @staticmethod
    def lease_remaining(text: str) -> str:
        def simple(m):
            granted, rem = int(m.group(1)), int(m.group(2))
            if 0 < rem <= granted and rem >= granted - 10:
                return f"granted with TTL({granted}s), remaining(<REMAINING~TTL>)"
            return m.group(0)

        def js(m):
            rem, granted = int(m.group(1)), int(m.group(2))
            if 0 < rem <= granted and rem >= granted - 10:
                return f'"ttl":"<REMAINING~TTL>","granted-ttl":{granted}'
            return m.group(0)

        text = re.sub(r"granted with TTL\((\d+)s\), remaining\((-?\d+)s\)", simple, text)
        return re.sub(r'"ttl":(-?\d+),"granted-ttl":(\d+)', js, text)

    def paths(self, text: str) -> str:
        return text.replace(self.snapdir, "<SNAPDIR>")

    @staticmethod
    def snapshot_log_order(text: str) -> str:
        """`snapshot save` logs "fetching snapshot" on its own goroutine after
        opening the stream, while the stream's reader logs a failed receive on
        another: either may print first, against etcd as against etcdlite, so
        the fetching line is put before the failure."""
        lines = text.split("\n")
        fetch = next((i for i, l in enumerate(lines) if '"msg":"fetching snapshot"' in l), None)
        fail = next((i for i, l in enumerate(lines)
                     if '"msg":"failed to receive from snapshot stream' in l), None)
        if fetch is None or fail is None or fetch < fail:
            return text
        lines.insert(fail, lines.pop(fetch))
        return "\n".join(lines)

    def text(self, text: str, lease_first: bool = False) -> str:
        text = self.ports(text)
        text = self.paths(text)
        text = self.zap(text)
        text = self.id_rules(text, lease_first)
        text = self.status_json(text)
        text = self.lease_remaining(text)
        text = self.simple_lines(text)
        text = self.tables(text)
        text = self.snapshot_log_order(text)
        return text

    # -- rendering ------------------------------------------------------------

    def render(self, i: int, e: Entry) -> str:
        tag = f"[{i:03d}]"
        lines = [f"{tag} $ {e.title}"]
        if e.stdin is not None:
            lines += [f"{tag} <  {line}" for line in e.stdin.rstrip("\n").split("\n")]
        if e.rc is not None:
            lines.append(f"{tag} rc={e.rc}")
        for stream, marker in ((e.out, ">"), (e.err, "!")):
            if not stream:
                continue
            body = self.text(stream, lease_first=e.title.startswith("etcdctl lease"))
            end_nl = body.endswith("\n")
            body_lines = body[:-1].split("\n") if end_nl else body.split("\n")
            if marker == ">" and e.sort_out_lines:
                body_lines = sorted(body_lines)
            lines += [f"{tag} {marker}  {line}" for line in body_lines]
            if not end_nl:
                lines.append(f"{tag} {marker}  \\ (no newline at end)")
        lines += [f"{tag} NOTE {n}" for n in e.notes]
        return "\n".join(lines)

    def render_all(self, entries: list[Entry]) -> list[str]:
        return [self.render(i, e) for i, e in enumerate(entries)]


# ---------------------------------------------------------------------------
# driver


def run_session(member: Member, workdir: Path, label: str) -> tuple[list[str], Session]:
    s = Session(member, workdir, label)
    t0 = time.monotonic()
    script(s)
    s.elapsed = time.monotonic() - t0
    blocks = Normaliser(s.entries, member, s.snapdir).render_all(s.entries)
    raw = "\n\n".join(
        f"[{i:03d}] $ {e.title}\nrc={e.rc}\n--- stdout\n{e.out}--- stderr\n{e.err}"
        for i, e in enumerate(s.entries)
    )
    (workdir / "transcript.raw.txt").write_text(raw)
    (workdir / "transcript.normalised.txt").write_text("\n".join(blocks) + "\n")
    return blocks, s


def compare(ref_blocks: list[str], got_blocks: list[str], ref_name: str, got_name: str,
            where: Path) -> str | None:
    if ref_blocks == got_blocks:
        return None
    parts = []
    mismatched = [i for i in range(max(len(ref_blocks), len(got_blocks)))
                  if i >= len(ref_blocks) or i >= len(got_blocks) or ref_blocks[i] != got_blocks[i]]
    parts.append(f"{len(mismatched)} of {len(ref_blocks)} steps differ "
                 f"(transcripts under {where}); later steps may differ only because an "
                 f"earlier one did, so start with the first:")
    for i in mismatched:
        title = (ref_blocks[i] if i < len(ref_blocks) else got_blocks[i]).split("\n", 1)[0]
        parts.append(f"  {title}")
    ref_lines = "\n".join(ref_blocks).split("\n")
    got_lines = "\n".join(got_blocks).split("\n")
    parts.append("")
    diff = list(difflib.unified_diff(ref_lines, got_lines, ref_name, got_name, n=2,
                                     lineterm=""))
    if len(diff) > MAX_DIFF_LINES:
        diff = diff[:MAX_DIFF_LINES] + [
            f"... ({len(diff) - MAX_DIFF_LINES} more diff lines; full transcripts: "
            f"{where}/ref/transcript.normalised.txt and {where}/got/transcript.normalised.txt)"]
    parts.extend(diff)
    return "\n".join(parts)


def start_target(kind: str, reg: Registry, tmp_path: Path, name: str) -> Member:
    if kind == "real":
        return reg.start_real_etcd(tmp_path, name=name)
    return reg.start_etcdlite(tmp_path, name=name)


def run_differential(tmp_path: Path, reg: Registry, got_kind: str) -> None:
    require_binary(ETCDCTL_BIN, "etcdctl 3.4")
    # Same member name on both sides: it is printed by `member list`.
    ref = reg.start_real_etcd(tmp_path / "ref", name="diff0")
    ref_blocks, ref_s = run_session(ref, tmp_path / "ref", "real etcd")
    ref.kill()
    got = start_target(got_kind, reg, tmp_path / "got", name="diff0")
    got_blocks, got_s = run_session(got, tmp_path / "got", got_kind)
    got.kill()
    got_name = "etcdlite" if got_kind != "real" else "real-etcd-2"
    problem = compare(ref_blocks, got_blocks, "real-etcd (normalised)",
                      f"{got_name} (normalised)", tmp_path)
    if problem:
        pytest.fail(problem, pytrace=False)


@pytest.mark.process
def test_etcdctl_session_matches_real_etcd(procs, tmp_path):
    """The real test: etcdlite must be indistinguishable from etcd 3.4 via etcdctl."""
    target = os.environ.get("ETCDLITE_DIFF_TARGET", "etcdlite")
    run_differential(tmp_path, procs, "real" if target == "real" else "etcdlite")


# ---------------------------------------------------------------------------
# the normaliser must not hide real differences


class _FakeMember:
    client_port, peer_port = 40001, 40002


def _norm(entries):
    return Normaliser(entries, _FakeMember(), Path("/snap")).render_all(entries)


HDR = '{"header":{"cluster_id":%d,"member_id":%d,"revision":%d,"raft_term":2}'


def test_normaliser_maps_ids_but_keeps_identity_and_data():
    def session(cluster, member, l1, l2, rev=5, key="Zm9v", l_in_get=None):
        l_in_get = l1 if l_in_get is None else l_in_get
        return [
            Entry("grant", 0, f"lease {l1:016x} granted with TTL(300s)\n"),
            Entry("grant", 0, '{"cluster_id":%d,"member_id":%d,"revision":3,"raft_term":2,'
                  '"ID":%d,"TTL":600,"Error":""}\n' % (cluster, member, l2)),
            Entry("get", 0, (HDR % (cluster, member, rev)) + ',"kvs":[{"key":"%s",'
                  '"create_revision":2,"mod_revision":%d,"version":1,"lease":%d}],"count":1}\n'
                  % (key, rev, l_in_get)),
            Entry("ttl", 0, f"lease {l1:016x} granted with TTL(300s), remaining(299s)\n"),
            Entry("members", 0, f"{member:x}, started, diff0, http://127.0.0.1:40002, "
                  "http://127.0.0.1:40001, false\n"),
            Entry("unknown", 0, "lease 0000000000001234 already expired\n"),
        ]

    real = _norm(session(0xD1CE, 0xBDAE9BBC11DD390D, 0x390DA21576B3060C, 0x390DA21576B3060E))
    lite = _norm(session(7, 1, 1, 2))
    assert real == lite
    assert "<LEASE#1>" in "\n".join(real) and "<MEMBER#1>" in "\n".join(real)
    # revision, key, or lease identity differences must survive normalisation
    assert _norm(session(7, 1, 1, 2, rev=6)) != real
    assert _norm(session(7, 1, 1, 2, key="YmFy")) != real
    assert _norm(session(7, 1, 1, 2, l_in_get=2)) != real     # wrong lease attached
    assert _norm(session(7, 1, 1, 2, l_in_get=99)) != real    # unknown lease
    bad_ttl = session(7, 1, 1, 2)
    bad_ttl[3] = Entry("ttl", 0, "lease 0000000000000001 granted with TTL(300s), remaining(-1s)\n")
    assert _norm(bad_ttl) != real
    unknown = session(7, 1, 1, 2)
    unknown[5] = Entry("unknown", 0, "lease 0000000000005678 already expired\n")
    assert _norm(unknown) != real


def test_normaliser_tables_and_status():
    a = Entry("status", 0,
              "+-----+\n| ENDPOINT | ID | VERSION | DB SIZE | IS LEADER | IS LEARNER | RAFT TERM "
              "| RAFT INDEX | RAFT APPLIED INDEX | ERRORS |\n+---+\n| 127.0.0.1:40001 | "
              "bdae9bbc11dd390d |  3.4.23 |   20 kB |      true |      false |         2 |"
              "          5 |                  5 |        |\n+---+\n")
    b = Entry("status", 0,
              "+--+\n| ENDPOINT | ID | VERSION | DB SIZE | IS LEADER | IS LEARNER | RAFT TERM "
              "| RAFT INDEX | RAFT APPLIED INDEX | ERRORS |\n+--+\n| 127.0.0.1:40001 | 1 | 0.1.0 "
              "| 4.1 MB | true | false | 7 | 99 | 98 |  |\n+--+\n")
    hdr_a = Entry("h", 0, (HDR % (5, 0xBDAE9BBC11DD390D, 1)) + "}\n")
    hdr_b = Entry("h", 0, (HDR % (5, 1, 1)).replace('"raft_term":2', '"raft_term":7') + "}\n")
    assert _norm([hdr_a, a]) == _norm([hdr_b, b])
    c = Entry("status", 0, b.out.replace("| true |", "| false |"))
    assert _norm([hdr_a, a]) != _norm([hdr_b, c])
