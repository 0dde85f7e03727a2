"""The parts of the TLS bootstrap that need no process: bootstrap token authentication
(upstream's checks), what csrapproving takes for a kubelet client request, csrsigning's
certificate, csrcleaner's ages, the CSR validation of updates, kubectl's duration column."""

from __future__ import annotations

import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from apiserver.auth import bootstrap as tokens
from apiserver.auth.pki import CA
from apiserver.pb import certificates_pb2
from apiserver.resources import BY_NAME
from apiserver.rest.tables import _duration
from apiserver.validation_certificates import csr_update, validate_csr
from apiserver.validation_common import FieldErrors
from controllers.certificates import (CSRCleanerController, CSRSigningController, kubelet_client_problem,
                                     kubelet_serving_problem)
from controllers.kctl import printers

TOKEN = "abcdef.0123456789abcdef"


def _secrets(secret):
    return lambda ns, name: secret if (ns, name) == (secret.metadata.namespace, secret.metadata.name) else None


def test_a_bootstrap_token_authenticates_as_its_id():
    auth = tokens.BootstrapTokens(_secrets(tokens.token_secret(TOKEN)))
    user, why = auth.authenticate(TOKEN)
    assert (user.name, user.groups, why) == ("system:bootstrap:abcdef", ("system:bootstrappers", tokens.KUBEADM_GROUP),
                                             "")
    assert auth.authenticate("abcdef.0123456789abcdee")[0] is None
    assert auth.authenticate("not-a-bootstrap-token") == (None, "")
    assert auth.authenticate("zzzzzz.0123456789abcdef")[1] == \
        "no bootstrap token secret kube-system/bootstrap-token-zzzzzz"


@pytest.mark.parametrize("change, why", [
    (lambda s: s.data.__setitem__("expiration", b"2020-01-01T00:00:00Z"), "bootstrap token abcdef has expired"),
    (lambda s: setattr(s, "type", "Opaque"), "secret bootstrap-token-abcdef has type 'Opaque', not "
                                              "'bootstrap.kubernetes.io/token'"),
    (lambda s: s.data.__setitem__("usage-bootstrap-authentication", b"false"),
     "bootstrap token abcdef is not for authentication"),
    (lambda s: s.data.__setitem__("auth-extra-groups", b"system:masters"),
     "bootstrap token abcdef: extra group 'system:masters' is not system:bootstrappers:*"),
    (lambda s: setattr(s.metadata, "deletion_timestamp", "2026-01-01T00:00:00Z"),
     "bootstrap token secret bootstrap-token-abcdef is being deleted"),
])
def test_a_bootstrap_token_is_refused(change, why):
    secret = tokens.token_secret(TOKEN)
    change(secret)
    assert tokens.BootstrapTokens(_secrets(secret)).authenticate(TOKEN) == (None, why)


def _csr(subject, usages=("digital signature", "client auth"), sans=None,
         signer="kubernetes.io/kube-apiserver-client-kubelet"):
    key = ec.generate_private_key(ec.SECP256R1())
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(
        [x509.NameAttribute(oid, value) for oid, value in subject]))
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in sans]), critical=False)
    req = builder.sign(key, hashes.SHA256())
    csr = certificates_pb2.CertificateSigningRequest(metadata={"name": "c"})
    csr.spec.request = req.public_bytes(serialization.Encoding.PEM)
    csr.spec.signer_name = signer
    csr.spec.usages.extend(usages)
    return csr, req


NODE = ((NameOID.ORGANIZATION_NAME, "system:nodes"), (NameOID.COMMON_NAME, "system:node:n1"))


