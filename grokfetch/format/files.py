"""Random access to the bytes of a file: plain files by pread, ``.zst`` files by streaming.

A repack may hold its tensors as zstd streams of safetensors files
(``--compress zstd``), so a reader of any grokfetch output needs "the bytes
at this offset" of either kind; ``ArrayRef`` offsets in a ``.zst`` file count
decompressed bytes.  Reads go into fresh buffers (``pread``) rather than
slices of a memory map, because mapped pages count towards the process's
resident memory until the map goes away.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol

from grokfetch.errors import CheckpointFormatError


class ByteSource(Protocol):
    """The bytes of one file by offset; ``read`` raises CheckpointFormatError naming the
    file when it ends early."""

    path: Path

    def read(self, offset: int, n: int) -> bytearray: ...

    def close(self) -> None: ...


class FileBytes:
    """Random access to a plain file with pread (nothing stays mapped).

    The file is opened for each read and closed again: a whole-model run
    touches 770 files, more than some systems let a process hold open.
    """

    def __init__(self, path: Path):
        self.path = path

    def read(self, offset: int, n: int) -> bytearray:
        buf = bytearray(n)
        view, done = memoryview(buf), 0
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError as e:
            raise CheckpointFormatError(self.path, None, f"cannot open: {e.strerror}") from None
        try:
            while done < n:
                got = os.preadv(fd, [view[done:]], offset + done)
                if got <= 0:
                    raise CheckpointFormatError(
                        self.path, offset + done, "file ends inside a tensor"
                    )
                done += got
        finally:
            os.close(fd)
        return buf

    def close(self) -> None:
        pass


class ZstdBytes:
    """Reads of a zstd-compressed file by decompressed offset.

    A zstd stream can only be read forward, so reads in increasing offset
    order cost one pass; a read behind the current position starts over.
    The forward pass and the checks read each file front to back.
    """

    def __init__(self, path: Path):
        self.path = path
        self._file: Any = None
        self._reader: Any = None
        self._pos = 0

    def _restart(self) -> None:
        import zstandard

        self.close()
        try:
            self._file = open(self.path, "rb")  # noqa: SIM115 - closed in close()
        except OSError as e:
            raise CheckpointFormatError(self.path, None, f"cannot open: {e.strerror}") from None
        self._reader = zstandard.ZstdDecompressor().stream_reader(
            self._file, read_across_frames=True
        )
        self._pos = 0

    def read(self, offset: int, n: int) -> bytearray:
        import zstandard

        if self._reader is None or offset < self._pos:
            self._restart()
        buf = bytearray(n)
        try:
            while self._pos < offset:  # skip forward, decompressing into a bounded scratch
                skipped = self._reader.read(min(offset - self._pos, 8 << 20))
                if not skipped:
                    raise CheckpointFormatError(self.path, offset, "zstd stream ends early")
                self._pos += len(skipped)
            view, done = memoryview(buf), 0
            while done < n:
                got = self._reader.readinto(view[done:])
                if not got:
                    raise CheckpointFormatError(self.path, offset + done, "zstd stream ends early")
                done += got
        except zstandard.ZstdError as e:
            raise CheckpointFormatError(self.path, None, f"corrupt zstd stream: {e}") from None
        self._pos += n
        return buf

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
        if self._file is not None:
            self._file.close()
        self._reader = self._file = None


def open_source(path: Path) -> ByteSource:
    """A ByteSource for ``path``: a zstd stream if the name ends in ``.zst``."""
    return ZstdBytes(path) if path.name.endswith(".zst") else FileBytes(path)
