"""Verify a checkpoint (or a repack output) folder against a root of trust, and pin it.

``verify(path)`` answers one question: are the bytes on disk the published
ones, and if not, which file and which part of it is wrong.  It needs a
*root of trust*, named by who vouches for the bytes (``grokfetch.trust``),
never by which file happens to be in the folder:

1. what the user names: ``--manifest NAME|PATH`` and/or ``--torrent FILE``,
   or an OMS signature (``--signature`` with ``--public-key`` or
   ``--certificate``: ``grokfetch.integrity.signing`` checks the bundle and hands over
   the signed digest of every file or shard as a ``SignedModel``).
   An explicit root is the root of the run: every file is checked against
   it, and a pinned manifest in the folder adds nothing;
2. otherwise the pinned manifest ``grokfetch-manifest.json``, only when this
   user pinned it (its tag checks out under the user's key) - it then says
   what proved it (a torrent, a manifest, or first use).  A manifest of
   unknown origin (copied from elsewhere) is reported and never makes a file OK;
3. otherwise a ``.torrent`` in the folder, only when its info-hash is a
   packaged model's published one or the one the user asked ``get`` for;
4. failing those, the packaged manifest of a model whose files these are
   (grok-1: every size, and the SHA-256 the Hugging Face mirror shows for 34
   files).  Files with no hash get a structural check only, and the report
   says plainly that their content is not verified.

Every file gets one ``FileResult``; nothing stops at the first problem.  The
report's ``proven`` is true only when every file the root (and the layout)
expects is present and matched a hash from a root that proves content.  The
CLI (``grokfetch.cli.verify``) only formats the report.

``pin(path, torrent=..., manifest=...)`` writes the pinned manifest: BLAKE3 of
each file and chunk, computed in the same read that checks the root's hashes
(the torrent's SHA-1 pieces, the manifest's BLAKE3/SHA-256), so no byte enters
a pin without passing its root in that pass.  A file that fails stops the pin.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import stat as stat_mod
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from grokfetch.errors import (
    CheckpointFormatError,
    GrokfetchError,
    ManifestError,
    PinRefused,
    TorrentError,
    UsageError,
)
from grokfetch.format.folder import (
    SIGNATURE_NAME,
    STATE_DIR,
    TORRENT_SUFFIX,
    Folder,
    existing_folder,
    locate,
)
from grokfetch.format.layout import (
    CKPT_DIR,
    ArraySpec,
    ModelConfig,
    ParamSpec,
    file_name,
    is_tensor_path,
    param_list,
)
from grokfetch.format.manifest import (
    MANIFEST_NAME,
    FileEntry,
    Manifest,
    Sources,
    by_info_hash,
    load_manifest,
    load_manifest_file,
    model_names,
    published_info_hashes,
    save_pin,
)
from grokfetch.fsutil import TMP_MARK
from grokfetch.hashing import (
    DEFAULT_CHUNK_SIZE,
    FileDigests,
    blake3_and_sha256,
    blake3_file,
    chunk_digests,
    chunk_range,
    default_jobs,
    digest_file,
    large_file_gate,
    num_chunks,
    parallel_map,
    range_digest,
    sha256_file,
    zero_digest,
)
from grokfetch.integrity.verified_record import StatKey, Verified, racy, stat_key
from grokfetch.integrity.verified_record import load as load_verified
from grokfetch.integrity.verified_record import now_ns as _now_ns
from grokfetch.integrity.verified_record import save as save_verified
from grokfetch.names import escape_text, report_line
from grokfetch.progress import NullBar, ProgressFactory, SharedCounter
from grokfetch.trust import (
    PinRoot,
    asked_info_hashes,
    now,
    roots_proven,
    roots_words,
)

# The reader (numpy, ml_dtypes) and the torrent code (libtorrent) take ~0.3 s
# to import; verifying against a pinned manifest needs neither, so they are
# imported where used.
if TYPE_CHECKING:
    from grokfetch.integrity.pieces import PieceCheck, PieceMap
    from grokfetch.integrity.signing import SignedModel

# File statuses, as printed.  OK: the content matched a hash (or, with
# --quick, the size and the sampled chunks did).  FAILED: size, hash or
# structure is wrong.  UNVERIFIED: present and well-formed, but nothing could
# vouch for its content.  EXTRA: on disk, not in the file list.
# UNCHANGED (--changed-only): not re-read, because what the filesystem says about it
# (device, inode, size, mtime, ctime) is what it said when a full verification
# proved it; that proves nothing about its bytes (grokfetch.integrity.verified_record).
OK, FAILED, MISSING, UNREADABLE, UNVERIFIED, EXTRA, UNCHANGED = (
    "OK",
    "FAILED",
    "MISSING",
    "UNREADABLE",
    "UNVERIFIED",
    "EXTRA",
    "UNCHANGED",
)
STATUSES = (OK, FAILED, MISSING, UNREADABLE, UNVERIFIED, EXTRA, UNCHANGED)

# Chunks (or pieces) per file that --quick hashes: the first (it holds the header)
# and a random one.  On the real checkpoint that reads ~12% of the bytes.
QUICK_SAMPLES = 2


@dataclass(frozen=True)
class FileResult:
    """The verdict on one file; ``line()`` is its b3sum-style report line."""

    path: str  # relative to the checkpoint root, '/'-separated
    status: str  # one of STATUSES
    vouched_by: str | None = None  # the root that proved it OK: 'torrent:<info-hash>', ...
    detail: str = ""  # why it failed, or what was (not) checked
    bad_ranges: list[tuple[int, int]] = field(default_factory=list)  # (first, last) byte
    size: int | None = None  # on disk
    expected_size: int | None = None
    hashes: tuple[str, ...] = ()  # every hash that was checked and matched
    zero_filled: bool = False  # the bad bytes (or the file) are all zeros

    @property
    def ok(self) -> bool:
        return self.status in (OK, UNVERIFIED, EXTRA, UNCHANGED)

    def line(self) -> str:
        """b3sum-style; a name with a newline, backslash or control character is escaped
        and the line starts with a backslash (``names.report_line``)."""
        if self.status == OK and not self.detail:
            return report_line(self.path, f": OK ({', '.join(self.hashes) or self.vouched_by})")
        if self.status == UNCHANGED:  # 'UNCHANGED since verified at T (not re-read)'
            return report_line(self.path, f": {self.status} {escape_text(self.detail)}")
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
    roots: tuple[PinRoot, ...] = ()  # who vouched (for a pin: what proved it)
    notes: tuple[str, ...] = ()  # files found that are no root of trust, roots not used
    unproven: str | None = None  # why the run proved less than every file (None: proven)
    signed: SignedModel | None = field(default=None, repr=False)  # the OMS signature checked
    changed_only: bool = False  # --changed-only: files whose metadata is unchanged not re-read
    accept_unchanged: bool = False  # ... and the user counts those as proven

    @property
    def content_proven(self) -> bool:
        """Every listed file's content matched a hash or torrent pieces (not just sampled);
        with ``accept_unchanged``, an UNCHANGED file counts as the proof it had."""
        good = {OK, UNCHANGED} if self.accept_unchanged else {OK}
        return (
            self.ok
            and not self.quick
            and all(f.status in good for f in self.files if f.status != EXTRA)
        )

    @property
    def proven(self) -> bool:
        """Every file the root (and the layout) expects matched a root that proves content."""
        return self.content_proven and self.unproven is None

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
        if self.signed is not None:
            bad.add(EXTRA)  # OMS: a file the signature does not cover fails verification
        return not any(f.status in bad for f in self.files)

    @property
    def problems(self) -> list[FileResult]:
        return [f for f in self.files if f.status not in (OK,)]

    def to_dict(self) -> dict[str, Any]:
        return {
            "root": str(self.root),
            "root_of_trust": self.root_of_trust,
            "trust": self.trust,
            "roots": [r.to_dict() for r in self.roots],
            "info_hash": self.info_hash,
            "quick": self.quick,
            "strict": self.strict,
            "changed_only": self.changed_only,
            "accept_unchanged": self.accept_unchanged,
            "ok": self.ok,
            "proven": self.proven,
            "unproven": self.unproven,
            "notes": list(self.notes),
            "summary": self.summary,
            "bytes_hashed": self.bytes_hashed,
            "seconds": round(self.seconds, 3),
            "advice": self.advice,
            "signature": self.signed.to_dict() if self.signed is not None else None,
            "files": [f.to_dict() for f in self.files],
        }


# -- where things are --------------------------------------------------------------------


def _find_torrent(path: Path, place: Folder) -> Path | None:
    """The .torrent ``get`` saved: in the folder given, the root, or get's destination above."""
    found = place.torrents(path)
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
    chunk_size: int | None = None  # when ``chunks`` are not the manifest's (signature shards)
    chunk_hash: str = "blake3"  # the algorithm of ``chunks``
    other: tuple[str, str] | None = None  # (algorithm, hex) of the whole file, another hash
    no_links_below: Path | None = None  # refuse a path through a symlink below this folder


