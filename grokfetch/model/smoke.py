"""Smoke test: run the reference forward pass on real weights and check the numbers are sane.

A checksum proves the bytes match a list; this proves the weights behave
like weights.  ``smoke`` runs one decoder layer (on the scaled embeddings of
some tokens, or on hidden states from elsewhere) or the whole model through
``grokfetch.model.forward`` and checks, each with the figure it is judged on:

* every output is finite;
* attention and router probabilities sum to 1;
* each token picks ``num_selected_experts`` distinct experts;
* each layer changes its input (no dead layer) without exploding (output RMS
  within a factor RMS_FACTOR of input RMS);
* every expert's dequantized weights, and every other weight of the layers
  run, are finite and not all zero (read block by block; named on failure).

``smoke_compare`` runs the same input through two copies (say, original
and repacked), compares every weight the run used and every output, and
reports the largest difference: exact copies must agree bit for bit, bf16
copies within bf16 rounding.
"""

from __future__ import annotations

import io
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from grokfetch.errors import DiskError, UsageError
from grokfetch.format.layout import ModelConfig
from grokfetch.fsutil import TMP_MARK, atomic_write
from grokfetch.model import forward
from grokfetch.model.weights import ModelWeights, open_weights
from grokfetch.progress import NullBar, ProgressFactory

RMS_FACTOR = 10.0  # a layer's output RMS must lie within [in / 10, in * 10]
MIN_CHANGE = 1e-3  # ||out - in|| / ||in|| below this: the layer did nothing
PROB_TOLERANCE = 1e-4  # |sum of a float32 softmax row - 1|
# A bf16 copy is held to "within bf16 rounding" element by element on its weights
# (BF16_ROUNDING).  Its outputs drift further as the rounding compounds over the
# layers: on the golden set (whose odd layers are made soft-cap sensitive) a bf16
# repack's residual stream ends at cosine 0.9990, relative L2 0.044 from the exact
# run.  These bounds on the residual stream and logits leave room for that and still
# catch a scrambled or mis-scaled tensor.
BF16_MIN_COSINE = 0.998
BF16_MAX_REL_L2 = 0.06
BF16_ROUNDING = 2.0**-8  # round to nearest with 8 significant bits: |error| <= 2^-8 |x|
DEFAULT_TOKEN_COUNT = 8


def default_tokens(vocab_size: int, count: int = DEFAULT_TOKEN_COUNT) -> list[int]:
    """3, 9, 27, ... modulo the vocabulary: spread out, never the pad token 0 for a 2^n vocab."""
    return [pow(3, i + 1, vocab_size) or 1 for i in range(count)]


def parse_tokens(text: str) -> list[int]:
    """'1,17,42' -> [1, 17, 42]."""
    try:
        tokens = [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise UsageError(f"--tokens {text!r}: expected comma-separated integers") from None
    if not tokens:
        raise UsageError("--tokens names no token")
    return tokens


def load_hidden(path: str | os.PathLike[str], emb_size: int) -> np.ndarray:
    """Hidden states [T, emb_size] from a .npy file (never unpickled).

    The header is checked before any memory is allocated: a few bytes claiming
    (10**9, 128) are refused, not turned into a 512 GB allocation.
    """
    fmt = np.lib.format
    try:
        with open(path, "rb") as f:
            if f.read(4) == b"PK\x03\x04":
                raise UsageError(f"{path}: an .npz archive; --input takes one .npy array")
            f.seek(0)
            major, _minor = fmt.read_magic(f)
            shape, fortran, dtype = (fmt.read_array_header_1_0(f) if major == 1
                                     else fmt.read_array_header_2_0(f))
            data_at = f.tell()
        size = os.path.getsize(path)
    except OSError as e:
        raise UsageError(f"{path}: cannot read: {e.strerror or e}") from None
    except ValueError as e:  # numpy's text can span lines; an error here is one
        raise UsageError(f"{path}: not a .npy array ({' '.join(str(e).split())})") from None
    if len(shape) != 2 or shape[1] != emb_size or shape[0] == 0:
        raise UsageError(f"{path}: shape {shape}, expected [tokens, {emb_size}]")
    if not np.issubdtype(dtype, np.floating):
        raise UsageError(f"{path}: dtype {dtype}, expected floating point")
    need = data_at + shape[0] * shape[1] * dtype.itemsize
    if size != need:
        raise UsageError(f"{path}: header says {shape} x {dtype} ({need:,} bytes with the "
                         f"header), the file has {size:,} bytes")
    try:  # read, not mapped: a file that shrinks now reads short instead of faulting
        with open(path, "rb") as f:
            f.seek(data_at)
            raw = f.read(need - data_at)
    except OSError as e:
        raise UsageError(f"{path}: cannot read: {e.strerror or e}") from None
    if len(raw) != need - data_at:
        raise UsageError(f"{path}: truncated while being read")
    h = np.frombuffer(raw, dtype=dtype).reshape(shape, order="F" if fortran else "C")
    return h.astype(np.float32)


# ---------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    name: str  # stable id, e.g. 'expert_weights'
    title: str  # what is checked, for people
    passed: bool
    figure: str  # the number it was judged on, with its limit
    failures: tuple[str, ...] = ()  # what failed, naming the layer or tensor

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "title": self.title,
            "passed": self.passed,
            "figure": self.figure,
            "failures": list(self.failures),
        }


