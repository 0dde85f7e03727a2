"""The pieces of issue 23's apiserver side that need no process: request
attributes as kube-apiserver's RequestInfo reads them, RBAC's rule matching and
messages, the token file, ServiceAccount JWTs (and the tokens they must refuse)."""

from __future__ import annotations

import json
import time

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from apiserver.auth import tokens
from apiserver.auth.authn import ANONYMOUS, Authenticator, User, read_token_file, user_of_cert
from apiserver.auth.gate import rest_attributes
from apiserver.auth.rbac import Attributes, forbidden, rule_allows
from apiserver.errors import ApiError
from apiserver.pb import rbac_pb2
import jws

BOB = User("bob", ("devs",))
ISSUER = "https://kubernetes.default.svc.cluster.local"


@pytest.mark.parametrize("method,path,query,want", [
    ("GET", "/api/v1/namespaces/a/pods", {}, ("list", "a", "", "pods", "", "")),
    ("GET", "/api/v1/namespaces/a/pods", {"watch": ["true"]}, ("watch", "a", "", "pods", "", "")),
    ("GET", "/api/v1/namespaces/a/pods/p", {}, ("get", "a", "", "pods", "", "p")),
    ("HEAD", "/api/v1/namespaces/a/pods/p", {}, ("get", "a", "", "pods", "", "p")),
    # a named GET is a get whatever its query (here the pod's own, through its proxy)
    ("GET", "/api/v1/namespaces/a/pods/p:80/proxy/x", {"watch": ["true"]}, ("get", "a", "", "pods", "proxy", "p:80")),
    ("POST", "/api/v1/namespaces/a/services/https:s:web/proxy", {}, ("create", "a", "", "services", "proxy",
                                                                     "https:s:web")),
    ("DELETE", "/api/v1/namespaces/a/pods", {}, ("deletecollection", "a", "", "pods", "", "")),
    ("POST", "/api/v1/namespaces/a/pods/p/eviction", {}, ("create", "a", "", "pods", "eviction", "p")),
    ("PATCH", "/apis/apps/v1/namespaces/a/deployments/d/scale", {},
     ("patch", "a", "apps", "deployments", "scale", "d")),
    ("GET", "/api/v1/nodes", {}, ("list", "", "", "nodes", "", "")),
    # a namespace's own requests are in it; its subresources are not resources in it
    ("GET", "/api/v1/namespaces/a", {}, ("get", "a", "", "namespaces", "", "a")),
    ("PUT", "/api/v1/namespaces/a/status", {}, ("update", "a", "", "namespaces", "status", "a")),
    ("PUT", "/api/v1/namespaces/a/finalize", {}, ("update", "a", "", "namespaces", "finalize", "a")),
])
def test_rest_attributes(method, path, query, want):
    a = rest_attributes(BOB, method, path, query)
    assert (a.verb, a.namespace, a.api_group, a.resource, a.subresource, a.name) == want and a.resource_request


def test_non_resource_attributes():
    for path in ("/version", "/healthz", "/apis", "/api", "/openapi/v3"):
        a = rest_attributes(BOB, "GET", path, {})
        assert (a.resource_request, a.verb, a.path) == (False, "get", path)


def _rule(**kw):
    return rbac_pb2.PolicyRule(**kw)


def test_rule_matching():
    pods = _rule(verbs=["get"], api_groups=[""], resources=["pods"])
    assert rule_allows(pods, Attributes(BOB, "get", "a", "", "pods"))
    assert not rule_allows(pods, Attributes(BOB, "get", "a", "", "pods", "log"))  # a subresource is named
    assert not rule_allows(pods, Attributes(BOB, "get", "a", "apps", "pods"))
    assert not rule_allows(pods, Attributes(BOB, "list", "a", "", "pods"))
    scale = _rule(verbs=["*"], api_groups=["*"], resources=["*/scale"])
    assert rule_allows(scale, Attributes(BOB, "patch", "a", "apps", "deployments", "scale"))
    assert not rule_allows(scale, Attributes(BOB, "patch", "a", "apps", "deployments"))
    named = _rule(verbs=["get"], api_groups=[""], resources=["secrets"], resource_names=["one"])
    assert rule_allows(named, Attributes(BOB, "get", "a", "", "secrets", name="one"))
    assert not rule_allows(named, Attributes(BOB, "get", "a", "", "secrets", name="two"))
    assert not rule_allows(named, Attributes(BOB, "list", "a", "", "secrets"))
    urls = _rule(verbs=["get"], non_resource_urls=["/healthz", "/apis/*"])
    for path, ok in (("/healthz", True), ("/apis/apps/v1", True), ("/healthz/x", False), ("/version", False)):
        assert rule_allows(urls, Attributes(BOB, "get", path=path, resource_request=False)) is ok, path


