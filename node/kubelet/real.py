"""The real kubelet: one node's pods run as containers through a CRI runtime.

``RealKubelet(client, runtime, images, node_name, ...)`` registers its node and
heartbeats (nodeagent.py), watches the pods bound to it, and syncs each one
level-based on a work queue (podsync.py: plan with actions.py, act through
CRI), then writes the status Kubernetes would (status.py). What makes a pod
sync again:

- the pod changed in the apiserver (the informer);
- one of its containers changed state in the runtime: a relist every second
  compares ListContainers with the last one (Kubernetes' PLEG), unless the
  pod's last sync already read them in that state (its own starts);
- a liveness or startup probe result changed (a failure means a restart);
- its own requeue: soon while something waits (a back-off, a pull), else
  every ``sync_period``.

A readiness result that changed does not wait for a pod worker: as
Kubernetes' status manager, a status worker writes the pod's new status (its
containers read again, nothing started or stopped), so a pod goes Ready while
the pod workers are busy starting other pods. And a container seen running
with no readiness result yet gets its first probe at once (as Kubernetes'
UpdatePodStatus triggers it), not a period after the pod was added.

A deleted pod is stopped with its grace period and then removed from the
apiserver (grace 0), as the kubelet's status manager does; a pod gone from
the apiserver, or unknown to it, is stopped and removed from the runtime.
``stop()`` leaves containers running: a restarted kubelet reads them back by
their labels and keeps them (their spec hashes match), with their restart
counts.

Run alone: ``python -m node.kubelet --server 127.0.0.1:6443
--container-runtime-endpoint unix:///run/kp3fa2-n0/cri.sock --node-name node-0 --node-ip 10.250.0.1
--pod-cidr 10.244.0.0/24 --root-dir DIR [--node-netns kp3fa2-n0]`` (``python -m node.kubelet.real``
is the same). Under DIR: ``logs/`` (the pods'
container logs, as /var/log/pods) and ``pods/<uid>/volumes`` (as /var/lib/kubelet/pods).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import os
import signal
import ssl
import threading
import time

import goflags

from apiserver.errors import ApiError
from apiserver.pb import core_pb2
from apiserver.quantity import bytes_of
from controllers.events import EventRecorder
from controllers.informer import Informer, deep_copy, meta_namespace_key
from controllers.workqueue import RateLimitingQueue, start_workers
from node.cri.client import CriError
from node.kubelet.backoff import INITIAL, MAX, Backoff
from node.kubelet.cri_containers import CriContainers
from node.kubelet.cri_status import container_states, pods_on_runtime, read_pod
from node.kubelet.hooks import HookRunner
from node.kubelet.images import ImagePuller
from node.kubelet.metrics import KubeletMetrics
from node.kubelet import podcgroups
from node.kubelet.nodeagent import NodeAgent
from node.kubelet.actions import PodActions
from node.kubelet.podsync import PodSyncer, SyncResult
from node.kubelet.probes import READINESS, SUCCESS, Prober, ProbeManager, ProbeResults, default_connect
from node.kubelet.runtime_status import CONTAINER_RUNNING, SANDBOX_READY
from node.kubelet.satoken import TokenRefresher, token_manager
from node.kubelet.server import KubeletServer
from node.kubelet.stats import StatsEndpoints
from node.kubelet.stats.collector import HOUSEKEEPING_INTERVAL, StatsCollector
from node.kubelet.status import (DEADLINE_EXCEEDED, ReasonCache, active_deadline_exceeded,
                                 generate_pod_status, status_differs)
from node.kubelet.volumes import Volumes

log = logging.getLogger("node.kubelet.real")

TERMINAL = ("Succeeded", "Failed")


class RealKubelet:
    """``runtime`` / ``images``: node.cri.client RuntimeService / ImageService;
    ``connect(host, port, timeout)``: how probes reach pod IPs (inside the
    node's netns: ``functools.partial(node.network.netns.connect_in, netns)``)."""

    def __init__(self, client, runtime, images, node_name: str, *, node_ip: str, root: str,
                 pod_cidr: str = "", capacity: dict[str, str] | None = None,
                 labels: dict[str, str] | None = None, connect=default_connect, workers: int = 4,
                 sync_period: float = 10.0, retry_period: float = 1.0, relist_period: float = 1.0,
                 heartbeat_interval: float = 10.0, status_interval: float = 60.0,
                 backoff: tuple[float, float] = (INITIAL, MAX), address: str = "127.0.0.1",
                 port: int | None = 0, cgroup_root: str = "", dns=None,
                 register_taints: list[tuple[str, str, str]] = (), stream_netns: str = "",
                 server_tls=None, server_auth=None, node_netns: str = "",
                 housekeeping_interval: float = HOUSEKEEPING_INTERVAL) -> None:
        """``backoff``: the restart back-off's first delay and cap (Kubernetes' 10 s and 300 s).
        ``address``/``port``: where the kubelet API (logs, exec) listens for the apiserver (port 0:
        any free one, published in the Node's daemonEndpoints; None: no API). ``cgroup_root``: the
        cgroup the pods' cgroups go under (Kubernetes' --cgroup-root), sent to the runtime as each
        sandbox's cgroup_parent; "" sends none. ``dns``: a
        node.kubelet.dns.DnsConfigurer for the pods' resolv.conf (None: the runtime's default).
        ``stream_netns``: the network namespace the runtime's streaming URLs are dialled in ("":
        the kubelet's own; a runtime inside the node's namespace, as the tests run containerd,
        serves its streams on that namespace's loopback). ``server_tls``/``server_auth``: the kubelet
        API's TLS context and who may call it (node.kubelet.auth); None: plain text, everyone.
        ``node_netns``: the node's network namespace (its interfaces in /stats/summary);
        ``housekeeping_interval``: seconds between the resource figures' passes (cAdvisor's
        --housekeeping-interval), which /stats/summary and /metrics/resource serve."""
        self.client, self.runtime, self.image_service = client, runtime, images
        self.node_name, self.node_ip, self.pod_cidr = node_name, node_ip, pod_cidr
        self.root = root
        self.cgroup_root = cgroup_root
        self.sync_period, self.retry_period, self.relist_period = sync_period, retry_period, relist_period
        version = runtime.version()
        self.runtime_name = version.runtime_name or "cri"
        self.agent = NodeAgent(client, node_name, node_ip=node_ip, pod_cidr=pod_cidr, capacity=capacity,
                               labels=labels, runtime_version=f"{self.runtime_name}://{version.runtime_version}",
                               ready=self._runtime_ready, heartbeat_interval=heartbeat_interval,
                               status_interval=status_interval, register_taints=register_taints)
        memory = self.agent.capacity.get("memory", "0")
        self.recorder = EventRecorder(client, "kubelet", node_name)
        self.reasons = ReasonCache()
        self.backoff = Backoff(*backoff)
        self.probe_results = ProbeResults(on_change=self._probe_changed)
        puller = ImagePuller(self._image_ref, self._pull, Backoff())
        self.volumes = Volumes(root, self._get, tokens=token_manager(client))
        # ServiceAccount tokens renewed when due (80% of their life), not only at a pod's sync
        self.token_refresher = TokenRefresher(self.volumes.tokens, self._refresh_tokens)
        self.syncer = PodSyncer(runtime, puller, log_root=os.path.join(root, "logs"), backoff=self.backoff,
                                reasons=self.reasons, probe_results=self.probe_results,
                                get=self._get, memory_capacity=bytes_of(memory), host_ip=node_ip,
                                node_allocatable=self.agent.capacity,
                                hooks=HookRunner(exec_sync=self._exec_sync, connect=connect),
                                recorder=self.recorder, volumes=self.volumes, cgroup_root=cgroup_root,
                                dns=dns)
        self.probes = ProbeManager(self.probe_results, Prober(exec_sync=self._exec_sync, connect=connect),
                                   self._status_of, on_failure=self._unhealthy)
        self.pods = Informer(client, "pods", field_selector=f"spec.nodeName={node_name}")
        self.pods.add_handler(self._pod_added, lambda old, new: self._pod_added(new), self._pod_deleted)
        self.queue = RateLimitingQueue(name=f"kubelet-{node_name}")
        self.status_queue = RateLimitingQueue(name=f"kubelet-status-{node_name}")
        self._n_workers = workers
        self._seen: dict[str, dict[str, str]] = {}  # uid -> {container id: state} its last sync read
        self._pod_locks: dict[str, threading.Lock] = {}  # key -> held by the sync or status write of a pod
        self.metrics = KubeletMetrics(node_name)
        self.collector = StatsCollector(runtime, images, root=root, node_netns=node_netns,
                                        interval=housekeeping_interval) if port is not None else None
        stats = StatsEndpoints(self.collector, node_name, self.metrics, runtime, bytes_of(memory) or None) \
            if self.collector is not None else None
        self.server = KubeletServer(CriContainers(runtime, self._status_by_name, self._pods_with_status),
                                    host=address, port=port,
                                    stream_netns=stream_netns, ssl_context=server_tls,
                                    auth=server_auth, stats=stats) if port is not None else None
        self._lock = threading.Lock()
        self._statuses: dict[str, core_pb2.PodStatus] = {}   # uid -> the status last generated
        self._keys: dict[str, str] = {}                      # uid -> ns/name
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # ---- lifecycle ----

    def start(self) -> RealKubelet:
        os.makedirs(os.path.join(self.root, "logs"), exist_ok=True)
        if self.pod_cidr:
            self.runtime.update_runtime_config(self.pod_cidr)
        if self.server is not None:
            self.collector.start()
            self.agent.kubelet_port = self.server.start()
        self.agent.start()
        self.probes.start()
        self.pods.start()
        self._threads += start_workers(self.queue, self._sync, self._n_workers, f"kubelet-{self.node_name}")
        self._threads += start_workers(self.status_queue, self._sync_status, 2, f"kubelet-status-{self.node_name}")
        relist = threading.Thread(target=self._relist_loop, name=f"relist-{self.node_name}", daemon=True)
        relist.start()
        self._threads.append(relist)
        self.token_refresher.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stops the kubelet; its pods' containers keep running."""
        self._stop.set()
        self.token_refresher.stop()
        self.queue.shut_down()
        self.status_queue.shut_down()
        self.pods.stop()
        self.probes.stop()
        self.agent.stop()
        for t in self._threads:
            t.join(timeout)
        self.syncer.close()
        self.recorder.stop()
        if self.server is not None:
            self.server.stop()
            self.collector.stop()

    def wait_synced(self, timeout: float = 30.0) -> bool:
        return self.pods.wait_for_sync(timeout)

    # ---- runtime glue ----

    def _runtime_ready(self) -> tuple[bool, str]:
        try:
            conds = {c.type: c for c in self.runtime.status().status.conditions}
        except CriError as e:
            return False, f"container runtime is down: {e}"
        for t in ("RuntimeReady", "NetworkReady"):
            c = conds.get(t)
            if c is not None and not c.status:
                return False, f"container runtime not ready: {t}=false reason:{c.reason} message:{c.message}"
        return True, ""

    def _image_ref(self, image: str) -> str:
        resp = self.image_service.image_status(image)
        return resp.image.id if resp.HasField("image") else ""

    def _pull(self, image: str) -> str:
        return self.image_service.pull_image(image)

    def _exec_sync(self, container_id: str, cmd: list, timeout: float):
        try:
            resp = self.runtime.exec_sync(container_id, cmd, max(1, int(timeout)))
        except CriError as e:
            if e.timed_out:
                raise TimeoutError(str(e)) from None
            raise
        return resp.exit_code, bytes(resp.stdout) + bytes(resp.stderr)

    def _get(self, kind: str, namespace: str, name: str):
        """The ConfigMap, Secret, PersistentVolumeClaim or PersistentVolume (kind) as the apiserver
        has it now (a change shows at the next sync); None when there is none."""
        try:
            return self.client.get(kind, name, namespace)
        except ApiError as e:
            if e.reason == "NotFound":
                return None
            raise

    # ---- events ----

    def _pod_added(self, pod) -> None:
        self.metrics.pod_seen(pod.metadata.uid)
        with self._lock:
            self._keys[pod.metadata.uid] = meta_namespace_key(pod)
        self.queue.add(meta_namespace_key(pod))

    def _pod_deleted(self, pod) -> None:
        self.queue.add(("gone", pod.metadata.uid))

    def _probe_changed(self, kind: str, container_id: str, result: str, uid: str) -> None:
        with self._lock:
            key = self._keys.get(uid)
        if key:
            # readiness only changes the status; liveness and startup may restart a container
            (self.status_queue if kind == READINESS else self.queue).add(key)

    def _unhealthy(self, pod, kind: str, container: str, output: str) -> None:
        self.recorder.event(pod, "Warning", "Unhealthy", f"{kind.capitalize()} probe failed: {output}")

    def _status_by_name(self, namespace: str, name: str):
        """The status last generated for the pod now named namespace/name (None: not synced yet)."""
        pod = self.pods.store.get(f"{namespace}/{name}")
        return self._status_of(pod.metadata.uid) if pod is not None else None

    def _pods_with_status(self) -> list:
        """The pods bound to this node, each with the status last generated for it (the
        apiserver's where none was yet): the kubelet's /pods."""
        out = []
        for pod in sorted(self.pods.store.list(), key=lambda p: (p.metadata.namespace, p.metadata.name)):
            status = self._status_of(pod.metadata.uid)
            if status is not None:
                pod = core_pb2.Pod(metadata=pod.metadata, spec=pod.spec, status=status)
            out.append(pod)
        return out

    def _status_of(self, uid: str):
        with self._lock:
            return self._statuses.get(uid)

    def _refresh_tokens(self, uid: str) -> None:
        """The token refresher's: write the token volumes of pod ``uid`` again (new tokens for
        those due). A pod this kubelet no longer has keeps nothing."""
        with self._lock:
            key = self._keys.get(uid)
        pod = self.pods.store.get(key) if key else None
        if pod is None or pod.metadata.uid != uid:
            self.volumes.tokens.forget(uid)
            return
        self.volumes.refresh_tokens(pod)

    def _relist_loop(self) -> None:
        """Kubernetes' PLEG: a pod whose containers changed state syncs at once;
        containers of pods the apiserver does not know are cleaned up."""
        before: dict[str, tuple[str, str]] = {}
        while not self._stop.wait(self.relist_period):
            began = time.monotonic()
            try:
                now = container_states(self.runtime)
                self.metrics.pleg_relist.observe(time.monotonic() - began)
            except CriError as e:
                log.warning("relist failed: %s", e)
                continue
            changed = {uid for cid, (uid, state) in now.items() if before.get(cid) != (uid, state)}
            changed |= {uid for cid, (uid, _) in before.items() if cid not in now}
            before = now
            synced = self.pods.has_synced()
            for uid in changed:
                with self._lock:
                    key = self._keys.get(uid)
                    seen = self._seen.get(uid)
                if key:
                    if seen is not None and seen == {cid: st for cid, (u, st) in now.items() if u == uid}:
                        continue  # its last sync already read the containers as they are now
                    self.queue.add(key)
                elif synced:
                    self.queue.add(("gone", uid))

    # ---- the sync ----

    def _pod_lock(self, key: str) -> threading.Lock:
        with self._lock:
            return self._pod_locks.setdefault(key, threading.Lock())

    def _sync(self, key) -> None:
        if isinstance(key, tuple):
            self._cleanup(key[1])
            return
        with self._pod_lock(key):
            self._sync_pod(key)

    def _sync_status(self, key: str) -> None:
        """A readiness result changed: write the pod's status again, from its containers as the
        runtime has them now, without starting or stopping anything. Anything beyond a status
        (a terminal or deleted pod, a conflict) goes to the pod workers."""
        lock = self._pod_lock(key)
        if not lock.acquire(blocking=False):
            # its pod worker is at it: what it writes may predate the result, so look again soon
            self.status_queue.add_after(key, 0.2)
            return
        with contextlib.ExitStack() as held:
            held.callback(lock.release)
            pod = self.pods.store.get(key)
            if pod is None or pod.spec.node_name != self.node_name:
                return
            if pod.metadata.deletion_timestamp or pod.status.phase in TERMINAL or \
                    active_deadline_exceeded(pod, time.time()):
                self.queue.add(key)
                return
            status = generate_pod_status(pod, self.syncer.read(pod), runtime_name=self.runtime_name,
                                         host_ip=self.node_ip, reasons=self.reasons,
                                         probe_results=self.probe_results)
            with self._lock:
                self._statuses[pod.metadata.uid] = status
            if not status_differs(pod.status, status):
                return
            updated = deep_copy(pod)
            updated.status.CopyFrom(status)
            try:
                self.client.update_status(updated)
            except ApiError as e:
                if e.reason not in ("Conflict", "NotFound"):
                    raise
                self.queue.add(key)  # a newer pod: the pod worker reads it and writes the status

    def _trigger_readiness(self, pod, status) -> None:
        """A running container not Ready yet is probed now (Kubernetes' UpdatePodStatus does
        the same at each status), not a period after its worker began."""
        uid = pod.metadata.uid
        for cs in status.container_statuses:
            if cs.state.HasField("running") and cs.container_id and \
                    self.probe_results.get(READINESS, cs.container_id.split("://", 1)[-1]) != SUCCESS:
                self.probes.trigger(uid, cs.name, READINESS)

    def _sync_pod(self, key: str) -> None:
        pod = self.pods.store.get(key)
        if pod is None or pod.spec.node_name != self.node_name:
            return
        uid = pod.metadata.uid
        self.probes.add_pod(pod)
        fail_with = None
        if pod.status.phase in TERMINAL and not pod.metadata.deletion_timestamp:
            # a finished pod is never started again, whatever its restartPolicy: only stopped
            self.syncer.kill_pod(pod, self.syncer.read(pod))
            result = SyncResult(PodActions(kill_pod=True), [], {})
        elif not pod.metadata.deletion_timestamp and active_deadline_exceeded(pod, time.time()):
            fail_with = DEADLINE_EXCEEDED  # the kubelet ends the pod: stopped, never restarted
            self.syncer.kill_pod(pod, self.syncer.read(pod))
            result = SyncResult(PodActions(kill_pod=True), [], {})
        else:
            result = self.syncer.sync(pod)
        runtime = result.unchanged if result.unchanged is not None else self.syncer.read(pod)
        with self._lock:  # what the relist need not tell us again
            self._seen[uid] = {c.id: c.state for c in runtime.containers}
        if pod.metadata.deletion_timestamp:
            self._finish_deletion(key, pod, runtime)
            return
        status = generate_pod_status(pod, runtime, runtime_name=self.runtime_name, host_ip=self.node_ip,
                                     reasons=self.reasons, probe_results=self.probe_results,
                                     fail_with=fail_with)
        with self._lock:
            self._statuses[uid] = status
        if status.phase == "Running" and pod.status.phase != "Running":
            self.metrics.pod_running(uid)
        self._trigger_readiness(pod, status)
        if status_differs(pod.status, status):
            updated = deep_copy(pod)
            updated.status.CopyFrom(status)
            try:
                self.client.update_status(updated)
            except ApiError as e:
                if e.reason not in ("Conflict", "NotFound"):
                    raise
                self.queue.add_after(key, self.retry_period)  # read the newer pod, then write
                return
        settled = (status.phase in TERMINAL) or (
            not result.failed and not result.sandbox_error and not result.actions.containers_to_start
            and not result.actions.next_init_container and not result.actions.create_sandbox
            # a running container that is not Ready yet needs no sync: its readiness result
            # reaches the status through the status workers
            and all(cs.ready or cs.state.HasField("running") for cs in status.container_statuses))
        delay = self.sync_period if settled else self.retry_period
        if result.failed and set(result.failed.values()) == {"CrashLoopBackOff"} and result.retry_after:
            # nothing to do before the back-off ends (a container's death is seen by the relist)
            delay = min(self.sync_period, max(self.retry_period, result.retry_after))
        self.queue.add_after(key, delay)

    def _finish_deletion(self, key: str, pod, runtime) -> None:
        """Everything of a deleted pod is stopped: remove it from the apiserver."""
        live = any(c.state == CONTAINER_RUNNING for c in runtime.containers) or \
            any(s.state == SANDBOX_READY for s in runtime.sandboxes)
        if live:
            self.queue.add_after(key, self.retry_period)
            return
        try:
            self.client.delete("pods", pod.metadata.name, pod.metadata.namespace, uid=pod.metadata.uid,
                               grace_period_seconds=0)
        except ApiError as e:
            if e.reason not in ("NotFound", "Conflict"):
                raise

    def _cleanup(self, uid: str) -> None:
        """The pod is gone from the apiserver: stop and remove what is left of it."""
        with self._lock:
            key = self._keys.get(uid)
            if key is not None:
                current = self.pods.store.get(key)
                if current is not None and current.metadata.uid == uid:
                    return  # it came back (a stale event): nothing to clean
                self._keys.pop(uid, None)
            self._statuses.pop(uid, None)
            self._seen.pop(uid, None)
            if key is not None:
                self._pod_locks.pop(key, None)
        self.probes.remove_pod(uid)
        self.reasons.forget_pod(uid)
        self.metrics.forget(uid)
        runtime = read_pod(self.runtime, uid)
        if runtime.containers or runtime.sandboxes:
            self.syncer.kill_pod(None, runtime)
            self.syncer.remove_pod(runtime)
        self.volumes.teardown(uid)
        if self.cgroup_root:
            busy = podcgroups.remove_pod(self.cgroup_root, uid)
            if busy:
                log.warning("pod %s: cgroups still in use, kept: %s", uid, busy)

    def adopt_or_clean(self) -> int:
        """Once the pod list is known: syncs the runtime's pods the apiserver has
        (kept running when they match) and cleans the others; how many were cleaned."""
        known = {p.metadata.uid for p in self.pods.store.list()}
        gone = [uid for uid in pods_on_runtime(self.runtime) if uid not in known]
        if self.cgroup_root:  # pod cgroups of pods gone while no kubelet ran
            gone += [uid for uid in podcgroups.pod_uids(self.cgroup_root) if uid not in known and uid not in gone]
        for uid in gone:
            self.queue.add(("gone", uid))
        return len(gone)


# ---- the command ----

UNINITIALIZED_TAINT = "node.cloudprovider.kubernetes.io/uninitialized"  # k8s.io/cloud-provider's name

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m node.kubelet",
                                description="A kubelet that runs its node's pods on a CRI runtime.")
    p.add_argument("--server", default="127.0.0.1:6443", help="apiserver address")
    p.add_argument("--container-runtime-endpoint", "--runtime", dest="runtime", required=True,
                   help="CRI endpoint, e.g. unix:///run/kp3fa2-n0/cri.sock")
    p.add_argument("--node-name", required=True)
    p.add_argument("--node-ip", required=True, help="the node's InternalIP")
    p.add_argument("--pod-cidr", default="", help="handed to the runtime (UpdateRuntimeConfig)")
    p.add_argument("--root-dir", "--root", dest="root", required=True,
                   help="the kubelet's directory: pod logs under logs/, volumes under pods/")
    p.add_argument("--node-netns", "--netns", dest="netns", default="",
                   help="the node's network namespace: probes and hooks connect from it")
    p.add_argument("--runtime-wait", type=float, default=60.0,
                   help="seconds to wait for the runtime's socket to answer")
    p.add_argument("--address", default="127.0.0.1", help="where the kubelet API (logs, exec) listens")
    p.add_argument("--port", type=int, default=0,
                   help="the kubelet API's port (0: any free one; Kubernetes' kubelets use 10250, but "
                        "here several share one machine); the Node's daemonEndpoints say which")
    p.add_argument("--runtime-stream-netns", default="",
                   help="the network namespace the runtime's streaming URLs (exec, attach, port-forward) "
                        "are dialled in (default: the kubelet's own; give the node's namespace when the "
                        "runtime runs inside it)")
    p.add_argument("--cgroup-root", default="",
                   help="the cgroup under which pods' cgroups go (<root>/kubepods/<qos>/pod<uid>, given "
                        "to the runtime as cgroup_parent), e.g. /kp3fa2-n0; empty: the runtime chooses")
    p.add_argument("--cpu", default="", help="capacity to report instead of the machine's")
    p.add_argument("--memory", default="", help="capacity to report instead of the machine's")
    p.add_argument("--pods", default="110")
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--heartbeat-interval", type=float, default=10.0)
    p.add_argument("--cluster-dns", default="",
                   help="comma-separated DNS server IPs for pods with dnsPolicy ClusterFirst (the "
                        "kube-dns Service's clusterIP, or the DNS server's own address)")
    p.add_argument("--cluster-domain", default="cluster.local")
    p.add_argument("--resolv-conf", default="/etc/resolv.conf",
                   help="the resolver settings of pods with dnsPolicy Default ('' for none)")
    p.add_argument("--cloud-provider", default="", choices=["", "external"],
                   help="'external': a cloud-controller-manager initializes the Node (providerID, "
                        "zone, instance type): it is registered with the taint "
                        f"{UNINITIALIZED_TAINT}=true:NoSchedule, which that controller removes")
    p.add_argument("--housekeeping-interval", type=duration, default=HOUSEKEEPING_INTERVAL,
                   help="interval between the resource statistics' passes (/stats/summary, /metrics/resource), "
                        "a Go duration (10s, 500ms) or seconds")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    add_server_auth_flags(p)
    add_bootstrap_flags(p)
    return p


