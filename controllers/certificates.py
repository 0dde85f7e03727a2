"""kube-controller-manager's certificate controllers, for the kubelet's TLS bootstrap:

- csrapproving: approves a CertificateSigningRequest for a kubelet client certificate
  (signer kubernetes.io/kube-apiserver-client-kubelet, CN system:node:<name>, O exactly
  system:nodes, no SANs, usages digital signature + client auth [+ key encipherment])
  when a SubjectAccessReview says its requester may create
  certificatesigningrequests/selfnodeclient (a node renewing its own) or /nodeclient (a
  bootstrapper; policy.py grants it to kubeadm's bootstrap token group). Anything else it
  leaves pending, for `kubectl certificate approve/deny`.
- csrsigning: signs approved requests of kubernetes.io/kube-apiserver-client-kubelet,
  kubernetes.io/kube-apiserver-client and kubernetes.io/kubelet-serving (never approved
  here: an administrator does) with the cluster CA (--cluster-signing-cert-file,
  --cluster-signing-key-file) for --cluster-signing-duration (a year) or the request's
  expirationSeconds if shorter; a request the signer cannot honour gets Failed.
- csrcleaner: deletes requests once done with (approved or denied an hour ago, pending a
  day, or whose certificate expired), as upstream's gc.

Approving needs the apiserver's SubjectAccessReview, served over REST only: the
controller-manager's own kubeconfig credentials are used for it. With none (a plain
HTTP apiserver, which authorizes everything) the request's form alone decides.
"""

from __future__ import annotations

import datetime
import logging

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from apiserver.errors import ApiError
from apiserver.pb import certificates_pb2
from apiserver.validation_certificates import parse_request
from controllers.base import Controller

log = logging.getLogger("controllers.certificates")

KUBELET_CLIENT = "kubernetes.io/kube-apiserver-client-kubelet"
KUBE_APISERVER_CLIENT = "kubernetes.io/kube-apiserver-client"
KUBELET_SERVING = "kubernetes.io/kubelet-serving"
NODE_PREFIX = "system:node:"
NODES_GROUP = "system:nodes"
DEFAULT_DURATION = 365 * 24 * 3600.0  # --cluster-signing-duration 8760h
BACKDATE = datetime.timedelta(minutes=5)
_KUBELET_USAGES = {"digital signature", "client auth"}
_OPTIONAL_USAGES = {"key encipherment"}
_SERVING_USAGES = {"digital signature", "server auth"}
_APPROVED_GC = 3600.0
_DENIED_GC = 3600.0
_PENDING_GC = 24 * 3600.0


def _conditions(csr) -> set[str]:
    return {c.type for c in csr.status.conditions if c.status in ("True", "")}


