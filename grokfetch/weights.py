"""Weights for the reference forward pass, read lazily from any layout grokfetch knows.

``open_weights(path)`` looks at ``path`` and returns a ``ModelWeights`` (the
loader interface ``grokfetch.forward`` expects) for one of:

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
import math
import os
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import ml_dtypes
import numpy as np

from grokfetch.errors import CheckpointFormatError, UsageError
from grokfetch.forward import LayerWeights
from grokfetch.fsutil import loads_json
from grokfetch.layout import ModelConfig, ParamSpec, file_name, param_list

if TYPE_CHECKING:
    from grokfetch.checkpoint import Checkpoint

BLOCK_ELEMENTS = 4 << 20  # values per dequantized block: 16 MiB of float32 scratch
BFLOAT16 = np.dtype(ml_dtypes.bfloat16)
_ST_DTYPES = {
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BF16": BFLOAT16,
    "F16": np.dtype(np.float16),
    "F32": np.dtype(np.float32),
    "F64": np.dtype(np.float64),
}
INDEX_NAME = "model.safetensors.index.json"
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
# Bytes: plain files by pread, .zst files by (restartable) streaming
# ---------------------------------------------------------------------------


class ByteSource(Protocol):
    path: Path

    def read(self, offset: int, n: int) -> bytearray: ...

    def close(self) -> None: ...


class FileBytes:
    """Random access to a plain file with pread (nothing stays mapped).

    The file is opened for each read and closed again: a whole-model run
    touches 770 files, more than some systems let a process hold open.
    """

    def __init__(self, path: Path):
        self.path = path

    def read(self, offset: int, n: int) -> bytearray:
        buf = bytearray(n)
        view, done = memoryview(buf), 0
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError as e:
            raise CheckpointFormatError(self.path, None, f"cannot open: {e.strerror}") from None
        try:
            while done < n:
                got = os.preadv(fd, [view[done:]], offset + done)
                if got <= 0:
                    raise CheckpointFormatError(
                        self.path, offset + done, "file ends inside a tensor"
                    )
                done += got
        finally:
            os.close(fd)
        return buf

    def close(self) -> None:
        pass


class ZstdBytes:
    """Reads of a zstd-compressed file by decompressed offset.

    A zstd stream can only be read forward, so reads in increasing offset
    order cost one pass; a read behind the current position starts over.
    The forward pass and the checks read each file front to back.
    """

    def __init__(self, path: Path):
        self.path = path
        self._file: Any = None
        self._reader: Any = None
        self._pos = 0

    def _restart(self) -> None:
        import zstandard

        self.close()
        try:
            self._file = open(self.path, "rb")  # noqa: SIM115 - closed in close()
        except OSError as e:
            raise CheckpointFormatError(self.path, None, f"cannot open: {e.strerror}") from None
        self._reader = zstandard.ZstdDecompressor().stream_reader(
            self._file, read_across_frames=True
        )
        self._pos = 0

    def read(self, offset: int, n: int) -> bytearray:
        import zstandard

        if self._reader is None or offset < self._pos:
            self._restart()
        buf = bytearray(n)
        try:
            while self._pos < offset:  # skip forward, decompressing into a bounded scratch
                skipped = self._reader.read(min(offset - self._pos, 8 << 20))
                if not skipped:
                    raise CheckpointFormatError(self.path, offset, "zstd stream ends early")
                self._pos += len(skipped)
            view, done = memoryview(buf), 0
            while done < n:
                got = self._reader.readinto(view[done:])
                if not got:
                    raise CheckpointFormatError(self.path, offset + done, "zstd stream ends early")
                done += got
        except zstandard.ZstdError as e:
            raise CheckpointFormatError(self.path, None, f"corrupt zstd stream: {e}") from None
        self._pos += n
        return buf

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
        if self._file is not None:
            self._file.close()
        self._reader = self._file = None


@dataclass(frozen=True)
class StoredArray:
    """A C-order array at ``offset`` of a byte source; read piecewise on demand."""

    source: ByteSource
    offset: int
    dtype: np.dtype
    shape: tuple[int, ...]

    @property
    def path(self) -> Path:
        return self.source.path

    def read(self) -> np.ndarray:
        """The whole array (only for small ones: norms, router, scales)."""
        n = math.prod(self.shape) * self.dtype.itemsize
        return np.frombuffer(self.source.read(self.offset, n), self.dtype).reshape(self.shape)

    def sub(self, i: int) -> StoredArray:
        """Element ``i`` of the leading axis (one expert of an [E, K, N] stack)."""
        step = math.prod(self.shape[1:]) * self.dtype.itemsize
        return StoredArray(self.source, self.offset + i * step, self.dtype, self.shape[1:])

    def rows(self, r0: int, r1: int) -> np.ndarray:
        """Rows r0:r1 of the leading axis."""
        row = math.prod(self.shape[1:]) * self.dtype.itemsize
        raw = self.source.read(self.offset + r0 * row, (r1 - r0) * row)
        return np.frombuffer(raw, self.dtype).reshape(r1 - r0, *self.shape[1:])

    def take(self, indices: np.ndarray) -> np.ndarray:
        """Rows ``indices`` (any order, repeats allowed); read in increasing order."""
        wanted = np.unique(indices)
        got = {int(i): self.rows(int(i), int(i) + 1)[0] for i in wanted}
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
    weight: StoredArray  # int8 or float [K, N]
    scales: np.ndarray | None  # float32 [G, N] when quantized
    groups: int | None

    @property
    def shape(self) -> tuple[int, int]:
        return self.weight.shape[0], self.weight.shape[1]

    def blocks(self) -> Iterator[tuple[int, int, np.ndarray]]:
        k, n = self.shape
        size = k // (self.groups or 1)
        for k0, k1 in row_blocks(k, n, self.groups):
            rows = self.weight.rows(k0, k1)  # (k1-k0, N) as stored
            if self.scales is None:
                yield k0, k1, rows.astype(np.float32)
            else:  # int8 x float32 in one pass; exact: 8 x 8 significant bits
                yield k0, k1, np.multiply(rows, self.scales[k0 // size], dtype=np.float32)


@dataclass(frozen=True)
class TransposedMatrix:
    """A weight stored [N, K] (PyTorch orientation), used as [K, N]; read whole per pass."""

    name: str
    weight_t: StoredArray  # float [N, K]
    groups: int | None

    @property
    def shape(self) -> tuple[int, int]:
        return self.weight_t.shape[1], self.weight_t.shape[0]

    def blocks(self) -> Iterator[tuple[int, int, np.ndarray]]:
        k, n = self.shape
        wt = self.weight_t.read()  # (N, K)
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


def open_source(path: Path) -> ByteSource:
    return ZstdBytes(path) if path.name.endswith(".zst") else FileBytes(path)


def safetensors_arrays(source: ByteSource) -> dict[str, StoredArray]:
    """The tensors of a safetensors file (header parsed here; data not read)."""
    try:
        n = int.from_bytes(source.read(0, 8), "little")
    except CheckpointFormatError:
        raise CheckpointFormatError(
            source.path, 0, "not a safetensors file (shorter than its 8-byte header length)"
        ) from None
    if not 2 <= n <= 100 << 20:
        raise CheckpointFormatError(source.path, 0, f"not a safetensors file (header size {n})")
    try:
        head = loads_json(bytes(source.read(8, n)))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CheckpointFormatError(source.path, 8, "safetensors header is not JSON") from None
    if not isinstance(head, dict):
        raise CheckpointFormatError(source.path, 8, "safetensors header is not a JSON object")
    out = {}
    for name, t in head.items():
        if name == "__metadata__":
            continue
        try:
            dtype = _ST_DTYPES[t["dtype"]]
            shape = tuple(int(s) for s in t["shape"])
            begin, end = (int(x) for x in t["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise CheckpointFormatError(source.path, 8, f"bad header entry {name!r}") from None
        if min(shape, default=0) < 0 or not 0 <= begin <= end:
            raise CheckpointFormatError(
                source.path, 8, f"tensor {name!r}: bad shape {list(shape)} or data_offsets "
                f"[{begin}, {end}]"
            )
        if end - begin != math.prod(shape) * dtype.itemsize:
            raise CheckpointFormatError(source.path, 8, f"tensor {name!r}: size disagrees")
        out[name] = StoredArray(source, 8 + n + begin, dtype, shape)
    return out


# ---------------------------------------------------------------------------
# The loader
# ---------------------------------------------------------------------------


def _check_shape(where: str, a: StoredArray, shape: tuple[int, ...]) -> None:
    if tuple(a.shape) != tuple(shape):
        raise CheckpointFormatError(a.path, None, f"{where}: shape {a.shape}, expected {shape}")


class ModelWeights:
    """Lazy weights of one model (the interface grokfetch.forward reads).

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

    def _arrays(self, spec: ParamSpec) -> dict[str, StoredArray]:
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

    def _checked(self, spec: ParamSpec) -> dict[str, StoredArray]:
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
    def _any_path(arrays: dict[str, StoredArray]) -> Path | str:
        return next(iter(arrays.values())).path if arrays else "?"

    def plain(self, spec: ParamSpec) -> np.ndarray:
        """A small unquantized parameter (norm scale, router), as float32."""
        return self._checked(spec)["weight"].read().astype(np.float32)

    def matrix(self, spec: ParamSpec, expert: int | None = None) -> Any:
        """A linear weight as a Matrix (one expert of a stack if ``expert`` is given)."""
        arrays = self._checked(spec)
        weight = arrays["weight"] if expert is None else arrays["weight"].sub(expert)
        name = self.describe(spec) if expert is None else f"{self.describe(spec)} expert {expert}"
        if "scales" in arrays:
            scales = arrays["scales"] if expert is None else arrays["scales"].sub(expert)
            s = scales.read().astype(np.float32)  # (G, N)
            return RowMatrix(name, weight, s, s.shape[0])
        return RowMatrix(name, weight, None, spec.scale_groups)

    def experts(self, spec: ParamSpec) -> ExpertStack:
        return ExpertStack(
            self.describe(spec), self.config.num_experts, lambda e: self.matrix(spec, e)
        )

    # -- the forward.Weights interface ---------------------------------------------------

    def _embedding(self) -> StoredArray:
        spec = self.spec("language_model/in_out_embed")
        return self._checked(spec)["weight"]

    def embedding_rows(self, tokens: np.ndarray) -> np.ndarray:
        table = self._embedding()
        tokens = np.asarray(tokens, dtype=np.int64)
        if tokens.size and (tokens.min() < 0 or tokens.max() >= table.shape[0]):
            raise UsageError(f"token ids must lie in 0-{table.shape[0] - 1}")
        return table.take(tokens).astype(np.float32)  # (T, D)

    def embedding_blocks(self) -> Iterator[tuple[int, int, np.ndarray]]:
        table = self._embedding()
        v, d = table.shape
        for v0, v1 in row_blocks(v, d, None):
            yield v0, v1, table.rows(v0, v1).astype(np.float32)  # (v1-v0, D)

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

    def _arrays(self, spec: ParamSpec) -> dict[str, StoredArray]:
        from grokfetch import reader

        path = self.path(spec)
        if not path.is_file() and not os.path.lexists(path):
            present = {p.module for p in self.params.values() if self.path(p).is_file()}
            raise CheckpointFormatError(
                path, None, f"missing (holds {spec.module})"
                + holds_only(complete_layers(list(self.params.values()), present),
                              "the checkpoint")
            )
        if path not in self._scans:  # the opcode walk reads only the pickle framing
            self._scans[path] = reader.scan(path)
        pf = self._scans[path]
        if pf.kind != spec.kind:
            raise CheckpointFormatError(
                path, None, f"holds a {pf.kind}, {spec.module} is {spec.kind}"
            )
        src = self.source(path)
        out = {}
        for name, a in pf.arrays.items():
            out["weight" if name == "array" else name] = StoredArray(
                src, a.offset, a.dtype, tuple(a.shape)
            )
        return out


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
        self._headers: dict[str, dict[str, StoredArray]] = {}

    @property
    def format(self) -> str:
        parts = [self.layout, str(self.repack.get("dtype", "keep"))]
        if self.repack.get("compress"):
            parts.append(str(self.repack["compress"]))
        return " ".join(parts)

    def describe(self, spec: ParamSpec) -> str:
        rel = self.files.get(spec.module)
        return f"{spec.module} ({rel})" if rel else spec.module

    def _arrays(self, spec: ParamSpec) -> dict[str, StoredArray]:
        from grokfetch.fsutil import inside

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


