"""Verify a checkpoint (or a repack output) folder against a root of trust, and pin it.

``verify(path)`` answers one question: are the bytes on disk the published
ones, and if not, which file and which part of it is wrong.  It needs a
*root of trust*: something that says what the bytes should be.  In order:

1. an explicit manifest (``--manifest NAME|PATH``);
2. the pinned manifest ``grokfetch-manifest.json`` that ``get`` or
   ``verify --pin`` left in the checkpoint root (BLAKE3 of every file and of
   every 64 MiB chunk);
3. the torrent metadata (``--torrent FILE``, or the .torrent ``get`` saved):
   the SHA-1 piece hashes, which the info-hash in the published magnet link
   vouches for - the only published root of trust for Grok-1;
4. failing those, the packaged manifest of a model whose files these are
   (grok-1: every size, and the SHA-256 the Hugging Face mirror shows for 34
   files).  Files with no hash get a structural check only, and the report
   says plainly that their content is not verified.

Every file gets one ``FileResult``; nothing stops at the first problem.  The
CLI (``grokfetch.cli.verify``) only formats the report.

``pin(path)`` writes the pinned manifest: BLAKE3 of each file and chunk,
computed in one read per file.  It trusts its caller to have proven the bytes
(``get`` after its piece check, ``verify --pin`` after a clean verification,
or the user with ``--trust-on-first-use``).
"""

from __future__ import annotations

import os
import random
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from grokfetch.errors import (
    CheckpointFormatError,
    GrokfetchError,
    ManifestError,
    TorrentError,
    UsageError,
)
from grokfetch.fsutil import TMP_MARK, safe_relpath
from grokfetch.hashing import (
    DEFAULT_CHUNK_SIZE,
    blake3_and_sha256,
    blake3_file,
    chunk_digests,
    chunk_range,
    file_digests,
    num_chunks,
    parallel_map,
    sha256_file,
    zero_digest,
)
from grokfetch.layout import CKPT_DIR, ArraySpec, ModelConfig, ParamSpec, file_name, param_list
from grokfetch.manifest import (
    MANIFEST_NAME,
    FileEntry,
    Manifest,
    Sources,
    load_manifest,
    model_names,
    save_manifest,
)
from grokfetch.names import escape_text, report_line
from grokfetch.progress import NullBar

# The reader (numpy, ml_dtypes) and the torrent code (libtorrent) take ~0.3 s
# to import; verifying against a pinned manifest needs neither, so they are
# imported where used.
if TYPE_CHECKING:
    from grokfetch.pieces import PieceCheck, PieceMap

# File statuses, as printed.  OK: the content matched a hash (or, with
# --quick, the size and the sampled chunks did).  FAILED: size, hash or
# structure is wrong.  UNVERIFIED: present and well-formed, but nothing could
# vouch for its content.  EXTRA: on disk, not in the file list.
OK, FAILED, MISSING, UNREADABLE, UNVERIFIED, EXTRA = (
    "OK",
    "FAILED",
    "MISSING",
    "UNREADABLE",
    "UNVERIFIED",
    "EXTRA",
)
STATUSES = (OK, FAILED, MISSING, UNREADABLE, UNVERIFIED, EXTRA)

# Chunks (or pieces) per file that --quick hashes: the first (it holds the header)
# and a random one.  On the real checkpoint that reads ~12% of the bytes.
QUICK_SAMPLES = 2
STATE_DIR = ".grokfetch"  # get's resume data folder inside its destination: not an extra file
_TENSOR_RE = re.compile(r"(^|/)tensor\d{5}_\d{3}$")

ProgressFactory = Callable[[int, str], Any]


@dataclass(frozen=True)
class FileResult:
    """The verdict on one file; ``line()`` is its b3sum-style report line."""

    path: str  # relative to the checkpoint root, '/'-separated
    status: str  # one of STATUSES
    vouched_by: str | None = None  # 'blake3', 'sha256' or 'torrent': what proved it OK
    detail: str = ""  # why it failed, or what was (not) checked
    bad_ranges: list[tuple[int, int]] = field(default_factory=list)  # (first, last) byte
    size: int | None = None  # on disk
    expected_size: int | None = None
    hashes: tuple[str, ...] = ()  # every hash that was checked and matched
    zero_filled: bool = False  # the bad bytes (or the file) are all zeros

    @property
    def ok(self) -> bool:
        return self.status in (OK, UNVERIFIED, EXTRA)

    def line(self) -> str:
        """b3sum-style; a name with a newline, backslash or control character is escaped
        and the line starts with a backslash (``names.report_line``)."""
        if self.status == OK and not self.detail:
            return report_line(self.path, f": OK ({', '.join(self.hashes) or self.vouched_by})")
        rest = f": {self.status}" + (f" ({escape_text(self.detail)})" if self.detail else "")
        return report_line(self.path, rest)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "status": self.status,
            "vouched_by": self.vouched_by,
            "hashes": list(self.hashes),
            "detail": self.detail,
            "bad_ranges": [list(r) for r in self.bad_ranges],
            "size": self.size,
            "expected_size": self.expected_size,
            "zero_filled": self.zero_filled,
        }


