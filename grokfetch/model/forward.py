"""A readable numpy reference of the Grok-1 forward pass (one function per block).

This follows the official implementation (xai-org/grok-1 ``model.py``) as
written up in docs/FORMAT.md, "The model"; it is meant to be read next to it::

    h0 = embeddings[tokens] * embedding_multiplier_scale
    for each of the num_layers decoder layers:
        a = attention(rms_norm(h))      # GQA, RoPE (rotate-half), 30*tanh soft cap, causal
        h = h + rms_norm_1(a)
        m = moe(rms_norm_2(h))          # float32 router softmax -> top-2, unrenormalised gates
        h = h + rms_norm_3(m)
    logits = rms_norm(h) @ embeddings.T * output_multiplier_scale

Everything is computed in float32 with the exact (not bf16-rounded)
constants.  The official run computes in bfloat16; measured against it,
emulating its bf16 casts moves a numpy forward further away, not closer, so
this file does not try.  Measured on the golden set (tests/data/golden, the
official code's outputs): every layer's output within cosine 0.99987 /
relative L2 0.0164 per token end to end, 0.99998 / 0.0060 one layer at a
time, argmax and expert choices identical.  The bf16-rounded multipliers
(78.5, 0.578125) would give 0.99990 / 0.0145 end to end: not worth copying.

Shapes: T tokens, D = emb_size, H query heads, G key/value heads, R = H // G
query heads per key/value head, d = key_size, E experts, k selected experts,
F = ffn_size, V = vocab_size.  There is no batch dimension and no padding
mask: the smoke test runs one unpadded sequence.

Weights come from a loader (``grokfetch.model.weights``) with this interface:
``embedding_rows(tokens)``, ``embedding_blocks()``, ``final_norm()`` and
``layer(i) -> LayerWeights``.  A linear weight is either a float32 array
[K, N] or a lazy ``Matrix`` that yields float32 row blocks, so that a
quantized weight is dequantized a block at a time and never whole.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

# ---------------------------------------------------------------------------
# What the model needs from its configuration and its weights
# ---------------------------------------------------------------------------


class Config(Protocol):
    """The fields of ``grokfetch.format.layout.ModelConfig`` (official names) this file reads."""

    @property
    def emb_size(self) -> int: ...  # D, width of the residual stream
    @property
    def key_size(self) -> int: ...  # d, size of one attention head
    @property
    def num_q_heads(self) -> int: ...  # H
    @property
    def num_kv_heads(self) -> int: ...  # G: query heads share key/value heads in groups of H // G
    @property
    def num_layers(self) -> int: ...
    @property
    def num_experts(self) -> int: ...  # E
    @property
    def num_selected_experts(self) -> int: ...  # k, experts per token (2)
    @property
    def embedding_multiplier_scale(self) -> float: ...  # h0 = embeddings[tokens] * this
    @property
    def output_multiplier_scale(self) -> float: ...  # logits = ... * this
    @property
    def attn_output_multiplier(self) -> float: ...  # attention logit scale (1/sqrt(128) in Grok-1)
    @property
    def attn_logit_softcap(self) -> float: ...  # 30.0: logits = cap * tanh(logits / cap)
    @property
    def rms_norm_eps(self) -> float: ...
    @property
    def rope_base(self) -> float: ...


class Matrix(Protocol):
    """A [K, N] linear weight read lazily: float32 row blocks covering K in order."""

    shape: tuple[int, int]

    def blocks(self) -> Iterator[tuple[int, int, np.ndarray]]:
        """Yield (k0, k1, W[k0:k1]) with W[k0:k1] float32 [k1 - k0, N]."""
        ...


Linear = Any  # np.ndarray [K, N] or Matrix
ExpertStack = Any  # np.ndarray [E, K, N] or a lazy stack whose [e] is a Matrix


@dataclass(frozen=True)
class LayerWeights:
    """One decoder layer's parameters, named by their official haiku leaves."""

    rms_norm: np.ndarray  # [D] before attention
    rms_norm_1: np.ndarray  # [D] after attention
    rms_norm_2: np.ndarray  # [D] before the MoE
    rms_norm_3: np.ndarray  # [D] after the MoE
    query: Linear  # [D, H*d]
    key: Linear  # [D, G*d]
    value: Linear  # [D, G*d]
    linear: Linear  # [H*d, D] attention output projection (8 scale groups)
    router: np.ndarray  # [D, E] float32, never quantized
    moe_linear: ExpertStack  # [E, D, F] gelu branch
    moe_linear_v: ExpertStack  # [E, D, F] linear branch
    moe_linear_1: ExpertStack  # [E, F, D] down projection (8 scale groups)


class Weights(Protocol):
    def embedding_rows(self, tokens: np.ndarray) -> np.ndarray:
        """float32 [T, D]: the embedding rows of these tokens (and only those are read)."""
        ...

    def embedding_blocks(self) -> Iterator[tuple[int, int, np.ndarray]]:
        """Yield (v0, v1, embeddings[v0:v1]) as float32 [v1 - v0, D], covering V."""
        ...

    def final_norm(self) -> np.ndarray:
        """float32 [D]: the scale of the final RMSNorm (language_model/rms_norm)."""
        ...

    def layer(self, i: int) -> LayerWeights: ...


