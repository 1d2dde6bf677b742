"""A checkpoint's model: its config, and its files checked against the layout.

Where the checkpoint is (root, tensor folder, every file grokfetch keeps
beside it) is ``folder.locate``'s to decide; this module opens what it found.

The model config comes from, in order: an explicit config; the pinned
manifest in the root; inference from the files themselves (file count gives
the layers, shapes give every size; only the query/key head split is not in
the shapes and defaults to head size 128).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from grokfetch.errors import CheckpointFormatError, GrokfetchError, UsageError
from grokfetch.format.folder import SELECTION_MANIFEST, STATE_DIR, locate
from grokfetch.format.layout import (
    ModelConfig,
    ParamSpec,
    file_name,
    param_list,
    tensor_files,
)
from grokfetch.format.manifest import Manifest, load_manifest, load_manifest_file, model_names
from grokfetch.fsutil import loads_json

if TYPE_CHECKING:
    from grokfetch.format.pickle_reader import ParamFile

# The reader is imported where a file is read: its dtypes import numpy and ml_dtypes
# (ml_dtypes 0.7 alone measured 1.0-1.4 s of CPU, holding the GIL), which finding the
# checkpoint folder or refusing a file count never needs.

DEFAULT_KEY_SIZE = 128


def load_config_file(path: str | os.PathLike[str]) -> ModelConfig:
    """A model config from a JSON file with the official field names (``--config``)."""
    try:
        data = loads_json(Path(path).read_text())
    except OSError as e:
        raise UsageError(f"{path}: cannot read config: {e.strerror or e}") from None
    except ValueError as e:
        raise UsageError(f"{path}: cannot read config: not JSON ({e})") from None
    try:
        return ModelConfig.from_dict(data)
    except UsageError as e:  # say which file is wrong
        raise UsageError(f"{path}: {e}") from None


def infer_config(ckpt_dir: Path, key_size: int = DEFAULT_KEY_SIZE) -> ModelConfig:
    """A config that names every file correctly, from the file count and a few shapes.

    Reads the headers of the embedding, the first layer's MoE, router, query and
    key files.  Head size is not recorded in the files; ``key_size`` (default
    128) must divide the query and key widths, else the largest power of two
    <= it that does is used (only RoPE and attention care; naming does not).
    """
    if key_size < 1:
        raise UsageError(f"{ckpt_dir}: key size {key_size}: expected a positive head size")
    files = tensor_files(ckpt_dir)
    n = (max(files) + 1) if files else 0
    if n < 14 or (n - 2) % 12:
        raise UsageError(
            f"{ckpt_dir}: cannot infer the model from {len(files)} tensor files "
            f"(highest index {n - 1}); a Grok-shaped checkpoint has 2 + 12 x layers files. "
            "Pass --config or use the checkpoint's manifest"
        )
    num_layers = (n - 2) // 12
    holes = sorted(set(range(n)) - set(files))
    if holes:  # what `get --layers 7` leaves: only some layers' files
        raise UsageError(
            f"{ckpt_dir}: {file_name(holes[0])}"
            + (f" and {len(holes) - 1} more files are" if len(holes) > 1 else " is")
            + " missing: "
            "a partial checkpoint cannot describe its model; pass --config (the model's "
            "config or manifest JSON), or keep the manifest `grokfetch get` wrote")

    def shape(i: int, name: str) -> tuple[int, ...]:
        if i not in files:
            raise UsageError(f"{ckpt_dir}: {file_name(i)} is missing; cannot infer the config")
        pf = _scan_file(files[i])
        if name not in pf.arrays:
            raise CheckpointFormatError(files[i], None, f"expected an array {name!r}")
        return pf.arrays[name].shape

    vocab, emb = shape(0, "array")
    # Layer 0's modules are files 2..13, in sorted order (see layout._layer_modules).
    _e, _d, ffn = shape(2, "weight")
    kv_width = shape(5, "weight")[1]
    q_width = shape(7, "weight")[1]
    experts = shape(13, "array")[1]
    ks = key_size
    while ks > 1 and (q_width % ks or kv_width % ks):
        ks //= 2
    widening = _widening_for(emb, ffn)
    cfg = ModelConfig(vocab_size=vocab, emb_size=emb, key_size=ks, num_q_heads=q_width // ks,
                      num_kv_heads=kv_width // ks, num_layers=num_layers, num_experts=experts,
                      num_selected_experts=min(2, experts), widening_factor=widening)
    return cfg


def _partial_get_config(root: Path) -> ModelConfig | None:
    """The model config ``get --layers`` left in its state folder (DEST/.grokfetch), if any:
    a partial folder's files alone describe a smaller model, not the one on disk.  Used
    only when this user's get wrote it (tagged, grokfetch.trust) or it is a packaged
    model's config: a state folder copied along with the files is the sender's word."""
    for state in (root / STATE_DIR, root.parent / STATE_DIR):
        p = state / SELECTION_MANIFEST
        if p.is_file():
            lm = load_manifest_file(p)
            cfg = lm.manifest.config
            if cfg is None or _vouched_for(lm.authentic, cfg):
                return cfg
            raise UsageError(
                f"{p}: a model config of unknown origin (not written by this user's "
                "grokfetch get, not a packaged model's); pass --config to name the model")
    return None


def _vouched_for(authentic: bool, config: ModelConfig) -> bool:
    """May a config a manifest states be taken as stated: the manifest is this user's own
    (tagged with their key: grokfetch.trust), or the config is a packaged model's?"""
    return authentic or confirmed_by_packaged(config)


