"""kube-apiserver's security flags and the Gate and TLS context they make."""

from __future__ import annotations

import argparse

from apiserver.auth import tokens
from apiserver.auth.audit import AuditLog
from apiserver.auth.authn import Authenticator, read_token_file
from apiserver.auth.bootstrap import BootstrapTokens
from apiserver.auth.gate import Gate
from apiserver.auth.node import NodeAuthorizer
from apiserver.auth.noderestriction import NodeRestriction
from apiserver.auth.rbac import AlwaysAllow, RBACAuthorizer, Union

DEFAULT_ISSUER = "https://kubernetes.default.svc.cluster.local"
MODES = ("AlwaysAllow", "Node", "RBAC")
# kube-apiserver's: Go's http.Server bounds the TLS handshake by its ReadHeaderTimeout (32 s)
TLS_HANDSHAKE_TIMEOUT = 32.0


def _bool(text: str) -> bool:
    if text.lower() in ("true", "1", "t", "yes"):
        return True
    if text.lower() in ("false", "0", "f", "no"):
        return False
    raise argparse.ArgumentTypeError(f"want true or false, not {text!r}")


def add_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tls-cert-file", default="",
                   help="PEM serving certificate (with --tls-private-key-file): gRPC and REST over TLS; "
                        "without it, plain text")
    p.add_argument("--tls-private-key-file", default="", help="PEM key of --tls-cert-file")
    p.add_argument("--client-ca-file", default="",
                   help="PEM CA: client certificates it signed authenticate (CN = user, O = groups); "
                        "one it did not sign, expired or without clientAuth usage gets 401")
    p.add_argument("--token-auth-file", default="",
                   help='bearer tokens, CSV lines token,user,uid[,"group1,group2"]')
    p.add_argument("--service-account-key-file", action="append", default=[],
                   help="PEM RSA key(s) ServiceAccount tokens are verified with (repeatable; default: "
                        "the public half of --service-account-signing-key-file)")
    p.add_argument("--service-account-signing-key-file", default="",
                   help="PEM RSA private key TokenRequest signs ServiceAccount tokens with")
    p.add_argument("--service-account-issuer", action="append", default=[],
                   help=f"iss of the tokens signed (the first) and accepted (all); default {DEFAULT_ISSUER}")
    p.add_argument("--api-audiences", default="",
                   help="comma-separated audiences a token must name one of (default: the issuers)")
    p.add_argument("--enable-bootstrap-token-auth", action="store_true",
                   help="bearer tokens <id>.<secret> of kube-system Secrets bootstrap-token-<id> (type "
                        "bootstrap.kubernetes.io/token) authenticate as system:bootstrap:<id>, group "
                        "system:bootstrappers: how a node without a certificate asks for one (TLS bootstrap)")
    p.add_argument("--anonymous-auth", type=_bool, default=True, metavar="true|false",
                   help="requests without credentials run as system:anonymous (else 401)")
    p.add_argument("--authorization-mode", default="AlwaysAllow",
                   help="comma-separated, tried in order: AlwaysAllow, Node, RBAC (make run: Node,RBAC)")
    p.add_argument("--kubelet-client-certificate", default="",
                   help="PEM client certificate the apiserver presents to kubelets (logs, exec, port-forward)")
    p.add_argument("--kubelet-client-key", default="", help="PEM key of --kubelet-client-certificate")
    p.add_argument("--kubelet-certificate-authority", default="",
                   help="PEM CA the kubelets' serving certificates are verified with (needed with "
                        "--kubelet-client-certificate: gRPC cannot skip verifying)")
    p.add_argument("--audit-log-path", default="",
                   help="append an audit.k8s.io/v1 Event (level Metadata) per request to this file ('-': stdout)")