def kubelet_client_problem(csr, req: x509.CertificateSigningRequest) -> str:
    """Why ``csr`` is no kubelet client certificate request ("" when it is one), as
    upstream's ValidateKubeletClientCSR words it."""
    orgs = [a.value for a in req.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]
    cns = [a.value for a in req.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if orgs != [NODES_GROUP]:
        return f'subject organization is not {NODES_GROUP}'
    if not cns or not cns[0].startswith(NODE_PREFIX) or len(cns[0]) == len(NODE_PREFIX):
        return f'subject common name does not begin with "{NODE_PREFIX}"'
    try:
        sans = req.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        if len(sans):
            return "DNS, email, IP or URI subjectAltNames are not allowed"
    except x509.ExtensionNotFound:
        pass
    usages = set(csr.spec.usages)
    if not _KUBELET_USAGES <= usages:
        return f"usages did not contain {sorted(_KUBELET_USAGES - usages)}"
    extra = usages - _KUBELET_USAGES - _OPTIONAL_USAGES
    if extra:
        return f"usages did not match {sorted(_KUBELET_USAGES | _OPTIONAL_USAGES)}: {sorted(extra)}"
    return ""


def kubelet_serving_problem(csr, req: x509.CertificateSigningRequest) -> str:
    """Why ``csr`` is no kubelet serving certificate request ("" when it is one), as upstream's
    ValidateKubeletServingCSR words it."""
    orgs = [a.value for a in req.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]
    cns = [a.value for a in req.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if orgs != [NODES_GROUP]:
        return f"subject organization is not {NODES_GROUP}"
    try:
        sans = req.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        sans = x509.SubjectAlternativeName([])
    if not sans.get_values_for_type(x509.DNSName) and not sans.get_values_for_type(x509.IPAddress):
        return "DNS or IP subjectAltName is required"
    if sans.get_values_for_type(x509.RFC822Name):
        return "Email subjectAltNames are not allowed"
    if sans.get_values_for_type(x509.UniformResourceIdentifier):
        return "URI subjectAltNames are not allowed"
    usages = set(csr.spec.usages)
    if usages not in (_SERVING_USAGES, _SERVING_USAGES | _OPTIONAL_USAGES):
        return f"usages did not match {sorted(_SERVING_USAGES | _OPTIONAL_USAGES)}"
    if not cns or not cns[0].startswith(NODE_PREFIX):
        return f'subject common name does not begin with "{NODE_PREFIX}"'
    return ""


class CSRApprovingController(Controller):
    name = "csrapproving"

    def __init__(self, client, informers, reviews=None, *, workers: int = 1) -> None:
        """``reviews``: an object with ``post(path, body) -> status`` for SubjectAccessReviews
        (node.kubelet.auth.ApiReviews), or None: every requester allowed (no authorization)."""
        self.client = client
        self.reviews = reviews
        self.csrs = informers.informer("certificatesigningrequests")
        super().__init__([self.csrs], workers)
        self.csrs.add_handler(self._enqueue, lambda old, new: self._enqueue(new), None)

    def _enqueue(self, csr) -> None:
        if not _conditions(csr) & {"Approved", "Denied"}:
            self.queue.add(csr.metadata.name)

    def _allowed(self, csr, subresource: str) -> bool:
        if self.reviews is None:
            return True
        spec = {"user": csr.spec.username, "groups": list(csr.spec.groups),
                "resourceAttributes": {"group": "certificates.k8s.io", "version": "*", "verb": "create",
                                       "resource": "certificatesigningrequests", "subresource": subresource}}
        if csr.spec.uid:
            spec["uid"] = csr.spec.uid
        status = self.reviews.post("/apis/authorization.k8s.io/v1/subjectaccessreviews",
                                   {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
                                    "spec": spec})
        return bool(status.get("allowed"))

    def sync(self, name: str) -> None:
        csr = self.csrs.store.get(name)
        if csr is None or _conditions(csr) & {"Approved", "Denied"} or csr.status.certificate:
            return
        if csr.spec.signer_name != KUBELET_CLIENT:
            return  # left for someone else (kubectl certificate approve)
        try:
            req = parse_request(csr.spec.request)
        except ValueError:
            return
        if kubelet_client_problem(csr, req):
            return
        cn = req.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
        recognizers = []
        if csr.spec.username == cn:
            recognizers.append(("selfnodeclient",
                                "Auto approving self kubelet client certificate after SubjectAccessReview."))
        recognizers.append(("nodeclient", "Auto approving kubelet client certificate after SubjectAccessReview."))
        for subresource, message in recognizers:
            if self._allowed(csr, subresource):
                self._approve(csr, message)
                return
        log.info("csr %s from %s: not allowed to create certificatesigningrequests/nodeclient; left pending",
                 name, csr.spec.username)

    def _approve(self, csr, message: str) -> None:
        approved = certificates_pb2.CertificateSigningRequest()
        approved.CopyFrom(csr)
        approved.status.conditions.add(type="Approved", status="True", reason="AutoApproved", message=message)
        try:
            self.client.update_approval(approved)
            log.info("approved csr %s (%s)", csr.metadata.name, csr.spec.username)
        except ApiError as e:
            if e.reason in ("Conflict", "NotFound"):
                return  # the informer brings the newer one back
            raise


class CSRSigningController(Controller):
    name = "csrsigning"

    def __init__(self, client, informers, ca_cert_pem: bytes, ca_key_pem: bytes, *,
                 duration: float = DEFAULT_DURATION, workers: int = 1) -> None:
        self.client = client
        self.ca_cert = x509.load_pem_x509_certificate(ca_cert_pem)
        self.ca_key = serialization.load_pem_private_key(ca_key_pem, None)
        self.duration = duration
        self.csrs = informers.informer("certificatesigningrequests")
        super().__init__([self.csrs], workers)
        self.csrs.add_handler(self._enqueue, lambda old, new: self._enqueue(new), None)

    def _enqueue(self, csr) -> None:
        if "Approved" in _conditions(csr) and not csr.status.certificate:
            self.queue.add(csr.metadata.name)

    def sync(self, name: str) -> None:
        csr = self.csrs.store.get(name)
        if csr is None or csr.status.certificate:
            return
        conds = _conditions(csr)
        if "Approved" not in conds or "Failed" in conds or "Denied" in conds:
            return
        if csr.spec.signer_name not in (KUBELET_CLIENT, KUBE_APISERVER_CLIENT, KUBELET_SERVING):
            return  # another signer's
        try:
            req = parse_request(csr.spec.request)
        except ValueError as e:
            self._fail(csr, "SignerValidationFailure", str(e))
            return
        if csr.spec.signer_name == KUBELET_CLIENT:
            problem = kubelet_client_problem(csr, req)
        elif csr.spec.signer_name == KUBELET_SERVING:
            problem = kubelet_serving_problem(csr, req)
        else:
            problem = "" if "client auth" in csr.spec.usages and "server auth" not in csr.spec.usages \
                else "kubernetes.io/kube-apiserver-client certificates are for client auth only"
        if problem:
            self._fail(csr, "SignerValidationFailure", f"invalid {csr.spec.signer_name} certificate request: {problem}")
            return
        signed = certificates_pb2.CertificateSigningRequest()
        signed.CopyFrom(csr)
        signed.status.certificate = self.sign(req, list(csr.spec.usages),
                                              csr.spec.expiration_seconds if csr.spec.HasField("expiration_seconds")
                                              else None)
        try:
            self.client.update_status(signed)
            log.info("signed csr %s for %s", name, req.subject.rfc4514_string())
        except ApiError as e:
            if e.reason in ("Conflict", "NotFound"):
                return
            raise

    def sign(self, req: x509.CertificateSigningRequest, usages: list[str], expiration_seconds: int | None) -> bytes:
        """The PEM certificate for ``req`` (subject and public key as asked), valid from 5 minutes
        ago (clock skew; half the duration when that is under 10 minutes) for the duration, never
        beyond the CA's own end."""
        now = datetime.datetime.now(datetime.timezone.utc)
        seconds = self.duration if expiration_seconds is None else min(self.duration, float(expiration_seconds))
        not_after = min(now + datetime.timedelta(seconds=seconds), self.ca_cert.not_valid_after_utc)
        # the API asks for 600 s at least, twice the backdate; a shorter --cluster-signing-duration
        # (tests of rotation) backdates by half of it, so the lifetime stays mostly ahead
        backdate = min(BACKDATE, datetime.timedelta(seconds=seconds / 2))
        ext = [oid for usage, oid in (("client auth", ExtendedKeyUsageOID.CLIENT_AUTH),
                                      ("server auth", ExtendedKeyUsageOID.SERVER_AUTH)) if usage in usages]
        builder = (x509.CertificateBuilder().subject_name(req.subject).issuer_name(self.ca_cert.subject)
                   .public_key(req.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(max(now - backdate, self.ca_cert.not_valid_before_utc)).not_valid_after(not_after)
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.KeyUsage(digital_signature="digital signature" in usages,
                                                key_encipherment="key encipherment" in usages,
                                                key_cert_sign=False, crl_sign=False, content_commitment=False,
                                                data_encipherment=False, key_agreement=False,
                                                encipher_only=False, decipher_only=False), critical=True)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.ca_key.public_key()),
                                  critical=False))
        if ext:
            builder = builder.add_extension(x509.ExtendedKeyUsage(ext), critical=False)
        try:  # the names asked for (a serving certificate's; client requests have none)
            sans = req.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            builder = builder.add_extension(sans, critical=False)
        except x509.ExtensionNotFound:
            pass
        return builder.sign(self.ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)

    def _fail(self, csr, reason: str, message: str) -> None:
        failed = certificates_pb2.CertificateSigningRequest()
        failed.CopyFrom(csr)
        failed.status.conditions.add(type="Failed", status="True", reason=reason, message=message)
        try:
            self.client.update_status(failed)
        except ApiError as e:
            if e.reason not in ("Conflict", "NotFound"):
                raise