@pytest.mark.parametrize("subject, usages, sans, problem", [
    (NODE, ("digital signature", "client auth"), None, ""),
    (NODE, ("key encipherment", "digital signature", "client auth"), None, ""),
    (((NameOID.COMMON_NAME, "system:node:n1"),), ("digital signature", "client auth"), None,
     "subject organization is not system:nodes"),
    (((NameOID.ORGANIZATION_NAME, "system:nodes"), (NameOID.COMMON_NAME, "alice")),
     ("digital signature", "client auth"), None, 'subject common name does not begin with "system:node:"'),
    (NODE, ("digital signature", "client auth"), ["n1.example"],
     "DNS, email, IP or URI subjectAltNames are not allowed"),
    (NODE, ("client auth",), None, "usages did not contain ['digital signature']"),
    (NODE, ("digital signature", "client auth", "server auth"), None,
     "usages did not match ['client auth', 'digital signature', 'key encipherment']: ['server auth']"),
])
def test_what_a_kubelet_client_request_is(subject, usages, sans, problem):
    csr, req = _csr(subject, usages, sans)
    assert kubelet_client_problem(csr, req) == problem


def test_the_signer_signs_for_the_duration_asked_if_shorter(tmp_path):
    ca = CA(tmp_path)
    signer = CSRSigningController.__new__(CSRSigningController)
    signer.ca_cert, signer.ca_key, signer.duration = ca.cert, ca.key, 365 * 24 * 3600.0
    csr, req = _csr(NODE)
    cert = x509.load_pem_x509_certificate(signer.sign(req, list(csr.spec.usages), 3600))
    cert.verify_directly_issued_by(ca.cert)
    assert cert.subject == req.subject and cert.public_key() == req.public_key()
    assert (cert.not_valid_after_utc - cert.not_valid_before_utc) == datetime.timedelta(seconds=3600 + 300)
    assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == \
        [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


@pytest.mark.parametrize("subject, usages, sans, problem", [
    (NODE, ("digital signature", "server auth"), ["n1"], ""),
    (NODE, ("key encipherment", "digital signature", "server auth"), ["n1"], ""),
    (NODE, ("digital signature", "server auth"), None, "DNS or IP subjectAltName is required"),
    (((NameOID.COMMON_NAME, "system:node:n1"),), ("digital signature", "server auth"), ["n1"],
     "subject organization is not system:nodes"),
    (NODE, ("digital signature", "server auth", "client auth"), ["n1"],
     "usages did not match ['digital signature', 'key encipherment', 'server auth']"),
    (((NameOID.ORGANIZATION_NAME, "system:nodes"), (NameOID.COMMON_NAME, "web")), ("digital signature",
                                                                                   "server auth"), ["n1"],
     'subject common name does not begin with "system:node:"'),
])
def test_what_a_kubelet_serving_request_is(subject, usages, sans, problem):
    csr, req = _csr(subject, usages, sans, signer="kubernetes.io/kubelet-serving")
    assert kubelet_serving_problem(csr, req) == problem


def test_the_signer_keeps_the_names_asked_for(tmp_path):
    ca = CA(tmp_path)
    signer = CSRSigningController.__new__(CSRSigningController)
    signer.ca_cert, signer.ca_key, signer.duration = ca.cert, ca.key, 365 * 24 * 3600.0
    csr, req = _csr(NODE, ("digital signature", "server auth"), ["n1"], signer="kubernetes.io/kubelet-serving")
    cert = x509.load_pem_x509_certificate(signer.sign(req, list(csr.spec.usages), None))
    assert cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName) == ["n1"]
    assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == \
        [ExtendedKeyUsageOID.SERVER_AUTH]


@pytest.mark.parametrize("duration, backdate", [(20, 10), (600, 300), (3600, 300)])
def test_the_signer_backdates_short_certificates_by_half_their_duration(tmp_path, duration, backdate):
    """Under the API's 600 s minimum (a test's --cluster-signing-duration) the backdate is half
    the duration; from 600 s on, upstream's 5 minutes."""
    ca = CA(tmp_path)
    signer = CSRSigningController.__new__(CSRSigningController)
    signer.ca_cert, signer.ca_key, signer.duration = ca.cert, ca.key, duration
    csr, req = _csr(NODE)
    cert = x509.load_pem_x509_certificate(signer.sign(req, list(csr.spec.usages), None))
    assert (cert.not_valid_after_utc - cert.not_valid_before_utc) == datetime.timedelta(seconds=duration + backdate)


