"""runtime.v1.ImageService over the node's image store, as containerd's CRI answers it.

The data plane has no registry: PullImage takes an image the store already holds (built
by ``build_busybox`` or imported with ``python -m node.runtime.images import``) and
unpacks its rootfs, so the kubelet's pull step works unchanged; an image the store lacks
fails as a registry's "not found" does in containerd (code NOT_FOUND, containerd's text),
which the kubelet reports as ErrImagePull and then ImagePullBackOff.

Store work (disk reads, unpacking, removal) runs in worker threads: the event loop also
serves the RuntimeService.
"""

from __future__ import annotations

import asyncio
import json
import time

import grpc

from node.pb import cri_pb2, cri_pb2_grpc
from node.runtime.images import Image, ImageError, ImageStore
from node.runtime.reference import InvalidReference, normalize


def user_of(config: dict) -> tuple[int | None, str]:
    """(uid, username) of an image's User, as the CRI reports it: a numeric user (before
    any ":group") is a uid, anything else a name; neither when the image sets no user."""
    user = (config.get("User") or "").split(":")[0]
    if not user:
        return None, ""
    try:
        return int(user), ""
    except ValueError:
        return None, user


class ImageService(cri_pb2_grpc.ImageServiceServicer):
    def __init__(self, store: ImageStore) -> None:
        self.store = store

    def _cri_image(self, image: Image) -> cri_pb2.Image:
        uid, username = user_of(self.store.config(image))
        out = cri_pb2.Image(id=image.id, repo_tags=image.repo_tags, repo_digests=image.repo_digests,
                            size=image.size, username=username, spec=cri_pb2.ImageSpec(image=image.id))
        if uid is not None:
            out.uid.value = uid
        return out

    async def ListImages(self, request, context):
        def run():
            wanted = request.filter.image.image if request.HasField("filter") else ""
            if wanted:
                image = self.store.resolve(wanted)
                return [self._cri_image(image)] if image else []
            return [self._cri_image(i) for i in self.store.list()]

        return cri_pb2.ListImagesResponse(images=await asyncio.to_thread(run))

    async def ImageStatus(self, request, context):
        def run():
            image = self.store.resolve(request.image.image)
            if image is None:
                return cri_pb2.ImageStatusResponse()  # absent: no image, no error
            resp = cri_pb2.ImageStatusResponse(image=self._cri_image(image))
            if request.verbose:
                resp.info["info"] = json.dumps({"id": image.id, "target": image.target,
                                                "imageSpec": self.store.image_config(image)})
            return resp

        return await asyncio.to_thread(run)

    async def PullImage(self, request, context):
        ref = request.image.image
        try:
            name = str(normalize(ref))
        except InvalidReference as e:
            await context.abort(grpc.StatusCode.UNKNOWN, f"failed to parse image reference {ref!r}: {e}")

        def run():
            image = self.store.resolve(name)
            if image is not None:
                self.store.rootfs(image)  # unpacked now, as a pull unpacks: containers start faster
            return image

        try:
            image = await asyncio.to_thread(run)
        except ImageError as e:
            await context.abort(grpc.StatusCode.UNKNOWN, f'failed to pull and unpack image "{name}": {e}')
        if image is None:
            await context.abort(grpc.StatusCode.NOT_FOUND,
                                f'failed to pull and unpack image "{name}": failed to resolve reference '
                                f'"{name}": {name}: not found')
        return cri_pb2.PullImageResponse(image_ref=image.id)

    async def RemoveImage(self, request, context):
        # an image already gone is success, as in containerd
        try:
            await asyncio.to_thread(self.store.remove, request.image.image)
        except ImageError as e:
            await context.abort(grpc.StatusCode.UNKNOWN, f"failed to delete image {request.image.image!r}: {e}")
        return cri_pb2.RemoveImageResponse()

    async def ImageFsInfo(self, request, context):
        used, inodes = await asyncio.to_thread(self.store.usage)
        return cri_pb2.ImageFsInfoResponse(image_filesystems=[cri_pb2.FilesystemUsage(
            timestamp=time.time_ns(), fs_id=cri_pb2.FilesystemIdentifier(mountpoint=self.store.root),
            used_bytes=cri_pb2.UInt64Value(value=used), inodes_used=cri_pb2.UInt64Value(value=inodes))])


def add_to_server(server, store: ImageStore) -> ImageService:
    """Serve the ImageService of `store` on `server` (a grpclite GrpcServer)."""
    service = ImageService(store)
    cri_pb2_grpc.add_ImageServiceServicer_to_server(service, server)
    return service