@dataclass(frozen=True)
class VerifyReport:
    root: Path  # the checkpoint root (where the pinned manifest lives)
    root_of_trust: str  # a sentence naming what vouched for the bytes
    trust: str | None  # 'manifest', 'pinned', 'torrent', 'packaged' or None
    files: list[FileResult]
    quick: bool = False
    strict: bool = False
    info_hash: str | None = None  # when a torrent was used
    bytes_hashed: int = 0
    seconds: float = 0.0
    advice: str | None = None  # how to get a root of trust, when content went unverified
    manifest: Manifest | None = field(default=None, repr=False)  # the one checked against
    torrent: str | None = None  # the .torrent whose pieces were checked

    @property
    def content_proven(self) -> bool:
        """Every listed file's content matched a hash or torrent pieces (not just sampled)."""
        return (
            self.ok
            and not self.quick
            and all(f.status == OK for f in self.files if f.status != EXTRA)
        )

    @property
    def summary(self) -> dict[str, int]:
        counts = dict.fromkeys(STATUSES, 0)
        for f in self.files:
            counts[f.status] += 1
        return counts

    @property
    def ok(self) -> bool:
        """No file failed, is missing or unreadable (with --strict: and no extra or unverified)."""
        bad = {FAILED, MISSING, UNREADABLE} | ({EXTRA, UNVERIFIED} if self.strict else set())
        return not any(f.status in bad for f in self.files)

    @property
    def problems(self) -> list[FileResult]:
        return [f for f in self.files if f.status not in (OK,)]

    def to_dict(self) -> dict[str, Any]:
        return {
            "root": str(self.root),
            "root_of_trust": self.root_of_trust,
            "trust": self.trust,
            "info_hash": self.info_hash,
            "quick": self.quick,
            "strict": self.strict,
            "ok": self.ok,
            "summary": self.summary,
            "bytes_hashed": self.bytes_hashed,
            "seconds": round(self.seconds, 3),
            "advice": self.advice,
            "files": [f.to_dict() for f in self.files],
        }


# -- where things are --------------------------------------------------------------------


@dataclass(frozen=True)
class _Place:
    """The folder being verified: its root and, for a checkpoint, the tensor folder."""

    root: Path
    ckpt_dir: Path | None

    def disk(self, rel: str) -> Path:
        """Where the file a manifest calls ``rel`` is on disk.

        ``ckpt-0/NAME`` lives in the folder that actually holds the tensors,
        whatever it is called (a torrent or mirror may name it differently).
        """
        rel = safe_relpath(rel, "manifest path")
        if self.ckpt_dir is not None and rel.startswith(CKPT_DIR + "/"):
            return self.ckpt_dir / rel[len(CKPT_DIR) + 1 :]
        return self.root / rel

    def rel(self, p: Path) -> str:
        """The manifest-style name of a file on disk (inverse of ``disk``)."""
        if self.ckpt_dir is not None and p.parent == self.ckpt_dir:
            return f"{CKPT_DIR}/{p.name}"
        return p.relative_to(self.root).as_posix()


def _locate(path: str | os.PathLike[str]) -> _Place:
    p = Path(path)
    if not p.exists():
        raise UsageError(f"{p}: no such folder")
    if not p.is_dir():
        raise UsageError(f"{p}: not a folder")
    if (p / MANIFEST_NAME).is_file():  # a pinned checkpoint root or a repack output
        if (p / CKPT_DIR).is_dir():
            return _Place(p, p / CKPT_DIR)
        if (p / file_name(0)).exists():  # pinned inside a tensor folder named otherwise
            return _Place(p, p)
        return _Place(p, None)
    if p.name == CKPT_DIR and (p.parent / MANIFEST_NAME).is_file():
        return _Place(p.parent, p)
    real = p.resolve()
    if real.name == CKPT_DIR and (real.parent / MANIFEST_NAME).is_file():
        return _Place(real.parent, real)  # a symlink to a pinned checkpoint's ckpt-0/
    from grokfetch.checkpoint import find_ckpt_dir

    try:
        ckpt = find_ckpt_dir(p)
    except UsageError:
        return _Place(p, None)  # not a checkpoint: the manifest or torrent lists the files
    root = ckpt.parent if ckpt.name == CKPT_DIR else ckpt
    return _Place(root, ckpt)


def _find_torrent(path: Path, place: _Place) -> Path | None:
    """The .torrent ``get`` saved: in the folder given, the root, or get's destination above."""
    folders = [path, place.root]
    if (place.root.parent / STATE_DIR).is_dir():
        folders.append(place.root.parent)  # get saves DEST/NAME.torrent, files in DEST/NAME/
    found: list[Path] = []
    for d in folders:
        for t in sorted(d.glob("*.torrent")):
            if t.is_file() and t.resolve() not in {f.resolve() for f in found}:
                found.append(t)
    if len(found) > 1:
        names = ", ".join(str(t) for t in found)
        raise UsageError(f"{path}: several .torrent files ({names}); choose one with --torrent")
    return found[0] if found else None


# -- what the files should be ------------------------------------------------------------


@dataclass
class _Expect:
    rel: str
    disk: Path
    size: int | None = None
    blake3: str | None = None
    sha256: str | None = None
    chunks: list[str] | None = None
    spec: ParamSpec | None = None  # layout entry, for the structural check of tensor files
    tensor: bool = False  # a checkpoint tensor file: the reader can check its structure
    tfile: Any = None  # pieces' TorrentFile, when the torrent vouches for this file
    layer: int | None = None  # the decoder layer the file belongs to (None: embedding, norm)
    layer_known: bool = False  # ``layer`` comes from the manifest or the layout


