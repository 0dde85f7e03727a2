"""The pod status a kubelet writes, from the runtime's snapshot of the pod.

Kubernetes' generateAPIPodStatus, convertToAPIContainerStatuses and getPhase
(pkg/kubelet/kubelet_pods.go) and its condition generators
(pkg/kubelet/status/generate.go) as pure functions: the phase, the kubelet's
conditions (PodReadyToStartContainers, Initialized, ContainersReady, Ready,
PodScheduled), and a status per container and init container with its state,
lastState, restartCount, ready, started, image and containerID.

Shared with the hollow kubelet (it reports what a real one would, from a
made-up runtime snapshot): ``set_condition``, ``qos_class`` and
``generate_pod_status``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

from apiserver.pb import core_pb2
from controllers.podutil import now_rfc3339, parse_time
from node.kubelet import labels
from node.kubelet.actions import sandbox_changed, should_container_be_restarted
from node.kubelet.probes import READINESS, STARTUP, SUCCESS
from node.kubelet.runtime_status import (CONTAINER_EXITED, CONTAINER_RUNNING, CONTAINER_UNKNOWN,
                                         ContainerStatus, PodRuntimeStatus, SandboxStatus)

# waiting reasons (Kubernetes' kubecontainer and images errors)
CONTAINER_CREATING = "ContainerCreating"
POD_INITIALIZING = "PodInitializing"
CRASH_LOOP_BACK_OFF = "CrashLoopBackOff"
ERR_IMAGE_PULL = "ErrImagePull"
IMAGE_PULL_BACK_OFF = "ImagePullBackOff"
ERR_IMAGE_NEVER_PULL = "ErrImageNeverPull"
CREATE_CONTAINER_CONFIG_ERROR = "CreateContainerConfigError"
CREATE_CONTAINER_ERROR = "CreateContainerError"
RUN_CONTAINER_ERROR = "RunContainerError"

# condition reasons (pkg/kubelet/status/generate.go)
UNKNOWN_CONTAINER_STATUSES = "UnknownContainerStatuses"
POD_COMPLETED = "PodCompleted"
POD_FAILED = "PodFailed"
CONTAINERS_NOT_READY = "ContainersNotReady"
CONTAINERS_NOT_INITIALIZED = "ContainersNotInitialized"

CONTAINER_STATUS_UNKNOWN = "ContainerStatusUnknown"
TERMINAL_PHASES = ("Succeeded", "Failed")
POD_CONDITIONS = ("PodReadyToStartContainers", "Initialized", "ContainersReady", "Ready",
                  "PodScheduled")


# ---- small shared pieces ----

def set_condition(conditions, type_: str, status: str, now: str, *, reason: str = "",
                  message: str = "", heartbeat: bool = False) -> None:
    """Sets one condition in a repeated Condition field, keeping its
    lastTransitionTime while its status stays the same."""
    for c in conditions:
        if c.type == type_:
            break
    else:
        c = conditions.add(type=type_)
    if c.status != status or not c.last_transition_time:
        c.last_transition_time = now
    c.status, c.reason, c.message = status, reason, message
    if heartbeat:
        c.last_heartbeat_time = now


def qos_class(spec: core_pb2.PodSpec) -> str:
    """Kubernetes' QoS class of a pod spec (requests and limits of cpu and memory)."""
    containers = list(spec.containers) + list(spec.init_containers)
    requests = [dict(c.resources.requests) for c in containers]
    limits = [dict(c.resources.limits) for c in containers]
    tracked = ("cpu", "memory")
    if not any(r.get(k) for r in requests + limits for k in tracked):
        return "BestEffort"
    if all(lim.get(k) and req.get(k, lim.get(k)) == lim.get(k)
           for req, lim in zip(requests, limits) for k in tracked):
        return "Guaranteed"
    return "Burstable"


def _time(ts: float) -> str:
    return now_rfc3339(ts) if ts else ""


def _go_list(names: list[str]) -> str:
    return "[" + " ".join(names) + "]"  # how Go prints a []string with %s


