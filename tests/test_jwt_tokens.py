"""etcd's JWT auth tokens (`--auth-token jwt,...`, etcdlite.jwt_tokens).

The signer/checker alone (every method family, tampering, expiry in whole
seconds, the verified-token cache's bound, the start-up errors), then real
servers: one gRPC session against etcd 3.4 and etcdlite started with the same
key, wanting the same answers and tokens each side accepts from the other;
three members, one of them verify-only, where a token from one member works
on the others at once and after its signer's SIGKILL and restart.
"""

from __future__ import annotations

import base64
import json

import grpc
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from etcdlite import errors
from etcdlite.config import ConfigError
from etcdlite.jwt_tokens import CACHE_ENTRIES, JWTTokens, tokens_from_spec
from etcdlite.pb.etcdserverpb import rpc_pb2 as pb
from etcdlite.pb.etcdserverpb import rpc_pb2_grpc as rpc
from harness.procs import start_cluster

NOW = 1_800_000_000.0


def _pem_private(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _pem_public(key) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """PEM files: an RSA pair, EC keys on P-256/384/521, an HMAC secret."""
    d = tmp_path_factory.mktemp("jwtkeys")
    made = {"rsa": rsa.generate_private_key(public_exponent=65537, key_size=2048),
            "rsa2": rsa.generate_private_key(public_exponent=65537, key_size=2048),
            "p256": ec.generate_private_key(ec.SECP256R1()),
            "p384": ec.generate_private_key(ec.SECP384R1()),
            "p521": ec.generate_private_key(ec.SECP521R1())}
    paths = {}
    for name, key in made.items():
        (d / f"{name}.pem").write_bytes(_pem_private(key))
        (d / f"{name}.pub").write_bytes(_pem_public(key))
        paths[name], paths[name + ".pub"] = str(d / f"{name}.pem"), str(d / f"{name}.pub")
    (d / "hs.key").write_bytes(b"a shared secret\n")
    paths["hs"] = str(d / "hs.key")
    return paths


def _parts(token: str) -> tuple[dict, dict]:
    def dec(part):
        return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    head, body, _ = token.split(".")
    return dec(head), dec(body)


@pytest.mark.parametrize("method,key", [("HS256", "hs"), ("HS512", "hs"), ("RS256", "rsa"), ("RS512", "rsa"),
                                        ("PS256", "rsa"), ("ES256", "p256"), ("ES384", "p384"),
                                        ("ES512", "p521")])
def test_tokens_sign_and_check(keys, method, key):
    t = tokens_from_spec(f"jwt,sign-method={method},priv-key={keys[key]},ttl=10m")
    token = t.assign("alice", 7, now=NOW)
    header, claims = _parts(token)
    assert header == {"alg": method, "typ": "JWT"}
    assert list(claims) == ["exp", "revision", "username"]  # etcd's order (Go sorts map keys)
    assert claims == {"exp": int(NOW) + 600, "revision": 7, "username": "alice"}
    got = t.info(token, now=NOW)
    assert (got.username, got.revision) == ("alice", 7)
    # a checker holding only what verifies (the public key; for HMAC the secret) accepts it
    if method[:2] != "HS":
        verifier = tokens_from_spec(f"jwt,sign-method={method},pub-key={keys[key + '.pub']}")
        assert verifier.verify_only and verifier.info(token, now=NOW).username == "alice"
        with pytest.raises(errors.EtcdError) as err:
            verifier.assign("alice", 7)
        assert err.value.message == "auth: token signing attempted with verify-only key"
    # the claims changed under the same signature
    head, _, sig = token.split(".")
    forged = base64.urlsafe_b64encode(b'{"exp":1900000000,"revision":7,"username":"root"}').rstrip(b"=").decode()
    assert t.info(f"{head}.{forged}.{sig}", now=NOW) is None
    # a signature byte changed
    assert t.info(token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1], now=NOW) is None
    # expiry in whole seconds, as jwt-go: valid through the second of exp
    exp = claims["exp"]
    assert t.info(token, now=exp + 0.9) is not None
    assert t.info(token, now=exp + 1) is None
    for junk in ("", "abc", "a.b.c", "a.b.c.d", token + "x" * 9000):
        assert t.info(junk, now=NOW) is None


