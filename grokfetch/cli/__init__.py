"""Command-line front end: ``grokfetch`` and ``python -m grokfetch``.

This package only parses options and formats results; errors become exit
codes in one place, ``GrokfetchGroup.invoke`` in ``base.py``.
"""

from __future__ import annotations

# Each import registers its command(s) on ``cli``.
from grokfetch.cli import inspect as _inspect  # noqa: E402,F401,I001
from grokfetch.cli import synth as _synth  # noqa: E402,F401
from grokfetch.cli import repack as _repack  # noqa: E402,F401
from grokfetch.cli import get as _get  # noqa: E402,F401
from grokfetch.cli import smoke as _smoke  # noqa: E402,F401
from grokfetch.cli import verify as _verify  # noqa: E402,F401
from grokfetch.cli import demo as _demo  # noqa: E402,F401
from grokfetch.cli.base import cli


def main() -> None:
    cli(prog_name="grokfetch")


__all__ = ["cli", "main"]