def test_the_cleaner_ages():
    now = datetime.datetime(2026, 12, 7, 12, 0, tzinfo=datetime.timezone.utc)
    stamp = lambda hours: (now - datetime.timedelta(hours=hours)).isoformat().replace("+00:00", "Z")  # noqa: E731
    pending = certificates_pb2.CertificateSigningRequest(metadata={"creation_timestamp": stamp(23)})
    assert not CSRCleanerController.done_with(pending, now)
    pending.metadata.creation_timestamp = stamp(25)
    assert CSRCleanerController.done_with(pending, now)
    denied = certificates_pb2.CertificateSigningRequest(metadata={"creation_timestamp": stamp(0.5)})
    denied.status.conditions.add(type="Denied", status="True", last_update_time=stamp(0.5))
    assert not CSRCleanerController.done_with(denied, now)
    denied.status.conditions[0].last_update_time = stamp(1.5)
    assert CSRCleanerController.done_with(denied, now)


def _errors(fn, *args, **kw) -> list[str]:
    errs = FieldErrors()
    fn(errs, *args, **kw)
    return [f"{path}: {detail}" for path, _, detail in errs.causes]


def test_updates_through_each_subresource():
    old, _ = _csr(NODE)
    approved = certificates_pb2.CertificateSigningRequest()
    approved.CopyFrom(old)
    approved.status.conditions.add(type="Approved", status="True")
    assert _errors(csr_update, approved, old, subresource="approval") == []
    assert _errors(csr_update, approved, old, subresource="status") == \
        ['status.conditions: Forbidden: updates may not add a condition of type "Approved"']
    signed = certificates_pb2.CertificateSigningRequest()
    signed.CopyFrom(approved)
    signed.status.certificate = b"-----BEGIN CERTIFICATE-----\n"
    assert _errors(csr_update, signed, approved, subresource="approval") == \
        ["status.certificate: Forbidden: updates may not set certificate content"]
    assert _errors(csr_update, signed, approved, subresource="status") == []
    assert _errors(csr_update, old, approved, subresource="approval") == \
        ['status.conditions: Forbidden: updates may not remove a condition of type "Approved"']
    both = certificates_pb2.CertificateSigningRequest()
    both.CopyFrom(approved)
    both.status.conditions.add(type="Denied", status="True")
    assert 'status.conditions[1].type: Invalid value: "Denied": Approved and Denied conditions are mutually ' \
           'exclusive' in _errors(validate_csr, both)


@pytest.mark.parametrize("seconds, shown", [(90, "90s"), (600, "10m"), (3600, "60m"), (3 * 3600 + 1800, "3h30m"),
                                            (24 * 3600, "24h"), (3 * 24 * 3600, "3d"), (365 * 24 * 3600, "365d")])
def test_kubectl_durations(seconds, shown):
    assert _duration(seconds) == shown


def test_a_request_may_have_any_name_that_is_a_path_segment():
    from apiserver.resources import BY_NAME
    from apiserver.validation import _validate_meta

    res = BY_NAME["certificatesigningrequests"]
    csr, _ = _csr(NODE)
    csr.metadata.name = "node-csr-Ab_C9"
    assert _errors(_validate_meta, res, csr.metadata) == []
    csr.metadata.name = "a/b"
    assert _errors(_validate_meta, res, csr.metadata) == ['metadata.name: Invalid value: "a/b": may not contain \'/\'']


def test_kctl_prints_requests_as_kubectl_and_any_kind_by_name_and_age():
    csr = certificates_pb2.CertificateSigningRequest()
    csr.metadata.name = "node-csr-1"
    csr.spec.signer_name, csr.spec.username = "kubernetes.io/kube-apiserver-client-kubelet", "system:bootstrap:abcdef"
    cells = printers.COLUMNS["certificatesigningrequests"].cells
    assert cells(csr, None)[2:] == ["kubernetes.io/kube-apiserver-client-kubelet", "system:bootstrap:abcdef",
                                    "<none>", "Pending"]
    csr.spec.expiration_seconds = 3600
    csr.status.conditions.add(type="Approved", status="True")
    csr.status.certificate = b"pem"
    assert cells(csr, None)[4:] == ["60m", "Approved,Issued"]
    # a kind kctl has no columns for gets kubectl's default ones
    table = printers.Table(BY_NAME["serviceaccounts"])
    assert table.headers() == ["NAME", "AGE"]
