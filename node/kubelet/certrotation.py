"""Client-certificate rotation (--rotate-certificates), as the kubelet's certificate
manager does it: once a random point between 70% and 90% of the current certificate's
lifetime (notBefore to notAfter) has passed, the node asks for a new one with a fresh
key, by a CertificateSigningRequest made with its current certificate (so the
controller-manager's csrapproving approves it as a `selfnodeclient` renewal), writes
it to <cert-dir>/kubelet-client-<time>.pem and moves kubelet-client-current.pem to it
(node.kubelet.bootstrap.store: one rename each). The kubeconfig names that link, so
whatever reads it from then on gets the new pair; ``on_rotated`` tells the clients that
hold a connection (apiserver.client.Client.reload_credentials). A renewal that fails
is tried again after 2, 4, 8 ... up to 128 s, as upstream's backoff.

A client certificate that expired before it could be renewed (the apiserver was away, or
refused the renewal) can no longer ask for its successor: the apiserver answers an expired
certificate with 401. Upstream's kubelet then exits ("The currently active client certificate
has expired and the server is responsive, exiting.") so that, restarted, it bootstraps again
with its --bootstrap-kubeconfig; here the rotation asks with those bootstrap credentials
itself, with no restart to wait for (the node keeps its name and its pods).

The serving certificate (--rotate-server-certificates, node.kubelet.servingcert) follows
the same schedule; it is asked for with the client certificate and, as upstream, nobody
approves it but an administrator (`kubectl certificate approve`).

One thread serves any number of nodes (the hollow kubelet's): ``run_rotations``.
"""

from __future__ import annotations

import datetime
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from apiserver.errors import ApiError
from apiserver.rest import kubeconfig as kubeconfigs
from node.kubelet.bootstrap import BootstrapError, client_csr, request_certificate, store, write_kubeconfig

log = logging.getLogger("node.kubelet.certrotation")

JITTER = (0.7, 0.9)  # the share of a certificate's lifetime after which it is renewed
RETRY_MIN, RETRY_MAX = 2.0, 128.0


def rotation_deadline(cert: x509.Certificate, fraction: float) -> float:
    """When (epoch seconds) ``cert`` is renewed: ``fraction`` of its lifetime after notBefore."""
    start = cert.not_valid_before_utc.timestamp()
    return start + (cert.not_valid_after_utc.timestamp() - start) * fraction


class CertificateRotation:
    """One certificate of a node, renewed when due; what it is, how it is asked for and
    who asks is the subclass's."""

    kind = ""  # the files' kubelet-<kind>-<time>.pem, kubelet-<kind>-current.pem

    def __init__(self, node_name: str, cert_dir: str, *, on_rotated: Iterable[Callable[[], None]] = (),
                 timeout: float = 300.0, fraction: Callable[[], float] = lambda: random.uniform(*JITTER)) -> None:
        self.node_name = node_name
        self.cert_dir = cert_dir
        self.on_rotated = list(on_rotated)
        self.timeout = timeout
        self._fraction = fraction
        self._serial: int | None = None  # the certificate the deadline was drawn for
        self._deadline = 0.0
        self._retry = 0.0
        self.next_attempt = 0.0  # epoch seconds
        self.rotations = 0

    def certificate(self) -> x509.Certificate | None:
        """The certificate now in use; None when there is none yet (asked for at once)."""
        raise NotImplementedError

    def new_key(self):
        return ec.generate_private_key(ec.SECP256R1())

    def new_csr(self, key):
        raise NotImplementedError

    def asker(self):
        """An apiserver.client.Client with the credentials the request is made with."""
        raise NotImplementedError

    def stored(self) -> None:
        """After the new pair was stored."""

    def schedule(self) -> float:
        """The next attempt's time (epoch seconds): the current certificate's deadline, drawn once
        per certificate, or a retry's after a failure."""
        cert = self.certificate()
        serial = cert.serial_number if cert is not None else None
        if serial != self._serial or cert is None and not self._retry:
            self._serial = serial
            self._deadline = rotation_deadline(cert, self._fraction()) if cert is not None else 0.0
            self._retry = 0.0
            if cert is not None:
                log.info("%s: %s certificate expires %s, rotation at %s", self.node_name, self.kind,
                         cert.not_valid_after_utc.isoformat(),
                         datetime.datetime.fromtimestamp(self._deadline, datetime.timezone.utc).isoformat())
        self.next_attempt = max(self._deadline, self.next_attempt if self._retry else 0.0)
        return self.next_attempt

    def rotate(self) -> bool:
        """Asks for, stores and switches to a new certificate; False (and a retry scheduled)
        when that failed."""
        key = self.new_key()
        try:
            with self.asker() as client:
                cert = request_certificate(client, self.new_csr(key), self.node_name,
                                           time.monotonic() + self.timeout, self.timeout)
        except (BootstrapError, ApiError, OSError, ValueError) as e:
            self._retry = min(RETRY_MAX, self._retry * 2 or RETRY_MIN)
            self.next_attempt = time.time() + self._retry
            log.warning("%s: %s certificate request failed (%s); trying again in %.0fs", self.node_name,
                        self.kind, e, self._retry)
            return False
        path = store(self.cert_dir, cert, key, self.kind)
        self.stored()
        self.rotations += 1
        log.info("%s: %s certificate rotated: %s", self.node_name, self.kind, path)
        for fn in self.on_rotated:
            try:
                fn()
            except Exception:  # noqa: BLE001 - one listener's failure must not stop the others
                log.exception("%s: after rotation, %r failed", self.node_name, fn)
        return True