def _spec_from_entry(e: FileEntry, index: int) -> ParamSpec | None:
    """A layout spec from a manifest entry (for the structural check), if it is a tensor file."""
    if not _TENSOR_RE.search(e.path) or not e.kind or not e.arrays:
        return None
    try:
        arrays = tuple(ArraySpec(a["name"], a["dtype"], tuple(a["shape"])) for a in e.arrays)
    except (KeyError, TypeError) as err:
        raise ManifestError(f"{e.path}: malformed arrays entry ({err})") from None
    return ParamSpec(
        index=index,
        file=e.path,
        module=e.param or e.path,
        leaf="",
        layer=e.layer,
        kind=e.kind,
        arrays=arrays,
        scale_groups=None,
    )


def _inferred_config(place: _Place) -> ModelConfig | None:
    """The model config inferred from the files (None when they are too damaged to tell)."""
    if place.ckpt_dir is None:
        return None
    from grokfetch.checkpoint import infer_config

    try:
        return infer_config(place.ckpt_dir)
    except GrokfetchError:
        return None


def _layout_specs(place: _Place, config: ModelConfig | None) -> dict[str, ParamSpec]:
    """Layout specs by manifest path, from ``config`` or inferred from the files."""
    config = config or _inferred_config(place)
    return {s.file: s for s in param_list(config)} if config is not None else {}


@dataclass(frozen=True)
class _Trust:
    kind: str | None
    text: str
    manifest: Manifest | None = None
    pm: PieceMap | None = None
    advice: str | None = None


def _packaged_for(place: _Place) -> Manifest | None:
    """The packaged manifest whose files these are (same tensor count and first sizes)."""
    if place.ckpt_dir is None:
        return None
    for name in model_names():
        try:
            m = load_manifest(name)
        except GrokfetchError:
            continue
        tensors = [f for f in m.files if _TENSOR_RE.search(f.path)]
        last = tensors[-1] if tensors else None
        if last is not None and place.disk(last.path).is_file():
            # the highest-numbered file exists and no higher one: same model size
            if not place.disk(_next_name(last.path)).exists():
                return m
    return None


def _next_name(rel: str) -> str:
    m = re.search(r"tensor(\d{5})_(\d{3})$", rel)
    assert m is not None
    return rel[: m.start()] + f"tensor{int(m.group(1)) + 1:05d}_{m.group(2)}"


def _choose_trust(
    path: Path,
    place: _Place,
    manifest: Manifest | str | os.PathLike[str] | None,
    torrent: str | os.PathLike[str] | None,
) -> _Trust:
    pm = _piece_map(torrent) if torrent is not None else None
    if manifest is not None:
        m = manifest if isinstance(manifest, Manifest) else load_manifest(manifest)
        what = f"manifest {m.name}" if isinstance(manifest, Manifest) else f"manifest {manifest}"
        _check_torrent_matches(m, pm)
        if pm is not None:
            what += f", and torrent {pm.source} for files it has no hash for"
        return _Trust("manifest", what, m, pm)
    pinned = place.root / MANIFEST_NAME
    if pinned.is_file():
        m = load_manifest(pinned)
        _check_torrent_matches(m, pm)
        return _Trust("pinned", f"pinned manifest {pinned}", m, pm)
    if pm is None:
        found = _find_torrent(path, place)
        pm = _piece_map(found) if found is not None else None
    if pm is not None:
        return _Trust("torrent", _torrent_words(pm), None, pm)
    advice = (
        "content not verified: no manifest, pinned manifest or torrent. Get a root of trust "
        f"with `grokfetch verify {path} --torrent FILE --pin` (the torrent of the published "
        "magnet link), or `grokfetch get` into this folder"
    )
    packaged = _packaged_for(place)
    if packaged is not None:
        return _Trust(
            "packaged",
            f"packaged manifest {packaged.name} (sizes, and the hashes it has)",
            packaged,
            None,
            advice,
        )
    return _Trust(None, "none (presence and structure only)", None, None, advice)


def _torrent_words(pm: PieceMap) -> str:
    words = f"torrent {pm.source} (info-hash {pm.meta.info_hash}"
    published = _published_info_hashes()
    if pm.meta.info_hash in published:
        words += f", the published {published[pm.meta.info_hash]} magnet link"
    return words + ")"


def _packaged_by_info_hash(info_hash: str) -> Manifest | None:
    name = _published_info_hashes().get(info_hash)
    return load_manifest(name) if name else None


def _published_info_hashes() -> dict[str, str]:
    out = {}
    for name in model_names():
        try:
            ih = load_manifest(name).sources.info_hash
        except GrokfetchError:
            continue
        if ih:
            out[ih] = name
    return out


def _check_torrent_matches(m: Manifest, pm: PieceMap | None) -> None:
    if pm is not None and m.sources.info_hash and m.sources.info_hash != pm.meta.info_hash:
        raise TorrentError(
            f"{pm.source}: info-hash {pm.meta.info_hash} is not the manifest's "
            f"{m.sources.info_hash}; it cannot vouch for {m.name}"
        )


