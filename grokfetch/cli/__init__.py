"""Command-line front end: ``grokfetch`` and ``python -m grokfetch``.

This package only parses options and formats results.  Each command lives
in its own module (``get.py``, ``verify.py``, ...), loaded when it runs
(``base.COMMAND_MODULES``); errors become exit codes in one place,
``GrokfetchGroup.invoke`` in ``base.py``.
"""

from __future__ import annotations

from grokfetch.cli.base import cli


def main() -> None:
    cli(prog_name="grokfetch")


__all__ = ["cli", "main"]
