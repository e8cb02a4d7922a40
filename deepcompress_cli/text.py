"""Text for a terminal or a log: nothing read from a file may drive the terminal or forge a line."""

from __future__ import annotations


def printable(text: str, keep_newlines: bool = False) -> str:
    """`text` with every non-printable character (controls such as CR, ESC, backspace; Unicode
    format characters such as bidi overrides; line separators) written as a `\\xNN`/`\\uNNNN`
    escape.  `keep_newlines` keeps "\\n" for text whose lines are the program's own, once
    every string taken from a file has been escaped whole (tables escape each cell)."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or (keep_newlines and c == "\n") else _escape(c) for c in text)


def _escape(c: str) -> str:
    code = ord(c)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"