# SGLang's names (GROK1_FORMAT.md): official leaf -> (name below model.layers.L, transposed)
_SGLANG_LAYER = {
    "rms_norm": ("pre_attn_norm.weight", False),
    "rms_norm_1": ("post_attn_norm.weight", False),
    "rms_norm_2": ("pre_moe_norm.weight", False),
    "rms_norm_3": ("post_moe_norm.weight", False),
    "multi_head_attention/query": ("self_attn.q_proj.weight", True),
    "multi_head_attention/key": ("self_attn.k_proj.weight", True),
    "multi_head_attention/value": ("self_attn.v_proj.weight", True),
    "multi_head_attention/linear": ("self_attn.o_proj.weight", True),
    "router": ("block_sparse_moe.gate.weight", True),
    "moe/linear": ("block_sparse_moe.experts.{e}.w1.weight", True),
    "moe/linear_v": ("block_sparse_moe.experts.{e}.w3.weight", True),
    "moe/linear_1": ("block_sparse_moe.experts.{e}.w2.weight", True),
}


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
        self._headers: dict[str, dict[str, StoredArray]] = {}

    @property
    def format(self) -> str:
        return f"{self.layout} {self.dtype}"

    def name_of(self, spec: ParamSpec, expert: int | str | None = None) -> tuple[str, bool]:
        if spec.module == "language_model/in_out_embed":
            return "model.embed_tokens.weight", False
        if spec.module == "language_model/rms_norm":
            return "model.norm.weight", False
        assert spec.layer is not None
        sub, transposed = _SGLANG_LAYER[spec.short]
        return f"model.layers.{spec.layer}.{sub.format(e=expert)}", transposed

    def tensor(self, name: str) -> StoredArray:
        from grokfetch.fsutil import inside

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
        return f"{spec.module} ({self.name_of(spec, '*')[0]})"  # experts.*.w1.weight

    def plain(self, spec: ParamSpec) -> np.ndarray:
        name, transposed = self.name_of(spec)
        want = spec.array("array").shape
        a = self.tensor(name)
        _check_shape(name, a, tuple(reversed(want)) if transposed else want)
        out = a.read().astype(np.float32)
        return np.ascontiguousarray(out.T) if transposed else out

    def _embedding(self) -> StoredArray:
        spec = self.spec("language_model/in_out_embed")
        a = self.tensor(self.name_of(spec)[0])
        _check_shape("model.embed_tokens.weight", a, spec.array("array").shape)
        return a

    def matrix(self, spec: ParamSpec, expert: int | None = None) -> Any:
        name, _ = self.name_of(spec, expert)
        k, n = spec.array("weight").shape[-2:]
        a = self.tensor(name)
        _check_shape(name, a, (n, k))
        return TransposedMatrix(f"{spec.module} ({name})", a, spec.scale_groups)