def _age(stamp: str, now: datetime.datetime) -> float:
    if not stamp:
        return 0.0
    return (now - datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00"))).total_seconds()


class CSRCleanerController(Controller):
    """No work queue: a sweep every ``period`` (upstream's cleaner polls hourly too)."""

    name = "csrcleaner"

    def __init__(self, client, informers, *, period: float = 3600.0) -> None:
        self.client = client
        self.period = period
        self.csrs = informers.informer("certificatesigningrequests")
        super().__init__([self.csrs], 1)

    def _start_threads(self) -> None:
        self.every(self.period, self.sweep)

    def sweep(self) -> None:
        now = datetime.datetime.now(datetime.timezone.utc)
        for csr in self.csrs.store.list():
            if self.done_with(csr, now):
                try:
                    self.client.delete("certificatesigningrequests", csr.metadata.name, "",
                                       uid=csr.metadata.uid)
                    log.info("deleted csr %s", csr.metadata.name)
                except ApiError as e:
                    if e.reason not in ("NotFound", "Conflict"):
                        raise

    @staticmethod
    def done_with(csr, now: datetime.datetime) -> bool:
        for c in csr.status.conditions:
            when = c.last_update_time or csr.metadata.creation_timestamp
            if c.type == "Approved" and csr.status.certificate and _age(when, now) > _APPROVED_GC:
                return True
            if c.type in ("Denied", "Failed") and _age(when, now) > _DENIED_GC:
                return True
        if not csr.status.conditions and _age(csr.metadata.creation_timestamp, now) > _PENDING_GC:
            return True
        if csr.status.certificate:
            try:
                cert = x509.load_pem_x509_certificate(csr.status.certificate)
            except ValueError:
                return False
            return cert.not_valid_after_utc <= now
        return False
