"""Printing names that come from hostile places: file names, tensor names, pickle globals.

A file in a checkpoint folder can be called ``x\\e[2J\\e[H\\e[32mckpt-0 all 770
files OK`` (clears the screen and prints a fake verdict) or
``x\\nforged.safetensors: OK (blake3)`` (splits a b3sum-style line in two).
Every printer of such a name goes through ``escape`` and every report line
through ``report_line``, which follow b3sum's convention: ``\\`` becomes
``\\\\``, a newline ``\\n``, and a line whose name needed escaping starts with
a backslash, so ``b3sum --check``-style parsers read it back unambiguously.
Other control characters (ESC, CR, DEL, C1 controls) are written as
``\\xNN``/``\\uNNNN`` escapes: nothing a name holds reaches the terminal raw.
"""

from __future__ import annotations

import re

_NEEDS_ESCAPE = re.compile(r"[\\\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
MAX_TEXT = 400  # characters of a hostile value shown in a one-line message


def _one(m: re.Match[str]) -> str:
    c = m.group(0)
    if c in _NAMED:
        return _NAMED[c]
    return f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}"


def needs_escape(name: str) -> bool:
    return _NEEDS_ESCAPE.search(name) is not None


def escape(name: str) -> str:
    """``name`` with backslashes, newlines and every other control character escaped."""
    return _NEEDS_ESCAPE.sub(_one, name)


def escape_text(text: str) -> str:
    """A message for one line of a terminal: control characters escaped, backslashes kept
    (a message is read by people; a Windows-looking path in it must stay readable)."""
    return re.sub(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]", _one, text)


def report_line(name: str, rest: str) -> str:
    """``name: rest`` as one b3sum-style line (``\\`` first when the name was escaped)."""
    if needs_escape(name):
        return f"\\{escape(name)}{rest}"
    return f"{name}{rest}"


def shorten(text: str, limit: int = MAX_TEXT) -> str:
    """At most ``limit`` characters, saying how much was cut (a hostile file can make a
    value of megabytes; an error stays one short line)."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit:,} more characters)"