# ---------------------------------------------------------------------------
# Finding out what a folder holds
# ---------------------------------------------------------------------------


def _hf_config(d: dict[str, Any]) -> dict[str, Any]:
    """Official field names from a Hugging Face style config.json (as the sglang layout writes)."""
    if "emb_size" in d or "meta" in d:
        return d
    try:
        emb, ffn = int(d["hidden_size"]), int(d["intermediate_size"])
        out = {
            "vocab_size": d["vocab_size"],
            "emb_size": emb,
            "key_size": d.get("head_dim", emb // int(d["num_attention_heads"])),
            "num_q_heads": d["num_attention_heads"],
            "num_kv_heads": d["num_key_value_heads"],
            "num_layers": d["num_hidden_layers"],
            "num_experts": d["num_local_experts"],
            "num_selected_experts": d["num_experts_per_tok"],
            # ffn_size(emb, 1.5 * ffn / emb) == ffn for any ffn that is a multiple of 8
            "widening_factor": 1.5 * ffn / emb,
        }
    except (KeyError, TypeError, ValueError) as e:
        raise UsageError(f"config.json lacks {e} (pass --config)") from None
    for ours, theirs in (
        ("embedding_multiplier_scale", "embedding_multiplier_scale"),
        ("output_multiplier_scale", "output_multiplier_scale"),
        ("rms_norm_eps", "rms_norm_eps"),
        ("rope_base", "rope_theta"),
        ("attn_logit_softcap", "attn_logit_softcapping"),
        ("sequence_len", "max_position_embeddings"),
        ("pad_token", "pad_token_id"),
        ("eos_token", "eos_token_id"),
    ):
        if d.get(theirs) is not None:
            out[ours] = d[theirs]
    return out


def _read_json(path: Path) -> Any:
    try:
        return loads_json(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UsageError(f"{path}: cannot read JSON: {e}") from None


def layers_text(layers: list[int] | set[int]) -> str:
    """[0, 1, 2, 3, 10] -> '0-3,10' (the --layers syntax)."""
    runs: list[list[int]] = []
    for x in sorted(layers):
        if runs and x == runs[-1][-1] + 1:
            runs[-1].append(x)
        else:
            runs.append([x])
    return ",".join(str(r[0]) if len(r) == 1 else f"{r[0]}-{r[-1]}" for r in runs)


def complete_layers(params: list[ParamSpec], present: set[str]) -> list[int]:
    """The layers whose every parameter is in ``present`` (module paths), when that is
    some but not all of them and the embedding and final norm are there too: what a
    partial copy (``get --layers``, ``repack --layers``) can still be used for."""
    layers: dict[int, bool] = {}
    for p in params:
        if p.layer is None:
            if p.module not in present:
                return []
        else:
            layers[p.layer] = layers.get(p.layer, True) and p.module in present
    complete = [layer for layer, ok in layers.items() if ok]
    return complete if len(complete) < len(layers) else []


def holds_only(complete: list[int], what: str) -> str:
    if not complete:
        return ""
    return f"; {what} holds only layer{'s' if len(complete) > 1 else ''} {layers_text(complete)}"


def check_config_fits(ckpt: Checkpoint) -> None:
    """Refuse a config that would name the checkpoint's files wrongly.

    The file order depends on the layer count (JAX sorts ``decoder_layer_10``
    before ``decoder_layer_2``), and every layer's files have the same shapes,
    so a config with the wrong ``num_layers`` still reads "fine" - with most
    layers taken from another layer's files.  Two things give it away:
    tensor files beyond the config's last index, and a pinned manifest that
    says a file holds another parameter than the config puts there.
    """
    from grokfetch.checkpoint import tensor_files

    if ckpt.config_source != "explicit":  # inferred from the files, or the manifest's own
        return
    cfg = ckpt.config
    n = len(ckpt.params)
    extra = sorted(i for i in tensor_files(ckpt.ckpt_dir) if i >= n)
    if extra:
        last = ckpt.ckpt_dir / file_name(extra[-1])
        raise UsageError(
            f"{last}: the config says {cfg.num_layers} layers ({n} files, up to "
            f"{file_name(n - 1)}) but the checkpoint has {file_name(extra[-1])}; the file "
            "order depends on the layer count, so layers would be read from the wrong files - "
            "pass the checkpoint's own config"
        )
    if ckpt.manifest is not None:
        by_file = {p.file: p.module for p in ckpt.params}
        for e in ckpt.manifest.files:
            if e.param and e.path in by_file and by_file[e.path] != e.param:
                raise UsageError(
                    f"{ckpt.root / e.path}: the manifest says it holds {e.param}, the config "
                    f"({cfg.num_layers} layers) puts {by_file[e.path]} there; pass the "
                    "checkpoint's own config"
                )


def open_weights(path: str | os.PathLike[str], config: ModelConfig | None = None) -> ModelWeights:
    """A lazy loader for the checkpoint or repack at ``path`` (layout detected).

    ``config``: the model configuration; by default the one pinned in the
    folder's manifest (or a repack's config.json).
    """
    from grokfetch.manifest import MANIFEST_NAME, load_manifest

    root = Path(path)
    if not root.exists():
        raise UsageError(f"{root}: no such file or directory")
    manifest_path = root / MANIFEST_NAME
    manifest = load_manifest(manifest_path) if manifest_path.is_file() else None
    if manifest is not None and manifest.repack is not None or (root / INDEX_NAME).is_file():
        repack = dict(manifest.repack or {}) if manifest is not None else {"layout": "sglang"}
        source = "explicit"
        if config is None and manifest is not None and manifest.config is not None:
            config, source = manifest.config, "manifest"
        if config is None and (root / "config.json").is_file():
            config = ModelConfig.from_dict(_hf_config(_read_json(root / "config.json")))
            source = "config.json"
        if config is None:
            raise UsageError(
                f"{root}: no model config in the manifest or config.json (pass --config)"
            )
        if repack.get("layout") == "sglang" or (root / INDEX_NAME).is_file():
            index = _read_json(root / INDEX_NAME)
            weight_map = index.get("weight_map") if isinstance(index, dict) else None
            if not isinstance(weight_map, dict):
                raise UsageError(f"{root / INDEX_NAME}: no weight_map")
            bad = next((k for k, v in weight_map.items() if not isinstance(v, str)), None)
            if bad is not None:  # say what is wrong, not "unsafe path 5: empty" later
                raise UsageError(f"{root / INDEX_NAME}: weight_map[{bad!r}] is "
                                 f"{type(weight_map[bad]).__name__}, expected a shard file name")
            dtype = str(repack.get("dtype", "bf16"))
            return SglangWeights(root, config, source, weight_map, dtype)
        if manifest is None:  # pragma: no cover - excluded above
            raise UsageError(f"{root}: no manifest")
        files = {f.param: f.path for f in manifest.files if f.param}
        return PerTensorWeights(root, config, source, files, repack)
    from grokfetch.checkpoint import open_checkpoint
    from grokfetch.repack import JOURNAL_NAME

    if (root / JOURNAL_NAME).is_file() and not (root / "ckpt-0").exists():
        raise UsageError(f"{root}: an unfinished repack (its journal, no manifest yet); rerun "
                         "the same grokfetch repack command to finish it")
    ckpt = open_checkpoint(root, config=config)
    check_config_fits(ckpt)
    return OriginalWeights(ckpt.root, ckpt.ckpt_dir, ckpt.config, ckpt.config_source)
