"""The replicated alarms (etcd's alarm store): which member raised which
alarm. Pure and deterministic like the MVCC store; kept in the state machine,
so every member lists the same alarms and they outlive a restart.

Two kinds are held, as etcd raises them: NOSPACE (etcdlite.quota), while
which the state machine refuses the writes that add (Put, a Txn with puts,
LeaseGrant), and CORRUPT (etcdlite.server.corruption), while which it
refuses every write etcd's corrupt applier does (StateMachine.apply_batch).
"""

from __future__ import annotations

from etcdlite.pb.etcdserverpb import rpc_pb2 as pb

NOSPACE = pb.NOSPACE
CORRUPT = pb.CORRUPT
HELD = frozenset({NOSPACE, CORRUPT})
# alarms held at most: a client may activate one for any member ID (as etcd lets it)
MAX_ALARMS = 1024


class AlarmTable:
    def __init__(self) -> None:
        self._active: set[tuple[int, int]] = set()  # (alarm type, member ID)
        self.nospace = False  # a NOSPACE alarm is active (read on every applied put)
        self.corrupt = False  # a CORRUPT alarm is active (read on every applied command)

    def __getstate__(self):
        return sorted(self._active)

    def __setstate__(self, state):
        self._active = set(state)
        self._settle()

    def _settle(self) -> None:
        self.nospace = any(kind == NOSPACE for kind, _ in self._active)
        self.corrupt = any(kind == CORRUPT for kind, _ in self._active)

    def __len__(self) -> int:
        return len(self._active)

    def has(self, member_id: int, alarm: int) -> bool:
        return (alarm, member_id) in self._active

    def get(self, alarm: int = pb.NONE) -> list[pb.AlarmMember]:
        """The active alarms of type `alarm` (NONE: all), by type then member."""
        return [pb.AlarmMember(memberID=m, alarm=kind) for kind, m in sorted(self._active)
                if alarm == pb.NONE or kind == alarm]

    def activate(self, member_id: int, alarm: int) -> pb.AlarmMember | None:
        """Raise (or find raised) `alarm` for `member_id`; None if it is not one
        etcdlite raises (NOSPACE, CORRUPT) or the table is full."""
        if alarm not in HELD:
            return None
        entry = (alarm, member_id)
        if entry not in self._active:
            if len(self._active) >= MAX_ALARMS:
                return None
            self._active.add(entry)
            self._settle()
        return pb.AlarmMember(memberID=member_id, alarm=alarm)

    def deactivate(self, member_id: int, alarm: int) -> pb.AlarmMember | None:
        """Disarm `alarm` of `member_id`; None if it was not active."""
        entry = (alarm, member_id)
        if entry not in self._active:
            return None
        self._active.discard(entry)
        self._settle()
        return pb.AlarmMember(memberID=member_id, alarm=alarm)

    def apply(self, r: pb.AlarmRequest) -> pb.AlarmResponse:
        """An AlarmRequest as etcd's applier answers it (no header, as 3.4's)."""
        resp = pb.AlarmResponse()
        if r.action == pb.AlarmRequest.GET:
            resp.alarms.extend(self.get(r.alarm))
        elif r.action == pb.AlarmRequest.ACTIVATE:
            m = self.activate(r.memberID, r.alarm)
            if m is not None:
                resp.alarms.append(m)
        elif r.action == pb.AlarmRequest.DEACTIVATE:
            m = self.deactivate(r.memberID, r.alarm)
            if m is not None:
                resp.alarms.append(m)
        return resp


def alarm_text(m: pb.AlarmMember) -> str:
    """An alarm as etcd's Go protobuf prints it (Status' errors, etcdctl alarm list)."""
    # the compact text format: each field set, followed by a space
    text = f"memberID:{m.memberID} " if m.memberID else ""
    return text + (f"alarm:{pb.AlarmType.Name(m.alarm)} " if m.alarm else "")
