"""Validation of certificates.k8s.io/v1 CertificateSigningRequest, as
pkg/apis/certificates/validation checks it, with its texts: a parseable,
self-signed PKCS#10 request, known usages once each, a signer named
<domain>/<path>, at least 600 s asked for, conditions Approved xor Denied; an
update may not drop an Approved/Denied/Failed condition, only the approval
subresource may add or change Approved/Denied, only the status subresource may
set the certificate, and once. ``validation`` registers these; the registry
tells which subresource an update came through (``csr_update``)."""

from __future__ import annotations

from cryptography import x509

from apiserver.syntax import dns1123_subdomain_errors
from apiserver.validation_common import FieldErrors

USAGES = ("any", "cert sign", "client auth", "code signing", "content commitment", "crl sign",
          "data encipherment", "decipher only", "digital signature", "email protection", "encipher only",
          "ipsec end system", "ipsec tunnel", "ipsec user", "key agreement", "key encipherment",
          "microsoft sgc", "netscape sgc", "ocsp signing", "s/mime", "server auth", "signing", "timestamping")
APPROVED, DENIED, FAILED = "Approved", "Denied", "Failed"
LEGACY_UNKNOWN = "kubernetes.io/legacy-unknown"
_SIGNER_FORM = "must be a fully qualified domain and path of the form 'example.com/signer-name'"
_STATUS_VALUES = ("False", "True", "Unknown")


def parse_request(pem: bytes) -> x509.CertificateSigningRequest:
    """The PKCS#10 request in ``pem``; ValueError with upstream's words when it is none or its
    signature does not verify."""
    if b"-----BEGIN CERTIFICATE REQUEST-----" not in pem:
        raise ValueError("PEM block type must be CERTIFICATE REQUEST")
    try:
        req = x509.load_pem_x509_csr(pem)
    except ValueError as e:
        raise ValueError(f"x509: malformed certificate request ({e})") from None
    if not req.is_signature_valid:
        raise ValueError("x509: ECDSA verification failure")
    return req


def _certificate_error(pem: bytes) -> str:
    if not pem:
        return ""
    if b"-----BEGIN CERTIFICATE-----" not in pem:
        return "must contain at least one CERTIFICATE PEM block"
    try:
        x509.load_pem_x509_certificates(pem)
    except ValueError as e:
        return str(e)
    return ""


def _signer_name(errs: FieldErrors, path: str, name: str) -> None:
    if not name:
        errs.required(path)
        return
    domain, slash, rest = name.partition("/")
    if not slash or not rest or dns1123_subdomain_errors(domain):
        errs.invalid(path, name, _SIGNER_FORM)


def validate_csr(errs: FieldErrors, csr, old=None) -> None:
    spec, status = csr.spec, csr.status
    try:
        parse_request(spec.request)
    except ValueError as e:
        errs.invalid("spec.request", "<request data>", str(e))
    if not spec.usages:
        errs.required("spec.usages")
    unknown_ok = old is not None and any(u not in USAGES for u in old.spec.usages)
    seen: set[str] = set()
    for i, usage in enumerate(spec.usages):
        if usage not in USAGES and not unknown_ok:
            errs.not_supported(f"spec.usages[{i}]", usage, USAGES)
        if usage in seen:
            errs.duplicate(f"spec.usages[{i}]", usage)
        seen.add(usage)
    if spec.signer_name == LEGACY_UNKNOWN and not (old is not None and old.spec.signer_name == LEGACY_UNKNOWN):
        errs.invalid("spec.signerName", spec.signer_name, "the legacy signerName is not allowed via this API version")
    else:
        _signer_name(errs, "spec.signerName", spec.signer_name)
    if spec.HasField("expiration_seconds") and spec.expiration_seconds < 600:
        errs.invalid("spec.expirationSeconds", spec.expiration_seconds,
                     "may not specify a duration less than 600 seconds (10 minutes)")
    approved = denied = False
    types: set[str] = set()
    for i, c in enumerate(status.conditions):
        path = f"status.conditions[{i}]"
        if not c.type:
            errs.required(f"{path}.type")
        allowed = ("True",) if c.type in (APPROVED, DENIED, FAILED) else _STATUS_VALUES
        if not c.status:
            errs.required(f"{path}.status")
        elif c.status not in allowed:
            errs.not_supported(f"{path}.status", c.status, allowed)
        if c.type == APPROVED:
            approved = True
            if denied:
                errs.invalid(f"{path}.type", c.type, "Approved and Denied conditions are mutually exclusive")
        elif c.type == DENIED:
            denied = True
            if approved:
                errs.invalid(f"{path}.type", c.type, "Approved and Denied conditions are mutually exclusive")
        if c.type in types:
            errs.duplicate(f"{path}.type", c.type)
        types.add(c.type)
    if old is None or status.certificate != old.status.certificate:
        problem = _certificate_error(status.certificate)
        if problem:
            errs.invalid("status.certificate", "<certificate data>", problem)


def _of_type(csr, t: str) -> list:
    return [c for c in csr.status.conditions if c.type == t]


def csr_update(errs: FieldErrors, new, old, *, subresource: str = "") -> None:
    """What an update of ``old`` to ``new`` may not do through ``subresource``
    ("" the object, "status", "approval")."""
    for t in (APPROVED, DENIED, FAILED):
        if len(_of_type(new, t)) < len(_of_type(old, t)):
            errs.forbidden("status.conditions", f'updates may not remove a condition of type "{t}"')
    if subresource != "approval":
        for t in (APPROVED, DENIED):
            before, after = _of_type(old, t), _of_type(new, t)
            if len(after) > len(before):
                errs.forbidden("status.conditions", f'updates may not add a condition of type "{t}"')
            elif len(after) == len(before) and after != before:
                errs.forbidden("status.conditions", f'updates may not modify a condition of type "{t}"')
    if new.status.certificate != old.status.certificate:
        if subresource != "status":
            errs.forbidden("status.certificate", "updates may not set certificate content")
        elif old.status.certificate:
            errs.forbidden("status.certificate", "updates may not modify existing certificate content")
