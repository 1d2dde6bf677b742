"""The parameter list of a Grok-1-shaped model, in checkpoint file order.

The checkpoint holds one pickle file per parameter, ``ckpt-0/tensor{i:05d}_000``
(docs/FORMAT.md, "Names and file order"),
where ``i`` is the parameter's position in ``jax.tree_util`` flatten order.
JAX sorts dict keys *as strings*, so the layers come 0, 1, 10, 11, ..., 19, 2,
20, ... - not 0..63.  A converter that assumes numeric order silently
scrambles the layers; everything here derives the order by sorting the same
strings JAX sorts, for any number of layers.

Shapes follow the official model code (y = x @ W, so linear weights are
[in, out]); quantized weights are int8 with bfloat16 scales [.., G, out],
G = 8 for the two row-parallel projections (attention output ``linear`` and
MoE ``linear_1``), G = 1 elsewhere.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from grokfetch.errors import UsageError
from grokfetch.names import shorten

# numpy and ml_dtypes take most of a second to import; verify against a pin needs
# the layout but no array, so they are imported where a dtype is asked for.
if TYPE_CHECKING:
    import numpy as np

CKPT_DIR = "ckpt-0"
SCALE_GROUPS = 8  # the 8 tensor-parallel shards of the original training run
# A parameter file's name: tensor<index, 5 digits>_<host shard, 3 digits>.
TENSOR_FILE_RE = re.compile(r"^tensor(\d{5})_(\d{3})$")


def file_name(index: int, shard: int = 0) -> str:
    """``tensor00026_000``: the file holding parameter ``index`` (host shard ``shard``)."""
    return f"tensor{index:05d}_{shard:03d}"


def is_tensor_path(path: str) -> bool:
    """Whether a '/'-separated path (a manifest's or a torrent's) names a parameter file."""
    return bool(TENSOR_FILE_RE.match(path.rsplit("/", 1)[-1]))


def tensor_files(ckpt_dir: Path) -> dict[int, Path]:
    """The ``tensorNNNNN_000`` files of a folder, by index (other files are ignored)."""
    out = {}
    for q in ckpt_dir.iterdir():
        m = TENSOR_FILE_RE.match(q.name)
        if m and m.group(2) == "000":
            out[int(m.group(1))] = q
    return out


def ffn_size(emb_size: int, widening_factor: float) -> int:
    """The MoE hidden size exactly as the official code computes it (a multiple of 8)."""
    size = int(widening_factor * emb_size) * 2 // 3
    return size + (8 - size) % 8


# Integer fields of ModelConfig and the largest value accepted for each.
CONFIG_INT_BOUNDS = {
    "vocab_size": 1 << 22, "emb_size": 1 << 17, "key_size": 1 << 12, "num_q_heads": 1 << 12,
    "num_kv_heads": 1 << 12, "num_layers": 1 << 12, "num_experts": 1 << 10,
    "num_selected_experts": 1 << 10, "sequence_len": 1 << 24, "pad_token": 1 << 22,
    "eos_token": 1 << 22,
}
CONFIG_FLOATS = ("widening_factor", "embedding_multiplier_scale", "output_multiplier_scale",
                 "attn_output_multiplier", "rms_norm_eps", "rope_base", "attn_logit_softcap")


@dataclass(frozen=True)
class ModelConfig:
    """A Grok-1-shaped model.  Field names are the official configuration's."""

    vocab_size: int  # tokens in the vocabulary (131072 for Grok-1)
    emb_size: int  # model width D
    key_size: int  # head size (128); cannot be inferred from the files alone
    num_q_heads: int  # query heads (48)
    num_kv_heads: int  # key/value heads (8): grouped-query attention
    num_layers: int  # decoder layers (64)
    num_experts: int = 8  # MoE experts per layer
    num_selected_experts: int = 2  # experts each token is routed to (top-k)
    widening_factor: float = 8.0  # expert hidden size = ffn_size(emb_size, widening_factor)
    embedding_multiplier_scale: float = 78.38367176906169  # h0 = embed[tokens] * this
    output_multiplier_scale: float = 0.5773502691896257  # logits = h @ embed.T * this
    attn_output_multiplier: float = 0.08838834764831845  # attention logit multiplier
    rms_norm_eps: float = 1e-5
    rope_base: float = 10000.0
    attn_logit_softcap: float = 30.0  # logits = cap * tanh(logits / cap)
    sequence_len: int = 8192
    pad_token: int = 0
    eos_token: int = 2

    def __post_init__(self) -> None:
        # Every config source (manifest, --config, config.json, inference) ends here, so
        # this is the one validator.  Upper bounds are far above Grok-1's (vocab 131072,
        # width 6144, 64 layers) and keep a hostile config from costing hours or memory.
        for name, most in CONFIG_INT_BOUNDS.items():
            v = getattr(self, name)
            low = 0 if name in ("pad_token", "eos_token") else 1
            if not isinstance(v, int) or isinstance(v, bool) or not low <= v <= most:
                what = "a non-negative" if low == 0 else "a positive"
                raise UsageError(f"model config: {name} must be {what} integer up to "
                                 f"{most:,}, got {shorten(repr(v), 60)}")
        for name in CONFIG_FLOATS:
            v = getattr(self, name)
            if (not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v)
                    or v <= 0):
                raise UsageError(f"model config: {name} must be a finite number > 0, "
                                 f"got {shorten(repr(v), 60)}")
        if self.num_q_heads % self.num_kv_heads:
            raise UsageError(
                f"model config: num_q_heads {self.num_q_heads} is not a multiple of "
                f"num_kv_heads {self.num_kv_heads}"
            )
        if self.num_selected_experts > self.num_experts:
            raise UsageError("model config: num_selected_experts > num_experts")

    @property
    def ffn_size(self) -> int:
        return ffn_size(self.emb_size, self.widening_factor)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["ffn_size"] = self.ffn_size  # informative; recomputed on load
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """Build from a dict with the official field names; unknown keys are ignored.

        Accepts ``{"meta": {"config": {...}}}`` (a golden layout.json) too.
        """
        if not isinstance(d, dict):
            raise UsageError(f"model config must be a JSON object, got {type(d).__name__}")
        if "emb_size" not in d and isinstance(d.get("meta"), dict) and "config" in d["meta"]:
            d = d["meta"]["config"]
        if "emb_size" not in d and isinstance(d.get("config"), dict):  # a whole manifest
            d = d["config"]
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in names}
        missing = [f.name for f in dataclasses.fields(cls)
                   if f.default is dataclasses.MISSING and f.name not in kwargs]
        if missing:
            raise UsageError(f"model config: missing field(s) {', '.join(missing)}")
        for k in CONFIG_FLOATS:
            if k in kwargs:
                v = kwargs[k]
                if not isinstance(v, (int, float)) or isinstance(v, bool):  # not "1e-5", true
                    raise UsageError(f"model config: {k} must be a number, got "
                                     f"{shorten(repr(v), 60)}")
                kwargs[k] = float(v)
        try:
            cfg = cls(**kwargs)
        except TypeError as e:  # pragma: no cover - dataclass signature mismatch
            raise UsageError(f"model config: {e}") from None
        if "ffn_size" in d and d["ffn_size"] != cfg.ffn_size:
            raise UsageError(
                f"model config: ffn_size {d['ffn_size']} disagrees with "
                f"emb_size/widening_factor ({cfg.ffn_size})"
            )
        return cfg


