"""Synthetic checkpoints in exactly the real format, at any size.

The real 318 GB cannot be downloaded in a test, so every test, benchmark and
the demo run on checkpoints written here: same pickle framing as numpy 1.x
wrote (``numpy.core.multiarray``, ``__main__.QuantizedWeight8bit``,
``ml_dtypes.bfloat16``) whatever numpy is installed, same file names, same
JAX flatten order, int8 weights with the real scale grouping - filled with
seeded random weights of a sensible scale, so a forward pass gives
non-trivial activations and routing.

Each parameter draws from its own generator (seed, file index), and large
payloads are generated and written in blocks, so a full-size 1.6 GB expert
tensor never sits in memory.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import BinaryIO

import numpy as np

from grokfetch.errors import DiskError, GrokfetchError, UsageError
from grokfetch.format.arrays import BFLOAT16
from grokfetch.format.layout import (
    CKPT_DIR,
    GROK1,
    ModelConfig,
    ParamSpec,
    param_list,
    tensor_files,
)
from grokfetch.format.manifest import (
    MANIFEST_NAME,
    FileEntry,
    Manifest,
    load_manifest,
    save_manifest,
    save_pin,
)
from grokfetch.format.pickle_writer import ArrayData, pickled_size, write_param_file
from grokfetch.fsutil import (
    TMP_MARK,
    atomic_write,
    check_free_space,
    free_space,
    inside,
    remove_stale_temps,
)
from grokfetch.hashing import DEFAULT_CHUNK_SIZE, file_digests
from grokfetch.progress import ProgressFactory, no_progress
from grokfetch.trust import PinRoot, now

PRESETS: dict[str, ModelConfig] = {
    # The default: small (~7 MB) but with every feature of the real thing:
    # 12 layers (so the 0, 1, 10, 11, 2, ... order matters), 8 experts, top-2,
    # grouped-query attention, dimensions divisible by the 8 scale groups.
    "mini": ModelConfig(vocab_size=512, emb_size=128, key_size=32, num_q_heads=4,
                        num_kv_heads=2, num_layers=12, num_experts=8,
                        num_selected_experts=2, widening_factor=2.0),
    # ~40 MB, for benchmarks that want more bytes but still finish in seconds.
    "small": ModelConfig(vocab_size=2048, emb_size=256, key_size=64, num_q_heads=4,
                         num_kv_heads=2, num_layers=16, num_experts=8,
                         num_selected_experts=2, widening_factor=2.0),
    # The real dimensions (use with --layers 1 unless you have 318 GB to spare).
    "grok-1": GROK1,
}

SYNTH_NOTE = "synthetic checkpoint"  # how a manifest says synth wrote it (and may replace it)
_BLOCK_BYTES = 32 * 1024 * 1024  # generation block: bounds memory for full-size tensors


def _std(spec: ParamSpec) -> float:
    """Dequantized weights ~ N(0, 1/fan_in): activations keep their scale layer to layer."""
    if spec.kind == "quantized":
        k = spec.array("weight").shape[-2]
        return 1.0 / math.sqrt(k)
    return 0.0


def _stream(nbytes: int, make_block: Callable[[int], np.ndarray], itemsize: int,
            sparse: bool) -> Callable[[BinaryIO], None]:
    """A payload writer producing ``nbytes`` from blocks of ``make_block(n_items)``."""

    def write(f: BinaryIO) -> None:
        if sparse:  # sizing/offset tests: leave a hole instead of data
            f.seek(nbytes, os.SEEK_CUR)
            f.truncate()
            return
        left = nbytes // itemsize
        per_block = max(1, _BLOCK_BYTES // itemsize)
        while left > 0:
            n = min(left, per_block)
            f.write(np.ascontiguousarray(make_block(n)).view(np.uint8).reshape(-1).data)
            left -= n

    return write


def param_arrays(spec: ParamSpec, seed: int, sparse: bool = False) -> dict[str, ArrayData]:
    """The arrays of one synthetic parameter, as streaming payload sources."""
    if seed < 0:  # numpy seeds are non-negative; say so instead of failing inside numpy
        raise UsageError(f"--seed {seed}: want a non-negative integer")
    rng = np.random.default_rng([seed, spec.index])
    if spec.kind == "quantized":
        w, s = spec.array("weight"), spec.array("scales")
        # Uniform int8 in [-127, 127] has std 127/sqrt(3); scale it to the wanted std,
        # with a little per-(group, column) jitter so the scale groups differ.
        base = _std(spec) * math.sqrt(3.0) / 127.0
        scales = (base * np.exp(0.1 * rng.standard_normal(s.shape))).astype(BFLOAT16)
        wrng = np.random.default_rng([seed, spec.index, 1])
        weight = ArrayData(np.dtype(np.int8), w.shape, _stream(
            w.nbytes, lambda n: wrng.integers(-127, 128, size=n, dtype=np.int8), 1, sparse))
        return {"weight": weight, "scales": ArrayData.of(scales)}
    (a,) = spec.arrays
    if spec.leaf == "scale":  # RMSNorm scale multiplies the normalised input
        value = (1.0 + 0.1 * rng.standard_normal(a.shape)).astype(np.float32)
        return {"array": ArrayData.of(value)}
    if spec.leaf == "embeddings":
        erng = np.random.default_rng([seed, spec.index, 1])
        return {"array": ArrayData(np.dtype(np.float32), a.shape, _stream(
            a.nbytes, lambda n: (0.02 * erng.standard_normal(n, dtype=np.float32)), 4,
            sparse))}
    # Router: logits of order 1 so every expert gets some tokens.
    value = (rng.standard_normal(a.shape) / math.sqrt(a.shape[0]) * 2.0).astype(np.float32)
    return {"array": ArrayData.of(value)}


def write_param(path: str | os.PathLike[str], spec: ParamSpec, seed: int = 0,
                sparse: bool = False) -> int:
    """Write one synthetic parameter file (temp, fsync, rename); returns its size."""
    with atomic_write(path) as f:
        return write_param_file(f, spec.kind, param_arrays(spec, seed, sparse))


def resolve_config(preset: str = "mini", num_layers: int | None = None,
                   config: ModelConfig | None = None) -> ModelConfig:
    if config is None:
        if preset not in PRESETS:
            raise UsageError(f"unknown preset {preset!r} (choose from {', '.join(PRESETS)})")
        config = PRESETS[preset]
    if num_layers is not None:
        config = replace(config, num_layers=num_layers)
    return config


def synthesize(dest: str | os.PathLike[str], preset: str = "mini", *,
               num_layers: int | None = None, seed: int = 0,
               chunk_size: int = DEFAULT_CHUNK_SIZE, config: ModelConfig | None = None,
               name: str | None = None, progress: ProgressFactory = no_progress,
               ) -> Manifest:
    """Write a synthetic checkpoint to ``dest`` (dest/ckpt-0/tensor*) and its manifest.

    The manifest (``dest/grokfetch-manifest.json``) is pinned: every file's
    BLAKE3 and chunk hashes are filled in.  ``progress(total, desc)`` makes the bar that
    counts the bytes of each finished file.
    """
    cfg = resolve_config(preset, num_layers, config)
    root = Path(dest)
    earlier = _earlier_synth(root)
    _check_space(root, cfg, seed, preset)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"{root}: cannot create the folder ({e.strerror or e})") from None
    remove_stale_temps(root)  # a killed run's half-written file
    # Mark the folder as synth's before the first tensor file, so that a rerun after
    # Ctrl-C (or a kill) recognises it and may replace it.
    save_manifest(Manifest(name=name or f"synthetic-{preset}", files=[], pinned=False,
                           config=cfg, chunk_size=chunk_size,
                           notes=f"{SYNTH_NOTE} being written (unfinished)"),
                  root / MANIFEST_NAME)
    entries = []
    bar = progress(synth_size(cfg, seed), "synth")
    for spec in param_list(cfg):
        path = inside(root, spec.file)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            size = write_param(path, spec, seed)
        except OSError as e:
            raise DiskError(f"{path}: cannot write ({e.strerror or e})") from e
        digests = file_digests(path, chunk_size)
        entries.append(FileEntry(
            path=spec.file, size=size, blake3=digests.blake3, chunks=digests.chunks,
            param=spec.module, kind=spec.kind, layer=spec.layer,
            arrays=[a.to_dict() for a in spec.arrays],
        ))
        bar.update(size)
    bar.close()
    manifest = Manifest(
        name=name or f"synthetic-{preset}",
        files=entries,
        license="Apache-2.0",
        pinned=True,
        config=cfg,
        chunk_size=chunk_size,
        notes=f"{SYNTH_NOTE} (preset {preset}, seed {seed}) written by grokfetch synth",
        # the bytes were made and hashed here, as they were written
        pinned_by=(PinRoot("synth", None, f"preset {preset}, seed {seed}", now()),),
    )
    save_pin(manifest, root / MANIFEST_NAME)
    # Files of an earlier, larger synth that this one does not list (e.g. layers 2-11
    # after --layers 2) would otherwise stay behind as extra, wrongly named files.
    ckpt_dir = root / CKPT_DIR
    leftovers = {f"{CKPT_DIR}/{p.name}" for p in tensor_files(ckpt_dir).values()}
    for rel in sorted((earlier | leftovers) - {e.path for e in entries}):
        with contextlib.suppress(OSError, GrokfetchError):
            inside(root, rel).unlink()
    return manifest


def _is_synthetic(m: Manifest) -> bool:
    return m.repack is None and (m.notes or "").startswith(SYNTH_NOTE)


def _earlier_synth(root: Path) -> set[str]:
    """The files of an earlier synth in ``root`` (which this one replaces).

    Refuses a folder that holds anything else: synth overwrites tensor files,
    and a real download or a repack must never be replaced by random weights.
    """
    if not root.exists():
        return set()
    if not root.is_dir():
        raise UsageError(f"{root}: exists and is not a folder")
    found = [p for p in root.iterdir() if not p.name.startswith(TMP_MARK)]
    if not found:
        return set()
    mpath = root / MANIFEST_NAME
    m = None
    if mpath.is_file():
        with contextlib.suppress(GrokfetchError):
            m = load_manifest(mpath)
    if m is None or not _is_synthetic(m):
        what = (f"{MANIFEST_NAME} of {m.name!r}, not a synthetic checkpoint" if m is not None
                else sorted(found)[0].name)
        raise UsageError(f"{root}: is not empty (holds {what}); synth writes into a new or "
                         "empty folder, or over an earlier synthetic checkpoint")
    return {e.path for e in m.files}


def _check_space(root: Path, cfg: ModelConfig, seed: int, preset: str) -> None:
    """Refuse up front what cannot fit (``--preset grok-1`` without --layers is 318 GB)."""
    need = synth_size(cfg, seed)
    ckpt_dir = root / CKPT_DIR
    if ckpt_dir.is_dir():  # files replaced one by one free their space again
        need -= sum(p.stat().st_size for p in ckpt_dir.iterdir() if p.is_file())
    plural = "" if cfg.num_layers == 1 else "s"
    check_free_space(root, need, free_space(root),
                     who=f"a synthetic {preset} checkpoint with {cfg.num_layers} layer{plural}",
                     advice="use --layers N for fewer layers")


def synth_size(cfg: ModelConfig, seed: int = 0) -> int:
    """Bytes of the checkpoint ``synthesize`` writes for ``cfg`` (nothing is written)."""
    return sum(pickled_size(p.kind, param_arrays(p, seed, sparse=True)) for p in param_list(cfg))
