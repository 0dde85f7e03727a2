"""Issue 23's delegated parts without processes: how Impersonate-* headers are
read and judged (apiserver/auth/impersonation.py), and how the kubelet maps a
request to a SubjectAccessReview and caches the answers (node/kubelet/auth.py).
The processes' side is in test_apiserver_security.py and test_kubelet_auth.py."""

from __future__ import annotations

import pytest

from apiserver.auth import impersonation
from apiserver.auth.authn import User
from apiserver.errors import ApiError
from node.kubelet.auth import Caller, KubeletAuth, Refused, subresource_of, verb_of

CAROL = User("carol", ("devs", "system:authenticated"))


class Allow:
    """An authorizer allowing what ``allowed`` names: (resource, name) pairs."""

    def __init__(self, *allowed) -> None:
        self.allowed_pairs = set(allowed)
        self.asked = []

    def allowed(self, a) -> bool:
        self.asked.append((a.verb, a.api_group, a.resource, a.subresource, a.namespace, a.name))
        return (a.resource, a.name) in self.allowed_pairs


def test_what_the_headers_ask_for():
    asked = impersonation.wanted([("Impersonate-User", "bob"), ("impersonate-group", "a"), ("Impersonate-Group", "b"),
                                  ("Impersonate-Extra-Acme.com%2Fproject", "p1"), ("Impersonate-Uid", "u1"),
                                  ("Accept", "application/json")])
    assert [str(w) for w in asked] == ["User bob", "Group a", "Group b", "UserExtra acme.com/project=p1", "UID u1"]
    sa = impersonation.wanted([("impersonate-user", "system:serviceaccount:ns1:robot")])
    assert [(w.kind, w.namespace, w.name) for w in sa] == [("ServiceAccount", "ns1", "robot")]
    assert impersonation.wanted([("authorization", "Bearer x")]) == []
    with pytest.raises(ApiError) as err:
        impersonation.wanted([("impersonate-group", "a"), ("impersonate-uid", "u")])
    assert (err.value.reason, err.value.message) == (
        "InternalError", "requested [Group a, UID u] without impersonating a user")


def test_each_thing_is_authorized_and_groups_are_completed_as_upstream():
    authz = Allow(("users", "bob"), ("groups", "ops"), ("uids", "u1"), ("userextras", "p1"),
                  ("serviceaccounts", "robot"), ("users", "system:anonymous"))
    user = impersonation.impersonate(authz, CAROL, [("impersonate-user", "bob"), ("impersonate-group", "ops"),
                                                    ("impersonate-uid", "u1"), ("impersonate-extra-project", "p1")])
    assert user == User("bob", ("ops", "system:authenticated"), "u1", (("project", ("p1",)),))
    assert authz.asked == [("impersonate", "", "users", "", "", "bob"), ("impersonate", "", "groups", "", "", "ops"),
                           ("impersonate", "authentication.k8s.io", "userextras", "project", "", "p1"),
                           ("impersonate", "authentication.k8s.io", "uids", "", "", "u1")]
    # a ServiceAccount: checked in its namespace, its groups unless groups were given
    sa = impersonation.impersonate(authz, CAROL, [("impersonate-user", "system:serviceaccount:ns1:robot")])
    assert sa.groups == ("system:serviceaccounts", "system:serviceaccounts:ns1", "system:authenticated")
    assert authz.asked[-1] == ("impersonate", "", "serviceaccounts", "", "ns1", "robot")
    # system:unauthenticated given: no system:authenticated; anonymous gets system:unauthenticated
    authz = Allow(("users", "bob"), ("groups", "system:unauthenticated"), ("users", "system:anonymous"))
    assert impersonation.impersonate(authz, CAROL, [("impersonate-user", "bob"),
                                                    ("impersonate-group", "system:unauthenticated")]).groups == \
        ("system:unauthenticated",)
    assert impersonation.impersonate(authz, CAROL, [("impersonate-user", "system:anonymous")]).groups == \
        ("system:unauthenticated",)
    # the first refusal ends it, in kube-apiserver's words
    with pytest.raises(ApiError) as err:
        impersonation.impersonate(authz, CAROL, [("impersonate-user", "bob"), ("impersonate-group", "wheel")])
    assert (err.value.reason, err.value.message) == ("Forbidden", (
        'groups "wheel" is forbidden: User "carol" cannot impersonate resource "groups" in API group "" at the '
        'cluster scope'))
    assert impersonation.impersonate(authz, CAROL, [("accept", "*/*")]) is None


def test_kubelet_request_attributes():
    assert [subresource_of(p) for p in ("/stats/summary", "/stats", "/metrics", "/metrics/cadvisor", "/logs/x",
                                        "/exec/ns/p/c", "/containerLogs/ns/p/c", "/healthz", "/statsx")] == \
        ["stats", "stats", "metrics", "metrics", "log", "proxy", "proxy", "proxy", "proxy"]
    assert [verb_of(m) for m in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")] == \
        ["get", "get", "create", "update", "patch", "delete"]


class Reviews:
    def __init__(self) -> None:
        self.token_calls = 0
        self.access_calls = []

    def token_review(self, token: str) -> dict:
        self.token_calls += 1
        if token == "good":
            return {"authenticated": True, "user": {"username": "dave", "groups": ["ops", "system:authenticated"]}}
        return {"user": {}, "error": "invalid bearer token"}

    def access_review(self, caller, verb, node, subresource) -> dict:
        self.access_calls.append((caller.name, verb, node, subresource))
        return {"allowed": "ops" in caller.groups}


def test_kubelet_auth_asks_the_apiserver_once_and_answers_in_the_kubelets_words():
    now = [0.0]
    reviews = Reviews()
    auth = KubeletAuth("n0", reviews, clock=lambda: now[0])
    assert auth.check(None, "Bearer good", "GET", "/containerLogs/ns/p/c") == \
        Caller("dave", ("ops", "system:authenticated"))
    auth.check(None, "Bearer good", "GET", "/containerLogs/ns/p/c")
    assert (reviews.token_calls, reviews.access_calls) == (1, [("dave", "get", "n0", "proxy")])
    for authorization in ("", "Bearer bad", "Basic eDp5"):
        with pytest.raises(Refused) as err:
            auth.check(None, authorization, "GET", "/healthz")
        assert (err.value.code, err.value.message) == (401, "Unauthorized")
    cert = {"subject": ((("commonName", "bob"),), (("organizationName", "devs"),))}
    with pytest.raises(Refused) as err:
        auth.check(cert, "", "POST", "/exec/ns/p/c")
    assert (err.value.code, err.value.message) == (403, "Forbidden (user=bob, verb=create, resource=nodes, "
                                                        "subresource=proxy)")
    calls = len(reviews.access_calls)
    with pytest.raises(Refused):
        auth.check(cert, "", "POST", "/exec/ns/p/c")
    assert len(reviews.access_calls) == calls  # a refusal is kept 30 s
    now[0] += 31
    with pytest.raises(Refused):
        auth.check(cert, "", "POST", "/exec/ns/p/c")
    assert len(reviews.access_calls) == calls + 1
    anonymous = KubeletAuth("n0", reviews, anonymous=True)
    with pytest.raises(Refused) as err:
        anonymous.check(None, "", "GET", "/metrics")
    assert err.value.message == "Forbidden (user=system:anonymous, verb=get, resource=nodes, subresource=metrics)"