@dataclass(frozen=True)
class SmokeReport:
    path: str
    format: str  # 'original', 'per-tensor bf16 zstd:3', 'sglang bf16', ...
    exact: bool  # weights equal the original's (False for a bf16 copy)
    config: ModelConfig
    config_source: str  # 'explicit' (--config), 'manifest', 'config.json' or 'inferred'
    mode: str  # 'layer' or 'all'
    layers: tuple[int, ...]
    tokens: tuple[int, ...]  # empty when the layer was fed --input
    checks: tuple[Check, ...]
    router_counts: dict[int, list[int]]  # layer -> token picks per expert
    seconds: float
    outputs: dict[str, np.ndarray] = field(repr=False, compare=False)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "format": self.format,
            "exact": self.exact,
            "mode": self.mode,
            "layers": list(self.layers),
            "tokens": list(self.tokens),
            "passed": self.passed,
            "checks": [c.to_dict() for c in self.checks],
            "router_histogram": {str(k): v for k, v in self.router_counts.items()},
            "seconds": round(self.seconds, 3),
            "config": self.config.to_dict(),
            "config_source": self.config_source,
        }


# ---------------------------------------------------------------------------
# The checks
# ---------------------------------------------------------------------------


def _nonfinite_check(arrays: dict[str, np.ndarray]) -> Check:
    total = sum(a.size for a in arrays.values())
    bad = {k: int(np.size(a) - np.count_nonzero(np.isfinite(a))) for k, a in arrays.items()}
    failures = tuple(f"{k}: {n} non-finite values" for k, n in bad.items() if n)
    nbad = sum(bad.values())
    return Check(
        "outputs_finite",
        "outputs finite",
        nbad == 0,
        f"{nbad} non-finite of {total:,} values",
        failures,
    )


def _sum_check(name: str, title: str, probs: dict[str, np.ndarray]) -> Check:
    worst, failures = 0.0, []
    for where, p in probs.items():
        err = np.abs(p.sum(axis=-1, dtype=np.float64) - 1.0)
        e = float(err.max()) if np.isfinite(err).all() else math.inf
        worst = max(worst, e)
        if e > PROB_TOLERANCE:
            failures.append(f"{where}: max |sum - 1| = {e:.3g}")
    return Check(
        name,
        title,
        not failures,
        f"max |sum - 1| = {worst:.2g} (limit {PROB_TOLERANCE:g})",
        tuple(failures),
    )


def _experts_check(idx: dict[int, np.ndarray], k: int, num_experts: int) -> Check:
    rows, failures = 0, []
    for layer, e in idx.items():
        for t, row in enumerate(e.tolist()):
            rows += 1
            if len(set(row)) != k or not all(0 <= x < num_experts for x in row):
                failures.append(f"layer {layer} token {t}: experts {row}")
    return Check(
        "distinct_experts",
        f"each token picks {k} distinct experts",
        not failures,
        f"{rows - len(failures)}/{rows} token-layers ok",
        tuple(failures[:20]),
    )


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


