"""An array at an offset in a file: the one type every reader and writer of tensors shares.

The pickle reader finds arrays inside checkpoint files, the safetensors
header parser finds them inside safetensors files, the repack writer copies
from them and the forward pass's loader reads rows of them.  All of them
mean the same thing - raw C-order, little-endian bytes of ``dtype`` and
``shape`` starting at ``offset`` - so they share this one value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import ml_dtypes
import numpy as np

# numpy has no bfloat16 of its own; the checkpoint pickles name ml_dtypes' type.
BFLOAT16 = np.dtype(ml_dtypes.bfloat16)


@dataclass(frozen=True)
class ArrayRef:
    """A C-order array stored raw at ``offset`` in ``path``.

    For a zstd-compressed file (``.zst``), ``offset`` counts bytes of the
    decompressed stream.  Nothing is read: this only says where to look.
    """

    path: Path
    offset: int  # first payload byte
    dtype: np.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * np.dtype(self.dtype).itemsize

    @property
    def row_bytes(self) -> int:
        """Bytes of one element of the leading axis (one row, one expert)."""
        return math.prod(self.shape[1:]) * np.dtype(self.dtype).itemsize

    def sub(self, i: int) -> ArrayRef:
        """Element ``i`` of the leading axis (one expert of an [E, K, N] stack)."""
        return ArrayRef(self.path, self.offset + i * self.row_bytes, self.dtype, self.shape[1:])
