"""Milvus filter expressions that lookalike builds itself: every id becomes a string literal here, and only here.

Both grammars read a double-quoted literal up to an unescaped quote; a raw newline or carriage return ends
it with an error, and a backslash starts an escape. The escapes both accept are \\\\, \\", \\n, \\r and \\t
(Milvus Lite 3 knows no \\x or \\u; a Milvus server knows those too), and every other character, control
characters and NUL included, may stand as itself. pymilvus' own `get(ids=...)`/`delete(ids=...)` build the
same `id in [...]` without escaping, so a backslash or newline in an id broke them (issue 23).
"""

from __future__ import annotations

from collections.abc import Iterable

_ESCAPES = str.maketrans({"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"})


def string_literal(value: str) -> str:
    """`value` as a Milvus string literal that both Milvus Lite and a Milvus server read back exactly."""
    return '"' + value.translate(_ESCAPES) + '"'


def ids_in(ids: Iterable[str]) -> str:
    """The expression selecting the rows whose primary key `id` is one of `ids`."""
    return "id in [" + ", ".join(string_literal(i) for i in ids) + "]"