def _unknown_origin_config(mpath: Path, stated: ModelConfig, ckpt_dir: Path,
                           key_size: int) -> ModelConfig:
    """The config a manifest of unknown origin states, used only where the files agree.

    Anyone can write a config into a manifest beside the files; taken on its word, a
    changed rope base or multiplier makes smoke and repack compute another model over
    bytes that verify proves.  The files show every size but the head size, so the
    stated config must be exactly what they show (with its own head size) - which a
    sender cannot change without changing the files - else the run is refused.
    """
    inferred = infer_config(ckpt_dir, stated.key_size or key_size)
    shown = inferred.to_dict()
    differ = [k for k, v in stated.to_dict().items() if shown.get(k) != v]
    if not differ:
        return stated
    raise UsageError(
        f"{mpath}: a manifest of unknown origin (not this user's pin) states a model config "
        f"the files do not show ({', '.join(differ)}); pass --config to name the model")


def _widening_for(emb: int, ffn: int) -> float:
    """A widening factor that reproduces ``ffn`` through the official ffn_size()."""
    from grokfetch.format.layout import ffn_size

    for wf in (8.0, 4.0, 2.0, 1.0, 16.0):
        if ffn_size(emb, wf) == ffn:
            return wf
    # Any factor in the window that maps onto ffn works; pick the exact one.
    wf = ffn * 3 / 2 / emb
    for cand in (wf, (ffn - 7) * 3 / 2 / emb, (ffn * 3 / 2 + 1) / emb):
        if ffn_size(emb, cand) == ffn:
            return cand
    raise UsageError(f"cannot find a widening factor giving ffn size {ffn} for emb {emb}")


@dataclass(frozen=True)
class Checkpoint:
    root: Path  # the folder that holds ckpt-0/ (where the pinned manifest lives)
    ckpt_dir: Path
    config: ModelConfig
    params: list[ParamSpec]
    config_source: str  # 'explicit', 'manifest' or 'inferred'
    manifest: Manifest | None = None

    def path_of(self, spec: ParamSpec) -> Path:
        return self.ckpt_dir / Path(spec.file).name

    def param(self, module: str) -> ParamSpec:
        for p in self.params:
            if p.module == module:
                return p
        raise KeyError(module)


def open_checkpoint(path: str | os.PathLike[str], config: ModelConfig | None = None,
                    key_size: int = DEFAULT_KEY_SIZE) -> Checkpoint:
    """Locate a checkpoint and decide its config: explicit, a manifest this user pinned
    (or one stating a packaged model's config, or what the files show), else inferred."""
    folder = locate(path)
    ckpt_dir, root = folder.checkpoint(), folder.root
    manifest = None
    source = "explicit"
    mpath = folder.manifest_path
    if mpath.is_file():
        lm = load_manifest_file(mpath)
        manifest = lm.manifest
        stated = manifest.config
        if config is None and stated is not None:
            if not _vouched_for(lm.authentic, stated):
                stated = _unknown_origin_config(mpath, stated, ckpt_dir, key_size)
            config, source = stated, "manifest"
    if config is None:
        config, source = _partial_get_config(root), "manifest"
    if config is None:
        config, source = infer_config(ckpt_dir, key_size), "inferred"
    return Checkpoint(root, ckpt_dir, config, param_list(config), source, manifest)