def _expected(trust: _Trust, place: _Place) -> list[_Expect]:
    """The files that should be there, with what is known about each."""
    out: list[_Expect] = []
    if trust.manifest is not None:
        # The manifest says what each file holds; the layout is only inferred from the
        # files when there is no manifest (that reads headers, and imports numpy).
        config = trust.manifest.config
        specs = {s.file: s for s in param_list(config)} if config is not None else {}
        for i, e in enumerate(trust.manifest.files):
            # structure checks are for checkpoint tensor files only (not repack outputs)
            tensor = bool(_TENSOR_RE.search(e.path))
            spec = (_spec_from_entry(e, i) or specs.get(e.path)) if tensor else None
            out.append(
                _Expect(
                    e.path, place.disk(e.path), e.size, e.blake3, e.sha256, e.chunks, spec, tensor,
                    layer=spec.layer if spec is not None else e.layer, layer_known=True,
                )
            )
        if trust.pm is not None:
            _attach_torrent(out, trust.pm)
        return out
    if trust.pm is not None:
        # The published torrent's model is known (its packaged manifest has the config);
        # inferring it from the files would go wrong for a partial (--layers) download.
        packaged = _packaged_by_info_hash(trust.pm.meta.info_hash)
        specs = _layout_specs(place, packaged.config if packaged is not None else None)
        for rel, disk, f in _torrent_files(trust.pm, place):
            tensor = bool(_TENSOR_RE.search(rel))
            s = specs.get(rel)
            out.append(
                _Expect(
                    rel, disk, f.size, spec=s, tensor=tensor, tfile=f,
                    layer=s.layer if s is not None else None, layer_known=s is not None,
                )
            )
        return out
    # No root of trust: the layout says which files and what each holds.
    if place.ckpt_dir is None:
        raise UsageError(
            f"{place.root}: not a checkpoint and no manifest or torrent to verify it against"
        )
    specs = _layout_specs(place, None)
    if specs:
        return [
            _Expect(rel, place.disk(rel), spec=s, tensor=True, layer=s.layer, layer_known=True)
            for rel, s in specs.items()
        ]
    # Too damaged to infer the model: check the tensor files there are, and the gaps.
    from grokfetch.checkpoint import tensor_files

    present = tensor_files(place.ckpt_dir)
    return [
        _Expect(f"{CKPT_DIR}/{file_name(i)}", place.ckpt_dir / file_name(i), tensor=True)
        for i in range(max(present) + 1 if present else 0)
    ]


def _select_layers(xs: list[_Expect], spec: str, trust: _Trust, place: _Place) -> set[str]:
    """The files of layers ``spec`` ('0-3,10') plus the embedding and final norm: what
    ``get --layers`` fetched.  Needs each file's layer, from the manifest or the layout."""
    from grokfetch.layout import parse_layer_spec

    unknown = [x.rel for x in xs if not x.layer_known]
    if unknown:
        raise UsageError(
            f"{place.root}: --layers: cannot tell which layer {unknown[0]} belongs to; pass "
            "the model's manifest with --manifest (e.g. --manifest grok-1)"
        )
    config = trust.manifest.config if trust.manifest is not None else None
    config = config or _inferred_config(place)
    if config is not None:
        num_layers = config.num_layers
    else:
        num_layers = 1 + max((x.layer for x in xs if x.layer is not None), default=-1)
    layers = set(parse_layer_spec(spec, num_layers))
    return {x.rel for x in xs if x.layer is None or x.layer in layers}


def _torrent_files(pm: PieceMap, place: _Place) -> list[tuple[str, Path, Any]]:
    """(manifest-style name, path on disk, TorrentFile) of each real file of the torrent."""
    from grokfetch.pieces import find_strip, rel_path

    strip = find_strip(pm.meta, place.root)
    out = []
    for f in pm.meta.real_files():
        disk = place.root / rel_path(f, strip)
        out.append((place.rel(disk), disk, f))
    return out


def _piece_map(torrent: str | os.PathLike[str]) -> PieceMap:
    from grokfetch.pieces import load_piece_map

    return load_piece_map(torrent)


def _attach_torrent(out: list[_Expect], pm: PieceMap) -> None:
    """Match torrent files to manifest entries by path suffix (the torrent's root name varies)."""
    files = pm.meta.real_files()
    for x in out:
        for f in files:
            if f.path == x.rel or f.path.endswith("/" + x.rel):
                x.tfile = f
                break


# -- checking ----------------------------------------------------------------------------


class _Progress:
    """A thread-safe byte counter in front of the caller's bar."""

    def __init__(self, bar: Any):
        self.bar = bar
        self.lock = threading.Lock()
        self.done = 0

    def __call__(self, n: int) -> None:
        with self.lock:
            self.done += n
            self.bar.update(n)