class ReasonCache:
    """Why each container last failed to start, by (pod uid, container name):
    the waiting reason and message its status shows until a start succeeds
    (Kubernetes' ReasonCache, fed from each sync's start results)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._reasons: dict[tuple[str, str], tuple[str, str]] = {}

    def update(self, uid: str, name: str, reason: str, message: str) -> None:
        with self._lock:
            self._reasons[(uid, name)] = (reason, message)

    def remove(self, uid: str, name: str) -> None:
        with self._lock:
            self._reasons.pop((uid, name), None)

    def get(self, uid: str, name: str) -> tuple[str, str] | None:
        with self._lock:
            return self._reasons.get((uid, name))

    def forget_pod(self, uid: str) -> None:
        with self._lock:
            for key in [k for k in self._reasons if k[0] == uid]:
                del self._reasons[key]


# ---- container statuses ----

def terminated_reason(cs: ContainerStatus) -> str:
    """The runtime's reason, or CRI runtimes' usual one when it gave none."""
    if cs.reason:
        return cs.reason
    return "Completed" if cs.exit_code == 0 else "Error"


def convert_container_status(cs: ContainerStatus, old: core_pb2.ContainerStatus | None,
                             runtime_name: str) -> core_pb2.ContainerStatus:
    """One runtime container as an API ContainerStatus (convertContainerStatus)."""
    out = core_pb2.ContainerStatus(name=cs.name, restart_count=cs.restart_count, image=cs.image,
                                   image_id=cs.image_ref, container_id=f"{runtime_name}://{cs.id}")
    if cs.state == CONTAINER_RUNNING:
        out.state.running.started_at = _time(cs.started_at)
    elif cs.state == CONTAINER_EXITED:
        t = out.state.terminated
        t.exit_code, t.reason, t.message = cs.exit_code, terminated_reason(cs), cs.message
        t.started_at, t.finished_at = _time(cs.started_at), _time(cs.finished_at)
    elif cs.state == CONTAINER_UNKNOWN and old is not None and old.state.HasField("running"):
        # it was running and the runtime lost it: report it dead, and count a restart
        t = out.state.terminated
        t.exit_code, t.reason = 137, CONTAINER_STATUS_UNKNOWN
        t.message = "The container could not be located when the pod was terminated"
        out.restart_count = old.restart_count + 1
    else:  # created, or unknown: waiting to run
        out.state.waiting.SetInParent()
    return out


def convert_container_statuses(pod: core_pb2.Pod, runtime: PodRuntimeStatus,
                               containers: Iterable[core_pb2.Container],
                               previous: Iterable[core_pb2.ContainerStatus], *,
                               is_init: bool, runtime_name: str,
                               reasons: ReasonCache | None = None) -> list[core_pb2.ContainerStatus]:
    """The statuses of ``containers`` (the init or the regular ones) as
    Kubernetes' convertToAPIContainerStatuses: a default waiting state, the
    newest runtime container as state and the one before as lastState, a
    vanished running container as terminated ContainerStatusUnknown, and the
    last start failure (reasons) as the waiting reason of one that will be
    restarted."""
    containers = list(containers)
    old = {s.name: s for s in previous}
    default_reason = POD_INITIALIZING if pod.spec.init_containers else CONTAINER_CREATING
    statuses: dict[str, core_pb2.ContainerStatus] = {}
    for c in containers:
        st = core_pb2.ContainerStatus(name=c.name, image=c.image)
        st.state.waiting.reason = default_reason
        before = old.get(c.name)
        if before is not None:
            if before.state.HasField("terminated"):
                st.CopyFrom(before)
            else:
                st.restart_count = before.restart_count
                st.last_state.CopyFrom(before.last_state)
        statuses[c.name] = st

    for c in containers:
        if runtime.find(c.name) is not None:
            continue
        before = old.get(c.name)
        if before is None or before.state.HasField("terminated") or not before.state.HasField("running"):
            continue
        st = statuses[c.name]
        if not (st.state.HasField("waiting") and st.state.waiting.reason == default_reason):
            continue
        if st.last_state.HasField("terminated"):
            continue
        # it ran, and the runtime has no trace of it: show it stopped, not creating
        t = st.last_state.terminated
        t.exit_code, t.reason = 137, CONTAINER_STATUS_UNKNOWN
        t.message = "The container could not be located when the pod was deleted.  The container used to be Running"
        if not pod.metadata.deletion_timestamp:
            st.restart_count += 1

    seen: dict[str, int] = {}
    for cs in runtime.containers:  # newest first
        if cs.name not in statuses or seen.get(cs.name, 0) >= 2:
            continue
        converted = convert_container_status(cs, old.get(cs.name), runtime_name)
        if not converted.image:
            converted.image = statuses[cs.name].image
        if seen.get(cs.name, 0) == 0:
            statuses[cs.name] = converted
        else:
            statuses[cs.name].last_state.CopyFrom(converted.state)
        seen[cs.name] = seen.get(cs.name, 0) + 1

    for c in containers:
        if is_init:
            newest = runtime.find(c.name)
            if newest is not None and newest.state == CONTAINER_EXITED and newest.exit_code == 0:
                continue  # a succeeded init container is not run again
        if not should_container_be_restarted(c, pod, runtime):
            continue
        cached = reasons.get(pod.metadata.uid, c.name) if reasons is not None else None
        if cached is None:
            continue  # it will be (re)started soon: keep its current state
        st = statuses[c.name]
        if st.state.HasField("terminated"):
            st.last_state.CopyFrom(st.state)
        st.state.Clear()
        st.state.waiting.reason, st.state.waiting.message = cached

    if is_init:
        return [statuses[c.name] for c in containers]
    return [statuses[name] for name in sorted(statuses)]


def apply_probe_results(pod: core_pb2.Pod, container_statuses, init_statuses,
                        probe_results=None) -> None:
    """started and ready of each container (the prober manager's UpdatePodStatus):
    started once its startup probe succeeded (at once without one); ready once
    started and its readiness probe succeeded (at once without one). An init
    container is ready when it exited 0."""
    specs = {c.name: c for c in pod.spec.containers}
    for st in container_statuses:
        spec = specs.get(st.name)
        cid = st.container_id.split("://", 1)[-1]
        running = st.state.HasField("running")
        if not running or spec is None:
            started = False
        elif spec.HasField("startup_probe"):
            started = probe_results is not None and probe_results.get(STARTUP, cid) == SUCCESS
        else:
            started = True
        st.started = started
        if not started:
            st.ready = False
            continue
        if spec.HasField("readiness_probe"):
            st.ready = probe_results is not None and probe_results.get(READINESS, cid) == SUCCESS
        else:
            st.ready = True
    for st in init_statuses:
        st.ready = st.state.HasField("terminated") and st.state.terminated.exit_code == 0
        st.started = st.state.HasField("running")


# ---- phase and conditions ----

def _find(statuses: Iterable[core_pb2.ContainerStatus], name: str) -> core_pb2.ContainerStatus | None:
    for s in statuses:
        if s.name == name:
            return s
    return None


def get_phase(pod: core_pb2.Pod, statuses: list[core_pb2.ContainerStatus], terminal: bool = False) -> str:
    """Kubernetes' getPhase: from the init and regular container statuses and
    the restart policy. ``terminal``: the pod is done and nothing restarts."""
    pending_init = failed_init = 0
    for c in pod.spec.init_containers:
        st = _find(statuses, c.name)
        if st is None:
            pending_init += 1
        elif st.state.HasField("running"):
            pending_init += 1
        elif st.state.HasField("terminated"):
            if st.state.terminated.exit_code != 0:
                failed_init += 1
        elif st.state.HasField("waiting"):
            if st.last_state.HasField("terminated"):
                if st.last_state.terminated.exit_code != 0:
                    failed_init += 1
            else:
                pending_init += 1
        else:
            pending_init += 1
    unknown = running = waiting = stopped = succeeded = 0
    for c in pod.spec.containers:
        st = _find(statuses, c.name)
        if st is None:
            unknown += 1
        elif st.state.HasField("running"):
            running += 1
        elif st.state.HasField("terminated"):
            stopped += 1
            if st.state.terminated.exit_code == 0:
                succeeded += 1
        elif st.state.HasField("waiting"):
            if st.last_state.HasField("terminated"):
                stopped += 1
            else:
                waiting += 1
        else:
            unknown += 1
    policy = pod.spec.restart_policy or "Always"
    if failed_init and policy == "Never":
        return "Failed"
    if (pending_init and not terminal) or waiting:
        return "Pending"
    if running and not unknown:
        return "Running"
    if not running and stopped and not unknown:
        if terminal:
            return "Succeeded" if stopped == succeeded else "Failed"
        if policy == "Always":
            return "Running"  # all restarting
        if stopped == succeeded:
            return "Succeeded"
        if policy == "Never":
            return "Failed"
        return "Running"  # OnFailure: restarting the failed ones
    return "Pending"


def initialized_condition(pod: core_pb2.Pod, statuses: list[core_pb2.ContainerStatus],
                          phase: str) -> tuple[str, str, str]:
    """(status, reason, message) of Initialized; ``statuses``: init and regular."""
    unknown, incomplete = [], []
    for c in pod.spec.init_containers:
        st = _find(statuses, c.name)
        if st is None:
            unknown.append(c.name)
        elif not st.ready:
            incomplete.append(c.name)
    if phase == "Succeeded" and not unknown:
        return "True", POD_COMPLETED, ""
    regular = {c.name for c in pod.spec.containers}
    if any(s.name in regular and (s.state.HasField("running") or s.state.HasField("terminated"))
           for s in statuses):
        return "True", "", ""  # a regular container ran: it was initialized before
    messages = []
    if unknown:
        messages.append(f"containers with unknown status: {_go_list(unknown)}")
    if incomplete:
        messages.append(f"containers with incomplete status: {_go_list(incomplete)}")
    if messages:
        return "False", CONTAINERS_NOT_INITIALIZED, ", ".join(messages)
    return "True", "", ""


def containers_ready_condition(pod: core_pb2.Pod, statuses: list[core_pb2.ContainerStatus],
                               phase: str) -> tuple[str, str, str]:
    unknown, unready = [], []
    for c in pod.spec.containers:
        st = _find(statuses, c.name)
        if st is None:
            unknown.append(c.name)
        elif not st.ready:
            unready.append(c.name)
    if (phase == "Succeeded" and not unknown) or phase == "Failed":
        return "False", POD_COMPLETED if phase == "Succeeded" else POD_FAILED, ""
    messages = []
    if unknown:
        messages.append(f"containers with unknown status: {_go_list(unknown)}")
    if unready:
        messages.append(f"containers with unready status: {_go_list(unready)}")
    if messages:
        return "False", CONTAINERS_NOT_READY, ", ".join(messages)
    return "True", "", ""


# ---- the whole status ----

def generate_pod_status(pod: core_pb2.Pod, runtime: PodRuntimeStatus, *, runtime_name: str,
                        host_ip: str = "", now: float | None = None,
                        reasons: ReasonCache | None = None, probe_results=None,
                        terminal: bool = False) -> core_pb2.PodStatus:
    """The status to write for ``pod`` (its current status is the previous
    one: restart counts, lastState, condition times and startTime carry over).
    ``probe_results``: anything with ``get(kind, container_id)``."""
    stamp = now_rfc3339(now)
    prev = pod.status
    s = core_pb2.PodStatus()
    s.init_container_statuses.extend(convert_container_statuses(
        pod, runtime, pod.spec.init_containers, prev.init_container_statuses, is_init=True,
        runtime_name=runtime_name, reasons=reasons))
    s.container_statuses.extend(convert_container_statuses(
        pod, runtime, pod.spec.containers, prev.container_statuses, is_init=False,
        runtime_name=runtime_name, reasons=reasons))
    apply_probe_results(pod, s.container_statuses, s.init_container_statuses, probe_results)
    every = [*s.init_container_statuses, *s.container_statuses]

    s.phase = get_phase(pod, every, terminal)
    if prev.phase in TERMINAL_PHASES and s.phase != prev.phase:
        s.phase = prev.phase  # a finished pod never comes back
    if s.phase == prev.phase:
        s.reason, s.message = prev.reason, prev.message

    s.conditions.extend(prev.conditions)
    ready_to_start = "False" if sandbox_changed(pod, runtime)[0] else "True"
    set_condition(s.conditions, "PodReadyToStartContainers", ready_to_start, stamp)
    st, reason, message = initialized_condition(pod, every, s.phase)
    set_condition(s.conditions, "Initialized", st, stamp, reason=reason, message=message)
    st, reason, message = containers_ready_condition(pod, every, s.phase)
    set_condition(s.conditions, "ContainersReady", st, stamp, reason=reason, message=message)
    set_condition(s.conditions, "Ready", st, stamp, reason=reason, message=message)
    set_condition(s.conditions, "PodScheduled", "True", stamp)

    s.host_ip = host_ip or prev.host_ip
    ips = runtime.ips
    if ips:
        s.pod_ip = ips[0]
        s.pod_ips.extend(core_pb2.PodIP(ip=ip) for ip in ips)
    elif prev.pod_ip and s.phase in TERMINAL_PHASES:
        s.pod_ip = prev.pod_ip  # a finished pod keeps the IP it had
        s.pod_ips.extend(prev.pod_ips)
    s.start_time = prev.start_time or stamp
    s.qos_class = qos_class(pod.spec)
    s.nominated_node_name = prev.nominated_node_name
    return s


def all_running_snapshot(pod: core_pb2.Pod, pod_ip: str, now: float) -> PodRuntimeStatus:
    """A runtime snapshot in which the pod's init containers succeeded and its
    containers run (since their last reported start, else ``now``), keeping the
    restart counts of its current status: what a hollow node reports through
    ``generate_pod_status``."""
    old = {cs.name: cs for cs in (*pod.status.init_container_statuses, *pod.status.container_statuses)}
    uid = pod.metadata.uid
    containers = []
    for i, c in enumerate(pod.spec.init_containers):
        before = old.get(c.name)
        done = parse_time(before.state.terminated.finished_at) if before is not None else None
        containers.append(ContainerStatus(
            id=f"{uid[:8]}-{c.name}", name=c.name, state=CONTAINER_EXITED, created_at=now - 1 + i * 1e-3,
            started_at=done or now, finished_at=done or now, reason="Completed", image=c.image,
            annotations={labels.CONTAINER_HASH: labels.container_hash(c)}))
    for i, c in enumerate(pod.spec.containers):
        before = old.get(c.name)
        started = parse_time(before.state.running.started_at) if before is not None else None
        restarts = before.restart_count if before is not None else 0
        containers.append(ContainerStatus(
            id=f"{uid[:8]}-{c.name}", name=c.name, state=CONTAINER_RUNNING, created_at=now + i * 1e-3,
            started_at=started or now, image=c.image,
            annotations={labels.CONTAINER_HASH: labels.container_hash(c),
                         labels.CONTAINER_RESTART_COUNT: str(restarts)}))
    return PodRuntimeStatus(uid=uid, name=pod.metadata.name, namespace=pod.metadata.namespace,
                            sandboxes=[SandboxStatus(id=f"{uid[:8]}-sandbox", ip=pod_ip, created_at=now)],
                            containers=containers)


def status_differs(a: core_pb2.PodStatus, b: core_pb2.PodStatus) -> bool:
    """True when writing ``b`` over ``a`` changes more than condition timestamps
    (a kubelet writes only when something changed)."""
    def strip(s: core_pb2.PodStatus) -> core_pb2.PodStatus:
        c = core_pb2.PodStatus()
        c.CopyFrom(s)
        for cond in c.conditions:
            cond.last_probe_time = ""
        return c
    return strip(a) != strip(b)

