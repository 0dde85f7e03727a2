"""How the single-purpose benchmark scripts end: the report printed, and written to ``--out``
when given (the committed ``*_results.md`` files are made that way)."""

from __future__ import annotations


def emit(text: str, out: str | None) -> None:
    print(text)
    if out:
        with open(out, "w") as f:
            f.write(text)
