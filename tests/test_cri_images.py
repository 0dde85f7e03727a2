"""The image store: references normalized as Kubernetes does, OCI layouts in and out with
their digests checked, layers applied with whiteouts and confined to the rootfs, and a
busybox image built from busybox-static that really runs."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile

import pytest

from node.runtime import images as images_mod
from node.runtime.images import ImageError, ImageStore, build_busybox
from node.runtime.layers import LayerEntry, LayerError, apply_layer, write_layer
from node.runtime.reference import InvalidReference, normalize, parse

BUSYBOX = shutil.which("busybox") or "/usr/bin/busybox"
needs_busybox = pytest.mark.skipif(not os.path.exists(BUSYBOX),
                                   reason="busybox-static is not installed (make node-deps installs it)")
D = "sha256:" + "ab" * 32


# ---- references ----

@pytest.mark.parametrize("ref, want", [
    ("busybox", "docker.io/library/busybox:latest"),
    ("busybox:1.36", "docker.io/library/busybox:1.36"),
    ("library/busybox", "docker.io/library/busybox:latest"),
    ("docker.io/busybox", "docker.io/library/busybox:latest"),
    ("index.docker.io/library/busybox:x", "docker.io/library/busybox:x"),
    ("someone/app", "docker.io/someone/app:latest"),
    ("quay.io/coreos/etcd:v3.5", "quay.io/coreos/etcd:v3.5"),
    ("localhost/app", "localhost/app:latest"),
    ("localhost:5000/a/b/c:t", "localhost:5000/a/b/c:t"),
    ("registry.k8s.io/pause:3.9", "registry.k8s.io/pause:3.9"),
    (f"busybox@{D}", f"docker.io/library/busybox@{D}"),
    # both: the digest decides, as in containerd's CRI
    (f"busybox:1.36@{D}", f"docker.io/library/busybox@{D}"),
])
def test_references_normalize_like_kubernetes(ref, want):
    assert str(normalize(ref)) == want


def test_reference_parts_and_familiar_form():
    r = parse("busybox:1.36")
    assert (r.domain, r.path, r.tag, r.digest) == ("docker.io", "library/busybox", "1.36", None)
    assert normalize("busybox").familiar() == "busybox:latest"
    assert normalize("quay.io/a/b:c").familiar() == "quay.io/a/b:c"


@pytest.mark.parametrize("bad", ["", "BusyBox", "busybox:", "busybox::1", "a b", "busybox@sha256:abc",
                                 "ab" * 32, "-x", "x/", "busybox:" + "t" * 129])
def test_invalid_references_are_rejected(bad):
    with pytest.raises(InvalidReference):
        normalize(bad)


# ---- layers ----

def _tar_gz(members: list[tuple[str, str, bytes | str]]) -> bytes:
    """A layer from (name, type, data-or-linkname) with types f d l(symlink) h(hardlink)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, kind, payload in members:
            info = tarfile.TarInfo(name)
            info.mode = 0o755 if kind == "d" else 0o644
            if kind == "f":
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
                continue
            info.type = {"d": tarfile.DIRTYPE, "l": tarfile.SYMTYPE, "h": tarfile.LNKTYPE}[kind]
            info.linkname = payload if kind in "lh" else ""
            tar.addfile(info)
    return raw.getvalue()


def _apply(tmp_path, root, members, name="layer"):
    blob = tmp_path / name
    blob.write_bytes(_tar_gz(members))
    return apply_layer(str(blob), str(root))


