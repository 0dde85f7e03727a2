"""The kubelet's ServiceAccount tokens for projected volumes (upstream's token manager):
a token per (pod, account, audience, lifetime) from the apiserver's TokenRequest, bound to
the pod, kept until 80% of its life has passed (or a day, whichever comes first) and then
requested again, so a pod's token file is always fresh while the account lives (and stops
working when it is deleted).

The refresh keeps its own schedule: a TokenRefresher thread sleeps until the first token is due
and then has the kubelet write that pod's projected volumes again (which asks for the new
token), whether or not anything else makes the pod sync.

The request is TokenRequest over REST (``POST .../serviceaccounts/NAME/token``) on the
apiserver's one port, with the kubelet's own kubeconfig credentials (its client certificate:
the Node authorizer and system:node let a kubelet ask for its pods' tokens)."""

from __future__ import annotations

import http.client
import json
import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime

from apiserver.rest.kubeconfig import ReloadingTLS

# (namespace, account, pod name, pod uid, audience ("" = the apiserver's), seconds) -> (token, expiry)
Requester = Callable[[str, str, str, str, str, int], "tuple[str, float]"]

log = logging.getLogger("kubelet.satoken")

# upstream's: a token is renewed once 80% of its life has passed, or when older than a day
REFRESH_FRACTION = 0.8
MAX_AGE = 24 * 3600
# a refresh that failed (the apiserver away, the account gone) is tried again this much later
RETRY_AFTER = 5.0


class TokenManager:
    def __init__(self, request: Requester, clock: Callable[[], float] = time.time) -> None:
        self.request = request
        self.clock = clock
        self._tokens: dict[tuple, tuple[str, float, float]] = {}  # key -> (token, issued, expiry)
        self._lock = threading.Lock()
        self.added = threading.Event()  # set when a token is stored: the refresher looks again

    def token(self, namespace: str, account: str, pod_name: str, pod_uid: str, audience: str,
              expiration: int) -> str:
        key = (namespace, account, pod_name, pod_uid, audience, expiration)
        now = self.clock()
        with self._lock:
            cached = self._tokens.get(key)
        if cached is not None and not self.needs_refresh(*cached[1:], now):
            return cached[0]
        token, expiry = self.request(namespace, account, pod_name, pod_uid, audience, expiration)
        with self._lock:
            self._tokens[key] = (token, now, expiry)
        self.added.set()
        return token

    @staticmethod
    def refresh_at(issued: float, expiry: float) -> float:
        return min(issued + REFRESH_FRACTION * (expiry - issued), issued + MAX_AGE)

    def needs_refresh(self, issued: float, expiry: float, now: float) -> bool:
        return now >= self.refresh_at(issued, expiry)

    def refresh_times(self) -> dict[str, float]:
        """pod uid -> when the first of its tokens is due (clock time)."""
        times: dict[str, float] = {}
        with self._lock:
            for key, (_, issued, expiry) in self._tokens.items():
                at = self.refresh_at(issued, expiry)
                times[key[3]] = min(at, times.get(key[3], at))
        return times

    def due(self, now: float | None = None) -> set[str]:
        """The pods (uids) one of whose tokens is due for renewal."""
        now = self.clock() if now is None else now
        with self._lock:
            return {key[3] for key, (_, issued, expiry) in self._tokens.items()
                    if self.needs_refresh(issued, expiry, now)}

    def forget(self, pod_uid: str) -> None:
        with self._lock:
            for key in [k for k in self._tokens if k[3] == pod_uid]:
                del self._tokens[key]


