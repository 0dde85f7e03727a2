"""runtime.v1.ImageService on the image store, served by grpclite on a unix socket and called
with the CRI client: what the kubelet sees of images, pulls that take from the store, and a
missing image failing as containerd fails it (the kubelet's ErrImagePull)."""

from __future__ import annotations

import os
import shutil
import threading

import grpc
import pytest

from cri_server import ServerThread
from node.cri.client import CriClient, CriError
from node.pb import cri_pb2
from node.runtime.image_service import add_to_server, user_of
from node.runtime.images import ImageStore, build_busybox
from node.runtime.layers import LayerEntry, write_layer

BUSYBOX = shutil.which("busybox") or "/usr/bin/busybox"


def _image(store, names, user=None, payload=b"x"):
    config = {"config": {"Cmd": ["run"], **({"User": user} if user is not None else {})}}
    return store.create_image([write_layer([LayerEntry("f", "file", 0o644, payload)], 0)], config, names)


@pytest.fixture
def served(tmp_path):
    store = ImageStore(str(tmp_path / "store"))
    sock = str(tmp_path / "cri.sock")
    with ServerThread(sock, lambda server: add_to_server(server, store)):
        with CriClient(f"unix://{sock}", timeout=10) as cri:
            yield store, cri


def test_user_of_image_config():
    assert user_of({}) == (None, "")
    assert user_of({"User": "1000"}) == (1000, "")
    assert user_of({"User": "1000:50"}) == (1000, "")
    assert user_of({"User": "nobody:nogroup"}) == (None, "nobody")


def test_list_and_status_report_what_the_store_holds(served):
    store, cri = served
    assert cri.list_images() == []
    app = _image(store, ["app:1", "quay.io/x/app:2"], user="1000:1000")
    named = _image(store, ["named:1"], user="www", payload=b"y")
    images = {i.id: i for i in cri.list_images()}
    assert set(images) == {app.id, named.id}
    got = images[app.id]
    assert list(got.repo_tags) == ["docker.io/library/app:1", "quay.io/x/app:2"]
    assert list(got.repo_digests) == list(app.repo_digests)
    assert got.size == app.size and got.uid.value == 1000 and got.HasField("uid") and got.username == ""
    assert not images[named.id].HasField("uid") and images[named.id].username == "www"

    [only] = cri.list_images(cri_pb2.ImageFilter(image=cri_pb2.ImageSpec(image="named:1")))
    assert only.id == named.id
    assert cri.list_images(cri_pb2.ImageFilter(image=cri_pb2.ImageSpec(image="nope"))) == []

    for ref in ("app:1", "docker.io/library/app:1", app.id, app.id[7:19], app.repo_digests[0]):
        assert cri.image_status(ref).image.id == app.id, ref
    assert not cri.image_status("app:2").HasField("image")
    assert not cri.image_status("Not A Reference").HasField("image")
    verbose = cri.image_status("app:1", verbose=True)
    assert '"Cmd": ["run"]' in verbose.info["info"]


def test_pull_takes_the_image_from_the_store_and_unpacks_it(served):
    store, cri = served
    app = _image(store, ["app:1"])
    assert not os.path.exists(store.rootfs_path(app))
    assert cri.pull_image("app:1") == app.id  # containerd answers the image id
    assert os.path.isfile(os.path.join(store.rootfs_path(app), "f"))
    assert cri.pull_image(cri_pb2.ImageSpec(image=app.repo_digests[0])) == app.id


def test_pulling_an_image_the_store_lacks_fails_as_containerd_does(served):
    store, cri = served
    with pytest.raises(CriError) as err:
        cri.pull_image("nosuch:1.0")
    assert err.value.code == grpc.StatusCode.NOT_FOUND
    assert err.value.details == (
        'failed to pull and unpack image "docker.io/library/nosuch:1.0": failed to resolve reference '
        '"docker.io/library/nosuch:1.0": docker.io/library/nosuch:1.0: not found')
    with pytest.raises(CriError) as err:
        cri.pull_image("BusyBox")
    assert err.value.code == grpc.StatusCode.UNKNOWN and "failed to parse image reference" in err.value.details


def test_concurrent_pulls_unpack_once(served):
    store, cri = served
    app = _image(store, ["app:1"], payload=os.urandom(1 << 20))
    results, errors = [], []

    def pull():
        try:
            results.append(cri.pull_image("app:1"))
        except CriError as e:
            errors.append(e)

    threads = [threading.Thread(target=pull) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == [] and results == [app.id] * 8
    assert sorted(os.listdir(store.rootfs_dir)) == [app.id[7:]]  # no leftover unpack dirs


def test_remove_image_and_removing_it_again(served):
    store, cri = served
    app = _image(store, ["app:1", "app:alias"])
    cri.pull_image("app:1")
    cri.remove_image("app:alias")  # every name of the image goes, as with containerd
    assert cri.list_images() == []
    assert not cri.image_status("app:1").HasField("image")
    assert not os.path.exists(store.rootfs_path(app))
    cri.remove_image("app:1")  # already gone: success
    with pytest.raises(CriError) as err:
        cri.pull_image("app:1")
    assert err.value.not_found


def test_image_fs_info_reports_the_store(served):
    store, cri = served
    before = cri.image_fs_info().image_filesystems[0]
    assert before.fs_id.mountpoint == store.root
    _image(store, ["big:1"], payload=os.urandom(300_000))
    cri.pull_image("big:1")
    after = cri.image_fs_info().image_filesystems[0]
    assert after.used_bytes.value >= before.used_bytes.value + 600_000  # the blob and the unpacked file
    assert after.inodes_used.value > before.inodes_used.value
    assert after.timestamp >= before.timestamp > 0


@pytest.mark.process
@pytest.mark.skipif(not os.path.exists(BUSYBOX), reason="busybox-static is not installed (make node-deps)")
def test_busybox_through_the_image_service(served):
    store, cri = served
    img = build_busybox(store, BUSYBOX)
    assert cri.pull_image("busybox") == img.id
    status = cri.image_status("docker.io/library/busybox:latest").image
    assert list(status.repo_tags) == ["docker.io/library/busybox:latest"]
    assert os.path.isfile(os.path.join(store.rootfs_path(img), "bin/sh"))
