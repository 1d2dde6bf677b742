"""Torrent metadata: make a .torrent from a checkpoint, load and check one, pick its files.

The published Grok-1 torrent is only a magnet link: its info-hash is the one
value that vouches for the bytes, and nothing documents its root folder name
or piece size.  So this module never assumes either:

* a torrent's raw ``info`` dictionary is checked for paths that would escape
  the destination *before* libtorrent sees it (libtorrent silently rewrites
  ``..`` components, which would hide a hostile torrent instead of refusing it);
* torrent files are matched to manifest entries by path suffix
  (``<anything>/ckpt-0/tensor00026_000`` matches the manifest's
  ``ckpt-0/tensor00026_000``), never by file index: in a v1 torrent the index
  follows whatever directory order the creator's disk had, and v2/hybrid
  torrents insert pad files;
* ``--include`` globs and ``--layers`` become per-file priorities by path.
"""

from __future__ import annotations

import fnmatch
import hashlib
import posixpath
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import libtorrent as lt

from grokfetch.errors import TorrentError, UnsafePathError, UsageError
from grokfetch.format.layout import is_tensor_path
from grokfetch.fsutil import atomic_write_bytes, safe_relpath

# Piece size bounds when the caller does not choose one: about 1,000-4,000
# pieces per torrent keeps the metadata small (the real checkpoint at 16 MiB
# pieces is ~19,000 pieces, ~380 KB of hashes) without making small test
# checkpoints one piece long.
MIN_PIECE = 16 * 1024
MAX_PIECE = 16 * 1024 * 1024
TARGET_PIECES = 2000

# The file every Grok-1 checkpoint starts with; the folder holding it is the
# checkpoint folder (the torrent's root name is undocumented: docs/FORMAT.md, "Where the
# checkpoint comes from").
FIRST_TENSOR = "tensor00000_000"


@dataclass(frozen=True)
class TorrentFile:
    index: int  # libtorrent's file index (what file priorities are keyed by)
    path: str  # relative to the download folder, '/'-separated, torrent root name included
    size: int
    pad: bool  # a v2/hybrid alignment pad file: never a real file