def _layer_checks(pairs: dict[int, tuple[np.ndarray, np.ndarray]]) -> list[Check]:
    """(input, output) per layer -> the 'not dead' and 'not exploding' checks."""
    changes, ratios = {}, {}
    for layer, (h_in, h_out) in pairs.items():
        norm_in = float(np.linalg.norm(h_in.astype(np.float64)))
        diff = float(np.linalg.norm((h_out - h_in).astype(np.float64)))
        changes[layer] = diff / norm_in if norm_in > 0 else (math.inf if diff else 0.0)
        rms_in = _rms(h_in)
        ratios[layer] = _rms(h_out) / rms_in if rms_in > 0 else math.inf

    def ok_change(c: float) -> bool:
        return bool(np.isfinite(c)) and c >= MIN_CHANGE

    def ok_ratio(r: float) -> bool:
        return bool(np.isfinite(r)) and 1 / RMS_FACTOR <= r <= RMS_FACTOR

    low = min(changes, key=lambda k: changes[k] if np.isfinite(changes[k]) else -1)
    far = max(
        ratios, key=lambda k: abs(math.log(ratios[k])) if 0 < ratios[k] < math.inf else math.inf
    )
    return [
        Check(
            "layer_changes_input",
            "each layer changes its input",
            all(ok_change(c) for c in changes.values()),
            f"min ||out - in|| / ||in|| = {changes[low]:.3g} (layer {low}; "
            f"limit >= {MIN_CHANGE:g})",
            tuple(
                f"layer {k}: relative change {c:.3g}"
                for k, c in changes.items()
                if not ok_change(c)
            ),
        ),
        Check(
            "output_rms",
            "output RMS within a factor of input RMS",
            all(ok_ratio(r) for r in ratios.values()),
            f"RMS out / in = {ratios[far]:.3g} furthest from 1 (layer {far}; limit "
            f"{1 / RMS_FACTOR:g}-{RMS_FACTOR:g})",
            tuple(
                f"layer {k}: RMS out / in = {r:.3g}" for k, r in ratios.items() if not ok_ratio(r)
            ),
        ),
    ]


def _weight_problem(blocks: Iterable[np.ndarray]) -> str | None:
    """'N non-finite values' / 'all zero' / None, reading the weight one block at a time."""
    nonzero, bad = False, 0
    for b in blocks:
        finite = np.isfinite(b)
        n_bad = int(b.size - np.count_nonzero(finite))
        bad += n_bad
        nonzero = nonzero or bool(np.any(b[finite]) if n_bad else np.any(b))
    if bad:
        return f"{bad} non-finite values"
    return None if nonzero else "all zero"


def _matrix_blocks(m: Any) -> Iterable[np.ndarray]:
    return (b for _k0, _k1, b in m.blocks())


def weight_checks(weights: ModelWeights, layers: Iterable[int], final_norm: bool,
                  on_layer: Callable[[int], object] | None = None) -> list[Check]:
    """Every expert matrix, and every other weight, of ``layers``: finite and not all zero."""
    expert_failures: list[str] = []
    other_failures: list[str] = []
    n_experts = n_other = 0
    for i in layers:
        w = weights.layer(i)
        for leaf in ("rms_norm", "rms_norm_1", "rms_norm_2", "rms_norm_3", "router"):
            n_other += 1
            problem = _weight_problem([getattr(w, leaf)])
            if problem:
                other_failures.append(f"{weights.describe(weights.layer_spec(i, leaf))}: {problem}")
        for leaf in ("query", "key", "value", "linear"):
            n_other += 1
            m = getattr(w, leaf)
            problem = _weight_problem(_matrix_blocks(m))
            if problem:
                other_failures.append(f"{m.name}: {problem}")
        for leaf in ("moe_linear", "moe_linear_v", "moe_linear_1"):
            stack = getattr(w, leaf)
            for e in range(len(stack)):
                n_experts += 1
                m = stack[e]
                problem = _weight_problem(_matrix_blocks(m))
                if problem:
                    expert_failures.append(f"{m.name}: {problem}")
        if on_layer is not None:
            on_layer(i)
    if final_norm:
        n_other += 1
        problem = _weight_problem([weights.final_norm()])
        if problem:
            other_failures.append(
                f"{weights.describe(weights.spec('language_model/rms_norm'))}: {problem}"
            )
    return [
        Check(
            "expert_weights",
            "every expert's dequantized weights finite and non-zero",
            not expert_failures,
            f"{n_experts - len(expert_failures)}/{n_experts} expert matrices ok",
            tuple(expert_failures),
        ),
        Check(
            "other_weights",
            "attention, router and norm weights finite and non-zero",
            not other_failures,
            f"{n_other - len(other_failures)}/{n_other} tensors ok",
            tuple(other_failures),
        ),
    ]