# The official run configuration of Grok-1.
GROK1 = ModelConfig(
    vocab_size=131072,
    emb_size=6144,
    key_size=128,
    num_q_heads=48,
    num_kv_heads=8,
    num_layers=64,
    num_experts=8,
    num_selected_experts=2,
    widening_factor=8.0,
)


@dataclass(frozen=True)
class ArraySpec:
    """One array inside a parameter file."""

    name: str  # 'array' (plain ndarray file), or 'weight' / 'scales' (QuantizedWeight8bit)
    dtype: str  # 'float32', 'int8' or 'bfloat16'
    shape: tuple[int, ...]

    @property
    def numpy_dtype(self) -> np.dtype:
        import numpy as np

        from grokfetch.format.arrays import BFLOAT16

        return BFLOAT16 if self.dtype == "bfloat16" else np.dtype(self.dtype)

    @property
    def itemsize(self) -> int:
        return self.numpy_dtype.itemsize

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.itemsize

    def to_dict(self) -> dict[str, Any]:
        """How a manifest entry lists it: {"name", "dtype", "shape"}."""
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


@dataclass(frozen=True)
class ParamSpec:
    """One parameter = one checkpoint file."""

    index: int  # position in JAX flatten order = file number
    file: str  # path relative to the checkpoint root, e.g. 'ckpt-0/tensor00026_000'
    module: str  # haiku module path, e.g. 'transformer/decoder_layer_10/moe/linear'
    leaf: str  # 'w', 'scale' or 'embeddings'
    layer: int | None  # decoder layer, None for the embedding and the final norm
    kind: str  # 'ndarray' or 'quantized' (QuantizedWeight8bit)
    arrays: tuple[ArraySpec, ...]
    scale_groups: int | None  # G for quantized weights (1 or 8), None otherwise

    @property
    def dotted(self) -> str:
        """``transformer.decoder_layer_10.moe.linear``: the module path with dots."""
        return self.module.replace("/", ".")

    @property
    def short(self) -> str:
        """The module path below the layer, e.g. 'moe/linear' (or the full path)."""
        if self.layer is None:
            return self.module
        return self.module.split("/", 2)[2]

    def array(self, name: str) -> ArraySpec:
        for a in self.arrays:
            if a.name == name:
                return a
        raise KeyError(f"{self.module} has no array {name!r}")

    @property
    def payload_bytes(self) -> int:
        return sum(a.nbytes for a in self.arrays)