def test_tokens_refuse_alg_confusion_and_other_keys(keys):
    rs = tokens_from_spec(f"jwt,sign-method=RS256,priv-key={keys['rsa']}")
    # HS256 keyed with the RSA public key's PEM, the classic confusion: refused for its alg
    with open(keys["rsa.pub"], "rb") as f:
        confused = JWTTokens("HS256", f.read(), f.read(), 300).assign("root", 1, now=NOW)
    assert rs.info(confused, now=NOW) is None
    # signed by another RSA key
    other = tokens_from_spec(f"jwt,sign-method=RS256,priv-key={keys['rsa2']}")
    assert rs.info(other.assign("root", 1, now=NOW), now=NOW) is None
    # the same key under another method name
    ps = tokens_from_spec(f"jwt,sign-method=PS256,priv-key={keys['rsa']}")
    assert rs.info(ps.assign("root", 1, now=NOW), now=NOW) is None


def test_verified_tokens_cache_is_bounded(keys):
    t = tokens_from_spec(f"jwt,sign-method=HS256,priv-key={keys['hs']}")
    for i in range(CACHE_ENTRIES + 50):
        assert t.info(t.assign(f"u{i}", 1, now=NOW), now=NOW).username == f"u{i}"
    assert len(t._cache) <= CACHE_ENTRIES


def test_auth_token_spec_errors(keys, tmp_path):
    assert tokens_from_spec("simple") is None
    bad = {
        "jwt,sign-method=RS256": "auth: missing key data",
        f"jwt,priv-key={keys['rsa']}": "auth: invalid auth options",
        f"jwt,priv-key={keys['rsa']},sign-method=EdDSA": "auth: invalid auth options",
        f"jwt,priv-key={keys['rsa']},sign-method=RS256,ttl=5 minutes": "auth: invalid auth options",
        f"jwt,priv-key={keys['rsa']},sign-method=RS256,ttl=0s": "auth: invalid auth options",
        "jwt,sign-method=HS256": "auth: missing key data",
        f"jwt,priv-key={keys['p256']},sign-method=RS256": "not a valid RSA private key",
        f"jwt,pub-key={keys['p256.pub']},priv-key={keys['rsa']},sign-method=RS256": "not a valid RSA public key",
        f"jwt,pub-key={keys['rsa2.pub']},priv-key={keys['rsa']},sign-method=RS256": "public and private keys don't match",
        f"jwt,priv-key={keys['p384']},sign-method=ES256": "needs a key on curve secp256r1",
        f"jwt,priv-key={tmp_path / 'nosuch'},sign-method=RS256": "cannot read",
        "opaque": "unknown token type",
    }
    for spec, text in bad.items():
        with pytest.raises(ConfigError) as err:
            tokens_from_spec(spec)
        assert text in str(err.value), spec
    # etcd 3.4 ignores options it does not know
    assert tokens_from_spec(f"jwt,sign-method=RS256,priv-key={keys['rsa']},colour=blue") is not None


# --- real servers ----------------------------------------------------------------

def _answer(fn):
    try:
        fn()
        return "ok"
    except grpc.RpcError as e:
        return f"{e.code().name}: {e.details()}"


def _session(endpoint: str) -> tuple[list, str]:
    """One gRPC session with JWT auth: (the answers, the root token it got)."""
    with grpc.insecure_channel(endpoint) as ch:
        auth, kv = rpc.AuthStub(ch), rpc.KVStub(ch)

        def as_(token):
            return [("token", token)]
        out = [("garbage token, auth off", _answer(lambda: kv.Range(pb.RangeRequest(key=b"a"), metadata=as_("x.y.z"))))]
        out.append(("authenticate, auth off",
                    _answer(lambda: auth.Authenticate(pb.AuthenticateRequest(name="root", password="pw")))))
        auth.UserAdd(pb.AuthUserAddRequest(name="root", password="pw"))
        auth.UserGrantRole(pb.AuthUserGrantRoleRequest(user="root", role="root"))
        auth.AuthEnable(pb.AuthEnableRequest())
        out.append(("bad password",
                    _answer(lambda: auth.Authenticate(pb.AuthenticateRequest(name="root", password="no")))))
        token = auth.Authenticate(pb.AuthenticateRequest(name="root", password="pw")).token
        out.append(("put", _answer(lambda: kv.Put(pb.PutRequest(key=b"a", value=b"1"), metadata=as_(token)))))
        out.append(("range", _answer(lambda: kv.Range(pb.RangeRequest(key=b"a"), metadata=as_(token)))))
        out.append(("no token", _answer(lambda: kv.Range(pb.RangeRequest(key=b"a")))))
        out.append(("bad signature",
                    _answer(lambda: kv.Range(pb.RangeRequest(key=b"a"), metadata=as_(token[:-4] + "AAAA")))))
        out.append(("user add", _answer(lambda: auth.UserAdd(pb.AuthUserAddRequest(name="u2", password="x"),
                                                            metadata=as_(token)))))
        out.append(("range, old revision", _answer(lambda: kv.Range(pb.RangeRequest(key=b"a"), metadata=as_(token)))))
        out.append(("put, old revision",
                    _answer(lambda: kv.Put(pb.PutRequest(key=b"a", value=b"2"), metadata=as_(token)))))
        fresh = auth.Authenticate(pb.AuthenticateRequest(name="root", password="pw")).token
        out.append(("fresh token", _answer(lambda: kv.Put(pb.PutRequest(key=b"a", value=b"3"), metadata=as_(fresh)))))
        auth.AuthDisable(pb.AuthDisableRequest(), metadata=as_(fresh))
        out.append(("range, auth off, old revision",
                    _answer(lambda: kv.Range(pb.RangeRequest(key=b"a"), metadata=as_(fresh)))))
        out.append(("put, auth off, old revision",
                    _answer(lambda: kv.Put(pb.PutRequest(key=b"a", value=b"4"), metadata=as_(fresh)))))
    return out, token