# ---------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------


def _layer_arrays(outs: list[forward.LayerOutput]) -> dict[str, np.ndarray]:
    """The golden names of per-layer results, stacked along a leading layer axis."""
    return {
        "attn_out": np.stack([o.attn_out for o in outs]),
        "moe_out": np.stack([o.moe.out for o in outs]),
        "router_logits": np.stack([o.moe.router_logits for o in outs]),
        "router_probs": np.stack([o.moe.router_probs for o in outs]),
        "expert_idx": np.stack([o.moe.expert_idx for o in outs]).astype(np.int32),
        "expert_gate": np.stack([o.moe.expert_gate for o in outs]),
    }


def smoke(
    path: str | os.PathLike[str],
    *,
    layer: int | None = 0,
    all_layers: bool = False,
    tokens: list[int] | None = None,
    hidden: np.ndarray | str | os.PathLike[str] | None = None,
    config: ModelConfig | None = None,
    check_weights: bool = True,
) -> SmokeReport:
    """Run one layer (``layer``) or the whole model (``all_layers``) of the copy at ``path``
    and check the results.

    ``hidden`` [T, emb] (an array or a .npy path) replaces the scaled
    embeddings as the layer's input (only with a single layer).  Tokens
    default to ``default_tokens``.  The config defaults to the copy's own.
    """
    with open_weights(path, config) as weights:
        return run_smoke(
            weights,
            str(path),
            layer=layer,
            all_layers=all_layers,
            tokens=tokens,
            hidden=hidden,
            check_weights=check_weights,
        )


