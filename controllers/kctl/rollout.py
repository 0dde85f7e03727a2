"""``rollout status|history|undo|pause|resume`` of Deployments.

A Deployment's history is its ReplicaSets (those it controls, by
ownerReference uid), each numbered by its deployment.kubernetes.io/revision
annotation. Undo copies a revision's pod template (less the
pod-template-hash label the controller added) back into the Deployment; the
deployment controller does the rolling.
"""

from __future__ import annotations

import time

import goflags

from apiserver.errors import ApiError
from apiserver.pb import core_pb2
from apiserver.selectors import label_selector_from_proto
from controllers.kctl import kinds
from controllers.kctl.layout import Lines, pod_template
from controllers.kctl.session import CommandError, Session

REVISION = "deployment.kubernetes.io/revision"
CHANGE_CAUSE = "kubernetes.io/change-cause"
POD_TEMPLATE_HASH = "pod-template-hash"
PROGRESS_DEADLINE_EXCEEDED = "ProgressDeadlineExceeded"
# a ReplicaSet's annotations that rollback does not carry to the Deployment
NOT_COPIED_ON_UNDO = frozenset({
    REVISION, "deployment.kubernetes.io/revision-history", "deployment.kubernetes.io/desired-replicas",
    "deployment.kubernetes.io/max-replicas", "kubectl.kubernetes.io/last-applied-configuration"})
CONFLICT_RETRIES = 5


def parse_duration(text: str) -> float:
    """Seconds in a Go duration ("90s", "1m30s", "2h", "0"); a bare number is seconds."""
    try:
        return goflags.duration(text.strip(), bare_seconds=True)
    except ValueError:
        raise CommandError(f'invalid duration "{text.strip()}"') from None


def revision_of(rs) -> int:
    try:
        return int(rs.metadata.annotations.get(REVISION, "0"))
    except ValueError:
        return 0


def owned_replica_sets(client, deployment) -> list:
    """The ReplicaSets ``deployment`` controls, oldest revision first."""
    selector = str(label_selector_from_proto(deployment.spec.selector))
    found = client.list_all("replicasets", deployment.metadata.namespace,
                            label_selector=selector).items
    owned = [rs for rs in found
             if any(r.controller and r.uid == deployment.metadata.uid
                    for r in rs.metadata.owner_references)]
    return sorted(owned, key=revision_of)


def template_without_hash(template) -> core_pb2.PodTemplateSpec:
    copy = core_pb2.PodTemplateSpec()
    copy.CopyFrom(template)
    copy.metadata.labels.pop(POD_TEMPLATE_HASH, None)
    return copy


def same_template(a, b) -> bool:
    return template_without_hash(a) == template_without_hash(b)


def status_message(d) -> tuple[str, bool]:
    """(kubectl's rollout status line, whether the rollout is complete);
    CommandError when the progress deadline passed."""
    name = d.metadata.name
    spec, status = d.spec, d.status
    if d.metadata.generation > status.observed_generation:
        return "Waiting for deployment spec update to be observed...", False
    if any(c.type == "Progressing" and c.reason == PROGRESS_DEADLINE_EXCEEDED
           for c in status.conditions):
        raise CommandError(f'deployment "{name}" exceeded its progress deadline')
    replicas = spec.replicas if spec.HasField("replicas") else 1
    if status.updated_replicas < replicas:
        return (f'Waiting for deployment "{name}" rollout to finish: {status.updated_replicas} out '
                f"of {replicas} new replicas have been updated..."), False
    if status.replicas > status.updated_replicas:
        return (f'Waiting for deployment "{name}" rollout to finish: '
                f"{status.replicas - status.updated_replicas} old replicas are pending "
                f"termination..."), False
    if status.available_replicas < status.updated_replicas:
        return (f'Waiting for deployment "{name}" rollout to finish: {status.available_replicas} '
                f"of {status.updated_replicas} updated replicas are available..."), False
    return f'deployment "{name}" successfully rolled out', True


def _deployment(session: Session, args) -> tuple[object, str]:
    res, name = kinds.one_target(args, kinds=("deployments",))
    return session.client.get(res.name, name, session.namespace), name