def _stat(x: _Expect) -> FileResult | None:
    """Presence, type and size; a FileResult when that already decides the verdict."""
    try:
        st = x.disk.stat()
    except FileNotFoundError:
        return FileResult(x.rel, MISSING, expected_size=x.size, detail="no such file")
    except OSError as e:
        return FileResult(x.rel, UNREADABLE, expected_size=x.size, detail=e.strerror or str(e))
    import stat as stat_mod

    if stat_mod.S_ISDIR(st.st_mode):
        return FileResult(x.rel, UNREADABLE, expected_size=x.size, detail="is a folder, not a file")
    if not stat_mod.S_ISREG(st.st_mode):
        return FileResult(x.rel, UNREADABLE, expected_size=x.size, detail="not a regular file")
    if not os.access(x.disk, os.R_OK):
        return FileResult(x.rel, UNREADABLE, size=st.st_size, detail="permission denied")
    if x.size is not None and st.st_size != x.size:
        if st.st_size == 0:
            what = f"empty file, expected {x.size} bytes"
        elif st.st_size < x.size:
            what = f"truncated: {st.st_size} of {x.size} bytes"
        else:
            what = f"size {st.st_size} bytes, expected {x.size} ({st.st_size - x.size} too many)"
        rng = [(st.st_size, x.size - 1)] if st.st_size < x.size else []
        return FileResult(
            x.rel, FAILED, detail=what, bad_ranges=rng, size=st.st_size, expected_size=x.size
        )
    return None


def _structure(x: _Expect) -> str | None:
    """What is wrong with a tensor file's structure, or None if it holds what it should."""
    if not x.tensor:
        return None
    from grokfetch.checkpoint import compare
    from grokfetch.reader import scan

    try:
        found = scan(x.disk)
    except CheckpointFormatError as e:
        return (f"at byte {e.offset}: " if e.offset is not None else "") + e.what
    except OSError as e:
        return e.strerror or str(e)
    if x.spec is None:
        return None
    problems = compare(x.spec, found)
    return "; ".join(problems) if problems else None


