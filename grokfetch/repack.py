"""Repack a checkpoint into safetensors: per-tensor files, or SGLang-loadable shards.

The source files are pickles that run code when loaded; every other stack
wants safetensors.  ``repack`` reads the sources only through the safe
reader (offsets and shapes, never unpickling) and writes with the streaming
writer in ``safetensors_io`` (bytes copied from their offsets, dequantized
in row blocks), so memory stays bounded and the int8 path runs near copy
speed.

Two layouts:

* ``per-tensor`` (default): one file per parameter, named after its module
  path (``transformer.decoder_layer_10.moe.linear.safetensors``), the layers
  in zero-padded folders (``layer-10/``) so a listing reads in layer order.
  ``--dtype keep`` holds ``weight`` (int8) and ``scales`` (bf16) exactly as
  the source; ``bf16``/``f32`` hold one dequantized ``weight``, still in the
  source's [in, out] orientation.
* ``sglang``: bf16 shards (~5 GB) with the names, [out, in] orientation and
  per-expert split of SGLang's Grok-1 loader, plus
  ``model.safetensors.index.json`` and an HF-style ``config.json``.

Every output goes to a temp name, is fsynced and renamed.  Each finished
output is appended to a journal in DEST (one JSON line, fsynced), so a run
killed at any point knows what finished; a rerun skips outputs whose BLAKE3
still matches their record and redoes the rest.  At the end the DEST
manifest (``grokfetch-manifest.json``: every output with its BLAKE3, chunk
hashes and the source file + BLAKE3 it came from) replaces the journal, and
``grokfetch verify DEST`` checks the result.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import json
import os
import shutil
import threading
import time
import typing
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from grokfetch import __version__
from grokfetch.checkpoint import Checkpoint, compare, open_checkpoint
from grokfetch.errors import (
    CheckpointFormatError,
    DiskError,
    GrokfetchError,
    Interrupted,
    UsageError,
)
from grokfetch.fsutil import atomic_write_bytes, inside, loads_json, lock_dest, remove_stale_temps
from grokfetch.hashing import DEFAULT_CHUNK_SIZE, file_digests, parallel_map
from grokfetch.layout import ModelConfig, ParamSpec, parse_layer_spec
from grokfetch.manifest import MANIFEST_NAME, FileEntry, Manifest, load_manifest, save_manifest
from grokfetch.progress import NullBar, human
from grokfetch.reader import ParamFile, scan
from grokfetch.readguard import FileChangedError
from grokfetch.safetensors_io import (
    BFLOAT16,
    DEFAULT_ZSTD_LEVEL,
    SourceArray,
    Tensor,
    write_safetensors,
)
from grokfetch.weights import (
    check_config_fits,
    complete_layers,
    holds_only,
    layers_text,
)

LAYOUTS = ("per-tensor", "sglang")
DTYPES = ("keep", "bf16", "f32")
DEFAULT_SHARD_SIZE = 5 * 10**9  # SGLang/HF convention: shards of about 5 GB
JOURNAL_NAME = ".grokfetch-repack-journal.jsonl"
CONFIG_NAME = "config.json"
INDEX_NAME = "model.safetensors.index.json"
TOOL = f"grokfetch {__version__}"
# Test seam: seconds to sleep after every block written, so a test can SIGKILL
# a run part-way through.  Never set in normal use.
_DELAY_ENV = "GROKFETCH_REPACK_TEST_DELAY"

_OUT_DTYPES = {"bf16": BFLOAT16, "f32": np.dtype(np.float32)}

ProgressFactory = Callable[[int, str], Any]
_P = typing.ParamSpec("_P")
_R = TypeVar("_R")


def _no_progress(total: int, desc: str) -> Any:
    return NullBar()


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

    @property
    def files(self) -> int:
        return len(self.written) + len(self.skipped)


@dataclass(frozen=True)
class Output:
    """One planned output file."""

    rel: str  # path below DEST
    tensors: tuple[Tensor, ...]
    metadata: dict[str, str]
    source: dict[str, Any]  # {"file", "blake3"} (per-tensor) or {"files": [...]} (shard)
    param: str | None = None  # JAX module path (per-tensor) or None (shards)
    kind: str | None = None
    layer: int | None = None

    @property
    def payload(self) -> int:
        """Uncompressed tensor bytes this output holds (the progress unit)."""
        return sum(t.nbytes for t in self.tensors)

    @property
    def arrays(self) -> list[dict[str, Any]]:
        return [{"name": t.name, "dtype": t.dtype.name, "shape": list(t.shape)}
                for t in self.tensors]


@dataclass(frozen=True)
class Plan:
    outputs: list[Output]
    extra_files: dict[str, bytes] = field(default_factory=dict)  # config.json, index


def parse_compress(spec: str | None) -> int | None:
    """``None`` -> None; ``'zstd'`` -> the default level; ``'zstd:19'`` -> 19."""
    if spec is None or spec in ("", "none"):
        return None
    name, _, level = spec.partition(":")
    if name != "zstd":
        raise UsageError(f"unknown compression {spec!r} (use zstd or zstd:LEVEL)")
    if not level:
        return DEFAULT_ZSTD_LEVEL
    try:
        n = int(level)
    except ValueError:
        raise UsageError(f"bad zstd level {level!r}: want an integer 1-22") from None
    if not 1 <= n <= 22:
        raise UsageError(f"bad zstd level {n}: want 1-22")
    return n


def _settings(layout: str, dtype: str, level: int | None) -> dict[str, Any]:
    """The DEST manifest's top-level ``repack`` object."""
    return {"layout": layout, "dtype": dtype,
            "compress": None if level is None else f"zstd:{level}"}


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


