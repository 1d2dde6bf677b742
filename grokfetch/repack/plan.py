"""What a repack writes: the checked options and the plan of output files.

Planning reads nothing: it turns the scanned source files (offsets and
shapes from the safe reader) and their BLAKE3 into ``Output``s, each a list
of ``Tensor`` recipes for the streaming writer plus the metadata and source
record that go into DEST's manifest.  ``run`` carries the plan out.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from grokfetch import __version__
from grokfetch.errors import UsageError
from grokfetch.format import sglang
from grokfetch.format.arrays import BFLOAT16
from grokfetch.format.checkpoint import Checkpoint
from grokfetch.format.folder import INDEX_NAME
from grokfetch.format.layout import ParamSpec, layer_selection, select_layers
from grokfetch.format.pickle_reader import ParamFile
from grokfetch.format.safetensors import DEFAULT_ZSTD_LEVEL, Tensor
from grokfetch.format.tokenizer import Tokenizer, tokenizer_files
from grokfetch.hashing import DEFAULT_CHUNK_SIZE

LAYOUTS = ("per-tensor", "sglang")
DTYPES = ("keep", "bf16", "f32")
DEFAULT_SHARD_SIZE = 5 * 10**9  # SGLang/HF convention: shards of about 5 GB
TOOL = f"grokfetch {__version__}"

_OUT_DTYPES = {"bf16": BFLOAT16, "f32": np.dtype(np.float32)}


@dataclass(frozen=True)
class RepackOptions:
    """What a repack run is asked to do, checked (``parse``): the CLI's options as values."""

    layout: str = "per-tensor"  # 'per-tensor' or 'sglang'
    dtype: str = "keep"  # 'keep' (per-tensor only), 'bf16' or 'f32'
    level: int | None = None  # zstd level of per-tensor outputs; None: not compressed
    layers: str | list[int] | None = None  # '0-3,10' or a list: those plus embedding and norm
    jobs: int = 2  # output files written in parallel
    force: bool = False  # redo every output, replace whatever DEST holds
    shard_size: int = DEFAULT_SHARD_SIZE  # sglang shard size in bytes
    chunk_size: int = DEFAULT_CHUNK_SIZE  # chunk size of DEST's manifest chunk hashes
    # BLAKE3 of each chunk of every output too (a second BLAKE3 of every output byte)
    chunk_hashes: bool = False

    @classmethod
    def parse(cls, *, layout: str = "per-tensor", dtype: str | None = None,
              compress: str | int | None = None, layers: str | list[int] | None = None,
              jobs: int = 2, force: bool = False, shard_size: int = DEFAULT_SHARD_SIZE,
              chunk_size: int = DEFAULT_CHUNK_SIZE,
              chunk_hashes: bool = False) -> RepackOptions:
        """Check the options ``repack`` takes; raises UsageError for any that cannot work."""
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
            raise UsageError("--layout sglang needs --dtype bf16 or f32: no stack loads the "
                             "int8 weights with grouped scales as shipped")
        if layout == "sglang" and level is not None:
            raise UsageError("--layout sglang cannot be compressed: SGLang and llama.cpp read "
                             "plain .safetensors shards")
        if jobs < 1:
            raise UsageError(f"--jobs must be at least 1, got {jobs}")
        if shard_size < 1:
            raise UsageError(f"shard size must be positive, got {shard_size}")
        return cls(layout, dtype, level, layers, jobs, force, shard_size, chunk_size,
                   chunk_hashes)

    @property
    def settings(self) -> dict[str, Any]:
        """The DEST manifest's top-level ``repack`` object."""
        return {"layout": self.layout, "dtype": self.dtype,
                "compress": None if self.level is None else f"zstd:{self.level}"}

    def params(self, ckpt: Checkpoint) -> list[ParamSpec]:
        """The parameters to repack: all, or those of ``layers``."""
        if self.layers is None:
            return list(ckpt.params)
        return select_layers(ckpt.params, layer_selection(self.layers, ckpt.config.num_layers))


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