def run_smoke(
    weights: ModelWeights,
    path: str,
    *,
    layer: int | None = 0,
    all_layers: bool = False,
    tokens: list[int] | None = None,
    hidden: np.ndarray | str | os.PathLike[str] | None = None,
    check_weights: bool = True,
    progress: ProgressFactory | None = None,
) -> SmokeReport:
    """``smoke`` on weights that are already open.

    ``progress(layers, desc)``: a bar counting layers for ``all_layers`` (the
    forward pass, then the weight checks; at full size each takes minutes).
    """
    if all_layers and hidden is not None:
        raise UsageError("--input feeds one layer; it cannot be combined with --all")
    start = time.monotonic()
    cfg = weights.config
    if not all_layers:
        if layer is None or not 0 <= layer < cfg.num_layers:
            raise UsageError(f"--layer {layer} is outside 0-{cfg.num_layers - 1}")
    if tokens is None and hidden is None:
        tokens = default_tokens(cfg.vocab_size)
    for t in tokens or []:
        if not 0 <= t < cfg.vocab_size:
            raise UsageError(f"token {t} is outside the vocabulary 0-{cfg.vocab_size - 1}")
    if hidden is not None and not isinstance(hidden, np.ndarray):
        hidden = load_hidden(hidden, cfg.emb_size)
    if hidden is not None and (hidden.ndim != 2 or hidden.shape[1] != cfg.emb_size):
        raise UsageError(f"--input has shape {hidden.shape}, expected [T, {cfg.emb_size}]")

    outputs: dict[str, np.ndarray] = {"tokens": np.asarray(tokens or [], dtype=np.int32)}
    finite: dict[str, np.ndarray] = {}
    if all_layers:
        bar = progress(cfg.num_layers, f"smoke {path}") if progress else NullBar()
        try:
            run = forward.model(tokens or [], weights, cfg, on_layer=lambda _i: bar.update(1))
        finally:
            bar.close()
        outs = list(run.layers)
        layers = tuple(range(cfg.num_layers))
        inputs = [run.h0] + [o.h for o in outs[:-1]]
        outputs |= {
            "h0": run.h0,
            "h_layer": np.stack([o.h for o in outs]),
            "h_final_norm": run.h_final_norm,
            "logits": run.logits,
        }
        outputs |= _layer_arrays(outs)
        finite |= {"h0": run.h0, "h_final_norm": run.h_final_norm, "logits": run.logits}
    else:
        assert layer is not None
        h_in = hidden if hidden is not None else forward.embed(tokens or [], weights, cfg)
        outs = [forward.decoder_layer(h_in, weights.layer(layer), cfg)]
        layers, inputs = (layer,), [h_in]
        outputs |= {"h_in": h_in, "h_out": outs[0].h}
        outputs |= {k: v[0] for k, v in _layer_arrays(outs).items()}
        finite["h_in"] = h_in
    for i, o in zip(layers, outs, strict=True):
        finite |= {
            f"layer {i} h": o.h,
            f"layer {i} attn_out": o.attn_out,
            f"layer {i} moe_out": o.moe.out,
            f"layer {i} router_logits": o.moe.router_logits,
        }
    checks = [
        _nonfinite_check(finite),
        _sum_check(
            "attention_probs_sum",
            "attention probabilities sum to 1",
            {f"layer {i}": o.attn_probs for i, o in zip(layers, outs, strict=True)},
        ),
        _sum_check(
            "router_probs_sum",
            "router probabilities sum to 1",
            {f"layer {i}": o.moe.router_probs for i, o in zip(layers, outs, strict=True)},
        ),
        _experts_check(
            {i: o.moe.expert_idx for i, o in zip(layers, outs, strict=True)},
            cfg.num_selected_experts,
            cfg.num_experts,
        ),
        *_layer_checks({i: (x, o.h) for i, x, o in zip(layers, inputs, outs, strict=True)}),
    ]
    if check_weights:
        wbar = (progress(len(layers), f"weights {path}") if progress and all_layers
                else NullBar())
        try:
            checks += weight_checks(weights, layers, final_norm=all_layers,
                                    on_layer=lambda _i: wbar.update(1))
        finally:
            wbar.close()
    counts = {
        i: np.bincount(o.moe.expert_idx.ravel(), minlength=cfg.num_experts).tolist()
        for i, o in zip(layers, outs, strict=True)
    }
    return SmokeReport(
        path=path,
        format=weights.format,
        exact=weights.exact,
        config=cfg,
        config_source=weights.config_source,
        mode="all" if all_layers else "layer",
        layers=tuple(layers),
        tokens=tuple(tokens or ()),
        checks=tuple(checks),
        router_counts=counts,
        seconds=time.monotonic() - start,
        outputs=outputs,
    )


