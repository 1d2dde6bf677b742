"""The grokfetch manifest: what a checkpoint folder should hold, and how to check it.

A manifest is one JSON document (schema: ``grokfetch/format/manifest.schema.json``,
documented in the README) with the model's name, license and config, where
to get it (magnet, info-hash, trackers, web seeds) and one entry per file:
path relative to the checkpoint root, size, hashes (BLAKE3 of the whole file
and of fixed-size chunks, so a corruption can be located; SHA-256 where a
third party published one; any may be null while unknown), and the parameter
the file holds.

``pinned: true`` means every file has a BLAKE3 hash that grokfetch computed
after the bytes were proven (torrent piece check, or trust on first use).
A manifest's paths may never escape the folder: ``..``, absolute paths,
backslashes and NUL bytes are refused when it is loaded.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import stat
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from grokfetch.errors import DiskError, GrokfetchError, ManifestError
from grokfetch.format.layout import ModelConfig
from grokfetch.fsutil import atomic_write_bytes, atomic_write_json, safe_relpath
from grokfetch.hashing import DEFAULT_CHUNK_SIZE
from grokfetch.trust import PinRoot, authentic, roots_proven, tag

FORMAT = "grokfetch-manifest"
FORMAT_VERSION = 1
MANIFEST_NAME = "grokfetch-manifest.json"  # the pinned manifest inside a checkpoint root

_HEX = {"blake3": 64, "sha256": 64}
_INFO_HASH = re.compile(r"^[0-9a-f]{40}$")


@dataclass(frozen=True)
class Sources:
    """Where the bytes come from."""

    magnet: str | None = None
    info_hash: str | None = None  # v1 BitTorrent info-hash, 40 hex digits
    trackers: list[str] = field(default_factory=list)
    web_seeds: list[str] = field(default_factory=list)  # BEP 19 URLs (parent of the root folder)
    sha256_source: str | None = None  # who published the per-file SHA-256 values
    # Hugging Face repositories mirroring the files: [{kind, repo, revision, folder}]
    mirrors: list[dict[str, str]] = field(default_factory=list)
    torrent_url: str | None = None  # where the published .torrent is served over HTTP(S)


@dataclass(frozen=True)
class FileEntry:
    path: str  # relative to the checkpoint root, '/'-separated, e.g. 'ckpt-0/tensor00000_000'
    size: int
    blake3: str | None = None
    sha256: str | None = None
    chunks: list[str] | None = None  # BLAKE3 of each chunk_size slice
    param: str | None = None  # haiku module path of the parameter it holds
    kind: str | None = None  # 'ndarray' or 'quantized'
    arrays: list[dict[str, Any]] | None = None  # [{name, dtype, shape}]
    layer: int | None = None
    source: dict[str, Any] | None = None  # for derived files (repack): {file, blake3}
    sha256_source: str | None = None  # page the sha256 came from, if third-party

    def to_dict(self) -> dict[str, Any]:
        """The entry as a manifest's ``files`` lists it (and the repack journal's lines)."""
        return _entry_dict(self)

    @classmethod
    def from_dict(cls, d: Any, chunk_size: int, origin: str = "manifest",
                  where: str = "entry") -> FileEntry:
        """One entry, validated as in a whole manifest (``chunk_size``: its chunk hashes')."""
        if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size <= 0:
            raise _bad(origin, "chunk_size", "must be a positive integer")
        return _parse_entry(d, origin, where, chunk_size)


@dataclass(frozen=True)
class Manifest:
    name: str
    files: list[FileEntry]
    license: str | None = None
    pinned: bool = False
    config: ModelConfig | None = None
    sources: Sources = field(default_factory=Sources)
    chunk_size: int = DEFAULT_CHUNK_SIZE
    repack: dict[str, Any] | None = None  # set on repack outputs: layout, dtype, compress
    notes: str | None = None
    pinned_by: tuple[PinRoot, ...] = ()  # what proved a pin's bytes (grokfetch.trust)
    tokenizer: FileEntry | None = None  # the model's tokenizer file (not in the checkpoint)

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)

    def file(self, path: str) -> FileEntry | None:
        for f in self.files:
            if f.path == path:
                return f
        return None

    def with_files(self, files: list[FileEntry], **changes: Any) -> Manifest:
        return replace(self, files=files, **changes)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "license": self.license,
            "pinned": self.pinned,
            "config": self.config.to_dict() if self.config else None,
            "sources": asdict(self.sources),
            "chunk_size": self.chunk_size,
        }
        if self.repack is not None:
            d["repack"] = self.repack
        if self.notes:
            d["notes"] = self.notes
        if self.pinned_by:
            d["pinned_by"] = [r.to_dict() for r in self.pinned_by]
        if self.tokenizer is not None:
            d["tokenizer"] = self.tokenizer.to_dict()
        d["total_size"] = self.total_size
        d["files"] = [f.to_dict() for f in self.files]
        return d

    @classmethod
    def from_dict(cls, d: Any, origin: str = "manifest") -> Manifest:
        return _parse(d, origin)