class ClientCertificateRotation(CertificateRotation):
    """The node's client certificate, read from its kubeconfig (which names the
    kubelet-client-current.pem link under ``cert_dir``), renewed with itself."""

    kind = "client"

    def __init__(self, node_name: str, kubeconfig: str, cert_dir: str, *, bootstrap_kubeconfig: str = "",
                 **options) -> None:
        super().__init__(node_name, cert_dir, **options)
        self.kubeconfig = kubeconfig
        self.bootstrap_kubeconfig = bootstrap_kubeconfig

    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(kubeconfigs.load(self.kubeconfig).cert)

    def new_csr(self, key):
        return client_csr(key, self.node_name)

    def stored(self) -> None:
        # a kubeconfig of before rotation (the pair embedded) is made to name the link
        creds = kubeconfigs.load(self.kubeconfig)
        write_kubeconfig(self.kubeconfig, creds.server, creds.ca, self.cert_dir)

    def asker(self):
        from apiserver.client import Client

        kubeconfig = self.kubeconfig
        if self.bootstrap_kubeconfig and self.certificate().not_valid_after_utc <= \
                datetime.datetime.now(datetime.timezone.utc):
            log.warning("%s: the client certificate expired before it was renewed; asking for a new one "
                        "with the bootstrap credentials of %s", self.node_name, self.bootstrap_kubeconfig)
            kubeconfig = self.bootstrap_kubeconfig
        return Client("", kubeconfig=kubeconfig, timeout=10.0)


def run_rotations(rotations: list[CertificateRotation], stop: threading.Event) -> None:
    """Rotates each certificate when due until ``stop`` is set (one thread for them all)."""
    while not stop.is_set():
        now = time.time()
        wake = now + 60.0  # a certificate replaced by hand is seen within a minute
        for r in rotations:
            try:
                due = r.schedule()
            except (OSError, ValueError) as e:
                log.warning("%s: cannot read its %s certificate: %s", r.node_name, r.kind, e)
                continue
            if due <= now:
                r.rotate()
                due = r.schedule()
            wake = min(wake, due)
        stop.wait(max(0.05, wake - time.time()))


def start(rotations: list[CertificateRotation], stop: threading.Event) -> threading.Thread:
    thread = threading.Thread(target=run_rotations, args=(rotations, stop),
                              name=f"{rotations[0].kind if rotations else ''}-cert-rotation", daemon=True)
    thread.start()
    return thread