def duration(text: str) -> float:
    """Seconds of a Go duration as the kubelet's flags take them ("10s", "500ms", "1m"), or
    a plain number of seconds."""
    try:
        value = goflags.duration(text, bare_seconds=True)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return value


def add_bootstrap_flags(p: argparse.ArgumentParser) -> None:
    """The kubelet's credentials at the apiserver, and its TLS bootstrap (node.kubelet.bootstrap)."""
    p.add_argument("--kubeconfig", default="",
                   help="the kubelet's credentials (default: $KUBECONFIG's); with --bootstrap-kubeconfig, "
                        "where the bootstrapped ones are written (default <root-dir>/kubelet.conf)")
    p.add_argument("--bootstrap-kubeconfig", default="",
                   help="credentials (a bootstrap token) to ask for the node's own client certificate with "
                        "when --kubeconfig has none yet (a CertificateSigningRequest)")
    p.add_argument("--cert-dir", default="",
                   help="where the bootstrapped certificate and key go (default: <root-dir>/pki)")
    p.add_argument("--bootstrap-timeout", type=float, default=300.0,
                   help="seconds to wait for the CertificateSigningRequest to be signed")
    p.add_argument("--rotate-certificates", default="true", choices=["true", "false"],
                   help="with --bootstrap-kubeconfig: renew the client certificate by a new "
                        "CertificateSigningRequest once 70-90%% of its lifetime has passed "
                        "(the kubelet config's rotateCertificates, as kubeadm sets it)")