def source_hashes(ckpt: Checkpoint, params: list[ParamSpec], jobs: int,
                  progress: ProgressFactory | None = None) -> dict[int, str]:
    """BLAKE3 of each source: from the checkpoint's manifest, hashing only what it lacks
    (with a bar: at full size that is minutes before the first output)."""
    out: dict[int, str] = {}
    todo = []
    for spec in params:
        entry = ckpt.manifest.file(spec.file) if ckpt.manifest is not None else None
        if entry is not None and entry.blake3:
            out[spec.index] = entry.blake3
        else:
            todo.append(spec)
    # parallel_map, not pool.map: Ctrl-C must not wait for every queued file to be hashed.
    # parallel_map, not pool.map: on Ctrl-C it cancels the queued files instead of
    # hashing every one of them (hours for 318 GB) before the run can stop.
    bar = (progress(sum(ckpt.path_of(s).stat().st_size for s in todo), "hash sources")
           if progress is not None and todo else NullBar())
    lock = threading.Lock()

    def count(n: int) -> None:
        with lock:
            bar.update(n)

    try:
        digests = list(parallel_map(lambda s: file_digests(ckpt.path_of(s), on_bytes=count),
                                    todo, max(1, jobs)))
    finally:
        bar.close()
    for spec, digest in zip(todo, digests, strict=True):
        out[spec.index] = digest.blake3
    return out


def _src(pf: ParamFile, name: str) -> SourceArray:
    a = pf.arrays[name]
    return SourceArray(pf.path, a.offset, a.dtype, tuple(a.shape))


# -- plans ------------------------------------------------------------------------------


def layer_folder(layer: int, num_layers: int) -> str:
    """``layer-07``: zero-padded so a directory listing is in layer order."""
    return f"layer-{layer:0{max(2, len(str(num_layers - 1)))}d}"


def per_tensor_rel(spec: ParamSpec, num_layers: int, compressed: bool) -> str:
    name = f"{spec.dotted}.safetensors" + (".zst" if compressed else "")
    return name if spec.layer is None else f"{layer_folder(spec.layer, num_layers)}/{name}"


