"""Sizes as people read them: the one byte formatter of every message and summary."""

from __future__ import annotations


def format_bytes(n: float) -> str:
    """``7743948`` -> ``'7.7 MB'``: decimal units (as disks are sold and ``df -H`` counts),
    one decimal; whole bytes below 1 kB."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{int(n)} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")  # pragma: no cover
