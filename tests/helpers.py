"""Helpers the test files share: the golden checkpoint and the smallest possible damage.

Imported as ``from helpers import ...`` (pytest puts tests/ on sys.path, as
for lt_helpers); conftest.py holds only fixtures, so it is never imported
under a second module name.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
GOLDEN = HERE / "data" / "golden"


PIECE = 16 * 1024  # the torrents of the BitTorrent tests: libtorrent's smallest piece size

def flip_byte(path: Path, offset: int, mask: int = 0x01) -> None:
    """Corrupt one byte in place (XOR with ``mask``): the smallest possible damage."""
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ mask]))


def by_path(report) -> dict:
    """A verify report's file results by relative path."""
    return {f.path: f for f in report.files}


# The golden set's measures: per position, float64.
def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


def rel_l2(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return np.linalg.norm(a - b, axis=-1) / np.linalg.norm(b, axis=-1)