def plan_per_tensor(ckpt: Checkpoint, params: list[ParamSpec], found: dict[int, ParamFile],
                    hashes: dict[int, str], dtype: str, level: int | None) -> Plan:
    outputs = []
    for spec in sorted(params, key=_numeric_order):
        pf = found[spec.index]
        meta = {
            "param": spec.module,
            "layer": "" if spec.layer is None else str(spec.layer),
            "source_file": spec.file,
            "source_blake3": hashes[spec.index],
            "dtype_mode": dtype,
            "orientation": "[in, out] as in the checkpoint (y = x @ weight)",
            "tool": TOOL,
        }
        if spec.kind == "quantized":
            w, s = _src(pf, "weight"), _src(pf, "scales")
            g = s.shape[-2]
            meta["quantization_groups"] = str(g)
            if dtype == "keep":
                tensors: tuple[Tensor, ...] = (Tensor("weight", w), Tensor("scales", s))
                meta["dequantize"] = ("weight.reshape(..., G, K // G, N) * "
                                      "scales[..., :, None, :] with G = quantization_groups")
            else:
                tensors = (Tensor("weight", w, _OUT_DTYPES[dtype], scales=s),)
        else:
            a = _src(pf, "array")
            meta["quantization_groups"] = "none"
            out = None if dtype in ("keep", "f32") else _OUT_DTYPES[dtype]
            tensors = (Tensor("weight", a, out),)
        outputs.append(Output(
            rel=per_tensor_rel(spec, ckpt.config.num_layers, level is not None),
            tensors=tensors, metadata=meta,
            source={"file": spec.file, "blake3": hashes[spec.index]},
            param=spec.module, kind=spec.kind, layer=spec.layer,
        ))
    config = json.dumps(ckpt.config.to_dict(), indent=1) + "\n"
    return Plan(outputs, {CONFIG_NAME: config.encode()})


def _numeric_order(spec: ParamSpec) -> tuple[int, str]:
    """Embedding and final norm first, then layers 0, 1, 2, ... (not the file order)."""
    return (-1 if spec.layer is None else spec.layer, spec.module)


# JAX module (below decoder_layer_L/) -> SGLang name (below model.layers.L.).
SGLANG_LAYER_NAMES = {
    "rms_norm": "pre_attn_norm",
    "rms_norm_1": "post_attn_norm",
    "rms_norm_2": "pre_moe_norm",
    "rms_norm_3": "post_moe_norm",
    "multi_head_attention/query": "self_attn.q_proj",
    "multi_head_attention/key": "self_attn.k_proj",
    "multi_head_attention/value": "self_attn.v_proj",
    "multi_head_attention/linear": "self_attn.o_proj",
    "router": "block_sparse_moe.gate",
    "moe/linear": "block_sparse_moe.experts.{e}.w1",
    "moe/linear_v": "block_sparse_moe.experts.{e}.w3",
    "moe/linear_1": "block_sparse_moe.experts.{e}.w2",
}


def sglang_tensors(spec: ParamSpec, pf: ParamFile, out: np.dtype) -> list[Tensor]:
    """The SGLang tensors one parameter becomes (names, [out, in], experts split)."""
    if spec.module == "language_model/in_out_embed":
        # Raw copies: SGLang multiplies by embedding/output_multiplier_scale itself.
        a = _src(pf, "array")
        return [Tensor("model.embed_tokens.weight", a, out), Tensor("lm_head.weight", a, out)]
    if spec.module == "language_model/rms_norm":
        return [Tensor("model.norm.weight", _src(pf, "array"), out)]
    sub = spec.short
    base = f"model.layers.{spec.layer}.{SGLANG_LAYER_NAMES[sub]}"
    if sub.startswith("rms_norm"):
        return [Tensor(f"{base}.weight", _src(pf, "array"), out)]
    if sub == "router":  # SGLang keeps the gate in float32 ([E, D] = transposed [D, E])
        return [Tensor(f"{base}.weight", _src(pf, "array"), np.dtype(np.float32),
                       transpose=True)]
    w, s = _src(pf, "weight"), _src(pf, "scales")
    if sub.startswith("moe/"):
        return [Tensor(f"{base.format(e=e)}.weight", w, out, scales=s, expert=e, transpose=True)
                for e in range(w.shape[0])]
    return [Tensor(f"{base}.weight", w, out, scales=s, transpose=True)]


