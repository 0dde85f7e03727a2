"""Our images and our CRI client against the reference: Debian's containerd 1.6 with its CRI
plugin, on its own socket and directories in tmp_path. An image exported from our store is
taken by ``ctr images import`` unchanged (same id, same size), and containerd's ImageService
answers about it what ours answers."""

from __future__ import annotations

import os
import shutil

import pytest

from cri_server import ServerThread
from harness import containerd as containerd_harness
from harness.containerd import Containerd
from node.cri.client import CriClient, CriError
from node.runtime.image_service import add_to_server
from node.runtime.images import ImageStore, build_busybox

BUSYBOX = shutil.which("busybox") or "/usr/bin/busybox"

pytestmark = [
    pytest.mark.process,
    pytest.mark.skipif(not (containerd_harness.CONTAINERD and containerd_harness.CTR),
                       reason="containerd is not installed (apt-get install containerd)"),
    pytest.mark.skipif(os.geteuid() != 0, reason="containerd needs root"),
    pytest.mark.skipif(not os.path.exists(BUSYBOX), reason="busybox-static is not installed (make node-deps)"),
]


@pytest.fixture
def containerd(tmp_path, procs):
    ctd = Containerd(tmp_path / "ctd", procs)
    try:
        ctd.start()
        yield ctd
    finally:
        problems = ctd.cleanup()
    assert problems == []


def test_ctr_imports_our_export_and_both_cris_agree(tmp_path, containerd):
    store = ImageStore(str(tmp_path / "store"))
    img = build_busybox(store, BUSYBOX)
    store.tag(img, "quay.io/example/busybox:v1")
    archive = str(tmp_path / "busybox.tar")
    store.export(["busybox", "quay.io/example/busybox:v1"], archive)
    containerd.ctr("images", "import", archive)

    sock = str(tmp_path / "ours.sock")
    with ServerThread(sock, lambda s: add_to_server(s, store)), \
            CriClient(containerd.endpoint, timeout=20) as theirs, CriClient(f"unix://{sock}", timeout=20) as ours:
        assert theirs.version().runtime_name == "containerd"
        for ref in ("busybox", "docker.io/library/busybox:latest", "quay.io/example/busybox:v1", img.id):
            t, o = theirs.image_status(ref).image, ours.image_status(ref).image
            assert (t.id, t.size, sorted(t.repo_tags)) == (o.id, o.size, sorted(o.repo_tags)), ref
            assert (t.HasField("uid"), t.username) == (o.HasField("uid"), o.username)
        assert t.id == img.id and sorted(t.repo_tags) == ["docker.io/library/busybox:latest",
                                                          "quay.io/example/busybox:v1"]
        # an image neither has: an empty status from both, not an error
        assert not theirs.image_status("nosuch:1").HasField("image")
        assert not ours.image_status("nosuch:1").HasField("image")
        assert {i.id for i in theirs.list_images()} == {i.id for i in ours.list_images()} == {img.id}
        # removal by one name removes the image with all its names, in both
        theirs.remove_image("quay.io/example/busybox:v1")
        ours.remove_image("quay.io/example/busybox:v1")
        assert theirs.list_images() == [] and ours.list_images() == []


def test_we_import_what_ctr_exports(tmp_path, containerd):
    store = ImageStore(str(tmp_path / "store"))
    img = build_busybox(store, BUSYBOX)
    store.export(["busybox"], str(tmp_path / "ours.tar"))
    containerd.ctr("images", "import", str(tmp_path / "ours.tar"))
    containerd.ctr("images", "tag", "docker.io/library/busybox:latest", "quay.io/x/bb:2")
    containerd.ctr("images", "export", str(tmp_path / "theirs.tar"), "quay.io/x/bb:2")
    other = ImageStore(str(tmp_path / "other"))
    [got] = other.add_oci_layout(str(tmp_path / "theirs.tar"))
    assert (got.id, got.repo_tags) == (img.id, ("quay.io/x/bb:2",))
    assert os.path.isfile(os.path.join(other.rootfs(got), "bin/busybox"))


def test_our_client_reads_containerds_runtime_service(containerd):
    with CriClient(containerd.endpoint, timeout=20) as cri:
        version = cri.version()
        assert (version.runtime_api_version, version.version) == ("v1", "0.1.0")
        conditions = {c.type: c for c in cri.status().status.conditions}
        assert conditions["RuntimeReady"].status
        # no CNI config in its conf_dir: the network is not ready, and says why
        assert not conditions["NetworkReady"].status and conditions["NetworkReady"].reason
        assert cri.list_pod_sandbox() == [] and cri.list_containers() == []
        assert cri.list_container_stats() == []
        fs = cri.image_fs_info().image_filesystems[0]
        assert fs.fs_id.mountpoint.startswith(str(containerd.dir))
        with pytest.raises(CriError) as err:
            cri.container_status("no-such-container")
        assert err.value.not_found
        cri.update_runtime_config("10.244.0.0/24")  # what a kubelet sends once it has a podCIDR
