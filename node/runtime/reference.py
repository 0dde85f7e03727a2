"""Image references, normalized as Kubernetes and containerd do (the docker reference grammar).

``busybox`` is ``docker.io/library/busybox:latest``; ``quay.io/x/y@sha256:...`` keeps its
digest; a reference with neither tag nor digest gets ``:latest``. Two spellings of one image
normalize to one string, which is what the image store keys its names on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT_DOMAIN = "docker.io"
LEGACY_DOMAIN = "index.docker.io"
OFFICIAL_REPO_PREFIX = "library/"
DEFAULT_TAG = "latest"
MAX_NAME_LENGTH = 255

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN_PART = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"(?:{_DOMAIN_PART}(?:\.{_DOMAIN_PART})*|\[[0-9a-fA-F:.]+\])(?::[0-9]+)?"
_NAME_RE = re.compile(rf"(?:{_DOMAIN}/)?{_COMPONENT}(?:/{_COMPONENT})*")
_TAG_RE = re.compile(r"[\w][\w.-]{0,127}")
_DIGEST_RE = re.compile(r"[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]{32,}")
_SHA256_HEX = re.compile(r"[a-f0-9]{64}")


class InvalidReference(ValueError):
    """Not an image reference (Kubernetes reports InvalidImageName for such an image)."""


@dataclass(frozen=True)
class Reference:
    name: str  # domain/path, e.g. docker.io/library/busybox
    tag: str | None = None
    digest: str | None = None  # "sha256:<64 hex>"

    def __str__(self) -> str:
        out = self.name
        if self.tag:
            out += ":" + self.tag
        if self.digest:
            out += "@" + self.digest
        return out

    @property
    def domain(self) -> str:
        return self.name.split("/", 1)[0]

    @property
    def path(self) -> str:
        return self.name.split("/", 1)[1]

    def familiar(self) -> str:
        """The short form people type (``busybox:latest``), as docker prints it."""
        name = self.name
        if self.domain == DEFAULT_DOMAIN:
            name = self.path
            if name.startswith(OFFICIAL_REPO_PREFIX) and name.count("/") == 1:
                name = name[len(OFFICIAL_REPO_PREFIX):]
        return str(Reference(name, self.tag, self.digest))


def _split_domain(name: str) -> tuple[str, str]:
    first, sep, rest = name.partition("/")
    if not sep or ("." not in first and ":" not in first and first != "localhost"
                   and first.lower() == first):
        domain, rest = DEFAULT_DOMAIN, name
    else:
        domain = first
    if domain == LEGACY_DOMAIN:
        domain = DEFAULT_DOMAIN
    if domain == DEFAULT_DOMAIN and "/" not in rest:
        rest = OFFICIAL_REPO_PREFIX + rest
    return domain, rest


def parse(ref: str) -> Reference:
    """The fully qualified reference for `ref`, without adding a default tag."""
    if not ref:
        raise InvalidReference("invalid reference format: empty image name")
    if _SHA256_HEX.fullmatch(ref):
        raise InvalidReference(f"invalid repository name ({ref}), cannot specify 64-byte "
                               "hexadecimal strings")
    rest, _, digest = ref.partition("@")
    if digest and not _DIGEST_RE.fullmatch(digest):
        raise InvalidReference(f"invalid reference format: bad digest in {ref!r}")
    if digest.startswith("sha256:") and not _SHA256_HEX.fullmatch(digest[7:]):
        raise InvalidReference(f"invalid checksum digest length in {ref!r}")
    name, tag = rest, None
    colon = rest.rfind(":")
    if colon > rest.rfind("/"):
        name, tag = rest[:colon], rest[colon + 1:]
        if not _TAG_RE.fullmatch(tag):
            raise InvalidReference(f"invalid reference format: bad tag in {ref!r}")
    if not _NAME_RE.fullmatch(name):
        if _NAME_RE.fullmatch(name.lower()):
            raise InvalidReference(f"invalid reference format: repository name ({name}) must be lowercase")
        raise InvalidReference(f"invalid reference format: {ref!r}")
    domain, path = _split_domain(name)
    full = f"{domain}/{path}"
    if len(full) > MAX_NAME_LENGTH:
        raise InvalidReference(f"repository name must not be more than {MAX_NAME_LENGTH} characters")
    if path.lower() != path:
        raise InvalidReference(f"invalid reference format: repository name ({path}) must be lowercase")
    return Reference(full, tag, digest or None)


def normalize(ref: str) -> Reference:
    """`ref` fully qualified, as containerd's CRI keys images: ``:latest`` when it names
    neither tag nor digest; only the digest when it names both (the digest decides)."""
    r = parse(ref)
    if r.digest is not None:
        return Reference(r.name, None, r.digest)
    return Reference(r.name, r.tag or DEFAULT_TAG)