def _quantized(shape: tuple[int, ...], groups: int) -> tuple[tuple[ArraySpec, ...], int]:
    *lead, _k, n = shape
    return (
        ArraySpec("weight", "int8", tuple(shape)),
        ArraySpec("scales", "bfloat16", (*lead, groups, n)),
    ), groups


def _layer_modules(cfg: ModelConfig) -> dict[str, tuple[str, str, Any]]:
    """Per-layer module (below decoder_layer_N/) -> (leaf, kind, shape info)."""
    d, f, e = cfg.emb_size, cfg.ffn_size, cfg.num_experts
    q, kv = cfg.num_q_heads * cfg.key_size, cfg.num_kv_heads * cfg.key_size
    g = SCALE_GROUPS
    return {
        "moe/linear": ("w", "quantized", ((e, d, f), 1)),
        "moe/linear_1": ("w", "quantized", ((e, f, d), g)),
        "moe/linear_v": ("w", "quantized", ((e, d, f), 1)),
        "multi_head_attention/key": ("w", "quantized", ((d, kv), 1)),
        "multi_head_attention/linear": ("w", "quantized", ((q, d), g)),
        "multi_head_attention/query": ("w", "quantized", ((d, q), 1)),
        "multi_head_attention/value": ("w", "quantized", ((d, kv), 1)),
        "rms_norm": ("scale", "ndarray", (d,)),
        "rms_norm_1": ("scale", "ndarray", (d,)),
        "rms_norm_2": ("scale", "ndarray", (d,)),
        "rms_norm_3": ("scale", "ndarray", (d,)),
        "router": ("w", "ndarray", (d, e)),
    }


