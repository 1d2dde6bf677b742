"""The safetensors format: its dtype names, the header both ways, and a streaming writer.

The format (https://huggingface.co/docs/safetensors) is simple enough to
read and write by hand::

    8 bytes    little-endian u64 N: length of the header
    N bytes    JSON header {"__metadata__": {str: str}, name: {"dtype", "shape",
               "data_offsets": [begin, end]}, ...}, padded with spaces so the
               payload starts 8-byte aligned
    payload    the tensors' bytes, back to back, C order, little-endian

``read_header`` is the one parser (the forward pass's loader and the tests
use it); ``header_bytes`` and ``write_safetensors`` the one writer.

Writing it ourselves lets a 1.6 GB int8 tensor go from its offset inside a
checkpoint pickle to the output in 8 MiB pieces (``Tensor`` with only a
``source``), and lets dequantization run in bounded row blocks (``Tensor``
with ``out_dtype`` / ``scales`` / ``transpose``).  ``safetensors.numpy.save``
would need every tensor materialised first.

Every byte written is hashed on the way out (BLAKE3 of the whole file plus of
each ``chunk_size`` slice, the manifest's definition), so an output never has
to be read back to be listed in a manifest.  Optionally the file is a zstd
stream (multithreaded) of exactly those safetensors bytes; the hashes are
then of the compressed bytes, i.e. of the file on disk.
"""

from __future__ import annotations

import contextlib
import errno
import json
import mmap
import os
import threading
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from math import prod
from pathlib import Path
from typing import IO, Any

import blake3
import numpy as np

from grokfetch.errors import CheckpointFormatError, DiskError, UsageError
from grokfetch.format.arrays import BFLOAT16, ArrayRef
from grokfetch.format.files import ByteSource
from grokfetch.fsutil import atomic_write, loads_json
from grokfetch.hashing import DEFAULT_CHUNK_SIZE, ChunkHasher
from grokfetch.readguard import Lease

# safetensors' dtype names with their numpy types, in the order of its Rust ``Dtype``
# enum: the reference serializer sorts tensors by this rank (descending), then by name,
# and so do we, so our files are byte-identical to ``safetensors.numpy.save``.  The two
# 8-bit float types have no numpy dtype here (None): never written, refused on reading.
DTYPES: dict[str, np.dtype | None] = {
    "BOOL": np.dtype(np.bool_),
    "U8": np.dtype(np.uint8),
    "I8": np.dtype(np.int8),
    "F8_E5M2": None,
    "F8_E4M3": None,
    "I16": np.dtype(np.int16),
    "U16": np.dtype(np.uint16),
    "F16": np.dtype(np.float16),
    "BF16": BFLOAT16,
    "I32": np.dtype(np.int32),
    "U32": np.dtype(np.uint32),
    "F32": np.dtype(np.float32),
    "F64": np.dtype(np.float64),
    "I64": np.dtype(np.int64),
    "U64": np.dtype(np.uint64),
}
_RANK = {name: i for i, name in enumerate(DTYPES)}
_NAMES = {dt: name for name, dt in DTYPES.items() if dt is not None}
MAX_HEADER_BYTES = 100 << 20  # a real header is a few hundred kB; bounds a hostile length

COPY_BLOCK = 8 << 20  # raw copies: 8 MiB reads beat copy_file_range here (and we must hash)
HASH_LAG = 2  # blocks the hashing thread may lag behind the writes (0: hash inline)
WRITEBACK_WINDOW = 64 << 20  # start writeback every this many bytes (0: leave it to the kernel)
# Dequantization block: 1 Mi values (4 MiB of float32 scratch) measured fastest here -
# small enough that the cast, multiply and round passes run from cache.
BLOCK_ELEMENTS = 1 << 20
# Transposed blocks gather source columns (strided); wider blocks amortise that.
TRANSPOSE_BLOCK_ELEMENTS = 4 << 20
TILE = 128  # transpose tile edge: a 128 x 128 tile of both sides stays in L1/L2
DEFAULT_ZSTD_LEVEL = 3


