"""What etcd's TLS flags ask beyond chain verification, for Python's ssl.

- ``--client-crl-file``/``--peer-crl-file`` (`RevocationList`): as etcd 3.4's TLS listener, a
  connection whose peer presented a certificate chain with any serial the CRL lists is closed
  once the handshake is done. etcd matches serials only (not the CRL's issuer, signature or
  dates), on every certificate the peer sent (leaf and intermediates), and reads the file again
  at each connection; here it is read at start (a missing or unparsable file stops the member)
  and again when the file changes.
- ``--peer-cert-allowed-hostname`` (`go_verify_hostname`): the peer's verified certificate must
  be valid for that name as Go 1.19's ``Certificate.VerifyHostname`` says (IP SANs for an IP,
  DNS SANs with a leading ``*`` label otherwise; no Common Name fallback since Go 1.17: etcd
  3.4.23 is built with Go 1.19).
- ``--cipher-suites`` (`openssl_ciphers`): Go's suite names to OpenSSL's. Go lets only TLS 1.0-1.2
  suites be chosen: TLS 1.3 keeps its own suites whatever the list (names of TLS 1.3 suites are
  accepted and change nothing), and so does OpenSSL's cipher list, which Python's ``set_ciphers``
  sets for TLS 1.2 only.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import ssl
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported where used: etcdlite.config imports this module, with or without TLS
    from cryptography import x509

log = logging.getLogger("etcdlite")

# Go's crypto/tls names (tls.CipherSuites() and tls.InsecureCipherSuites() of Go 1.19, and the
# two short CHACHA20 names etcd's tlsutil also takes) -> OpenSSL's
GO_CIPHER_SUITES = {
    "TLS_RSA_WITH_RC4_128_SHA": "RC4-SHA",
    "TLS_RSA_WITH_3DES_EDE_CBC_SHA": "DES-CBC3-SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA": "AES128-SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA": "AES256-SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA256": "AES128-SHA256",
    "TLS_RSA_WITH_AES_128_GCM_SHA256": "AES128-GCM-SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384": "AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_RC4_128_SHA": "ECDHE-ECDSA-RC4-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_RC4_128_SHA": "ECDHE-RSA-RC4-SHA",
    "TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA": "ECDHE-RSA-DES-CBC3-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256": "ECDHE-ECDSA-AES128-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256": "ECDHE-RSA-AES128-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305": "ECDHE-ECDSA-CHACHA20-POLY1305",
    # TLS 1.3: Go takes the names and negotiates its own TLS 1.3 suites all the same
    "TLS_AES_128_GCM_SHA256": None,
    "TLS_AES_256_GCM_SHA384": None,
    "TLS_CHACHA20_POLY1305_SHA256": None,
}


class PolicyError(ValueError):
    """A flag's value etcd refuses at start (its words)."""


def check_cipher_suites(names: list[str]) -> None:
    """etcd's tlsutil.GetCipherSuites: every name must be one of Go's."""
    for name in names:
        if name not in GO_CIPHER_SUITES:
            raise PolicyError(f'unexpected TLS cipher suite "{name}"')


def apply_cipher_suites(ctx: ssl.SSLContext, names: list[str]) -> None:
    """Limit ``ctx``'s TLS 1.2 suites to ``names`` (Go's). Suites this OpenSSL cannot do (RC4,
    3DES at its security level) are left out with a warning; with none left TLS 1.2 is not
    offered at all, as Go does with a list of TLS 1.3 names only. TLS 1.3 is unchanged."""
    if not names:
        return
    usable = []
    for name in names:
        openssl = GO_CIPHER_SUITES[name]
        if openssl is None:
            continue
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).set_ciphers(openssl)
        except ssl.SSLError:
            log.warning("--cipher-suites: %s is not available in this OpenSSL (%s); left out",
                        name, ssl.OPENSSL_VERSION)
            continue
        if openssl not in usable:
            usable.append(openssl)
    if usable:
        ctx.set_ciphers(":".join(usable))
    else:
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3


def peer_chain(obj: ssl.SSLObject) -> list[bytes]:
    """The certificates (DER) the other end sent, its own first: Go's PeerCertificates. Python
    3.13 has it as get_unverified_chain(); 3.10-3.12 have it on the C object."""
    get = getattr(obj, "get_unverified_chain", None) or getattr(obj._sslobj, "get_unverified_chain", None)
    chain = get() if get is not None else None
    if chain:
        return [c if isinstance(c, bytes) else c.public_bytes(ssl._ssl.ENCODING_DER) for c in chain]
    leaf = obj.getpeercert(binary_form=True)
    return [leaf] if leaf else []