def test_whiteouts_remove_and_hide_what_lower_layers_made(tmp_path):
    root = tmp_path / "rootfs"
    root.mkdir()
    _apply(tmp_path, root, [("etc", "d", b""), ("etc/keep", "f", b"k"), ("etc/gone", "f", b"g"),
                            ("data", "d", b""), ("data/old1", "f", b"1"), ("data/sub", "d", b""),
                            ("data/sub/old2", "f", b"2"), ("thing", "f", b"file")], "l1")
    _apply(tmp_path, root, [("etc/.wh.gone", "f", b""),
                            ("data/.wh..wh..opq", "f", b""), ("data/new", "f", b"n"),
                            ("thing", "d", b""), ("thing/inside", "f", b"x")], "l2")
    assert (root / "etc/keep").read_bytes() == b"k"
    assert not (root / "etc/gone").exists() and not (root / "etc/.wh.gone").exists()
    assert sorted(os.listdir(root / "data")) == ["new"]  # opaque: lower content hidden, own kept
    assert (root / "thing/inside").read_bytes() == b"x"  # a file replaced by a directory


def test_opaque_whiteout_spares_entries_of_its_own_layer_listed_before_it(tmp_path):
    root = tmp_path / "rootfs"
    root.mkdir()
    _apply(tmp_path, root, [("d", "d", b""), ("d/lower", "f", b"l")], "l1")
    _apply(tmp_path, root, [("d", "d", b""), ("d/mine", "f", b"m"), ("d/.wh..wh..opq", "f", b"")], "l2")
    assert sorted(os.listdir(root / "d")) == ["mine"]


def test_layers_cannot_write_outside_the_rootfs(tmp_path):
    root = tmp_path / "rootfs"
    outside = tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    _apply(tmp_path, root, [("escape", "l", str(outside)), ("up", "l", "../../outside"),
                            ("../../outside/dotdot", "f", b"x")], "l1")
    _apply(tmp_path, root, [("escape/abs", "f", b"a"), ("up/rel", "f", b"r")], "l2")
    assert os.listdir(outside) == []
    # the symlinks were followed as if the rootfs were /
    assert (root / str(outside).lstrip("/") / "abs").read_bytes() == b"a"
    assert (root / "outside/rel").read_bytes() == b"r"
    assert (root / "outside/dotdot").read_bytes() == b"x"
    # a hard link to a path outside names the same path inside, which does not exist
    with pytest.raises(LayerError, match="no such file"):
        _apply(tmp_path, root, [("hl", "h", "../../../etc/hostname")], "l3")


