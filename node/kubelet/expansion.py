"""Kubernetes' ``$(VAR)`` expansion, for env values, command and args.

The rules (those of Kubernetes' third_party/forked/golang/expansion):
``$(NAME)`` is replaced by NAME's value when the mapping has it and kept as
written when it does not; ``$$`` is a literal ``$`` (so ``$$(NAME)`` stays
``$(NAME)``); a ``$`` before anything else, a ``$(`` without its ``)`` and a
trailing ``$`` are kept. A name is everything up to the first ``)``, so
``$(A$(B))`` looks up ``A$(B`` and, unknown, is kept whole. Values are not
expanded again: a value that itself reads ``$(X)`` is inserted as is.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

Mapping_ = Callable[[str], str]


def mapping_for(*contexts: Mapping[str, str]) -> Mapping_:
    """A lookup through ``contexts`` in order; an unknown name maps to ``$(name)``."""
    def lookup(name: str) -> str:
        for context in contexts:
            if name in context:
                return context[name]
        return f"$({name})"
    return lookup


def expand(text: str, mapping: Mapping_ | Mapping[str, str]) -> str:
    """``text`` with its ``$(NAME)`` references replaced through ``mapping``
    (a function as made by ``mapping_for``, or a plain dict)."""
    if not callable(mapping):
        mapping = mapping_for(mapping)
    if "$" not in text:
        return text
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        dollar = text.find("$", i)
        if dollar < 0 or dollar + 1 >= n:
            out.append(text[i:])
            break
        out.append(text[i:dollar])
        following = text[dollar + 1]
        if following == "$":
            out.append("$")
            i = dollar + 2
        elif following == "(":
            close = text.find(")", dollar + 2)
            if close < 0:
                out.append("$(")   # an unterminated reference is kept, and scanning goes on after "$("
                i = dollar + 2
            else:
                out.append(mapping(text[dollar + 2:close]))
                i = close + 1
        else:
            out.append("$" + following)
            i = dollar + 2
    return "".join(out)