class RevocationList:
    """A CRL file's revoked serial numbers (PEM or DER), read again when the file changes."""

    def __init__(self, flag: str, path: str):
        self.flag = flag
        self.path = path
        self._stamp = None
        self.serials: frozenset[int] = frozenset()
        self.error = ""
        self._load()
        if self.error:
            raise PolicyError(self.error)

    def _load(self) -> None:
        from cryptography import x509

        try:
            st = os.stat(self.path)
        except OSError as err:
            self.error = f"{self.flag} {self.path}: cannot read it: {err.strerror or err}"
            self._stamp = None
            return
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        if stamp == self._stamp:
            return
        try:
            with open(self.path, "rb") as f:
                data = f.read()
            if b"-----BEGIN" in data:
                crl = x509.load_pem_x509_crl(data)
            else:
                crl = x509.load_der_x509_crl(data)
        except (OSError, ValueError) as err:
            self.error = f"{self.flag} {self.path}: not a PEM or DER certificate revocation list ({err})"
            self._stamp = None
            return
        # Go compares SerialNumber.Bytes(): the magnitude
        self.serials = frozenset(abs(r.serial_number) for r in crl)
        self.error = ""
        self._stamp = stamp

    def refusal(self, chain: list[bytes]) -> str | None:
        """etcd's reason to close a connection whose peer sent ``chain`` (DER), or None."""
        if not chain:
            return None
        from cryptography import x509

        self._load()
        if self.error:
            return self.error
        for der in chain:
            serial = abs(x509.load_der_x509_certificate(der).serial_number)
            if serial in self.serials:
                raw = serial.to_bytes((serial.bit_length() + 7) // 8, "big")
                return f"transport: certificate serial {raw.hex()} revoked"
        return None


def _valid_hostname(host: str, pattern: bool) -> bool:
    if not pattern:
        host = host[:-1] if host.endswith(".") else host
    if not host:
        return False
    for i, part in enumerate(host.split(".")):
        if not part:
            return False
        if pattern and i == 0 and part == "*":
            continue
        for j, c in enumerate(part):
            if c.isascii() and (c.isalnum() or c == "_" or (c == "-" and j != 0)):
                continue
            return False
    return True


def _match_hostnames(pattern: str, host: str) -> bool:
    pattern = pattern.lower()
    host = host[:-1].lower() if host.endswith(".") else host.lower()
    if not pattern or not host:
        return False
    pp, hp = pattern.split("."), host.split(".")
    if len(pp) != len(hp):
        return False
    return all((i == 0 and p == "*") or p == h for i, (p, h) in enumerate(zip(pp, hp)))


def go_verify_hostname(cert: x509.Certificate, host: str) -> bool:
    """Go 1.19's Certificate.VerifyHostname(host) == nil."""
    from cryptography import x509
    from cryptography.x509.oid import ExtensionOID

    try:
        san = cert.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value
        ips, names = san.get_values_for_type(x509.IPAddress), san.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        ips, names = [], []
    candidate = host[1:-1] if len(host) >= 3 and host[0] == "[" and host[-1] == "]" else host
    try:
        ip = ipaddress.ip_address(candidate)
    except ValueError:
        ip = None
    if ip is not None:
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any((a.ipv4_mapped if isinstance(a, ipaddress.IPv6Address) and a.ipv4_mapped else a) == ip
                   for a in ips)
    lower = host.lower() if host.isascii() else host
    valid = _valid_hostname(lower, pattern=False)
    for name in names:
        if valid and _valid_hostname(name, pattern=True):
            if _match_hostnames(name, lower):
                return True
        elif name not in ("", ".") and lower not in ("", ".") and name.lower() == lower:
            return True
    return False


class HandshakePolicy:
    """The checks run on a connection once its handshake is done: a CRL over the chain the
    other end sent, and an allowed hostname (etcd's VerifyPeerCertificate, on the verified
    certificate, when there is one to check)."""

    def __init__(self, crl: RevocationList | None = None, allowed_hostname: str = ""):
        self.crl = crl
        self.allowed_hostname = allowed_hostname

    def __bool__(self) -> bool:
        return self.crl is not None or bool(self.allowed_hostname)

    def refusal(self, obj: ssl.SSLObject, check_hostname: bool = True) -> str | None:
        """Why the connection of ``obj`` (its handshake done) is closed, in etcd's words, or None.
        ``check_hostname``: the other end was asked for a certificate (a server without client
        certificate authentication checks no hostname, as Go calls no VerifyPeerCertificate)."""
        try:
            return self._refusal(obj, check_hostname)
        except ValueError as err:  # a certificate OpenSSL took and cryptography cannot parse
            return f"x509: {err}"

    def _refusal(self, obj: ssl.SSLObject, check_hostname: bool) -> str | None:
        if self.allowed_hostname and check_hostname:
            from cryptography import x509

            der = obj.getpeercert(binary_form=True)
            verified = bool(obj.getpeercert())  # {} or None: not verified
            if not der or not verified or \
                    not go_verify_hostname(x509.load_der_x509_certificate(der), self.allowed_hostname):
                return "client certificate authentication failed"
        if self.crl is not None:
            return self.crl.refusal(peer_chain(obj))
        return None