def hf_config(cfg: ModelConfig, dtype: str) -> dict[str, Any]:
    """config.json for SGLang (and transformers' AutoConfig / llama.cpp's converter)."""
    return {
        "architectures": ["Grok1ForCausalLM"],
        "model_type": "mixtral",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.emb_size,
        "intermediate_size": cfg.ffn_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_q_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.key_size,
        "num_local_experts": cfg.num_experts,
        "num_experts_per_tok": cfg.num_selected_experts,
        "max_position_embeddings": cfg.sequence_len,
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": cfg.rope_base,
        "hidden_act": "gelu_pytorch_tanh",
        "embedding_multiplier_scale": cfg.embedding_multiplier_scale,
        "output_multiplier_scale": cfg.output_multiplier_scale,
        "attn_logit_softcapping": cfg.attn_logit_softcap,
        "pad_token_id": cfg.pad_token,
        "eos_token_id": cfg.eos_token,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16" if dtype == "bf16" else "float32",
        # SGLang defaults load_presharded_moe to true under tensor parallelism.
        "load_presharded_moe": False,
        "load_presharded_attn": False,
        "load_presharded_embedding": False,
        "load_presharded_mlp": False,
    }


def plan_sglang(ckpt: Checkpoint, params: list[ParamSpec], found: dict[int, ParamFile],
                hashes: dict[int, str], dtype: str, shard_size: int) -> Plan:
    out = _OUT_DTYPES[dtype]
    # Model order: embedding, layers 0..N-1, final norm, lm_head - so shards follow the model.
    items: list[tuple[Tensor, ParamSpec]] = []
    head: list[tuple[Tensor, ParamSpec]] = []
    for spec in sorted(params, key=_numeric_order):
        for t in sglang_tensors(spec, found[spec.index], out):
            (head if t.name in ("model.norm.weight", "lm_head.weight") else items).append(
                (t, spec))
    items += sorted(head, key=lambda ts: ts[0].name != "model.norm.weight")
    shards: list[list[tuple[Tensor, ParamSpec]]] = [[]]
    size = 0
    for t, spec in items:
        if shards[-1] and size + t.nbytes > shard_size:
            shards.append([])
            size = 0
        shards[-1].append((t, spec))
        size += t.nbytes
    n = len(shards)
    outputs = []
    weight_map: dict[str, str] = {}
    for i, shard in enumerate(shards, 1):
        rel = f"model-{i:05d}-of-{n:05d}.safetensors"
        specs = {s.index: s for _t, s in shard}
        sources = [{"file": s.file, "blake3": hashes[idx]} for idx, s in sorted(specs.items())]
        meta = {
            "format": "pt",
            "layout": "sglang",
            "dtype_mode": dtype,
            "orientation": "[out, in] (PyTorch nn.Linear)",
            "sources": json.dumps({d["file"]: d["blake3"] for d in sources}),
            "tool": TOOL,
        }
        for t, _s in shard:
            weight_map[t.name] = rel
        outputs.append(Output(
            rel=rel, tensors=tuple(t for t, _s in shard), metadata=meta,
            source={"files": sources},
        ))
    index = {
        "metadata": {"total_size": sum(t.nbytes for t, _s in items)},
        "weight_map": dict(sorted(weight_map.items())),
    }
    extra = {
        CONFIG_NAME: (json.dumps(hf_config(ckpt.config, dtype), indent=1) + "\n").encode(),
        INDEX_NAME: (json.dumps(index, indent=1) + "\n").encode(),
    }
    return Plan(outputs, extra)


# -- records of finished outputs --------------------------------------------------------


def _recipe(settings: Any, source: Any, arrays: Any, chunk_size: Any) -> str:
    """What makes an output's record what it is: same recipe + same BLAKE3 on disk = done."""
    return json.dumps([settings, source, arrays, chunk_size], sort_keys=True)