def rollout_status(session: Session, args) -> int:
    client = session.client
    d, name = _deployment(session, args.target)
    timeout = parse_duration(args.timeout)
    deadline = time.monotonic() + timeout if timeout > 0 else None
    last = None

    def show(d) -> bool:
        nonlocal last
        message, done = status_message(d)
        if message != last:
            session.print(message)
            last = message
        return done

    if show(d) or not args.watch:
        return 0
    while True:
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            raise CommandError("timed out waiting for the condition")
        try:
            with client.watch("deployments", session.namespace,
                              field_selector=f"metadata.name={name}",
                              resource_version=d.metadata.resource_version,
                              timeout=remaining) as stream:
                for event in stream:
                    if event.type == "DELETED":
                        raise CommandError(f'deployment "{name}" was deleted')
                    if event.type in ("ADDED", "MODIFIED"):
                        d = event.object
                        if show(d):
                            return 0
        except ApiError as e:
            if e.reason == "Timeout":
                raise CommandError("timed out waiting for the condition") from None
            if e.reason not in ("Expired", "Gone"):
                raise
        d = client.get("deployments", name, session.namespace)  # the stream ended: read afresh
        if show(d):
            return 0


def rollout_history(session: Session, args) -> int:
    d, name = _deployment(session, args.target)
    res = kinds.resolve("deployments")
    history = {revision_of(rs): rs for rs in owned_replica_sets(session.client, d) if revision_of(rs)}
    if args.revision:
        rs = history.get(args.revision)
        if rs is None:
            raise CommandError(f"unable to find the specified revision {args.revision}")
        session.print(f"{kinds.ref(res, name)} with revision #{args.revision}")
        lines = Lines()
        pod_template(lines, template_without_hash(rs.spec.template))
        session.out.write(lines.render())
        return 0
    session.print(kinds.ref(res, name))
    if not history:
        session.print("No rollout history found.")
        return 0
    rows = [["REVISION", "CHANGE-CAUSE"]] + [
        [str(rev), history[rev].metadata.annotations.get(CHANGE_CAUSE, "<none>")]
        for rev in sorted(history)]
    width = max(len(r[0]) for r in rows) + 2
    for r in rows:
        session.print(r[0].ljust(width) + r[1])
    session.print()
    return 0


def rollout_undo(session: Session, args) -> int:
    client = session.client
    res = kinds.resolve("deployments")
    for _ in range(CONFLICT_RETRIES):
        d, name = _deployment(session, args.target)
        if d.spec.paused:
            raise CommandError(f"you cannot rollback a paused deployment; resume it first with "
                               f"'kctl rollout resume deployment/{name}' and try again")
        history = {revision_of(rs): rs for rs in owned_replica_sets(client, d) if revision_of(rs)}
        to_revision = args.to_revision
        if not to_revision:
            if len(history) < 2:
                raise CommandError(f'no rollout history found for deployment "{name}"')
            to_revision = sorted(history)[-2]
        rs = history.get(to_revision)
        if rs is None:
            raise CommandError(f"unable to find specified revision {to_revision} in history")
        if same_template(rs.spec.template, d.spec.template):
            session.print(f"{kinds.ref(res, name)} skipped rollback (current template already "
                          f"matches revision {to_revision})")
            return 0
        d.spec.template.CopyFrom(template_without_hash(rs.spec.template))
        for key, value in rs.metadata.annotations.items():
            if key not in NOT_COPIED_ON_UNDO:
                d.metadata.annotations[key] = value
        try:
            client.update(d)
        except ApiError as e:
            if e.reason == "Conflict":
                continue
            raise
        session.print(f"{kinds.ref(res, name)} rolled back")
        return 0
    raise CommandError(f'deployment "{args.target}" kept changing; try again')


def rollout_pause(session: Session, args, paused: bool) -> int:
    res = kinds.resolve("deployments")
    d, name = _deployment(session, args.target)
    if d.spec.paused == paused:
        state = "already paused" if paused else "not paused"
        raise CommandError(f'{kinds.qualified_plural(res)} "{name}" is {state}')
    session.client.patch(res.name, name, {"spec": {"paused": paused}}, session.namespace)
    session.print(f"{kinds.ref(res, name)} {'paused' if paused else 'resumed'}")
    return 0


def cmd_rollout(session: Session, args) -> int:
    action = args.rollout_action
    if action == "status":
        return rollout_status(session, args)
    if action == "history":
        return rollout_history(session, args)
    if action == "undo":
        return rollout_undo(session, args)
    return rollout_pause(session, args, action == "pause")