def confirmed_by_packaged(config: ModelConfig) -> bool:
    """Is this (inferred) config exactly a packaged model's, e.g. Grok-1's?

    Then the head size the files cannot show is the published one, not a guess.
    """
    for name in model_names():
        try:
            packaged = load_manifest(name).config
        except GrokfetchError:
            continue
        if packaged is not None and packaged.to_dict() == config.to_dict():
            return True
    return False


# -- inspection ---------------------------------------------------------------------------


@dataclass(frozen=True)
class FileReport:
    """One file as the reader found it, matched against the layout."""

    index: int | None
    path: Path
    spec: ParamSpec | None
    found: ParamFile | None
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass(frozen=True)
class InspectReport:
    root: Path | None
    config: ModelConfig | None
    config_source: str | None
    files: list[FileReport]
    missing: list[str]
    unexpected: list[str]

    @property
    def ok(self) -> bool:
        return not self.missing and all(f.ok for f in self.files)

    @property
    def problems(self) -> list[str]:
        out = [f"{m}: missing" for m in self.missing]
        for f in self.files:
            out += [f"{f.path}: {p}" for p in f.problems]
        return out


def compare(spec: ParamSpec, found: ParamFile) -> list[str]:
    """How ``found`` differs from what the layout expects for ``spec`` (empty: it matches)."""
    problems = []
    if found.kind != spec.kind:
        return [f"holds a {found.kind} parameter, expected {spec.kind} for {spec.module}"]
    for a in spec.arrays:
        got = found.arrays.get(a.name)
        if got is None:
            problems.append(f"has no {a.name} array (expected for {spec.module})")
            continue
        if got.dtype.name != a.dtype or tuple(got.shape) != a.shape:
            problems.append(
                f"{a.name} is {got.dtype.name} {list(got.shape)}, expected {a.dtype} "
                f"{list(a.shape)} for {spec.module}"
            )
    return problems


def inspect_file(path: str | os.PathLike[str]) -> ParamFile:
    """Scan one file (raises CheckpointFormatError on anything malformed)."""
    from grokfetch.format.pickle_reader import scan

    return scan(path)


def inspect_checkpoint(path: str | os.PathLike[str], config: ModelConfig | None = None,
                       key_size: int = DEFAULT_KEY_SIZE) -> InspectReport:
    """Scan every file of a checkpoint and check the set and the shapes against the layout.

    Unlike ``scan``, a bad file does not stop the inspection: it is reported
    as a problem of that file, so the user sees every bad file at once.
    """
    ckpt = open_checkpoint(path, config, key_size)
    present = tensor_files(ckpt.ckpt_dir)
    reports = []
    missing = []
    for spec in ckpt.params:
        idx = spec.index
        p = present.get(idx)
        if p is None:
            missing.append(spec.file)
            continue
        try:
            found = _scan_file(p)
        except GrokfetchError as e:
            reports.append(FileReport(idx, p, spec, None, [_strip_path(str(e), p)]))
            continue
        reports.append(FileReport(idx, p, spec, found, compare(spec, found)))
    expected = {s.index for s in ckpt.params}
    unexpected = sorted(str(present[i].relative_to(ckpt.root)) for i in present
                        if i not in expected)
    return InspectReport(ckpt.root, ckpt.config, ckpt.config_source, reports, missing,
                         unexpected)


def _scan_file(p: Path) -> ParamFile:
    """``scan``, refusing what is not a regular file first: opening a FIFO named like a
    tensor file would block forever, and a folder cannot be mapped."""
    from grokfetch.format.pickle_reader import file_kind, scan

    try:
        st = os.stat(p)
    except OSError as e:
        raise CheckpointFormatError(p, None, f"cannot read: {e.strerror or e}") from None
    if not stat.S_ISREG(st.st_mode):
        raise CheckpointFormatError(p, None, f"is {file_kind(st.st_mode)}, expected a "
                                    "checkpoint file")
    return scan(p)


def _strip_path(msg: str, p: Path) -> str:
    prefix = f"{p}"
    return msg[len(prefix):].lstrip(": ") if msg.startswith(prefix) else msg