def _entry_dict(f: FileEntry) -> dict[str, Any]:
    d = asdict(f)
    # Keep the file small and readable: drop optional fields that are unset.
    for k in ("source", "sha256_source", "layer", "arrays", "kind", "param"):
        if d.get(k) is None:
            d.pop(k, None)
    return d


# -- validation -----------------------------------------------------------------------


def _bad(origin: str, where: str, what: str) -> ManifestError:
    return ManifestError(f"{origin}: {where}: {what}")


def _hexdigest(v: Any, algo: str, origin: str, where: str) -> str | None:
    if v is None:
        return None
    if not isinstance(v, str) or not re.fullmatch(rf"[0-9a-f]{{{_HEX[algo]}}}", v):
        raise _bad(origin, where, f"{algo} must be {_HEX[algo]} lowercase hex digits or null")
    return v


def _parse(d: Any, origin: str, tagged: bool = False) -> Manifest:
    if not isinstance(d, dict):
        raise ManifestError(f"{origin}: not a JSON object")
    if d.get("format") != FORMAT:
        raise _bad(origin, "format", f"expected {FORMAT!r}, got {d.get('format')!r}")
    if d.get("format_version") != FORMAT_VERSION:
        raise _bad(origin, "format_version",
                   f"unsupported version {d.get('format_version')!r} (this grokfetch reads "
                   f"{FORMAT_VERSION})")
    name = d.get("name")
    if not isinstance(name, str) or not name:
        raise _bad(origin, "name", "must be a non-empty string")
    chunk_size = d.get("chunk_size", DEFAULT_CHUNK_SIZE)
    if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size <= 0:
        raise _bad(origin, "chunk_size", "must be a positive integer")
    config = None
    if d.get("config") is not None:
        try:
            config = ModelConfig.from_dict(d["config"])
        except GrokfetchError as e:
            raise _bad(origin, "config", str(e)) from None
    sources = _parse_sources(d.get("sources") or {}, origin)
    raw_files = d.get("files")
    if not isinstance(raw_files, list):
        raise _bad(origin, "files", "must be a list")
    files = []
    seen: set[str] = set()
    for i, raw in enumerate(raw_files):
        entry = (_tagged_entry(raw, origin, i, chunk_size) if tagged else
                 _parse_entry(raw, origin, f"files[{i}]", chunk_size))
        if entry.path in seen:
            raise _bad(origin, f"files[{i}]", f"duplicate path {entry.path!r}")
        seen.add(entry.path)
        files.append(entry)
    pinned = d.get("pinned", False)
    if not isinstance(pinned, bool):
        raise _bad(origin, "pinned", "must be true or false")
    if pinned and any(f.blake3 is None for f in files):
        raise _bad(origin, "pinned", "a pinned manifest needs a blake3 hash for every file")
    repack = d.get("repack")
    if repack is not None and not isinstance(repack, dict):
        raise _bad(origin, "repack", "must be an object")
    lic = d.get("license")
    if lic is not None and not isinstance(lic, str):
        raise _bad(origin, "license", "must be a string")
    raw_roots = d.get("pinned_by") or []
    if not isinstance(raw_roots, list):
        raise _bad(origin, "pinned_by", "must be a list")
    pinned_by = tuple(PinRoot.from_dict(r, origin) for r in raw_roots)
    tokenizer = None
    if d.get("tokenizer") is not None:
        tokenizer = _parse_entry(d["tokenizer"], origin, "tokenizer", chunk_size)
    return Manifest(name=name, files=files, license=lic, pinned=pinned, config=config,
                    sources=sources, chunk_size=chunk_size, repack=repack,
                    notes=d.get("notes") if isinstance(d.get("notes"), str) else None,
                    pinned_by=pinned_by, tokenizer=tokenizer)