def _spec_from_entry(e: FileEntry, index: int) -> ParamSpec | None:
    """A layout spec from a manifest entry (for the structural check), if it is a tensor file."""
    if not is_tensor_path(e.path) or not e.kind or not e.arrays:
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


def _inferred_config(place: Folder) -> ModelConfig | None:
    """The model config inferred from the files (None when they are too damaged to tell)."""
    if place.ckpt_dir is None:
        return None
    from grokfetch.format.checkpoint import infer_config

    try:
        return infer_config(place.ckpt_dir)
    except GrokfetchError:
        return None


def _layout_specs(place: Folder, config: ModelConfig | None) -> dict[str, ParamSpec]:
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
    roots: tuple[PinRoot, ...] = ()  # who vouches (a pin: what proved it)
    proven: bool = False  # a file that matches counts as proven
    notes: tuple[str, ...] = ()
    explicit_manifest: bool = False  # the user named the manifest (a root for pin)
    manifest_vouch: str | None = None  # vouched_by of a file a manifest hash proved
    torrent_vouch: str | None = None  # vouched_by of a file the torrent's pieces proved
    signed: SignedModel | None = None
    pin_sha256: str | None = None  # the pinned manifest's bytes, when it is the root


def _signature_trust(signed: SignedModel) -> _Trust:
    s = signed.serialization
    how = s.hash_type + (f", shards of {s.shard_size} bytes" if s.method == "shards" else "")
    root = PinRoot("signature", signed.signer, f"OMS signature {signed.signature_path}")
    return _Trust("signature", f"OMS signature {signed.signature_path}, signed by "
                  f"{signed.signer} ({how})", signed=signed, roots=(root,), proven=True,
                  manifest_vouch=f"signature:{signed.signer}")


def _signed_expect(signed: SignedModel, place: Folder) -> list[_Expect]:
    """What the signature says each file is: whole digests map onto the engine's
    sha256/blake3 fields, shards onto its chunk hashes."""
    s = signed.serialization
    out = []
    for f in signed.files():
        x = _Expect(f.path, place.root / f.path, f.size, layer_known=False,
                    no_links_below=None if s.allow_symlinks else place.root)
        if f.shards is not None:
            x.chunks, x.chunk_size, x.chunk_hash = f.shards, s.shard_size, f.algorithm
        elif f.algorithm == "sha256":
            x.sha256 = f.digest
        elif f.algorithm == "blake3":
            x.blake3 = f.digest
        else:
            assert f.digest is not None
            x.other = (f.algorithm, f.digest)
        out.append(x)
    return out


def _packaged_for(place: Folder) -> Manifest | None:
    """The packaged manifest whose files these are (same tensor count and first sizes)."""
    if place.ckpt_dir is None:
        return None
    for name in model_names():
        try:
            m = load_manifest(name)
        except GrokfetchError:
            continue
        tensors = [f for f in m.files if is_tensor_path(f.path)]
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
    place: Folder,
    manifest: Manifest | str | os.PathLike[str] | None,
    torrent: str | os.PathLike[str] | None,
    accept_first_use: bool = False,
) -> _Trust:
    notes: list[str] = []
    pm = _piece_map(torrent) if torrent is not None else None
    pinned = place.root / MANIFEST_NAME
    troot = _torrent_root(pm) if pm is not None else None
    if manifest is not None:
        if isinstance(manifest, Manifest):
            m, mroot = manifest, PinRoot("manifest", _manifest_digest(manifest), manifest.name)
            what = f"manifest {m.name}"
        else:
            lm = load_manifest_file(manifest)
            m, mroot = lm.manifest, PinRoot("manifest", lm.sha256, str(manifest))
            what = f"manifest {manifest} (sha256 {lm.sha256[:12]}...)"
        _check_torrent_matches(m, pm)
        roots: tuple[PinRoot, ...] = (mroot,)
        if pm is not None and troot is not None:
            what += f", and torrent {pm.source} for files it has no hash for"
            roots += (troot,)
        named_the_pin = not isinstance(manifest, Manifest) and os.path.abspath(
            manifest) == os.path.abspath(pinned)
        if os.path.lexists(pinned) and not named_the_pin:
            notes.append(f"{pinned}: not used: the manifest you named is the root of this run")
        return _Trust("manifest", what, m, pm, roots=roots, proven=True, notes=tuple(notes),
                      explicit_manifest=True, manifest_vouch=f"manifest:{mroot.id}",
                      torrent_vouch=f"torrent:{pm.meta.info_hash}" if pm else None)
    if pm is not None and troot is not None:
        # An explicit torrent is the root of the run: a pin in the folder adds nothing.
        if os.path.lexists(pinned):
            notes.append(f"{pinned}: not used: --torrent is the root of this run")
        return _Trust("torrent", _torrent_words(pm), None, pm, roots=(troot,), proven=True,
                      notes=tuple(notes), torrent_vouch=f"torrent:{pm.meta.info_hash}")
    if os.path.lexists(pinned):
        lm = load_manifest_file(pinned)  # malformed, a folder, a FIFO: exit 2 naming it
        if lm.authentic:
            m = lm.manifest
            first_use = any(r.kind == "first-use" for r in m.pinned_by)
            proven = roots_proven(m.pinned_by) or (accept_first_use and first_use)
            vouch = "pin:" + ",".join(f"{r.kind}:{r.id}" if r.id else r.kind
                                      for r in m.pinned_by)
            return _Trust("pinned", f"pinned manifest {pinned}, {_pin_words(m.pinned_by)}", m,
                          None, roots=m.pinned_by, proven=proven, manifest_vouch=vouch,
                          pin_sha256=lm.sha256)
        notes.append(
            f"{pinned}: manifest of unknown origin: not a root of trust (not pinned by you "
            "on this machine; a copy from elsewhere vouches for nothing)"
        )
    found = _find_torrent(path, place)
    if found is not None:
        fpm = _piece_map(found)
        bound = _bound_torrent(fpm, found)
        if bound is not None:
            return _Trust("torrent", _torrent_words(fpm, bound), None, fpm,
                          roots=(_torrent_root(fpm, bound),), proven=True, notes=tuple(notes),
                          torrent_vouch=f"torrent:{fpm.meta.info_hash}")
        notes.append(
            f"{found}: torrent of unknown origin (info-hash {fpm.meta.info_hash} is not a "
            "published one, nor one you asked `grokfetch get` for): not a root of trust; "
            "pass it with --torrent if you trust it"
        )
    advice = (
        "content not verified: no root of trust. Get one with "
        f"`grokfetch verify {path} --torrent FILE --pin` (the torrent of the published "
        "magnet link), or `grokfetch get` into this folder"
    )
    packaged = _packaged_for(place)
    if packaged is not None:
        proot = PinRoot("manifest", _manifest_digest(packaged), f"packaged {packaged.name}")
        return _Trust(
            "packaged",
            f"packaged manifest {packaged.name} (sizes, and the hashes it has)",
            packaged,
            None,
            advice,
            roots=(proot,),
            proven=True,
            notes=tuple(notes),
            manifest_vouch=f"packaged:{packaged.name}",
        )
    return _Trust(None, "none (presence and structure only)", None, None, advice,
                  notes=tuple(notes))