def start_rotation(args, node_name: str, kubeconfig: str, cert_dir: str, on_rotated, stop):
    """The client-certificate rotation thread when the flags ask for it, else None."""
    if not args.bootstrap_kubeconfig or args.rotate_certificates != "true":
        return None
    from node.kubelet import certrotation

    rotation = certrotation.ClientCertificateRotation(node_name, kubeconfig, cert_dir, on_rotated=on_rotated,
                                                      timeout=args.bootstrap_timeout,
                                                      bootstrap_kubeconfig=args.bootstrap_kubeconfig)
    return certrotation.start([rotation], stop)


def kubelet_credentials(args, node_name: str, cert_dir: str) -> str:
    """The kubeconfig the kubelet talks to the apiserver with ("" : $KUBECONFIG's), bootstrapped
    first when --bootstrap-kubeconfig says so; raises BootstrapError."""
    from node.kubelet.bootstrap import BootstrapError, bootstrap

    if not args.bootstrap_kubeconfig:
        return args.kubeconfig
    kubeconfig = args.kubeconfig or os.path.join(args.root, "kubelet.conf")
    return bootstrap(node_name, kubeconfig, args.bootstrap_kubeconfig, cert_dir, timeout=args.bootstrap_timeout)


def add_server_auth_flags(p: argparse.ArgumentParser) -> None:
    """The kubelet's flags for its own API's TLS and who may call it (node.kubelet.auth)."""
    p.add_argument("--tls-cert-file", default="", help="PEM serving certificate of the kubelet API (TLS)")
    p.add_argument("--tls-private-key-file", default="", help="PEM key of --tls-cert-file")
    p.add_argument("--client-ca-file", default="",
                   help="PEM CA: client certificates it signed authenticate to the kubelet API (CN user, O groups)")
    p.add_argument("--authentication-token-webhook", action="store_true",
                   help="bearer tokens are judged by the apiserver (TokenReview)")
    p.add_argument("--authorization-mode", default="AlwaysAllow", choices=["AlwaysAllow", "Webhook"],
                   help="Webhook: every request is a SubjectAccessReview at the apiserver (nodes/proxy, ...)")
    p.add_argument("--anonymous-auth", default="true", choices=["true", "false"],
                   help="requests without credentials are system:anonymous (else 401)")
    p.add_argument("--rotate-server-certificates", action="store_true",
                   help="without --tls-cert-file: ask for the API's serving certificate by a "
                        "CertificateSigningRequest (signer kubernetes.io/kubelet-serving, approved by an "
                        "administrator) and renew it (the kubelet config's serverTLSBootstrap)")