def _parse_sources(s: Any, origin: str) -> Sources:
    if not isinstance(s, dict):
        raise _bad(origin, "sources", "must be an object")
    magnet = s.get("magnet")
    if magnet is not None and (not isinstance(magnet, str) or not magnet.startswith("magnet:?")):
        raise _bad(origin, "sources.magnet", "must be a magnet: link")
    ih = s.get("info_hash")
    if ih is not None and (not isinstance(ih, str) or not _INFO_HASH.match(ih)):
        raise _bad(origin, "sources.info_hash", "must be 40 lowercase hex digits")
    lists = {}
    for k in ("trackers", "web_seeds"):
        v = s.get(k) or []
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise _bad(origin, f"sources.{k}", "must be a list of URLs")
        lists[k] = v
    src = s.get("sha256_source")
    mirrors = s.get("mirrors") or []
    if not isinstance(mirrors, list):
        raise _bad(origin, "sources.mirrors", "must be a list")
    for i, m in enumerate(mirrors):
        if not (isinstance(m, dict) and isinstance(m.get("repo"), str)
                and m.get("kind", "huggingface") == "huggingface"
                and all(isinstance(m.get(k, ""), str) for k in ("revision", "folder"))):
            raise _bad(origin, f"sources.mirrors[{i}]",
                       "must be {kind: huggingface, repo, revision, folder}")
        if m.get("folder"):
            try:
                safe_relpath(m["folder"], "mirror folder")
            except GrokfetchError as err:
                raise _bad(origin, f"sources.mirrors[{i}]", str(err)) from None
    turl = s.get("torrent_url")
    if turl is not None and not (isinstance(turl, str) and turl.startswith(("http://", "https://"))):
        raise _bad(origin, "sources.torrent_url", "must be an http(s) URL")
    return Sources(magnet, ih, lists["trackers"], lists["web_seeds"],
                   src if isinstance(src, str) else None, mirrors, turl)