@dataclass(frozen=True)
class RootChoice:
    """The root of trust a run would use, decided without reading any checkpoint bytes."""

    kind: str | None  # as VerifyReport.trust
    text: str
    proven: bool  # a file that matches it counts as proven
    torrent: str | None  # the .torrent whose pieces vouch
    manifest: Manifest | str | os.PathLike[str] | None  # the manifest that vouches
    notes: tuple[str, ...] = ()


def find_root(
    path: str | os.PathLike[str],
    *,
    manifest: Manifest | str | os.PathLike[str] | None = None,
    torrent: str | os.PathLike[str] | None = None,
    accept_first_use: bool = False,
) -> RootChoice:
    """Which root of trust ``verify`` would use for ``path`` (what ``verify --pin`` pins
    against), by the same rules; raises as ``verify`` does for a malformed manifest."""
    p = Path(path)
    t = _choose_trust(p, locate(p), manifest, torrent, accept_first_use)
    return RootChoice(
        kind=t.kind,
        text=t.text,
        proven=t.proven,
        torrent=t.pm.source if t.pm is not None else None,
        manifest=manifest if t.explicit_manifest else None,
        notes=t.notes,
    )


def _pin_words(roots: tuple[PinRoot, ...]) -> str:
    if roots and all(r.kind == "first-use" for r in roots):
        return "pinned on first use: proves only that nothing changed since"
    if not roots:
        return "with no record of what proved it (pinned by an older grokfetch): not proven"
    return f"proven by {roots_words(roots)}"


def _manifest_digest(m: Manifest) -> str:
    """The SHA-256 of a manifest given as an object: of the JSON it would be saved as."""
    return hashlib.sha256(json.dumps(m.to_dict(), indent=1).encode()).hexdigest()


def _bound_torrent(pm: PieceMap, found: Path) -> str | None:
    """Why a .torrent found in the folder may vouch, or None: a published info-hash, or
    the one the user asked `get` for in this destination (get's authenticated record)."""
    published = published_info_hashes()
    ih = pm.meta.info_hash
    if ih in published:
        return f"the published {published[ih]} torrent"
    asked = asked_info_hashes(found.parent / STATE_DIR)
    if ih in asked:
        return f"the one you asked `grokfetch get` for: {asked[ih]}"
    return None


def _torrent_root(pm: PieceMap, label: str | None = None) -> PinRoot:
    if label is None:
        published = published_info_hashes()
        name = published.get(pm.meta.info_hash)
        label = f"the published {name} torrent" if name else f"{pm.source}, as you named it"
    return PinRoot("torrent", pm.meta.info_hash, label, now())


def _torrent_words(pm: PieceMap, bound: str | None = None) -> str:
    words = f"torrent {pm.source} (info-hash {pm.meta.info_hash}"
    published = published_info_hashes()
    if bound is not None:
        words += f", {bound}"
    elif pm.meta.info_hash in published:
        words += f", the published {published[pm.meta.info_hash]} magnet link"
    return words + ")"


def _check_torrent_matches(m: Manifest, pm: PieceMap | None) -> None:
    if pm is not None and m.sources.info_hash and m.sources.info_hash != pm.meta.info_hash:
        raise TorrentError(
            f"{pm.source}: info-hash {pm.meta.info_hash} is not the manifest's "
            f"{m.sources.info_hash}; it cannot vouch for {m.name}"
        )


def _expected(trust: _Trust, place: Folder) -> list[_Expect]:
    """The files that should be there, with what is known about each."""
    out: list[_Expect] = []
    if trust.signed is not None:
        return _signed_expect(trust.signed, place)
    if trust.manifest is not None:
        # The manifest says what each file holds; the layout is only inferred from the
        # files when there is no manifest (that reads headers, and imports numpy).
        config = trust.manifest.config
        specs = {s.file: s for s in param_list(config)} if config is not None else {}
        for i, e in enumerate(trust.manifest.files):
            # structure checks are for checkpoint tensor files only (not repack outputs)
            tensor = is_tensor_path(e.path)
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
        packaged = by_info_hash(trust.pm.meta.info_hash)
        specs = _layout_specs(place, packaged.config if packaged is not None else None)
        for rel, disk, f in _torrent_files(trust.pm, place):
            tensor = is_tensor_path(rel)
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
    from grokfetch.format.layout import tensor_files

    present = tensor_files(place.ckpt_dir)
    return [
        _Expect(f"{CKPT_DIR}/{file_name(i)}", place.ckpt_dir / file_name(i), tensor=True)
        for i in range(max(present) + 1 if present else 0)
    ]


def _select_layers(xs: list[_Expect], spec: str, trust: _Trust, place: Folder) -> set[str]:
    """The files of layers ``spec`` ('0-3,10') plus the embedding and final norm: what
    ``get --layers`` fetched.  Needs each file's layer, from the manifest or the layout."""
    from grokfetch.format.layout import parse_layer_spec, select_layers

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
    return {x.rel for x in select_layers(xs, layers)}


def _torrent_files(pm: PieceMap, place: Folder) -> list[tuple[str, Path, Any]]:
    """(manifest-style name, path on disk, TorrentFile) of each real file of the torrent."""
    from grokfetch.integrity.pieces import find_strip, rel_path

    strip = find_strip(pm.meta, place.root)
    out = []
    for f in pm.meta.real_files():
        disk = place.root / rel_path(f, strip)
        out.append((place.rel(disk), disk, f))
    return out


def _piece_map(torrent: str | os.PathLike[str]) -> PieceMap:
    from grokfetch.integrity.pieces import load_piece_map

    return load_piece_map(torrent)


def _attach_torrent(out: list[_Expect], pm: PieceMap) -> None:
    """Match torrent files to manifest entries by path suffix (the torrent's root name varies)."""
    files = pm.meta.real_files()
    for x in out:
        for f in files:
            if f.path == x.rel or f.path.endswith("/" + x.rel):
                x.tfile = f
                break