def dtype_name(dtype: np.dtype) -> str:
    """The safetensors name of a numpy dtype ('I8', 'BF16', 'F32', ...)."""
    try:
        return _NAMES[np.dtype(dtype)]
    except KeyError:
        raise UsageError(f"dtype {dtype} has no safetensors equivalent") from None


@dataclass(frozen=True)
class Tensor:
    """One tensor of an output file and how to compute its bytes from a source array.

    * only ``source``: the bytes are copied unchanged (``expert`` selects one
      slice of the leading axis, still a plain copy);
    * ``out_dtype``: the values are cast, in row blocks;
    * ``scales`` (bf16 [..., G, N] for an int8 [..., K, N] source): the
      weight is dequantized, each of the G row groups of K times its scale row;
    * ``transpose``: a 2-D result (after ``expert``) is written as [N, K],
      the [out, in] orientation PyTorch-style stacks expect.
    """

    name: str
    source: ArrayRef
    out_dtype: np.dtype | None = None
    scales: ArrayRef | None = None
    expert: int | None = None
    transpose: bool = False

    @property
    def src_shape(self) -> tuple[int, ...]:
        """Shape of the source selection (after picking ``expert``)."""
        return self.source.shape[1:] if self.expert is not None else self.source.shape

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.out_dtype) if self.out_dtype is not None else self.source.dtype

    @property
    def shape(self) -> tuple[int, ...]:
        s = self.src_shape
        return (s[1], s[0]) if self.transpose else s

    @property
    def nbytes(self) -> int:
        return prod(self.shape) * self.dtype.itemsize

    @property
    def groups(self) -> int | None:
        return None if self.scales is None else self.scales.shape[-2]

    @property
    def is_copy(self) -> bool:
        return self.scales is None and not self.transpose and self.dtype == self.source.dtype

    def check(self) -> None:
        """Raise UsageError if the description cannot be carried out."""
        if not self.name or self.name == "__metadata__":
            raise UsageError(f"bad tensor name {self.name!r}")
        src = self.source.shape
        if self.expert is not None and not (src and 0 <= self.expert < src[0]):
            raise UsageError(f"tensor {self.name}: expert {self.expert} outside shape {src}")
        if self.transpose and len(self.src_shape) != 2:
            raise UsageError(f"tensor {self.name}: can only transpose 2-D, got {self.src_shape}")
        if self.scales is not None:
            sc = self.scales.shape
            ok = (
                len(sc) == len(src) >= 2
                and sc[:-2] == src[:-2]
                and sc[-1] == src[-1]
                and sc[-2] >= 1
                and src[-2] % sc[-2] == 0
            )
            if not ok:
                raise UsageError(f"tensor {self.name}: scales {sc} do not fit weight {src}")


@dataclass(frozen=True)
class WrittenFile:
    """What ``write_safetensors`` produced: the file and the hashes of its bytes on disk."""

    path: Path
    size: int
    blake3: str
    # BLAKE3 of each chunk_size slice; None: not computed (chunked=False, a file larger
    # than one chunk)
    chunks: list[str] | None = field(default_factory=list)
    tensors: tuple[str, ...] = ()
    payload_bytes: int = 0  # uncompressed tensor bytes (== size - header for plain files)