# ---------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------


def matmul(x: np.ndarray, w: Linear) -> np.ndarray:
    """x @ w, for a float32 array or a Matrix read block by block."""
    if isinstance(w, np.ndarray):
        return x @ w.astype(np.float32, copy=False)  # (T, N)
    out = np.zeros((x.shape[0], w.shape[1]), dtype=np.float32)  # (T, N)
    for k0, k1, block in w.blocks():  # block: (k1-k0, N)
        out += x[:, k0:k1] @ block  # (T, N)
    return out


def rms_norm(x: np.ndarray, scale: np.ndarray, eps: float) -> np.ndarray:
    """x / sqrt(mean(x^2) + eps) * scale: no mean subtraction, no bias, scale used as is."""
    x = x.astype(np.float32, copy=False)  # (T, D)
    mean_square = np.mean(np.square(x), axis=-1, keepdims=True)  # (T, 1)
    return x / np.sqrt(mean_square + np.float32(eps)) * scale.astype(np.float32)  # (T, D)


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax (subtract the max first)."""
    z = x - np.max(x, axis=axis, keepdims=True)  # (..., n)
    e = np.exp(z)  # (..., n)
    return e / np.sum(e, axis=axis, keepdims=True)  # (..., n)


def gelu(x: np.ndarray) -> np.ndarray:
    """jax.nn.gelu's default: the tanh approximation."""
    c = np.float32(np.sqrt(2.0 / np.pi))
    inner = c * (x + np.float32(0.044715) * x**3)  # (..., n)
    return np.float32(0.5) * x * (1 + np.tanh(inner))  # (..., n)


def rotate_half(x: np.ndarray) -> np.ndarray:
    """[x1, x2] -> [-x2, x1] along the last axis (the halves, not interleaved pairs)."""
    x1, x2 = np.split(x, 2, axis=-1)  # (..., d/2) each
    return np.concatenate([-x2, x1], axis=-1)  # (..., d)


def rope(x: np.ndarray, positions: np.ndarray, base: float) -> np.ndarray:
    """Rotary position embedding, rotate-half form, on x [T, heads, d]."""
    d = x.shape[-1]
    exponents = np.arange(0, d, 2, dtype=np.float32) / np.float32(d)  # (d/2,)
    inv_freq = (1.0 / (np.float32(base) ** exponents)).astype(np.float32)  # (d/2,)
    phase = positions.astype(np.float32)[:, None] * inv_freq[None, :]  # (T, d/2)
    phase = np.concatenate([phase, phase], axis=-1)[:, None, :]  # (T, 1, d)
    return x * np.cos(phase) + rotate_half(x) * np.sin(phase)  # (T, heads, d)


def causal_mask(t: int) -> np.ndarray:
    """True where query position i may attend key position j (j <= i)."""
    return np.tril(np.ones((t, t), dtype=bool))  # (T, T)


def soft_cap(logits: np.ndarray, cap: float) -> np.ndarray:
    """cap * tanh(logits / cap): smooth, keeps |logits| < cap."""
    c = np.float32(cap)
    return c * np.tanh(logits / c)  # same shape as logits


# ---------------------------------------------------------------------------
# Attention, mixture of experts, decoder layer, model
# ---------------------------------------------------------------------------