class _PieceLocator:
    """Where a pinned file without chunk hashes is damaged: its pieces in the torrent that
    proved the pin (found where ``get`` saves it and carrying the info-hash the pin
    records; any other torrent is ignored).  Looked for once, at the first failure; only
    the failed file's pieces are read.  The verdict itself is the BLAKE3's."""

    def __init__(self, path: Path, place: Folder, roots: tuple[PinRoot, ...]):
        self.path, self.place = path, place
        self.ids = {r.id for r in roots if r.kind == "torrent" and r.id}
        self._lock = threading.Lock()
        self._looked = False
        self._pm: PieceMap | None = None
        self._files: dict[str, Any] = {}
        self._strip = 0

    def _load(self) -> PieceMap | None:
        with self._lock:
            if not self._looked:
                self._looked = True
                try:
                    found = _find_torrent(self.path, self.place)
                    pm = _piece_map(found) if found is not None else None
                except (GrokfetchError, OSError):  # several, unreadable, not a torrent
                    pm = None
                if pm is not None and pm.meta.info_hash in self.ids:
                    from grokfetch.integrity.pieces import find_strip

                    self._strip = find_strip(pm.meta, self.place.root)
                    self._files = {rel: f for rel, _, f in _torrent_files(pm, self.place)}
                    self._pm = pm
            return self._pm

    def __call__(self, rel: str) -> tuple[list[tuple[int, int]], list[int], str] | None:
        """(bad byte ranges, bad pieces, the torrent) of the file, or None when no such
        torrent is at hand."""
        pm = self._load() if self.ids else None
        f = self._files.get(rel)
        if pm is None or f is None or not f.size:
            return None
        from grokfetch.integrity.pieces import verify_pieces

        check = verify_pieces(pm, self.place.root, strip=self._strip, pieces=pm.pieces_of(f),
                              jobs=1)  # already on one of verify's threads
        bad = sorted(set(check.failed) & set(pm.pieces_of(f)))
        return check.bad_ranges(f), bad, pm.source


# -- checking ----------------------------------------------------------------------------


def _stat(x: _Expect, seen: dict[str, os.stat_result] | None = None) -> FileResult | None:
    """Presence, type and size; a FileResult when that already decides the verdict.
    ``seen`` collects what stat said of each file that passed (--changed-only compares it
    with its record: one stat per file)."""
    if x.no_links_below is not None and _through_link(x.no_links_below, x.disk):
        return FileResult(x.rel, FAILED, expected_size=x.size,
                          detail="a symbolic link (or below one); the signature allows none")
    try:
        st = os.stat(x.disk)
    except FileNotFoundError:
        return FileResult(x.rel, MISSING, expected_size=x.size, detail="no such file")
    except OSError as e:
        return FileResult(x.rel, UNREADABLE, expected_size=x.size, detail=e.strerror or str(e))
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
    if seen is not None:
        seen[x.rel] = st
    return None


def _through_link(root: Path, p: Path) -> bool:
    """Whether any component of ``p`` below ``root`` is a symbolic link."""
    while p != root and p != p.parent:
        if p.is_symlink():
            return True
        p = p.parent
    return False


