"""Comparison figures for the consumers tier (the golden set's measures)."""

from __future__ import annotations

from helpers import cosine, rel_l2  # noqa: F401 - the same measures as the suite


def record(name: str, **figures: object) -> None:
    """Print a result line (run with -s to see them; the README table quotes them)."""
    print(f"\n[consumers] {name}: " + ", ".join(f"{k}={v}" for k, v in figures.items()))