def test_forbidden_messages():
    e = forbidden(Attributes(BOB, "list", "y", "", "secrets"))
    assert (e.reason, e.http_code, e.message) == (
        "Forbidden", 403, 'secrets is forbidden: User "bob" cannot list resource "secrets" in API group "" in the '
                          'namespace "y"')
    e = forbidden(Attributes(BOB, "get", "", "apps", "deployments", "scale", "web"))
    assert e.message == ('deployments.apps "web" is forbidden: User "bob" cannot get resource "deployments/scale" '
                         'in API group "apps" at the cluster scope')
    e = forbidden(Attributes(BOB, "get", path="/metrics", resource_request=False))
    assert e.message == 'forbidden: User "bob" cannot get path "/metrics"'


def test_token_file(tmp_path):
    path = tmp_path / "tokens.csv"
    path.write_text('# comment\nt1,alice,1\nt2,bob,2,"devs,ops"\n\n')
    assert read_token_file(str(path)) == {"t1": User("alice", (), "1"), "t2": User("bob", ("devs", "ops"), "2")}
    path.write_text("t1,alice\n")
    with pytest.raises(ValueError, match="tokens.csv:1"):
        read_token_file(str(path))


def test_certificate_subject():
    cert = {"subject": ((("organizationName", "devs"),), (("organizationName", "ops"),), (("commonName", "carol"),))}
    assert user_of_cert(cert) == User("carol", ("devs", "ops"))


class _SA:
    def __init__(self, uid):
        self.metadata = type("M", (), {"uid": uid})()


def _authenticator(key, accounts, anonymous=False):
    return Authenticator(token_users={"t": User("alice")}, sa_public_keys=[key.public_key()], issuers=[ISSUER],
                         service_accounts=lambda ns, name: accounts.get((ns, name)), anonymous=anonymous)


def _unauthorized(authn, header):
    with pytest.raises(ApiError) as e:
        authn.authenticate(None, header)
    assert (e.value.reason, e.value.message, e.value.http_code) == ("Unauthorized", "Unauthorized", 401)


def test_service_account_tokens():
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    accounts = {("ns", "robot"): _SA("u1")}
    authn = _authenticator(key, accounts)
    signer = tokens.Signer(key, ISSUER)
    token, _ = signer.service_account_token("ns", "robot", "u1", audiences=[ISSUER])
    user = authn.authenticate(None, f"Bearer {token}")
    assert user == User("system:serviceaccount:ns:robot",
                        ("system:serviceaccounts", "system:serviceaccounts:ns", "system:authenticated"), "u1")
    assert authn.authenticate(None, "Bearer t") == User("alice", ("system:authenticated",))
    # refused: another account of the same name, a deleted one, another audience, issuer, key; expired;
    # alg none; a changed payload; no credentials without anonymous
    accounts[("ns", "robot")] = _SA("u2")
    _unauthorized(authn, f"Bearer {token}")
    del accounts[("ns", "robot")]
    _unauthorized(authn, f"Bearer {token}")
    accounts[("ns", "robot")] = _SA("u1")
    assert authn.authenticate(None, f"bearer {token}").name == "system:serviceaccount:ns:robot"
    for bad in (signer.service_account_token("ns", "robot", "u1", audiences=["other"])[0],
                tokens.Signer(key, "https://elsewhere").service_account_token("ns", "robot", "u1",
                                                                              audiences=[ISSUER])[0],
                tokens.Signer(rsa.generate_private_key(public_exponent=65537, key_size=2048), ISSUER)
                .service_account_token("ns", "robot", "u1", audiences=[ISSUER])[0],
                signer.service_account_token("ns", "robot", "u1", audiences=[ISSUER],
                                             now=time.time() - 7200 - tokens.LEEWAY)[0]):
        _unauthorized(authn, f"Bearer {bad}")
    head, body, _ = token.split(".")
    none = jws.b64(json.dumps({"alg": "none"}).encode())
    _unauthorized(authn, f"Bearer {none}.{body}.")
    claims = json.loads(jws.unb64(body))
    claims["exp"] += 100
    _unauthorized(authn, f"Bearer {head}.{jws.b64(json.dumps(claims).encode())}.{token.split('.')[2]}")
    _unauthorized(authn, "")
    _unauthorized(authn, "Basic YTpi")
    assert _authenticator(key, accounts, anonymous=True).authenticate(None, "") == ANONYMOUS
    _unauthorized(_authenticator(key, accounts, anonymous=True), "Bearer nope")