def load_records(dest: Path) -> tuple[dict[str, tuple[str, FileEntry]], dict[str, Any] | None]:
    """Finished outputs known from DEST's manifest and journal: rel -> (recipe, entry).

    Also returns the repack settings found there (None when DEST is fresh).
    A line cut short by a kill is ignored: its output is simply redone.
    """
    records: dict[str, tuple[str, FileEntry]] = {}
    settings = None
    mpath = dest / MANIFEST_NAME
    if mpath.is_file():
        m = load_manifest(mpath)
        if m.repack is None:  # e.g. a checkpoint's pinned manifest: never overwrite it
            raise UsageError(f"{dest}: holds a grokfetch manifest that is not a repack's "
                             f"({m.name}); repack into a folder of its own")
        else:
            settings = m.repack
            for e in m.files:
                if e.param is not None or e.source is not None:
                    records[e.path] = (_recipe(m.repack, e.source, e.arrays, m.chunk_size), e)
    jpath = dest / JOURNAL_NAME
    if jpath.is_file():
        for line in jpath.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                rec = loads_json(line)
                m = Manifest.from_dict({"format": "grokfetch-manifest", "format_version": 1,
                                        "name": "journal", "files": [rec["entry"]],
                                        "chunk_size": rec["chunk_size"]})
            except (ValueError, KeyError, TypeError, GrokfetchError):
                continue
            e = m.files[0]
            settings = rec.get("repack", settings)
            records[e.path] = (_recipe(rec.get("repack"), e.source, e.arrays, m.chunk_size), e)
    return records, settings


class _Journal:
    """Append-only record of finished outputs (one fsynced JSON line each)."""

    def __init__(self, path: Path, settings: dict[str, Any], chunk_size: int):
        self.path = path
        self.settings = settings
        self.chunk_size = chunk_size
        self.lock = threading.Lock()

    def touch(self) -> None:
        os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o644))

    def add(self, *entries: FileEntry) -> None:
        if not entries:
            return
        line = "".join(json.dumps({"repack": self.settings, "chunk_size": self.chunk_size,
                                   "entry": _entry_dict(e)}) + "\n" for e in entries)
        with self.lock:
            # O_NOFOLLOW: a symlink planted in DEST must not redirect the appends elsewhere.
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW,
                         0o644)
            try:
                os.write(fd, line.encode())
                os.fsync(fd)
            finally:
                os.close(fd)


def _entry_dict(e: FileEntry) -> dict[str, Any]:
    return {k: v for k, v in e.__dict__.items() if v is not None}


def _still_good(path: Path, entry: FileEntry, chunk_size: int) -> bool:
    """Is the file on disk the one the record describes (size, then BLAKE3)?"""
    try:
        if path.stat().st_size != entry.size:
            return False
    except OSError:
        return False
    return file_digests(path, chunk_size).blake3 == entry.blake3


# -- the run ----------------------------------------------------------------------------


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