class TokenRefresher:
    """A thread that renews tokens when they are due, on the TokenManager's schedule: it sleeps
    until the first refresh time (or until a token is added), then calls ``refresh(pod_uid)`` for
    each pod with a token due, which writes that pod's token volumes again (asking the manager,
    which requests the new token). A pod whose refresh fails is tried again ``retry_after``
    seconds later; ``longest_sleep`` bounds a sleep (the clock may jump)."""

    def __init__(self, tokens: TokenManager, refresh: Callable[[str], None], *,
                 retry_after: float = RETRY_AFTER, longest_sleep: float = 60.0) -> None:
        self.tokens, self.refresh = tokens, refresh
        self.retry_after, self.longest_sleep = retry_after, longest_sleep
        self._stop = threading.Event()
        self._retry: dict[str, float] = {}  # pod uid -> not before (clock time)
        self._thread: threading.Thread | None = None

    def start(self) -> TokenRefresher:
        self._thread = threading.Thread(target=self._run, name="token-refresher", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self.tokens.added.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _sleep_for(self, now: float) -> float:
        times = [max(at, self._retry.get(uid, at)) for uid, at in self.tokens.refresh_times().items()]
        return max(0.0, min(min(times, default=now + self.longest_sleep) - now, self.longest_sleep))

    def run_once(self) -> list[str]:
        """Refresh every pod due now (not one waiting to retry); returns their uids."""
        now = self.tokens.clock()
        due = self.tokens.due(now)
        self._retry = {uid: t for uid, t in self._retry.items() if uid in due}  # renewed meanwhile, or gone
        done = []
        for uid in sorted(due):
            if self._retry.get(uid, 0.0) > now:
                continue
            try:
                self.refresh(uid)
                if uid in self.tokens.due(now):
                    raise RuntimeError("its volumes were written without a new token")
            except Exception as e:  # the apiserver's refusal or absence: the old token lives on
                log.warning("refreshing the ServiceAccount token of pod %s failed (again in %.0f s): %s",
                            uid, self.retry_after, e)
                self._retry[uid] = now + self.retry_after
                continue
            self._retry.pop(uid, None)
            done.append(uid)
        return done

    def _run(self) -> None:
        while not self._stop.is_set():
            self.tokens.added.wait(self._sleep_for(self.tokens.clock()))
            self.tokens.added.clear()
            if self._stop.is_set():
                return
            self.run_once()


def rest_requester(address: str, load_creds, timeout: float = 10.0) -> Requester:
    """TokenRequest against the apiserver at ``address`` (host:port) with the credentials
    ``load_creds()`` gives at each request (apiserver.rest.kubeconfig.Credentials, None for a
    plain-HTTP apiserver): a rotated client certificate is used from then on."""
    host, _, port = address.rpartition(":")
    # the apiserver is dialled by address, as the gRPC client does
    tls = ReloadingTLS(load_creds, check_hostname=False)

    def request(namespace: str, account: str, pod_name: str, pod_uid: str, audience: str,
                expiration: int) -> tuple[str, float]:
        spec = {"expirationSeconds": expiration,
                "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": pod_name, "uid": pod_uid}}
        if audience:
            spec["audiences"] = [audience]
        body = json.dumps({"kind": "TokenRequest", "apiVersion": "authentication.k8s.io/v1", "spec": spec})
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        creds, ctx = tls.current()
        if creds is not None and creds.token:
            headers["Authorization"] = f"Bearer {creds.token}"
        conn = (http.client.HTTPSConnection(host, int(port), context=ctx, timeout=timeout) if ctx is not None
                else http.client.HTTPConnection(host, int(port), timeout=timeout))
        try:
            conn.request("POST", f"/api/v1/namespaces/{namespace}/serviceaccounts/{account}/token", body, headers)
            resp = conn.getresponse()
            data = resp.read()
        finally:
            conn.close()
        try:
            answer = json.loads(data or b"{}")
        except ValueError:
            answer = {}
        if resp.status != 201:
            message = answer.get("message") or data[:200].decode(errors="replace")
            raise RuntimeError(f'failed to fetch token: serviceaccounts "{account}" token: {message}')
        status = answer.get("status") or {}
        stamp = status.get("expirationTimestamp", "")
        try:
            expiry = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S%z").timestamp()
        except ValueError:
            expiry = time.time() + expiration
        return status["token"], expiry

    return request


def token_manager(client) -> TokenManager:
    """The kubelet's: TokenRequest on the apiserver its ``client`` (apiserver.client.Client) dials,
    with the credentials of $KUBECONFIG when it names that apiserver."""
    from apiserver.client import credentials_for

    return TokenManager(rest_requester(client.server, lambda: credentials_for(client.server)))