def _structure(x: _Expect) -> str | None:
    """What is wrong with a tensor file's structure, or None if it holds what it should."""
    if not x.tensor:
        return None
    from grokfetch.format.checkpoint import compare
    from grokfetch.format.pickle_reader import scan

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
    locate: _PieceLocator | None = None,
) -> FileResult:
    """Check a file against the manifest's BLAKE3 / SHA-256 / chunk hashes (``locate``:
    the pin's torrent, for a file whose pin has no chunk hashes to locate damage with)."""
    base: dict[str, Any] = {"size": size, "expected_size": x.size}
    chunk_size = x.chunk_size or chunk_size
    alg = x.chunk_hash
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
        got = chunk_digests(x.disk, chunk_size, picks, on_bytes=on_bytes, algorithm=alg)
        bad = [i for i in picks if got.get(i) != x.chunks[i]]
        if bad:
            return _chunk_failure(x, size, chunk_size, got, bad, base)
        return FileResult(
            x.rel,
            OK,
            alg,
            f"quick: size and {len(picks)} of {len(x.chunks)} chunks ({alg})",
            hashes=(alg,),
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
        got = chunk_digests(x.disk, chunk_size, on_bytes=on_bytes, algorithm=alg)
        bad = [i for i in range(len(x.chunks)) if got.get(i) != x.chunks[i]]
        if bad:
            return _chunk_failure(x, size, chunk_size, got, bad, base)
        matched.append(alg)
    elif x.other is not None:
        got_other, _ = range_digest(x.disk, 0, -1, x.other[0], on_bytes=on_bytes)
        (matched if got_other == x.other[1] else mismatched).append(x.other[0])
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
    ranges = [(0, size - 1)] if size else []
    detail = f"{' and '.join(mismatched)} hash mismatch"
    if x.chunks is None and "blake3" in mismatched and locate is not None and locate.ids:
        # a pin the torrent proved keeps no chunk hashes: the torrent's pieces locate it
        found = locate(x.rel)
        if found is None:
            detail += (" (to locate it: pass the torrent that proved the pin with --torrent; "
                       "its pieces name the bad bytes)")
        elif found[1]:
            ranges, bad, source = found
            which = ", ".join(str(i) for i in bad[:8]) + (" ..." if len(bad) > 8 else "")
            detail += (f" in bytes {_ranges_text(ranges)} (torrent piece"
                       f"{'s' if len(bad) > 1 else ''} {which} of {source})")
    if matched:
        detail += f" (but {' and '.join(matched)} matched: the manifest is inconsistent)"
    if zero:
        detail += "; the file is all zero bytes (preallocated, never written: incomplete download?)"
    elif x.tensor:
        problem = _structure(x)
        if problem:
            detail += f"; {problem}"
    return FileResult(x.rel, FAILED, None, detail, ranges, zero_filled=zero, **base)


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
    zeros = all(
        got.get(i) == zero_digest(_chunk_len(i, size, chunk_size), x.chunk_hash) for i in bad
    )
    n = len(x.chunks or [])
    which = ", ".join(str(i) for i in bad[:8]) + (" ..." if len(bad) > 8 else "")
    unit = "shard" if x.chunk_size else "chunk"  # a signature's shards, or a manifest's chunks
    detail = (
        f"hash mismatch in bytes {_ranges_text(ranges)} "
        f"({unit}{'s' if len(bad) > 1 else ''} {which} of {n})"
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


def _extras(
    place: Folder, expected: set[str], signed: SignedModel | None = None
) -> list[FileResult]:
    """Files on disk below the root that the file list does not name (or, against a
    signature, that it neither signs nor ignores).  ``expected``: the listed files' paths
    on disk, as strings (hashing a Path costs ~10x a str: this runs on every file)."""
    skip_names = {MANIFEST_NAME}
    out = []
    roots = [place.root]
    if place.ckpt_dir is not None and not _is_below(place.ckpt_dir, place.root):
        roots.append(place.ckpt_dir)
    seen: set[str] = set()
    root_text = os.fspath(place.root)
    for top in roots:
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames[:] = sorted(d for d in dirnames if d != STATE_DIR)
            for name in sorted(filenames):
                text = os.path.join(dirpath, name)
                if text in expected or text in seen or name in skip_names or TMP_MARK in name:
                    continue
                if dirpath == root_text and (
                    name.endswith(TORRENT_SUFFIX) or name == SIGNATURE_NAME
                ):
                    continue  # get's saved torrent, `grokfetch sign`'s signature
                seen.add(text)
                p = Path(text)
                try:
                    size = p.stat().st_size
                except OSError:
                    size = None
                if signed is not None and _unsigned_ok(signed, place, p, size):
                    continue
                rel = (
                    place.rel(p)
                    if _is_below(p, place.root) or p.parent == place.ckpt_dir
                    else str(p)
                )
                if signed is not None:
                    out.append(FileResult(rel, EXTRA, detail="not signed", size=size))
                    continue
                if is_tensor_path(rel):
                    # a checkpoint file no root vouches for: it would be loaded, so it counts
                    out.append(FileResult(
                        rel, UNVERIFIED, size=size,
                        detail="a checkpoint tensor file the root of trust does not list"))
                    continue
                out.append(FileResult(rel, EXTRA, detail="not in the file list", size=size))
    return out


def _unsigned_ok(signed: SignedModel, place: Folder, p: Path, size: int | None) -> bool:
    """A file on disk that the signature rightly leaves out: an ignore path, the signature
    file itself, or an empty file under shard serialization (it has no shards)."""
    if os.path.abspath(p) == os.path.abspath(signed.signature_path):
        return True
    if signed.serialization.ignores(p.relative_to(place.root).as_posix()):
        return True
    return signed.serialization.method == "shards" and size == 0


def _is_below(p: Path, root: Path) -> bool:
    try:
        p.relative_to(root)
        return True
    except ValueError:
        return False


@dataclass(frozen=True)
class VerifyOptions:
    """Everything ``verify`` takes besides the folder (its keyword arguments)."""

    manifest: Manifest | str | os.PathLike[str] | None = None
    torrent: str | os.PathLike[str] | None = None
    quick: bool = False
    strict: bool = False
    jobs: int | None = None
    progress: ProgressFactory | None = None
    seed: int | None = None
    layers: str | None = None
    accept_first_use: bool = False
    signature: SignedModel | None = None
    changed_only: bool = False
    accept_unchanged: bool = False


@dataclass
class _Verification:
    """One verify() run, as its phases fill it in."""

    path: Path
    o: VerifyOptions
    place: Folder
    trust: _Trust
    xs: list[_Expect] = field(default_factory=list)  # every listed file
    sel: list[_Expect] = field(default_factory=list)  # the ones checked and reported
    chunk_size: int = DEFAULT_CHUNK_SIZE
    rng: random.Random = field(default_factory=random.Random)
    known: dict[str, FileResult] = field(default_factory=dict)  # decided without reading
    unchanged: dict[str, FileResult] = field(default_factory=dict)
    looked: dict[str, tuple[int, tuple[int, int, int, int, int]]] = field(default_factory=dict)
    record: dict[str, Verified] = field(default_factory=dict)
    hashed: list[_Expect] = field(default_factory=list)
    by_torrent: list[_Expect] = field(default_factory=list)
    pieces: set[int] = field(default_factory=set)
    sizes: dict[str, int] = field(default_factory=dict)
    total: int = 0  # bytes to read: the bar's total


def verify(
    path: str | os.PathLike[str],
    options: VerifyOptions | None = None,
    **changes: Any,
) -> VerifyReport:
    """Check every file under ``path`` against the best available root of trust.

    ``options`` (a VerifyOptions), or its fields as keyword arguments:
    ``manifest``: a Manifest, a manifest path or a packaged model name.
    ``torrent``: a .torrent whose SHA-1 pieces vouch for the files (with a
    manifest: for the files the manifest has no hash for).  ``quick``: sizes
    plus a sample of chunks (or pieces).  ``strict``: extra and unverified
    files count as problems.  ``jobs``: files hashed at once (default: CPU
    count; large files also use blake3's own threads).  ``progress(total,
    desc)`` returns a bar with ``update(n)``/``close()``.  ``seed`` fixes
    --quick's random sample.  ``layers`` ('0-3,10'): only those layers' files plus the
    embedding and final norm (what ``get --layers`` fetched); the others are neither
    checked nor reported.  ``accept_first_use``: a pin made on first use counts as proven.
    ``signature``: a verified OMS signature (``grokfetch.integrity.signing.verify_bundle``), the
    root of trust: ``path`` is then the signed folder itself, and files it neither signs
    nor ignores are problems.  ``changed_only``: against the pinned manifest only, re-hash
    just the files whose filesystem metadata changed since a full verification proved
    them (``grokfetch.integrity.verified_record``); the others are UNCHANGED, which proves nothing
    unless ``accept_unchanged``.  Its own run updates the record.

    The phases: the root of trust, the files it lists (and the layers chosen), what a
    stat decides, what is to be read, the hashing, the report.

    Raises UsageError / ManifestError (exit 2) when it cannot run, TorrentError
    (exit 4) for a torrent that cannot vouch for these files.
    """
    o = replace(options or VerifyOptions(), **changes)
    t0 = time.monotonic()
    run = _trust_phase(Path(path), o)
    _select_phase(run)
    _stat_phase(run)
    _plan_phase(run)
    results, bytes_hashed = _hash_phase(run)
    return _report_phase(run, results, bytes_hashed, time.monotonic() - t0)


def _trust_phase(path: Path, o: VerifyOptions) -> _Verification:
    """The folder and the root of trust that vouches for it."""
    manifest, torrent, signature = o.manifest, o.torrent, o.signature
    if signature is not None:
        if manifest is not None or torrent is not None:
            raise UsageError("--signature is a root of trust on its own: drop --manifest and "
                             "--torrent")
        # names in a signature are relative to the signed folder itself
        place = Folder(existing_folder(path), None)
        trust = _signature_trust(signature)
    else:
        place = locate(path)
        trust = _choose_trust(path, place, manifest, torrent, o.accept_first_use)
    if o.changed_only and (o.quick or trust.kind != "pinned" or trust.pin_sha256 is None):
        raise UsageError(
            f"{path}: --changed-only " + ("re-hashes files in full: drop --quick" if o.quick else
            "checks against the pinned manifest only: pin the folder first (verify --pin), "
            "and drop --manifest, --torrent and --signature"))
    return _Verification(path, o, place, trust)


def _select_phase(run: _Verification) -> None:
    """The files the root lists, and of those the ones --layers chose."""
    trust, place, layers = run.trust, run.place, run.o.layers
    xs = _expected(trust, place)
    # Every listed file is looked at (a missing unselected file still takes the blame for
    # torrent pieces it shares), but only the selected ones are checked and reported.
    sel = xs
    if layers is not None:
        chosen = _select_layers(xs, layers, trust, place)
        sel = [x for x in xs if x.rel in chosen]
    run.xs, run.sel = xs, sel
    run.chunk_size = (trust.manifest.chunk_size if trust.manifest is not None
                    else DEFAULT_CHUNK_SIZE)
    run.rng = random.Random(run.o.seed)


def _stat_phase(run: _Verification) -> None:
    """What a stat decides: missing, wrong size, not a file; with --changed-only, the
    files whose stat is the one recorded when they were proven."""
    known: dict[str, FileResult] = {}
    seen: dict[str, os.stat_result] = {}
    looked_at = _now_ns()  # before any stat: a file changed just before it is "racy"
    for x in run.xs:
        r = _stat(x, seen)
        if r is not None:
            known[x.rel] = r
    if run.o.changed_only:
        assert run.trust.pin_sha256 is not None
        run.record = load_verified(run.place.root, run.trust.pin_sha256)
        run.unchanged, run.looked = _unchanged(run.sel, known, run.record, seen, looked_at)
        known.update(run.unchanged)
    run.known = known


def _plan_phase(run: _Verification) -> None:
    """What is to be read: files with hashes, torrent pieces for the others, their bytes."""
    sel, known, trust = run.sel, run.known, run.trust
    quick, rng, chunk_size = run.o.quick, run.rng, run.chunk_size
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
    run.hashed, run.by_torrent, run.pieces = hashed, by_torrent, pieces
    run.sizes, run.total = sizes, total


def _hash_phase(run: _Verification) -> tuple[dict[str, FileResult], int]:
    """Every byte planned read and checked, in parallel, behind one bar; the results and
    the bytes hashed."""
    trust, place, xs, known = run.trust, run.place, run.xs, run.known
    hashed, by_torrent, pieces, sizes = run.hashed, run.by_torrent, run.pieces, run.sizes
    quick, rng, chunk_size = run.o.quick, run.rng, run.chunk_size
    jobs, progress = run.o.jobs, run.o.progress
    bar = progress(run.total, "verify") if progress is not None else NullBar()
    counter = SharedCounter(bar)
    results: dict[str, FileResult] = dict(known)
    locate = _PieceLocator(run.path, place, trust.roots) if trust.kind == "pinned" else None
    try:

        gate = large_file_gate(place.root)

        def one(x: _Expect) -> FileResult:
            # One large file at a time on a rotational disk; not for a file that also has
            # a SHA-256 to check, whose hash cannot spread over the cores.
            spreads = bool(x.blake3) and not x.sha256 and not quick
            try:
                with gate(sizes[x.rel] if spreads else 0):
                    return _check_hashed(
                        x, sizes[x.rel], chunk_size, quick, random.Random(rng.random()),
                        counter, locate,
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
        if jobs is None and trust.signed is not None:
            jobs = default_jobs(trust.signed.serialization.hash_type)
        for r in parallel_map(one, order, jobs or os.cpu_count() or 1):
            results[r.path] = r
        if trust.pm is not None and by_torrent:
            from grokfetch.integrity.pieces import find_strip, verify_pieces

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
    return results, counter.done


def _report_phase(run: _Verification, results: dict[str, FileResult], bytes_hashed: int,
                  seconds: float) -> VerifyReport:
    """Every file's verdict, the extras, the advice, and (--changed-only) the record."""
    trust, place, xs, sel = run.trust, run.place, run.xs, run.sel
    path, layers = run.path, run.o.layers
    record, unchanged, looked = run.record, run.unchanged, run.looked
    why = "no root of trust" if trust.kind is None else "no hash for it in the manifest"
    for x in sel:
        if x.rel not in results:
            results[x.rel] = _unverified(x, x.disk.stat().st_size, f"content not verified ({why})")
    files = [_vouched(results[x.rel], trust) for x in sel]
    files += _extras(place, {os.fspath(x.disk) for x in xs}, trust.signed)
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
    uncovered = _not_listed(trust, {x.rel for x in xs}, layers, place)
    notes = trust.notes
    if run.o.changed_only:
        assert trust.pin_sha256 is not None
        chosen = {x.rel for x in sel}
        keep = {rel: v for rel, v in record.items() if rel not in chosen or rel in unchanged}
        at = now()
        for f in files:  # proven just now, by a full read: recorded with the stat before it
            if f.status == OK and f.path in looked:
                when, key = looked[f.path]
                if not racy(key, when):
                    keep[f.path] = Verified(key, at)
        if keep != record:
            try:
                save_verified(place.root, trust.pin_sha256, keep)
            except OSError as e:
                notes += (f"{place.root}: could not record what was verified "
                          f"({e.strerror or e}): the next --changed-only run re-hashes it",)
    return VerifyReport(
        root=place.root,
        root_of_trust=trust.text,
        trust=trust.kind,
        files=files,
        quick=run.o.quick,
        strict=run.o.strict,
        info_hash=trust.pm.meta.info_hash if trust.pm is not None else None,
        bytes_hashed=bytes_hashed,
        seconds=seconds,
        advice=advice,
        manifest=trust.manifest,
        torrent=trust.pm.source if trust.pm is not None else None,
        roots=trust.roots,
        notes=notes,
        unproven=_why_unproven(trust, files, uncovered, run.o.quick, run.o.accept_unchanged),
        signed=trust.signed,
        changed_only=run.o.changed_only,
        accept_unchanged=run.o.accept_unchanged,
    )


def _unchanged(
    sel: list[_Expect], known: dict[str, FileResult], record: dict[str, Verified],
    seen: dict[str, os.stat_result], when: int,
) -> tuple[dict[str, FileResult], dict[str, tuple[int, tuple[int, int, int, int, int]]]]:
    """The files whose stat (``seen``, taken from ``when`` on) is the one recorded when a
    full verification proved them (UNCHANGED, not re-read), and what stat said of every
    file looked at, and when: a file re-hashed now is recorded with the stat taken
    *before* it was read, so a change during the read shows at the next run."""
    unchanged: dict[str, FileResult] = {}
    looked = {}
    for x in sel:
        st = seen.get(x.rel)
        if st is None or x.rel in known:
            continue
        key = stat_key(st)
        looked[x.rel] = (when, key)
        v = record.get(x.rel)
        if v is not None and v.key == key:
            unchanged[x.rel] = FileResult(x.rel, UNCHANGED, None,
                                          f"since verified at {v.at} (not re-read)",
                                          size=key[2], expected_size=x.size)
    return unchanged, looked


def _vouched(r: FileResult, trust: _Trust) -> FileResult:
    """Name the root that proved an OK file (the checks only know which hash matched)."""
    if r.status != OK:
        return r
    who = trust.torrent_vouch if r.vouched_by == "torrent" else trust.manifest_vouch
    return replace(r, vouched_by=who)


def _not_listed(trust: _Trust, listed: set[str], layers: str | None, place: Folder) -> list[str]:
    """Files the model's layout expects that the root of trust does not list (a manifest of
    a subset): nothing vouches for them, whether they are on disk or not."""
    m = trust.manifest
    if m is None or m.config is None or m.repack is not None:
        return []
    if not any(is_tensor_path(rel) for rel in listed):
        return []
    from grokfetch.format.layout import parse_layer_spec

    chosen = set(parse_layer_spec(layers, m.config.num_layers)) if layers is not None else None
    return [
        s.file
        for s in param_list(m.config)
        if s.file not in listed and (chosen is None or s.layer is None or s.layer in chosen)
    ]


def _why_unproven(
    trust: _Trust, files: list[FileResult], uncovered: list[str], quick: bool,
    accept_unchanged: bool = False,
) -> str | None:
    """One line naming what kept the run from proving every file, or None when it did."""
    if quick:
        return "--quick samples the files: it proves nothing"
    if trust.kind is None:
        n = sum(f.status == UNVERIFIED for f in files)
        first = next((f.path for f in files if f.status == UNVERIFIED), None)
        note = f"; {trust.notes[0]}" if trust.notes else ""
        return f"no root of trust: {n} file(s) UNVERIFIED" + (
            f" (first: {first})" if first else "") + note
    if not trust.proven:
        return f"{trust.text}"
    same = [f for f in files if f.status == UNCHANGED]
    if same and not accept_unchanged:
        return (f"--changed-only: {len(same)} file(s) UNCHANGED, not re-read: their metadata "
                "is what it was when a full verify proved them, which does not prove their "
                "bytes (--accept-unchanged counts them)")
    bad = [f for f in files if f.status == UNVERIFIED]
    if bad:
        return f"{bad[0].path}: UNVERIFIED ({bad[0].detail})" + (
            f"; and {len(bad) - 1} more file(s)" if len(bad) > 1 else "")
    if uncovered:
        return (f"{uncovered[0]}: the layout expects it but the root of trust does not list "
                f"it ({len(uncovered)} such file(s))")
    return None


# -- pinning -----------------------------------------------------------------------------


@dataclass(frozen=True)
class PinResult:
    """A pin that was written: where, what proved it, and the pass that proved it."""

    path: Path  # the pinned manifest
    manifest: Manifest
    roots: tuple[PinRoot, ...]
    report: VerifyReport  # the pin pass as a verification: every file OK, vouched by its root

    @property
    def proven(self) -> bool:
        return roots_proven(self.roots)


def pin(
    path: str | os.PathLike[str],
    *,
    torrent: str | os.PathLike[str] | None = None,
    manifest: Manifest | str | os.PathLike[str] | None = None,
    first_use: bool = False,
    base: Manifest | None = None,
    chunk_size: int | None = None,
    jobs: int | None = None,
    progress: ProgressFactory | None = None,
    manifest_root: PinRoot | None = None,
    outside: dict[int, bytes] | None = None,
    streamed: Mapping[str, tuple[StatKey, FileDigests]] | None = None,
) -> PinResult:
    """Prove the folder against its root and pin it, in one read of every byte.

    The roots: ``torrent`` (its SHA-1 pieces) and/or ``manifest`` (its BLAKE3 /
    SHA-256 values); with neither, ``first_use=True`` pins whatever is on disk and
    says so.  Each file is read once; the blocks that go into its BLAKE3 (whole
    file, and ``chunk_size`` chunks unless the torrent's pieces cover it) are the
    blocks its pieces and hashes are checked on.  ``base`` (the model's manifest)
    gives names, parameters, config and sources; any hash it carries is checked too.
    ``manifest_root`` says who published the hashes of a ``manifest`` built in memory
    (the mirror's SHA-256 values, say); by default the manifest itself is the root.
    ``outside`` (piece -> its bytes, as libtorrent holds them) lets a partial pin check
    the pieces it shares with files that were not fetched: those files' bytes of them
    come from there, the rest from disk, and the whole piece must match its SHA-1.
    ``streamed`` maps a file to the digests its writer computed from the very bytes it
    wrote (``get`` from the mirror, while the SHA-256 proved them) and the stat key the
    file had then: a file whose stat still says exactly that is not read again, and its
    digests face the same checks against the root as a file that is read.  The pin
    records its roots
    (``pinned_by``) and is tagged with the user's key (``grokfetch.trust``).

    Raises PinRefused (exit 1) naming the file (and piece or byte range) that is
    missing, not a regular file, of the wrong size, or fails a root, and writes
    nothing; UsageError when there is nothing to pin against.
    """
    t0 = time.monotonic()
    p = Path(path)
    place = locate(p)
    pm = _piece_map(torrent) if torrent is not None else None
    roots: list[PinRoot] = []
    mroot: Manifest | None = None
    if manifest is not None:
        if isinstance(manifest, Manifest):
            mroot, digest, label = manifest, _manifest_digest(manifest), manifest.name
        else:
            lm = load_manifest_file(manifest)
            mroot, digest, label = lm.manifest, lm.sha256, str(manifest)
        _check_torrent_matches(mroot, pm)
        roots.append(manifest_root or PinRoot("manifest", digest, label, now()))
    if pm is not None:
        roots.append(_torrent_root(pm))
        if base is None and mroot is None:
            base = by_info_hash(pm.meta.info_hash)  # grok-1: names, params, SHA-256
    if not roots and not first_use:
        raise UsageError(f"{p}: nothing to pin against: pass --torrent or --manifest (a root "
                         "of trust), or trust what is on disk on first use")
    info = mroot or base
    if chunk_size is None:
        chunk_size = info.chunk_size if info is not None else DEFAULT_CHUNK_SIZE
    config = info.config if info is not None else None
    if mroot is not None:
        entries = list(mroot.files)
    elif base is not None:
        entries = list(base.files)
    elif pm is not None:
        specs = _layout_specs(place, None)
        entries = [
            _entry_for(rel, f.size, specs.get(rel)) for rel, _, f in _torrent_files(pm, place)
        ]
    else:
        if place.ckpt_dir is None:
            raise UsageError(f"{p}: no checkpoint here, and no manifest or torrent to pin from")
        from grokfetch.format.checkpoint import infer_config

        config = infer_config(place.ckpt_dir)  # raises if the layout cannot be inferred
        entries = [_entry_for(s.file, -1, s) for s in param_list(config)]
    if config is None:
        config = _inferred_config(place)
    tfiles = {rel: f for rel, _, f in _torrent_files(pm, place)} if pm is not None else {}

    # Up front: every file is there, a regular file (never open a FIFO), of its size.
    sizes: dict[str, int] = {}
    looked: dict[str, tuple[int, tuple[int, int, int, int, int]]] = {}
    for e in entries:
        disk = place.disk(e.path)
        try:
            when, st = _now_ns(), os.stat(disk)
        except FileNotFoundError:
            raise PinRefused(f"{disk}: missing: not pinned") from None
        except OSError as err:
            raise PinRefused(f"{disk}: {err.strerror or err}: not pinned") from None
        if not stat_mod.S_ISREG(st.st_mode):
            raise PinRefused(f"{disk}: not a regular file: not pinned")
        want = e.size if e.size >= 0 else (tfiles[e.path].size if e.path in tfiles else -1)
        if want >= 0 and st.st_size != want:
            raise PinRefused(f"{disk}: {st.st_size} bytes, expected {want}: not pinned")
        sizes[e.path] = st.st_size
        looked[e.path] = (when, stat_key(st))
    extra_stream = 0
    if pm is not None:
        ours = {tfiles[e.path].index for e in entries if e.path in tfiles}
        extra_stream = sum(f.size for _, disk, f in _torrent_files(pm, place)
                           if f.index not in ours and disk.is_file())  # a partial: not all
    digests: dict[str, FileDigests] = {}
    if pm is None:  # (a torrent's pieces are checked in the read; nothing skips that)
        for e in entries:
            s = (streamed or {}).get(e.path)
            if s is not None and s[0] == looked[e.path][1] and s[1].size == sizes[e.path]:
                digests[e.path] = s[1]
    to_read = sum(n for rel, n in sizes.items() if rel not in digests)
    bar = progress(to_read + extra_stream, "pin") if progress else NullBar()
    counter = SharedCounter(bar)

    check = None
    try:
        if pm is not None:
            from grokfetch.integrity.pieces import find_strip, hash_with_pieces

            index_of = {e.path: tfiles[e.path].index for e in entries if e.path in tfiles}
            want_sha = {index_of[e.path]: bool(e.sha256) for e in entries if e.path in index_of}
            # No chunk hashes for the files the torrent covers: its pieces locate damage in
            # them, and chunks would be a second BLAKE3 of every byte (the pass's CPU is
            # SHA-1 + BLAKE3 + BLAKE3 otherwise).  Only a manifest that vouches with chunk
            # hashes alone needs them computed, to be checked.
            chunked = {index_of[e.path] for e in entries
                       if e.path in index_of and e.chunks and not e.blake3}
            by_index, check = hash_with_pieces(
                pm, place.root, strip=find_strip(pm.meta, place.root), blake3_files=want_sha,
                chunk_size=chunk_size, jobs=jobs, on_bytes=counter, outside=outside,
                chunked=chunked,
            )
            for rel, i in index_of.items():
                if i in by_index:
                    digests[rel] = by_index[i]
            rest = [e for e in entries if e.path not in index_of or sizes[e.path] == 0]
        else:
            rest = [e for e in entries if e.path not in digests]

        def one(e: FileEntry) -> tuple[str, FileDigests]:
            d = digest_file(place.disk(e.path), chunk_size, sha256=bool(e.sha256),
                            on_bytes=counter)
            return e.path, d

        for rel, found in parallel_map(one, rest, jobs or os.cpu_count() or 1):
            digests[rel] = found
    except OSError as err:
        raise PinRefused(f"{err.filename or p}: {err.strerror or err}: not pinned") from None
    finally:
        bar.close()

    results: list[FileResult] = []
    pinned: list[FileEntry] = []
    tvouch = f"torrent:{pm.meta.info_hash}" if pm is not None else None
    mvouch = f"manifest:{roots[0].id}" if mroot is not None else None
    uncovered: list[str] = []
    for e in entries:
        d = digests.get(e.path)
        disk = place.disk(e.path)
        if d is None or d.size != sizes[e.path]:
            raise PinRefused(f"{disk}: changed while it was being hashed: not pinned")
        vouch = None
        hashes: tuple[str, ...] = ()
        if mroot is not None and (e.blake3 or e.sha256 or e.chunks):
            vouch = mvouch
            hashes = tuple(h for h in ("blake3", "sha256") if getattr(e, h)) or ("blake3",)
        f = tfiles.get(e.path)
        problem = _hash_problem(e, d, chunk_size)
        if problem and (check is None or f is None):
            raise PinRefused(f"{disk}: {problem}: not pinned")
        if check is not None and f is not None and f.size:
            bad = sorted(set(check.failed) & set(check.pm.pieces_of(f)))
            if bad:
                lo, hi = check.bad_ranges(f)[0]
                raise PinRefused(
                    f"{disk}: torrent piece {bad[0]} (bytes {lo}-{hi}) does not match the "
                    f"torrent{f' (and {len(bad) - 1} more)' if len(bad) > 1 else ''}: not pinned"
                )
            blocked = sorted(set(check.unchecked) & set(check.pm.pieces_of(f)))
            if blocked and vouch is None:
                raise PinRefused(
                    f"{disk}: torrent piece {blocked[0]} cannot be checked "
                    f"({check.unchecked[blocked[0]]}): not pinned"
                )
            if problem:  # the pieces passed, yet a hash the pin would carry disagrees
                raise PinRefused(f"{disk}: {problem}: not pinned")
            if not blocked:
                vouch, hashes = vouch or tvouch, hashes or ("torrent",)
        elif problem:
            raise PinRefused(f"{disk}: {problem}: not pinned")
        elif f is not None and vouch is None:  # an empty file: its size is all there is
            vouch, hashes = tvouch, ("torrent",)
        if vouch is None:
            if not first_use:
                raise PinRefused(
                    f"{disk}: nothing vouches for it (no hash in the manifest, not in the "
                    "torrent): not pinned"
                )
            uncovered.append(e.path)
            vouch, hashes = "first-use", ("first-use",)
        results.append(FileResult(e.path, OK, vouch, hashes=hashes, size=d.size,
                                  expected_size=e.size if e.size >= 0 else None))
        pinned.append(replace(e, size=d.size, blake3=d.blake3, chunks=d.chunks))
    if uncovered or not roots:
        roots.append(PinRoot("first-use", None, f"{len(uncovered)} file(s) nothing proved"
                             if roots else None, now()))
    sources = info.sources if info is not None else Sources()
    if pm is not None and not sources.info_hash:
        sources = replace(
            sources,
            info_hash=pm.meta.info_hash,
            trackers=list(pm.meta.trackers),
            web_seeds=list(pm.meta.web_seeds),
        )
    name = info.name if info is not None else (pm.meta.name if pm is not None else place.root.name)
    m = Manifest(
        name=name,
        files=pinned,
        license=info.license if info is not None else None,
        pinned=True,
        config=config,
        sources=sources,
        chunk_size=chunk_size,
        repack=info.repack if info is not None else None,
        notes=info.notes if info is not None else None,
        pinned_by=tuple(roots),
        tokenizer=info.tokenizer if info is not None else None,
    )
    out = save_pin(m, place.root / MANIFEST_NAME)
    _record_pinned(place.root, out, looked)
    report = VerifyReport(
        root=place.root,
        root_of_trust=f"pin pass: {roots_words(roots)}",
        trust="torrent" if pm is not None and mroot is None else ("manifest" if mroot else None),
        files=results + _extras(place, {os.fspath(place.disk(e.path)) for e in entries}),
        info_hash=pm.meta.info_hash if pm is not None else None,
        bytes_hashed=counter.done,
        seconds=time.monotonic() - t0,
        manifest=m,
        torrent=pm.source if pm is not None else None,
        roots=tuple(roots),
        unproven=None if roots_proven(roots) else _pin_words(tuple(roots)),
    )
    return PinResult(out, m, tuple(roots), report)


def _record_pinned(
    root: Path, pinned: Path, looked: dict[str, tuple[int, tuple[int, int, int, int, int]]]
) -> None:
    """What stat said of each file the pin pass just proved, for ``--changed-only``
    (best effort: without it, the first --changed-only run re-hashes everything)."""
    at = now()
    files = {rel: Verified(key, at) for rel, (when, key) in looked.items()
             if not racy(key, when)}
    try:
        save_verified(root, hashlib.sha256(pinned.read_bytes()).hexdigest(), files)
    except OSError:
        pass


def _hash_problem(e: FileEntry, d: FileDigests, chunk_size: int) -> str | None:
    """What a file's digests from the pin pass contradict in its manifest entry, if anything."""
    if e.blake3 and d.blake3 != e.blake3:
        got = d.chunks or []
        bad = [i for i, c in enumerate(e.chunks or []) if i >= len(got) or got[i] != c]
        if bad:
            lo, hi = chunk_range(bad[0], d.size, chunk_size)
            return f"blake3 hash mismatch in bytes {lo}-{hi - 1} (chunk {bad[0]})"
        return "blake3 hash mismatch"
    if e.sha256 and d.sha256 != e.sha256:
        return "sha256 hash mismatch"
    if not e.blake3 and e.chunks and d.chunks != e.chunks:
        return "blake3 chunk hash mismatch"
    return None


def manifest_disk_paths(path: str | os.PathLike[str], manifest: Manifest) -> dict[str, Path]:
    """Where each file ``manifest`` lists is on disk below the folder ``path``."""
    place = locate(path)
    return {e.path: place.disk(e.path) for e in manifest.files}


def file_set_problems(path: str | os.PathLike[str], manifest: Manifest) -> list[str]:
    """What keeps the folder from holding exactly ``manifest``'s files: one line per file
    missing, not a regular file (checked with stat: a FIFO is never opened) or of the
    wrong size.  Reads no content (``seed`` checks this before it serves anything)."""
    place = locate(path)
    out = []
    for e in manifest.files:
        disk = place.disk(e.path)
        try:
            st = os.stat(disk)
        except FileNotFoundError:
            out.append(f"{e.path}: missing")
            continue
        except OSError as err:
            out.append(f"{e.path}: {err.strerror or err}")
            continue
        if not stat_mod.S_ISREG(st.st_mode):
            out.append(f"{e.path}: not a regular file")
        elif st.st_size != e.size:
            out.append(f"{e.path}: {st.st_size} bytes, the pin says {e.size}")
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
    "PinResult",
    "RootChoice",
    "find_root",
    "VerifyReport",
    "verify",
    "pin",
    "num_chunks",
    "STATUSES",
]