def test_diff_id_is_checked_and_compression_detected(tmp_path):
    layer, diff_id = write_layer([LayerEntry("a", "file", 0o644, b"hello")], mtime=0)
    blob = tmp_path / "blob"
    blob.write_bytes(layer)
    root = tmp_path / "r1"
    root.mkdir()
    assert apply_layer(str(blob), str(root), diff_id) == diff_id
    # the same tar uncompressed applies as well and has the same diff_id
    import gzip
    plain = tmp_path / "plain"
    plain.write_bytes(gzip.decompress(layer))
    assert hashlib.sha256(plain.read_bytes()).hexdigest() == diff_id[7:]
    root2 = tmp_path / "r2"
    root2.mkdir()
    assert apply_layer(str(plain), str(root2)) == diff_id
    with pytest.raises(LayerError, match="corrupt"):
        apply_layer(str(blob), str(root), "sha256:" + "0" * 64)
    blob.write_bytes(layer[:len(layer) // 2])
    with pytest.raises(LayerError):
        apply_layer(str(blob), str(tmp_path / "r1"))


def test_written_layers_are_reproducible():
    entries = [LayerEntry("bin", "dir"), LayerEntry("bin/x", "file", 0o755, b"x" * 1000),
               LayerEntry("bin/y", "hardlink", link="bin/x")]
    assert write_layer(entries, 123) == write_layer(entries, 123)
    assert write_layer(entries, 123)[1] != write_layer(entries, 124)[1]


# ---- the store, with small synthetic images ----

def _image(store: ImageStore, names: list[str], files: dict[str, bytes], **config):
    layer = write_layer([LayerEntry(p, "file", 0o644, data) for p, data in files.items()], mtime=0)
    return store.create_image([layer], {"config": config}, names)


def test_resolve_by_name_tag_digest_and_id(tmp_path):
    store = ImageStore(str(tmp_path / "store"))
    img = _image(store, ["app:1", "quay.io/x/app:v1"], {"f": b"1"}, Cmd=["run"], User="1000:1000")
    assert img.repo_tags == ("docker.io/library/app:1", "quay.io/x/app:v1")
    assert img.repo_digests == (f"docker.io/library/app@{img.target}", f"quay.io/x/app@{img.target}")
    for ref in ("app:1", "docker.io/library/app:1", "library/app:1", "quay.io/x/app:v1",
                f"app@{img.target}", img.id, img.id[7:], img.id[7:19], img.id[:19]):
        assert store.resolve(ref) == img, ref
    for ref in ("app", "app:2", "quay.io/y/app:v1", f"other@{img.target}", "ffff" * 16, "", "BAD"):
        assert store.resolve(ref) is None, ref
    assert store.config(img) == {"Cmd": ["run"], "User": "1000:1000"}
    assert store.image_config(img)["rootfs"]["diff_ids"] == list(img.diff_ids)
    blobs = [img.target, img.id, *img.layers]
    assert img.size == sum(os.path.getsize(store.blob_path(b)) for b in blobs)


def test_layout_on_disk_is_an_oci_image_layout(tmp_path):
    store = ImageStore(str(tmp_path / "store"))
    img = _image(store, ["app:1"], {"f": b"1"})
    assert json.loads((tmp_path / "store/oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads((tmp_path / "store/index.json").read_text())
    [entry] = index["manifests"]
    assert entry["digest"] == img.target
    assert entry["annotations"] == {"io.containerd.image.name": "docker.io/library/app:1",
                                    "org.opencontainers.image.ref.name": "1"}
    for blob in (tmp_path / "store/blobs/sha256").iterdir():  # every blob is named by its digest
        assert hashlib.sha256(blob.read_bytes()).hexdigest() == blob.name


def test_a_name_moves_to_the_newer_image(tmp_path):
    store = ImageStore(str(tmp_path / "store"))
    old = _image(store, ["app:latest", "app:1"], {"f": b"1"})
    new = _image(store, ["app:latest"], {"f": b"2"})
    assert store.resolve("app").id == new.id
    assert store.resolve("app:1").repo_tags == ("docker.io/library/app:1",)
    assert {i.id for i in store.list()} == {old.id, new.id}
    assert store.tag(new, "app:2").repo_tags == ("docker.io/library/app:2", "docker.io/library/app:latest")


def test_export_then_import_keeps_ids_names_and_digests(tmp_path):
    a = ImageStore(str(tmp_path / "a"))
    img = _image(a, ["app:1"], {"f": b"1"}, Cmd=["x"])
    out = tmp_path / "app.tar"
    a.export(["app:1"], str(out))
    with tarfile.open(out) as tar:
        names = set(tar.getnames())
    assert {"oci-layout", "index.json", f"blobs/sha256/{img.id[7:]}"} <= names
    b = ImageStore(str(tmp_path / "b"))
    [got] = b.add_oci_layout(str(out))
    assert (got.id, got.target, got.repo_tags) == (img.id, img.target, img.repo_tags)
    assert b.config(got) == {"Cmd": ["x"]}
    # an unpacked layout directory imports too, under a name it is given
    layout = tmp_path / "layout"
    with tarfile.open(out) as tar:
        tar.extractall(layout, filter="data")
    index = json.loads((layout / "index.json").read_text())
    for e in index["manifests"]:
        e.pop("annotations")
    (layout / "index.json").write_text(json.dumps(index))
    c = ImageStore(str(tmp_path / "c"))
    with pytest.raises(ImageError, match="without a name"):
        c.add_oci_layout(str(layout))
    [named] = c.add_oci_layout(str(layout), name="imported:v2")
    assert named.id == img.id and named.repo_tags == ("docker.io/library/imported:v2",)


def test_import_refuses_corrupt_blobs(tmp_path):
    a = ImageStore(str(tmp_path / "a"))
    img = _image(a, ["app:1"], {"f": b"1"})
    layout = tmp_path / "layout"
    a.export(["app:1"], str(tmp_path / "x.tar"))
    with tarfile.open(tmp_path / "x.tar") as tar:
        tar.extractall(layout, filter="data")
    layer = layout / "blobs/sha256" / img.layers[0][7:]
    data = bytearray(layer.read_bytes())
    data[len(data) // 2] ^= 0xFF
    layer.write_bytes(bytes(data))
    b = ImageStore(str(tmp_path / "b"))
    with pytest.raises(ImageError, match="does not match"):
        b.add_oci_layout(str(layout))
    assert b.list() == []


def test_image_index_resolves_to_this_platform(tmp_path):
    a = ImageStore(str(tmp_path / "a"))
    img = _image(a, ["app:1"], {"f": b"1"})
    os_name, arch = images_mod.host_platform()
    manifest_size = os.path.getsize(a.blob_path(img.target))
    index = {"schemaVersion": 2, "mediaType": images_mod.MEDIA_OCI_INDEX, "manifests": [
        {"mediaType": images_mod.MEDIA_OCI_MANIFEST, "digest": "sha256:" + "0" * 64, "size": 1,
         "platform": {"os": "linux", "architecture": "no-such-arch"}},
        {"mediaType": images_mod.MEDIA_OCI_MANIFEST, "digest": img.target, "size": manifest_size,
         "platform": {"os": os_name, "architecture": arch}}]}
    index_digest, index_size = a.put_blob(json.dumps(index).encode())
    layout = tmp_path / "layout"
    (layout / "blobs/sha256").mkdir(parents=True)
    for d in (index_digest, img.target, img.id, *img.layers):
        shutil.copy(a.blob_path(d), layout / "blobs/sha256" / d[7:])
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": images_mod.MEDIA_OCI_INDEX, "digest": index_digest, "size": index_size,
         "annotations": {"io.containerd.image.name": "quay.io/multi/app:2"}}]}))
    b = ImageStore(str(tmp_path / "b"))
    [got] = b.add_oci_layout(str(layout))
    assert (got.id, got.manifest, got.target) == (img.id, img.target, index_digest)
    assert got.repo_digests == (f"quay.io/multi/app@{index_digest}",)
    assert os.path.exists(b.rootfs(got) + "/f")