def param_list(cfg: ModelConfig) -> list[ParamSpec]:
    """Every parameter of ``cfg``'s model, in file order (JAX flatten order)."""
    entries: list[tuple[str, str, int | None, str, Any]] = [
        ("language_model/in_out_embed", "embeddings", None, "ndarray",
         (cfg.vocab_size, cfg.emb_size)),
        ("language_model/rms_norm", "scale", None, "ndarray", (cfg.emb_size,)),
    ]
    for n in range(cfg.num_layers):
        for sub, (leaf, kind, info) in _layer_modules(cfg).items():
            entries.append((f"transformer/decoder_layer_{n}/{sub}", leaf, n, kind, info))
    # The haiku params dict is {module_path: {leaf: value}}; tree_util sorts the
    # keys as strings at each level, which is what puts layer 10 before layer 2.
    entries.sort(key=lambda t: (t[0], t[1]))
    if cfg.emb_size % SCALE_GROUPS or cfg.ffn_size % SCALE_GROUPS or (
        cfg.num_q_heads * cfg.key_size
    ) % SCALE_GROUPS:
        raise UsageError(
            f"model config: the row-parallel projections need dimensions divisible by "
            f"{SCALE_GROUPS} (emb {cfg.emb_size}, ffn {cfg.ffn_size}, "
            f"q {cfg.num_q_heads * cfg.key_size})"
        )
    params = []
    for index, (module, leaf, layer, kind, info) in enumerate(entries):
        scale_groups: int | None = None
        if kind == "quantized":
            shape, groups = info
            arrays, scale_groups = _quantized(shape, groups)
        else:
            arrays = (ArraySpec("array", "float32", tuple(info)),)
        params.append(ParamSpec(index, f"{CKPT_DIR}/{file_name(index)}", module, leaf,
                                layer, kind, arrays, scale_groups))
    return params


def parse_layer_spec(spec: str, num_layers: int) -> list[int]:
    """``"0-3,10"`` -> [0, 1, 2, 3, 10]; raises UsageError for anything out of range."""
    layers: set[int] = set()
    for part in str(spec).split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if "-" in part:
                lo_s, hi_s = part.split("-", 1)
                lo, hi = int(lo_s), int(hi_s)
            else:
                lo = hi = int(part)
        except ValueError:
            raise UsageError(f"bad layer spec {spec!r}: {part!r} is not N or N-M") from None
        if lo > hi or lo < 0 or hi >= num_layers:
            raise UsageError(
                f"bad layer spec {spec!r}: {part!r} is outside 0-{num_layers - 1}"
            )
        layers.update(range(lo, hi + 1))
    if not layers:
        raise UsageError(f"bad layer spec {spec!r}: names no layer")
    return sorted(layers)


class _HasLayer(Protocol):
    @property
    def layer(self) -> int | None: ...


_T = TypeVar("_T", bound=_HasLayer)


def layer_selection(layers: str | Iterable[int], num_layers: int) -> set[int]:
    """The layers a ``--layers`` value names: ``"0-3,10"`` or a list of numbers."""
    if isinstance(layers, str):
        return set(parse_layer_spec(layers, num_layers))
    wanted = set(layers)
    bad = sorted(x for x in wanted if not 0 <= x < num_layers)
    if bad:
        raise UsageError(f"layers {bad} outside 0-{num_layers - 1}")
    return wanted


def select_layers(items: Iterable[_T], layers: Collection[int]) -> list[_T]:
    """The items (parameters, manifest entries, files) of ``layers`` plus the embedding
    and the final norm - which every layer needs - in the order given."""
    return [x for x in items if x.layer is None or x.layer in layers]


def layers_text(layers: Iterable[int]) -> str:
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
    """'; the checkpoint holds only layers 0-3' (empty when ``complete`` is)."""
    if not complete:
        return ""
    return f"; {what} holds only layer{'s' if len(complete) > 1 else ''} {layers_text(complete)}"


class _Checkpoint(Protocol):
    """What ``check_config_fits`` reads of a checkpoint folder (checkpoint.Checkpoint)."""

    @property
    def root(self) -> Path: ...
    @property
    def ckpt_dir(self) -> Path: ...
    @property
    def config(self) -> ModelConfig: ...
    @property
    def params(self) -> list[ParamSpec]: ...
    @property
    def config_source(self) -> str: ...
    @property
    def manifest(self) -> Any: ...  # manifest.Manifest | None


def check_config_fits(ckpt: _Checkpoint) -> None:
    """Refuse a config that would name the checkpoint's files wrongly.

    The file order depends on the layer count (JAX sorts ``decoder_layer_10``
    before ``decoder_layer_2``), and every layer's files have the same shapes,
    so a config with the wrong ``num_layers`` still reads "fine" - with most
    layers taken from another layer's files.  Two things give it away:
    tensor files beyond the config's last index, and a pinned manifest that
    says a file holds another parameter than the config puts there.
    """
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