def header_bytes(tensors: Sequence[Tensor], metadata: Mapping[str, str] | None = None) -> bytes:
    """The 8-byte length and the space-padded JSON header, tensors in the order given."""
    head: dict[str, Any] = {}
    if metadata:
        bad = [k for k, v in metadata.items() if not isinstance(k, str) or not isinstance(v, str)]
        if bad:
            raise UsageError(f"safetensors metadata must map str to str; bad keys: {bad}")
        head["__metadata__"] = dict(metadata)
    begin = 0
    for t in tensors:
        if t.name in head:
            raise UsageError(f"duplicate tensor name {t.name!r}")
        end = begin + t.nbytes
        head[t.name] = {
            "dtype": dtype_name(t.dtype),
            "shape": list(t.shape),
            "data_offsets": [begin, end],
        }
        begin = end
    text = json.dumps(head, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text


def order_tensors(tensors: Sequence[Tensor]) -> list[Tensor]:
    """Payload order of the reference serializer: wider dtypes first, then by name."""
    return sorted(tensors, key=lambda t: (-_RANK[dtype_name(t.dtype)], t.name))


class StreamDigest:
    """BLAKE3 of a byte stream and of each ``chunk_size`` slice of it, fed incrementally.

    Produces exactly what ``grokfetch.hashing.file_digests`` computes from the
    finished file (its ``ChunkHasher`` cuts the chunks), without reading it back.
    ``chunked=False`` leaves the chunk hashes out, as ``digest_file`` does: they are a
    second BLAKE3 of every byte.  A stream of at most one chunk still has its one
    chunk hash (its whole-stream hash), free.
    """

    def __init__(self, chunk_size: int = DEFAULT_CHUNK_SIZE, chunked: bool = True):
        if chunk_size <= 0:
            raise UsageError(f"chunk size must be positive, got {chunk_size}")
        self.size = 0
        self.chunk_size = chunk_size
        self._whole = blake3.blake3()
        self._chunks = ChunkHasher(chunk_size) if chunked else None

    @property
    def chunked(self) -> bool:
        return self._chunks is not None

    def update(self, data: bytes | memoryview) -> None:
        self.update_whole(data)
        self.update_chunks(data)

    def update_whole(self, data: bytes | memoryview) -> None:
        """The whole-file half of ``update`` (the halves may run on two threads, in order)."""
        self._whole.update(data)

    def update_chunks(self, data: bytes | memoryview) -> None:
        """The per-chunk half of ``update``."""
        mv = memoryview(data).cast("B")
        self.size += len(mv)
        if self._chunks is not None:
            self._chunks.update(mv)

    def finish(self) -> tuple[str, list[str] | None]:
        """(whole-stream hex digest, chunk digests); an empty stream has no chunks, and
        one of more than a chunk has None for them unless they were computed."""
        whole = self._whole.hexdigest()
        if self._chunks is not None:
            return whole, self._chunks.finish()
        if self.size > self.chunk_size:
            return whole, None
        return whole, [whole] if self.size else []


class SourceTap:
    """The BLAKE3 of a whole source file, from the bytes a writer copies out of it anyway.

    The copy hands over each block it read with its offset (``feed``); the tap hashes
    the file in order and reads only what the copy never reads - the pickle framing
    around the arrays, a few kB - itself.  A block that arrives ahead of the hash
    (a checkpoint's ``scales`` are written before its ``weight`` but lie after it in
    the file) is kept until the hash gets there, up to STASH bytes; beyond that, and
    for anything not fed (the bytes of converted outputs), ``finish`` reads the rest
    of the file itself.  So every byte of the file is hashed exactly once, in order,
    and the bytes hashed from the copy are the very bytes written.

    The hashing runs on a thread of its own (BLAKE3 releases the GIL), at most
    HASH_LAG blocks behind the copy, like the output's hashes in ``_HashingSink``:
    the copy's ring of HASH_LAG + 2 buffers is never reused under it.
    """

    STASH = 64 << 20

    def __init__(self, path: str | os.PathLike[str], size: int,
                 arrays: Sequence[ArrayRef] = ()):
        self.path = Path(path)
        self.size = size  # what the scan saw: the file must still have it at the end
        # where the copy's bytes lie: a gap holding none of them is framing, read here
        self.coming = sorted((a.offset, a.offset + a.nbytes) for a in arrays)
        self.pos = 0
        self.read_itself = 0  # bytes the tap had to read (the rest came from the copy)
        self._h = blake3.blake3()
        self._ahead: dict[int, bytes] = {}
        self._lock = threading.RLock()
        self._digest: str | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._pending: deque[Future[Any]] = deque()

    def _update(self, data: bytes | memoryview) -> None:
        """Hash ``data`` next, on the hashing thread; wait while it lags too far behind."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="source-hash")
        self._pending.append(self._pool.submit(self._h.update, data))
        while len(self._pending) > HASH_LAG:
            self._pending.popleft().result()

    def feed(self, offset: int, block: memoryview) -> None:
        """Bytes [offset, offset + len(block)) of the file, as the copy read them."""
        with self._lock:
            if self._digest is not None:
                return
            end = offset + len(block)
            if end <= self.pos:
                return  # hashed already
            if offset > self.pos:
                if not any(a < offset and b > self.pos for a, b in self.coming):
                    self._read_to(offset)  # framing between arrays: read it
                else:  # an array the copy has yet to read comes first: keep this for later
                    if sum(map(len, self._ahead.values())) + len(block) <= self.STASH:
                        self._ahead[offset] = bytes(block)
                    return
            self._update(block[self.pos - offset:])
            self.pos = end
            self._drain()

    def _drain(self) -> None:
        while self._ahead:
            at = min(self._ahead)
            if at > self.pos:
                return
            data = self._ahead.pop(at)
            if at + len(data) > self.pos:
                self._update(memoryview(data)[self.pos - at:])
                self.pos = at + len(data)

    def _read_to(self, end: int | None) -> None:
        """Hash the file's bytes from ``pos`` up to ``end`` (None: its end) by reading them."""
        fd = os.open(self.path, os.O_RDONLY)
        try:
            while end is None or self.pos < end:
                want = COPY_BLOCK if end is None else min(COPY_BLOCK, end - self.pos)
                data = os.pread(fd, want, self.pos)
                if not data:
                    break
                self._update(data)
                self.pos += len(data)
                self.read_itself += len(data)
        finally:
            os.close(fd)

    def finish(self) -> str:
        """The file's BLAKE3 (reading whatever the copy did not); CheckpointFormatError if
        the file no longer has the size the scan saw (it changed during the repack)."""
        with self._lock:
            if self._digest is None:
                try:
                    while True:
                        nxt = min(self._ahead, default=None)
                        self._read_to(nxt)
                        if nxt is None or self.pos < nxt:  # the end, or the file ends before it
                            break
                        self._drain()
                    while self._pending:
                        self._pending.popleft().result()
                finally:
                    self._stop()
                if self.pos != self.size:
                    raise CheckpointFormatError(
                        self.path, None, f"is {self.pos:,} bytes now, {self.size:,} when it "
                        "was scanned: it changed during the repack")
                self._digest = self._h.hexdigest()
            return self._digest

    def _stop(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
            self._pending.clear()

    def close(self) -> None:
        """After a write that failed or was interrupted: stop the hashing thread, and
        unless the hash is done start it over (a later ``finish`` reads the whole file)."""
        with self._lock:
            self._stop()
            if self._digest is None:
                self._h, self.pos, self._ahead = blake3.blake3(), 0, {}


class _HashingSink:
    """A write-only file object that hashes what passes through it (zstd writes here).

    Hashing runs on a helper thread (BLAKE3 releases the GIL) while this
    thread reads and writes the next blocks, at most HASH_LAG blocks behind:
    callers may reuse a block's buffer once HASH_LAG + 1 more blocks were
    written (``_copy_blocks`` keeps a ring of HASH_LAG + 2 buffers).

    Every WRITEBACK_WINDOW bytes it also asks the kernel to start writing the
    data out and to drop what is already on disk from the page cache
    (POSIX_FADV_DONTNEED), so the final fsync has little left to wait for and
    hundreds of GB of output do not push the source out of the cache.

    Measured (bench/repack.py's 8.14 GB layer, --jobs 2, interleaved rounds, medians;
    a trace sampling /proc/diskstats, Dirty and Writeback every 0.1 s; issue 15):

    * WRITEBACK_WINDOW 0 (no writeback started, no DONTNEED; what cp does): 26.2 s
      against 18.0 s (one traced run each, a minute apart).  The kernel lets 2.2 GB
      go dirty, throttles both writers, then writes in bursts of 2 GB/s with seconds
      of 0 MB/s between, and each final fsync waits up to 3 s.  Kept at 64 MiB.
    * the DONTNEED call on a thread of its own, up to 4 windows behind (so a writer
      never blocks submitting writeback while the virtual disk stalls on a flush):
      16.20 against 16.07 s pinned, 4 rounds.  Not kept.
    * HASH_LAG 6 instead of 2 (a ring of 8 buffers: the writer and the hashers
      absorb each other's stalls): unpinned 14.58 against 14.70 s, 5 rounds.  Not
      kept.
    * Where the time goes: with 2 jobs the process uses about one core of two
      (12-13 CPU s pinned, 17-19 unpinned: the second BLAKE3 of every byte), the
      disk writes 0.4-0.65 GB/s, and every fsync is a cache flush of the virtual
      disk during which no writer moves (0 MB/s and no CPU for up to 2.5 s); so
      repack's floor is the disk's write rate plus its flushes, as for cp + sync
      (13-26 s for the same bytes within one hour here).
    """

    def __init__(self, f: IO[bytes], digest: StreamDigest):
        self.f = f
        self.digest = digest
        # One thread per hash (whole file, chunks if computed): each sees the blocks in order.
        self.jobs = [digest.update_whole] + ([digest.update_chunks] if digest.chunked else [])
        self.pools = ([ThreadPoolExecutor(1, thread_name_prefix="hash") for _ in self.jobs]
                      if HASH_LAG else [])
        self.pending: deque[list[Future[None]]] = deque()
        self.pos = 0
        self.advised = 0

    def write(self, data: bytes | memoryview) -> int:
        self.f.write(data)
        n = len(data)
        self.pos += n
        if not self.pools:
            self.digest.update(data)
        else:
            if not self.digest.chunked:  # counts the size only: no thread needed
                self.digest.update_chunks(data)
            self.pending.append([pool.submit(fn, data)
                                 for pool, fn in zip(self.pools, self.jobs, strict=True)])
            while len(self.pending) > HASH_LAG:
                for fut in self.pending.popleft():
                    fut.result()
        if WRITEBACK_WINDOW and self.pos - self.advised >= WRITEBACK_WINDOW:
            self.f.flush()
            start = max(0, self.advised - WRITEBACK_WINDOW)  # the previous window is clean now
            # One call does both: Linux's DONTNEED starts writeback of the dirty pages in
            # the range (without waiting) and drops the clean ones.
            with contextlib.suppress(OSError, AttributeError):
                os.posix_fadvise(self.f.fileno(), start, self.pos - start,
                                 os.POSIX_FADV_DONTNEED)
            self.advised = self.pos
        return n

    def flush(self) -> None:
        self.f.flush()

    def finish(self) -> None:
        """Wait for the hashing to catch up (raises its error, if any) and stop the helper."""
        try:
            while self.pending:
                for fut in self.pending.popleft():
                    fut.result()
        finally:
            for pool in self.pools:
                pool.shutdown(wait=True, cancel_futures=True)


def _copy_blocks(src: ArrayRef, begin: int, nbytes: int,
                 tap: SourceTap | None = None) -> Iterator[memoryview]:
    """The raw bytes [begin, begin + nbytes) of the source file, in COPY_BLOCK pieces
    (each also handed to ``tap``, which hashes the source file from them)."""
    size = min(COPY_BLOCK, max(nbytes, 1))
    # A ring of buffers: the sink may still be hashing the last HASH_LAG blocks.
    ring = [memoryview(bytearray(size)) for _ in range(min(HASH_LAG + 2, -(-nbytes // size) or 1))]
    fd = os.open(src.path, os.O_RDONLY)
    try:
        done = 0
        i = 0
        while done < nbytes:
            view = ring[i % len(ring)]
            i += 1
            want = min(size, nbytes - done)
            got = os.preadv(fd, [view[:want]], begin + done)
            if got <= 0:
                raise CheckpointFormatError(src.path, begin + done, "file ends inside a tensor")
            if tap is not None:
                tap.feed(begin + done, view[:got])
            yield view[:got]
            done += got
    finally:
        os.close(fd)


class _Mapped:
    """A read-only mmap of a source file with numpy views of its arrays.

    After every block we drop our page mappings (MADV_DONTNEED: the page cache
    keeps the data) so resident memory stays at one block, not one tensor.
    """

    def __init__(self, path: Path):
        with open(path, "rb") as f:
            self.size = os.fstat(f.fileno()).st_size
            self.mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if self.size else None
            # A read lease on our own descriptor: a program truncating the file waits
            # for us (we stop at the next block) instead of killing us with SIGBUS.
            self.fd = os.dup(f.fileno())
        self.lease = Lease(self.fd, path)

    def array(self, a: ArrayRef) -> np.ndarray:
        if self.mm is None or a.offset < 0 or a.offset + a.nbytes > self.size:
            raise CheckpointFormatError(a.path, a.offset, "array runs past the end of the file")
        n = prod(a.shape)
        return np.frombuffer(self.mm, dtype=a.dtype, count=n, offset=a.offset).reshape(a.shape)

    def release(self) -> None:
        if self.mm is not None and hasattr(mmap, "MADV_DONTNEED"):
            self.mm.madvise(mmap.MADV_DONTNEED)
        self.lease.check()  # raises FileChangedError once someone wants to shrink the file

    def close(self) -> None:
        self.lease.release()
        with contextlib.suppress(OSError):
            os.close(self.fd)
        if self.mm is not None:
            try:
                self.mm.close()
            except BufferError:  # a caller still holds a view; let GC unmap it
                pass


def _raw(a: np.ndarray) -> memoryview:
    """The bytes of a C-contiguous array (memoryview cannot export bfloat16 itself)."""
    return np.ascontiguousarray(a).reshape(-1).view(np.uint8).data


def _convert_blocks(t: Tensor) -> Iterator[memoryview]:
    """Cast / dequantize / transpose ``t`` in blocks of about BLOCK_ELEMENTS values."""
    out = t.dtype
    mapped = _Mapped(t.source.path)
    smapped = _Mapped(t.scales.path) if t.scales is not None else None
    try:
        w = mapped.array(t.source)
        s = smapped.array(t.scales) if (smapped is not None and t.scales is not None) else None
        if t.expert is not None:
            w = w[t.expert]
            s = s[t.expert] if s is not None else None
        if t.transpose:
            yield from _transposed(w, s, out, mapped, smapped)
        else:
            yield from _row_blocks(w, s, out, mapped, smapped)
        del w, s
    finally:
        mapped.close()
        if smapped is not None:
            smapped.close()


def _row_blocks(w: np.ndarray, s: np.ndarray | None, out: np.dtype,
                mapped: _Mapped, smapped: _Mapped | None) -> Iterator[memoryview]:
    """Same orientation as the source: walk the rows; a block never straddles a scale group."""
    if w.size == 0:
        return
    if w.ndim == 0:
        w = w.reshape(1, 1)
    cols = w.shape[-1]
    if s is None:
        rows = w.reshape(-1, cols)  # [R, N]
        step = max(1, BLOCK_ELEMENTS // max(cols, 1))
        for r0 in range(0, rows.shape[0], step):
            yield _raw(rows[r0:r0 + step].astype(out))
            mapped.release()
        return
    k, n = w.shape[-2], w.shape[-1]
    g = s.shape[-2]
    gsize = k // g
    w3 = w.reshape(-1, k, n)  # [L, K, N]
    s3 = s.reshape(-1, g, n)  # [L, G, N]
    step = max(1, min(gsize, BLOCK_ELEMENTS // max(n, 1)))
    scratch = np.empty((step, n), np.float32)
    for lead in range(w3.shape[0]):
        for gi in range(g):
            scale = s3[lead, gi].astype(np.float32)  # [N]
            for r0 in range(gi * gsize, (gi + 1) * gsize, step):
                r1 = min(r0 + step, (gi + 1) * gsize)
                buf = scratch[: r1 - r0]
                np.copyto(buf, w3[lead, r0:r1], casting="unsafe")
                np.multiply(buf, scale, out=buf)  # exact in f32: int8 x bf16 needs 16 bits
                yield _raw(buf.astype(out))
                mapped.release()
            if smapped is not None:
                smapped.release()


def _transposed(w: np.ndarray, s: np.ndarray | None, out: np.dtype,
                mapped: _Mapped, smapped: _Mapped | None) -> Iterator[memoryview]:
    """[K, N] source -> [N, K] output, a block of output rows (= source columns) at a time.

    Gathering columns touches every source row, and the kernel maps pages
    around each touched one, so while one matrix (one expert: at most 201 MB
    for Grok-1) is transposed, its clean page-cache pages stay mapped; they
    are dropped after every block as elsewhere, and no anonymous memory
    beyond a few blocks is used.
    """
    k, n = w.shape
    g = s.shape[0] if s is not None else 1
    step = max(1, TRANSPOSE_BLOCK_ELEMENTS // max(k, 1))
    for c0 in range(0, n, step):
        c1 = min(c0 + step, n)
        # Transpose the narrow source type first (int8: a quarter of the bytes of
        # float32), then dequantize rows that are already in output order.
        gathered = np.ascontiguousarray(w[:, c0:c1])  # [K, b]
        flipped = np.empty((c1 - c0, k), w.dtype)  # [b, K]
        _tiled_transpose(gathered, flipped)
        del gathered
        if s is None:
            yield _raw(flipped.astype(out, copy=False))
        else:
            block = flipped.astype(np.float32).reshape(c1 - c0, g, k // g)  # [b, G, K/G]
            block *= s[:, c0:c1].T.astype(np.float32)[:, :, None]  # scale of (group, column)
            yield _raw(block.reshape(c1 - c0, k).astype(out))
        mapped.release()
        if smapped is not None:
            smapped.release()


def _tiled_transpose(src: np.ndarray, dst: np.ndarray) -> None:
    """dst = src.T, tile by tile: a plain strided copy of a large matrix thrashes the cache."""
    rows, cols = src.shape
    for i in range(0, rows, TILE):
        for j in range(0, cols, TILE):
            dst[j:j + TILE, i:i + TILE] = src[i:i + TILE, j:j + TILE].T


def tensor_blocks(t: Tensor, tap: SourceTap | None = None) -> Iterator[memoryview]:
    """The payload bytes of ``t`` in bounded pieces (the writer's only data source); a
    plain copy also feeds ``tap``, the hash of its source file."""
    if t.is_copy:
        per = t.nbytes
        begin = t.source.offset + (t.expert * per if t.expert is not None else 0)
        yield from _copy_blocks(t.source, begin, per, tap)
    else:
        yield from _convert_blocks(t)


def write_safetensors(
    path: str | os.PathLike[str],
    tensors: Sequence[Tensor],
    metadata: Mapping[str, str] | None = None,
    *,
    compress_level: int | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    on_bytes: Callable[[int], Any] | None = None,
    taps: Mapping[Path, SourceTap] | None = None,
    chunked: bool = True,
    sync_dir: bool = True,
) -> WrittenFile:
    """Write ``tensors`` to ``path`` as one safetensors file, atomically, hashing as it goes.

    Args:
        path: final name; the data goes to a temp name beside it, is fsynced
            and renamed, and the temp file is removed if anything fails.
        tensors: what to write (any order; the file uses the reference order).
        metadata: the header's ``__metadata__`` (str -> str).
        compress_level: if set, the file is a zstd stream (all cores) of the
            safetensors bytes at that level.
        chunk_size: slice size of the per-chunk BLAKE3 list.
        chunked: compute that list (a second BLAKE3 of every byte written); without
            it, a file larger than one chunk has ``chunks`` None.
        on_bytes: called with the number of payload bytes after each block
            (progress; also the seam tests use to slow a run down).
        taps: source path -> SourceTap: the BLAKE3 of those source files is computed
            from the bytes this write copies out of them (``finish`` runs before the
            file is renamed into place, so a source that changed meanwhile leaves none).
        sync_dir: fsync the folder after the rename (False: the caller fsyncs it once
            for all its files; the file itself is always fsynced before the rename).

    Returns:
        WrittenFile with the size and BLAKE3 (whole + chunks) of the bytes on disk.
    """
    for t in tensors:
        t.check()
    ordered = order_tensors(tensors)
    head = header_bytes(ordered, metadata)
    digest = StreamDigest(chunk_size, chunked)
    payload = 0
    try:
        with atomic_write(path, "wb", sync_dir=sync_dir) as f, contextlib.ExitStack() as stack:
            hashing = _HashingSink(f, digest)
            stack.callback(hashing.finish)
            for tap in (taps or {}).values():
                stack.callback(tap.close)
            if compress_level is None:
                sink: Any = hashing
                cctx_writer = None
            else:
                import zstandard

                cctx = zstandard.ZstdCompressor(level=compress_level, threads=-1)
                cctx_writer = cctx.stream_writer(
                    hashing, closefd=False, write_return_read=True)  # type: ignore[arg-type]
                sink = cctx_writer
            sink.write(head)
            for t in ordered:
                written = 0
                for block in tensor_blocks(t, taps.get(t.source.path) if taps else None):
                    sink.write(block)
                    written += len(block)
                    if on_bytes is not None:
                        on_bytes(len(block))
                if written != t.nbytes:  # a short source would silently misalign the payload
                    raise CheckpointFormatError(
                        t.source.path, t.source.offset, f"tensor {t.name} gave {written} bytes,"
                        f" expected {t.nbytes}"
                    )
                payload += written
            if cctx_writer is not None:
                cctx_writer.close()  # ends the frame; closefd=False keeps f for the fsync
            for tap in (taps or {}).values():
                tap.finish()
            stack.close()  # all bytes hashed before the file is renamed into place
    except OSError as e:
        sources = {str(a.path) for t in tensors for a in (t.source, t.scales) if a is not None}
        if e.filename is not None and str(e.filename) in sources:
            raise CheckpointFormatError(e.filename, None, f"cannot read: {e.strerror}") from e
        if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EIO):
            raise DiskError(f"{path}: {e.strerror}") from e
        # Permission denied, read-only file system, ...: the temp file beside ``path``
        # could not be written; name the output, not the temp name.
        raise DiskError(f"{path}: cannot write ({e.strerror or e})") from e
    whole, chunks = digest.finish()
    return WrittenFile(
        path=Path(path),
        size=digest.size,
        blake3=whole,
        chunks=chunks,
        tensors=tuple(t.name for t in ordered),
        payload_bytes=payload,
    )


@dataclass(frozen=True)
class Header:
    """A parsed safetensors header: its metadata and where each tensor lies."""

    metadata: dict[str, str]
    arrays: dict[str, ArrayRef]  # in header order
    payload_start: int  # 8 + header length: data_offsets count from here


def read_header(source: ByteSource) -> Header:
    """Parse the header of a safetensors file; no tensor data is read.

    Raises CheckpointFormatError naming the file (and the tensor) for anything
    but a well-formed header: a hostile length, non-JSON, an unknown dtype, a
    shape or data_offsets that disagree, a negative offset.
    """
    path = source.path
    try:
        n = int.from_bytes(source.read(0, 8), "little")
    except CheckpointFormatError:
        raise CheckpointFormatError(
            path, 0, "not a safetensors file (shorter than its 8-byte header length)"
        ) from None
    if not 2 <= n <= MAX_HEADER_BYTES:
        raise CheckpointFormatError(path, 0, f"not a safetensors file (header size {n})")
    try:
        head = loads_json(bytes(source.read(8, n)))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CheckpointFormatError(path, 8, "safetensors header is not JSON") from None
    if not isinstance(head, dict):
        raise CheckpointFormatError(path, 8, "safetensors header is not a JSON object")
    meta = head.pop("__metadata__", None)
    metadata = {k: v for k, v in meta.items() if isinstance(v, str)} if isinstance(
        meta, dict) else {}
    arrays = {}
    for name, t in head.items():
        try:
            dtype = DTYPES[t["dtype"]]
            shape = tuple(int(s) for s in t["shape"])
            begin, end = (int(x) for x in t["data_offsets"])
        except (KeyError, TypeError, ValueError):
            dtype = None
        if dtype is None:
            raise CheckpointFormatError(path, 8, f"bad header entry {name!r}")
        if min(shape, default=0) < 0 or not 0 <= begin <= end:
            raise CheckpointFormatError(
                path, 8, f"tensor {name!r}: bad shape {list(shape)} or data_offsets "
                f"[{begin}, {end}]"
            )
        if end - begin != prod(shape) * dtype.itemsize:
            raise CheckpointFormatError(path, 8, f"tensor {name!r}: size disagrees")
        arrays[name] = ArrayRef(Path(path), 8 + n + begin, dtype, shape)
    return Header(metadata, arrays, 8 + n)