def test_remove_drops_names_unshared_blobs_and_the_rootfs(tmp_path):
    store = ImageStore(str(tmp_path / "store"))
    shared = write_layer([LayerEntry("shared", "file", 0o644, b"s")], 0)
    own = write_layer([LayerEntry("own", "file", 0o644, b"o")], 0)
    one = store.create_image([shared, own], {"config": {"Cmd": ["1"]}}, ["one:1", "one:alias"])
    two = store.create_image([shared], {"config": {"Cmd": ["2"]}}, ["two:1"])
    rootfs = store.rootfs(one)
    assert sorted(os.listdir(rootfs)) == ["own", "shared"]
    assert store.rootfs(one) == rootfs  # unpacked once, then reused
    assert store.remove("one:alias").id == one.id
    assert store.resolve("one:1") is None and store.resolve(one.id) is None
    assert not os.path.exists(rootfs)
    left = set(os.listdir(tmp_path / "store/blobs/sha256"))
    assert left == {two.target[7:], two.id[7:], two.layers[0][7:]}
    assert store.remove("one:1") is None  # removing what is gone is not an error
    assert [i.id for i in store.list()] == [two.id]


def test_usage_counts_hard_links_once(tmp_path):
    store = ImageStore(str(tmp_path / "store"))
    before = store.usage()
    img = store.create_image([write_layer([LayerEntry("big", "file", 0o644, os.urandom(200_000)),
                                           LayerEntry("link", "hardlink", link="big")], 0)], {}, ["u:1"])
    store.rootfs(img)
    used, inodes = store.usage()
    assert used - before[0] >= 400_000  # the layer blob and the unpacked file, not the link again
    assert used - before[0] < 700_000
    assert inodes > before[1]


# ---- busybox from busybox-static ----