def make_plan(ckpt: Checkpoint, params: list[ParamSpec], found: dict[int, ParamFile],
              hashes: dict[int, str | None], opts: RepackOptions, tok: Tokenizer) -> Plan:
    """The outputs of ``opts.layout`` for ``params`` (scanned: ``found``; BLAKE3: ``hashes``),
    with the tokenizer ``tok`` beside them.

    A hash of None is a source no proven pin vouches for: repack computes its BLAKE3
    from the bytes it copies, so it is known only once the output is written.  Its
    output's header then names the source file without a hash (the header comes
    before the payload), and the source record gets it when the output is done.
    """
    if opts.layout == "sglang":
        return plan_sglang(ckpt, params, found, hashes, opts.dtype, opts.shard_size, tok)
    return plan_per_tensor(ckpt, params, found, hashes, opts.dtype, opts.level, tok)


def layer_folder(layer: int, num_layers: int) -> str:
    """``layer-07``: zero-padded so a directory listing is in layer order."""
    return f"layer-{layer:0{max(2, len(str(num_layers - 1)))}d}"


def per_tensor_rel(spec: ParamSpec, num_layers: int, compressed: bool) -> str:
    name = f"{spec.dotted}.safetensors" + (".zst" if compressed else "")
    return name if spec.layer is None else f"{layer_folder(spec.layer, num_layers)}/{name}"


def plan_per_tensor(ckpt: Checkpoint, params: list[ParamSpec], found: dict[int, ParamFile],
                    hashes: dict[int, str | None], dtype: str, level: int | None,
                    tok: Tokenizer) -> Plan:
    outputs = []
    for spec in sorted(params, key=_numeric_order):
        pf = found[spec.index]
        described: dict[str, str | None] = {
            "param": spec.module,
            "layer": "" if spec.layer is None else str(spec.layer),
            "source_file": spec.file,
            "source_blake3": hashes[spec.index],  # dropped below when not known yet
            "dtype_mode": dtype,
            "orientation": "[in, out] as in the checkpoint (y = x @ weight)",
            "tool": TOOL,
        }
        meta: dict[str, str] = {k: v for k, v in described.items() if v is not None}
        if spec.kind == "quantized":
            w, s = pf.arrays["weight"], pf.arrays["scales"]
            g = s.shape[-2]
            meta["quantization_groups"] = str(g)
            if dtype == "keep":
                tensors: tuple[Tensor, ...] = (Tensor("weight", w), Tensor("scales", s))
                meta["dequantize"] = ("weight.reshape(..., G, K // G, N) * "
                                      "scales[..., :, None, :] with G = quantization_groups")
            else:
                tensors = (Tensor("weight", w, _OUT_DTYPES[dtype], scales=s),)
        else:
            a = pf.arrays["array"]
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
    return Plan(outputs, {sglang.CONFIG_NAME: config.encode(),
                          **tokenizer_files(tok, ckpt.config.sequence_len)})


def _numeric_order(spec: ParamSpec) -> tuple[int, str]:
    """Embedding and final norm first, then layers 0, 1, 2, ... (not the file order)."""
    return (-1 if spec.layer is None else spec.layer, spec.module)


def plan_sglang(ckpt: Checkpoint, params: list[ParamSpec], found: dict[int, ParamFile],
                hashes: dict[int, str | None], dtype: str, shard_size: int,
                tok: Tokenizer) -> Plan:
    out = _OUT_DTYPES[dtype]
    # Model order: embedding, layers 0..N-1, final norm, lm_head - so shards follow the model.
    items: list[tuple[Tensor, ParamSpec]] = []
    head: list[tuple[Tensor, ParamSpec]] = []
    for spec in sorted(params, key=_numeric_order):
        for t in sglang.tensors_for(spec, found[spec.index], out):
            (head if t.name in (sglang.FINAL_NORM, sglang.LM_HEAD) else items).append((t, spec))
    items += sorted(head, key=lambda ts: ts[0].name != sglang.FINAL_NORM)
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
    config = sglang.config_to_hf(ckpt.config, dtype, tok.special_ids.get("bos"))
    extra = {
        sglang.CONFIG_NAME: (json.dumps(config, indent=1) + "\n").encode(),
        INDEX_NAME: (json.dumps(index, indent=1) + "\n").encode(),
        **tokenizer_files(tok, ckpt.config.sequence_len),
    }
    return Plan(outputs, extra)