def server_auth_from(args, node_name: str, server: str, serving=None):
    """(ssl context or None, KubeletAuth or None) for the flags (``serving``: the
    ServingCertificate of --rotate-server-certificates); ValueError/OSError when they do not
    go together or a file cannot be read."""
    from apiserver.client import credentials_for
    from node.kubelet.auth import ApiReviews, KubeletAuth, server_ssl_context

    if bool(args.tls_cert_file) != bool(args.tls_private_key_file):
        raise ValueError("--tls-cert-file and --tls-private-key-file go together")
    if args.tls_cert_file and serving is not None:
        raise ValueError("--rotate-server-certificates asks for the certificate --tls-cert-file gives: one of them")
    if args.client_ca_file and not (args.tls_cert_file or serving):
        raise ValueError("--client-ca-file needs TLS (--tls-cert-file and --tls-private-key-file, or "
                         "--rotate-server-certificates)")
    if serving is not None:
        tls = serving.context()
    else:
        tls = server_ssl_context(args.tls_cert_file, args.tls_private_key_file, args.client_ca_file) \
            if args.tls_cert_file else None
    webhook = args.authorization_mode == "Webhook"
    if not (tls or webhook or args.authentication_token_webhook):
        return None, None
    reviews = ApiReviews(lambda: credentials_for(server)) if webhook or args.authentication_token_webhook else None
    return tls, KubeletAuth(node_name, reviews, token_webhook=args.authentication_token_webhook,
                            webhook_authz=webhook, anonymous=args.anonymous_auth == "true")