@pytest.fixture(scope="module")
def busybox_store(tmp_path_factory):
    if not os.path.exists(BUSYBOX):
        pytest.skip("busybox-static is not installed (make node-deps installs it)")
    store = ImageStore(str(tmp_path_factory.mktemp("bb") / "store"))
    return store, build_busybox(store, BUSYBOX)


@needs_busybox
@pytest.mark.process
def test_busybox_image(busybox_store, tmp_path):
    store, img = busybox_store
    assert store.resolve("busybox") == img and store.resolve("docker.io/library/busybox:latest") == img
    assert store.config(img) == {"Cmd": ["sh"], "Env": [images_mod.DEFAULT_PATH_ENV]}
    assert store.image_config(img)["os"] == "linux"
    rootfs = store.rootfs(img)
    busybox = os.stat(os.path.join(rootfs, "bin/busybox"))
    applets = subprocess.run([BUSYBOX, "--list-full"], capture_output=True, text=True, check=True).stdout.split()
    for applet in applets:
        st = os.stat(os.path.join(rootfs, applet))
        assert (st.st_ino, st.st_dev) == (busybox.st_ino, busybox.st_dev), applet
    assert busybox.st_nlink == len(set(applets))
    assert "root:x:0:0:" in open(os.path.join(rootfs, "etc/passwd")).read()
    assert os.stat(os.path.join(rootfs, "tmp")).st_mode & 0o7777 == 0o1777
    # the same binary builds the same image: ids are stable across stores and rebuilds
    again = build_busybox(ImageStore(str(tmp_path / "other")), BUSYBOX)
    assert (again.id, again.target) == (img.id, img.target)


@needs_busybox
@pytest.mark.process
@pytest.mark.skipif(os.geteuid() != 0, reason="chroot needs root")
def test_busybox_rootfs_runs_a_shell(busybox_store):
    store, img = busybox_store
    out = subprocess.run(["chroot", store.rootfs(img), "/bin/sh", "-c",
                          "echo hello; which httpd wget nc; id -u"],
                         capture_output=True, text=True, check=True, timeout=30,
                         env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}).stdout.split()
    assert out == ["hello", "/usr/sbin/httpd", "/usr/bin/wget", "/usr/bin/nc", "0"]


@needs_busybox
@pytest.mark.process
def test_cli_builds_lists_exports_imports_and_removes(tmp_path, capsys):
    store = str(tmp_path / "store")
    assert images_mod.main(["build-busybox", "--store", store, "--busybox", BUSYBOX]) == 0
    assert images_mod.main(["list", "--store", store]) == 0
    assert "docker.io/library/busybox:latest" in capsys.readouterr().out
    assert images_mod.main(["export", "--store", store, "busybox", "-o", str(tmp_path / "bb.tar")]) == 0
    other = str(tmp_path / "other")
    assert images_mod.main(["import", "--store", other, str(tmp_path / "bb.tar")]) == 0
    assert images_mod.main(["rootfs", "--store", other, "busybox"]) == 0
    assert os.path.isfile(os.path.join(capsys.readouterr().out.split()[-1], "bin/busybox"))
    assert images_mod.main(["remove", "--store", store, "busybox"]) == 0
    assert images_mod.main(["remove", "--store", store, "busybox"]) == 1
    assert "no image 'busybox'" in capsys.readouterr().err


def test_a_broken_image_does_not_hide_the_others(tmp_path):
    store = ImageStore(str(tmp_path / "store"))
    good = _image(store, ["good:1"], {"f": b"1"})
    bad = _image(store, ["bad:1"], {"f": b"2"})
    os.unlink(store.blob_path(bad.id))  # its config is gone
    store._parsed.clear()
    assert [i.id for i in store.list()] == [good.id]
    assert store.resolve("bad:1") is None and store.resolve("good:1") == good
    assert store.remove("bad:1") is None  # its name and its blobs go all the same
    assert [e["annotations"]["io.containerd.image.name"] for e in store._entries()] == ["docker.io/library/good:1"]
    assert not os.path.exists(store.blob_path(bad.layers[0]))
