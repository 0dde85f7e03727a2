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
from node.kubelet.bootstrap import BootstrapError, request_certificate, store

log = logging.getLogger("node.kubelet.certrotation")

JITTER = (0.7, 0.9)  # the share of a certificate's lifetime after which it is renewed
RETRY_MIN, RETRY_MAX = 2.0, 128.0


def rotation_deadline(cert: x509.Certificate, fraction: float) -> float:
    """When (epoch seconds) ``cert`` is renewed: ``fraction`` of its lifetime after notBefore."""
    start = cert.not_valid_before_utc.timestamp()
    return start + (cert.not_valid_after_utc.timestamp() - start) * fraction


class ClientCertificateRotation:
    """One node's client certificate, read from its kubeconfig (which names the
    kubelet-client-current.pem link under ``cert_dir``), renewed when due."""

    def __init__(self, node_name: str, kubeconfig: str, cert_dir: str, *,
                 on_rotated: Iterable[Callable[[], None]] = (), timeout: float = 300.0,
                 fraction: Callable[[], float] = lambda: random.uniform(*JITTER)) -> None:
        self.node_name = node_name
        self.kubeconfig = kubeconfig
        self.cert_dir = cert_dir
        self.on_rotated = list(on_rotated)
        self.timeout = timeout
        self._fraction = fraction
        self._serial: int | None = None  # the certificate the deadline was drawn for
        self._deadline = 0.0
        self._retry = 0.0
        self.next_attempt = 0.0  # epoch seconds
        self.rotations = 0

    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(kubeconfigs.load(self.kubeconfig).cert)

    def schedule(self) -> float:
        """The next attempt's time (epoch seconds): the current certificate's deadline, drawn once
        per certificate, or a retry's after a failure."""
        cert = self.certificate()
        if cert.serial_number != self._serial:
            self._serial = cert.serial_number
            self._deadline = rotation_deadline(cert, self._fraction())
            self._retry = 0.0
            log.info("%s: client certificate expires %s, rotation at %s", self.node_name,
                     cert.not_valid_after_utc.isoformat(),
                     datetime.datetime.fromtimestamp(self._deadline, datetime.timezone.utc).isoformat())
        self.next_attempt = max(self._deadline, self.next_attempt if self._retry else 0.0)
        return self.next_attempt

    def rotate(self) -> bool:
        """Asks for, stores and switches to a new certificate; False (and a retry scheduled)
        when that failed."""
        from apiserver.client import Client

        key = ec.generate_private_key(ec.SECP256R1())
        try:
            with Client("", kubeconfig=self.kubeconfig, timeout=10.0) as client:
                cert = request_certificate(client, key, self.node_name, time.monotonic() + self.timeout,
                                           self.timeout)
        except (BootstrapError, ApiError, OSError, ValueError) as e:
            self._retry = min(RETRY_MAX, self._retry * 2 or RETRY_MIN)
            self.next_attempt = time.time() + self._retry
            log.warning("%s: client certificate rotation failed (%s); trying again in %.0fs", self.node_name,
                        e, self._retry)
            return False
        path = store(self.cert_dir, cert, key)
        self.rotations += 1
        log.info("%s: client certificate rotated: %s", self.node_name, path)
        for fn in self.on_rotated:
            try:
                fn()
            except Exception:  # noqa: BLE001 - one listener's failure must not stop the others
                log.exception("%s: after rotation, %r failed", self.node_name, fn)
        return True


def run_rotations(rotations: list[ClientCertificateRotation], stop: threading.Event) -> None:
    """Rotates each certificate when due until ``stop`` is set (one thread for them all)."""
    while not stop.is_set():
        now = time.time()
        wake = now + 60.0  # a certificate replaced by hand is seen within a minute
        for r in rotations:
            try:
                due = r.schedule()
            except (OSError, ValueError) as e:
                log.warning("%s: cannot read the client certificate of %s: %s", r.node_name, r.kubeconfig, e)
                continue
            if due <= now:
                r.rotate()
                due = r.schedule()
            wake = min(wake, due)
        stop.wait(max(0.05, wake - time.time()))


def start(rotations: list[ClientCertificateRotation], stop: threading.Event) -> threading.Thread:
    thread = threading.Thread(target=run_rotations, args=(rotations, stop), name="cert-rotation", daemon=True)
    thread.start()
    return thread
