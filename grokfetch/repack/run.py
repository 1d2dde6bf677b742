"""``repack()``: carry out a repack plan in named phases, restartable at any point.

sources (scan every source first; BLAKE3 from a proven pin) -> plan -> prepare
DEST (refuse what is not ours, clean up after an interrupted run, carry over
earlier ``--layers`` runs) -> find what is already done -> write the rest in
parallel, journaling each -> finish (config/index, manifest).

A source no proven pin covers is hashed from the bytes its output's copy reads
(``_SourceHashes``, ``SourceTap``): each source byte is read once, and only the
pickle framing around the arrays (a few kB a file) is read by the hash itself.
Its output's header therefore names the source file without its BLAKE3 (the
header is written before the payload); the source record in DEST's manifest
gets it when the output is done.  Once, the hash was a pass of its own before
the copy: every source byte was read twice.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import json
import os
import threading
import time
import typing
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from grokfetch.errors import (
    CheckpointFormatError,
    GrokfetchError,
    Interrupted,
    UsageError,
)
from grokfetch.format.checkpoint import Checkpoint, compare, confirmed_by_packaged, open_checkpoint
from grokfetch.format.folder import JOURNAL_NAME
from grokfetch.format.layout import (
    ModelConfig,
    ParamSpec,
    check_config_fits,
    complete_layers,
    holds_only,
    layers_text,
)
from grokfetch.format.manifest import MANIFEST_NAME, FileEntry, Manifest, proven_pin, save_pin
from grokfetch.format.pickle_reader import ParamFile, scan
from grokfetch.format.safetensors import SourceTap, write_safetensors
from grokfetch.format.tokenizer import TOKENIZER_NAME, Tokenizer, load_tokenizer, official_entry
from grokfetch.fsutil import (
    atomic_write_bytes,
    check_free_space,
    free_space,
    fsync_dir,
    inside,
    lock_dest,
    os_errors_as_disk_errors,
    remove_stale_temps,
)
from grokfetch.hashing import DEFAULT_CHUNK_SIZE, blake3_file, file_digests, parallel_map
from grokfetch.progress import Bar, ProgressFactory, no_progress
from grokfetch.repack.journal import Journal, load_records, recipe, still_good
from grokfetch.repack.plan import DEFAULT_SHARD_SIZE, TOOL, Output, Plan, RepackOptions, make_plan
from grokfetch.trust import PinRoot, now


@dataclass(frozen=True)
class RepackResult:
    """What a repack run did."""

    dest: Path
    manifest_path: Path
    layout: str
    dtype: str
    compress: str | None
    written: list[str]  # outputs (paths below dest) written by this run
    skipped: list[str]  # outputs already finished by an earlier run (BLAKE3 matched)
    removed_temps: int  # temp files of an interrupted run that were cleaned up
    bytes_written: int  # tensor bytes (uncompressed) this run wrote
    bytes_out: int  # size on disk of all outputs (written + skipped)
    payload_total: int  # uncompressed tensor bytes of all outputs (bytes_out / this = ratio)
    seconds: float
    # Where the model config came from: 'explicit', 'manifest' or 'inferred' (from the file
    # shapes: the head size is a guess, and DEST's manifest and config.json now record it).
    config_source: str = "explicit"
    key_size: int = 0
    tokenizer: dict[str, Any] = field(default_factory=dict)  # path, size, sha256, official

    @property
    def files(self) -> int:
        return len(self.written) + len(self.skipped)


_P = typing.ParamSpec("_P")
_R = TypeVar("_R")


@dataclass
class _Dest:
    """DEST as the run found and prepared it."""

    path: Path
    records: dict[str, tuple[str, FileEntry]]  # earlier runs' finished outputs
    kept: dict[str, FileEntry]  # outputs of earlier --layers runs this run leaves in place
    removed_temps: int


_held_locks: contextvars.ContextVar[list[int]] = contextvars.ContextVar("_held_locks")


def _releasing_dest_lock(fn: Callable[_P, _R]) -> Callable[_P, _R]:
    """Close the DEST lock the run took, however it ends."""

    @functools.wraps(fn)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        held: list[int] = []
        token = _held_locks.set(held)
        try:
            return fn(*args, **kwargs)
        finally:
            _held_locks.reset(token)
            for fd in held:
                os.close(fd)

    return wrapper


@_releasing_dest_lock
@os_errors_as_disk_errors("dest")
def repack(
    src: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    *,
    layout: str = "per-tensor",
    dtype: str | None = None,
    compress: str | int | None = None,
    layers: str | list[int] | None = None,
    jobs: int = 2,
    force: bool = False,
    shard_size: int = DEFAULT_SHARD_SIZE,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    chunk_hashes: bool = False,
    config: ModelConfig | None = None,
    tokenizer: str | os.PathLike[str] | None = None,
    progress: ProgressFactory = no_progress,
) -> RepackResult:
    """Repack the checkpoint at ``src`` into safetensors files under ``dest``.

    Args:
        src: checkpoint root, its ``ckpt-0/`` or a torrent folder holding it.
        dest: output folder (created); nothing is written outside it.
        layout: 'per-tensor' or 'sglang'.
        dtype: 'keep' (per-tensor default), 'bf16' (sglang default) or 'f32'.
        compress: None, 'zstd', 'zstd:LEVEL' or a level (per-tensor only).
        layers: '0-3,10' or a list: those layers plus embedding and final norm.
        jobs: output files written in parallel.
        force: redo every output even if an earlier run finished it.
        shard_size: sglang shard size in bytes.
        chunk_size: chunk size of the DEST manifest's chunk hashes.
        chunk_hashes: list the BLAKE3 of every chunk of each output too, not only of
            the whole file (a second BLAKE3 of every byte written: see the README).
        config: the model config (default: the pinned manifest's, else inferred).
        tokenizer: a SentencePiece tokenizer.model to copy into DEST (default: Grok-1's,
            packaged); checked against the official hash, else parsed as a model.
        progress: ``progress(total_bytes, desc)`` -> a bar with update(n) and close().

    Raises:
        UsageError (bad options, DEST is the source), CheckpointFormatError (a
        source file fails the reader's checks: nothing of it is written),
        DiskError, Interrupted.
    """
    t0 = time.monotonic()
    opts = RepackOptions.parse(layout=layout, dtype=dtype, compress=compress, layers=layers,
                               jobs=jobs, force=force, shard_size=shard_size,
                               chunk_size=chunk_size, chunk_hashes=chunk_hashes)
    ckpt = open_checkpoint(src, config)
    check_config_fits(ckpt)
    if opts.layout == "sglang" and ckpt.config_source == "inferred" and not (
            confirmed_by_packaged(ckpt.config)):
        raise UsageError(
            f"{src}: --layout sglang writes config.json for other stacks, and this config was "
            f"inferred from the file shapes with a guessed head size ({ckpt.config.key_size}); "
            "pass --config FILE.json (official field names) or pin the checkpoint first "
            "(grokfetch verify SRC --torrent FILE --pin)")
    tok = load_tokenizer(tokenizer)
    dest_path = Path(dest)
    _check_dest(dest_path, ckpt)
    params = opts.params(ckpt)
    found = scan_sources(ckpt, params)
    sources = _SourceHashes(ckpt, params, found)
    plan = make_plan(ckpt, params, found, sources.planned(), opts, tok)
    state = _prepare_dest(dest_path, plan, ckpt, params, opts)
    # an earlier run's output is done only if made from these source bytes: hash its sources
    resumed = [o for o in plan.outputs if o.rel in state.records]
    sources.hash_all({i for o in resumed for i in sources.pending_in(o)}, opts.jobs, progress)
    plan = replace(plan, outputs=[sources.fill(o) if o.rel in state.records else o
                                  for o in plan.outputs])
    done = _already_done(state, plan, opts)
    todo = [o for o in plan.outputs if o.rel not in done]
    _check_space(dest_path, todo, opts.level)
    written = _write_outputs(state, todo, done, opts, progress, sources)
    entries = [done.get(o.rel) or written[o.rel] for o in plan.outputs]
    if state.kept:  # per-tensor outputs of earlier --layers runs stay listed, in model order
        entries = sorted(entries + list(state.kept.values()),
                         key=lambda e: (-1 if e.layer is None else e.layer, e.param or ""))
    bytes_out = sum(e.size for e in entries)
    mpath = _finish(dest_path, plan, entries, ckpt, opts, tok)
    return RepackResult(
        dest=dest_path, manifest_path=mpath, layout=opts.layout, dtype=opts.dtype,
        compress=opts.settings["compress"],
        written=[o.rel for o in todo], skipped=[o.rel for o in plan.outputs if o.rel in done],
        removed_temps=state.removed_temps,
        bytes_written=sum(o.payload for o in todo),
        bytes_out=bytes_out,
        payload_total=sum(o.payload for o in plan.outputs),
        seconds=time.monotonic() - t0,
        config_source=ckpt.config_source,
        key_size=ckpt.config.key_size,
        tokenizer={"path": TOKENIZER_NAME, "size": tok.size, "sha256": tok.sha256,
                   "official": tok.official, "source": str(tok.path)},
    )


def _tokenizer_origin(tok: Tokenizer) -> str:
    official = official_entry()
    if tok.official and official is not None and official.sha256_source:
        return official.sha256_source
    return f"given with --tokenizer: {tok.path.name} (not the official Grok-1 tokenizer)"


def _prepare_dest(dest: Path, plan: Plan, ckpt: Checkpoint, params: list[ParamSpec],
                  opts: RepackOptions) -> _Dest:
    """Create DEST and refuse what the run must not touch, before anything is written;
    then clean up after an interrupted run and decide what earlier runs leave in place."""
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"{dest}: cannot create the folder ({e.strerror or e})") from None
    # One repack per DEST, as for get: two would interleave journal lines and outputs.
    _held_locks.get().append(lock_dest(dest, "repack"))
    for rel in [o.rel for o in plan.outputs] + [*plan.extra_files, JOURNAL_NAME]:
        inside(dest, rel, "output path")  # refuse before writing anything, not half-way
    records, old_settings = load_records(dest)  # refuses a folder that is not a repack's
    settings = opts.settings
    if old_settings is not None and old_settings != settings and not opts.force:
        raise UsageError(
            f"{dest}: holds a repack with {_describe(old_settings)}, not "
            f"{_describe(settings)}; use --force to replace it, or another folder")
    if opts.layout == "sglang" and not opts.force:
        _check_sglang_keeps(dest, records, ckpt, params)
    ours = (dest / MANIFEST_NAME).is_file() or (dest / JOURNAL_NAME).is_file()
    if not ours and not opts.force:  # e.g. a Hugging Face download: its shards share our names
        for rel in [o.rel for o in plan.outputs] + list(plan.extra_files):
            if (dest / rel).exists():
                raise UsageError(
                    f"{dest / rel}: exists and was not written by grokfetch repack ("
                    f"{dest} has no repack manifest or journal); repack into a folder of "
                    "its own, or use --force to overwrite")
    removed = len(remove_stale_temps(dest))
    planned = {o.rel for o in plan.outputs}
    if opts.force:
        _remove_unplanned(dest, records, planned)
        records = {}
        with contextlib.suppress(FileNotFoundError):
            (dest / JOURNAL_NAME).unlink()
    kept = _carry_over(dest, opts.layout, records, planned, opts.chunk_size)
    return _Dest(dest, records, kept, removed)


def _already_done(state: _Dest, plan: Plan, opts: RepackOptions) -> dict[str, FileEntry]:
    """Outputs an earlier run finished: same recipe, and the bytes on disk still hash right."""
    candidates = []
    for o in plan.outputs:
        rec = state.records.get(o.rel)
        if rec is not None and rec[0] == recipe(opts.settings, o.source, o.arrays,
                                                opts.chunk_size):
            candidates.append((o, rec[1]))
    checks = list(parallel_map(lambda oe: still_good(inside(state.path, oe[0].rel), oe[1]),
                               candidates, opts.jobs))
    return {o.rel: entry for (o, entry), good in zip(candidates, checks, strict=True) if good}


def _write_outputs(state: _Dest, todo: list[Output], done: dict[str, FileEntry],
                   opts: RepackOptions, progress: ProgressFactory,
                   sources: _SourceHashes) -> dict[str, FileEntry]:
    """Write ``todo``, journaling each output as it lands."""
    journal = Journal(state.path / JOURNAL_NAME, opts.settings, opts.chunk_size)
    journal.add(*done.values(), *state.kept.values())  # complete even if this run is killed too
    journal.touch()  # DEST is now recognisably ours, before the first output lands in it
    return _write_all(state.path, todo, opts, journal,
                      progress(sum(o.payload for o in todo), "repack"), sources)


def _finish(dest: Path, plan: Plan, entries: list[FileEntry], ckpt: Checkpoint,
            opts: RepackOptions, tok: Tokenizer) -> Path:
    """Write config.json (and the index), then the manifest that replaces the journal."""
    for name, data in plan.extra_files.items():
        path = inside(dest, name)
        atomic_write_bytes(path, data)
        d = file_digests(path, opts.chunk_size)
        entries.append(FileEntry(path=name, size=len(data), blake3=d.blake3, chunks=d.chunks))
    src_manifest = ckpt.manifest
    source_pin = proven_pin(ckpt.root)
    manifest = Manifest(
        name=f"{src_manifest.name if src_manifest else 'grok-1'}-{opts.layout}-{opts.dtype}",
        files=entries,
        license=(src_manifest.license if src_manifest else None) or "Apache-2.0",
        pinned=True,
        config=ckpt.config,
        chunk_size=opts.chunk_size,
        repack=opts.settings,
        notes=f"repacked by {TOOL} from {Path(os.path.abspath(ckpt.root)).name}",
        # the outputs are hashed as written; they are proven when their source was
        pinned_by=(PinRoot("repack", None, Path(os.path.abspath(ckpt.root)).name, now(),
                           source_pin.pinned_by if source_pin is not None else ()),),
        tokenizer=FileEntry(path=TOKENIZER_NAME, size=tok.size, sha256=tok.sha256,
                            sha256_source=_tokenizer_origin(tok)),
    )
    mpath = save_pin(manifest, dest / MANIFEST_NAME)
    with contextlib.suppress(FileNotFoundError):
        (dest / JOURNAL_NAME).unlink()
    return mpath


# -- sources ----------------------------------------------------------------------------


def scan_sources(ckpt: Checkpoint, params: list[ParamSpec]) -> dict[int, ParamFile]:
    """Scan every source file before anything is written; the first bad one stops the run."""
    found: dict[int, ParamFile] = {}
    missing = [spec for spec in params if not ckpt.path_of(spec).exists()]
    if missing:  # e.g. a `get --layers` download: say which layers it can repack
        present = {p.module for p in ckpt.params if ckpt.path_of(p).exists()}
        complete = complete_layers(ckpt.params, present)
        hint = holds_only(complete, "the checkpoint")
        if hint:
            hint += f" (repack with --layers {layers_text(complete)})"
        others = f" (and {len(missing) - 1} more files)" if len(missing) > 1 else ""
        spec = missing[0]
        raise CheckpointFormatError(ckpt.path_of(spec), None,
                                    f"missing (expected {spec.module}){others}{hint}")
    for spec in params:
        path = ckpt.path_of(spec)
        pf = scan(path)
        problems = compare(spec, pf)
        if problems:
            raise CheckpointFormatError(path, None, problems[0])
        entry = ckpt.manifest.file(spec.file) if ckpt.manifest is not None else None
        if entry is not None and entry.size != pf.size:
            raise CheckpointFormatError(
                path, None, f"is {pf.size:,} bytes but the checkpoint manifest says "
                f"{entry.size:,} (truncated or the wrong file)")
        found[spec.index] = pf
    return found


class _SourceHashes:
    """The BLAKE3 of every source: from the checkpoint's pin when it is proven (this user
    pinned it from a root of trust), else computed from the bytes the copy of its
    output reads (a ``SourceTap`` per source file).  The plan is made with None for each
    pending one; ``fill`` puts the hashes into an output's source record once they are
    known (after the write, or before it on a restart: ``hash_all``)."""

    def __init__(self, ckpt: Checkpoint, params: list[ParamSpec], found: dict[int, ParamFile]):
        self.ckpt = ckpt
        self.specs = {s.index: s for s in params}
        self.index = {s.file: s.index for s in params}
        self.known: dict[int, str] = {}
        pin = proven_pin(ckpt.root)
        for spec in params:
            entry = pin.file(spec.file) if pin is not None else None
            if entry is not None and entry.blake3:
                self.known[spec.index] = entry.blake3
        self.taps = {i: SourceTap(ckpt.path_of(spec), found[i].size,
                                  list(found[i].arrays.values()))
                     for i, spec in self.specs.items() if i not in self.known}

    def planned(self) -> dict[int, str | None]:
        return {i: self.known.get(i) for i in self.specs}

    def _files(self, o: Output) -> list[str]:
        src = o.source
        return [src["file"]] if "file" in src else [f["file"] for f in src.get("files", [])]

    def pending_in(self, o: Output) -> set[int]:
        return {self.index[f] for f in self._files(o) if self.index[f] not in self.known}

    def taps_for(self, o: Output) -> dict[Path, SourceTap]:
        """The taps that hash ``o``'s pending sources from the bytes its write copies."""
        return {self.taps[i].path: self.taps[i] for i in self.pending_in(o)}

    def get(self, index: int) -> str:
        if index not in self.known:  # reads what its copies did not (all of it, if none ran)
            self.known[index] = self.taps[index].finish()
        return self.known[index]

    def hash_all(self, indices: set[int], jobs: int, progress: ProgressFactory) -> None:
        """Hash these sources now, in parallel, with a bar (a restart checks its outputs)."""
        todo = sorted(i for i in indices if i not in self.known)
        if not todo:
            return
        bar = progress(sum(self.taps[i].size for i in todo), "hash sources")

        def one(i: int) -> int:
            self.known[i] = blake3_file(self.taps[i].path)
            return self.taps[i].size

        try:
            # parallel_map, not pool.map: on Ctrl-C it cancels the queued files
            for size in parallel_map(one, todo, max(1, jobs)):
                bar.update(size)
        finally:
            bar.close()

    def fill(self, o: Output) -> Output:
        """``o`` with every source hash in its record (its header is left as planned)."""
        if all(self._recorded(o)):
            return o
        src = o.source
        if "file" in src:
            filled = {**src, "blake3": self.get(self.index[src["file"]])}
        else:
            filled = {**src, "files": [{**f, "blake3": self.get(self.index[f["file"]])}
                                       for f in src.get("files", [])]}
        return replace(o, source=filled)

    def _recorded(self, o: Output) -> list[bool]:
        src = o.source
        return ([src.get("blake3") is not None] if "file" in src else
                [f.get("blake3") is not None for f in src.get("files", [])])


# -- DEST -------------------------------------------------------------------------------


def _check_dest(dest: Path, ckpt: Checkpoint) -> None:
    real = Path(os.path.realpath(dest))
    for p in (ckpt.root, ckpt.ckpt_dir):
        if real == Path(os.path.realpath(p)):
            raise UsageError(f"{dest}: is the source checkpoint's folder; repack into a "
                             "folder of its own")
    # Nested inside the source, the outputs become extra files of the checkpoint
    # (verify --strict fails on them, a seeder's folder no longer matches its torrent).
    if real.is_relative_to(os.path.realpath(ckpt.root)):
        raise UsageError(f"{dest}: is inside the source checkpoint's folder {ckpt.root}; "
                         "repack into a folder of its own (beside it, e.g. "
                         f"{ckpt.root.name}-st)")
    if real.exists() and not real.is_dir():
        raise UsageError(f"{dest}: exists and is not a folder")


def _check_space(dest: Path, todo: list[Output], level: int | None) -> None:
    """Refuse up front rather than fill the disk half-way (compressed sizes are unknown)."""
    if level is None:
        check_free_space(dest, sum(o.payload for o in todo), free_space(dest),
                         what=f"for {len(todo)} output files")


def _describe(s: dict[str, Any]) -> str:
    return f"layout={s.get('layout')}, dtype={s.get('dtype')}, compress={s.get('compress')}"


def _carry_over(dest: Path, layout: str, records: dict[str, tuple[str, FileEntry]],
                planned: set[str], chunk_size: int) -> dict[str, FileEntry]:
    """Outputs an earlier run recorded that this run does not plan.

    per-tensor: another ``--layers`` selection; the files stay valid and stay
    listed (if still there with their size), so ``--layers 0-3`` then
    ``--layers 4-7`` adds up.  sglang: shards of another shard plan, which the
    new index no longer names; they are deleted.
    """
    kept: dict[str, FileEntry] = {}
    stale = {rel: rec for rel, rec in records.items() if rel not in planned}
    if layout == "sglang":
        _remove_unplanned(dest, stale, planned)
        return kept
    for rel, (made_by, entry) in stale.items():
        with contextlib.suppress(OSError, GrokfetchError):
            same_chunks = json.loads(made_by)[3] == chunk_size
            if same_chunks and inside(dest, rel).stat().st_size == entry.size:
                kept[rel] = entry
    return kept


def _check_sglang_keeps(dest: Path, records: dict[str, tuple[str, FileEntry]],
                        ckpt: Checkpoint, params: list[ParamSpec]) -> None:
    """sglang shards and their index are planned as one set: a run with other --layers
    would replace an earlier run's shards, not add to them.  Refuse to drop layers."""
    before = {src.get("file") for _recipe, e in records.values()
              for src in (e.source or {}).get("files", [])}
    dropped = before - {p.file for p in params}
    if dropped:
        layers = {p.layer for p in ckpt.params if p.file in dropped and p.layer is not None}
        raise UsageError(
            f"{dest}: holds an sglang repack with layers {layers_text(layers)}, which this run "
            "would drop: sglang shards are not added to across --layers runs - repack all "
            "the layers wanted in one run, or use --force to replace it"
        )


def _remove_unplanned(dest: Path, records: dict[str, tuple[str, FileEntry]],
                      planned: set[str]) -> None:
    """--force: delete outputs an earlier run recorded that this run will not write."""
    for rel in records:
        if rel not in planned:
            with contextlib.suppress(FileNotFoundError, GrokfetchError):
                inside(dest, rel).unlink()


def _write_all(dest: Path, todo: list[Output], opts: RepackOptions, journal: Journal, bar: Bar,
               sources: _SourceHashes) -> dict[str, FileEntry]:
    """Write ``todo`` with ``opts.jobs`` threads, journal each as it finishes, stop at an
    error.

    Measured here (bench/repack.py's one real-shaped layer, 8.14 GB in 14 outputs, and
    the "small" preset with 64 layers, 770 outputs of 150 MB in all; interleaved rounds,
    medians, on this 2-core VM whose disk swings cp -r + sync from 13 to 26 s):

    * every fsync is a cache flush of the virtual disk, and while one runs no writer
      makes progress (a trace of /proc/diskstats showed 0 MB/s and no CPU for 2.5 s
      around one output's fsync and its folder's).  Each output cost three: its own,
      its folder's (the rename) and the journal's.  The folders are now fsynced once
      each after all the writes: 770 outputs 5.59 -> 5.10 s (4 of 5 rounds faster,
      with the tokenizer's faster start); on the 8.14 GB layer within the noise
      (15.94 against 16.07 s pinned, 13.73 against 14.58 s unpinned).  Kept.
    * the journal's fsync, the third flush, now runs at most once a second
      (``Journal``): with the two above, 770 outputs 6.63 -> 5.72 s, faster in 11 of
      12 interleaved rounds.  Kept.
    * --jobs 3 instead of 2 (no lone stream at the end of the 3.2 GB embedding):
      pinned 16.34 against 17.59 s, unpinned 17.37 against 17.82 s, 4 rounds, not
      consistent round by round.  Not changed.
    """
    stop = threading.Event()
    bar_lock = threading.Lock()

    def on_bytes(n: int) -> None:
        if stop.is_set():
            raise Interrupted("repack stopped")
        with bar_lock:
            bar.update(n)

    def one(o: Output) -> FileEntry:
        if stop.is_set():
            raise Interrupted("repack stopped")
        # a source nothing vouches for is hashed from the bytes this write copies out of it
        res = write_safetensors(inside(dest, o.rel), o.tensors, o.metadata,
                                compress_level=opts.level, chunk_size=opts.chunk_size,
                                on_bytes=on_bytes, taps=sources.taps_for(o),
                                chunked=opts.chunk_hashes, sync_dir=False)
        o = sources.fill(o)
        entry = FileEntry(path=o.rel, size=res.size, blake3=res.blake3, chunks=res.chunks,
                          param=o.param, kind=o.kind, arrays=o.arrays, layer=o.layer,
                          source=o.source)
        journal.add(entry)
        return entry

    out: dict[str, FileEntry] = {}
    pool = ThreadPoolExecutor(opts.jobs)
    try:
        futures: dict[Future[FileEntry], Output] = {pool.submit(one, o): o for o in todo}
        pending = set(futures)
        while pending:
            finished, pending = wait(pending, return_when=FIRST_EXCEPTION)
            for f in finished:
                out[futures[f].rel] = f.result()  # re-raises the worker's error
    except BaseException:
        stop.set()
        pool.shutdown(wait=True, cancel_futures=True)
        with contextlib.suppress(OSError):  # what finished stays finished for the rerun
            journal.sync()
        raise
    finally:
        pool.shutdown(wait=True)
        bar.close()
    journal.sync()  # (the manifest replaces it next; until then it is the record)
    # The renames become durable here, once per folder rather than once per output
    # (each fsync is a cache flush of the disk).  A journal line may reach the disk
    # before its output's rename does: after a crash the rerun checks every journalled
    # output on disk (size and BLAKE3) and redoes one that is not there.
    for folder in sorted({inside(dest, o.rel).parent for o in todo}):
        fsync_dir(folder)
    return out