def check_save_path(path: str | os.PathLike[str]) -> None:
    """Raise UsageError now if ``save_outputs`` could not write ``path``, rather than after
    a run that may take minutes.  Creates nothing: a temp file is made and removed in the
    nearest folder that exists (``save_outputs`` creates the missing ones)."""
    p = Path(path)
    if p.is_dir():
        raise UsageError(f"--save {p}: is a folder; name an .npz file")
    folder = p.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise UsageError(f"--save {p}: {folder} is not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=TMP_MARK, dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UsageError(f"--save {p}: cannot write in {folder} ({e.strerror or e})") from None


def save_outputs(report: SmokeReport, path: str | os.PathLike[str]) -> Path:
    """Write the report's arrays to an .npz (golden key names), atomically."""
    buf = io.BytesIO()
    np.savez(buf, **report.outputs)  # type: ignore[arg-type]  # numpy stubs: **kwds arrays
    try:
        with atomic_write(path, "wb") as f:
            f.write(buf.getvalue())
    except OSError as e:
        raise DiskError(f"{path}: cannot write the outputs ({e.strerror or e})") from None
    return Path(path)


# ---------------------------------------------------------------------------
# Comparing two copies
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ArrayDiff:
    name: str
    max_abs_diff: float
    identical: bool
    min_cosine: float | None  # per token, for hidden states and logits
    max_rel_l2: float | None


@dataclass(frozen=True)
class WeightDiff:
    """How far one copy's (dequantized) weights are from the reference's, element by element."""

    tensors: int  # tensors compared
    identical: bool
    max_rel: float  # max |a - b| / |b| over every element (inf where b == 0 != a)
    worst: str  # the tensor where max_rel occurs


@dataclass(frozen=True)
class Comparison:
    a: str
    b: str  # the reference
    exact_expected: bool  # both copies exact: must agree bit for bit
    diffs: tuple[ArrayDiff, ...]
    experts_agree: bool  # same top-k expert set for every token and layer
    weights: WeightDiff
    passed: bool
    rule: str  # what was required

    @property
    def identical(self) -> bool:
        return all(d.identical for d in self.diffs) and self.experts_agree

    @property
    def largest(self) -> ArrayDiff:
        return max(self.diffs, key=lambda d: d.max_abs_diff)

    def to_dict(self) -> dict[str, Any]:
        return {
            "a": self.a,
            "b": self.b,
            "exact_expected": self.exact_expected,
            "identical": self.identical,
            "experts_agree": self.experts_agree,
            "passed": self.passed,
            "rule": self.rule,
            "largest": {"array": self.largest.name, "max_abs_diff": self.largest.max_abs_diff},
            "arrays": [d.__dict__ for d in self.diffs],
            "weights": self.weights.__dict__,
        }


_TOKENWISE = ("h0", "h_in", "h_out", "h_layer", "h_final_norm", "logits", "attn_out", "moe_out")
# attn_out / moe_out are reported but not judged: they enter the residual stream only
# after an RMSNorm, and the soft cap amplifies their relative error.
_JUDGED = ("h0", "h_in", "h_out", "h_layer", "h_final_norm", "logits")


def per_token(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(min cosine, max relative L2) over the last axis, b taken as the reference."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    na, nb = np.linalg.norm(a64, axis=-1), np.linalg.norm(b64, axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        cos = np.where(na * nb > 0, (a64 * b64).sum(-1) / (na * nb), 1.0)
        rel = np.where(nb > 0, np.linalg.norm(a64 - b64, axis=-1) / nb, 0.0)
    return float(np.nan_to_num(cos, nan=-1.0).min()), float(np.nan_to_num(rel, nan=np.inf).max())


def _weight_pieces(
    w: ModelWeights, layers: Iterable[int], tokens: tuple[int, ...], full_embedding: bool
) -> Iterable[tuple[str, np.ndarray]]:
    """(label, float32 block) for every weight a run used, in a fixed order for any layout."""
    if full_embedding:
        for v0, v1, block in w.embedding_blocks():
            yield f"embedding rows {v0}-{v1 - 1}", block
        yield "final norm", w.final_norm()
    elif tokens:
        yield "embedding rows of the tokens", w.embedding_rows(np.asarray(tokens))
    for i in layers:
        lw = w.layer(i)
        for leaf in ("rms_norm", "rms_norm_1", "rms_norm_2", "rms_norm_3", "router"):
            yield f"layer {i} {leaf}", getattr(lw, leaf)
        for leaf in ("query", "key", "value", "linear"):
            for _k0, _k1, block in getattr(lw, leaf).blocks():
                yield f"layer {i} {leaf}", block
        for leaf in ("moe_linear", "moe_linear_v", "moe_linear_1"):
            stack = getattr(lw, leaf)
            for e in range(len(stack)):
                for _k0, _k1, block in stack[e].blocks():
                    yield f"layer {i} {leaf} expert {e}", block


def _max_rel(x: np.ndarray, y: np.ndarray) -> float:
    if np.array_equal(x, y, equal_nan=True):
        return 0.0
    d = np.abs(x.astype(np.float64) - y.astype(np.float64))
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(y != 0, d / np.abs(y), np.where(d == 0, 0.0, np.inf))
    return float(np.nan_to_num(r, nan=np.inf).max())


def compare_weights(a: ModelWeights, b: ModelWeights, report: SmokeReport) -> WeightDiff:
    """Every weight ``report``'s run used, in ``a`` against ``b``, block by block."""
    labels: set[str] = set()
    identical, worst, worst_rel = True, "", 0.0
    pieces_a = _weight_pieces(a, report.layers, report.tokens, report.mode == "all")
    pieces_b = _weight_pieces(b, report.layers, report.tokens, report.mode == "all")
    for (label, x), (_label, y) in zip(pieces_a, pieces_b, strict=True):
        labels.add(label)
        if x.shape != y.shape:
            return WeightDiff(
                len(labels), False, math.inf, f"{label} (shape {x.shape} vs {y.shape})"
            )
        same = np.array_equal(x, y, equal_nan=True)
        identical = identical and same
        rel = 0.0 if same else _max_rel(x, y)
        if rel > worst_rel or not worst:
            worst, worst_rel = label, max(rel, worst_rel)
    return WeightDiff(len(labels), identical, worst_rel, worst)


def compare(a: SmokeReport, b: SmokeReport, weights: WeightDiff) -> Comparison:
    """Judge two runs of the same input (b is the reference) and their weights."""
    if a.tokens != b.tokens or a.layers != b.layers or a.mode != b.mode:
        raise UsageError("compare: the two runs did not use the same tokens and layers")
    diffs = []
    for name in sorted(set(a.outputs) & set(b.outputs) - {"tokens", "expert_idx"}):
        x, y = a.outputs[name], b.outputs[name]
        identical = x.shape == y.shape and np.array_equal(x, y, equal_nan=True)
        with np.errstate(invalid="ignore"):
            d = float(np.nanmax(np.abs(x.astype(np.float64) - y))) if x.size else 0.0
        cos = rel = None
        if name in _TOKENWISE:
            cos, rel = per_token(x, y)
        diffs.append(ArrayDiff(name, d, bool(identical), cos, rel))
    ea, eb = a.outputs["expert_idx"], b.outputs["expert_idx"]
    experts_agree = bool(np.array_equal(np.sort(ea, -1), np.sort(eb, -1)))
    exact = a.exact and b.exact
    if exact:
        passed = weights.identical and all(d.identical for d in diffs) and experts_agree
        rule = "both copies exact: bit-identical weights and outputs"
    else:
        close = all(
            d.name not in _JUDGED
            or (
                d.min_cosine is not None
                and d.min_cosine >= BF16_MIN_COSINE
                and d.max_rel_l2 is not None
                and d.max_rel_l2 <= BF16_MAX_REL_L2
            )
            for d in diffs
        )
        # Every figure within its limit and the same experts chosen: a copy whose routing
        # differs computes another function, whatever the cause (a near-tie that bf16
        # rounding flipped is reported as such, but it is not a pass).
        passed = weights.max_rel <= BF16_ROUNDING and close and experts_agree
        rule = (
            f"a bf16 copy: weights within bf16 rounding (|a - b| <= {BF16_ROUNDING:g} |b|), "
            f"the same expert choices, hidden states and logits per token cosine >= "
            f"{BF16_MIN_COSINE}, relative L2 <= {BF16_MAX_REL_L2}"
        )
        if not experts_agree:
            rule += ("; expert choices differ (a routing near-tie flipped by rounding, or "
                     "other weights): outputs diverge from there")
    return Comparison(a.path, b.path, exact, tuple(diffs), experts_agree, weights, passed, rule)


def _shape_of(cfg: ModelConfig) -> dict[str, Any]:
    """The config as far as the computation goes (ffn_size, not the widening factor behind it)."""
    d = cfg.to_dict()
    d.pop("widening_factor")
    return d


def smoke_compare(
    path: str | os.PathLike[str],
    other: str | os.PathLike[str],
    run: Callable[[ModelWeights, str], SmokeReport],
    *,
    config: ModelConfig | None = None,
) -> tuple[SmokeReport, SmokeReport, Comparison]:
    """``run`` (a ``run_smoke`` with its options bound) on ``path`` (the reference) and on
    ``other``; returns both reports and their comparison."""
    with open_weights(path, config) as wb, open_weights(other, config) as wa:
        rb = run(wb, str(path))
        ra = run(wa, str(other))
        if _shape_of(ra.config) != _shape_of(rb.config):
            raise UsageError(f"compare: {other} and {path} have different model configs")
        return rb, ra, compare(ra, rb, compare_weights(wa, wb, rb))