def _merge(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if out and out[-1][1] + 1 >= lo:
            out[-1] = (out[-1][0], max(hi, out[-1][1]))
        else:
            out.append((lo, hi))
    return out


def _ranges_text(ranges: list[tuple[int, int]], limit: int = 4) -> str:
    parts = [f"{lo}-{hi}" for lo, hi in ranges[:limit]]
    more = f" and {len(ranges) - limit} more ranges" if len(ranges) > limit else ""
    return ", ".join(parts) + more


def _sample(n: int, rng: random.Random) -> list[int]:
    """--quick's sample of ``n`` chunks: the first and QUICK_SAMPLES - 1 random others."""
    if n <= QUICK_SAMPLES:
        return list(range(n))
    return [0, *sorted(rng.sample(range(1, n), QUICK_SAMPLES - 1))]


def _check_hashed(
    x: _Expect,
    size: int,
    chunk_size: int,
    quick: bool,
    rng: random.Random,
    on_bytes: Callable[[int], None],
) -> FileResult:
    """Check a file against the manifest's BLAKE3 / SHA-256 / chunk hashes."""
    base: dict[str, Any] = {"size": size, "expected_size": x.size}
    if quick:
        # Without chunk hashes, parsing the header catches a zero-filled (preallocated)
        # file.  With them the sample's first chunk covers the header anyway, and parsing
        # 770 headers (and importing numpy to do it) made --quick slower than a full run.
        problem = _structure(x) if not x.chunks else None
        if problem:
            return FileResult(x.rel, FAILED, None, problem, **base)
        if not x.chunks:
            return FileResult(x.rel, OK, None, "quick: size only (no chunk hashes)", **base)
        picks = _sample(len(x.chunks), rng)
        got = chunk_digests(x.disk, chunk_size, picks, on_bytes=on_bytes)
        bad = [i for i in picks if got.get(i) != x.chunks[i]]
        if bad:
            return _chunk_failure(x, size, chunk_size, got, bad, base)
        return FileResult(
            x.rel,
            OK,
            "blake3",
            f"quick: size and {len(picks)} of {len(x.chunks)} chunks (blake3)",
            hashes=("blake3",),
            **base,
        )
    matched: list[str] = []
    mismatched: list[str] = []
    whole = None
    got_sha = None
    if x.blake3 and x.sha256:  # both in one read of the file
        whole, got_sha = blake3_and_sha256(x.disk, on_bytes=on_bytes)
        (matched if whole == x.blake3 else mismatched).append("blake3")
    elif x.blake3:
        whole = blake3_file(x.disk, on_bytes=on_bytes)
        (matched if whole == x.blake3 else mismatched).append("blake3")
    elif x.chunks:
        got = chunk_digests(x.disk, chunk_size, on_bytes=on_bytes)
        bad = [i for i in range(len(x.chunks)) if got.get(i) != x.chunks[i]]
        if bad:
            return _chunk_failure(x, size, chunk_size, got, bad, base)
        matched.append("blake3")
    if x.sha256:
        if got_sha is None:
            got_sha = sha256_file(x.disk, on_bytes=on_bytes)
        (matched if got_sha == x.sha256 else mismatched).append("sha256")
    if not mismatched:
        return FileResult(x.rel, OK, matched[0], hashes=tuple(matched), **base)
    # Locate the damage: chunk hashes of this file only (a second read, for failures only).
    if x.chunks and "blake3" in mismatched:
        got = chunk_digests(x.disk, chunk_size)
        bad = [i for i in range(len(x.chunks)) if got.get(i) != x.chunks[i]]
        if bad:
            return _chunk_failure(x, size, chunk_size, got, bad, base)
    zero = whole is not None and whole == zero_digest(size)
    detail = f"{' and '.join(mismatched)} hash mismatch"
    if matched:
        detail += f" (but {' and '.join(matched)} matched: the manifest is inconsistent)"
    if zero:
        detail += "; the file is all zero bytes (preallocated, never written: incomplete download?)"
    elif x.tensor:
        problem = _structure(x)
        if problem:
            detail += f"; {problem}"
    return FileResult(
        x.rel, FAILED, None, detail, [(0, size - 1)] if size else [], zero_filled=zero, **base
    )


def _chunk_failure(
    x: _Expect,
    size: int,
    chunk_size: int,
    got: dict[int, str],
    bad: list[int],
    base: dict[str, Any],
) -> FileResult:
    ranges = _merge(
        (chunk_range(i, size, chunk_size)[0], chunk_range(i, size, chunk_size)[1] - 1) for i in bad
    )
    zeros = all(got.get(i) == zero_digest(_chunk_len(i, size, chunk_size)) for i in bad)
    n = len(x.chunks or [])
    which = ", ".join(str(i) for i in bad[:8]) + (" ..." if len(bad) > 8 else "")
    detail = (
        f"hash mismatch in bytes {_ranges_text(ranges)} "
        f"(chunk{'s' if len(bad) > 1 else ''} {which} of {n})"
    )
    if zeros:
        detail += "; those bytes are all zero (never written: an incomplete download?)"
    return FileResult(x.rel, FAILED, None, detail, ranges, zero_filled=zeros, **base)


def _chunk_len(i: int, size: int, chunk_size: int) -> int:
    start, end = chunk_range(i, size, chunk_size)
    return end - start


def _unverified(x: _Expect, size: int, why: str) -> FileResult:
    problem = _structure(x)
    base: dict[str, Any] = {"size": size, "expected_size": x.size}
    if problem:
        return FileResult(x.rel, FAILED, None, problem, **base)
    what = ""
    if x.tensor:
        what = f"structure OK: {x.spec.module}; " if x.spec is not None else "structure OK; "
    return FileResult(x.rel, UNVERIFIED, None, f"{what}{why}", **base)


def _torrent_results(
    xs: list[_Expect],
    everything: list[_Expect],
    check: PieceCheck,
    known: dict[str, FileResult],
    quick: bool,
) -> list[FileResult]:
    """Per-file verdicts for ``xs`` from a piece check, blaming bad pieces on the right file.

    A piece that spans a file already known to be bad (``known``: missing,
    wrong size, failed its manifest hash) says nothing about its neighbours:
    their bytes in it are reported as unchecked, not as bad.
    """
    pm = check.pm
    broken = {x.tfile.index for x in everything if x.tfile is not None and x.rel in known}
    out = []
    for x in xs:
        if x.tfile is None or x.rel in known:
            continue
        f = x.tfile
        size = x.disk.stat().st_size
        base: dict[str, Any] = {"size": size, "expected_size": x.size}
        failed = set(check.failed) & set(pm.pieces_of(f))
        blamed = {p for p in failed if not any(g.index in broken for g in pm.files_of(p))}
        if blamed:
            ranges = check._ranges(f, blamed)
            first, last = min(blamed), max(blamed)
            shared = sorted({g.path for p in blamed for g in pm.files_of(p)} - {f.path})
            detail = (
                f"hash mismatch in bytes {_ranges_text(ranges)} "
                f"(torrent piece{'s' if len(blamed) > 1 else ''} "
                f"{first}{f'-{last}' if last != first else ''})"
            )
            if shared:
                detail += (
                    f"; the piece{'s' if len(blamed) > 1 else ''} also hold"
                    f"{'' if len(blamed) > 1 else 's'} bytes of {len(shared)} other "
                    "file(s), one of which is damaged"
                )
            problem = _structure(x)
            if problem and "zero" in problem:
                detail += f"; {problem}"
            out.append(FileResult(x.rel, FAILED, None, detail, ranges, **base))
            continue
        unchecked = (set(pm.pieces_of(f)) & (set(check.unchecked) | failed)) - blamed
        if unchecked:
            ranges = check._ranges(f, unchecked)
            out.append(
                _unverified(
                    x,
                    size,
                    f"bytes {_ranges_text(ranges)} share torrent pieces with a missing, unreadable "
                    "or wrong-size file and cannot be checked; the rest matched",
                )
            )
            continue
        if quick:
            out.append(
                FileResult(
                    x.rel,
                    OK,
                    "torrent",
                    "quick: size and sampled torrent pieces",
                    hashes=("torrent",),
                    **base,
                )
            )
        else:
            out.append(FileResult(x.rel, OK, "torrent", hashes=("torrent",), **base))
    return out


def _extras(place: _Place, expected: set[Path]) -> list[FileResult]:
    """Files on disk below the root that the file list does not name."""
    skip_names = {MANIFEST_NAME}
    out = []
    roots = [place.root]
    if place.ckpt_dir is not None and not _is_below(place.ckpt_dir, place.root):
        roots.append(place.ckpt_dir)
    seen: set[Path] = set()
    for top in roots:
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames[:] = sorted(d for d in dirnames if d != STATE_DIR)
            for name in sorted(filenames):
                p = Path(dirpath) / name
                if p in expected or p in seen or name in skip_names or TMP_MARK in name:
                    continue
                if Path(dirpath) == place.root and name.endswith(".torrent"):
                    continue
                seen.add(p)
                try:
                    size = p.stat().st_size
                except OSError:
                    size = None
                rel = (
                    place.rel(p)
                    if _is_below(p, place.root) or p.parent == place.ckpt_dir
                    else str(p)
                )
                out.append(FileResult(rel, EXTRA, detail="not in the file list", size=size))
    return out


def _is_below(p: Path, root: Path) -> bool:
    try:
        p.relative_to(root)
        return True
    except ValueError:
        return False


def verify(
    path: str | os.PathLike[str],
    *,
    manifest: Manifest | str | os.PathLike[str] | None = None,
    torrent: str | os.PathLike[str] | None = None,
    quick: bool = False,
    strict: bool = False,
    jobs: int | None = None,
    progress: ProgressFactory | None = None,
    seed: int | None = None,
    layers: str | None = None,
) -> VerifyReport:
    """Check every file under ``path`` against the best available root of trust.

    ``manifest``: a Manifest, a manifest path or a packaged model name.
    ``torrent``: a .torrent whose SHA-1 pieces vouch for the files (with a
    manifest: for the files the manifest has no hash for).  ``quick``: sizes
    plus a sample of chunks (or pieces).  ``strict``: extra and unverified
    files count as problems.  ``jobs``: files hashed at once (default: CPU
    count; large files also use blake3's own threads).  ``progress(total,
    desc)`` returns a bar with ``update(n)``/``close()``.  ``seed`` fixes
    --quick's random sample.  ``layers`` ('0-3,10'): only those layers' files plus the
    embedding and final norm (what ``get --layers`` fetched); the others are neither
    checked nor reported.

    Raises UsageError / ManifestError (exit 2) when it cannot run, TorrentError
    (exit 4) for a torrent that cannot vouch for these files.
    """
    t0 = time.monotonic()
    path = Path(path)
    place = _locate(path)
    trust = _choose_trust(path, place, manifest, torrent)
    xs = _expected(trust, place)
    # Every listed file is looked at (a missing unselected file still takes the blame for
    # torrent pieces it shares), but only the selected ones are checked and reported.
    sel = xs
    if layers is not None:
        chosen = _select_layers(xs, layers, trust, place)
        sel = [x for x in xs if x.rel in chosen]
    chunk_size = trust.manifest.chunk_size if trust.manifest is not None else DEFAULT_CHUNK_SIZE
    rng = random.Random(seed)

    known: dict[str, FileResult] = {}
    for x in xs:
        r = _stat(x)
        if r is not None:
            known[x.rel] = r
    hashed = [x for x in sel if x.rel not in known and (x.blake3 or x.sha256 or x.chunks)]
    by_torrent = [
        x
        for x in sel
        if x.rel not in known and x.tfile is not None and not (x.blake3 or x.sha256 or x.chunks)
    ]
    # Pieces to read: every piece of a torrent-vouched file (or a sample of them).
    pieces: set[int] = set()
    if trust.pm is not None:
        for x in by_torrent:
            ps = trust.pm.pieces_of(x.tfile)
            if quick:
                pieces.update(ps[i] for i in _sample(len(ps), rng))
            else:
                pieces.update(ps)
    total = 0
    sizes = {x.rel: x.disk.stat().st_size for x in hashed + by_torrent}
    for x in hashed:
        s = sizes[x.rel]
        if quick:
            total += min(s, QUICK_SAMPLES * chunk_size) if x.chunks else 0
        else:
            # one read per file, whatever hashes it has (blake3 + sha256 share it)
            total += s
    if trust.pm is not None:
        total += sum(trust.pm.piece_span(p)[1] - trust.pm.piece_span(p)[0] for p in pieces)
    bar = progress(total, "verify") if progress is not None else NullBar()
    counter = _Progress(bar)
    results: dict[str, FileResult] = dict(known)
    try:

        def one(x: _Expect) -> FileResult:
            try:
                return _check_hashed(
                    x, sizes[x.rel], chunk_size, quick, random.Random(rng.random()), counter
                )
            except OSError as e:
                return FileResult(
                    x.rel,
                    UNREADABLE,
                    detail=e.strerror or str(e),
                    size=sizes[x.rel],
                    expected_size=x.size,
                )

        # Large files first: the long hashes start early, the small ones fill the gaps.
        order = sorted(hashed, key=lambda x: -sizes[x.rel])
        for r in parallel_map(one, order, jobs or os.cpu_count() or 1):
            results[r.path] = r
        if trust.pm is not None and by_torrent:
            from grokfetch.pieces import find_strip, verify_pieces

            check = verify_pieces(
                trust.pm,
                place.root,
                strip=find_strip(trust.pm.meta, place.root),
                pieces=pieces,
                jobs=jobs,
                on_bytes=counter,
            )
            # a file that already failed (missing, wrong size, bad hash) takes the blame
            # for the pieces it shares with its neighbours
            bad = {k: r for k, r in results.items() if r.status != OK}
            for r in _torrent_results(by_torrent, xs, check, bad, quick):
                results[r.path] = r
    finally:
        bar.close()
    why = "no root of trust" if trust.kind is None else "no hash for it in the manifest"
    for x in sel:
        if x.rel not in results:
            results[x.rel] = _unverified(x, x.disk.stat().st_size, f"content not verified ({why})")
    files = [results[x.rel] for x in sel]
    files += _extras(place, {x.disk for x in xs})
    unverified = {f.path for f in files if f.status == UNVERIFIED}
    advice = trust.advice if unverified else None
    # The torrent was checked, and only its pieces shared with a broken file are left
    # unchecked: passing the torrent again would not help, completing that file would.
    blocked = {x.rel for x in sel if x.rel in unverified and x.tfile is not None}
    if blocked and advice is None:
        advice = (
            f"{len(blocked)} file(s) share torrent pieces with missing, unreadable or wrong-size "
            "files, so those bytes could not be checked: complete the broken files (rerun "
            f"`grokfetch get`, or `grokfetch get --repair`) and verify {path} again"
        )
    if unverified - blocked and advice is None:
        advice = (
            "some files have no hash to check their content against: pass the torrent of the "
            f"published magnet link with `grokfetch verify {path} --torrent FILE --pin`"
        )
    return VerifyReport(
        root=place.root,
        root_of_trust=trust.text,
        trust=trust.kind,
        files=files,
        quick=quick,
        strict=strict,
        info_hash=trust.pm.meta.info_hash if trust.pm is not None else None,
        bytes_hashed=counter.done,
        seconds=time.monotonic() - t0,
        advice=advice,
        manifest=trust.manifest,
        torrent=trust.pm.source if trust.pm is not None else None,
    )


# -- pinning -----------------------------------------------------------------------------


def pin(
    path: str | os.PathLike[str],
    *,
    base: Manifest | None = None,
    torrent: str | os.PathLike[str] | None = None,
    chunk_size: int | None = None,
    jobs: int | None = None,
    progress: ProgressFactory | None = None,
) -> Path:
    """Write the pinned manifest (BLAKE3 of every file and chunk) into the checkpoint root.

    The file list comes from ``base`` (its names, sizes, parameters, SHA-256
    values, sources and config are carried over), else from ``torrent``, else
    from the layout of the checkpoint found at ``path``.  The caller vouches
    that the bytes are right; nothing is compared here except sizes (a file
    whose size differs from ``base`` stops the pin).  Returns the manifest path.
    """
    p = Path(path)
    place = _locate(p)
    pm = _piece_map(torrent) if torrent is not None else None
    if base is None and pm is not None:
        base = _packaged_by_info_hash(pm.meta.info_hash)  # grok-1: names, params, SHA-256
    if chunk_size is None:
        chunk_size = base.chunk_size if base is not None else DEFAULT_CHUNK_SIZE
    entries: list[FileEntry]
    config = base.config if base is not None else None
    if base is not None:
        entries = list(base.files)
    elif pm is not None:
        specs = _layout_specs(place, None)
        entries = [
            _entry_for(rel, f.size, specs.get(rel)) for rel, _, f in _torrent_files(pm, place)
        ]
    else:
        if place.ckpt_dir is None:
            raise UsageError(f"{p}: no checkpoint here, and no manifest or torrent to pin from")
        from grokfetch.checkpoint import infer_config

        config = infer_config(place.ckpt_dir)  # raises if the layout cannot be inferred
        entries = [_entry_for(s.file, -1, s) for s in param_list(config)]
    if config is None:
        config = _inferred_config(place)

    sizes = {}
    for e in entries:
        disk = place.disk(e.path)
        try:
            st = disk.stat()
        except OSError as err:
            raise UsageError(f"{disk}: cannot pin: {err.strerror or err}") from None
        if e.size >= 0 and st.st_size != e.size:
            raise UsageError(f"{disk}: cannot pin: {st.st_size} bytes, expected {e.size}")
        sizes[e.path] = st.st_size
    bar = progress(sum(sizes.values()), "pin") if progress is not None else NullBar()
    counter = _Progress(bar)

    def one(e: FileEntry) -> FileEntry:
        d = file_digests(place.disk(e.path), chunk_size, on_bytes=counter)
        if d.size != sizes[e.path]:
            raise UsageError(f"{e.path}: changed size while it was being hashed")
        return replace(e, size=d.size, blake3=d.blake3, chunks=d.chunks)

    try:
        pinned = list(parallel_map(one, entries, jobs or os.cpu_count() or 1))
    finally:
        bar.close()
    sources = base.sources if base is not None else Sources()
    if pm is not None and not sources.info_hash:
        sources = replace(
            sources,
            info_hash=pm.meta.info_hash,
            trackers=list(pm.meta.trackers),
            web_seeds=list(pm.meta.web_seeds),
        )
    name = base.name if base is not None else (pm.meta.name if pm is not None else place.root.name)
    m = Manifest(
        name=name,
        files=pinned,
        license=base.license if base is not None else None,
        pinned=True,
        config=config,
        sources=sources,
        chunk_size=chunk_size,
        repack=base.repack if base is not None else None,
        notes=base.notes if base is not None else None,
    )
    out = place.root / MANIFEST_NAME
    save_manifest(m, out)
    return out


def _entry_for(rel: str, size: int, spec: ParamSpec | None) -> FileEntry:
    if spec is None:
        return FileEntry(path=rel, size=size)
    return FileEntry(
        path=rel,
        size=size,
        param=spec.module,
        kind=spec.kind,
        arrays=[{"name": a.name, "dtype": a.dtype, "shape": list(a.shape)} for a in spec.arrays],
        layer=spec.layer,
    )


__all__ = [
    "FileResult",
    "VerifyReport",
    "verify",
    "pin",
    "num_chunks",
    "STATUSES",
]
