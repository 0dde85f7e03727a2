"""apiserver.storage against real stores: every test runs on an etcdlite
member and on the real etcd 3.4, through the etcd v3 wire API only.

Covers the compare-and-swap rules (create / update / delete / guaranteed
update), lists paged at one revision, compaction, the stored encoding, Secrets
encrypted at rest, and how etcd failures reach the caller (ApiErrors, never a
gRPC traceback).
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import signal

import pytest

from apiserver import errors
from apiserver.encryption import (AESGCM_PREFIX, AESGCMTransformer, IdentityTransformer,
                                  TransformError, generate_key_file, load_transformer)
from apiserver.etcd3 import Etcd, pb
from apiserver.pb import core_pb2
from apiserver.resources import lookup
from apiserver.storage import CONTINUE_EXPIRED, MAGIC, Storage, decode_continue, encode_continue
from harness.etcd_client import wait_until
from harness.procs import ETCD_BIN, Registry, require_binary

CONFIGMAPS = lookup("configmaps")
SECRETS = lookup("secrets")
NAMESPACES = lookup("namespaces")
PODS = lookup("pods")
KINDS = ["etcdlite", "etcd"]
_unique = itertools.count()


def start(registry: Registry, kind: str, tmp, name: str):
    if kind == "etcd":
        require_binary(ETCD_BIN, "etcd (the real etcd 3.4 server)")
        return registry.start_real_etcd(tmp, name=name)
    return registry.start_etcdlite(tmp, name=name)


@pytest.fixture(scope="module", params=KINDS)
def member(request, tmp_path_factory):
    reg = Registry()
    try:
        yield start(reg, request.param, tmp_path_factory.mktemp(f"storage-{request.param}"), "storage")
    finally:
        reg.cleanup()


def run(member, body, **storage_kw):
    """asyncio.run(body(storage, etcd)) with a fresh channel to ``member``."""
    async def main():
        etcd = Etcd(member.endpoint)
        try:
            return await body(Storage(etcd, **storage_kw), etcd)
        finally:
            await etcd.close()
    return asyncio.run(main())


def fresh_namespace() -> str:
    return f"ns{next(_unique)}"


def configmap(namespace: str, name: str, **data) -> core_pb2.ConfigMap:
    cm = core_pb2.ConfigMap()
    cm.metadata.namespace, cm.metadata.name = namespace, name
    cm.metadata.uid = f"uid-{name}"
    cm.data.update(data)
    return cm


def secret(namespace: str, name: str, **data: bytes) -> core_pb2.Secret:
    s = core_pb2.Secret()
    s.metadata.namespace, s.metadata.name = namespace, name
    for k, v in data.items():
        s.data[k] = v
    return s


async def raw(etcd: Etcd, key: str):
    resp = await etcd.kv.Range(pb.RangeRequest(key=key.encode()), timeout=10)
    return resp.kvs[0] if resp.kvs else None


async def api_error(awaitable) -> errors.ApiError:
    try:
        await awaitable
    except errors.ApiError as e:
        return e
    raise AssertionError("no ApiError was raised")


def rv(msg) -> int:
    return int(msg.metadata.resource_version)


# ---- create / get ----------------------------------------------------------


@pytest.mark.process
def test_create_then_get_and_the_stored_encoding(member):
    ns = fresh_namespace()

    async def body(s: Storage, etcd):
        created = await s.create(CONFIGMAPS, configmap(ns, "cfg", a="1"))
        got = await s.get(CONFIGMAPS, ns, "cfg")
        assert got == created and got.data["a"] == "1"
        kv = await raw(etcd, f"/registry/configmaps/{ns}/cfg")
        assert rv(created) == kv.mod_revision == kv.create_revision
        # header, then the message with no resourceVersion in it
        assert kv.value.startswith(MAGIC + b"ConfigMap\x00")
        stored = core_pb2.ConfigMap.FromString(kv.value[len(MAGIC + b"ConfigMap\x00"):])
        assert stored.metadata.resource_version == "" and stored.data["a"] == "1"

        err = await api_error(s.create(CONFIGMAPS, configmap(ns, "cfg", a="2")))
        assert err.reason == "AlreadyExists" and err.message == 'configmaps "cfg" already exists'
        assert (await raw(etcd, f"/registry/configmaps/{ns}/cfg")).mod_revision == kv.mod_revision
        assert (await s.get(CONFIGMAPS, ns, "cfg")).data["a"] == "1"

        # a resourceVersion on the object to create is ignored, never stored
        stale = configmap(ns, "other")
        stale.metadata.resource_version = "12345"
        made = await s.create(CONFIGMAPS, stale)
        assert rv(made) == (await raw(etcd, f"/registry/configmaps/{ns}/other")).mod_revision
        assert stale.metadata.resource_version == "12345"  # the caller's message is not touched

    run(member, body)


@pytest.mark.process
def test_get_missing_and_cluster_scoped_keys(member):
    async def body(s: Storage, etcd):
        err = await api_error(s.get(CONFIGMAPS, "nowhere", "nothing"))
        assert err.reason == "NotFound" and err.message == 'configmaps "nothing" not found'
        name = f"cluster-scoped-{next(_unique)}"
        namespace = core_pb2.Namespace()
        namespace.metadata.name = name
        await s.create(NAMESPACES, namespace)
        assert await raw(etcd, f"/registry/namespaces/{name}") is not None
        assert (await s.get(NAMESPACES, "", name)).metadata.name == name

        for bad_name in ("", "..", "a/b"):
            err = await api_error(s.get(CONFIGMAPS, "default", bad_name))
            assert err.reason == "BadRequest"
        assert (await api_error(s.create(CONFIGMAPS, configmap("", "x")))).reason == "BadRequest"

    run(member, body)


# ---- update ----------------------------------------------------------------


@pytest.mark.process
def test_update_with_fresh_and_stale_revisions(member):
    ns = fresh_namespace()

    async def body(s: Storage, etcd):
        first = await s.create(CONFIGMAPS, configmap(ns, "cfg", v="1"))
        change = configmap(ns, "cfg", v="2")
        second = await s.update(CONFIGMAPS, change, rv(first))
        assert rv(second) > rv(first) and second.data["v"] == "2"
        assert await s.get(CONFIGMAPS, ns, "cfg") == second

        # the first revision is stale now: Conflict, and nothing is written
        before = await raw(etcd, f"/registry/configmaps/{ns}/cfg")
        err = await api_error(s.update(CONFIGMAPS, configmap(ns, "cfg", v="lost"), rv(first)))
        assert err.reason == "Conflict"
        assert err.message == ('Operation cannot be fulfilled on configmaps "cfg": the object has been '
                               'modified; please apply your changes to the latest version and try again')
        after = await raw(etcd, f"/registry/configmaps/{ns}/cfg")
        assert (after.mod_revision, after.value) == (before.mod_revision, before.value)

        err = await api_error(s.update(CONFIGMAPS, configmap(ns, "gone"), rv(first)))
        assert err.reason == "NotFound"
        assert await raw(etcd, f"/registry/configmaps/{ns}/gone") is None
        # an update must name the revision it was based on (0 would create the key)
        err = await api_error(s.update(CONFIGMAPS, configmap(ns, "gone"), 0))
        assert err.reason == "Invalid" and "metadata.resourceVersion" in err.message
        assert await raw(etcd, f"/registry/configmaps/{ns}/gone") is None

    run(member, body)


# ---- guaranteed_update -----------------------------------------------------


@pytest.mark.process
def test_concurrent_guaranteed_updates_lose_nothing(member):
    ns = fresh_namespace()
    writers, rounds = 8, 5
    calls = []

    def increment(cm):
        calls.append(cm.metadata.resource_version)
        cm.metadata.labels["counter"] = str(int(cm.metadata.labels.get("counter", "0")) + 1)
        return cm

    async def body(s: Storage, etcd):
        await s.create(CONFIGMAPS, configmap(ns, "counter"))

        async def writer():
            seen = []
            for _ in range(rounds):
                await asyncio.sleep(0)
                seen.append(rv(await s.guaranteed_update(CONFIGMAPS, ns, "counter", increment)))
            return seen

        revisions = [r for seen in await asyncio.gather(*(writer() for _ in range(writers))) for r in seen]
        final = await s.get(CONFIGMAPS, ns, "counter")
        assert final.metadata.labels["counter"] == str(writers * rounds)
        # every successful write got its own revision: no two writers shared a read
        assert len(set(revisions)) == writers * rounds and max(revisions) == rv(final)
        assert len(calls) >= writers * rounds

    run(member, body)


@pytest.mark.process
def test_guaranteed_update_no_op_errors_async_and_delete(member):
    ns = fresh_namespace()

    async def body(s: Storage, etcd):
        created = await s.create(CONFIGMAPS, configmap(ns, "cfg", v="1"))
        revision = await s.current_revision()

        # unchanged: no write, the current object comes back
        same = await s.guaranteed_update(CONFIGMAPS, ns, "cfg", lambda cm: cm)
        assert same == created and await s.current_revision() == revision

        # an ApiError from update_fn propagates and nothing is written
        def refuse(cm):
            raise errors.invalid("ConfigMap", "cfg", [("data", "FieldValueInvalid", "no")])
        assert (await api_error(s.guaranteed_update(CONFIGMAPS, ns, "cfg", refuse))).reason == "Invalid"
        assert await s.current_revision() == revision

        # an async update_fn
        async def bump(cm):
            await asyncio.sleep(0)
            cm.data["v"] = "2"
            return cm
        bumped = await s.guaranteed_update(CONFIGMAPS, ns, "cfg", bump, expected_revision=rv(created))
        assert bumped.data["v"] == "2" and rv(bumped) > rv(created)

        # a stale expected revision: Conflict before update_fn runs
        ran = []
        err = await api_error(s.guaranteed_update(
            CONFIGMAPS, ns, "cfg", lambda cm: ran.append(cm) or cm, expected_revision=rv(created)))
        assert err.reason == "Conflict" and ran == []

        err = await api_error(s.guaranteed_update(CONFIGMAPS, ns, "missing", lambda cm: cm))
        assert err.reason == "NotFound"

        # None deletes; the deleted object carries the deletion's revision
        gone = await s.guaranteed_update(CONFIGMAPS, ns, "cfg", lambda cm: None)
        assert gone.data["v"] == "2" and rv(gone) == await s.current_revision()
        assert await raw(etcd, f"/registry/configmaps/{ns}/cfg") is None

    run(member, body)


@pytest.mark.process
def test_guaranteed_update_retries_after_a_concurrent_write_unless_a_revision_is_expected(member):
    ns = fresh_namespace()

    async def body(s: Storage, etcd):
        base = await s.create(CONFIGMAPS, configmap(ns, "cfg"))
        interfered = []

        async def with_interference(cm):
            # another writer gets in between our read and our write, once
            if not interfered:
                interfered.append(True)
                other = configmap(ns, "cfg", **dict(cm.data))
                other.data["other"] = f"x{next(_unique)}"
                await s.update(CONFIGMAPS, other, rv(cm))
            cm.data["mine"] = f"y{next(_unique)}"
            return cm

        result = await s.guaranteed_update(CONFIGMAPS, ns, "cfg", with_interference)
        # rerun on the newer object: both writes are in
        assert sorted(result.data) == ["mine", "other"]
        assert result.data["other"] == (await s.get(CONFIGMAPS, ns, "cfg")).data["other"]

        interfered.clear()
        current = await s.get(CONFIGMAPS, ns, "cfg")
        err = await api_error(s.guaranteed_update(CONFIGMAPS, ns, "cfg", with_interference,
                                                  expected_revision=rv(current)))
        assert err.reason == "Conflict"
        stored = await s.get(CONFIGMAPS, ns, "cfg")
        assert rv(stored) > rv(current) > rv(base)

        # a CAS delete that loses the race re-reads and deletes the newer object
        interfered.clear()

        async def delete_after_interference(cm):
            await with_interference(cm)
            return None
        gone = await s.guaranteed_update(CONFIGMAPS, ns, "cfg", delete_after_interference)
        assert rv(gone) == await s.current_revision()
        assert await raw(etcd, f"/registry/configmaps/{ns}/cfg") is None

    run(member, body)


# ---- delete ----------------------------------------------------------------


@pytest.mark.process
def test_delete_preconditions_and_result(member):
    ns = fresh_namespace()

    async def body(s: Storage, etcd):
        first = await s.create(CONFIGMAPS, configmap(ns, "cfg", v="1"))
        second = await s.update(CONFIGMAPS, configmap(ns, "cfg", v="2"), rv(first))

        err = await api_error(s.delete(CONFIGMAPS, ns, "cfg", expected_revision=rv(first)))
        assert err.reason == "Conflict"
        assert err.message == (
            'Operation cannot be fulfilled on configmaps "cfg": Precondition failed: ResourceVersion in '
            f'precondition: {rv(first)}, ResourceVersion in object meta: {rv(second)}')
        err = await api_error(s.delete(CONFIGMAPS, ns, "cfg", uid="someone-else"))
        assert err.reason == "Conflict"
        assert err.message == ('Operation cannot be fulfilled on configmaps "cfg": Precondition failed: '
                               'UID in precondition: someone-else, UID in object meta: uid-cfg')
        assert (await raw(etcd, f"/registry/configmaps/{ns}/cfg")).mod_revision == rv(second)

        deleted = await s.delete(CONFIGMAPS, ns, "cfg", expected_revision=rv(second), uid="uid-cfg")
        assert deleted.data["v"] == "2"
        assert rv(deleted) == await s.current_revision() and rv(deleted) > rv(second)
        assert await raw(etcd, f"/registry/configmaps/{ns}/cfg") is None
        assert (await api_error(s.delete(CONFIGMAPS, ns, "cfg"))).reason == "NotFound"

        # without preconditions a delete goes through whatever the revision
        await s.create(CONFIGMAPS, configmap(ns, "plain"))
        assert (await s.delete(CONFIGMAPS, ns, "plain")).metadata.name == "plain"

    run(member, body)


# ---- list ------------------------------------------------------------------


@pytest.mark.process
def test_list_pages_read_one_revision_while_writes_happen(member):
    ns = fresh_namespace()
    names = [f"cm{i}" for i in range(7)]

    async def body(s: Storage, etcd):
        for n in names:
            await s.create(CONFIGMAPS, configmap(ns, n, v="old"))
        page1 = await s.list(CONFIGMAPS, ns, limit=3)
        assert [o.metadata.name for o in page1.items] == names[:3]
        assert page1.continue_token and page1.remaining_item_count == 4

        # writes between pages: an update, a delete and a create ahead of the cursor
        cm5 = await s.get(CONFIGMAPS, ns, "cm5")
        await s.update(CONFIGMAPS, configmap(ns, "cm5", v="new"), rv(cm5))
        await s.delete(CONFIGMAPS, ns, "cm4")
        await s.create(CONFIGMAPS, configmap(ns, "cm3a", v="new"))

        page2 = await s.list(CONFIGMAPS, ns, limit=3, continue_token=page1.continue_token)
        page3 = await s.list(CONFIGMAPS, ns, limit=3, continue_token=page2.continue_token)
        assert page1.revision == page2.revision == page3.revision
        assert [o.metadata.name for o in page2.items] == names[3:6]
        assert [o.metadata.name for o in page3.items] == names[6:]
        assert page2.remaining_item_count == 1
        assert (page3.continue_token, page3.remaining_item_count) == ("", None)
        assert all(o.data["v"] == "old" for page in (page1, page2, page3) for o in page.items)

        now = await s.list(CONFIGMAPS, ns)
        assert [o.metadata.name for o in now.items] == ["cm0", "cm1", "cm2", "cm3", "cm3a", "cm5", "cm6"]
        assert now.revision > page1.revision and now.continue_token == ""
        assert now.revision == await s.current_revision()
        # each item's resourceVersion is its own mod_revision
        for o in now.items:
            assert rv(o) == (await raw(etcd, f"/registry/configmaps/{ns}/{o.metadata.name}")).mod_revision

        # a page that exactly reaches the end carries no continue token
        exact = await s.list(CONFIGMAPS, ns, limit=7)
        assert len(exact.items) == 7 and exact.continue_token == ""

    run(member, body)


@pytest.mark.process
def test_list_with_a_predicate_fills_each_page(member):
    ns = fresh_namespace()

    async def body(s: Storage, etcd):
        for i in range(40):
            cm = configmap(ns, f"cm{i:02d}")
            cm.metadata.labels["parity"] = "even" if i % 2 == 0 else "odd"
            await s.create(CONFIGMAPS, cm)
        even = lambda o: o.metadata.labels["parity"] == "even"  # noqa: E731

        seen, token, pages = [], "", []
        while True:
            page = await s.list(CONFIGMAPS, ns, predicate=even, limit=3, continue_token=token)
            pages.append(page)
            seen += [o.metadata.name for o in page.items]
            assert page.remaining_item_count is None
            token = page.continue_token
            if not token:
                break
        assert seen == [f"cm{i:02d}" for i in range(0, 40, 2)]
        assert all(len(p.items) == 3 for p in pages[:-1]) and len({p.revision for p in pages}) == 1

        # a rare match far down the range is found through growing pages
        last = await s.list(CONFIGMAPS, ns, predicate=lambda o: o.metadata.name == "cm39", limit=1)
        assert [o.metadata.name for o in last.items] == ["cm39"] and last.continue_token == ""
        nothing = await s.list(CONFIGMAPS, ns, predicate=lambda o: False, limit=2)
        assert (nothing.items, nothing.continue_token) == ([], "")

    run(member, body)


@pytest.mark.process
def test_list_namespaces_and_prefix_isolation(member):
    base = fresh_namespace()

    async def body(s: Storage, etcd):
        # "nsN" and "nsNb": the prefix of one must not leak into the other
        for ns in (base, base + "b"):
            for n in ("x", "y"):
                await s.create(CONFIGMAPS, configmap(ns, n))
        one = await s.list(CONFIGMAPS, base)
        assert [(o.metadata.namespace, o.metadata.name) for o in one.items] == [(base, "x"), (base, "y")]
        every = await s.list(CONFIGMAPS, "")
        pairs = [(o.metadata.namespace, o.metadata.name) for o in every.items]
        assert {(base, "x"), (base, "y"), (base + "b", "x"), (base + "b", "y")} <= set(pairs)
        assert pairs == sorted(pairs, key=lambda p: f"{p[0]}/{p[1]}")
        # paging across namespaces
        got, token = [], ""
        while True:
            page = await s.list(CONFIGMAPS, "", limit=2, continue_token=token)
            got += [(o.metadata.namespace, o.metadata.name) for o in page.items]
            token = page.continue_token
            if not token:
                break
        assert got == pairs

    run(member, body)


@pytest.mark.process
def test_list_at_a_revision_and_in_the_future(member):
    ns = fresh_namespace()

    async def body(s: Storage, etcd):
        a = await s.create(CONFIGMAPS, configmap(ns, "a"))
        await s.create(CONFIGMAPS, configmap(ns, "b"))
        at_a = await s.list(CONFIGMAPS, ns, revision=rv(a))
        assert [o.metadata.name for o in at_a.items] == ["a"] and at_a.revision == rv(a)
        paged = await s.list(CONFIGMAPS, ns, revision=rv(a), limit=1)
        assert [o.metadata.name for o in paged.items] == ["a"] and paged.continue_token == ""

        future = await s.current_revision() + 1000
        err = await api_error(s.list(CONFIGMAPS, ns, revision=future))
        assert err.reason == "Timeout" and err.message.startswith(f"Too large resource version: {future}, current: ")

    run(member, body)


@pytest.mark.process
def test_compaction_expires_old_lists_and_continue_tokens(member):
    ns = fresh_namespace()

    async def body(s: Storage, etcd):
        for n in ("a", "b", "c"):
            await s.create(CONFIGMAPS, configmap(ns, n))
        page1 = await s.list(CONFIGMAPS, ns, limit=1)
        old = page1.revision
        await s.create(CONFIGMAPS, configmap(ns, "d"))
        compact_to = await s.current_revision()
        await etcd.kv.Compact(pb.CompactionRequest(revision=compact_to, physical=True), timeout=10)

        err = await api_error(s.list(CONFIGMAPS, ns, limit=1, continue_token=page1.continue_token))
        assert (err.reason, err.message) == ("Expired", CONTINUE_EXPIRED)
        assert err.grpc_code.name == "OUT_OF_RANGE"
        err = await api_error(s.list(CONFIGMAPS, ns, revision=old))
        assert (err.reason, err.message) == ("Expired", f"too old resource version: {old} ({compact_to})")
        # a fresh list still works
        assert len((await s.list(CONFIGMAPS, ns)).items) == 4

    run(member, body)


@pytest.mark.process
def test_bad_continue_tokens_are_bad_requests(member):
    prefix = CONFIGMAPS.prefix("default").encode()

    def token(obj) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")

    good = encode_continue(prefix + b"cm1\x00", prefix, 42)
    assert decode_continue(good, prefix) == (prefix + b"cm1\x00", 42)
    bad = ["garbage!", base64.urlsafe_b64encode(b"not json").decode(), token([1, 2]),
           token({"v": "v0", "rv": 4, "start": "a"}),
           token({"v": "meta.k8s.io/v1", "rv": -1, "start": "a"}),
           token({"v": "meta.k8s.io/v1", "rv": True, "start": "a"}),
           token({"v": "meta.k8s.io/v1", "rv": 4, "start": ""}),
           token({"v": "meta.k8s.io/v1", "rv": 4, "start": "../../secrets/x"}),
           token({"v": "meta.k8s.io/v1", "rv": 4, "start": "a/./b"})]

    async def body(s: Storage, etcd):
        for t in bad:
            err = await api_error(s.list(CONFIGMAPS, "default", limit=1, continue_token=t))
            assert err.reason == "BadRequest", t
            assert err.message.startswith("invalid continue token: continue key is not valid"), err.message
        err = await api_error(s.list(CONFIGMAPS, "default", continue_token=good, revision=5))
        assert err.reason == "BadRequest"

    run(member, body)


@pytest.mark.process
def test_values_that_are_not_ours_are_internal_errors(member):
    ns = fresh_namespace()

    async def body(s: Storage, etcd):
        key = f"/registry/configmaps/{ns}/foreign"
        await etcd.kv.Put(pb.PutRequest(key=key.encode(), value=b"hello"), timeout=10)
        err = await api_error(s.get(CONFIGMAPS, ns, "foreign"))
        assert err.reason == "InternalError" and "not written by the apiserver" in err.message
        assert key in err.message
        assert (await api_error(s.list(CONFIGMAPS, ns))).reason == "InternalError"

        # a Pod's value copied under a configmap key is refused, not misread
        pod = core_pb2.Pod()
        pod.metadata.namespace, pod.metadata.name = ns, "p"
        await s.create(PODS, pod)
        pod_kv = await raw(etcd, f"/registry/pods/{ns}/p")
        await etcd.kv.Put(pb.PutRequest(key=key.encode(), value=pod_kv.value), timeout=10)
        err = await api_error(s.get(CONFIGMAPS, ns, "foreign"))
        assert err.reason == "InternalError" and "holds a Pod, not a ConfigMap" in err.message

        # a truncated message
        good = await s.create(CONFIGMAPS, configmap(ns, "cut", a="x" * 50))
        cut = (await raw(etcd, f"/registry/configmaps/{ns}/cut")).value[:-10]
        await etcd.kv.Put(pb.PutRequest(key=f"/registry/configmaps/{ns}/cut".encode(), value=cut), timeout=10)
        err = await api_error(s.get(CONFIGMAPS, ns, "cut"))
        assert err.reason == "InternalError" and "corrupt ConfigMap" in err.message
        assert rv(good) > 0

    run(member, body)


# ---- encryption at rest ----------------------------------------------------


@pytest.mark.process
def test_secrets_are_encrypted_at_rest(member, tmp_path):
    ns = fresh_namespace()
    key_file = generate_key_file(tmp_path / "key", "key1")
    other_name = generate_key_file(tmp_path / "other-name", "key2")
    other_bytes = generate_key_file(tmp_path / "other-bytes", "key1")
    transformer = AESGCMTransformer.from_key_file(key_file)
    plaintext = b"correct horse battery staple"

    async def body(s: Storage, etcd):
        made = await s.create(SECRETS, secret(ns, "db", password=plaintext))
        kv = await raw(etcd, f"/registry/secrets/{ns}/db")
        assert kv.value.startswith(AESGCM_PREFIX + b"key1:")
        assert plaintext not in kv.value and b"password" not in kv.value and MAGIC not in kv.value
        got = await s.get(SECRETS, ns, "db")
        assert got.data["password"] == plaintext and got == made

        # resources outside encrypted_resources stay plain
        await s.create(CONFIGMAPS, configmap(ns, "cfg", a="visible"))
        assert b"visible" in (await raw(etcd, f"/registry/configmaps/{ns}/cfg")).value

        for wrong in (AESGCMTransformer.from_key_file(other_name),
                      AESGCMTransformer.from_key_file(other_bytes), IdentityTransformer()):
            err = await api_error(Storage(etcd, transformer=wrong).get(SECRETS, ns, "db"))
            assert err.reason == "InternalError" and f"/registry/secrets/{ns}/db" in err.message
            assert plaintext.decode() not in err.message

        # the key is authenticated: the same value under another key does not decrypt
        copy = f"/registry/secrets/{ns}/copy".encode()
        await etcd.kv.Put(pb.PutRequest(key=copy, value=kv.value), timeout=10)
        err = await api_error(s.get(SECRETS, ns, "copy"))
        assert err.reason == "InternalError" and "does not authenticate" in err.message
        await etcd.kv.DeleteRange(pb.DeleteRangeRequest(key=copy), timeout=10)

        # a Secret written before encryption was configured stays readable, and is
        # stored encrypted on its next write
        plain = Storage(etcd)
        old = await plain.create(SECRETS, secret(ns, "legacy", token=b"legacy-token"))
        assert b"legacy-token" in (await raw(etcd, f"/registry/secrets/{ns}/legacy")).value
        read = await s.get(SECRETS, ns, "legacy")
        assert read.data["token"] == b"legacy-token"
        read.data["token"] = b"rotated-token"
        await s.update(SECRETS, read, rv(old))
        value = (await raw(etcd, f"/registry/secrets/{ns}/legacy")).value
        assert value.startswith(AESGCM_PREFIX) and b"rotated-token" not in value

        # rotation: a new key first encrypts, the old one still decrypts
        rotated_file = tmp_path / "rotated"
        rotated_file.write_text(other_name.read_text() + key_file.read_text())
        rotated = Storage(etcd, transformer=AESGCMTransformer.from_key_file(rotated_file))
        assert (await rotated.get(SECRETS, ns, "db")).data["password"] == plaintext
        await rotated.guaranteed_update(SECRETS, ns, "db", lambda sec: (sec.data.update(x=b"1"), sec)[1])
        assert (await raw(etcd, f"/registry/secrets/{ns}/db")).value.startswith(AESGCM_PREFIX + b"key2:")
        assert (await api_error(s.get(SECRETS, ns, "db"))).reason == "InternalError"

        # list decrypts too
        listed = await rotated.list(SECRETS, ns)
        assert [(o.metadata.name, dict(o.data)) for o in listed.items] == [
            ("db", {"password": plaintext, "x": b"1"}), ("legacy", {"token": b"rotated-token"})]

    run(member, body, transformer=transformer)


def test_encryption_keys_files_and_tampering(tmp_path):
    path = generate_key_file(tmp_path / "k", "main")
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    t = load_transformer(path)
    assert isinstance(t, AESGCMTransformer) and t.write_key == "main"
    assert isinstance(load_transformer(None), IdentityTransformer)

    sealed = t.encrypt(b"payload", b"/registry/secrets/a/b")
    assert sealed.startswith(b"k8s:enc:aesgcm:v1:main:") and b"payload" not in sealed
    assert t.decrypt(sealed, b"/registry/secrets/a/b") == b"payload"
    # two encryptions of one value differ (random nonce)
    assert t.encrypt(b"payload", b"k") != t.encrypt(b"payload", b"k")
    flipped = bytearray(sealed)
    flipped[-1] ^= 1
    with pytest.raises(TransformError, match="does not authenticate"):
        t.decrypt(bytes(flipped), b"/registry/secrets/a/b")
    with pytest.raises(TransformError, match="truncated"):
        t.decrypt(sealed[:len(b"k8s:enc:aesgcm:v1:main:") + 5], b"/registry/secrets/a/b")
    with pytest.raises(TransformError, match="unknown provider"):
        t.decrypt(b"k8s:enc:secretbox:v1:main:xxxx", b"k")
    with pytest.raises(TransformError, match="no encryption key is configured"):
        IdentityTransformer().decrypt(sealed, b"k")
    assert t.decrypt(b"plain bytes", b"k") == b"plain bytes"

    good = base64.b64encode(b"\x01" * 32).decode()
    for text, why in [("", "holds no key"), ("# only a comment\n", "holds no key"),
                      ("nokey\n", "want 'name:base64-key'"), ("k:!!!\n", "not valid base64"),
                      (f"k:{base64.b64encode(b'short').decode()}\n", "is 5 bytes"),
                      (f"k:{good}\nk:{good}\n", "given twice"), (f"bad name:{good}\n", "bad encryption key name")]:
        bad = tmp_path / "bad"
        bad.write_text(text)
        with pytest.raises(TransformError, match=why):
            AESGCMTransformer.from_key_file(bad)
    with pytest.raises(TransformError, match="cannot read"):
        AESGCMTransformer.from_key_file(tmp_path / "missing")
    both = tmp_path / "both"
    short_key = base64.b64encode(bytes(16)).decode()
    both.write_text(f"# rotation\nnew:{good}\n\nold:{short_key}\n")
    assert AESGCMTransformer.from_key_file(both).write_key == "new"


# ---- etcd failures ---------------------------------------------------------


def stopped(pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rpartition(")")[2].split()[0] in ("T", "t")


@pytest.mark.process
@pytest.mark.parametrize("kind", KINDS)
def test_etcd_failures_become_api_errors(kind, procs, tmp_path):
    m = start(procs, kind, tmp_path, f"down-{kind}")

    async def body(s: Storage, etcd):
        await s.create(CONFIGMAPS, configmap("default", "x"))

        # a value over etcd's request size limit (1.5 MiB by default)
        err = await api_error(s.create(CONFIGMAPS, configmap("default", "big", blob="x" * (2 << 20))))
        assert err.reason == "RequestEntityTooLarge", err
        assert "request is too large" in err.message or "larger than max" in err.message

        # a member that does not answer: the deadline expires
        short = Storage(etcd, request_timeout=0.5)
        os.kill(m.pid, signal.SIGSTOP)
        try:
            wait_until(lambda: stopped(m.pid), timeout=10, what=f"{kind} to stop")
            err = await api_error(short.get(CONFIGMAPS, "default", "x"))
            assert err.reason == "Timeout" and err.grpc_code.name == "DEADLINE_EXCEEDED"
        finally:
            os.kill(m.pid, signal.SIGCONT)
        assert (await s.get(CONFIGMAPS, "default", "x")).metadata.name == "x"

        # a member that is gone: ServiceUnavailable, from every kind of call
        m.kill()
        calls = [lambda: s.get(CONFIGMAPS, "default", "x"),
                 lambda: s.create(CONFIGMAPS, configmap("default", "y")),
                 lambda: s.update(CONFIGMAPS, configmap("default", "x"), 5),
                 lambda: s.guaranteed_update(CONFIGMAPS, "default", "x", lambda cm: cm),
                 lambda: s.delete(CONFIGMAPS, "default", "x"),
                 lambda: s.list(CONFIGMAPS, "default", limit=1),
                 lambda: s.current_revision()]
        for call in calls:
            err = await api_error(call())
            assert err.reason == "ServiceUnavailable" and err.grpc_code.name == "UNAVAILABLE", err
            assert err.message.startswith("etcd is unavailable")
            # raised "from None": no gRPC error chained behind it
            assert err.__cause__ is None and err.__suppress_context__

    run(m, body, request_timeout=10)