@pytest.mark.process
def test_jwt_session_matches_real_etcd(procs, tmp_path, keys, etcd_binaries, etcdctl):
    spec = f"jwt,pub-key={keys['rsa.pub']},priv-key={keys['rsa']},sign-method=RS256,ttl=10m"
    etcd = procs.start_real_etcd(tmp_path / "etcd", name="etcd0", auth_token=spec)
    lite = procs.start_etcdlite(tmp_path / "lite", name="lite0", auth_token=spec)
    etcd_out, etcd_token = _session(etcd.endpoint)
    lite_out, lite_token = _session(lite.endpoint)
    assert lite_out == etcd_out
    assert dict(etcd_out)["range, old revision"] == "INVALID_ARGUMENT: etcdserver: revision of auth store is old"
    (eh, ec_), (lh, lc) = _parts(etcd_token), _parts(lite_token)
    assert lh == eh and list(lc) == list(ec_) and lc["revision"] == ec_["revision"]
    # each side's token checks out with the other's code and key: etcd's by etcdlite's checker
    mine = tokens_from_spec(spec)
    assert mine.info(etcd_token).username == "root"
    # etcdctl logs in with the JWT and works on both alike
    for m in (etcd, lite):
        assert etcdctl(m, "auth", "enable", "--user=root:pw")[0] == 0
        rc, out, err = etcdctl(m, "get", "a", "--user=root:pw")
        assert (rc, out) == (0, "a\n4\n"), err


@pytest.mark.process
def test_jwt_on_three_members_one_verify_only(tmp_path, keys, procs):
    sign = f"jwt,priv-key={keys['p256']},sign-method=ES256"
    verify = f"jwt,pub-key={keys['p256.pub']},sign-method=ES256"

    def last_verifies(members):
        members[2].extra_flags["auth_token"] = verify
    members = start_cluster("etcdlite", tmp_path, 3, procs, name="j", before_launch=last_verifies,
                            auth_token=sign, peer_secret_file=str(_secret(tmp_path)))
    with grpc.insecure_channel(members[0].endpoint) as ch:
        auth = rpc.AuthStub(ch)
        auth.UserAdd(pb.AuthUserAddRequest(name="root", password="pw"))
        auth.UserGrantRole(pb.AuthUserGrantRoleRequest(user="root", role="root"))
        auth.AuthEnable(pb.AuthEnableRequest())
        token = auth.Authenticate(pb.AuthenticateRequest(name="root", password="pw")).token
        rpc.KVStub(ch).Put(pb.PutRequest(key=b"k", value=b"v"), metadata=[("token", token)])

    def read_on(member):
        with grpc.insecure_channel(member.endpoint) as ch:
            return rpc.KVStub(ch).Range(pb.RangeRequest(key=b"k"), metadata=[("token", token)], timeout=10)
    # the other members never saw this token: its signature is enough
    for m in members[1:]:
        assert read_on(m).kvs[0].value == b"v"
    with grpc.insecure_channel(members[2].endpoint) as ch:
        with pytest.raises(grpc.RpcError) as err:
            rpc.AuthStub(ch).Authenticate(pb.AuthenticateRequest(name="root", password="pw"))
    assert (err.value.code(), err.value.details()) == (
        grpc.StatusCode.UNKNOWN, "auth: token signing attempted with verify-only key")
    # nothing per token is kept: the signer killed and restarted still takes it
    members[0].restart(kill=True)
    assert read_on(members[0]).kvs[0].value == b"v"


def _secret(tmp_path):
    path = tmp_path / "peer.secret"
    path.write_text("jwt-test-secret")
    return path