def _os_errors_as_disk_errors(fn: Callable[_P, _R]) -> Callable[_P, _R]:
    """An OSError the checks did not foresee (permission denied, read-only file system,
    a path through a file) is still one line naming the file, exit 5 - not a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return fn(*args, **kwargs)
        except FileChangedError as e:  # a source shrank or was rewritten under us
            raise CheckpointFormatError(e.filename, None, str(e.strerror)) from None
        except OSError as e:
            where = e.filename if e.filename is not None else "repack"
            raise DiskError(f"{where}: {e.strerror or e}") from e

    return wrapper


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
@_os_errors_as_disk_errors
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
    config: ModelConfig | None = None,
    progress: ProgressFactory = _no_progress,
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
        progress: ``progress(total_bytes, desc)`` -> a bar with update(n) and close().

    Raises:
        UsageError (bad options, DEST is the source), CheckpointFormatError (a
        source file fails the reader's checks: nothing of it is written),
        DiskError, Interrupted.
    """
    t0 = time.monotonic()
    if layout not in LAYOUTS:
        raise UsageError(f"unknown layout {layout!r} (choose from {', '.join(LAYOUTS)})")
    dtype = dtype or ("bf16" if layout == "sglang" else "keep")
    if dtype not in DTYPES:
        raise UsageError(f"unknown dtype {dtype!r} (choose from {', '.join(DTYPES)})")
    if isinstance(compress, bool):
        raise UsageError("compress must be None, 'zstd', 'zstd:LEVEL' or a level")
    if isinstance(compress, int):
        level = parse_compress(f"zstd:{compress}")
    else:
        level = parse_compress(compress)
    if layout == "sglang" and dtype == "keep":
        raise UsageError("--layout sglang needs --dtype bf16 or f32: no stack loads the int8 "
                         "weights with grouped scales as shipped")
    if layout == "sglang" and level is not None:
        raise UsageError("--layout sglang cannot be compressed: SGLang and llama.cpp read "
                         "plain .safetensors shards")
    if jobs < 1:
        raise UsageError(f"--jobs must be at least 1, got {jobs}")
    if shard_size < 1:
        raise UsageError(f"shard size must be positive, got {shard_size}")

    ckpt = open_checkpoint(src, config)
    check_config_fits(ckpt)
    dest_path = Path(dest)
    _check_dest(dest_path, ckpt)
    cfg = ckpt.config
    if layers is None:
        params = list(ckpt.params)
    else:
        wanted = set(parse_layer_spec(layers, cfg.num_layers) if isinstance(layers, str)
                     else layers)
        bad = [x for x in wanted if not 0 <= x < cfg.num_layers]
        if bad:
            raise UsageError(f"layers {bad} outside 0-{cfg.num_layers - 1}")
        params = [p for p in ckpt.params if p.layer is None or p.layer in wanted]

    found = scan_sources(ckpt, params)
    hashes = source_hashes(ckpt, params, jobs, progress)
    settings = _settings(layout, dtype, level)
    if layout == "sglang":
        plan = plan_sglang(ckpt, params, found, hashes, dtype, shard_size)
    else:
        plan = plan_per_tensor(ckpt, params, found, hashes, dtype, level)

    try:
        dest_path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"{dest_path}: cannot create the folder ({e.strerror or e})") from None
    # One repack per DEST, as for get: two would interleave journal lines and outputs.
    _held_locks.get().append(lock_dest(dest_path, "repack"))
    for rel in [o.rel for o in plan.outputs] + [*plan.extra_files, JOURNAL_NAME]:
        inside(dest_path, rel, "output path")  # refuse before writing anything, not half-way
    records, old_settings = load_records(dest_path)  # refuses a folder that is not a repack's
    if old_settings is not None and old_settings != settings and not force:
        raise UsageError(
            f"{dest_path}: holds a repack with {_describe(old_settings)}, not "
            f"{_describe(settings)}; use --force to replace it, or another folder")
    if layout == "sglang" and not force:
        _check_sglang_keeps(dest_path, records, ckpt, params)
    ours = (dest_path / MANIFEST_NAME).is_file() or (dest_path / JOURNAL_NAME).is_file()
    if not ours and not force:  # e.g. a Hugging Face download: its shards share our names
        for rel in [o.rel for o in plan.outputs] + list(plan.extra_files):
            if (dest_path / rel).exists():
                raise UsageError(
                    f"{dest_path / rel}: exists and was not written by grokfetch repack ("
                    f"{dest_path} has no repack manifest or journal); repack into a folder of "
                    "its own, or use --force to overwrite")
    removed = len(remove_stale_temps(dest_path))
    planned = {o.rel for o in plan.outputs}
    if force:
        _remove_unplanned(dest_path, records, planned)
        records = {}
        with contextlib.suppress(FileNotFoundError):
            (dest_path / JOURNAL_NAME).unlink()
    kept = _carry_over(dest_path, layout, records, planned, chunk_size)

    # Decide what is already done: same recipe and the bytes on disk still hash right.
    done: dict[str, FileEntry] = {}
    candidates = []
    for o in plan.outputs:
        rec = records.get(o.rel)
        if rec is not None and rec[0] == _recipe(settings, o.source, o.arrays, chunk_size):
            candidates.append((o, rec[1]))
    checks = list(parallel_map(
        lambda oe: _still_good(inside(dest_path, oe[0].rel), oe[1], chunk_size), candidates,
        jobs))
    for (o, entry), good in zip(candidates, checks, strict=True):
        if good:
            done[o.rel] = entry
    todo = [o for o in plan.outputs if o.rel not in done]
    _check_space(dest_path, todo, level)

    journal = _Journal(dest_path / JOURNAL_NAME, settings, chunk_size)
    journal.add(*done.values(), *kept.values())  # complete even if this run is killed too
    journal.touch()  # DEST is now recognisably ours, before the first output lands in it
    written = _write_all(dest_path, todo, level, chunk_size, jobs, journal,
                         progress(sum(o.payload for o in todo), "repack"))
    entries = [done.get(o.rel) or written[o.rel] for o in plan.outputs]
    if kept:  # per-tensor outputs of earlier --layers runs stay listed, in model order
        entries = sorted(entries + list(kept.values()),
                         key=lambda e: (-1 if e.layer is None else e.layer, e.param or ""))
    n_outputs = len(entries)

    for name, data in plan.extra_files.items():
        path = inside(dest_path, name)
        atomic_write_bytes(path, data)
        d = file_digests(path, chunk_size)
        entries.append(FileEntry(path=name, size=len(data), blake3=d.blake3, chunks=d.chunks))
    src_manifest = ckpt.manifest
    manifest = Manifest(
        name=f"{src_manifest.name if src_manifest else 'grok-1'}-{layout}-{dtype}",
        files=entries,
        license=(src_manifest.license if src_manifest else None) or "Apache-2.0",
        pinned=True,
        config=cfg,
        chunk_size=chunk_size,
        repack=settings,
        notes=f"repacked by {TOOL} from {Path(os.path.abspath(ckpt.root)).name}",
    )
    mpath = save_manifest(manifest, dest_path / MANIFEST_NAME)
    with contextlib.suppress(FileNotFoundError):
        (dest_path / JOURNAL_NAME).unlink()
    return RepackResult(
        dest=dest_path, manifest_path=mpath, layout=layout, dtype=dtype,
        compress=settings["compress"],
        written=[o.rel for o in todo], skipped=[o.rel for o in plan.outputs if o.rel in done],
        removed_temps=removed,
        bytes_written=sum(o.payload for o in todo),
        bytes_out=sum(e.size for e in entries[:n_outputs]),
        payload_total=sum(o.payload for o in plan.outputs),
        seconds=time.monotonic() - t0,
        config_source=ckpt.config_source,
        key_size=cfg.key_size,
    )


