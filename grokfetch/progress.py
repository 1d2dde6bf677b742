"""Progress bars: injectable, silenceable, always on stderr.

Library functions take a ``progress`` argument (a ``Progress`` factory);
the CLI chooses tqdm on a terminal, nothing when ``--quiet`` or when
``GROKFETCH_NO_PROGRESS`` is set.  Progress never goes to stdout, so output a
script parses stays clean.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any, Protocol


class Bar(Protocol):
    def update(self, n: int) -> Any: ...
    def set_postfix_str(self, s: str, refresh: bool = True) -> Any: ...
    def close(self) -> Any: ...


# What a library function takes as ``progress``: (total bytes, description) -> a Bar.
ProgressFactory = Callable[[int, str], Bar]


class NullBar:
    """A bar that does nothing (for --quiet, tests and non-terminals)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.n = 0

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix_str(self, s: str, refresh: bool = True) -> None:
        pass

    def set_description_str(self, s: str, refresh: bool = True) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> NullBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def no_progress(total: int, desc: str) -> Bar:
    """The default ProgressFactory: nothing shown."""
    return NullBar()


def bytes_bar(total: int, desc: str, enabled: bool | None = None) -> Any:
    """A byte-counting bar (rate, ETA) on stderr, or a NullBar when disabled.

    ``enabled=None`` means: on when stderr is a terminal and
    GROKFETCH_NO_PROGRESS is unset.
    """
    if enabled is None:
        enabled = sys.stderr.isatty() and not os.environ.get("GROKFETCH_NO_PROGRESS")
    if not enabled:
        return NullBar()
    from tqdm import tqdm

    return tqdm(
        total=total,
        desc=desc,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        file=sys.stderr,
        dynamic_ncols=True,
        leave=True,
    )
