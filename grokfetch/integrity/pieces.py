"""Torrent piece verification: check files on disk against a torrent's SHA-1 piece hashes.

The torrent's info-hash (in the published magnet link) is the only published
value that vouches for the Grok-1 bytes.  The info dictionary it hashes holds
one SHA-1 per piece, and in a v1 torrent the pieces are cut from all files
concatenated in torrent order, so one piece can end in one file and begin in
the next.  This module reads each piece back from however many files it spans
and compares its SHA-1, exactly as a BitTorrent client's recheck does - but
without a session, without the network, and telling the caller which files and
byte ranges each bad piece covers.

libtorrent only parses the .torrent (file list, piece length, piece hashes);
the reading and hashing happen here, in parallel, with bounded memory.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import os
from collections.abc import Callable, Container, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grokfetch.errors import TorrentError, UnsafePathError
from grokfetch.format.metainfo import TorrentFile, TorrentMeta, load_torrent
from grokfetch.fsutil import safe_relpath
from grokfetch.hashing import (
    DEFAULT_CHUNK_SIZE,
    FileDigests,
    digest_file,
    feed_file,
    open_regular,
    parallel_map,
)

# Pieces are hashed in reads of at most this many bytes, so memory stays
# bounded (jobs x READ_BLOCK) even for torrents with very large pieces.
READ_BLOCK = 8 << 20

OnBytes = Callable[[int], object]


@dataclass(frozen=True)
class PieceMap:
    """A torrent's byte stream: where each file starts, and the SHA-1 of every piece."""

    source: str  # the .torrent file it was read from
    meta: TorrentMeta
    offsets: tuple[int, ...] = field(repr=False)  # by file index: first byte in the stream
    piece_hashes: tuple[bytes, ...] = field(repr=False)

    @property
    def piece_length(self) -> int:
        return self.meta.piece_length

    @property
    def num_pieces(self) -> int:
        return len(self.piece_hashes)

    @property
    def total_size(self) -> int:
        return self.meta.total_size

    def offset(self, f: TorrentFile) -> int:
        return self.offsets[f.index]

    def piece_span(self, piece: int) -> tuple[int, int]:
        """[start, end) of ``piece`` in the torrent's byte stream."""
        start = piece * self.piece_length
        return start, min(start + self.piece_length, self.total_size)

    def pieces_of(self, f: TorrentFile) -> range:
        """The pieces holding at least one byte of ``f`` (empty for empty files)."""
        if f.size == 0:
            return range(0)
        start = self.offset(f)
        return range(start // self.piece_length, (start + f.size - 1) // self.piece_length + 1)

    def files_of(self, piece: int) -> list[TorrentFile]:
        """The non-empty files (pad files included) a piece spans, in stream order."""
        start, end = self.piece_span(piece)
        nonempty, ends = self._stream
        out = []
        # first file that ends after the piece starts: bisect keeps this cheap
        # for the real torrent's tens of thousands of pieces
        for f in nonempty[bisect.bisect_right(ends, start) :]:
            if self.offset(f) >= end:
                break
            out.append(f)
        return out

    @functools.cached_property
    def _stream(self) -> tuple[list[TorrentFile], list[int]]:
        nonempty = sorted((f for f in self.meta.files if f.size), key=self.offset)
        return nonempty, [self.offset(f) + f.size for f in nonempty]


def load_piece_map(path: str | os.PathLike[str]) -> PieceMap:
    """Read a .torrent (paths checked by grokfetch.format.metainfo) with its piece hashes.

    Raises TorrentError for a torrent without v1 (SHA-1) piece hashes.
    """
    ti, meta = load_torrent(Path(path))
    if not ti.info_hashes().has_v1():
        # v2-only torrents carry per-file SHA-256 merkle trees instead of SHA-1
        # pieces; the Grok-1 torrent is v1, so they are not supported.
        raise TorrentError(f"{path}: torrent has no v1 (SHA-1) piece hashes")
    fs = ti.layout() if hasattr(ti, "layout") else ti.files()
    return PieceMap(
        source=str(path),
        meta=meta,
        offsets=tuple(fs.file_offset(f.index) for f in meta.files),
        piece_hashes=tuple(bytes(ti.hash_for_piece(i)) for i in range(ti.num_pieces())),
    )


def rel_path(f: TorrentFile, strip: int) -> str:
    """The file's torrent path with ``strip`` leading components removed, checked to be safe."""
    parts = f.path.split("/")
    if strip >= len(parts):
        raise UnsafePathError(f"torrent file {f.path!r} has fewer than {strip + 1} path parts")
    return safe_relpath("/".join(parts[strip:]), "torrent file path")


def find_strip(meta: TorrentMeta, root: str | os.PathLike[str]) -> int:
    """How many leading path components to strip so the torrent's files land under ``root``.

    A torrent's paths start with its name (``NAME/ckpt-0/...``), and nothing
    documents the Grok-1 torrent's name, so ``root`` may be the folder that
    holds NAME/ or NAME/ itself (or deeper).  Pick the depth at which most of
    the torrent's files exist; when none do (nothing downloaded yet) strip the
    torrent's name, i.e. take ``root`` to be the torrent's own folder.
    """
    files = [f for f in meta.real_files() if f.size]
    if not files:
        return 0
    depth = min(len(f.path.split("/")) for f in files)
    best, best_hits = (1 if depth > 1 else 0), 0
    sample = files[:: max(1, len(files) // 64)]  # a few dozen stats are enough to decide
    for files_looked_at in (sample, files):  # a partial download may miss the sample: all
        for strip in range(depth):
            hits = sum(os.path.isfile(os.path.join(root, rel_path(f, strip)))
                       for f in files_looked_at)
            if hits > best_hits:
                best, best_hits = strip, hits
        if best_hits:
            break
    return best


@dataclass(frozen=True)
class PieceCheck:
    """The outcome of checking pieces against the torrent's SHA-1 hashes.

    ``failed`` pieces were read in full and their SHA-1 did not match (a file
    shorter than the torrent says lands here too).  ``unchecked`` pieces could
    not be read because a file they span is missing or unreadable; the reason
    names that file.
    """

    pm: PieceMap
    root: str
    strip: int
    checked: tuple[int, ...] = field(repr=False)  # every piece looked at, good or not
    failed: tuple[int, ...]
    unchecked: dict[int, str]

    @property
    def ok(self) -> bool:
        return not self.failed and not self.unchecked

    def have(self) -> list[bool]:
        """One flag per piece, True when it was checked and matched (libtorrent's 'pieces')."""
        flags = [False] * self.pm.num_pieces
        bad = set(self.failed) | set(self.unchecked)
        for p in self.checked:
            flags[p] = p not in bad
        return flags

    def bad_ranges(self, f: TorrentFile) -> list[tuple[int, int]]:
        """Byte ranges of ``f`` (first, last; file-relative) covered by failed pieces."""
        return self._ranges(f, set(self.failed))

    def _ranges(self, f: TorrentFile, pieces: set[int]) -> list[tuple[int, int]]:
        out: list[tuple[int, int]] = []
        base = self.pm.offset(f)
        for p in self.pm.pieces_of(f):
            if p not in pieces:
                continue
            start, end = self.pm.piece_span(p)
            lo, hi = max(start, base) - base, min(end, base + f.size) - base - 1
            if out and out[-1][1] + 1 == lo:
                out[-1] = (out[-1][0], hi)  # adjacent bad pieces make one range
            else:
                out.append((lo, hi))
        return out


class _Unreadable(Exception):
    """A file the piece spans cannot be read, so the piece cannot be checked."""


def _piece_matches(pm: PieceMap, root: str, strip: int, piece: int) -> bool:
    """Read ``piece`` from the files it spans and compare its SHA-1."""
    start, end = pm.piece_span(piece)
    h = hashlib.sha1(usedforsecurity=False)
    for f in pm.files_of(piece):
        base = pm.offset(f)
        lo, hi = max(start, base) - base, min(end, base + f.size) - base
        if f.pad:
            h.update(bytes(hi - lo))  # pad files are zeros that exist only in the stream
            continue
        rel = rel_path(f, strip)
        try:
            fd = open_regular(os.path.join(root, rel))  # a FIFO: refused, never read
        except FileNotFoundError:
            raise _Unreadable(f"{rel} is missing") from None
        except OSError as e:
            raise _Unreadable(f"{rel}: {e.strerror or e}") from None
        try:
            pos = lo
            while pos < hi:
                try:
                    buf = os.pread(fd, min(READ_BLOCK, hi - pos), pos)
                except OSError as e:
                    raise _Unreadable(f"{rel} at byte {pos}: {e.strerror or e}") from None
                if not buf:
                    return False  # the file is shorter than the torrent says
                h.update(buf)
                pos += len(buf)
        finally:
            os.close(fd)
    return h.digest() == pm.piece_hashes[piece]


def verify_pieces(
    pm: PieceMap,
    root: str | os.PathLike[str],
    *,
    strip: int | None = None,
    pieces: Iterable[int] | None = None,
    jobs: int | None = None,
    on_bytes: OnBytes | None = None,
) -> PieceCheck:
    """Check ``pieces`` (default: all) of the torrent against the files under ``root``.

    ``strip`` leading components are removed from the torrent's paths
    (default: ``find_strip`` decides).  Pieces are hashed ``jobs`` at a time
    (default: one per CPU), each in reads of at most READ_BLOCK bytes, so
    memory stays bounded whatever the piece size.  ``on_bytes(n)`` is called
    from the calling thread as pieces finish.
    """
    root_s = os.fspath(root)
    if strip is None:
        strip = find_strip(pm.meta, root_s)
    todo: Sequence[int] = sorted(set(pieces)) if pieces is not None else range(pm.num_pieces)
    failed: list[int] = []
    unchecked: dict[int, str] = {}

    def one(piece: int) -> tuple[int, bool | str]:
        try:
            return piece, _piece_matches(pm, root_s, strip, piece)
        except _Unreadable as e:
            return piece, str(e)

    for piece, verdict in parallel_map(one, todo, jobs):
        if verdict is False:
            failed.append(piece)
        elif isinstance(verdict, str):
            unchecked[piece] = verdict
        if on_bytes is not None:
            start, end = pm.piece_span(piece)
            on_bytes(end - start)
    return PieceCheck(
        pm=pm,
        root=root_s,
        strip=strip,
        checked=tuple(todo),
        failed=tuple(sorted(failed)),
        unchecked=dict(sorted(unchecked.items())),
    )


# -- the pin pass: SHA-1 pieces and BLAKE3 from the same read -------------------------------


@dataclass
class _Cut:
    """What one file's bytes contribute to the torrent's pieces."""

    head: bytes  # its bytes of a piece that began in an earlier file
    full: dict[int, bytes]  # pieces that begin and end inside it: their SHA-1
    tail: tuple[int, Any] | None  # a piece begun in it that goes on into the next file
    unread: frozenset[int] = frozenset()  # its pieces whose bytes nobody had (not fetched)


def _cut_from_pieces(pm: PieceMap, f: TorrentFile, outside: dict[int, bytes]) -> _Cut:
    """The cut of a file that is not on disk (a partial download did not fetch it), from
    the whole pieces libtorrent holds: only its bytes of pieces in ``outside`` are known."""
    pl, fstart = pm.piece_length, pm.offset(f)
    fend = fstart + f.size
    pieces = pm.pieces_of(f)

    def part(p: int) -> bytes | None:
        buf = outside.get(p)
        if buf is None:
            return None
        pstart = pm.piece_span(p)[0]
        return buf[max(fstart, pstart) - pstart: min(fend, pstart + pl) - pstart]

    unread = set(pieces)
    head = b""
    if fstart % pl:
        known = part(pieces[0])
        if known is not None:
            head = known
            unread.discard(pieces[0])
    tail = None
    last = pieces[-1]
    if pm.piece_span(last)[0] >= fstart and pm.piece_span(last)[1] > fend:
        known = part(last)
        sha = None
        if known is not None:
            sha = hashlib.sha1(known, usedforsecurity=False)
            unread.discard(last)
        tail = (last, sha)
    return _Cut(head, {}, tail, frozenset(unread))


class PieceCutter:
    """Fed one file's bytes in order, cuts them at the torrent's piece boundaries.

    Pieces wholly inside the file are SHA-1'd on the fly; the bytes of a piece
    begun in an earlier file are kept (at most one piece) and the hash of a
    piece that runs on into the next file is handed over, so that
    ``hash_with_pieces`` completes the pieces that span files in stream order.
    """

    def __init__(self, pm: PieceMap, f: TorrentFile) -> None:
        self.pm = pm
        self.start = self.pos = pm.offset(f)
        self.head = bytearray()
        self.full: dict[int, bytes] = {}
        self.cur: tuple[int, Any] | None = None

    def update(self, data: memoryview | bytes) -> None:
        mv = memoryview(data)
        pl = self.pm.piece_length
        while len(mv):
            piece = self.pos // pl
            pstart, pend = self.pm.piece_span(piece)
            take = min(len(mv), pend - self.pos)
            if pstart < self.start:
                self.head += mv[:take]
            else:
                if self.cur is None or self.cur[0] != piece:
                    self.cur = (piece, hashlib.sha1(usedforsecurity=False))
                self.cur[1].update(mv[:take])
                if self.pos + take == pend:
                    self.full[piece] = self.cur[1].digest()
                    self.cur = None
            self.pos += take
            mv = mv[take:]

    def finish(self) -> _Cut:
        return _Cut(bytes(self.head), self.full, self.cur)


def hash_with_pieces(
    pm: PieceMap,
    root: str | os.PathLike[str],
    *,
    strip: int,
    blake3_files: dict[int, bool],
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    jobs: int | None = None,
    on_bytes: OnBytes | None = None,
    outside: dict[int, bytes] | None = None,
    chunked: Container[int] | None = None,
) -> tuple[dict[int, FileDigests], PieceCheck]:
    """Check every piece of the torrent and, from the very same reads, hash the files a pin
    needs: BLAKE3 of each file index in ``blake3_files`` (the value says whether to compute
    its SHA-256 too), and its chunk hashes when the index is in ``chunked`` (default: all).
    The other files are read for their SHA-1 only.  Each byte is read once; what goes into
    a BLAKE3 is what went into the SHA-1.

    Files are read ``jobs`` at a time in stream order, so a piece that spans files is
    completed as soon as its last file is read and memory stays bounded (a piece per
    file in flight).  A file that is missing or unreadable leaves its pieces unchecked,
    but for the pieces in ``outside`` (whole pieces, from libtorrent's part file after a
    partial download): its bytes of those are taken from there.
    """
    root_s = os.fspath(root)
    stream = sorted((f for f in pm.meta.files if f.size), key=pm.offset)

    def work(f: TorrentFile) -> tuple[TorrentFile, FileDigests | None, _Cut | None, str | None]:
        cutter = PieceCutter(pm, f)
        if f.pad:
            cutter.update(bytes(f.size))  # zeros that exist only in the stream
            return f, None, cutter.finish(), None
        rel = rel_path(f, strip)
        path = os.path.join(root_s, rel)
        try:
            if f.index in blake3_files:
                d: FileDigests | None = digest_file(
                    path, chunk_size, sha256=blake3_files[f.index], feed=cutter.update,
                    on_bytes=on_bytes, chunked=chunked is None or f.index in chunked,
                )
                got = d.size if d is not None else 0
            else:
                d, got = None, feed_file(path, cutter.update, on_bytes=on_bytes)
        except FileNotFoundError:
            if outside and f.index not in blake3_files:
                return f, None, _cut_from_pieces(pm, f, outside), None
            return f, None, None, f"{rel} is missing"
        except OSError as e:
            return f, None, None, f"{rel}: {e.strerror or e}"
        if got != f.size:
            return f, None, None, f"{rel} is {got} bytes, the torrent says {f.size}"
        return f, d, cutter.finish(), None

    digests: dict[int, FileDigests] = {}
    failed: set[int] = set()
    unchecked: dict[int, str] = {}
    open_piece: tuple[int, Any] | None = None  # (index, sha1 or None when it cannot pass)
    why_open = ""

    def finish(piece: int, h: Any, why: str) -> None:
        if h is None:
            unchecked.setdefault(piece, why)
        elif h.digest() != pm.piece_hashes[piece]:
            failed.add(piece)

    for f, d, cut, reason in parallel_map(work, stream, jobs):
        fstart, fend = pm.offset(f), pm.offset(f) + f.size
        pieces = pm.pieces_of(f)
        if reason is not None or cut is None:
            why = reason or "unreadable"
            for p in pieces:
                unchecked.setdefault(p, why)
            last_end = pm.piece_span(pieces[-1])[1]
            open_piece, why_open = ((pieces[-1], None), why) if last_end > fend else (None, "")
            continue
        if d is not None:
            digests[f.index] = d
        for p in cut.unread:
            unchecked.setdefault(p, f"{rel_path(f, strip)} was not fetched")
        if fstart % pm.piece_length:  # begins inside a piece an earlier file began
            idx = fstart // pm.piece_length
            h = open_piece[1] if open_piece is not None and open_piece[0] == idx else None
            if idx in cut.unread:
                h = None
            if h is not None:
                h.update(cut.head)
            if pm.piece_span(idx)[1] <= fend:
                finish(idx, h, why_open or "an earlier file of the piece was not read")
                open_piece = None
        for p, digest in cut.full.items():
            if digest != pm.piece_hashes[p]:
                failed.add(p)
        if cut.tail is not None:
            open_piece, why_open = cut.tail, ""
    if open_piece is not None:  # the stream ended inside a piece (cannot happen if sizes agree)
        finish(open_piece[0], None, why_open or "the torrent's last piece was not read")
    failed -= set(unchecked)
    check = PieceCheck(
        pm=pm,
        root=root_s,
        strip=strip,
        checked=tuple(range(pm.num_pieces)),
        failed=tuple(sorted(failed)),
        unchecked=dict(sorted(unchecked.items())),
    )
    return digests, check