def _check_space(dest: Path, todo: list[Output], level: int | None) -> None:
    """Refuse up front rather than fill the disk half-way (compressed sizes are unknown)."""
    need = sum(o.payload for o in todo)
    free = shutil.disk_usage(dest).free
    if level is None and need > free:
        raise DiskError(f"{dest}: needs {human(need)} for {len(todo)} output files, "
                        f"only {human(free)} free")


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
    for rel, (recipe, entry) in stale.items():
        with contextlib.suppress(OSError, GrokfetchError):
            same_chunks = json.loads(recipe)[3] == chunk_size
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


def _write_all(dest: Path, todo: list[Output], level: int | None, chunk_size: int, jobs: int,
               journal: _Journal, bar: Any) -> dict[str, FileEntry]:
    """Write ``todo`` with ``jobs`` threads, journal each as it finishes, stop at an error."""
    stop = threading.Event()
    delay = float(os.environ.get(_DELAY_ENV) or 0)
    bar_lock = threading.Lock()

    def on_bytes(n: int) -> None:
        if stop.is_set():
            raise Interrupted("repack stopped")
        with bar_lock:
            bar.update(n)
        if delay:
            time.sleep(delay)

    def one(o: Output) -> FileEntry:
        res = write_safetensors(inside(dest, o.rel), o.tensors, o.metadata,
                                compress_level=level, chunk_size=chunk_size, on_bytes=on_bytes)
        entry = FileEntry(path=o.rel, size=res.size, blake3=res.blake3, chunks=res.chunks,
                          param=o.param, kind=o.kind, arrays=o.arrays, layer=o.layer,
                          source=o.source)
        journal.add(entry)
        return entry

    out: dict[str, FileEntry] = {}
    pool = ThreadPoolExecutor(jobs)
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
        raise
    finally:
        pool.shutdown(wait=True)
        bar.close()
    return out