@dataclass(frozen=True)
class TorrentMeta:
    """What grokfetch needs to know about a torrent, taken from its checked metadata."""

    name: str
    info_hash: str  # v1 info-hash, hex (what magnet links and aria2c use)
    piece_length: int
    num_pieces: int
    total_size: int
    files: tuple[TorrentFile, ...]
    web_seeds: tuple[str, ...] = ()
    trackers: tuple[str, ...] = ()

    def real_files(self) -> list[TorrentFile]:
        return [f for f in self.files if not f.pad]

    def piece_sharers(self, chosen: list[TorrentFile]) -> list[TorrentFile]:
        """Real files not in ``chosen`` that share a piece with one that is.

        A piece is checked whole: the bytes of such a neighbour are needed to
        check the chosen file's first or last piece from disk.
        """
        spans: list[tuple[TorrentFile, int, int]] = []  # file, first piece, last piece
        offset = 0
        for f in self.files:
            if f.size:
                spans.append((f, offset // self.piece_length,
                              (offset + f.size - 1) // self.piece_length))
            offset += f.size
        wanted = {f.index for f in chosen}
        pieces = {p for f, lo, hi in spans if f.index in wanted for p in (lo, hi)}
        return [f for f, lo, hi in spans
                if f.index not in wanted and not f.pad and (lo in pieces or hi in pieces)]


@dataclass(frozen=True)
class FileMap:
    """Manifest entries matched to torrent files."""

    by_manifest: dict[str, TorrentFile]  # manifest path -> torrent file
    root: str  # folder (relative to DEST, '' = DEST itself) that holds the manifest's paths
    extra: tuple[TorrentFile, ...]  # torrent files the manifest does not list (outside ckpt-0)


# --------------------------------------------------------------------------- make


def auto_piece_size(total_size: int) -> int:
    """Smallest power of two in [16 KiB, 16 MiB] giving at most TARGET_PIECES pieces."""
    size = MIN_PIECE
    while size < MAX_PIECE and total_size > size * TARGET_PIECES:
        size *= 2
    return size


def find_checkpoint_folder(folder: Path) -> Path:
    """The folder holding tensor00000_000 (``folder``, its ``ckpt-0``, or one level deeper)."""
    from grokfetch.format.folder import find_ckpt_dir

    return Path(find_ckpt_dir(folder))


def build_torrent(
    folder: str | Path,
    piece_size: int | None = None,
    web_seeds: Sequence[str] = (),
    trackers: Sequence[str] = (),
) -> bytes:
    """Bencoded v1 torrent of the checkpoint folder (the one holding tensor00000_000).

    v1 only: the published torrent is v1 and aria2c (the benchmark's
    reference client) does not speak v2.  Files are listed in name order so
    the torrent's file index equals the tensor number, though nothing in
    grokfetch relies on that.
    """
    ckpt = find_checkpoint_folder(Path(folder))
    files = sorted(p for p in ckpt.rglob("*") if p.is_file())
    if not files:
        raise UsageError(f"{ckpt}: no files to put in a torrent")
    listed = [(p.relative_to(ckpt.parent).as_posix(), p.stat().st_size) for p in files]
    total = sum(size for _, size in listed)
    psize = piece_size or auto_piece_size(total)
    if psize < MIN_PIECE or psize & (psize - 1):
        raise UsageError(f"piece size {psize} must be a power of two >= {MIN_PIECE}")
    ct = _v1_torrent(listed, psize)
    ct.set_creator("grokfetch")
    for tier, url in enumerate(trackers):
        ct.add_tracker(url, tier)
    for url in web_seeds:
        ct.add_url_seed(url)
    lt.set_piece_hashes(ct, str(ckpt.parent))
    return bytes(lt.bencode(ct.generate()))


def _v1_torrent(listed: Sequence[tuple[str, int]], psize: int) -> Any:
    """A libtorrent create_torrent of ``listed`` (path, size), in that order, v1 only."""
    flags = lt.create_torrent.v1_only
    if hasattr(lt, "create_file_entry"):  # libtorrent 2.1
        entries = [lt.create_file_entry(rel, size) for rel, size in listed]
        ct = lt.create_torrent(entries, psize, flags)
    else:
        fs = lt.file_storage()  # 2.0: the file_storage constructor (deprecated in 2.1)
        for rel, size in listed:
            fs.add_file(rel, size)
        ct = lt.create_torrent(fs, psize, flags)
    # No creation date: the same files make the same bytes on every node and at every
    # second (libtorrent leaves the key out when it is 0).
    ct.set_creation_date(0)
    return ct


def make_torrent(
    folder: str | Path,
    piece_size: int | None = None,
    web_seeds: Sequence[str] = (),
    trackers: Sequence[str] = (),
    out: str | Path | None = None,
) -> Path:
    """Write ``<checkpoint folder name>.torrent`` beside the checkpoint folder; return its path.

    ``folder`` is a checkpoint root (holding ``ckpt-0/``) or ``ckpt-0`` itself.
    The torrent's root folder is the checkpoint folder, so a web seed URL is
    the URL of the checkpoint root (the folder that holds ``ckpt-0/``).
    """
    data = build_torrent(folder, piece_size, web_seeds, trackers)
    ckpt = find_checkpoint_folder(Path(folder))
    path = Path(out) if out is not None else ckpt.parent / f"{ckpt.name}.torrent"
    atomic_write_bytes(path, data)
    return path


# A torrent of a folder its pin describes (a repack, a partial checkpoint) carries that
# pin, without its tag, at this path below its root folder: the leecher's pin pass
# takes names, config and layout from it and checks its hashes (grokfetch.fetch.torrent).
SEEDED_MANIFEST = ".grokfetch/seeded-manifest.json"


@dataclass(frozen=True)
class ListedFile:
    """One file of a torrent made from a manifest: its path in the torrent (below the root
    folder), where it is on disk, and the hash the bytes must have (None: no check)."""

    rel: str
    disk: Path
    blake3: str | None = None
    sha256: str | None = None


class _PieceHasher:
    """SHA-1 of each piece of a stream of files, fed in torrent order."""

    def __init__(self, piece_length: int) -> None:
        self.piece_length = piece_length
        self.hashes: list[bytes] = []
        self.cur = hashlib.sha1(usedforsecurity=False)
        self.filled = 0

    def update(self, data: memoryview | bytes) -> None:
        mv = memoryview(data)
        while len(mv):
            take = min(len(mv), self.piece_length - self.filled)
            self.cur.update(mv[:take])
            self.filled += take
            mv = mv[take:]
            if self.filled == self.piece_length:
                self.hashes.append(self.cur.digest())
                self.cur, self.filled = hashlib.sha1(usedforsecurity=False), 0

    def finish(self) -> list[bytes]:
        if self.filled:
            self.hashes.append(self.cur.digest())
        return self.hashes


def build_listed_torrent(name: str, listed: Sequence[ListedFile],
                         piece_size: int | None = None) -> bytes:
    """Bencoded v1 torrent named ``name`` of exactly ``listed``, in that order.

    The same files (names, sizes, bytes) in the same order give the same info-hash on
    every node: the piece size comes from the total size, and nothing else (no date,
    no path on disk) enters the info dictionary.  Each file is read once; the bytes
    that go into the pieces' SHA-1 are the ones checked against the file's BLAKE3 or
    SHA-256, so a file that no longer holds what its manifest says is refused (naming
    it) and never enters the torrent.
    """
    from grokfetch.hashing import digest_file

    if not listed:
        raise UsageError(f"{name}: no files to put in a torrent")
    sizes = [item.disk.stat().st_size for item in listed]
    psize = piece_size or auto_piece_size(sum(sizes))
    hasher = _PieceHasher(psize)
    for item, size in zip(listed, sizes, strict=True):
        d = digest_file(item.disk, sha256=bool(item.sha256 and not item.blake3),
                        feed=hasher.update)
        wrong = (item.blake3 and d.blake3 != item.blake3) or (
            item.sha256 and not item.blake3 and d.sha256 != item.sha256)
        if wrong or d.size != size:
            raise UsageError(f"{item.disk}: its bytes are not the ones its manifest proved "
                             "(changed since it was pinned); not seeding (check it with "
                             "`grokfetch verify`)")
    hashes = hasher.finish()
    paths = [f"{name}/{item.rel}" for item in listed]
    ct = _v1_torrent(list(zip(paths, sizes, strict=True)), psize)
    if ct.num_pieces() != len(hashes):
        raise UsageError(f"{name}: a file changed size while it was hashed; not seeding")
    for i, digest in enumerate(hashes):
        ct.set_hash(i, digest)
    ct.set_creator("grokfetch")
    return bytes(lt.bencode(ct.generate()))


# --------------------------------------------------------------------------- load / check


def _text(b: Any) -> str:
    if isinstance(b, bytes):
        return b.decode("utf-8", errors="replace")
    return str(b)


def check_info_paths(info: dict[bytes, Any], what: str = "torrent") -> None:
    """Refuse (UnsafePathError, exit 2) any file path in a raw info dict that could escape DEST.

    Looks at ``name``, v1 ``files[].path`` (and ``path.utf-8``) and the v2
    ``file tree`` keys, before libtorrent's own sanitising rewrites them.
    """
    if not isinstance(info, dict):
        raise TorrentError(f"{what}: metadata has no info dictionary")
    name = _text(info.get(b"name.utf-8", info.get(b"name", b"")))
    if name in ("", ".", "..") or any(c in name for c in "/\\\x00"):
        raise UnsafePathError(f"{what}: unsafe torrent name {name!r}")

    def check_parts(parts: list[Any]) -> None:
        rel = "/".join(_text(p) for p in parts)
        try:
            if any(_text(p) in ("", ".", "..") or "/" in _text(p) for p in parts):
                raise UnsafePathError(rel)
            safe_relpath(f"{name}/{rel}")
        except UnsafePathError:
            raise UnsafePathError(f"{what}: unsafe file path {rel!r} in torrent") from None

    for f in info.get(b"files", []) or []:
        for key in (b"path", b"path.utf-8"):
            if key in f:
                check_parts(list(f[key]))

    def walk(tree: dict[bytes, Any], prefix: list[Any]) -> None:
        for k, v in tree.items():
            if k == b"":  # leaf marker: {'': {length, pieces root}}
                continue
            check_parts([*prefix, k])
            if isinstance(v, dict):
                walk(v, [*prefix, k])

    if isinstance(info.get(b"file tree"), dict):
        walk(info[b"file tree"], [])


def file_layout(ti: Any) -> Any:
    # torrent_info.files() is deprecated in 2.1 in favour of layout(); both
    # return the same file_storage.
    if hasattr(ti, "layout"):
        return ti.layout()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return ti.files()


def meta_from_info(ti: Any) -> TorrentMeta:
    """A TorrentMeta from a libtorrent torrent_info, after checking its raw paths."""
    info: Any = lt.bdecode(bytes(ti.info_section()))
    check_info_paths(info, ti.name() or "torrent")
    fs = file_layout(ti)
    files = tuple(
        TorrentFile(
            index=i,
            path=fs.file_path(i).replace("\\", "/"),
            size=fs.file_size(i),
            pad=bool(fs.file_flags(i) & lt.file_storage.flag_pad_file),
        )
        for i in range(fs.num_files())
    )
    return TorrentMeta(
        name=ti.name(),
        info_hash=str(ti.info_hashes().v1),
        piece_length=ti.piece_length(),
        num_pieces=ti.num_pieces(),
        total_size=ti.total_size(),
        files=files,
        web_seeds=_web_seeds(ti),
        trackers=_trackers(ti),
    )


# torrent_info.web_seeds()/trackers() are deprecated in 2.1 (sources belong to
# add_torrent_params now) but are the only way to read them from a torrent_info.
def _web_seeds(ti: Any) -> tuple[str, ...]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return tuple(ws["url"] if isinstance(ws, dict) else ws.url for ws in ti.web_seeds())


def _trackers(ti: Any) -> tuple[str, ...]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return tuple(t.url for t in ti.trackers())


def load_torrent_bytes(data: bytes, what: str = "torrent") -> tuple[Any, TorrentMeta]:
    """Parse and check a .torrent; return (libtorrent torrent_info, TorrentMeta)."""
    try:
        decoded: Any = lt.bdecode(data)
    except Exception as e:  # libtorrent raises RuntimeError subclasses for bad input
        raise TorrentError(f"{what}: not a torrent file ({e})") from None
    if not isinstance(decoded, dict) or not isinstance(decoded.get(b"info"), dict):
        raise TorrentError(f"{what}: not a torrent file (no info dictionary)")
    # Check the raw paths first: torrent_info() would quietly sanitise them.
    check_info_paths(decoded[b"info"], what)
    try:
        ti = lt.torrent_info(data)
    except Exception as e:
        raise TorrentError(f"{what}: invalid torrent ({e})") from None
    return ti, meta_from_info(ti)


def load_torrent(path: str | Path) -> tuple[Any, TorrentMeta]:
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise UsageError(f"{p}: cannot read torrent file ({e.strerror})") from None
    return load_torrent_bytes(data, str(p))


def torrent_file_bytes(ti: Any) -> bytes:
    """A complete .torrent for metadata received from peers (info section kept byte-exact)."""
    info = bytes(ti.info_section())
    head: dict[bytes, Any] = {}
    trackers = list(_trackers(ti))
    if trackers:
        head[b"announce"] = trackers[0].encode()
        head[b"announce-list"] = [[t.encode()] for t in trackers]
    head[b"created by"] = b"grokfetch"
    tail: dict[bytes, Any] = {}
    seeds = list(_web_seeds(ti))
    if seeds:
        tail[b"url-list"] = [s.encode() for s in seeds]
    # Keys are sorted in bencoding: announce, announce-list, created by < info < url-list.
    # The info section is spliced in verbatim so the info-hash cannot change.
    return (
        bytes(lt.bencode(head))[:-1]
        + b"4:info"
        + info
        + bytes(lt.bencode(tail))[1:]
    )


def is_magnet(source: str) -> bool:
    return source.startswith("magnet:?")


@dataclass(frozen=True)
class Magnet:
    info_hash: str
    name: str
    trackers: tuple[str, ...]
    web_seeds: tuple[str, ...]
    peers: tuple[tuple[str, int], ...]


def parse_magnet(uri: str) -> Magnet:
    try:
        atp = lt.parse_magnet_uri(uri)
    except Exception as e:
        raise UsageError(f"not a valid magnet link: {uri[:80]} ({e})") from None
    ih = str(atp.info_hashes.v1)
    if set(ih) == {"0"}:
        raise UsageError(f"magnet link has no BitTorrent v1 info-hash: {uri[:80]}")
    return Magnet(
        info_hash=ih,
        name=atp.name,
        trackers=tuple(atp.trackers),
        web_seeds=tuple(atp.url_seeds),
        peers=tuple((str(h), int(p)) for h, p in atp.peers),
    )


# --------------------------------------------------------------------------- manifest match


def match_manifest(meta: TorrentMeta, entries: Iterable[Any], what: str = "torrent") -> FileMap:
    """Match manifest entries (objects with ``.path`` and ``.size``) to torrent files.

    A manifest path matches the torrent file whose path ends with it, or failing
    that the one with the same file name.  Stops with TorrentError (exit 4)
    naming the files when the two disagree: a manifest file missing from the
    torrent, a size mismatch, or a tensor file the manifest does not list.
    Other extra files (a README, say) are reported back and never fetched.
    """
    real = meta.real_files()
    by_suffix: dict[str, TorrentFile] = {}
    by_name: dict[str, list[TorrentFile]] = {}
    for f in real:
        by_name.setdefault(posixpath.basename(f.path), []).append(f)
    entries = list(entries)
    result: dict[str, TorrentFile] = {}
    roots: set[str] = set()
    problems: list[str] = []
    for e in entries:
        hit = None
        for f in real:
            if f.path == e.path or f.path.endswith("/" + e.path):
                hit = f
                roots.add(f.path[: len(f.path) - len(e.path)].rstrip("/"))
                break
        if hit is None:
            same = by_name.get(posixpath.basename(e.path), [])
            if len(same) == 1:
                hit = same[0]
        if hit is None:
            problems.append(f"{e.path} is not in the torrent")
            continue
        if hit.size != e.size:
            problems.append(
                f"{e.path} is {hit.size} bytes in the torrent, {e.size} in the manifest"
            )
        result[e.path] = hit
        by_suffix[hit.path] = hit
    extra = tuple(f for f in real if f.path not in by_suffix)
    # The checkpoint folder's file list must be the manifest's; files elsewhere
    # in the torrent (a README, the tokenizer) are extras, reported and skipped.
    ckpt_dirs = {posixpath.dirname(f.path) for f in result.values() if is_tensor_path(f.path)}
    for f in extra:
        if is_tensor_path(f.path) and (not ckpt_dirs or posixpath.dirname(f.path) in ckpt_dirs):
            problems.append(f"{f.path} is in the torrent but not in the manifest")
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise TorrentError(
            f"{what} disagrees with the manifest: {'; '.join(problems[:3])}{more}"
        )
    root = ""
    if len(roots) == 1:
        root = roots.pop()
    elif not roots and result:
        # Matched by file name only: the checkpoint root is the folder above
        # the one that holds the tensors.
        first = next(iter(result.values()))
        root = posixpath.dirname(posixpath.dirname(first.path))
    return FileMap(by_manifest=result, root=root, extra=extra)


def checkpoint_root_of(meta: TorrentMeta) -> str:
    """Folder (relative to DEST) above the one holding tensor00000_000, without a manifest."""
    for f in meta.real_files():
        if posixpath.basename(f.path) == FIRST_TENSOR:
            return posixpath.dirname(posixpath.dirname(f.path))
    return ""


def select_files(
    meta: TorrentMeta,
    filemap: FileMap | None,
    include: Sequence[str] = (),
    layer_paths: Iterable[str] | None = None,
) -> list[TorrentFile]:
    """The torrent files to fetch.

    No selection: every manifest file (or every real torrent file without a
    manifest).  ``include`` globs match a manifest path, a torrent path or a
    bare file name; ``layer_paths`` are manifest paths (from
    ``manifest_paths_for_layers``).  Both given: the union.
    """
    if filemap is not None:
        candidates = {mp: f for mp, f in filemap.by_manifest.items()}
    else:
        candidates = {f.path: f for f in meta.real_files()}
    if not include and layer_paths is None:
        return sorted(candidates.values(), key=lambda f: f.index)
    chosen: dict[int, TorrentFile] = {}
    for pattern in include:
        hits = [
            f
            for mp, f in candidates.items()
            if fnmatch.fnmatchcase(mp, pattern)
            or fnmatch.fnmatchcase(f.path, pattern)
            or fnmatch.fnmatchcase(posixpath.basename(f.path), pattern)
        ]
        if not hits:
            raise UsageError(f"--include {pattern!r} matches no file in the torrent")
        for f in hits:
            chosen[f.index] = f
    if layer_paths is not None:
        for mp in layer_paths:
            hit = candidates.get(mp)
            if hit is None:
                raise UsageError(f"{mp} (selected by --layers) is not in the torrent")
            chosen[hit.index] = hit
    return sorted(chosen.values(), key=lambda f: f.index)


def manifest_paths_for_layers(manifest: Any, spec: str) -> list[str]:
    """Manifest paths of the files for layers ``spec`` ('0-3,10'), plus embedding and final norm.

    Uses each entry's ``layer`` field (None for the embedding and the final
    norm, which every forward pass needs).
    """
    from grokfetch.format.layout import parse_layer_spec, select_layers

    config = getattr(manifest, "config", None)
    if config is None:
        raise UsageError("--layers needs a manifest with a model config")
    layers = set(parse_layer_spec(spec, config.num_layers))
    return [e.path for e in select_layers(manifest.files, layers)]


def priorities(meta: TorrentMeta, chosen: Iterable[TorrentFile]) -> list[int]:
    """libtorrent file priorities: 4 (default) for chosen files, 0 (skip) for the rest."""
    want = {f.index for f in chosen}
    return [4 if i in want else 0 for i in range(len(meta.files))]


# --------------------------------------------------------------------------- raw info slice


def _bskip(data: bytes, i: int, depth: int = 0) -> int:
    """Index just past the bencoded value starting at ``data[i]`` (ValueError if malformed)."""
    if depth > 64:
        raise ValueError("nested too deeply")
    c = data[i: i + 1]
    if c == b"i":
        end = data.index(b"e", i)
        int(data[i + 1: end])
        return end + 1
    if c in (b"l", b"d"):
        i += 1
        while data[i: i + 1] != b"e":
            if i >= len(data):
                raise ValueError("unterminated list or dictionary")
            i = _bskip(data, i, depth + 1)
        return i + 1
    if c.isdigit():
        colon = data.index(b":", i)
        n = int(data[i:colon])
        if colon + 1 + n > len(data):
            raise ValueError("string runs past the end")
        return colon + 1 + n
    raise ValueError(f"unexpected byte {c!r} at {i}")


def raw_info_slice(data: bytes, what: str = "torrent") -> bytes:
    """The bytes of a .torrent's top-level ``info`` value exactly as they are in the file.

    The info-hash is the SHA-1 of these bytes.  Decoding and re-encoding
    would change them whenever the file's keys are not in canonical order,
    so the value is sliced out, never rebuilt.
    """
    try:
        if data[:1] != b"d":
            raise ValueError("not a dictionary")
        i = 1
        while data[i: i + 1] != b"e":
            key_end = _bskip(data, i)
            colon = data.index(b":", i)
            key = data[colon + 1: key_end]
            val_end = _bskip(data, key_end)
            if key == b"info":
                if data[key_end: key_end + 1] != b"d":
                    raise ValueError("info is not a dictionary")
                return data[key_end:val_end]
            i = val_end
    except (ValueError, IndexError) as e:
        raise TorrentError(f"{what}: not a torrent file ({e})") from None
    raise TorrentError(f"{what}: not a torrent file (no info dictionary)")


def info_hash_of_info(info: bytes) -> str:
    """The v1 info-hash of a raw bencoded info dict."""
    return hashlib.sha1(info).hexdigest()
