"""Weights for the reference forward pass, read lazily from any layout grokfetch knows.

``open_weights(path)`` looks at ``path`` and returns a ``ModelWeights`` (the
loader interface ``grokfetch.model.forward`` expects) for one of:

* an original checkpoint folder (``ckpt-0/tensor*_000``, read through the
  safe opcode-walking reader, never unpickled);
* a repacked per-tensor folder (one ``.safetensors`` or ``.safetensors.zst``
  per parameter, found through the ``param`` field of its manifest; dtype
  keep, bf16 or f32);
* the SGLang layout (``model.safetensors.index.json`` + shards, per-expert,
  transposed, Hugging Face names).

Nothing is loaded up front.  Small arrays (norm scales, router, quantization
scales) are read when a layer is asked for; linear weights are ``Matrix``
objects that read and dequantize one row block at a time while a matmul
runs, so a 1.6 GB expert tensor never sits in memory, and an expert no token
routes to is never read at all.  Blocks are read with ``pread`` into fresh
buffers rather than sliced out of a memory map, because mapped pages count
towards the process's resident memory until the map goes away.

Dequantization is exact in float32 (int8 times a bfloat16 scale needs 16
significant bits, float32 has 24)::

    W = weight.reshape(*lead, G, K // G, N) * scales[..., :, None, :]

Every layout cuts a [K, N] weight into the same row blocks (``row_blocks``:
never across a scale group), so a keep or f32 repack computes exactly the
same float32 products, in the same order, as the original files - that is
what lets ``smoke --compare`` demand bit-identical results.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from grokfetch.errors import CheckpointFormatError, UsageError
from grokfetch.format import sglang
from grokfetch.format.arrays import BFLOAT16, ArrayRef
from grokfetch.format.checkpoint import open_checkpoint
from grokfetch.format.files import ByteSource, open_source
from grokfetch.format.folder import INDEX_NAME, locate
from grokfetch.format.layout import (
    ModelConfig,
    ParamSpec,
    check_config_fits,
    complete_layers,
    holds_only,
    param_list,
)
from grokfetch.format.manifest import load_manifest
from grokfetch.format.pickle_reader import scan
from grokfetch.format.safetensors import read_header
from grokfetch.fsutil import inside, loads_json
from grokfetch.model.forward import LayerWeights

BLOCK_ELEMENTS = 4 << 20  # values per dequantized block: 16 MiB of float32 scratch
# The dtypes a grokfetch output (or an HF download of one) holds; anything else is refused.
_LOADABLE = {np.dtype(t) for t in (np.int8, np.uint8, np.float16, np.float32, np.float64)}
_LOADABLE.add(BFLOAT16)
MAX_STREAMS = 16  # open files (zstd streams) kept between reads


def row_blocks(k: int, n: int, groups: int | None) -> list[tuple[int, int]]:
    """The (k0, k1) row ranges a [K, N] weight is read in: about BLOCK_ELEMENTS values each,
    never straddling one of the ``groups`` scale groups."""
    g = groups or 1
    if k % g:
        raise UsageError(f"{k} rows do not split into {g} scale groups")
    size, step = k // g, max(1, BLOCK_ELEMENTS // max(n, 1))
    return [
        (r0, min(r0 + step, (gi + 1) * size))
        for gi in range(g)
        for r0 in range(gi * size, (gi + 1) * size, step)
    ]


def dequantize(weight: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """The whole dequantized weight, exactly in float32 (for small tensors and tests)."""
    *lead, k, n = weight.shape
    g = scales.shape[-2]
    grouped = weight.reshape(*lead, g, k // g, n).astype(np.float32)  # (*lead, G, K/G, N)
    return (grouped * scales.astype(np.float32)[..., :, None, :]).reshape(weight.shape)


# ---------------------------------------------------------------------------
# Reading arrays: whole (small ones), by rows, or gathered rows
# ---------------------------------------------------------------------------


def read_array(source: ByteSource, a: ArrayRef) -> np.ndarray:
    """The whole array (only for small ones: norms, router, scales)."""
    return np.frombuffer(source.read(a.offset, a.nbytes), a.dtype).reshape(a.shape)


def read_rows(source: ByteSource, a: ArrayRef, r0: int, r1: int) -> np.ndarray:
    """Rows r0:r1 of the leading axis."""
    raw = source.read(a.offset + r0 * a.row_bytes, (r1 - r0) * a.row_bytes)
    return np.frombuffer(raw, a.dtype).reshape(r1 - r0, *a.shape[1:])


def take_rows(source: ByteSource, a: ArrayRef, indices: np.ndarray) -> np.ndarray:
    """Rows ``indices`` (any order, repeats allowed); read in increasing order."""
    got = {int(i): read_rows(source, a, int(i), int(i) + 1)[0] for i in np.unique(indices)}
    return np.stack([got[int(i)] for i in indices])


# ---------------------------------------------------------------------------
# Matrices: [K, N] linear weights that yield float32 row blocks
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RowMatrix:
    """A weight stored [K, N] as the original has it, read one row block at a time.

    Quantized (int8 weight with float32 copies of its bf16 scales [G, N]): each
    block is dequantized as it is read.  Already float (f32 or bf16 repack):
    ``groups`` still cuts the blocks where the original's scale groups were,
    so both compute the same products in the same order.
    """

    name: str
    source: ByteSource  # the file holding ``weight``
    weight: ArrayRef  # int8 or float [K, N]
    scales: np.ndarray | None  # float32 [G, N] when quantized
    groups: int | None

    @property
    def shape(self) -> tuple[int, int]:
        return self.weight.shape[0], self.weight.shape[1]

    def blocks(self) -> Iterator[tuple[int, int, np.ndarray]]:
        k, n = self.shape
        size = k // (self.groups or 1)
        for k0, k1 in row_blocks(k, n, self.groups):
            rows = read_rows(self.source, self.weight, k0, k1)  # (k1-k0, N) as stored
            if self.scales is None:
                yield k0, k1, rows.astype(np.float32)
            else:  # int8 x float32 in one pass; exact: 8 x 8 significant bits
                yield k0, k1, np.multiply(rows, self.scales[k0 // size], dtype=np.float32)


@dataclass(frozen=True)
class TransposedMatrix:
    """A weight stored [N, K] (PyTorch orientation), used as [K, N]; read whole per pass."""

    name: str
    source: ByteSource  # the file holding ``weight_t``
    weight_t: ArrayRef  # float [N, K]
    groups: int | None

    @property
    def shape(self) -> tuple[int, int]:
        return self.weight_t.shape[1], self.weight_t.shape[0]

    def blocks(self) -> Iterator[tuple[int, int, np.ndarray]]:
        k, n = self.shape
        wt = read_array(self.source, self.weight_t)  # (N, K)
        for k0, k1 in row_blocks(k, n, self.groups):
            yield k0, k1, np.ascontiguousarray(wt[:, k0:k1].T, dtype=np.float32)  # (k1-k0, N)


class ExpertStack:
    """The E experts of one MoE weight; ``stack[e]`` is a Matrix, nothing is read until used."""

    def __init__(self, name: str, count: int, matrix: Any):
        self.name = name
        self._count = count
        self._matrix = matrix  # e -> Matrix

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, e: int) -> Any:
        if not 0 <= e < self._count:
            raise IndexError(f"{self.name}: no expert {e}")
        return self._matrix(e)


# ---------------------------------------------------------------------------
# Safetensors headers (plain or zstd)
# ---------------------------------------------------------------------------


def safetensors_arrays(source: ByteSource) -> dict[str, ArrayRef]:
    """The tensors of a safetensors file (header parsed; data not read), of loadable dtypes."""
    arrays = read_header(source).arrays
    for name, a in arrays.items():
        if a.dtype not in _LOADABLE:
            raise CheckpointFormatError(source.path, 8, f"bad header entry {name!r}")
    return arrays


# ---------------------------------------------------------------------------
# The loader
# ---------------------------------------------------------------------------


def _check_shape(where: str, a: ArrayRef, shape: tuple[int, ...]) -> None:
    if tuple(a.shape) != tuple(shape):
        raise CheckpointFormatError(a.path, None, f"{where}: shape {a.shape}, expected {shape}")


class ModelWeights:
    """Lazy weights of one model (the interface grokfetch.model.forward reads).

    Subclasses say where a parameter's arrays are (``_arrays``); this class
    turns them into LayerWeights.  ``exact`` is True when every dequantized
    value equals the original checkpoint's (original, keep, f32), False for
    a bf16 copy.
    """

    layout = "original"
    exact = True

    def __init__(self, root: Path, config: ModelConfig, config_source: str = "explicit"):
        self.root = root
        self.config = config
        self.config_source = config_source  # 'explicit', 'manifest', 'config.json', 'inferred'
        self.params = {p.module: p for p in param_list(config)}
        self._sources: OrderedDict[Path, ByteSource] = OrderedDict()

    # -- what a layout provides --------------------------------------------------------

    def _arrays(self, spec: ParamSpec) -> dict[str, ArrayRef]:
        """'weight' (and 'scales' if still quantized) of a parameter."""
        raise NotImplementedError

    def describe(self, spec: ParamSpec) -> str:
        """How reports name a parameter: 'transformer/.../moe/linear (ckpt-0/tensor00002_000)'."""
        return spec.module

    @property
    def format(self) -> str:
        return self.layout

    # -- helpers -----------------------------------------------------------------------

    def source(self, path: Path) -> ByteSource:
        """The byte source of ``path``; at most MAX_STREAMS zstd streams stay open."""
        if path in self._sources:
            self._sources.move_to_end(path)
            return self._sources[path]
        if not path.is_file():
            raise CheckpointFormatError(path, None, "missing")
        self._sources[path] = open_source(path)
        if len(self._sources) > MAX_STREAMS:
            # An evicted ZstdBytes still works if used again: it restarts its stream.
            self._sources.popitem(last=False)[1].close()
        return self._sources[path]

    def read(self, a: ArrayRef) -> np.ndarray:
        """The whole of a small array (norm, router, scales)."""
        return read_array(self.source(a.path), a)

    def close(self) -> None:
        for s in self._sources.values():
            s.close()
        self._sources.clear()

    def __enter__(self) -> ModelWeights:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def spec(self, module: str) -> ParamSpec:
        return self.params[module]

    def layer_spec(self, i: int, sub: str) -> ParamSpec:
        if not 0 <= i < self.config.num_layers:
            raise UsageError(f"layer {i} is outside 0-{self.config.num_layers - 1}")
        return self.params[f"transformer/decoder_layer_{i}/{sub}"]

    def _checked(self, spec: ParamSpec) -> dict[str, ArrayRef]:
        arrays = self._arrays(spec)
        want = spec.array("weight" if spec.kind == "quantized" else "array").shape
        if "weight" not in arrays:
            raise CheckpointFormatError(
                self._any_path(arrays), None, f"{spec.module}: no weight tensor"
            )
        _check_shape(spec.module, arrays["weight"], want)
        if "scales" in arrays:
            _check_shape(spec.module + " scales", arrays["scales"], spec.array("scales").shape)
            if arrays["weight"].dtype != np.int8:
                raise CheckpointFormatError(
                    arrays["weight"].path,
                    None,
                    f"{spec.module}: weight is {arrays['weight'].dtype} beside scales, not int8",
                )
        return arrays

    @staticmethod
    def _any_path(arrays: dict[str, ArrayRef]) -> Path | str:
        return next(iter(arrays.values())).path if arrays else "?"

    def plain(self, spec: ParamSpec) -> np.ndarray:
        """A small unquantized parameter (norm scale, router), as float32."""
        return self.read(self._checked(spec)["weight"]).astype(np.float32)

    def matrix(self, spec: ParamSpec, expert: int | None = None) -> Any:
        """A linear weight as a Matrix (one expert of a stack if ``expert`` is given)."""
        arrays = self._checked(spec)
        weight = arrays["weight"] if expert is None else arrays["weight"].sub(expert)
        name = self.describe(spec) if expert is None else f"{self.describe(spec)} expert {expert}"
        if "scales" in arrays:
            scales = arrays["scales"] if expert is None else arrays["scales"].sub(expert)
            s = self.read(scales).astype(np.float32)  # (G, N)
            return RowMatrix(name, self.source(weight.path), weight, s, s.shape[0])
        return RowMatrix(name, self.source(weight.path), weight, None, spec.scale_groups)

    def experts(self, spec: ParamSpec) -> ExpertStack:
        return ExpertStack(
            self.describe(spec), self.config.num_experts, lambda e: self.matrix(spec, e)
        )

    # -- the forward.Weights interface ---------------------------------------------------

    def _embedding(self) -> ArrayRef:
        spec = self.spec("language_model/in_out_embed")
        return self._checked(spec)["weight"]

    def embedding_rows(self, tokens: np.ndarray) -> np.ndarray:
        table = self._embedding()
        tokens = np.asarray(tokens, dtype=np.int64)
        if tokens.size and (tokens.min() < 0 or tokens.max() >= table.shape[0]):
            raise UsageError(f"token ids must lie in 0-{table.shape[0] - 1}")
        return take_rows(self.source(table.path), table, tokens).astype(np.float32)  # (T, D)

    def embedding_blocks(self) -> Iterator[tuple[int, int, np.ndarray]]:
        table = self._embedding()
        v, d = table.shape
        source = self.source(table.path)
        for v0, v1 in row_blocks(v, d, None):
            yield v0, v1, read_rows(source, table, v0, v1).astype(np.float32)  # (v1-v0, D)

    def final_norm(self) -> np.ndarray:
        return self.plain(self.spec("language_model/rms_norm"))

    def layer(self, i: int) -> LayerWeights:
        def p(sub: str) -> ParamSpec:
            return self.layer_spec(i, sub)

        return LayerWeights(
            rms_norm=self.plain(p("rms_norm")),
            rms_norm_1=self.plain(p("rms_norm_1")),
            rms_norm_2=self.plain(p("rms_norm_2")),
            rms_norm_3=self.plain(p("rms_norm_3")),
            query=self.matrix(p("multi_head_attention/query")),
            key=self.matrix(p("multi_head_attention/key")),
            value=self.matrix(p("multi_head_attention/value")),
            linear=self.matrix(p("multi_head_attention/linear")),
            router=self.plain(p("router")),
            moe_linear=self.experts(p("moe/linear")),
            moe_linear_v=self.experts(p("moe/linear_v")),
            moe_linear_1=self.experts(p("moe/linear_1")),
        )


class OriginalWeights(ModelWeights):
    """The checkpoint as published: one pickle file per parameter, read by the safe reader."""

    layout = "original"

    def __init__(self, root: Path, ckpt_dir: Path, config: ModelConfig, config_source: str):
        super().__init__(root, config, config_source)
        self.ckpt_dir = ckpt_dir
        self._scans: dict[Path, Any] = {}

    def path(self, spec: ParamSpec) -> Path:
        return self.ckpt_dir / Path(spec.file).name

    def describe(self, spec: ParamSpec) -> str:
        return f"{spec.module} ({spec.file})"

    def _arrays(self, spec: ParamSpec) -> dict[str, ArrayRef]:
        path = self.path(spec)
        if not path.is_file() and not os.path.lexists(path):
            present = {p.module for p in self.params.values() if self.path(p).is_file()}
            raise CheckpointFormatError(
                path, None, f"missing (holds {spec.module})"
                + holds_only(complete_layers(list(self.params.values()), present),
                              "the checkpoint")
            )
        if path not in self._scans:  # the opcode walk reads only the pickle framing
            self._scans[path] = scan(path)
        pf = self._scans[path]
        if pf.kind != spec.kind:
            raise CheckpointFormatError(
                path, None, f"holds a {pf.kind}, {spec.module} is {spec.kind}"
            )
        return {"weight" if name == "array" else name: a for name, a in pf.arrays.items()}


class PerTensorWeights(ModelWeights):
    """A repack with one safetensors file per parameter, found through the manifest."""

    layout = "per-tensor"

    def __init__(
        self, root: Path, config: ModelConfig, source: str, files: dict[str, str], repack: dict
    ):
        super().__init__(root, config, source)
        self.files = files  # module path -> file relative to root
        self.repack = repack
        self.exact = repack.get("dtype", "keep") != "bf16"
        self._headers: dict[str, dict[str, ArrayRef]] = {}

    @property
    def format(self) -> str:
        parts = [self.layout, str(self.repack.get("dtype", "keep"))]
        if self.repack.get("compress"):
            parts.append(str(self.repack["compress"]))
        return " ".join(parts)

    def describe(self, spec: ParamSpec) -> str:
        rel = self.files.get(spec.module)
        return f"{spec.module} ({rel})" if rel else spec.module

    def _arrays(self, spec: ParamSpec) -> dict[str, ArrayRef]:
        rel = self.files.get(spec.module)
        if rel is None:
            raise CheckpointFormatError(
                self.root, None, f"manifest lists no file for {spec.module}"
                + holds_only(complete_layers(list(self.params.values()), set(self.files)),
                              "this repack")
            )
        if rel not in self._headers:
            self._headers[rel] = safetensors_arrays(self.source(inside(self.root, rel)))
        return self._headers[rel]


class SglangWeights(ModelWeights):
    """The SGLang layout: shards + index, per-expert [out, in] tensors, Hugging Face names."""

    layout = "sglang"

    def __init__(
        self, root: Path, config: ModelConfig, source: str, weight_map: dict[str, str], dtype: str
    ):
        super().__init__(root, config, source)
        self.weight_map = weight_map
        self.dtype = dtype
        self.exact = dtype != "bf16"
        self._headers: dict[str, dict[str, ArrayRef]] = {}

    @property
    def format(self) -> str:
        return f"{self.layout} {self.dtype}"

    def tensor(self, name: str) -> ArrayRef:
        shard = self.weight_map.get(name)
        if shard is None:
            raise CheckpointFormatError(self.root / INDEX_NAME, None, f"no tensor {name}")
        if shard not in self._headers:
            self._headers[shard] = safetensors_arrays(self.source(inside(self.root, shard)))
        arrays = self._headers[shard]
        if name not in arrays:
            raise CheckpointFormatError(self.root / shard, None, f"no tensor {name}")
        return arrays[name]

    def describe(self, spec: ParamSpec) -> str:
        return f"{spec.module} ({sglang.name_of(spec, '*')[0]})"  # experts.*.w1.weight

    def plain(self, spec: ParamSpec) -> np.ndarray:
        name, transposed = sglang.name_of(spec)
        want = spec.array("array").shape
        a = self.tensor(name)
        _check_shape(name, a, tuple(reversed(want)) if transposed else want)
        out = self.read(a).astype(np.float32)
        return np.ascontiguousarray(out.T) if transposed else out

    def _embedding(self) -> ArrayRef:
        spec = self.spec("language_model/in_out_embed")
        a = self.tensor(sglang.EMBEDDING)
        _check_shape(sglang.EMBEDDING, a, spec.array("array").shape)
        return a

    def matrix(self, spec: ParamSpec, expert: int | None = None) -> Any:
        name, _ = sglang.name_of(spec, expert)
        k, n = spec.array("weight").shape[-2:]
        a = self.tensor(name)
        _check_shape(name, a, (n, k))
        return TransposedMatrix(f"{spec.module} ({name})", self.source(a.path), a,
                                spec.scale_groups)


# ---------------------------------------------------------------------------
# Finding out what a folder holds
# ---------------------------------------------------------------------------


def _config_json(path: Path) -> ModelConfig:
    """The model of a repack's config.json: HF field names (what the sglang layout writes),
    or the official ones."""
    d = _read_json(path)
    if isinstance(d, dict) and ("emb_size" in d or "meta" in d):
        return ModelConfig.from_dict(d)
    if not isinstance(d, dict):
        raise UsageError(f"{path}: not a JSON object")
    return sglang.config_from_hf(d)


def _read_json(path: Path) -> Any:
    try:
        return loads_json(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UsageError(f"{path}: cannot read JSON: {e}") from None


def open_weights(path: str | os.PathLike[str], config: ModelConfig | None = None) -> ModelWeights:
    """A lazy loader for the checkpoint or repack at ``path`` (layout detected).

    ``config``: the model configuration; by default the one pinned in the
    folder's manifest (or a repack's config.json).
    """
    folder = locate(path)
    root = folder.root
    manifest_path = folder.manifest_path
    manifest = load_manifest(manifest_path) if manifest_path.is_file() else None
    index_path = folder.index_path
    if manifest is not None and manifest.repack is not None or index_path.is_file():
        repack = dict(manifest.repack or {}) if manifest is not None else {"layout": "sglang"}
        source = "explicit"
        if config is None and manifest is not None and manifest.config is not None:
            config, source = manifest.config, "manifest"
        if config is None and (root / sglang.CONFIG_NAME).is_file():
            config, source = _config_json(root / sglang.CONFIG_NAME), "config.json"
        if config is None:
            raise UsageError(
                f"{root}: no model config in the manifest or config.json (pass --config)"
            )
        if repack.get("layout") == "sglang" or index_path.is_file():
            index = _read_json(index_path)
            weight_map = index.get("weight_map") if isinstance(index, dict) else None
            if not isinstance(weight_map, dict):
                raise UsageError(f"{index_path}: no weight_map")
            bad = next((k for k, v in weight_map.items() if not isinstance(v, str)), None)
            if bad is not None:  # say what is wrong, not "unsafe path 5: empty" later
                raise UsageError(f"{index_path}: weight_map[{bad!r}] is "
                                 f"{type(weight_map[bad]).__name__}, expected a shard file name")
            dtype = str(repack.get("dtype", "bf16"))
            return SglangWeights(root, config, source, weight_map, dtype)
        if manifest is None:  # pragma: no cover - excluded above
            raise UsageError(f"{root}: no manifest")
        files = {f.param: f.path for f in manifest.files if f.param}
        return PerTensorWeights(root, config, source, files, repack)
    if folder.journal_path.is_file() and folder.ckpt_dir is None:
        raise UsageError(f"{root}: an unfinished repack (its journal, no manifest yet); rerun "
                         "the same grokfetch repack command to finish it")
    ckpt = open_checkpoint(root, config=config)
    check_config_fits(ckpt)
    return OriginalWeights(ckpt.root, ckpt.ckpt_dir, ckpt.config, ckpt.config_source)