def _parse_entry(e: Any, origin: str, where: str, chunk_size: int) -> FileEntry:
    if not isinstance(e, dict):
        raise _bad(origin, where, "must be an object")
    try:
        path = safe_relpath(e.get("path"), "manifest path")
    except GrokfetchError as err:
        raise _bad(origin, where, str(err)) from None
    if path != e.get("path"):
        raise _bad(origin, where, f"path {e.get('path')!r} is not normalised (want {path!r})")
    size = e.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise _bad(origin, f"{where} ({path})", "size must be a non-negative integer")
    b3 = _hexdigest(e.get("blake3"), "blake3", origin, f"{where} ({path})")
    sha = _hexdigest(e.get("sha256"), "sha256", origin, f"{where} ({path})")
    chunks = e.get("chunks")
    if chunks is not None:
        if not isinstance(chunks, list):
            raise _bad(origin, f"{where} ({path})", "chunks must be a list or null")
        for c in chunks:
            _hexdigest(c, "blake3", origin, f"{where} ({path}) chunks")
        want = -(-size // chunk_size)
        if len(chunks) != want:
            raise _bad(origin, f"{where} ({path})",
                       f"{len(chunks)} chunk hashes for {size} bytes (want {want})")
    layer = e.get("layer")
    if layer is not None and (not isinstance(layer, int) or isinstance(layer, bool)):
        raise _bad(origin, f"{where} ({path})", "layer must be an integer or null")
    arrays = e.get("arrays")
    if arrays is not None and not (isinstance(arrays, list)
                                   and all(isinstance(a, dict) for a in arrays)):
        raise _bad(origin, f"{where} ({path})", "arrays must be a list of objects")
    source = e.get("source")
    if source is not None and not isinstance(source, dict):
        raise _bad(origin, f"{where} ({path})", "source must be an object")
    return FileEntry(path=path, size=size, blake3=b3, sha256=sha, chunks=chunks,
                     param=e.get("param"), kind=e.get("kind"), arrays=arrays, layer=layer,
                     source=source, sha256_source=e.get("sha256_source"))


_ENTRY_FIELDS = frozenset(f.name for f in fields(FileEntry))


def _tagged_entry(e: Any, origin: str, i: int, chunk_size: int) -> FileEntry:
    """A file entry of a pin this user's grokfetch wrote (its tag checked out): the entry
    was validated before it was pinned, so it is taken as it is; re-validating each path
    and hex digest cost most of a ``verify --changed-only`` run of a 770-file tree."""
    try:
        return FileEntry(**{k: v for k, v in e.items() if k in _ENTRY_FIELDS})
    except (AttributeError, TypeError):  # a pin from a grokfetch that wrote other entries
        return _parse_entry(e, origin, f"files[{i}]", chunk_size)


# -- files on disk --------------------------------------------------------------------


def manifests_dir() -> Path:
    """Where the packaged model manifests live (``manifests/`` in a source checkout)."""
    env = os.environ.get("GROKFETCH_MANIFESTS")
    if env:
        return Path(env)
    here = Path(__file__).resolve().parent.parent  # grokfetch/, the package root
    packaged = here / "manifests"
    if packaged.is_dir():
        return packaged
    return here.parent / "manifests"


def model_names() -> list[str]:
    d = manifests_dir()
    return sorted(p.stem for p in d.glob("*.json")) if d.is_dir() else []


def published_info_hashes() -> dict[str, str]:
    """Info-hash -> name of each packaged model whose manifest names its torrent.

    Parsed once per state of the packaged files (Grok-1's manifest takes 15-20 ms to
    load, and one pin or verify asks several times); a changed file is parsed again."""
    d = manifests_dir()
    files = sorted(d.glob("*.json")) if d.is_dir() else []
    state = tuple((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in files)
    return dict(_published_info_hashes(d, state))


@functools.lru_cache(maxsize=4)
def _published_info_hashes(d: Path, state: tuple[tuple[str, int, int], ...]
                           ) -> tuple[tuple[str, str], ...]:
    out = []
    for name, _, _ in state:
        try:
            ih = load_manifest(d / name).sources.info_hash
        except GrokfetchError:  # a broken packaged manifest vouches for nothing
            continue
        if ih:
            out.append((ih, Path(name).stem))
    return tuple(out)


def by_info_hash(info_hash: str) -> Manifest | None:
    """The packaged manifest of the torrent with this info-hash (Grok-1's), or None."""
    name = published_info_hashes().get(info_hash.lower())
    return load_manifest(name) if name else None


def resolve_manifest(name_or_path: str | os.PathLike[str]) -> Path:
    """A manifest path, or a model name from manifests/ ('grok-1').

    A path that exists but is not a regular file (a folder, a FIFO, a device)
    is refused here, before anything opens it: reading a FIFO would hang.
    """
    p = Path(name_or_path)
    if p.is_file():
        return p
    s = str(name_or_path)
    bare = "/" not in s and not s.endswith(".json")
    candidate = manifests_dir() / f"{s}.json"
    if bare and candidate.is_file():  # a model name, even beside a folder called that
        return candidate
    if os.path.lexists(p):
        check_regular(p)  # a folder, a FIFO, a dangling symlink: refused, never opened
    if bare:
        known = ", ".join(model_names()) or "none"
        raise ManifestError(f"no manifest named {s!r} (known models: {known})")
    raise ManifestError(f"{s}: no such manifest file")


def check_regular(path: str | os.PathLike[str]) -> None:
    """ManifestError (exit 2) unless ``path`` is a regular file (stat only: never opened)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ManifestError(f"{path}: no such manifest file (a dangling symlink?)") from None
    except OSError as e:
        raise ManifestError(f"{path}: cannot read: {e.strerror or e}") from None
    if not stat.S_ISREG(st.st_mode):
        what = ("a folder" if stat.S_ISDIR(st.st_mode)
                else "a FIFO" if stat.S_ISFIFO(st.st_mode) else "not a regular file")
        raise ManifestError(f"{path}: is {what}, not a manifest file")


def read_manifest_bytes(path: str | os.PathLike[str]) -> bytes:
    """The exact bytes of a manifest file (what a pin's tag and a root's digest cover)."""
    check_regular(path)
    try:
        # O_NONBLOCK: should a FIFO replace the file after the check, open() still returns
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise ManifestError(f"{path}: cannot read: {e.strerror or e}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ManifestError(f"{path}: is not a regular file, not a manifest file")
        chunks = []
        while True:
            b = os.read(fd, 1 << 20)
            if not b:
                break
            chunks.append(b)
        return b"".join(chunks)
    except OSError as e:
        raise ManifestError(f"{path}: cannot read: {e.strerror or e}") from None
    finally:
        os.close(fd)


def _no_duplicate_keys(origin: str) -> Any:
    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in pairs:
            if k in out:
                # JSON parsers disagree on which value wins: the manifest means two things
                raise ManifestError(f"{origin}: duplicate key {k!r} (ambiguous manifest)")
            out[k] = v
        return out

    return hook


def parse_manifest_bytes(data: bytes, origin: str, tagged: bool = False) -> Manifest:
    """Parse and validate a manifest; ``tagged``: the bytes carry this user's pin tag
    (``_authentic_pin``), so they are a document grokfetch wrote (``json.dumps`` writes no
    duplicate keys) whose file entries were validated before they were pinned."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ManifestError(f"{origin}: cannot read: {e}") from None
    try:
        d = json.loads(text, object_pairs_hook=None if tagged else _no_duplicate_keys(origin))
        return _parse(d, origin, tagged)
    except json.JSONDecodeError as e:
        raise ManifestError(f"{origin}: not valid JSON (line {e.lineno}, column {e.colno}: "
                            f"{e.msg})") from None
    except RecursionError:  # nesting no manifest has: a crafted file
        raise ManifestError(f"{origin}: nested too deeply to be a manifest") from None


def load_manifest(name_or_path: str | os.PathLike[str]) -> Manifest:
    """Load and validate a manifest; ManifestError (exit 2) on anything malformed."""
    path = resolve_manifest(name_or_path)
    return parse_manifest_bytes(read_manifest_bytes(path), str(path))


@dataclass(frozen=True)
class LoadedManifest:
    """A manifest with what its bytes prove: their SHA-256, and whether this user pinned them."""

    manifest: Manifest
    path: Path
    sha256: str
    authentic: bool  # carries this user's pin tag (grokfetch.trust)


def load_manifest_file(path: str | os.PathLike[str]) -> LoadedManifest:
    p = resolve_manifest(path)
    data = read_manifest_bytes(p)
    tagged = _authentic_pin(data)
    m = parse_manifest_bytes(data, str(p), tagged)
    return LoadedManifest(m, p, hashlib.sha256(data).hexdigest(), tagged)


def save_manifest(manifest: Manifest, path: str | os.PathLike[str]) -> Path:
    """Write ``manifest`` as JSON, atomically (temp, fsync, rename); DiskError (exit 5)
    on a full or read-only disk, naming the manifest."""
    try:
        atomic_write_json(path, manifest.to_dict())
    except OSError as e:
        raise DiskError(f"{path}: cannot write the manifest ({e.strerror or e})") from None
    return Path(path)


def save_pin(manifest: Manifest, path: str | os.PathLike[str]) -> Path:
    """Write a pinned manifest, tagged with this user's key (``pin_tag``, grokfetch.trust).

    The tag is the HMAC of the exact bytes the file has without it: the document is
    serialised, tagged, and written with the tag as its last field.  Only code that
    has just proven the bytes (or was told to trust them on first use, recorded in
    ``pinned_by``) calls this.
    """
    path = Path(path)
    d = manifest.to_dict()
    d["pin_tag"] = tag(_untagged_bytes(d), "pin")
    try:
        atomic_write_bytes(path, _serialise(d))
    except OSError as e:  # a full or read-only disk: exit 5 naming the manifest
        raise DiskError(f"{path}: cannot write the manifest ({e.strerror or e})") from None
    return path


def _serialise(d: dict[str, Any]) -> bytes:
    return (json.dumps(d, indent=1) + "\n").encode()  # what atomic_write_json writes


def _untagged_bytes(d: dict[str, Any]) -> bytes:
    return _serialise({k: v for k, v in d.items() if k != "pin_tag"})


_TAG_FIELD = b',\n "pin_tag": "'  # how _serialise writes the last field of a pin


def _authentic_pin(data: bytes) -> bool:
    """The bytes are a pin this user wrote: their last field is the tag, and the bytes
    before it, closed as _serialise closes a document, carry it (any edit, or another
    key, fails).  Cut from the bytes rather than re-serialised: re-encoding a 770-file
    pin with indentation cost ~0.1 s, the most of a --changed-only run."""
    at = data.rfind(_TAG_FIELD)
    if at < 0:
        return False
    tag_hex = data[at + len(_TAG_FIELD):]
    if len(tag_hex) != 64 + 4 or not tag_hex.endswith(b'"\n}\n'):
        return False
    untagged = data[:at] + b"\n}\n"  # == _untagged_bytes of the document the bytes hold
    return authentic(untagged, "pin", tag_hex[:64].decode("ascii", "replace"))


def proven_pin(root: str | os.PathLike[str], accept_first_use: bool = False) -> Manifest | None:
    """The pinned manifest in ``root`` when it can vouch for bytes: this user pinned it (its
    tag checks out) and what proved it proves content (or first use, when accepted)."""
    path = Path(root) / MANIFEST_NAME
    if not os.path.lexists(path):
        return None
    lm = load_manifest_file(path)
    if not lm.authentic:
        return None
    roots = lm.manifest.pinned_by
    if roots_proven(roots) or (accept_first_use and roots and
                               all(r.kind == "first-use" for r in roots)):
        return lm.manifest
    return None
