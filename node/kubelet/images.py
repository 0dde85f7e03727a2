"""Making sure a container's image is on the node before it is created.

Kubernetes' image manager (pkg/kubelet/images): the pull policy decides
whether to pull (Never: only what is present; IfNotPresent: pull when
absent; Always: pull every time); a failed pull gives ErrImagePull and starts
a back-off per (pod, image), during which the answer is ImagePullBackOff
without asking the runtime again. The runtime is reached through two
injected callables (CRI ImageStatus and PullImage), so the rules test alone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from apiserver.pb import core_pb2
from node.kubelet.backoff import Backoff, image_key
from node.kubelet.status import ERR_IMAGE_NEVER_PULL, ERR_IMAGE_PULL, IMAGE_PULL_BACK_OFF


@dataclass
class ImageResult:
    image_ref: str = ""     # the image id to create the container from; "" on failure
    reason: str = ""        # "" on success, else the container's waiting reason
    message: str = ""


def with_default_tag(image: str) -> str:
    """``busybox`` -> ``busybox:latest``; a tag or digest stays."""
    last = image.rsplit("/", 1)[-1]
    if "@" in image or ":" in last:
        return image
    return image + ":latest"


def should_pull(policy: str, present: bool) -> bool:
    if policy == "Never":
        return False
    if policy == "Always":
        return True
    return not present  # IfNotPresent (and unset: the apiserver defaults it)


class ImagePuller:
    """``image_ref(image) -> str`` answers the local image id ("" when absent);
    ``pull(image) -> str`` pulls and answers the id, raising on failure."""

    def __init__(self, image_ref: Callable[[str], str], pull: Callable[[str], str],
                 backoff: Backoff | None = None) -> None:
        self.image_ref, self.pull = image_ref, pull
        self.backoff = backoff if backoff is not None else Backoff()

    def ensure(self, pod: core_pb2.Pod, container: core_pb2.Container) -> ImageResult:
        image = with_default_tag(container.image)
        try:
            ref = self.image_ref(image)
        except Exception as e:  # the runtime could not say
            return ImageResult(reason="ErrImageInspect", message=f'Failed to inspect image "{image}": {e}')
        policy = container.image_pull_policy or "IfNotPresent"
        if not should_pull(policy, bool(ref)):
            if ref:
                return ImageResult(image_ref=ref, message=f'Container image "{image}" already present on machine')
            return ImageResult(reason=ERR_IMAGE_NEVER_PULL,
                               message=f'Container image "{image}" is not present with pull policy of Never')
        key = image_key(pod, image)
        now = self.backoff.clock()
        if self.backoff.is_in_back_off_since_update(key, now):
            return ImageResult(reason=IMAGE_PULL_BACK_OFF, message=f'Back-off pulling image "{image}"')
        try:
            ref = self.pull(image)
        except Exception as e:
            self.backoff.next(key, self.backoff.clock())
            return ImageResult(reason=ERR_IMAGE_PULL, message=str(e) or f'failed to pull image "{image}"')
        self.backoff.gc()
        return ImageResult(image_ref=ref)
