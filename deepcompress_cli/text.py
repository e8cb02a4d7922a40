"""Text for a terminal or a log: nothing read from a file may drive the terminal or forge a line."""

from __future__ import annotations


def printable(text: str, keep_newlines: bool = False) -> str:
    """`text` with every non-printable character (controls such as CR, LF, ESC, backspace; Unicode
    format characters such as bidi overrides; line separators) written as Python writes it in a
    string literal (`\\r`, `\\x1b`, `\\u202e`).  `keep_newlines` keeps "\\n" for text whose lines
    are the program's own, once every string taken from a file has been escaped whole."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or (keep_newlines and c == "\n") else ascii(c)[1:-1] for c in text)