def attention(x: np.ndarray, w: LayerWeights, cfg: Config) -> tuple[np.ndarray, np.ndarray]:
    """Grouped-query causal self-attention. Returns (output [T, D], probabilities [H, T, T])."""
    t = x.shape[0]
    h, g, d = cfg.num_q_heads, cfg.num_kv_heads, cfg.key_size
    q = matmul(x, w.query).reshape(t, h, d)  # (T, H, d)
    k = matmul(x, w.key).reshape(t, g, d)  # (T, G, d)
    v = matmul(x, w.value).reshape(t, g, d)  # (T, G, d)
    positions = np.arange(t)  # (T,)
    q = rope(q, positions, cfg.rope_base)  # (T, H, d)
    k = rope(k, positions, cfg.rope_base)  # (T, G, d)
    # Query head n uses key/value head n // R: heads are grouped, not interleaved.
    qg = q.reshape(t, g, h // g, d)  # (T, G, R, d)
    scale = np.float32(cfg.attn_output_multiplier)
    logits = np.einsum("tgrd,sgd->grts", qg, k) * scale  # (G, R, T, T)
    logits = soft_cap(logits, cfg.attn_logit_softcap)  # (G, R, T, T)
    logits = np.where(causal_mask(t), logits, np.float32(-1e30))  # (G, R, T, T)
    probs = softmax(logits, axis=-1)  # (G, R, T, T)
    out = np.einsum("grts,sgd->tgrd", probs, v).reshape(t, h * d)  # (T, H*d)
    return matmul(out, w.linear), probs.reshape(h, t, t)  # (T, D), (H, T, T)


@dataclass(frozen=True)
class MoEOutput:
    out: np.ndarray  # [T, D] before the post-MoE norm
    router_logits: np.ndarray  # [T, E] float32
    router_probs: np.ndarray  # [T, E]
    expert_idx: np.ndarray  # int32 [T, k], best first
    expert_gate: np.ndarray  # [T, k] the router probabilities of those experts, not renormalised


def top_k(probs: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest per row, largest first; ties go to the lower index (lax.top_k)."""
    return np.argsort(-probs, axis=-1, kind="stable")[:, :k].astype(np.int32)  # (T, k)


def expert(x: np.ndarray, w: LayerWeights, e: int) -> np.ndarray:
    """One expert's feed-forward: (gelu(x W_linear) * (x W_linear_v)) W_linear_1."""
    gate_branch = gelu(matmul(x, w.moe_linear[e]))  # (n, F)
    linear_branch = matmul(x, w.moe_linear_v[e])  # (n, F)
    return matmul(gate_branch * linear_branch, w.moe_linear_1[e])  # (n, D)


def moe(x: np.ndarray, w: LayerWeights, cfg: Config) -> MoEOutput:
    """Top-k mixture of experts; only experts some token routes to are evaluated (and read)."""
    t, k = x.shape[0], cfg.num_selected_experts
    router_logits = x.astype(np.float32) @ w.router.astype(np.float32)  # (T, E)
    router_probs = softmax(router_logits, axis=-1)  # (T, E)
    expert_idx = top_k(router_probs, k)  # (T, k)
    expert_gate = np.take_along_axis(router_probs, expert_idx, axis=-1)  # (T, k)
    per_slot = np.zeros((t, k, x.shape[1]), dtype=np.float32)  # (T, k, D)
    for e in np.unique(expert_idx):
        tok, slot = np.nonzero(expert_idx == e)  # (n,), (n,)
        per_slot[tok, slot] = expert(x[tok], w, int(e))  # (n, D)
    out = np.sum(expert_gate[:, :, None] * per_slot, axis=1)  # (T, D)
    return MoEOutput(out, router_logits, router_probs, expert_idx, expert_gate)


@dataclass(frozen=True)
class LayerOutput:
    h: np.ndarray  # [T, D] the layer's output (residual stream)
    attn_out: np.ndarray  # [T, D] attention output before its post-norm
    attn_probs: np.ndarray  # [H, T, T]
    moe: MoEOutput


def decoder_layer(h: np.ndarray, w: LayerWeights, cfg: Config) -> LayerOutput:
    """Pre- and post-norm around both attention and MoE (four RMSNorms per layer)."""
    eps = cfg.rms_norm_eps
    a, attn_probs = attention(rms_norm(h, w.rms_norm, eps), w, cfg)  # (T, D), (H, T, T)
    h = h + rms_norm(a, w.rms_norm_1, eps)  # (T, D)
    m = moe(rms_norm(h, w.rms_norm_2, eps), w, cfg)  # m.out: (T, D)
    h = h + rms_norm(m.out, w.rms_norm_3, eps)  # (T, D)
    return LayerOutput(h, a, attn_probs, m)


def embed(tokens: Sequence[int] | np.ndarray, weights: Weights, cfg: Config) -> np.ndarray:
    """h0 = embeddings[tokens] * embedding_multiplier_scale."""
    rows = weights.embedding_rows(np.asarray(tokens, dtype=np.int64))  # (T, D)
    return rows.astype(np.float32) * np.float32(cfg.embedding_multiplier_scale)  # (T, D)


def unembed(h: np.ndarray, weights: Weights, cfg: Config) -> np.ndarray:
    """logits = h @ embeddings.T * output_multiplier_scale (input and output share the table)."""
    blocks = []
    for _v0, _v1, table in weights.embedding_blocks():  # table: (v1-v0, D)
        blocks.append(h @ table.T)  # (T, v1-v0)
    return np.concatenate(blocks, axis=1) * np.float32(cfg.output_multiplier_scale)  # (T, V)


@dataclass(frozen=True)
class ModelOutput:
    h0: np.ndarray  # [T, D] scaled embeddings
    layers: tuple[LayerOutput, ...]  # numeric order 0..L-1
    h_final_norm: np.ndarray  # [T, D]
    logits: np.ndarray  # [T, V]


def model(tokens: Sequence[int] | np.ndarray, weights: Weights, cfg: Config,
          on_layer: Callable[[int], object] | None = None) -> ModelOutput:
    """The whole model: tokens -> logits, keeping every layer's output.

    ``on_layer(i)`` is called after layer i (progress: a full-size layer takes
    tens of seconds on a CPU)."""
    h0 = embed(tokens, weights, cfg)  # (T, D)
    h, layers = h0, []
    for i in range(cfg.num_layers):
        out = decoder_layer(h, weights.layer(i), cfg)
        layers.append(out)
        h = out.h  # (T, D)
        if on_layer is not None:
            on_layer(i)
    h_final_norm = rms_norm(h, weights.final_norm(), cfg.rms_norm_eps)  # (T, D)
    logits = unembed(h_final_norm, weights, cfg)  # (T, V)
    return ModelOutput(h0, tuple(layers), h_final_norm, logits)
