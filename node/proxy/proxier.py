"""The proxier: Services and Endpoints in, one nftables transaction per sync out.

Informer handlers only note which Services changed (and when: the trigger time of the change, for
the network programming latency); the sync, on its own thread behind a bounded-frequency runner,
recomputes the rules of those Services from the caches and writes the difference from what it
last wrote. The first sync, and any sync after a failed one, is full: the whole table is written
over the kernel's and whatever the kernel holds that we no longer want is removed, so a restarted
proxy converges on a table left by its predecessor without duplicating a rule and without a moment
where traffic stops (the old rules serve until the transaction swaps them).

Chains that fall out of use are emptied at once and deleted a second later: before Linux 6.2 the
kernel notices only a moment after a map element is deleted that its chain is unreferenced.

After a sync, conntrack entries of UDP flows are deleted where they would otherwise keep sending
packets to an endpoint that is gone (UDP has no connection end), or keep a service that just got
endpoints (or was just created) black-holed, as upstream's conntrack cleanup does; not after the
first sync of a process, which cannot tell what changed while no proxy ran.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from datetime import datetime

from controllers.informer import Informer, meta_namespace_key

from . import nft, routes, transaction
from .model import SERVICE_NAME_LABEL, endpoints_by_port, endpoints_from_slices, service_ports
from .rules import NodeConfig, Rules, base_rules, service_rules
from .runner import BoundedFrequencyRunner

log = logging.getLogger("node.proxy")

TRIGGER_ANNOTATION = "endpoints.kubernetes.io/last-change-trigger-time"
STALE_CHAIN_DELAY = 1.0


def _trigger_time(obj) -> float:
    """When the change behind an Endpoints object happened (the annotation the endpoints
    controller sets, as upstream), else now."""
    text = obj.metadata.annotations.get(TRIGGER_ANNOTATION, "") if obj is not None else ""
    if text:
        try:
            return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
        except ValueError:
            pass
    return time.time()


class EndpointsSource:
    """The endpoints of a Service, from Endpoints objects. The proxier asks only ``get(key)``
    and ``key_of(obj)``: an EndpointSlice source (slices found by their service-name label) slots
    in here without touching the rules."""

    resource = "endpoints"

    def __init__(self, informer: Informer) -> None:
        self.informer = informer

    @staticmethod
    def key_of(obj) -> str:
        return meta_namespace_key(obj)

    def get(self, key: str):
        return endpoints_by_port(self.informer.store.get(key))


class EndpointSliceSource:
    """The endpoints of a Service from its EndpointSlices (label ``kubernetes.io/service-name``),
    as kube-proxy reads them since Kubernetes 1.19."""

    resource = "endpointslices"
    INDEX = "service"

    def __init__(self, informer: Informer) -> None:
        self.informer = informer
        informer.store.add_indexer(self.INDEX, lambda o: [k] if (k := self.key_of(o)) else [])

    @staticmethod
    def key_of(obj) -> str:
        name = obj.metadata.labels.get(SERVICE_NAME_LABEL, "")
        return f"{obj.metadata.namespace}/{name}" if name else ""

    def get(self, key: str):
        return endpoints_from_slices(self.informer.store.by_index(self.INDEX, key))


SOURCES = {s.resource: s for s in (EndpointsSource, EndpointSliceSource)}


class SyncStats:
    def __init__(self) -> None:
        self.syncs = 0
        self.full_syncs = 0
        self.failures = 0
        self.last_error = ""
        self.last_duration = 0.0
        self.last_rules = 0          # rule lines written by the last sync
        self.last_elements = 0
        self.total_rules = 0         # rules in the table after the last sync
        self.programming_latencies: deque[float] = deque(maxlen=100_000)
        self.sync_durations: deque[tuple[bool, float]] = deque(maxlen=10_000)


class Proxier:
    def __init__(self, client, cfg: NodeConfig, netns: str, *, min_sync_period: float = 1.0,
                 sync_period: float = 30.0, full_sync_period: float = 3600.0,
                 endpoints_source: str = "endpoints", manage_routes: bool = True) -> None:
        self.client = client
        self.manage_routes = manage_routes  # route external IPs the node has no route for
        self._routes: set[str] | None = None  # our external-IP routes (None: not read yet)
        self._routes_wanted: set[str] = set()
        self.cfg = cfg
        self.netns = netns
        self.full_sync_period = full_sync_period
        self.services = Informer(client, "services")
        source = SOURCES[endpoints_source]
        self.endpoints = source(Informer(client, source.resource))
        self.stats = SyncStats()
        self._lock = threading.Lock()
        self._dirty: dict[str, list[float]] = {}
        self._need_full = True
        self._last_full = 0.0
        self._applied: dict[str, Rules] = {}
        self._stale: dict[str, float] = {}
        self._synced_once = threading.Event()
        self.runner = BoundedFrequencyRunner(self._sync, min_sync_period, sync_period,
                                             name=f"proxy-sync-{netns}")
        self.services.add_handler(lambda o: self._changed(meta_namespace_key(o), None),
                                  lambda _o, n: self._changed(meta_namespace_key(n), None),
                                  lambda o: self._changed(meta_namespace_key(o), None))
        ep = self.endpoints
        ep.informer.add_handler(lambda o: self._changed(ep.key_of(o), _trigger_time(o)),
                                lambda _o, n: self._changed(ep.key_of(n), _trigger_time(n)),
                                lambda o: self._changed(ep.key_of(o), time.time()))

    # ---- lifecycle ----

    def start(self, wait_for_sync: float = 60.0) -> "Proxier":
        """Lists and watches, waits until Services and endpoints are listed (never program a
        half-known state: a restarted proxy would remove the rules of what it has not seen yet),
        then syncs, first in full."""
        self.start_informers()
        if not self.informers_synced(wait_for_sync):
            raise TimeoutError(f"services and {self.endpoints.resource} not listed within "
                               f"{wait_for_sync}s: is the apiserver at {self.client.server} up?")
        return self.start_syncing()

    def start_informers(self) -> None:
        self.services.start()
        self.endpoints.informer.start()

    def informers_synced(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        return all(inf.wait_for_sync(max(0.0, deadline - time.monotonic()))
                   for inf in (self.services, self.endpoints.informer))

    def start_syncing(self) -> "Proxier":
        self.runner.start()
        self.runner.run()
        return self

    def stop(self) -> None:
        """Stops syncing; the rules stay in the kernel (traffic keeps flowing, as upstream)."""
        self.runner.stop()
        self.services.stop()
        self.endpoints.informer.stop()

    def wait_synced(self, timeout: float) -> bool:
        return self._synced_once.wait(timeout)

    def sync_now(self) -> None:
        self.runner.run()

    # ---- changes ----

    def _changed(self, key: str, trigger: float | None) -> None:
        if not key:
            return  # an EndpointSlice of no Service
        with self._lock:
            times = self._dirty.setdefault(key, [])
            if trigger is not None:
                times.append(trigger)
        self.runner.run()

    # ---- sync ----

    def _rules_of(self, key: str) -> Rules:
        svc = self.services.store.get(key)
        if svc is None:
            return Rules()
        ports = service_ports(svc)
        if not ports:
            return Rules()
        return service_rules(self.cfg, ports, self.endpoints.get(key))

    def _sync(self) -> float | None:
        start = time.monotonic()
        with self._lock:
            dirty, self._dirty = self._dirty, {}
            full = self._need_full or (time.monotonic() - self._last_full > self.full_sync_period)
        try:
            if full:
                keys = set(self.services.store.keys()) | set(self._applied) | set(dirty)
            else:
                keys = set(dirty)
            new = {k: self._rules_of(k) for k in keys}
            now = time.monotonic()
            ripe = {c for c, t in self._stale.items() if now - t >= STALE_CHAIN_DELAY}
            if full:
                wanted = Rules()
                for r in new.values():
                    wanted.update(r)
                kernel = nft.list_chains(self.netns)
                tx, gone = transaction.full(base_rules(self.cfg), wanted, kernel,
                                            nft.list_sets(self.netns))
                # what the kernel has decides; our memory of stale chains may be out of date
                # (the table deleted behind our back, a delete that did not happen)
                self._stale = {c: t for c, t in self._stale.items() if c in kernel}
                ripe = (ripe & kernel) - set(wanted.chains)
                gone -= ripe
            else:
                tx = transaction.Transaction()
                gone = set()
                for k in keys:
                    _, g = transaction.partial(self._applied.get(k, Rules()), new[k], tx)
                    gone |= g
                wanted_now = set().union(*(r.chains for r in new.values())) if new else set()
                ripe -= wanted_now
            for c in sorted(ripe):
                tx.delete_chain(c)
            if not tx.empty():
                nft.run_script(self.netns, tx.script())
        except Exception as e:
            with self._lock:
                for k, times in dirty.items():
                    self._dirty.setdefault(k, []).extend(times)
                self._need_full = True
            self.stats.failures += 1
            self.stats.last_error = str(e)
            log.error("sync failed (a full sync follows): %s", e)
            return max(self.runner.min_interval, 1.0)

        # committed
        old = {k: self._applied.get(k) for k in keys}
        for k, r in new.items():
            if r.chains or r.elements:
                self._applied[k] = r
            else:
                self._applied.pop(k, None)
        for c in ripe:
            self._stale.pop(c, None)
        for c in gone:
            self._stale[c] = now
        for r in new.values():
            for c in r.chains:
                self._stale.pop(c, None)
        done = time.time()
        st = self.stats
        st.syncs += 1
        if full:
            st.full_syncs += 1
            self._need_full = False
            self._last_full = time.monotonic()
        st.last_duration = time.monotonic() - start
        st.sync_durations.append((full, st.last_duration))
        st.last_rules, st.last_elements = tx.rule_lines, tx.element_lines
        st.total_rules = sum(r.rule_count() for r in self._applied.values())
        for times in dirty.values():
            st.programming_latencies.extend(done - t for t in times)
        log.info("%s sync: %d services changed, %d rules written, %d in table, %.0f ms",
                 "full" if full else "partial", len(keys), tx.rule_lines, st.total_rules,
                 1000 * st.last_duration)
        if self.manage_routes:
            self._sync_routes()
        first = not self._synced_once.is_set()
        self._synced_once.set()
        if not first:  # the first sync knows nothing of what came before it: leave flows be
            self._clean_conntrack(old, new)
        return STALE_CHAIN_DELAY if self._stale else None

    def _sync_routes(self) -> None:
        """Each external IP routable in the node (see routes.py), when the set changed."""
        wanted = set().union(*(r.external_ips for r in self._applied.values())) if self._applied else set()
        if self._routes is not None and wanted == self._routes_wanted:
            return
        try:
            have = routes.our_external_routes(self.netns) if self._routes is None else self._routes
            self._routes = routes.sync_external_routes(self.netns, wanted, have)
            self._routes_wanted = wanted
        except Exception as e:  # the rules are in place; an unroutable address only times out
            log.warning("external IP routes: %s", e)

    def _clean_conntrack(self, old: dict[str, Rules | None], new: dict[str, Rules]) -> None:
        """UDP flows to endpoints that went away, and flows a service without endpoints left
        behind once it has some, are deleted: UDP never ends a flow, so they would stick."""
        for key, before in old.items():
            # A new service had no endpoints before: packets sent to its address until now left
            # un-NATed entries that would hold its flows for 30 s or more.
            before_udp = {(c, p): (n, eps) for c, p, n, eps in (before.udp if before else ())}
            after_udp = {(c, p): (n, eps) for c, p, n, eps in new[key].udp}
            try:
                for (cip, port), (np_, eps) in before_udp.items():
                    _, now_eps = after_udp.get((cip, port), (0, frozenset()))
                    for ep in sorted(eps - now_eps):
                        nft.conntrack_delete(self.netns, "-p", "udp", "--orig-dst", cip,
                                             "--dst-nat", ep)
                        if np_:
                            nft.conntrack_delete(self.netns, "-p", "udp", "--dport", str(np_),
                                                 "--dst-nat", ep)
                for (cip, port), (np_, eps) in after_udp.items():
                    had = before_udp.get((cip, port), (0, frozenset()))[1]
                    if eps and not had:
                        nft.conntrack_delete(self.netns, "-p", "udp", "--orig-dst", cip,
                                             "--dport", str(port))
                        if np_:
                            nft.conntrack_delete(self.netns, "-p", "udp", "--dport", str(np_))
            except Exception as e:  # the rules are right; a stale flow is the lesser harm
                log.warning("conntrack cleanup for %s failed: %s", key, e)
