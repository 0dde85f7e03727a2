"""Reading manifests: YAML or JSON files (several documents each, ``kind:
List`` expanded), a directory of them, or standard input.

Each document becomes a ``Document``: its raw dict (what apply records and
merges) and the typed object ``apiserver.manifest.from_dict`` decodes from it
(strict: an unknown field or a wrong type is an error naming its path),
with the namespace it goes into resolved as kubectl does.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from apiserver import manifest, resources
from apiserver.errors import ApiError
from apiserver.resources import Resource
from controllers.kctl.session import CommandError

MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")


class _Loader(yaml.SafeLoader):
    """YAML without implicit timestamps: Kubernetes' times are strings."""


_Loader.add_constructor("tag:yaml.org,2002:timestamp", yaml.SafeLoader.construct_yaml_str)


@dataclass
class Document:
    source: str  # the file it came from ("-" for stdin)
    raw: dict[str, Any]
    obj: Any  # the typed message
    resource: Resource

    @property
    def name(self) -> str:
        return self.obj.metadata.name

    @property
    def namespace(self) -> str:
        return self.obj.metadata.namespace


def parse_documents(text: str, source: str) -> list[dict]:
    """The non-empty documents of a YAML (or JSON) text, Lists expanded."""
    try:
        docs = list(yaml.load_all(text, Loader=_Loader))
    except yaml.YAMLError as e:
        raise CommandError(f'error parsing {source}: {e}') from None
    out: list[dict] = []
    for doc in docs:
        if doc is None:
            continue
        if not isinstance(doc, dict):
            raise CommandError(f"error parsing {source}: a document is a {type(doc).__name__}, "
                               f"not an object")
        if doc.get("kind") == "List" or (isinstance(doc.get("kind"), str)
                                         and doc["kind"].endswith("List") and "items" in doc):
            items = doc.get("items") or []
            if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
                raise CommandError(f"error parsing {source}: items of a List must be objects")
            out.extend(items)
        else:
            out.append(doc)
    return out


def _files(path: str) -> Iterator[tuple[str, str]]:
    """(source name, text) of ``path``: a file, a directory's manifests, or "-"."""
    if path == "-":
        yield "-", sys.stdin.read()
        return
    p = Path(path)
    if p.is_dir():
        for child in sorted(p.iterdir()):
            if child.is_file() and child.suffix in MANIFEST_SUFFIXES:
                yield str(child), child.read_text()
        return
    try:
        yield path, p.read_text()
    except OSError as e:
        raise CommandError(f'the path "{path}" does not exist' if not p.exists()
                           else f"cannot read {path}: {e.strerror}") from None


def decode(raw: dict, source: str, namespace: str, namespace_given: bool) -> Document:
    """One document as a typed object in its namespace. ``namespace`` (from
    -n, or "default") fills an unset metadata.namespace; a different one
    given with -n is an error, as in kubectl."""
    try:
        obj = manifest.from_dict(raw)
    except ApiError as e:
        raise CommandError(f'error validating "{source}": {e.message}') from None
    res = resources.of(obj)
    meta = obj.metadata
    if res.namespaced:
        if meta.namespace and namespace_given and meta.namespace != namespace:
            raise CommandError(
                f'the namespace from the provided object "{meta.namespace}" does not match the '
                f'namespace "{namespace}". You must pass \'--namespace={meta.namespace}\' to '
                f"perform this operation.")
        meta.namespace = meta.namespace or namespace
    else:
        meta.namespace = ""
    if not meta.name and not meta.generate_name:
        raise CommandError(f'error validating "{source}": {res.kind}: metadata.name is required')
    return Document(source, raw, obj, res)


def load(paths: list[str], namespace: str, namespace_given: bool, verb: str) -> list[Document]:
    """Every document of every path, decoded; the first bad one stops it."""
    if not paths:
        raise CommandError("must specify -f FILENAME")
    docs = []
    for path in paths:
        for source, text in _files(path):
            for raw in parse_documents(text, source):
                docs.append(decode(raw, source, namespace, namespace_given))
    if not docs:
        raise CommandError(f"no objects passed to {verb}")
    return docs