def check(args) -> str | None:
    """What is wrong with the flags, or None."""
    if bool(args.tls_cert_file) != bool(args.tls_private_key_file):
        return "--tls-cert-file and --tls-private-key-file go together"
    if args.client_ca_file and not args.tls_cert_file:
        return "--client-ca-file needs TLS (--tls-cert-file and --tls-private-key-file)"
    if bool(args.kubelet_client_certificate) != bool(args.kubelet_client_key):
        return "--kubelet-client-certificate and --kubelet-client-key go together"
    if args.kubelet_client_certificate and not args.kubelet_certificate_authority:
        return "--kubelet-client-certificate needs --kubelet-certificate-authority (the kubelets' CA)"
    modes = [m.strip() for m in args.authorization_mode.split(",") if m.strip()]
    for m in modes:
        if m not in MODES:
            return f"--authorization-mode: unknown mode {m!r} (known: {', '.join(MODES)})"
    if not modes:
        return "--authorization-mode: name at least one mode"
    args.authorization_modes = modes
    return None


def secured(args) -> bool:
    """Anything beyond the open default (no gate is built then: nothing is checked, as before)."""
    return bool(args.client_ca_file or args.token_auth_file or args.audit_log_path or args.service_account_key_file
                or args.enable_bootstrap_token_auth
                or args.service_account_signing_key_file or not args.anonymous_auth
                or args.authorization_modes != ["AlwaysAllow"])


def ssl_context(args):
    """The serving TLS (a grpclite.tls.ServerTLS), or None: plain text. As kube-apiserver's
    (Go's tls.RequestClientCert), the handshake asks for a client certificate and completes
    whatever is presented: a certificate that does not verify against --client-ca-file is
    refused by the authenticator (401), not by the handshake. Raises ValueError for files
    OpenSSL cannot load."""
    if not args.tls_cert_file:
        return None
    from grpclite.tls import ServerTLS
    # the server's preference decides: kubectl and client-go offer h2 and http/1.1 and get
    # HTTP/1.1 (the REST front); gRPC clients offer only h2
    return ServerTLS(args.tls_cert_file, args.tls_private_key_file, args.client_ca_file,
                     alpn=("http/1.1", "h2"), handshake_timeout=TLS_HANDSHAKE_TIMEOUT)


def kubelet_tls(args):
    """The apiserver's TLS to kubelets (apiserver.kubelet.KubeletTLS), or None: plain text.
    Raises OSError for unreadable files."""
    if not args.kubelet_client_certificate:
        return None
    from apiserver.kubelet import KubeletTLS
    return KubeletTLS(args.kubelet_client_certificate, args.kubelet_client_key, args.kubelet_certificate_authority)


def build_gate(args, caches) -> Gate:
    """Raises OSError/ValueError for unreadable files."""
    token_users = read_token_file(args.token_auth_file) if args.token_auth_file else {}
    issuers = args.service_account_issuer or [DEFAULT_ISSUER]
    audiences = [a.strip() for a in args.api_audiences.split(",") if a.strip()] or issuers
    signer = None
    public_keys = []
    for path in args.service_account_key_file:
        public_keys += tokens.load_public_keys(path)
    if args.service_account_signing_key_file:
        key = tokens.load_private_key(args.service_account_signing_key_file)
        signer = tokens.Signer(key, issuers[0])
        if not args.service_account_key_file:
            public_keys.append(key.public_key())
    accounts, pods, secrets = caches["serviceaccounts"], caches["pods"], caches["secrets"]
    bootstrap = (BootstrapTokens(lambda ns, name: secrets.get(ns, name))
                 if args.enable_bootstrap_token_auth else None)
    authn = Authenticator(token_users=token_users, sa_public_keys=public_keys, issuers=issuers,
                          audiences=audiences, service_accounts=lambda ns, name: accounts.get(ns, name),
                          pods=lambda ns, name: pods.get(ns, name), anonymous=args.anonymous_auth,
                          bootstrap=bootstrap)
    make = {"AlwaysAllow": lambda: AlwaysAllow(), "Node": lambda: NodeAuthorizer(caches),
            "RBAC": lambda: RBACAuthorizer(caches)}
    authorizers = [make[m]() for m in args.authorization_modes]
    authz = authorizers[0] if len(authorizers) == 1 else Union(authorizers)
    audit = AuditLog(args.audit_log_path) if args.audit_log_path else None
    # NodeRestriction comes with the Node authorizer (kube-apiserver enables both for kubelets)
    restriction = NodeRestriction(caches) if "Node" in args.authorization_modes else None
    return Gate(authn, authz, signer, tuple(audiences), audit, restriction)
