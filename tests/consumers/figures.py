"""Comparison figures for the consumers tier (the golden set's measures)."""

from __future__ import annotations

import numpy as np


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


def rel_l2(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return np.linalg.norm(a - b, axis=-1) / np.linalg.norm(b, axis=-1)


def record(name: str, **figures: object) -> None:
    """Print a result line (run with -s to see them; the README table quotes them)."""
    print(f"\n[consumers] {name}: " + ", ".join(f"{k}={v}" for k, v in figures.items()))
