"""The one place ids become Milvus string literals (expressions.py)."""

from __future__ import annotations

from lookalike_server.expressions import ids_in, string_literal


def test_the_characters_that_end_or_escape_a_literal_are_escaped_as_both_grammars_read_them():
    assert string_literal('a"b') == '"a\\"b"'
    assert string_literal("a\\b") == '"a\\\\b"'
    assert string_literal("a\nb\rc\td") == '"a\\nb\\rc\\td"'


def test_every_other_character_stands_as_itself():
    # Milvus Lite knows no \\x or \\u escapes: control characters, NUL and the rest go in raw.
    raw = "'[]() or \x00\x07\x1b\x7f\u2028\U0001f600"
    assert string_literal(raw) == f'"{raw}"'


def test_an_id_cannot_close_the_literal_and_widen_the_expression():
    assert ids_in(['x" or id != "']) == 'id in ["x\\" or id != \\""]'
    assert ids_in(["a", "b"]) == 'id in ["a", "b"]'