def main(argv: list[str] | None = None) -> int:
    from apiserver.client import Client
    from node.cri.client import CriClient
    from node.kubelet.dns import DnsConfigurer
    from node.kubelet.nodeagent import machine_capacity

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.makedirs(args.root, exist_ok=True)
    capacity = machine_capacity(args.root)
    capacity.update({k: v for k, v in (("cpu", args.cpu), ("memory", args.memory), ("pods", args.pods)) if v})
    connect = default_connect
    if args.netns:
        from node.network.netns import connect_in
        connect = functools.partial(connect_in, args.netns)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    from node.kubelet.bootstrap import BootstrapError
    cert_dir = args.cert_dir or os.path.join(args.root, "pki")
    try:
        kubeconfig = kubelet_credentials(args, args.node_name, cert_dir)
    except BootstrapError as e:
        log.error("TLS bootstrap of %s: %s", args.node_name, e)
        return 1
    if kubeconfig:
        # every client of this kubelet (pods' ServiceAccount tokens, the reviews) uses it
        os.environ["KUBECONFIG"] = kubeconfig
    serving = None
    if args.rotate_server_certificates:
        from node.kubelet.servingcert import ServingCertificate

        serving = ServingCertificate(args.node_name, cert_dir, [args.node_ip, args.address],
                                     client_ca_file=args.client_ca_file, timeout=args.bootstrap_timeout)
    try:
        server_tls, server_auth = server_auth_from(args, args.node_name, args.server, serving)
    except (OSError, ValueError, ssl.SSLError) as e:
        log.error("cannot set up the kubelet API's TLS or authentication: %s", e)
        return 2
    with Client(args.server) as client, CriClient(args.runtime) as cri:
        try:
            cri.wait_ready(args.runtime_wait)
        except CriError as e:
            log.error("the container runtime at %s does not answer (%s): is it running, is the "
                      "socket path right?", args.runtime, e)
            return 1
        kubelet = RealKubelet(client, cri, cri.images, args.node_name, node_ip=args.node_ip,
                              root=args.root, pod_cidr=args.pod_cidr, capacity=capacity, connect=connect,
                              workers=args.workers, heartbeat_interval=args.heartbeat_interval,
                              address=args.address, port=args.port, cgroup_root=args.cgroup_root,
                              stream_netns=args.runtime_stream_netns, server_tls=server_tls,
                              server_auth=server_auth, node_netns=args.netns,
                              housekeeping_interval=args.housekeeping_interval,
                              dns=DnsConfigurer(args.cluster_dns.split(","), args.cluster_domain,
                                                args.resolv_conf),
                              register_taints=[(UNINITIALIZED_TAINT, "true", "NoSchedule")]
                              if args.cloud_provider == "external" else []).start()
        start_rotation(args, args.node_name, kubeconfig, cert_dir, [client.reload_credentials], stop)
        if serving is not None:
            from node.kubelet import certrotation

            certrotation.start([serving], stop)
        if kubelet.wait_synced(60):
            kubelet.adopt_or_clean()
        log.info("kubelet of %s on %s (%s) serving", args.node_name, args.runtime, kubelet.runtime_name)
        while not stop.wait(1.0):
            pass
        kubelet.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

